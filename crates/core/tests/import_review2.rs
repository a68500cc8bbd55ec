#![allow(clippy::unwrap_used)]
//! Adversarial review of `rampart import`, second round: a policy that behaves
//! differently from the source manifest while the import says everything mapped.

use rampart_core::Policy;
use rampart_core::import::{Imported, Kind, Source, import};

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

/// The weights of the canary's weight steps, in percent.
fn weights(p: &Policy) -> Vec<f64> {
    p.strategy
        .steps()
        .iter()
        .filter(|s| s.approval.is_none())
        .map(|s| s.weight.percent())
        .collect()
}

const FLAGGER_HEAD: &str = "apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: podinfo, namespace: test}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: podinfo}
";

/// Flagger with `stepWeight: 20, maxWeight: 50`: runCanary adds stepWeight while the
/// canary's weight is below maxWeight, capped at the total weight (100), not at
/// maxWeight (pkg/controller/scheduler.go: `canaryWeight += nextStepWeight; if
/// canaryWeight > c.totalWeight(canary) ...`), and promotes once it is at or above
/// maxWeight. Flagger's own docs (tutorials/rollout-weights.md) list the steps of
/// exactly this example: 20, 40, 60, promotion.
///
/// Expected: steps 20, 40, 60 (or the difference listed). Observed: the import caps
/// the last step at maxWeight, 20, 40, 50, and lists nothing: the canary is judged at
/// a share users never had under Flagger, and the manifest's 60 % step is lost.
#[test]
fn flagger_step_weight_overshoots_max_weight_as_flagger_does() {
    let i = imp(
        Kind::Flagger,
        &format!(
            "{FLAGGER_HEAD}  analysis:
    interval: 1m
    threshold: 2
    stepWeight: 20
    maxWeight: 50
    metrics:
    - name: request-success-rate
      thresholdRange: {{min: 99}}
"
        ),
    );
    let p = pol(&i);
    let mapped_elsewhere = i
        .unmapped
        .iter()
        .any(|u| u.field.contains("maxWeight") || u.field.contains("stepWeight"));
    assert!(
        weights(&p) == vec![20.0, 40.0, 60.0] || mapped_elsewhere,
        "Flagger runs 20, 40, 60, then promotes; the policy's steps are {:?}:\n{}",
        weights(&p),
        i.policy
    );
}

/// Argo Rollouts refuses a Rollout that lists both `canary` and `blueGreen`
/// (validation: "Multiple Strategies can not be listed"): such a manifest never ran
/// under Argo, and nobody can say which of the two its author meant.
///
/// Expected: the import refuses it (exit 2, naming `spec.strategy`), or at least lists
/// the strategy it dropped as unmapped. Observed: it imports the canary, drops the
/// blue-green without a word (nothing unmapped, exit 0).
#[test]
fn argo_a_rollout_with_two_strategies_is_refused() {
    let text = "apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: demo}
spec:
  replicas: 4
  template:
    spec:
      containers: [{name: app, image: registry.example.com/demo:1.0}]
  strategy:
    canary:
      steps: [{setWeight: 20}, {pause: {duration: 1m}}]
    blueGreen:
      activeService: demo-active
      previewService: demo-preview
";
    let out = import(
        Kind::Argo,
        &[Source {
            name: "in.yaml".into(),
            text: text.into(),
        }],
    );
    if let Ok(i) = out {
        assert!(
            i.unmapped
                .iter()
                .any(|u| u.field.starts_with("spec.strategy.blueGreen")
                    || u.field == "spec.strategy"),
            "a Rollout Argo refuses (two strategies) was imported as a canary, the blue-green dropped silently; unmapped: {:?}\n{}",
            i.unmapped,
            i.policy
        );
    }
}
