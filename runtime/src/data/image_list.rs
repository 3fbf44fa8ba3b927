//! ImageNet-LT and Places-LT: `relative/path.jpg label` list files over an image root, decoded
//! on demand with the `image` crate. The official lists are checked against the committed
//! `split/manifest.json` (line count, classes, per-class range, sha256) so that a user's copy
//! that differs is warned about.

use super::{read_file, DataError, DataSplits, Dataset};
use crate::image::Image;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Benchmark {
    ImageNetLt,
    PlacesLt,
}

/// The three list files of a benchmark.
#[derive(Clone, Debug, PartialEq)]
pub struct ListFiles {
    pub train: PathBuf,
    pub probe_train: PathBuf,
    pub test: PathBuf,
}

impl Benchmark {
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::ImageNetLt => "imagenet-lt",
            Benchmark::PlacesLt => "places-lt",
        }
    }

    pub fn class_count(self) -> usize {
        match self {
            Benchmark::ImageNetLt => 1000,
            Benchmark::PlacesLt => 365,
        }
    }

    /// The official lists' paths relative to a split folder laid out like the reference's
    /// `split/`: train, probe-train (100-shot), test (the reference's evaluation lists).
    pub fn official_lists(self) -> [&'static str; 3] {
        match self {
            Benchmark::ImageNetLt => [
                "ImageNet_LT/ImageNet_LT_train.txt",
                "ImageNet_LT/ImageNet_split1_test_100shot.txt",
                "ImageNet_LT/ImageNet_LT_test.txt",
            ],
            Benchmark::PlacesLt => [
                "Places_LT/Places_LT_train.txt",
                "Places_LT/Places_split1_test_100shot.txt",
                "Places_LT/Places_val.txt",
            ],
        }
    }

    /// The official lists under `split_dir`.
    pub fn list_files(self, split_dir: &Path) -> ListFiles {
        let [train, probe_train, test] = self.official_lists().map(|name| split_dir.join(name));
        ListFiles { train, probe_train, test }
    }
}

fn list_hint(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name == "ImageNet_LT_train.txt" {
        "ImageNet_LT_train.txt is not shipped with sslc: get it from the ImageNet-LT release of OLTR \
         (Liu et al., \"Large-Scale Long-Tailed Recognition in an Open World\") and put it in <split dir>/ImageNet_LT/"
            .to_owned()
    } else {
        format!("{name} is an official list of lines `relative/path.jpg label`; the reference repository's split/ folder has it")
    }
}

/// Parses a list file: one `relative/path label` per non-empty line.
pub fn read_list(path: &Path, class_count: usize) -> Result<(Vec<PathBuf>, Vec<u32>), DataError> {
    parse_list(path, &read_file(path, &list_hint(path))?, class_count)
}

/// Parses the bytes of the list file at `path` (named in errors).
fn parse_list(path: &Path, bytes: &[u8], class_count: usize) -> Result<(Vec<PathBuf>, Vec<u32>), DataError> {
    let text = String::from_utf8_lossy(bytes);
    let (mut paths, mut labels) = (Vec::new(), Vec::new());
    for (number, line) in text.lines().enumerate() {
        let mut fields = line.split_whitespace();
        let (Some(image), label) = (fields.next(), fields.next()) else {
            continue;
        };
        match (label.and_then(|l| l.parse::<u32>().ok()), fields.next()) {
            (Some(label), None) if (label as usize) < class_count => {
                paths.push(PathBuf::from(image));
                labels.push(label);
            }
            _ => {
                return Err(DataError::Malformed {
                    path: path.to_owned(),
                    problem: format!("line {} is `{line}`", number + 1),
                    expected: format!("`relative/path.jpg label` with a label below {class_count}"),
                    hint: list_hint(path),
                })
            }
        }
    }
    Ok((paths, labels))
}

/// Decodes a JPEG or PNG to an RGB image in `[0, 1]`.
pub fn decode_rgb(path: &Path) -> Result<Image, DataError> {
    let reader = image::ImageReader::open(path).map_err(|source| DataError::Missing {
        path: path.to_owned(),
        hint: "a list file names this image: check that the image root is the folder the list's paths are relative to"
            .to_owned(),
        source,
    })?;
    let decoded = reader
        .with_guessed_format()
        .map_err(|e| DataError::Decode { path: path.to_owned(), source: image::ImageError::IoError(e) })?
        .decode()
        .map_err(|source| DataError::Decode { path: path.to_owned(), source })?;
    let rgb = decoded.to_rgb8();
    if rgb.width() == 0 || rgb.height() == 0 {
        // Nothing to crop or resize: every augmentation needs at least one pixel.
        return Err(DataError::Malformed {
            path: path.to_owned(),
            problem: format!("the image is {}x{} pixels", rgb.width(), rgb.height()),
            expected: "an image of at least 1x1 pixels".into(),
            hint: "remove it from the list file or replace it".into(),
        });
    }
    Ok(Image::from_rgb8_interleaved(rgb.height() as usize, rgb.width() as usize, rgb.as_raw()))
}

fn read_dataset(name: &str, image_root: &Path, list: &Path, class_count: usize) -> Result<Dataset, DataError> {
    let (paths, labels) = read_list(list, class_count)?;
    Ok(Dataset::from_files(name, image_root, paths, labels, class_count))
}

/// The benchmark's three sets over `image_root`. A list that differs from the official one of
/// the same file name is reported on stderr, not refused: users may train on their own lists.
pub fn load(benchmark: Benchmark, image_root: &Path, lists: &ListFiles) -> Result<DataSplits, DataError> {
    let read = |list: &Path, suffix: &str| -> Result<Dataset, DataError> {
        for warning in verify_against_official(list)? {
            eprintln!("warning: {warning}");
        }
        read_dataset(&format!("{}{suffix}", benchmark.name()), image_root, list, benchmark.class_count())
    };
    Ok(DataSplits {
        train: read(&lists.train, "")?,
        probe_train: read(&lists.probe_train, "-probe")?,
        test: read(&lists.test, "-test")?,
    })
}

/// What identifies a list file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListStats {
    pub lines: usize,
    /// Distinct labels.
    pub classes: usize,
    pub min_per_class: usize,
    pub max_per_class: usize,
    /// Hex sha256 of the file's bytes; `None` where the official file is not at hand.
    pub sha256: Option<String>,
}

/// Images per label (index = label) of a list file's labels.
pub fn counts_per_label(labels: &[u32]) -> Vec<usize> {
    let mut counts = Vec::new();
    for &label in labels {
        let label = label as usize;
        if counts.len() <= label {
            counts.resize(label + 1, 0);
        }
        counts[label] += 1;
    }
    counts
}

/// Statistics of a list file.
pub fn list_stats(path: &Path) -> Result<ListStats, DataError> {
    let bytes = read_file(path, &list_hint(path))?;
    let (_, labels) = parse_list(path, &bytes, u32::MAX as usize)?;
    let present: Vec<usize> = counts_per_label(&labels).into_iter().filter(|&c| c > 0).collect();
    Ok(ListStats {
        lines: labels.len(),
        classes: present.len(),
        min_per_class: present.iter().copied().min().unwrap_or(0),
        max_per_class: present.iter().copied().max().unwrap_or(0),
        sha256: Some(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()),
    })
}

/// ImageNet-LT's train list is not in the shared split folder; its statistics are the
/// published ones (115,846 images, 1,280..5 per class).
fn imagenet_lt_train_stats() -> ListStats {
    ListStats { lines: 115_846, classes: 1000, min_per_class: 5, max_per_class: 1280, sha256: None }
}

/// The text of `split/manifest.json`: statistics of every official list, from the lists under
/// `split_dir` (ImageNet-LT's train list from its published statistics).
pub fn manifest_json(split_dir: &Path) -> Result<String, DataError> {
    let mut manifest = BTreeMap::new();
    for benchmark in [Benchmark::ImageNetLt, Benchmark::PlacesLt] {
        for name in benchmark.official_lists() {
            let stats = if name == "ImageNet_LT/ImageNet_LT_train.txt" {
                imagenet_lt_train_stats()
            } else {
                list_stats(&split_dir.join(name))?
            };
            manifest.insert(name.to_owned(), stats);
        }
    }
    Ok(serde_json::to_string_pretty(&manifest).expect("statistics serialise") + "\n")
}

static MANIFEST: &str = include_str!("../../../split/manifest.json");

/// The committed statistics of the official list with this file name.
pub fn official_stats(file_name: &str) -> Option<ListStats> {
    let manifest: BTreeMap<String, ListStats> =
        serde_json::from_str(MANIFEST).expect("split/manifest.json is generated by manifest_json");
    manifest.into_iter().find(|(name, _)| name.rsplit('/').next() == Some(file_name)).map(|(_, stats)| stats)
}

/// Differences between `path` and the official list of the same file name (none for a list
/// with another name).
pub fn verify_against_official(path: &Path) -> Result<Vec<String>, DataError> {
    let Some(official) = path.file_name().and_then(|n| official_stats(&n.to_string_lossy())) else {
        return Ok(Vec::new());
    };
    let actual = list_stats(path)?;
    let mut differences = Vec::new();
    let fields = [
        ("lines", actual.lines, official.lines),
        ("classes", actual.classes, official.classes),
        ("smallest class", actual.min_per_class, official.min_per_class),
        ("largest class", actual.max_per_class, official.max_per_class),
    ];
    for (what, found, expected) in fields {
        if found != expected {
            differences.push(format!("{}: {what} is {found}, the official list has {expected}", path.display()));
        }
    }
    if let (Some(found), Some(expected)) = (&actual.sha256, &official.sha256) {
        if found != expected {
            differences.push(format!("{}: sha256 {found} differs from the official {expected}", path.display()));
        }
    }
    Ok(differences)
}
