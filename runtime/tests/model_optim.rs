//! SGD and Adam against updates computed by hand with PyTorch's formulas.

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use sslc_runtime::optim::{Adam, Optimizer, Sgd};

fn var(values: &[f32]) -> Var {
    Var::from_slice(values, values.len(), &Device::Cpu).unwrap()
}

/// Gradients `coefficients` for `param`: d/dp sum(p * c) = c.
fn grads_of(param: &Var, coefficients: &[f32]) -> GradStore {
    let c = Tensor::from_slice(coefficients, coefficients.len(), &Device::Cpu).unwrap();
    (param.as_tensor() * c).unwrap().sum_all().unwrap().backward().unwrap()
}

fn values(param: &Var) -> Vec<f32> {
    param.as_tensor().to_vec1().unwrap()
}

fn assert_close(actual: &[f32], expected: &[f64]) {
    for (a, e) in actual.iter().zip(expected) {
        assert!((*a as f64 - e).abs() < 1e-6 * e.abs().max(1.0), "{actual:?} vs {expected:?}");
    }
}

#[test]
fn sgd_with_momentum_and_weight_decay_follows_pytorch() {
    let p = var(&[1.0, -2.0]);
    let params = [("p".to_string(), p.clone())];
    let (lr, momentum, wd) = (0.1, 0.9, 0.01);
    let mut sgd = Sgd::new(momentum, wd);
    // Step 1: d = g + wd p = [0.5 + 0.01, -1 - 0.02]; buf = d; p -= lr buf.
    sgd.step(&params, &grads_of(&p, &[0.5, -1.0]), lr).unwrap();
    let d1 = [0.5 + 0.01 * 1.0, -1.0 + 0.01 * -2.0];
    let p1 = [1.0 - lr * d1[0], -2.0 - lr * d1[1]];
    assert_close(&values(&p), &p1);
    // Step 2: buf = m buf + (g + wd p1).
    sgd.step(&params, &grads_of(&p, &[0.25, 0.5]), lr).unwrap();
    let buf2 = [momentum * d1[0] + 0.25 + wd * p1[0], momentum * d1[1] + 0.5 + wd * p1[1]];
    assert_close(&values(&p), &[p1[0] - lr * buf2[0], p1[1] - lr * buf2[1]]);
}

#[test]
fn adam_uses_l2_weight_decay_and_bias_correction_like_pytorch() {
    let p = var(&[0.5, -1.5]);
    let params = [("p".to_string(), p.clone())];
    let (lr, wd, b1, b2, eps) = (0.01, 0.1, 0.9f64, 0.999f64, 1e-8);
    let mut adam = Adam::new(wd);
    let mut expected = [0.5f64, -1.5];
    let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
    for (step, g) in [[0.2f64, -0.4], [-0.3, 0.1], [0.05, 0.05]].iter().enumerate() {
        adam.step(&params, &grads_of(&p, &[g[0] as f32, g[1] as f32]), lr).unwrap();
        let t = (step + 1) as i32;
        for i in 0..2 {
            let d = g[i] + wd * expected[i]; // L2 decay joins the gradient (not AdamW)
            m[i] = b1 * m[i] + (1.0 - b1) * d;
            v[i] = b2 * v[i] + (1.0 - b2) * d * d;
            let denominator = v[i].sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
            expected[i] -= lr / (1.0 - b1.powi(t)) * m[i] / denominator;
        }
        assert_close(&values(&p), &expected);
    }
}

#[test]
fn parameters_without_gradient_are_left_alone_and_keep_no_state() {
    let used = var(&[1.0]);
    let unused = var(&[3.0]);
    let params = [("used".to_string(), used.clone()), ("unused".to_string(), unused.clone())];
    let mut sgd = Sgd::new(0.9, 0.5);
    sgd.step(&params, &grads_of(&used, &[1.0]), 0.1).unwrap();
    assert_eq!(values(&unused), vec![3.0]);
    let state = sgd.state().unwrap();
    assert_eq!(state.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), vec!["momentum_buffer/used"]);
}

fn run_twice_with_restore<O: Optimizer>(make: impl Fn() -> O) {
    let p = var(&[1.0, 2.0, 3.0]);
    let params = [("p".to_string(), p.clone())];
    let mut straight = make();
    straight.step(&params, &grads_of(&p, &[0.1, -0.2, 0.3]), 0.05).unwrap();
    let saved = straight.state().unwrap();
    let p_after_one = values(&p);
    straight.step(&params, &grads_of(&p, &[0.4, 0.5, -0.6]), 0.05).unwrap();
    let expected = values(&p);

    p.set(&Tensor::from_slice(&p_after_one, 3, &Device::Cpu).unwrap()).unwrap();
    let mut restored = make();
    restored.load_state(&saved).unwrap();
    restored.step(&params, &grads_of(&p, &[0.4, 0.5, -0.6]), 0.05).unwrap();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(bits(values(&p)), bits(expected));
}

#[test]
fn restored_state_continues_bit_identically() {
    run_twice_with_restore(|| Sgd::new(0.9, 5e-4));
    run_twice_with_restore(|| Adam::new(5e-6));
}

#[test]
fn foreign_state_is_refused() {
    let adam_state = {
        let p = var(&[1.0]);
        let mut adam = Adam::new(0.0);
        adam.step(&[("p".to_string(), p.clone())], &grads_of(&p, &[1.0]), 0.1).unwrap();
        adam.state().unwrap()
    };
    assert!(Sgd::new(0.9, 0.0).load_state(&adam_state).is_err());
    let partial: Vec<_> = adam_state.into_iter().filter(|(name, _)| !name.starts_with("step/")).collect();
    assert!(Adam::new(0.0).load_state(&partial).is_err());
}

/// Per-parameter options act as a PyTorch parameter group with `lr = 0.5·lr` and
/// `weight_decay = 0`; the other parameter keeps the run's.
#[test]
fn sgd_parameter_options_scale_the_rate_and_the_decay() {
    use sslc_runtime::optim::ParamOptions;
    let (a, b) = (var(&[1.0, -2.0]), var(&[1.0, -2.0]));
    let params = [("a".to_string(), a.clone()), ("b".to_string(), b.clone())];
    let (lr, momentum, wd) = (0.1, 0.9, 0.01);
    let mut sgd = Sgd::new(momentum, wd).with_options([("a".to_string(), ParamOptions { lr_scale: 0.5, decay: 0.0 })]);
    let g = [0.5f32, -1.0];
    let mut grads = grads_of(&a, &g);
    let of_b = grads_of(&b, &g);
    grads.insert(b.as_tensor(), of_b.get(b.as_tensor()).unwrap().clone());
    sgd.step(&params, &grads, lr).unwrap();
    assert_close(&values(&a), &[1.0 - 0.5 * lr * 0.5, -2.0 + 0.5 * lr]);
    assert_close(&values(&b), &[1.0 - lr * (0.5 + wd), -2.0 - lr * (-1.0 - 2.0 * wd)]);
}
