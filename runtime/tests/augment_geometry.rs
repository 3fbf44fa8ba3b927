//! Crops, resizing, flips: hand-computed cases and Pillow's float-image resize results.

use rand::SeedableRng;
use sslc_runtime::augment::geometry::{
    center_crop, horizontal_flip, random_crop_padded, resize_shorter, resized_crop, CropBox, RandomResizedCrop,
};
use sslc_runtime::augment::resample::{resample_region, Interpolation};
use sslc_runtime::augment::AugmentRng;
use sslc_runtime::image::Image;

/// Pillow 13's `Image.fromarray(f, "F").resize(size, filter, box)` on [`ramp`], row-major.
const DOWN_BILINEAR: [f32; 6] = [0.18076923, 0.29615384, 0.41153848, 0.46923077, 0.5846154, 0.7];
const DOWN_BICUBIC: [f32; 6] = [0.15868813, 0.28157896, 0.40446976, 0.47447762, 0.5973684, 0.72025925];
const UP_BICUBIC_BOX: [f32; 20] = [
    0.2060561, 0.24959137, 0.29266828, 0.3357452, 0.37882212, 0.28394073, 0.32747597, 0.3705529, 0.4136298, 0.45670673,
    0.3877869, 0.43132213, 0.47439903, 0.51747596, 0.5605529, 0.5205691, 0.5641043, 0.60718125, 0.6502582, 0.6933351,
];
const UP_BILINEAR_BOX: [f32; 20] = [
    0.20903847, 0.2521154, 0.29519233, 0.33826923, 0.38134617, 0.2898077, 0.33288464, 0.37596154, 0.41903847,
    0.4621154, 0.39365384, 0.43673077, 0.47980767, 0.5228846, 0.56596154, 0.5205769, 0.5636538, 0.60673076, 0.6498077,
    0.6928846,
];

/// `(3 y^2 + 7 x + 10) / 130` on a 6x7 grid (the image the constants were computed on).
fn ramp() -> Image {
    let data =
        (0..6).flat_map(|y| (0..7).map(move |x| (3.0 * (y * y) as f32 + 7.0 * x as f32 + 10.0) / 130.0)).collect();
    Image::from_chw(1, 6, 7, data)
}

fn assert_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() < 1e-5, "{what}[{i}]: {a} vs Pillow's {e}");
    }
}

#[test]
fn resampling_matches_pillow_down_and_up_with_a_box() {
    let image = ramp();
    // (what, region, output height, output width, filter, Pillow's result)
    type Case<'a> = (&'a str, [f64; 4], usize, usize, Interpolation, &'a [f32]);
    let cases: [Case; 4] = [
        ("down bilinear", [0.0, 0.0, 7.0, 6.0], 2, 3, Interpolation::Bilinear, &DOWN_BILINEAR),
        ("down bicubic", [0.0, 0.0, 7.0, 6.0], 2, 3, Interpolation::Bicubic, &DOWN_BICUBIC),
        ("up bicubic, box", [1.0, 2.0, 5.0, 5.0], 4, 5, Interpolation::Bicubic, &UP_BICUBIC_BOX),
        ("up bilinear, box", [1.0, 2.0, 5.0, 5.0], 4, 5, Interpolation::Bilinear, &UP_BILINEAR_BOX),
    ];
    for (what, region, h, w, interpolation, expected) in cases {
        assert_close(resample_region(&image, region, h, w, interpolation).data(), expected, what);
    }
}

#[test]
fn halving_a_row_with_bilinear_antialiases_over_three_pixels() {
    // Output pixel 0 of 4 -> 2 has centre 1.0 and support 2: inputs 0, 1, 2 weigh
    // 0.75, 0.75, 0.25 (the triangle at (i + 0.5 - 1) / 2).
    let image = Image::from_chw(1, 1, 4, vec![0.0, 0.4, 0.8, 1.0]);
    let out = resample_region(&image, [0.0, 0.0, 4.0, 1.0], 1, 2, Interpolation::Bilinear);
    let expected0 = (0.75 * 0.0 + 0.75 * 0.4 + 0.25 * 0.8) / 1.75;
    assert!((out.data()[0] - expected0).abs() < 1e-6);
}

#[test]
fn resizing_to_the_same_size_is_identity() {
    let image = ramp();
    for interpolation in [Interpolation::Bilinear, Interpolation::Bicubic] {
        assert_close(
            resample_region(&image, [0.0, 0.0, 7.0, 6.0], 6, 7, interpolation).data(),
            image.data(),
            "identity",
        );
    }
}

#[test]
fn flipping_twice_is_identity_and_once_mirrors_rows() {
    let image = Image::from_chw(2, 2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
    let flipped = horizontal_flip(&image);
    assert_eq!(flipped.data(), &[3.0, 2.0, 1.0, 6.0, 5.0, 4.0, 9.0, 8.0, 7.0, 12.0, 11.0, 10.0]);
    assert_eq!(horizontal_flip(&flipped), image);
}

#[test]
fn random_resized_crop_boxes_stay_inside_and_cover_the_scale_range() {
    let crop = RandomResizedCrop::new(32, (0.08, 1.0), Interpolation::Bicubic);
    let (mut smallest, mut largest) = (f64::MAX, 0.0f64);
    for (height, width) in [(32, 32), (375, 500), (500, 333), (17, 90)] {
        for seed in 0..300 {
            let b = crop.sample_box(height, width, &mut AugmentRng::seed_from_u64(seed));
            assert!(
                b.height >= 1 && b.width >= 1 && b.top + b.height <= height && b.left + b.width <= width,
                "{b:?} outside {height}x{width}"
            );
            let area = (b.height * b.width) as f64 / (height * width) as f64;
            smallest = smallest.min(area);
            largest = largest.max(area);
        }
    }
    assert!(smallest < 0.15 && largest > 0.8, "areas {smallest}..{largest}");
}

#[test]
fn random_resized_crop_falls_back_to_the_centre_when_nothing_fits() {
    // Scale 1 with ratio pinned at 1 cannot fit a 4x16 image: the fallback clamps the ratio
    // (in_ratio 4 > 1) to a 4x4 centred box.
    let crop =
        RandomResizedCrop { size: 4, scale: (1.0, 1.0), ratio: (1.0, 1.0), interpolation: Interpolation::Bilinear };
    let b = crop.sample_box(4, 16, &mut AugmentRng::seed_from_u64(0));
    assert_eq!(b, CropBox { top: 0, left: 6, height: 4, width: 4 });
    // A tall image clamps the other way.
    let b = crop.sample_box(10, 2, &mut AugmentRng::seed_from_u64(0));
    assert_eq!(b, CropBox { top: 4, left: 0, height: 2, width: 2 });
}

#[test]
fn resized_crop_of_a_whole_box_at_full_size_is_identity() {
    let image = ramp();
    let out = resized_crop(&image, CropBox { top: 0, left: 0, height: 6, width: 7 }, 6, 7, Interpolation::Bilinear);
    assert_close(out.data(), image.data(), "whole box");
    assert_eq!(out.data().len(), 42);
}

#[test]
fn padded_crop_is_a_window_of_the_zero_padded_image() {
    let image = Image::filled(3, 4, 4, 1.0);
    for seed in 0..50 {
        let out = random_crop_padded(&image, 4, 2, &mut AugmentRng::seed_from_u64(seed));
        assert_eq!((out.channels(), out.height(), out.width()), (3, 4, 4));
        // The window shows at least a 2x2 corner of the image; all of it is ones or zeros.
        let ones = out.data().iter().filter(|&&v| v == 1.0).count();
        assert!(ones >= 3 * 4 && out.data().iter().all(|&v| v == 0.0 || v == 1.0), "{ones} ones");
    }
    let windows: std::collections::HashSet<Vec<u32>> = (0..200)
        .map(|seed| {
            random_crop_padded(&image, 4, 2, &mut AugmentRng::seed_from_u64(seed))
                .data()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect();
    assert_eq!(windows.len(), 25, "every offset of the 5x5 offsets appears");
}

#[test]
fn resize_shorter_then_centre_crop_gives_the_torchvision_test_view() {
    let image = Image::filled(3, 300, 400, 0.5);
    let resized = resize_shorter(&image, 256, Interpolation::Bilinear);
    assert_eq!((resized.height(), resized.width()), (256, 341));
    let cropped = center_crop(&resized, 224);
    assert_eq!((cropped.height(), cropped.width()), (224, 224));
    assert!(cropped.data().iter().all(|v| (v - 0.5).abs() < 1e-5));
    // Offsets round half to even: (5 - 2) / 2 = 1.5 -> 2.
    let tall = Image::from_chw(1, 5, 5, (0..25).map(|i| (i % 5) as f32).collect());
    assert_eq!(center_crop(&tall, 2).data(), &[2.0, 3.0, 2.0, 3.0]);
}

/// An image of no pixels resamples to black instead of panicking in a loader thread (issue:
/// "min > max" in the resampler on a 0x0 image).
#[test]
fn an_image_without_pixels_resamples_to_black() {
    for (h, w) in [(0, 0), (0, 5), (5, 0)] {
        let image = Image::filled(3, h, w, 0.5);
        let out = resample_region(&image, [0.0, 0.0, w as f64, h as f64], 4, 4, Interpolation::Bilinear);
        assert_eq!(out.data().len(), 3 * 16);
        assert!(out.data().iter().all(|&v| v == 0.0));
    }
}
