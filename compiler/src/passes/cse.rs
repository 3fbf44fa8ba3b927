//! Common-subexpression elimination: a node equal to an earlier one (same operation, same
//! operands after remapping) reuses it. Inside a loop body, a node may reuse one computed
//! before the loop — this also hoists loop-invariant work out of `repeat` — but nothing
//! outside a loop reuses a value from inside it.

use super::{Action, Rebuilder};
use crate::ir::{Expr, Handle, Module, Program};
use std::collections::HashMap;

/// A computed node and the block path it was computed in.
type Visible = (Vec<usize>, Handle<Expr>);

pub(super) fn run(module: &Module, program: &Program) -> Program {
    // Each entry remembers the blocks it was computed in; it is visible from those blocks and
    // the loop bodies nested in them.
    let mut seen: HashMap<String, Vec<Visible>> = HashMap::new();
    Rebuilder::new(module, program).run(&mut |rb, old, expr| {
        if matches!(expr, Expr::LoopOutput { .. } | Expr::Loop { .. } | Expr::LoopParam) {
            return Action::Keep;
        }
        let key = format!("{expr:?}");
        let path = rb.block_path().to_vec();
        let visible =
            seen.get(&key).and_then(|entries| entries.iter().find(|(at, _)| path.starts_with(at)).map(|(_, h)| *h));
        if let Some(existing) = visible {
            return Action::Replace(existing);
        }
        let h = rb.push(expr, rb.old.span(old));
        seen.entry(key).or_default().push((path, h));
        Action::Replace(h)
    })
}
