#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Review D: how router logs and metric providers feed the judges.

use std::time::Duration;

use rampart_adapters::accesslog::parse;

/// A version that hangs until the router gives up on it (nginx's
/// `proxy_read_timeout`, 60 s by default; HAProxy's `timeout server`, 30 s in
/// docs/adapters.md) is logged `504` with no header time (`-`, `-1`) and the wait as
/// its total time. The line is counted as an error but in NEITHER latency histogram,
/// so the slowest requests vanish from the canary's p99 and a latency metric reads
/// the hanging canary as fast. nginx's 499 (the client, not the router, gave up) is
/// timed by its wait "so that a version hanging past its callers' patience shows,
/// whichever router is in front of it"; the router's own timeout is the same wait.
#[test]
fn a_request_the_router_timed_out_is_timed_by_its_wait() {
    let nginx = parse("<190>nginx: rampart-s web canary 504 - 60.001").unwrap();
    assert_eq!(
        nginx.header_time,
        Some(Duration::from_millis(60_001)),
        "nginx upstream timeout: {nginx:?}"
    );
    let haproxy = parse("<134>haproxy[12]: rampart-ms web canary1 504 -1 30001").unwrap();
    assert_eq!(
        haproxy.header_time,
        Some(Duration::from_millis(30_001)),
        "HAProxy `timeout server`: {haproxy:?}"
    );
}
