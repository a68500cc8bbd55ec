//! The state machine's entry point: [`step`] dispatches one input (and a stale answer
//! or a tick) to the phase that handles it, and replaying inputs through it rebuilds a
//! release. It must not hold a phase's logic itself beyond that dispatch.

use super::builder::{Builder, ms, window_closed};
use super::divergence::{self, superseded};
use super::gating::{ask_hotfix_approval, block, gates_checked, migrated, open_or_wait, start};
use super::model::{Phase, PreApproval, Release, Transition};
use super::operator::{abort, abortable, apply_deferred, approved, pause, promote, unpause};
use super::progress::{
    after_full, deployed, full_traffic_due, inconclusive, keep_or_stop_previous, measured,
    start_progressing, step_in_force, succeed, watched,
};
use super::protocol::{Action, CheckStage, Input, Variant};
use super::resume::{ensured, resume};
use super::rollback::{flags_off, rolled_back, verify_level_one};
use super::silence;
use crate::policy::Policy;
use crate::units::Millis;

impl Release {
    /// Rebuilds a release from its persisted inputs, in log order. A log that holds an
    /// [`Input::RulesChanged`] skips the entries it stands for
    /// ([`superseded`](super::superseded)).
    pub fn replay<'a>(
        policy: &Policy,
        inputs: impl IntoIterator<Item = (&'a Input, Millis)>,
    ) -> Release {
        let inputs: Vec<(&Input, Millis)> = inputs.into_iter().collect();
        let skipped = superseded(&inputs.iter().map(|(i, _)| *i).collect::<Vec<_>>());
        inputs
            .into_iter()
            .enumerate()
            .filter(|(n, _)| !skipped.as_ref().is_some_and(|r| r.contains(n)))
            .fold(Release::default(), |state, (_, (input, at))| {
                step(policy, &state, input, at).state
            })
    }

    /// When the log first asked for traffic on the canary (the time of the entry whose
    /// transition left a weight above 0 asked, [`Release::weight_asked`]), as
    /// [`Release::replay`] replays it; `None` if it never did. A controller that died
    /// before logging the router's answer may have put that weight in force.
    pub fn first_weight_asked<'a>(
        policy: &Policy,
        inputs: impl IntoIterator<Item = (&'a Input, Millis)>,
    ) -> Option<Millis> {
        first_step(policy, inputs, Release::weight_asked).map(|(_, at, _)| at)
    }

    /// The entry that ended the release, as [`Release::replay`] replays the log: the
    /// state just before it and its index; `None` when the log does not end it.
    pub fn before_end<'a>(
        policy: &Policy,
        inputs: impl IntoIterator<Item = (&'a Input, Millis)>,
    ) -> Option<(Release, usize)> {
        first_step(policy, inputs, |s| s.phase.is_terminal()).map(|(n, _, before)| (before, n))
    }
}

/// Replays `inputs` as [`Release::replay`] does, up to the first entry after which
/// `after` holds of the state: that entry's index, its time and the state before it.
fn first_step<'a>(
    policy: &Policy,
    inputs: impl IntoIterator<Item = (&'a Input, Millis)>,
    after: impl Fn(&Release) -> bool,
) -> Option<(usize, Millis, Release)> {
    let inputs: Vec<(&Input, Millis)> = inputs.into_iter().collect();
    let skipped = superseded(&inputs.iter().map(|(i, _)| *i).collect::<Vec<_>>());
    let mut state = Release::default();
    for (n, (input, at)) in inputs.into_iter().enumerate() {
        if skipped.as_ref().is_some_and(|r| r.contains(&n)) {
            continue;
        }
        let next = step(policy, &state, input, at).state;
        if after(&next) {
            return Some((n, at, state));
        }
        state = next;
    }
    None
}

/// Whether `input` is the answer to an action (not to a silence operation).
pub(super) fn is_answer(input: &Input) -> bool {
    matches!(
        input,
        Input::GatesChecked { .. }
            | Input::Deployed { .. }
            | Input::TrafficSet { .. }
            | Input::TrafficFailed { .. }
            | Input::Measured { .. }
            | Input::MeasureFailed { .. }
            | Input::Stopped { .. }
            | Input::StableVerified { .. }
            | Input::Migrated { .. }
            | Input::Scaled { .. }
            | Input::ChecksDone { .. }
            | Input::FlagsOff { .. }
    )
}

/// Whether `input` answers `pending`.
pub(super) fn answers(pending: Option<&Action>, input: &Input) -> bool {
    match (pending, input) {
        (Some(Action::RunGates), Input::GatesChecked { .. }) => true,
        (Some(Action::Deploy { variant, .. }), Input::Deployed { variant: v, .. }) => variant == v,
        (Some(Action::SetWeight { weight, .. }), Input::TrafficSet { weight: w }) => weight == w,
        (Some(Action::SetWeight { .. }), Input::TrafficFailed { .. }) => true,
        (Some(Action::Measure(_)), Input::Measured { .. } | Input::MeasureFailed { .. }) => true,
        (Some(Action::Stop { variant }), Input::Stopped { variant: v, .. }) => variant == v,
        (Some(Action::VerifyStable), Input::StableVerified { .. }) => true,
        (Some(Action::RunChecks { stage }), Input::ChecksDone { stage: s, .. }) => stage == s,
        (Some(Action::RunMigrations), Input::Migrated { .. }) => true,
        (Some(Action::FlagsOff { .. }), Input::FlagsOff { .. }) => true,
        (
            Some(Action::Scale {
                variant, replicas, ..
            }),
            Input::Scaled {
                variant: v,
                replicas: r,
                ..
            },
        ) => variant == v && replicas == r,
        _ => false,
    }
}

fn is_success(input: &Input) -> bool {
    match input {
        Input::Deployed { ok, .. } | Input::Stopped { ok, .. } | Input::Scaled { ok, .. } => *ok,
        Input::GatesChecked { results } => results.iter().all(|r| r.ok),
        Input::TrafficSet { .. } | Input::Measured { .. } => true,
        Input::StableVerified { healthy, .. } => *healthy,
        Input::ChecksDone { results, .. } => results.iter().all(|r| r.ok),
        Input::FlagsOff { ok, .. } => *ok,
        _ => false,
    }
}

/// Advances a release by one input.
///
/// Guarantees:
/// - Pure and deterministic: same `(policy, state, input, now)`, same transition.
/// - At most one [`Effect::Do`] per transition.
/// - Once a rollback or halt is decided, no emitted weight is above the current one.
/// - In [`Phase::Halted`] nothing but human-driven inputs (none yet) changes anything.
/// - A release over changes nothing but its silence's record: the silence is expired
///   after the end (again after a restart, until an answer says it is).
/// - An answer about the silence changes nothing but the silence's record.
/// - [`Input::RulesChanged`] takes the release over whatever its phase, with the course
///   its log recorded: it is fed when the log replays differently (see `divergence`).
pub fn step(policy: &Policy, state: &Release, input: &Input, now: Millis) -> Transition {
    let mut b = Builder {
        policy,
        now,
        s: state.clone(),
        effects: Vec::new(),
        events: Vec::new(),
    };
    if silence::is_answer(input) {
        silence::answered(&mut b, input);
    } else if let Input::RulesChanged { .. } = input {
        divergence::take_over(&mut b, input);
    } else if state.phase.is_terminal() {
        if let Input::Resumed = input {
            silence::expire(&mut b);
        }
    } else if is_answer(input) && !answers(state.pending.as_ref(), input) {
        // A stale answer changes nothing at all (not even the silence's renewal, left
        // to the next tick): it is never recorded, so a log's answers all answered.
    } else {
        dispatch(&mut b, state, input);
        silence::follow(&mut b, state.phase == Phase::Pending, input);
    }
    b.finish()
}

/// Hands one input to the phase that handles it.
fn dispatch(b: &mut Builder<'_>, state: &Release, input: &Input) {
    match input {
        Input::Start {
            release_id,
            version,
            stable,
            automatic_rollbacks,
            initiator,
            planned_migrations,
            hotfix,
        } => {
            if state.phase == Phase::Pending {
                b.s.prior_automatic_rollbacks = *automatic_rollbacks;
                b.s.initiator = initiator.clone();
                b.s.planned_migrations = *planned_migrations;
                start(b, release_id, version, stable.clone());
                match hotfix {
                    Some(why) => ask_hotfix_approval(b, why),
                    None => open_or_wait(b),
                }
            }
        }
        Input::Resumed => resume(b),
        Input::Approved { by, asked_at } => approved(b, by, *asked_at),
        Input::Pause { actor, reason } => pause(b, actor, reason),
        Input::Unpause { actor } => unpause(b, actor),
        Input::Promote {
            actor,
            reason,
            frozen,
        } => promote(b, actor, reason, frozen.as_deref()),
        Input::Tick => tick(b),
        // Handled before any phase sees it.
        Input::RulesChanged { .. } => {}
        Input::Abort {
            actor,
            reason,
            force,
        } => abort(b, actor, reason, *force),
        answer => {
            if !answers(state.pending.as_ref(), answer) {
                return;
            }
            b.s.pending = None;
            if let (Some(Action::Measure(window)), Input::Measured { .. }) =
                (state.pending.as_ref(), answer)
            {
                b.s.measured_until = Some(window.to);
                b.s.read_until = Some(b.s.read_until.unwrap_or(0).max(window.to));
            }
            // A failed measurement's window is read again with the next one: a fresh
            // window (a step's first) keeps its start, as any other keeps its.
            if let (Some(Action::Measure(window)), Input::MeasureFailed { .. }) =
                (state.pending.as_ref(), answer)
            {
                b.s.measured_until.get_or_insert(window.from);
            }
            if let Input::TrafficSet { weight } = answer {
                b.s.weight = *weight;
            }
            // A rollback asked while this change was in flight starts now, from the
            // weight in force: before whatever the change led to (a step begun, a
            // promotion ended; or, when it failed, the automatic rollback: the
            // operator's, with their name and `force`).
            if matches!(b.s.deferred, Some(Input::Abort { .. }))
                && abortable(&b.s)
                && matches!(
                    answer,
                    Input::TrafficSet { .. } | Input::TrafficFailed { .. }
                )
            {
                match answer {
                    Input::TrafficSet { weight } => {
                        b.event("weight_set", "rampart", format!("canary weight {weight}"));
                    }
                    Input::TrafficFailed { detail } => b.event(
                        "traffic_failed",
                        "rampart",
                        format!("the traffic change failed: {detail}"),
                    ),
                    _ => {}
                }
                b.s.queued.clear();
                return apply_deferred(b);
            }
            if let Input::Scaled {
                variant,
                replicas,
                ok: true,
                detail,
            } = answer
            {
                match variant {
                    Variant::Stable => b.s.stable_replicas = *replicas,
                    Variant::Canary => b.s.canary_replicas = *replicas,
                }
                b.event(
                    "scaled",
                    "rampart",
                    format!("{} at {replicas} replica(s): {detail}", variant.as_str()),
                );
            }
            if is_success(answer) && !b.s.queued.is_empty() {
                if let Input::TrafficSet { weight } = answer {
                    b.event("weight_set", "rampart", format!("canary weight {weight}"));
                }
                if let Input::Deployed {
                    variant, detail, ..
                } = answer
                {
                    b.event(
                        "version_ready",
                        "rampart",
                        format!("{} ready: {detail}", variant.as_str()),
                    );
                }
                let next = b.s.queued.remove(0);
                b.act(next);
                return;
            }
            b.s.queued.clear();
            on_answer(b, answer);
            // The work a deferred command waited for is done (or failed: then the
            // command finds the release in a phase that refuses it).
            apply_deferred(b);
        }
    }
}

fn tick(b: &mut Builder<'_>) {
    if b.s.pending.is_some() {
        return;
    }
    let due = |t: Option<Millis>| t.is_some_and(|t| t <= b.now);
    match b.s.phase {
        Phase::Progressing | Phase::RollingBack | Phase::Watching if due(b.s.next_analysis_at) => {
            // A clock behind the one that read last (a controller taken over on
            // another host) would measure a window cut short by the last read's end,
            // down to nothing: little or no data, counted toward `no_data.limit`.
            // While a step or the watch is judged, a short window waits until a
            // whole interval has passed after that end. One that would be empty (a
            // clock behind by more than an interval, which is broken) is measured
            // as before: no data, which says why and halts the release at the limit
            // rather than hold it unseen. Never during a rollback, whose checks must
            // not wait.
            let interval = ms(b.policy.analysis.interval);
            if matches!(b.s.phase, Phase::Progressing | Phase::Watching)
                && let Some(end) = b.s.read_until
                && end <= b.now
                && b.now < end + interval
            {
                b.s.next_analysis_at = Some(end + interval);
                return;
            }
            let window = b.measure_window();
            b.act(Action::Measure(window));
        }
        Phase::Verifying if due(b.s.timer) => {
            b.s.timer = None;
            b.act(Action::RunChecks {
                stage: CheckStage::PostRelease,
            });
        }
        Phase::AwaitingApproval if due(b.s.timer) && b.s.approving == Some(PreApproval::Window) => {
            b.s.timer = None;
            // Taken up late (the controller was down past the opening), the window may
            // have closed again, or a freeze begun: asked again (the same wait).
            if window_closed(b).is_some() {
                return open_or_wait(b);
            }
            b.s.approving = None;
            b.event(
                "window_opened",
                "rampart",
                "the release window is open; starting".into(),
            );
            b.s.phase = Phase::Gating;
            b.act(Action::RunGates);
        }
        Phase::AwaitingApproval
            if due(b.s.timer) && b.s.approving == Some(PreApproval::FullTraffic) =>
        {
            b.s.timer = None;
            b.s.approving = None;
            full_traffic_due(b);
        }
        Phase::AwaitingApproval if due(b.s.timer) && b.s.approving.is_some() => {
            let what = match b.s.approving {
                Some(PreApproval::Hotfix) => "the hotfix during a freeze",
                _ => "the breaking migrations",
            };
            block(
                b,
                format!("{what} were not approved in time; nothing was applied or deployed"),
            );
        }
        Phase::AwaitingApproval if due(b.s.timer) => {
            b.s.timer = None;
            b.rollback(
                "rampart",
                "no approval came before the approval point timed out".into(),
            );
        }
        Phase::KeepingPrevious if due(b.s.timer) => {
            b.s.timer = None;
            b.s.phase = Phase::Promoting;
            b.s.releasing_previous = true;
            b.event(
                "previous_released",
                "rampart",
                "keep_previous ended; stopping the previous version".into(),
            );
            b.act(Action::Stop {
                variant: Variant::Stable,
            });
        }
        _ => {}
    }
}

fn on_answer(b: &mut Builder<'_>, input: &Input) {
    match (b.s.phase, input) {
        (Phase::Gating, Input::GatesChecked { results }) => gates_checked(b, results),
        (
            Phase::Migrating,
            Input::Migrated {
                ok,
                class,
                detail,
                annotations,
            },
        ) => migrated(b, *ok, *class, detail, annotations),
        (
            Phase::Deploying,
            Input::Deployed {
                variant,
                ok,
                detail,
            },
        ) => deployed(b, *variant, *ok, detail),
        (
            _,
            Input::Deployed {
                variant,
                ok,
                detail,
            },
        ) => ensured(b, *variant, *ok, detail),
        (Phase::Progressing, Input::TrafficSet { weight }) => step_in_force(b, *weight),
        (Phase::Progressing, Input::Scaled { ok: true, .. }) => step_in_force(b, b.s.weight),
        (
            Phase::Progressing | Phase::Promoting,
            Input::Scaled {
                variant, detail, ..
            },
        ) => {
            b.rollback(
                "rampart",
                format!("could not scale {}: {detail}", variant.as_str()),
            );
        }
        // A replica count re-established after a restart (rolling).
        (
            Phase::AwaitingApproval | Phase::Watching | Phase::Verifying | Phase::KeepingPrevious,
            Input::Scaled {
                variant,
                ok: false,
                detail,
                ..
            },
        ) => ensured(b, *variant, false, detail),
        (Phase::RollingBack, Input::Scaled { ok, detail, .. }) => {
            if *ok {
                b.event(
                    "canary_stopped",
                    "rampart",
                    "every replaced batch restored; the new replicas are stopped".into(),
                );
                b.act(Action::VerifyStable);
            } else {
                b.halt(format!("could not restore the previous replicas: {detail}"));
            }
        }
        // All traffic re-applied after a restart in the keep window, refused: where
        // users go is unknown, and the previous version is what is kept for that. It
        // is not stopped; a human decides.
        (Phase::KeepingPrevious, Input::TrafficFailed { detail }) => {
            b.halt(format!(
                "could not set all traffic on {} again after a restart: {detail}; the previous version keeps running",
                b.s.version
            ));
        }
        (
            Phase::Progressing | Phase::Promoting | Phase::Watching | Phase::Verifying,
            Input::TrafficFailed { detail },
        ) => {
            if b.s.releasing_previous {
                // The previous version is being stopped: nothing to switch back to.
                return b.halt(format!(
                    "could not set all traffic on {} while the previous version was being stopped: {detail}",
                    b.s.version
                ));
            }
            b.rollback(
                "rampart",
                format!("could not set the canary weight: {detail}"),
            );
        }
        (Phase::Progressing, Input::Measured { sample }) => measured(b, sample),
        (Phase::Watching, Input::Measured { sample }) => watched(b, sample),
        (Phase::Watching, Input::TrafficSet { .. }) => {
            // Re-applied after a restart: measure a fresh full interval.
            b.event(
                "traffic_restored",
                "rampart",
                format!("all traffic on {}", b.s.version),
            );
            if b.s.next_analysis_at.is_none() {
                b.start_interval();
            }
        }
        (Phase::Progressing | Phase::Watching, Input::MeasureFailed { detail }) => {
            b.event(
                "analysis",
                "rampart",
                format!("metrics unavailable: {detail}; holding at {}", b.s.weight),
            );
            inconclusive(b, false);
        }
        (Phase::Promoting, Input::TrafficSet { .. }) => {
            b.event(
                "weight_set",
                "rampart",
                format!("all traffic on {}", b.s.version),
            );
            after_full(b);
        }
        (Phase::AwaitingApproval, Input::TrafficSet { weight }) => {
            b.event(
                "traffic_restored",
                "rampart",
                format!("canary weight re-applied at {weight}"),
            );
        }
        (Phase::Verifying | Phase::KeepingPrevious, Input::TrafficSet { .. }) => {
            b.event(
                "traffic_restored",
                "rampart",
                format!("all traffic on {}", b.s.version),
            );
        }
        (Phase::Previewing, Input::ChecksDone { results, .. }) => {
            if let Some(failed) = results.iter().find(|r| !r.ok) {
                b.event(
                    "preview_failed",
                    "rampart",
                    format!("{}: {}", failed.name, failed.detail),
                );
                b.rollback(
                    "rampart",
                    format!(
                        "preview check `{}` failed before any user reached the new version: {}",
                        failed.name, failed.detail
                    ),
                );
            } else {
                b.event(
                    "preview_passed",
                    "rampart",
                    format!("{} preview check(s) passed", results.len()),
                );
                start_progressing(b);
            }
        }
        (Phase::Verifying, Input::ChecksDone { results, .. }) => {
            if let Some(failed) = results.iter().find(|r| !r.ok) {
                let reason = format!(
                    "post-release check `{}` failed: {}",
                    failed.name, failed.detail
                );
                b.event("post_release_failed", "rampart", reason.clone());
                match b.policy.post_release.as_ref().map(|p| p.on_failure) {
                    Some(crate::policy::PostFailure::Halt) => b.halt(reason),
                    _ => b.rollback("rampart", reason),
                }
            } else {
                b.event(
                    "post_release_passed",
                    "rampart",
                    format!("{} post-release check(s) passed", results.len()),
                );
                keep_or_stop_previous(b);
            }
        }
        (Phase::Promoting, Input::Stopped { ok: true, .. }) => succeed(b),
        (Phase::Promoting, Input::Stopped { detail, .. }) => {
            // The promotion's last step is verified like every other: on some
            // deployers it is the promotion itself (Kubernetes applies the new version
            // to the stable Deployment here). Never reported promoted; nothing moves.
            b.event(
                "stop_failed",
                "rampart",
                format!("promotion incomplete: {detail}"),
            );
            b.halt(format!(
                "the promotion of {} did not complete: {detail}. Traffic: the router last confirmed canary weight {} and rampart moved nothing since",
                b.s.version, b.s.weight
            ));
        }
        (Phase::RollingBack, Input::TrafficSet { .. }) if b.policy.strategy.flag_only() => {
            b.event(
                "flag_ramp_cleared",
                "rampart",
                "no user is in the flag's ramp".into(),
            );
            b.act(Action::VerifyStable);
        }
        (Phase::RollingBack, Input::TrafficSet { .. }) => {
            b.event(
                "traffic_restored",
                "rampart",
                "level 2: all traffic on stable".into(),
            );
            b.s.rollback_level = Some(3);
            b.act(Action::Stop {
                variant: Variant::Canary,
            });
        }
        (Phase::RollingBack, Input::FlagsOff { ok, detail }) => flags_off(b, *ok, detail),
        (Phase::RollingBack, Input::Measured { sample }) => verify_level_one(b, Some(sample)),
        (Phase::RollingBack, Input::MeasureFailed { detail }) => {
            b.event(
                "analysis",
                "rampart",
                format!("metrics unavailable while verifying level 1: {detail}"),
            );
            verify_level_one(b, None);
        }
        (Phase::RollingBack, Input::TrafficFailed { detail }) => {
            b.halt(format!("could not move traffic back to stable: {detail}"));
        }
        (Phase::RollingBack, Input::Stopped { ok, detail, .. }) => {
            let msg = if *ok {
                "canary stopped".to_string()
            } else {
                format!("canary did not stop cleanly ({detail}); it receives no traffic")
            };
            b.event("canary_stopped", "rampart", msg);
            if b.s.stable.is_some() {
                b.act(Action::VerifyStable);
            } else {
                rolled_back(b, "nothing to verify: there was no previous version".into());
            }
        }
        (Phase::RollingBack, Input::StableVerified { healthy, detail }) => {
            if *healthy {
                rolled_back(b, detail.clone());
            } else {
                b.halt(format!("stable is unhealthy after the rollback: {detail}"));
            }
        }
        // Anything else answers an action of an earlier phase; nothing to do.
        _ => {}
    }
}
