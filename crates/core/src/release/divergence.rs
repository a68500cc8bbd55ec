//! Whether a release's log, replayed under the policy and the rampart taking it up
//! again, makes the decisions it recorded. The state is rebuilt by replaying the
//! inputs, so it is faithful only while every entry gives the decisions it gave when
//! it was written. A policy edited, or rampart upgraded, while the release ran can
//! break that. This module finds the first entry that replays differently, and what
//! a release that found one becomes. It must not decide when to look: the controller
//! checks before it acts on a log again.

use super::builder::Builder;
use super::model::{AuditEvent, Decision, DecisionKind, Phase, Release};
use super::protocol::Input;
use super::silence;
use super::step::step;
use crate::policy::Policy;
use crate::ports::StoredInput;
use crate::units::Weight;

/// The first entry of a release's log that replays differently.
#[derive(Clone, Debug, PartialEq)]
pub struct Divergence {
    /// The entry's position in the log.
    pub seq: u64,
    /// The canary weight the log last recorded: the one in force when it was left.
    pub weight: Weight,
    /// What the entry recorded and what it gives now.
    pub detail: String,
}

impl Divergence {
    /// The input that halts the release for it.
    pub fn input(&self) -> Input {
        Input::RulesChanged {
            seq: self.seq,
            weight: self.weight,
            detail: self.detail.clone(),
        }
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
/// that already holds a [`Input::RulesChanged`]: that release was halted for it.
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
            let weight = log
                .iter()
                .flat_map(|e| &e.events)
                .next_back()
                .map_or(state.weight, |e| e.weight);
            let gives = if changes_nothing {
                "changes nothing".to_string()
            } else {
                format!("gives [{}]", now.join("; "))
            };
            return Some(Divergence {
                seq: entry.seq,
                weight,
                detail: format!(
                    "entry {} of the log ({}) recorded [{}] and, under this policy and rampart, {gives}",
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

/// [`Input::RulesChanged`]: whatever the replay made of the release (past the entry
/// that replays differently, it is not what happened), the release halts at the weight
/// its log last recorded, and pages. Nothing is pending and no timer runs: a halted
/// release never moves traffic.
pub(super) fn halt(b: &mut Builder<'_>, seq: u64, weight: Weight, detail: &str) {
    b.s.weight = weight;
    b.s.pending = None;
    b.s.queued.clear();
    b.s.next_analysis_at = None;
    b.s.timer = None;
    b.s.paused = None;
    let reason = format!(
        "the release's log replays differently from entry {seq}: the policy was edited, or rampart upgraded, while it ran ({detail}). Its state cannot be rebuilt, so it stops where the log left it"
    );
    b.s.decision = Some(Decision {
        kind: DecisionKind::Halt,
        reason: reason.clone(),
        at: b.now,
        by: "rampart".into(),
    });
    b.s.phase = Phase::Halted;
    b.event("rules_changed", "rampart", reason.clone());
    b.page_halted(&reason);
    silence::expire(b);
}
