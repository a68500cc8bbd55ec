//! The `rampart` command: CLI, demo, bundled sample service and load generator.
//!
//! Thin by design: it parses arguments, wires the embedded adapters to the controller,
//! and prints. Decisions live in `rampart-core`; the runtime loop in
//! `rampart-controller`.

#![forbid(unsafe_code)]

pub mod bench;
pub mod bench_controller;
pub mod cli;
pub mod client;
pub mod dataplane;
pub mod demo;
pub mod flags_cmd;
pub mod gameday;
pub mod load;
pub mod mcp;
pub mod migrations_cmd;
pub mod ops;
pub mod progress;
pub mod proxy_cmd;
pub mod run;
pub mod sample;
pub mod serve;
