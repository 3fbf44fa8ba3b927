//! The compiled objective drives the training loop's state exactly as METHOD.md says: GH's
//! per-sample EMA and prior re-estimation, BCL's momentum loss and augmentation weights, and
//! the learning-rate schedules.

use candle_core::{DType, Device, Tensor};
use sslc::objective::CompiledObjective;
use sslc_compiler::back::BackendKind;
use sslc_compiler::diag::Sources;
use sslc_compiler::eval::Overrides;
use sslc_runtime::objective::{Objective, RunPosition};
use std::path::Path;

fn objective(name: &str, set: &[&str]) -> CompiledObjective {
    let mut sources = Sources::new();
    let module = sslc_compiler::compile(Path::new(&format!("objectives/{name}.ssl")), &mut sources)
        .ok()
        .unwrap()
        .modules
        .remove(0);
    let overrides = Overrides::parse(&set.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    CompiledObjective::new(module, overrides, 0.5, BackendKind::Reference).unwrap()
}

fn embeddings(n: usize, d: usize, seed: f64) -> Vec<Tensor> {
    (0..2)
        .map(|k| {
            let v: Vec<f32> = (0..n * d).map(|i| ((i as f64 * 0.37 + seed + k as f64 * 5.0).sin()) as f32).collect();
            Tensor::from_vec(v, (n, d), &Device::Cpu).unwrap()
        })
        .collect()
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()
}

fn state(o: &CompiledObjective, name: &str) -> Tensor {
    o.state().into_iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn gh_stores_the_anchor_scores_in_the_first_epoch_then_averages_them() {
    let mut o = objective("simclr_gh", &["K=4"]);
    o.init_state(&[0; 6], 8).unwrap();
    let z = embeddings(3, 8, 0.0);
    let at = RunPosition::at_epoch(0, 10);
    let out = o.step(&z, &[4, 0, 2], at).unwrap();
    o.after_step(&z, &[4, 0, 2], &out, at).unwrap();
    let e0 = rows(&state(&o, "e"));
    assert!(e0[1].iter().all(|v| *v == 0.0) && e0[3].iter().all(|v| *v == 0.0), "untouched rows stay zero");
    let norm = |r: &[f32]| r.iter().map(|v| v * v).sum::<f32>().sqrt();
    for r in [0, 2, 4] {
        assert!((norm(&e0[r]) - 1.0).abs() < 1e-5, "row {r} holds a normalised score: {:?}", e0[r]);
    }
    // A later epoch (still in warm-up: beta 0.9) blends old and new.
    let z2 = embeddings(3, 8, 1.0);
    let at = RunPosition::at_epoch(1, 10);
    let out = o.step(&z2, &[4, 0, 2], at).unwrap();
    o.after_step(&z2, &[4, 0, 2], &out, at).unwrap();
    let e1 = rows(&state(&o, "e"));
    let o2 = {
        let mut fresh = objective("simclr_gh", &["K=4"]);
        fresh.init_state(&[0; 6], 8).unwrap();
        let at0 = RunPosition::at_epoch(0, 10);
        let out = fresh.step(&z2, &[4, 0, 2], at0).unwrap();
        fresh.after_step(&z2, &[4, 0, 2], &out, at0).unwrap();
        rows(&state(&fresh, "e"))
    };
    for r in [0, 2, 4] {
        for c in 0..4 {
            let want = 0.9 * e0[r][c] + 0.1 * o2[r][c];
            assert!((e1[r][c] - want).abs() < 1e-5, "row {r} col {c}: {} vs {want}", e1[r][c]);
        }
    }
}

#[test]
fn gh_reestimates_the_prior_at_the_end_of_warm_up_only() {
    let mut o = objective("simclr_gh", &["K=4"]);
    o.init_state(&[0; 3], 8).unwrap();
    let e = Tensor::from_vec(vec![1f32, 0., 0., 0., 0., 2., 0., 0., 0., 3., 0., 0.], (3, 4), &Device::Cpu).unwrap();
    let pi = state(&o, "pi");
    o.load_state(&[("pi".to_string(), pi.clone()), ("e".to_string(), e)]).unwrap();
    // 10 epochs, warm_up = 50% = 5: before it the prior stays uniform.
    o.end_epoch(4, 10).unwrap();
    assert_eq!(state(&o, "pi").to_vec1::<f32>().unwrap(), vec![0.25; 4]);
    o.end_epoch(5, 10).unwrap();
    let got = state(&o, "pi").to_vec1::<f32>().unwrap();
    let want = [1.0 / 3.0, 2.0 / 3.0, 0.0, 0.0];
    assert!(got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{got:?}");
}

#[test]
fn gh_weight_follows_the_reference_ramp() {
    let mut o = objective("simclr_gh", &["K=4", "warm_up=4", "gh_ramp=2"]);
    o.init_state(&[0; 4], 8).unwrap();
    let z = embeddings(4, 8, 0.0);
    let weight = |o: &mut CompiledObjective, epoch| {
        let out = o.step(&z, &[0, 1, 2, 3], RunPosition::at_epoch(epoch, 20)).unwrap();
        out.metrics.iter().find(|(n, _)| n == "gh_weight").unwrap().1
    };
    // (epoch + 1 - warm_up) / GH_warm_up, clamped to [0, 1].
    for (epoch, want) in [(0, 0.0), (3, 0.0), (4, 0.5), (5, 1.0), (9, 1.0)] {
        assert!((weight(&mut o, epoch) - want).abs() < 1e-9, "epoch {epoch}");
    }
}

#[test]
fn bcl_tracks_the_momentum_loss_and_boosts_hard_samples() {
    let mut o = objective("bcl", &[]);
    o.init_state(&[0; 4], 5).unwrap();
    let z = embeddings(4, 5, 0.3);
    let at = RunPosition::at_epoch(0, 10);
    let out = o.step(&z, &[0, 1, 2, 3], at).unwrap();
    o.after_step(&z, &[0, 1, 2, 3], &out, at).unwrap();
    let m = state(&o, "m").to_vec1::<f32>().unwrap();
    let per_sample = out.per_sample.to_vec1::<f32>().unwrap();
    assert_eq!(m, per_sample, "the first epoch stores the loss");
    o.end_epoch(1, 10).unwrap();
    let w = state(&o, "w").to_vec1::<f32>().unwrap();
    // w = (m - mean) / std, scaled by max |.| to [-1/2, 1/2], shifted by 1/2.
    let mean = m.iter().sum::<f32>() / 4.0;
    let std = (m.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / 3.0).sqrt();
    let s: Vec<f32> = m.iter().map(|x| (x - mean) / std).collect();
    let peak = s.iter().fold(0f32, |a, b| a.max(b.abs()));
    for (got, si) in w.iter().zip(&s) {
        assert!((got - (si / peak / 2.0 + 0.5)).abs() < 1e-5);
    }
    let args = o.augmentation_args(&[2, 0], RunPosition::at_epoch(1, 10)).unwrap();
    assert_eq!(args.len(), 1, "one extra augmentation: randaugment");
    let (p, strength) = (&args[0][0], &args[0][1]);
    assert!((p[0] - w[2]).abs() < 1e-6 && (p[1] - w[0]).abs() < 1e-6);
    assert!((strength[0] - (10.0 + 20.0 * w[2])).abs() < 1e-4);
}

#[test]
fn schedules_follow_the_reference_learning_rates() {
    let o = objective("simclr", &[]);
    let lr = |epoch| o.learning_rate(RunPosition::at_epoch(epoch, 1000), 0.5).unwrap().unwrap();
    assert!((lr(0) - 0.05).abs() < 1e-7, "linear warm-up: 0.5 * 1/10");
    assert!((lr(9) - (1e-6 + (0.5 - 1e-6) * 0.5 * (1.0 + 0.0f64.cos()))).abs() < 1e-6);
    assert!(lr(999) < 1e-5);
    let gh = objective("simclr_gh", &["K=4"]);
    let lr = |epoch| gh.learning_rate(RunPosition::at_epoch(epoch, 1000), 0.5).unwrap().unwrap();
    // Stage one ends at 0.3 when warm-up (500) ends; stage two starts there.
    assert!((lr(498) - 0.3).abs() < 1e-3, "{}", lr(498));
    assert!((lr(499) - 0.3).abs() < 1e-6, "{}", lr(499));
    assert!(lr(999) < 1e-5);
}

#[test]
fn sdclr_declares_a_pruned_branch() {
    let o = objective("sdclr", &["prune_percent=0.1"]);
    let e = o.embeddings();
    assert_eq!((e[0].view, e[0].pruned), (0, None));
    assert_eq!((e[1].view, e[1].pruned), (1, Some(0.1)));
    // The same value written as a percentage (once silently ignored for the default 0.9).
    let o = objective("sdclr", &["prune_percent=10%"]);
    assert_eq!(o.embeddings()[1].pruned, Some(0.1));
}

#[test]
fn unknown_overrides_are_refused_up_front() {
    let mut sources = Sources::new();
    let module =
        sslc_compiler::compile(Path::new("objectives/simclr.ssl"), &mut sources).ok().unwrap().modules.remove(0);
    let err =
        CompiledObjective::new(module, Overrides::parse(&["tua=1".to_string()]).unwrap(), 0.5, BackendKind::Reference)
            .err()
            .unwrap();
    assert!(err.to_string().contains("tua"), "{err}");
}

/// State shapes may use the embedding width `D` (a queue `[Q, D]`): it is sized from the run's
/// width at `init_state`, not a placeholder, so the first step and its handler accept it.
#[test]
fn state_sized_by_the_embedding_width_is_created_at_that_width() {
    let mut sources = Sources::new();
    // The fixture imports the shipped library from the objectives folder it is allowed.
    let library = sslc_compiler::front::ImportRoots::new(vec!["objectives".into()]);
    let module = sslc_compiler::compile_with(Path::new("tests/fixtures/queue_state.ssl"), &library, &mut sources)
        .unwrap_or_else(|_| panic!("the fixture does not compile"))
        .modules
        .remove(0);
    let mut o = CompiledObjective::new(module, Overrides::default(), 0.5, BackendKind::Reference).unwrap();
    o.init_state(&[0; 10], 8).unwrap();
    assert_eq!(state(&o, "queue").dims(), &[256, 8]);
    let z = embeddings(4, 8, 0.0);
    let at = RunPosition::at_epoch(0, 2);
    let out = o.step(&z, &[0, 1, 2, 3], at).unwrap();
    assert!(out.loss.is_finite());
    o.after_step(&z, &[0, 1, 2, 3], &out, at).unwrap();
    let queue = rows(&state(&o, "queue"));
    let norm = |r: &[f32]| r.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((0..4).all(|r| (norm(&queue[r]) - 1.0).abs() < 1e-5), "the newest keys enter at the front");
    assert!(queue[4..].iter().all(|r| r.iter().all(|v| *v == 0.0)), "the older (zero) keys move back");
}

/// The run's labels reach objectives that declare `const y: [samples] = labels`: SupCon with
/// every sample in its own class is exactly SimCLR's NT-Xent (each anchor's only positive is
/// its other view), and with shared classes it is not.
#[test]
fn the_training_labels_reach_the_objective() {
    let z = embeddings(4, 8, 0.5);
    let at = RunPosition::at_epoch(0, 10);
    let loss = |name: &str, labels: &[u32]| {
        let mut o = objective(name, &["tau=0.2"]);
        o.init_state(labels, 8).unwrap();
        o.step(&z, &[0, 1, 2, 3], at).unwrap().loss
    };
    let simclr = loss("simclr", &[0; 4]);
    let distinct = loss("supcon", &[3, 1, 0, 2]);
    assert!((distinct - simclr).abs() < 1e-6 * simclr.abs(), "supcon {distinct} vs simclr {simclr}");
    let shared = loss("supcon", &[0, 0, 1, 1]);
    assert!((shared - simclr).abs() > 1e-3, "the classes changed nothing: {shared} vs {simclr}");
}

/// BYOL's embeddings: two predictions, two target embeddings; the target's momentum follows
/// the cosine schedule from `base_momentum` to 1.
#[test]
fn byol_declares_predictions_and_a_scheduled_momentum_target() {
    let o = objective("byol", &["base_momentum=0.99"]);
    let e = o.embeddings();
    let kinds: Vec<(&str, usize, bool, Option<usize>)> =
        e.iter().map(|s| (s.name.as_str(), s.view, s.target, s.predictor)).collect();
    assert_eq!(
        kinds,
        [("p1", 0, false, Some(512)), ("p2", 1, false, Some(512)), ("t1", 0, true, None), ("t2", 1, true, None)]
    );
    let momentum = |epoch| o.target_momentum(RunPosition::at_epoch(epoch, 100)).unwrap().unwrap();
    assert!((momentum(0) - 0.99).abs() < 1e-6, "{}", momentum(0));
    assert!((momentum(50) - 0.995).abs() < 1e-6, "half-way up the cosine: {}", momentum(50));
    assert!(momentum(99) > 0.99999, "{}", momentum(99));
    // SimCLR has no target network.
    assert_eq!(objective("simclr", &[]).target_momentum(RunPosition::at_epoch(0, 1)).unwrap(), None);
}

/// MoCo's queue: after each step the batch's normalised keys enter at the end and the oldest
/// N keys leave from the front.
#[test]
fn moco_enqueues_the_keys_and_drops_the_oldest() {
    let mut o = objective("moco_v2", &["Q=6"]);
    o.init_state(&[0; 10], 8).unwrap();
    let before = rows(&state(&o, "queue"));
    assert_eq!(before.len(), 6);
    let z = embeddings(4, 8, 0.3);
    let at = RunPosition::at_epoch(0, 2);
    let out = o.step(&z, &[0, 1, 2, 3], at).unwrap();
    o.after_step(&z, &[0, 1, 2, 3], &out, at).unwrap();
    let after = rows(&state(&o, "queue"));
    assert_eq!(after[..2], before[4..], "the two newest initial keys move to the front");
    let keys = rows(&z[1]);
    for (row, key) in after[2..].iter().zip(&keys) {
        let norm = key.iter().map(|v| v * v).sum::<f32>().sqrt();
        for (got, want) in row.iter().zip(key) {
            assert!((got - want / norm).abs() < 1e-6, "{row:?} vs {key:?}");
        }
    }
}

/// DINO's teacher head moves towards the student's by the epoch's momentum, and the center
/// towards the mean teacher logits, after each step; both start as the paper's (equal heads,
/// zero center).
#[test]
fn dino_moves_the_teacher_head_and_the_center_after_each_step() {
    let mut o = objective("dino", &["K=5", "base_momentum=0.9", "center_momentum=0.8"]);
    o.init_state(&[0; 10], 8).unwrap();
    let w = rows(&o.parameters()[0].1.as_tensor().clone());
    assert_eq!(rows(&state(&o, "W_t")), w, "the teacher's head starts as the student's");
    // Move the student's head so the EMA has something to do.
    let moved = (o.parameters()[0].1.as_tensor() * 2.0).unwrap();
    o.parameters()[0].1.set(&moved).unwrap();
    let mut z = embeddings(4, 8, 0.1);
    z.extend(embeddings(4, 8, 0.7));
    let at = RunPosition::at_epoch(0, 10);
    let out = o.step(&z, &[0, 1, 2, 3], at).unwrap();
    o.after_step(&z, &[0, 1, 2, 3], &out, at).unwrap();
    for (got, before) in rows(&state(&o, "W_t")).iter().flatten().zip(w.iter().flatten()) {
        // m = 0.9 at epoch 0: 0.9 w + 0.1 (2 w).
        assert!((got - 1.1 * before).abs() < 1e-5, "{got} vs {}", 1.1 * before);
    }
    // The center: 0.2 × the mean over both views' teacher logits (cosines with the heads).
    let center = state(&o, "center").to_vec1::<f32>().unwrap();
    let cosines = |t: &Tensor, k: usize| -> f32 {
        let t = rows(t);
        let head: Vec<f32> = w[k].clone();
        let hn = head.iter().map(|v| v * v).sum::<f32>().sqrt();
        t.iter()
            .map(|r| {
                r.iter().zip(&head).map(|(a, b)| a * b).sum::<f32>()
                    / (r.iter().map(|v| v * v).sum::<f32>().sqrt() * hn)
            })
            .sum()
    };
    for (k, c) in center.iter().enumerate() {
        let want = 0.2 * (cosines(&z[2], k) + cosines(&z[3], k)) / 8.0;
        assert!((c - want).abs() < 1e-5, "center {k}: {c} vs {want}");
    }
}

/// A handler may assign a `learn` tensor: SwAV puts its prototypes back on the unit sphere
/// after each step, in the variable the optimizer trains.
#[test]
fn swav_renormalises_its_prototypes_after_each_step() {
    let mut o = objective("swav", &["K=6"]);
    o.init_state(&[0; 10], 8).unwrap();
    let (_, c) = o.parameters().remove(0);
    c.set(&(c.as_tensor() * 3.0).unwrap()).unwrap();
    let z = embeddings(4, 8, 0.2);
    let at = RunPosition::at_epoch(0, 2);
    let out = o.step(&z, &[0, 1, 2, 3], at).unwrap();
    o.after_step(&z, &[0, 1, 2, 3], &out, at).unwrap();
    let after = rows(c.as_tensor());
    for row in &after {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "a prototype of norm {norm}");
    }
    let saved = state(&o, "C");
    assert_eq!(rows(&saved), after, "the checkpointed prototypes are the renormalised ones");
}

/// The device copy of the state, kept between steps for a back end that reads GPU memory, is
/// brought up to date by replaying the handlers' changes (rows scattered, whole tensors copied
/// again) instead of copying every table every step. Here on the CPU, the same code a GPU runs:
/// after steps whose batches repeat a sample (the last write wins), epochs that re-estimate
/// GH's prior, BCL's memories and MoCo's queue, it equals the host's state bit for bit.
#[test]
fn the_device_copy_of_the_state_follows_every_handler_bit_for_bit() {
    let bits = |ts: Vec<Tensor>| -> Vec<Vec<u32>> {
        ts.iter()
            .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect())
            .collect()
    };
    for (name, set) in [("simclr_gh", &["K=4", "warm_up=1"][..]), ("bcl", &[][..]), ("moco_v2", &["Q=8"][..])] {
        let mut o = objective(name, set);
        o.init_state(&[0, 1, 2, 0, 1, 2, 0], 8).unwrap();
        o.state_on(&Device::Cpu).unwrap();
        for (epoch, indices) in [[4u32, 0, 4, 2], [1, 1, 6, 3], [5, 0, 2, 2]].iter().enumerate() {
            let at = RunPosition::at_epoch(epoch, 3);
            let z = embeddings(4, 8, epoch as f64);
            let out = o.step(&z, indices, at).unwrap();
            o.after_step(&z, indices, &out, at).unwrap();
            o.end_epoch(epoch + 1, 3).unwrap();
            let host: Vec<Tensor> = o.state().into_iter().map(|(_, t)| t).collect();
            let device = o.state_on(&Device::Cpu).unwrap();
            assert_eq!(bits(device), bits(host[..o.module().states.len()].to_vec()), "{name}, epoch {epoch}");
        }
    }
}

/// `learn` and `state` take constant initialisers, and a `learn` tensor's optimizer options
/// reach the run in the order of its parameters (CLIP's temperature: zero start, no decay).
#[test]
fn constant_initialisers_and_optimizer_options_reach_the_run() {
    let text = "objective clip_demo {
    views x1, x2 = simclr_augment(x)
    input z1: [N, D] = encoder(x1)
    input z2: [N, D] = encoder(x2)
    learn log_scale: [1] = zeros, decay=0
    learn bias: [2] = full(-0.5), lr_scale=0.25
    learn C: [3, D] = randn(0)
    state s: [2] = full(3)
    loss = mean(logsumexp(z1 @ z2.T * exp(log_scale[0]), axis=1)) + sum(bias * s) + mean(z1 @ C.T)
}
";
    let mut sources = Sources::new();
    let module = sslc_compiler::compile_text(Path::new("clip_demo.ssl"), text.into(), &mut sources)
        .unwrap_or_else(|d| panic!("{}", d.iter().map(|d| d.render(&sources)).collect::<Vec<_>>().join("\n")))
        .modules
        .remove(0);
    let mut o = CompiledObjective::new(module, Overrides::default(), 0.5, BackendKind::Reference).unwrap();
    o.init_state(&[0; 10], 8).unwrap();
    let values = |k: usize| o.parameters()[k].1.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(values(0), [0.0]);
    assert_eq!(values(1), [-0.5, -0.5]);
    assert_eq!(state(&o, "s").to_vec1::<f32>().unwrap(), [3.0, 3.0]);
    let options: Vec<(f64, f64)> = o.parameter_options().iter().map(|p| (p.lr_scale, p.decay)).collect();
    assert_eq!(options, [(1.0, 0.0), (0.25, 1.0), (1.0, 1.0)]);
    let names: Vec<String> = o.state().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["s", "log_scale", "bias", "C"], "state and learned tensors are checkpointed");
}

/// A schedule that reads `iteration` advances every step (BYOL's per-iteration momentum) and
/// makes the loop ask at every step; without counted steps `iteration` is the epoch. A schedule
/// of `epoch` alone is asked once per epoch.
#[test]
fn iteration_schedules_advance_every_step() {
    let text = "import \"lib/schedules.ssl\"\n\
        objective per_step {\n\
            param base_momentum = 0.996\n\
            views x1, x2 = simclr_augment(x)\n\
            input p1: [N, D] = predictor(encoder(x1))\n\
            input t2: [N, D] = encoder(x2, ema=momentum)\n\
            schedule momentum = cosine(base_momentum, 1, iteration / iterations)\n\
            loss = mean(2 - 2 * sum(normalize(p1, axis=1) * normalize(t2, axis=1), axis=1))\n\
        }\n";
    let mut sources = Sources::new();
    let path = Path::new("objectives/per_step.ssl");
    let module = sslc_compiler::compile_text(path, text.into(), &mut sources).ok().unwrap().modules.remove(0);
    let mut o = CompiledObjective::new(module, Overrides::default(), 0.5, BackendKind::Reference).unwrap();
    o.init_state(&[0; 4], 8).unwrap();
    assert!(o.schedules_per_step());
    let momentum = |at: RunPosition| o.target_momentum(at).unwrap().unwrap();
    let byol = |t: f64| 1.0 - (1.0 - 0.996) * ((std::f64::consts::PI * t).cos() + 1.0) / 2.0;
    for (epoch, step) in [(0, 0), (0, 1), (1, 5), (3, 9)] {
        let got = momentum(RunPosition::at_epoch(epoch, 4).at_step(step, 10));
        let want = byol((epoch * 10 + step) as f64 / 40.0);
        assert!((got - want).abs() < 1e-6, "epoch {epoch} step {step}: {got} against {want}");
    }
    assert!(
        momentum(RunPosition::at_epoch(0, 4).at_step(1, 10)) > momentum(RunPosition::at_epoch(0, 4).at_step(0, 10))
    );
    assert!((momentum(RunPosition::at_epoch(2, 4)) - byol(0.5)).abs() < 1e-6);
    assert!(!objective("byol", &[]).schedules_per_step());
}
