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
