//! The `rampart` command: CLI, demo, bundled sample service and load generator.
//!
//! Thin by design: it parses arguments, wires the embedded adapters to the controller,
//! and prints. Decisions live in `rampart-core`; the runtime loop in
//! `rampart-controller`.

#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod commands;
pub mod dataplane;
pub mod load;
pub mod mcp;
pub mod migrations;
pub mod operator;
pub mod progress;
pub mod replay;
pub mod report;
pub mod run;
pub mod sample;
pub mod serve;
