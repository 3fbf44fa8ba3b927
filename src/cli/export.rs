//! `sslc export`: a trained backbone (or projector) as a safetensors file PyTorch loads;
//! `sslc embed`: frozen backbone features of a dataset split, or of given images, as `.npy`.

use super::common::{fail, load_trained, print_stdout, Trained};
use candle_core::{DType, Tensor};
use clap::{Args, ValueEnum};
use sslc_compiler::eval::npy;
use sslc_runtime::data::{DatasetName, ImbalanceProfile};
use sslc_runtime::export;
use sslc_runtime::files::FolderSet;
use sslc_runtime::objective::BoxError;
use sslc_runtime::presets::{self, FeatureTransform};
use sslc_runtime::train::{self, LabelledImages};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// The backbone under torchvision's ResNet state_dict names (resnet18 with the CIFAR
    /// stem, resnet50), fc.* aside.
    Torchvision,
    /// The projector, as the state_dict of nn.Sequential(Linear(F, F), BatchNorm1d(F), ReLU(),
    /// Linear(F, D, bias=False), BatchNorm1d(D)).
    Projector,
}

/// Export a trained backbone for PyTorch (torchvision's ResNet names and layouts, f32).
#[derive(Args)]
#[command(after_help = "The file is safetensors; load it with safetensors.torch.load_file. A ResNet-18 \
run (CIFAR stem) loads into torchvision once its stem is changed the way sslc built it (first argument \
of Conv2d: 1 for grey images), and only fc.weight and fc.bias are then missing:\n\n  \
import torch, torchvision\n  from safetensors.torch import load_file\n  \
model = torchvision.models.resnet18()\n  \
model.conv1 = torch.nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)\n  \
model.maxpool = torch.nn.Identity()\n  \
print(model.load_state_dict(load_file(\"backbone.safetensors\"), strict=False))\n\n\
A ResNet-50 run loads into torchvision.models.resnet50() as it is. The file's metadata records any input \
standardisation sslc applied inside the model (ImageNet mean/std on RGB ResNet-50 and SDCLR runs): apply it \
with transforms.Normalize. num_batches_tracked is written as 0.\n\n\
Examples:\n  sslc export runs/simclr_gh-20261128-101500 --out backbone.safetensors\n  \
sslc export runs/sdclr-run/checkpoint.safetensors --format projector --out projector.safetensors")]
pub struct ExportArgs {
    /// The run's checkpoint.safetensors, or its run directory.
    checkpoint: PathBuf,
    #[arg(long, value_enum, default_value = "torchvision")]
    format: ExportFormat,
    /// The safetensors file to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
pub enum Split {
    /// The long-tailed set the backbone trained on (test transform).
    Train,
    /// The linear probe's training set, with the probe's seeded weak augmentation: exactly the
    /// features the probe trained on.
    ProbeTrain,
    /// The test set (test transform): exactly the features the probe was scored on.
    Test,
}

/// Write frozen backbone features of a dataset split (or of given images) as .npy files.
#[derive(Args)]
#[command(
    after_help = "Writes, under --out:\n  features.npy  float32 [N, F], pooled backbone features (eval mode)\n  \
labels.npy    int64 [N] (not with --images)\n  indices.npy   int64 [N]: row i is sample i of the split\n\n\
Rows follow sslc's order of the split; on the training split, a row's index is the `index` the \
objective's per-sample state used.\n\n\
The dataset, its --data folder, imbalance and --limit default to those the run was trained with, so \
`--split test` gives the very features its linear probe was scored on.\n\n\
Examples:\n  sslc embed runs/simclr_gh-20261128-101500 --split test --out features/\n  \
sslc embed runs/cifar-run --dataset cifar10-lt --data ~/data/cifar-10-batches-bin --split train --out f/\n  \
sslc embed runs/simclr_gh-20261128-101500 --images my_images.npy --out f/"
)]
pub struct EmbedArgs {
    /// The run's checkpoint.safetensors, or its run directory.
    checkpoint: PathBuf,
    /// Benchmark to embed (default: the one the run trained on).
    #[arg(long)]
    dataset: Option<String>,
    /// Where the dataset's files are (default: the run's --data).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "test")]
    split: Split,
    /// Embed these images instead of a dataset: a .npy of float32 [N, C, H, W], already
    /// transformed as the network expects.
    #[arg(long, conflicts_with_all = ["dataset", "data"])]
    images: Option<PathBuf>,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
}

pub fn export(args: &ExportArgs) -> i32 {
    match export_inner(args) {
        Ok(()) => 0,
        Err(code) => code,
    }
}

/// Refuses an output that would replace a run's own file (its checkpoint above all): a typo in
/// `--out` must not destroy the training it exports.
fn refuse_run_files(out: &Path) -> Result<(), i32> {
    match train::inside_run(out) {
        Some(run) => Err(fail(format!(
            "{} would replace a file of the run directory {}; write the export elsewhere (--out)",
            out.display(),
            run.display()
        ))),
        None => Ok(()),
    }
}

fn export_inner(args: &ExportArgs) -> Result<(), i32> {
    refuse_run_files(&args.out)?;
    let Trained { identity, encoder, .. } = load_trained(&args.checkpoint, &sslc_runtime::device::Compute::cpu())?;
    let state = encoder.state();
    let tensors = match args.format {
        ExportFormat::Torchvision => export::torchvision_backbone(&identity.encoder, &state),
        ExportFormat::Projector => export::projector(&state),
    }
    .map_err(fail)?;
    create_parent(&args.out)?;
    export::write(&args.out, &tensors, &identity.encoder).map_err(|e| fail(format!("{}: {e}", args.out.display())))?;
    eprintln!("wrote {} tensors to {}", tensors.len(), args.out.display());
    Ok(())
}

fn create_parent(path: &Path) -> Result<(), i32> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => {
            std::fs::create_dir_all(parent).map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))
        }
        _ => Ok(()),
    }
}

pub fn embed(args: &EmbedArgs) -> i32 {
    match embed_inner(args) {
        Ok(()) => 0,
        Err(code) => code,
    }
}

/// Given images, served to the shared feature extraction; their labels are not known.
struct GivenImages(Tensor);

impl LabelledImages for GivenImages {
    fn len(&self) -> usize {
        self.0.dims().first().copied().unwrap_or(0)
    }

    fn batch(&mut self, start: usize, count: usize) -> Result<(Tensor, Vec<u32>), BoxError> {
        Ok((self.0.narrow(0, start, count)?, vec![0; count]))
    }
}

/// The files `sslc embed` writes into its --out folder.
const EMBED_FILES: [&str; 3] = ["features.npy", "indices.npy", "labels.npy"];

fn embed_inner(args: &EmbedArgs) -> Result<(), i32> {
    refuse_run_files(&args.out)?;
    let Trained { checkpoint, identity, encoder } =
        load_trained(&args.checkpoint, &sslc_runtime::device::Compute::cpu())?;
    let (features, labels, what) = match &args.images {
        Some(path) => {
            let images = npy::read(path).map_err(fail)?;
            if images.rank() != 4 || !images.dtype().is_float() {
                return Err(fail(format!(
                    "{}: expected float32 images [N, C, H, W], got {:?} {:?}",
                    path.display(),
                    images.dtype(),
                    images.dims()
                )));
            }
            let images = images.to_dtype(DType::F32).map_err(fail)?;
            let features = train::extract_features(&encoder, &mut GivenImages(images), presets::EVAL_BATCH)
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
            (features.values, None, path.display().to_string())
        }
        None => {
            let context = identity.train.context.as_ref().ok_or_else(|| {
                fail(format!(
                    "{} does not say which dataset it was trained on; give --dataset and --data",
                    args.checkpoint.display()
                ))
            })?;
            let dataset = args.dataset.as_deref().unwrap_or(&context.dataset);
            let name = DatasetName::from_name(dataset).map_err(fail)?;
            // The run's own data settings apply only to the dataset it trained on.
            let same = name.name() == context.dataset;
            let data = args.data.clone().or_else(|| context.data.clone().filter(|_| same).map(PathBuf::from));
            let imbalance = context.imbalance.filter(|_| same);
            let options = presets::data_options(data, None, imbalance, ImbalanceProfile::Exp).map_err(fail)?;
            let splits = presets::load_splits(name, &options, context.limit.filter(|_| same)).map_err(fail)?;
            let (set, transform) = match args.split {
                Split::Train => (splits.train, FeatureTransform::Test),
                Split::ProbeTrain => (splits.probe_train, FeatureTransform::ProbeTrain),
                Split::Test => (splits.test, FeatureTransform::Test),
            };
            let features = presets::frozen_features(&encoder, name, set, transform, checkpoint.seed).map_err(fail)?;
            let split = args.split.to_possible_value().map_or(String::new(), |v| v.get_name().to_string());
            (features.values, Some(features.labels), format!("{} {split}", name.name()))
        }
    };
    let (rows, width) = features.dims2().map_err(fail)?;
    // The files of one embedding appear together or not at all: staged in a fresh folder that
    // then takes --out's place, so features never sit beside another split's labels.
    let cannot = |e: std::io::Error| fail(format!("cannot write {}: {e}", args.out.display()));
    let set = FolderSet::begin(&args.out, &EMBED_FILES).map_err(cannot)?;
    let device = candle_core::Device::Cpu;
    let write = |file: &str, tensor: &Tensor| npy::write(&set.path(file), tensor).map_err(fail);
    write("features.npy", &features.to_dtype(DType::F32).map_err(fail)?)?;
    let indices: Vec<i64> = (0..rows as i64).collect();
    write("indices.npy", &Tensor::from_vec(indices, rows, &device).map_err(fail)?)?;
    if let Some(labels) = labels {
        let labels: Vec<i64> = labels.into_iter().map(i64::from).collect();
        write("labels.npy", &Tensor::from_vec(labels, rows, &device).map_err(fail)?)?;
    }
    set.publish().map_err(cannot)?;
    let summary =
        serde_json::json!({"embedded": what, "rows": rows, "features": width, "out": args.out.display().to_string()});
    print_stdout(&format!("{summary}\n"));
    Ok(())
}
