//! sslc's runtime: datasets, augmentations, backbones, the training loop and evaluation.
//! It drives any [`objective::Objective`]; the compiler's adapter lives in the `sslc` crate.

pub mod allocator;
pub mod augment;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod dist;
pub mod export;
pub mod files;
pub mod image;
pub mod model;
pub mod objective;
pub mod optim;
pub mod presets;
pub mod probe;
pub mod report;
pub mod train;
