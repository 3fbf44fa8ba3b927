//! CIFAR-10 and CIFAR-100 in both official layouts: the binary version (`*.bin` records of label
//! bytes + 3072 channel-major pixels) and the Python version (pickled dicts), and their
//! long-tailed training subsets.

use super::pickle::{self, PickleValue};
use super::{read_file, ClassOrder, DataError, DataSplits, Dataset, LevelStore, LongTail};
use std::path::{Path, PathBuf};

const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarVariant {
    Cifar10,
    Cifar100,
}

/// Which half of the dataset to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Train,
    Test,
}

/// The files of one layout, relative to its folder.
struct Layout {
    folder: &'static str,
    train: &'static [&'static str],
    test: &'static str,
    names: &'static str,
    binary: bool,
}

impl CifarVariant {
    pub fn name(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "cifar10",
            CifarVariant::Cifar100 => "cifar100",
        }
    }

    pub fn class_count(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 10,
            CifarVariant::Cifar100 => 100,
        }
    }

    /// The reference shuffles CIFAR-10's classes before assigning counts, not CIFAR-100's.
    pub fn class_order(self) -> ClassOrder {
        match self {
            CifarVariant::Cifar10 => ClassOrder::Shuffled,
            CifarVariant::Cifar100 => ClassOrder::ByLabel,
        }
    }

    fn hint(self) -> String {
        let stem = match self {
            CifarVariant::Cifar10 => "cifar-10",
            CifarVariant::Cifar100 => "cifar-100",
        };
        format!(
            "download https://www.cs.toronto.edu/~kriz/{stem}-binary.tar.gz (or {stem}-python.tar.gz), extract it and pass the extracted folder or its parent as the data root"
        )
    }

    fn layouts(self) -> [Layout; 2] {
        match self {
            CifarVariant::Cifar10 => [
                Layout {
                    folder: "cifar-10-batches-bin",
                    train: &[
                        "data_batch_1.bin",
                        "data_batch_2.bin",
                        "data_batch_3.bin",
                        "data_batch_4.bin",
                        "data_batch_5.bin",
                    ],
                    test: "test_batch.bin",
                    names: "batches.meta.txt",
                    binary: true,
                },
                Layout {
                    folder: "cifar-10-batches-py",
                    train: &["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
                    test: "test_batch",
                    names: "batches.meta",
                    binary: false,
                },
            ],
            CifarVariant::Cifar100 => [
                Layout {
                    folder: "cifar-100-binary",
                    train: &["train.bin"],
                    test: "test.bin",
                    names: "fine_label_names.txt",
                    binary: true,
                },
                Layout { folder: "cifar-100-python", train: &["train"], test: "test", names: "meta", binary: false },
            ],
        }
    }

    /// Bytes before the pixels in a binary record: CIFAR-100 has a coarse and a fine label.
    fn label_bytes(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 1,
            CifarVariant::Cifar100 => 2,
        }
    }

    /// The pickled dict's label key.
    fn label_key(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "labels",
            CifarVariant::Cifar100 => "fine_labels",
        }
    }

    fn names_key(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "label_names",
            CifarVariant::Cifar100 => "fine_label_names",
        }
    }
}

/// Finds the layout under `root`: the extracted folder itself or its parent.
fn locate(root: &Path, variant: CifarVariant) -> Result<(PathBuf, Layout), DataError> {
    for layout in variant.layouts() {
        for folder in [root.to_owned(), root.join(layout.folder)] {
            if folder.join(layout.test).is_file() {
                return Ok((folder, layout));
            }
        }
    }
    let [binary, python] = variant.layouts();
    let probe = root.join(binary.folder).join(binary.test);
    Err(DataError::Missing {
        path: probe,
        hint: format!(
            "no {} found under {}: expected {}/{} (binary) or {}/{} (python). {}",
            variant.name(),
            root.display(),
            binary.folder,
            binary.test,
            python.folder,
            python.test,
            variant.hint()
        ),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// Labels and channel-major pixels of one file.
struct Records {
    labels: Vec<u32>,
    pixels: Vec<u8>,
}

fn malformed(path: &Path, variant: CifarVariant, problem: String, expected: &str) -> DataError {
    DataError::Malformed { path: path.to_owned(), problem, expected: expected.to_owned(), hint: variant.hint() }
}

fn read_binary(path: &Path, variant: CifarVariant) -> Result<Records, DataError> {
    let bytes = read_file(path, &variant.hint())?;
    let record = variant.label_bytes() + PIXELS;
    let expected = match variant {
        CifarVariant::Cifar10 => "records of 3073 bytes (1 label byte + 3072 pixel bytes)",
        CifarVariant::Cifar100 => "records of 3074 bytes (1 coarse + 1 fine label byte + 3072 pixel bytes)",
    };
    if bytes.is_empty() || bytes.len() % record != 0 {
        return Err(malformed(
            path,
            variant,
            format!("{} bytes is not a whole number of records", bytes.len()),
            expected,
        ));
    }
    let count = bytes.len() / record;
    let mut records = Records { labels: Vec::with_capacity(count), pixels: Vec::with_capacity(count * PIXELS) };
    for (index, chunk) in bytes.chunks_exact(record).enumerate() {
        let label = chunk[variant.label_bytes() - 1];
        if usize::from(label) >= variant.class_count() {
            return Err(malformed(
                path,
                variant,
                format!("record {index} has label {label}"),
                &format!("labels below {}", variant.class_count()),
            ));
        }
        records.labels.push(u32::from(label));
        records.pixels.extend_from_slice(&chunk[variant.label_bytes()..]);
    }
    Ok(records)
}

fn read_pickle(path: &Path, variant: CifarVariant) -> Result<Records, DataError> {
    let bytes = read_file(path, &variant.hint())?;
    let expected = format!("a pickled dict with `data` (uint8 array N x 3072) and `{}` (N ints)", variant.label_key());
    let value = pickle::parse(&bytes).map_err(|e| malformed(path, variant, e.to_string(), &expected))?;
    let data = match value.get("data") {
        Some(PickleValue::Array(array))
            if array.dtype == "|u1" && array.shape.len() == 2 && array.shape[1] == PIXELS =>
        {
            array
        }
        Some(PickleValue::Array(array)) => {
            return Err(malformed(
                path,
                variant,
                format!("`data` is a {} array of shape {:?}", array.dtype, array.shape),
                &expected,
            ));
        }
        _ => return Err(malformed(path, variant, "no numpy array under `data`".into(), &expected)),
    };
    let Some(raw_labels) = value.get(variant.label_key()).and_then(PickleValue::to_integers) else {
        return Err(malformed(path, variant, format!("no integer list under `{}`", variant.label_key()), &expected));
    };
    if raw_labels.len() != data.shape[0] {
        return Err(malformed(
            path,
            variant,
            format!("{} labels for {} images", raw_labels.len(), data.shape[0]),
            &expected,
        ));
    }
    let classes = variant.class_count() as i64;
    let mut labels = Vec::with_capacity(raw_labels.len());
    for (index, label) in raw_labels.into_iter().enumerate() {
        if !(0..classes).contains(&label) {
            return Err(malformed(
                path,
                variant,
                format!("image {index} has label {label}"),
                &format!("labels in 0..{classes}"),
            ));
        }
        labels.push(label as u32);
    }
    Ok(Records { labels, pixels: data.data.to_vec() })
}

fn read_class_names(path: &Path, variant: CifarVariant, binary: bool) -> Result<Option<Vec<String>>, DataError> {
    if !path.is_file() {
        return Ok(None);
    }
    let names: Vec<String> = if binary {
        let bytes = read_file(path, &variant.hint())?;
        String::from_utf8_lossy(&bytes).lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
    } else {
        let bytes = read_file(path, &variant.hint())?;
        let expected = format!("a pickled dict with `{}`", variant.names_key());
        let value = pickle::parse(&bytes).map_err(|e| malformed(path, variant, e.to_string(), &expected))?;
        match value.get(variant.names_key()) {
            Some(PickleValue::List(items)) => items.iter().filter_map(|v| v.as_text().map(str::to_owned)).collect(),
            _ => return Err(malformed(path, variant, format!("no list under `{}`", variant.names_key()), &expected)),
        }
    };
    if names.len() != variant.class_count() {
        return Err(malformed(
            path,
            variant,
            format!("{} class names", names.len()),
            &format!("{} names", variant.class_count()),
        ));
    }
    Ok(Some(names))
}

/// Reads the balanced train or test set from `root` (either layout).
pub fn read(root: &Path, variant: CifarVariant, part: Part) -> Result<Dataset, DataError> {
    let (folder, layout) = locate(root, variant)?;
    let files = match part {
        Part::Train => layout.train,
        Part::Test => std::slice::from_ref(&layout.test),
    };
    let mut all = Records { labels: Vec::new(), pixels: Vec::new() };
    for file in files {
        let path = folder.join(file);
        let records = if layout.binary { read_binary(&path, variant)? } else { read_pickle(&path, variant)? };
        all.labels.extend(records.labels);
        all.pixels.extend(records.pixels);
    }
    let names = read_class_names(&folder.join(layout.names), variant, layout.binary)?;
    let store = LevelStore { channels: 3, height: SIDE, width: SIDE, max_level: 255.0, levels: all.pixels };
    let name = match part {
        Part::Train => variant.name().to_owned(),
        Part::Test => format!("{}-test", variant.name()),
    };
    Ok(Dataset::in_memory(&name, store, all.labels, variant.class_count(), names))
}

/// CIFAR-LT: the reference's long-tailed training subset, the balanced training set for the
/// probe and the test set.
pub fn load_long_tailed(root: &Path, variant: CifarVariant, long_tail: &LongTail) -> Result<DataSplits, DataError> {
    let train = read(root, variant, Part::Train)?;
    let test = read(root, variant, Part::Test)?;
    super::long_tailed_splits(train, test, long_tail, variant.class_order())
}
