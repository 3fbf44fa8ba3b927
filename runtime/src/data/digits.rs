//! The default dataset, compiled into the binary so `sslc` runs with no download: the UCI
//! optical handwritten digits (1,797 8x8 images, levels 0..16, 10 classes), as scikit-learn
//! ships them (`sklearn/datasets/data/digits.csv.gz`: 64 pixel columns, then the label).
//!
//! The split mirrors CIFAR's roles on a small scale, deterministically (numpy's RNG, seed 0):
//! a balanced test set of [`TEST_PER_CLASS`] images per class, a balanced probe-train set of
//! every class's remainder cut to the smallest class's, and the long-tailed SSL training set
//! chosen from the probe-train set exactly as CIFAR-LT is chosen from CIFAR's train set.

use super::numpy_rng::Mt19937;
use super::{DataError, DataSplits, Dataset, ImbalanceProfile, LevelStore, LongTail};
use std::fmt::Write as _;
use std::io::Read;

static DIGITS_CSV_GZ: &[u8] = include_bytes!("../../assets/digits.csv.gz");

pub const CLASSES: usize = 10;
pub const SIDE: usize = 8;
/// Held-out test images per class.
pub const TEST_PER_CLASS: usize = 50;
/// The default imbalance factor of the long-tailed training set.
pub const DEFAULT_IMBALANCE: f64 = 0.1;

/// An image's part in the split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Test,
    /// In the long-tailed training set (and so in the probe-train set).
    Train,
    /// In the balanced probe-train set only.
    Probe,
    /// Beyond the balanced probe-train set's per-class count.
    Unused,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Test => "test",
            Role::Train => "train",
            Role::Probe => "probe",
            Role::Unused => "unused",
        }
    }
}

fn embedded_error(problem: String) -> DataError {
    DataError::Malformed {
        path: "<embedded runtime/assets/digits.csv.gz>".into(),
        problem,
        expected: "1,797 CSV rows of 64 levels 0..16 and a label 0..9".into(),
        hint: "the asset is compiled in; rebuild from a clean checkout".into(),
    }
}

/// All 1,797 images in file order.
pub fn read_all() -> Result<Dataset, DataError> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut text)
        .map_err(|e| embedded_error(format!("gzip: {e}")))?;
    let mut levels = Vec::new();
    let mut labels = Vec::new();
    for (row, line) in text.lines().enumerate() {
        let values: Vec<u8> = line
            .split(',')
            .map(|v| v.trim().parse::<u8>().ok().filter(|&v| v <= 16))
            .collect::<Option<_>>()
            .ok_or_else(|| embedded_error(format!("row {row} has a value that is not an integer 0..16")))?;
        if values.len() != SIDE * SIDE + 1 || usize::from(values[SIDE * SIDE]) >= CLASSES {
            return Err(embedded_error(format!("row {row} has {} columns or a bad label", values.len())));
        }
        levels.extend_from_slice(&values[..SIDE * SIDE]);
        labels.push(u32::from(values[SIDE * SIDE]));
    }
    let store = LevelStore { channels: 1, height: SIDE, width: SIDE, max_level: 16.0, levels };
    let names = (0..CLASSES).map(|c| c.to_string()).collect();
    Ok(Dataset::in_memory("digits", store, labels, CLASSES, Some(names)))
}

/// Test and balanced probe-train indices (each ascending) of `labels`.
fn balanced_parts(labels: &[u32]) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    let mut members = vec![Vec::new(); CLASSES];
    for (index, &label) in labels.iter().enumerate() {
        members[label as usize].push(index);
    }
    let smallest = members.iter().map(Vec::len).min().unwrap_or(0);
    if smallest <= TEST_PER_CLASS {
        return Err(embedded_error(format!("a class has only {smallest} images, {TEST_PER_CLASS} are held out")));
    }
    let probe_per_class = smallest - TEST_PER_CLASS;
    let mut rng = Mt19937::new(0);
    let (mut test, mut probe) = (Vec::new(), Vec::new());
    for indices in &mut members {
        rng.shuffle(indices);
        test.extend_from_slice(&indices[..TEST_PER_CLASS]);
        probe.extend_from_slice(&indices[TEST_PER_CLASS..TEST_PER_CLASS + probe_per_class]);
    }
    test.sort_unstable();
    probe.sort_unstable();
    Ok((test, probe))
}

/// The split of the embedded file.
struct DigitsSplit {
    /// Per image.
    roles: Vec<Role>,
    test: Vec<usize>,
    probe: Vec<usize>,
    /// The long-tailed training set as indices into `probe`, in [`LongTail::select`]'s order.
    kept: Vec<usize>,
}

fn split_embedded(all: &Dataset, long_tail: &LongTail) -> Result<DigitsSplit, DataError> {
    let (test, probe) = balanced_parts(all.labels())?;
    let probe_labels: Vec<u32> = probe.iter().map(|&i| all.labels()[i]).collect();
    let kept = long_tail.select(&probe_labels, CLASSES, super::ClassOrder::ByLabel, 0)?;
    let mut roles = vec![Role::Unused; all.len()];
    for &i in &test {
        roles[i] = Role::Test;
    }
    for &i in &probe {
        roles[i] = Role::Probe;
    }
    for &k in &kept {
        roles[probe[k]] = Role::Train;
    }
    Ok(DigitsSplit { roles, test, probe, kept })
}

/// Digits-LT: long-tailed training set, balanced probe-train set, balanced test set.
pub fn load_long_tailed(long_tail: &LongTail) -> Result<DataSplits, DataError> {
    let all = read_all()?;
    let split = split_embedded(&all, long_tail)?;
    let probe_train = all.subset("digits", &split.probe);
    Ok(DataSplits {
        train: probe_train.subset("digits-lt", &split.kept),
        probe_train,
        test: all.subset("digits-test", &split.test),
    })
}

/// The text of the committed `split/digits_lt.txt` (default imbalance, exp profile): one
/// `index label role` line per image of the embedded file.
pub fn split_file_text() -> Result<String, DataError> {
    let all = read_all()?;
    let long_tail = LongTail::new(DEFAULT_IMBALANCE, ImbalanceProfile::Exp)?;
    let roles = split_embedded(&all, &long_tail)?.roles;
    let mut text = format!(
        "# UCI digits split (sslc): imbalance {DEFAULT_IMBALANCE} exp, numpy seed 0, {TEST_PER_CLASS} test images per class\n# index label role\n"
    );
    for (index, (label, role)) in all.labels().iter().zip(roles).enumerate() {
        let _ = writeln!(text, "{index} {label} {}", role.name());
    }
    Ok(text)
}
