//! Adversarial review of low traffic, the built-in load and the watch after
//! promotion, on the release state machine's virtual time. Each test states what the
//! contract (docs/policy.md) promises; a failing one is a finding.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use rampart_core::metrics::{IntervalSample, QueryReading, VariantStats};
use rampart_core::release::{Action, GateResult, Input, Phase, Release, Variant, step};
use rampart_core::{Policy, Weight};

fn stats(requests: u64, errors: u64) -> VariantStats {
    VariantStats {
        requests,
        errors,
        ..VariantStats::default()
    }
}

/// `n` requests, each taking `ms` milliseconds (to headers and in total).
fn timed(n: u64, ms: u64) -> VariantStats {
    let mut v = stats(n, 0);
    for _ in 0..n {
        v.latency.record_micros(ms * 1000);
        v.latency_total.record_micros(ms * 1000);
    }
    v
}

fn start_input() -> Input {
    Input::Start {
        release_id: "r".into(),
        version: "v2".into(),
        stable: Some("v1".into()),
        automatic_rollbacks: 0,
        initiator: "alice".into(),
        planned_migrations: None,
        hotfix: None,
    }
}

/// Drives `p` from `s` with every action succeeding; measurements come from
/// `measure`, given the weight in force. Stops at the end, or when `stop` holds.
fn drive(
    p: &Policy,
    mut s: Release,
    measure: impl Fn(Weight) -> IntervalSample,
    stop: impl Fn(&Release) -> bool,
) -> Release {
    if s.phase == Phase::Pending {
        s = step(p, &s, &start_input(), 0).state;
    }
    let mut now = s.started_at;
    for _ in 0..10_000 {
        if s.phase.is_terminal() || stop(&s) {
            break;
        }
        let input = match s.pending.clone() {
            Some(Action::RunGates) => Input::GatesChecked { results: vec![] },
            Some(Action::Scale {
                variant, replicas, ..
            }) => Input::Scaled {
                variant,
                replicas,
                ok: true,
                detail: String::new(),
            },
            Some(Action::Deploy { variant, .. }) => Input::Deployed {
                variant,
                ok: true,
                detail: String::new(),
            },
            Some(Action::SetWeight { weight, .. }) => Input::TrafficSet { weight },
            Some(Action::Measure(_)) => Input::Measured {
                sample: measure(s.weight),
            },
            Some(Action::FlagsOff { .. }) => Input::FlagsOff {
                ok: true,
                detail: String::new(),
            },
            Some(Action::Stop { variant }) => Input::Stopped {
                variant,
                ok: true,
                detail: String::new(),
            },
            Some(Action::VerifyStable) => Input::StableVerified {
                healthy: true,
                detail: String::new(),
            },
            Some(Action::RunChecks { stage }) => Input::ChecksDone {
                stage,
                results: vec![GateResult {
                    name: "smoke".into(),
                    ok: true,
                    detail: String::new(),
                }],
            },
            Some(other) => panic!("unexpected action {other:?}"),
            None => {
                now = now.max(s.wake_at().unwrap());
                Input::Tick
            }
        };
        s = step(p, &s, &input, now).state;
    }
    s
}

/// A canary judged on its p99 (`max: 500ms`) with a watch after the switch, for a
/// service whose clients wait for their answers (closed loop): plenty of requests
/// while it has a share and is fast; at 100 % `at_full` requests an interval taking
/// `full_ms` each.
fn low_traffic_watch(at_full: u64, full_ms: u64) -> Release {
    let p = Policy::from_yaml(
        r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:8080"}}
strategy: {canary: {steps: [{weight: 50, bake: 1m}]}}
analysis:
  interval: 10s
  min_samples: 20
  failure_limit: 2
  metrics:
    - {name: p99, metric: latency_p99, judge: {max: 500ms}}
post_release: {watch: 5m}
"#,
    )
    .unwrap();
    drive(
        &p,
        Release::default(),
        |w| {
            if w == Weight::FULL {
                IntervalSample {
                    canary: timed(at_full, full_ms),
                    ..Default::default()
                }
            } else {
                IntervalSample {
                    stable: timed(400, 10),
                    canary: timed(400, 10),
                    ..Default::default()
                }
            }
        },
        |_| false,
    )
}

/// docs/policy.md, *Low traffic*: "A slow version gets fewer requests from clients that
/// wait for their answers, so this is what judges it: 60 times slower at 8 requests an
/// interval against `min_samples: 20`, it is rolled back after two pooled windows
/// instead of halting after ten inconclusive intervals"; and during the watch "every
/// metric is judged each interval as during the steps". The watch does not pool
/// (analysis.rs: `Judge::Threshold(t) if watching => judge::threshold_in(..)`): the
/// version that is slow at 100 % is never judged, and instead of switching back at once
/// to the previous version (kept running for that) the release halts and pages.
#[test]
fn a_slow_version_with_few_requests_after_the_switch_is_switched_back_not_halted() {
    let s = low_traffic_watch(8, 600);
    assert_eq!(
        s.phase,
        Phase::RolledBack,
        "decision: {:?}",
        s.decision.as_ref().map(|d| &d.reason)
    );
}

/// The same, healthy: 8 fast requests an interval at 100 % pool to 24 every three
/// intervals and pass; the watch cannot judge a single interval alone and halts.
#[test]
fn a_healthy_version_with_few_requests_after_the_switch_is_promoted() {
    let s = low_traffic_watch(8, 10);
    assert_eq!(
        s.phase,
        Phase::Succeeded,
        "decision: {:?}",
        s.decision.as_ref().map(|d| &d.reason)
    );
}

/// docs/policy.md, the watch: "A plain `query` value has no baseline: only its absolute
/// limits are judged during the watch." A query metric with only a ratio limit thus
/// has nothing to be judged on during the watch, yet it is inconclusive every interval
/// (judge.rs `judge_query`: "no stable value for the ratio"), so the watch never has a
/// clean interval and every release of this accepted policy halts after promotion,
/// however healthy. Either the policy is refused at its line, or the release promotes.
#[test]
fn a_ratio_only_query_metric_does_not_make_every_watch_halt() {
    let yaml = r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:8080"}}
strategy: {canary: {steps: [{weight: 20, bake: 1m}]}}
analysis:
  interval: 30s
  prometheus: http://127.0.0.1:9090
  metrics:
    - name: errors
      source: prometheus
      query: 'sum(rate(errors{track="{variant}"}[1m]))'
      judge: {max_ratio_to_stable: 2}
post_release: {watch: 2m}
"#;
    // Refused at the metric's judge: nothing would judge it during the watch.
    let e = Policy::from_yaml(yaml).unwrap_err();
    let d = e
        .diagnostics
        .iter()
        .find(|d| d.path == "analysis.metrics[0].judge")
        .unwrap_or_else(|| panic!("{e:?}"));
    let judge_line = yaml.lines().position(|l| l.contains("judge:")).unwrap() + 1;
    assert_eq!(d.line as usize, judge_line, "{d:?}");
    // With an absolute limit beside the ratio, the watch judges it by that limit.
    let p = Policy::from_yaml(&yaml.replace(
        "judge: {max_ratio_to_stable: 2}",
        "judge: {max_ratio_to_stable: 2, max: 1}",
    ))
    .unwrap();
    let s = drive(
        &p,
        Release::default(),
        |w| IntervalSample {
            queries: vec![QueryReading {
                name: "errors".into(),
                // At 100 % the previous version's series is gone.
                stable: (w != Weight::FULL).then_some(0.1),
                canary: Some(0.1),
                ..Default::default()
            }],
            ..Default::default()
        },
        |_| false,
    );
    assert_eq!(
        s.phase,
        Phase::Succeeded,
        "decision: {:?}",
        s.decision.as_ref().map(|d| &d.reason)
    );
}

/// Rolling: at 100 % the old replicas are gone (scaled to 0 batch by batch). A
/// controller restarted during the watch re-establishes the world with
/// `Deploy { Stable }` (resume.rs, `Phase::Watching => chain.extend(ensure_stable)`),
/// which starts the previous version's full replica set again: a second full copy of
/// the service, which rolling exists to avoid, and a state (`stable_replicas: 0`) that
/// no longer says what runs. The resume must re-establish what the state records.
#[test]
fn a_restart_during_a_rolling_watch_does_not_start_the_old_replicas_again() {
    let p = Policy::from_yaml(
        r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"], replicas: 4}}
traffic: {proxy: {listen: "127.0.0.1:8080"}}
strategy:
  rolling: {batch: 2, bake: 1m}
analysis:
  interval: 30s
  min_samples: 10
  metrics:
    - {metric: error_rate, judge: {max: 2%}}
post_release: {watch: 5m}
"#,
    )
    .unwrap();
    let healthy = |_| IntervalSample {
        stable: stats(500, 1),
        canary: stats(500, 1),
        ..Default::default()
    };
    let s = drive(&p, Release::default(), healthy, |s| {
        s.phase == Phase::Watching && s.pending.is_none()
    });
    assert_eq!(s.phase, Phase::Watching);
    assert_eq!(s.stable_replicas, 0, "no old replica left at 100 %");
    let t = step(&p, &s, &Input::Resumed, s.next_analysis_at.unwrap() - 1000);
    let mut chain: Vec<Action> = t.state.pending.clone().into_iter().collect();
    chain.extend(t.state.queued.clone());
    let starts_old = chain.iter().any(|a| {
        matches!(
            a,
            Action::Deploy {
                variant: Variant::Stable,
                ..
            }
        ) || matches!(
            a,
            Action::Scale { variant: Variant::Stable, replicas, .. } if *replicas > 0
        )
    });
    assert!(
        !starts_old,
        "resuming the watch starts the old version's replicas again: {chain:?}"
    );
}

/// docs/policy.md, *Built-in load*: with `counts: false` "the embedded proxy routes it
/// ... the request carries a random token ... (so `url` cannot be set then)". The load
/// is sent as `http://` to the proxy's `listen` (rampart/src/load.rs: a plain
/// `HttpConnector`; run.rs: `format!("http://{}", entry)`), but with
/// `traffic.proxy.tls` that address speaks only TLS: every load request fails its
/// handshake, which counts nowhere (docs/dataplane.md, TLS), so the quiet service the
/// load was configured for is still not judged, silently, and no `url` may fix it.
/// Refuse the combination at its line (or send the load over TLS).
#[test]
fn uncounted_load_behind_a_tls_proxy_is_refused_since_it_cannot_be_delivered() {
    let yaml = r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"]}}
traffic:
  proxy:
    listen: "127.0.0.1:8443"
    tls: {cert: cert.pem, key: key.pem}
strategy: {canary: {steps: [{weight: 20, bake: 1m}]}}
analysis:
  interval: 30s
  load: {rate: 5, counts: false}
  metrics:
    - {metric: error_rate, judge: {max: 2%}}
"#;
    let e = Policy::from_yaml(yaml)
        .expect_err("accepted: load sent in plain HTTP to a TLS-only listener");
    assert!(
        e.diagnostics
            .iter()
            .any(|d| d.path == "analysis.load.url" && d.message.contains("TLS")),
        "{e:?}"
    );
    // Counted load sent to a plain address of the service is fine.
    Policy::from_yaml(&yaml.replace(
        "{rate: 5, counts: false}",
        "{rate: 5, url: 'http://127.0.0.1:8080'}",
    ))
    .unwrap();
}
