//! The roofline figures `sslc bench` prints: compulsory bytes are exactly the leaves and the
//! outputs, and the FLOP count follows the objective's complexity (batch-squared for
//! SimCLR, linear in Sinkhorn's iterations for SwAV).

mod common;

use candle_core::DType;
use common::{bind, Mat, Rng, Setup};
use sslc_compiler::cost::{cost, Cost};
use sslc_compiler::objective::Executable;

fn measured(name: &str, n: usize, d: usize, set: &[&str]) -> Cost {
    let exe = Executable::new(common::compile_objective(&format!("objectives/{name}.ssl"))).expect("differentiable");
    let mut rng = Rng::new(1);
    let mut draw = || -> Mat { rng.normal_mat(n, d) };
    let (z1, z2) = (draw(), draw());
    let setup = Setup {
        inputs: vec![("z1", z1.tensor(DType::F32)), ("z2", z2.tensor(DType::F32))],
        overrides: set.iter().map(|s| s.to_string()).collect(),
        dtype: DType::F32,
        ..Setup::default()
    };
    cost(&exe.module, &exe.optimized, &bind(&exe.module, &setup))
}

#[test]
fn compulsory_bytes_are_the_inputs_and_the_outputs() {
    let (n, d) = (64, 32);
    let c = measured("simclr", n, d, &[]);
    // Inputs z1, z2; outputs loss, per_sample [N], grad_z1, grad_z2; f32.
    let want = (2 * n * d + 1 + n + 2 * n * d) * 4;
    assert_eq!(c.bytes, want as f64);
}

#[test]
fn simclr_costs_grow_with_the_square_of_the_batch() {
    let (small, large) = (measured("simclr", 256, 64, &[]), measured("simclr", 512, 64, &[]));
    let ratio = large.flops / small.flops;
    assert!((3.6..=4.0).contains(&ratio), "doubling N multiplied the FLOPs by {ratio}");
    // 2N × 2N similarities of depth D, forward and the two gradient products: at least
    // 3 × 2 (2N)² D.
    let floor = 3.0 * 2.0 * (2.0 * 512.0f64).powi(2) * 64.0;
    assert!(large.flops >= floor && large.flops <= 3.0 * floor, "{} vs floor {floor}", large.flops);
    assert!(large.intensity() > small.intensity(), "a larger batch reuses each byte more");
}

#[test]
fn loops_count_once_per_iteration() {
    let base = measured("swav", 32, 16, &["K=20", "sinkhorn_iters=3"]);
    let more = measured("swav", 32, 16, &["K=20", "sinkhorn_iters=13"]);
    let per_iteration = (more.flops - base.flops) / 10.0;
    // Each Sinkhorn iteration of each view touches its [N, K] matrix a few times.
    assert!(per_iteration >= 2.0 * 32.0 * 20.0, "{per_iteration} FLOPs per iteration");
    assert_eq!(base.bytes, more.bytes, "the iterations move no compulsory bytes");
}
