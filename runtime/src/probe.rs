//! Evaluation on frozen backbone features (METHOD.md §4): a linear probe trained as the
//! reference's `eval_sgd_per_class`, kNN accuracy, and the per-class and Many/Medium/Few
//! group arithmetic of its `disjoint_summary`.

use candle_core::{DType, Tensor, Var, D};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::optim::{Adam, OptimError, Optimizer};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error("{0}")]
    Input(String),
}

/// Features of a labelled image set, computed once by the frozen backbone.
pub struct Features {
    /// `[N, F]` f32.
    pub values: Tensor,
    pub labels: Vec<u32>,
}

impl Features {
    fn check(&self, what: &str, classes: usize) -> Result<(), ProbeError> {
        let (rows, _) = self.values.dims2()?;
        if rows == 0 || rows != self.labels.len() {
            return Err(ProbeError::Input(format!(
                "{what} set has {rows} feature rows and {} labels; it needs at least one image and one label per row",
                self.labels.len()
            )));
        }
        if let Some(label) = self.labels.iter().find(|&&label| label as usize >= classes) {
            return Err(ProbeError::Input(format!(
                "{what} label {label} is outside the {classes} classes the group assignment lists"
            )));
        }
        Ok(())
    }
}

pub use crate::data::groups::Group;

/// Linear-probe schedule; the defaults are METHOD.md §4's.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Adam's learning rate decays exponentially from `lr_start` to `lr_end` over `epochs`.
    pub lr_start: f64,
    pub lr_end: f64,
    pub weight_decay: f64,
    /// kNN neighbourhood sizes.
    pub knn_k: Vec<usize>,
    /// Seeds the probe's initial weights and its per-epoch shuffling.
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            epochs: 500,
            batch_size: 1000,
            lr_start: 1e-2,
            lr_end: 1e-6,
            weight_decay: 5e-6,
            knn_k: vec![5, 20, 200],
            seed: 0,
        }
    }
}

/// Accuracies as fractions in [0, 1].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AccuracyReport {
    /// Top-1 over all test images.
    pub overall: f64,
    pub per_class: Vec<f64>,
    /// Mean per-class accuracy of each group; `None` for a group with no class.
    pub many: Option<f64>,
    pub medium: Option<f64>,
    pub few: Option<f64>,
    /// Population std of the per-class accuracies.
    pub per_class_std: f64,
    /// Population std of the three group accuracies, the paper's "balancedness";
    /// `None` when a group is empty.
    pub group_std: Option<f64>,
}

impl AccuracyReport {
    /// Scores `predictions` against `labels`; `groups[c]` is class `c`'s group.
    pub fn new(predictions: &[u32], labels: &[u32], groups: &[Group]) -> Result<Self, ProbeError> {
        if predictions.len() != labels.len() || labels.is_empty() {
            return Err(ProbeError::Input(format!(
                "{} predictions for {} labels; give one prediction per test image",
                predictions.len(),
                labels.len()
            )));
        }
        let classes = groups.len();
        let mut correct = vec![0usize; classes];
        let mut seen = vec![0usize; classes];
        for (&prediction, &label) in predictions.iter().zip(labels) {
            let label = label as usize;
            if label >= classes {
                return Err(ProbeError::Input(format!(
                    "label {label} is outside the {classes} classes the group assignment lists"
                )));
            }
            seen[label] += 1;
            correct[label] += usize::from(prediction as usize == label);
        }
        if let Some(empty) = seen.iter().position(|&count| count == 0) {
            return Err(ProbeError::Input(format!(
                "class {empty} has no test image, so its accuracy is undefined; evaluate on a test set covering every class"
            )));
        }
        let per_class: Vec<f64> = correct.iter().zip(&seen).map(|(&hit, &count)| hit as f64 / count as f64).collect();
        let group_mean = |group: Group| {
            let members: Vec<f64> =
                per_class.iter().zip(groups).filter(|(_, g)| **g == group).map(|(acc, _)| *acc).collect();
            (!members.is_empty()).then(|| mean(&members))
        };
        let (many, medium, few) = (group_mean(Group::Many), group_mean(Group::Medium), group_mean(Group::Few));
        let group_std = match (many, medium, few) {
            (Some(a), Some(b), Some(c)) => Some(population_std(&[a, b, c])),
            _ => None,
        };
        Ok(AccuracyReport {
            overall: correct.iter().sum::<usize>() as f64 / labels.len() as f64,
            per_class_std: population_std(&per_class),
            per_class,
            many,
            medium,
            few,
            group_std,
        })
    }

    pub fn group(&self, group: Group) -> Option<f64> {
        match group {
            Group::Many => self.many,
            Group::Medium => self.medium,
            Group::Few => self.few,
        }
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// numpy's default `std` (ddof = 0), as the reference reports.
fn population_std(values: &[f64]) -> f64 {
    let centre = mean(values);
    (values.iter().map(|v| (v - centre).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
}

/// Trains one linear layer on `train` with Adam (L2 weight decay), cross-entropy and the
/// exponential learning-rate decay of the reference, then predicts the class of every `test` row.
pub fn linear_probe(
    train: &Features,
    test: &Features,
    classes: usize,
    config: &ProbeConfig,
) -> Result<Vec<u32>, ProbeError> {
    train.check("probe training", classes)?;
    test.check("probe test", classes)?;
    if config.epochs == 0 || config.batch_size == 0 {
        return Err(ProbeError::Input("the probe needs at least one epoch and a positive batch size".into()));
    }
    // The probe trains where the features are (the encoder's device).
    let device = train.values.device().clone();
    let (rows, width) = train.values.dims2()?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    // nn.Linear's default initialisation: U(±1/√fan_in) for weight and bias.
    let bound = 1.0 / (width as f64).sqrt();
    let mut uniform =
        |count: usize| -> Vec<f32> { (0..count).map(|_| rng.random_range(-bound..bound) as f32).collect() };
    let weight = Var::from_vec(uniform(classes * width), (classes, width), &device)?;
    let bias = Var::from_vec(uniform(classes), classes, &device)?;
    let params = [("weight".to_string(), weight.clone()), ("bias".to_string(), bias.clone())];
    let logits = |x: &Tensor| -> candle_core::Result<Tensor> {
        x.matmul(&weight.as_tensor().t()?)?.broadcast_add(bias.as_tensor())
    };

    let targets = Tensor::from_slice(&train.labels, rows, &device)?;
    let mut optimizer = Adam::new(config.weight_decay);
    let decay = (config.lr_end / config.lr_start).powf(1.0 / config.epochs as f64);
    let mut order: Vec<u32> = (0..rows as u32).collect();
    for epoch in 0..config.epochs {
        let lr = config.lr_start * decay.powi(epoch as i32);
        order.shuffle(&mut rng);
        for batch in order.chunks(config.batch_size) {
            let batch = Tensor::from_slice(batch, batch.len(), &device)?;
            let x = train.values.index_select(&batch, 0)?;
            let y = targets.index_select(&batch, 0)?;
            let loss = candle_nn::loss::cross_entropy(&logits(&x)?, &y)?;
            optimizer.step(&params, &loss.backward()?, lr)?;
        }
    }
    Ok(logits(&test.values)?.argmax(D::Minus1)?.to_vec1::<u32>()?)
}

/// kNN predictions for every `k` in `ks`: cosine similarity to the training features, majority
/// vote among the `k` most similar, ties to the smallest label (as the reference's `eval_knn`,
/// which ranks by Euclidean distance; on L2-normalised features the ranking is the same).
pub fn knn_predict(
    train: &Features,
    test: &Features,
    classes: usize,
    ks: &[usize],
) -> Result<Vec<Vec<u32>>, ProbeError> {
    train.check("kNN training", classes)?;
    test.check("kNN test", classes)?;
    let train_rows = train.labels.len();
    if let Some(&k) = ks.iter().find(|&&k| k == 0 || k > train_rows) {
        return Err(ProbeError::Input(format!("kNN k = {k} must be between 1 and the {train_rows} training images")));
    }
    let max_k = ks.iter().copied().max().unwrap_or(0);
    let bank = normalize_rows(&train.values)?;
    let queries = normalize_rows(&test.values)?;
    let mut predictions = vec![Vec::with_capacity(test.labels.len()); ks.len()];
    // Chunks bound the similarity matrix's memory.
    const QUERY_CHUNK: usize = 512;
    let test_rows = test.labels.len();
    for start in (0..test_rows).step_by(QUERY_CHUNK) {
        let chunk = queries.narrow(0, start, QUERY_CHUNK.min(test_rows - start))?;
        let similarity = chunk.matmul(&bank.t()?)?.to_vec2::<f32>()?;
        for row in similarity {
            let mut order: Vec<usize> = (0..train_rows).collect();
            let most_similar_first = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
            if max_k < train_rows {
                order.select_nth_unstable_by(max_k - 1, most_similar_first);
            }
            order.truncate(max_k);
            order.sort_by(most_similar_first);
            for (k, predicted) in ks.iter().zip(predictions.iter_mut()) {
                let mut votes = vec![0usize; classes];
                for &neighbour in &order[..*k] {
                    votes[train.labels[neighbour] as usize] += 1;
                }
                // max_by_key keeps the last maximum; reversing makes it the smallest label.
                let winner = (0..classes).rev().max_by_key(|&class| votes[class]).unwrap_or(0);
                predicted.push(winner as u32);
            }
        }
    }
    Ok(predictions)
}

/// `x / max(‖x‖, 1e-12)` row-wise.
fn normalize_rows(x: &Tensor) -> candle_core::Result<Tensor> {
    let norms = x.to_dtype(DType::F32)?.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
    x.broadcast_div(&norms)
}

/// What `sslc eval` and the training loop's periodic evaluation report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Evaluation {
    pub linear: AccuracyReport,
    /// `(k, accuracy report)` per kNN neighbourhood size.
    pub knn: Vec<(usize, AccuracyReport)>,
}

/// Linear probe and kNN on frozen features; `groups[c]` is class `c`'s group.
pub fn evaluate(
    train: &Features,
    test: &Features,
    groups: &[Group],
    config: &ProbeConfig,
) -> Result<Evaluation, ProbeError> {
    let classes = groups.len();
    let linear = AccuracyReport::new(&linear_probe(train, test, classes, config)?, &test.labels, groups)?;
    let mut knn = Vec::new();
    for (&k, predictions) in config.knn_k.iter().zip(knn_predict(train, test, classes, &config.knn_k)?) {
        knn.push((k, AccuracyReport::new(&predictions, &test.labels, groups)?));
    }
    Ok(Evaluation { linear, knn })
}
