//! What the state machine's review tests share.

use rampart_core::metrics::{IntervalSample, VariantStats};
use rampart_core::migrations::Class;
use rampart_core::release::{Action, GateResult, Input};
use rampart_core::sim::Rng;

/// The successful answer to `action`, migrations applied being of `class`; `None` for
/// a measurement, which each test answers with its own sample.
pub fn succeeded(action: &Action, class: Class) -> Option<Input> {
    Some(match action.clone() {
        Action::RunGates => Input::GatesChecked { results: vec![] },
        Action::RunMigrations => Input::Migrated {
            ok: true,
            class,
            detail: String::new(),
            annotations: vec![],
        },
        Action::Scale {
            variant, replicas, ..
        } => Input::Scaled {
            variant,
            replicas,
            ok: true,
            detail: String::new(),
        },
        Action::Deploy { variant, .. } => Input::Deployed {
            variant,
            ok: true,
            detail: String::new(),
        },
        Action::SetWeight { weight, .. } => Input::TrafficSet { weight },
        Action::Measure(_) => return None,
        Action::FlagsOff { .. } => Input::FlagsOff {
            ok: true,
            detail: String::new(),
        },
        Action::Stop { variant } => Input::Stopped {
            variant,
            ok: true,
            detail: String::new(),
        },
        Action::VerifyStable => Input::StableVerified {
            healthy: true,
            detail: String::new(),
        },
        Action::RunChecks { stage } => Input::ChecksDone {
            stage,
            results: vec![GateResult {
                name: "smoke".into(),
                ok: true,
                detail: String::new(),
            }],
        },
    })
}

/// A variant's counts in an interval: `requests`, of which `errors` failed.
pub fn stats(requests: u64, errors: u64) -> VariantStats {
    VariantStats {
        requests,
        errors,
        ..VariantStats::default()
    }
}

/// An interval's error counts: stable's and the canary's (requests, errors).
#[allow(dead_code)] // not every review test judges error counts
pub fn errors(stable: (u64, u64), canary: (u64, u64)) -> IntervalSample {
    IntervalSample {
        stable: stats(stable.0, stable.1),
        canary: stats(canary.0, canary.1),
        ..Default::default()
    }
}

/// An interval of `n` requests drawn from `rng`: the canary takes each with
/// probability `weight`, stable's fail with probability `p_stable`, the canary's with
/// `p_canary` (drawn in that order).
#[allow(dead_code)] // not every review test simulates traffic
pub fn split_errors(
    rng: &mut Rng,
    n: u64,
    weight: f64,
    p_stable: f64,
    p_canary: f64,
) -> IntervalSample {
    let nc = rng.binomial(n, weight);
    errors(
        (n - nc, rng.binomial(n - nc, p_stable)),
        (nc, rng.binomial(nc, p_canary)),
    )
}

/// A release's start: `version` over `stable`, by alice.
#[allow(dead_code)] // not every review test starts releases this way
pub fn start(version: &str, stable: &str) -> Input {
    Input::Start {
        release_id: "r".into(),
        version: version.into(),
        stable: Some(stable.into()),
        automatic_rollbacks: 0,
        initiator: "alice".into(),
        planned_migrations: None,
        hotfix: None,
    }
}

/// A blue-green release that keeps the previous colour for 10 minutes after the switch.
#[allow(dead_code)] // the watch and strategies reviews'
pub const BLUE_GREEN_KEEPING: &str = r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:8080"}}
strategy:
  blue_green:
    stability: 1m
    keep_previous: 10m
analysis:
  interval: 30s
  min_samples: 10
  metrics:
    - {metric: error_rate, judge: {max: 2%}}
"#;
