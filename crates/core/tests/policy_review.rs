//! Adversarial review of the policy decoder: bad input gets a clear error at its file,
//! line and field, and nothing a policy says is silently dropped. Each test states the
//! scenario, what the docs promise and what was observed.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use rampart_core::Policy;
use rampart_core::decode::Diagnostic;
use rampart_core::judge::{self, Verdict};
use rampart_core::metrics::{IntervalSample, VariantStats};
use rampart_core::policy::Judge;

const MINIMAL: &str = r#"service: checkout
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
analysis:
  metrics:
    - metric: error_rate
      judge: { max: 1% }
"#;

fn errors(src: &str) -> Vec<Diagnostic> {
    match Policy::from_yaml(src) {
        Ok(_) => Vec::new(),
        Err(e) => e.diagnostics,
    }
}

fn stats(requests: u64, errors: u64) -> VariantStats {
    VariantStats {
        requests,
        errors,
        ..VariantStats::default()
    }
}

/// Scenario: a threshold judge whose only limit is written but left empty
/// (`judge: {max: }`, `judge: {max: ~}`, or `judge: {threshold: {max_ratio_to_stable:
/// null}}`: a value deleted in an edit, a template variable that rendered to nothing).
///
/// Expected (docs/policy.md, *Judges*): "A threshold judge sets at least one limit";
/// a judge with no limit (`judge: {}`) is refused with "the judge sets no limit".
/// An empty limit is no limit and must be refused the same way, at its line.
///
/// Observed: the policy is valid. `MapReader::optional` reads the null as "absent"
/// (so `max` is `None`), while `decode_threshold` decides whether any limit was given
/// with `MapReader::present`, which counts the key. The metric is judged by nothing:
/// a canary answering every request with a 5xx passes every interval, and the
/// release is promoted. (Fault: crates/core/src/policy/analysis.rs `decode_threshold`.)
#[test]
fn a_threshold_judge_whose_limit_is_empty_is_refused_not_judged_by_nothing() {
    for judge_text in [
        "judge: { max: }",
        "judge: { max: ~ }",
        "judge: { max: null }",
        "judge: { threshold: { max_ratio_to_stable: null } }",
    ] {
        let src = MINIMAL.replace("judge: { max: 1% }", judge_text);
        if let Ok(p) = Policy::from_yaml(&src) {
            // What the release would do with it: a canary failing every request.
            let spec = &p.analysis.metrics[0];
            let Judge::Threshold(t) = &spec.judge else {
                panic!("not a threshold judge")
            };
            let sample = IntervalSample {
                stable: stats(1_000, 0),
                canary: stats(1_000, 1_000),
                queries: Vec::new(),
            };
            let r = judge::threshold(spec, t, &sample);
            panic!(
                "`{judge_text}` was accepted as a judge with no limit ({t:?}); a canary with 100% errors gets {:?} ({})",
                r.verdict, r.detail
            );
        }
        let d = errors(&src);
        assert!(
            d.iter()
                .any(|d| d.path.starts_with("analysis.metrics[0].judge") && d.line == 16),
            "`{judge_text}`: {d:?}"
        );
    }
}

/// Scenario: the policy above (`judge: {max: }` on `error_rate`) reaches a release.
///
/// Expected: a canary answering every request with a 5xx never passes an interval
/// (docs/policy.md: "Nothing that cannot be judged is ever promoted").
///
/// Observed: `judge::threshold` on the decoded judge (every limit `None`) returns
/// `Pass` ("100% (stable 0%)"). Skipped (passes) once the decoder refuses the policy.
#[test]
fn an_empty_limit_never_passes_a_failing_canary() {
    let src = MINIMAL.replace("judge: { max: 1% }", "judge: { max: }");
    let Ok(p) = Policy::from_yaml(&src) else {
        return; // refused at validate time: sound
    };
    let spec = &p.analysis.metrics[0];
    let Judge::Threshold(t) = &spec.judge else {
        panic!("not a threshold judge")
    };
    let sample = IntervalSample {
        stable: stats(1_000, 0),
        canary: stats(1_000, 1_000),
        queries: Vec::new(),
    };
    let r = judge::threshold(spec, t, &sample);
    assert_ne!(
        r.verdict,
        Verdict::Pass,
        "a canary with 100% errors passed an error_rate metric: {}",
        r.detail
    );
}

/// Scenario: a rolling policy whose `batch` (or `max_unavailable`) is too large for
/// `deploy.process.replicas`, written in block style:
///
/// ```yaml
/// strategy:          # line 8
///   rolling:         # line 9
///     bake: 1m       # line 10
///     batch: 2       # line 11 (1 replica)
///     max_unavailable: 1   # line 12
/// ```
///
/// Expected: docs/policy.md: "Every problem is reported at once, each with
/// `file:line:column`, the field path and what would be valid": each error at its
/// field's line (11 and 12), as every other out-of-range value is.
///
/// Observed: both errors point at line 9 (`rolling:`'s mapping, the `strategy`
/// node), with the right path: an editor jump lands on the wrong line. Fault:
/// crates/core/src/policy/mod.rs `decode_policy`, which uses
/// `m.get("strategy").pos` for both; use the `batch` / `max_unavailable` node's
/// position (`strategy.rolling.batch`).
#[test]
fn a_rolling_batch_too_large_for_the_replicas_is_refused_at_its_own_line() {
    let src = MINIMAL.replace(
        "  canary:\n    steps:\n      - weight: 10\n        bake: 1m\n",
        "  rolling:\n    bake: 1m\n    batch: 2\n    max_unavailable: 1\n",
    );
    let d = errors(&src);
    let at = |path: &str| d.iter().find(|d| d.path == path).map(|d| (d.line, d.col));
    assert_eq!(at("strategy.rolling.batch"), Some((11, 12)), "{d:?}");
    assert_eq!(
        at("strategy.rolling.max_unavailable"),
        Some((12, 22)),
        "{d:?}"
    );
}

/// Scenario: `windows: {allow: [{days: [], hours: "09:00-17:00"}]}` (a list a template
/// emptied). Expected: refused at its line, as a window that never opens would hold
/// every release until `max_wait` and then block it. Observed before the fix: valid.
#[test]
fn a_release_window_on_no_day_is_refused_at_its_line() {
    let src =
        format!("{MINIMAL}windows:\n  allow:\n    - days: []\n      hours: \"09:00-17:00\"\n");
    let d = errors(&src);
    assert!(
        d.iter()
            .any(|d| d.path == "windows.allow[0].days" && d.line == 19),
        "{d:?}"
    );
    // Some day is a window.
    let src = src.replace("days: []", "days: [sat]");
    assert!(errors(&src).is_empty(), "{:?}", errors(&src));
}

/// Scenario: `notify: [{webhook: URL, secret: }]` (a secret a template rendered to
/// nothing). Expected: refused at its line, as the receiver may accept unsigned
/// notices and the person meant them signed. Observed before: valid, every notice
/// sent unsigned.
#[test]
fn a_webhook_secret_left_empty_is_refused_not_dropped() {
    for secret in ["secret: ", "secret: ~", "secret_env: "] {
        let src = format!(
            "{MINIMAL}notify:\n  - webhook: https://hooks.example.com/rampart\n    {secret}\n"
        );
        let d = errors(&src);
        assert!(
            d.iter()
                .any(|d| d.path.starts_with("notify[0].secret") && d.line == 19),
            "`{secret}`: {d:?}"
        );
    }
}

/// A choice between keys sees every key written, with a value or not: `{webhook: ~,
/// slack: URL}` (a webhook URL a template emptied) is refused as two kinds of hook,
/// not taken for a Slack hook alone.
#[test]
fn a_hook_kind_written_with_no_value_still_counts_as_written() {
    let src =
        format!("{MINIMAL}notify:\n  - {{webhook: ~, slack: \"https://hooks.slack.com/x\"}}\n");
    let d = errors(&src);
    assert!(d.iter().any(|d| d.path == "notify[0]"), "{d:?}");
}
