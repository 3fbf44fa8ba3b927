//! How a benchmark run is set up (its per-dataset defaults are `configs/*.toml`): the data sets, the linear-probe/kNN
//! evaluation, and the record of a run's choices that a later evaluation reads back. Here
//! rather than in the command line so that training and re-evaluating a checkpoint set a
//! benchmark up one way, and the command line only parses flags.

use crate::data::groups::{groups_by_thirds, groups_by_thresholds, Group};
use crate::data::loader::{FeatureLoader, LoaderConfig, TwoViewLoader};
use crate::data::{self, DataError, DataOptions, DataSplits, Dataset, DatasetName, ImbalanceProfile, LongTail};
use crate::model::{BackboneKind, Encoder};
use crate::objective::{BoxError, ViewSpec};
use crate::probe::{Features, ProbeConfig};
use crate::train::{extract_features, EvalSetup, FeatureImages, LoaderSource};
use candle_core::Device;
use std::path::PathBuf;
use std::sync::Arc;

/// The backbones a run picks by name. The names are also those recorded in [`RunContext`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Backbone {
    /// Three conv layers, 128-d: for the 8x8 digits and 28x28 Fashion-MNIST on a CPU.
    Small,
    /// ResNet-18 with the CIFAR stem, 512-d (CIFAR-LT).
    Resnet18,
    /// ResNet-50, 2048-d (ImageNet-LT, Places-LT).
    Resnet50,
}

impl Backbone {
    pub fn kind(self) -> BackboneKind {
        match self {
            Backbone::Small => BackboneKind::SmallConv,
            Backbone::Resnet18 => BackboneKind::ResNet18Cifar,
            Backbone::Resnet50 => BackboneKind::ResNet50,
        }
    }
}

/// A benchmark run's choices beyond the SGD recipe: recorded in its checkpoints (which refuse to
/// resume under other choices) and `summary.json`, and read back to evaluate a checkpoint
/// again. The field names are the JSON keys of every run recorded so far, so keep them.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunContext {
    /// The objective's file, as given.
    pub objective_file: String,
    /// [`DatasetName::name`].
    pub dataset: String,
    /// `--data`, if given.
    pub data: Option<String>,
    /// `--imbalance`, if given (else the dataset's default).
    pub imbalance: Option<f64>,
    pub batch_size: usize,
    pub backbone: Backbone,
    /// The `--set` overrides, as given.
    pub set: Vec<String>,
    /// The back end's name; absent from runs recorded before there was a choice.
    pub backend: Option<String>,
    pub probe_epochs: usize,
    /// `--limit`, if given; absent from runs recorded before it existed.
    pub limit: Option<usize>,
}

/// Where a benchmark's files are and how to long-tail it; `imbalance` `None` keeps the
/// dataset's default.
pub fn data_options(
    root: Option<PathBuf>,
    split_dir: Option<PathBuf>,
    imbalance: Option<f64>,
    profile: ImbalanceProfile,
) -> Result<DataOptions, DataError> {
    let long_tail = imbalance.map(|r| LongTail::new(r, profile)).transpose()?;
    Ok(DataOptions { root, split_dir, long_tail })
}

/// The benchmark's sets, thinned to `limit` images each when the run asked for it.
pub fn load_splits(name: DatasetName, options: &DataOptions, limit: Option<usize>) -> Result<DataSplits, DataError> {
    let splits = data::load(name, options)?;
    let splits = match limit {
        Some(limit) => splits.limited(limit),
        None => splits,
    };
    splits.validate()?;
    Ok(splits)
}

/// The training batches: two views of each image of `train`, augmented on worker threads as
/// the dataset's augmentation preset says, plus the objective's `extras`, delivered on
/// `device` (the encoder's).
pub fn train_source(
    name: DatasetName,
    train: Dataset,
    batch_size: usize,
    seed: u64,
    views: &ViewSpec,
    device: &Device,
) -> Result<LoaderSource, DataError> {
    let labels = train.labels().to_vec();
    let config = LoaderConfig { batch_size, seed, ..LoaderConfig::default() };
    let preset = name.preset();
    let loader = TwoViewLoader::new(Arc::new(train), preset.simclr(), config)?
        .with_small_crops(preset.small_crops(), views.small_crops)
        .on_device(device.clone());
    Ok(LoaderSource::new(loader, labels, views.extra.clone()))
}

/// Images per forward pass when extracting features for the evaluation.
pub const EVAL_BATCH: usize = 500;

/// How images are transformed before feature extraction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureTransform {
    /// The probe's training transform: the dataset's weak augmentation, drawn once per image
    /// from the seed (what the linear probe trains on).
    ProbeTrain,
    /// The deterministic test transform.
    Test,
}

/// The images of `set` in order, transformed for feature extraction as the evaluation does.
fn feature_images(
    name: DatasetName,
    set: Dataset,
    transform: FeatureTransform,
    seed: u64,
    device: &Device,
) -> Result<FeatureImages, DataError> {
    let augment = name.preset();
    let transform = match transform {
        FeatureTransform::ProbeTrain => augment.probe_train(),
        FeatureTransform::Test => augment.test(),
    };
    let config = LoaderConfig { batch_size: EVAL_BATCH, seed, ..LoaderConfig::default() };
    let len = set.len();
    Ok(FeatureImages::new(FeatureLoader::new(Arc::new(set), transform, &config)?.on_device(device.clone()), len))
}

/// Frozen backbone features of `set`, computed as the evaluation computes them (same
/// transform, seed, batching and extraction), so `sslc embed` hands out exactly what the probe
/// saw; rows in the set's order.
pub fn frozen_features(
    encoder: &Encoder,
    name: DatasetName,
    set: Dataset,
    transform: FeatureTransform,
    seed: u64,
) -> Result<Features, BoxError> {
    let mut images = feature_images(name, set, transform, seed, encoder.device())?;
    Ok(extract_features(encoder, &mut images, EVAL_BATCH)?)
}

/// The linear-probe and kNN evaluation of a benchmark: the probe's training and test images
/// (transformed as the dataset's augmentation preset says), the Many/Medium/Few groups and the
/// probe's schedule.
pub struct EvalData {
    probe_train: FeatureImages,
    probe_test: FeatureImages,
    groups: Vec<Group>,
    train_counts: Vec<usize>,
    probe: ProbeConfig,
}

impl EvalData {
    /// `train_counts` are the class counts of the long-tailed training set, which decide the
    /// groups: fixed thresholds on ImageNet-LT and Places-LT, thirds elsewhere. The images are
    /// delivered on `device` (the encoder's).
    pub fn new(
        name: DatasetName,
        probe_train: Dataset,
        test: Dataset,
        train_counts: Vec<usize>,
        probe_epochs: usize,
        seed: u64,
        device: &Device,
    ) -> Result<EvalData, DataError> {
        let groups = match name {
            DatasetName::ImageNetLt | DatasetName::PlacesLt => groups_by_thresholds(&train_counts),
            _ => groups_by_thirds(&train_counts),
        };
        let probe_len = probe_train.len();
        let probe_train = feature_images(name, probe_train, FeatureTransform::ProbeTrain, seed, device)?;
        let probe_test = feature_images(name, test, FeatureTransform::Test, seed, device)?;
        let mut probe = ProbeConfig { epochs: probe_epochs, seed, ..ProbeConfig::default() };
        // A neighbourhood larger than the probe's training set (a `--limit` smoke run) has no
        // meaning: those kNN sizes are left out of the evaluation, decided here, before training.
        probe.knn_k.retain(|&k| k <= probe_len);
        Ok(EvalData { probe_train, probe_test, groups, train_counts, probe })
    }

    /// What [`crate::train::train`] and [`crate::train::evaluate_encoder`] take.
    pub fn setup(&mut self) -> EvalSetup<'_> {
        EvalSetup {
            probe_train: &mut self.probe_train,
            probe_test: &mut self.probe_test,
            groups: self.groups.clone(),
            train_counts: self.train_counts.clone(),
            probe: self.probe.clone(),
            batch_size: EVAL_BATCH,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> serde_json::Value {
        serde_json::json!({
            "objective_file": "objectives/simclr_gh.ssl",
            "dataset": "cifar100-lt",
            "data": "/data/cifar-100-binary",
            "imbalance": 0.01,
            "batch_size": 512,
            "backbone": "Resnet18",
            "set": ["K=50"],
            "backend": "cpu",
            "probe_epochs": 500,
            "limit": null,
        })
    }

    #[test]
    fn a_run_context_is_recorded_under_its_keys() {
        let context = RunContext {
            objective_file: "objectives/simclr_gh.ssl".into(),
            dataset: "cifar100-lt".into(),
            data: Some("/data/cifar-100-binary".into()),
            imbalance: Some(0.01),
            batch_size: 512,
            backbone: Backbone::Resnet18,
            set: vec!["K=50".into()],
            backend: Some("cpu".into()),
            probe_epochs: 500,
            limit: None,
        };
        assert_eq!(serde_json::to_value(&context).unwrap(), recorded());
        assert_eq!(serde_json::from_value::<RunContext>(recorded()).unwrap(), context);
    }

    #[test]
    fn run_contexts_recorded_before_backend_and_limit_still_read() {
        let mut old = recorded();
        let map = old.as_object_mut().unwrap();
        map.remove("backend");
        map.remove("limit");
        let context: RunContext = serde_json::from_value(old).unwrap();
        assert_eq!((context.backend, context.limit, context.backbone), (None, None, Backbone::Resnet18));
    }
}
