#![allow(clippy::unwrap_used)]
//! Adversarial review of `rampart import`: Argo Rollouts and Flagger manifests whose
//! imported policy is less safe than the source, or silently says something else.
//! Each test states the source's semantics and fails on the importer as it is.

use std::time::Duration;

use rampart_core::Policy;
use rampart_core::import::{Imported, Kind, Source, import};
use rampart_core::policy::{EscalationAction, Judge, Strategy};

fn imp(kind: Kind, text: &str) -> Imported {
    import(
        kind,
        &[Source {
            name: "in.yaml".into(),
            text: text.into(),
        }],
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn pol(i: &Imported) -> Policy {
    Policy::from_yaml(&i.policy).unwrap_or_else(|e| panic!("{:?}\n{}", e.diagnostics, i.policy))
}

fn has_unmapped(i: &Imported, field: &str) -> bool {
    i.unmapped.iter().any(|u| u.field == field)
}

fn limits(p: &Policy, name: &str) -> (Option<f64>, Option<f64>) {
    let m = p
        .analysis
        .metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no metric `{name}`"));
    match &m.judge {
        Judge::Threshold(t) => (t.min, t.max),
        Judge::Sequential(_) => panic!("`{name}` is judged sequentially"),
    }
}

/// The weights of the canary's weight steps, in percent.
fn weights(p: &Policy) -> Vec<f64> {
    p.strategy
        .steps()
        .iter()
        .filter(|s| s.approval.is_none())
        .map(|s| s.weight.percent())
        .collect()
}

// --- Argo Rollouts -----------------------------------------------------------

/// Argo: a failureCondition `len(result) == 0 || ...` fails a measurement on an empty
/// result (Prometheus answered nothing: no traffic, a broken query); with the default
/// failureLimit 0 the AnalysisRun fails at once and the Rollout aborts: traffic goes
/// back to stable. A query error or `result[0]` of an empty vector is an Error, and
/// consecutiveErrorLimit (default 4) errors in a row abort the Rollout too.
///
/// rampart calls an empty result, an error or NaN "no data" (docs/policy.md), and no
/// data escalates by `analysis.no_data`, whose default action is `halt`: the canary
/// keeps its share of traffic, paged, until a human acts. The import writes
/// `inconclusive: {action: rollback}` for consecutiveErrorLimit (its note even says
/// "at `analysis.inconclusive.limit` it rolls back"), but leaves `no_data` at
/// halt, so the Argo abort becomes a halt with the bad canary still serving.
#[test]
fn argo_an_empty_or_failed_measurement_rolls_back_as_argo_aborts() {
    let i = imp(
        Kind::Argo,
        "apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: demo}
spec:
  strategy:
    canary:
      steps: [{setWeight: 20}, {pause: {duration: 10m}}]
      analysis: {templates: [{templateName: errors}]}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: errors}
spec:
  metrics:
  - name: error-ratio
    interval: 1m
    failureCondition: len(result) == 0 || result[0] > 0.05
    provider:
      prometheus:
        address: http://prometheus:9090
        query: sum(rate(errors[1m])) / sum(rate(requests[1m]))
",
    );
    let p = pol(&i);
    assert_eq!(
        p.analysis.no_data.action,
        EscalationAction::Rollback,
        "Argo aborts (rolls back) on empty results and errors; the policy halts:\n{}",
        i.policy
    );
    assert!(
        p.analysis.no_data.limit <= 5,
        "Argo aborts after at most 5 consecutive errors: {:?}",
        p.analysis.no_data
    );
}

/// Argo: with `trafficRouting.maxTrafficWeight: 1000`, setWeight is counted in
/// thousandths: `setWeight: 10` sends 1 % of requests to the canary and
/// `setWeight: 500` sends 50 % (weightutil.MaxTrafficWeight; the router sets the
/// stable's weight to maxTrafficWeight - setWeight).
///
/// The import lists maxTrafficWeight as unmapped ("rampart's weights are percentages
/// of 100") but keeps the numbers as they are: the first step sends 10 % (ten times
/// Argo's canary exposure), and `setWeight: 500` is dropped as out of range.
#[test]
fn argo_set_weights_are_scaled_by_max_traffic_weight() {
    let i = imp(
        Kind::Argo,
        "apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: demo}
spec:
  strategy:
    canary:
      stableService: demo
      canaryService: demo-canary
      trafficRouting:
        maxTrafficWeight: 1000
        plugins:
          argoproj-labs/gatewayAPI: {httpRoute: demo-route}
      steps:
      - setWeight: 10
      - pause: {duration: 10m}
      - setWeight: 500
      - pause: {duration: 10m}
",
    );
    let p = pol(&i);
    assert_eq!(
        weights(&p),
        vec![1.0, 50.0],
        "setWeight 10 and 500 of 1000 are 1 % and 50 %:\n{}",
        i.policy
    );
}

/// Argo evaluates conditions with expr-lang, where `int(x)` truncates: with
/// `successCondition: int(result[0]) > 0`, a result of 0.5 is `0 > 0`, false, and the
/// measurement fails. Only a result of at least 1 passes.
///
/// The import drops the `int(..)` and reads `result[0] > 0`, `min: 5e-324`: 0.5
/// passes. Either the limit must be 1, or the condition listed as not understood.
#[test]
fn argo_an_int_truncating_condition_is_not_read_as_the_raw_value() {
    let i = imp(
        Kind::Argo,
        "apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: demo}
spec:
  strategy:
    canary:
      steps: [{setWeight: 20}, {pause: {duration: 5m}}]
      analysis: {templates: [{templateName: t}]}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: t}
spec:
  metrics:
  - name: ready-replicas
    interval: 1m
    successCondition: int(result[0]) > 0
    provider:
      prometheus:
        address: http://prometheus:9090
        query: avg(kube_deployment_status_replicas_ready{deployment=\"demo-canary\"})
",
    );
    let p = pol(&i);
    let listed = has_unmapped(&i, "spec.metrics[0].successCondition");
    let min = p
        .analysis
        .metrics
        .iter()
        .any(|m| m.name == "ready-replicas")
        .then(|| limits(&p, "ready-replicas").0)
        .flatten();
    assert!(
        listed || min.is_some_and(|v| v >= 1.0),
        "0.5 fails `int(result[0]) > 0` in Argo, but passes min {min:?}:\n{}",
        i.policy
    );
}

/// YAML merge keys (`<<: *base`) are part of the YAML Kubernetes reads (kubectl's
/// sigs.k8s.io/yaml resolves them): the second metric below inherits the
/// failureCondition, interval and failureLimit of the first.
///
/// The import does not resolve the merge: `spec.metrics[1].<<` is listed as a field
/// rampart "has no equivalent of", and the metric, left without a condition, is
/// dropped as "only recorded by Argo" - a failure check Argo runs is gone.
#[test]
fn argo_yaml_merge_keys_are_resolved() {
    let i = imp(
        Kind::Argo,
        "apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: demo}
spec:
  strategy:
    canary:
      steps: [{setWeight: 20}, {pause: {duration: 5m}}]
      analysis: {templates: [{templateName: t}]}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: t}
spec:
  metrics:
  - &base
    name: errors-api
    interval: 1m
    failureLimit: 0
    failureCondition: result[0] > 0.05
    provider: {prometheus: {address: \"http://prometheus:9090\", query: api_errors}}
  - <<: *base
    name: errors-worker
    provider: {prometheus: {address: \"http://prometheus:9090\", query: worker_errors}}
",
    );
    let p = pol(&i);
    assert!(!has_unmapped(&i, "spec.metrics[1].<<"), "{:?}", i.unmapped);
    assert!(
        p.analysis.metrics.iter().any(|m| m.name == "errors-worker"),
        "the merged metric is judged in Argo:\n{}",
        i.policy
    );
    assert_eq!(limits(&p, "errors-worker"), (None, Some(0.05)));
}

// --- Flagger ------------------------------------------------------------------

const FLAGGER_HEAD: &str = "apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: podinfo, namespace: test}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
";

/// Flagger: a metric check that finds no values ("Halt advancement no values found
/// for ... probably ... is not receiving traffic") or whose query fails makes
/// runAnalysis return false, which counts one failed check; at `threshold` failed
/// checks Flagger rolls back (scheduler.go: SetStatusFailedChecks, then rollback).
///
/// rampart calls a missing value "no data", escalated by `analysis.no_data`, whose
/// default is to halt after 5 intervals with the canary still serving its weight.
/// The import leaves it at that default, so Flagger's rollback after 2 failed checks
/// becomes a halt after 5.
#[test]
fn flagger_checks_without_values_roll_back_at_the_threshold() {
    let i = imp(
        Kind::Flagger,
        &format!(
            "{FLAGGER_HEAD}  analysis:
    interval: 1m
    threshold: 2
    stepWeights: [10, 50]
    metrics:
    - name: error-rate
      thresholdRange: {{max: 1}}
      query: sum(rate(errors{{pod=~\"podinfo-.*\"}}[1m]))
"
        ),
    );
    let p = pol(&i);
    assert_eq!(
        p.analysis.no_data.action,
        EscalationAction::Rollback,
        "Flagger counts a check without values as failed and rolls back at the threshold:\n{}",
        i.policy
    );
    assert!(
        p.analysis.no_data.limit <= 2,
        "Flagger rolls back after 2 failed checks: {:?}",
        p.analysis.no_data
    );
}

/// Flagger: a `confirm-traffic-increase` webhook is called before every weight
/// increase, including the first one from 0 to stepWeights[0] (advanceCanary calls
/// runConfirmTrafficIncreaseHooks whenever nextStepWeight > 0, then runCanary): no
/// user request reaches the canary until the hook says yes.
///
/// The import puts an approval before every step but the first, so the canary takes
/// 10 % of production traffic without anyone confirming.
#[test]
fn flagger_confirm_traffic_increase_gates_the_first_step_too() {
    let i = imp(
        Kind::Flagger,
        &format!(
            "{FLAGGER_HEAD}  analysis:
    interval: 1m
    threshold: 1
    stepWeights: [10, 50]
    webhooks:
    - name: gate
      type: confirm-traffic-increase
      url: http://flagger-loadtester.test/gate/check
    metrics:
    - name: request-success-rate
      thresholdRange: {{min: 99}}
"
        ),
    );
    let p = pol(&i);
    let steps = p.strategy.steps();
    let first_weight = steps
        .iter()
        .position(|s| s.approval.is_none() && s.weight.percent() > 0.0)
        .unwrap();
    assert!(
        steps[..first_weight].iter().any(|s| s.approval.is_some()),
        "Flagger confirms before the first increase too:\n{}",
        i.policy
    );
}

/// Flagger fills `{{ service }}` in a MetricTemplate's query with
/// `spec.service.name`, falling back to the target's name only when it is unset
/// (toMetricModel). Here that is `podinfo-svc`.
///
/// The import always writes the target's name, `podinfo`: the query reads another
/// Service's series (or none), silently.
#[test]
fn flagger_service_variable_is_the_canary_service_name() {
    let i = imp(
        Kind::Flagger,
        &format!(
            "{FLAGGER_HEAD}  service: {{name: podinfo-svc, port: 9898}}
  analysis:
    interval: 1m
    threshold: 1
    stepWeights: [10, 50]
    metrics:
    - name: errors
      templateRef: {{name: errors}}
      thresholdRange: {{max: 1}}
---
apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata: {{name: errors, namespace: test}}
spec:
  provider: {{type: prometheus, address: \"http://prometheus:9090\"}}
  query: sum(rate(istio_requests_total{{destination_service_name=\"{{{{ service }}}}\",response_code=~\"5.*\"}}[1m]))
"
        ),
    );
    let p = pol(&i);
    let m = p
        .analysis
        .metrics
        .iter()
        .find(|m| m.name == "errors")
        .unwrap();
    let q = &m.query.as_ref().unwrap().query;
    assert!(
        q.contains("destination_service_name=\"podinfo-svc\""),
        "{{{{ service }}}} is spec.service.name: {q}"
    );
}

/// Flagger picks the strategy by `iterations`: with iterations > 0 (and no `match`)
/// it runs blue/green even when stepWeight(s) are set (advanceCanary checks
/// `Iterations > 0` before the progressive-traffic branch): 10 iterations of 1m are
/// judged before any production traffic moves, then all of it switches.
///
/// The import takes the stepWeights as a canary (20 % of production traffic after
/// no check at all, promoted after two intervals) and lists `iterations` as
/// superseded "with step weights", which is the opposite of what Flagger does.
#[test]
fn flagger_iterations_make_a_blue_green_even_with_step_weights() {
    let i = imp(
        Kind::Flagger,
        &format!(
            "{FLAGGER_HEAD}  analysis:
    interval: 1m
    threshold: 5
    iterations: 10
    stepWeights: [20, 50]
    metrics:
    - name: request-success-rate
      thresholdRange: {{min: 99}}
"
        ),
    );
    let p = pol(&i);
    match &p.strategy {
        Strategy::BlueGreen(bg) => assert_eq!(bg.stability, Duration::from_secs(600)),
        Strategy::Full(f) => assert_eq!(f.stability, Duration::from_secs(600)),
        other => panic!("Flagger runs a blue/green of 10 x 1m; imported as {other:?}"),
    }
}
