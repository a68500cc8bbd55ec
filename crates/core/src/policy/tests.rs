//! Policy decoding tests: documented defaults, every diagnostic's line, field and
//! hint. Tests only; nothing here is compiled into rampart.

use super::*;
use crate::units::Weight;

pub(crate) const MINIMAL: &str = r#"
service: checkout
deploy:
  process:
    command: ["./checkout", "--port", "{port}"]
traffic:
  proxy:
    listen: 127.0.0.1:8080
strategy:
  canary:
    steps:
      - weight: 10
        bake: 1m
analysis:
  metrics:
    - metric: error_rate
      judge: { max: 1% }
"#;

fn errors(src: &str) -> Vec<Diagnostic> {
    Policy::from_yaml(src).unwrap_err().diagnostics
}

#[test]
fn minimal_policy_gets_documented_defaults() {
    let p = Policy::from_yaml(MINIMAL).unwrap();
    assert_eq!(p.analysis.interval, Duration::from_secs(10));
    assert_eq!(p.analysis.metrics[0].name, "error_rate");
    assert_eq!(p.analysis.metrics[0].min_samples, 50);
    assert_eq!(p.analysis.metrics[0].failure_limit, 2);
    assert_eq!(
        p.analysis.metrics[0].failure_count,
        FailureCount::Consecutive
    );
    assert_eq!(p.proxy().unwrap().sticky, Sticky::None);
    assert_eq!(
        p.process().unwrap().readiness.timeout,
        Duration::from_secs(30)
    );
    assert_eq!(p.rollback.drain, Duration::from_secs(10));
}

/// Shared settings are written once: defined under a top-level `x-` key (never read)
/// and merged in with YAML's merge key, each use overriding what it needs. An error in
/// a merged value points at where the value is written; `x-` keys below the top level
/// are unknown fields like any other.
#[test]
fn anchors_under_x_keys_merge_into_fields() {
    let src = MINIMAL.replace(
        "analysis:\n  metrics:\n    - metric: error_rate\n      judge: { max: 1% }\n",
        r#"x-metric: &metric
  min_samples: 200
  failure_limit: 3
  judge: sequential
analysis:
  metrics:
    - <<: *metric
      metric: error_rate
    - <<: *metric
      metric: latency_p99
      min_samples: 400
"#,
    );
    let p = Policy::from_yaml(&src).unwrap();
    let m = &p.analysis.metrics;
    assert_eq!((m[0].min_samples, m[0].failure_limit), (200, 3));
    assert_eq!((m[1].min_samples, m[1].failure_limit), (400, 3));
    assert!(m.iter().all(|m| matches!(m.judge, Judge::Sequential(_))));
    // An anchor comes before its aliases.
    let steps = format!(
        "x-step: &step {{weight: 10, bake: 2m}}\n{}",
        src.replace(
            "      - weight: 10\n        bake: 1m\n",
            "      - <<: *step\n        weight: 20\n",
        )
    );
    let p = Policy::from_yaml(&steps).unwrap();
    let s = &p.strategy.steps()[0];
    assert_eq!(
        (s.weight, s.bake),
        (Weight::from_percent(20).unwrap(), Duration::from_secs(120))
    );
    // A bad value in the anchor: at the anchor's line, under the path that merged it.
    let bad = src.replace("failure_limit: 3", "failure_limit: three");
    let line = bad.lines().position(|l| l.contains("three")).unwrap() + 1;
    let d = errors(&bad);
    assert!(
        d.iter()
            .any(|d| d.line as usize == line && d.path == "analysis.metrics[0].failure_limit"),
        "{d:?}"
    );
    // Below the top level an `x-` key is an unknown field.
    let nested = src.replace(
        "      metric: error_rate\n",
        "      metric: error_rate\n      x-note: 1\n",
    );
    let d = errors(&nested);
    assert!(d.iter().any(|d| d.path.ends_with("x-note")), "{d:?}");
}

#[test]
fn typo_in_field_name_names_line_and_field() {
    let src = MINIMAL.replace("bake: 1m", "baek: 1m");
    let d = errors(&src);
    assert!(
        d.iter().any(|d| d.path == "strategy.canary.steps[0].baek"
            && d.line == 13
            && d.message.contains("did you mean `bake`")),
        "{d:?}"
    );
    assert!(
        d.iter()
            .any(|d| d.path == "strategy.canary.steps[0].bake" && d.message.contains("missing")),
        "{d:?}"
    );
}

#[test]
fn weight_over_100_is_rejected_at_its_line() {
    let d = errors(&MINIMAL.replace("weight: 10", "weight: 120"));
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].path, "strategy.canary.steps[0].weight");
    assert_eq!(d[0].line, 12);
    assert!(d[0].message.contains("0 to 100"));
}

#[test]
fn bad_duration_is_rejected_with_a_fix() {
    let d = errors(&MINIMAL.replace("bake: 1m", "bake: 10 minutes"));
    assert_eq!(d[0].path, "strategy.canary.steps[0].bake");
    assert!(d[0].message.contains("duration unit"), "{d:?}");
}

/// A wait that would never end is refused at its line, not accepted and waited on.
#[test]
fn durations_that_defeat_their_purpose_are_refused_at_their_line() {
    for (readiness, expected) in [
        ("9223372036854775807ms", "at most 365d"),
        ("2h", "2h is too long; at most 1h"),
    ] {
        let src = MINIMAL.replace(
            r#"    command: ["./checkout", "--port", "{port}"]"#,
            &format!(
                "    command: [\"./checkout\", \"--port\", \"{{port}}\"]\n    readiness: {{http: /healthz, timeout: {readiness}}}"
            ),
        );
        let d = errors(&src);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].path, "deploy.process.readiness.timeout");
        assert_eq!(d[0].line, 6);
        assert!(d[0].message.contains(expected), "{d:?}");
    }
    let ok = MINIMAL.replace(
        r#"    command: ["./checkout", "--port", "{port}"]"#,
        "    command: [\"./checkout\", \"--port\", \"{port}\"]\n    readiness: {http: /healthz, timeout: 1h}",
    );
    assert!(Policy::from_yaml(&ok).is_ok());
}

#[test]
fn every_problem_is_reported_at_once() {
    let src = MINIMAL
        .replace("weight: 10", "weight: 120")
        .replace("127.0.0.1:8080", "localhost")
        .replace("error_rate", "eror_rate");
    let d = errors(&src);
    assert_eq!(d.len(), 3, "{d:?}");
    assert!(d.windows(2).all(|w| w[0].line <= w[1].line));
}

#[test]
fn decreasing_weights_are_rejected() {
    let src = MINIMAL.replace(
        "      - weight: 10\n        bake: 1m\n",
        "      - weight: 50\n        bake: 1m\n      - weight: 10\n        bake: 1m\n",
    );
    let d = errors(&src);
    assert_eq!(d[0].path, "strategy.canary.steps[1].weight", "{d:?}");
}

#[test]
fn command_must_receive_the_port() {
    let d = errors(&MINIMAL.replace(r#", "--port", "{port}""#, ""));
    assert!(d[0].message.contains("{port}"), "{d:?}");
}

#[test]
fn latency_max_is_a_duration_and_error_rate_max_is_a_rate() {
    let src = MINIMAL.replace(
            "judge: { max: 1% }",
            "judge: { max: 1% }\n    - metric: latency_p99\n      judge: { max: 800ms, max_ratio_to_stable: 1.5 }",
        );
    let p = Policy::from_yaml(&src).unwrap();
    let max = |i: usize| match p.analysis.metrics[i].judge {
        Judge::Threshold(t) => t.max,
        Judge::Sequential(_) => None,
    };
    assert_eq!(max(0), Some(0.01));
    assert_eq!(max(1), Some(800.0));
    assert_eq!(p.analysis.metrics[1].metric, BuiltinMetric::Latency(0.99));
    let bad = src.replace("max: 800ms", "max: 5%");
    assert!(errors(&bad)[0].path.ends_with("judge.max"));
}

#[test]
fn latency_total_names_a_total_time_quantile_judged_like_latency() {
    let src = MINIMAL.replace(
        "judge: { max: 1% }",
        "judge: { max: 1% }\n    - metric: latency_total_p99\n      judge: { max: 2s }\n    - metric: latency_total_p50\n      judge: sequential",
    );
    let p = Policy::from_yaml(&src).unwrap();
    let total = &p.analysis.metrics[1];
    assert_eq!(total.metric, BuiltinMetric::LatencyTotal(0.99));
    assert_eq!(total.name, "latency_total_p99");
    assert_eq!(total.direction, Direction::LowerIsBetter);
    match total.judge {
        Judge::Threshold(t) => assert_eq!(t.max, Some(2000.0)),
        Judge::Sequential(_) => panic!("a threshold judge"),
    }
    let p50 = &p.analysis.metrics[2];
    assert_eq!(p50.metric, BuiltinMetric::LatencyTotal(0.5));
    match p50.judge {
        Judge::Sequential(s) => assert_eq!(s.tolerance, 1.25, "latency's tolerance"),
        Judge::Threshold(_) => panic!("a sequential judge"),
    }
    // Every quantile of both timings, and nothing in between.
    for (name, metric) in [
        ("latency_total_p90", BuiltinMetric::LatencyTotal(0.9)),
        ("latency_total_p95", BuiltinMetric::LatencyTotal(0.95)),
        ("latency_total_p999", BuiltinMetric::LatencyTotal(0.999)),
        ("latency_p999", BuiltinMetric::Latency(0.999)),
    ] {
        let p = Policy::from_yaml(&src.replace("latency_total_p99", name)).unwrap();
        assert_eq!(p.analysis.metrics[1].metric, metric, "{name}");
        assert_eq!(p.analysis.metrics[1].name, name);
    }
    let bad = errors(&src.replace("latency_total_p99", "latency_total_p42"));
    assert!(bad[0].path.ends_with("metrics[1].metric"), "{bad:?}");
    assert!(bad[0].message.contains("latency_total_p99"), "{bad:?}");
    let bad = errors(&src.replace("max: 2s", "max: 5%"));
    assert!(bad[0].path.ends_with("judge.max"), "{bad:?}");
}

#[test]
fn judge_forms() {
    let with = |judge: &str| MINIMAL.replace("judge: { max: 1% }", &format!("judge: {judge}"));
    let p = Policy::from_yaml(&with("sequential")).unwrap();
    let seq = |alpha| {
        Judge::Sequential(Sequential {
            alpha,
            tolerance: 1.0,
        })
    };
    assert_eq!(p.analysis.metrics[0].judge, seq(DEFAULT_ALPHA));
    let p = Policy::from_yaml(&with("{sequential: {alpha: 0.05}}")).unwrap();
    assert_eq!(p.analysis.metrics[0].judge, seq(0.05));
    let p = Policy::from_yaml(&with("{threshold: {max: 2%}}")).unwrap();
    assert!(
        matches!(p.analysis.metrics[0].judge, Judge::Threshold(Threshold { max: Some(m), .. }) if (m - 0.02).abs() < 1e-12)
    );
    assert!(p.analysis.metrics[0].critical);
    for bad in [
        "sequentail",
        "{sequential: {alpha: 0.7}}",
        "{sequential: {}, max: 1%}",
        "{sequential: {tolerance: 0.5}}",
    ] {
        assert!(Policy::from_yaml(&with(bad)).is_err(), "{bad}");
    }
}

#[test]
fn gates_accept_short_and_long_forms() {
    let src = format!(
        "{MINIMAL}gates:\n  pre:\n    - env: [DATABASE_URL]\n    - http: http://127.0.0.1:9/health\n    - command: [\"true\"]\n    - name: slow\n      command: {{run: [\"sleep\", \"1\"], timeout: 2s}}\n"
    );
    let p = Policy::from_yaml(&src).unwrap();
    assert_eq!(p.gates.pre.len(), 4);
    assert_eq!(p.gates.pre[3].name, "slow");
    let https = src.replace("http://127.0.0.1:9/health", "https://x/health");
    assert!(errors(&https)[0].message.contains("command gate"));
}

#[test]
fn match_steps_come_before_and_alongside_weights() {
    let src = MINIMAL.replace(
            "      - weight: 10\n        bake: 1m\n",
            "      - match: {header: X-Internal-User}\n        bake: 1m\n      - match: {cookie: beta, values: [\"1\"]}\n        weight: 5\n        bake: 1m\n      - weight: 20\n        bake: 1m\n",
        );
    let p = Policy::from_yaml(&src).unwrap();
    let steps = p.strategy.steps();
    assert_eq!(steps[0].weight, Weight::ZERO);
    assert_eq!(
        steps[0].matches[0].source,
        MatchSource::Header("x-internal-user".into())
    );
    assert_eq!(steps[1].weight, Weight::from_percent(5).unwrap());
    assert_eq!(p.strategy.matches_at(2).len(), 2, "matches stay in force");
    assert_eq!(p.strategy.matches_at(0).len(), 1);
    let bad = src.replace("{header: X-Internal-User}", "{header: x, cookie: y}");
    assert!(
        errors(&bad)[0]
            .message
            .contains("one `header` or one `cookie`")
    );
}

#[test]
fn blue_green_with_preview_post_release_and_absolute_metrics() {
    let src = MINIMAL.replace(
            "  canary:\n    steps:\n      - weight: 10\n        bake: 1m\n",
            "  blue_green:\n    preview:\n      - http: /healthz\n      - command: [\"./smoke.sh\", \"{url}\"]\n    stability: 2m\n    keep_previous: 10m\n",
        ) + "post_release:\n  wait: 30s\n  checks: [{http: /ready}]\n  on_failure: halt\n";
    let p = Policy::from_yaml(&src).unwrap();
    assert_eq!(p.strategy.name(), "blue_green");
    assert_eq!(p.strategy.steps()[0].weight, Weight::FULL);
    assert_eq!(p.strategy.steps()[0].bake, Duration::from_secs(120));
    assert_eq!(p.strategy.preview().len(), 2);
    assert_eq!(p.strategy.keep_previous(), Duration::from_secs(600));
    let post = p.post_release.unwrap();
    assert_eq!(
        (post.wait, post.checks.len(), post.on_failure),
        (Duration::from_secs(30), 1, PostFailure::Halt)
    );
    // A ratio-only or sequential metric cannot judge a blue-green release.
    let d = errors(&src.replace("judge: { max: 1% }", "judge: sequential"));
    assert_eq!(d[0].path, "analysis.metrics[0].judge", "{d:?}");
    // Relative paths are only for checks on the new version, not for pre-gates.
    let gate = format!("{MINIMAL}gates:\n  pre:\n    - http: /healthz\n");
    assert!(errors(&gate)[0].message.contains("not an http:// URL"));
}

#[test]
fn rolling_plans_one_step_per_batch() {
    let src = MINIMAL
        .replace(
            "command: [\"./checkout\", \"--port\", \"{port}\"]",
            "command: [\"./checkout\", \"--port\", \"{port}\"]\n    replicas: 5",
        )
        .replace(
            "  canary:\n    steps:\n      - weight: 10\n        bake: 1m\n",
            "  rolling: {batch: 2, bake: 30s}\n",
        );
    let p = Policy::from_yaml(&src).unwrap();
    let r = p.strategy.rolling().unwrap();
    let weights: Vec<u16> = p
        .strategy
        .steps()
        .iter()
        .map(|s| s.weight.basis_points())
        .collect();
    assert_eq!(weights, vec![4000, 8000, 10_000]);
    assert_eq!(
        (r.replicas_at(0), r.replicas_at(1), r.replicas_at(2)),
        (2, 4, 5)
    );
    // The old replicas are replaced batch by batch: none runs at 100 %.
    assert!(p.previous_stopped_at_full().is_some());
    assert_eq!(
        Policy::from_yaml(MINIMAL)
            .unwrap()
            .previous_stopped_at_full(),
        None
    );
    let too_big = src.replace("batch: 2", "batch: 6");
    assert!(
        errors(&too_big)[0]
            .message
            .contains("more than the 5 replica")
    );
}

#[test]
fn sticky_forms() {
    for (text, want) in [
        ("client-ip", Sticky::ClientIp),
        ("{header: X-User}", Sticky::Header("x-user".into())),
        ("{cookie: sid}", Sticky::Cookie("sid".into())),
    ] {
        let src = MINIMAL.replace(
            "listen: 127.0.0.1:8080",
            &format!("listen: 127.0.0.1:8080\n    sticky: {text}"),
        );
        assert_eq!(
            Policy::from_yaml(&src).unwrap().proxy().unwrap().sticky,
            want
        );
    }
}

#[test]
fn empty_and_non_mapping_documents_are_errors_not_panics() {
    for src in ["", "- 1\n- 2\n", "just text", "service: [", "{service: 5}"] {
        assert!(Policy::from_yaml(src).is_err(), "{src}");
    }
}

#[test]
fn prometheus_metrics_need_a_server_a_query_and_a_threshold() {
    let base = MINIMAL.replace("    - metric: error_rate\n      judge: { max: 1% }\n", "");
    let ok = format!(
            "{base}  prometheus: http://127.0.0.1:9090\n  metrics:\n    - {{name: q, source: prometheus, query: 'sum(up{{track=\"{{variant}}\"}})', range: true, judge: {{max: 0.5, max_ratio_to_stable: 2}}}}\n"
        )
        .replace("  metrics:\n  prometheus", "  prometheus");
    let p = Policy::from_yaml(&ok).unwrap_or_else(|e| panic!("{ok}\n{e:?}"));
    let q = p.analysis.metrics[0].query.clone().unwrap();
    assert_eq!(
        (q.query.as_str(), q.range),
        ("sum(up{track=\"{variant}\"})", true)
    );
    let no_server = ok.replace("  prometheus: http://127.0.0.1:9090\n", "");
    assert!(
        errors(&no_server)
            .iter()
            .any(|d| d.message.contains("analysis.prometheus"))
    );
    let sequential = ok.replace(
        "judge: {max: 0.5, max_ratio_to_stable: 2}",
        "judge: sequential",
    );
    assert!(
        errors(&sequential)
            .iter()
            .any(|d| d.message.contains("judged by thresholds"))
    );
    assert_eq!(
        (q.samples, p.analysis.metrics[0].min_samples),
        (None, 0),
        "no floor unless asked"
    );
    let floored = ok.replace(
        "range: true,",
        "range: true, samples: 'sum(increase(requests[{interval}]))',",
    );
    let p = Policy::from_yaml(&floored).unwrap_or_else(|e| panic!("{floored}\n{e:?}"));
    let q = p.analysis.metrics[0].query.clone().unwrap();
    assert_eq!(
        (q.samples.as_deref(), p.analysis.metrics[0].min_samples),
        (Some("sum(increase(requests[{interval}]))"), 50),
        "the floor defaults to analysis.min_samples"
    );
    let p = Policy::from_yaml(&floored.replace("range: true,", "range: true, min_samples: 20,"))
        .unwrap();
    assert_eq!(p.analysis.metrics[0].min_samples, 20);
    let floor_alone = ok.replace("range: true,", "range: true, min_samples: 20,");
    let d = errors(&floor_alone);
    assert!(
        d.iter().any(|d| d.path == "analysis.metrics[0].min_samples"
            && d.line == 17
            && d.message.contains("needs `samples`")),
        "{d:?}"
    );
    let builtin_samples = MINIMAL.replace(
        "judge: { max: 1% }",
        "judge: { max: 1% }\n      samples: 'x'",
    );
    assert!(
        errors(&builtin_samples)
            .iter()
            .any(|d| d.path.ends_with(".samples") && d.message.contains("source: prometheus")),
        "{:?}",
        errors(&builtin_samples)
    );
    let metric_too = ok.replace(
        "query: 'sum(up{track=\"{variant}\"})'",
        "query: 'sum(up{track=\"{variant}\"})', metric: error_rate",
    );
    assert_ne!(metric_too, ok);
    assert!(
        errors(&metric_too)
            .iter()
            .any(|d| d.path.ends_with(".metric"))
    );
}

#[test]
fn notify_hooks_take_secrets_from_the_environment_and_a_cadence() {
    let p = Policy::from_yaml(&format!(
            "{MINIMAL}notify:\n  - slack: {{webhook_env: SLACK_URL}}\n    dashboard: http://grafana\n  - pagerduty: {{routing_key_env: PD_KEY}}\n  - webhook: https://hooks.internal/x\n    secret_env: HOOK_SECRET\n    on: [started, done]\n  - command: [./page.sh]\n"
        ))
        .unwrap();
    assert_eq!(
        p.notify[0].target,
        NotifyTarget::Slack {
            url: Secret::Env("SLACK_URL".into()),
            dashboard: Some("http://grafana".into())
        }
    );
    assert!(p.notify[0].all());
    assert!(
        matches!(&p.notify[1].target, NotifyTarget::PagerDuty { routing_key: Secret::Env(k), url, .. } if k == "PD_KEY" && url.starts_with("https://events.pagerduty.com"))
    );
    assert_eq!(
        p.notify[1].on,
        vec!["approval", "halted", "escalated", "done"]
    );
    assert_eq!(p.notify[2].on, vec!["started", "done"]);
    assert_eq!(p.notify[3].on, PAGES.to_vec());
    for (bad, want) in [
        (
            "  - webhook: http://x\n    secret: a\n    secret_env: B\n",
            "not both",
        ),
        (
            "  - webhook: http://x\n    dashboard: http://d\n",
            "`dashboard` is for",
        ),
        ("  - slack: {}\n", "webhook_env"),
        ("  - command: [x]\n    on: [sometimes]\n", "not valid"),
        ("  - slack: ftp://x\n", "not an http:// or https:// URL"),
    ] {
        let e = errors(&format!("{MINIMAL}notify:\n{bad}"));
        assert!(e.iter().any(|d| d.message.contains(want)), "{bad}: {e:?}");
    }
}

// === Kubernetes ===

const KUBE: &str = r#"
service: checkout
deploy:
  kubernetes:
    namespace: shop
    deployment: checkout
    container: app
    image: registry.example.com/checkout:{version}
traffic:
  kubernetes:
    mode: http_route
    service: checkout
    route: checkout
strategy:
  canary:
    steps:
      - weight: 10
        bake: 1m
analysis:
  prometheus: http://prometheus.monitoring:9090
  metrics:
    - name: errors
      source: prometheus
      query: 'sum(rate(http_errors_total{version="{version}"}[1m]))'
      judge: { max: 0.01 }
"#;

#[test]
fn kubernetes_sections_decode_with_defaults() {
    let p = Policy::from_yaml(KUBE).unwrap();
    let (d, t) = p.kubernetes().unwrap();
    assert_eq!(d.namespace, "shop");
    assert_eq!(d.canary_name, "checkout-canary");
    assert_eq!(d.ready_timeout, Duration::from_secs(300));
    assert_eq!(d.context, None);
    assert_eq!(d.image_of("v2"), "registry.example.com/checkout:v2");
    assert_eq!(
        d.version_of("registry.example.com/checkout:v1.4.1")
            .as_deref(),
        Some("v1.4.1")
    );
    assert_eq!(d.version_of("registry.example.com/other:v1"), None);
    // An admission webhook's digest pin keeps the version (and the image it runs).
    let pinned = format!(
        "registry.example.com/checkout:v1.4.1@sha256:{}",
        "0f".repeat(32)
    );
    assert_eq!(d.version_of(&pinned).as_deref(), Some("v1.4.1"));
    assert!(d.runs(&pinned, "v1.4.1"));
    assert!(!d.runs(&pinned, "v1.4.2"));
    assert!(!d.runs("registry.example.com/checkout@sha256:00", "v1.4.1"));
    // A port in the registry's name is not a digest.
    let mut ported = d.clone();
    ported.image = "registry:5000/checkout:{version}".into();
    assert_eq!(
        ported
            .version_of("registry:5000/checkout:v3@sha256:aa")
            .as_deref(),
        Some("v3")
    );
    // A template that spells its digest compares whole.
    ported.image = "registry:5000/checkout@sha256:{version}".into();
    assert_eq!(
        ported
            .version_of("registry:5000/checkout@sha256:aa")
            .as_deref(),
        Some("aa")
    );
    assert_eq!(
        t.mode,
        KubeMode::HttpRoute {
            service: "checkout".into(),
            route: "checkout".into()
        }
    );
    assert!(p.process().is_none());
    let p = Policy::from_yaml(&KUBE.replace("    namespace: shop\n", "")).unwrap();
    assert_eq!(p.kubernetes().unwrap().0.namespace, "default");
}

#[test]
fn kubernetes_modes_decode() {
    let ratio = KUBE.replace(
        "mode: http_route\n    service: checkout\n    route: checkout",
        "mode: replica_ratio\n    replicas: 10",
    );
    let p = Policy::from_yaml(&ratio).unwrap();
    assert_eq!(
        p.kubernetes().unwrap().1.mode,
        KubeMode::ReplicaRatio { replicas: 10 }
    );
    // A share of traffic is a share of the pods: at 100 % the stable has none.
    assert!(
        p.previous_stopped_at_full()
            .is_some_and(|why| why.contains("replica_ratio"))
    );
    assert_eq!(
        Policy::from_yaml(KUBE).unwrap().previous_stopped_at_full(),
        None
    );
    let selector = KUBE
        .replace("mode: http_route", "mode: service_selector")
        .replace("    route: checkout\n", "")
        .replace("weight: 10", "weight: 100");
    let p = Policy::from_yaml(&selector).unwrap();
    assert_eq!(p.kubernetes().unwrap().1.mode.name(), "service_selector");
    assert_eq!(p.previous_stopped_at_full(), None);
}

#[test]
fn kubernetes_typo_names_line_and_suggests() {
    let d = errors(&KUBE.replace("    container: app", "    contaner: app"));
    assert!(
        d.iter().any(|d| d.path == "deploy.kubernetes.contaner"
            && d.line == 7
            && d.message.contains("did you mean `container`")),
        "{d:?}"
    );
    let d = errors(&KUBE.replace("mode: http_route", "mode: http_routes"));
    assert!(
        d.iter().any(|d| d.path == "traffic.kubernetes.mode"
            && d.line == 11
            && d.message.contains("http_route")),
        "{d:?}"
    );
}

#[test]
fn kubernetes_image_needs_the_version() {
    let d = errors(&KUBE.replace("checkout:{version}", "checkout:latest"));
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].path, "deploy.kubernetes.image");
    assert_eq!(d[0].line, 8);
    assert!(d[0].message.contains("{version}"), "{d:?}");
}

#[test]
fn kubernetes_names_must_be_valid() {
    let d = errors(&KUBE.replace("deployment: checkout", "deployment: Checkout_1"));
    assert_eq!(d[0].path, "deploy.kubernetes.deployment", "{d:?}");
    assert!(d[0].message.contains("lower-case"), "{d:?}");
}

#[test]
fn http_route_mode_needs_a_route() {
    let d = errors(&KUBE.replace("    route: checkout\n", ""));
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].path, "traffic.kubernetes.route");
    let d = errors(&KUBE.replace(
        "    route: checkout\n",
        "    route: checkout\n    replicas: 4\n",
    ));
    assert_eq!(d[0].path, "traffic.kubernetes.replicas", "{d:?}");
    assert!(d[0].message.contains("replica_ratio"), "{d:?}");
}

#[test]
fn kubernetes_traffic_needs_kubernetes_deploy() {
    let src = KUBE.replace(
            "  kubernetes:\n    namespace: shop\n    deployment: checkout\n    container: app\n    image: registry.example.com/checkout:{version}\n",
            "  process:\n    command: [\"./checkout\", \"--port\", \"{port}\"]\n",
        );
    let d = errors(&src);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].path, "traffic.kubernetes");
    assert!(d[0].message.contains("deploy.kubernetes"), "{d:?}");
    let d = errors(&KUBE.replace(
        "  kubernetes:\n    mode: http_route\n    service: checkout\n    route: checkout\n",
        "  proxy:\n    listen: 127.0.0.1:8080\n",
    ));
    assert_eq!(d[0].path, "deploy.kubernetes", "{d:?}");
}

#[test]
fn kubernetes_rejects_builtin_metrics_at_the_metric() {
    let src = KUBE.replace(
        "  metrics:\n",
        "  metrics:\n    - metric: error_rate\n      judge: { max: 1% }\n",
    );
    let d = errors(&src);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].path, "analysis.metrics[0].source");
    assert_eq!(d[0].line, 22);
    assert!(d[0].message.contains("source: prometheus"), "{d:?}");
    assert!(d[0].message.contains("no rampart proxy"), "{d:?}");
    assert!(d[0].message.contains("`buckets`"), "{d:?}");
    // A latency read from Prometheus buckets is no builtin metric: accepted.
    let buckets = src.replace(
        "metric: error_rate\n      judge: { max: 1% }",
        "metric: latency_p99\n      source: prometheus\n      buckets: 'sum by (le) (increase(d_bucket{track=\"{variant}\"}[{interval}]))'\n      judge: sequential",
    );
    let p = Policy::from_yaml(&buckets).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(p.analysis.metrics[0].metric, BuiltinMetric::Latency(0.99));
    // Total time too: nothing in rampart's path times a body on Kubernetes.
    let d = errors(&src.replace(
        "metric: error_rate\n      judge: { max: 1% }",
        "metric: latency_total_p99\n      judge: { max: 800ms }",
    ));
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].message
            .contains("`latency_total_p99` is `source: builtin`"),
        "{d:?}"
    );
}

#[test]
fn service_selector_rejects_partial_weights() {
    let src = KUBE
        .replace("mode: http_route", "mode: service_selector")
        .replace("    route: checkout\n", "");
    let d = errors(&src);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].path, "strategy.canary.steps[0].weight");
    assert_eq!(d[0].line, 16);
    assert!(d[0].message.contains("blue_green"), "{d:?}");
}

#[test]
fn replica_ratio_rejects_weights_no_replica_count_makes() {
    let src = KUBE
        .replace(
            "mode: http_route\n    service: checkout\n    route: checkout",
            "mode: replica_ratio\n    replicas: 4",
        )
        .replace("weight: 10", "weight: 5");
    let d = errors(&src);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].path, "strategy.canary.steps[0].weight");
    assert_eq!(d[0].line, 16);
    assert!(d[0].message.contains("25%, 50%, 75%, 100%"), "{d:?}");
    let d = errors(&src.replace("replicas: 4", "replicas: 0"));
    assert_eq!(d[0].path, "traffic.kubernetes.replicas", "{d:?}");
    // Issue 22, item 14: one pod of 8 is 12.5 %, and the hint must say a weight the
    // decoder then takes.
    let d = errors(&src.replace("replicas: 4", "replicas: 8"));
    assert!(
        d[0].message.contains("(possible: 12.5%, 25%, 37.5%"),
        "{d:?}"
    );
    let ok = src
        .replace("replicas: 4", "replicas: 8")
        .replace("weight: 5", "weight: 12.5");
    Policy::from_yaml(&ok).unwrap_or_else(|e| panic!("{ok}\n{e:?}"));
}

#[test]
fn kubernetes_checks_need_an_absolute_url() {
    let blue_green = KUBE
        .replace("mode: http_route", "mode: service_selector")
        .replace("    route: checkout\n", "")
        .replace(
            "  canary:\n    steps:\n      - weight: 10\n        bake: 1m\n",
            "  blue_green:\n    stability: 1m\n    preview: [{http: /healthz}]\n",
        );
    let d = errors(&blue_green);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].path, "strategy.blue_green.preview[0]");
    assert!(d[0].message.contains("absolute URL"), "{d:?}");
    let ok = blue_green.replace("/healthz", "http://checkout-canary.shop.svc/healthz");
    assert!(Policy::from_yaml(&ok).is_ok());
}

#[test]
fn kubernetes_rejects_rolling_and_match_steps() {
    let d = errors(&KUBE.replace(
        "      - weight: 10\n        bake: 1m\n",
        "      - weight: 10\n        bake: 1m\n        match: {header: x-beta}\n",
    ));
    assert!(
        d.iter().any(|d| d.path == "strategy.canary.steps[0].match"),
        "{d:?}"
    );
}

/// The minimal policy with its metric replaced by `metric` (a flow mapping), a
/// Prometheus server set.
fn with_metric(metric: &str) -> String {
    MINIMAL.replace(
        "  metrics:\n    - metric: error_rate\n      judge: { max: 1% }\n",
        &format!("  prometheus: http://127.0.0.1:9090\n  metrics:\n    - {metric}\n"),
    )
}

#[test]
fn a_limit_on_the_side_where_a_metric_gets_better_is_refused_at_its_line() {
    // Issue 17: `min` on an error rate would fail a canary for having fewer errors.
    let src = MINIMAL.replace("judge: { max: 1% }", "judge:\n        min: 1%");
    let d = errors(&src);
    assert!(
        d.iter().any(|d| d.path == "analysis.metrics[0].judge.min"
            && d.line == 18
            && d.message.contains("`error_rate` gets worse as it rises")
            && d.message.contains("`max`")),
        "{d:?}"
    );
    let ratio = MINIMAL.replace(
        "judge: { max: 1% }",
        "judge: {threshold: {min_ratio_to_stable: 0.9}}",
    );
    assert!(
        errors(&ratio).iter().any(|d| d.path
            == "analysis.metrics[0].judge.threshold.min_ratio_to_stable"
            && d.message.contains("`max_ratio_to_stable`")),
        "{:?}",
        errors(&ratio)
    );
    // Builtin metrics have a direction of their own.
    let latency = MINIMAL.replace(
        "metric: error_rate\n      judge: { max: 1% }",
        "metric: latency_p99\n      direction: higher_is_better\n      judge: { max: 800ms }",
    );
    let d = errors(&latency);
    assert!(
        d.iter().any(|d| d.path == "analysis.metrics[0].direction"
            && d.line == 17
            && d.message.contains("lower_is_better")),
        "{d:?}"
    );
    // A query's declared direction and its limits must agree.
    let q =
        "{name: ok, source: prometheus, query: 'x', direction: higher_is_better, judge: {max: 5}}";
    let d = errors(&with_metric(q));
    assert!(
        d.iter().any(|d| d.path == "analysis.metrics[0].judge.max"
            && d.message.contains("`direction: higher_is_better`")
            && d.message.contains("`min`")),
        "{d:?}"
    );
    // Without `direction`, one side is all a metric may limit.
    let q = "{name: ok, source: prometheus, query: 'x', judge: {max: 5, min: 1}}";
    let d = errors(&with_metric(q));
    assert!(
        d.iter()
            .any(|d| d.path == "analysis.metrics[0].judge.min"
                && d.message.contains("one direction")),
        "{d:?}"
    );
    // Counting good events makes a metric higher-is-better.
    let q = "{name: ok, source: prometheus, good: 'x', total: 'y', direction: lower_is_better, judge: {min: 99%}}";
    let d = errors(&with_metric(q));
    assert!(
        d.iter().any(|d| d.path == "analysis.metrics[0].direction"
            && d.message.contains("`higher_is_better`")),
        "{d:?}"
    );
    let q = "{name: ok, source: prometheus, bad: 'x', total: 'y', judge: {min: 1%}}";
    assert!(
        errors(&with_metric(q))
            .iter()
            .any(|d| d.path == "analysis.metrics[0].judge.min"
                && d.message.contains("a `bad` count is lower is better")),
    );
}

#[test]
fn metrics_know_their_direction() {
    let p = Policy::from_yaml(MINIMAL).unwrap();
    assert_eq!(p.analysis.metrics[0].direction, Direction::LowerIsBetter);
    let q = "{name: rps, source: prometheus, query: 'x{variant}', judge: {min: 10, min_ratio_to_stable: 0.8}}";
    let p = Policy::from_yaml(&with_metric(q)).unwrap();
    let m = &p.analysis.metrics[0];
    assert_eq!(
        m.direction,
        Direction::HigherIsBetter,
        "inferred from `min`"
    );
    assert!(matches!(
        m.judge,
        Judge::Threshold(Threshold {
            min: Some(10.0),
            min_ratio_to_stable: Some(0.8),
            max: None,
            ..
        })
    ));
    let q = "{name: rps, source: prometheus, query: 'x', judge: {max: 10}}";
    let p = Policy::from_yaml(&with_metric(q)).unwrap();
    assert_eq!(p.analysis.metrics[0].direction, Direction::LowerIsBetter);
}

#[test]
fn counts_metrics_are_bad_or_good_events_out_of_a_total() {
    let q = "{name: checkout, source: prometheus, good: 'sum(increase(ok{track=\"{variant}\"}[{interval}]))', total: 'sum(increase(all{track=\"{variant}\"}[{interval}]))', judge: sequential}";
    let p = Policy::from_yaml(&with_metric(q)).unwrap_or_else(|e| panic!("{e:?}"));
    let m = &p.analysis.metrics[0];
    assert_eq!(
        (m.metric, m.direction, m.min_samples),
        (BuiltinMetric::Counts, Direction::HigherIsBetter, 50)
    );
    let spec = m.query.clone().unwrap();
    assert!(spec.counts);
    assert_eq!(
        spec.query,
        "sum(increase(ok{track=\"{variant}\"}[{interval}]))"
    );
    assert_eq!(
        spec.samples.as_deref(),
        Some("sum(increase(all{track=\"{variant}\"}[{interval}]))")
    );
    let q = "{name: e, source: prometheus, bad: 'x{variant}', total: 'y{variant}', judge: {max: 2%, max_ratio_to_stable: 2}, min_samples: 20}";
    let p = Policy::from_yaml(&with_metric(q)).unwrap_or_else(|e| panic!("{e:?}"));
    let m = &p.analysis.metrics[0];
    assert_eq!((m.direction, m.min_samples), (Direction::LowerIsBetter, 20));
    assert!(
        matches!(m.judge, Judge::Threshold(Threshold { max: Some(x), .. }) if (x - 0.02).abs() < 1e-12)
    );
    for (bad, path, says) in [
        (
            "{name: e, source: prometheus, bad: 'x', judge: sequential}",
            "total",
            "missing",
        ),
        (
            "{name: e, source: prometheus, bad: 'x', good: 'z', total: 'y', judge: sequential}",
            "good",
            "not both",
        ),
        (
            "{name: e, source: prometheus, bad: 'x', total: 'y', query: 'q', judge: sequential}",
            "query",
            "belongs to a `query` value",
        ),
        (
            "{name: e, source: prometheus, bad: 'x', total: 'y', range: true, judge: sequential}",
            "range",
            "belongs to a `query` value",
        ),
        (
            "{name: e, source: prometheus, query: 'x', total: 'y', judge: {max: 1}}",
            "total",
            "`samples`",
        ),
        (
            "{name: e, source: prometheus, query: 'x', judge: sequential}",
            "judge",
            "needs counts",
        ),
        (
            "{name: e, metric: error_rate, bad: 'x', judge: sequential}",
            "bad",
            "source: prometheus",
        ),
    ] {
        let d = errors(&with_metric(bad));
        assert!(
            d.iter().any(
                |d| d.path == format!("analysis.metrics[0].{path}") && d.message.contains(says)
            ),
            "{bad}: {d:?}"
        );
    }
}

/// Regression (review): a counts metric whose queries named neither `{variant}` nor
/// `{version}` validated with the sequential judge, and so did a ratio to stable on
/// such a query; both sides then read the same value, and a canary failing half its
/// requests passed. Refused at the field where the variant would be named; a fixed
/// limit on such a query (the canary alone, as Argo Rollouts' and Flagger's queries
/// select it by name) is still accepted.
#[test]
fn a_comparison_with_stable_on_a_query_that_reads_the_same_value_for_both_is_refused() {
    for (metric, field, says) in [
        (
            "{name: e, source: prometheus, bad: 'sum(increase(e[{interval}]))', total: 'sum(increase(r[{interval}]))', judge: sequential}",
            "bad",
            "the sequential judge compares",
        ),
        (
            "{name: c, source: prometheus, good: 'sum(increase(ok[{interval}]))', total: 'sum(increase(r[{interval}]))', judge: sequential}",
            "good",
            "the sequential judge compares",
        ),
        // One of the two counts naming the variant is not enough: the other is every
        // variant's.
        (
            "{name: e, source: prometheus, bad: 'sum(increase(e[{interval}]))', total: 'sum(increase(r{track=\"{variant}\"}[{interval}]))', judge: sequential}",
            "bad",
            "the sequential judge compares",
        ),
        (
            "{name: q, source: prometheus, query: 'sum(up)', judge: {max_ratio_to_stable: 2}}",
            "query",
            "a ratio to stable compares",
        ),
        (
            "{name: q, source: prometheus, query: 'sum(up)', judge: {min: 1, min_ratio_to_stable: 0.5}}",
            "query",
            "a ratio to stable compares",
        ),
        (
            "{name: h, source: http, url: 'http://127.0.0.1:9/errors', bad: $.bad, total: $.total, judge: sequential}",
            "url",
            "the sequential judge compares",
        ),
        (
            "{name: l, source: prometheus, metric: latency_p99, buckets: 'sum by (le) (increase(d_bucket[{interval}]))', judge: sequential}",
            "buckets",
            "the sequential judge compares",
        ),
    ] {
        let d = errors(&with_metric(metric));
        assert!(
            d.iter()
                .any(|d| d.path == format!("analysis.metrics[0].{field}")
                    && d.message.contains(says)
                    && d.message.contains("`{variant}`")),
            "{metric}: {d:?}"
        );
        // Naming the variant where it is read makes the same metric valid.
        let named = match field {
            "url" => metric.replace("/errors'", "/errors?track={variant}'"),
            _ => metric.replace("[{interval}]", "{track=\"{variant}\"}[{interval}]"),
        };
        let named = named.replace("'sum(up)'", "'sum(up{track=\"{variant}\"})'");
        assert_ne!(named, metric);
        if let Err(e) = Policy::from_yaml(&with_metric(&named)) {
            panic!("{named}: {e:?}");
        }
    }
    // A fixed limit judges the canary's value alone.
    let canary_alone = "{name: e, source: prometheus, query: 'sum(rate(e{rollout=\"shop-canary\"}[1m]))', judge: {max: 1}}";
    if let Err(e) = Policy::from_yaml(&with_metric(canary_alone)) {
        panic!("{e:?}");
    }
}

/// Regression (review): a flag release runs one version on both sides, so a query
/// telling them apart by `{version}` alone read the same series for each, and the
/// sequential judge (or a ratio to stable) on it could never fail the flag. Refused
/// for flag releases, at the query's field; `{variant}` is accepted, and the same
/// `{version}` query is accepted for a canary, which runs two versions.
#[test]
fn a_flag_release_refuses_a_comparison_on_a_query_naming_only_the_version() {
    let by_version = "{name: e, source: prometheus, bad: 'sum(increase(e{version=\"{version}\"}[{interval}]))', total: 'sum(increase(r{version=\"{version}\"}[{interval}]))', judge: sequential}";
    let flag = |metric: &str| {
        with_metric(metric).replace(
            "strategy:\n  canary:\n    steps:\n      - weight: 10\n        bake: 1m\n",
            "strategy:\n  flag: {flag: f, steps: [{weight: 10, bake: 1m}]}\nflags:\n  define: [{name: f, default: false}]\n",
        )
        .replace(
            "    listen: 127.0.0.1:8080\n",
            "    listen: 127.0.0.1:8080\n    sticky: {header: x-user}\n",
        )
    };
    assert_ne!(flag(by_version), with_metric(by_version));
    let d = errors(&flag(by_version));
    assert!(
        d.iter().any(|d| d.path == "analysis.metrics[0].bad"
            && d.message.contains("same version on both sides")),
        "{d:?}"
    );
    let ratio = "{name: p, source: prometheus, query: 'sum(rate(ok{version=\"{version}\"}[1m]))', judge: {min_ratio_to_stable: 0.9}}";
    let d = errors(&flag(ratio));
    assert!(
        d.iter().any(|d| d.path == "analysis.metrics[0].query"),
        "{d:?}"
    );
    for accepted in [
        flag(&by_version.replace("version=\"{version}\"", "track=\"{variant}\"")),
        flag(&by_version.replace("judge: sequential", "judge: {max: 5%}")),
        with_metric(by_version),
    ] {
        if let Err(e) = Policy::from_yaml(&accepted) {
            panic!("{accepted}: {e:?}");
        }
    }
}

/// MINIMAL with `metrics` replaced by `metrics` (YAML at the list's indentation).
fn with_metrics(metrics: &str) -> String {
    MINIMAL.replace(
        "    - metric: error_rate\n      judge: { max: 1% }\n",
        metrics,
    )
}

/// The diagnostic at `path`, with the line it points at.
fn diagnostic(src: &str, path: &str) -> Diagnostic {
    let d = errors(src);
    d.iter()
        .find(|d| d.path == path)
        .cloned()
        .unwrap_or_else(|| panic!("no diagnostic at {path}: {d:#?}"))
}

/// Written, and meaning nothing: a metric named `""` (every reading and notice would
/// call it by no name) and a hook `on: []` (it looks configured and is never told
/// anything). Each is refused at its own line.
#[test]
fn an_empty_metric_name_and_a_hook_on_no_event_are_refused_at_their_lines() {
    let src =
        with_metrics("    - metric: error_rate\n      name: \"\"\n      judge: { max: 1% }\n");
    let line = src.lines().position(|l| l.contains("name: \"\"")).unwrap() + 1;
    let d = diagnostic(&src, "analysis.metrics[0].name");
    assert_eq!(d.line as usize, line, "{d:?}");
    assert!(d.message.contains("cannot be empty"), "{d:?}");
    let src = format!("{MINIMAL}notify:\n  - command: [./page.sh]\n    on: []\n");
    let line = src.lines().position(|l| l.contains("on: []")).unwrap() + 1;
    let d = diagnostic(&src, "notify[0].on");
    assert_eq!(d.line as usize, line, "{d:?}");
    assert!(d.message.contains("never be told"), "{d:?}");
}

#[test]
fn http_metrics_fetch_a_url_with_headers_and_read_json_paths() {
    let src = with_metrics(
        r#"    - name: checkout-errors
      source: http
      url: "https://metrics.example/api/{service}/{variant}?from={from}&to={to}"
      headers: {Authorization: "Bearer {env:METRICS_TOKEN}", Accept: application/json}
      bad: $.data.errors
      total: '$.data["requests"]'
      judge: sequential
"#,
    );
    let p = Policy::from_yaml(&src).unwrap_or_else(|e| panic!("{src}\n{e:?}"));
    let q = p.analysis.metrics[0].query.clone().unwrap();
    let QuerySource::Http(fetch) = &q.source else {
        panic!("{q:?}")
    };
    assert_eq!(
        fetch.url,
        "https://metrics.example/api/{service}/{variant}?from={from}&to={to}"
    );
    assert_eq!(fetch.env_vars(), vec!["METRICS_TOKEN"]);
    assert_eq!(
        fetch.headers[1],
        ("Accept".into(), "application/json".into())
    );
    assert_eq!(
        (q.query.as_str(), q.samples.as_deref(), q.counts),
        ("$.data.errors", Some("$.data[\"requests\"]"), true)
    );
    // A plain value: the whole document is the number unless `value` says where.
    let plain = with_metrics(
        "    - {name: p99, source: http, url: 'http://127.0.0.1:9/p99', judge: {max: 250}}\n",
    );
    let q = Policy::from_yaml(&plain).unwrap().analysis.metrics[0]
        .query
        .clone()
        .unwrap();
    assert_eq!((q.query.as_str(), q.samples), ("$", None));
}

#[test]
fn command_metrics_run_a_program_and_read_its_output() {
    let src = with_metrics(
        "    - {name: job, source: command, command: [./check.sh, '{variant}', '{from}'], value: $.ratio, samples: $.n, min_samples: 10, judge: {max: 0.1}}\n",
    );
    let p = Policy::from_yaml(&src).unwrap_or_else(|e| panic!("{src}\n{e:?}"));
    let m = &p.analysis.metrics[0];
    let q = m.query.clone().unwrap();
    assert_eq!(
        q.source,
        QuerySource::Command(CommandFetch {
            argv: vec!["./check.sh".into(), "{variant}".into(), "{from}".into()]
        })
    );
    assert_eq!(
        (q.query.as_str(), q.samples.as_deref()),
        ("$.ratio", Some("$.n"))
    );
    assert_eq!(m.min_samples, 10);
}

#[test]
fn misconfigured_providers_are_refused_at_their_line() {
    // Each case: the metric (line 17 of the policy), the field, what the message says.
    let cases = [
        (
            "    - {name: a, source: command, command: [], judge: {max: 1}}\n",
            "analysis.metrics[0].command",
            "the command is empty",
        ),
        (
            "    - {name: a, source: command, command: [x], value: data.v, judge: {max: 1}}\n",
            "analysis.metrics[0].value",
            "start it with `$`",
        ),
        (
            "    - {name: a, source: http, url: 'http://h/x', bad: '$.e[', total: $.t, judge: sequential}\n",
            "analysis.metrics[0].bad",
            "never closed",
        ),
        (
            "    - {name: a, source: http, url: 'http://h/x?key={env:KEY}', judge: {max: 1}}\n",
            "analysis.metrics[0].url",
            "cannot carry a secret",
        ),
        (
            "    - {name: a, source: http, url: 'http://h/{varient}', judge: {max: 1}}\n",
            "analysis.metrics[0].url",
            "`{varient}` is not a placeholder",
        ),
        (
            "    - {name: a, source: http, url: 'http://h/', headers: {X-Key: '{env:1BAD}'}, judge: {max: 1}}\n",
            "analysis.metrics[0].headers.X-Key",
            "only placeholder is `{env:NAME}`",
        ),
        (
            "    - {name: a, source: http, url: 'http://h/', headers: {'a b': x}, judge: {max: 1}}\n",
            "analysis.metrics[0].headers.a b",
            "not an HTTP header name",
        ),
        (
            "    - {name: a, source: http, judge: {max: 1}}\n",
            "analysis.metrics[0].url",
            "missing required field `url`",
        ),
        (
            "    - {name: a, source: http, url: 'http://h/', query: 'x', judge: {max: 1}}\n",
            "analysis.metrics[0].query",
            "`value` is the JSON path",
        ),
        (
            "    - {name: a, source: http, url: 'http://h/', range: true, judge: {max: 1}}\n",
            "analysis.metrics[0].range",
            "one document per variant",
        ),
        (
            "    - {name: a, source: prometheus, query: up, url: 'http://h/', judge: {max: 1}}\n",
            "analysis.metrics[0].url",
            "belongs to `source: http`",
        ),
        (
            "    - {name: a, source: command, command: [x], min_samples: 5, judge: {max: 1}}\n",
            "analysis.metrics[0].min_samples",
            "JSON path of the variant's request count",
        ),
        (
            "    - {metric: error_rate, command: [x], judge: {max: 1%}}\n",
            "analysis.metrics[0].command",
            "belongs to metrics read from a provider",
        ),
    ];
    for (metric, path, says) in cases {
        let src = with_metrics(metric)
            .replace("  metrics:\n", "  prometheus: http://p:9090\n  metrics:\n");
        let d = diagnostic(&src, path);
        assert!(d.message.contains(says), "{metric}: {d:?}");
        assert_eq!(d.line, 17, "{metric}: {d:?}");
    }
}

#[test]
fn datadog_settings_default_to_us1_and_env_keys_and_refuse_bad_ones_at_their_line() {
    let metric = "    - {name: e, source: datadog, query: 'sum:errors{variant:{variant}}', judge: {max: 5}}\n";
    let p = Policy::from_yaml(&with_metrics(metric)).unwrap();
    assert_eq!(p.analysis.datadog, Some(DatadogSpec::default()));
    assert_eq!(
        p.analysis.metrics[0].query.as_ref().unwrap().source,
        QuerySource::Datadog
    );
    let set = |settings: &str| {
        with_metrics(metric).replace(
            "  metrics:\n",
            &format!("  datadog: {settings}\n  metrics:\n"),
        )
    };
    let eu = Policy::from_yaml(&set(
        "{site: datadoghq.eu, api: v2, api_key_env: MY_DD_KEY}",
    ))
    .unwrap()
    .analysis
    .datadog
    .unwrap();
    assert_eq!(
        (
            eu.url.as_str(),
            eu.api,
            eu.api_key_env.as_str(),
            eu.app_key_env.as_str()
        ),
        (
            "https://api.datadoghq.eu",
            DatadogApi::V2,
            "MY_DD_KEY",
            "DD_APP_KEY"
        )
    );
    for (settings, path, says) in [
        (
            "{site: datadog.com}",
            "analysis.datadog.site",
            "`datadoghq.com`",
        ),
        ("{api: v3}", "analysis.datadog.api", "`v1` or `v2`"),
        (
            "{api_key_env: 'abc-123-secret'}",
            "analysis.datadog.api_key_env",
            "never the secret",
        ),
        (
            "{url: api.datadoghq.com}",
            "analysis.datadog.url",
            "not an http:// or https:// URL",
        ),
    ] {
        let src = set(settings);
        let d = diagnostic(&src, path);
        assert!(d.message.contains(says), "{settings}: {d:?}");
        assert_eq!(d.line, 15, "{settings}: {d:?}");
        assert!(
            !d.message.contains("abc-123"),
            "a pasted secret is not echoed: {d:?}"
        );
    }
}

#[test]
fn newrelic_needs_its_account_and_refuses_a_bad_region_at_its_line() {
    let metric = "    - {name: e, source: newrelic, query: 'SELECT average(duration) FROM Transaction', judge: {max: 0.5}}\n";
    let missing = with_metrics(metric);
    let d = diagnostic(&missing, "analysis.metrics[0].source");
    assert!(
        d.message.contains("analysis.newrelic: {account_id: N}"),
        "{d:?}"
    );
    let set = |settings: &str| {
        with_metrics(metric).replace(
            "  metrics:\n",
            &format!("  newrelic: {settings}\n  metrics:\n"),
        )
    };
    let p = Policy::from_yaml(&set("{account_id: 4242, region: eu}")).unwrap();
    assert_eq!(
        p.analysis.newrelic,
        Some(NewRelicSpec {
            account_id: 4242,
            url: "https://api.eu.newrelic.com".into(),
            api_key_env: "NEW_RELIC_API_KEY".into(),
        })
    );
    for (settings, path, says) in [
        (
            "{region: us}",
            "analysis.newrelic.account_id",
            "missing required field `account_id`",
        ),
        (
            "{account_id: 0}",
            "analysis.newrelic.account_id",
            "not a New Relic account id",
        ),
        (
            "{account_id: 1, region: ap}",
            "analysis.newrelic.region",
            "`us` or `eu`",
        ),
    ] {
        let d = diagnostic(&set(settings), path);
        assert!(d.message.contains(says), "{settings}: {d:?}");
        assert_eq!(d.line, 15, "{settings}: {d:?}");
    }
}

/// MINIMAL with `load` under `analysis` and `traffic` replaced.
fn with_load(load: &str, traffic: &str) -> String {
    MINIMAL
        .replace("analysis:\n", &format!("analysis:\n  load:\n{load}"))
        .replace("  proxy:\n    listen: 127.0.0.1:8080\n", traffic)
}

#[test]
fn analysis_load_decodes_with_its_defaults_and_refuses_what_cannot_be_sent() {
    let proxy = "  proxy:\n    listen: 127.0.0.1:8080\n";
    let p = Policy::from_yaml(&with_load("    rate: 20\n", proxy)).unwrap();
    let load = p.analysis.load.unwrap();
    assert_eq!(
        (load.rate, load.paths, load.counts, load.url),
        (20, vec!["/".to_string()], true, None)
    );
    let p = Policy::from_yaml(&with_load(
        "    rate: 5\n    paths: [/a, /b?x=1]\n    headers: {X-Tenant: synthetic}\n    counts: false\n",
        proxy,
    ))
    .unwrap();
    let load = p.analysis.load.unwrap();
    assert_eq!(load.paths, vec!["/a", "/b?x=1"]);
    assert_eq!(load.headers, vec![("x-tenant".into(), "synthetic".into())]);
    assert!(!load.counts);

    let d = diagnostic(&with_load("    rate: 0\n", proxy), "analysis.load.rate");
    assert!(d.message.contains("use 1 to 10000"), "{}", d.message);
    let d = diagnostic(
        &with_load("    rate: 5\n    paths: [checkout]\n", proxy),
        "analysis.load.paths[0]",
    );
    assert!(d.message.contains("start it with `/`"), "{}", d.message);
    // Review: a path or a header value no request can carry passed, and stopped the
    // whole load at its first request.
    let d = diagnostic(
        &with_load("    rate: 5\n    paths: [/, \"/orders?total>10\"]\n", proxy),
        "analysis.load.paths[1]",
    );
    assert!(
        d.message.contains("percent-encode it (`%3E`)"),
        "{}",
        d.message
    );
    let d = diagnostic(
        &with_load("    rate: 5\n    paths: [\"/a`b\"]\n", proxy),
        "analysis.load.paths[0]",
    );
    assert!(d.message.contains("`%60`"), "{}", d.message);
    // What the HTTP client sends is accepted: JSON:API brackets, pipes, UTF-8.
    let p = Policy::from_yaml(&with_load(
        "    rate: 5\n    paths: [\"/items?page[size]=10&ids[]=1\", \"/f?fields=a|b&q=`x`\", \"/caf\u{e9}\"]\n",
        proxy,
    ))
    .unwrap();
    assert_eq!(p.analysis.load.unwrap().paths.len(), 3);
    let d = diagnostic(
        &with_load(
            "    rate: 5\n    headers: {x-tenant: \"synthetic\\x01\"}\n",
            proxy,
        ),
        "analysis.load.headers.x-tenant",
    );
    assert!(d.message.contains("control character"), "{}", d.message);
    let d = diagnostic(
        &with_load("    rate: 5\n    headers: {x-rampart-load: \"1\"}\n", proxy),
        "analysis.load.headers.x-rampart-load",
    );
    assert!(d.message.contains("marks the load itself"), "{}", d.message);
    // Behind HAProxy: no address to send to, and no way to leave the load out.
    let haproxy = "  haproxy:\n    socket: /run/haproxy.sock\n    backend: checkout\n    log_listen: 127.0.0.1:5140\n";
    let d = diagnostic(
        &with_load("    rate: 5\n    counts: false\n", haproxy),
        "analysis.load.url",
    );
    assert!(d.message.contains("url: http://HOST:PORT"), "{}", d.message);
    let d = diagnostic(
        &with_load("    rate: 5\n    counts: false\n", haproxy),
        "analysis.load.counts",
    );
    assert!(
        d.message.contains("only the embedded proxy"),
        "{}",
        d.message
    );
    // The token of load that does not count never goes to another address.
    let d = diagnostic(
        &with_load(
            "    rate: 5
    counts: false
    url: http://10.0.0.9:80
",
            proxy,
        ),
        "analysis.load.url",
    );
    assert!(d.message.contains("leave `url` out"), "{}", d.message);
}

/// Regression (review): a `SEARCH` of 300 s periods under `cloudwatch.period: 60`
/// validated, and CloudWatch rounded each minute's window down to its five-minute
/// boundary: each datapoint was read in five intervals, its events counted five
/// times. Refused at the query's own line; a matching period, or a SEARCH inside a
/// search string, is accepted.
#[test]
fn a_search_whose_period_is_not_the_policys_is_refused_at_its_line() {
    let policy = |total: &str| {
        with_metrics(&format!(
            "    - name: e\n      source: cloudwatch\n      bad: \"FILL(SEARCH('{{AWS/ApplicationELB,TargetGroup}} MetricName=\\\"HTTPCode_Target_5XX_Count\\\" TargetGroup=\\\"tg-{{variant}}\\\"', 'Sum', 300), 0)\"\n      total: \"{total}\"\n      judge: sequential\n"
        ))
        .replace("  metrics:\n", "  cloudwatch: {region: us-east-1}\n  interval: 5m\n  metrics:\n")
    };
    let fine_total = "SELECT SUM(RequestCount) FROM SCHEMA(\\\"AWS/ApplicationELB\\\", TargetGroup) WHERE TargetGroup = 'tg-{variant}'";
    let d = diagnostic(&policy(fine_total), "analysis.metrics[0].bad");
    assert!(d.message.contains("300s periods"), "{d:?}");
    assert!(d.message.contains("do not divide the 60s"), "{d:?}");
    assert_eq!(d.line, 20, "{d:?}");
    let matching = policy(fine_total).replace("'Sum', 300", "'Sum', 60");
    Policy::from_yaml(&matching).unwrap_or_else(|e| panic!("{e:?}"));
    // Minutes under five-minute windows divide them: each window still holds whole
    // search periods.
    let finer = policy(fine_total)
        .replace("'Sum', 300", "'Sum', 60")
        .replace("{region: us-east-1}", "{region: us-east-1, period: 300}");
    Policy::from_yaml(&finer).unwrap_or_else(|e| panic!("{e:?}"));
    // A period CloudWatch does not serve, though it divides the minute, is refused.
    let d = diagnostic(
        &policy(fine_total).replace("'Sum', 300", "'Sum', 15"),
        "analysis.metrics[0].bad",
    );
    assert!(d.message.contains("15s periods"), "{d:?}");
    // The total's own SEARCH is checked too, at its line.
    let total = "SEARCH('{AWS/ApplicationELB,TargetGroup} MetricName=\\\"RequestCount\\\" TargetGroup=\\\"tg-{variant}\\\"', 'Sum', 120)";
    let d = diagnostic(
        &matching.replace(fine_total, total),
        "analysis.metrics[0].total",
    );
    assert!(d.message.contains("120s periods"), "{d:?}");
    assert_eq!(d.line, 21, "{d:?}");
}

/// Regression (review): with the default two-minute `delay`, a 10 s interval read
/// twelve windows of time before the canary had traffic, all no data, and the
/// default `no_data.limit` of 5 halted every release before its first verdict.
/// A post-release watch no longer than the delay judged only time before the switch.
#[test]
fn a_cloudwatch_delay_that_would_blind_the_release_or_its_watch_is_refused() {
    let metric = "    - {name: e, source: cloudwatch, bad: \"SELECT SUM(Errors) FROM Shop WHERE Variant = '{variant}'\", total: \"SELECT SUM(Requests) FROM Shop WHERE Variant = '{variant}'\", judge: sequential}\n";
    let set = |settings: &str| {
        with_metrics(metric).replace(
            "  metrics:\n",
            &format!("  cloudwatch: {settings}\n  metrics:\n"),
        )
    };
    let d = diagnostic(
        &set("{region: us-east-1, period: 10}\n  interval: 10s"),
        "analysis.cloudwatch.delay",
    );
    assert!(d.message.contains("first 12 intervals"), "{d:?}");
    assert!(d.message.contains("would halt the release"), "{d:?}");
    // Fewer blind intervals than the limit, or a limit above them, is fine.
    Policy::from_yaml(&set(
        "{region: us-east-1, period: 10, delay: 30s}\n  interval: 10s",
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    Policy::from_yaml(&set(
        "{region: us-east-1, period: 10}\n  interval: 10s\n  no_data: {limit: 13, action: halt}",
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    // Window ends are rounded down to the alignment too: a 90 s delay over minutes
    // can leave the first two windows blind.
    let d = diagnostic(
        &set(
            "{region: us-east-1, delay: 90s}\n  interval: 1m\n  no_data: {limit: 2, action: halt}",
        ),
        "analysis.cloudwatch.delay",
    );
    assert!(d.message.contains("first 2 intervals"), "{d:?}");
    Policy::from_yaml(&set(
        "{region: us-east-1, delay: 90s}\n  interval: 1m\n  no_data: {limit: 3, action: halt}",
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    // Beside other metrics, a blind interval is inconclusive: its limit counts.
    let mixed = with_metrics(&format!(
        "{metric}    - {{metric: latency_p99, judge: {{max: 800ms}}}}\n"
    ))
    .replace(
        "  metrics:\n",
        "  cloudwatch: {region: us-east-1, period: 10}\n  interval: 10s\n  metrics:\n",
    );
    let d = diagnostic(&mixed, "analysis.cloudwatch.delay");
    assert!(d.message.contains("`inconclusive.limit` (10)"), "{d:?}");
    // A refused interval adds no error about the delay.
    let d = errors(&set("{region: us-east-1, period: 10}\n  interval: 0s"));
    assert!(
        d.iter().all(|d| d.path != "analysis.cloudwatch.delay"),
        "{d:?}"
    );
    // A watch must outlast the delay by an interval.
    let watched = |watch: &str| {
        format!(
            "{}post_release:\n  wait: 0s\n  watch: {watch}\n",
            set("{region: us-east-1}\n  interval: 1m")
        )
    };
    let d = diagnostic(&watched("2m"), "post_release.watch");
    assert!(d.message.contains("make the watch at least 3m"), "{d:?}");
    let watch_line = watched("2m")
        .lines()
        .position(|l| l.starts_with("  watch:"))
        .unwrap()
        + 1;
    assert_eq!(d.line as usize, watch_line, "{d:?}");
    Policy::from_yaml(&watched("3m")).unwrap_or_else(|e| panic!("{e:?}"));
    // Beside a metric read as it happens, the watch judges the time after the switch.
    let mixed_watch = format!(
        "{}post_release:\n  wait: 0s\n  watch: 2m\n",
        with_metrics(&format!(
            "{metric}    - {{metric: latency_p99, judge: {{max: 800ms}}}}\n"
        ))
        .replace(
            "  metrics:\n",
            "  cloudwatch: {region: us-east-1}\n  interval: 1m\n  inconclusive: {limit: 5, action: halt}\n  metrics:\n",
        )
    );
    Policy::from_yaml(&mixed_watch).unwrap_or_else(|e| panic!("{e:?}"));
    // Unless those cannot fail it on their own: one not critical, under `fail_score`.
    let beside = |fields: &str| {
        mixed_watch.replace(
            "judge: {max: 800ms}}",
            &format!("judge: {{max: 800ms}}, critical: false, weight: {fields}}}"),
        )
    };
    let d = diagnostic(&beside("0.5"), "post_release.watch");
    assert!(d.message.contains("make the watch at least 3m"), "{d:?}");
    Policy::from_yaml(&beside("1")).unwrap_or_else(|e| panic!("{e:?}"));
}

#[test]
fn search_periods_skip_quoted_text() {
    use crate::policy::providers::search_periods;
    assert_eq!(search_periods("SEARCH('x', 'Sum', 60)"), vec![60]);
    assert_eq!(
        search_periods(
            "FILL(search(' {A,B} \\'SEARCH(a, b, 7)\\' ', 'Sum', 300), 0) + SEARCH('y,z', \"Average\", 60)"
        ),
        vec![300, 60]
    );
    assert_eq!(
        search_periods("RESEARCH('x', 'Sum', 60)"),
        Vec::<u64>::new()
    );
    assert_eq!(search_periods("SEARCH('x', 'Sum')"), Vec::<u64>::new());
}

#[test]
fn cloudwatch_needs_its_region_and_refuses_a_malformed_one_at_its_line() {
    let metric = "    - {name: e, source: cloudwatch, query: 'SELECT SUM(Errors) FROM \"Shop\" WHERE Variant = ''{variant}''', judge: {max: 5}}\n";
    let missing = with_metrics(metric);
    let d = diagnostic(&missing, "analysis.metrics[0].source");
    assert!(
        d.message
            .contains("analysis.cloudwatch: {region: us-east-1}"),
        "{d:?}"
    );
    let set = |settings: &str| {
        with_metrics(metric).replace(
            "  metrics:\n",
            &format!("  cloudwatch: {settings}\n  interval: 5m\n  metrics:\n"),
        )
    };
    let p = Policy::from_yaml(&set("{region: eu-central-1}")).unwrap();
    assert_eq!(
        p.analysis.cloudwatch,
        Some(CloudWatchSpec {
            region: "eu-central-1".into(),
            url: "https://monitoring.eu-central-1.amazonaws.com".into(),
            period: 60,
            delay: std::time::Duration::from_secs(120),
        })
    );
    let q = p.analysis.metrics[0].query.as_ref().unwrap();
    assert_eq!(q.source, QuerySource::CloudWatch);
    assert_eq!(
        q.query,
        "SELECT SUM(Errors) FROM \"Shop\" WHERE Variant = '{variant}'"
    );
    let vpc = Policy::from_yaml(&set(
        "{region: us-east-1, url: 'https://vpce-0a1b.monitoring.us-east-1.vpce.amazonaws.com/', period: 300}",
    ))
    .unwrap()
    .analysis
    .cloudwatch
    .unwrap();
    assert_eq!(
        (vpc.url.as_str(), vpc.period),
        (
            "https://vpce-0a1b.monitoring.us-east-1.vpce.amazonaws.com",
            300
        )
    );
    for (settings, path, says) in [
        (
            "{url: 'http://127.0.0.1:9'}",
            "analysis.cloudwatch.region",
            "missing required field `region`",
        ),
        (
            "{region: us-east}",
            "analysis.cloudwatch.region",
            "`us-east` is not an AWS region",
        ),
        (
            "{region: 'monitoring.us-east-1.amazonaws.com'}",
            "analysis.cloudwatch.region",
            "like `us-east-1`",
        ),
        (
            "{region: us-east-1, period: 45}",
            "analysis.cloudwatch.period",
            "1, 5, 10, 20, 30 or a multiple of 60",
        ),
        (
            "{region: us-east-1, url: monitoring.example}",
            "analysis.cloudwatch.url",
            "not an http:// or https:// URL",
        ),
        (
            "{region: us-east-1, delay: 2h}",
            "analysis.cloudwatch.delay",
            "at most 1h",
        ),
    ] {
        let d = diagnostic(&set(settings), path);
        assert!(d.message.contains(says), "{settings}: {d:?}");
        assert_eq!(d.line, 15, "{settings}: {d:?}");
    }
}

/// CloudWatch answers in whole periods and rounds a window's start down to one: an
/// interval that is not a whole number of periods would read some datapoints in two
/// intervals (with the default 10s and 60s, the same minute in six), and the
/// sequential judge would count their events again.
#[test]
fn cloudwatch_refuses_an_interval_that_is_not_a_whole_number_of_periods_at_its_line() {
    let metric = "    - {name: errors, source: cloudwatch, bad: \"SELECT SUM(Errors) FROM Shop WHERE Variant = '{variant}'\", total: \"SELECT SUM(Requests) FROM Shop WHERE Variant = '{variant}'\", judge: sequential}\n";
    let src = |settings: &str| {
        with_metrics(metric).replace("  metrics:\n", &format!("{settings}  metrics:\n"))
    };
    // The reviewer's case: neither is written (10s and 60s by default).
    let d = diagnostic(
        &src("  cloudwatch: {region: us-east-1}\n"),
        "analysis.interval",
    );
    assert_eq!(d.line, 15, "{d:?}");
    for says in [
        "metric `errors` reads CloudWatch",
        "a whole period (60s here",
        "an interval of 10s",
        "(like 1m)",
    ] {
        assert!(d.message.contains(says), "{says}: {d:?}");
    }
    // Regression (review): a 1 s period's window starts at its minute (AWS rounds
    // sub-minute starts only for 5 to 30 s periods), so 10 s intervals would read up
    // to 59 s again: the interval must be whole minutes.
    let d = diagnostic(
        &src("  cloudwatch: {region: us-east-1, period: 1}\n  interval: 10s\n"),
        "analysis.interval",
    );
    assert!(d.message.contains("a minute for 1 s periods"), "{d:?}");
    assert!(d.message.contains("(like 1m)"), "{d:?}");
    // At the interval when it is written, else at the period.
    let d = diagnostic(
        &src("  cloudwatch: {region: us-east-1, period: 60}\n  interval: 90s\n"),
        "analysis.interval",
    );
    assert_eq!(d.line, 16, "{d:?}");
    assert!(d.message.contains("(like 2m)"), "{d:?}");
    let d = diagnostic(
        &src("  cloudwatch:\n    region: us-east-1\n    period: 20\n"),
        "analysis.cloudwatch.period",
    );
    assert_eq!(d.line, 17, "{d:?}");
    // Whole numbers of periods are fine, the same period or several.
    for ok in [
        "  cloudwatch: {region: us-east-1}\n  interval: 1m\n",
        "  cloudwatch: {region: us-east-1}\n  interval: 3m\n",
        "  cloudwatch: {region: us-east-1, period: 10, delay: 30s}\n",
        "  cloudwatch: {region: us-east-1, period: 5}\n  interval: 30s\n",
        "  cloudwatch: {region: us-east-1, period: 300}\n  interval: 10m\n",
        "  cloudwatch: {region: us-east-1, period: 1}\n  interval: 1m\n",
    ] {
        Policy::from_yaml(&src(ok)).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }
    // Without a CloudWatch metric, the period binds nothing.
    let prometheus = MINIMAL.replace(
        "  metrics:\n",
        "  cloudwatch: {region: us-east-1}\n  metrics:\n",
    );
    Policy::from_yaml(&prometheus).unwrap_or_else(|e| panic!("{e:?}"));
}

#[test]
fn prometheus_latency_reads_histogram_buckets_and_refuses_other_fields_at_their_line() {
    let bucket = "sum by (le) (increase(http_request_duration_seconds_bucket{track=\"{variant}\"}[{interval}]))";
    let server = "  prometheus: http://127.0.0.1:9090\n  metrics:\n";
    let src = |fields: &str| {
        with_metrics(&format!(
            "    - source: prometheus\n      metric: latency_p99\n      buckets: '{bucket}'\n{fields}"
        ))
        .replace("  metrics:\n", server)
    };
    let p =
        Policy::from_yaml(&src("      judge: sequential\n")).unwrap_or_else(|e| panic!("{e:?}"));
    let m = &p.analysis.metrics[0];
    assert_eq!(
        (m.name.as_str(), m.metric, m.min_samples, m.direction),
        (
            "latency_p99",
            BuiltinMetric::Latency(0.99),
            50,
            Direction::LowerIsBetter
        )
    );
    assert!(matches!(m.judge, Judge::Sequential(s) if s.tolerance == 1.25));
    let spec = m.query.clone().unwrap();
    assert_eq!(
        (spec.source, spec.query.as_str(), spec.buckets, spec.samples),
        (
            QuerySource::Prometheus,
            bucket,
            Some(BucketUnit::Seconds),
            None
        )
    );
    let p = Policy::from_yaml(&src(
        "      unit: milliseconds\n      min_samples: 200\n      judge: { max: 300ms }\n",
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    let m = &p.analysis.metrics[0];
    assert_eq!(m.min_samples, 200);
    assert_eq!(
        m.query.as_ref().unwrap().buckets,
        Some(BucketUnit::Milliseconds)
    );
    assert!(matches!(m.judge, Judge::Threshold(Threshold { max: Some(x), .. }) if x == 300.0));
    let total = src("      judge: sequential\n").replace("latency_p99", "latency_total_p95");
    let p = Policy::from_yaml(&total).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        p.analysis.metrics[0].metric,
        BuiltinMetric::LatencyTotal(0.95)
    );

    // Each refusal at its own line (the metric starts at line 17; `buckets` is 19).
    for (extra, path, line, says) in [
        ("      query: 'up'\n", "query", 20, "`buckets` query alone"),
        ("      bad: 'x'\n", "bad", 20, "`buckets` query alone"),
        ("      good: 'x'\n", "good", 20, "`buckets` query alone"),
        ("      total: 'x'\n", "total", 20, "`buckets` query alone"),
        ("      unit: minutes\n", "unit", 20, "seconds"),
    ] {
        let d = diagnostic(
            &src(&format!("{extra}      judge: sequential\n")),
            &format!("analysis.metrics[0].{path}"),
        );
        assert_eq!(d.line, line, "{extra}: {d:?}");
        assert!(d.message.contains(says), "{extra}: {d:?}");
    }
    // A latency metric from Prometheus without its buckets.
    let no_buckets = with_metrics(
        "    - source: prometheus\n      metric: latency_p99\n      judge: sequential\n",
    )
    .replace("  metrics:\n", server);
    let d = diagnostic(&no_buckets, "analysis.metrics[0].buckets");
    assert_eq!(d.line, 18, "{d:?}");
    assert!(d.message.contains("add `buckets`"), "{d:?}");
    // Buckets on a metric that is not a latency.
    let d = diagnostic(
        &src("      judge: sequential\n").replace("latency_p99", "error_rate"),
        "analysis.metrics[0].metric",
    );
    assert_eq!(d.line, 18, "{d:?}");
    assert!(d.message.contains("not a latency"), "{d:?}");
    // Buckets without a metric naming the quantile.
    let d = diagnostic(
        &src("      judge: sequential\n").replace("      metric: latency_p99\n", ""),
        "analysis.metrics[0].metric",
    );
    assert_eq!(d.line, 18, "{d:?}");
    assert!(d.message.contains("metric: latency_p99"), "{d:?}");
    // Buckets are Prometheus's, and a builtin metric has none.
    let d = diagnostic(
        &with_metrics(&format!(
            "    - name: x\n      source: datadog\n      query: 'avg:x'\n      buckets: '{bucket}'\n      judge: {{ max: 1 }}\n"
        )),
        "analysis.metrics[0].buckets",
    );
    assert_eq!(d.line, 19, "{d:?}");
    assert!(
        d.message.contains("belongs to `source: prometheus`"),
        "{d:?}"
    );
    let d = diagnostic(
        &with_metrics(&format!(
            "    - metric: latency_p99\n      buckets: '{bucket}'\n      judge: {{ max: 1s }}\n"
        )),
        "analysis.metrics[0].buckets",
    );
    assert!(d.message.contains("provider"), "{d:?}");
}

#[test]
fn failure_count_is_set_for_the_analysis_and_overridden_per_metric() {
    let src = MINIMAL.replace(
        "analysis:\n  metrics:\n    - metric: error_rate\n      judge: { max: 1% }\n",
        "analysis:\n  failure_count: total\n  metrics:\n    - metric: error_rate\n      judge: { max: 1% }\n    - {metric: latency_p99, judge: {max: 1s}, failure_count: consecutive}\n",
    );
    let p = Policy::from_yaml(&src).unwrap();
    assert_eq!(p.analysis.metrics[0].failure_count, FailureCount::Total);
    assert_eq!(
        p.analysis.metrics[1].failure_count,
        FailureCount::Consecutive
    );
    let bad = errors(&MINIMAL.replace(
        "judge: { max: 1% }",
        "judge: { max: 1% }\n      failure_count: sum",
    ));
    assert_eq!(bad[0].path, "analysis.metrics[0].failure_count", "{bad:?}");
}

#[test]
fn proxy_limits_have_documented_defaults_and_refuse_bad_values_at_their_line() {
    let limits = Policy::from_yaml(MINIMAL).unwrap().proxy().unwrap().limits;
    assert_eq!(limits, ProxyLimits::default());
    assert_eq!(limits.header_timeout, Duration::from_secs(10));
    assert_eq!(limits.idle_timeout, Duration::from_secs(60));
    assert_eq!(limits.body_timeout, Duration::from_secs(30));
    assert_eq!(limits.send_timeout, Duration::from_secs(60));
    assert_eq!(limits.max_header_bytes, 65_536);
    assert_eq!(limits.max_body_bytes, Some(16 << 20));
    assert_eq!(limits.max_connections, 10_000);
    assert_eq!(limits.max_streams, 100);

    let with = |text: &str| {
        MINIMAL.replace(
            "listen: 127.0.0.1:8080",
            &format!("listen: 127.0.0.1:8080\n    limits: {text}"),
        )
    };
    let set = Policy::from_yaml(&with(
        "{header_timeout: 2s, idle_timeout: 5m, body_timeout: 90s, send_timeout: 2m, max_header_bytes: 16KiB, max_body_bytes: none, max_connections: 300}",
    ))
    .unwrap()
    .proxy()
    .unwrap()
    .limits;
    assert_eq!(
        set,
        ProxyLimits {
            header_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(300),
            body_timeout: Duration::from_secs(90),
            send_timeout: Duration::from_secs(120),
            max_header_bytes: 16_384,
            max_body_bytes: None,
            max_connections: 300,
            max_streams: 100,
        }
    );

    for (text, field, says) in [
        ("{header_timeout: 0s}", "header_timeout", "longer than 0s"),
        ("{idle_timeout: 2h}", "idle_timeout", "at most 1h"),
        ("{body_timeout: 0s}", "body_timeout", "longer than 0s"),
        ("{body_timeout: 61m}", "body_timeout", "at most 1h"),
        ("{body_timeout: 30}", "body_timeout", "no unit"),
        ("{send_timeout: 0s}", "send_timeout", "longer than 0s"),
        ("{send_timeout: 2h}", "send_timeout", "at most 1h"),
        ("{header_timeout: 10}", "header_timeout", "no unit"),
        (
            "{max_header_bytes: 512B}",
            "max_header_bytes",
            "1KiB to 1MiB",
        ),
        ("{max_header_bytes: 64}", "max_header_bytes", "no unit"),
        ("{max_body_bytes: lots}", "max_body_bytes", "not a size"),
        ("{max_connections: 0}", "max_connections", "use 1 to"),
        ("{max_conections: 10}", "max_conections", "max_connections"),
        ("{max_streams: 0}", "max_streams", "use 1 to 10000"),
        ("{max_streams: 10001}", "max_streams", "use 1 to 10000"),
    ] {
        let e = errors(&with(text));
        assert_eq!(e.len(), 1, "{text}: {e:?}");
        assert_eq!(e[0].path, format!("traffic.proxy.limits.{field}"), "{text}");
        assert_eq!(e[0].line, 9, "{text}");
        assert!(e[0].message.contains(says), "{text}: {}", e[0].message);
    }
}

#[test]
fn proxy_tls_is_off_by_default_and_takes_one_or_several_certificates() {
    assert_eq!(
        Policy::from_yaml(MINIMAL).unwrap().proxy().unwrap().tls,
        None
    );
    let with = |text: &str| {
        MINIMAL.replace(
            "listen: 127.0.0.1:8080",
            &format!("listen: 127.0.0.1:8080\n    tls: {text}"),
        )
    };
    let one = Policy::from_yaml(&with("{cert: tls/site.pem, key: tls/site.key}")).unwrap();
    let tls = one.proxy().unwrap().tls.clone().unwrap();
    assert_eq!(tls.certificates.len(), 1);
    let c = &tls.certificates[0];
    assert_eq!(
        (c.cert.as_str(), c.key.as_str()),
        ("tls/site.pem", "tls/site.key")
    );
    assert!(c.names.is_empty());
    assert_eq!(
        (c.path.as_str(), c.cert_pos.line, c.key_pos.line),
        ("traffic.proxy.tls", 9, 9)
    );

    let several = Policy::from_yaml(&with(
        "\n      certificates:\n        - {cert: a.pem, key: a.key, names: [A.example.com, '*.a.example.com']}\n        - {cert: any.pem, key: any.key}\n        - {cert: b.pem, key: b.key, names: [b.example.com]}",
    ))
    .unwrap();
    let tls = several.proxy().unwrap().tls.clone().unwrap();
    assert_eq!(
        tls.certificates[0].names,
        ["a.example.com", "*.a.example.com"]
    );
    assert_eq!(tls.default_index(), 1);
    assert_eq!(
        tls.certificates[2].path,
        "traffic.proxy.tls.certificates[2]"
    );
    assert_eq!(tls.certificates[2].cert_pos.line, 13);

    for (text, path, says) in [
        ("{cert: a.pem}", "traffic.proxy.tls.key", "missing"),
        (
            "{cert: a.pem, key: ''}",
            "traffic.proxy.tls.key",
            "empty path",
        ),
        (
            "{cert: a.pem, key: a.key, names: [a]}",
            "traffic.proxy.tls.names",
            "unknown field",
        ),
        (
            "{cert: a.pem, key: a.key, certificates: [{cert: b.pem, key: b.key}]}",
            "traffic.proxy.tls",
            "together",
        ),
        (
            "{certificates: []}",
            "traffic.proxy.tls.certificates",
            "empty list",
        ),
        (
            "{certificates: [{cert: a.pem, key: a.key}, {cert: b.pem, key: b.key}]}",
            "traffic.proxy.tls.certificates",
            "only one can be the default",
        ),
        (
            "{certificates: [{cert: a.pem, key: a.key, names: [x.io]}, {cert: b.pem, key: b.key, names: [X.io]}]}",
            "traffic.proxy.tls.certificates[1].names",
            "two certificates",
        ),
        (
            "{certificates: [{cert: a.pem, key: a.key, names: ['bad name']}]}",
            "traffic.proxy.tls.certificates[0].names[0]",
            "not a server name",
        ),
    ] {
        let e = errors(&with(text));
        assert_eq!(e.len(), 1, "{text}: {e:?}");
        assert_eq!(e[0].path, path, "{text}: {e:?}");
        assert_eq!(e[0].line, 9, "{text}");
        assert!(e[0].message.contains(says), "{text}: {}", e[0].message);
    }
}

#[test]
fn forwarded_trust_defaults_to_none_and_refuses_a_bad_network_at_its_line() {
    let proxy = |src: &str| {
        Policy::from_yaml(src)
            .unwrap()
            .proxy()
            .unwrap()
            .forwarded
            .clone()
    };
    assert_eq!(proxy(MINIMAL), Trust::None);
    let with = |text: &str| {
        MINIMAL.replace(
            "listen: 127.0.0.1:8080",
            &format!("listen: 127.0.0.1:8080\n    forwarded: {text}"),
        )
    };
    assert_eq!(proxy(&with("{trust: all}")), Trust::All);
    assert_eq!(proxy(&with("{trust: none}")), Trust::None);
    let Trust::Networks(nets) = proxy(&with("{trust: [10.0.0.0/8, '::1', 'fd00::/8']}")) else {
        panic!("a list of networks");
    };
    let shown: Vec<String> = nets.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["10.0.0.0/8", "::1/128", "fd00::/8"]);
    let trust = Trust::Networks(nets);
    for (peer, trusted) in [
        ("10.1.2.3", true),
        ("11.0.0.1", false),
        ("::1", true),
        ("::2", false),
        ("fd12::1", true),
        ("::ffff:10.0.0.9", true),
    ] {
        assert_eq!(trust.trusts(peer.parse().unwrap()), trusted, "{peer}");
    }

    // Each bad network at its own line, under its own path.
    let src = MINIMAL.replace(
        "listen: 127.0.0.1:8080",
        "listen: 127.0.0.1:8080\n    forwarded:\n      trust:\n        - 10.0.0.0/8\n        - 10.0.0.1/8\n        - 300.0.0.0/8\n        - ::/129",
    );
    let e = errors(&src);
    let got: Vec<(String, u32)> = e.iter().map(|d| (d.path.clone(), d.line)).collect();
    assert_eq!(
        got,
        [
            ("traffic.proxy.forwarded.trust[1]".to_string(), 12),
            ("traffic.proxy.forwarded.trust[2]".to_string(), 13),
            ("traffic.proxy.forwarded.trust[3]".to_string(), 14),
        ],
        "{e:?}"
    );
    assert!(e[0].message.contains("10.0.0.0/8"), "{}", e[0].message);
    assert!(e[1].message.contains("not a network"), "{}", e[1].message);
    assert!(e[2].message.contains("0 to 128"), "{}", e[2].message);
    for (text, says) in [("{trust: some}", "none"), ("{trusted: all}", "trust")] {
        let e = errors(&with(text));
        assert_eq!(e.len(), 1, "{text}: {e:?}");
        assert!(e[0].message.contains(says), "{text}: {}", e[0].message);
    }
}

#[test]
fn upstream_protocol_defaults_to_http1_and_refuses_others_at_its_line() {
    let with = |text: &str| {
        MINIMAL.replace(
            "listen: 127.0.0.1:8080",
            &format!("listen: 127.0.0.1:8080\n    upstream_protocol: {text}"),
        )
    };
    let protocol = |src: &str| {
        Policy::from_yaml(src)
            .unwrap()
            .proxy()
            .unwrap()
            .upstream_protocol
    };
    assert_eq!(protocol(MINIMAL), UpstreamProtocol::Http1);
    assert_eq!(protocol(&with("http1")), UpstreamProtocol::Http1);
    assert_eq!(protocol(&with("h2c")), UpstreamProtocol::H2c);
    let e = errors(&with("h2"));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(
        (e[0].path.as_str(), e[0].line),
        ("traffic.proxy.upstream_protocol", 9)
    );
    assert!(e[0].message.contains("`h2c`"), "{}", e[0].message);
    assert!(e[0].message.contains("http1"), "{}", e[0].message);
}

/// A trusted network written as IPv4-mapped IPv6 (`::ffff:10.0.0.0/104`, as a
/// dual-stack listener's peers show in `ss`) was accepted, yet matched no peer at all:
/// `Trust::trusts` canonicalises a mapped peer to IPv4 and never matches across
/// families, so neither `10.1.2.3` nor `::ffff:10.1.2.3` is in it. The policy must
/// refuse such a network at its line, or match the peers it names.
#[test]
fn a_trusted_network_written_ipv4_mapped_matches_its_peers_or_is_refused() {
    let src = MINIMAL.replace(
        "listen: 127.0.0.1:8080",
        "listen: 127.0.0.1:8080\n    forwarded: {trust: ['::ffff:10.0.0.0/104']}",
    );
    let refused = Policy::from_yaml(&src).is_err();
    let matches = Policy::from_yaml(&src).ok().is_some_and(|p| {
        let trust = &p.proxy().unwrap().forwarded;
        trust.trusts("10.1.2.3".parse().unwrap())
            && trust.trusts("::ffff:10.1.2.3".parse().unwrap())
    });
    assert!(
        refused || matches,
        "`::ffff:10.0.0.0/104` is accepted and trusts nobody"
    );
}

/// Regression (review): under `sticky: client-ip` the proxy has no rule to send an
/// allowlisted address to the canary, while the flag endpoint answers "on" for it: the
/// tester got the flag on from the old version, measured as stable. A ramped flag's
/// allowlist is refused under `client-ip`, at the field; a header allows it.
#[test]
fn a_ramped_flags_allowlist_is_refused_under_client_ip_stickiness() {
    let base = with_metric("{metric: error_rate, judge: {max: 5%}}").replace(
        "strategy:\n  canary:\n    steps:\n      - weight: 10\n        bake: 1m\n",
        "strategy:\n  flag: {flag: f, steps: [{weight: 10, bake: 1m}]}\nflags:\n  define: [{name: f, default: false, allow: [127.0.0.1]}]\n",
    );
    let by_ip = base.replace(
        "    listen: 127.0.0.1:8080\n",
        "    listen: 127.0.0.1:8080\n    sticky: client-ip\n",
    );
    assert_ne!(by_ip, base);
    let d = errors(&by_ip);
    assert!(
        d.iter()
            .any(|d| d.path == "flags.define[0].allow" && d.message.contains("client-ip")),
        "{d:?}"
    );
    let by_header = base.replace(
        "    listen: 127.0.0.1:8080\n",
        "    listen: 127.0.0.1:8080\n    sticky: {header: x-user}\n",
    );
    if let Err(e) = Policy::from_yaml(&by_header) {
        panic!("{e:?}");
    }
}
