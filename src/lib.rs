//! The `sslc` crate: the command line (in `main.rs` and `cli/`) and the glue between the
//! compiler and the runtime.

pub mod objective;
