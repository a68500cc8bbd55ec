//! One module per `rampart` command (or per small family sharing one body, as
//! `operator`): its `#[derive(Args)]` struct next to its body, which returns the exit
//! code.
//!
//! A command owns its arguments and what it prints. An engine that other commands
//! (or `serve`, `mcp`) reuse stays a top-level module that the command calls (`run`,
//! `replay`, `migrations`, `serve`, `mcp`, `load`, `sample`). Must not import `cli`.

pub mod audit;
pub mod bench;
pub mod completions;
pub mod demo;
pub mod events;
pub mod flags;
pub mod freeze;
pub mod gameday;
pub mod import;
pub mod list;
pub mod load;
pub mod mcp;
pub mod migrations;
pub mod operator;
pub mod proxy;
pub mod replay;
pub mod rollback;
pub mod run;
pub mod runbook;
pub mod sample_service;
pub mod serve;
pub mod skill;
pub mod status;
pub mod stop;
pub mod store_args;
pub mod token;
pub mod validate;
pub mod windows;
