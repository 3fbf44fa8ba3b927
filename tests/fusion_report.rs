//! Fusion that explains itself: `sslc check` warns, at the expression, when an objective still
//! stores a batch-squared matrix, and `sslc emit --stage fusion` lists the pairwise kernels,
//! every product left unfused with its reason, and the values stored. Snapshots of both.

use sslc_compiler::diag::Sources;
use sslc_compiler::objective::Executable;
use std::path::Path;

/// A similarity matrix multiplied by another and read by `argmax`: nothing can be fused.
const WASTEFUL: &str = r#"objective wasteful {
    param tau = 0.5
    views x1, x2 = simclr_augment(x)
    input z1: [N, D] = encoder(x1)
    input z2: [N, D] = encoder(x2)
    let sim = z1 @ z2.T / tau
    let prior = z1 @ z1.T
    let nearest = argmax(sim, axis=1)
    per_sample = logsumexp(sim * prior, axis=1) + float(nearest)
    loss = mean(per_sample)
}
"#;

/// The argmax alone: the matrix is kept only because `argmax` reads it.
const ARGMAX: &str = r#"objective nearest {
    views x1, x2 = simclr_augment(x)
    input z1: [N, D] = encoder(x1)
    input z2: [N, D] = encoder(x2)
    let sim = z1 @ z2.T
    per_sample = logsumexp(sim, axis=1) + stopgrad(float(argmax(sim, axis=1)))
    loss = mean(per_sample)
}
"#;

fn compile(name: &str, text: &str) -> (Executable, Sources) {
    let mut sources = Sources::new();
    let path = format!("objectives/{name}.ssl");
    let mut c = sslc_compiler::compile_text(Path::new(&path), text.into(), &mut sources)
        .unwrap_or_else(|d| panic!("{}", d.iter().map(|d| d.render(&sources)).collect::<Vec<_>>().join("\n")));
    (Executable::new(c.modules.remove(0)).expect("differentiable"), sources)
}

fn warnings(exe: &Executable, sources: &Sources) -> String {
    sslc_compiler::fuse::report(exe).warnings(exe).iter().map(|d| d.render(sources)).collect()
}

#[test]
fn the_shipped_objectives_store_nothing_batch_squared() {
    for name in ["bcl", "bcl_gh", "focal", "focal_gh", "sdclr", "sdclr_gh", "simclr", "simclr_gh"] {
        let mut sources = Sources::new();
        let path = format!("objectives/{name}.ssl");
        let mut c = sslc_compiler::compile(Path::new(&path), &mut sources).unwrap_or_else(|_| panic!("compiles"));
        let exe = Executable::new(c.modules.remove(0)).expect("differentiable");
        let report = sslc_compiler::fuse::report(&exe);
        assert!(
            report.materialised.is_empty() && report.unfused.is_empty(),
            "{name}:\n{}",
            report.text(&exe, &sources)
        );
        assert!(report.fused.len() >= 2, "{name}");
    }
}

#[test]
fn a_wasteful_objective_is_warned_about_at_its_expressions() {
    let (exe, sources) = compile("wasteful", WASTEFUL);
    let text = warnings(&exe, &sources);
    assert!(text.starts_with("warning: `wasteful` stores"), "{text}");
    insta::assert_snapshot!("fusion_warning_wasteful", text);
    insta::assert_snapshot!("fusion_stage_wasteful", sslc_compiler::fuse::report(&exe).text(&exe, &sources));
}

#[test]
fn argmax_is_named_as_the_reason() {
    let (exe, sources) = compile("nearest", ARGMAX);
    let report = sslc_compiler::fuse::report(&exe);
    assert_eq!(report.unfused.len(), 1, "{}", report.text(&exe, &sources));
    assert!(report.unfused[0].2.contains("argmax"), "{}", report.unfused[0].2);
    insta::assert_snapshot!("fusion_warning_argmax", warnings(&exe, &sources));
}

#[test]
fn the_fusion_stage_lists_the_kernels_of_simclr() {
    let mut sources = Sources::new();
    let mut c =
        sslc_compiler::compile(Path::new("objectives/simclr.ssl"), &mut sources).unwrap_or_else(|_| panic!("compiles"));
    let exe = Executable::new(c.modules.remove(0)).expect("differentiable");
    insta::assert_snapshot!("fusion_stage_simclr", sslc_compiler::fuse::report(&exe).text(&exe, &sources));
}
