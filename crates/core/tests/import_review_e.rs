#![allow(clippy::unwrap_used)]
//! Adversarial review of `rampart import`, round E: inputs for which the imported
//! policy judges something other than what Argo Rollouts or Flagger judges, while the
//! import lists nothing (or drops a check a common form of the source carries).
//! Each test states the source's semantics and fails on the importer as it is.

use std::time::Duration;

use rampart_core::Policy;
use rampart_core::import::{Imported, Kind, Source, import};
use rampart_core::policy::Judge;

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

/// Whether the import said anything at all about `what` (unmapped or a note).
fn mentions(i: &Imported, what: &str) -> bool {
    i.unmapped
        .iter()
        .any(|u| u.field.contains(what) || u.why.contains(what))
        || i.notes.iter().any(|n| n.contains(what))
}

const ROLLOUT: &str = "apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: demo, namespace: prod}
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
";

const FLAGGER: &str = "apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: podinfo, namespace: test}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
";

/// Argo resolves `templateName` in the Rollout's own namespace (an AnalysisTemplate
/// is namespaced; the controller reads it with the Rollout's namespace). A platform
/// repo commonly holds the same template for several environments: here `sr` in
/// `staging` (min 0.5) and in `prod` (min 0.99), and the Rollout is in `prod`.
///
/// Observed: the import takes the first document of that name, the staging one, and
/// writes `min: 0.5` with nothing unmapped and no note (exit 0): the prod canary is
/// judged at a success rate Argo would abort at.
#[test]
fn argo_template_is_resolved_in_the_rollouts_namespace() {
    let i = imp(
        Kind::Argo,
        &format!(
            "{ROLLOUT}      analysis: {{templates: [{{templateName: sr}}]}}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {{name: sr, namespace: staging}}
spec:
  metrics:
  - name: sr
    interval: 1m
    successCondition: result[0] >= 0.5
    provider: {{prometheus: {{address: 'http://p:9090', query: 'sum(x)'}}}}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {{name: sr, namespace: prod}}
spec:
  metrics:
  - name: sr
    interval: 1m
    successCondition: result[0] >= 0.99
    provider: {{prometheus: {{address: 'http://p:9090', query: 'sum(x)'}}}}
"
        ),
    );
    let p = pol(&i);
    assert_eq!(
        limits(&p, "sr").0,
        Some(0.99),
        "the prod Rollout's template is the prod one (min 0.99); unmapped: {:?}\n{}",
        i.unmapped,
        i.policy
    );
}

/// The same AnalysisTemplate name twice in one namespace (an old and a new revision
/// concatenated, or two files both defining it): `kubectl apply` applies the documents
/// in order, so the last one is what the cluster holds and what Argo runs.
///
/// Observed: the import silently took the first (the old, looser `failureLimit: 5`),
/// listed nothing and exited 0. It now refuses, naming both documents.
#[test]
fn argo_a_template_defined_twice_is_not_silently_the_first() {
    let refused = import(
        Kind::Argo,
        &[Source {
            name: "in.yaml".into(),
            text: format!(
                "{ROLLOUT}      analysis: {{templates: [{{templateName: sr}}]}}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {{name: sr}}
spec:
  metrics:
  - name: sr
    interval: 1m
    failureLimit: 5
    successCondition: result[0] >= 0.99
    provider: {{prometheus: {{address: 'http://p:9090', query: 'sum(x)'}}}}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {{name: sr}}
spec:
  metrics:
  - name: sr
    interval: 1m
    failureLimit: 0
    successCondition: result[0] >= 0.99
    provider: {{prometheus: {{address: 'http://p:9090', query: 'sum(x)'}}}}
"
            ),
        }],
    )
    .expect_err("a template defined twice is refused, naming both");
    assert!(refused.message.contains("defined twice"), "{refused}");
    assert!(
        refused.message.contains("in.yaml document 1")
            && refused.message.contains("in.yaml document 2"),
        "{refused}"
    );
}

/// Flagger's `templateRef: {name, namespace}` names the MetricTemplate's namespace
/// (the Canary's own when omitted). Here `errs` exists in `other` (a loose query)
/// and in `test` (the one referenced).
///
/// Observed: the import ignores `templateRef.namespace` and takes the first `errs`,
/// from `other`: the policy judges `sum(loose)` with nothing listed (exit 0 apart from
/// the missing Deployment).
#[test]
fn flagger_template_ref_namespace_picks_the_template() {
    let i = imp(
        Kind::Flagger,
        &format!(
            "{FLAGGER}  analysis:
    interval: 1m
    threshold: 1
    stepWeights: [10, 50]
    metrics:
    - name: errs
      templateRef: {{name: errs, namespace: test}}
      thresholdRange: {{max: 1}}
---
apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata: {{name: errs, namespace: other}}
spec:
  provider: {{type: prometheus, address: 'http://p:9090'}}
  query: 'sum(loose)'
---
apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata: {{name: errs, namespace: test}}
spec:
  provider: {{type: prometheus, address: 'http://p:9090'}}
  query: 'sum(strict)'
"
        ),
    );
    assert!(
        i.policy.contains("sum(strict)") && !i.policy.contains("sum(loose)"),
        "the MetricTemplate in `test` is the one Flagger reads:\n{}",
        i.policy
    );
}

/// Flagger holds each step weight for one `analysis.interval`: with `interval: 2h`
/// the canary serves 10 % for 2h, then 50 % for 2h. A policy's `analysis.interval`
/// is at most 1h, but a step's `bake` is not so bounded.
///
/// Observed: the import clamps the interval to 1h and writes `bake: 1h` for every
/// step, halving the time the canary is watched at each weight (and a blue-green's
/// iterations x interval likewise), with nothing unmapped or noted.
#[test]
fn flagger_an_interval_above_an_hour_keeps_its_bakes_or_is_listed() {
    let i = imp(
        Kind::Flagger,
        &format!(
            "{FLAGGER}  analysis:
    interval: 2h
    threshold: 1
    stepWeights: [10, 50]
    metrics:
    - name: request-success-rate
      thresholdRange: {{min: 99}}
"
        ),
    );
    let p = pol(&i);
    let bakes: Vec<Duration> = p
        .strategy
        .steps()
        .iter()
        .filter(|s| s.approval.is_none())
        .map(|s| s.bake)
        .collect();
    let listed = i
        .unmapped
        .iter()
        .any(|u| u.field.ends_with("analysis.interval"))
        || mentions(&i, "2h");
    assert!(
        bakes.iter().all(|b| *b >= Duration::from_secs(7200)) || listed,
        "each weight is held 2h in Flagger; bakes {bakes:?}, nothing said:\n{}",
        i.policy
    );
}

/// Argo fills `{{args.NAME}}` anywhere in a metric before evaluating it (the metric is
/// resolved as a whole, conditions included), so a threshold passed as an argument is
/// an ordinary, widespread form: `successCondition: result[0] >= {{args.min}}`.
///
/// Observed: the import fills args in queries, URLs, counts and limits, but not in
/// conditions: the condition is "not a form rampart reads" and the whole metric is
/// dropped (listed, exit 4), so the check Argo runs is gone from the policy.
#[test]
fn argo_args_are_filled_in_conditions_too() {
    let i = imp(
        Kind::Argo,
        &format!(
            "{ROLLOUT}      analysis:
        templates: [{{templateName: a}}]
        args: [{{name: min, value: '0.99'}}]
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {{name: a}}
spec:
  args: [{{name: min}}]
  metrics:
  - name: success-rate
    interval: 1m
    successCondition: result[0] >= {{{{args.min}}}}
    provider: {{prometheus: {{address: 'http://p:9090', query: 'sum(x)'}}}}
"
        ),
    );
    let p = pol(&i);
    assert!(
        p.analysis.metrics.iter().any(|m| m.name == "success-rate"),
        "the metric with its argument filled in (min 0.99); unmapped: {:?}\n{}",
        i.unmapped,
        i.policy
    );
    assert_eq!(limits(&p, "success-rate").0, Some(0.99));
}

/// Argo refuses an analysis *step* whose metric has an `interval` and no `count` (it
/// "runs indefinitely": the step could never end); only background analysis may (as
/// for blue-green's pre- and post-promotion analysis: `review_i.rs`).
/// Observed: the import gave the step `bake: 0s` and listed nothing, so the imported
/// release went straight past a step its source cannot run at all.
#[test]
fn argo_an_inline_analysis_step_that_runs_indefinitely_is_listed() {
    let steps = "steps: [{setWeight: 20}, {pause: {duration: 5m}}]";
    let inline = "steps: [{setWeight: 20}, {analysis: {templates: [{templateName: sr}]}}]";
    let doc = |count: &str| {
        format!(
            "{}---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {{name: sr, namespace: prod}}
spec:
  metrics:
  - name: sr
    interval: 1m{count}
    successCondition: result[0] >= 0.99
    provider: {{prometheus: {{address: 'http://p:9090', query: 'sum(x)'}}}}
",
            ROLLOUT.replace(steps, inline)
        )
    };
    let i = imp(Kind::Argo, &doc(""));
    assert!(
        i.unmapped
            .iter()
            .any(|u| u.field.ends_with(".count") && u.why.contains("runs indefinitely")),
        "{:?}\n{}",
        i.unmapped,
        i.policy
    );
    // With a count the step holds for count x interval, and nothing is listed.
    let i = imp(Kind::Argo, &doc("\n    count: 3"));
    assert!(i.unmapped.is_empty(), "{:?}", i.unmapped);
    assert!(i.policy.contains("bake: 3m"), "{}", i.policy);
    // In the background, an interval without a count is what Argo expects.
    let bg = ROLLOUT.replace(
        "stableService: demo\n",
        "stableService: demo\n      analysis: {templates: [{templateName: sr}]}\n",
    );
    let i = imp(
        Kind::Argo,
        &doc("").replace(&ROLLOUT.replace(steps, inline), &bg),
    );
    assert!(!mentions(&i, "runs indefinitely"), "{:?}", i.unmapped);
}
