//! Operator requests to a running release (approve, promote, pause, resume, abort,
//! rollback), admitted one way whether they come through the API or the local CLI.
//!
//! Owns reading the facts a request is judged on and wording the refusal. The rule
//! itself is core's (`admission::admit_command`); this module must not queue anything.

use std::ops::Deref;

use rampart_core::admission::{self, CommandFacts, CommandRefusal};
use rampart_core::ports::{CommandKind, Store};

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

/// Whether `actor` may ask `kind` (named `verb` in messages) of the loaded release.
pub async fn admit<S>(
    store: &S,
    l: &Loaded,
    kind: CommandKind,
    actor: &str,
    verb: &str,
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
    let facts = CommandFacts {
        outcome: l.record.outcome,
        phase: state.phase,
        holding_for_window: state.window_hold.is_some(),
        initiator: &state.initiator,
        freeze: freeze.as_ref(),
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
        }
    })
}
