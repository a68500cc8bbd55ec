//! Operator requests to a running release (approve, promote, pause, resume, abort,
//! rollback), admitted one way whether they come through the API or the local CLI.
//!
//! Owns reading the facts a request is judged on and wording the refusal. The rule
//! itself is core's (`admission::admit_command`); this module must not queue anything.

use std::ops::Deref;

use rampart_core::admission::{self, CommandFacts, CommandRefusal};
use rampart_core::ports::{CommandKind, Store};
use rampart_core::release::PreApproval;
use rampart_core::units::Millis;
use rampart_core::windows::Status;

use crate::serve::views::Loaded;

/// Why a request was refused, as the API's error codes name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The release is over, or waits for no approval.
    Conflict,
    /// The initiator asked to approve or promote their own release.
    FourEyes,
    /// A promotion during a freeze.
    Frozen,
    /// The facts could not be read.
    Internal,
}

impl Why {
    /// The API's error code.
    pub fn code(self) -> &'static str {
        match self {
            Why::Conflict => "conflict",
            Why::FourEyes => "four_eyes",
            Why::Frozen => "frozen",
            Why::Internal => "internal",
        }
    }
}

/// A request refused before it reaches the release: why, and the words for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Why.
    pub why: Why,
    /// For people.
    pub message: String,
}

/// Whether `actor` may ask `kind` (named `verb` in messages) of the loaded release,
/// at `now`.
pub async fn admit<S>(
    store: &S,
    l: &Loaded,
    kind: CommandKind,
    actor: &str,
    verb: &str,
    now: Millis,
) -> Result<(), Refused>
where
    S: Deref<Target: Store>,
{
    let state = l.state();
    // Only a promotion of a running release is judged on the freeze: read it then only.
    let freeze = if kind == CommandKind::Promote && l.record.outcome.is_none() {
        store.freeze(&l.record.service).await.map_err(|e| Refused {
            why: Why::Internal,
            message: e.to_string(),
        })?
    } else {
        None
    };
    let calendar_freeze = match l.policy.windows.as_ref().map(|w| w.status(now)) {
        Some(Status::Closed {
            why, freeze: true, ..
        }) => Some(why),
        _ => None,
    };
    let facts = CommandFacts {
        outcome: l.record.outcome,
        phase: state.phase,
        holding_for_window: state.window_hold.is_some(),
        initiator: &state.initiator,
        freeze: freeze.as_ref(),
        approval_needs_no_freeze: state.approval_needs_no_freeze(),
        calendar_freeze: calendar_freeze.as_deref(),
        freeze_lifted: state.freeze_lifted,
    };
    admission::admit_command(kind, actor, &facts).map_err(|refusal| {
        let id = &l.record.id;
        match refusal {
            CommandRefusal::Over(outcome) => Refused {
                why: Why::Conflict,
                message: format!("release {id} is over ({})", outcome.as_str()),
            },
            CommandRefusal::FourEyes => Refused {
                why: Why::FourEyes,
                message: format!("{actor} started release {id}; someone else must {verb}"),
            },
            CommandRefusal::NotAwaitingApproval(phase) => Refused {
                why: Why::Conflict,
                message: format!(
                    "release {id} is not waiting for an approval (it is {})",
                    phase.as_str()
                ),
            },
            CommandRefusal::Frozen(f) => Refused {
                why: Why::Frozen,
                message: format!(
                    "releases of {} are frozen by {}: {}; nothing is promoted during a freeze",
                    l.record.service, f.actor, f.reason
                ),
            },
            CommandRefusal::CalendarFreeze(why) => Refused {
                why: Why::Frozen,
                message: match (kind, state.approving) {
                    (CommandKind::Approve, Some(PreApproval::Window)) => format!(
                        "release {id} would start, and it is {why}: only a hotfix may run during a calendar freeze"
                    ),
                    _ => format!(
                        "release {id} would go to 100 %, and it is {why}: nothing goes to 100 % during a calendar freeze but a hotfix"
                    ),
                },
            },
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
    use super::*;
    use rampart_core::policy::Policy;
    use rampart_core::ports::{ReleaseRecord, StoredInput};
    use rampart_core::release::{Input, Phase};

    /// A release started at midnight UTC on 1970-01-01, outside its one-hour window:
    /// it waits for the window or a human. Its policy's calendar freeze began later.
    fn waiting_for_the_window() -> Loaded {
        let text = r#"service: windowed
deploy: {process: {command: ["sh", "-c", "exit 1", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:9"}}
strategy: {canary: {steps: [{weight: 10, bake: 1s}]}}
analysis: {metrics: [{metric: error_rate, judge: {max: 1%}}]}
windows:
  allow: [{hours: "10:00-11:00"}]
  freeze: [{from: 2020-01-01, to: 2100-01-01, reason: the new region}]
"#;
        let start = Input::Start {
            release_id: "windowed-1".into(),
            version: "v2".into(),
            stable: Some("v1".into()),
            automatic_rollbacks: 0,
            initiator: "alice".into(),
            planned_migrations: None,
            hotfix: None,
        };
        let l = Loaded {
            record: ReleaseRecord {
                id: "windowed-1".into(),
                service: "windowed".into(),
                version: "v2".into(),
                policy: text.into(),
                created_at: 0,
                outcome: None,
            },
            log: vec![StoredInput {
                seq: 0,
                at: 0,
                input: start,
                events: Vec::new(),
            }],
            policy: Policy::from_yaml(text).unwrap(),
        };
        assert_eq!(l.state().phase, Phase::AwaitingApproval);
        l
    }

    #[tokio::test]
    async fn an_approval_the_release_would_refuse_in_a_calendar_freeze_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(
            rampart_adapters::store::StateStore::open(&dir.path().join("rampart.db"))
                .await
                .unwrap(),
        );
        let l = waiting_for_the_window();
        // 2026-12-06, inside the freeze.
        let in_freeze = 1_796_000_000_000;
        let refused = admit(
            &store,
            &l,
            CommandKind::Approve,
            "bob",
            "approve",
            in_freeze,
        )
        .await
        .unwrap_err();
        assert_eq!(refused.why, Why::Frozen, "{}", refused.message);
        assert!(
            refused.message.contains("the new region") && refused.message.contains("only a hotfix"),
            "{}",
            refused.message
        );
        // Before the freeze began, the same approval is taken.
        let before = 1_000_000_000_000; // 2001
        admit(&store, &l, CommandKind::Approve, "bob", "approve", before)
            .await
            .unwrap();
        // Nor is it promoted through the freeze.
        let refused = admit(
            &store,
            &l,
            CommandKind::Promote,
            "bob",
            "promote",
            in_freeze,
        )
        .await
        .unwrap_err();
        assert_eq!(refused.why, Why::Frozen, "{}", refused.message);
        // A rollback is never frozen.
        admit(
            &store,
            &l,
            CommandKind::Rollback,
            "bob",
            "rollback",
            in_freeze,
        )
        .await
        .unwrap();
    }
}
