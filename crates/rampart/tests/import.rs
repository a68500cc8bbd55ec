//! `rampart import argo|flagger`: realistic manifests (tests/import/) in, a policy out
//! that the real policy decoder accepts, with the meaning of each mapped field checked
//! on the decoded policy, every unmapped field listed, and the exit codes.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::rampart;
use rampart_core::Policy;
use rampart_core::policy::{
    Deploy, Direction, EscalationAction, FailureCount, GateCheck, Judge, KubeMode, MetricSpec,
    NotifyTarget, QuerySource, Strategy, Traffic,
};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/import")
        .join(name)
}

/// Runs `rampart import KIND FILES --output json`: the exit code and the report.
fn import(kind: &str, files: &[&str]) -> (i32, Value) {
    let out = rampart()
        .arg("import")
        .arg(kind)
        .args(files.iter().map(|f| fixture(f)))
        .args(["--output", "json"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim().lines().count(), 1, "one JSON object: {text}");
    (
        out.status.code().unwrap(),
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

/// The report's policy, decoded by the real policy decoder (every test output must be
/// a valid policy).
fn policy(v: &Value) -> Policy {
    let text = v["policy"].as_str().unwrap();
    Policy::from_yaml(text).unwrap_or_else(|e| panic!("{:?}\n{text}", e.diagnostics))
}

fn unmapped(v: &Value) -> Vec<String> {
    v["unmapped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            format!(
                "{} {}",
                u["object"].as_str().unwrap(),
                u["field"].as_str().unwrap()
            )
        })
        .collect()
}

fn metric<'a>(p: &'a Policy, name: &str) -> &'a MetricSpec {
    p.analysis
        .metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

fn limits(m: &MetricSpec) -> (Option<f64>, Option<f64>) {
    match &m.judge {
        Judge::Threshold(t) => (t.min, t.max),
        Judge::Sequential(_) => panic!("{} is sequential", m.name),
    }
}

/// Each step as (weight %, bake s) or ("approval", timeout s).
fn steps(p: &Policy) -> Vec<String> {
    p.strategy
        .steps()
        .iter()
        .map(|s| match &s.approval {
            Some(a) => format!("approval {}s", a.timeout.as_secs()),
            None => format!("{}% {}s", s.weight.percent(), s.bake.as_secs()),
        })
        .collect()
}

fn kube(p: &Policy) -> (&rampart_core::policy::KubeDeploySpec, &KubeMode) {
    let Deploy::Kubernetes(d) = &p.deploy else {
        panic!("not kubernetes")
    };
    let Traffic::Kubernetes(t) = &p.traffic else {
        panic!("not kubernetes")
    };
    (d, &t.mode)
}

#[test]
fn argo_canary_with_nginx_routing_maps_steps_pauses_analysis_and_routes() {
    let (code, v) = import("argo", &["argo-canary-nginx.yaml"]);
    assert_eq!(code, 4, "a header route and two Argo-only fields: {v}");
    assert_eq!(v["kind"], "argo");
    let p = policy(&v);
    assert_eq!(p.service, "checkout");
    let (d, mode) = kube(&p);
    assert_eq!(d.namespace, "shop");
    assert_eq!(d.deployment, "checkout");
    assert_eq!(d.container, "web");
    assert_eq!(d.image, "registry.example.com:5000/shop/checkout:{version}");
    assert_eq!(d.ready_timeout, Duration::from_secs(300));
    assert_eq!(
        mode,
        &KubeMode::HttpRoute {
            service: "checkout-stable".into(),
            route: "checkout".into()
        }
    );
    // setWeight 10 + pause 30 (unitless: seconds); setWeight 25 + pause 2m + an inline
    // analysis of 5 x 1m; setWeight 50; an indefinite pause (approval); 100 + 1m.
    assert_eq!(
        steps(&p),
        [
            "10% 30s",
            "25% 420s",
            "50% 0s",
            &format!("approval {}s", 30 * 86_400),
            "100% 60s"
        ]
    );
    // scaleDownDelaySeconds is not a drain: the default stays, and it is unmapped.
    assert_eq!(p.rollback.drain, Duration::from_secs(10));
    // successCondition result[0] >= 0.95: a min, higher is better; failureLimit 2 in
    // total trips at the third failure.
    let sr = metric(&p, "success-rate");
    assert_eq!(limits(sr), (Some(0.95), None));
    assert_eq!(sr.direction, Direction::HigherIsBetter);
    assert_eq!(sr.failure_limit, 3);
    assert_eq!(sr.failure_count, FailureCount::Total);
    let q = sr.query.as_ref().unwrap();
    assert_eq!(q.source, QuerySource::Prometheus);
    // The step's args win over the template's; the Latest hash is the version.
    assert!(
        q.query.contains("service=\"checkout-canary\""),
        "{}",
        q.query
    );
    assert!(q.query.contains("rollouts_pod_template_hash=\"{version}\""));
    assert_eq!(
        p.analysis.prometheus.as_deref(),
        Some("http://prometheus.monitoring:9090")
    );
    // The background analysis on Datadog, with its arg from a label of the Rollout.
    let lat = metric(&p, "p95-latency");
    assert_eq!(limits(lat), (None, Some(500.0)));
    assert_eq!(lat.direction, Direction::LowerIsBetter);
    assert_eq!(lat.failure_limit, 1, "Argo's default failureLimit is 0");
    let q = lat.query.as_ref().unwrap();
    assert_eq!(q.source, QuerySource::Datadog);
    assert!(q.query.ends_with("{service:checkout}"), "{}", q.query);
    // The shortest interval, and consecutiveErrorLimit 2 as the escalation: Argo's
    // measurement errors (a failed query, an empty result) are no data in rampart.
    assert_eq!(p.analysis.interval, Duration::from_secs(30));
    assert_eq!(p.analysis.no_data.limit, 3);
    assert_eq!(p.analysis.no_data.action, EscalationAction::Rollback);
    assert_eq!(
        unmapped(&v),
        [
            "Rollout checkout spec.revisionHistoryLimit",
            "Rollout checkout spec.strategy.canary.scaleDownDelaySeconds",
            "Rollout checkout spec.strategy.canary.steps[2].setHeaderRoute",
            "AnalysisTemplate latency spec.metrics[0].provider.datadog.interval",
            "Rollout checkout spec.strategy.canary.trafficRouting.managedRoutes",
        ]
    );
    // The comments point at the source fields.
    let text = v["policy"].as_str().unwrap();
    assert!(text.contains("# from Rollout checkout spec.strategy.canary.steps[7].pause"));
    assert!(text.contains("# from AnalysisTemplate success-rate spec.metrics[0]"));
    let sources = v["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 3);
    assert!(sources.iter().all(|s| s["used"] == true), "{sources:?}");
}

#[test]
fn argo_canary_without_routing_splits_by_replicas_and_maps_web_and_job() {
    let (code, v) = import(
        "argo",
        &["argo-canary-replicas.yaml", "payments-deployment.yaml"],
    );
    assert_eq!(code, 4, "the Job around the command: {v}");
    assert_eq!(
        unmapped(&v),
        [
            "AnalysisTemplate smoke spec.metrics[0].provider.job.spec.backoffLimit",
            "AnalysisTemplate smoke spec.metrics[0].provider.job.spec.template.spec.restartPolicy",
            "AnalysisTemplate smoke spec.metrics[0].provider.job.spec.template.spec.containers[0].image",
        ]
    );
    let p = policy(&v);
    let (d, mode) = kube(&p);
    // The workloadRef's Deployment, from the second file.
    assert_eq!(d.deployment, "payments");
    assert_eq!(d.container, "api");
    assert_eq!(d.image, "ghcr.io/acme/payments:{version}");
    // 20, 40, 80 % on a grid of 5 parts: each weight exact.
    assert_eq!(mode, &KubeMode::ReplicaRatio { replicas: 5 });
    assert_eq!(
        steps(&p),
        [
            "20% 600s",
            "40% 0s",
            &format!("approval {}s", 30 * 86_400),
            "80% 300s"
        ]
    );
    // web -> http, its jsonPath braces dropped, the secret arg as {env:NAME} in a
    // header; failureCondition result > 0.02 -> max.
    let web = metric(&p, "error-ratio");
    let q = web.query.as_ref().unwrap();
    let QuerySource::Http(h) = &q.source else {
        panic!("not http: {:?}", q.source)
    };
    assert_eq!(h.url, "http://payments.pay.svc.cluster.local:9090/stats");
    assert_eq!(
        h.headers,
        [(
            "Authorization".to_string(),
            "Bearer {env:API_TOKEN}".to_string()
        )]
    );
    assert_eq!(q.query, "$.errors.ratio");
    assert_eq!(limits(web), (None, Some(0.02)));
    assert_eq!(web.failure_limit, 4);
    // job -> command: its exit status is the value, and 1 (failed) trips it.
    let job = metric(&p, "smoke-test");
    let q = job.query.as_ref().unwrap();
    let QuerySource::Command(c) = &q.source else {
        panic!("not a command: {:?}", q.source)
    };
    assert!(
        c.argv.ends_with(&[
            "curl".into(),
            "-fsS".into(),
            "http://payments.pay.svc.cluster.local/healthz".into()
        ]),
        "{:?}",
        c.argv
    );
    assert_eq!(limits(job), (None, Some(0.0)));
    assert_eq!(p.analysis.interval, Duration::from_secs(20));
}

#[test]
fn argo_blue_green_waiting_for_a_human_is_a_full_release_with_both_analyses() {
    let (code, v) = import("argo", &["argo-bluegreen.yaml"]);
    assert_eq!(code, 4);
    let p = policy(&v);
    let (_, mode) = kube(&p);
    assert_eq!(
        mode,
        &KubeMode::ServiceSelector {
            service: "search-active".into()
        }
    );
    let Strategy::Full(full) = &p.strategy else {
        panic!(
            "autoPromotionEnabled: false is a full release: {:?}",
            p.strategy
        )
    };
    assert_eq!(full.approval.as_ref().unwrap().role, "approver");
    // 3 x 1m before the promotion, then the longer of 3 x 1m and 2 x 1m after it.
    assert_eq!(full.stability, Duration::from_secs(360));
    assert_eq!(p.rollback.drain, Duration::from_secs(10));
    // The same template with other args is two metrics; pre and post both judged.
    let pre = metric(&p, "error-rate");
    assert!(pre.query.as_ref().unwrap().query.contains("search-preview"));
    let post = metric(&p, "error-rate-2");
    assert!(post.query.as_ref().unwrap().query.contains("search-active"));
    assert_eq!(limits(post), (None, Some(0.05)));
    // Both conditions: the failure condition decides, the band between is unmapped.
    // `>= 0.9` fails at 0.9 itself: the largest passing value is just below.
    assert_eq!(limits(metric(&p, "cpu")), (None, Some(0.9f64.next_down())));
    assert_eq!(
        unmapped(&v),
        [
            "Rollout search spec.strategy.blueGreen.previewService",
            "AnalysisTemplate saturation spec.metrics[0].successCondition",
            "AnalysisTemplate saturation spec.metrics[0].inconclusiveLimit",
            "AnalysisTemplate saturation spec.metrics[1].provider.wavefront",
            "Rollout search spec.strategy.blueGreen.scaleDownDelaySeconds",
        ]
    );
}

#[test]
fn argo_blue_green_with_auto_promotion_keeps_the_previous_colour() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("argo-bluegreen.yaml"))
        .unwrap()
        .replace("autoPromotionEnabled: false", "autoPromotionEnabled: true");
    let file = dir.path().join("bg.yaml");
    std::fs::write(&file, text).unwrap();
    let out = rampart()
        .args(["import", "argo"])
        .arg(&file)
        .args(["--output", "json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = policy(&v);
    let Strategy::BlueGreen(bg) = &p.strategy else {
        panic!("{:?}", p.strategy)
    };
    assert_eq!(bg.keep_previous, Duration::from_secs(120));
    assert_eq!(bg.stability, Duration::from_secs(360));
}

#[test]
fn flagger_canary_maps_weights_metrics_webhooks_and_alerts() {
    let (code, v) = import("flagger", &["flagger-canary.yaml"]);
    assert_eq!(code, 4, "{v}");
    assert_eq!(v["kind"], "flagger");
    let p = policy(&v);
    let (d, mode) = kube(&p);
    assert_eq!(
        (d.namespace.as_str(), d.deployment.as_str()),
        ("test", "podinfo")
    );
    assert_eq!(d.container, "podinfod");
    assert_eq!(d.image, "ghcr.io/stefanprodan/podinfo:{version}");
    assert_eq!(
        mode,
        &KubeMode::HttpRoute {
            service: "podinfo".into(),
            route: "podinfo".into()
        }
    );
    // confirm-rollout, the stepWeights at one interval each, confirm-promotion.
    assert_eq!(
        steps(&p),
        [
            "approval 86400s",
            "5% 60s",
            "10% 60s",
            "25% 60s",
            "50% 60s",
            "approval 86400s"
        ]
    );
    // threshold 5: failed checks in total.
    for m in &p.analysis.metrics {
        assert_eq!(m.failure_limit, 5, "{}", m.name);
        assert_eq!(m.failure_count, FailureCount::Total, "{}", m.name);
    }
    // Builtins: success rate >= 99 % is an error share <= 1 %; duration p99 <= 500 ms.
    let sr = metric(&p, "request-success-rate");
    assert_eq!(limits(sr), (None, Some(0.01)));
    assert!(sr.query.as_ref().unwrap().counts);
    let dur = metric(&p, "request-duration");
    assert_eq!(limits(dur), (None, Some(500.0)));
    assert!(dur.query.as_ref().unwrap().buckets.is_some());
    // MetricTemplates: Prometheus with {{ target }} and {{ interval }}, Datadog with a
    // template variable and its EU site.
    let nf = metric(&p, "not-found-percentage");
    assert_eq!(limits(nf), (None, Some(5.0)));
    let q = &nf.query.as_ref().unwrap().query;
    assert!(q.contains("destination_workload=\"podinfo-canary\""), "{q}");
    assert!(q.contains("[60s]"), "the metric's own interval: {q}");
    let dd = metric(&p, "dd-latency");
    assert_eq!(dd.query.as_ref().unwrap().source, QuerySource::Datadog);
    assert!(dd.query.as_ref().unwrap().query.contains("env:prod"));
    assert_eq!(p.analysis.datadog.as_ref().unwrap().site, "datadoghq.eu");
    // The load tester's hey is rampart's own load; a plain rollout webhook a metric.
    let load = p.analysis.load.as_ref().unwrap();
    assert_eq!(load.rate, 20);
    assert_eq!(load.url.as_deref(), Some("http://podinfo-canary.test:9898"));
    assert_eq!(load.paths, ["/api/info"]);
    assert_eq!(limits(metric(&p, "webhook-acceptance")), (None, Some(0.0)));
    // pre-rollout: a gate; post-rollout and event: hooks; the Slack alert: a hook.
    assert_eq!(p.gates.pre.len(), 1);
    assert!(matches!(&p.gates.pre[0].check, GateCheck::Command { .. }));
    assert_eq!(p.notify.len(), 3);
    assert!(
        matches!(&p.notify[0].target, NotifyTarget::Command(c) if c.last().unwrap() == "http://hooks.test/done")
    );
    assert_eq!(p.notify[0].on, ["done"]);
    assert!(
        matches!(&p.notify[1].target, NotifyTarget::Webhook { url, .. } if url == "http://events.test/flagger")
    );
    assert!(matches!(&p.notify[2].target, NotifyTarget::Slack { .. }));
    assert_eq!(
        unmapped(&v),
        [
            "Canary podinfo spec.analysis.match",
            "Canary podinfo spec.analysis.webhooks[3].timeout",
            "Canary podinfo spec.analysis.webhooks[6]",
            "Canary podinfo spec.service.port",
            "Canary podinfo spec.service.targetPort",
            "Canary podinfo spec.service.gateways",
            "Canary podinfo spec.service.hosts",
            "Canary podinfo spec.service.retries",
            "AlertProvider on-call spec.type",
            "AlertProvider dev-slack spec.channel",
            "AlertProvider dev-slack spec.username",
            "Canary podinfo spec.analysis.threshold",
        ]
    );
}

#[test]
fn flagger_blue_green_runs_its_iterations_in_the_stability_window() {
    let (code, v) = import("flagger", &["flagger-bluegreen.yaml"]);
    assert_eq!(
        code, 4,
        "the target Deployment is not among the inputs: {v}"
    );
    assert_eq!(
        unmapped(&v),
        [
            "Canary backend spec.targetRef",
            "Canary backend spec.service.port",
            "Canary backend spec.service.portDiscovery",
            "Canary backend spec.analysis.threshold",
        ]
    );
    let p = policy(&v);
    let (_, mode) = kube(&p);
    assert_eq!(
        mode,
        &KubeMode::ServiceSelector {
            service: "backend".into()
        }
    );
    let Strategy::BlueGreen(bg) = &p.strategy else {
        panic!("{:?}", p.strategy)
    };
    assert_eq!(bg.stability, Duration::from_secs(300), "10 x 30s");
    assert_eq!(p.analysis.interval, Duration::from_secs(30));
    let sr = metric(&p, "request-success-rate");
    assert_eq!(limits(sr), (None, Some(0.005)));
    assert_eq!(sr.failure_limit, 2);
    let eb = metric(&p, "error-budget");
    assert_eq!(limits(eb), (Some(0.9), None));
    assert_eq!(eb.direction, Direction::HigherIsBetter);
    assert_eq!(
        p.analysis.prometheus.as_deref(),
        Some("http://prometheus.monitoring:9090")
    );
}

#[test]
fn the_written_policy_passes_rampart_validate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rampart.yaml");
    let run = rampart()
        .args(["import", "flagger"])
        .arg(fixture("flagger-canary.yaml"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(4));
    assert!(run.stdout.is_empty(), "the policy went to --out");
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("unmapped (12):"), "{err}");
    assert!(err.contains("Canary podinfo spec.analysis.match"), "{err}");
    let v = rampart()
        .args(["validate", "-f"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(
        v.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );
}

#[test]
fn text_output_prints_the_policy_and_the_unmapped_list_on_stderr() {
    let run = rampart()
        .args(["import", "argo"])
        .arg(fixture("argo-canary-nginx.yaml"))
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(4));
    let policy = String::from_utf8(run.stdout).unwrap();
    Policy::from_yaml(&policy).unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("Rollout checkout spec.strategy.canary.steps[2].setHeaderRoute"),
        "{err}"
    );
    assert!(
        !policy.contains("setHeaderRoute ("),
        "the list is not in the policy"
    );
}

#[test]
fn a_rollout_referencing_a_missing_template_names_the_file_document_and_field() {
    let (code, v) = import("argo", &["argo-missing-template.yaml"]);
    assert_eq!(code, 2);
    assert_eq!(
        v["field"],
        "spec.strategy.canary.steps[1].analysis.templates[1].templateName"
    );
    assert_eq!(v["document"], 0);
    assert_eq!(v["line"], 16);
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("argo-missing-template.yaml"), "{msg}");
    assert!(msg.contains("`does-not-exist`"), "{msg}");
}

#[test]
fn bad_yaml_names_the_file_the_document_and_the_line() {
    let (code, v) = import("argo", &["bad-yaml.yaml"]);
    assert_eq!(code, 2);
    assert_eq!(v["document"], 1);
    assert_eq!(v["line"], 12);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("bad-yaml.yaml: document 1: 12:")
    );
}

/// A manifest saved with a Latin-1 byte (`# café`, 0xE9, on line 2) is refused at that
/// line and column, as a policy is, not as a file that cannot be read.
#[test]
fn a_byte_that_is_not_utf8_is_refused_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("latin1.yaml");
    std::fs::write(
        &file,
        b"apiVersion: argoproj.io/v1alpha1\n# caf\xE9\nkind: Rollout\n",
    )
    .unwrap();
    let out = rampart()
        .args(["import", "argo"])
        .arg(&file)
        .args(["--output", "json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(2), "{v}");
    assert_eq!(
        (v["line"].as_u64(), v["col"].as_u64()),
        (Some(2), Some(6)),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("not UTF-8"), "{v}");
}

#[test]
fn input_that_is_not_a_rollout_or_a_canary_is_refused_with_what_was_found() {
    let (code, v) = import("argo", &["payments-deployment.yaml"]);
    assert_eq!(code, 2);
    assert_eq!(v["field"], "kind");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("no Rollout"), "{msg}");
    assert!(msg.contains("Deployment `payments`"), "{msg}");
    // A Canary given to `import argo`, and a Rollout to `import flagger`.
    let (code, v) = import("argo", &["flagger-bluegreen.yaml"]);
    assert_eq!(code, 2);
    assert!(v["message"].as_str().unwrap().contains("Canary `backend`"));
    let (code, _) = import("flagger", &["argo-bluegreen.yaml"]);
    assert_eq!(code, 2);
}

#[test]
fn unknown_steps_and_fields_are_listed_never_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.yaml");
    std::fs::write(
        &file,
        r#"
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: web}
spec:
  futureField: 1
  template:
    spec:
      containers: [{name: web, image: "web:1"}]
  strategy:
    canary:
      steps:
        - setWeight: 30
        - experiment: {duration: 1h}
        - teleport: {to: mars}
        - setWeight: 20
        - setMirrorRoute: {name: m}
"#,
    )
    .unwrap();
    let out = rampart()
        .args(["import", "argo"])
        .arg(&file)
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        unmapped(&v),
        [
            "Rollout web spec.futureField",
            "Rollout web spec.strategy.canary.steps[1].experiment",
            "Rollout web spec.strategy.canary.steps[2].teleport",
            "Rollout web spec.strategy.canary.steps[3].setWeight",
            "Rollout web spec.strategy.canary.steps[4].setMirrorRoute",
        ]
    );
    // No analysis: rampart still judges something, and says so.
    let p = policy(&v);
    assert_eq!(p.analysis.metrics[0].name, "error-rate");
    assert!(
        v["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("has no analysis"))
    );
}

#[test]
fn truncated_and_garbled_inputs_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x.yaml");
    for (kind, name) in [
        ("argo", "argo-canary-nginx.yaml"),
        ("flagger", "flagger-canary.yaml"),
    ] {
        let text = std::fs::read_to_string(fixture(name)).unwrap();
        // Every 97th cut, and the text with every 13th line dropped.
        let dropped: String = text
            .lines()
            .enumerate()
            .filter(|(i, _)| i % 13 != 5)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        let cuts = (0..text.len())
            .step_by(97)
            .filter(|i| text.is_char_boundary(*i))
            .map(|i| text[..i].to_string());
        for t in cuts.chain([dropped]) {
            std::fs::write(&file, &t).unwrap();
            let out = rampart()
                .args(["import", kind])
                .arg(&file)
                .args(["--output", "json"])
                .output()
                .unwrap();
            let code = out.status.code().unwrap();
            assert!(
                [0, 2, 4].contains(&code),
                "exit {code} on:\n{t}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            if code != 2 {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                policy(&v);
            }
        }
    }
}

/// Argo without traffic routing gives the canary ceil(weight x replicas / 100) pods;
/// on a grid rampart can split exactly, the policy keeps that split.
#[test]
fn argo_without_routing_keeps_argos_own_pod_split() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.yaml");
    let rollout = |replicas: u32| {
        format!(
            r#"
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {{name: web}}
spec:
  replicas: {replicas}
  template:
    spec:
      containers: [{{name: web, image: "web:1"}}]
  strategy:
    canary:
      steps: [{{setWeight: 30}}, {{pause: {{duration: 1h}}}}, {{setWeight: 60}}]
"#
        )
    };
    let run = |text: String| {
        std::fs::write(&file, text).unwrap();
        let out = rampart()
            .args(["import", "argo"])
            .arg(&file)
            .args(["--output", "json"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        policy(&v)
    };
    // 8 pods: 30 % is 3 pods (37.5 %), 60 % is 5 pods (62.5 %).
    let p = run(rollout(8));
    assert_eq!(kube(&p).1, &KubeMode::ReplicaRatio { replicas: 8 });
    assert_eq!(steps(&p), ["37.5% 3600s", "62.5% 0s"]);
    // 3 pods is no exact grid: the smallest grid on which 30 and 60 are exact.
    let p = run(rollout(3));
    assert_eq!(kube(&p).1, &KubeMode::ReplicaRatio { replicas: 10 });
    assert_eq!(steps(&p), ["30% 3600s", "60% 0s"]);
}

#[test]
fn flagger_behind_nginx_steps_up_to_max_weight_and_routes_by_the_ingress_name() {
    let (code, v) = import("flagger", &["flagger-nginx.yaml"]);
    assert_eq!(code, 4);
    let p = policy(&v);
    assert_eq!(
        kube(&p).1,
        &KubeMode::HttpRoute {
            service: "podinfo".into(),
            route: "podinfo".into()
        }
    );
    // stepWeight 5 up to maxWeight 50: ten steps of one 10s interval each.
    let s = steps(&p);
    assert_eq!(s.len(), 10);
    assert_eq!((s[0].as_str(), s[9].as_str()), ("5% 10s", "50% 10s"));
    // The older `threshold` of a metric is the duration's ceiling.
    assert_eq!(limits(metric(&p, "request-duration")), (None, Some(250.0)));
    assert_eq!(metric(&p, "request-success-rate").failure_limit, 10);
    let load = p.analysis.load.as_ref().unwrap();
    assert_eq!(
        (load.rate, load.url.as_deref()),
        (20, Some("http://app.example.com"))
    );
    assert_eq!(p.gates.pre[0].name, "acceptance-test");
    assert_eq!(
        unmapped(&v),
        [
            "Canary podinfo spec.autoscalerRef",
            "Canary podinfo spec.targetRef",
            "Canary podinfo spec.service.port",
            "Canary podinfo spec.service.targetPort",
            "Canary podinfo spec.analysis.threshold",
        ]
    );
}

/// Writes `text` to a temporary file and imports it.
fn import_text(kind: &str, text: &str) -> (i32, Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.yaml");
    std::fs::write(&file, text).unwrap();
    let out = rampart()
        .args(["import", kind])
        .arg(&file)
        .args(["--output", "json"])
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

#[test]
fn argo_new_relic_and_cloudwatch_metrics_say_what_the_manifests_do_not() {
    let (code, v) = import_text(
        "argo",
        r#"
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: api, namespace: prod}
spec:
  template:
    spec:
      containers: [{name: api, image: "api:3"}]
  strategy:
    canary:
      steps:
        - setWeight: 50
        - analysis: {templates: [{templateName: apm}]}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: apm}
spec:
  metrics:
    - name: nr-errors
      interval: 1m
      count: 2
      successCondition: result.errorRate < 0.05
      failureCondition: result < 0.95
      provider:
        newRelic:
          profile: my-secret
          query: "FROM Transaction SELECT percentage(count(*), WHERE error is false) WHERE appName = 'api'"
    - name: cw-latency
      interval: 1m
      count: 2
      successCondition: "all(result[0].Values, {# <= 0.01})"
      failureCondition: result[0] > 0.5
      provider:
        cloudWatch:
          metricDataQueries:
            - id: rate
              expression: "SELECT AVG(Latency) FROM SCHEMA(\"AWS/ApplicationELB\", LoadBalancer)"
"#,
    );
    assert_eq!(code, 4);
    let p = policy(&v);
    assert_eq!(steps(&p), ["50% 120s"], "count 2 x interval 1m");
    let nr = metric(&p, "nr-errors");
    assert_eq!(nr.query.as_ref().unwrap().source, QuerySource::NewRelic);
    assert_eq!(limits(nr), (Some(0.95), None), "from the failure condition");
    let cw = metric(&p, "cw-latency");
    assert_eq!(cw.query.as_ref().unwrap().source, QuerySource::CloudWatch);
    assert_eq!(limits(cw), (None, Some(0.5)));
    assert_eq!(p.analysis.newrelic.as_ref().unwrap().account_id, 1);
    assert_eq!(p.analysis.cloudwatch.as_ref().unwrap().region, "us-east-1");
    assert_eq!(
        unmapped(&v),
        [
            "AnalysisTemplate apm spec.metrics[0].provider.newRelic",
            "AnalysisTemplate apm spec.metrics[0].successCondition",
            "AnalysisTemplate apm spec.metrics[1].provider.cloudWatch",
            "AnalysisTemplate apm spec.metrics[1].successCondition",
        ]
    );
}

#[test]
fn flagger_confirm_traffic_increase_is_an_approval_before_each_increase() {
    let (code, v) = import_text(
        "flagger",
        r#"
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: web, namespace: prod}
spec:
  provider: gatewayapi:v1
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  service:
    port: 80
    gatewayRefs: [{name: public, namespace: gw}]
  analysis:
    interval: 2m
    threshold: 3
    stepWeights: [10, 30, 60]
    metrics:
      - name: request-success-rate
        thresholdRange: {min: 99.9}
    webhooks:
      - name: ask
        type: confirm-traffic-increase
        url: http://gate.prod/approve
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: prod}
spec:
  template:
    spec:
      containers: [{name: web, image: "web:7"}]
"#,
    );
    assert_eq!(code, 4, "{v}");
    assert_eq!(
        unmapped(&v),
        [
            "Canary web spec.service.port",
            "Canary web spec.service.gatewayRefs"
        ]
    );
    let p = policy(&v);
    assert_eq!(
        steps(&p),
        [
            "approval 86400s",
            "10% 120s",
            "approval 86400s",
            "30% 120s",
            "approval 86400s",
            "60% 120s"
        ]
    );
    let sr = metric(&p, "request-success-rate");
    let (_, max) = limits(sr);
    assert!((max.unwrap() - 0.001).abs() < 1e-12, "{max:?}");
    assert_eq!(sr.failure_limit, 3);
}
