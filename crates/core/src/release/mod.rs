//! The release state machine: `step(policy, state, input, now) -> transition`.
//!
//! Owns every decision a release makes: when to deploy, move traffic, measure, advance,
//! promote, roll back or halt. It is a pure function of its inputs, so replaying the
//! persisted inputs rebuilds the same state. It must not perform I/O or read a clock:
//! the controller executes the returned [`Action`]s and feeds their results back.
//!
//! Protocol: a release has at most one outstanding action ([`Release::pending`]). An
//! input that answers a different action than the pending one is stale and ignored.
//! The Alertmanager silence ([`Effect::Silence`]) is no such action: it runs beside
//! the pending one, and its answers change nothing but the silence's record.
//!
//! Layout: `protocol` is the vocabulary (actions, inputs, effects), `model` the state,
//! `step` the entry point that dispatches each input, `builder` the transition under
//! construction; the phases' logic is in `gating` (before the first deploy), `progress`
//! (forward to promotion), `analysis` (one interval judged), `rollback` (and halting),
//! `operator` (people's requests), `resume` (after a restart), `divergence` (a log
//! that replays differently under changed rules) and `silence` (the
//! Alertmanager silence held while it runs). Every public item is re-exported here:
//! `release::X` is the one path callers use.

mod analysis;
mod builder;
mod divergence;
mod gating;
mod model;
mod operator;
mod progress;
mod protocol;
mod resume;
mod rollback;
mod silence;
mod step;

pub use crate::instead::Instead;
pub use crate::notice::NoticeKind;
pub use divergence::{Divergence, divergence, superseded};
pub use model::{
    AuditEvent, Decision, DecisionKind, OutcomeKind, Phase, PreApproval, Release, SilenceHold,
    Transition,
};
pub use operator::same_person_or_nobody;
pub use protocol::{
    Action, CheckStage, Effect, GateResult, Input, MeasureWindow, SilenceOp, Variant,
};
pub use step::step;
