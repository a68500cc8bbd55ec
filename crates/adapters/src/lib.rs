//! rampart-adapters: the embedded default's real implementations of the core ports.
//!
//! One module per adapter, each with the same shape: a type that owns the connection
//! or resource, and `impl Port for Type`. Adapters translate their own failures into
//! [`rampart_core::ports::PortError`] at the boundary and never make release decisions.

#![deny(unsafe_code)] // one exception: a socket received from another process (proxy::plane)

pub mod accesslog;
pub mod alertmanager;
pub mod clock;
pub mod flags;
pub mod gates;
pub mod haproxy;
pub mod http;
pub mod lockfile;
pub mod nginx;
pub mod notify;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod query;
pub mod store;
pub mod telemetry;
