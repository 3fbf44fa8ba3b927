//! Random byte mutations and truncations of every shipped objective never make the front end
//! panic: they either compile or produce diagnostics. (More cases: `cargo fuzz run compile`
//! in fuzz/.)

use proptest::prelude::*;
use sslc_compiler::diag::Sources;
use std::path::PathBuf;

fn objectives() -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["objectives", "objectives/lib"] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "ssl") {
                let bytes = std::fs::read(&p).unwrap();
                out.push((p, bytes));
            }
        }
    }
    out.sort();
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), prop::sample::select(b"(){}[]:=,.+-*/@%<>!\"\n 0123456789aeNDK_#\xff".to_vec()))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(bytes: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for m in muts {
        let len = b.len().max(1);
        match *m {
            Mutation::Truncate(i) => b.truncate(i % len),
            Mutation::Flip(i, v) => {
                if !b.is_empty() {
                    b[i % len] = v;
                }
            }
            Mutation::Insert(i, v) => b.insert(i % (b.len() + 1), v),
            Mutation::Delete(i, n) => {
                let s = i % len;
                let e = (s + n).min(b.len());
                b.drain(s.min(e)..e);
            }
            Mutation::Duplicate(i, n) => {
                let s = i % len;
                let e = (s + n).min(b.len());
                let chunk: Vec<u8> = b[s.min(e)..e].to_vec();
                b.splice(e..e, chunk);
            }
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_objectives_never_panic(which in any::<prop::sample::Index>(), muts in prop::collection::vec(mutation(), 1..4)) {
        let files = objectives();
        let (path, bytes) = which.get(&files);
        let mutated = apply(bytes, &muts);
        // Imports resolve next to the original file, exactly as a user's edit would.
        let mut sources = Sources::new();
        match String::from_utf8(mutated) {
            Ok(text) => {
                let result = sslc_compiler::compile_text(path, text, &mut sources);
                if let Err(diags) = result {
                    for d in &diags {
                        let _ = d.render(&sources);
                    }
                }
            }
            Err(_) => {
                let dir = std::env::temp_dir().join(format!("sslc-fuzz-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                let p = dir.join("mutated.ssl");
                std::fs::write(&p, apply(bytes, &muts)).unwrap();
                let _ = sslc_compiler::compile(&p, &mut sources);
            }
        }
    }
}
