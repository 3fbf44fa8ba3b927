//! The workspace's one standard-normal sampler: Box–Muller over `rand`'s uniforms.
//!
//! A crate of its own because the compiler (`randn` and `etf` constants), the runtime (initial
//! weights) and the command line and tests (random inputs) all draw normals, and neither the
//! compiler nor the runtime depends on the other. What each caller draws is fixed by its
//! results (constants equal on every machine, initial weights, recorded accuracies), so the
//! arithmetic and the order of the uniform draws here must not change.

use rand::Rng;

/// Box–Muller's radius and angle from two uniforms; its two coordinates are independent
/// standard normal samples.
#[derive(Clone, Copy, Debug)]
pub struct BoxMuller {
    radius: f64,
    angle: f64,
}

impl BoxMuller {
    /// From `u1` in (0, 1] (its log must be finite) and `u2` in [0, 1).
    pub fn new(u1: f64, u2: f64) -> BoxMuller {
        BoxMuller { radius: (-2.0 * u1.ln()).sqrt(), angle: 2.0 * std::f64::consts::PI * u2 }
    }

    /// From the next two uniforms of `rng`, the first kept off zero.
    pub fn draw<R: Rng + ?Sized>(rng: &mut R) -> BoxMuller {
        let u1 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2 = rng.random::<f64>();
        BoxMuller::new(u1, u2)
    }

    /// The first sample, `r cos θ`.
    pub fn cos(self) -> f64 {
        self.radius * self.angle.cos()
    }

    /// The second sample, `r sin θ`.
    pub fn sin(self) -> f64 {
        self.radius * self.angle.sin()
    }
}

/// One standard normal sample from the next two uniforms of `rng` (the pair's second sample
/// is not used).
pub fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    BoxMuller::draw(rng).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Hands out given words, so a test knows which uniforms are drawn.
    struct Words(std::vec::IntoIter<u64>);

    impl rand::RngCore for Words {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0.next().expect("enough words")
        }
        fn fill_bytes(&mut self, _: &mut [u8]) {
            unimplemented!("not drawn")
        }
    }

    #[test]
    fn draw_takes_the_radius_uniform_first_and_keeps_it_off_zero() {
        // A word's top 53 bits are the uniform: 1 << 63 is 0.5, 1 << 62 is 0.25.
        let pair = BoxMuller::draw(&mut Words(vec![1 << 63, 1 << 62].into_iter()));
        let radius = (2.0 * std::f64::consts::LN_2).sqrt();
        assert!(pair.cos().abs() < 1e-12, "{}", pair.cos());
        assert!((pair.sin() - radius).abs() < 1e-12, "{}", pair.sin());
        assert!(standard_normal(&mut Words(vec![0, 0].into_iter())).is_finite());
    }

    #[test]
    fn samples_look_standard_normal() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let n = 20_000;
        let xs: Vec<f64> = (0..n / 2)
            .flat_map(|_| {
                let pair = BoxMuller::draw(&mut rng);
                [pair.cos(), pair.sin()]
            })
            .collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
    }
}
