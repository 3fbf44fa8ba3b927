//! `sslc`: compile, check and run self-supervised learning objectives.

// The commands return the compiler's diagnostics by value, once per failed command; boxing
// them would only add noise (the same choice as the compiler crate).
#![allow(clippy::result_large_err)]

mod cli;
// `lsp_types::Uri` caches its parts inside, which clippy reads as a mutable key; its hash and
// equality are those of the text alone, so maps keyed by it are sound.
#[allow(clippy::mutable_key_type)]
mod lsp;

fn main() {
    sslc_runtime::allocator::keep_freed_buffers();
    std::process::exit(cli::main());
}
