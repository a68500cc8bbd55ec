#![allow(clippy::unwrap_used)]
//! Review F: regressions in the changes 44fdf7d..next.

use rampart_core::Policy;
use rampart_core::import::{Kind, Source, import};

const BASE: &str = r#"
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
"#;

/// A release an older rampart started keeps its stored policy: a resume, a stop, the
/// controller's restore (`serve/restore.rs`) and the views read it with
/// `Policy::from_stored`, which leaves out the rules added since (`refuse_new`). The
/// three rules added in this range (a latency `max` >= ~192 s, a metric `name: ""`,
/// a hook `on: []`) were plain errors, so such a release could no longer be resumed,
/// stopped or restored after the upgrade; they refuse new releases only now.
#[test]
fn stored_policies_an_older_rampart_accepted_still_load() {
    let latency = format!(
        "{BASE}analysis:\n  metrics:\n    - metric: latency_p99\n      judge: {{ max: 5m }}\n"
    );
    let unnamed = format!(
        "{BASE}analysis:\n  metrics:\n    - metric: error_rate\n      name: \"\"\n      judge: {{ max: 1% }}\n"
    );
    let deaf = format!(
        "{BASE}analysis:\n  metrics:\n    - metric: error_rate\n      judge: {{ max: 1% }}\nnotify:\n  - command: [./page.sh]\n    on: []\n"
    );
    let mut failed = Vec::new();
    for (what, src) in [
        ("latency max 5m", latency),
        ("name \"\"", unnamed),
        ("on: []", deaf),
    ] {
        // A new release is refused, as intended...
        assert!(
            Policy::from_yaml(&src).is_err(),
            "{what}: a new release is refused"
        );
        // ...but one already running must still load.
        if let Err(e) = Policy::from_stored(&src) {
            failed.push(format!("{what}: {:?}", e.diagnostics));
        }
    }
    assert!(failed.is_empty(), "stored policies refused: {failed:#?}");
}

/// Flagger's `analysis.interval` is now kept unbounded as each step's bake. An
/// interval above 365 days (a policy's longest duration) used to be clamped to 1h and
/// imported; now the bake is over the policy's limit, the decoder refuses
/// `strategy.canary.steps[0].bake`, and the import fails as "a bug of rampart import"
/// (the blue-green path clamps `iterations x interval` to 365d, the steps do not).
#[test]
fn flagger_an_interval_over_a_year_still_imports_a_valid_policy() {
    let src = "apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: podinfo, namespace: test}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
  analysis:
    interval: 9000h
    threshold: 1
    stepWeights: [10, 50]
    metrics:
    - name: request-success-rate
      thresholdRange: {min: 99}
";
    let i = import(
        Kind::Flagger,
        &[Source {
            name: "in.yaml".into(),
            text: src.into(),
        }],
    )
    .unwrap_or_else(|e| panic!("the import must write a valid policy: {e}"));
    Policy::from_yaml(&i.policy).unwrap_or_else(|e| panic!("{:?}\n{}", e.diagnostics, i.policy));
}

/// A Rollout and its AnalysisTemplate written without a namespace (one base file,
/// applied together with `kubectl apply -n X`) land in the same namespace, whatever X
/// is; a copy of the template pinned to `staging` (another environment's file passed
/// with it) is found only if X is `staging`. The import refuses with "defined twice
/// where this Rollout would find it" although the un-namespaced template, the one
/// applied beside the Rollout, is the likely one (and the only one when X is not
/// `staging`): for a referrer without a namespace, un-namespaced templates should
/// come first, as a namespaced referrer's own namespace comes first.
#[test]
fn argo_a_rollout_without_namespace_finds_its_unnamespaced_template() {
    let src = "apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: demo}
spec:
  replicas: 4
  template:
    spec:
      containers: [{name: app, image: app:1}]
  strategy:
    canary:
      trafficRouting: {nginx: {stableIngress: demo}}
      stableService: demo
      steps: [{setWeight: 20}, {pause: {duration: 5m}}]
      analysis: {templates: [{templateName: sr}]}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: sr}
spec:
  metrics:
  - name: sr
    interval: 1m
    successCondition: result[0] >= 0.99
    provider: {prometheus: {address: 'http://p:9090', query: 'sum(x)'}}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: sr, namespace: staging}
spec:
  metrics:
  - name: sr
    interval: 1m
    successCondition: result[0] >= 0.5
    provider: {prometheus: {address: 'http://p:9090', query: 'sum(x)'}}
";
    let i = import(
        Kind::Argo,
        &[Source {
            name: "in.yaml".into(),
            text: src.into(),
        }],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(i.policy.contains("0.99"), "{}", i.policy);
}
