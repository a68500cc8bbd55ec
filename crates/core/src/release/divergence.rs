//! Whether a release's log, replayed under the rampart taking it up again, rebuilds
//! what happened. The state is rebuilt by replaying the inputs, so it is faithful only
//! while the rules make the decisions the log acted on. A rampart upgraded while the
//! release ran can break that; one that only words audit events differently, adds
//! informational ones before the log's last answer (or at a start, a restart or a
//! silence's answer), or judges an interval otherwise without acting otherwise, does
//! not.
//! This module finds the first entry past which the replay is not what happened, and
//! what a release that found one becomes. It must not decide when to look: the
//! controller checks before it acts on a log again.

use super::builder::Builder;
use super::model::{AuditEvent, Decision, DecisionKind, OutcomeKind, Phase, Release};
use super::protocol::{Action, Effect, Input, Variant};
use super::step::{answers, is_answer, step};
use super::{resume, silence};
use crate::policy::Policy;
use crate::ports::StoredInput;
use crate::units::Weight;

/// The first entry of a release's log that replays differently, and the course the
/// log recorded from there.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    /// The entry's position in the log.
    pub seq: u64,
    /// The canary weight the log last recorded: the one in force when it was left.
    pub weight: Weight,
    /// How the release ended, when the log recorded an end (the record was not marked
    /// finished before the controller stopped).
    pub ended: Option<OutcomeKind>,
    /// Who started the rollback the log recorded, if it recorded one.
    pub rollback_by: Option<String>,
    /// Rolling: the replicas of stable and of the new version the log last recorded
    /// in service (facts, not decisions).
    pub replicas: (Option<u32>, Option<u32>),
    /// What the entry recorded and what it gives now.
    pub detail: String,
}

impl Divergence {
    /// The input that takes the release over for it.
    pub fn input(&self) -> Input {
        Input::RulesChanged {
            seq: self.seq,
            weight: self.weight,
            ended: self.ended,
            rollback_by: self.rollback_by.clone(),
            stable_replicas: self.replicas.0,
            canary_replicas: self.replicas.1,
            detail: self.detail.clone(),
        }
    }

    /// How many entries, from the first, the release is rebuilt from: those before
    /// the one that differs, and always the start (the version, stable, the time),
    /// which records facts whatever it decided.
    pub fn kept(&self) -> usize {
        kept(self.seq)
    }
}

fn kept(seq: u64) -> usize {
    usize::try_from(seq).unwrap_or(usize::MAX).max(1)
}

/// The positions of the entries an [`Input::RulesChanged`] among `inputs` stands for:
/// from the first that replayed differently (never the start) up to it. A replay of
/// the log skips them.
pub fn superseded(inputs: &[&Input]) -> Option<std::ops::Range<usize>> {
    inputs
        .iter()
        .enumerate()
        .find_map(|(at, input)| match input {
            Input::RulesChanged { seq, .. } => Some(kept(*seq).min(at)..at),
            _ => None,
        })
}

/// The outcome an audit event records, for the events that end a release.
fn outcome_of(kind: &str) -> Option<OutcomeKind> {
    match kind {
        "promoted" => Some(OutcomeKind::Promoted),
        "rolled_back" => Some(OutcomeKind::RolledBack),
        "halted" => Some(OutcomeKind::Halted),
        "escalated" => Some(OutcomeKind::Escalated),
        "blocked" => Some(OutcomeKind::Blocked),
        _ => None,
    }
}

/// How a release's recorded events say it ended, if they do. An abort before anything
/// was deployed ends it blocked with only an `aborted` event (an abort later starts a
/// rollback, recorded after it).
fn recorded_end(events: &[&AuditEvent]) -> Option<OutcomeKind> {
    let end = events
        .iter()
        .filter_map(|e| outcome_of(&e.kind))
        .next_back();
    let rollback = events.iter().any(|e| e.kind == "rollback_started");
    match events.last() {
        Some(e) if end.is_none() && !rollback && e.kind == "aborted" => Some(OutcomeKind::Blocked),
        _ => end,
    }
}

/// The audit events that record a decision about the release's course (and the ends
/// they lead to). Its action may have run before the controller stopped, unanswered
/// in the log: a rollback, a step or a promotion the new rules would not make must
/// still be seen. A refusal shows as one of these missing.
const DECIDING: [&str; 17] = [
    "rollback_started",
    "halted",
    "escalated",
    "blocked",
    "aborted",
    "promoting",
    "promoted",
    "promoted_by_operator",
    "rolled_back",
    "step_completed",
    "approved",
    "awaiting_approval",
    "holding_for_window",
    "window_opened",
    "paused",
    "unpaused",
    "previous_released",
];

/// An action's name, for the audit trail.
fn action_name(action: Option<&Action>) -> &'static str {
    match action {
        None => "nothing",
        Some(Action::RunGates) => "the gates",
        Some(Action::Deploy { .. }) => "a version started",
        Some(Action::SetWeight { .. }) => "a weight set",
        Some(Action::Measure(_)) => "a measurement",
        Some(Action::Stop { .. }) => "a version stopped",
        Some(Action::VerifyStable) => "stable verified",
        Some(Action::Scale { .. }) => "a version scaled",
        Some(Action::RunMigrations) => "the migrations",
        Some(Action::RunChecks { .. }) => "the checks",
        Some(Action::FlagsOff { .. }) => "flags switched off",
    }
}

/// The last replica count of `variant` a successful scaling recorded.
fn last_scaled(log: &[StoredInput], of: Variant) -> Option<u32> {
    log.iter().rev().find_map(|e| match &e.input {
        Input::Scaled {
            variant,
            replicas,
            ok: true,
            ..
        } if *variant == of => Some(*replicas),
        _ => None,
    })
}

/// The first entry of `log` past which, replayed under `policy`, the release is not
/// what happened: an answer to an action these rules would not have taken (they wait
/// for another, or for none), or a decision about its course (a rollback, a halt, an
/// escalation, a block, an abort, a promotion, an end) the log recorded there and
/// these rules do not make, or the reverse. Every answer in a log answered the action
/// then pending (a stale one changes nothing and is not recorded), so under the rules
/// it was written under there is none. Past the last answer, every event kind is
/// compared. Audit events are otherwise not compared: their wording, new
/// informational ones, an interval judged otherwise with nothing done otherwise,
/// change nothing that happened. `None` also for a log that already
/// holds an [`Input::RulesChanged`]: that release was taken over for it.
pub fn divergence(policy: &Policy, log: &[StoredInput]) -> Option<Divergence> {
    if log
        .iter()
        .any(|e| matches!(e.input, Input::RulesChanged { .. }))
    {
        return None;
    }
    // Past the last answer, no later answer shows what an entry's action was: there
    // every audit event kind must be the same (their wording may differ).
    let tail = log
        .iter()
        .rposition(|e| is_answer(&e.input))
        .map_or(0, |last| last + 1);
    let mut state = Release::default();
    for (n, entry) in log.iter().enumerate() {
        let t = step(policy, &state, &entry.input, entry.at);
        // (Not for the start, a restart or a silence's answer: their events inform, and
        // the decisions among them are compared anyway.)
        let informs = matches!(
            entry.input,
            Input::Start { .. }
                | Input::Resumed
                | Input::Silenced { .. }
                | Input::SilenceExpired
                | Input::SilenceFailed { .. }
        );
        let kinds = |events: &[AuditEvent]| -> Vec<String> {
            let all = n >= tail && !informs;
            events
                .iter()
                .map(|e| e.kind.as_str())
                .filter(|k| all || DECIDING.contains(k))
                .map(str::to_string)
                .collect()
        };
        let (recorded, now) = (kinds(&entry.events), kinds(&t.events));
        let differs = if is_answer(&entry.input) && !answers(state.pending.as_ref(), &entry.input) {
            Some(format!(
                "it answers an action these rules would not have taken (they wait for {})",
                action_name(state.pending.as_ref())
            ))
        } else if recorded != now {
            Some(format!(
                "the log recorded [{}] there; these rules decide [{}]",
                recorded.join(", "),
                now.join(", ")
            ))
        } else {
            None
        };
        if let Some(differs) = differs {
            let events: Vec<&AuditEvent> = log.iter().flat_map(|e| &e.events).collect();
            return Some(Divergence {
                seq: entry.seq,
                weight: events.last().map_or(state.weight, |e| e.weight),
                ended: recorded_end(&events),
                rollback_by: events
                    .iter()
                    .rev()
                    .find(|e| e.kind == "rollback_started")
                    .map(|e| e.actor.clone()),
                replicas: (
                    last_scaled(log, Variant::Stable),
                    last_scaled(log, Variant::Canary),
                ),
                detail: format!(
                    "entry {} of the log ({}): {differs}",
                    entry.seq,
                    entry.input.kind()
                ),
            });
        }
        state = t.state;
    }
    None
}

/// [`Input::RulesChanged`], on the release rebuilt from the entries
/// [`Divergence::kept`]: the weight (and a rolling release's replica counts) are the
/// ones the log last recorded, and the release takes the course the log recorded,
/// never one the new rules would choose.
/// - The log recorded an end: that outcome stands.
/// - It recorded a rollback under way: the rollback is finished from its traffic
///   (the level-1 flags switched off again first, traffic back to stable, the new
///   version stopped, stable verified).
/// - Otherwise the release halts where it stands, and pages: a halted release never
///   moves traffic.
pub(super) fn take_over(b: &mut Builder<'_>, input: &Input) {
    let Input::RulesChanged {
        seq,
        weight,
        ended,
        rollback_by,
        stable_replicas,
        canary_replicas,
        detail,
    } = input
    else {
        return;
    };
    b.s.weight = *weight;
    b.s.stable_replicas = stable_replicas.unwrap_or(b.s.stable_replicas);
    b.s.canary_replicas = canary_replicas.unwrap_or(b.s.canary_replicas);
    b.s.pending = None;
    b.s.queued.clear();
    b.s.next_analysis_at = None;
    b.s.timer = None;
    b.s.paused = None;
    let why = format!(
        "rampart was upgraded while the release ran, and its log replays differently from entry {seq} ({detail}), so the state it rebuilds is not what happened"
    );
    let decide = |b: &mut Builder<'_>, kind: DecisionKind, reason: String, by: &str| {
        b.s.decision = Some(Decision {
            kind,
            reason,
            at: b.now,
            by: by.to_string(),
        });
    };
    match (ended, rollback_by) {
        (Some(outcome), _) => {
            let (phase, kind) = match outcome {
                OutcomeKind::Promoted => (Phase::Succeeded, DecisionKind::Promote),
                OutcomeKind::RolledBack => (Phase::RolledBack, DecisionKind::Rollback),
                OutcomeKind::Halted => (Phase::Halted, DecisionKind::Halt),
                OutcomeKind::Escalated => (Phase::Escalated, DecisionKind::Escalate),
                OutcomeKind::Blocked => (Phase::Blocked, DecisionKind::Block),
            };
            if b.s.decision.as_ref().is_none_or(|d| d.kind != kind) {
                // A rollback counts as automatic only when rampart started it.
                let by = match (kind, rollback_by) {
                    (DecisionKind::Rollback, Some(actor)) => actor.as_str(),
                    _ => "rampart",
                };
                let reason = format!("as the release's log recorded ({})", outcome.as_str());
                decide(b, kind, reason, by);
            }
            b.s.phase = phase;
            b.event(
                "rules_changed",
                "rampart",
                format!(
                    "{why}; the log recorded the release's end ({}), which stands",
                    outcome.as_str()
                ),
            );
            silence::expire(b);
        }
        (None, Some(actor)) => {
            let reason = format!("{why}; finishing the rollback the log recorded under way");
            decide(b, DecisionKind::Rollback, reason, actor);
            b.s.phase = Phase::RollingBack;
            // From the traffic: whether the flags alone restored health was not
            // recorded to its end.
            b.s.rollback_level = Some(2);
            b.event(
                "rules_changed",
                "rampart",
                format!("{why}; the log recorded a rollback under way, which is finished"),
            );
            resume::resume(b);
            // The level-1 flags go off again first (it is idempotent): the recorded
            // rollback may have switched them off, or not yet.
            let flags = b.policy.level_one_flags();
            if !flags.is_empty()
                && let Some(first) = b.s.pending.take()
            {
                b.effects.retain(|e| !matches!(e, Effect::Do(_)));
                b.s.queued.insert(0, first);
                b.act(Action::FlagsOff { flags });
            }
            silence::follow(b, false, &Input::Resumed);
        }
        (None, None) => {
            let reason = format!("{why}; it stops where the log left it");
            decide(b, DecisionKind::Halt, reason.clone(), "rampart");
            b.s.phase = Phase::Halted;
            b.event("rules_changed", "rampart", reason.clone());
            b.page_halted(&reason);
            silence::expire(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(kinds: &[&str]) -> Vec<AuditEvent> {
        kinds
            .iter()
            .map(|k| AuditEvent {
                at: 0,
                t_s: 0.0,
                kind: (*k).into(),
                actor: "rampart".into(),
                message: String::new(),
                weight: Weight::ZERO,
                readings: Vec::new(),
                instead: None,
            })
            .collect()
    }

    fn end(kinds: &[&str]) -> Option<OutcomeKind> {
        let e = events(kinds);
        recorded_end(&e.iter().collect::<Vec<_>>())
    }

    #[test]
    fn the_end_a_log_recorded() {
        assert_eq!(
            end(&["release_started", "aborted"]),
            Some(OutcomeKind::Blocked)
        );
        assert_eq!(
            end(&["release_started", "aborted", "rollback_started"]),
            None
        );
        // An abort while level 1 is being verified goes on to the traffic.
        assert_eq!(end(&["rollback_started", "flags_off", "aborted"]), None);
        assert_eq!(
            end(&["rollback_started", "rolled_back"]),
            Some(OutcomeKind::RolledBack)
        );
        assert_eq!(end(&["promoting", "promoted"]), Some(OutcomeKind::Promoted));
        assert_eq!(end(&["weight_set", "analysis"]), None);
    }
}
