//! Anytime-valid sequential tests: evidence that the canary is worse than stable,
//! accumulated interval by interval, with a false-alarm probability bounded by `alpha`
//! however often it is looked at.
//!
//! Owns the e-process arithmetic. It must not know about policies or phases.
//!
//! # The test
//!
//! Both error counts and latency exceedances reduce to one question: in `n` trials, is
//! the probability of a "bad" outcome on the canary side above a null value `p0`?
//!
//! - Errors: condition on the errors seen in an interval. If the canary is no worse
//!   than stable, each error lands on the canary with probability equal to the
//!   canary's share of requests, `p0 = n_canary / (n_canary + n_stable)`. This holds
//!   whatever the baseline error rate is and however it drifts.
//! - Latency: a request is "bad" when it is slower than stable's quantile of the
//!   intervals before. Conditional on an interval's margins (each version's timed
//!   requests, the slow ones of both), the canary's slow count follows Fisher's
//!   noncentral hypergeometric law in the odds ratio ([`EProcess::update_table`]): under
//!   "no slower" it holds whatever both versions' latency does meanwhile.
//!
//! Against each alternative `p1` (a point on a grid of odds ratios above `p0`) the
//! likelihood ratio `(p1/p0)^x ((1-p1)/(1-p0))^(n-x)` has expectation at most 1 under
//! any `p <= p0`, so the product over intervals is a non-negative supermartingale, and so
//! is a weighted mixture of them. By Ville's inequality the mixture ever reaching
//! `1/alpha` has probability at most `alpha`: the test can stop at any interval.
//!
//! The test is one-sided (a canary that is *better* never accumulates evidence), and the
//! mixing weights sit on the effect sizes that matter for releases. Detection time is
//! the threshold plus the log of one over an alternative's weight, divided by how fast
//! the evidence grows: weight matters most where evidence grows slowly (odds ratios
//! 1.75 to 2.5, minutes of traffic), and a point every 15 to 40 % above it lets a large
//! effect find a close alternative within seconds. Below 1.5 there is no point: such
//! an effect needs thousands of errors whatever the weights, and its weight is better
//! spent where a release can be saved. `rampart bench decisions` measures the result
//! against the test that knows the effect (BENCHMARKS.md).

/// Odds ratios of the alternatives (canary odds of a bad outcome over the null's).
pub const GRID: [f64; 10] = [1.5, 1.75, 2.0, 2.33, 2.75, 3.25, 4.0, 5.0, 7.0, 10.0];
/// Mixing weights of the alternatives; they sum to 1.
pub const WEIGHTS: [f64; 10] = [0.08, 0.14, 0.17, 0.13, 0.11, 0.1, 0.1, 0.07, 0.06, 0.04];

/// Accumulated log-likelihood ratios, one per alternative.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EProcess {
    log_lr: Vec<f64>,
}

impl Default for EProcess {
    fn default() -> Self {
        EProcess {
            log_lr: vec![0.0; GRID.len()],
        }
    }
}

fn odds(p: f64) -> f64 {
    p / (1.0 - p)
}

impl EProcess {
    /// Adds `bad` bad outcomes out of `trials`, when the null probability of a bad
    /// outcome is at most `p0`. Does nothing without trials or with a degenerate `p0`
    /// (no information), so evidence never comes from nothing.
    pub fn update(&mut self, bad: u64, trials: u64, p0: f64) {
        if trials == 0 || bad > trials || !(p0 > 0.0 && p0 < 1.0) {
            return;
        }
        let good = (trials - bad) as f64;
        let bad = bad as f64;
        let o = odds(p0);
        for (k, r) in GRID.iter().enumerate() {
            let p1 = r * o / (1.0 + r * o);
            self.log_lr[k] += bad * (p1 / p0).ln() + good * ((1.0 - p1) / (1.0 - p0)).ln();
        }
    }

    /// Adds one interval's two-by-two table: `canary_bad` of `canary_n` canary
    /// outcomes bad, `stable_bad` of `stable_n` stable ones, when under the null the
    /// canary's odds of a bad outcome are at most `tolerance` times stable's.
    ///
    /// Conditional on the table's margins (the outcomes of each version, the bad ones
    /// of both), the canary's bad count follows Fisher's noncentral hypergeometric
    /// law in the odds ratio `psi`. Against `psi = tolerance * r` for each alternative
    /// `r`, the likelihood ratio `r^x Z(tolerance) / Z(tolerance * r)` (where `Z(t)` sums
    /// the central weights times `t^x` over the support) has expectation exactly 1 at
    /// `psi = tolerance`, and less below it (the law rises with `psi`): the product over
    /// intervals stays a supermartingale whatever the bad outcomes' rate does, the same
    /// in both versions. Unlike the share test of [`EProcess::update`], which counts
    /// only the bad outcomes, it weighs the good ones too, which matters when bad is
    /// not rare (a request slower than a median).
    pub fn update_table(
        &mut self,
        canary_bad: u64,
        canary_n: u64,
        stable_bad: u64,
        stable_n: u64,
        tolerance: f64,
    ) {
        let bad = canary_bad.saturating_add(stable_bad);
        if canary_n == 0
            || stable_n == 0
            || canary_bad > canary_n
            || stable_bad > stable_n
            || !(tolerance > 0.0 && tolerance.is_finite())
        {
            return;
        }
        let lo = bad.saturating_sub(stable_n);
        let hi = canary_n.min(bad);
        if lo == hi {
            // The margins fix the table: no information.
            return;
        }
        // The central weights' logs over the support, from their ratios (exact up to a
        // constant, which cancels).
        let mut log_h = Vec::with_capacity((hi - lo + 1) as usize);
        let mut l = 0.0;
        for x in lo..=hi {
            log_h.push(l);
            if x < hi {
                let up = ((canary_n - x) as f64).ln() + ((bad - x) as f64).ln();
                // x >= bad - stable_n, so this is at least 1.
                let down = ((x + 1) as f64).ln() + ((stable_n + x + 1 - bad) as f64).ln();
                l += up - down;
            }
        }
        let log_z = |theta: f64| {
            let lt = theta.ln();
            log_sum_exp(
                log_h
                    .iter()
                    .enumerate()
                    .map(|(i, h)| h + (lo + i as u64) as f64 * lt),
            )
        };
        let null = log_z(tolerance);
        let x = canary_bad as f64;
        for (k, r) in GRID.iter().enumerate() {
            self.log_lr[k] += x * r.ln() + null - log_z(tolerance * r);
        }
    }

    /// The log of the mixture e-value.
    pub fn log_e(&self) -> f64 {
        log_sum_exp(self.log_lr.iter().zip(WEIGHTS).map(|(l, w)| w.ln() + l))
    }

    /// The log of the mixture e-value of the outcomes added since this process stood
    /// at `start` (the same alternatives, the same weights).
    pub fn log_e_since(&self, start: &EProcess) -> f64 {
        log_sum_exp(
            self.log_lr
                .iter()
                .zip(&start.log_lr)
                .zip(WEIGHTS)
                .map(|((now, then), w)| w.ln() + now - then),
        )
    }

    /// Whether the evidence rejects "canary no worse" at level `alpha`.
    pub fn rejects(&self, alpha: f64) -> bool {
        rejects(self.log_e(), alpha)
    }
}

/// Whether a log e-value rejects "canary no worse" at level `alpha` (Ville's
/// threshold, `ln(1 / alpha)`).
pub fn rejects(log_e: f64, alpha: f64) -> bool {
    log_e >= (1.0 / alpha).ln()
}

/// `ln(sum(exp(t)))` over `terms`, without overflow; minus infinity for none.
pub fn log_sum_exp(terms: impl Iterator<Item = f64> + Clone) -> f64 {
    let max = terms.clone().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    max + terms.map(|t| (t - max).exp()).sum::<f64>().ln()
}

/// E-processes started at the start of a release and at later steps' starts, mixed.
///
/// A regression may appear only at a later step (a pool sized for a share, a cache
/// that no longer fits the traffic). Evidence carried from the first interval must then
/// first climb back what a long healthy step drove it down, so a release also tests
/// from later steps' starts. The starts are planned before any data (from the policy's
/// steps), [`FIRST_WEIGHT`] of the weight on the release's start and the rest shared
/// equally by the later ones; before its start a test is worth 1. Each is a
/// supermartingale under "canary no worse" from its own start, so the mixture is too,
/// and Ville's inequality keeps `alpha` for the release as a whole. The price: a
/// regression present from the start needs `ln(1 / FIRST_WEIGHT)` more log-evidence in
/// a release with later tests.
///
/// Every test sees the same outcomes, so a later test's log-likelihood ratios are the
/// release's since it began: each keeps only the release test's ratios at its start,
/// and an interval is one update however many tests run.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Restarts {
    /// How many later starts share the rest of the weight; 0: the release's start has it
    /// all (one step, or evidence begun before later tests were planned).
    #[serde(default, skip_serializing_if = "is_zero")]
    planned: u32,
    /// The release test's ratios when each later test began.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    began_at: Vec<EProcess>,
}

/// The release's test's share of the weight when later tests are planned. Most of it:
/// a release's first step usually has the least traffic, where evidence grows slowest
/// and weight saves the most time; the later steps' larger traffic pays for their
/// smaller shares quickly.
pub const FIRST_WEIGHT: f64 = 0.75;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Restarts {
    /// Plans `later` tests after the release's.
    pub fn new(later: usize) -> Self {
        Restarts {
            planned: u32::try_from(later).unwrap_or(u32::MAX),
            began_at: Vec::new(),
        }
    }

    /// How many later tests were planned.
    pub fn planned(&self) -> usize {
        self.planned as usize
    }

    /// How many later tests have begun (never more than planned).
    pub fn begun(&self) -> usize {
        self.began_at.len().min(self.planned())
    }

    /// Whether nothing is planned (evidence as before later tests were planned).
    pub fn is_empty(&self) -> bool {
        self.planned == 0 && self.began_at.is_empty()
    }

    /// Begins the next planned test now, where the release's test (`first`) stands;
    /// past the plan, nothing.
    pub fn begin(&mut self, first: &EProcess) {
        if self.began_at.len() < self.planned() {
            self.began_at.push(first.clone());
        }
    }

    /// The log of the mixture's e-value, given the release's test (`first`).
    pub fn log_e(&self, first: &EProcess) -> f64 {
        if self.planned == 0 {
            return first.log_e();
        }
        let later = ((1.0 - FIRST_WEIGHT) / f64::from(self.planned)).ln();
        let begun = &self.began_at[..self.begun()];
        let waiting = self.planned() - begun.len();
        let waiting = (waiting > 0).then(|| later + (waiting as f64).ln());
        log_sum_exp(
            std::iter::once(FIRST_WEIGHT.ln() + first.log_e())
                .chain(begun.iter().map(move |at| later + first.log_e_since(at)))
                .chain(waiting),
        )
    }
}

/// Shifts a null probability up by an odds tolerance: `H0: odds(p) <= odds(p0) * tol`.
pub fn tolerate(p0: f64, tolerance: f64) -> f64 {
    let o = odds(p0) * tolerance;
    o / (1.0 + o)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under the null the table's likelihood ratio averages exactly 1 for every
    /// alternative: the central law's own expectation, computed independently from
    /// binomial coefficients.
    #[test]
    fn a_table_s_likelihood_ratio_averages_one_under_the_null() {
        let (nc, ns, bad) = (12u64, 30u64, 15u64);
        let choose = |n: u64, k: u64| -> f64 {
            (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
        };
        let lo = bad.saturating_sub(ns);
        let hi = nc.min(bad);
        let weight = |x: u64| choose(nc, x) * choose(ns, bad - x);
        let all: f64 = (lo..=hi).map(weight).sum();
        let mut mean = [0.0; GRID.len()];
        for x in lo..=hi {
            let mut e = EProcess::default();
            e.update_table(x, nc, bad - x, ns, 1.0);
            for (k, m) in mean.iter_mut().enumerate() {
                *m += weight(x) / all * e.log_lr[k].exp();
            }
        }
        for m in mean {
            assert!((m - 1.0).abs() < 1e-9, "{mean:?}");
        }
        // A canary with every bad outcome gathers evidence; one with none loses it.
        // More bad outcomes than stable has outcomes: the support starts above 0.
        let mut e = EProcess::default();
        e.update_table(10, 12, 25, 30, 1.0);
        assert!(e.log_e().is_finite());
        let mut worse = EProcess::default();
        worse.update_table(12, 12, 3, 30, 1.0);
        assert!(worse.log_e() > 3.0, "{}", worse.log_e());
        let mut better = EProcess::default();
        better.update_table(0, 12, 15, 30, 1.0);
        assert!(better.log_e() < 0.0, "{}", better.log_e());
    }

    /// The mixture over planned starts is worth exactly 1 before any outcome, however
    /// many tests have begun (a begun test is worth 1, as is one still waiting), a start
    /// past the plan adds nothing, and a later test counts only what came after it.
    #[test]
    fn planned_starts_begin_at_one_and_weigh_what_was_planned() {
        let mut first = EProcess::default();
        first.update(1, 20, 0.1);
        let before = first.clone();
        let mut r = Restarts::new(3);
        r.begin(&first);
        r.begin(&first);
        let f = FIRST_WEIGHT;
        let at_start = (f * before.log_e().exp() + (1.0 - f)).ln();
        assert!((r.log_e(&first) - at_start).abs() < 1e-12);
        for _ in 0..5 {
            r.begin(&first);
        }
        assert_eq!(r.begun(), 3);
        // More outcomes: every begun test counts only them, each with a third of the
        // later tests' share.
        first.update(6, 20, 0.1);
        let mut since = EProcess::default();
        since.update(6, 20, 0.1);
        let mixed = (f * first.log_e().exp() + (1.0 - f) * since.log_e().exp()).ln();
        assert!((r.log_e(&first) - mixed).abs() < 1e-9);
        // Nothing planned: the release's test alone.
        assert_eq!(Restarts::default().log_e(&first), first.log_e());
        // Begun tests beyond the plan (a hand-edited record) weigh nothing.
        let mut over: Restarts =
            serde_json::from_str(r#"{"planned": 1, "began_at": [{"log_lr": [0,0,0,0,0,0,0,0,0,0]}, {"log_lr": [0,0,0,0,0,0,0,0,0,0]}]}"#).unwrap();
        assert_eq!(over.begun(), 1);
        assert!(over.log_e(&EProcess::default()).abs() < 1e-12);
        over.begin(&first);
        assert_eq!(over.begun(), 1);
    }

    #[test]
    fn weights_sum_to_one() {
        assert!((WEIGHTS.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(GRID.len(), WEIGHTS.len());
    }

    #[test]
    fn evidence_grows_for_a_worse_canary_and_shrinks_for_a_better_one() {
        let mut worse = EProcess::default();
        let mut better = EProcess::default();
        for _ in 0..50 {
            worse.update(6, 20, 0.1); // 30 % of errors on a 10 % share
            better.update(1, 20, 0.1);
        }
        assert!(worse.rejects(0.01));
        assert!(!better.rejects(0.5));
        assert!(better.log_e() < 0.0);
    }

    #[test]
    fn no_information_changes_nothing() {
        let mut e = EProcess::default();
        e.update(0, 0, 0.1);
        e.update(3, 5, 0.0);
        e.update(3, 5, 1.0);
        e.update(3, 5, f64::NAN);
        e.update(9, 5, 0.2);
        assert_eq!(e, EProcess::default());
        assert!((e.log_e()).abs() < 1e-12, "starts at e = 1");
    }

    #[test]
    fn tolerance_moves_the_null_up() {
        assert!((tolerate(0.5, 1.0) - 0.5).abs() < 1e-12);
        assert!(tolerate(0.5, 1.25) > 0.55 && tolerate(0.5, 1.25) < 0.56);
    }
}
