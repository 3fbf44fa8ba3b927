//! The optimiser preserves meaning (the optimised gradient program evaluates to the same
//! values as the unoptimised one on the reference evaluator) and removes every `[2N, 2N]`
//! matrix from the contrastive losses. The optimised IR of each objective is a snapshot.

use candle_core::{DType, Device, Tensor};
use sslc_compiler::diag::Sources;
use sslc_compiler::eval::{run, BindRequest, Bindings, Overrides};
use sslc_compiler::ir::{Dim, Expr, Module};
use sslc_compiler::objective::Executable;
use std::path::Path;

const OBJECTIVES: [&str; 8] = ["simclr", "simclr_gh", "focal", "focal_gh", "sdclr", "sdclr_gh", "bcl", "bcl_gh"];

fn executable(name: &str) -> Executable {
    let mut sources = Sources::new();
    let path = format!("objectives/{name}.ssl");
    let module =
        sslc_compiler::compile(Path::new(&path), &mut sources).unwrap_or_else(|_| panic!("compiles")).modules.remove(0);
    Executable::new(module).expect("differentiates")
}

fn inputs(n: usize, d: usize, seed: u64) -> Vec<(String, Tensor)> {
    ["z1", "z2"]
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let v: Vec<f64> =
                (0..n * d).map(|i| (i as f64 * 0.7 + seed as f64 * 3.1 + k as f64 * 11.3).sin() * 1.7).collect();
            (name.to_string(), Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap())
        })
        .collect()
}

fn bindings(m: &Module, n: usize, d: usize, seed: u64) -> Bindings {
    // A small K keeps the ETF valid for small D.
    let overrides = Overrides::parse(&["K=5".to_string()]).unwrap();
    let overrides = if m.dim_named("K").is_some() { overrides } else { Overrides::default() };
    Bindings::new(
        m,
        BindRequest {
            inputs: inputs(n, d, seed),
            consts: vec![],
            states: vec![],
            overrides: &overrides,
            samples: None,
            index: None,
            epoch: 7,
            epochs: 8,
            iteration: None,
            base_lr: 0.5,
            dtype: DType::F64,
        },
    )
    .unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let scale = b.iter().fold(1e-12f64, |m, x| m.max(x.abs()));
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn optimised_programs_compute_the_same_values() {
    for name in OBJECTIVES {
        let exe = executable(name);
        let optimised = sslc_compiler::passes::optimize(&exe.module, &exe.gradient).unwrap();
        for (n, d, seed) in [(1, 6, 0), (3, 6, 1), (7, 9, 2)] {
            let b = bindings(&exe.module, n, d, seed);
            let want = run(&exe.module, &exe.gradient, &b).unwrap();
            let got = run(&exe.module, &optimised, &b).unwrap();
            for (o, (w, g)) in exe.gradient.outputs.iter().zip(want.iter().zip(&got)) {
                let err = max_rel(g, w);
                assert!(err < 1e-12, "{name} N={n} D={d}: output {} differs by {err:e}", o.name);
            }
        }
    }
}

/// No node of the optimised program is a `[2N, 2N]` (or any `[a·N, b·N]`) matrix, and the
/// gradient's products over the similarity matrix are merged.
#[test]
fn contrastive_losses_never_store_an_n_by_n_matrix() {
    for name in OBJECTIVES {
        let exe = executable(name);
        let optimised = sslc_compiler::passes::optimize(&exe.module, &exe.gradient).unwrap();
        let batch = exe.module.batch_dim().unwrap();
        let batch_sized = |d: &Dim| d.symbols().any(|s| s == batch);
        let (mut pairwise, mut symmetric) = (0, 0);
        for (h, e) in optimised.exprs.iter() {
            let shape = &optimised.ty(h).shape;
            assert!(
                !(shape.len() == 2 && batch_sized(&shape[0]) && batch_sized(&shape[1])),
                "{name}: node {h} ({e:?}) stores a {}-sized matrix",
                sslc_compiler::ir::display_shape(shape, &exe.module.dims)
            );
            pairwise += usize::from(matches!(e, Expr::PairwiseReduce { .. } | Expr::PairwiseMatMul { .. }));
            symmetric += usize::from(matches!(e, Expr::PairwiseMatMul { pairwise, .. } if pairwise.is_symmetric()));
        }
        // The forward logsumexp, and the similarity matrix's gradient `W Z + Wᵀ Z` merged
        // into one product with a symmetric kernel.
        assert!(pairwise >= 2, "{name}: only {pairwise} fused pairwise nodes");
        assert!(symmetric >= 1, "{name}: the gradient's two pairwise products were not merged");
    }
}

#[test]
fn optimised_ir_snapshots() {
    for name in OBJECTIVES {
        let exe = executable(name);
        let optimised = sslc_compiler::passes::optimize(&exe.module, &exe.gradient).unwrap();
        let mut text = String::new();
        sslc_compiler::ir::print_program(&exe.module, &optimised, &mut text);
        insta::assert_snapshot!(format!("opt_{name}"), text);
    }
}

/// Scalar factors move out of `diag`: `diag(a @ b.T / tau)`, `diag(2 * (a @ b.T))` and
/// `diag(a @ b.T * s / tau)` are row-wise dot products, no product of the batch with itself is
/// formed (forward or gradient), and each equals the dot products computed by hand.
#[test]
fn scalar_factors_move_out_of_diag() {
    let text = "objective scaled_diag {
    param tau = 0.3
    views x1, x2 = simclr_augment(x)
    input z1: [N, D] = encoder(x1)
    input z2: [N, D] = encoder(x2)
    let s = sum(z1[0, :])
    metric by_tau = sum(diag(z1 @ z2.T / tau))
    metric doubled = sum(diag(2 * (z1 @ z2.T)))
    metric both = sum(diag(z1 @ z2.T * s / tau))
    loss = by_tau + doubled + both
}
";
    let mut sources = Sources::new();
    let module = sslc_compiler::compile_text(Path::new("scaled_diag.ssl"), text.into(), &mut sources)
        .unwrap_or_else(|_| panic!("compiles"))
        .modules
        .remove(0);
    let exe = Executable::new(module).expect("differentiates");
    let optimised = sslc_compiler::passes::optimize(&exe.module, &exe.gradient).unwrap();
    let products = optimised.exprs.iter().filter(|(_, e)| matches!(e, Expr::MatMul { .. })).count();
    assert_eq!(products, 0, "a product of the batch with itself is formed:\n{:?}", optimised.exprs);
    let b = bindings(&exe.module, 5, 4, 3);
    let out = run(&exe.module, &exe.gradient, &b).unwrap();
    let value = |name: &str| {
        let k = exe.gradient.outputs.iter().position(|o| o.name == name).unwrap();
        out[k].to_dtype(DType::F64).unwrap().to_vec0::<f64>().unwrap()
    };
    let (z1, z2) = (&b.inputs[0], &b.inputs[1]);
    let dots: f64 = (z1 * z2).unwrap().sum_all().unwrap().to_vec0::<f64>().unwrap();
    let s: f64 = z1.get(0).unwrap().sum_all().unwrap().to_vec0::<f64>().unwrap();
    for (name, want) in [("by_tau", dots / 0.3), ("doubled", 2.0 * dots), ("both", dots * s / 0.3)] {
        assert!((value(name) - want).abs() < 1e-9 * want.abs().max(1.0), "{name}: {} vs {want}", value(name));
    }
}
