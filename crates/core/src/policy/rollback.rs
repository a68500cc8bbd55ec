//! The `rollback` section: drain and verification times, the cap on automatic
//! rollbacks and the flags switched off first, with its decoder. It must not decide
//! when to roll back.

use std::time::Duration;

use super::values::{HOUR, positive};
use crate::decode::Decoder;
use crate::yaml::Node;

/// Rollback settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollback {
    /// How long in-flight canary requests get to finish after traffic leaves it.
    pub drain: Duration,
    /// How long stable gets to prove healthy after a rollback.
    pub verify_timeout: Duration,
    /// A cap on automatic rollbacks of the service, across releases.
    pub max_automatic: Option<RollbackCap>,
    /// Flags switched off first on any rollback (level 1), besides a ramped flag.
    pub flags: Vec<String>,
}

/// At most `count` automatic rollbacks per `per`; at the cap, a failing release halts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RollbackCap {
    /// Automatic rollbacks allowed in the window.
    pub count: u32,
    /// The window.
    pub per: Duration,
}

pub(super) fn decode_rollback(cx: &mut Decoder, node: &Node, path: &str) -> Option<Rollback> {
    let m = cx.map(
        node,
        path,
        &["drain", "verify_timeout", "max_automatic", "flags"],
    )?;
    let max_automatic = m.optional_with(cx, "max_automatic", |cx, n, p| {
        let m = cx.map(n, p, &["count", "per"])?;
        let count = m.required::<u32>(cx, "count");
        let per = m.required::<Duration>(cx, "per");
        Some(RollbackCap {
            count: count?,
            per: per?,
        })
    });
    let drain = m
        .optional::<Duration>(cx, "drain")
        .unwrap_or(Duration::from_secs(10));
    let verify_timeout =
        positive(cx, &m, "verify_timeout", HOUR).unwrap_or(Duration::from_secs(30));
    let flags = m.optional::<Vec<String>>(cx, "flags").unwrap_or_default();
    Some(Rollback {
        drain,
        verify_timeout,
        max_automatic,
        flags,
    })
}
