//! Fusion that explains itself: what `sslc emit --stage fusion` prints and what `sslc check`
//! warns about. A method designer learns which similarity matrices became pairwise kernels,
//! which products were left stored and why, and where the program still keeps a matrix as
//! large as the batch squared.

use crate::diag::{human_bytes, Diagnostic, Sources};
use crate::ir::{display_shape, Dim, Expr, Handle, Module, Program};
use crate::objective::Executable;

/// The batch size at which memory estimates are quoted, and the width assumed for other
/// free dimensions.
const QUOTED_BATCH: i64 = 4096;
const QUOTED_WIDTH: i64 = 128;

/// A value of the optimised program stored with (at least) two batch-sized axes.
pub struct Materialised {
    pub node: Handle<Expr>,
    /// Bytes at a batch of [`QUOTED_BATCH`].
    pub bytes: Option<u64>,
}

/// What fusion made of one objective.
pub struct Report {
    /// The fused pairwise nodes.
    pub fused: Vec<Handle<Expr>>,
    /// Products over the batch left stored, with the node that needs them and why.
    pub unfused: Vec<(Handle<Expr>, Handle<Expr>, String)>,
    /// `[N, N]`-sized values the CPU back end stores.
    pub materialised: Vec<Materialised>,
}

pub fn report(exe: &Executable) -> Report {
    let (m, p) = (&exe.module, &exe.optimized);
    let batch_sized = |d: &Dim| m.batch_dim().is_some_and(|b| d.symbols().any(|s| s == b));
    let square = |h: Handle<Expr>| {
        let shape = &p.ty(h).shape;
        shape.iter().filter(|d| batch_sized(d)).count() >= 2
    };
    let fused = p
        .exprs
        .iter()
        .filter(|(_, e)| matches!(e, Expr::PairwiseReduce { .. } | Expr::PairwiseMatMul { .. }))
        .map(|(h, _)| h)
        .collect();
    let mut unfused: Vec<(Handle<Expr>, Handle<Expr>, String)> = crate::passes::fuse_pairwise::unfused(p)
        .into_iter()
        .filter(|(seed, _)| square(*seed))
        .map(|(seed, s)| (seed, s.at, s.why))
        .collect();
    // Products inside loops are never seeds: say so.
    let uses = super::uses(p);
    for (h, e) in p.exprs.iter() {
        if matches!(e, Expr::MatMul { .. }) && square(h) && uses.scope[h.index()].is_some() {
            unfused.push((h, h, "it is computed inside a `repeat` loop, where nothing is fused".into()));
        }
    }
    let inline = super::plan(p, &uses, &crate::back::clif::FUSION_POLICY).inline;
    let materialised = p
        .exprs
        .iter()
        .filter(|(h, e)| square(*h) && !inline[h.index()] && e.view_arg().is_none())
        .map(|(h, _)| Materialised { node: h, bytes: bytes(m, p, h) })
        .collect();
    Report { fused, unfused, materialised }
}

/// The size of `h` at a batch of 4096 (other free dimensions 128), if its shape is known then.
fn bytes(m: &Module, p: &Program, h: Handle<Expr>) -> Option<u64> {
    let batch = m.batch_dim()?;
    let mut total: u64 = 4;
    for d in &p.ty(h).shape {
        let v = d.eval(&|s| {
            Some(match &m.dims[s].kind {
                _ if s == batch => QUOTED_BATCH,
                crate::ir::DimKind::Fixed(v) => *v,
                _ => QUOTED_WIDTH,
            })
        })?;
        total = total.checked_mul(u64::try_from(v).ok()?)?;
    }
    Some(total)
}

impl Report {
    /// A warning when the program stores batch-squared values: at the first expression that
    /// builds one, with the others and the reason each product was not fused as labels.
    pub fn warnings(&self, exe: &Executable) -> Vec<Diagnostic> {
        let (m, p) = (&exe.module, &exe.optimized);
        let Some(first) = self.materialised.first() else { return Vec::new() };
        let shape = |h: Handle<Expr>| display_shape(&p.ty(h).shape, &m.dims).to_string();
        let total: Option<u64> = self.materialised.iter().map(|v| v.bytes).sum();
        let size = total.map(|b| format!(" ({} at N = {QUOTED_BATCH})", human_bytes(b))).unwrap_or_default();
        let count = self.materialised.len();
        let what = if count == 1 {
            format!("a {} matrix", shape(first.node))
        } else {
            format!("{count} matrices of the batch's size squared")
        };
        let mut d = Diagnostic::warning(format!("`{}` stores {what}{size}", m.name))
            .at(p.span(first.node), format!("this {} value is kept in memory", shape(first.node)));
        let mut labelled = vec![p.span(first.node)];
        for (_, at, why) in &self.unfused {
            if !labelled.contains(&p.span(*at)) {
                labelled.push(p.span(*at));
                d = d.also(p.span(*at), format!("not fused: {why}"));
            }
        }
        for v in &self.materialised[1..] {
            if !labelled.contains(&p.span(v.node)) {
                labelled.push(p.span(v.node));
                d = d.also(p.span(v.node), format!("also stored: {}", shape(v.node)));
            }
        }
        vec![d.hint(
            "pairwise fusion keeps contrastive losses in O(N·D) memory when a similarity matrix only feeds \
             element-wise work (with per-row or per-column vectors, scalars, and masks built from `eye` or index \
             grids) that ends in row or column reductions or in products with a matrix; \
             `sslc emit FILE --stage fusion` lists what was fused and why the rest was not",
        )]
    }

    /// The `--stage fusion` listing.
    pub fn text(&self, exe: &Executable, sources: &Sources) -> String {
        let (m, p) = (&exe.module, &exe.optimized);
        let shape = |h: Handle<Expr>| display_shape(&p.ty(h).shape, &m.dims).to_string();
        let line = |h: Handle<Expr>| {
            let mut node = String::new();
            crate::ir::node_line(m, p, h, &mut node);
            node
        };
        let mut out = format!("fusion of {}\n\npairwise kernels ({}):\n", m.name, self.fused.len());
        for &h in &self.fused {
            out.push_str(&format!("  {}  [{}]\n", line(h), sources.location(p.span(h))));
        }
        out.push_str(&format!("\nproducts over the batch left unfused ({}):\n", self.unfused.len()));
        for (seed, at, why) in &self.unfused {
            out.push_str(&format!(
                "  %{} {} at {}: {why} (%{} at {})\n",
                seed.index(),
                shape(*seed),
                sources.location(p.span(*seed)),
                at.index(),
                sources.location(p.span(*at))
            ));
        }
        out.push_str(&format!("\nbatch-squared values stored on the CPU ({}):\n", self.materialised.len()));
        for v in &self.materialised {
            let size = v.bytes.map(|b| format!(", {} at N = {QUOTED_BATCH}", human_bytes(b))).unwrap_or_default();
            out.push_str(&format!(
                "  %{} {}{size} at {}\n",
                v.node.index(),
                shape(v.node),
                sources.location(p.span(v.node))
            ));
        }
        out
    }
}
