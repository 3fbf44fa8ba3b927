//! sslc's runtime: datasets, augmentations, backbones, the training loop and evaluation.
//! It drives any [`objective::Objective`]; the compiler's adapter lives in the `sslc` crate.

pub mod objective;
pub mod augment;
pub mod data;
pub mod image;
