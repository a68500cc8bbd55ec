//! A release on its way forward: deploying the versions, the canary steps and their
//! bakes, analysis verdicts, holds for release windows, promotion, post-release checks
//! and keeping the previous version. It must not move weight back; that is rollback.

use std::time::Duration;

use super::analysis::{Judged, judge_interval};
use super::builder::{Builder, ms, window_closed};
use super::model::{DecisionKind, Phase, PreApproval};
use super::protocol::{Action, CheckStage, Variant};
use crate::instead::Instead;
use crate::judge::{Evidence, MetricReading, Verdict};
use crate::metrics::IntervalSample;
use crate::notice::NoticeKind;
use crate::policy::{EscalationAction, FailureCount, Judge};
use crate::units::Weight;

/// The current step's traffic is confirmed: its bake starts (or, after a restart,
/// continues).
pub(super) fn step_in_force(b: &mut Builder<'_>, weight: Weight) {
    if b.s.step_started_at.is_some() {
        b.event(
            "traffic_restored",
            "rampart",
            format!("canary weight re-applied at {weight}"),
        );
    } else {
        b.s.step_started_at = Some(b.now);
        let bake = b.policy.strategy.steps()[b.s.step].bake;
        let msg = format!(
            "step {}/{}: canary at {weight}, baking {}",
            b.s.step + 1,
            b.policy.strategy.steps().len(),
            crate::units::format_duration(bake)
        );
        b.event("weight_set", "rampart", msg.clone());
        b.notify(
            NoticeKind::Step,
            format!("{} {}: {msg}", b.policy.service, b.s.version),
        );
        return b.start_fresh_interval();
    }
    b.start_interval();
}

pub(super) fn start_deploying(b: &mut Builder<'_>) {
    b.s.phase = Phase::Deploying;
    match b.s.stable.clone() {
        Some(version) => b.act(Action::Deploy {
            variant: Variant::Stable,
            version,
        }),
        None => b.act(Action::Deploy {
            variant: Variant::Canary,
            version: b.s.version.clone(),
        }),
    }
}

pub(super) fn deployed(b: &mut Builder<'_>, variant: Variant, ok: bool, detail: &str) {
    match (variant, ok) {
        (Variant::Stable, true) => {
            b.event(
                "version_ready",
                "rampart",
                format!("stable ready: {detail}"),
            );
            if let Some(r) = b.policy.strategy.rolling() {
                // Rolling: the new version's replicas start batch by batch.
                b.s.stable_replicas = r.replicas;
                start_progressing(b);
                return;
            }
            if b.policy.strategy.flag_only() {
                // The flag-on users are the canary, on the same processes.
                start_progressing(b);
                return;
            }
            b.act(Action::Deploy {
                variant: Variant::Canary,
                version: b.s.version.clone(),
            });
        }
        (Variant::Stable, false) => {
            b.halt(format!("stable did not start, so there is nothing safe to compare with or fall back to: {detail}"));
        }
        (Variant::Canary, true) => {
            b.event(
                "version_ready",
                "rampart",
                format!("canary ready: {detail}"),
            );
            if b.s.stable.is_none() {
                // All traffic at once: never unattended outside a release window.
                if !hold_for_window(b) {
                    promote_initial(b);
                }
                return;
            }
            if b.policy.strategy.preview().is_empty() {
                start_progressing(b);
            } else {
                b.s.phase = Phase::Previewing;
                b.act(Action::RunChecks {
                    stage: CheckStage::Preview,
                });
            }
        }
        (Variant::Canary, false) => {
            b.event(
                "version_failed",
                "rampart",
                format!("canary never became ready: {detail}"),
            );
            b.rollback("rampart", format!("canary never became ready: {detail}"));
        }
    }
}

/// The wait before all traffic at once is over (approved, or its window came): the
/// move it held goes on. At the start (a first step at 100 %) the steps begin; after
/// a step (an approval step at 0 % whose next is 100 %), the next step.
pub(super) fn full_traffic_due(b: &mut Builder<'_>) {
    if b.s.stable.is_none() {
        // The window is looked at again (a wait that ended at `max_wait`, or a
        // controller down past the opening); an approval attended it already.
        if !hold_for_window(b) {
            promote_initial(b);
        }
    } else if b.s.steps_begun {
        next_step(b);
    } else {
        start_progressing(b);
    }
}

/// An initial release (no version before it): ready, it takes all traffic.
fn promote_initial(b: &mut Builder<'_>) {
    b.s.queued.clear();
    b.decide(DecisionKind::Promote, "initial release is ready".into());
    b.s.phase = Phase::Promoting;
    b.set_weight(Weight::FULL);
}

pub(super) fn start_progressing(b: &mut Builder<'_>) {
    b.s.step = 0;
    let first = &b.policy.strategy.steps()[0];
    if first.approval.is_none() && first.weight == Weight::FULL && hold_for_window(b) {
        return;
    }
    enter_step(b);
}

/// Never 100 % unattended outside a release window: when the next move would put all
/// traffic on the new version while the windows are closed, hold. With traffic on the
/// canary, analysis goes on at the current weight (a failure still rolls back) and the
/// move happens at the first clean interval once the window opens; with none (a
/// blue-green switch), the release waits for the window. A human's approval at the hold
/// counts as attending. Returns whether the release holds.
fn hold_for_window(b: &mut Builder<'_>) -> bool {
    let closed = window_closed(b);
    // An attended release goes on outside its windows, but no approval lifts a
    // calendar freeze: only a hotfix's did.
    let frozen = matches!(closed, Some((_, true, _))) && !b.s.freeze_lifted;
    let attended = b.s.window_attended || b.s.attended_until.is_some_and(|t| b.now < t);
    if attended && !frozen {
        return false;
    }
    let (Some((why, _, opens_at)), Some(w)) = (closed, b.policy.windows.as_ref()) else {
        b.s.window_hold = None;
        return false;
    };
    let until = opens_at.unwrap_or(b.now + ms(w.max_wait));
    let when = w.show(until);
    let at_weight = matches!(b.s.phase, Phase::Progressing | Phase::AwaitingApproval);
    if at_weight && b.s.weight > Weight::ZERO {
        // An approval step's approval given during a freeze: held at its weight as
        // any step, its intervals ending the hold once the freeze is over. Its
        // first window starts here, not in the approval wait before it.
        let approved = b.s.phase == Phase::AwaitingApproval;
        if approved {
            b.s.phase = Phase::Progressing;
            b.s.step_started_at.get_or_insert(b.now);
        }
        // Said once, as the hold begins.
        if b.s.window_hold.is_none() {
            b.s.awaiting_since = Some(b.now);
            let held = format!(
                "release {} of {} is ready for 100 % but it is {why}: holding at {} with analysis going on until {when}",
                b.s.version, b.policy.service, b.s.weight,
            );
            if frozen {
                let msg = format!("{held}; no approval lifts a freeze");
                b.event("holding_for_window", "rampart", msg.clone());
                b.notify(NoticeKind::Step, msg);
            } else {
                let msg = format!(
                    "{held}; an approval (by anyone but {}) promotes now, attended",
                    b.not_the_initiator()
                );
                let instead = Instead::Approve {
                    release: b.s.id.clone(),
                    not_by: b.not_the_initiator(),
                };
                b.event_offering(
                    "holding_for_window",
                    "rampart",
                    msg.clone(),
                    instead.clone(),
                );
                b.notify_offering(NoticeKind::Step, msg, Some(instead));
            }
        }
        b.s.window_hold = Some(until);
        if approved {
            b.start_fresh_interval();
        } else {
            b.start_interval();
        }
        return true;
    }
    let waiting = format!(
        "release {} of {} would switch all traffic at once but it is {why}: waiting until {when}",
        b.s.version, b.policy.service,
    );
    if frozen {
        let msg = format!("{waiting}; no approval lifts a freeze");
        b.await_window(until.saturating_sub(b.now), msg);
        return true;
    }
    let ask = format!(
        "{waiting}; an approval (by anyone but {}) switches now, attended",
        b.not_the_initiator()
    );
    b.await_approval(
        Some(PreApproval::FullTraffic),
        until.saturating_sub(b.now),
        ask,
    );
    true
}

/// Puts the current step in force: an approval point waits for a human; any other
/// step sets its traffic.
fn enter_step(b: &mut Builder<'_>) {
    b.s.steps_begun = true;
    b.s.step_started_at = None;
    b.s.next_analysis_at = None;
    let Some(approval) = b.policy.strategy.steps()[b.s.step].approval.clone() else {
        b.s.phase = Phase::Progressing;
        return b.route_step();
    };
    let ask = format!(
        "release {} of {} waits at {} for approval by {} (anyone but {}); it rolls back if none comes within {}",
        b.s.version,
        b.policy.service,
        b.s.weight,
        approval.role,
        b.not_the_initiator(),
        crate::units::format_duration(approval.timeout)
    );
    b.await_approval(None, ms(approval.timeout), ask);
}

/// At most this many later tests per sequential judge (each costs the test of a
/// regression present from the start nothing more, but one begun at a step `ln` of
/// twice their number).
const MAX_LATER_TESTS: usize = 16;

/// The steps at whose start each sequential judge begins another test
/// ([`crate::sequential::Restarts`]): the steps that set traffic below 100 % (an
/// approval point sets none; at 100 % the previous version's side is a baseline, another
/// null), after the first such; spread evenly over them when there are more than
/// [`MAX_LATER_TESTS`]. Fixed by the policy, before any data.
pub(super) fn later_test_steps(steps: &[crate::policy::Step]) -> Vec<usize> {
    let traffic: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.approval.is_none() && s.weight < Weight::FULL)
        .map(|(i, _)| i)
        .skip(1)
        .collect();
    if traffic.len() <= MAX_LATER_TESTS {
        return traffic;
    }
    (0..MAX_LATER_TESTS)
        .map(|k| traffic[k * traffic.len() / MAX_LATER_TESTS])
        .collect()
}

/// Leaves the current step: the next one, or promotion after the last.
pub(super) fn next_step(b: &mut Builder<'_>) {
    let steps = b.policy.strategy.steps();
    let next = b.s.step + 1;
    let to_full = steps
        .get(next)
        .is_none_or(|s| s.approval.is_none() && s.weight == Weight::FULL);
    if to_full && hold_for_window(b) {
        return;
    }
    b.s.window_hold = None;
    if next < steps.len() {
        b.s.step = next;
        // A regression may show only at this step's traffic: each sequential judge
        // also tests from here, if this step was planned for it.
        if later_test_steps(steps).contains(&next) {
            b.s.evidence.iter_mut().for_each(Evidence::begin_step);
        }
        return enter_step(b);
    }
    b.decide(
        DecisionKind::Promote,
        format!("all {} step(s) passed", steps.len()),
    );
    b.s.phase = Phase::Promoting;
    b.s.next_analysis_at = None;
    b.event(
        "promoting",
        "rampart",
        "every step passed; promoting".into(),
    );
    b.set_weight(Weight::FULL);
}

pub(super) fn measured(b: &mut Builder<'_>, sample: &IntervalSample) {
    let Judged {
        readings,
        verdict,
        deciding,
    } = judge_interval(b, sample);
    if !deciding.is_empty() {
        let (why, both) = trip_reason(b, &readings, &deciding);
        if both {
            b.halt(format!(
                "both versions are unhealthy ({why}); rolling back would not help"
            ));
        } else {
            b.rollback("rampart", why);
        }
        return;
    }
    match verdict {
        Verdict::Pass => {
            b.s.inconclusive_streak = 0;
            b.s.no_data_streak = 0;
        }
        Verdict::Fail => {
            b.s.inconclusive_streak = 0;
            b.s.no_data_streak = 0;
        }
        Verdict::NoData => {
            if inconclusive(b, true) {
                return;
            }
        }
        Verdict::Inconclusive => {
            if inconclusive(b, false) {
                return;
            }
        }
    }
    let steps = b.policy.strategy.steps();
    let baked =
        b.s.step_started_at
            .is_some_and(|t| b.now >= t + ms(steps[b.s.step].bake));
    let clean = clean(b, verdict);
    if baked && clean && b.s.paused.is_some() {
        // Held by an operator: keep analysing at this weight.
        b.start_interval();
    } else if baked && clean {
        b.event(
            "step_completed",
            "rampart",
            format!(
                "step {}/{} passed at {}",
                b.s.step + 1,
                steps.len(),
                b.s.weight
            ),
        );
        next_step(b);
    } else {
        b.start_interval();
    }
}

/// Whether an interval was clean: it passed, and no critical metric is in a failure
/// streak. Only a clean interval ends a step's bake or a watch.
fn clean(b: &Builder<'_>, verdict: Verdict) -> bool {
    verdict == Verdict::Pass
        && b.policy
            .analysis
            .metrics
            .iter()
            .zip(&b.s.failure_streaks)
            // A total count never goes back to 0: this interval's pass is what counts.
            .all(|(m, s)| !m.critical || m.failure_count == FailureCount::Total || *s == 0)
}

/// Why the metrics that decide the release failed, in words, and whether stable broke
/// the same limits (both versions unhealthy).
pub(super) fn trip_reason(
    b: &Builder<'_>,
    readings: &[MetricReading],
    tripped: &[usize],
) -> (String, bool) {
    let metrics = &b.policy.analysis.metrics;
    let why: Vec<String> = tripped
        .iter()
        .map(|i| match metrics[*i].judge {
            Judge::Threshold(_) => format!(
                "{} {} for {} {} interval(s)",
                readings[*i].name,
                readings[*i].detail,
                b.s.failure_streaks[*i],
                match metrics[*i].failure_count {
                    FailureCount::Consecutive => "consecutive",
                    FailureCount::Total => "failing",
                }
            ),
            Judge::Sequential(_) => format!("{} {}", readings[*i].name, readings[*i].detail),
        })
        .collect();
    let both = tripped.iter().all(|i| readings[*i].stable_breached);
    (why.join("; "), both)
}

/// One interval of the watch after all traffic moved: judged against the previous
/// version's measurements from before the switch. A failure switches back at once (or
/// halts, with `on_failure: halt`); at the end of the watch, the post-release checks.
pub(super) fn watched(b: &mut Builder<'_>, sample: &IntervalSample) {
    let Judged {
        readings,
        verdict,
        deciding,
    } = judge_interval(b, sample);
    if !deciding.is_empty() {
        let (why, both) = trip_reason(b, &readings, &deciding);
        let reason =
            format!("after all traffic moved, against the previous version's measurements: {why}");
        b.event("watch_failed", "rampart", reason.clone());
        let halt = b.policy.post_release.as_ref().map(|p| p.on_failure)
            == Some(crate::policy::PostFailure::Halt);
        if both {
            b.halt(format!(
                "both versions are unhealthy ({reason}); rolling back would not help"
            ));
        } else if halt {
            b.halt(reason);
        } else {
            b.rollback("rampart", reason);
        }
        return;
    }
    match verdict {
        Verdict::Pass | Verdict::Fail => {
            b.s.inconclusive_streak = 0;
            b.s.no_data_streak = 0;
        }
        Verdict::NoData | Verdict::Inconclusive => {
            if inconclusive(b, verdict == Verdict::NoData) {
                return;
            }
        }
    }
    // The watch ends at its first clean interval once its time is up: an interval that
    // passed with no critical metric in a failure streak. Time alone never passes it
    // (a watch that judged nothing goes on until the escalations stop it).
    if clean(b, verdict) && b.s.timer.is_some_and(|t| b.now >= t) {
        b.s.timer = None;
        b.s.next_analysis_at = None;
        let watch = b
            .policy
            .post_release
            .as_ref()
            .map_or(Duration::ZERO, |p| p.watch);
        b.event(
            "watch_passed",
            "rampart",
            format!(
                "{} watched for {} with all traffic: no regression against the previous version",
                b.s.version,
                crate::units::format_duration(watch)
            ),
        );
        return after_watch(b);
    }
    b.start_interval();
}

/// Counts an interval that could not be judged. Returns whether the release stopped.
pub(super) fn inconclusive(b: &mut Builder<'_>, no_data: bool) -> bool {
    let (streak, escalation, what) = if no_data {
        b.s.no_data_streak += 1;
        (
            b.s.no_data_streak,
            b.policy.analysis.no_data,
            "without canary traffic or metric values",
        )
    } else {
        b.s.inconclusive_streak += 1;
        (
            b.s.inconclusive_streak,
            b.policy.analysis.inconclusive,
            "inconclusive",
        )
    };
    if streak >= escalation.limit {
        let reason = format!(
            "{streak} consecutive interval(s) {what}; a release that cannot be judged is never promoted"
        );
        match escalation.action {
            EscalationAction::Halt => b.halt(reason),
            EscalationAction::Rollback => b.rollback("rampart", reason),
        }
        return true;
    }
    b.start_interval();
    false
}

/// All traffic is on the new version: watch it, verify it, keep the previous version,
/// or stop it.
pub(super) fn after_full(b: &mut Builder<'_>) {
    if b.s.stable.is_none() {
        return succeed(b);
    }
    let watch = b
        .policy
        .post_release
        .as_ref()
        .map_or(Duration::ZERO, |p| p.watch);
    if watch.is_zero() {
        return after_watch(b);
    }
    b.s.phase = Phase::Watching;
    b.s.timer = Some(b.now + ms(watch));
    // The watch tests another null (the previous version's baseline, not concurrent
    // traffic): each sequential judge starts fresh evidence, with its own `alpha`
    // and `min_samples`. Carried over, evidence a long healthy step drove far below 1
    // would have to climb all the way back before it could reject at 100 %. (Stable's
    // latency history is kept: it is the steps' measurements.)
    for e in &mut b.s.evidence {
        *e = crate::judge::Evidence {
            stable_history: std::mem::take(&mut e.stable_history),
            ..crate::judge::Evidence::default()
        };
    }
    b.s.pooled = vec![None; b.policy.analysis.metrics.len()];
    b.s.inconclusive_streak = 0;
    b.s.no_data_streak = 0;
    let previous = match b.policy.previous_stopped_at_full() {
        None => "the previous version kept running for an instant switch back".to_string(),
        Some(why) => format!(
            "the previous version not running ({why}): a failure starts it again, and traffic moves back once it is ready"
        ),
    };
    b.event(
        "watching",
        "rampart",
        format!(
            "all traffic on {}; watched for {} against the previous version's measurements from before the switch, {previous}",
            b.s.version,
            crate::units::format_duration(watch)
        ),
    );
    b.start_fresh_interval();
}

/// After the watch (or without one): post-release checks, then the previous version.
fn after_watch(b: &mut Builder<'_>) {
    match &b.policy.post_release {
        Some(post) => {
            b.s.phase = Phase::Verifying;
            let previous = match b.policy.previous_stopped_at_full() {
                None => "the previous version stays up until they pass".to_string(),
                Some(why) => format!(
                    "the previous version is not running ({why}): a failure starts it again before traffic moves back"
                ),
            };
            b.event(
                "verifying",
                "rampart",
                format!(
                    "post-release checks in {}; {previous}",
                    crate::units::format_duration(post.wait)
                ),
            );
            if post.wait.is_zero() {
                b.act(Action::RunChecks {
                    stage: CheckStage::PostRelease,
                });
            } else {
                b.s.timer = Some(b.now + ms(post.wait));
            }
        }
        None => keep_or_stop_previous(b),
    }
}

pub(super) fn keep_or_stop_previous(b: &mut Builder<'_>) {
    if b.policy.strategy.flag_only() {
        // Nothing was deployed, so nothing is stopped: the flag is on for everyone.
        return succeed(b);
    }
    let keep = b.policy.strategy.keep_previous();
    // A previous version lost after a restart is not offered for a switch back.
    if keep.is_zero() || b.s.previous_lost {
        b.s.phase = Phase::Promoting;
        b.s.releasing_previous = true;
        b.act(Action::Stop {
            variant: Variant::Stable,
        });
        return;
    }
    b.s.phase = Phase::KeepingPrevious;
    b.s.timer = Some(b.now + ms(keep));
    b.event_offering(
        "keeping_previous",
        "rampart",
        match b.policy.previous_stopped_at_full() {
            None => format!(
                "previous version kept for {} for an instant switch back",
                crate::units::format_duration(keep),
            ),
            Some(why) => format!(
                "previous version kept for {}, not running ({why}): a switch back starts it again first",
                crate::units::format_duration(keep),
            ),
        },
        Instead::Rollback {
            service: b.policy.service.clone(),
        },
    );
}

pub(super) fn succeed(b: &mut Builder<'_>) {
    b.s.phase = Phase::Succeeded;
    b.event(
        "promoted",
        "rampart",
        format!("{} is now stable", b.s.version),
    );
    b.notify(
        NoticeKind::Promoted,
        format!("{} {} promoted", b.policy.service, b.s.version),
    );
}
