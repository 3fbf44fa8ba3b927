//! The threaded loader: batches depend only on (seed, epoch, sample, view), whatever the
//! thread count; resuming mid-epoch reproduces the rest of the epoch; extra augmentations take
//! per-sample arguments; failures arrive as errors, not panics.

use sslc_runtime::augment::Preset;
use sslc_runtime::data::loader::{Batch, ExtraArgs, FeatureLoader, LoaderConfig, TwoViewLoader};
use sslc_runtime::data::{digits, Dataset, ImbalanceProfile, LongTail};
use sslc_runtime::objective::ExtraAugmentation;
use std::path::Path;
use std::sync::Arc;

fn digits_train() -> Arc<Dataset> {
    let long_tail = LongTail::new(digits::DEFAULT_IMBALANCE, ImbalanceProfile::Exp).unwrap();
    Arc::new(digits::load_long_tailed(&long_tail).unwrap().train)
}

fn config(workers: usize, prefetch: usize) -> LoaderConfig {
    LoaderConfig { batch_size: 64, seed: 11, workers, prefetch, drop_last: true }
}

fn loader(workers: usize, prefetch: usize) -> TwoViewLoader {
    TwoViewLoader::new(digits_train(), Preset::Digits.simclr(), config(workers, prefetch)).unwrap()
}

/// A batch's indices, labels and both views' values.
type Contents = (Vec<u32>, Vec<u32>, Vec<f32>, Vec<f32>);

fn contents(batches: impl Iterator<Item = Result<Batch, sslc_runtime::data::DataError>>) -> Vec<Contents> {
    batches
        .map(|batch| {
            let batch = batch.unwrap();
            let (a, b) = (&batch.views[0], &batch.views[1]);
            (
                batch.indices,
                batch.labels,
                a.flatten_all().unwrap().to_vec1().unwrap(),
                b.flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect()
}

#[test]
fn batches_have_the_right_shapes_labels_and_count() {
    let loader = loader(2, 2);
    let dataset = digits_train();
    assert_eq!(loader.batches_per_epoch(), 503 / 64);
    let batches = contents(loader.epoch(0, ExtraArgs::default()));
    assert_eq!(batches.len(), 7);
    assert_eq!(loader.stats().images(), 7 * 64);
    let first = loader.epoch(0, ExtraArgs::default()).next().unwrap().unwrap();
    assert_eq!(first.views[0].dims(), &[64, 1, 8, 8]);
    for (indices, labels, _, _) in &batches {
        assert_eq!(indices.len(), 64);
        assert!(indices.iter().zip(labels).all(|(&i, &l)| dataset.labels()[i as usize] == l));
    }
    let mut seen: Vec<u32> = batches.iter().flat_map(|b| b.0.clone()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 7 * 64, "no sample twice in an epoch");
}

#[test]
fn batches_do_not_depend_on_worker_count_or_prefetch() {
    let single = contents(loader(1, 1).epoch(3, ExtraArgs::default()));
    let parallel = contents(loader(4, 3).epoch(3, ExtraArgs::default()));
    assert!(single == parallel, "the same seed and epoch give the same batches");
}

#[test]
fn epochs_reshuffle_and_the_two_views_differ() {
    let loader = loader(2, 2);
    let (epoch0, epoch1) =
        (contents(loader.epoch(0, ExtraArgs::default())), contents(loader.epoch(1, ExtraArgs::default())));
    assert_ne!(epoch0[0].0, epoch1[0].0);
    assert_ne!(epoch0[0].2, epoch0[0].3);
    assert_eq!(loader.epoch_order(1), loader.epoch_order(1));
}

#[test]
fn resuming_mid_epoch_reproduces_the_uninterrupted_epoch() {
    let full = contents(loader(2, 2).epoch(5, ExtraArgs::default()));
    let resumed = contents(loader(3, 1).epoch_from(5, 4, ExtraArgs::default()));
    assert_eq!(resumed.len(), full.len() - 4);
    assert!(resumed == full[4..], "batches 4.. of a resumed epoch equal the uninterrupted ones");
}

fn randaugment_spec() -> Vec<ExtraAugmentation> {
    vec![ExtraAugmentation { name: "randaugment".into(), args: vec!["strength".into(), "p".into()] }]
}

#[test]
fn per_sample_randaugment_arguments_change_only_the_samples_they_name() {
    let loader = loader(2, 2);
    let order = loader.epoch_order(0);
    let boosted = order[0];
    // Sample `boosted` always gets one operation at strength 30; the rest keep p = 0.
    let extras = ExtraArgs::new(&randaugment_spec(), &[boosted], &[vec![vec![30.0], vec![1.0]]], 503).unwrap();
    let plain = contents(loader.epoch(0, ExtraArgs::default()));
    let with_extra = contents(loader.epoch(0, extras));
    assert_eq!(plain[0].0[0], boosted);
    let per_sample = 64;
    assert_ne!(plain[0].2[..per_sample], with_extra[0].2[..per_sample], "the boosted sample changed");
    assert_eq!(plain[0].2[per_sample..], with_extra[0].2[per_sample..], "the others did not");
    assert!(plain[1..] == with_extra[1..]);
}

#[test]
fn malformed_extra_arguments_are_refused() {
    let spec = randaugment_spec();
    let error = ExtraArgs::new(&spec, &[0, 1], &[vec![vec![1.0], vec![1.0]]], 10).unwrap_err();
    assert!(error.to_string().contains("1 values of `p` for 2 samples"), "{error}");
    let error = ExtraArgs::new(&spec, &[10], &[vec![vec![1.0], vec![1.0]]], 10).unwrap_err();
    assert!(error.to_string().contains("beyond the 10 samples"), "{error}");
    let unknown = vec![ExtraAugmentation { name: "mixup".into(), args: vec![] }];
    assert!(ExtraArgs::new(&unknown, &[], &[vec![]], 10).unwrap_err().to_string().contains("`mixup` is not known"));
    let missing = vec![ExtraAugmentation { name: "randaugment".into(), args: vec!["p".into()] }];
    assert!(ExtraArgs::new(&missing, &[0], &[vec![vec![1.0]]], 10).unwrap_err().to_string().contains("no `strength`"));
}

#[test]
fn feature_loader_visits_every_sample_once_in_order() {
    let dataset = digits_train();
    let features = FeatureLoader::new(dataset.clone(), Preset::Digits.test(), &config(2, 2)).unwrap();
    let batches: Vec<_> = features.batches().map(Result::unwrap).collect();
    assert_eq!(batches.len(), 8);
    assert_eq!(batches[7].indices.len(), 503 - 7 * 64);
    let indices: Vec<u32> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(indices, (0..503).collect::<Vec<u32>>());
    // The test transform is deterministic: normalised pixels of the stored image.
    let normalize = Preset::Digits.normalize().unwrap();
    let expected = normalize.apply(dataset.image(0).unwrap());
    let first: Vec<f32> = batches[0].images.get(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(first, expected.data());
    // The weak transform is random but reproducible.
    let weak = |workers| -> Vec<f32> {
        let loader = FeatureLoader::new(dataset.clone(), Preset::Digits.probe_train(), &config(workers, 1)).unwrap();
        loader.batches().next().unwrap().unwrap().images.flatten_all().unwrap().to_vec1().unwrap()
    };
    assert_eq!(weak(1), weak(3));
    assert_eq!(features.stats().images(), 503);
}

#[test]
fn an_unreadable_image_ends_the_epoch_with_its_error() {
    let paths = vec![Path::new("gone/a.jpg").to_path_buf(); 4];
    let dataset = Arc::new(Dataset::from_files("broken", Path::new("/nonexistent-root"), paths, vec![0, 1, 0, 1], 2));
    let loader =
        TwoViewLoader::new(dataset, Preset::ImageNet.simclr(), LoaderConfig { batch_size: 2, ..config(1, 1) }).unwrap();
    let mut batches = loader.epoch(0, ExtraArgs::default());
    let error = batches.next().unwrap().unwrap_err();
    assert!(error.to_string().contains("gone/a.jpg"), "{error}");
    assert!(batches.next().is_none());
}

#[test]
fn dropping_an_epoch_early_stops_its_producer() {
    let loader = loader(2, 1);
    let mut batches = loader.epoch(0, ExtraArgs::default());
    assert!(batches.next().unwrap().is_ok());
    drop(batches);
    assert!(loader.stats().images() <= 4 * 64, "the producer stopped within the prefetch bound");
}

/// Multi-crop: the small crops come after the two global views, smaller, each its own draw,
/// and, like every view, determined by (seed, epoch, sample, view) alone; adding them leaves
/// the global views as they were.
#[test]
fn small_crops_follow_the_global_views_at_their_own_size() {
    let with_crops = |workers| {
        TwoViewLoader::new(digits_train(), Preset::Digits.simclr(), config(workers, 2))
            .unwrap()
            .with_small_crops(Preset::Digits.small_crops(), 3)
    };
    let batch = with_crops(2).epoch(1, ExtraArgs::default()).next().unwrap().unwrap();
    let dims: Vec<Vec<usize>> = batch.views.iter().map(|v| v.dims().to_vec()).collect();
    assert_eq!(dims, [vec![64, 1, 8, 8], vec![64, 1, 8, 8], vec![64, 1, 4, 4], vec![64, 1, 4, 4], vec![64, 1, 4, 4]]);
    let values = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_ne!(values(&batch.views[2]), values(&batch.views[3]), "each small crop is its own draw");
    let again = with_crops(1).epoch(1, ExtraArgs::default()).next().unwrap().unwrap();
    for (a, b) in batch.views.iter().zip(&again.views) {
        assert_eq!(values(a), values(b), "the crops depend on the thread count");
    }
    let plain = loader(2, 2).epoch(1, ExtraArgs::default()).next().unwrap().unwrap();
    assert_eq!(values(&plain.views[0]), values(&batch.views[0]));
    assert_eq!(values(&plain.views[1]), values(&batch.views[1]));
}
