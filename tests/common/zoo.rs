//! The zoo's losses written from their papers, independently of objectives/*.ssl: plain loops
//! over row-major `[N, D]` matrices of tape scalars (`common::tape`), so the tape gives each
//! loss's exact gradient. Each function names the paper's equation it follows.

use super::tape::{logsumexp, sum, V};

/// A row-major matrix of tape scalars.
pub struct M<'t> {
    pub rows: usize,
    pub cols: usize,
    pub v: Vec<V<'t>>,
}

impl<'t> M<'t> {
    fn at(&self, i: usize, j: usize) -> V<'t> {
        self.v[i * self.cols + j]
    }

    fn row(&self, i: usize) -> &[V<'t>] {
        &self.v[i * self.cols..(i + 1) * self.cols]
    }

    fn map_rows(&self, f: impl Fn(&[V<'t>]) -> Vec<V<'t>>) -> M<'t> {
        M { rows: self.rows, cols: self.cols, v: (0..self.rows).flat_map(|i| f(self.row(i))).collect() }
    }

    /// Column `j` as a vector.
    fn column(&self, j: usize) -> Vec<V<'t>> {
        (0..self.rows).map(|i| self.at(i, j)).collect()
    }
}

fn dot<'t>(a: &[V<'t>], b: &[V<'t>]) -> V<'t> {
    sum(a.iter().zip(b).map(|(&x, &y)| x * y))
}

/// `x / max(‖x‖, 1e-12)` for each row (the norms here are never that small).
fn normalize_rows<'t>(m: &M<'t>) -> M<'t> {
    m.map_rows(|r| {
        let norm = dot(r, r).sqrt();
        r.iter().map(|&x| x / norm).collect()
    })
}

/// DCL (Yeh et al. 2022, eq. 6): for each of the 2N views,
/// `−⟨u, v⟩/τ + log Σ_{k ∉ {self, positive}} exp(⟨u, w_k⟩/τ)`, averaged over the two views of
/// each sample (per-sample losses) and over the batch (loss).
pub fn dcl<'t>(z1: &M<'t>, z2: &M<'t>, tau: f64) -> (V<'t>, Vec<V<'t>>) {
    let n = z1.rows;
    let (a, b) = (normalize_rows(z1), normalize_rows(z2));
    let view = |k: usize| if k < n { a.row(k) } else { b.row(k - n) };
    let term = |i: usize| {
        let pos = dot(view(i), view((i + n) % (2 * n))) / tau;
        let others: Vec<V<'t>> =
            (0..2 * n).filter(|&k| k != i && k != (i + n) % (2 * n)).map(|k| dot(view(i), view(k)) / tau).collect();
        logsumexp(&others) - pos
    };
    let per_sample: Vec<V<'t>> = (0..n).map(|i| (term(i) + term(i + n)) / 2.0).collect();
    (sum(per_sample.iter().copied()) / n as f64, per_sample)
}

/// Alignment and uniformity (Wang & Isola 2020, eqs. 4 and 5, with the weighting of their
/// reference code): `mean ‖a_i − b_i‖^α + λ (U(a) + U(b)) / 2`,
/// `U(x) = log mean_{i≠j} exp(−t ‖x_i − x_j‖²)`, on normalised embeddings.
pub fn align_uniform<'t>(z1: &M<'t>, z2: &M<'t>, alpha: f64, t: f64, lam: f64) -> V<'t> {
    let n = z1.rows;
    let (a, b) = (normalize_rows(z1), normalize_rows(z2));
    let sqdist = |x: &[V<'t>], y: &[V<'t>]| sum(x.iter().zip(y).map(|(&p, &q)| (p - q).square()));
    let align = sum((0..n).map(|i| sqdist(a.row(i), b.row(i)).powf(alpha / 2.0))) / n as f64;
    let uniform = |x: &M<'t>| {
        let pairs: Vec<V<'t>> = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| -t * sqdist(x.row(i), x.row(j)))
            .collect();
        logsumexp(&pairs) - ((n * (n - 1)) as f64).ln()
    };
    align + lam * (uniform(&a) + uniform(&b)) / 2.0
}

/// Each column standardised with its batch mean and biased variance, `+ eps` (BatchNorm1d
/// without affine, as Barlow Twins' reference code).
fn standardize_columns<'t>(z: &M<'t>, eps: f64) -> Vec<Vec<V<'t>>> {
    (0..z.cols)
        .map(|j| {
            let col = z.column(j);
            let mean = sum(col.iter().copied()) / z.rows as f64;
            let centred: Vec<V<'t>> = col.iter().map(|&x| x - mean).collect();
            let var = sum(centred.iter().map(|&c| c.square())) / z.rows as f64;
            let sd = (var + eps).sqrt();
            centred.iter().map(|&c| c / sd).collect()
        })
        .collect()
}

/// Barlow Twins (Zbontar et al. 2021, eqs. 1 and 2): `C_ij = Σ_b ẑ1_bi ẑ2_bj / N` of the
/// batch-standardised features, loss `Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²`.
pub fn barlow_twins<'t>(z1: &M<'t>, z2: &M<'t>, lambda: f64) -> V<'t> {
    let (s1, s2) = (standardize_columns(z1, 1e-5), standardize_columns(z2, 1e-5));
    let d = z1.cols;
    let c = |i: usize, j: usize| dot(&s1[i], &s2[j]) / z1.rows as f64;
    let on = sum((0..d).map(|i| (1.0 - c(i, i)).square()));
    let off =
        sum((0..d).flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j))).map(|(i, j)| c(i, j).square()));
    on + lambda * off
}

/// VICReg (Bardes et al. 2022, eqs. 1–6, coefficients λ, μ, ν): invariance `mean (z1 − z2)²`
/// over all N·D entries; variance `mean_j max(0, 1 − sqrt(Var(z_j) + ε))` with the unbiased
/// variance, averaged over the branches; covariance `Σ_{i≠j} Cov(z)_ij² / D` summed over them.
pub fn vicreg<'t>(z1: &M<'t>, z2: &M<'t>, lambda: f64, mu: f64, nu: f64, eps: f64) -> V<'t> {
    let (n, d) = (z1.rows, z1.cols);
    let invariance = sum(z1.v.iter().zip(&z2.v).map(|(&a, &b)| (a - b).square())) / (n * d) as f64;
    let centred = |z: &M<'t>| -> Vec<Vec<V<'t>>> {
        (0..d)
            .map(|j| {
                let col = z.column(j);
                let mean = sum(col.iter().copied()) / n as f64;
                col.iter().map(|&x| x - mean).collect()
            })
            .collect()
    };
    let variance = |c: &[Vec<V<'t>>]| {
        sum(c.iter().map(|col| (1.0 - (sum(col.iter().map(|&x| x.square())) / (n - 1) as f64 + eps).sqrt()).relu()))
            / d as f64
    };
    let covariance = |c: &[Vec<V<'t>>]| {
        sum((0..d)
            .flat_map(|i| (0..d).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| (dot(&c[i], &c[j]) / (n - 1) as f64).square()))
            / d as f64
    };
    let (c1, c2) = (centred(z1), centred(z2));
    lambda * invariance + mu * (variance(&c1) + variance(&c2)) / 2.0 + nu * (covariance(&c1) + covariance(&c2))
}

/// SwAV's codes (Caron et al. 2020, section 3.1, and `distributed_sinkhorn` of their code):
/// `Q = exp(S/ε)ᵀ`, then alternately every prototype's row scaled to sum 1/K and every sample's
/// column to 1/B, `iters` times, and the columns scaled back to sum 1. Plain f64: the codes
/// carry no gradient.
fn swav_codes(scores: &[Vec<f64>], eps: f64, iters: usize) -> Vec<Vec<f64>> {
    let (b, k) = (scores.len(), scores[0].len());
    let mut q: Vec<Vec<f64>> = (0..k).map(|p| (0..b).map(|n| (scores[n][p] / eps).exp()).collect()).collect();
    let total: f64 = q.iter().flatten().sum();
    q.iter_mut().flatten().for_each(|v| *v /= total);
    for _ in 0..iters {
        for row in q.iter_mut() {
            let s: f64 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s * k as f64);
        }
        let columns: Vec<f64> = (0..b).map(|n| q.iter().map(|row| row[n]).sum()).collect();
        for row in q.iter_mut() {
            row.iter_mut().zip(&columns).for_each(|(v, s)| *v /= s * b as f64);
        }
    }
    (0..b).map(|n| (0..k).map(|p| q[p][n] * b as f64).collect()).collect()
}

/// SwAV with two crops (Caron et al. 2020, eqs. 1 and 2): cosine scores against the
/// prototypes `c`, swapped prediction `−Σ_k q_k log softmax(s/τ)_k` of the other view's codes,
/// averaged over the two directions (per-sample losses) and the batch (loss): multi-crop with
/// the global crops alone.
pub fn swav<'t>(z1: &M<'t>, z2: &M<'t>, c: &M<'t>, temp: f64, eps: f64, iters: usize) -> (V<'t>, Vec<V<'t>>) {
    swav_multicrop(&[z1, z2], c, temp, eps, iters)
}

/// SupCon (Khosla et al. 2020, eq. 2, `L_out`): for each of the 2N views, the mean over its
/// positives `P(i)` (every other view of the same class) of `−log softmax_{a ≠ i}(⟨z_i, z_a⟩/τ)`
/// at the positive; averaged over the two views of each sample and over the batch.
pub fn supcon<'t>(z1: &M<'t>, z2: &M<'t>, labels: &[u32], tau: f64) -> (V<'t>, Vec<V<'t>>) {
    let n = z1.rows;
    let (a, b) = (normalize_rows(z1), normalize_rows(z2));
    let view = |k: usize| if k < n { a.row(k) } else { b.row(k - n) };
    let class = |k: usize| labels[k % n];
    let term = |i: usize| {
        let others: Vec<V<'t>> = (0..2 * n).filter(|&k| k != i).map(|k| dot(view(i), view(k)) / tau).collect();
        let lse = logsumexp(&others);
        let positives: Vec<V<'t>> =
            (0..2 * n).filter(|&p| p != i && class(p) == class(i)).map(|p| lse - dot(view(i), view(p)) / tau).collect();
        sum(positives.iter().copied()) / positives.len() as f64
    };
    let per_sample: Vec<V<'t>> = (0..n).map(|i| (term(i) + term(i + n)) / 2.0).collect();
    (sum(per_sample.iter().copied()) / n as f64, per_sample)
}

/// `cos(a_i, b_i)` of matching rows.
fn row_cosines<'t>(a: &M<'t>, b: &M<'t>) -> Vec<V<'t>> {
    let (a, b) = (normalize_rows(a), normalize_rows(b));
    (0..a.rows).map(|i| dot(a.row(i), b.row(i))).collect()
}

/// The same values as new tape leaves: what a stop-gradient sees.
fn detached<'t>(m: &M<'t>) -> M<'t> {
    M { rows: m.rows, cols: m.cols, v: m.v.iter().map(|x| x.constant(x.value)).collect() }
}

/// `cos(z_i, p_k)` for every row `i` of `z` and `k` of `p`: scores against prototypes.
fn cosine_scores<'t>(z: &M<'t>, p: &M<'t>) -> Vec<Vec<V<'t>>> {
    let (z, p) = (normalize_rows(z), normalize_rows(p));
    (0..z.rows).map(|i| (0..p.rows).map(|k| dot(z.row(i), p.row(k))).collect()).collect()
}

/// `−Σ_k q_k log softmax(s/τ)_k`: the cross-entropy of scores against a fixed distribution
/// (SwAV's codes, DINO's teacher).
fn soft_cross_entropy<'t>(q: &[f64], s: &[V<'t>], temp: f64) -> V<'t> {
    let logits: Vec<V<'t>> = s.iter().map(|&x| x / temp).collect();
    let lse = logsumexp(&logits);
    -sum(q.iter().zip(&logits).map(|(&qk, &l)| qk * (l - lse)))
}

/// BYOL (Grill et al. 2020, eq. 2 and the symmetrised loss of section 3.1):
/// `‖p̄ − t̄‖² = 2 − 2 cos(p, t)` of each view's online prediction against the target's
/// projection of the other view, summed over the two directions.
pub fn byol<'t>(p1: &M<'t>, p2: &M<'t>, t1: &M<'t>, t2: &M<'t>) -> (V<'t>, Vec<V<'t>>) {
    let (c12, c21) = (row_cosines(p1, t2), row_cosines(p2, t1));
    let per_sample: Vec<V<'t>> = c12.iter().zip(&c21).map(|(&a, &b)| (2.0 - 2.0 * a) + (2.0 - 2.0 * b)).collect();
    (sum(per_sample.iter().copied()) / p1.rows as f64, per_sample)
}

/// SimSiam (Chen & He 2021, eq. 2 and Algorithm 1): `D(p1, sg(z2))/2 + D(p2, sg(z1))/2` with
/// `D` the negative cosine similarity.
pub fn simsiam<'t>(p1: &M<'t>, p2: &M<'t>, z1: &M<'t>, z2: &M<'t>) -> (V<'t>, Vec<V<'t>>) {
    let (a, b) = (row_cosines(p1, &detached(z2)), row_cosines(p2, &detached(z1)));
    let per_sample: Vec<V<'t>> = a.iter().zip(&b).map(|(&x, &y)| -(x + y) / 2.0).collect();
    (sum(per_sample.iter().copied()) / p1.rows as f64, per_sample)
}

/// MoCo (He et al. 2020, eq. 1, Algorithm 1; v2's τ): InfoNCE of each normalised query with
/// its normalised key as the positive (logit 0 of `N×(1+Q)`) and the queue's keys as negatives.
pub fn moco<'t>(q: &M<'t>, k: &M<'t>, queue: &M<'t>, tau: f64) -> (V<'t>, Vec<V<'t>>) {
    let (qn, kn, queue) = (normalize_rows(q), normalize_rows(k), normalize_rows(queue));
    let per_sample: Vec<V<'t>> = (0..q.rows)
        .map(|i| {
            let mut logits = vec![dot(qn.row(i), kn.row(i)) / tau];
            logits.extend((0..queue.rows).map(|j| dot(qn.row(i), queue.row(j)) / tau));
            logsumexp(&logits) - logits[0]
        })
        .collect();
    (sum(per_sample.iter().copied()) / q.rows as f64, per_sample)
}

/// DINO (Caron et al. 2021, eqs. 1–3 and Algorithm 1) with two global crops: the teacher's
/// `softmax((g_t(x) − c)/τ_t)` (no gradient) against the student's `log softmax(g_s(x')/τ_s)`,
/// both directions averaged. The heads end in a weight-normalised layer on the normalised
/// embedding: `g(x)_k = cos(z, w_k)`, `w` the student's `W`, the teacher's `W_t`.
#[allow(clippy::too_many_arguments)]
pub fn dino<'t>(
    s1: &M<'t>,
    s2: &M<'t>,
    t1: &M<'t>,
    t2: &M<'t>,
    w: &M<'t>,
    w_t: &[f64],
    center: &[f64],
    student_temp: f64,
    teacher_temp: f64,
) -> (V<'t>, Vec<V<'t>>) {
    dino_multicrop(&[s1, s2], [t1, t2], w, w_t, center, student_temp, teacher_temp)
}

/// DINO with multi-crop (Algorithm 1 with `n_crops` views): the teacher on the two global
/// crops, the student on every crop (`students[0]`, `students[1]` the global ones); each
/// teacher output against the student on every other crop, all terms averaged.
pub fn dino_multicrop<'t>(
    students: &[&M<'t>],
    teachers: [&M<'t>; 2],
    w: &M<'t>,
    w_t: &[f64],
    center: &[f64],
    student_temp: f64,
    teacher_temp: f64,
) -> (V<'t>, Vec<V<'t>>) {
    let w_t = M { rows: w.rows, cols: w.cols, v: w_t.iter().map(|&x| w.v[0].constant(x)).collect() };
    let teacher = |t: &M<'t>| -> Vec<Vec<f64>> {
        cosine_scores(t, &w_t)
            .iter()
            .map(|row| {
                let scaled: Vec<f64> = row.iter().zip(center).map(|(l, c)| (l.value - c) / teacher_temp).collect();
                let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = scaled.iter().map(|x| (x - max).exp()).sum();
                scaled.iter().map(|x| (x - max).exp() / total).collect()
            })
            .collect()
    };
    let h: Vec<Vec<Vec<f64>>> = teachers.iter().map(|t| teacher(t)).collect();
    let g: Vec<Vec<Vec<V<'t>>>> = students.iter().map(|s| cosine_scores(s, w)).collect();
    let terms = (2 * (students.len() - 1)) as f64;
    let per_sample: Vec<V<'t>> = (0..students[0].rows)
        .map(|i| {
            let pairs = (0..2).flat_map(|q| (0..students.len()).filter(move |&v| v != q).map(move |v| (q, v)));
            sum(pairs.map(|(q, v)| soft_cross_entropy(&h[q][i], &g[v][i], student_temp))) / terms
        })
        .collect();
    (sum(per_sample.iter().copied()) / students[0].rows as f64, per_sample)
}

/// SwAV with multi-crop (Caron et al. 2020, section 3.2 and `swav_loss` of their code): codes
/// from the two global crops only (`crops[0]`, `crops[1]`); for each, the mean over every other
/// crop of its swapped prediction; then the mean over the two codes.
pub fn swav_multicrop<'t>(crops: &[&M<'t>], c: &M<'t>, temp: f64, eps: f64, iters: usize) -> (V<'t>, Vec<V<'t>>) {
    let s: Vec<Vec<Vec<V<'t>>>> = crops.iter().map(|z| cosine_scores(z, c)).collect();
    let values =
        |s: &[Vec<V<'t>>]| -> Vec<Vec<f64>> { s.iter().map(|r| r.iter().map(|v| v.value).collect()).collect() };
    let codes: Vec<Vec<Vec<f64>>> = (0..2).map(|g| swav_codes(&values(&s[g]), eps, iters)).collect();
    let others = (crops.len() - 1) as f64;
    let per_sample: Vec<V<'t>> = (0..crops[0].rows)
        .map(|n| {
            let by_code = (0..2).map(|g| {
                sum((0..crops.len()).filter(|&v| v != g).map(|v| soft_cross_entropy(&codes[g][n], &s[v][n], temp)))
                    / others
            });
            sum(by_code) / 2.0
        })
        .collect();
    (sum(per_sample.iter().copied()) / crops[0].rows as f64, per_sample)
}
