//! Long-tailed subsets of balanced training sets (METHOD.md §3), selected exactly as the
//! reference's `ImbalanceCIFAR10/100` do so that the same images are kept.

use super::numpy_rng::Mt19937;
use super::DataError;
use std::fmt::Write as _;

/// How per-class counts fall from the head class to the tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImbalanceProfile {
    /// `n_c = floor(n_max * r^(c / (C - 1)))`.
    Exp,
    /// The first half of the classes keep `n_max`, the rest `floor(n_max * r)`.
    Step,
}

impl ImbalanceProfile {
    pub fn from_name(name: &str) -> Result<ImbalanceProfile, DataError> {
        match name {
            "exp" => Ok(ImbalanceProfile::Exp),
            "step" => Ok(ImbalanceProfile::Step),
            other => Err(DataError::invalid("imbalance profile", format!("`{other}` is not one of `exp`, `step`"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ImbalanceProfile::Exp => "exp",
            ImbalanceProfile::Step => "step",
        }
    }
}

/// The class order of the subset: which class becomes the head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassOrder {
    /// Class 0 is the head (the reference's CIFAR-100 and every other dataset here).
    ByLabel,
    /// The classes are shuffled with the selection RNG first (the reference's CIFAR-10).
    Shuffled,
}

/// A long-tail specification: imbalance factor `r = n_min / n_max` and profile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LongTail {
    pub imbalance: f64,
    pub profile: ImbalanceProfile,
}

impl LongTail {
    pub fn new(imbalance: f64, profile: ImbalanceProfile) -> Result<LongTail, DataError> {
        if !(imbalance > 0.0 && imbalance <= 1.0) {
            return Err(DataError::invalid(
                "imbalance factor",
                format!("{imbalance} is not in (0, 1]; it is n_min / n_max, e.g. 0.01"),
            ));
        }
        Ok(LongTail { imbalance, profile })
    }

    /// Images kept per head-to-tail rank, as the reference computes them (float, truncated).
    pub fn counts(&self, per_class: usize, classes: usize) -> Vec<usize> {
        let n_max = per_class as f64;
        (0..classes)
            .map(|rank| match self.profile {
                ImbalanceProfile::Exp if classes == 1 => per_class,
                ImbalanceProfile::Exp => (n_max * self.imbalance.powf(rank as f64 / (classes as f64 - 1.0))) as usize,
                ImbalanceProfile::Step if rank < classes / 2 => per_class,
                ImbalanceProfile::Step => (n_max * self.imbalance) as usize,
            })
            .collect()
    }

    /// Indices into `labels` of the kept images, grouped by class in head-to-tail order, each
    /// class's images in the order numpy's shuffle (seed `seed`) left them: the reference's order.
    /// Needs a balanced label set: every class present with the same count.
    pub fn select(
        &self,
        labels: &[u32],
        classes: usize,
        order: ClassOrder,
        seed: u32,
    ) -> Result<Vec<usize>, DataError> {
        let mut members = vec![Vec::new(); classes];
        for (index, &label) in labels.iter().enumerate() {
            match members.get_mut(label as usize) {
                Some(list) => list.push(index),
                None => {
                    return Err(DataError::invalid(
                        "labels",
                        format!("label {label} at index {index} is not below the class count {classes}"),
                    ))
                }
            }
        }
        let per_class = members.first().map_or(0, Vec::len);
        if let Some(class) = members.iter().position(|m| m.len() != per_class || m.is_empty()) {
            return Err(DataError::invalid(
                "labels",
                format!(
                    "a long-tailed subset needs a balanced set; class {class} has {} images, class 0 has {per_class}",
                    members[class].len()
                ),
            ));
        }
        let mut rng = Mt19937::new(seed);
        let mut class_order: Vec<usize> = (0..classes).collect();
        if order == ClassOrder::Shuffled {
            rng.shuffle(&mut class_order);
        }
        let mut kept = Vec::new();
        for (class, count) in class_order.into_iter().zip(self.counts(per_class, classes)) {
            let mut indices = std::mem::take(&mut members[class]);
            rng.shuffle(&mut indices);
            kept.extend_from_slice(&indices[..count]);
        }
        Ok(kept)
    }
}

/// The text `sslc split` prints: a header, then one `index label` line per kept image, where
/// `index` is the image's position in the balanced training set.
pub fn split_listing(dataset: &str, labels: &[u32], kept: &[usize], long_tail: &LongTail) -> String {
    let mut text = format!(
        "# {dataset}: long-tailed subset, imbalance {} ({}), {} of {} training images\n# index label\n",
        long_tail.imbalance,
        long_tail.profile.name(),
        kept.len(),
        labels.len()
    );
    for &index in kept {
        let _ = writeln!(text, "{index} {}", labels[index]);
    }
    text
}
