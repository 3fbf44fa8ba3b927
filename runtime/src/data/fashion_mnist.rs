//! Fashion-MNIST (60k train / 10k test, 28x28 grayscale, 10 classes) from its IDX files, and
//! its long-tailed training subset, built like CIFAR-100-LT's (class 0 the head).

use super::idx;
use super::{ClassOrder, DataError, DataSplits, Dataset, LevelStore, LongTail};
use std::path::{Path, PathBuf};

/// Where Debian's `dataset-fashion-mnist` package installs the files.
pub const DEFAULT_ROOT: &str = "/usr/share/datasets/fashion-mnist";

pub const CLASS_NAMES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

const HINT: &str = "install it with `apt-get install dataset-fashion-mnist` (files under /usr/share/datasets/fashion-mnist/) \
or put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from the Fashion-MNIST release in the data root";

/// `name` or `name.gz` under `root`, preferring the one that exists.
fn idx_path(root: &Path, name: &str) -> PathBuf {
    let gzipped = root.join(format!("{name}.gz"));
    if gzipped.is_file() {
        gzipped
    } else {
        root.join(name)
    }
}

fn read_part(root: &Path, prefix: &str, name: &str) -> Result<Dataset, DataError> {
    let images_path = idx_path(root, &format!("{prefix}-images-idx3-ubyte"));
    let labels_path = idx_path(root, &format!("{prefix}-labels-idx1-ubyte"));
    let images = idx::read_u8(&images_path, 3, HINT)?;
    let labels = idx::read_u8(&labels_path, 1, HINT)?;
    if labels.dims[0] != images.dims[0] {
        return Err(DataError::Malformed {
            path: labels_path,
            problem: format!("{} labels", labels.dims[0]),
            expected: format!("one label per image of {} ({})", images_path.display(), images.dims[0]),
            hint: HINT.to_owned(),
        });
    }
    if let Some(position) = labels.data.iter().position(|&l| usize::from(l) >= CLASS_NAMES.len()) {
        return Err(DataError::Malformed {
            path: labels_path,
            problem: format!("label {} at position {position}", labels.data[position]),
            expected: "labels 0..9".to_owned(),
            hint: HINT.to_owned(),
        });
    }
    let store = LevelStore {
        channels: 1,
        height: images.dims[1],
        width: images.dims[2],
        max_level: 255.0,
        levels: images.data,
    };
    let names = CLASS_NAMES.iter().map(|s| (*s).to_owned()).collect();
    Ok(Dataset::in_memory(
        name,
        store,
        labels.data.into_iter().map(u32::from).collect(),
        CLASS_NAMES.len(),
        Some(names),
    ))
}

/// The balanced training set.
pub fn read_train(root: &Path) -> Result<Dataset, DataError> {
    read_part(root, "train", "fashion-mnist")
}

pub fn read_test(root: &Path) -> Result<Dataset, DataError> {
    read_part(root, "t10k", "fashion-mnist-test")
}

/// Fashion-MNIST-LT: long-tailed training subset, balanced probe set, test set.
pub fn load_long_tailed(root: &Path, long_tail: &LongTail) -> Result<DataSplits, DataError> {
    super::long_tailed_splits(read_train(root)?, read_test(root)?, long_tail, ClassOrder::ByLabel)
}
