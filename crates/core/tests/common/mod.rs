//! What the state machine's review tests share.

use rampart_core::metrics::VariantStats;
use rampart_core::migrations::Class;
use rampart_core::release::{Action, GateResult, Input};

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
