//! Replay: the real state machine and judges on recorded traffic, in simulated time.
//!
//! Owns the simulated world of a replay: every action succeeds at once (gates are not
//! run, versions are "ready", the router obeys), and measurements read the recorded
//! seconds of the window each [`Action::Measure`] carries. The recorded split between
//! the variants is used as recorded; the policy's weights do not re-split it. Approval
//! points count as approved. Pure and deterministic.

use crate::metrics::IntervalSample;
use crate::policy::Policy;
use crate::release::{Action, AuditEvent, GateResult, Input, Release, step};
use crate::samples::Samples;
use crate::units::Millis;

/// How a replay ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Replayed {
    /// The final state.
    pub release: Release,
    /// Every audit event, in order.
    pub timeline: Vec<AuditEvent>,
}

/// Upper bound on inputs, so that no policy can make a replay run forever.
const MAX_INPUTS: usize = 10_000_000;

/// Replays `samples` through the release state machine under `policy`. `observe` sees
/// every transition (for progress output). The release starts at simulated second 0.
pub fn replay(
    policy: &Policy,
    samples: &Samples,
    observe: impl FnMut(&Input, &Release, &[AuditEvent]),
) -> Replayed {
    replay_with(policy, |from_s, to_s| samples.window(from_s, to_s), observe)
}

/// [`replay`] with the measurements `measure(from_s, to_s)` gives for each window, in
/// simulated seconds: a simulation can add what recorded samples do not hold (the
/// readings of a policy's queries).
pub fn replay_with(
    policy: &Policy,
    mut measure: impl FnMut(u64, u64) -> IntervalSample,
    mut observe: impl FnMut(&Input, &Release, &[AuditEvent]),
) -> Replayed {
    let mut state = Release::default();
    let mut timeline = Vec::new();
    let mut now: Millis = 0;
    let mut input = Input::Start {
        release_id: "replay".into(),
        version: "canary".into(),
        stable: Some("stable".into()),
        automatic_rollbacks: 0,
        initiator: String::new(),
        planned_migrations: None,
        hotfix: None,
    };
    for _ in 0..MAX_INPUTS {
        let t = step(policy, &state, &input, now);
        if !t.is_noop(&state) {
            observe(&input, &t.state, &t.events);
            timeline.extend(t.events);
        }
        state = t.state;
        if state.phase.is_terminal() {
            break;
        }
        input = match &state.pending {
            Some(Action::RunGates) => Input::GatesChecked {
                results: policy
                    .gates
                    .pre
                    .iter()
                    .map(|g| GateResult {
                        name: g.name.clone(),
                        ok: true,
                        detail: "not run in a replay".into(),
                    })
                    .collect(),
            },
            Some(Action::Deploy { variant, .. }) => Input::Deployed {
                variant: *variant,
                ok: true,
                detail: "recorded".into(),
            },
            Some(Action::SetWeight { weight, .. }) => Input::TrafficSet { weight: *weight },
            Some(Action::Measure(window)) => Input::Measured {
                sample: measure(window.from / 1000, window.to / 1000),
            },
            Some(Action::Stop { variant }) => Input::Stopped {
                variant: *variant,
                ok: true,
                detail: "recorded".into(),
            },
            Some(Action::Scale {
                variant, replicas, ..
            }) => Input::Scaled {
                variant: *variant,
                replicas: *replicas,
                ok: true,
                detail: "recorded".into(),
            },
            Some(Action::RunMigrations) => Input::Migrated {
                ok: true,
                class: crate::migrations::Class::Expand,
                detail: "not run in a replay".into(),
                annotations: Vec::new(),
            },
            Some(Action::RunChecks { stage }) => Input::ChecksDone {
                stage: *stage,
                results: Vec::new(),
            },
            Some(Action::VerifyStable) => Input::StableVerified {
                healthy: true,
                detail: "assumed in a replay".into(),
            },
            Some(Action::FlagsOff { flags }) => Input::FlagsOff {
                ok: true,
                detail: format!("{} off (replay)", flags.join(", ")),
            },
            // Nobody can approve a replay; approval points count as approved.
            None if state.phase == crate::release::Phase::AwaitingApproval => Input::Approved {
                by: "replay".into(),
                asked_at: None,
            },
            None => match state.wake_at() {
                Some(at) => {
                    now = now.max(at);
                    Input::Tick
                }
                None => break,
            },
        };
    }
    Replayed {
        release: state,
        timeline,
    }
}
