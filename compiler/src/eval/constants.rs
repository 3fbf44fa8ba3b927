//! Constants the compiler builds and the initial values of state.

use super::BindError;
use crate::ir::{ConstInit, StateInit};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sslc_rng::BoxMuller;

/// Standard normal samples from a seeded ChaCha8 stream (Box–Muller), so a constant is the
/// same on every machine and in every back end.
pub(crate) fn gaussian(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let pair = BoxMuller::draw(&mut rng);
        out.push(pair.cos());
        out.push(pair.sin());
    }
    out.truncate(n);
    out
}

pub fn build_const(init: &ConstInit, shape: &[usize]) -> Result<Tensor, BindError> {
    match init {
        ConstInit::Etf { seed, .. } => {
            let (k, d) = (shape[0], shape[1]);
            Ok(Tensor::from_vec(etf(k, d, *seed)?, (k, d), &Device::Cpu)?)
        }
        ConstInit::Randn { seed } => {
            let n = shape.iter().product();
            Ok(Tensor::from_vec(gaussian(n, *seed), shape, &Device::Cpu)?)
        }
        ConstInit::Fill(v) => Ok(Tensor::full(*v, shape, &Device::Cpu)?),
        ConstInit::Labels => {
            let n: usize = shape.iter().product();
            Ok(Tensor::from_vec((0..n).map(|i| (i % 4) as f64).collect::<Vec<_>>(), shape, &Device::Cpu)?)
        }
    }
}

/// The simplex equiangular tight frame of METHOD.md §GH: `k` unit rows in R^`d` whose pairwise
/// cosines are all −1/(k−1). From a seeded Gaussian matrix A: for k ≤ d, U is the polar factor
/// of A (orthonormal rows) and M = √(k/(k−1)) (I − 11ᵀ/k) U; for k = d + 1, U is an
/// orthonormal basis of the centred columns of A. Row-major `k × d`.
pub fn etf(k: usize, d: usize, seed: u64) -> Result<Vec<f64>, BindError> {
    if k < 2 || k > d + 1 {
        return Err(BindError::EtfTooLarge { k, d });
    }
    let a = gaussian(k * d, seed);
    let mut u = if k <= d { polar_rows(&a, k, d) } else { Vec::new() };
    // Centre the rows: (I − 11ᵀ/k) U.
    let centre = |m: &mut Vec<f64>| {
        for j in 0..d {
            let mean = (0..k).map(|i| m[i * d + j]).sum::<f64>() / k as f64;
            for i in 0..k {
                m[i * d + j] -= mean;
            }
        }
    };
    if k <= d {
        centre(&mut u);
    } else {
        u = a;
        centre(&mut u);
        orthonormalise_columns(&mut u, k, d);
    }
    // Either way the rows now have squared norm (k−1)/k; scale them to unit length.
    let scale = (k as f64 / (k as f64 - 1.0)).sqrt();
    Ok(u.iter().map(|x| x * scale).collect())
}

/// The polar factor of a `k × d` matrix with k ≤ d: the nearest matrix with orthonormal rows,
/// by Newton–Schulz iteration after scaling into its basin of convergence.
fn polar_rows(a: &[f64], k: usize, d: usize) -> Vec<f64> {
    let norm = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let mut x: Vec<f64> = a.iter().map(|v| v / norm).collect();
    for _ in 0..200 {
        // G = X Xᵀ (k × k); X ← 1.5 X − 0.5 G X
        let mut g = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                g[i * k + j] = (0..d).map(|t| x[i * d + t] * x[j * d + t]).sum();
            }
        }
        let err: f64 =
            (0..k).map(|i| (0..k).map(|j| (g[i * k + j] - f64::from(u8::from(i == j))).abs()).sum::<f64>()).sum();
        if err < 1e-13 * k as f64 {
            break;
        }
        let mut next = vec![0.0; k * d];
        for i in 0..k {
            for t in 0..d {
                let gx: f64 = (0..k).map(|j| g[i * k + j] * x[j * d + t]).sum();
                next[i * d + t] = 1.5 * x[i * d + t] - 0.5 * gx;
            }
        }
        x = next;
    }
    x
}

/// Gram–Schmidt (twice, for stability) on the columns of a `k × d` matrix.
fn orthonormalise_columns(m: &mut [f64], k: usize, d: usize) {
    for _ in 0..2 {
        for j in 0..d {
            for p in 0..j {
                let dot: f64 = (0..k).map(|i| m[i * d + j] * m[i * d + p]).sum();
                for i in 0..k {
                    m[i * d + j] -= dot * m[i * d + p];
                }
            }
            let n: f64 = (0..k).map(|i| m[i * d + j] * m[i * d + j]).sum::<f64>().sqrt();
            for i in 0..k {
                m[i * d + j] /= n;
            }
        }
    }
}

pub fn initial_state(init: StateInit, shape: &[usize]) -> Result<Tensor, BindError> {
    let n: usize = shape.iter().product();
    let values = match init {
        StateInit::Fill(v) => vec![v; n],
        StateInit::Uniform => {
            let last = shape.last().copied().unwrap_or(1).max(1);
            vec![1.0 / last as f64; n]
        }
        StateInit::Randn { seed } => gaussian(n, seed),
    };
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}
