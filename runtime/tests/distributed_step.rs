//! One data-parallel training step, W ranks simulated as threads of this process: gathering
//! the embeddings, differentiating the global loss, backpropagating each rank's own rows
//! through synchronised BatchNorm and summing the parameter gradients gives the gradient that
//! autodiff computes for the global loss in one process (W = 2, 3), on the dense and SDCLR's
//! pruned branch at once. Without BatchNorm synchronisation it does not.

use std::sync::Arc;

use candle_core::{Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sslc_runtime::dist::{self, Collective, Shard, Simulated};
use sslc_runtime::model::{BackboneKind, Encoder, EncoderConfig};
use sslc_runtime::objective::EmbeddingSpec;
use sslc_runtime::train::{backpropagate, forward_embeddings};

const BATCH: usize = 12;
const SIZE: usize = 8;

fn views() -> [Tensor; 2] {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    [0, 1].map(|_| {
        let values: Vec<f32> = (0..BATCH * SIZE * SIZE).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(values, (BATCH, 1, SIZE, SIZE), &Device::Cpu).unwrap()
    })
}

fn specs() -> Vec<EmbeddingSpec> {
    vec![EmbeddingSpec::online("z1", 0), EmbeddingSpec { pruned: Some(0.5), ..EmbeddingSpec::online("z2", 1) }]
}

fn encoder() -> Encoder {
    let encoder = Encoder::new(EncoderConfig::reference(BackboneKind::SmallConv, 1, true, 3)).unwrap();
    encoder.update_prune_mask(0.5).unwrap();
    encoder
}

/// A contrastive loss over the whole batch (every row's loss depends on every other row), and
/// its gradient with respect to each embedding by candle's autodiff: the stand-in objective.
fn global_loss_gradients(embeddings: &[Tensor]) -> Vec<Tensor> {
    let vars: Vec<Var> = embeddings.iter().map(|e| Var::from_tensor(e).unwrap()).collect();
    let unit = |z: &Tensor| z.broadcast_div(&z.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap()).unwrap();
    let (a, b) = (unit(vars[0].as_tensor()), unit(vars[1].as_tensor()));
    let logits = (a.matmul(&b.t().unwrap()).unwrap() * 5.0).unwrap();
    let positives = (&a * &b).unwrap().sum(1).unwrap();
    let lse = logits.exp().unwrap().sum(D::Minus1).unwrap().log().unwrap();
    let loss = ((lse - (positives * 5.0).unwrap()).unwrap().mean_all().unwrap()
        + vars[0].as_tensor().sqr().unwrap().mean_all().unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    vars.iter().map(|v| grads.get(v.as_tensor()).unwrap().clone()).collect()
}

/// Parameter gradients of one process training on the whole batch.
fn single_process() -> Vec<Vec<f32>> {
    let encoder = encoder();
    let embeddings = forward_embeddings(&encoder, &specs(), &views()).unwrap();
    let detached: Vec<Tensor> = embeddings.iter().map(Tensor::detach).collect();
    let grads = backpropagate(&embeddings, &global_loss_gradients(&detached)).unwrap();
    encoder
        .parameters()
        .iter()
        .map(|(_, p)| grads.get(p.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

/// Parameter gradients of each of `world` ranks after the data-parallel step.
fn data_parallel(world: usize, sync_batch_norm: bool) -> Vec<Vec<Vec<f32>>> {
    let ranks: Vec<_> = Simulated::group(world)
        .into_iter()
        .map(|rank| {
            std::thread::spawn(move || {
                let collective: Arc<dyn Collective> = Arc::new(rank);
                let encoder = encoder();
                encoder.synchronize_batch_norm(sync_batch_norm.then(|| collective.clone())).unwrap();
                let shard = Shard::of(collective.as_ref(), BATCH).unwrap();
                let [v1, v2] = views();
                let local = BATCH / world;
                let own = [
                    v1.narrow(0, shard.rank * local, local).unwrap(),
                    v2.narrow(0, shard.rank * local, local).unwrap(),
                ];
                let embeddings = forward_embeddings(&encoder, &specs(), &own).unwrap();
                let global: Vec<Tensor> =
                    embeddings.iter().map(|e| dist::gather_rows(collective.as_ref(), e).unwrap()).collect();
                let own_grads: Vec<Tensor> = global_loss_gradients(&global)
                    .iter()
                    .map(|g| dist::own_rows(collective.as_ref(), g).unwrap())
                    .collect();
                let grads = backpropagate(&embeddings, &own_grads).unwrap();
                let grads = dist::all_reduce_gradients(collective.as_ref(), encoder.parameters(), grads).unwrap();
                encoder
                    .parameters()
                    .iter()
                    .map(|(_, p)| grads.get(p.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap())
                    .collect::<Vec<Vec<f32>>>()
            })
        })
        .collect();
    ranks.into_iter().map(|r| r.join().unwrap()).collect()
}

/// The largest difference relative to the largest magnitude, over all parameters.
fn relative_difference(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    let scale = a.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().flatten().zip(b.iter().flatten()).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

#[test]
fn the_data_parallel_gradient_is_the_global_losss_gradient() {
    let reference = single_process();
    for world in [2, 3] {
        let ranks = data_parallel(world, true);
        for (rank, grads) in ranks.iter().enumerate() {
            let difference = relative_difference(&reference, grads);
            assert!(difference < 1e-4, "W = {world}, rank {rank}: gradient differs by {difference} (relative)");
            assert_eq!(grads, &ranks[0], "W = {world}: rank {rank}'s summed gradient differs from rank 0's");
        }
    }
}

#[test]
fn without_synchronised_batch_norm_the_gradient_differs() {
    let reference = single_process();
    let difference = relative_difference(&reference, &data_parallel(2, false)[0]);
    assert!(difference > 1e-2, "per-rank BatchNorm should change the gradient, differs by only {difference}");
}

#[test]
fn an_indivisible_batch_is_refused_with_the_fix() {
    let group = Simulated::group(3);
    let message = Shard::of(&group[0], 64).unwrap_err().to_string();
    assert!(message.contains("64") && message.contains("3 ranks") && message.contains("--batch-size"), "{message}");
}
