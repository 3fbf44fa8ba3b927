//! The per-dataset pipelines produce the right shapes and ranges, reproducibly.

use sslc_runtime::augment::{view_rng, EvalTransform, Preset};
use sslc_runtime::data::DatasetName;
use sslc_runtime::image::Image;

fn gradient(channels: usize, height: usize, width: usize) -> Image {
    let data = (0..channels * height * width).map(|i| (i % 97) as f32 / 96.0).collect();
    Image::from_chw(channels, height, width, data)
}

#[test]
fn simclr_views_have_each_dataset_shape_and_stay_in_range_before_normalisation() {
    let cases = [
        (Preset::Cifar, gradient(3, 32, 32), 32, 3),
        (Preset::ImageNet, gradient(3, 60, 90), 224, 3),
        (Preset::FashionMnist, gradient(1, 28, 28), 28, 1),
        (Preset::Digits, gradient(1, 8, 8), 8, 1),
    ];
    for (preset, image, size, channels) in cases {
        let augment = preset.simclr();
        for sample in 0..4 {
            let view = augment.augment(&image, &mut view_rng(1, 0, sample, 0));
            assert_eq!((view.channels(), view.height(), view.width()), (channels, size, size), "{preset:?}");
            assert!(view.data().iter().all(|v| (0.0..=1.0).contains(v)), "{preset:?}");
        }
        let again = augment.augment(&image, &mut view_rng(1, 0, 3, 0));
        assert_eq!(again, augment.augment(&image, &mut view_rng(1, 0, 3, 0)), "{preset:?} is reproducible");
        assert_ne!(again, augment.augment(&image, &mut view_rng(1, 0, 3, 1)), "{preset:?} views differ");
    }
}

#[test]
fn presets_follow_the_reference_recipe() {
    let cifar = Preset::Cifar.simclr();
    assert_eq!(
        (cifar.crop.size, cifar.crop.scale, cifar.jitter_p, cifar.grayscale_p, cifar.blur),
        (32, (0.1, 1.0), 0.8, 0.2, None)
    );
    let imagenet = Preset::ImageNet.simclr();
    assert_eq!(
        (imagenet.crop.size, imagenet.crop.scale, imagenet.blur, imagenet.normalize.is_none()),
        (224, (0.08, 1.0), Some(((0.1, 2.0), 0.5)), true)
    );
    assert_eq!(Preset::Digits.simclr().flip_p, 0.0);
    assert_eq!(Preset::FashionMnist.simclr().jitter.saturation, 0.0);
    assert_eq!(DatasetName::from_name("cifar100-lt").unwrap().preset(), Preset::Cifar);
    assert_eq!(DatasetName::from_name("places").unwrap().preset(), Preset::ImageNet);
    assert_eq!(DatasetName::Digits.preset(), Preset::Digits);
}

#[test]
fn evaluation_transforms_crop_to_the_model_input() {
    let photo = gradient(3, 300, 450);
    let test = Preset::ImageNet.test().apply(&photo, &mut view_rng(0, 0, 0, 0));
    assert_eq!((test.height(), test.width()), (224, 224));
    let weak = Preset::ImageNet.probe_train().apply(&photo, &mut view_rng(0, 0, 0, 0));
    assert_eq!((weak.height(), weak.width()), (224, 224));
    let cifar = gradient(3, 32, 32);
    let weak = Preset::Cifar.probe_train().apply(&cifar, &mut view_rng(0, 0, 0, 0));
    assert_eq!((weak.height(), weak.width()), (32, 32));
    let plain = EvalTransform::Plain { normalize: None }.apply(&cifar, &mut view_rng(0, 0, 0, 0));
    assert_eq!(plain, cifar);
}
