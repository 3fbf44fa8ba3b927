//! `sslc`: compile, check and run self-supervised learning objectives.

mod cli;

fn main() {
    sslc_runtime::allocator::keep_freed_buffers();
    std::process::exit(cli::main());
}
