//! Images/s of one training step (two-view forward, backward, SGD) on the CPU.
//! `cargo bench -p sslc-runtime --bench train_step [-- BACKBONE BATCH STEPS]`, where BACKBONE is
//! `resnet18` (default, CIFAR 32x32 RGB), `resnet50` (224x224 RGB) or `small` (28x28 gray).
//! It tunes the allocator as the `sslc` binary does, so it measures what training gets
//! (`sslc bench-train` is the same benchmark).
//! Under `cargo test --all-targets` (no `--bench` flag) it only checks that one small step runs.

use sslc_runtime::device::Compute;
use sslc_runtime::model::BackboneKind;
use sslc_runtime::train::{measure_train_throughput, SyntheticStep};

fn main() {
    sslc_runtime::allocator::keep_freed_buffers();
    // `cargo bench` passes `--bench`; everything else is ours.
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with("--")).collect();
    if !std::env::args().any(|arg| arg == "--bench") {
        let shape = SyntheticStep { backbone: BackboneKind::SmallConv, in_channels: 1, image_size: 8, batch_size: 4 };
        let smoke = measure_train_throughput(shape, 1, &Compute::cpu(), None);
        if let Err(error) = smoke {
            eprintln!("benchmark smoke step failed: {error}");
            std::process::exit(1);
        }
        return;
    }
    let (backbone, channels, size) = match args.first().map(String::as_str).unwrap_or("resnet18") {
        "resnet50" => (BackboneKind::ResNet50, 3, 224),
        "small" => (BackboneKind::SmallConv, 1, 28),
        _ => (BackboneKind::ResNet18Cifar, 3, 32),
    };
    let batch = args.get(1).and_then(|arg| arg.parse().ok()).unwrap_or(64);
    let steps = args.get(2).and_then(|arg| arg.parse().ok()).unwrap_or(3);
    let shape = SyntheticStep { backbone, in_channels: channels, image_size: size, batch_size: batch };
    match measure_train_throughput(shape, steps, &Compute::cpu(), None) {
        Ok(result) => println!(
            "{backbone:?} batch {batch}: {:.1} images/s ({:.3} s/step, {} threads)",
            result.images_per_second,
            result.seconds_per_step,
            rayon::current_num_threads()
        ),
        Err(error) => {
            eprintln!("benchmark failed: {error}");
            std::process::exit(1);
        }
    }
}
