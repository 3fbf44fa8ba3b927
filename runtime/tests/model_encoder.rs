//! Encoder: shapes, parameter counts, initialisation, BatchNorm semantics, SDCLR pruning.

use candle_core::{Device, Tensor, Var, D};
use sslc_runtime::model::{BackboneKind, Branch, ConvInit, Encoder, EncoderConfig, Mode, ModelError};

fn random_images(n: usize, channels: usize, size: usize, seed: u64) -> Tensor {
    // A fixed pseudo-random pattern, so tests need no RNG plumbing.
    let values: Vec<f32> = (0..n * channels * size * size)
        .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0)
        .collect();
    Tensor::from_vec(values, (n, channels, size, size), &Device::Cpu).unwrap()
}

fn small(pruned_branch: bool) -> Encoder {
    Encoder::new(EncoderConfig::reference(BackboneKind::SmallConv, 1, pruned_branch, 7)).unwrap()
}

fn param(encoder: &Encoder, name: &str) -> Var {
    encoder.parameters().iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no parameter {name}")).1.clone()
}

fn buffer(encoder: &Encoder, name: &str) -> Vec<f32> {
    encoder
        .buffers()
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no buffer {name}"))
        .1
        .as_tensor()
        .to_vec1()
        .unwrap()
}

fn backbone_param_count(encoder: &Encoder) -> usize {
    encoder.parameters().iter().filter(|(name, _)| name.starts_with("backbone.")).map(|(_, var)| var.elem_count()).sum()
}

#[test]
fn small_conv_net_gives_128_d_features_and_128_d_embeddings_for_digits_and_fashion_mnist() {
    let encoder = small(false);
    for size in [8, 28] {
        let (features, embedding) = encoder.forward(&random_images(4, 1, size, 1), Branch::Dense, Mode::Train).unwrap();
        assert_eq!(features.dims(), &[4, 128]);
        assert_eq!(embedding.dims(), &[4, 128]);
    }
}

#[test]
fn resnet18_cifar_has_the_reference_parameter_count_and_512_d_features() {
    let encoder = Encoder::new(EncoderConfig::reference(BackboneKind::ResNet18Cifar, 3, false, 0)).unwrap();
    // The CIFAR ResNet-18 of `resnet.py` without its fc layer: 11,173,962 - (512 * 10 + 10).
    assert_eq!(backbone_param_count(&encoder), 11_168_832);
    let (features, embedding) = encoder.forward(&random_images(2, 3, 32, 2), Branch::Dense, Mode::Train).unwrap();
    assert_eq!(features.dims(), &[2, 512]);
    assert_eq!(embedding.dims(), &[2, 128]);
}

#[test]
fn resnet50_has_torchvisions_parameter_count_and_2048_d_features() {
    let encoder = Encoder::new(EncoderConfig::reference(BackboneKind::ResNet50, 3, false, 0)).unwrap();
    // torchvision's resnet50 (25,557,032) without its fc layer (2048 * 1000 + 1000).
    assert_eq!(backbone_param_count(&encoder), 23_508_032);
    let (features, embedding) = encoder.forward(&random_images(1, 3, 64, 3), Branch::Dense, Mode::Eval).unwrap();
    assert_eq!(features.dims(), &[1, 2048]);
    assert_eq!(embedding.dims(), &[1, 128]);
}

#[test]
fn projector_is_fc_bn_relu_fc_without_bias_bn() {
    let encoder = Encoder::new(EncoderConfig::reference(BackboneKind::ResNet18Cifar, 3, false, 0)).unwrap();
    let projector: Vec<(&str, Vec<usize>)> = encoder
        .parameters()
        .iter()
        .filter(|(name, _)| name.starts_with("projector."))
        .map(|(name, var)| (name.as_str(), var.dims().to_vec()))
        .collect();
    assert_eq!(
        projector,
        vec![
            ("projector.fc1.weight", vec![512, 512]),
            ("projector.fc1.bias", vec![512]),
            ("projector.bn1.dense.weight", vec![512]),
            ("projector.bn1.dense.bias", vec![512]),
            ("projector.fc2.weight", vec![128, 512]),
            ("projector.bn2.dense.weight", vec![128]),
            ("projector.bn2.dense.bias", vec![128]),
        ]
    );
}

fn std_and_max_abs(var: &Var) -> (f64, f64) {
    let values: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (var.sqrt(), values.iter().map(|v| v.abs() as f64).fold(0.0, f64::max))
}

#[test]
fn default_initialisation_matches_pytorch() {
    let encoder = Encoder::new(EncoderConfig::reference(BackboneKind::ResNet18Cifar, 3, false, 0)).unwrap();
    assert_eq!(encoder.config().conv_init, ConvInit::PytorchDefault);
    // layer3's first 3x3 conv: 128 -> 256, fan_in 1152; U(±1/√fan_in) has std bound/√3.
    let bound = 1.0 / (128.0f64 * 9.0).sqrt();
    let (std, max_abs) = std_and_max_abs(&param(&encoder, "backbone.layer3.0.unit0.conv.weight"));
    assert!(max_abs <= bound && max_abs > 0.99 * bound, "max |w| {max_abs}, bound {bound}");
    assert!((std - bound / 3f64.sqrt()).abs() < 0.01 * bound, "std {std}");
    // Linear weight and bias: U(±1/√in_features).
    let linear_bound = 1.0 / 512f64.sqrt();
    let (_, weight_max) = std_and_max_abs(&param(&encoder, "projector.fc1.weight"));
    let (_, bias_max) = std_and_max_abs(&param(&encoder, "projector.fc1.bias"));
    assert!(weight_max <= linear_bound && weight_max > 0.99 * linear_bound);
    assert!(bias_max <= linear_bound && bias_max > 0.5 * linear_bound);
    // BatchNorm: weight 1, bias 0, running mean 0, running var 1.
    let bn_weight: Vec<f32> = param(&encoder, "backbone.stem.0.bn.dense.weight").as_tensor().to_vec1().unwrap();
    let bn_bias: Vec<f32> = param(&encoder, "backbone.stem.0.bn.dense.bias").as_tensor().to_vec1().unwrap();
    assert!(bn_weight.iter().all(|&w| w == 1.0) && bn_bias.iter().all(|&b| b == 0.0));
    assert!(buffer(&encoder, "backbone.stem.0.bn.dense.running_mean").iter().all(|&m| m == 0.0));
    assert!(buffer(&encoder, "backbone.stem.0.bn.dense.running_var").iter().all(|&v| v == 1.0));
}

#[test]
fn sdclr_and_resnet50_use_the_references_kaiming_normal_fan_out() {
    let config = EncoderConfig::reference(BackboneKind::ResNet18Cifar, 3, true, 0);
    assert_eq!(config.conv_init, ConvInit::KaimingNormalFanOut);
    assert!(config.input_standardization.is_some());
    let encoder = Encoder::new(config).unwrap();
    // layer3's first 3x3 conv: fan_out = 256 * 9.
    let expected = (2.0 / (256.0f64 * 9.0)).sqrt();
    let (std, _) = std_and_max_abs(&param(&encoder, "backbone.layer3.0.unit0.conv.weight"));
    assert!((std - expected).abs() < 0.01 * expected, "std {std}, expected {expected}");
    assert_eq!(EncoderConfig::reference(BackboneKind::ResNet50, 3, false, 0).conv_init, ConvInit::KaimingNormalFanOut);
}

#[test]
fn same_seed_same_weights_other_seed_other_weights() {
    let first = small(false).state();
    let again = small(false).state();
    let other = Encoder::new(EncoderConfig::reference(BackboneKind::SmallConv, 1, false, 8)).unwrap().state();
    let bits = |state: &[(String, Tensor)]| -> Vec<u32> {
        state.iter().flat_map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()).map(f32::to_bits).collect()
    };
    assert_eq!(bits(&first), bits(&again));
    assert_ne!(bits(&first), bits(&other));
}

#[test]
fn batchnorm_training_normalises_with_batch_statistics_and_updates_running_ones_with_momentum_0_1() {
    let encoder = small(false);
    let images = random_images(4, 1, 8, 5);
    encoder.forward(&images, Branch::Dense, Mode::Train).unwrap();
    // Recompute the first BN's input by hand: the stem's 3x3 conv with padding 1.
    let weight = param(&encoder, "backbone.stem.0.conv.weight");
    let conv = images.conv2d(weight.as_tensor(), 1, 1, 1, 1).unwrap();
    let rows = conv.transpose(0, 1).unwrap().contiguous().unwrap().flatten_from(1).unwrap();
    let count = rows.dim(1).unwrap() as f64;
    let mean: Vec<f32> = rows.mean(D::Minus1).unwrap().to_vec1().unwrap();
    let biased: Vec<f32> = rows
        .broadcast_sub(&rows.mean_keepdim(D::Minus1).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .mean(D::Minus1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let running_mean = buffer(&encoder, "backbone.stem.0.bn.dense.running_mean");
    let running_var = buffer(&encoder, "backbone.stem.0.bn.dense.running_var");
    for c in 0..mean.len() {
        let expected_mean = 0.1 * mean[c];
        let expected_var = 0.9 + 0.1 * biased[c] as f64 * count / (count - 1.0);
        assert!((running_mean[c] - expected_mean).abs() < 1e-5, "channel {c}: {} vs {expected_mean}", running_mean[c]);
        assert!(
            (running_var[c] as f64 - expected_var).abs() < 1e-5,
            "channel {c}: {} vs {expected_var}",
            running_var[c]
        );
    }
}

#[test]
fn eval_mode_uses_running_statistics_so_samples_do_not_influence_each_other() {
    let encoder = small(false);
    let images = random_images(4, 1, 8, 9);
    encoder.forward(&images, Branch::Dense, Mode::Train).unwrap();
    let before = encoder.state();
    let batch = encoder.features(&images, Branch::Dense, Mode::Eval).unwrap();
    let alone = encoder.features(&images.narrow(0, 0, 1).unwrap(), Branch::Dense, Mode::Eval).unwrap();
    let diff =
        (batch.narrow(0, 0, 1).unwrap() - alone).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "eval output depends on the batch: {diff}");
    // Eval mode leaves the running statistics alone.
    for ((name, old), (_, new)) in before.iter().zip(encoder.state()) {
        let changed = (old - &new).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(changed, 0.0, "{name} changed in eval mode");
    }
    // Train mode, by contrast, normalises with the batch's own statistics.
    let train_batch = encoder.features(&images, Branch::Dense, Mode::Train).unwrap();
    let train_pair = encoder.features(&images.narrow(0, 0, 2).unwrap(), Branch::Dense, Mode::Train).unwrap();
    let diff = (train_batch.narrow(0, 0, 1).unwrap() - train_pair.narrow(0, 0, 1).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 1e-4);
}

#[test]
fn pruning_masks_exactly_the_requested_share_of_the_smallest_conv_weights_over_all_layers() {
    let encoder = small(true);
    let count = encoder.update_prune_mask(0.9).unwrap();
    let total: usize = encoder.conv_weights_and_masks().iter().map(|(w, _)| w.elem_count()).sum();
    assert_eq!(count.total, total);
    assert_eq!(count.pruned, (0.9 * total as f64).ceil() as usize);
    let (mut largest_pruned, mut smallest_kept, mut zeros) = (0f32, f32::INFINITY, 0usize);
    let mut pruned_per_layer = Vec::new();
    for (weight, mask) in encoder.conv_weights_and_masks() {
        let weight: Vec<f32> = weight.flatten_all().unwrap().to_vec1().unwrap();
        let mask: Vec<f32> = mask.unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let mut layer_zeros = 0;
        for (w, m) in weight.iter().zip(&mask) {
            assert!(*m == 0.0 || *m == 1.0);
            if *m == 0.0 {
                largest_pruned = largest_pruned.max(w.abs());
                layer_zeros += 1;
            } else {
                smallest_kept = smallest_kept.min(w.abs());
            }
        }
        zeros += layer_zeros;
        pruned_per_layer.push(layer_zeros as f64 / weight.len() as f64);
    }
    assert_eq!(zeros, count.pruned);
    assert!(largest_pruned <= smallest_kept, "pruned {largest_pruned} > kept {smallest_kept}");
    // Global, not per layer: layers with different init scales lose different shares.
    assert!(pruned_per_layer.iter().any(|&share| (share - 0.9).abs() > 0.02), "{pruned_per_layer:?}");
}

#[test]
fn pruned_branch_uses_the_masked_weights() {
    let encoder = small(true);
    let images = random_images(4, 1, 8, 11);
    // Nothing pruned yet: the pruned branch (same initial BN parameters) equals the dense one.
    let dense = encoder.features(&images, Branch::Dense, Mode::Train).unwrap();
    let unpruned = encoder.features(&images, Branch::Pruned, Mode::Train).unwrap();
    assert!((&dense - &unpruned).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-6);
    encoder.update_prune_mask(0.0).unwrap();
    let zero_pruned = encoder.features(&images, Branch::Pruned, Mode::Train).unwrap();
    assert!((&dense - &zero_pruned).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-6);
    encoder.update_prune_mask(0.5).unwrap();
    let half_pruned = encoder.features(&images, Branch::Pruned, Mode::Train).unwrap();
    assert!((&dense - &half_pruned).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 1e-3);
    // Pruning leaves the weights themselves alone.
    let dense_again = encoder.features(&images, Branch::Dense, Mode::Train).unwrap();
    assert!((&dense - &dense_again).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-6);
}

#[test]
fn dense_and_pruned_branches_keep_independent_batchnorm_statistics_and_parameters() {
    let encoder = small(true);
    encoder.update_prune_mask(0.9).unwrap();
    let images = random_images(4, 1, 8, 13);
    encoder.forward(&images, Branch::Pruned, Mode::Train).unwrap();
    for name in ["backbone.stem.2.bn", "projector.bn1", "projector.bn2"] {
        assert!(
            buffer(&encoder, &format!("{name}.dense.running_mean")).iter().all(|&m| m == 0.0),
            "{name} dense stats moved"
        );
        assert!(
            buffer(&encoder, &format!("{name}.pruned.running_mean")).iter().any(|&m| m != 0.0),
            "{name} pruned stats did not move"
        );
    }
    // A loss on the pruned branch reaches the pruned BN affine parameters only.
    let (_, embedding) = encoder.forward(&images, Branch::Pruned, Mode::Train).unwrap();
    let grads = embedding.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for name in ["backbone.stem.0.bn", "projector.bn1", "projector.bn2"] {
        assert!(
            grads.get(param(&encoder, &format!("{name}.pruned.weight")).as_tensor()).is_some(),
            "{name} pruned got no gradient"
        );
        assert!(
            grads.get(param(&encoder, &format!("{name}.dense.weight")).as_tensor()).is_none(),
            "{name} dense got a gradient"
        );
    }
    // Masked conv weights get no gradient through the pruned branch.
    let (weight, mask) = encoder.conv_weights_and_masks().remove(0);
    let grad = grads.get(param(&encoder, "backbone.stem.0.conv.weight").as_tensor()).unwrap();
    let masked_grad =
        (grad * (1.0 - mask.unwrap()).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(masked_grad, 0.0);
    assert_eq!(weight.dims(), grad.dims());
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let encoder = small(false);
    assert!(matches!(
        encoder.forward(&random_images(2, 3, 8, 0), Branch::Dense, Mode::Train),
        Err(ModelError::Shape(_))
    ));
    let vector = Tensor::zeros(8, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(encoder.forward(&vector, Branch::Dense, Mode::Train), Err(ModelError::Shape(_))));
    // One image, train mode: the projector's BatchNorm1d has one value per channel (PyTorch refuses too).
    let error = encoder.forward(&random_images(1, 1, 8, 0), Branch::Dense, Mode::Train).unwrap_err();
    assert!(error.to_string().contains("batch of at least 2"), "{error}");
    assert!(matches!(
        encoder.forward(&random_images(2, 1, 8, 0), Branch::Pruned, Mode::Train),
        Err(ModelError::NoPrunedBranch)
    ));
    assert!(matches!(encoder.update_prune_mask(0.5), Err(ModelError::NoPrunedBranch)));
    assert!(matches!(small(true).update_prune_mask(1.5), Err(ModelError::InvalidPruneFraction(_))));
    // Images with no pixels: the 3x3 conv has nothing to slide over.
    assert!(encoder.forward(&random_images(2, 1, 0, 0), Branch::Dense, Mode::Eval).is_err());
}

#[test]
fn state_round_trips_and_foreign_state_is_refused() {
    let source = small(true);
    source.forward(&random_images(4, 1, 8, 1), Branch::Dense, Mode::Train).unwrap();
    let target = Encoder::new(EncoderConfig::reference(BackboneKind::SmallConv, 1, true, 99)).unwrap();
    target.load_state(&source.state()).unwrap();
    for ((name, a), (_, b)) in source.state().iter().zip(target.state()) {
        let a: Vec<u32> = a.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect();
        let b: Vec<u32> = b.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect();
        assert_eq!(a, b, "{name}");
    }
    let dense_only = small(false);
    let error = dense_only.load_state(&source.state()).unwrap_err();
    assert!(matches!(error, ModelError::StateMismatch(_)), "{error}");
}

fn with_target_and_predictor(hidden: usize) -> Encoder {
    let mut config = EncoderConfig::reference(BackboneKind::SmallConv, 1, false, 7);
    config.momentum_target = true;
    config.predictor_hidden = Some(hidden);
    Encoder::new(config).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// MoCo's and BYOL's target: starts as a copy of the online network, is not trained (not among
/// the parameters), and moves by exactly `θ_t ← m·θ_t + (1 − m)·θ`.
#[test]
fn the_momentum_target_starts_as_a_copy_and_moves_by_its_momentum() {
    let encoder = with_target_and_predictor(16);
    let images = random_images(6, 1, 28, 3);
    let online = encoder.forward(&images, Branch::Dense, Mode::Eval).unwrap().1;
    let target = encoder.forward_target(&images, Mode::Eval).unwrap();
    assert_eq!(values(&online), values(&target), "the target starts equal to the online network");
    assert!(encoder.parameters().iter().all(|(n, _)| !n.starts_with("target.")), "the target is not trained");

    let w = param(&encoder, "projector.fc1.weight");
    let before = values(w.as_tensor());
    w.set(&(w.as_tensor() * 3.0).unwrap()).unwrap();
    encoder.update_target(0.75).unwrap();
    let state = encoder.state();
    let target_w = &state.iter().find(|(n, _)| n == "target.projector.fc1.weight").expect("saved under target.").1;
    for (t, b) in values(target_w).iter().zip(&before) {
        let want = 0.75 * b + 0.25 * (3.0 * b);
        assert!((t - want).abs() <= 1e-6 * want.abs().max(1.0), "{t} vs {want}");
    }
    assert!(matches!(encoder.update_target(1.5), Err(ModelError::Shape(_))), "a momentum outside [0, 1] is refused");

    // The state round-trips into a fresh encoder; an encoder without a target refuses it.
    let fresh = with_target_and_predictor(16);
    fresh.load_state(&state).unwrap();
    assert_eq!(
        values(&fresh.forward_target(&images, Mode::Eval).unwrap()),
        values(&encoder.forward_target(&images, Mode::Eval).unwrap())
    );
    assert!(matches!(small(false).load_state(&state), Err(ModelError::StateMismatch(_))));
}

/// BYOL's and SimSiam's predictor: fc(D, H) + BN + ReLU + fc(H, D), trained with the encoder.
#[test]
fn the_predictor_maps_embeddings_to_embeddings_through_its_hidden_width() {
    let encoder = with_target_and_predictor(24);
    let shapes: Vec<(&str, Vec<usize>)> = encoder
        .parameters()
        .iter()
        .filter(|(n, _)| n.starts_with("predictor."))
        .map(|(n, v)| (n.as_str(), v.dims().to_vec()))
        .collect();
    assert_eq!(
        shapes,
        [
            ("predictor.fc1.weight", vec![24, 128]),
            ("predictor.fc1.bias", vec![24]),
            ("predictor.bn.dense.weight", vec![24]),
            ("predictor.bn.dense.bias", vec![24]),
            ("predictor.fc2.weight", vec![128, 24]),
            ("predictor.fc2.bias", vec![128]),
        ]
    );
    let z = encoder.forward(&random_images(5, 1, 28, 4), Branch::Dense, Mode::Train).unwrap().1;
    assert_eq!(encoder.predict(&z, Mode::Train).unwrap().dims(), &[5, 128]);
    assert!(small(false).predict(&z, Mode::Train).is_err(), "an encoder without a predictor says so");
}
