//! Independent `repeat` loops side by side. A loop's iterations are sequential and its kernels
//! too small to split across threads, so two loops that share no buffer they write (the
//! Sinkhorn-Knopp iterations of two views, say) are grouped into one
//! [`Step::Concurrent`], which the runtime runs on separate threads. Steps move only along
//! the dependences between them (a buffer written by one and read or written by the other).

use super::plan::{BufferId, ElementProgram, Op, Sink, Step};
use std::collections::BTreeSet;

/// `steps`, with groups of mutually independent top-level loops made concurrent; every other
/// step keeps its relative order.
pub(crate) fn concurrent_loops(steps: Vec<Step>) -> Vec<Step> {
    let n = steps.len();
    let touched: Vec<(BTreeSet<BufferId>, BTreeSet<BufferId>)> = steps.iter().map(buffers).collect();
    // after[i] holds (as bits) every step j > i that must run after step i, directly or
    // through others.
    let words = n.div_ceil(64);
    let mut after = vec![vec![0u64; words]; n];
    for i in (0..n).rev() {
        let (reads_i, writes_i) = &touched[i];
        for j in i + 1..n {
            let (reads_j, writes_j) = &touched[j];
            if !writes_i.is_disjoint(reads_j) || !writes_i.is_disjoint(writes_j) || !reads_i.is_disjoint(writes_j) {
                let (head, tail) = after.split_at_mut(j);
                head[i][j / 64] |= 1 << (j % 64);
                for (w, v) in head[i].iter_mut().zip(&tail[0]) {
                    *w |= v;
                }
            }
        }
    }
    let must_follow = |i: usize, j: usize| after[i][j / 64] & (1 << (j % 64)) != 0;
    let is_loop = |i: usize| matches!(steps[i], Step::Loop { .. });
    let mut remaining: Vec<usize> = (0..n).collect();
    let mut order: Vec<Vec<usize>> = Vec::new();
    loop {
        let group = remaining.iter().copied().filter(|&i| is_loop(i)).find_map(|first| {
            let mut group = vec![first];
            for &j in remaining.iter().filter(|&&j| j > first && is_loop(j)) {
                if group.iter().all(|&g| !must_follow(g, j)) {
                    group.push(j);
                }
            }
            (group.len() > 1).then_some(group)
        });
        let Some(group) = group else { break };
        // What the group needs runs first, in its original order.
        let needed: Vec<usize> = remaining
            .iter()
            .copied()
            .filter(|&i| !group.contains(&i) && group.iter().any(|&g| i < g && must_follow(i, g)))
            .collect();
        order.extend(needed.iter().map(|&i| vec![i]));
        order.push(group.clone());
        remaining.retain(|i| !needed.contains(i) && !group.contains(i));
    }
    order.extend(remaining.into_iter().map(|i| vec![i]));

    let mut steps: Vec<Option<Step>> = steps.into_iter().map(Some).collect();
    let mut take = |i: usize| steps[i].take().expect("every step is placed once");
    order
        .into_iter()
        .map(|group| match group[..] {
            [single] => take(single),
            _ => Step::Concurrent { loops: group.into_iter().map(&mut take).collect() },
        })
        .collect()
}

/// The buffers a step reads and those it writes.
fn buffers(step: &Step) -> (BTreeSet<BufferId>, BTreeSet<BufferId>) {
    let (mut reads, mut writes) = (BTreeSet::new(), BTreeSet::new());
    collect(step, &mut reads, &mut writes);
    (reads, writes)
}

fn collect(step: &Step, reads: &mut BTreeSet<BufferId>, writes: &mut BTreeSet<BufferId>) {
    let loads = |body: &ElementProgram, reads: &mut BTreeSet<BufferId>| {
        reads.extend(body.ops.iter().filter_map(|(op, _)| match op {
            Op::Load(a) => Some(a.buffer),
            _ => None,
        }))
    };
    match step {
        Step::Map { out, body, .. } | Step::Reduce { out, body, .. } => {
            loads(body, reads);
            writes.insert(out.buffer);
        }
        Step::MatMul { out, lhs, rhs, .. } => {
            reads.extend([lhs.buffer, rhs.buffer]);
            writes.insert(out.buffer);
        }
        Step::Gather { out, table, indices, .. } => {
            reads.extend([table.buffer, indices.buffer]);
            writes.insert(out.buffer);
        }
        Step::ScatterAdd { out, values, indices, .. } => {
            reads.extend([values.buffer, indices.buffer]);
            writes.insert(out.buffer);
        }
        Step::Loop { count, body, update } => {
            reads.insert(count.buffer);
            for s in body.iter().chain(update) {
                collect(s, reads, writes);
            }
        }
        Step::Pairwise { a, b, kernel, sink, .. } => {
            reads.extend([a.buffer, b.buffer]);
            loads(kernel, reads);
            match sink {
                Sink::Reduce { out, .. } => writes.insert(out.buffer),
                Sink::MatMul { v, out, .. } => {
                    reads.insert(v.buffer);
                    writes.insert(out.buffer)
                }
            };
        }
        Step::Concurrent { loops } => {
            for s in loops {
                collect(s, reads, writes);
            }
        }
    }
}
