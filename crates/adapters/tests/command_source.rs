//! The `command` metrics source with real programs (`sh`): what they print (a
//! number, or JSON the metric's paths read), the placeholders in their arguments and
//! environment, and every way a run fails turned into no data.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::fake_provider::{first_reading, policy, source, window};
use rampart_core::metrics::IntervalSample;
use rampart_core::metrics::QueryReading;
use rampart_core::ports::MetricsSource;

/// The one query metric's reading, for a `command` metric with `rest` (YAML flow
/// fields after `command`).
async fn read(script: &str, rest: &str) -> QueryReading {
    let p = policy(&format!(
        "  metrics:\n    - {{name: m, source: command, command: [sh, -c, '{script}', check, '{{variant}}', '{{version}}', '{{from}}', '{{to}}'], {rest}}}\n"
    ));
    first_reading(&p, &[]).await
}

#[tokio::test]
async fn a_printed_number_is_the_value() {
    let q = read(
        r#"if [ "$1" = canary ]; then echo 0.25; else echo " 0.5 "; fi"#,
        "judge: {max: 1}",
    )
    .await;
    assert_eq!(
        (q.stable, q.canary),
        (Some(0.5), Some(0.25)),
        "{}",
        q.detail
    );
}

#[tokio::test]
async fn json_output_gives_counts_and_the_placeholders_reach_the_program() {
    // Arguments (after $0): variant, version, from, to; the same in RAMPART_METRIC_*.
    let script = r#"[ "$RAMPART_METRIC_VARIANT" = "$1" ] && [ "$RAMPART_METRIC_VERSION" = "$2" ] && [ "$RAMPART_METRIC_FROM" = "$3" ] && [ "$RAMPART_METRIC_SERVICE" = shop ] && [ "$RAMPART_METRIC_INTERVAL" = 30s ] || exit 9; echo "{\"bad\": $(( $4 - $3 )), \"v\": \"$2\", \"total\": [100, 300]}""#;
    let q = read(
        script,
        "bad: $.bad, total: '$.total[-1]', judge: sequential",
    )
    .await;
    assert_eq!(
        (q.stable, q.stable_samples, q.canary, q.canary_samples),
        (Some(30.0), Some(300.0), Some(30.0), Some(300.0)),
        "{}",
        q.detail
    );
}

#[tokio::test]
async fn failing_programs_are_no_data_with_what_they_said() {
    let q = read(
        r#"if [ "$1" = canary ]; then echo "no such job" >&2; exit 3; else echo done; fi"#,
        "judge: {max: 1}",
    )
    .await;
    assert_eq!((q.stable, q.canary), (None, None));
    assert!(
        q.detail
            .contains("stable: `sh` printed neither a number nor JSON: done"),
        "{}",
        q.detail
    );
    assert!(
        q.detail
            .contains("canary: `sh` exit status: 3: no such job"),
        "{}",
        q.detail
    );
}

#[tokio::test]
async fn a_missing_program_fails_the_pre_release_check() {
    let p = policy(
        "  metrics:\n    - {name: m, source: command, command: [./no-such-check.sh], judge: {max: 1}}\n",
    );
    let s = source(&p, &[]);
    let gates = s.check().await;
    assert_eq!(gates.len(), 1);
    assert!(!gates[0].ok && gates[0].name == "metrics source command");
    assert!(
        gates[0]
            .detail
            .contains("`./no-such-check.sh` is not a program here"),
        "{gates:?}"
    );
    let q = s.measure(&window()).await.unwrap().queries.remove(0);
    assert!(q.detail.contains("could not start"), "{}", q.detail);
    let ok = source(
        &policy(
            "  metrics:\n    - {name: m, source: command, command: [sh, -c, 'echo 1'], judge: {max: 1}}\n",
        ),
        &[],
    );
    assert!(ok.check().await[0].ok);
}

/// Regression (review): a script without its execute bit passed the pre-release check
/// (it was looked for by name only), and every read of the release then failed to start
/// it. The check now asks for a file that may be run.
#[tokio::test]
async fn a_script_without_its_execute_bit_fails_the_pre_release_check() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("errors.sh");
    std::fs::write(&script, "#!/bin/sh\necho 0\n").unwrap();
    let check = |mode: u32| {
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(mode)).unwrap();
        let p = policy(&format!(
            "  metrics:\n    - {{name: m, source: command, command: ['{}'], judge: {{max: 1}}}}\n",
            script.display()
        ));
        async move { source(&p, &[]).check().await.remove(0) }
    };
    let gate = check(0o644).await;
    assert!(!gate.ok, "{gate:?}");
    assert!(gate.detail.contains("without its execute bit"), "{gate:?}");
    let gate = check(0o755).await;
    assert!(gate.ok, "{gate:?}");
}

/// Regression (review): at the time limit only the program itself was killed; a child
/// it had started (here a `sleep` in the background) outlived every read, holding its
/// pipes. The program's whole process group goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_over_its_time_limit_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!("sleep 600 & echo $! >> {}; wait", pids.display());
    let q = read(&script, "judge: {max: 1}").await;
    assert_eq!((q.stable, q.canary), (None, None), "{}", q.detail);
    let text = std::fs::read_to_string(&pids).unwrap();
    let children: Vec<u32> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
    // Stable's run used the measurement's whole interval: canary's never started.
    assert!(!children.is_empty(), "{text}");
    for pid in children {
        // Killed with SIGKILL: gone, or a zombie at most, once the signal landed.
        common::until("the program's background child to die", async || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
        })
        .await;
    }
}

/// Regression (review): a program inherits rampart's environment, the providers'
/// secrets with it, and what it printed (its standard output, the end of its
/// standard error) went into the detail unscrubbed. Here it prints the Datadog keys
/// the policy's other metric reads, as a program that inherited them could.
#[tokio::test]
async fn what_a_program_prints_is_scrubbed_of_every_providers_secrets() {
    const API_KEY: &str = "dd-api-0f9e8d7c6b5a";
    const APP_KEY: &str = "dd-app-1a2b3c4d5e6f";
    let prints = [
        // Neither a number nor JSON on standard output.
        format!("echo key={API_KEY}"),
        // JSON whose value is not a number.
        format!(r#"echo "{{\"v\": {{\"app\": \"{APP_KEY}\"}}}}""#),
        // A failure with the secret in the end of its standard error.
        format!(r#"echo "DD_API_KEY={API_KEY} DD_APP_KEY={APP_KEY}" >&2; exit 1"#),
    ];
    for script in prints {
        let p = policy(&format!(
            "  datadog: {{url: 'http://127.0.0.1:1'}}\n  metrics:\n    - {{name: m, source: command, command: [sh, -c, '{script}'], value: $.v, judge: {{max: 1}}}}\n    - {{name: d, source: datadog, query: 'avg:x{{variant:{{variant}}}}', judge: {{max: 1}}}}\n"
        ));
        let sample: IntervalSample =
            source(&p, &[("DD_API_KEY", API_KEY), ("DD_APP_KEY", APP_KEY)])
                .measure(&window())
                .await
                .unwrap();
        let q = &sample.queries[0];
        assert_eq!((q.stable, q.canary), (None, None), "{}", q.detail);
        let everything = format!("{} {sample:?}", q.detail);
        assert!(
            !everything.contains(API_KEY) && !everything.contains(APP_KEY),
            "{script}: {everything}"
        );
        assert!(
            q.detail.contains("<$DD_API_KEY>") || q.detail.contains("<$DD_APP_KEY>"),
            "{script}: {}",
            q.detail
        );
    }
}

/// Regression (review): the secrets scrubbed from a program's output were the ones
/// the other providers held when the source was built; CloudWatch keys rewritten in
/// the shared credentials file since (a refresher's) went into the detail whole.
#[tokio::test]
async fn a_program_printing_credentials_refreshed_since_the_start_is_scrubbed() {
    const OLD: &str = "oldSecret/0123456789abcdefEXAMPLEKEY0";
    const NEW: &str = "newSecret/0123456789abcdefEXAMPLEKEY1";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials");
    let write = |secret: &str| {
        std::fs::write(
            &file,
            format!("[default]\naws_access_key_id = ASIAREFRESHED0000001\naws_secret_access_key = {secret}\n"),
        )
        .unwrap();
    };
    write(OLD);
    let path = file.to_str().unwrap().to_string();
    let p = policy(&format!(
        "  interval: 1m\n  cloudwatch: {{region: eu-west-1, url: 'http://127.0.0.1:1'}}\n  metrics:\n    - {{name: m, source: command, command: [sh, -c, 'echo key=$(sed -n 3p {path} | cut -d\" \" -f3)'], value: $.v, judge: {{max: 1}}}}\n    - {{name: c, source: cloudwatch, query: \"SELECT AVG(x) FROM s WHERE v = '{{variant}}'\", judge: {{max: 1}}}}\n"
    ));
    let s = source(&p, &[("AWS_SHARED_CREDENTIALS_FILE", path.as_str())]);
    write(NEW);
    let sample = s.measure(&window()).await.unwrap();
    let q = &sample.queries[0];
    assert!(q.detail.contains("key="), "{}", q.detail);
    let everything = format!("{} {sample:?}", q.detail);
    assert!(
        !everything.contains(NEW) && !everything.contains(OLD),
        "{everything}"
    );
    // Refreshed while the program runs (here by the program itself): both the key it
    // started with and the one after are scrubbed, on either output.
    const NEWER: &str = "newerSecret/0123456789abcdefEXAMPLEKEY2";
    for (out, exit) in [("", "0"), (" >&2", "1")] {
        write(NEW);
        let script = format!(
            "printf \"[default]\\naws_access_key_id = ASIAREFRESHED0000001\\naws_secret_access_key = {NEWER}\\n\" > {path}; echo was={NEW} now={NEWER}{out}; exit {exit}"
        );
        let p = policy(&format!(
            "  interval: 1m\n  cloudwatch: {{region: eu-west-1, url: 'http://127.0.0.1:1'}}\n  metrics:\n    - {{name: m, source: command, command: [sh, -c, '{script}'], value: $.v, judge: {{max: 1}}}}\n    - {{name: c, source: cloudwatch, query: \"SELECT AVG(x) FROM s WHERE v = '{{variant}}'\", judge: {{max: 1}}}}\n"
        ));
        let s = source(&p, &[("AWS_SHARED_CREDENTIALS_FILE", path.as_str())]);
        let sample = s.measure(&window()).await.unwrap();
        let q = &sample.queries[0];
        assert!(q.detail.contains("was="), "{}", q.detail);
        let everything = format!("{} {sample:?}", q.detail);
        assert!(
            !everything.contains(NEW) && !everything.contains(NEWER),
            "{everything}"
        );
    }
}

/// A program that prints far more than a metric (a loop gone wrong, a log dumped on
/// standard output) is no data with the reason, and what rampart keeps of it is
/// bounded: the rest is read and dropped, so the program finishes.
#[tokio::test]
async fn a_program_printing_more_than_a_metric_is_no_data() {
    let q = read("yes 1 | head -c 3000000", "judge: {max: 1}").await;
    assert_eq!((q.stable, q.canary), (None, None), "{}", q.detail);
    assert!(
        q.detail.contains("printed more than 1024 KiB"),
        "{}",
        q.detail
    );
}
