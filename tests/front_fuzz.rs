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
                let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sslc-fuzz");
                std::fs::create_dir_all(&dir).unwrap();
                let p = dir.join("mutated.ssl");
                std::fs::write(&p, apply(bytes, &muts)).unwrap();
                let _ = sslc_compiler::compile(&p, &mut sources);
            }
        }
    }
}

/// One random operator of a flat chain: prefixes, infixes and postfixes in any mix, so long
/// unbracketed programs (not only deeply bracketed ones) are fuzzed.
fn chain_piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "-",
        "not ",
        " + z2",
        " - z1",
        " * 0.5",
        " / 2.0",
        " ** 1.01",
        " @ z2.T",
        " and true",
        " < z1",
        " == 1.0",
        ".T",
        "[0]",
        "[:, 0]",
        "[None]",
        " else if true { z1 }",
    ])
}

/// A program that is long but flat: either one expression of `n` pieces, or `n` chained `let`s.
fn long_flat_program() -> impl Strategy<Value = String> {
    let one_expression = prop::collection::vec(chain_piece(), 1..2000).prop_map(|pieces| {
        let (mut prefix, mut rest) = (String::new(), String::new());
        for p in pieces {
            if p == "-" || p == "not " {
                prefix.push_str(p);
            } else {
                rest.push_str(p);
            }
        }
        format!("    loss = mean(if true {{ {prefix}z1{rest} }} else {{ z2 }})\n")
    });
    let chained_lets = prop::collection::vec(chain_piece(), 1..3000).prop_map(|pieces| {
        let mut body = String::from("    let t0 = z1\n");
        for (k, p) in pieces.iter().enumerate() {
            let p = p.replace("else if true { z1 }", "+ z2");
            body += &if p == "-" || p == "not " {
                format!("    let t{} = {p}t{k}\n", k + 1)
            } else {
                format!("    let t{} = t{k}{p}\n", k + 1)
            };
        }
        body + &format!("    loss = mean(t{})\n", pieces.len())
    });
    prop_oneof![one_expression, chained_lets].prop_map(|body| {
        format!(
            "objective long {{\n    views x1, x2 = simclr_augment(x)\n    input z1: [N, D] = encoder(x1)\n    \
             input z2: [N, D] = encoder(x2)\n{body}}}\n"
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Long flat programs compile or get diagnostics; they never overflow the stack. Run on a
    /// thread with the 8 MiB stack the binary's main thread has (test threads get 2 MiB).
    #[test]
    fn long_flat_programs_never_crash(text in long_flat_program()) {
        let compiled = std::thread::Builder::new()
            .stack_size(8 << 20)
            .spawn(move || {
                let mut sources = Sources::new();
                match sslc_compiler::compile_text(std::path::Path::new("objectives/long.ssl"), text, &mut sources) {
                    Ok(_) => true,
                    Err(diags) => {
                        diags.iter().for_each(|d| drop(d.render(&sources)));
                        false
                    }
                }
            })
            .expect("spawn")
            .join();
        prop_assert!(compiled.is_ok(), "the compiler panicked");
    }
}
