//! W ranks as W threads of one process: the collective the unit tests run data-parallel steps
//! with, no launcher needed.

use std::sync::{Arc, Condvar, Mutex};

use super::{Collective, DistError};

struct Round {
    /// Completed rounds; a rank waits for this to move past the round it joined.
    generation: u64,
    arrived: usize,
    slots: Vec<Vec<f32>>,
    /// What every rank contributed to the last completed round, in rank order.
    results: Arc<Vec<Vec<f32>>>,
}

struct Shared {
    world: usize,
    round: Mutex<Round>,
    done: Condvar,
}

/// One rank of an in-process group; hand each rank's handle to its own thread.
pub struct Simulated {
    rank: usize,
    shared: Arc<Shared>,
}

impl Simulated {
    /// The `world` ranks of a new group, in rank order.
    pub fn group(world: usize) -> Vec<Simulated> {
        let round = Round { generation: 0, arrived: 0, slots: vec![Vec::new(); world], results: Arc::default() };
        let shared = Arc::new(Shared { world, round: Mutex::new(round), done: Condvar::new() });
        (0..world).map(|rank| Simulated { rank, shared: shared.clone() }).collect()
    }

    /// Every rank's contribution to this round, once all have arrived.
    fn exchange(&self, data: Vec<f32>) -> Result<Arc<Vec<Vec<f32>>>, DistError> {
        let poisoned = |_| DistError::Setup("a simulated rank panicked".into());
        let mut round = self.shared.round.lock().map_err(poisoned)?;
        round.slots[self.rank] = data;
        round.arrived += 1;
        let joined = round.generation;
        if round.arrived == self.shared.world {
            let slots = std::mem::replace(&mut round.slots, vec![Vec::new(); self.shared.world]);
            round.results = Arc::new(slots);
            round.arrived = 0;
            round.generation += 1;
            self.shared.done.notify_all();
            return Ok(round.results.clone());
        }
        while round.generation == joined {
            round = self.shared.done.wait(round).map_err(poisoned)?;
        }
        Ok(round.results.clone())
    }

    fn same_lengths(&self, what: &'static str, all: &[Vec<f32>]) -> Result<(), DistError> {
        match all.iter().position(|part| part.len() != all[0].len()) {
            Some(rank) => Err(DistError::Mismatch { what, rank, got: all[rank].len(), expected: all[0].len() }),
            None => Ok(()),
        }
    }
}

impl Collective for Simulated {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.shared.world
    }
    fn all_gather(&self, local: &[f32]) -> Result<Vec<f32>, DistError> {
        let all = self.exchange(local.to_vec())?;
        self.same_lengths("all_gather", &all)?;
        Ok(all.concat())
    }
    fn all_reduce_sum(&self, values: &mut [f32]) -> Result<(), DistError> {
        let all = self.exchange(values.to_vec())?;
        self.same_lengths("all_reduce_sum", &all)?;
        // In rank order on every rank: bitwise the same result everywhere.
        values.fill(0.0);
        for part in all.iter() {
            values.iter_mut().zip(part).for_each(|(sum, value)| *sum += value);
        }
        Ok(())
    }
    fn broadcast(&self, values: &mut [f32], root: usize) -> Result<(), DistError> {
        let all = self.exchange(values.to_vec())?;
        self.same_lengths("broadcast", &all)?;
        values.copy_from_slice(&all[root]);
        Ok(())
    }
    fn barrier(&self) -> Result<(), DistError> {
        self.exchange(Vec::new()).map(|_| ())
    }
}
