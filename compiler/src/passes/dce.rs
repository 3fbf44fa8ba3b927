//! Dead-code elimination: only nodes the outputs depend on survive (inside loops, what the
//! carried values depend on).

use super::{Action, Rebuilder};
use crate::ir::{Expr, Module, Program};

pub(super) fn run(module: &Module, program: &Program) -> Program {
    let mut live = vec![false; program.exprs.len()];
    let mut stack: Vec<_> = program.outputs.iter().map(|o| o.value).collect();
    while let Some(h) = stack.pop() {
        if std::mem::replace(&mut live[h.index()], true) {
            continue;
        }
        let e = &program.exprs[h];
        stack.extend(e.operands());
        if let Expr::Loop { carried, .. } = e {
            stack.extend(carried.iter().flat_map(|c| [c.param, c.next]));
        }
    }
    Rebuilder::new(module, program).run(&mut |_, old, _| if live[old.index()] { Action::Keep } else { Action::Drop })
}
