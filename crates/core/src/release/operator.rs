//! What people ask of a running release: approve, pause, resume, promote now and
//! abort. Every request is checked (four eyes, freezes, the phase); a refused one is
//! recorded and must change nothing else.

use super::builder::{Builder, window_closed};
use super::gating::block;
use super::model::{DecisionKind, Phase, PreApproval, Release};
use super::progress::{full_traffic_due, next_step};
use super::protocol::{Action, Input};
use crate::instead::Instead;
use crate::units::{Millis, Weight};

pub(super) fn abort(b: &mut Builder<'_>, actor: &str, reason: &str, force: bool) {
    match b.s.phase {
        // Migrations are never interrupted half-way; the abort is refused.
        Phase::Migrating => {}
        Phase::AwaitingApproval if b.s.approving.is_some_and(PreApproval::before_anything) => {
            b.event("aborted", actor, reason.to_string());
            block(
                b,
                format!("aborted by {actor} before anything ran: {reason}"),
            );
        }
        Phase::Pending | Phase::Gating => {
            b.decide(DecisionKind::Block, format!("aborted by {actor}: {reason}"));
            b.s.phase = Phase::Blocked;
            b.s.pending = None;
            b.event(
                "aborted",
                actor,
                format!("aborted before deployment: {reason}"),
            );
        }
        // The previous version is being stopped: switching back to it would send every
        // user to a version that is going, or gone.
        Phase::Promoting if b.s.releasing_previous => {
            b.event(
                "abort_refused",
                actor,
                format!(
                    "{} serves everyone and the previous version is being stopped, the promotion's last step: nothing can switch back to it now. To go back, release the previous version again once this ends",
                    b.s.version
                ),
            );
        }
        _ if abortable(&b.s) => {
            // Past the switch, a version pending is one a restart re-establishes (the
            // previous one among them): the switch back waits for it, else it could
            // send every user to a version nothing brought back.
            let restarting = matches!(
                b.s.phase,
                Phase::Promoting | Phase::Watching | Phase::Verifying | Phase::KeepingPrevious
            ) && matches!(b.s.pending, Some(Action::Deploy { .. }));
            // A traffic change in flight may already be in force: the rollback is
            // decided on the weight the router answers (whether users met the new
            // version, what an escalation reports), not on the one before it.
            let moving = matches!(b.s.pending, Some(Action::SetWeight { .. }));
            let input = Input::Abort {
                actor: actor.to_string(),
                reason: reason.to_string(),
                force,
            };
            if (restarting || moving) && defer(b, input, actor) {
                return;
            }
            b.event("aborted", actor, reason.to_string());
            b.rollback_with(actor, format!("aborted by {actor}: {reason}"), force);
        }
        // Flags going off (or, after a restart, the versions re-established before
        // they are asked off again): they finish, then the traffic moves back at once.
        Phase::RollingBack
            if b.s.rollback_level == Some(1)
                && !matches!(b.s.pending, None | Some(Action::Measure(_))) =>
        {
            b.event(
                "aborted",
                actor,
                format!("{reason}; the traffic goes back once the flags are off"),
            );
            b.s.hurried_by = Some(actor.to_string());
        }
        // Waiting to see whether flags off was enough (the interval that verifies it
        // may be under way): the operator does not wait.
        Phase::RollingBack
            if b.s.rollback_level == Some(1)
                && matches!(b.s.pending, None | Some(Action::Measure(_))) =>
        {
            b.event("aborted", actor, reason.to_string());
            b.s.pending = None;
            b.rollback_traffic();
        }
        // Already rolling back, or over: nothing more to do.
        _ => {}
    }
}

/// Whether an abort now starts a rollback (or, before anything ran, blocks): from a
/// phase with something deployed, until the previous version is being stopped.
pub(super) fn abortable(s: &Release) -> bool {
    match s.phase {
        Phase::Promoting => !s.releasing_previous,
        Phase::Deploying
        | Phase::Previewing
        | Phase::AwaitingApproval
        | Phase::Progressing
        | Phase::Watching
        | Phase::Verifying
        | Phase::KeepingPrevious => true,
        _ => false,
    }
}

/// Whether an operator's pause applies: only while the canary steps run (at a step or
/// a step's approval point). Earlier phases would put the first step in force anyway,
/// and a rollback is never held.
fn pausable(s: &Release) -> bool {
    s.phase == Phase::Progressing || (s.phase == Phase::AwaitingApproval && s.approving.is_none())
}

pub(super) fn pause(b: &mut Builder<'_>, actor: &str, reason: &str) {
    if !pausable(&b.s) {
        return b.event(
            "pause_refused",
            actor,
            format!(
                "nothing to pause in phase {}: a release can be held once its canary steps run",
                b.s.phase.as_str()
            ),
        );
    }
    if b.s.paused.is_some() {
        return;
    }
    b.s.paused = Some(actor.to_string());
    b.event(
        "paused",
        actor,
        format!(
            "held at {}: analysis goes on and a failure still rolls back, but no step advances until resumed ({reason})",
            b.s.weight
        ),
    );
}

pub(super) fn unpause(b: &mut Builder<'_>, actor: &str) {
    let Some(by) = b.s.paused.take() else {
        return;
    };
    b.event(
        "unpaused",
        actor,
        format!("resumed (paused by {by}); the next clean interval after the bake advances"),
    );
}

/// Whether `actor` is the release's `initiator` (spelled with surrounding whitespace
/// or not) or nobody: four eyes refuses them an approval or a promotion.
pub fn same_person_or_nobody(actor: &str, initiator: &str) -> bool {
    let actor = actor.trim();
    actor.is_empty() || actor == initiator.trim()
}

/// A human's promotion: straight to 100 %, as if every remaining step had passed.
pub(super) fn promote(b: &mut Builder<'_>, actor: &str, reason: &str, frozen: Option<&str>) {
    let refuse = |b: &mut Builder<'_>, why: String| {
        b.event("promote_refused", actor, why);
    };
    let step_approval = b.s.phase == Phase::AwaitingApproval && b.s.approving.is_none();
    if b.s.phase != Phase::Progressing && !step_approval {
        return refuse(
            b,
            format!(
                "a release can be promoted only while its canary steps run (it is {})",
                b.s.phase.as_str()
            ),
        );
    }
    if b.policy.strategy.rolling().is_some() {
        return refuse(
            b,
            "a rolling release replaces its batches in order and cannot skip them".into(),
        );
    }
    if same_person_or_nobody(actor, &b.s.initiator) {
        return refuse(
            b,
            "the initiator cannot promote their own release (four eyes)".into(),
        );
    }
    if let Some((why, true, _)) = window_closed(b)
        && !b.s.freeze_lifted
    {
        return refuse(
            b,
            format!("it is {why}: nothing goes to 100 % during a freeze"),
        );
    }
    if let Some(freeze) = frozen {
        return refuse(
            b,
            format!(
                "the service is frozen ({freeze}): nothing is promoted during a freeze; ask again once it is lifted"
            ),
        );
    }
    let input = Input::Promote {
        actor: actor.to_string(),
        reason: reason.to_string(),
        frozen: frozen.map(str::to_string),
    };
    if defer(b, input, actor) {
        return;
    }
    b.event(
        "promoted_by_operator",
        actor,
        format!("promoted from {} by {actor}: {reason}", b.s.weight),
    );
    b.decide(
        DecisionKind::Promote,
        format!("promoted by {actor}: {reason}"),
    );
    if let Some(d) = b.s.decision.as_mut()
        && d.at == b.now
    {
        d.by = actor.to_string();
    }
    b.s.window_attended = true;
    b.s.window_hold = None;
    b.s.paused = None;
    b.s.timer = None;
    b.s.next_analysis_at = None;
    b.s.queued.clear();
    b.s.phase = Phase::Promoting;
    b.set_weight(Weight::FULL);
}

/// Keeps `input` (an approval, a promotion) for later when a version is being started
/// (a restarted controller re-establishing the release feeds operators' commands just
/// before one): it is applied once that work is done (see `step`), so no traffic moves
/// to a version before it runs again, and the chain is never replaced. Returns whether
/// it was kept.
/// A rollback also waits for a traffic change in flight (see `abort`), and takes the
/// place of another command kept: nothing holds a rollback back.
fn defer(b: &mut Builder<'_>, input: Input, actor: &str) -> bool {
    let rollback = matches!(input, Input::Abort { .. });
    let starting = matches!(
        b.s.pending,
        Some(Action::Deploy { .. } | Action::Scale { .. })
    );
    if !(starting || (rollback && rollback_waits(&b.s))) {
        return false;
    }
    match &b.s.deferred {
        Some(Input::Abort { .. }) => {
            b.event(
                "command_refused",
                actor,
                "a rollback already waits for the work in flight; it goes ahead then".into(),
            );
            return true;
        }
        Some(_) if !rollback => {
            b.event(
                "command_refused",
                actor,
                "another command already waits for the versions to run again; ask again then"
                    .into(),
            );
            return true;
        }
        // The rollback takes its place: its author is told.
        Some(Input::Approved { by: earlier, .. } | Input::Promote { actor: earlier, .. }) => {
            let earlier = earlier.clone();
            b.event(
                "command_refused",
                &earlier,
                format!("{actor} asked for a rollback meanwhile, which goes first"),
            );
        }
        _ => {}
    }
    let why = if starting {
        "the versions are being started again after a restart: applied once they run"
    } else {
        "a traffic change is in flight: the rollback starts once the router answers"
    };
    b.event("command_deferred", actor, why.into());
    b.s.deferred = Some(input);
    true
}

/// Applies a command kept by [`defer`], now that nothing is being started.
/// Whether a rollback asked now waits for the action in flight: versions being
/// started (switching back to one not running would leave users nowhere) or a traffic
/// change (the rollback starts from the weight the router answers).
fn rollback_waits(s: &Release) -> bool {
    matches!(
        s.pending,
        Some(Action::Deploy { .. } | Action::Scale { .. } | Action::SetWeight { .. })
    )
}

pub(super) fn apply_deferred(b: &mut Builder<'_>) {
    // A rollback waits for the versions being started and a traffic change in flight
    // only (see `rollback_waits`); other commands for the action in flight to end.
    let waits = match &b.s.deferred {
        Some(Input::Abort { .. }) => rollback_waits(&b.s),
        _ => b.s.pending.is_some(),
    };
    if waits {
        return;
    }
    match b.s.deferred.take() {
        Some(Input::Abort { actor, .. }) if b.s.phase.is_terminal() => b.event(
            "command_refused",
            &actor,
            format!(
                "the rollback asked while the versions were started again came too late: the release ended {}",
                b.s.phase.as_str()
            ),
        ),
        Some(Input::Approved { by, asked_at }) => approved(b, &by, asked_at),
        Some(Input::Promote {
            actor,
            reason,
            frozen,
        }) => promote(b, &actor, &reason, frozen.as_deref()),
        Some(Input::Abort {
            actor,
            reason,
            force,
        }) => abort(b, &actor, &reason, force),
        _ => {}
    }
}

pub(super) fn approved(b: &mut Builder<'_>, by: &str, asked_at: Option<Millis>) {
    let holding = b.s.phase == Phase::Progressing && b.s.window_hold.is_some();
    if b.s.phase != Phase::AwaitingApproval && !holding {
        if asked_at.is_some() {
            b.event(
                "approval_refused",
                by,
                format!(
                    "the release is {}: nothing awaits an approval",
                    b.s.phase.as_str()
                ),
            );
        }
        return;
    }
    // An approval point whose time ran out rolls back (or blocks migrations) at the
    // next tick: an approval asked after it, however it was ordered with that tick
    // (a restart feeds waiting commands first), is too late. One asked in time and
    // read late (the controller was down) still counts.
    // (A wait for a window's opening has its opening as its timer, not a deadline.)
    let deadline_kind = matches!(
        b.s.approving,
        None | Some(PreApproval::Migrations | PreApproval::Hotfix)
    );
    if !holding
        && deadline_kind
        && let Some(deadline) = b.s.timer
        && deadline <= asked_at.unwrap_or(b.now)
    {
        b.event(
            "approval_refused",
            by,
            "the approval point had timed out: too late to approve".into(),
        );
        return;
    }
    // One approval, one approval point: one asked before this point began was meant
    // for an earlier one (a second click, a second approver), which it has passed.
    if let (Some(asked), Some(since)) = (asked_at, b.s.awaiting_since)
        && asked <= since
    {
        b.event(
            "approval_refused",
            by,
            "it was asked for an earlier approval point, which was passed; approve this one anew"
                .into(),
        );
        return;
    }
    if same_person_or_nobody(by, &b.s.initiator) {
        b.event(
            "approval_refused",
            by,
            "the initiator cannot approve their own release (four eyes)".into(),
        );
        return;
    }
    if let Some(paused_by) = &b.s.paused {
        let msg = format!("paused by {paused_by}: resume the release before approving it");
        b.event("approval_refused", by, msg);
        return;
    }
    if b.s.approval_needs_no_freeze()
        && let Some((why, true, _)) = window_closed(b)
    {
        let what = if b.s.approving == Some(PreApproval::Migrations) {
            "breaking migrations are not applied during a freeze (the wait goes on); only a hotfix may run"
        } else {
            "only a hotfix may run during a freeze"
        };
        b.event_offering(
            "approval_refused",
            by,
            format!("it is {why}: {what}"),
            Instead::Hotfix {
                service: b.policy.service.clone(),
            },
        );
        return;
    }
    if holding {
        b.event(
            "approved",
            by,
            "going to 100 % outside the release window approved (attended)".into(),
        );
        b.s.window_attended = true;
        b.s.window_hold = None;
        if b.s.pending.is_none() {
            next_step(b);
        }
        return;
    }
    let input = Input::Approved {
        by: by.to_string(),
        asked_at,
    };
    if defer(b, input, by) {
        return;
    }
    b.s.timer = None;
    match b.s.approving.take() {
        Some(PreApproval::Window) => {
            b.event(
                "approved",
                by,
                "releasing outside the release window approved (attended until the window opens)"
                    .into(),
            );
            // Until the next opening; with none in sight, for the whole release.
            b.s.attended_until = Some(
                b.policy
                    .windows
                    .as_ref()
                    .and_then(|w| w.next_open(b.now))
                    .unwrap_or(Millis::MAX),
            );
            b.s.phase = Phase::Gating;
            return b.act(Action::RunGates);
        }
        Some(PreApproval::FullTraffic) => {
            b.event(
                "approved",
                by,
                "switching all traffic outside the release window approved (attended)".into(),
            );
            b.s.window_attended = true;
            return full_traffic_due(b);
        }
        Some(PreApproval::Migrations) => {
            b.event("approved", by, "breaking migrations approved".into());
            b.s.phase = Phase::Migrating;
            return b.act(Action::RunMigrations);
        }
        Some(PreApproval::Hotfix) => {
            b.event("approved", by, "hotfix during a freeze approved".into());
            b.s.window_attended = true;
            b.s.freeze_lifted = true;
            b.s.phase = Phase::Gating;
            return b.act(Action::RunGates);
        }
        None => {}
    }
    let steps = b.policy.strategy.steps();
    let role = steps[b.s.step]
        .approval
        .as_ref()
        .map_or(String::new(), |a| a.role.clone());
    // A human approving the move to 100 % attends it.
    if steps
        .get(b.s.step + 1)
        .is_none_or(|s| s.weight == Weight::FULL)
    {
        b.s.window_attended = true;
    }
    b.event(
        "approved",
        by,
        format!("approved as {role} at {}", b.s.weight),
    );
    next_step(b);
}
