//! Trained weights for PyTorch: the backbone under torchvision's ResNet `state_dict` names, and
//! the projector as an `nn.Sequential`, each a safetensors file of f32 tensors that
//! `safetensors.torch.load_file` reads.
//!
//! Only names change: sslc's conv weights are OIHW like PyTorch's, its BatchNorm keeps the same
//! four tensors with PyTorch's epsilon and momentum, and its ResNets are torchvision's (stride
//! on the bottleneck's 3x3, 1x1 conv + BN shortcut where the shape changes). What torchvision
//! has and sslc does not: `num_batches_tracked` (int64, written as 0; BatchNorm reads it only
//! with `momentum=None`). What sslc has and PyTorch does not: SDCLR's pruned branch (its masks
//! and BatchNorm sets are left out; the dense network is the one evaluated), and, on ResNet-50
//! and SDCLR's networks with RGB input, an ImageNet mean/std standardisation inside the model,
//! recorded in the file's metadata for the user to apply (`transforms.Normalize`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::checkpoint::{write_safetensors, CheckpointError};
use crate::model::{BackboneKind, EncoderConfig};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "the small conv backbone has no torchvision counterpart; train with --backbone resnet18 or resnet50 to \
         export for torchvision (or export --format projector)"
    )]
    NoTorchvisionModel,
    #[error("cannot export `{0}`: sslc does not know where torchvision keeps it (a checkpoint of another version?)")]
    UnknownName(String),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Write(#[from] CheckpointError),
}

/// The torchvision name of one of sslc's dense-backbone tensors (`None` for tensors torchvision
/// does not have: the projector and SDCLR's pruned branch).
fn torchvision_name(name: &str) -> Result<Option<String>, ExportError> {
    let unknown = || ExportError::UnknownName(name.to_string());
    let Some(rest) = name.strip_prefix("backbone.") else { return Ok(None) };
    if rest.contains(".bn.pruned.") {
        return Ok(None);
    }
    // `<module>.conv.weight` or `<module>.bn.dense.<field>`.
    let (module, conv, field) = if let Some(module) = rest.strip_suffix(".conv.weight") {
        (module, true, "weight")
    } else {
        let (module, field) = rest.split_once(".bn.dense.").ok_or_else(unknown)?;
        (module, false, field)
    };
    let layer = |conv_name: String, bn_name: String| if conv { conv_name } else { bn_name };
    let path = match module.split('.').collect::<Vec<_>>()[..] {
        ["stem", "0"] => layer("conv1".into(), "bn1".into()),
        [stage, block, unit] if stage.starts_with("layer") => {
            let prefix = format!("{stage}.{block}");
            if unit == "shortcut" {
                layer(format!("{prefix}.downsample.0"), format!("{prefix}.downsample.1"))
            } else {
                let index: usize = unit.strip_prefix("unit").and_then(|i| i.parse().ok()).ok_or_else(unknown)?;
                layer(format!("{prefix}.conv{}", index + 1), format!("{prefix}.bn{}", index + 1))
            }
        }
        _ => return Err(unknown()),
    };
    Ok(Some(format!("{path}.{field}")))
}

/// The projector's name in `nn.Sequential(Linear(F, F), BatchNorm1d(F), ReLU(),
/// Linear(F, D, bias=False), BatchNorm1d(D))`, sslc's `proj_head`.
fn projector_name(name: &str) -> Result<Option<String>, ExportError> {
    let Some(rest) = name.strip_prefix("projector.") else { return Ok(None) };
    if rest.contains(".pruned.") {
        return Ok(None);
    }
    let renamed = match rest.split_once('.') {
        Some(("fc1", field)) => format!("0.{field}"),
        Some(("bn1", field)) => format!("1.{}", field.strip_prefix("dense.").unwrap_or(field)),
        Some(("fc2", field)) => format!("3.{field}"),
        Some(("bn2", field)) => format!("4.{}", field.strip_prefix("dense.").unwrap_or(field)),
        _ => return Err(ExportError::UnknownName(name.to_string())),
    };
    Ok(Some(renamed))
}

/// Renames `state` (an encoder's [`crate::model::Encoder::state`]) with `rename`, adding an
/// int64 `num_batches_tracked` beside every BatchNorm's running mean.
fn renamed(
    state: &[(String, Tensor)],
    rename: fn(&str) -> Result<Option<String>, ExportError>,
) -> Result<Vec<(String, Tensor)>, ExportError> {
    let mut out = Vec::new();
    for (name, tensor) in state {
        let Some(new_name) = rename(name)? else { continue };
        if let Some(module) = new_name.strip_suffix(".running_mean") {
            out.push((format!("{module}.num_batches_tracked"), Tensor::new(0i64, &Device::Cpu)?));
        }
        out.push((new_name, tensor.to_dtype(candle_core::DType::F32)?));
    }
    Ok(out)
}

/// The backbone as torchvision's `resnet18()` (CIFAR stem: 3x3 stride-1 `conv1`, `maxpool`
/// replaced by `Identity`) or `resnet50()` names it, `fc.*` aside.
pub fn torchvision_backbone(
    config: &EncoderConfig,
    state: &[(String, Tensor)],
) -> Result<Vec<(String, Tensor)>, ExportError> {
    if config.backbone == BackboneKind::SmallConv {
        return Err(ExportError::NoTorchvisionModel);
    }
    renamed(state, torchvision_name)
}

/// The projector as the `state_dict` of the `nn.Sequential` in [`projector_name`].
pub fn projector(state: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>, ExportError> {
    renamed(state, projector_name)
}

/// Writes `tensors` to `path` (atomically) with metadata saying what they are and how sslc fed
/// the network: its backbone, input channels and any in-model input standardisation.
pub fn write(path: &Path, tensors: &[(String, Tensor)], config: &EncoderConfig) -> Result<(), ExportError> {
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("producer".to_string(), format!("sslc {}", env!("CARGO_PKG_VERSION"))),
        ("sslc_backbone".to_string(), format!("{:?}", config.backbone)),
        ("in_channels".to_string(), config.in_channels.to_string()),
        ("input_standardization".to_string(), serde_json::to_string(&config.input_standardization).unwrap_or_default()),
    ]);
    Ok(write_safetensors(path, tensors, metadata)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_torchvision() {
        let cases = [
            ("backbone.stem.0.conv.weight", Some("conv1.weight")),
            ("backbone.stem.0.bn.dense.running_var", Some("bn1.running_var")),
            ("backbone.layer3.1.unit2.conv.weight", Some("layer3.1.conv3.weight")),
            ("backbone.layer1.0.unit0.bn.dense.bias", Some("layer1.0.bn1.bias")),
            ("backbone.layer2.0.shortcut.conv.weight", Some("layer2.0.downsample.0.weight")),
            ("backbone.layer2.0.shortcut.bn.dense.running_mean", Some("layer2.0.downsample.1.running_mean")),
            ("backbone.layer2.0.shortcut.bn.pruned.weight", None),
            ("projector.fc1.weight", None),
        ];
        for (sslc, torch) in cases {
            assert_eq!(torchvision_name(sslc).unwrap().as_deref(), torch, "{sslc}");
        }
        assert!(torchvision_name("backbone.head.weight").is_err());
        assert_eq!(projector_name("projector.bn2.dense.weight").unwrap().as_deref(), Some("4.weight"));
        assert_eq!(projector_name("projector.fc1.bias").unwrap().as_deref(), Some("0.bias"));
        assert_eq!(projector_name("projector.bn1.pruned.bias").unwrap(), None);
    }
}
