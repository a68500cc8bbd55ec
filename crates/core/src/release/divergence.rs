//! Whether a release's log, replayed under the policy and the rampart taking it up
//! again, makes the decisions it recorded. The state is rebuilt by replaying the
//! inputs, so it is faithful only while every entry gives the decisions it gave when
//! it was written. A policy edited, or rampart upgraded, while the release ran can
//! break that. This module finds the first entry that replays differently, and what
//! a release that found one becomes. It must not decide when to look: the controller
//! checks before it acts on a log again.

use super::builder::Builder;
use super::model::{AuditEvent, Decision, DecisionKind, OutcomeKind, Phase, Release};
use super::protocol::Input;
use super::step::step;
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
    /// Who started the rollback the log recorded, when one was under way.
    pub rolling_back: Option<String>,
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
            rolling_back: self.rolling_back.clone(),
            detail: self.detail.clone(),
        }
    }
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

/// What an entry decided, as its audit events show it: each event's kind and the
/// weight after it, and each metric's verdict. Messages are left out: their wording
/// may change between rampart versions while no decision does.
fn decisions(events: &[AuditEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let verdicts: Vec<String> = e
                .readings
                .iter()
                .map(|r| format!("{} {}", r.name, r.verdict.label_snake()))
                .collect();
            if verdicts.is_empty() {
                format!("{} at {}", e.kind, e.weight)
            } else {
                format!("{} at {} ({})", e.kind, e.weight, verdicts.join(", "))
            }
        })
        .collect()
}

/// The first entry of `log` that, replayed under `policy`, does not give the audit
/// events it recorded, or changes nothing now (every entry was recorded because it
/// changed something). `None` when the log replays as it was written, and for a log
/// that already holds an [`Input::RulesChanged`]: that release was taken over for it.
pub fn divergence(policy: &Policy, log: &[StoredInput]) -> Option<Divergence> {
    if log
        .iter()
        .any(|e| matches!(e.input, Input::RulesChanged { .. }))
    {
        return None;
    }
    let mut state = Release::default();
    for entry in log {
        let t = step(policy, &state, &entry.input, entry.at);
        let recorded = decisions(&entry.events);
        let now = decisions(&t.events);
        let changes_nothing = t.is_noop(&state);
        if changes_nothing || recorded != now {
            let events = || log.iter().flat_map(|e| &e.events);
            let gives = if changes_nothing {
                "changes nothing".to_string()
            } else {
                format!("gives [{}]", now.join("; "))
            };
            let ended = events().filter_map(|e| outcome_of(&e.kind)).next_back();
            return Some(Divergence {
                seq: entry.seq,
                weight: events().next_back().map_or(state.weight, |e| e.weight),
                ended,
                rolling_back: events()
                    .filter(|e| e.kind == "rollback_started")
                    .map(|e| e.actor.clone())
                    .next_back()
                    .filter(|_| ended.is_none()),
                detail: format!(
                    "entry {} of the log ({}) recorded [{}] and now {gives}",
                    entry.seq,
                    entry.input.kind(),
                    recorded.join("; "),
                ),
            });
        }
        state = t.state;
    }
    None
}

/// [`Input::RulesChanged`], on the release rebuilt from the entries before the one
/// that replays differently: the weight is the one the log last recorded, and the
/// release takes the course the log recorded, never one the new rules would choose.
/// - The log recorded an end: that outcome stands.
/// - It recorded a rollback under way: the rollback is finished (traffic back to
///   stable, the canary stopped, stable verified), as after any restart.
/// - Otherwise the release halts where it stands, and pages: a halted release never
///   moves traffic.
pub(super) fn take_over(b: &mut Builder<'_>, input: &Input) {
    let Input::RulesChanged {
        seq,
        weight,
        ended,
        rolling_back,
        detail,
    } = input
    else {
        return;
    };
    b.s.weight = *weight;
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
    match (ended, rolling_back) {
        (Some(outcome), _) => {
            let (phase, kind) = match outcome {
                OutcomeKind::Promoted => (Phase::Succeeded, DecisionKind::Promote),
                OutcomeKind::RolledBack => (Phase::RolledBack, DecisionKind::Rollback),
                OutcomeKind::Halted => (Phase::Halted, DecisionKind::Halt),
                OutcomeKind::Escalated => (Phase::Escalated, DecisionKind::Escalate),
                OutcomeKind::Blocked => (Phase::Blocked, DecisionKind::Block),
            };
            if b.s.decision.as_ref().is_none_or(|d| d.kind != kind) {
                decide(
                    b,
                    kind,
                    format!("as the release's log recorded ({})", outcome.as_str()),
                    "rampart",
                );
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
            decide(
                b,
                DecisionKind::Rollback,
                format!("{why}; finishing the rollback the log recorded under way"),
                actor,
            );
            b.s.phase = Phase::RollingBack;
            // Traffic goes back to stable at once: a level-1 rollback's check of the
            // flags alone was not recorded to its end.
            b.s.rollback_level = Some(2);
            b.event(
                "rules_changed",
                "rampart",
                format!("{why}; the log recorded a rollback under way, which is finished"),
            );
            resume::resume(b);
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
