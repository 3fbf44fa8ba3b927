//! Photometric augmentations against hand-computed values.

use rand::SeedableRng;
use sslc_runtime::augment::color::{
    adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, gaussian_blur, to_grayscale, ColorJitter,
    Normalize,
};
use sslc_runtime::augment::AugmentRng;
use sslc_runtime::image::Image;

/// A 1x2 RGB image: pure red and a mid gray-blue.
fn two_pixels() -> Image {
    Image::from_chw(3, 1, 2, vec![1.0, 0.2, 0.0, 0.4, 0.0, 0.6])
}

fn assert_close(actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len());
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() < 1e-6, "[{i}]: {a} vs {e}");
    }
}

#[test]
fn grayscale_uses_601_luma_and_keeps_three_channels() {
    let gray = to_grayscale(&two_pixels());
    let red = 0.299;
    let other = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6;
    assert_close(gray.data(), &[red, other, red, other, red, other]);
    let single = Image::from_chw(1, 1, 2, vec![0.3, 0.9]);
    assert_eq!(to_grayscale(&single), single);
}

#[test]
fn jitter_with_factor_one_and_zero_hue_is_identity() {
    let image = two_pixels();
    assert_close(adjust_brightness(&image, 1.0).data(), image.data());
    assert_close(adjust_contrast(&image, 1.0).data(), image.data());
    assert_close(adjust_saturation(&image, 1.0).data(), image.data());
    assert_close(adjust_hue(&image, 0.0).data(), image.data());
    let no_jitter = ColorJitter { brightness: 0.0, contrast: 0.0, saturation: 0.0, hue: 0.0 };
    assert_close(no_jitter.apply(image.clone(), &mut AugmentRng::seed_from_u64(1)).data(), image.data());
}

#[test]
fn brightness_contrast_and_saturation_blend_as_torchvision() {
    let image = two_pixels();
    // Brightness 1.5 scales and clamps at 1.
    assert_close(adjust_brightness(&image, 1.5).data(), &[1.0, 0.3, 0.0, 0.6, 0.0, 0.9]);
    // Contrast 0 gives the mean luma everywhere.
    let mean = (0.299 + (0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6)) / 2.0;
    assert_close(adjust_contrast(&image, 0.0).data(), &[mean; 6]);
    // Saturation 0 is grayscale, 2 pushes away from it (clamped).
    assert_close(adjust_saturation(&image, 0.0).data(), to_grayscale(&image).data());
    let luma_red = 0.299f32;
    assert_close(&adjust_saturation(&image, 2.0).data()[..1], &[(2.0 - luma_red).clamp(0.0, 1.0)]);
}

#[test]
fn hue_rotates_primaries_and_leaves_grays_alone() {
    // A third of a turn maps red to green, half a turn maps red to cyan.
    let red = Image::from_chw(3, 1, 1, vec![1.0, 0.0, 0.0]);
    assert_close(adjust_hue(&red, 1.0 / 3.0).data(), &[0.0, 1.0, 0.0]);
    assert_close(adjust_hue(&red, -0.5).data(), &[0.0, 1.0, 1.0]);
    let gray = Image::from_chw(3, 1, 1, vec![0.4, 0.4, 0.4]);
    assert_close(adjust_hue(&gray, 0.3).data(), gray.data());
    // Saturation and value are kept: (0.8, 0.4, 0.2) shifted by 1/2 is (0.2, 0.6, 0.8).
    let orange = Image::from_chw(3, 1, 1, vec![0.8, 0.4, 0.2]);
    assert_close(adjust_hue(&orange, 0.5).data(), &[0.2, 0.6, 0.8]);
}

#[test]
fn jitter_factors_stay_in_range_and_vary() {
    let jitter = ColorJitter { brightness: 0.4, contrast: 0.0, saturation: 0.0, hue: 0.0 };
    let image = Image::filled(1, 1, 1, 0.5);
    let values: Vec<f32> =
        (0..200).map(|s| jitter.apply(image.clone(), &mut AugmentRng::seed_from_u64(s)).data()[0]).collect();
    // Brightness factor in [0.6, 1.4]: 0.5 -> [0.3, 0.7].
    assert!(values.iter().all(|v| (0.3..=0.7).contains(v)));
    assert!(values.iter().any(|&v| v < 0.35) && values.iter().any(|&v| v > 0.65));
}

#[test]
fn blur_keeps_constants_and_mass_and_spreads_a_dot() {
    let flat = Image::filled(3, 9, 9, 0.25);
    assert_close(gaussian_blur(&flat, 1.5).data(), flat.data());
    let mut dot = Image::filled(1, 15, 15, 0.0);
    dot.set(0, 7, 7, 1.0);
    let blurred = gaussian_blur(&dot, 1.0);
    let total: f32 = blurred.data().iter().sum();
    assert!((total - 1.0).abs() < 1e-5, "mass {total}");
    // Separable Gaussian, sigma 1: the centre is (1 / sum_k exp(-k^2 / 2))^2 over k in -3..=3.
    let norm: f32 = (-3..=3).map(|k: i32| (-(k * k) as f32 / 2.0).exp()).sum();
    assert!((blurred.get(0, 7, 7) - 1.0 / (norm * norm)).abs() < 1e-6);
    assert!(blurred.get(0, 7, 8) < blurred.get(0, 7, 7) && blurred.get(0, 7, 8) > blurred.get(0, 7, 9));
}

#[test]
fn normalize_then_invert_is_identity() {
    let normalize = Normalize { mean: vec![0.4914, 0.4822, 0.4465], std: vec![0.2023, 0.1994, 0.2010] };
    let image = two_pixels();
    let normalized = normalize.apply(image.clone());
    assert!((normalized.data()[0] - (1.0 - 0.4914) / 0.2023).abs() < 1e-5);
    assert_close(normalize.invert(normalized).data(), image.data());
}
