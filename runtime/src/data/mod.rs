//! Datasets in their official formats, their long-tailed training subsets and the balanced sets
//! the linear probe uses (METHOD.md §3–4), and the threaded loader that augments them.
//!
//! Every benchmark yields a [`DataSplits`]: the (long-tailed) SSL training set, the probe's
//! training set and the test set. Images live in memory as 8-bit levels (CIFAR, Fashion-MNIST,
//! digits) or are decoded from files when asked for (ImageNet-LT, Places-LT), so 115k JPEGs never
//! sit in RAM at once.

pub mod cifar;
pub mod digits;
pub mod fashion_mnist;
pub mod groups;
pub mod idx;
pub mod image_list;
pub mod loader;
pub mod long_tail;
pub mod numpy_rng;
pub mod pickle;

use crate::image::Image;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use long_tail::{ClassOrder, ImbalanceProfile, LongTail};

/// Why a dataset could not be read. Every variant names the file and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {}: {source}\n  {hint}", path.display())]
    Missing {
        path: PathBuf,
        hint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {problem}; expected {expected}\n  {hint}", path.display())]
    Malformed { path: PathBuf, problem: String, expected: String, hint: String },
    #[error("{}: cannot decode the image: {source}\n  the list file names it; check the image root and that the file is a JPEG or PNG", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("invalid {what}: {problem}")]
    Invalid { what: String, problem: String },
}

impl DataError {
    pub(crate) fn invalid(what: &str, problem: impl Into<String>) -> DataError {
        DataError::Invalid { what: what.to_owned(), problem: problem.into() }
    }
}

/// Reads a whole file, turning a failure into [`DataError::Missing`] with `hint`.
pub(crate) fn read_file(path: &Path, hint: &str) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|source| DataError::Missing { path: path.to_owned(), hint: hint.to_owned(), source })
}

/// Fixed-size images stored as integer levels, channel-major per image: a quarter of the
/// memory of `f32`, converted when a sample is drawn.
#[derive(Debug)]
pub struct LevelStore {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// The level that maps to 1.0 (255 for 8-bit images, 16 for the UCI digits).
    pub max_level: f32,
    pub levels: Vec<u8>,
}

impl LevelStore {
    fn image_size(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn image(&self, row: usize) -> Image {
        let size = self.image_size();
        Image::from_chw_levels(
            self.channels,
            self.height,
            self.width,
            &self.levels[row * size..(row + 1) * size],
            self.max_level,
        )
    }
}

#[derive(Clone, Debug)]
enum ImageSource {
    Memory { store: Arc<LevelStore>, rows: Vec<u32> },
    Files { root: Arc<PathBuf>, paths: Vec<PathBuf> },
}

/// A labelled image collection.
#[derive(Clone, Debug)]
pub struct Dataset {
    name: String,
    labels: Vec<u32>,
    class_count: usize,
    class_names: Option<Arc<Vec<String>>>,
    source: ImageSource,
}

impl Dataset {
    /// A dataset held in memory; `store` has one image per label.
    pub fn in_memory(
        name: &str,
        store: LevelStore,
        labels: Vec<u32>,
        class_count: usize,
        class_names: Option<Vec<String>>,
    ) -> Dataset {
        assert_eq!(store.levels.len(), labels.len() * store.image_size(), "Dataset::in_memory: one image per label");
        let rows = (0..labels.len() as u32).collect();
        Dataset {
            name: name.to_owned(),
            labels,
            class_count,
            class_names: class_names.map(Arc::new),
            source: ImageSource::Memory { store: Arc::new(store), rows },
        }
    }

    /// A dataset decoded lazily from image files, `paths` relative to `root`.
    pub fn from_files(name: &str, root: &Path, paths: Vec<PathBuf>, labels: Vec<u32>, class_count: usize) -> Dataset {
        assert_eq!(paths.len(), labels.len(), "Dataset::from_files: one path per label");
        Dataset {
            name: name.to_owned(),
            labels,
            class_count,
            class_names: None,
            source: ImageSource::Files { root: Arc::new(root.to_owned()), paths },
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    pub fn class_count(&self) -> usize {
        self.class_count
    }

    pub fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref().map(Vec::as_slice)
    }

    /// Images per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.class_count];
        for &label in &self.labels {
            counts[label as usize] += 1;
        }
        counts
    }

    /// The `index`-th image, values in `[0, 1]`. File-backed datasets decode it now (RGB).
    pub fn image(&self, index: usize) -> Result<Image, DataError> {
        match &self.source {
            ImageSource::Memory { store, rows } => Ok(store.image(rows[index] as usize)),
            ImageSource::Files { root, paths } => image_list::decode_rgb(&root.join(&paths[index])),
        }
    }

    /// The images at `indices`, in that order, sharing this dataset's storage.
    pub fn subset(&self, name: &str, indices: &[usize]) -> Dataset {
        let source = match &self.source {
            ImageSource::Memory { store, rows } => {
                ImageSource::Memory { store: store.clone(), rows: indices.iter().map(|&i| rows[i]).collect() }
            }
            ImageSource::Files { root, paths } => {
                ImageSource::Files { root: root.clone(), paths: indices.iter().map(|&i| paths[i].clone()).collect() }
            }
        };
        Dataset {
            name: name.to_owned(),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            class_count: self.class_count,
            class_names: self.class_names.clone(),
            source,
        }
    }
}

/// The three sets a run needs.
#[derive(Clone, Debug)]
pub struct DataSplits {
    /// The long-tailed set the encoder trains on.
    pub train: Dataset,
    /// The linear probe's training set: balanced CIFAR train set, or the 100-shot list.
    pub probe_train: Dataset,
    pub test: Dataset,
}

impl DataSplits {
    /// At most `limit` images of each set, taken at an even stride so every class keeps about
    /// its share: a smoke run or a quick experiment on a large benchmark (`sslc run --limit`).
    /// The probe's sets keep at least one image of every class (so they may hold up to one
    /// image per class more than `limit`): the evaluation needs each class's accuracy.
    pub fn limited(self, limit: usize) -> DataSplits {
        let thin = |set: Dataset, every_class: bool| {
            let len = set.len();
            if len <= limit {
                return set;
            }
            let mut kept: Vec<usize> = (0..limit).map(|i| i * len / limit).collect();
            if every_class {
                let mut present = vec![false; set.class_count()];
                for &i in &kept {
                    present[set.labels()[i] as usize] = true;
                }
                for (i, &label) in set.labels().iter().enumerate() {
                    if !present[label as usize] {
                        present[label as usize] = true;
                        kept.push(i);
                    }
                }
                kept.sort_unstable();
            }
            set.subset(set.name(), &kept)
        };
        DataSplits {
            train: thin(self.train, false),
            probe_train: thin(self.probe_train, true),
            test: thin(self.test, true),
        }
    }

    /// What training and evaluation need of the sets, checked before any work: images to
    /// train on, and a probe training set and a test set with every class in them.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.train.is_empty() {
            return Err(DataError::invalid(
                "training set",
                format!(
                    "`{}` has no images; check the data path and the list files (and --limit, at least 1)",
                    self.train.name()
                ),
            ));
        }
        for (role, set) in [("linear-probe training set", &self.probe_train), ("test set", &self.test)] {
            let counts = set.class_counts();
            if let Some(class) = counts.iter().position(|&c| c == 0) {
                let name = set.class_names().and_then(|n| n.get(class)).map_or(String::new(), |n| format!(" ({n})"));
                return Err(DataError::invalid(
                    role,
                    format!(
                        "`{}` has no image of class {class}{name}, so its per-class accuracy is undefined; \
                         use the benchmark's full {role}",
                        set.name()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Long-tails a balanced training set, keeping the balanced set as the probe's training set.
pub(crate) fn long_tailed_splits(
    balanced_train: Dataset,
    test: Dataset,
    long_tail: &LongTail,
    order: ClassOrder,
) -> Result<DataSplits, DataError> {
    let kept = long_tail.select(balanced_train.labels(), balanced_train.class_count(), order, 0)?;
    let name = format!("{}-lt", balanced_train.name());
    Ok(DataSplits { train: balanced_train.subset(&name, &kept), probe_train: balanced_train, test })
}

/// The benchmarks `sslc` knows by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatasetName {
    /// The embedded UCI digits, the default.
    Digits,
    Cifar10,
    Cifar100,
    FashionMnist,
    ImageNetLt,
    PlacesLt,
}

impl DatasetName {
    pub const ALL: [DatasetName; 6] = [
        DatasetName::Digits,
        DatasetName::Cifar10,
        DatasetName::Cifar100,
        DatasetName::FashionMnist,
        DatasetName::ImageNetLt,
        DatasetName::PlacesLt,
    ];

    /// Accepts `cifar100` and `cifar100-lt` alike.
    pub fn from_name(name: &str) -> Result<DatasetName, DataError> {
        let bare = name.trim_end_matches("-lt");
        DatasetName::ALL.into_iter().find(|d| d.name().trim_end_matches("-lt") == bare).ok_or_else(|| {
            let known: Vec<&str> = DatasetName::ALL.iter().map(|d| d.name()).collect();
            DataError::invalid("dataset", format!("`{name}` is not one of {}", known.join(", ")))
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            DatasetName::Digits => "digits-lt",
            DatasetName::Cifar10 => "cifar10-lt",
            DatasetName::Cifar100 => "cifar100-lt",
            DatasetName::FashionMnist => "fashion-mnist-lt",
            DatasetName::ImageNetLt => "imagenet-lt",
            DatasetName::PlacesLt => "places-lt",
        }
    }

    pub fn preset(self) -> crate::augment::Preset {
        match self {
            DatasetName::Digits => crate::augment::Preset::Digits,
            DatasetName::Cifar10 | DatasetName::Cifar100 => crate::augment::Preset::Cifar,
            DatasetName::FashionMnist => crate::augment::Preset::FashionMnist,
            DatasetName::ImageNetLt | DatasetName::PlacesLt => crate::augment::Preset::ImageNet,
        }
    }

    /// The imbalance factor used when none is given; `None` for the list-file benchmarks,
    /// whose imbalance is fixed by their lists.
    pub fn default_imbalance(self) -> Option<f64> {
        match self {
            DatasetName::Digits => Some(digits::DEFAULT_IMBALANCE),
            DatasetName::Cifar10 | DatasetName::Cifar100 | DatasetName::FashionMnist => Some(0.01),
            DatasetName::ImageNetLt | DatasetName::PlacesLt => None,
        }
    }

    fn cifar_variant(self) -> Option<cifar::CifarVariant> {
        match self {
            DatasetName::Cifar10 => Some(cifar::CifarVariant::Cifar10),
            DatasetName::Cifar100 => Some(cifar::CifarVariant::Cifar100),
            _ => None,
        }
    }
}

/// Where a benchmark's files are and how to long-tail it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DataOptions {
    /// CIFAR: the extracted archive or its parent. Fashion-MNIST: the IDX folder (default
    /// [`fashion_mnist::DEFAULT_ROOT`]). ImageNet-LT/Places-LT: the folder the lists' paths are
    /// relative to.
    pub root: Option<PathBuf>,
    /// ImageNet-LT/Places-LT: the folder holding the `ImageNet_LT/` and `Places_LT/` lists
    /// (default `split`, the reference repository's layout).
    pub split_dir: Option<PathBuf>,
    /// Imbalance and profile; defaults to [`DatasetName::default_imbalance`], exp. Ignored by
    /// ImageNet-LT/Places-LT, whose lists fix it.
    pub long_tail: Option<LongTail>,
}

impl DataOptions {
    fn long_tail(&self, name: DatasetName) -> Result<LongTail, DataError> {
        let Some(imbalance) = name.default_imbalance() else {
            return Err(DataError::invalid(
                "imbalance",
                format!("{}'s long tail is fixed by its list files", name.name()),
            ));
        };
        self.long_tail.map_or_else(|| LongTail::new(imbalance, ImbalanceProfile::Exp), Ok)
    }

    fn fashion_root(&self) -> &Path {
        self.root.as_deref().unwrap_or(Path::new(fashion_mnist::DEFAULT_ROOT))
    }

    fn root(&self, name: DatasetName) -> Result<&Path, DataError> {
        self.root.as_deref().ok_or_else(|| {
            let hint = match name.cifar_variant() {
                Some(_) => "the folder of the extracted CIFAR archive (https://www.cs.toronto.edu/~kriz/cifar.html)",
                None => "the folder the list files' image paths are relative to",
            };
            DataError::invalid("data root", format!("{} needs a data root: {hint}", name.name()))
        })
    }
}

/// Loads a benchmark's training, probe-training and test sets.
pub fn load(name: DatasetName, options: &DataOptions) -> Result<DataSplits, DataError> {
    match name {
        DatasetName::Digits => digits::load_long_tailed(&options.long_tail(name)?),
        DatasetName::Cifar10 | DatasetName::Cifar100 => {
            let variant = name.cifar_variant().expect("a CIFAR name");
            cifar::load_long_tailed(options.root(name)?, variant, &options.long_tail(name)?)
        }
        DatasetName::FashionMnist => fashion_mnist::load_long_tailed(options.fashion_root(), &options.long_tail(name)?),
        DatasetName::ImageNetLt | DatasetName::PlacesLt => {
            let benchmark = if name == DatasetName::ImageNetLt {
                image_list::Benchmark::ImageNetLt
            } else {
                image_list::Benchmark::PlacesLt
            };
            let split_dir = options.split_dir.as_deref().unwrap_or(Path::new("split"));
            image_list::load(benchmark, options.root(name)?, &benchmark.list_files(split_dir))
        }
    }
}

/// What `sslc split` prints: the kept images of a long-tailed training set, by index into
/// the balanced training set. ImageNet-LT/Places-LT are refused: their lists are the split.
pub fn split_listing(name: DatasetName, options: &DataOptions) -> Result<String, DataError> {
    let long_tail = options.long_tail(name)?;
    let (balanced, order) = match name.cifar_variant() {
        Some(variant) => (cifar::read(options.root(name)?, variant, cifar::Part::Train)?, variant.class_order()),
        None if name == DatasetName::FashionMnist => {
            (fashion_mnist::read_train(options.fashion_root())?, ClassOrder::ByLabel)
        }
        None => (load(name, options)?.probe_train, ClassOrder::ByLabel),
    };
    let kept = long_tail.select(balanced.labels(), balanced.class_count(), order, 0)?;
    Ok(long_tail::split_listing(name.name(), balanced.labels(), &kept, &long_tail))
}
