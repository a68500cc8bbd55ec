//! Seeded traffic simulation for the decision benchmark and the judges' statistical
//! tests. Pure: the same seed always gives the same streams.

use crate::metrics::{Histogram, IntervalSample, VariantStats};
use crate::samples::Samples;

/// SplitMix64: small, fast, and good enough for simulation.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Binomial(n, p), exactly, by skipping geometric gaps between successes: O(np).
    pub fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if p <= 0.0 || n == 0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        if p > 0.5 {
            return n - self.binomial(n, 1.0 - p);
        }
        let log_q = (1.0 - p).ln();
        let mut successes = 0;
        let mut position = 0u64;
        loop {
            let gap = (self.unit().ln() / log_q).floor() as u64 + 1;
            position = position.saturating_add(gap);
            if position > n {
                return successes;
            }
            successes += 1;
        }
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// One simulated release's traffic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stream {
    /// Seconds of traffic.
    pub seconds: u64,
    /// Requests per second, both variants together.
    pub rps: u64,
    /// The canary's share of requests.
    pub canary_share: f64,
    /// Stable's error rate.
    pub stable_error_rate: f64,
    /// The canary's error rate.
    pub canary_error_rate: f64,
    /// Median latencies (stable, canary) in ms and the log-normal spread; `None` for no
    /// latency data.
    pub latency: Option<(f64, f64, f64)>,
}

impl Stream {
    /// Draws the stream.
    pub fn draw(&self, rng: &mut Rng) -> Samples {
        let mut seconds = Vec::with_capacity(usize::try_from(self.seconds).unwrap_or(0));
        for t in 0..self.seconds {
            let canary_n = rng.binomial(self.rps, self.canary_share);
            let stable_n = self.rps - canary_n;
            let mut variant = |n: u64, rate: f64, median: Option<(f64, f64)>| {
                let mut latency = Histogram::default();
                if let Some((m, sigma)) = median {
                    for _ in 0..n {
                        let ms = m * (sigma * rng.normal()).exp();
                        latency.record_micros((ms * 1000.0) as u64);
                    }
                }
                VariantStats {
                    requests: n,
                    errors: rng.binomial(n, rate),
                    latency,
                    ..VariantStats::default()
                }
            };
            let stable = variant(
                stable_n,
                self.stable_error_rate,
                self.latency.map(|(s, _, sg)| (s, sg)),
            );
            let canary = variant(
                canary_n,
                self.canary_error_rate,
                self.latency.map(|(_, c, sg)| (c, sg)),
            );
            seconds.push((
                t,
                IntervalSample {
                    stable,
                    canary,
                    ..Default::default()
                },
            ));
        }
        Samples::from_seconds(seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_has_the_right_mean_and_variance() {
        let mut rng = Rng::new(7);
        for (n, p) in [(200u64, 0.005), (20, 0.3), (1000, 0.9)] {
            let k = 20_000;
            let draws: Vec<f64> = (0..k).map(|_| rng.binomial(n, p) as f64).collect();
            let mean = draws.iter().sum::<f64>() / k as f64;
            let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / k as f64;
            let (m, v) = (n as f64 * p, n as f64 * p * (1.0 - p));
            assert!(
                (mean - m).abs() < 4.0 * (v / k as f64).sqrt(),
                "mean {mean} vs {m}"
            );
            assert!((var - v).abs() / v < 0.05, "var {var} vs {v}");
        }
    }

    #[test]
    fn same_seed_same_stream() {
        let s = Stream {
            seconds: 30,
            rps: 200,
            canary_share: 0.1,
            stable_error_rate: 0.005,
            canary_error_rate: 0.01,
            latency: Some((50.0, 75.0, 0.5)),
        };
        assert_eq!(s.draw(&mut Rng::new(1)), s.draw(&mut Rng::new(1)));
        assert_ne!(s.draw(&mut Rng::new(1)), s.draw(&mut Rng::new(2)));
    }
}
