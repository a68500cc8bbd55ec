//! The release state machine: `step(policy, state, input, now) -> transition`.
//!
//! Owns every decision a release makes: when to deploy, move traffic, measure, advance,
//! promote, roll back or halt. It is a pure function of its inputs, so replaying the
//! persisted inputs rebuilds the same state. It must not perform I/O or read a clock:
//! the controller executes the returned [`Action`]s and feeds their results back.
//!
//! Protocol: a release has at most one outstanding action ([`Release::pending`]). An
//! input that answers a different action than the pending one is stale and ignored.
//!
//! Layout: `protocol` is the vocabulary (actions, inputs, effects), `model` the state,
//! `step` the entry point that dispatches each input, `builder` the transition under
//! construction; the phases' logic is in `gating` (before the first deploy), `progress`
//! (forward to promotion), `analysis` (one interval judged), `rollback` (and halting),
//! `operator` (people's requests) and `resume` (after a restart). Every public item is
//! re-exported here: `release::X` is the one path callers use.

mod analysis;
mod builder;
mod gating;
mod model;
mod operator;
mod progress;
mod protocol;
mod resume;
mod rollback;
mod step;

pub use crate::instead::Instead;
pub use crate::notice::NoticeKind;
pub use model::{
    AuditEvent, Decision, DecisionKind, OutcomeKind, Phase, PreApproval, Release, Transition,
};
pub use protocol::{Action, CheckStage, Effect, GateResult, Input, MeasureWindow, Variant};
pub use step::step;
