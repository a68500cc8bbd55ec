//! The JSON shapes of the control-plane API, built from the store by replaying release
//! logs. The CLI client reads the same shapes, so the server and the client cannot
//! disagree about a field.
//!
//! Owns turning stored releases into views. It must not change anything.

use rampart_adapters::store::Submission;
use rampart_core::Policy;
use rampart_core::metrics::VariantStats;
use rampart_core::ports::{PortErrorKind, ReleaseRecord, Store, StoredInput};
use rampart_core::release::{AuditEvent, Decision, Input, Instead, Phase, Release, step};
use serde::{Deserialize, Serialize};

/// One release as the list and the release page show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseView {
    /// Release id.
    pub id: String,
    /// Service name.
    pub service: String,
    /// The version being released.
    pub version: String,
    /// The version serving before, if known.
    pub stable: Option<String>,
    /// `queued` before it starts; then the state machine's phase (`progressing`,
    /// `awaiting_approval`, `rolling_back`, `succeeded`, ...).
    pub phase: String,
    /// The canary's confirmed traffic share, in percent.
    pub weight: f64,
    /// The current step, from 1 (0 before the steps start).
    pub step: usize,
    /// How many steps the policy has.
    pub steps: usize,
    /// `promoted`, `rolled_back`, `halted`, `escalated` or `blocked`, once over.
    pub outcome: Option<String>,
    /// Who started it.
    pub initiator: String,
    /// When it was submitted or created (ms since the epoch).
    pub created_at: u64,
    /// When its log last changed (ms since the epoch).
    pub updated_at: u64,
    /// Who paused it, while paused.
    pub paused_by: Option<String>,
    /// What the approval point it waits at asks, while it waits.
    pub awaiting_approval: Option<String>,
    /// What a person may do now (approve it while it waits, force the rollback of an
    /// escalated release, switch back while the previous version is kept).
    pub instead: Option<Instead>,
    /// The decision that ends it, once made.
    pub decision: Option<Decision>,
    /// After a rollback: the level that restored health.
    pub rollback_level: Option<u8>,
    /// Analysis intervals judged so far.
    pub intervals: u32,
    /// The last interval's verdict (`pass`, `fail`, `inconclusive`, `no_data`).
    pub last_verdict: Option<String>,
    /// The final report (the `rampart run --output json` object) of a release run by
    /// the server, once over.
    pub report: Option<serde_json::Value>,
    /// The metrics it is judged on, as its policy says.
    #[serde(default)]
    pub metrics: Vec<MetricView>,
}

/// One judged metric, as the release page lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricView {
    /// The metric's name.
    pub name: String,
    /// `lower_is_better` or `higher_is_better`.
    pub direction: String,
    /// `threshold` or `sequential (alpha A)`.
    pub judge: String,
    /// When the judge fails it, in words.
    pub fails_when: String,
}

/// The policy's metrics as the release page lists them.
fn metric_views(policy: &Policy) -> Vec<MetricView> {
    policy
        .analysis
        .metrics
        .iter()
        .map(|m| {
            let (judge, fails_when) = m.judged_as();
            MetricView {
                name: m.name.clone(),
                direction: m.direction.id().to_string(),
                judge,
                fails_when,
            }
        })
        .collect()
}

/// One audit event with its position in the release log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    /// The log entry that produced it (use as `after` to page).
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// One variant over one analysis interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VariantPoint {
    /// Requests.
    pub requests: u64,
    /// Errors.
    pub errors: u64,
    /// Errors over requests, `null` without requests.
    pub error_rate: Option<f64>,
    /// Median latency (ms), `null` without latency data.
    pub p50_ms: Option<f64>,
    /// 99th-percentile latency (ms), `null` without latency data.
    pub p99_ms: Option<f64>,
}

impl From<&VariantStats> for VariantPoint {
    fn from(v: &VariantStats) -> Self {
        VariantPoint {
            requests: v.requests,
            errors: v.errors,
            error_rate: v.error_rate(),
            p50_ms: v.latency.quantile_ms(0.5),
            p99_ms: v.latency.quantile_ms(0.99),
        }
    }
}

/// One analysis interval: the traffic of both variants and the verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// The log entry.
    pub seq: u64,
    /// Seconds since the release started.
    pub t_s: f64,
    /// The canary weight during the interval, in percent.
    pub weight: f64,
    /// Stable.
    pub stable: VariantPoint,
    /// Canary.
    pub canary: VariantPoint,
    /// The interval's verdict, or the reason it had none (`measure_failed`).
    pub verdict: String,
}

/// The weight after every change, for the weight-over-time chart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightPoint {
    /// Seconds since the release started.
    pub t_s: f64,
    /// The canary weight, in percent.
    pub weight: f64,
}

/// A release's metric series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeriesView {
    /// Release id.
    pub release: String,
    /// Every analysed interval, in order.
    pub intervals: Vec<MetricPoint>,
    /// The confirmed weight after every change, in order.
    pub weights: Vec<WeightPoint>,
}

/// A release's record, its log and the policy it runs under.
#[derive(Debug)]
pub struct Loaded {
    /// The record.
    pub record: ReleaseRecord,
    /// The log.
    pub log: Vec<StoredInput>,
    /// The policy it started with.
    pub policy: Policy,
}

impl Loaded {
    /// Reads a release; `None` when there is no such release.
    /// Takes any handle on a store (`&Arc<StateStore>`, `&Arc<dyn ControlPlane>`).
    pub async fn read<S>(store: &S, id: &str) -> Option<Result<Loaded, String>>
    where
        S: std::ops::Deref<Target: Store>,
    {
        let (record, log) = match store.load(id).await {
            Ok(x) => x,
            Err(e) if e.kind() == PortErrorKind::NotFound => return None,
            Err(e) => return Some(Err(e.0)),
        };
        Some(
            Policy::from_stored(&record.policy)
                .map(|policy| Loaded {
                    record,
                    log,
                    policy,
                })
                .map_err(|e| format!("the policy of release {id} no longer parses: {e}")),
        )
    }

    /// The report of the release as it ended, rebuilt from its log (the requests each
    /// interval measured, its audit trail).
    pub fn finished_report(&self) -> crate::report::Report {
        let end = self.state();
        let mut totals = rampart_core::metrics::IntervalSample::default();
        for e in &self.log {
            if let rampart_core::release::Input::Measured { sample } = &e.input {
                totals.stable.requests += sample.stable.requests;
                totals.canary.requests += sample.canary.requests;
            }
        }
        let timeline = self.log.iter().flat_map(|e| e.events.clone()).collect();
        crate::run::report(&self.policy, &end, timeline, totals, None)
    }

    /// The state now.
    pub fn state(&self) -> Release {
        Release::replay(&self.policy, self.log.iter().map(|e| (&e.input, e.at)))
    }

    /// The list and page view.
    pub fn view(&self, report: Option<&str>) -> ReleaseView {
        let s = self.state();
        let steps = self.policy.strategy.steps().len();
        ReleaseView {
            id: self.record.id.clone(),
            service: self.record.service.clone(),
            version: self.record.version.clone(),
            stable: s.stable.clone(),
            phase: s.phase.as_str().to_string(),
            weight: s.weight.percent(),
            step: if matches!(s.phase, Phase::Progressing | Phase::AwaitingApproval)
                && s.approving.is_none()
            {
                s.step + 1
            } else {
                0
            },
            steps,
            outcome: self.record.outcome.map(|o| o.as_str().to_string()),
            initiator: s.initiator.clone(),
            created_at: self.record.created_at,
            updated_at: self.log.last().map_or(self.record.created_at, |e| e.at),
            paused_by: s.paused.clone(),
            awaiting_approval: (s.phase == Phase::AwaitingApproval)
                .then(|| {
                    self.log
                        .iter()
                        .flat_map(|e| &e.events)
                        .rev()
                        .find(|e| e.kind == "awaiting_approval")
                        .map(|e| e.message.clone())
                })
                .flatten(),
            instead: matches!(
                s.phase,
                Phase::AwaitingApproval | Phase::Escalated | Phase::KeepingPrevious
            )
            .then(|| {
                self.log
                    .iter()
                    .flat_map(|e| &e.events)
                    .rev()
                    .find_map(|e| e.instead.clone())
            })
            .flatten(),
            decision: s.decision.clone(),
            rollback_level: s.rollback_level,
            intervals: s.intervals,
            last_verdict: s.last_verdict.map(|v| v.label_snake().to_string()),
            // A release the server ran kept its report; one run from a terminal
            // (`rampart run` on the same store) is rebuilt from its log, once over.
            report: report
                .and_then(|r| serde_json::from_str(r).ok())
                .or_else(|| {
                    self.record
                        .outcome
                        .and_then(|_| serde_json::to_value(self.finished_report()).ok())
                }),
            metrics: metric_views(&self.policy),
        }
    }

    /// Audit events after log entry `after` (all with `None`).
    pub fn events(&self, after: Option<u64>) -> Vec<EventView> {
        self.log
            .iter()
            .filter(|e| after.is_none_or(|a| e.seq > a))
            .flat_map(|e| {
                e.events.iter().map(|ev| EventView {
                    seq: e.seq,
                    event: ev.clone(),
                })
            })
            .collect()
    }

    /// The metric series, replaying the log to know the weight and verdict of each
    /// interval.
    pub fn series(&self) -> SeriesView {
        let mut state = Release::default();
        let mut intervals = Vec::new();
        let mut weights = Vec::new();
        // As the state is rebuilt: the entries a `rules_changed` stands for are left
        // out (the audit trail still lists what they recorded).
        let skipped = rampart_core::release::superseded(
            &self.log.iter().map(|e| &e.input).collect::<Vec<_>>(),
        );
        for (n, e) in self.log.iter().enumerate() {
            if skipped.as_ref().is_some_and(|r| r.contains(&n)) {
                continue;
            }
            let before = state.weight;
            let next = step(&self.policy, &state, &e.input, e.at).state;
            let t_s = e.at.saturating_sub(next.started_at) as f64 / 1000.0;
            match &e.input {
                Input::Measured { sample } => intervals.push(MetricPoint {
                    seq: e.seq,
                    t_s,
                    weight: before.percent(),
                    stable: (&sample.stable).into(),
                    canary: (&sample.canary).into(),
                    verdict: next
                        .last_verdict
                        .map_or("none", |v| v.label_snake())
                        .to_string(),
                }),
                Input::MeasureFailed { .. } => intervals.push(MetricPoint {
                    seq: e.seq,
                    t_s,
                    weight: before.percent(),
                    stable: (&VariantStats::default()).into(),
                    canary: (&VariantStats::default()).into(),
                    verdict: "measure_failed".into(),
                }),
                _ => {}
            }
            if next.weight != before || weights.is_empty() && next.started_at > 0 {
                weights.push(WeightPoint {
                    t_s,
                    weight: next.weight.percent(),
                });
            }
            state = next;
        }
        SeriesView {
            release: self.record.id.clone(),
            intervals,
            weights,
        }
    }
}

/// A submitted release that has not started yet.
pub fn queued_view(s: &Submission) -> ReleaseView {
    let policy = Policy::from_stored(&s.policy).ok();
    let steps = policy.as_ref().map_or(0, |p| p.strategy.steps().len());
    ReleaseView {
        id: s.id.clone(),
        service: s.service.clone(),
        version: s.version.clone(),
        stable: s.stable.clone(),
        phase: if s.state == "done" {
            "blocked".into()
        } else {
            "queued".into()
        },
        weight: 0.0,
        step: 0,
        steps,
        outcome: (s.state == "done").then(|| "blocked".to_string()),
        initiator: s.initiator.clone(),
        created_at: s.created_at,
        updated_at: s.created_at,
        paused_by: None,
        awaiting_approval: None,
        instead: None,
        decision: None,
        rollback_level: None,
        intervals: 0,
        last_verdict: None,
        report: s
            .report
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok()),
        metrics: policy.as_ref().map(metric_views).unwrap_or_default(),
    }
}

/// Replaces the values of secret policy fields (webhook signing secrets, Slack webhook
/// URLs, PagerDuty routing keys) with `<redacted>`, keeping every line where it was.
///
/// Every value as written is looked at, not only those the policy reads: a secret
/// under a top-level `x-` key, or in a mapping merged in (`<<: *name`) whose field a
/// hook overrides, is in the text all the same. Any field of those names anywhere is
/// redacted.
pub fn redact_policy(text: &str) -> String {
    use rampart_core::yaml::{Node, NodeKind, parse_as_written};
    let Ok(root) = parse_as_written(text) else {
        return "<redacted: the policy does not parse>".into();
    };
    fn secret(node: &Node, spots: &mut Vec<(u32, u32, String)>) {
        if let NodeKind::Scalar { text, .. } = &node.kind
            && !text.is_empty()
        {
            spots.push((node.pos.line, node.pos.col, text.clone()));
        }
    }
    fn walk(node: &Node, spots: &mut Vec<(u32, u32, String)>) {
        match &node.kind {
            NodeKind::Map(entries) => {
                for (k, v) in entries {
                    if matches!(k.text.as_str(), "secret" | "routing_key" | "slack") {
                        secret(v, spots);
                    }
                    if k.text == "slack"
                        && let Some(url) = v.field("webhook")
                    {
                        secret(url, spots);
                    }
                    walk(v, spots);
                }
            }
            NodeKind::Seq(items) => items.iter().for_each(|n| walk(n, spots)),
            NodeKind::Null | NodeKind::Scalar { .. } => {}
        }
    }
    let mut spots: Vec<(u32, u32, String)> = Vec::new();
    walk(&root, &mut spots);
    // An alias copies its anchor's values, with their positions: each spot once.
    spots.sort();
    spots.dedup();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    for (line, col, value) in spots {
        let at = line.saturating_sub(1) as usize;
        let Some(l) = lines.get_mut(at) else {
            continue;
        };
        let from = (col.saturating_sub(1) as usize).min(l.len());
        if !value.contains('\n')
            && let Some(found) = l.get(from..).and_then(|rest| rest.find(value.as_str()))
        {
            l.replace_range(from + found..from + found + value.len(), "<redacted>");
            continue;
        }
        // Not a plain one-line value (a block scalar, escapes, a folded string): redact
        // the rest of the line and every more-indented line after it, rather than risk
        // leaving part of the secret.
        let base = indent(l);
        if l.is_char_boundary(from) {
            l.replace_range(from.., "<redacted>");
        } else {
            *l = format!("{}<redacted>", " ".repeat(base));
        }
        // A block scalar's lines all belong to it, then anything more indented.
        let spans = value.lines().count().max(1);
        for (i, next) in lines.iter_mut().enumerate().skip(at + 1) {
            if i < at + spans || next.trim().is_empty() || indent(next) > base {
                if !next.trim().is_empty() {
                    *next = format!("{}<redacted>", " ".repeat(indent(next)));
                }
            } else {
                break;
            }
        }
    }
    let mut out = lines.join("\n");
    if text.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{metric_views, redact_policy};

    #[test]
    fn the_release_page_lists_each_metric_with_its_direction() {
        let policy = rampart_core::Policy::from_yaml(
            r#"service: shop
deploy: {process: {command: ["./c", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:8080"}}
strategy: {canary: {steps: [{weight: 5, bake: 1m}]}}
analysis:
  prometheus: http://127.0.0.1:9090
  metrics:
    - {metric: error_rate, judge: {max: 1%}}
    - {name: paid, source: prometheus, good: 'x{variant}', total: 'y{variant}', judge: {min_ratio_to_stable: 0.9}}
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let shown: Vec<(String, String, String)> = metric_views(&policy)
            .into_iter()
            .map(|m| (m.name, m.direction, m.fails_when))
            .collect();
        assert_eq!(
            shown,
            [
                ("error_rate", "lower_is_better", "value > 1%"),
                ("paid", "higher_is_better", "value < 0.9 x stable"),
            ]
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        );
    }

    #[test]
    fn secrets_are_redacted_however_they_are_written() {
        let policy = "service: s\nnotify:\n  - webhook: http://127.0.0.1:9/h\n    secret: \"a\\\"quoted-secret\"\n  - webhook: http://127.0.0.1:9/h\n    secret: |\n      block-secret-1\n      block-secret-2\n  - slack: {webhook: 'https://hooks.example/it''s-secret'}\n  - pagerduty: {routing_key: plain-key}\nanalysis: {interval: 10s}\n";
        let out = redact_policy(policy);
        for secret in [
            "quoted-secret",
            "block-secret",
            "hooks.example",
            "plain-key",
        ] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        assert!(out.contains("analysis: {interval: 10s}"), "{out}");
        assert!(out.contains("webhook: http://127.0.0.1:9/h"), "{out}");
        assert_eq!(out.lines().count(), policy.lines().count());
    }
}
