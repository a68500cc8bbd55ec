#![allow(clippy::unwrap_used)]
//! Adversarial review (revB) of release windows on the night clocks go forward,
//! through `Windows` and the real state machine on virtual time (every instant is an
//! explicit `now`; nothing sleeps or reads a clock).
//!
//! Europe/Berlin, Sunday 2026-03-29: at 02:00 CET (01:00 UTC) clocks jump to 03:00
//! CEST. A window `hours: "02:30-03:30"` on Sundays is open that night from 03:00 to
//! 03:30 CEST (01:00-01:30 UTC): `Windows::status` says so. `Windows::next_open`
//! (crates/core/src/windows.rs) only tries each window's *start* as a candidate,
//! turned into an instant with jiff's "compatible" reading: 02:30, which does not
//! exist that night, becomes 03:30 CEST, the very minute the window closes, so the
//! night's opening is skipped and the next candidate is a week later.

mod common;

use rampart_core::metrics::IntervalSample;
use rampart_core::migrations::Class;
use rampart_core::release::{Action, Input, Phase, Release, step};
use rampart_core::windows::Status;
use rampart_core::{Millis, Policy, Weight};

/// Milliseconds since the epoch of a UTC wall-clock time.
fn utc(s: &str) -> Millis {
    let dt: jiff::civil::DateTime = s.parse().unwrap();
    let z = dt.to_zoned(jiff::tz::TimeZone::UTC).unwrap();
    u64::try_from(z.timestamp().as_millisecond()).unwrap()
}

const POLICY: &str = r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:8080"}}
strategy:
  canary:
    steps:
      - {weight: 10, bake: 2h}
analysis:
  interval: 30s
  min_samples: 10
  metrics:
    - {metric: error_rate, judge: {max: 2%}}
windows:
  timezone: Europe/Berlin
  allow:
    - {days: [sun], hours: "02:30-03:30"}
"#;

fn policy() -> Policy {
    Policy::from_yaml(POLICY).unwrap()
}

/// LOW (wait) / see the next test for the unsafe side. `next_open` is documented as
/// "the first instant at or after `at` when releases may run". At 00:30 UTC (01:30
/// CET) that night, `status` is Open at 01:10 UTC (03:10 CEST, inside 02:30-03:30), so
/// `next_open` must be at or before it: expected 01:00 UTC (03:00 CEST).
///
/// Observed: `next_open` returns 2026-04-05 00:30 UTC, a week later. A release started
/// then waits a week for a window that opens in 30 minutes (or, started ten minutes
/// earlier, is blocked: the wait exceeds the default `max_wait` of 7d).
#[test]
fn next_open_finds_a_window_whose_start_falls_in_the_hour_clocks_skip() {
    let p = policy();
    let w = p.windows.as_ref().unwrap();
    let at = utc("2026-03-29 00:30");
    assert!(matches!(w.status(at), Status::Closed { .. }));
    let inside = utc("2026-03-29 01:10");
    assert_eq!(
        w.status(inside),
        Status::Open,
        "03:10 CEST is inside 02:30-03:30"
    );
    let next = w.next_open(at).unwrap();
    assert!(
        next <= inside,
        "next_open({at}) = {next} ({}), after {inside} ({}) where status is already Open",
        w.show(next),
        w.show(inside)
    );
    assert_eq!(next, utc("2026-03-29 01:00"));
}

fn healthy() -> IntervalSample {
    IntervalSample {
        stable: common::stats(900, 1),
        canary: common::stats(100, 0),
        ..Default::default()
    }
}

/// Starts a release by alice at `t0` (outside the window), has bob approve it at once,
/// and drives it healthy (every action succeeding at once, every wait a Tick at the
/// release's own wake-up time) until it holds short of 100 % or asks for 100 %.
/// Returns the instant it asked for 100 %, if it did, and the state.
fn approved_outside_the_window(p: &Policy, t0: Millis) -> (Option<Millis>, Release) {
    let start = Input::Start {
        release_id: "r".into(),
        version: "v2".into(),
        stable: Some("v1".into()),
        automatic_rollbacks: 0,
        initiator: "alice".into(),
        planned_migrations: None,
        hotfix: None,
    };
    let mut s = step(p, &Release::default(), &start, t0).state;
    assert_eq!(
        s.phase,
        Phase::AwaitingApproval,
        "outside the window it waits"
    );
    let mut now = t0 + 60_000;
    s = step(
        p,
        &s,
        &Input::Approved {
            by: "bob".into(),
            asked_at: Some(now),
        },
        now,
    )
    .state;
    assert_eq!(s.pending, Some(Action::RunGates), "approved: it starts now");
    for _ in 0..10_000 {
        if s.phase.is_terminal() || s.window_hold.is_some() {
            break;
        }
        let input = match &s.pending {
            Some(Action::SetWeight { weight, .. }) if *weight == Weight::FULL => {
                return (Some(now), s);
            }
            Some(a) => common::succeeded(a, Class::Expand)
                .unwrap_or_else(|| Input::Measured { sample: healthy() }),
            None => {
                now = now.max(
                    s.wake_at()
                        .unwrap_or_else(|| panic!("stuck in {:?}", s.phase)),
                );
                Input::Tick
            }
        };
        s = step(p, &s, &input, now).state;
    }
    (None, s)
}

/// Control (passes): the same release a week earlier, on an ordinary Sunday
/// (2026-03-22, window 02:30-03:30 CET = 01:30-02:30 UTC), started at 00:30 UTC and
/// approved: ready for 100 % at about 02:31 UTC, after the window closed, it holds.
#[test]
fn control_on_an_ordinary_sunday_the_approved_release_holds_after_the_window() {
    let p = policy();
    let (full_at, s) = approved_outside_the_window(&p, utc("2026-03-22 00:30"));
    assert_eq!(full_at, None, "{:?}", s.phase);
    assert!(s.window_hold.is_some(), "{:?}", s.phase);
}

/// MEDIUM (an unattended 100 % outside a window). docs/safety.md: "An approval to
/// start a release outside a window attends it only until the window opens, not into
/// the next closed time", and docs/policy.md (windows): "a release still running when
/// a later closed time comes holds short of 100 % again".
///
/// Started by alice at 00:30 UTC (closed), approved by bob at once, the release is
/// attended until `next_open` (operator.rs, `PreApproval::Window`). Its canary bakes
/// 2 h and is ready for 100 % at about 02:31 UTC (04:31 CEST): the window opened at
/// 03:00 CEST and closed at 03:30 CEST, so it must hold short of 100 %
/// (`holding_for_window`).
///
/// Observed: `attended_until` is `next_open`, a week away (see above), so the release
/// counts as attended and moves to 100 % in closed time, unattended.
#[test]
fn a_window_approval_on_the_night_clocks_jump_does_not_attend_into_the_next_closed_time() {
    let p = policy();
    let (full_at, s) = approved_outside_the_window(&p, utc("2026-03-29 00:30"));
    let w = p.windows.as_ref().unwrap();
    if let Some(at) = full_at {
        panic!(
            "all traffic moved at {} ({:?}), after the window closed at 03:30 CEST; attended until {:?}",
            w.show(at),
            w.status(at),
            s.attended_until.map(|t| w.show(t))
        );
    }
    assert!(
        s.window_hold.is_some(),
        "holds short of 100 %: {:?}",
        s.phase
    );
}
