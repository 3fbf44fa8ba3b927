//! METHOD.md §1 re-implemented from the text, in plain f64 loops, with hand-derived gradients.
//! Nothing here is shared with the compiler: it is the independent side of the parity tests.
//!
//! Notation as in METHOD.md: `z1`, `z2` are the raw `[N, D]` embeddings, `a`, `b` their
//! row-normalised versions, `Z = [a; b]` (`[2N, D]`), `S = Z Zᵀ / tau`, `p(i)` the positive
//! of row `i`.

use super::{dot, Mat};

/// `normalize(x) = x / max(‖x‖, 1e-12)` row by row, with the clamped norms.
pub fn normalize_rows(x: &Mat) -> (Mat, Vec<f64>) {
    let mut u = x.clone();
    let mut norms = Vec::with_capacity(x.rows);
    for i in 0..x.rows {
        let n = dot(x.row(i), x.row(i)).sqrt().max(1e-12);
        u.row_mut(i).iter_mut().for_each(|v| *v /= n);
        norms.push(n);
    }
    (u, norms)
}

/// Pulls a gradient `g` w.r.t. `u = normalize(x)` back to `x`.
///
/// For ‖x‖ > 1e-12, `u = x / ‖x‖` has Jacobian `(I − u uᵀ) / ‖x‖` (symmetric), so
/// `g_x = (g − u (u·g)) / ‖x‖`; below the clamp `u = x / 1e-12` and `g_x = g / 1e-12`.
pub fn normalize_rows_vjp(u: &Mat, norms: &[f64], g: &Mat) -> Mat {
    let mut out = g.clone();
    for (i, &n) in norms.iter().enumerate() {
        let ug = if n > 1e-12 { dot(u.row(i), g.row(i)) } else { 0.0 };
        for (o, &ui) in out.row_mut(i).iter_mut().zip(u.row(i)) {
            *o = (*o - ui * ug) / n;
        }
    }
    out
}

/// The largest entry of a gradient w.r.t. `normalize(x)` once scaled by `1/‖x‖` but before
/// the projection `(I − u uᵀ)` removes its radial part.
///
/// Every objective here sees its embeddings only through `normalize`, so its gradients are
/// such projections, and where the projection cancels almost everything (D = 1, where the
/// exact gradient is 0) rounding leaves an error proportional to this size, not to the
/// result's. It is the scale the parity tests measure gradient errors against when it
/// exceeds the gradient itself.
pub fn unprojected_scale(norms: &[f64], g: &Mat) -> f64 {
    (0..g.rows).flat_map(|i| g.row(i).iter().map(move |v| v.abs() / norms[i])).fold(0.0, f64::max)
}

/// A loss with its gradients w.r.t. `z1` and `z2`, and each gradient's `unprojected_scale`.
#[derive(Clone, Debug)]
pub struct Graded {
    pub loss: f64,
    pub grad_z1: Mat,
    pub grad_z2: Mat,
    pub scale_z1: f64,
    pub scale_z2: f64,
}

/// A base contrastive loss: per-sample values, their mean, and the mean's gradients.
#[derive(Clone, Debug)]
pub struct Contrastive {
    pub per_sample: Vec<f64>,
    pub graded: Graded,
}

/// The shape of a view's term as a function of `c_i = −log p_i = LSE_{j≠i} S[i, j] − S[i, p(i)]`:
/// its value and its derivative `df/dc`.
type ViewTerm<'a> = &'a dyn Fn(f64) -> (f64, f64);

/// NT-Xent (METHOD.md §SimCLR): `l_i = c_i`, so `f(c) = c`, `f'(c) = 1`.
pub fn nt_xent(z1: &Mat, z2: &Mat, tau: f64) -> Contrastive {
    contrastive(z1, z2, tau, &|c| (c, 1.0))
}

/// Focal NT-Xent (METHOD.md §Focal): `p = exp(−c)`, `l = −(1 − p)^γ log p = (1 − e^{−c})^γ c`,
/// so `f'(c) = γ (1 − e^{−c})^{γ−1} e^{−c} c + (1 − e^{−c})^γ`.
pub fn focal_nt_xent(z1: &Mat, z2: &Mat, tau: f64, gamma: f64) -> Contrastive {
    contrastive(z1, z2, tau, &|c| {
        let p = (-c).exp();
        let one_minus = 1.0 - p;
        let d = if one_minus == 0.0 { 0.0 } else { gamma * one_minus.powf(gamma - 1.0) * p * c };
        (one_minus.powf(gamma) * c, d + one_minus.powf(gamma))
    })
}

/// The shared NT-Xent structure with a per-view term `f(c_i)`.
///
/// Value: `per_sample_k = (f(c_k) + f(c_{k+N})) / 2`, `loss = mean_k per_sample_k =
/// (1/2N) Σ_i f(c_i)`.
///
/// Gradient: with `P[i, j] = exp S[i, j] / Σ_{j'≠i} exp S[i, j']` for `j ≠ i` (and
/// `P[i, i] = 0`), `∂c_i/∂S[i, j] = P[i, j] − [j = p(i)]`, so
/// `G = ∂loss/∂S` has rows `G[i, :] = f'(c_i)/(2N) · (P[i, :] − e_{p(i)})`.
/// `S = Z Zᵀ / tau` gives `∂loss/∂Z = (G + Gᵀ) Z / tau`; rows `0..N` belong to `a`, rows
/// `N..2N` to `b`, and `normalize_rows_vjp` carries them back to `z1`, `z2`.
fn contrastive(z1: &Mat, z2: &Mat, tau: f64, f: ViewTerm) -> Contrastive {
    let n = z1.rows;
    let (a, norms_a) = normalize_rows(z1);
    let (b, norms_b) = normalize_rows(z2);
    let z = a.concat_rows(&b);
    let m = 2 * n;
    let mut s = z.matmul_t(&z);
    s.data.iter_mut().for_each(|v| *v /= tau);
    let positive = |i: usize| if i < n { i + n } else { i - n };

    let mut terms = vec![0.0; m];
    let mut g = Mat::zeros(m, m);
    for (i, term) in terms.iter_mut().enumerate() {
        // Stable log-sum-exp over j ≠ i.
        let max = (0..m).filter(|&j| j != i).map(|j| s.at(i, j)).fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = (0..m).filter(|&j| j != i).map(|j| (s.at(i, j) - max).exp()).sum();
        let c = max + total.ln() - s.at(i, positive(i));
        let (value, slope) = f(c);
        *term = value;
        let weight = slope / m as f64;
        for j in (0..m).filter(|&j| j != i) {
            let p_ij = (s.at(i, j) - max).exp() / total;
            g.set(i, j, weight * (p_ij - if j == positive(i) { 1.0 } else { 0.0 }));
        }
    }
    let per_sample: Vec<f64> = (0..n).map(|k| (terms[k] + terms[k + n]) / 2.0).collect();
    let loss = per_sample.iter().sum::<f64>() / n as f64;

    let sym = Mat::from_fn(m, m, |i, j| (g.at(i, j) + g.at(j, i)) / tau);
    let grad_z = sym.matmul(&z);
    let (grad_a, grad_b) = (grad_z.rows_range(0, n), grad_z.rows_range(n, m));
    let graded = Graded {
        loss,
        grad_z1: normalize_rows_vjp(&a, &norms_a, &grad_a),
        grad_z2: normalize_rows_vjp(&b, &norms_b, &grad_b),
        scale_z1: unprojected_scale(&norms_a, &grad_a),
        scale_z2: unprojected_scale(&norms_b, &grad_b),
    };
    Contrastive { per_sample, graded }
}

/// Sinkhorn exactly as METHOD.md §GH writes it, on scores `t` (`[N, K]`):
/// `Q = exp(t / eps)ᵀ` (`[K, N]`), `c = 1/N`, then `iters` times `r = pi / (Q c)`,
/// `c = (1/N) / (Qᵀ r)`, and `q = (diag(r) Q diag(c))ᵀ N`. The prior is normalised to sum to
/// 1 first, as the reference code does.
pub fn sinkhorn(t: &Mat, prior: &[f64], eps: f64, iters: usize) -> Mat {
    let (n, k) = (t.rows, t.cols);
    assert_eq!(prior.len(), k);
    let prior_sum: f64 = prior.iter().sum();
    let pi: Vec<f64> = prior.iter().map(|p| p / prior_sum).collect();
    // Stored as [N, K] (that is, Qᵀ): q_t[n, k] = Q[k, n].
    let q_t = Mat::from_fn(n, k, |i, j| (t.at(i, j) / eps).exp());
    let mut c = vec![1.0 / n as f64; n];
    let mut r = vec![0.0; k];
    for _ in 0..iters {
        for (kk, r_k) in r.iter_mut().enumerate() {
            let qc: f64 = (0..n).map(|i| q_t.at(i, kk) * c[i]).sum();
            *r_k = pi[kk] / qc;
        }
        for (i, c_i) in c.iter_mut().enumerate() {
            *c_i = (1.0 / n as f64) / dot(q_t.row(i), &r);
        }
    }
    Mat::from_fn(n, k, |i, j| r[j] * q_t.at(i, j) * c[i] * n as f64)
}

/// GH's hyper-parameters (METHOD.md §GH).
#[derive(Clone, Copy, Debug)]
pub struct GhParams {
    pub eps: f64,
    pub iters: usize,
    pub temp: f64,
}

pub const GH: GhParams = GhParams { eps: 0.05, iters: 300, temp: 0.1 };

/// `−mean_n Σ_k q[n, k] · log_softmax(t / temp)[n, k]` with its gradient w.r.t. `t`, for targets
/// `q` held fixed. With `σ = softmax(t / temp)` and `s_n = Σ_k q[n, k]`:
/// `∂/∂t[n, k] = (s_n σ[n, k] − q[n, k]) / (N temp)`.
fn cross_entropy(q: &Mat, t: &Mat, temp: f64) -> (f64, Mat) {
    let n = t.rows;
    let mut value = 0.0;
    let mut g = Mat::zeros(t.rows, t.cols);
    for i in 0..n {
        let logits: Vec<f64> = t.row(i).iter().map(|v| v / temp).collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
        let s: f64 = q.row(i).iter().sum();
        for (k, l) in logits.iter().enumerate() {
            value -= q.at(i, k) * (l - lse) / n as f64;
            g.set(i, k, (s * (l - lse).exp() - q.at(i, k)) / (n as f64 * temp));
        }
    }
    (value, g)
}

/// The GH term (METHOD.md §GH): `t_v = normalize(z_v Mᵀ)`, `q_v = sinkhorn(t_v)` (no
/// gradient), `L = CE(q1, t2) + CE(q2, t1)`.
///
/// Gradient with the `q`s held fixed: `∂L/∂t2 = ∂CE(q1, t2)/∂t2`, `∂L/∂t1 = ∂CE(q2, t1)/∂t1`
/// (see `cross_entropy`); `normalize_rows_vjp` carries them to `y_v = z_v Mᵀ`, and
/// `∂L/∂z_v = (∂L/∂y_v) M`.
pub fn gh_term(z1: &Mat, z2: &Mat, m: &Mat, prior: &[f64], params: GhParams) -> Graded {
    let (t1, norms1) = normalize_rows(&z1.matmul_t(m));
    let (t2, norms2) = normalize_rows(&z2.matmul_t(m));
    let q1 = sinkhorn(&t1, prior, params.eps, params.iters);
    let q2 = sinkhorn(&t2, prior, params.eps, params.iters);
    let (ce12, g_t2) = cross_entropy(&q1, &t2, params.temp);
    let (ce21, g_t1) = cross_entropy(&q2, &t1, params.temp);
    // The unprojected scale as seen from z: |(g_t / ‖y‖) M| (M spreads the cancellation).
    let scale = |norms: &[f64], g: &Mat| {
        let scaled = Mat::from_fn(g.rows, g.cols, |i, k| g.at(i, k) / norms[i]).matmul(m);
        scaled.data.iter().fold(0.0, |acc: f64, v| acc.max(v.abs()))
    };
    Graded {
        loss: ce12 + ce21,
        grad_z1: normalize_rows_vjp(&t1, &norms1, &g_t1).matmul(m),
        grad_z2: normalize_rows_vjp(&t2, &norms2, &g_t2).matmul(m),
        scale_z1: scale(&norms1, &g_t1),
        scale_z2: scale(&norms2, &g_t2),
    }
}

/// `base + weight · gh`: the loss of a `*_gh` objective (its per-sample loss stays the base's).
pub fn with_gh(base: &Contrastive, gh: &Graded, weight: f64) -> Graded {
    let add =
        |x: &Mat, y: &Mat| Mat { data: x.data.iter().zip(&y.data).map(|(a, b)| a + weight * b).collect(), ..x.clone() };
    Graded {
        loss: base.graded.loss + weight * gh.loss,
        grad_z1: add(&base.graded.grad_z1, &gh.grad_z1),
        grad_z2: add(&base.graded.grad_z2, &gh.grad_z2),
        scale_z1: base.graded.scale_z1 + weight * gh.scale_z1,
        scale_z2: base.graded.scale_z2 + weight * gh.scale_z2,
    }
}
