//! Long programs never crash the compiler (issue 15, item 1). Before, ~5,000 chained `let`s or
//! an unbracketed chain of 20,000 unary minuses overflowed the stack and aborted (exit 134):
//! parsing, lowering and the back ends recursed once per operator. Now a single expression
//! deeper than `MAX_EXPR_DEPTH` operators is refused with a located diagnostic, imports chained
//! deeper than 64 files likewise, and chains of `let`s of any length compile, evaluate and
//! print on both back ends (lowering is iterative; fusion stores every 64 inlined levels).
//!
//! The binary is what users run, so most cases run `sslc`; in-process cases use a thread with
//! the main thread's 8 MiB stack, as the binary has.

use sslc_compiler::diag::Sources;
use sslc_compiler::front::parse::MAX_EXPR_DEPTH;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sslc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sslc")).args(args).output().expect("run sslc")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sslc-long").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An objective whose body is `body` (which must set `loss`).
fn objective(body: &str) -> String {
    format!(
        "objective long {{\n    views x1, x2 = simclr_augment(x)\n    input z1: [N, D] = encoder(x1)\n    \
         input z2: [N, D] = encoder(x2)\n{body}}}\n"
    )
}

/// Every kind of chain that nests without brackets, `n` operators long.
fn chains(n: usize) -> Vec<(&'static str, String)> {
    vec![
        ("unary minus", format!("    loss = mean({}z1)\n", "-".repeat(n))),
        ("not", format!("    let b = {}true\n    loss = mean(where(b, z1, z2))\n", "not ".repeat(n))),
        ("plus", format!("    loss = mean(z1{})\n", " + z2".repeat(n))),
        ("power", format!("    loss = mean(z1{})\n", " ** 1.001".repeat(n))),
        ("transpose", format!("    loss = mean(z1{})\n", ".T".repeat(n))),
        (
            "else if",
            format!("    loss = mean(if false {{ z1 }}{} else {{ z2 }})\n", " else if false { z1 }".repeat(n - 1)),
        ),
    ]
}

/// `let t0 = first`, then 4,999 `let tK = step(tK-1)`, and `loss = loss(t4999)`.
fn let_chain(first: &str, step: impl Fn(&str) -> String, loss: impl Fn(&str) -> String) -> String {
    let mut body = format!("    let t0 = {first}\n");
    for k in 1..5000 {
        body += &format!("    let t{k} = {}\n", step(&format!("t{}", k - 1)));
    }
    body + &format!("    loss = {}\n", loss("t4999"))
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(format!("{}.ssl", name.replace(' ', "_")));
    std::fs::write(&p, text).unwrap();
    p
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn chains_past_the_limit_are_refused_with_a_located_diagnostic() {
    let dir = scratch("over");
    for n in [MAX_EXPR_DEPTH + 1, 20_000] {
        for (kind, body) in chains(n) {
            let p = write(&dir, kind, &objective(&body));
            let out = sslc(&["check", p.to_str().unwrap()]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{kind} x{n}: exit {:?}\n{err}", out.status);
            assert!(err.contains(&format!("nested more than {MAX_EXPR_DEPTH} operators deep")), "{kind} x{n}: {err}");
            assert!(err.contains(&format!("{}:5:", p.display())) && err.contains("^ too deep"), "{kind}: {err}");
            assert!(err.contains("split the expression with `let` bindings"), "{kind}: {err}");
        }
    }
}

#[test]
fn chains_at_the_limit_compile_differentiate_and_run_on_both_back_ends() {
    let dir = scratch("at");
    // The objective's own `mean(...)` call is one operator on the path.
    for (kind, body) in chains(MAX_EXPR_DEPTH - 1) {
        let p = write(&dir, kind, &objective(&body));
        let p = p.to_str().unwrap();
        let out = sslc(&["check", p]);
        assert_eq!(out.status.code(), Some(0), "{kind}: {}", stderr(&out));
        let out = sslc(&["bench", p, "--iters", "1", "--batch", "8", "--dim", "4"]);
        assert_eq!(out.status.code(), Some(0), "{kind} on the CPU: {}", stderr(&out));
        let out = sslc(&["emit", p, "--stage", "cuda"]);
        assert_eq!(out.status.code(), Some(0), "{kind} in CUDA C: {}", stderr(&out));
    }
}

/// 5,000 chained `let`s: what overflowed the stack in lowering, and then in the CPU and CUDA
/// code generators once lowering was fixed (one inlined tree 10,000 operations deep).
#[test]
fn five_thousand_chained_lets_compile_evaluate_and_print() {
    let dir = scratch("lets");
    let body = let_chain("z1", |prev| format!("{prev} * 0.9999 + 0.0001"), |last| format!("mean(exp({last}) * z2)"));
    let p = write(&dir, "lets", &objective(&body));
    let p = p.to_str().unwrap();
    let out = sslc(&["check", p]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for stage in ["ir", "grad", "opt", "fusion", "clif", "cuda"] {
        let out = sslc(&["emit", p, "--stage", stage]);
        assert_eq!(out.status.code(), Some(0), "--stage {stage}: {}", stderr(&out));
    }
    // The reference evaluator and the CPU back end agree on the loss of the long chain.
    let z = |name: &str, seed: f64| {
        let values: Vec<f32> = (0..24).map(|i| ((i as f64 * 0.37 + seed).sin() * 0.5) as f32).collect();
        let t = candle_core::Tensor::from_vec(values, (6, 4), &candle_core::Device::Cpu).unwrap();
        let path = dir.join(format!("{name}.npy"));
        sslc_compiler::eval::npy::write(&path, &t).unwrap();
        format!("{name}={}", path.display())
    };
    let (z1, z2) = (z("z1", 0.1), z("z2", 0.7));
    let mut losses = Vec::new();
    for backend in ["reference", "cpu"] {
        let out_dir = dir.join(backend);
        let out = sslc(&[
            "eval",
            p,
            "--input",
            &z1,
            "--input",
            &z2,
            "--backend",
            backend,
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{backend}: {}", stderr(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("eval prints JSON");
        losses.push(json["loss"].as_f64().expect("a loss"));
    }
    assert!((losses[0] - losses[1]).abs() <= 1e-4 * losses[0].abs().max(1.0), "reference vs cpu: {losses:?}");
}

/// 5,000 chained views of a product: the fusion plan's read analysis used to recurse through
/// every view in the chain.
#[test]
fn a_long_chain_of_views_compiles_and_gradchecks() {
    let dir = scratch("views");
    let body = let_chain("z1 @ z2.T", |prev| format!("{prev}.T"), |last| format!("mean(exp({last} * 0.1))"));
    let p = write(&dir, "views", &objective(&body));
    let p = p.to_str().unwrap();
    for args in [vec!["check", p], vec!["gradcheck", p], vec!["emit", p, "--stage", "cuda"]] {
        let out = sslc(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn an_import_chain_deeper_than_64_files_is_refused_at_the_import() {
    let dir = scratch("imports");
    for k in 0..100 {
        let next = if k < 99 { format!("import \"f{}.ssl\"\n", k + 1) } else { String::new() };
        std::fs::write(
            dir.join(format!("f{k}.ssl")),
            format!("{next}fn g{k}(x: [N, D]) -> [N, D] {{\n    return x\n}}\n"),
        )
        .unwrap();
    }
    let main = write(&dir, "main", &format!("import \"f0.ssl\"\n{}", objective("    loss = mean(g0(z1))\n")));
    let out = sslc(&["check", main.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("imports nested more than 64 files deep") && err.contains("f62.ssl:1:1"), "{err}");
}

/// The parser builds the same tree for `else if` chains as before they became iterative.
#[test]
fn else_if_chains_nest_to_the_right_with_spans_from_each_if() {
    let text = objective("    loss = mean(if false { z1 } else if true { z2 } else { z1 })\n");
    let on_big_stack = std::thread::Builder::new().stack_size(8 << 20);
    let handle = on_big_stack
        .spawn(move || {
            let mut sources = Sources::new();
            let path = Path::new("objectives/long.ssl");
            let file = sslc_compiler::front::parse::parse(&text, sources.add(path, text.clone())).expect("parses");
            let dump = format!("{:?}", file.objectives[0]);
            let inner_if = text.find("if true").unwrap();
            (dump, inner_if)
        })
        .unwrap();
    let (dump, inner_if) = handle.join().unwrap();
    assert_eq!(dump.matches("If {").count(), 2, "{dump}");
    assert!(dump.contains(&format!("start: {inner_if}")), "the inner `if` starts at its keyword: {dump}");
}
