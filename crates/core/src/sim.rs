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
    /// Log-normal latencies; `None` for no latency data.
    pub latency: Option<Latency>,
}

/// Log-normal latencies of both variants: medians in ms and spreads (the sigma of the
/// log). A wider spread with the same median is a worse tail.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    /// Stable's median, ms.
    pub stable_ms: f64,
    /// Stable's spread.
    pub stable_sigma: f64,
    /// The canary's median, ms.
    pub canary_ms: f64,
    /// The canary's spread.
    pub canary_sigma: f64,
}

impl Latency {
    /// Both variants with the same spread.
    pub fn medians(stable_ms: f64, canary_ms: f64, sigma: f64) -> Latency {
        Latency {
            stable_ms,
            stable_sigma: sigma,
            canary_ms,
            canary_sigma: sigma,
        }
    }

    /// The same median on both variants, and a canary whose `q` quantile is `factor`
    /// times stable's (a slower tail).
    pub fn tail(median_ms: f64, sigma: f64, q: f64, factor: f64) -> Latency {
        Latency {
            stable_ms: median_ms,
            stable_sigma: sigma,
            canary_ms: median_ms,
            canary_sigma: sigma + factor.ln() / normal_quantile(q),
        }
    }
}

/// The standard normal quantile (Acklam's rational approximation, relative error
/// below 1.2e-9), for `p` in (0, 1).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        let r = (-2.0 * q.ln()).sqrt();
        (((((C[0] * r + C[1]) * r + C[2]) * r + C[3]) * r + C[4]) * r + C[5])
            / ((((D[0] * r + D[1]) * r + D[2]) * r + D[3]) * r + 1.0)
    };
    if p < 0.02425 {
        tail(p)
    } else if p > 1.0 - 0.02425 {
        -tail(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
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
                self.latency.map(|l| (l.stable_ms, l.stable_sigma)),
            );
            let canary = variant(
                canary_n,
                self.canary_error_rate,
                self.latency.map(|l| (l.canary_ms, l.canary_sigma)),
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
            latency: Some(Latency::medians(50.0, 75.0, 0.5)),
        };
        assert_eq!(s.draw(&mut Rng::new(1)), s.draw(&mut Rng::new(1)));
        assert_ne!(s.draw(&mut Rng::new(1)), s.draw(&mut Rng::new(2)));
    }

    #[test]
    fn normal_quantiles_match_the_tables() {
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959_964),
            (0.99, 2.326_348),
            (0.01, -2.326_348),
        ] {
            assert!(
                (normal_quantile(p) - z).abs() < 1e-5,
                "{p}: {}",
                normal_quantile(p)
            );
        }
    }

    #[test]
    fn a_tail_regression_moves_the_quantile_and_not_the_median() {
        let l = Latency::tail(50.0, 0.5, 0.99, 3.0);
        let stream = Stream {
            seconds: 200,
            rps: 1000,
            canary_share: 0.5,
            stable_error_rate: 0.0,
            canary_error_rate: 0.0,
            latency: Some(l),
        };
        let w = stream.draw(&mut Rng::new(3)).window(0, 200);
        let (s, c) = (&w.stable.latency, &w.canary.latency);
        let ratio = |q| c.quantile_ms(q).unwrap() / s.quantile_ms(q).unwrap();
        assert!(
            (ratio(0.5) - 1.0).abs() < 0.05,
            "median ratio {}",
            ratio(0.5)
        );
        assert!((ratio(0.99) - 3.0).abs() < 0.3, "p99 ratio {}", ratio(0.99));
    }
}
