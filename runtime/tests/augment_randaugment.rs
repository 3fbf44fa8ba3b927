//! RandAugment's operations against Pillow's output on a small RGB image (the reference runs
//! them in PIL), and the magnitude scale's endpoints.

use rand::SeedableRng;
use sslc_runtime::augment::randaugment::{rand_augment, RandAugmentOp, MAX_STRENGTH};
use sslc_runtime::augment::AugmentRng;
use sslc_runtime::image::Image;

/// Pillow's results on [`test_image`], channel-major, from `Image.fromarray(...)` and
/// `ImageOps`/`ImageEnhance`/`Image.transform(AFFINE)`/`Image.rotate` (Pillow 13).
const AUTOCONTRAST: [u8; 90] = [
    0, 29, 58, 87, 116, 146, 53, 93, 134, 174, 214, 255, 106, 158, 209, 3, 54, 105, 160, 222, 27, 89, 152, 214, 213,
    29, 102, 176, 249, 65, 35, 65, 95, 125, 155, 185, 90, 131, 172, 213, 255, 32, 144, 197, 249, 39, 91, 143, 199, 0,
    63, 127, 191, 255, 253, 65, 140, 215, 27, 102, 54, 88, 121, 154, 187, 220, 115, 161, 206, 252, 5, 51, 176, 234, 0,
    58, 116, 174, 236, 14, 85, 156, 227, 5, 4, 88, 171, 254, 45, 129,
];
const EQUALIZE: [u8; 90] = [
    0, 29, 58, 87, 116, 145, 53, 93, 133, 173, 213, 253, 106, 157, 208, 3, 54, 105, 159, 221, 27, 89, 151, 213, 212,
    29, 102, 175, 248, 65, 37, 66, 95, 124, 153, 182, 90, 130, 170, 210, 250, 34, 143, 194, 245, 40, 91, 142, 196, 2,
    64, 126, 188, 250, 249, 66, 139, 212, 29, 102, 74, 103, 132, 161, 190, 219, 127, 167, 207, 247, 31, 71, 180, 231,
    26, 77, 128, 179, 233, 39, 101, 163, 225, 31, 30, 103, 176, 249, 66, 139,
];
const SOLARIZE_100: [u8; 90] = [
    0, 29, 58, 87, 139, 110, 53, 93, 122, 82, 42, 2, 149, 98, 47, 3, 54, 150, 96, 34, 27, 89, 104, 42, 43, 29, 153, 80,
    7, 65, 37, 66, 95, 131, 102, 73, 90, 125, 85, 45, 5, 34, 112, 61, 10, 40, 91, 113, 59, 2, 64, 129, 67, 5, 6, 66,
    116, 43, 29, 153, 74, 152, 123, 94, 65, 36, 128, 88, 48, 8, 31, 71, 75, 24, 26, 77, 127, 76, 22, 39, 154, 92, 30,
    31, 30, 152, 79, 6, 66, 116,
];
const POSTERIZE_5: [u8; 90] = [
    0, 24, 56, 80, 112, 144, 48, 88, 128, 168, 208, 248, 104, 152, 208, 0, 48, 104, 152, 216, 24, 88, 144, 208, 208,
    24, 96, 168, 248, 64, 32, 64, 88, 120, 152, 176, 88, 128, 168, 208, 248, 32, 136, 192, 240, 40, 88, 136, 192, 0,
    64, 120, 184, 248, 248, 64, 136, 208, 24, 96, 72, 96, 128, 160, 184, 216, 120, 160, 200, 240, 24, 64, 176, 224, 24,
    72, 128, 176, 232, 32, 96, 160, 224, 24, 24, 96, 176, 248, 64, 136,
];
const CONTRAST_1_5: [u8; 90] = [
    0, 0, 21, 65, 108, 152, 14, 74, 134, 194, 254, 255, 93, 170, 246, 0, 15, 92, 173, 255, 0, 68, 161, 254, 252, 0, 87,
    197, 255, 32, 0, 33, 77, 120, 164, 207, 69, 129, 189, 249, 255, 0, 149, 225, 255, 0, 71, 147, 228, 0, 30, 123, 216,
    255, 255, 33, 143, 252, 0, 87, 45, 89, 132, 176, 219, 255, 125, 185, 245, 255, 0, 41, 204, 255, 0, 50, 126, 203,
    255, 0, 86, 179, 255, 0, 0, 89, 198, 255, 33, 143,
];
const COLOR_0_3: [u8; 90] = [
    21, 50, 79, 108, 137, 166, 74, 114, 154, 194, 213, 148, 127, 178, 208, 24, 75, 126, 180, 116, 48, 110, 172, 213,
    212, 50, 123, 196, 143, 86, 32, 61, 90, 119, 148, 177, 85, 125, 165, 205, 224, 83, 138, 189, 219, 35, 86, 137, 191,
    51, 59, 121, 183, 224, 223, 61, 134, 207, 78, 97, 43, 72, 101, 130, 159, 188, 96, 136, 176, 216, 159, 94, 149, 200,
    154, 46, 97, 148, 202, 62, 70, 132, 194, 159, 158, 72, 145, 218, 89, 108,
];
const BRIGHTNESS_1_7: [u8; 90] = [
    0, 49, 98, 147, 197, 246, 90, 158, 226, 255, 255, 255, 180, 255, 255, 5, 91, 178, 255, 255, 45, 151, 255, 255, 255,
    49, 173, 255, 255, 110, 62, 112, 161, 210, 255, 255, 153, 221, 255, 255, 255, 57, 243, 255, 255, 68, 154, 241, 255,
    3, 108, 214, 255, 255, 255, 112, 236, 255, 49, 173, 125, 175, 224, 255, 255, 255, 215, 255, 255, 255, 52, 120, 255,
    255, 44, 130, 217, 255, 255, 66, 171, 255, 255, 52, 51, 175, 255, 255, 112, 236,
];
const SHARPNESS_1_9: [u8; 90] = [
    0, 29, 58, 87, 116, 145, 53, 93, 151, 208, 255, 253, 106, 175, 255, 0, 0, 105, 159, 255, 0, 71, 169, 213, 212, 29,
    102, 175, 248, 65, 37, 66, 95, 124, 153, 182, 90, 130, 188, 245, 255, 34, 143, 229, 255, 0, 55, 142, 196, 0, 28,
    126, 223, 250, 249, 66, 139, 212, 29, 102, 74, 103, 132, 161, 190, 219, 127, 185, 242, 255, 0, 71, 180, 255, 0, 41,
    128, 179, 233, 0, 83, 181, 255, 31, 30, 103, 176, 249, 66, 139,
];
const SHEAR_X_0_3: [u8; 90] = [
    0, 29, 58, 87, 116, 145, 53, 93, 133, 173, 213, 253, 157, 208, 3, 54, 105, 0, 221, 27, 89, 151, 213, 0, 29, 102,
    175, 248, 65, 0, 37, 66, 95, 124, 153, 182, 90, 130, 170, 210, 250, 34, 194, 245, 40, 91, 142, 0, 2, 64, 126, 188,
    250, 0, 66, 139, 212, 29, 102, 0, 74, 103, 132, 161, 190, 219, 127, 167, 207, 247, 31, 71, 231, 26, 77, 128, 179,
    0, 39, 101, 163, 225, 31, 0, 103, 176, 249, 66, 139, 0,
];
const SHEAR_X_NEG_0_3: [u8; 90] = [
    0, 29, 58, 87, 116, 145, 53, 93, 133, 173, 213, 253, 0, 106, 157, 208, 3, 54, 0, 159, 221, 27, 89, 151, 0, 212, 29,
    102, 175, 248, 37, 66, 95, 124, 153, 182, 90, 130, 170, 210, 250, 34, 0, 143, 194, 245, 40, 91, 0, 196, 2, 64, 126,
    188, 0, 249, 66, 139, 212, 29, 74, 103, 132, 161, 190, 219, 127, 167, 207, 247, 31, 71, 0, 180, 231, 26, 77, 128,
    0, 233, 39, 101, 163, 225, 0, 30, 103, 176, 249, 66,
];
const TRANSLATE_Y_2: [u8; 90] = [
    106, 157, 208, 3, 54, 105, 159, 221, 27, 89, 151, 213, 212, 29, 102, 175, 248, 65, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 143, 194, 245, 40, 91, 142, 196, 2, 64, 126, 188, 250, 249, 66, 139, 212, 29, 102, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 180, 231, 26, 77, 128, 179, 233, 39, 101, 163, 225, 31, 30, 103, 176, 249, 66, 139, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0,
];
const TRANSLATE_Y_NEG_2: [u8; 90] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 29, 58, 87, 116, 145, 53, 93, 133, 173, 213, 253, 106, 157, 208, 3, 54, 105,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 37, 66, 95, 124, 153, 182, 90, 130, 170, 210, 250, 34, 143, 194, 245, 40, 91,
    142, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 74, 103, 132, 161, 190, 219, 127, 167, 207, 247, 31, 71, 180, 231, 26, 77,
    128, 179,
];
const ROTATE_30: [u8; 90] = [
    0, 58, 87, 213, 253, 0, 29, 58, 173, 173, 54, 105, 53, 93, 208, 3, 151, 213, 106, 157, 27, 27, 175, 248, 0, 159,
    221, 102, 175, 0, 0, 95, 124, 250, 34, 0, 66, 95, 210, 210, 91, 142, 90, 130, 245, 40, 188, 250, 143, 194, 64, 64,
    212, 29, 0, 196, 2, 139, 212, 0, 0, 132, 161, 31, 71, 0, 103, 132, 247, 247, 128, 179, 127, 167, 26, 77, 225, 31,
    180, 231, 101, 101, 249, 66, 0, 233, 39, 176, 249, 0,
];
const ROTATE_NEG_30: [u8; 90] = [
    0, 53, 93, 58, 87, 0, 106, 157, 133, 133, 87, 116, 159, 221, 208, 3, 213, 253, 29, 102, 89, 89, 54, 105, 0, 102,
    175, 151, 213, 0, 0, 90, 130, 95, 124, 0, 143, 194, 170, 170, 124, 153, 196, 2, 245, 40, 250, 34, 66, 139, 126,
    126, 91, 142, 0, 139, 212, 188, 250, 0, 0, 127, 167, 132, 161, 0, 180, 231, 207, 207, 161, 190, 233, 39, 26, 77,
    31, 71, 103, 176, 163, 163, 128, 179, 0, 176, 249, 225, 31, 0,
];

const HEIGHT: usize = 5;
const WIDTH: usize = 6;

/// `(37 c + 53 y + 29 x + 11 x y) mod 256`, the image the constants were computed on.
fn test_levels() -> Vec<u8> {
    let mut levels = Vec::new();
    for c in 0..3 {
        for y in 0..HEIGHT {
            for x in 0..WIDTH {
                levels.push(((37 * c + 53 * y + 29 * x + 11 * x * y) % 256) as u8);
            }
        }
    }
    levels
}

fn test_image() -> Image {
    Image::from_chw_levels(3, HEIGHT, WIDTH, &test_levels(), 255.0)
}

fn levels_of(image: &Image) -> Vec<u8> {
    image.data().iter().map(|v| (v * 255.0).round() as u8).collect()
}

fn rng() -> AugmentRng {
    AugmentRng::seed_from_u64(7)
}

#[test]
fn pixel_operations_match_pillow() {
    let image = test_image();
    let cases: [(RandAugmentOp, f64, &[u8]); 8] = [
        (RandAugmentOp::AutoContrast, 0.0, &AUTOCONTRAST),
        (RandAugmentOp::Equalize, 0.0, &EQUALIZE),
        (RandAugmentOp::Solarize, 100.0, &SOLARIZE_100),
        (RandAugmentOp::Posterize, 5.0, &POSTERIZE_5),
        (RandAugmentOp::Contrast, 1.5, &CONTRAST_1_5),
        (RandAugmentOp::Color, 0.3, &COLOR_0_3),
        (RandAugmentOp::Brightness, 1.7, &BRIGHTNESS_1_7),
        (RandAugmentOp::Sharpness, 1.9, &SHARPNESS_1_9),
    ];
    for (op, magnitude, expected) in cases {
        let out = op.apply(&image, magnitude, &mut rng());
        assert_eq!(levels_of(&out), expected.to_vec(), "{op:?} at {magnitude}");
    }
}

#[test]
fn invert_is_255_minus_level() {
    let out = RandAugmentOp::Invert.apply(&test_image(), 0.0, &mut rng());
    let expected: Vec<u8> = test_levels().iter().map(|v| 255 - v).collect();
    assert_eq!(levels_of(&out), expected);
}

#[test]
fn geometric_operations_match_pillow_with_either_sign() {
    let image = test_image();
    let cases: [(RandAugmentOp, f64, &[u8], &[u8]); 3] = [
        (RandAugmentOp::ShearX, 0.3, &SHEAR_X_0_3, &SHEAR_X_NEG_0_3),
        (RandAugmentOp::TranslateY, 2.0 / HEIGHT as f64, &TRANSLATE_Y_2, &TRANSLATE_Y_NEG_2),
        (RandAugmentOp::Rotate, 30.0, &ROTATE_30, &ROTATE_NEG_30),
    ];
    for (op, magnitude, positive, negative) in cases {
        let mut seen = [false, false];
        for seed in 0..16 {
            let out = levels_of(&op.apply(&image, magnitude, &mut AugmentRng::seed_from_u64(seed)));
            let sign = [positive.to_vec(), negative.to_vec()].iter().position(|e| *e == out);
            let sign = sign.unwrap_or_else(|| panic!("{op:?}: output matches neither sign's Pillow result"));
            seen[sign] = true;
        }
        assert_eq!(seen, [true, true], "{op:?} draws both signs");
    }
}

#[test]
fn magnitudes_span_the_documented_ranges() {
    let expected = [
        (RandAugmentOp::ShearX, 0.0, 0.6),
        (RandAugmentOp::TranslateY, 0.0, 0.66),
        (RandAugmentOp::Rotate, 0.0, 60.0),
        (RandAugmentOp::Solarize, 0.0, 110.0),
        (RandAugmentOp::Posterize, 4.0, 8.0),
        (RandAugmentOp::Contrast, 0.1, 1.9),
        (RandAugmentOp::Sharpness, 0.1, 1.9),
        (RandAugmentOp::Cutout, 0.0, 0.4),
    ];
    for (op, low, high) in expected {
        assert_eq!(op.magnitude(0.0), low, "{op:?} at strength 0");
        assert!((op.magnitude(MAX_STRENGTH) - high).abs() < 1e-12, "{op:?} at strength 30");
        assert!((op.magnitude(10.0) - (low + (high - low) / 3.0)).abs() < 1e-12, "{op:?} at strength 10");
    }
    assert_eq!(RandAugmentOp::ALL.len(), 15);
}

#[test]
fn magnitude_endpoints_act_as_pillow_does() {
    let image = test_image();
    let weakest_and_strongest = |op: RandAugmentOp| {
        (op.apply(&image, op.magnitude(0.0), &mut rng()), op.apply(&image, op.magnitude(MAX_STRENGTH), &mut rng()))
    };
    // Posterize keeps 8 bits at strength 30: identity.
    assert_eq!(weakest_and_strongest(RandAugmentOp::Posterize).1, image);
    // Solarize's threshold 0 inverts every level.
    let (all_inverted, _) = weakest_and_strongest(RandAugmentOp::Solarize);
    assert_eq!(levels_of(&all_inverted), test_levels().iter().map(|v| 255 - v).collect::<Vec<_>>());
    // Zero shear, translation, rotation and cutout change nothing.
    for op in [RandAugmentOp::ShearX, RandAugmentOp::TranslateX, RandAugmentOp::Rotate, RandAugmentOp::Cutout] {
        assert_eq!(weakest_and_strongest(op).0, image, "{op:?} at strength 0");
    }
    // Brightness at 0.1 is a tenth of each level, truncated.
    let (dim, _) = weakest_and_strongest(RandAugmentOp::Brightness);
    assert_eq!(levels_of(&dim), test_levels().iter().map(|&v| (f64::from(v) * 0.1) as u8).collect::<Vec<_>>());
}

#[test]
fn cutout_paints_a_gray_square_of_the_given_side() {
    let image = Image::filled(3, 10, 10, 0.0);
    let out = RandAugmentOp::Cutout.apply(&image, 0.4, &mut rng());
    let painted: Vec<(usize, usize)> =
        (0..10).flat_map(|y| (0..10).map(move |x| (y, x))).filter(|&(y, x)| out.get(0, y, x) > 0.0).collect();
    assert!(
        !painted.is_empty() && painted.len() <= 25,
        "a square of side 4 (inclusive corners: up to 5x5), got {}",
        painted.len()
    );
    let (y, x) = painted[0];
    assert_eq!(levels_of(&out)[y * 10 + x], 125);
    assert_eq!(levels_of(&out)[100 + y * 10 + x], 123);
    assert_eq!(levels_of(&out)[200 + y * 10 + x], 114);
}

#[test]
fn probability_zero_is_identity_and_one_always_changes_an_image() {
    let image = test_image();
    for seed in 0..20 {
        assert_eq!(rand_augment(image.clone(), 0.0, 30.0, &mut AugmentRng::seed_from_u64(seed)), image);
    }
    // At strength 20 every one of the 15 operations changes a 20x20 image of levels 20..200
    // (at 30 posterize keeps all 8 bits; on 30 pixels PIL's equalize step is 0).
    let levels: Vec<u8> = (0..1200).map(|i| 20 + (i * 7 % 181) as u8).collect();
    let image = Image::from_chw_levels(3, 20, 20, &levels, 255.0);
    let changed = (0..40)
        .filter(|&seed| rand_augment(image.clone(), 1.0, 20.0, &mut AugmentRng::seed_from_u64(seed)) != image)
        .count();
    assert_eq!(changed, 40);
}

#[test]
fn the_same_seed_gives_the_same_result() {
    let image = test_image();
    for seed in 0..10 {
        let a = rand_augment(image.clone(), 0.7, 20.0, &mut AugmentRng::seed_from_u64(seed));
        let b = rand_augment(image.clone(), 0.7, 20.0, &mut AugmentRng::seed_from_u64(seed));
        assert_eq!(a, b);
    }
}
