//! The training loop with an in-memory data source and a hand-written SimCLR objective
//! (NT-Xent in candle ops, gradients by candle's autograd).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var, D};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sslc_runtime::checkpoint::Checkpoint;
use sslc_runtime::model::{BackboneKind, Encoder, EncoderConfig};
use sslc_runtime::objective::{BoxError, EmbeddingSpec, Objective, RunPosition, StepOutput, ViewSpec};
use sslc_runtime::probe::{Group, ProbeConfig};
use sslc_runtime::train::{
    backpropagate, forward_embeddings, reference_learning_rate, train, BatchSource, EvalSetup, LabelledImages, Start,
    TrainConfig, TrainError, CHECKPOINT_FILE,
};

const SAMPLES: usize = 12;
const SIZE: usize = 8;

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sslc-train-loop").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn image(index: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(1000 + index as u64);
    (0..SIZE * SIZE).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Twelve random 8x8 images; a view is the image plus noise seeded by (seed, epoch, index, view).
struct MemorySource {
    batch_size: usize,
    /// Simulates a crash: fail when asked for this epoch's batches.
    fail_at_epoch: Option<usize>,
    /// The epoch being served and the run's seed.
    position: (usize, u64),
}

impl BatchSource for MemorySource {
    fn labels(&self) -> &[u32] {
        &[0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2][..SAMPLES]
    }

    fn batch_indices(&self, epoch: usize, seed: u64) -> Result<Vec<Vec<u32>>, BoxError> {
        if self.fail_at_epoch == Some(epoch) {
            return Err("simulated crash".into());
        }
        let mut order: Vec<u32> = (0..SAMPLES as u32).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed * 1000 + epoch as u64));
        Ok(order.chunks(self.batch_size).map(<[u32]>::to_vec).collect())
    }

    fn start_epoch(&mut self, epoch: usize, seed: u64, _extra: Vec<Vec<Vec<f32>>>) -> Result<(), BoxError> {
        self.position = (epoch, seed);
        Ok(())
    }

    fn views(&mut self, indices: &[u32]) -> Result<Vec<Tensor>, BoxError> {
        let (epoch, seed) = self.position;
        let view = |which: u64| -> candle_core::Result<Tensor> {
            let mut values = Vec::new();
            for &index in indices {
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64) << 20 ^ (index as u64) << 4 ^ which);
                values.extend(image(index as usize).into_iter().map(|v| v + rng.random_range(-0.3..0.3)));
            }
            Tensor::from_vec(values, (indices.len(), 1, SIZE, SIZE), &Device::Cpu)
        };
        Ok(vec![view(0)?, view(1)?])
    }
}

/// Labelled images for evaluation: class = index % 3.
struct MemoryLabelled;

impl LabelledImages for MemoryLabelled {
    fn len(&self) -> usize {
        SAMPLES
    }

    fn batch(&mut self, start: usize, count: usize) -> Result<(Tensor, Vec<u32>), BoxError> {
        let values: Vec<f32> = (start..start + count).flat_map(image).collect();
        let labels = (start..start + count).map(|i| (i % 3) as u32).collect();
        Ok((Tensor::from_vec(values, (count, 1, SIZE, SIZE), &Device::Cpu)?, labels))
    }
}

/// SimCLR's NT-Xent (tau = 0.2) per METHOD.md §1, optionally with SDCLR's pruned second view.
struct TinySimclr {
    specs: Vec<EmbeddingSpec>,
    /// Report a NaN loss from this epoch on.
    nan_from_epoch: Option<usize>,
    /// Returned by `learning_rate` when set.
    fixed_lr: Option<f64>,
    /// Per-sample state (times seen), so that checkpoints carry objective state.
    seen: Tensor,
}

impl TinySimclr {
    fn new(pruned: Option<f64>) -> Self {
        let specs = vec![EmbeddingSpec::online("z1", 0), EmbeddingSpec { pruned, ..EmbeddingSpec::online("z2", 1) }];
        TinySimclr {
            specs,
            nan_from_epoch: None,
            fixed_lr: None,
            seen: Tensor::zeros(0, candle_core::DType::F32, &Device::Cpu).unwrap(),
        }
    }
}

fn normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?)
}

/// Per-sample NT-Xent of two `[N, D]` embeddings.
fn nt_xent(z1: &Tensor, z2: &Tensor) -> candle_core::Result<Tensor> {
    let tau = 0.2;
    let n = z1.dim(0)?;
    let (a, b) = (normalize(z1)?, normalize(z2)?);
    let all = Tensor::cat(&[&a, &b], 0)?;
    let similarity = (all.matmul(&all.t()?)? / tau)?;
    let off_diagonal = (1.0 - Tensor::eye(2 * n, candle_core::DType::F32, &Device::Cpu)?)?;
    let denominator = (similarity.exp()? * off_diagonal)?.sum(D::Minus1)?.log()?;
    let positive = ((&a * &b)?.sum(D::Minus1)? / tau)?;
    let per_row = (denominator - Tensor::cat(&[&positive, &positive], 0)?)?;
    (per_row.narrow(0, 0, n)? + per_row.narrow(0, n, n)?)? / 2.0
}

impl Objective for TinySimclr {
    fn name(&self) -> &str {
        "tiny_simclr"
    }
    fn embeddings(&self) -> Vec<EmbeddingSpec> {
        self.specs.clone()
    }
    fn views(&self) -> ViewSpec {
        ViewSpec { base: "simclr_augment".into(), extra: vec![], small_crops: 0 }
    }
    fn init_state(&mut self, labels: &[u32], _width: usize) -> Result<(), BoxError> {
        let samples = labels.len();
        self.seen = Tensor::zeros(samples, candle_core::DType::F32, &Device::Cpu)?;
        Ok(())
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        vec![("seen".into(), self.seen.clone())]
    }
    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), BoxError> {
        self.seen = state.iter().find(|(name, _)| name == "seen").ok_or("no `seen`")?.1.clone();
        Ok(())
    }
    fn learning_rate(&self, _at: RunPosition, _base: f64) -> Result<Option<f64>, BoxError> {
        Ok(self.fixed_lr)
    }
    fn augmentation_args(&self, _indices: &[u32], _at: RunPosition) -> Result<Vec<Vec<Vec<f32>>>, BoxError> {
        Ok(vec![])
    }
    fn step(&mut self, embeddings: &[Tensor], _indices: &[u32], at: RunPosition) -> Result<StepOutput, BoxError> {
        let z1 = Var::from_tensor(&embeddings[0])?;
        let z2 = Var::from_tensor(&embeddings[1])?;
        let per_sample = nt_xent(z1.as_tensor(), z2.as_tensor())?;
        let loss = per_sample.mean_all()?;
        let grads = loss.backward()?;
        let value = loss.to_scalar::<f32>()? as f64;
        let value = if self.nan_from_epoch.is_some_and(|epoch| at.epoch >= epoch) { f64::NAN } else { value };
        Ok(StepOutput {
            loss: value,
            metrics: vec![("positive_pairs".into(), embeddings[0].dim(0)? as f64)],
            grads: vec![
                grads.get(z1.as_tensor()).ok_or("no grad")?.clone(),
                grads.get(z2.as_tensor()).ok_or("no grad")?.clone(),
            ],
            per_sample: per_sample.detach(),
            parameter_grads: Vec::new(),
        })
    }
    fn after_step(
        &mut self,
        _embeddings: &[Tensor],
        indices: &[u32],
        _output: &StepOutput,
        _at: RunPosition,
    ) -> Result<(), BoxError> {
        let ids = Tensor::from_slice(indices, indices.len(), &Device::Cpu)?;
        let ones = Tensor::ones(indices.len(), candle_core::DType::F32, &Device::Cpu)?;
        self.seen = self.seen.index_add(&ids, &ones, 0)?;
        Ok(())
    }
    fn end_epoch(&mut self, _completed: usize, _epochs: usize) -> Result<(), BoxError> {
        Ok(())
    }
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig { epochs, base_lr: 0.05, seed: 3, ..TrainConfig::default() }
}

fn encoder(pruned_branch: bool) -> Encoder {
    Encoder::new(EncoderConfig::reference(BackboneKind::SmallConv, 1, pruned_branch, 5)).unwrap()
}

fn bits(state: &[(String, Tensor)]) -> Vec<(String, Vec<u32>)> {
    state
        .iter()
        .map(|(name, t)| {
            (name.clone(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect())
        })
        .collect()
}

fn metrics_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn run(
    dir: &Path,
    epochs: usize,
    encoder: &Encoder,
    objective: &mut TinySimclr,
    fail_at_epoch: Option<usize>,
    start: Start,
) -> Result<(), TrainError> {
    let mut source = MemorySource { batch_size: 6, fail_at_epoch, position: (0, 0) };
    train(dir, &config(epochs), encoder, objective, &mut source, None, start).map(|_| ())
}

#[test]
fn resuming_after_a_crash_reaches_bit_identical_weights() {
    for pruned in [None, Some(0.5)] {
        let straight_dir = scratch_dir("straight");
        let straight = encoder(pruned.is_some());
        let mut straight_objective = TinySimclr::new(pruned);
        run(&straight_dir, 3, &straight, &mut straight_objective, None, Start::Fresh).unwrap();

        let crashed_dir = scratch_dir("crashed");
        let crashed = encoder(pruned.is_some());
        let error = run(&crashed_dir, 3, &crashed, &mut TinySimclr::new(pruned), Some(2), Start::Fresh).unwrap_err();
        assert!(matches!(error, TrainError::Source(_)), "{error}");
        assert_eq!(Checkpoint::load(&crashed_dir.join(CHECKPOINT_FILE)).unwrap().epoch, 2);

        let resumed = encoder(pruned.is_some());
        let mut resumed_objective = TinySimclr::new(pruned);
        run(&crashed_dir, 3, &resumed, &mut resumed_objective, None, Start::Resume).unwrap();
        assert_eq!(bits(&resumed.state()), bits(&straight.state()), "pruned: {pruned:?}");
        assert_eq!(bits(&resumed_objective.state()), bits(&straight_objective.state()));
        assert_eq!(resumed_objective.seen.to_vec1::<f32>().unwrap(), vec![3.0; SAMPLES]);

        // The log holds each epoch once and the same losses as the uninterrupted run.
        let losses = |dir: &Path| -> Vec<f64> {
            metrics_lines(dir).iter().filter(|l| l["kind"] == "epoch").map(|l| l["loss"].as_f64().unwrap()).collect()
        };
        assert_eq!(losses(&crashed_dir), losses(&straight_dir));
        assert_eq!(losses(&straight_dir).len(), 3);
    }
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let dir = scratch_dir("nan");
    let model = encoder(false);
    let mut objective = TinySimclr::new(None);
    objective.nan_from_epoch = Some(1);
    let error = run(&dir, 3, &model, &mut objective, None, Start::Fresh).unwrap_err();
    assert!(matches!(error, TrainError::Diverged { what: "loss", epoch: 1, step: 0, .. }), "{error}");
    assert!(error.to_string().contains(CHECKPOINT_FILE), "{error}");
    let saved = Checkpoint::load(&dir.join(CHECKPOINT_FILE)).unwrap();
    assert_eq!(saved.epoch, 1);
    // The checkpoint holds the weights after epoch 1, before the bad step.
    let after_first_epoch = encoder(false);
    run(&scratch_dir("nan-reference"), 1, &after_first_epoch, &mut TinySimclr::new(None), None, Start::Fresh).unwrap();
    let mut saved_model = saved.model.clone();
    saved_model.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected = after_first_epoch.state();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(bits(&saved_model), bits(&expected));
}

#[test]
fn a_run_directory_is_neither_overwritten_nor_resumed_with_other_settings() {
    let dir = scratch_dir("guard");
    run(&dir, 1, &encoder(false), &mut TinySimclr::new(None), None, Start::Fresh).unwrap();
    let error = run(&dir, 1, &encoder(false), &mut TinySimclr::new(None), None, Start::Fresh).unwrap_err();
    assert!(error.to_string().contains("already holds") && error.to_string().contains("checkpoint"), "{error}");
    let error = run(&dir, 5, &encoder(false), &mut TinySimclr::new(None), None, Start::Resume).unwrap_err();
    assert!(error.to_string().contains("other settings"), "{error}");
    let missing = scratch_dir("nothing-to-resume");
    let error = run(&missing, 1, &encoder(false), &mut TinySimclr::new(None), None, Start::Resume).unwrap_err();
    assert!(error.to_string().contains("does not exist"), "{error}");
    assert!(!missing.exists(), "a failed resume creates no directory");
    std::fs::create_dir_all(&missing).unwrap();
    let error = run(&missing, 1, &encoder(false), &mut TinySimclr::new(None), None, Start::Resume).unwrap_err();
    assert!(error.to_string().contains(CHECKPOINT_FILE) && error.to_string().contains("--overwrite"), "{error}");
}

#[test]
fn sdclr_accumulated_gradient_is_the_sum_of_the_two_separate_backward_passes() {
    let model = encoder(true);
    model.update_prune_mask(0.9).unwrap();
    let mut source = MemorySource { batch_size: 6, fail_at_epoch: None, position: (0, 0) };
    let indices: Vec<u32> = (0..6).collect();
    let views = source.views(&indices).unwrap();
    let specs = TinySimclr::new(Some(0.9)).embeddings();
    let mut objective = TinySimclr::new(Some(0.9));
    objective.init_state(source.labels(), 128).unwrap();

    let embeddings = forward_embeddings(&model, &specs, &views).unwrap();
    let detached: Vec<Tensor> = embeddings.iter().map(Tensor::detach).collect();
    let output = objective.step(&detached, &indices, RunPosition::at_epoch(0, 1)).unwrap();
    let together = backpropagate(&embeddings, &output.grads).unwrap();
    // Step 1 alone (dense view, pruned side detached) and step 2 alone (pruned view).
    let dense_only =
        backpropagate(&forward_embeddings(&model, &specs[..1], &views).unwrap(), &output.grads[..1]).unwrap();
    let pruned_only =
        backpropagate(&forward_embeddings(&model, &specs[1..], &views).unwrap(), &output.grads[1..]).unwrap();

    let mut compared = 0;
    for (name, param) in model.parameters() {
        let get = |store: &candle_core::backprop::GradStore| store.get(param.as_tensor()).cloned();
        let expected = match (get(&dense_only), get(&pruned_only)) {
            (Some(a), Some(b)) => (a + b).unwrap(),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => {
                assert!(get(&together).is_none(), "{name}");
                continue;
            }
        };
        let actual = get(&together).unwrap_or_else(|| panic!("{name} has no accumulated gradient"));
        let scale = expected.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
        let diff = (actual - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-4 * scale, "{name}: {diff} vs scale {scale}");
        compared += 1;
    }
    // Conv and projector weights get both contributions; each BN set only its own branch's.
    let has = |store: &candle_core::backprop::GradStore, name: &str| {
        store.get(model.parameters().iter().find(|(n, _)| n == name).unwrap().1.as_tensor()).is_some()
    };
    assert!(has(&dense_only, "backbone.stem.0.conv.weight") && has(&pruned_only, "backbone.stem.0.conv.weight"));
    assert!(has(&together, "projector.bn2.dense.weight") && has(&together, "projector.bn2.pruned.weight"));
    assert!(!has(&dense_only, "projector.bn2.pruned.weight") && !has(&pruned_only, "projector.bn2.dense.weight"));
    assert_eq!(compared, model.parameters().len());
}

#[test]
fn evaluation_writes_metrics_summary_and_a_per_class_plot() {
    let dir = scratch_dir("evaluation");
    let (mut probe_train, mut probe_test) = (MemoryLabelled, MemoryLabelled);
    let setup = EvalSetup {
        probe_train: &mut probe_train,
        probe_test: &mut probe_test,
        groups: vec![Group::Many, Group::Medium, Group::Few],
        train_counts: vec![100, 20, 5],
        probe: ProbeConfig { epochs: 5, batch_size: 4, knn_k: vec![1, 3], ..ProbeConfig::default() },
        batch_size: 5,
    };
    let mut train_config = config(2);
    train_config.eval_every = 1;
    let mut source = MemorySource { batch_size: 6, fail_at_epoch: None, position: (0, 0) };
    let outcome =
        train(&dir, &train_config, &encoder(false), &mut TinySimclr::new(None), &mut source, Some(setup), Start::Fresh)
            .unwrap();
    let evaluation = outcome.evaluation.unwrap();
    assert_eq!(evaluation.linear.per_class.len(), 3);

    let lines = metrics_lines(&dir);
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["step", "step", "epoch", "eval", "step", "step", "epoch", "eval"]);
    let step = &lines[0];
    for key in ["epoch", "step", "loss", "lr", "seconds", "images_per_s", "positive_pairs"] {
        assert!(step.get(key).is_some(), "step line lacks {key}: {step}");
    }
    for key in ["linear_top1", "linear_many", "linear_few", "linear_group_std", "knn1_top1", "knn3_per_class_std"] {
        assert!(lines[3].get(key).is_some(), "eval line lacks {key}: {}", lines[3]);
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["linear"]["per_class"].as_array().unwrap().len(), 3);
    assert_eq!(summary["knn"][1]["k"], 3);
    let plot = image::open(dir.join("per_class.png")).unwrap().to_rgb8();
    assert_eq!(plot.dimensions(), (1000, 640));
}

#[test]
fn the_learning_rate_follows_the_reference_schedule_unless_the_objective_sets_one() {
    // Warm-up (epoch + 1) / 10, then cosine from the base to lr_min.
    assert!((reference_learning_rate(0, 100, 0.5, 1e-6) - 0.05).abs() < 1e-12);
    assert!((reference_learning_rate(8, 100, 0.5, 1e-6) - 0.45).abs() < 1e-12);
    assert!((reference_learning_rate(9, 100, 0.5, 1e-6) - 0.5).abs() < 1e-12);
    let halfway = 1e-6 + (0.5 - 1e-6) * 0.5 * (1.0 + (45.0f64 / 90.0 * std::f64::consts::PI).cos());
    assert!((reference_learning_rate(54, 100, 0.5, 1e-6) - halfway).abs() < 1e-12);
    assert!((reference_learning_rate(99, 100, 0.5, 1e-6) - 1e-6).abs() < 1e-12); // the last epoch reaches lr_min
    assert!(reference_learning_rate(9, 10, 0.5, 1e-6).is_finite());

    let dir = scratch_dir("lr");
    run(&dir, 1, &encoder(false), &mut TinySimclr::new(None), None, Start::Fresh).unwrap();
    assert!(metrics_lines(&dir).iter().all(|l| (l["lr"].as_f64().unwrap() - 0.005).abs() < 1e-12));
    let dir = scratch_dir("lr-objective");
    let mut objective = TinySimclr::new(None);
    objective.fixed_lr = Some(0.125);
    run(&dir, 1, &encoder(false), &mut objective, None, Start::Fresh).unwrap();
    assert!(metrics_lines(&dir).iter().all(|l| l["lr"].as_f64().unwrap() == 0.125));
}

#[test]
fn training_lowers_the_loss_on_a_fixed_batch() {
    let dir = scratch_dir("learns");
    let model = encoder(false);
    let mut objective = TinySimclr::new(None);
    let mut train_config = config(12);
    train_config.base_lr = 0.5;
    let mut source = MemorySource { batch_size: 12, fail_at_epoch: None, position: (0, 0) };
    train(&dir, &train_config, &model, &mut objective, &mut source, None, Start::Fresh).unwrap();
    let losses: Vec<f64> =
        metrics_lines(&dir).iter().filter(|l| l["kind"] == "epoch").map(|l| l["loss"].as_f64().unwrap()).collect();
    assert!(losses.last().unwrap() < &(losses[0] - 0.1), "{losses:?}");
}

/// A loss that is not finite in the first epoch leaves no checkpoint, and the message says so
/// and says to start again (issue: it claimed a checkpoint "still holds the last good epoch").
#[test]
fn a_non_finite_loss_in_the_first_epoch_says_to_start_again() {
    let dir = scratch_dir("nan-first-epoch");
    let mut objective = TinySimclr::new(None);
    objective.nan_from_epoch = Some(0);
    let error = run(&dir, 3, &encoder(false), &mut objective, None, Start::Fresh).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, TrainError::Diverged { epoch: 0, .. }), "{text}");
    assert!(text.contains("no checkpoint") && text.contains("start the run again"), "{text}");
    assert!(!text.contains("still holds"), "{text}");
}

/// Embeddings that are no longer finite (the weights blew up) are named as what diverged, not
/// the loss computed from them: the loop inspects them only once the loss is not finite, to
/// keep the step's device reads to the loss alone, and must still say which came first.
#[test]
fn diverged_embeddings_are_named_before_the_loss_they_poison() {
    let dir = scratch_dir("exploding");
    let mut objective = TinySimclr::new(None);
    objective.fixed_lr = Some(1e30);
    let error = run(&dir, 3, &encoder(false), &mut objective, None, Start::Fresh).unwrap_err();
    // Weights that blow up in an epoch's last step are caught at its end, before any loss.
    assert!(matches!(error, TrainError::Diverged { what: "embeddings" | "weights", .. }), "{error}");
}
