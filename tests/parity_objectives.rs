//! Parity of the reference evaluator and the autodiff with METHOD.md: simclr, focal, simclr_gh
//! and focal_gh, values and gradients, against the independent implementation in
//! `common/method.rs` (plain f64 loops, hand-derived gradients), at N from 1 to 512 and D from
//! 1 to 128, including near-duplicate rows, large-norm rows and priors with zero entries.
//!
//! Every fixture is rounded to f32 when it is made, so an f32 and an f64 evaluation see the
//! same numbers and one f64 reference serves both precisions.

mod common;

use candle_core::DType;
use common::method::{self, Contrastive, Graded, GH};
use common::{evaluate, grad, metric, rel_error, values, vector_tensor, Mat, Rng, Setup};
use std::sync::OnceLock;

const TAU: f64 = 0.2;
const GAMMA: f64 = 2.0;
/// The seed `etf(K, D)` is built with (docs/language.md: "seed 0").
const ETF_SEED: u64 = 0;

/// Largest accepted relative error (see `common::rel_error`) per precision.
fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-5,
        _ => 1e-4,
    }
}

/// Where the relative error of a loss stops shrinking: losses are O(1) except with one sample,
/// where NT-Xent is exactly 0 (each view's only other row is its positive) and the floor asks
/// for agreement to ~1e-12 (f64) or ~1e-11 (f32) absolute.
///
/// Gradients are measured against the larger of their largest entry and their
/// `method::unprojected_scale`, which differ only where `normalize`'s projection cancels
/// nearly everything (D = 1, where the exact gradient is 0 and what is left is rounding).
const FLOOR: f64 = 1e-7;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Objective {
    Simclr,
    Focal,
    SimclrGh,
    FocalGh,
}

impl Objective {
    fn path(self) -> &'static str {
        match self {
            Objective::Simclr => "objectives/simclr.ssl",
            Objective::Focal => "objectives/focal.ssl",
            Objective::SimclrGh => "objectives/simclr_gh.ssl",
            Objective::FocalGh => "objectives/focal_gh.ssl",
        }
    }

    fn has_gh(self) -> bool {
        matches!(self, Objective::SimclrGh | Objective::FocalGh)
    }

    fn base(self, r: &Reference) -> &Contrastive {
        match self {
            Objective::Simclr | Objective::SimclrGh => &r.nt_xent,
            Objective::Focal | Objective::FocalGh => &r.focal,
        }
    }
}

/// GH's anchors for one case: `M` and whether the test supplies it or the compiler builds it.
#[derive(Clone, Debug)]
struct Anchors {
    m: Mat,
    /// false: the compiler builds `etf(K, D)` itself (K = 100 needs D ≥ 99).
    supplied: bool,
    /// The prior given as the `pi` state (unnormalised, possibly with zeros); None: the
    /// declared `uniform` initial value.
    prior: Option<Vec<f64>>,
}

#[derive(Clone, Debug)]
struct Case {
    label: String,
    z1: Mat,
    z2: Mat,
    anchors: Anchors,
}

/// METHOD.md's values for one case.
struct Reference {
    nt_xent: Contrastive,
    focal: Contrastive,
    gh: Graded,
}

struct Prepared {
    case: Case,
    reference: Reference,
}

/// Two correlated views: `z2 = z1 + noise`, so positives are more similar than negatives.
fn views(rng: &mut Rng, n: usize, d: usize) -> (Mat, Mat) {
    let z1 = rng.normal_mat(n, d);
    let noise = rng.normal_mat(n, d);
    let z2 = Mat { data: z1.data.iter().zip(&noise.data).map(|(a, b)| a + 0.7 * b).collect(), ..z1.clone() };
    (z1, z2)
}

/// `k` random unit rows in R^d.
fn unit_rows(rng: &mut Rng, k: usize, d: usize) -> Mat {
    method::normalize_rows(&rng.normal_mat(k, d)).0
}

/// An unnormalised prior with every third anchor at zero (as after GH re-estimates `pi`
/// from a histogram in which some anchors are never the argmax).
fn prior_with_zeros(rng: &mut Rng, k: usize) -> Vec<f64> {
    let mut p: Vec<f64> = (0..k).map(|j| if j % 3 == 0 && k > 1 { 0.0 } else { 0.1 + rng.uniform() }).collect();
    if p.iter().all(|&v| v == 0.0) {
        p[0] = 1.0;
    }
    p
}

fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| x as f32 as f64).collect()
}

/// The cases: shapes from N = 1, D = 1 up to N = 512, D = 128.
fn cases() -> &'static [Prepared] {
    static CASES: OnceLock<Vec<Prepared>> = OnceLock::new();
    CASES.get_or_init(|| {
        let mut rng = Rng::new(20231017);
        let mut out = Vec::new();
        let mut add = |label: &str, z1: Mat, z2: Mat, anchors: Anchors| {
            let case = Case {
                label: label.to_string(),
                z1: z1.rounded_to_f32(),
                z2: z2.rounded_to_f32(),
                // The compiler's own anchors stay as it builds them (in f64).
                anchors: Anchors {
                    m: if anchors.supplied { anchors.m.rounded_to_f32() } else { anchors.m },
                    prior: anchors.prior.map(|p| rounded(&p)),
                    ..anchors
                },
            };
            let prior = case.anchors.prior.clone().unwrap_or_else(|| vec![1.0; case.anchors.m.rows]);
            let reference = Reference {
                nt_xent: method::nt_xent(&case.z1, &case.z2, TAU),
                focal: method::focal_nt_xent(&case.z1, &case.z2, TAU, GAMMA),
                gh: method::gh_term(&case.z1, &case.z2, &case.anchors.m, &prior, GH),
            };
            out.push(Prepared { case, reference });
        };
        let supplied = |m: Mat, prior: Option<Vec<f64>>| Anchors { m, supplied: true, prior };
        let compiler_etf = |d: usize, prior: Option<Vec<f64>>| Anchors {
            m: Mat {
                rows: 100,
                cols: d,
                data: sslc_compiler::eval::etf(100, d, ETF_SEED).expect("K = 100 fits D >= 99"),
            },
            supplied: false,
            prior,
        };

        let (z1, z2) = views(&mut rng, 1, 1);
        let anchors = supplied(unit_rows(&mut rng, 3, 1), Some(prior_with_zeros(&mut rng, 3)));
        add("N=1 D=1 K=3 zero prior", z1, z2, anchors);

        let (z1, z2) = views(&mut rng, 1, 16);
        let anchors = supplied(unit_rows(&mut rng, 5, 16), None);
        add("N=1 D=16 K=5", z1, z2, anchors);

        let (z1, z2) = views(&mut rng, 3, 1);
        let anchors = supplied(unit_rows(&mut rng, 100, 1), None);
        add("N=3 D=1 K=100", z1, z2, anchors);

        let (z1, z2) = views(&mut rng, 2, 2);
        let anchors = supplied(unit_rows(&mut rng, 4, 2), Some(prior_with_zeros(&mut rng, 4)));
        add("N=2 D=2 K=4 zero prior", z1, z2, anchors);

        let (z1, z2) = views(&mut rng, 7, 5);
        let anchors = supplied(unit_rows(&mut rng, 6, 5), None);
        add("N=7 D=5 K=6", z1, z2, anchors);

        let (z1, z2) = views(&mut rng, 33, 24);
        let anchors = supplied(unit_rows(&mut rng, 20, 24), Some(prior_with_zeros(&mut rng, 20)));
        add("N=33 D=24 K=20 zero prior", z1, z2, anchors);

        let (z1, z2) = views(&mut rng, 8, 128);
        add("N=8 D=128 K=100 compiler ETF", z1, z2, compiler_etf(128, None));

        // Near-duplicate rows: pairs of samples that differ by 1e-5 relative, and views that
        // nearly coincide.
        let base = rng.normal_mat(12, 16);
        let mut z1 = base.clone();
        for i in (1..12).step_by(2) {
            let prev = base.row(i - 1).to_vec();
            for (v, p) in z1.row_mut(i).iter_mut().zip(prev) {
                *v = p * (1.0 + 1e-5 * rng.normal());
            }
        }
        let z2 = Mat { data: z1.data.iter().map(|v| v * (1.0 + 1e-4 * rng.normal())).collect(), ..z1.clone() };
        let anchors = supplied(unit_rows(&mut rng, 10, 16), Some(prior_with_zeros(&mut rng, 10)));
        add("N=12 D=16 near-duplicate rows", z1, z2, anchors);

        // Large norms: every other row of z1 and all of z2 scaled by 1e3.
        let (mut z1, mut z2) = views(&mut rng, 10, 8);
        for i in (0..10).step_by(2) {
            z1.row_mut(i).iter_mut().for_each(|v| *v *= 1e3);
        }
        z2.data.iter_mut().for_each(|v| *v *= 1e3);
        let anchors = supplied(unit_rows(&mut rng, 7, 8), Some(prior_with_zeros(&mut rng, 7)));
        add("N=10 D=8 rows scaled by 1e3", z1, z2, anchors);

        let (z1, z2) = views(&mut rng, 512, 128);
        let prior = prior_with_zeros(&mut rng, 100);
        add("N=512 D=128 K=100 compiler ETF zero prior", z1, z2, compiler_etf(128, Some(prior)));
        out
    })
}

/// How far sslc is from the reference on one case.
#[derive(Clone, Copy, Debug, Default)]
struct Errors {
    loss: f64,
    per_sample: f64,
    grad_z1: f64,
    grad_z2: f64,
    gh_loss: f64,
}

impl std::fmt::Display for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "loss {:.1e}  per_sample {:.1e}  grad_z1 {:.1e}  grad_z2 {:.1e}  gh_loss {:.1e}",
            self.loss, self.per_sample, self.grad_z1, self.grad_z2, self.gh_loss
        )
    }
}

impl Errors {
    fn worst(&self) -> f64 {
        [self.loss, self.per_sample, self.grad_z1, self.grad_z2, self.gh_loss].into_iter().fold(0.0, f64::max)
    }

    fn max(self, other: Errors) -> Errors {
        Errors {
            loss: self.loss.max(other.loss),
            per_sample: self.per_sample.max(other.per_sample),
            grad_z1: self.grad_z1.max(other.grad_z1),
            grad_z2: self.grad_z2.max(other.grad_z2),
            gh_loss: self.gh_loss.max(other.gh_loss),
        }
    }
}

/// The bindings of one case: inputs, and for GH the anchors, their count and the prior.
fn setup(objective: Objective, case: &Case, dtype: DType, epoch: usize) -> Setup<'static> {
    let mut s = Setup {
        inputs: vec![("z1", case.z1.tensor(dtype)), ("z2", case.z2.tensor(dtype))],
        epoch,
        dtype,
        ..Setup::default()
    };
    if objective.has_gh() {
        let a = &case.anchors;
        if a.m.rows != 100 {
            s.overrides.push(format!("K={}", a.m.rows));
        }
        if a.supplied {
            s.consts.push(("M", a.m.tensor(dtype)));
        }
        if let Some(p) = &a.prior {
            s.states.push(("pi", vector_tensor(p, dtype)));
        }
    }
    s
}

/// Evaluates `objective` on every case in `dtype` at the end of the run, asserts agreement
/// with METHOD.md within the precision's tolerance, and prints the errors.
fn check_parity(objective: Objective, dtype: DType) {
    let module = common::compile_objective(objective.path());
    let tol = tolerance(dtype);
    let mut worst = Errors::default();
    let mut failures = Vec::new();
    for Prepared { case, reference } in cases() {
        let eval = evaluate(&module, &setup(objective, case, dtype, 999));
        let base = objective.base(reference);
        let expected = if objective.has_gh() { method::with_gh(base, &reference.gh, 1.0) } else { base.graded.clone() };
        let per_sample = values(eval.per_sample.as_ref().expect("the objective declares per_sample"));
        let errors = Errors {
            loss: rel_error(&[eval.loss], &[expected.loss], FLOOR),
            per_sample: rel_error(&per_sample, &base.per_sample, FLOOR),
            grad_z1: rel_error(&values(grad(&eval, "z1")), &expected.grad_z1.data, expected.scale_z1.max(FLOOR)),
            grad_z2: rel_error(&values(grad(&eval, "z2")), &expected.grad_z2.data, expected.scale_z2.max(FLOOR)),
            gh_loss: if objective.has_gh() {
                assert_eq!(metric(&eval, "gh_weight"), 1.0, "{}: the GH weight at the last epoch", case.label);
                rel_error(&[metric(&eval, "gh_loss")], &[reference.gh.loss], FLOOR)
            } else {
                0.0
            },
        };
        eprintln!("{objective:?} {dtype:?} {:<44} {errors}", case.label);
        if errors.worst() > tol {
            failures.push(format!("{}: {errors}", case.label));
        }
        worst = worst.max(errors);
    }
    eprintln!("{objective:?} {dtype:?} worst over all cases: {worst}");
    assert!(
        failures.is_empty(),
        "{objective:?} in {dtype:?} differs from METHOD.md by more than {tol:e}:\n{}",
        failures.join("\n")
    );
}

#[test]
fn simclr_matches_method_in_f64() {
    check_parity(Objective::Simclr, DType::F64);
}

#[test]
fn simclr_matches_method_in_f32() {
    check_parity(Objective::Simclr, DType::F32);
}

#[test]
fn focal_matches_method_in_f64() {
    check_parity(Objective::Focal, DType::F64);
}

#[test]
fn focal_matches_method_in_f32() {
    check_parity(Objective::Focal, DType::F32);
}

#[test]
fn simclr_gh_matches_method_in_f64() {
    check_parity(Objective::SimclrGh, DType::F64);
}

#[test]
fn simclr_gh_matches_method_in_f32() {
    check_parity(Objective::SimclrGh, DType::F32);
}

#[test]
fn focal_gh_matches_method_in_f64() {
    check_parity(Objective::FocalGh, DType::F64);
}

#[test]
fn focal_gh_matches_method_in_f32() {
    check_parity(Objective::FocalGh, DType::F32);
}

/// The compiler's default anchors are the simplex ETF METHOD.md describes: unit rows with
/// pairwise cosine −1/(K−1).
#[test]
fn compiler_anchors_are_a_simplex_etf() {
    for d in [99, 128] {
        let m = Mat { rows: 100, cols: d, data: sslc_compiler::eval::etf(100, d, ETF_SEED).expect("K = 100 fits") };
        let gram = m.matmul_t(&m);
        for i in 0..100 {
            for j in 0..100 {
                let want = if i == j { 1.0 } else { -1.0 / 99.0 };
                assert!(
                    (gram.at(i, j) - want).abs() < 1e-9,
                    "D={d}: <M_{i}, M_{j}> = {} instead of {want}",
                    gram.at(i, j)
                );
            }
        }
    }
}

/// With `warm_up = 50%` of 1000 epochs and `gh_ramp = 1%`, the GH weight is 0 at epoch 0, 0.5
/// half-way through the ramp (epoch 504: (504 + 1 − 500) / 10) and 1 at the end, and the loss
/// is `base + weight · gh` at each.
#[test]
fn gh_weight_follows_the_schedule() {
    let Prepared { case, reference } = cases().iter().find(|p| p.case.label.starts_with("N=7 ")).expect("the N=7 case");
    for objective in [Objective::SimclrGh, Objective::FocalGh] {
        let module = common::compile_objective(objective.path());
        for (epoch, weight) in [(0, 0.0), (499, 0.0), (504, 0.5), (999, 1.0)] {
            let eval = evaluate(&module, &setup(objective, case, DType::F64, epoch));
            assert_eq!(metric(&eval, "gh_weight"), weight, "{objective:?} at epoch {epoch}");
            let expected = method::with_gh(objective.base(reference), &reference.gh, weight);
            let err = rel_error(&[eval.loss], &[expected.loss], FLOOR);
            assert!(err < 1e-10, "{objective:?} at epoch {epoch}: loss {} instead of {}", eval.loss, expected.loss);
            let err = rel_error(&values(grad(&eval, "z1")), &expected.grad_z1.data, FLOOR);
            assert!(err < 1e-8, "{objective:?} at epoch {epoch}: grad_z1 off by {err:e}");
        }
    }
}

/// The reference's gradients are hand-derived; central finite differences of the reference's
/// own losses confirm them (with the Sinkhorn targets held fixed, as stopgrad does).
#[test]
fn reference_gradients_match_finite_differences() {
    let mut rng = Rng::new(7);
    let (z1, z2) = views(&mut rng, 5, 4);
    let m = unit_rows(&mut rng, 6, 4);
    let prior = prior_with_zeros(&mut rng, 6);
    // GH's value with the targets computed at the unperturbed point.
    let (t1, _) = method::normalize_rows(&z1.matmul_t(&m));
    let (t2, _) = method::normalize_rows(&z2.matmul_t(&m));
    let q1 = method::sinkhorn(&t1, &prior, GH.eps, GH.iters);
    let q2 = method::sinkhorn(&t2, &prior, GH.eps, GH.iters);
    let gh_fixed_targets = |a: &Mat, b: &Mat| {
        let ce = |q: &Mat, z: &Mat| {
            let (t, _) = method::normalize_rows(&z.matmul_t(&m));
            let mut v = 0.0;
            for i in 0..t.rows {
                let lse = t.row(i).iter().map(|x| (x / GH.temp).exp()).sum::<f64>().ln();
                v -= (0..t.cols).map(|k| q.at(i, k) * (t.at(i, k) / GH.temp - lse)).sum::<f64>() / t.rows as f64;
            }
            v
        };
        ce(&q1, b) + ce(&q2, a)
    };
    type Loss<'a> = Box<dyn Fn(&Mat, &Mat) -> f64 + 'a>;
    let losses: Vec<(&str, Loss, Graded)> = vec![
        (
            "nt_xent",
            Box::new(|a: &Mat, b: &Mat| method::nt_xent(a, b, TAU).graded.loss),
            method::nt_xent(&z1, &z2, TAU).graded,
        ),
        (
            "focal",
            Box::new(|a: &Mat, b: &Mat| method::focal_nt_xent(a, b, TAU, GAMMA).graded.loss),
            method::focal_nt_xent(&z1, &z2, TAU, GAMMA).graded,
        ),
        ("gh", Box::new(gh_fixed_targets), method::gh_term(&z1, &z2, &m, &prior, GH)),
    ];
    let h = 1e-6;
    for (name, loss, graded) in &losses {
        for (which, analytic) in [(0, &graded.grad_z1), (1, &graded.grad_z2)] {
            let mut fd = Vec::new();
            for j in 0..z1.data.len() {
                let at = |delta: f64| {
                    let (mut a, mut b) = (z1.clone(), z2.clone());
                    if which == 0 {
                        a.data[j] += delta
                    } else {
                        b.data[j] += delta
                    }
                    loss(&a, &b)
                };
                fd.push((at(h) - at(-h)) / (2.0 * h));
            }
            let err = rel_error(&analytic.data, &fd, FLOOR);
            assert!(err < 1e-7, "{name}: d/dz{} differs from finite differences by {err:e}", which + 1);
        }
    }
}

/// Every objective is invariant to the scale of each embedding row (it only sees
/// `normalize(z)` and `normalize(z Mᵀ)`), so each row of its gradient is orthogonal to that
/// row of `z`. A VJP of `normalize` that forgot the projection `(I − u uᵀ)` breaks this.
#[test]
fn gradients_are_orthogonal_to_their_rows() {
    let Prepared { case, .. } = cases().iter().find(|p| p.case.label.starts_with("N=33 ")).expect("the N=33 case");
    for objective in [Objective::Simclr, Objective::Focal, Objective::SimclrGh, Objective::FocalGh] {
        let module = common::compile_objective(objective.path());
        let eval = evaluate(&module, &setup(objective, case, DType::F64, 999));
        for (name, z) in [("z1", &case.z1), ("z2", &case.z2)] {
            let g = values(grad(&eval, name));
            for i in 0..z.rows {
                let gi = &g[i * z.cols..(i + 1) * z.cols];
                let cosine = common::dot(gi, z.row(i)) / (common::dot(gi, gi) * common::dot(z.row(i), z.row(i))).sqrt();
                assert!(
                    cosine.abs() < 1e-9,
                    "{objective:?}: row {i} of d loss/d {name} has cosine {cosine:e} with the row"
                );
            }
        }
    }
}

/// METHOD.md's `normalize(x) = x / max(‖x‖, 1e-12)` is differentiable at an all-zero row (the
/// max picks the constant, so the Jacobian is I / 1e-12): such a row has a finite gradient,
/// as in the reference PyTorch code.
#[test]
fn an_all_zero_row_has_a_finite_gradient() {
    let mut rng = Rng::new(99);
    let (mut z1, z2) = views(&mut rng, 4, 3);
    z1.row_mut(1).iter_mut().for_each(|v| *v = 0.0);
    let z1 = z1.rounded_to_f32();
    let z2 = z2.rounded_to_f32();
    for objective in [Objective::Simclr, Objective::Focal] {
        let module = common::compile_objective(objective.path());
        let setup =
            Setup { inputs: vec![("z1", z1.tensor(DType::F64)), ("z2", z2.tensor(DType::F64))], ..Setup::default() };
        let eval = evaluate(&module, &setup);
        let want = match objective {
            Objective::Simclr => method::nt_xent(&z1, &z2, TAU),
            _ => method::focal_nt_xent(&z1, &z2, TAU, GAMMA),
        };
        let got = values(grad(&eval, "z1"));
        let err = rel_error(&got, &want.graded.grad_z1.data, want.graded.scale_z1.max(FLOOR));
        assert!(
            err < 1e-5,
            "{objective:?}: d loss/d z1 with a zero row: {got:?} instead of {:?}",
            want.graded.grad_z1.data
        );
    }
}
