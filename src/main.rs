//! `sslc`: compile, check and run self-supervised learning objectives.

mod cli;


fn main() {
    std::process::exit(cli::main());
}
