#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Review I: `GET /api/v1/policies/{service}` shows a release's policy "with secrets
//! redacted" (`serve::views::redact_policy`). The redaction walks the parsed tree and
//! blanks the values it finds at `notify[*].secret`, `.slack`, `.slack.webhook` and
//! `.pagerduty.routing_key`, where they were written. Since cb17bf7 a policy may hold
//! top-level `x-` keys that nothing reads (docs/policy.md: "a place to define what the
//! policy merges in"), and merge keys drop what a mapping's own fields override: a
//! secret written under an `x-` key that the notify hooks do not end up using is in no
//! field of the tree, so it is never blanked, and the API serves it in clear.
//!
//! Not run in review I (the brief allowed building only rampart-core and the adapters'
//! lib); both policies below are accepted by `Policy::from_yaml` (checked in
//! rampart-core's `review_i.rs`).

use rampart::serve::views::redact_policy;

const BASE: &str = r#"service: s
deploy: {process: {command: ["x", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:1"}}
strategy: {canary: {steps: [{weight: 10, bake: 1m}]}}
analysis:
  metrics: [{metric: error_rate, judge: {max: 1%}}]
"#;

/// The staging and production Slack webhooks kept side by side under `x-` keys (as a
/// docker-compose file keeps alternatives), the production one used.
#[test]
fn a_webhook_kept_under_an_unread_x_key_is_redacted() {
    let policy = format!(
        "x-slack-staging: &staging {{slack: {{webhook: 'https://hooks.example/staging-secret'}}}}\nx-slack-prod: &prod {{slack: {{webhook: 'https://hooks.example/prod-secret'}}}}\n{BASE}notify:\n  - *prod\n"
    );
    rampart_core::Policy::from_yaml(&policy).unwrap();
    let out = redact_policy(&policy);
    assert!(!out.contains("prod-secret"), "{out}");
    assert!(!out.contains("staging-secret"), "served in clear:\n{out}");
}

/// A shared hook whose default signing secret every use overrides.
#[test]
fn a_merged_secret_that_every_use_overrides_is_redacted() {
    let policy = format!(
        "x-hook: &hook {{webhook: 'http://127.0.0.1:9/h', secret: default-secret}}\n{BASE}notify:\n  - <<: *hook\n    secret: own-secret\n"
    );
    rampart_core::Policy::from_yaml(&policy).unwrap();
    let out = redact_policy(&policy);
    assert!(!out.contains("own-secret"), "{out}");
    assert!(!out.contains("default-secret"), "served in clear:\n{out}");
}
