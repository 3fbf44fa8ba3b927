//! numpy's legacy global RNG (`np.random.seed` + `np.random.shuffle`): MT19937 with Knuth's
//! integer seeding, and the Fisher-Yates shuffle drawing bounded integers by mask-and-reject.
//! The reference picks its long-tailed CIFAR subsets with it, so implementing it bit for bit is
//! the only way to train on the very same images.

const STATE_LEN: usize = 624;
const SHIFT: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

pub struct Mt19937 {
    state: [u32; STATE_LEN],
    position: usize,
}

impl Mt19937 {
    /// `np.random.seed(seed)` for an integer seed.
    pub fn new(seed: u32) -> Mt19937 {
        let mut state = [0u32; STATE_LEN];
        state[0] = seed;
        for i in 1..STATE_LEN {
            let previous = state[i - 1];
            state[i] = 1_812_433_253u32.wrapping_mul(previous ^ (previous >> 30)).wrapping_add(i as u32);
        }
        Mt19937 { state, position: STATE_LEN }
    }

    fn regenerate(&mut self) {
        for i in 0..STATE_LEN {
            let y = (self.state[i] & UPPER_MASK) | (self.state[(i + 1) % STATE_LEN] & LOWER_MASK);
            let mut next = self.state[(i + SHIFT) % STATE_LEN] ^ (y >> 1);
            if y & 1 == 1 {
                next ^= MATRIX_A;
            }
            self.state[i] = next;
        }
        self.position = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.position >= STATE_LEN {
            self.regenerate();
        }
        let mut y = self.state[self.position];
        self.position += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// A uniform integer in `0..=max`, numpy's `random_interval`: mask to the smallest covering
    /// power of two and reject values above `max`.
    pub fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16] {
            mask |= mask >> shift;
        }
        loop {
            let value = self.next_u32() & mask;
            if value <= max {
                return value;
            }
        }
    }

    /// `np.random.shuffle` of a 1-D array.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.interval(i as u32) as usize;
            items.swap(i, j);
        }
    }
}
