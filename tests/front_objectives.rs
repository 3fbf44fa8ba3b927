//! Every shipped objective and library checks clean, and its IR is reviewed as a snapshot.

use sslc_compiler::diag::Sources;
use std::path::{Path, PathBuf};

fn ssl_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "ssl"))
        .collect();
    files.sort();
    files
}

fn compile(path: &Path) -> sslc_compiler::Compiled {
    let mut sources = Sources::new();
    match sslc_compiler::compile(path, &mut sources) {
        Ok(c) => c,
        Err(diags) => {
            let text: Vec<String> = diags.iter().map(|d| d.render(&sources)).collect();
            panic!("{} does not check clean:\n{}", path.display(), text.join("\n"));
        }
    }
}

#[test]
fn every_shipped_objective_compiles_to_one_module() {
    let files = ssl_files("objectives");
    let names: Vec<String> = files.iter().map(|f| f.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(
        names,
        [
            "align_uniform",
            "barlow_twins",
            "bcl",
            "bcl_gh",
            "byol",
            "dcl",
            "dcl_gh",
            "dino",
            "dino_multicrop",
            "focal",
            "focal_gh",
            "moco_v2",
            "sdclr",
            "sdclr_gh",
            "simclr",
            "simclr_gh",
            "simsiam",
            "supcon",
            "swav",
            "swav_multicrop",
            "vicreg"
        ]
    );
    // The README's zoo table lists every one of them.
    let readme = std::fs::read_to_string("README.md").expect("README.md");
    for name in names.iter().filter(|n| !n.ends_with("_gh")) {
        assert!(readme.contains(&format!("| `{name}.ssl` |")), "README's zoo table does not list {name}.ssl");
    }
    for f in &files {
        let c = compile(f);
        assert_eq!(c.modules.len(), 1, "{}", f.display());
        assert_eq!(c.modules[0].name, f.file_stem().unwrap().to_string_lossy());
    }
}

#[test]
fn libraries_check_on_their_own() {
    for f in ssl_files("objectives/lib") {
        assert!(compile(&f).modules.is_empty(), "{} declares no objective", f.display());
    }
}

#[test]
fn ir_snapshots() {
    for f in ssl_files("objectives") {
        let c = compile(&f);
        let name = format!("ir_{}", f.file_stem().unwrap().to_string_lossy());
        insta::assert_snapshot!(name, sslc_compiler::ir::print_module(&c.modules[0]));
    }
}

#[test]
fn gh_objectives_carry_the_paper_constants() {
    use sslc_compiler::ir::{ConstInit, DimKind, ParamValue};
    let c = compile(Path::new("objectives/simclr_gh.ssl"));
    let m = &c.modules[0];
    let param = |n: &str| m.params[m.param_named(n).unwrap()].default;
    assert_eq!(param("tau"), ParamValue::Real(0.2));
    assert_eq!(param("eps"), ParamValue::Real(0.05));
    assert_eq!(param("sinkhorn_iters"), ParamValue::Int(300));
    assert_eq!(param("warm_up"), ParamValue::RunFraction(0.5));
    assert_eq!(m.dims[m.dim_named("K").unwrap()].kind, DimKind::Fixed(100));
    assert!(matches!(m.consts[m.const_named("M").unwrap()].init, ConstInit::Etf { .. }));
    assert!(m.state_named("pi").is_some() && m.state_named("e").is_some());
    let outputs: Vec<&str> = m.loss.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outputs, ["loss", "per_sample", "gh_weight", "pi_entropy", "gh_loss"]);
    assert_eq!(m.handlers.len(), 2);
}
