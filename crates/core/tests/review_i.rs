#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Review I: YAML merge keys (`yaml.rs`), `rampart import`'s indefinite analysis
//! metrics outside a canary step (`import/argo.rs`). Each test states what is expected
//! and fails on the code as it is at e58fb02.

use rampart_core::Policy;
use rampart_core::import::{Kind, Source, import};
use rampart_core::yaml::parse;

/// "Duplicate keys are errors" (docs/policy.md), because each would silently drop part
/// of a policy; a mapping with `<<` written twice is a duplicate key in YAML, and the
/// implementations disagree on what it means: PyYAML lets the *second* merge win
/// (`merge + node.value`, later entries override), go-yaml v3 refuses it as "mapping
/// key "<<" already defined", rampart lets the *first* win. A policy written against
/// either of the others is read otherwise here, without a word.
///
/// Expected: refused at the second `<<`, as any duplicate key is. Observed: accepted,
/// `failure_limit` silently 1 (the first merged mapping's), not 5.
#[test]
fn a_merge_key_written_twice_in_one_mapping_is_refused_as_a_duplicate() {
    let doc = "a: &a {x: 1}\nb: &b {x: 2, y: 2}\nm:\n  <<: *a\n  <<: *b\n";
    let err = parse(doc).expect_err("a mapping with `<<` twice was read");
    assert_eq!(err.pos.line, 5, "{err}");
    assert!(err.message.contains("duplicate"), "{err}");
}

/// The same, in a policy: two shared blocks merged with two `<<` keys.
#[test]
fn a_policy_with_two_merge_keys_in_one_metric_is_refused() {
    let src = r#"x-strict: &strict {failure_limit: 1}
x-lenient: &lenient {failure_limit: 5}
service: s
deploy: {process: {command: ["x", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:1"}}
strategy: {canary: {steps: [{weight: 10, bake: 1m}]}}
analysis:
  metrics:
    - metric: error_rate
      judge: {max: 1%}
      <<: *strict
      <<: *lenient
"#;
    match Policy::from_yaml(src) {
        Ok(p) => panic!(
            "two `<<` in one mapping were read, failure_limit {} (PyYAML reads 5, go-yaml v3 refuses)",
            p.analysis.metrics[0].failure_limit
        ),
        Err(e) => assert!(
            e.diagnostics.iter().any(|d| d.line == 12),
            "{:?}",
            e.diagnostics
        ),
    }
}

const BLUE_GREEN: &str = "apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: demo, namespace: prod}
spec:
  replicas: 4
  template:
    spec:
      containers: [{name: app, image: app:1}]
  strategy:
    blueGreen:
      activeService: demo
      prePromotionAnalysis: {templates: [{templateName: sr}]}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: sr, namespace: prod}
spec:
  metrics:
  - name: sr
    interval: 1m
    successCondition: result[0] >= 0.99
    provider: {prometheus: {address: 'http://p:9090', query: 'sum(x)'}}
";

/// Argo refuses an indefinite metric (an `interval`, no `count`) in pre- and
/// post-promotion analysis as in a step's (validation_references.go: every template
/// type but `BackgroundAnalysis`). The import lists it (`background` is false on that
/// path, rightly), but tells the user about an "analysis step" and "rampart's step",
/// neither of which a blue-green Rollout has: what the metric does not lengthen is the
/// `stability` window.
///
/// Expected: the reason names what the metric belongs to (pre-promotion analysis, the
/// stability window). Observed: "... which Argo Rollouts refuses in an analysis step
/// (the step could never end) ... so rampart's step does not wait for it".
#[test]
fn argo_an_indefinite_pre_promotion_metric_is_not_described_as_a_step() {
    let i = import(
        Kind::Argo,
        &[Source {
            name: "in.yaml".into(),
            text: BLUE_GREEN.into(),
        }],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let listed = i
        .unmapped
        .iter()
        .find(|u| u.why.contains("runs indefinitely"))
        .unwrap_or_else(|| panic!("not listed: {:?}", i.unmapped));
    assert!(
        !listed.why.contains("step"),
        "a blue-green Rollout has no steps: {}",
        listed.why
    );
}

const BASE: &str = r#"service: s
deploy: {process: {command: ["x", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:1"}}
strategy: {canary: {steps: [{weight: 10, bake: 1m}]}}
analysis:
  metrics: [{metric: error_rate, judge: {max: 1%}}]
"#;

/// The policies of `crates/rampart/tests/review_i_redact.rs` (a secret under an `x-`
/// key that no read field ends up holding, which the API's redaction then misses) are
/// valid policies: `rampart run` and the API accept them and store their text whole.
/// Passes; the failing half is in that file.
#[test]
fn policies_with_secrets_no_field_reads_are_accepted() {
    for policy in [
        format!(
            "x-slack-staging: &staging {{slack: {{webhook: 'https://hooks.example/staging-secret'}}}}\nx-slack-prod: &prod {{slack: {{webhook: 'https://hooks.example/prod-secret'}}}}\n{BASE}notify:\n  - *prod\n"
        ),
        format!(
            "x-hook: &hook {{webhook: 'http://127.0.0.1:9/h', secret: default-secret}}\n{BASE}notify:\n  - <<: *hook\n    secret: own-secret\n"
        ),
    ] {
        let p =
            Policy::from_yaml(&policy).unwrap_or_else(|e| panic!("{:?}\n{policy}", e.diagnostics));
        assert_eq!(p.notify.len(), 1);
    }
}
