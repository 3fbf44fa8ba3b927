//! Coverage-guided fuzzing of the front end; scripts/test.sh runs it for FUZZ_SECONDS (60 in
//! CI) from the repository root: `cargo +nightly fuzz run --fuzz-dir fuzz compile CORPUS objectives`.
//! Any input must compile or produce diagnostics; a panic or crash is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let mut sources = sslc_compiler::diag::Sources::new();
        // Imports resolve against the shipped objectives, as for a file saved next to them.
        if let Err(diags) = sslc_compiler::compile_text(Path::new("objectives/fuzzed.ssl"), text.to_string(), &mut sources) {
            for d in &diags {
                let _ = d.render(&sources);
            }
        }
    }
});
