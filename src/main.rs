//! `sslc`: compile, check and run self-supervised learning objectives.

// The commands return the compiler's diagnostics by value, once per failed command; boxing
// them would only add noise (the same choice as the compiler crate).
#![allow(clippy::result_large_err)]

mod cli;
mod lsp;

fn main() {
    sslc_runtime::allocator::keep_freed_buffers();
    std::process::exit(cli::main());
}
