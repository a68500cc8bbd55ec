//! rampart-core: the pure heart of rampart.
//!
//! Policy decoding and validation, the release state machine, the analysis judges and
//! the ports the controller drives. Nothing here performs I/O, spawns tasks or reads a
//! clock; everything is deterministic and can be replayed.

#![forbid(unsafe_code)]

pub mod admission;
pub mod decode;
pub mod flags;
pub mod import;
pub mod instead;
pub mod judge;
pub mod metrics;
pub mod migrations;
pub mod notice;
pub mod policy;
pub mod ports;
pub mod release;
pub mod replay;
pub mod runbook;
pub mod samples;
pub mod sequential;
pub mod sim;
pub mod skill;
pub mod units;
pub mod windows;
pub mod yaml;

pub use policy::Policy;
pub use release::{Action, Effect, Input, OutcomeKind, Phase, Release, Transition, Variant, step};
pub use units::{Millis, Weight};
