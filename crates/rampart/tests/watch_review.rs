#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Adversarial review of the post-release checks and `analysis.load`, end to end: real
//! processes behind rampart's embedded proxy, traffic only to 127.0.0.1. Each test fails on
//! the reviewed code and should pass once the contract it names holds.

mod common;

/// A flag-only release of `new-checkout` on a service whose every version is healthy,
/// with `post_release` as given; its flag endpoint and proxy on free ports.
fn flag_policy(dir: &std::path::Path, post_release: &str) -> (std::path::PathBuf, u16) {
    flag_policy_with(dir, "{header: x-user}", "", post_release)
}

/// [`flag_policy`] with the proxy's `sticky` and extra `analysis` lines (`load`).
fn flag_policy_with(
    dir: &std::path::Path,
    sticky: &str,
    analysis: &str,
    post_release: &str,
) -> (std::path::PathBuf, u16) {
    let (port, flag_port) = (common::free_port(), common::free_port());
    let text = format!(
        r#"service: flagged
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env:
      SAMPLE_ERROR_RATE: "0"
      SAMPLE_LATENCY_MS: "1"
      SAMPLE_FLAG_URL: "http://127.0.0.1:{flag_port}/flags/new-checkout"
      SAMPLE_FLAG_KEY_HEADER: x-user
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
    stop_timeout: 2s
traffic: {{proxy: {{listen: "127.0.0.1:{port}", sticky: {sticky}}}}}
flags:
  listen: "127.0.0.1:{flag_port}"
  define:
    - {{name: new-checkout, default: false}}
strategy: {{flag: {{flag: new-checkout, steps: [{{weight: 50, bake: 2s}}]}}}}
analysis:
  interval: 1s
  min_samples: 10
  no_data: {{limit: 3, action: halt}}
{analysis}  metrics: [{{metric: error_rate, judge: {{max: 5%}}}}]
{post_release}"#,
        exe = common::exe()
    );
    let path = dir.join("rampart.yaml");
    std::fs::write(&path, text).unwrap();
    (path, port)
}

/// Contract (docs/policy.md `post_release`: "A watch and checks after all traffic
/// moved, for every strategy"; `checks`: "paths and `{url}` point at the new
/// version"). In a flag release the new version is the one already running, its stable
/// processes with the flag on for everyone; but the controller aims a post-release
/// check only at the canary's first address (controller `execute`, `RunChecks`:
/// `endpoints.get(&Variant::Canary)`), and a flag release deploys no canary. So a
/// check on a path (`/healthz`) never runs: it fails with "the new version reports no
/// address rampart can reach (a Kubernetes deployer reports none)", and a healthy flag
/// release that every user already has is switched off (exit 3).
#[test]
fn a_flag_release_runs_its_post_release_checks_on_the_processes_serving_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, port) = flag_policy(dir.path(), "post_release: {checks: [{http: /healthz}]}\n");
    let (code, v) = common::release_json(&path, port, 100);
    assert_eq!(
        code, 0,
        "a healthy flag release with a passing health check was not promoted: {}",
        v["reason"]
    );
}

/// Contract (docs/policy.md, *Built-in load*): the load spreads over both variants by
/// the sticky header. Under `sticky: client-ip` it is spread instead of stuck by its
/// one address, which under a flag ramp measured it as the flag's users while the
/// flag was on for all of it or for none (one key): the combination is refused at
/// `analysis.load` now, and the control, sticky by a header, reaches the flag-on
/// cohort.
#[test]
fn the_analysis_load_reaches_the_flag_on_cohort_under_client_ip_stickiness() {
    // (exit code, report) of a release with no client at all: only rampart's own load.
    let release = |sticky: &str| {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = flag_policy_with(dir.path(), sticky, "  load: {rate: 100}\n", "");
        let state = dir.path().join("state");
        let _versions = common::Versions(state.clone());
        let out = common::run_json(&path, &state, "v2", Some("v1"))
            .arg("--stop-after")
            .output()
            .unwrap();
        common::report(&out)
    };
    // Control: sticky by a header, the load's user ids spread it over both cohorts.
    let (code, v) = release("{header: x-user}");
    assert!(
        v["requests"]["canary"].as_u64().unwrap_or(0) > 0,
        "control: the load reaches the flag-on cohort when sticky by header (exit {code}): {v}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = flag_policy_with(dir.path(), "client-ip", "  load: {rate: 100}\n", "");
    let e = rampart_core::Policy::from_yaml(&std::fs::read_to_string(&path).unwrap()).unwrap_err();
    assert!(
        e.diagnostics
            .iter()
            .any(|d| d.path == "analysis.load" && d.message.contains("client-ip")),
        "{:?}",
        e.diagnostics
    );
}
