#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Adversarial review of the flag strategy on the embedded default (local processes,
//! rampart's own proxy, SQLite): the users the proxy measures as the flag release's
//! canary must be exactly the users the flag endpoint answers "on" for
//! (docs/strategies.md "Flag", docs/flags.md, docs/policy.md `strategy.flag`). Each
//! test fails on the reviewed code and should pass once the contract it names holds.

mod common;

use common::servers::SpawnGuarded as _;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{free_port, run_json};
use rampart::load::{LoadSpec, LoadStats, generate};

/// A flag-only release of `new-checkout` on a healthy sample service, analysed once a
/// minute (so nothing ends while a test looks), with `steps`.
fn flag_policy(dir: &std::path::Path, steps: &str) -> (std::path::PathBuf, u16, u16) {
    let (port, flag_port) = (free_port(), free_port());
    let text = format!(
        r#"service: flagged
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env: {{SAMPLE_ERROR_RATE: "0", SAMPLE_LATENCY_MS: "1"}}
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
    stop_timeout: 2s
traffic: {{proxy: {{listen: "127.0.0.1:{port}", sticky: {{header: x-user}}}}}}
flags:
  listen: "127.0.0.1:{flag_port}"
  define:
    - {{name: new-checkout, default: false}}
strategy:
  flag:
    flag: new-checkout
    steps: {steps}
analysis:
  interval: 1m
  min_samples: 10
  metrics: [{{metric: error_rate, judge: {{max: 5%}}}}]
"#,
        exe = common::exe()
    );
    let path = dir.join("rampart.yaml");
    std::fs::write(&path, text).unwrap();
    (path, port, flag_port)
}

/// `GET http://127.0.0.1:{port}{path}` as JSON (status, body).
fn get_json(rt: &tokio::runtime::Runtime, port: u16, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = rt
        .block_on(rampart_adapters::http::get_text(
            &format!("http://127.0.0.1:{port}{path}"),
            Duration::from_secs(5),
        ))
        .unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after 60 s.
#[allow(clippy::disallowed_methods)] // the test's own time limit
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the flag endpoint reports `new-checkout` ramped to `ramp` % (the
/// release's step is being put in force).
fn wait_for_ramp(rt: &tokio::runtime::Runtime, flag_port: u16, ramp: f64) {
    wait_for(&format!("new-checkout ramped to {ramp} %"), || {
        let Ok((200, body)) = rt.block_on(rampart_adapters::http::get_text(
            &format!("http://127.0.0.1:{flag_port}/flags"),
            Duration::from_secs(2),
        )) else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["flags"][0]["ramp"].as_f64() == Some(ramp)
    });
}

/// Contract: docs/strategies.md "the proxy puts exactly the flag-on users in the
/// canary cohort". A flag release's step `match` rule was passed to the proxy only:
/// the proxy measured the matched user as the canary, but the flag store never heard
/// of the rule, so the flag endpoint kept answering "off" for that user, whose
/// flag-off requests were judged as the flag's. Such a rule is refused at its line
/// now (the flag's allowlist does what it meant), and so is a ramped flag that
/// defaults to on (everyone outside the ramp has it on already).
#[test]
fn a_flag_release_refuses_what_would_measure_flag_off_users_as_its_canary() {
    let dir = tempfile::tempdir().unwrap();
    let steps = "[{weight: 10, match: {header: x-user, values: [beta-7]}, bake: 1h}]";
    let (path, _, _) = flag_policy(dir.path(), steps);
    let text = std::fs::read_to_string(&path).unwrap();
    let line = |needle: &str| {
        u32::try_from(text.lines().position(|l| l.contains(needle)).unwrap() + 1).unwrap()
    };
    let refused = |text: &str, path: &str| {
        let e = rampart_core::Policy::from_yaml(text).unwrap_err();
        e.diagnostics
            .iter()
            .find(|d| d.path == path)
            .cloned()
            .unwrap_or_else(|| panic!("not refused at {path}: {:?}", e.diagnostics))
    };
    let d = refused(&text, "strategy.flag.steps[0].match");
    assert_eq!(d.line, line("match:"), "{d:?}");
    assert!(d.message.contains("allowlist"), "{d:?}");
    let on = text
        .replace("default: false", "default: true")
        .replace(", match: {header: x-user, values: [beta-7]}", "");
    let d = refused(&on, "flags.define[0].default");
    assert!(d.message.contains("default: false"), "{d:?}");
    // Without either, the same policy is accepted.
    rampart_core::Policy::from_yaml(
        &text.replace(", match: {header: x-user, values: [beta-7]}", ""),
    )
    .unwrap();
    // A release an older rampart started with them is taken up again, not stranded:
    // the rules refuse new releases only.
    rampart_core::Policy::from_stored(&text).unwrap();
    rampart_core::Policy::from_stored(&on).unwrap();
}

/// Contract: docs/flags.md "A caller without a key gets the default, unless the ramp is
/// 100 %", and docs/strategies.md "the proxy puts exactly the flag-on users in the
/// canary cohort". Requests without the sticky key (anonymous users, API clients,
/// health checkers) get the flag's default (off) from the endpoint, yet the proxy
/// spreads them over both cohorts by the weight (`Proxy::choose`, keyless branch): at
/// 20 % a fifth of them are measured as the flag's canary although the flag is off for
/// every one of them, diluting a bad flag's error rate with flag-off traffic.
#[test]
fn requests_without_the_sticky_key_are_never_measured_as_the_flag_on_cohort() {
    let dir = tempfile::tempdir().unwrap();
    let (path, port, flag_port) = flag_policy(dir.path(), "[{weight: 20, bake: 1h}]");
    let state = dir.path().join("state");
    let _versions = common::Versions(state.clone());
    let _run = run_json(&path, &state, "v2", Some("v1"))
        .arg("--stop-after")
        .stdout(std::process::Stdio::null())
        .spawn_guarded();
    let rt = common::runtime();
    wait_for_ramp(&rt, flag_port, 20.0);
    let (status, keyless) = get_json(&rt, flag_port, "/flags/new-checkout");
    assert_eq!(
        (status, keyless["on"].clone()),
        (200, serde_json::Value::Bool(false)),
        "{keyless}"
    );
    let stats = Arc::new(LoadStats::default());
    let load = rt.spawn(generate(
        LoadSpec {
            url: format!("http://127.0.0.1:{port}/"),
            rps: 200,
            user_header: None,
            users: 1,
            duration: None,
            paths: Vec::new(),
            headers: Vec::new(),
            cut_on_stop: false,
        },
        stats.clone(),
    ));
    wait_for("400 keyless requests answered", || {
        stats.ok.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed) >= 400
    });
    load.abort();
    let (sent, canary) = (
        stats.sent.load(Ordering::Relaxed),
        stats.canary.load(Ordering::Relaxed),
    );
    assert_eq!(
        canary, 0,
        "{canary} of {sent} requests without a key were measured as the flag's canary, while the flag endpoint answers {keyless} to a caller without a key"
    );
}

/// The policy of the `swap` service with `strategy` (flags defined for a flag
/// release), behind the proxy on `port`.
fn swap_policy(port: u16, flag_port: u16, strategy: &str) -> String {
    format!(
        r#"service: swap
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env: {{SAMPLE_ERROR_RATE: "0", SAMPLE_LATENCY_MS: "1"}}
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
    stop_timeout: 2s
traffic: {{proxy: {{listen: "127.0.0.1:{port}", sticky: {{header: x-user}}}}}}
flags:
  listen: "127.0.0.1:{flag_port}"
  define:
    - {{name: new-checkout, default: false}}
strategy: {strategy}
analysis:
  interval: 1s
  min_samples: 1
  metrics: [{{metric: error_rate, judge: {{max: 5%}}}}]
"#,
        exe = common::exe()
    )
}

/// Contract: docs/strategies.md "Blue-green": "`preview` checks run against it before
/// any user reaches it", and docs/policy.md "A failed preview rolls back with no user
/// ever reaching the new colour". A promoted flag release leaves the service's data
/// plane (which outlives `rampart run`) at canary weight 100 %, its canary backends
/// being stable's processes. The next release's `Deploy canary` only replaces the
/// canary backends (`set_backends`), so from the moment the new colour is ready every
/// user is routed to it, for the whole preview, before any check passed: here the
/// preview fails, and users were served by the version it rejected.
#[test]
fn after_a_promoted_flag_release_no_user_reaches_a_new_colour_before_its_preview() {
    let dir = tempfile::tempdir().unwrap();
    let (port, flag_port) = (free_port(), free_port());
    let state = dir.path().join("state");
    let _versions = common::Versions(state.clone());
    let write = |name: &str, strategy: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, swap_policy(port, flag_port, strategy)).unwrap();
        path
    };
    let colours = write(
        "colours.yaml",
        r#"{blue_green: {preview: [{command: [sh, -c, "sleep 3; exit 1"]}], stability: 1s}}"#,
    );
    let flag = write(
        "flag.yaml",
        "{flag: {flag: new-checkout, steps: [{weight: 50, bake: 1s}]}}",
    );
    // v1 is released (initial), then a flag ramps to everyone on it.
    let (code, v) = common::report(&run_json(&colours, &state, "v1", None).output().unwrap());
    assert_eq!(code, 0, "{v}");
    let rt = common::runtime();
    let (load, _) = common::start_load(&rt, port, 100);
    let (code, v) = common::report(&run_json(&flag, &state, "v1", None).output().unwrap());
    load.abort();
    assert_eq!(code, 0, "{v}");
    let body = |rt: &tokio::runtime::Runtime| {
        rt.block_on(rampart_adapters::http::get_text(
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_secs(5),
        ))
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default()
    };
    assert_eq!(body(&rt), "v1", "v1 serves before the next release");

    // v2, whose preview fails: users are asked for while it runs.
    let mut run = run_json(&colours, &state, "v2", None)
        .stdout(std::process::Stdio::piped())
        .spawn_guarded();
    let mut served_by_v2 = 0;
    let mut asked = 0;
    #[allow(clippy::disallowed_methods)] // the test's own time limit
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while run.try_wait().unwrap().is_none() {
        #[allow(clippy::disallowed_methods)] // the test's own time limit
        let late = std::time::Instant::now() >= deadline;
        assert!(!late, "the release never ended");
        asked += 1;
        if body(&rt) == "v2" {
            served_by_v2 += 1;
        }
    }
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut run.stdout.take().unwrap(), &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
    assert_eq!(v["outcome"], "rolled_back", "the preview fails: {v}");
    assert_eq!(
        served_by_v2, 0,
        "{served_by_v2} of {asked} requests made while v2's preview ran (and failed) were served by v2; report: {v}"
    );
}

/// Contract: docs/strategies.md "Blue-green" and the brief of every planned switch: no
/// request is failed by rampart itself. The service's data plane outlives `rampart run`
/// and keeps routing to the stable replicas the last release left. A release whose
/// policy asks for fewer replicas starts by deploying stable: `ProcessDeployer::deploy`
/// trims the surplus replicas at once (`trim_inner`), before the controller has taken
/// them out of the proxy's rotation (`set_backends` runs after `deploy` returns) and
/// without draining them, so requests still routed to them fail.
#[test]
fn a_release_with_fewer_replicas_takes_stable_replicas_out_of_rotation_before_stopping_them() {
    let dir = tempfile::tempdir().unwrap();
    let (port, flag_port) = (free_port(), free_port());
    let state = dir.path().join("state");
    let _versions = common::Versions(state.clone());
    let colours = "{blue_green: {stability: 2s}}";
    let three = dir.path().join("three.yaml");
    std::fs::write(
        &three,
        swap_policy(port, flag_port, colours)
            .replace("stop_timeout: 2s", "stop_timeout: 2s\n    replicas: 3"),
    )
    .unwrap();
    let one = dir.path().join("one.yaml");
    std::fs::write(&one, swap_policy(port, flag_port, colours)).unwrap();
    // v1 serves on three replicas behind the service's data plane.
    let (code, v) = common::report(&run_json(&three, &state, "v1", None).output().unwrap());
    assert_eq!(code, 0, "{v}");
    let rt = common::runtime();
    let (load, stats) = common::start_load(&rt, port, 300);
    wait_for("v1 answers through the data plane", || {
        stats.ok.load(Ordering::Relaxed) > 50
    });
    let failed_before = stats.failed.load(Ordering::Relaxed);
    // v2, with one replica per colour.
    let (code, v) = common::report(&run_json(&one, &state, "v2", None).output().unwrap());
    let (sent, failed) = (
        stats.sent.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
    );
    load.abort();
    assert_eq!(code, 0, "{v}");
    assert_eq!(failed_before, 0);
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed while the release deployed stable on fewer replicas: {}",
        v["timeline"][2]["message"]
    );
}

/// The same family, for a stable running another version than the release names
/// (`--stable v1` where v0 runs, as after a fix shipped outside rampart): its
/// replicas were stopped before the new ones were started and ready, while the data
/// plane still sent them every user. They are replaced once the new ones serve now:
/// out of rotation, drained, then stopped.
#[test]
fn a_stable_of_another_version_is_replaced_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let (port, flag_port) = (free_port(), free_port());
    let state = dir.path().join("state");
    let _versions = common::Versions(state.clone());
    let path = dir.path().join("canary.yaml");
    std::fs::write(
        &path,
        swap_policy(
            port,
            flag_port,
            "{canary: {steps: [{weight: 50, bake: 1s}]}}",
        ),
    )
    .unwrap();
    let (code, v) = common::report(&run_json(&path, &state, "v0", None).output().unwrap());
    assert_eq!(code, 0, "{v}");
    let rt = common::runtime();
    let (load, stats) = common::start_load(&rt, port, 300);
    wait_for("v0 answers through the data plane", || {
        stats.ok.load(Ordering::Relaxed) > 50
    });
    let (code, v) = common::report(&run_json(&path, &state, "v2", Some("v1")).output().unwrap());
    let (sent, failed) = (
        stats.sent.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
    );
    load.abort();
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed while stable v0 was replaced by v1: {}",
        v["timeline"][2]["message"]
    );
}

/// A flag's `default` in the policy applies only when the flag is first created; one
/// turned on since (`rampart flags set --default on`) was ramped by a release all the
/// same: everyone outside the ramp had it on and was measured as stable. Refused
/// before anything changes (exit 5), naming the command that turns it off.
#[test]
fn a_release_does_not_ramp_a_flag_the_store_has_on_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _, _) = flag_policy(dir.path(), "[{weight: 10, bake: 1h}]");
    let state = dir.path().join("state");
    let _versions = common::Versions(state.clone());
    let flags = |args: &[&str]| {
        let out = common::rampart()
            .arg("flags")
            .args(args)
            .arg("-f")
            .arg(&path)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    flags(&["list"]);
    flags(&[
        "set",
        "new-checkout",
        "--default",
        "on",
        "--reason",
        "launch",
        "--as",
        "alice",
    ]);
    let mut run = run_json(&path, &state, "v2", Some("v1"))
        .stdout(std::process::Stdio::piped())
        .spawn_guarded();
    #[allow(clippy::disallowed_methods)] // the test's own time limit
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        #[allow(clippy::disallowed_methods)] // the test's own time limit
        let late = std::time::Instant::now() >= deadline;
        assert!(!late, "the release ramped a flag that is on by default");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut run.stdout.take().unwrap(), &mut out).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
    assert_eq!(status.code(), Some(5), "{v}");
    assert!(
        v["reason"].as_str().unwrap_or("").contains("--default off"),
        "{v}"
    );
}
