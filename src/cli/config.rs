//! Run configuration files: the `config.toml` every `sslc run` writes, `sslc run --config`
//! reading one back, and the per-dataset presets of `configs/*.toml`. All three are one format
//! ([`RunSettings`], also the flags of `sslc run`), so a preset, a finished run and a
//! hand-written experiment are interchangeable. Layers, highest first: flags, the `--config`
//! file, the dataset's preset, the built-in defaults.

use super::common::{thread_count, Backend};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use sslc_runtime::data::{DatasetName, ImbalanceProfile};
use sslc_runtime::device::{DeviceSpec, Precision};
use sslc_runtime::presets::Backbone;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
pub enum ImbType {
    /// n_c = n_max · r^(c/(C−1)).
    Exp,
    /// Half the classes keep n_max, half n_max · r.
    Step,
}

impl ImbType {
    pub fn profile(self) -> ImbalanceProfile {
        match self {
            ImbType::Exp => ImbalanceProfile::Exp,
            ImbType::Step => ImbalanceProfile::Step,
        }
    }
}

/// Everything that defines a run: the flags of `sslc run` and the keys of a run configuration
/// file (the same names, `-` as `_`). `None` is "not given here", filled from a lower layer.
#[derive(Args, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// The objective (`.ssl`); may come from --config instead.
    #[arg(value_name = "OBJECTIVE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objective: Option<PathBuf>,
    /// sha256 of the objective file when the run started (written, and checked with a warning
    /// when the run is repeated from its config.toml).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objective_sha256: Option<String>,
    /// Benchmark: digits (embedded, the default), fashion-mnist-lt, cifar10-lt, cifar100-lt,
    /// imagenet-lt, places-lt.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// Where the dataset's files are (CIFAR folder, Fashion-MNIST IDX folder, or the image root of
    /// ImageNet-LT/Places-LT).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    /// Folder holding ImageNet_LT/ and Places_LT/ list files (default: split/).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split_dir: Option<PathBuf>,
    /// Imbalance factor r = n_min / n_max of the long-tailed training set (default: the dataset's).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imbalance: Option<f64>,
    /// How class counts fall off (default: exp).
    #[arg(long, value_enum)]
    #[serde(default, with = "by_name", skip_serializing_if = "Option::is_none")]
    pub imb_type: Option<ImbType>,
    /// Training epochs (default: the dataset's preset).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// Images per batch (default: the dataset's preset).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Base learning rate; the objective's `schedule lr` shapes it (default: 0.5).
    #[arg(long, value_parser = non_negative)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// SGD weight decay (default: the dataset's preset, 5e-4 or 1e-4 on ImageNet-LT/Places-LT).
    #[arg(long, value_parser = non_negative)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// Seed of the initial weights, the augmentations and the probe (default: 0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Backbone (default: the dataset's preset).
    #[arg(long, value_enum)]
    #[serde(default, with = "by_name", skip_serializing_if = "Option::is_none")]
    pub backbone: Option<Backbone>,
    /// CPU threads for compute and data loading (default: all cores; at most 8 per core).
    #[arg(long, value_parser = thread_count)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// NAME=VALUE overrides an objective parameter or `dim` (repeatable; replaces a --config
    /// file's entry of the same NAME).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set: Option<Vec<String>>,
    /// Where the objective's loss and gradients are computed (default: cuda with --device cuda,
    /// in place on the GPU; cpu otherwise).
    #[arg(long, value_enum)]
    #[serde(default, with = "by_name", skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// Where the backbone trains: cpu, cuda (device 0) or cuda:I (default: cpu). CUDA needs a
    /// binary built with `--features cuda` (docs/gpu.md).
    #[arg(long, value_name = "cpu|cuda[:I]")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceSpec>,
    /// The backbone's arithmetic: f32, tf32 (matmul/conv operands rounded to TF32 on tensor
    /// cores) or bf16 (bf16 conv/matmul operands and activations, f32 weights, BatchNorm
    /// statistics and loss; meant for CUDA), and the objective's similarity tiles'.
    /// Default: tf32 on CUDA, f32 on the CPU.
    #[arg(long, value_enum)]
    #[serde(default, with = "by_name", skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Evaluate every this many epochs as well as at the end (default: 0, only at the end).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<usize>,
    /// Linear-probe epochs (default: the dataset's preset; the seed's recipe uses 500).
    #[arg(long, value_parser = at_least_one)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_epochs: Option<usize>,
    /// Use at most this many images of each set (train, probe train, test), evenly strided so
    /// every class keeps its share (the probe's sets keep at least one image of every class):
    /// for smoke runs and quick looks at a large benchmark.
    #[arg(long, value_parser = at_least_one)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// The sslc that wrote the file (informational).
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslc_version: Option<String>,
}

/// A count of 1 or more (`--limit 0` would leave nothing to train on).
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A run's settings with every layer applied: what `sslc run` uses.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub objective: PathBuf,
    pub dataset: DatasetName,
    pub data: Option<PathBuf>,
    pub split_dir: Option<PathBuf>,
    pub imbalance: Option<f64>,
    pub imb_type: ImbType,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub backbone: Backbone,
    pub set: Vec<String>,
    pub backend: Backend,
    pub device: DeviceSpec,
    /// `None`: the device's default.
    pub precision: Option<Precision>,
    pub eval_every: usize,
    pub probe_epochs: usize,
    pub limit: Option<usize>,
}

impl RunSettings {
    /// `self`'s values, and `lower`'s where `self` has none. `--set` lists merge by NAME, so a
    /// flag can change one parameter of a configuration file without restating the others.
    pub fn over(self, lower: RunSettings) -> RunSettings {
        RunSettings {
            objective: self.objective.or(lower.objective),
            objective_sha256: self.objective_sha256.or(lower.objective_sha256),
            dataset: self.dataset.or(lower.dataset),
            data: self.data.or(lower.data),
            split_dir: self.split_dir.or(lower.split_dir),
            imbalance: self.imbalance.or(lower.imbalance),
            imb_type: self.imb_type.or(lower.imb_type),
            epochs: self.epochs.or(lower.epochs),
            batch_size: self.batch_size.or(lower.batch_size),
            lr: self.lr.or(lower.lr),
            weight_decay: self.weight_decay.or(lower.weight_decay),
            seed: self.seed.or(lower.seed),
            backbone: self.backbone.or(lower.backbone),
            threads: self.threads.or(lower.threads),
            set: merge_sets(self.set, lower.set),
            backend: self.backend.or(lower.backend),
            device: self.device.or(lower.device),
            precision: self.precision.or(lower.precision),
            eval_every: self.eval_every.or(lower.eval_every),
            probe_epochs: self.probe_epochs.or(lower.probe_epochs),
            limit: self.limit.or(lower.limit),
            sslc_version: self.sslc_version.or(lower.sslc_version),
        }
    }

    /// The dataset these settings name (digits when none does).
    pub fn dataset_name(&self) -> Result<DatasetName, String> {
        DatasetName::from_name(self.dataset.as_deref().unwrap_or("digits")).map_err(|e| e.to_string())
    }

    /// These settings over the dataset's preset and the built-in defaults, with every value a
    /// run needs; the dataset's name written canonically so the recorded file reads back as is.
    pub fn complete(self) -> Result<RunSettings, String> {
        let name = self.dataset_name()?;
        let mut full = self.over(preset(name)?).over(builtin_defaults());
        full.dataset = Some(name.name().to_string());
        full.backend = full.backend.or(Some(Backend::for_device(full.device.unwrap_or_default())));
        Ok(full)
    }

    /// The values of [`RunSettings::complete`] settings; an error names what is missing.
    pub fn resolve(&self) -> Result<Resolved, String> {
        fn need<T: Clone>(value: &Option<T>, key: &str) -> Result<T, String> {
            value.clone().ok_or_else(|| format!("no `{key}` given (neither as a flag nor in the --config file)"))
        }
        self.check_values()?;
        Ok(Resolved {
            objective: self.objective.clone().ok_or_else(|| {
                "no objective given: name its .ssl file, or give a --config file with `objective = \"...\"`".to_string()
            })?,
            dataset: self.dataset_name()?,
            data: self.data.clone(),
            split_dir: self.split_dir.clone(),
            imbalance: self.imbalance,
            imb_type: need(&self.imb_type, "imb_type")?,
            epochs: need(&self.epochs, "epochs")?,
            batch_size: need(&self.batch_size, "batch_size")?,
            lr: need(&self.lr, "lr")?,
            weight_decay: need(&self.weight_decay, "weight_decay")?,
            seed: need(&self.seed, "seed")?,
            backbone: need(&self.backbone, "backbone")?,
            set: self.set.clone().unwrap_or_default(),
            backend: need(&self.backend, "backend")?,
            device: self.device.unwrap_or_default(),
            precision: self.precision,
            eval_every: need(&self.eval_every, "eval_every")?,
            probe_epochs: need(&self.probe_epochs, "probe_epochs")?,
            limit: self.limit,
        })
    }
}

impl RunSettings {
    /// Every value a file may hold that no run can use, refused before any work (a flag's
    /// own parser refuses it earlier; a configuration file reaches here).
    fn check_values(&self) -> Result<(), String> {
        for (key, count) in [("limit", self.limit), ("probe_epochs", self.probe_epochs), ("epochs", self.epochs)] {
            if let Some(count) = count {
                at_least_one(&count.to_string()).map_err(|e| format!("`{key}` {e}"))?;
            }
        }
        if let Some(batch_size) = self.batch_size {
            if batch_size < 2 {
                return Err(format!(
                    "`batch_size` is {batch_size}; contrastive objectives and BatchNorm need at least 2"
                ));
            }
        }
        for (key, value) in [("lr", self.lr), ("weight_decay", self.weight_decay)] {
            if let Some(value) = value {
                non_negative(&value.to_string()).map_err(|e| format!("`{key}` {e}"))?;
            }
        }
        if let Some(threads) = self.threads {
            thread_count(&threads.to_string()).map_err(|e| format!("`threads` {e}"))?;
        }
        Ok(())
    }
}

/// A finite number of 0 or more (`--lr NaN` would train a model of NaN).
pub fn non_negative(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        Ok(value) => Err(format!("must be a finite number of 0 or more, not {value}")),
        Err(e) => Err(e.to_string()),
    }
}

/// `upper`'s `NAME=VALUE` entries replace `lower`'s of the same NAME; the rest of `lower` stays.
fn merge_sets(upper: Option<Vec<String>>, lower: Option<Vec<String>>) -> Option<Vec<String>> {
    let name = |entry: &String| entry.split('=').next().unwrap_or_default().trim().to_string();
    match (upper, lower) {
        (Some(upper), Some(lower)) => {
            let mut merged: Vec<String> =
                lower.into_iter().filter(|l| !upper.iter().any(|u| name(u) == name(l))).collect();
            merged.extend(upper);
            Some(merged)
        }
        (upper, lower) => upper.or(lower),
    }
}

/// What holds when neither a flag, a configuration file nor the dataset's preset says.
fn builtin_defaults() -> RunSettings {
    RunSettings {
        imb_type: Some(ImbType::Exp),
        lr: Some(0.5),
        seed: Some(0),
        set: Some(Vec::new()),
        eval_every: Some(0),
        ..RunSettings::default()
    }
}

/// The shipped `configs/NAME.toml`, compiled in so `--dataset NAME` works without the repository.
fn preset_text(name: DatasetName) -> &'static str {
    match name {
        DatasetName::Digits => include_str!("../../configs/digits-lt.toml"),
        DatasetName::FashionMnist => include_str!("../../configs/fashion-mnist-lt.toml"),
        DatasetName::Cifar10 => include_str!("../../configs/cifar10-lt.toml"),
        DatasetName::Cifar100 => include_str!("../../configs/cifar100-lt.toml"),
        DatasetName::ImageNetLt => include_str!("../../configs/imagenet-lt.toml"),
        DatasetName::PlacesLt => include_str!("../../configs/places-lt.toml"),
    }
}

/// The dataset's preset, `configs/<dataset>.toml`.
pub fn preset(name: DatasetName) -> Result<RunSettings, String> {
    parse(preset_text(name), &format!("configs/{}.toml (built in)", name.name()))
}

/// Reads a run configuration file (a regular file only); errors name the file, line and key.
pub fn load(path: &Path) -> Result<RunSettings, String> {
    let text = sslc_runtime::files::read_regular_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// How the objective a configuration names differs from the one it recorded (its sha256), if
/// it does: the run it repeats or continues would then differ.
pub fn objective_change(settings: &RunSettings, path: &Path) -> Option<String> {
    let (objective, recorded) = (settings.objective.as_ref()?, settings.objective_sha256.as_ref()?);
    match sha256_of(objective) {
        Ok(now) if &now != recorded => Some(format!(
            "{} has changed since {} was written (sha256 {now}, recorded {recorded})",
            objective.display(),
            path.display()
        )),
        _ => None,
    }
}

/// Parses `text`; a failure reads `origin:LINE:COLUMN: key `K`: what is wrong`.
fn parse(text: &str, origin: &str) -> Result<RunSettings, String> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let message = e.message().trim_end();
        let Some(span) = e.span() else { return format!("{origin}: {message}") };
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        let line_text = text.lines().nth(line - 1).unwrap_or_default();
        match line_text.split_once('=') {
            Some((key, _)) => format!("{origin}:{line}:{column}: key `{}`: {message}", key.trim()),
            None => format!("{origin}:{line}:{column}: {message}"),
        }
    })
}

/// Hex sha256 of a file's bytes.
pub fn sha256_of(path: &Path) -> Result<String, String> {
    use sha2::Digest;
    let bytes = sslc_runtime::files::read_regular(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

/// The text of a run directory's `config.toml`.
pub fn to_file_text(settings: &RunSettings, dir: &Path) -> Result<String, String> {
    let body = toml::to_string(settings).map_err(|e| format!("cannot write the run configuration: {e}"))?;
    let file = dir.join(sslc_runtime::report::CONFIG_FILE);
    Ok(format!(
        "# Everything that defined this run, written by sslc before it started. Repeat it with\n\
         #   sslc run --config {} --out NEW_DIR\n\
         # (flags given as well override these values).\n{body}",
        file.display()
    ))
}

/// serde for the flag enums under their command-line names (`resnet18`, `exp`, `cpu`), so a
/// configuration file spells values as the flags do.
mod by_name {
    use clap::ValueEnum;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<T: ValueEnum, S: Serializer>(value: &Option<T>, serializer: S) -> Result<S::Ok, S::Error> {
        match value.as_ref().and_then(ValueEnum::to_possible_value) {
            Some(name) => serializer.serialize_str(name.get_name()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: ValueEnum, D: Deserializer<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
        let name = String::deserialize(deserializer)?;
        T::from_str(&name, true).map(Some).map_err(|_| {
            let known: Vec<String> = T::value_variants()
                .iter()
                .filter_map(|v| v.to_possible_value())
                .map(|p| p.get_name().to_string())
                .collect();
            D::Error::custom(format!("`{name}` is not one of {}", known.join(", ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The presets as `runtime/src/presets.rs` hard-coded them before they moved to
    /// `configs/*.toml`: (dataset, backbone, epochs, batch size, probe epochs, weight decay).
    const BEFORE: [(DatasetName, Backbone, usize, usize, usize, f64); 6] = [
        (DatasetName::Digits, Backbone::Small, 30, 128, 200, 5e-4),
        (DatasetName::FashionMnist, Backbone::Small, 5, 256, 100, 5e-4),
        (DatasetName::Cifar10, Backbone::Resnet18, 1000, 512, 500, 5e-4),
        (DatasetName::Cifar100, Backbone::Resnet18, 1000, 512, 500, 5e-4),
        (DatasetName::ImageNetLt, Backbone::Resnet50, 500, 256, 500, 1e-4),
        (DatasetName::PlacesLt, Backbone::Resnet50, 500, 256, 500, 1e-4),
    ];

    /// The objective runs where the backbone does unless `backend` is given: in place on the
    /// GPU with `--device cuda`, on the CPU's back end otherwise.
    #[test]
    fn the_backend_follows_the_device_unless_given() {
        let complete = |device, backend| {
            RunSettings { objective: Some("o.ssl".into()), device, backend, ..RunSettings::default() }
                .complete()
                .unwrap()
                .backend
        };
        assert_eq!(complete(None, None), Some(Backend::Cpu));
        assert_eq!(complete(Some(DeviceSpec::Cpu), None), Some(Backend::Cpu));
        assert_eq!(complete(Some(DeviceSpec::Cuda(1)), None), Some(Backend::Cuda));
        assert_eq!(complete(Some(DeviceSpec::Cuda(0)), Some(Backend::Reference)), Some(Backend::Reference));
    }

    #[test]
    fn every_preset_file_parses_to_the_values_the_code_used_before() {
        for (name, backbone, epochs, batch_size, probe_epochs, weight_decay) in BEFORE {
            let preset = preset(name).unwrap();
            let expected = RunSettings {
                dataset: Some(name.name().to_string()),
                backbone: Some(backbone),
                epochs: Some(epochs),
                batch_size: Some(batch_size),
                probe_epochs: Some(probe_epochs),
                weight_decay: Some(weight_decay),
                ..RunSettings::default()
            };
            assert_eq!(preset, expected, "{}", name.name());
        }
    }

    #[test]
    fn flags_override_the_file_and_the_file_the_preset() {
        let file = parse("epochs = 3\nlr = 0.1\nset = [\"K=16\", \"tau=0.2\"]\n", "f.toml").unwrap();
        let flags = RunSettings { lr: Some(0.3), set: Some(vec!["tau=0.5".into()]), ..RunSettings::default() };
        let full = flags.over(file).complete().unwrap();
        assert_eq!((full.epochs, full.lr, full.batch_size), (Some(3), Some(0.3), Some(128)));
        assert_eq!(full.set.unwrap(), ["K=16", "tau=0.5"]);
        assert_eq!(full.dataset.as_deref(), Some("digits-lt"));
    }

    #[test]
    fn a_written_configuration_reads_back_equal() {
        let full = RunSettings {
            objective: Some("objectives/simclr_gh.ssl".into()),
            backbone: Some(Backbone::Resnet18),
            limit: Some(40),
            ..RunSettings::default()
        }
        .complete()
        .unwrap();
        let text = to_file_text(&full, Path::new("runs/x")).unwrap();
        assert!(text.contains("backbone = \"resnet18\""), "{text}");
        assert_eq!(parse(&text, "config.toml").unwrap(), full);
    }

    #[test]
    fn bad_files_name_the_file_line_and_key() {
        let error = parse("epochs = 3\nlearning_rate = 0.1\n", "my.toml").unwrap_err();
        assert!(error.starts_with("my.toml:2:") && error.contains("`learning_rate`"), "{error}");
        let error = parse("# c\n\nepochs = \"many\"\n", "my.toml").unwrap_err();
        assert!(error.starts_with("my.toml:3:") && error.contains("key `epochs`"), "{error}");
        let error = parse("backbone = \"vgg\"\n", "my.toml").unwrap_err();
        assert!(error.contains("key `backbone`") && error.contains("resnet18"), "{error}");
        assert!(parse("epochs = \n", "my.toml").unwrap_err().starts_with("my.toml:1:"));
        let error = parse("limit = 0\n", "z.toml").unwrap().complete().unwrap().resolve().unwrap_err();
        assert!(error.contains("limit"), "{error}");
    }
}
