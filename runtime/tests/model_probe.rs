//! Linear probe and kNN on synthetic features; the group arithmetic on hand-built predictions.

use candle_core::{Device, Tensor};
use sslc_runtime::probe::{evaluate, knn_predict, linear_probe, AccuracyReport, Features, Group, ProbeConfig};

/// `per_class` points around each of `classes` well-separated centres in `dim` dimensions.
fn clusters(classes: usize, per_class: usize, dim: usize, offset: u64) -> Features {
    let mut values = Vec::new();
    let mut labels = Vec::new();
    for class in 0..classes {
        for sample in 0..per_class {
            for d in 0..dim {
                let centre = if d % classes == class { 4.0 } else { 0.0 };
                let jitter =
                    ((((class * 131 + sample * 31 + d * 7) as u64 + offset) * 2654435761 % 1000) as f32 / 1000.0 - 0.5)
                        * 0.6;
                values.push(centre + jitter);
            }
            labels.push(class as u32);
        }
    }
    let rows = labels.len();
    Features { values: Tensor::from_vec(values, (rows, dim), &Device::Cpu).unwrap(), labels }
}

fn quick_probe() -> ProbeConfig {
    ProbeConfig { epochs: 100, batch_size: 8, knn_k: vec![1, 5], ..ProbeConfig::default() }
}

#[test]
fn linear_probe_separates_separable_features() {
    let train = clusters(4, 20, 8, 0);
    let test = clusters(4, 10, 8, 5000);
    let predictions = linear_probe(&train, &test, 4, &quick_probe()).unwrap();
    let correct = predictions.iter().zip(&test.labels).filter(|(p, l)| p == l).count();
    assert_eq!(correct, test.labels.len(), "{predictions:?}");
}

#[test]
fn linear_probe_is_reproducible_for_a_seed() {
    let train = clusters(3, 10, 6, 1);
    let test = clusters(3, 10, 6, 9);
    // Few epochs so that predictions are not yet saturated and could differ.
    let config = ProbeConfig { epochs: 1, batch_size: 4, ..ProbeConfig::default() };
    let first = linear_probe(&train, &test, 3, &config).unwrap();
    assert_eq!(first, linear_probe(&train, &test, 3, &config).unwrap());
}

#[test]
fn knn_majority_vote_with_ties_to_the_smallest_label() {
    let cpu = &Device::Cpu;
    // Training points on the unit circle; labels chosen so that k = 2 ties.
    let train = Features {
        values: Tensor::new(&[[1.0f32, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]], cpu).unwrap(),
        labels: vec![2, 1, 1, 0],
    };
    let test = Features { values: Tensor::new(&[[1.0f32, 0.05], [0.1, 1.0]], cpu).unwrap(), labels: vec![2, 1] };
    let predictions = knn_predict(&train, &test, 3, &[1, 2, 3]).unwrap();
    assert_eq!(predictions[0], vec![2, 1]); // nearest neighbour
    assert_eq!(predictions[1], vec![1, 1]); // labels 2 and 1 tie: the smaller wins
    assert_eq!(predictions[2], vec![1, 1]); // two votes for 1
                                            // Cosine: the scale of a feature vector does not matter.
    let scaled = Features { values: (test.values.clone() * 100.0).unwrap(), labels: test.labels.clone() };
    assert_eq!(knn_predict(&train, &scaled, 3, &[1, 2, 3]).unwrap(), predictions);
}

#[test]
fn group_accuracies_and_their_spread_from_hand_built_predictions() {
    // Six classes: 0-1 Many, 2-3 Medium, 4-5 Few; two test images each.
    let groups = [Group::Many, Group::Many, Group::Medium, Group::Medium, Group::Few, Group::Few];
    let labels = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5];
    let predictions = [0, 0, 1, 1, 2, 0, 3, 3, 0, 4, 1, 2];
    let report = AccuracyReport::new(&predictions, &labels, &groups).unwrap();
    assert_eq!(report.per_class, vec![1.0, 1.0, 0.5, 1.0, 0.5, 0.0]);
    assert_eq!(report.overall, 8.0 / 12.0);
    assert_eq!((report.many, report.medium, report.few), (Some(1.0), Some(0.75), Some(0.25)));
    // numpy.std (ddof 0) of the per-class and of the three group accuracies.
    let per_class_mean = 4.0 / 6.0;
    let per_class_var =
        [1.0, 1.0, 0.5, 1.0, 0.5, 0.0].iter().map(|a: &f64| (a - per_class_mean).powi(2)).sum::<f64>() / 6.0;
    assert!((report.per_class_std - per_class_var.sqrt()).abs() < 1e-12);
    let group_var =
        ((1.0f64 - 2.0 / 3.0).powi(2) + (0.75f64 - 2.0 / 3.0).powi(2) + (0.25f64 - 2.0 / 3.0).powi(2)) / 3.0;
    assert!((report.group_std.unwrap() - group_var.sqrt()).abs() < 1e-12);
}

#[test]
fn an_empty_group_has_no_accuracy_and_no_balancedness() {
    let report = AccuracyReport::new(&[0, 1], &[0, 1], &[Group::Many, Group::Few]).unwrap();
    assert_eq!(report.medium, None);
    assert_eq!(report.group_std, None);
    assert_eq!(report.many, Some(1.0));
}

#[test]
fn inconsistent_input_is_a_clear_error() {
    let groups = [Group::Many, Group::Few];
    assert!(AccuracyReport::new(&[0], &[0, 1], &groups)
        .unwrap_err()
        .to_string()
        .contains("one prediction per test image"));
    assert!(AccuracyReport::new(&[0, 0], &[0, 2], &groups).unwrap_err().to_string().contains("outside the 2 classes"));
    assert!(AccuracyReport::new(&[0, 0], &[0, 0], &groups)
        .unwrap_err()
        .to_string()
        .contains("class 1 has no test image"));
    let train = clusters(2, 3, 4, 0);
    let test = clusters(2, 3, 4, 1);
    assert!(knn_predict(&train, &test, 2, &[7]).unwrap_err().to_string().contains("k = 7"));
    assert!(linear_probe(&train, &test, 1, &quick_probe()).is_err());
    let mismatched = Features { values: train.values.clone(), labels: vec![0] };
    assert!(linear_probe(&mismatched, &test, 2, &quick_probe()).is_err());
}

#[test]
fn evaluate_reports_linear_and_every_knn() {
    let train = clusters(3, 12, 6, 2);
    let test = clusters(3, 6, 6, 77);
    let result = evaluate(&train, &test, &[Group::Many, Group::Medium, Group::Few], &quick_probe()).unwrap();
    assert_eq!(result.linear.overall, 1.0);
    assert_eq!(result.knn.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![1, 5]);
    assert!(result.knn.iter().all(|(_, report)| report.overall == 1.0));
}
