//! The `analysis` section: the interval, the judged metrics, their judges and
//! thresholds, and the escalation limits, with its decoder. It says how to judge; it
//! must not judge (the `judge` module does).

use std::time::Duration;

use super::providers::{
    CloudWatchSpec, DatadogSpec, HttpFetch, NewRelicSpec, QuerySource, SOURCES, cloudwatch_period,
    decode_cloudwatch, decode_command, decode_datadog, decode_headers, decode_newrelic,
    decode_url_template, decode_value_path,
};
use super::values::{HOUR, decode_base_url, limit, positive};
use crate::decode::{Decode, Decoder, MapReader, join, one_of, scalar};
use crate::metrics::Timing;
use crate::units::{Rate, format_duration};
use crate::yaml::{Node, NodeKind};

/// Canary analysis settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    /// Time between measurements.
    pub interval: Duration,
    /// What to do after consecutive inconclusive intervals.
    pub inconclusive: Escalation,
    /// What to do after consecutive intervals without any canary traffic.
    pub no_data: Escalation,
    /// The metrics judged each interval.
    pub metrics: Vec<MetricSpec>,
    /// The summed `weight` of failing non-critical metrics that fails the release.
    pub fail_score: f64,
    /// The Prometheus server `source: prometheus` metrics query (`http://HOST:PORT`).
    pub prometheus: Option<String>,
    /// Traffic rampart sends itself while the release is analysed, so a quiet service
    /// can still be judged.
    pub load: Option<Load>,
    /// Where `source: datadog` metrics are read, and with which keys; set (to the
    /// defaults if the policy says nothing) whenever a metric reads Datadog.
    pub datadog: Option<DatadogSpec>,
    /// The New Relic account `source: newrelic` metrics query; required when one does.
    pub newrelic: Option<NewRelicSpec>,
    /// The CloudWatch region `source: cloudwatch` metrics read; required when one does.
    pub cloudwatch: Option<CloudWatchSpec>,
}

/// The marker header on every request of the built-in load: `1`, or, for load that
/// must not count, a per-release token only the embedded proxy knows (it rewrites it to
/// `1` before the service sees it).
pub const LOAD_HEADER: &str = "x-rampart-load";

/// `analysis.load`: requests rampart sends while the release is analysed, like
/// Flagger's load tester.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Load {
    /// Requests per second.
    pub rate: u32,
    /// Paths requested in turn, each starting with `/`.
    pub paths: Vec<String>,
    /// Extra headers on every request.
    pub headers: Vec<(String, String)>,
    /// Whether these requests count in the judged metrics (the embedded proxy can
    /// leave them out; other routers count every request).
    pub counts: bool,
    /// Where to send it (`http://HOST:PORT`); by default the service's address on
    /// the embedded proxy or nginx.
    pub url: Option<String>,
}

/// A limit on consecutive unusable intervals, and what happens when it is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Escalation {
    /// Consecutive intervals tolerated (the release holds its weight meanwhile).
    pub limit: u32,
    /// What happens at the limit.
    pub action: EscalationAction,
}

/// The action at an escalation limit. Neither is ever a promotion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalationAction {
    /// Stop where it stands and page a human.
    Halt,
    /// Roll back to stable.
    Rollback,
}

/// How a threshold judge's failing intervals count toward its `failure_limit`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCount {
    /// Failing intervals in a row: a passing interval starts the count again.
    #[default]
    Consecutive,
    /// Failing intervals over the whole release, passes in between or not (Argo
    /// Rollouts' `failureLimit`, Flagger's `threshold`).
    Total,
}

/// One judged metric.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricSpec {
    /// Unique label.
    pub name: String,
    /// Which measurement.
    pub metric: BuiltinMetric,
    /// How values are judged.
    pub judge: Judge,
    /// Requests a variant needs before it can be judged: per interval for the threshold
    /// judge, since analysis began for the sequential judge.
    pub min_samples: u64,
    /// Consecutive failing intervals that fail the release (threshold judge only; a
    /// sequential judge decides the moment its evidence suffices).
    pub failure_limit: u32,
    /// How failing intervals count toward `failure_limit`: in a row (a pass resets
    /// the count) or in total over the release.
    pub failure_count: FailureCount,
    /// Whether this metric fails the release on its own. A non-critical metric only
    /// adds its `weight` to the failure score.
    pub critical: bool,
    /// This metric's share of the failure score when it is not critical.
    pub weight: f64,
    /// Which way the metric gets worse: its limits and the sequential judge's bad
    /// outcome are on that side.
    pub direction: Direction,
    /// For a metric read from a provider (`source: prometheus`, `datadog`,
    /// `newrelic`, `cloudwatch`, `http`, `command`): what is read for each variant. `None` for
    /// builtin metrics.
    pub query: Option<QuerySpec>,
}

impl MetricSpec {
    /// Its judge and when it fails the metric, in words, as runbooks, skills and the
    /// dashboard say it: (`threshold`, `value > 2% or value < 0.9 x stable`).
    pub fn judged_as(&self) -> (String, String) {
        match &self.judge {
            Judge::Threshold(t) => {
                let f = |v: f64| self.metric.format(v);
                let limits = [
                    t.max.map(|v| format!("value > {}", f(v))),
                    t.max_ratio_to_stable
                        .map(|r| format!("value > {r} x stable")),
                    t.min.map(|v| format!("value < {}", f(v))),
                    t.min_ratio_to_stable
                        .map(|r| format!("value < {r} x stable")),
                ];
                let limits: Vec<String> = limits.into_iter().flatten().collect();
                ("threshold".into(), limits.join(" or "))
            }
            Judge::Sequential(s) => (
                format!("sequential (alpha {})", s.alpha),
                format!(
                    "evidence that it is {} than stable reaches 1/alpha",
                    match self.direction {
                        Direction::LowerIsBetter => "worse",
                        Direction::HigherIsBetter => "lower",
                    }
                ),
            ),
        }
    }
}

/// Which way a metric gets worse. A metric has one: its limits bound that side, and a
/// canary that moves the other way is never failed for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Errors, latency, failed checkouts: limited by `max` and `max_ratio_to_stable`.
    #[default]
    LowerIsBetter,
    /// Success rate, throughput, conversions: limited by `min` and
    /// `min_ratio_to_stable`.
    HigherIsBetter,
}

impl Direction {
    /// The policy's spelling.
    pub fn id(self) -> &'static str {
        match self {
            Direction::LowerIsBetter => "lower_is_better",
            Direction::HigherIsBetter => "higher_is_better",
        }
    }

    /// How runbooks and the dashboard say it.
    pub fn label(self) -> &'static str {
        match self {
            Direction::LowerIsBetter => "lower is better",
            Direction::HigherIsBetter => "higher is better",
        }
    }
}

/// A provider's value judged like a builtin metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuerySpec {
    /// The provider that reads it, with the metric's own fetch (`http`, `command`).
    pub source: QuerySource,
    /// The query (PromQL, a Datadog query, NRQL, a CloudWatch expression) with
    /// `{service}`, `{variant}`, `{version}`
    /// and `{interval}` placeholders; for `http` and `command`, the JSON path of the
    /// value (or of the `bad`/`good` count) in the fetched document.
    pub query: String,
    /// Read over the analysis interval with a range query and averaged, rather than
    /// as one instant value.
    pub range: bool,
    /// The query (or JSON path) counting a variant's requests in the interval: below
    /// the metric's `min_samples` the value is not judged. `None`: no floor. For a
    /// counts metric, its `total`.
    pub samples: Option<String>,
    /// Whether `query` counts events (`bad` or `good`, by the metric's direction) out
    /// of the `samples` total: the value judged is their share, and the sequential
    /// judge runs on the counts.
    pub counts: bool,
    /// For a latency metric read from Prometheus histogram buckets: `query` is the
    /// `buckets` query (one series per `le` label, each the requests in the interval
    /// at or below that bound) and this is the unit of its `le` values. `None` for
    /// every other query metric.
    pub buckets: Option<BucketUnit>,
}

impl QuerySpec {
    /// Whether each variant reads its own value: the query (a count's `bad` or
    /// `good` and its `total` alike; an `http` source's URL or headers) names
    /// `{variant}` or `{version}`, or it is a `command`, which gets the variant in
    /// its environment. A query that reads the same value for both (one
    /// that selects the canary by name, as Argo Rollouts and Flagger queries do) says
    /// nothing about stable.
    pub fn per_variant(&self) -> bool {
        self.names_any(&["{variant}", "{version}"])
    }

    /// Whether each variant reads its own value when both run the same version, as
    /// in a flag release: only `{variant}` (or a `command`) tells them apart there.
    pub fn per_variant_on_one_version(&self) -> bool {
        self.names_any(&["{variant}"])
    }

    /// The policy field where a variant's reading is selected: an `http` source's
    /// URL, a count's events, a latency's buckets, else the query.
    pub fn field(&self, direction: Direction) -> &'static str {
        match (&self.source, self.counts, direction) {
            (QuerySource::Http(_), _, _) => "url",
            (_, true, Direction::HigherIsBetter) => "good",
            (_, true, Direction::LowerIsBetter) => "bad",
            _ if self.buckets.is_some() => "buckets",
            _ => "query",
        }
    }

    fn names_any(&self, placeholders: &[&str]) -> bool {
        let names = |t: &str| placeholders.iter().any(|p| t.contains(p));
        match &self.source {
            QuerySource::Command(_) => true,
            QuerySource::Http(h) => names(&h.url) || h.headers.iter().any(|(_, v)| names(v)),
            // A count's `bad` (or `good`) and its `total` must each name it: one
            // read for both variants counts every variant's events as each one's.
            _ if self.counts => names(&self.query) && self.samples.as_deref().is_none_or(names),
            // A value's floor (`samples`) decides nothing about which side it is.
            _ => names(&self.query),
        }
    }
}

/// The unit of a Prometheus histogram's `le` bounds (`unit:` beside `buckets`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BucketUnit {
    /// Seconds, the Prometheus convention (`http_request_duration_seconds`).
    #[default]
    Seconds,
    /// Milliseconds.
    Milliseconds,
}

impl BucketUnit {
    /// Microseconds in one unit.
    pub fn micros(self) -> f64 {
        match self {
            BucketUnit::Seconds => 1_000_000.0,
            BucketUnit::Milliseconds => 1_000.0,
        }
    }
}

/// How a metric is judged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Judge {
    /// Fixed limits, judged interval by interval.
    Threshold(Threshold),
    /// An anytime-valid test of "canary worse than stable".
    Sequential(Sequential),
}

impl Judge {
    /// What in this judge compares the canary with stable, as messages name it: the
    /// sequential judge, or a ratio limit; `None` for fixed limits alone.
    pub fn comparison(&self) -> Option<&'static str> {
        match self {
            Judge::Sequential(_) => Some("the sequential judge"),
            Judge::Threshold(t) if t.relative() => Some("a ratio to stable"),
            Judge::Threshold(_) => None,
        }
    }
}

/// Settings of the sequential judge.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sequential {
    /// Bound on the probability of failing a canary that is no worse than stable, over
    /// the whole release however often it is checked.
    pub alpha: f64,
    /// How much worse the canary may be before it counts as worse, as an odds ratio:
    /// 1 means any degradation, 1.25 tolerates 25 % higher odds of a bad outcome.
    pub tolerance: f64,
}

/// The default false-alarm bound of the sequential judge.
pub const DEFAULT_ALPHA: f64 = 0.01;

/// Metrics the embedded proxy measures itself.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinMetric {
    /// 5xx responses plus upstream connection failures, over requests.
    ErrorRate,
    /// A quantile of the time to response headers, such as 0.99 (`latency_p99`).
    Latency(f64),
    /// A quantile of the total time, to the response body's last byte
    /// (`latency_total_p99`).
    LatencyTotal(f64),
    /// The value of the metric's query, in its own unit.
    Query,
    /// A counts metric's events (bad or good) over its total, a fraction.
    Counts,
}

impl BuiltinMetric {
    /// The metric's policy name.
    pub fn id(&self) -> String {
        match self {
            BuiltinMetric::ErrorRate => "error_rate".into(),
            BuiltinMetric::Latency(q) => latency_id("latency", *q),
            BuiltinMetric::LatencyTotal(q) => latency_id("latency_total", *q),
            BuiltinMetric::Query => "query".into(),
            BuiltinMetric::Counts => "counts".into(),
        }
    }

    /// A latency metric's quantile and what it times; `None` for other metrics.
    pub fn latency(&self) -> Option<(f64, Timing)> {
        match self {
            BuiltinMetric::Latency(q) => Some((*q, Timing::Headers)),
            BuiltinMetric::LatencyTotal(q) => Some((*q, Timing::Total)),
            BuiltinMetric::ErrorRate | BuiltinMetric::Query | BuiltinMetric::Counts => None,
        }
    }

    /// Formats a value of this metric for people.
    pub fn format(&self, v: f64) -> String {
        match self {
            BuiltinMetric::ErrorRate | BuiltinMetric::Counts => Rate(v).to_string(),
            BuiltinMetric::Latency(_) | BuiltinMetric::LatencyTotal(_) => {
                format!("{}ms", crate::units::trim_float(v, 1))
            }
            BuiltinMetric::Query => crate::units::trim_float(v, 4),
        }
    }
}

/// `latency_p99`, `latency_total_p999`: the quantile's policy suffix after `prefix`.
fn latency_id(prefix: &str, q: f64) -> String {
    match QUANTILES.iter().find(|(_, v)| *v == q) {
        Some((suffix, _)) => format!("{prefix}_{suffix}"),
        None => format!("{prefix}_q{q}"),
    }
}

/// The latency quantiles a policy can name, by their suffix.
const QUANTILES: [(&str, f64); 5] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p999", 0.999),
];
const METRIC_NAMES: &[&str] = &[
    "error_rate",
    "latency_p50",
    "latency_p90",
    "latency_p95",
    "latency_p99",
    "latency_p999",
    "latency_total_p50",
    "latency_total_p90",
    "latency_total_p95",
    "latency_total_p99",
    "latency_total_p999",
];

/// The builtin metric a policy name in [`METRIC_NAMES`] stands for.
fn builtin_metric(id: &str) -> BuiltinMetric {
    let quantile = |prefix: &str| {
        let suffix = id.strip_prefix(prefix)?;
        QUANTILES
            .iter()
            .find(|(s, _)| *s == suffix)
            .map(|(_, q)| *q)
    };
    if let Some(q) = quantile("latency_total_") {
        BuiltinMetric::LatencyTotal(q)
    } else if let Some(q) = quantile("latency_") {
        BuiltinMetric::Latency(q)
    } else {
        BuiltinMetric::ErrorRate
    }
}

/// The threshold judge: absolute and relative limits. A metric passes an interval when
/// every limit it sets holds. The limits are on the side its [`Direction`] gets worse:
/// `max` for lower-is-better metrics, `min` for higher-is-better ones.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Threshold {
    /// Upper limit in the metric's unit (a fraction for rates, milliseconds for latency).
    pub max: Option<f64>,
    /// Upper limit on canary / stable.
    pub max_ratio_to_stable: Option<f64>,
    /// Lower limit in the metric's unit.
    pub min: Option<f64>,
    /// Lower limit on canary / stable.
    pub min_ratio_to_stable: Option<f64>,
}

impl Threshold {
    /// Whether an absolute limit (`max` or `min`) is set: it can judge a canary with no
    /// stable to compare with.
    pub fn absolute(&self) -> bool {
        self.max.is_some() || self.min.is_some()
    }

    /// Whether a ratio limit is set.
    pub fn relative(&self) -> bool {
        self.max_ratio_to_stable.is_some() || self.min_ratio_to_stable.is_some()
    }
}

const UPPER_LIMITS: [&str; 2] = ["max", "max_ratio_to_stable"];
const LOWER_LIMITS: [&str; 2] = ["min", "min_ratio_to_stable"];
const LIMITS: [&str; 4] = ["max", "max_ratio_to_stable", "min", "min_ratio_to_stable"];

pub(super) fn decode_analysis(cx: &mut Decoder, node: &Node, path: &str) -> Option<Analysis> {
    let m = cx.map(
        node,
        path,
        &[
            "interval",
            "min_samples",
            "failure_limit",
            "failure_count",
            "inconclusive",
            "no_data",
            "metrics",
            "fail_score",
            "prometheus",
            "load",
            "datadog",
            "newrelic",
            "cloudwatch",
        ],
    )?;
    let prometheus = m.optional_with(cx, "prometheus", decode_base_url);
    let datadog = m.optional_with(cx, "datadog", decode_datadog);
    let newrelic = m.optional_with(cx, "newrelic", decode_newrelic);
    let load = m.optional_with(cx, "load", decode_load);
    let cloudwatch = m.optional_with(cx, "cloudwatch", decode_cloudwatch);
    let written_interval = positive(cx, &m, "interval", HOUR);
    // A refused interval is not checked against anything else (its stand-in would
    // only add errors about a value nobody wrote).
    let interval_refused = m.get("interval").is_some() && written_interval.is_none();
    let interval = written_interval.unwrap_or(Duration::from_secs(10));
    if interval < Duration::from_millis(100) {
        cx.error(
            m.get("interval").map_or(m.pos(), |n| n.pos),
            &m.path_of("interval"),
            format!(
                "{} is too short to measure anything; use at least 100ms",
                format_duration(interval)
            ),
        );
    }
    let min_samples = m.optional::<u64>(cx, "min_samples").unwrap_or(50);
    let failure_limit = limit(cx, &m, "failure_limit").unwrap_or(2);
    let failure_count = m
        .optional_with(cx, "failure_count", decode_failure_count)
        .unwrap_or_default();
    let inconclusive = m
        .optional_with(cx, "inconclusive", decode_escalation)
        .unwrap_or(Escalation {
            limit: 10,
            action: EscalationAction::Halt,
        });
    let no_data = m
        .optional_with(cx, "no_data", decode_escalation)
        .unwrap_or(Escalation {
            limit: 5,
            action: EscalationAction::Halt,
        });
    let metrics = m.required_with(cx, "metrics", |cx, n, p| {
        let mut metrics = cx.seq(n, p, |cx, n, p| decode_metric(cx, n, p, min_samples, failure_limit))?;
        // A metric without its own `failure_count` takes the analysis's.
        if let NodeKind::Seq(items) = &n.kind {
            for (metric, item) in metrics.iter_mut().zip(items) {
                let own = matches!(&item.kind, NodeKind::Map(e) if e.iter().any(|(k, _)| k.text == "failure_count"));
                if !own {
                    metric.failure_count = failure_count;
                }
            }
        }
        if metrics.is_empty() {
            cx.error(n.pos, p, "list at least one metric; a canary nobody measures cannot fail, so it proves nothing");
            return None;
        }
        if let NodeKind::Seq(items) = &n.kind {
            for (i, metric) in metrics.iter().enumerate() {
                // A metric's name is how every reading, notice and dashboard calls it.
                if metric.name.trim().is_empty() {
                    let at = match &items[i].kind {
                        NodeKind::Map(e) => e.iter().find(|(k, _)| k.text == "name").map_or(items[i].pos, |(_, v)| v.pos),
                        _ => items[i].pos,
                    };
                    cx.refuse_new(at, &format!("{p}[{i}].name"), "a metric's name cannot be empty; name it (readings, notices and the dashboard call it by that name), or leave `name` out for a builtin metric");
                }
                if metrics[..i].iter().any(|m| m.name == metric.name) {
                    cx.error(
                        items[i].pos,
                        &format!("{p}[{i}].name"),
                        format!("metric name `{}` is used twice; give each metric its own name", metric.name),
                    );
                }
            }
        }
        Some(metrics)
    });
    let fail_score = m.optional::<f64>(cx, "fail_score").unwrap_or(1.0);
    if fail_score <= 0.0 {
        cx.error(
            m.get("fail_score").map_or(m.pos(), |n| n.pos),
            &m.path_of("fail_score"),
            "must be above 0, or every interval would fail",
        );
    }
    let metrics = metrics?;
    // Non-critical metrics fail the release only once their weights reach
    // `fail_score`: if every metric is one and all of them together stay under it,
    // nothing the canary does can ever fail it.
    let weights: f64 = metrics.iter().map(|x| x.weight).sum();
    if fail_score > 0.0
        && !metrics.is_empty()
        && !metrics.iter().any(|x| x.critical)
        && weights < fail_score
    {
        let (pos, field) = match m.get("fail_score") {
            Some(n) => (n.pos, m.path_of("fail_score")),
            None => (
                m.get("metrics").map_or(m.pos(), |n| n.pos),
                m.path_of("metrics"),
            ),
        };
        cx.error(
            pos,
            &field,
            format!(
                "no metric can fail the release: none is critical, and their weights add up to {weights} even when all of them fail, under `fail_score` {fail_score}; make one `critical: true`, raise their `weight`s, or lower `fail_score`"
            ),
        );
    }
    let reads = |source: &QuerySource| {
        metrics
            .iter()
            .position(|x| x.query.as_ref().is_some_and(|q| &q.source == source))
    };
    let datadog = match (datadog, reads(&QuerySource::Datadog)) {
        (None, Some(_)) if m.get("datadog").is_none() => Some(DatadogSpec::default()),
        (d, _) => d,
    };
    if m.get("newrelic").is_none()
        && let Some(i) = reads(&QuerySource::NewRelic)
    {
        cx.error(
            m.pos(),
            &format!("{}.metrics[{i}].source", m.path()),
            "a `newrelic` metric needs the account its NRQL runs in: set `analysis.newrelic: {account_id: N}` (the key comes from NEW_RELIC_API_KEY)",
        );
    }
    if m.get("cloudwatch").is_none()
        && let Some(i) = reads(&QuerySource::CloudWatch)
    {
        cx.error(
            m.pos(),
            &format!("{}.metrics[{i}].source", m.path()),
            "a `cloudwatch` metric needs the region to ask: set `analysis.cloudwatch: {region: us-east-1}` (credentials come from the AWS environment variables or the shared credentials file)",
        );
    }
    if let (Some(cw), Some(i)) = (&cloudwatch, reads(&QuerySource::CloudWatch)) {
        whole_periods(cx, &m, interval, cw.alignment(), &metrics[i].name);
        search_periods_match(cx, &m, &metrics, cw.alignment());
        if !interval_refused && interval >= Duration::from_millis(100) {
            blind_start(cx, &m, cw, interval, &metrics, (&no_data, &inconclusive));
        }
    }
    if prometheus.is_none()
        && m.get("prometheus").is_none()
        && let Some(i) = reads(&QuerySource::Prometheus)
    {
        cx.error(
            m.pos(),
            &format!("{}.metrics[{i}].source", m.path()),
            "a `prometheus` metric needs the server to ask: set `analysis.prometheus: http://HOST:9090`",
        );
    }
    Some(Analysis {
        interval,
        inconclusive,
        no_data,
        metrics,
        fail_score,
        prometheus,
        datadog,
        newrelic,
        cloudwatch,
        load,
    })
}

/// Refuses an `interval` that is not a whole number of CloudWatch `period`s, at the
/// line of the setting written (the interval, else the period, else the
/// `cloudwatch` block). CloudWatch answers in whole periods, so each interval reads
/// its window rounded to them: only an interval of whole periods reads every
/// datapoint once. Otherwise several intervals read the same datapoint (CloudWatch
/// rounds the start down to the period's boundary), and the sequential judge, which
/// adds each interval's events to the last, counts the same events again.
fn whole_periods(
    cx: &mut Decoder,
    m: &MapReader<'_>,
    interval: Duration,
    period: u32,
    metric: &str,
) {
    let period_ms = u128::from(period) * 1000;
    if interval.as_millis().is_multiple_of(period_ms) {
        return;
    }
    let written_period = m.get("cloudwatch").and_then(|n| n.field("period"));
    let (at, path) = match (m.get("interval"), written_period) {
        (Some(n), _) => (n.pos, m.path_of("interval")),
        (None, Some(n)) => (n.pos, join(&m.path_of("cloudwatch"), "period")),
        (None, None) => (
            m.get("cloudwatch").map_or(m.pos(), |n| n.pos),
            m.path_of("interval"),
        ),
    };
    let seconds = u64::from(period);
    let next = Duration::from_secs(seconds * (interval.as_secs() / seconds + 1));
    cx.error(
        at,
        &path,
        format!(
            "metric `{metric}` reads CloudWatch, which rounds a window's start down to a whole period ({}s here; a minute for 1 s periods): with an interval of {} some datapoints would be read in more than one interval and their events counted again; make `interval` a whole number of periods (like {}), or `cloudwatch.period` a divisor of the interval",
            period,
            format_duration(interval),
            format_duration(next),
        ),
    );
}

/// Refuses a `cloudwatch.delay` that would halt (or roll back) the release before its
/// first verdict, at the delay's line (the block's, when it is the default).
///
/// Read `delay` behind, the release's first windows end before the canary had
/// traffic. A window's end is also rounded down to the alignment, so at worst every
/// window ending within `delay` plus one alignment of the start is blind:
/// `ceil((delay + alignment) / interval) - 1` of them. With nothing but CloudWatch to
/// judge each is no data; with other metrics each is inconclusive (a metric without
/// data never lets an interval pass). Either streak reaching its limit ends the
/// release before anything was judged.
fn blind_start(
    cx: &mut Decoder,
    m: &MapReader<'_>,
    cw: &CloudWatchSpec,
    interval: Duration,
    metrics: &[MetricSpec],
    (no_data, inconclusive): (&Escalation, &Escalation),
) {
    let only_cloudwatch = metrics.iter().all(|x| {
        x.query
            .as_ref()
            .is_some_and(|q| q.source == QuerySource::CloudWatch)
    });
    let (limit, key, counted) = if only_cloudwatch {
        (no_data, "no_data", "no data")
    } else {
        (
            inconclusive,
            "inconclusive",
            "inconclusive (a metric without data lets no interval pass)",
        )
    };
    let reach = cw.delay.as_millis() + u128::from(cw.alignment()) * 1000;
    let blind = reach
        .div_ceil(interval.as_millis().max(1))
        .saturating_sub(1);
    if cw.delay.is_zero() || blind < u128::from(limit.limit) {
        return;
    }
    cx.error(
        m.get("cloudwatch").map_or(m.pos(), |n| n.pos_of("delay")),
        &join(&m.path_of("cloudwatch"), "delay"),
        format!(
            "CloudWatch is read {} behind, so up to the release's first {blind} intervals of {} read only time before the canary had traffic, each {counted}, and `{key}.limit` ({}) would {} the release before its first verdict: shorten `delay`, lengthen `interval`, or raise `{key}.limit` above {blind}",
            format_duration(cw.delay),
            format_duration(interval),
            limit.limit,
            match limit.action {
                EscalationAction::Halt => "halt",
                EscalationAction::Rollback => "roll back",
            }
        ),
    );
}

/// Refuses a `SEARCH(...)` in a CloudWatch metric whose period does not divide the
/// boundary windows are aligned to (`cloudwatch.period`, a minute for 1 s periods),
/// at the query's line. CloudWatch rounds a window's start down to the search's own
/// period: a longer one (or one that does not divide it) would reach back into the
/// window before, and several intervals would read its datapoints.
fn search_periods_match(
    cx: &mut Decoder,
    m: &MapReader<'_>,
    metrics: &[MetricSpec],
    alignment: u32,
) {
    let items = match m.get("metrics").map(|n| &n.kind) {
        Some(NodeKind::Seq(items)) => items.as_slice(),
        _ => &[],
    };
    for (i, metric) in metrics.iter().enumerate() {
        let Some(q) = metric
            .query
            .as_ref()
            .filter(|q| q.source == QuerySource::CloudWatch)
        else {
            continue;
        };
        let samples_key = if q.counts { "total" } else { "samples" };
        let texts = [
            (q.field(metric.direction), Some(&q.query)),
            (samples_key, q.samples.as_ref()),
        ];
        for (key, text) in texts {
            let Some(text) = text else { continue };
            let Some(other) = super::providers::search_periods(text)
                .into_iter()
                .find(|&p| !cloudwatch_period(p) || u64::from(alignment) % p != 0)
            else {
                continue;
            };
            let at = items.get(i).map_or(m.pos(), |n| n.pos_of(key));
            cx.error(
                at,
                &format!("{}.metrics[{i}].{key}", m.path()),
                format!("this SEARCH asks for {other}s periods, which CloudWatch does not serve (1, 5, 10, 20, 30 or a multiple of 60) or which do not divide the {alignment}s windows are aligned to (`cloudwatch.period`): CloudWatch would round each window's start down to the search's period, reading some datapoints in more than one interval; write {alignment} (or a period that divides it) in the SEARCH, or set `cloudwatch.period` to match"),
            );
        }
    }
}

fn decode_load(cx: &mut Decoder, node: &Node, path: &str) -> Option<Load> {
    let m = cx.map(node, path, &["rate", "paths", "headers", "counts", "url"])?;
    let rate = m.required::<u64>(cx, "rate");
    if let Some(r) = rate
        && !(1..=10_000).contains(&r)
    {
        cx.error(
            m.get("rate").map_or(m.pos(), |n| n.pos),
            &m.path_of("rate"),
            format!("{r} requests per second: use 1 to 10000"),
        );
    }
    let paths = m
        .optional_with(cx, "paths", |cx, n, p| {
            cx.seq(n, p, |cx, n, p| {
                let path = String::decode(cx, n, p)?;
                if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace()) {
                    cx.error(
                        n.pos,
                        p,
                        format!(
                            "`{path}` is not a request path: start it with `/`, without spaces"
                        ),
                    );
                    return None;
                }
                // What no request line can carry (the HTTP client refuses it, and the
                // load would send nothing): a control character, `<`, `>`, `#`, or a
                // backtick before the query.
                let query_at = path.find('?').unwrap_or(path.len());
                if let Some((_, c)) = path
                    .char_indices()
                    .find(|(i, c)| !uri_char(*c, *i >= query_at))
                {
                    let encoded: String = c
                        .encode_utf8(&mut [0; 4])
                        .bytes()
                        .map(|b| format!("%{b:02X}"))
                        .collect();
                    cx.error(
                        n.pos,
                        p,
                        format!(
                            "`{path}` holds `{}`, which a request path cannot carry as it is: percent-encode it (`{encoded}`)",
                            c.escape_debug()
                        ),
                    );
                    return None;
                }
                Some(path)
            })
        })
        .unwrap_or_else(|| vec!["/".into()]);
    if paths.is_empty() {
        cx.error(
            m.get("paths").map_or(m.pos(), |n| n.pos),
            &m.path_of("paths"),
            "list at least one path, or leave `paths` out for `/`",
        );
    }
    let headers = m
        .optional_with(cx, "headers", |cx, n, p| {
            let NodeKind::Map(entries) = &n.kind else {
                cx.error(n.pos, p, format!("expected a mapping of header names to values, found {}", n.type_name()));
                return None;
            };
            let mut out = Vec::new();
            for (k, v) in entries {
                let name = k.text.to_ascii_lowercase();
                let token = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                let value = String::decode(cx, v, &join(p, &k.text))?;
                if !token || name == LOAD_HEADER {
                    cx.error(
                        k.pos,
                        &join(p, &k.text),
                        format!("`{}` cannot be a header rampart sends (a header name, not `{LOAD_HEADER}`, which marks the load itself)", k.text),
                    );
                } else if value.bytes().any(|b| b == b'\r' || b == b'\n') {
                    cx.error(v.pos, &join(p, &k.text), "a header value cannot hold a line break");
                } else if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
                    cx.error(v.pos, &join(p, &k.text), "a header value cannot hold a control character");
                } else {
                    out.push((name, value));
                }
            }
            Some(out)
        })
        .unwrap_or_default();
    let counts = m.optional::<bool>(cx, "counts").unwrap_or(true);
    let url = m.optional_with(cx, "url", decode_base_url);
    Some(Load {
        rate: u32::try_from(rate?).ok()?,
        paths,
        headers,
        counts,
        url,
    })
}

fn decode_escalation(cx: &mut Decoder, node: &Node, path: &str) -> Option<Escalation> {
    let m = cx.map(node, path, &["limit", "action"])?;
    let limit = limit(cx, &m, "limit");
    let action = m.optional_with(cx, "action", |cx, n, p| {
        one_of(cx, n, p, &["halt", "rollback"])
    });
    Some(Escalation {
        limit: limit.unwrap_or(5),
        action: match action {
            Some("rollback") => EscalationAction::Rollback,
            _ => EscalationAction::Halt,
        },
    })
}

fn decode_metric(
    cx: &mut Decoder,
    node: &Node,
    path: &str,
    default_min_samples: u64,
    default_failure_limit: u32,
) -> Option<MetricSpec> {
    let m = cx.map(
        node,
        path,
        &[
            "name",
            "source",
            "metric",
            "judge",
            "direction",
            "min_samples",
            "failure_limit",
            "failure_count",
            "critical",
            "weight",
            "query",
            "range",
            "samples",
            "bad",
            "good",
            "total",
            "value",
            "url",
            "headers",
            "command",
            "buckets",
            "unit",
        ],
    )?;
    let source = match m.get("source") {
        Some(n) => one_of(cx, n, &m.path_of("source"), SOURCES),
        None => Some("builtin"),
    };
    match source {
        Some("builtin") => {}
        Some(source) => {
            let spec =
                decode_query_metric(cx, &m, source, default_min_samples, default_failure_limit)?;
            compares_both_sides(cx, &m, &spec);
            return Some(spec);
        }
        None => return None,
    }
    for key in m.present(&QUERY_FIELDS) {
        cx.error(
            m.pos(),
            &m.path_of(key),
            format!(
                "`{key}` belongs to metrics read from a provider (`source: prometheus`, `datadog`, `newrelic`, `cloudwatch`, `http`, `command`)"
            ),
        );
    }
    let metric = m.required_with(cx, "metric", |cx, n, p| {
        one_of(cx, n, p, METRIC_NAMES).map(builtin_metric)
    });
    decode_builtin_judged(cx, &m, metric, default_min_samples, default_failure_limit)
}

/// Refuses a judge that compares the canary with stable (the sequential judge, a
/// ratio to stable) on a query that reads the same value for both: one that names
/// neither `{variant}` nor `{version}` (see [`QuerySpec::per_variant`]). Each side
/// would read the other's errors as its own, and the comparison could never find the
/// canary worse: a canary failing half its requests would pass.
fn compares_both_sides(cx: &mut Decoder, m: &MapReader<'_>, spec: &MetricSpec) {
    let Some(query) = &spec.query else {
        return;
    };
    let Some(compares) = spec.judge.comparison() else {
        return;
    };
    if query.per_variant() {
        return;
    }
    // A count whose events name the variant and whose total does not.
    let events_named = query.counts
        && !matches!(query.source, QuerySource::Http(_))
        && (query.query.contains("{variant}") || query.query.contains("{version}"));
    let key = if events_named {
        "total"
    } else {
        query.field(spec.direction)
    };
    cx.error(
        m.get(key).map_or(m.pos(), |n| n.pos),
        &m.path_of(key),
        format!("{compares} compares the canary with stable, but this query names neither `{{variant}}` nor `{{version}}`, so both read the same value and the canary could never be found worse: select each variant's series with `{{variant}}` (or `{{version}}`), or judge the canary alone with `max`/`min`"),
    );
}

/// A builtin metric's name, scoring, direction (always lower is better) and judge:
/// what a builtin metric and one read from Prometheus buckets share. `query: None`.
fn decode_builtin_judged(
    cx: &mut Decoder,
    m: &MapReader<'_>,
    metric: Option<BuiltinMetric>,
    default_min_samples: u64,
    default_failure_limit: u32,
) -> Option<MetricSpec> {
    let name = m
        .optional::<String>(cx, "name")
        .or_else(|| metric.map(|k| k.id()));
    let min_samples = m
        .optional::<u64>(cx, "min_samples")
        .unwrap_or(default_min_samples);
    let (failure_limit, failure_count, critical, weight) =
        decode_scoring(cx, m, default_failure_limit);
    let declared = m.optional_with(cx, "direction", decode_direction);
    let metric = metric?;
    // Errors and latency only get worse as they rise.
    let why = format!("`{}` gets worse as it rises", metric.id());
    if declared == Some(Direction::HigherIsBetter) {
        cx.error(
            m.get("direction").map_or(m.pos(), |n| n.pos),
            &m.path_of("direction"),
            format!("{why}: it is `lower_is_better`"),
        );
    }
    let fixed = Some((Direction::LowerIsBetter, why));
    let (judge, direction) = m.required_with(cx, "judge", |cx, n, p| {
        decode_judge(cx, n, p, metric, fixed)
    })?;
    Some(MetricSpec {
        name: name?,
        metric,
        judge,
        min_samples,
        failure_limit,
        failure_count,
        critical,
        weight,
        direction,
        query: None,
    })
}

/// The fields of metrics read from a provider, which builtin metrics refuse.
const QUERY_FIELDS: [&str; 12] = [
    "query", "range", "samples", "bad", "good", "total", "value", "url", "headers", "command",
    "buckets", "unit",
];

fn decode_failure_count(cx: &mut Decoder, n: &Node, p: &str) -> Option<FailureCount> {
    Some(match one_of(cx, n, p, &["consecutive", "total"])? {
        "total" => FailureCount::Total,
        _ => FailureCount::Consecutive,
    })
}

/// `failure_limit`, `failure_count`, `critical` and `weight`, with their defaults (a
/// metric without its own `failure_count` gets the analysis's afterwards).
fn decode_scoring(
    cx: &mut Decoder,
    m: &MapReader<'_>,
    default_failure_limit: u32,
) -> (u32, FailureCount, bool, f64) {
    let failure_limit = limit(cx, m, "failure_limit").unwrap_or(default_failure_limit);
    let failure_count = m
        .optional_with(cx, "failure_count", decode_failure_count)
        .unwrap_or_default();
    let critical = m.optional::<bool>(cx, "critical").unwrap_or(true);
    let weight = m.optional::<f64>(cx, "weight").unwrap_or(1.0);
    if weight < 0.0 {
        cx.error(
            m.get("weight").map_or(m.pos(), |n| n.pos),
            &m.path_of("weight"),
            "a weight cannot be negative",
        );
    }
    (failure_limit, failure_count, critical, weight)
}

fn decode_direction(cx: &mut Decoder, n: &Node, p: &str) -> Option<Direction> {
    Some(
        match one_of(cx, n, p, &["lower_is_better", "higher_is_better"])? {
            "higher_is_better" => Direction::HigherIsBetter,
            _ => Direction::LowerIsBetter,
        },
    )
}

/// A metric read from a provider: a named query judged by thresholds, or a pair of
/// counts (`bad` or `good` events out of a `total`) any judge can run on. For `http`
/// and `command`, the metric holds the fetch and its texts are JSON paths.
fn decode_query_metric(
    cx: &mut Decoder,
    m: &MapReader<'_>,
    source_id: &'static str,
    default_min_samples: u64,
    default_failure_limit: u32,
) -> Option<MetricSpec> {
    if source_id == "prometheus" && !m.present(&["metric", "buckets", "unit"]).is_empty() {
        return decode_bucket_metric(cx, m, default_min_samples, default_failure_limit);
    }
    for key in m.present(&["buckets", "unit"]) {
        cx.error(
            m.get(key).map_or(m.pos(), |n| n.pos),
            &m.path_of(key),
            format!("`{key}` reads latency from Prometheus histogram buckets: it belongs to `source: prometheus`, not `source: {source_id}`"),
        );
    }
    if m.get("metric").is_some() {
        cx.error(
            m.pos(),
            &m.path_of("metric"),
            format!("a `{source_id}` metric is its `query` (or its `bad` or `good` count); `metric` names builtin measurements"),
        );
    }
    let source = decode_source(cx, m, source_id);
    let fetches = matches!(source_id, "http" | "command");
    // What a text is: a query the provider runs, or a JSON path into the fetched
    // document; the plain value's field is named after it.
    let text = if fetches {
        decode_value_path
    } else {
        decode_query
    };
    let value_key = if fetches { "value" } else { "query" };
    if fetches && let Some(n) = m.get("query") {
        cx.error(
            n.pos,
            &m.path_of("query"),
            format!("a `{source_id}` metric has no query: it fetches one document, and `value` is the JSON path of its number (like `$.data.value`)"),
        );
    }
    let name = m.required::<String>(cx, "name");
    let declared = m.optional_with(cx, "direction", decode_direction);
    let events = m.present(&["bad", "good"]);
    let (query, samples, metric, fixed) = match events.first() {
        None => {
            if m.get("total").is_some() {
                cx.error(
                    m.get("total").map_or(m.pos(), |n| n.pos),
                    &m.path_of("total"),
                    format!("`total` is what `bad` or `good` events are counted out of; a `{value_key}` counts its requests with `samples`"),
                );
            }
            let query = if fetches {
                // A document that is one number is its own value.
                Some(
                    m.optional_with(cx, "value", text)
                        .unwrap_or_else(|| "$".into()),
                )
            } else {
                m.required_with(cx, "query", text)
            };
            let samples = m.optional_with(cx, "samples", text);
            let fixed = declared.map(|d| (d, format!("the metric is `direction: {}`", d.id())));
            (query, samples, BuiltinMetric::Query, fixed)
        }
        Some(&key) => {
            if events.len() > 1 {
                cx.error(
                    m.get("good").map_or(m.pos(), |n| n.pos),
                    &m.path_of("good"),
                    "count either `bad` events (lower is better) or `good` ones (higher is better), not both",
                );
            }
            for other in m.present(&["query", "value", "samples", "range"]) {
                cx.error(
                    m.get(other).map_or(m.pos(), |n| n.pos),
                    &m.path_of(other),
                    format!("`{other}` belongs to a `{value_key}` value; a counts metric is `{key}` events out of `total`, read at the interval's end"),
                );
            }
            let direction = match key {
                "good" => Direction::HigherIsBetter,
                _ => Direction::LowerIsBetter,
            };
            if declared.is_some_and(|d| d != direction) {
                cx.error(
                    m.get("direction").map_or(m.pos(), |n| n.pos),
                    &m.path_of("direction"),
                    format!(
                        "counting `{key}` events makes the metric `{}`; drop `direction`, or count the other kind",
                        direction.id()
                    ),
                );
            }
            let query = m.required_with(cx, key, text);
            let total = m.required_with(cx, "total", text);
            let why = format!("a `{key}` count is {}", direction.label());
            (query, total, BuiltinMetric::Counts, Some((direction, why)))
        }
    };
    let range = m.optional::<bool>(cx, "range").unwrap_or(false);
    let min_samples = m.optional::<u64>(cx, "min_samples");
    if min_samples.is_some() && m.get("samples").is_none() && events.is_empty() {
        let example = if fetches {
            "the JSON path of the variant's request count, like `$.requests`"
        } else {
            "the query that counts a variant's requests in the interval (for example `sum(increase(http_requests_total{track=\"{variant}\"}[{interval}]))`)"
        };
        cx.error(
            m.get("min_samples").map_or(m.pos(), |n| n.pos),
            &m.path_of("min_samples"),
            format!("a `{source_id}` metric's floor needs `samples`, {example}"),
        );
    }
    let min_samples = match samples {
        Some(_) => min_samples.unwrap_or(default_min_samples),
        None => 0,
    };
    let (failure_limit, failure_count, critical, weight) =
        decode_scoring(cx, m, default_failure_limit);
    let judge = m.required_with(cx, "judge", |cx, n, p| {
        let sequential = matches!(&n.kind, NodeKind::Scalar { .. })
            || matches!(&n.kind, NodeKind::Map(e) if e.iter().any(|(k, _)| k.text == "sequential"));
        if sequential && metric == BuiltinMetric::Query {
            cx.error(
                n.pos,
                p,
                "a query's value is judged by thresholds (`max`, `min` and their ratios to stable); the sequential judge needs counts: `bad` or `good` events out of a `total`",
            );
            return None;
        }
        decode_judge(cx, n, p, metric, fixed)
    });
    let (judge, direction) = judge?;
    Some(MetricSpec {
        name: name?,
        metric,
        judge,
        min_samples,
        failure_limit,
        failure_count,
        critical,
        weight,
        direction,
        query: Some(QuerySpec {
            source: source?,
            query: query?,
            range,
            samples,
            counts: metric == BuiltinMetric::Counts,
            buckets: None,
        }),
    })
}

/// A latency metric read from Prometheus histogram buckets: `metric: latency_pXX` (or
/// `latency_total_pXX`) with `buckets`, the query giving one series per `le` bound,
/// and `unit`, the bounds' unit. Judged like the builtin metric of that name, on the
/// histograms read.
fn decode_bucket_metric(
    cx: &mut Decoder,
    m: &MapReader<'_>,
    default_min_samples: u64,
    default_failure_limit: u32,
) -> Option<MetricSpec> {
    for key in m.present(&[
        "query", "bad", "good", "total", "samples", "range", "value", "url", "headers", "command",
    ]) {
        cx.error(
            m.get(key).map_or(m.pos(), |n| n.pos),
            &m.path_of(key),
            format!("`{key}` does not belong to a Prometheus latency metric: it is its `buckets` query alone (one series per `le`, whose total is its request count)"),
        );
    }
    let metric = match m.get("metric") {
        Some(n) => {
            let p = m.path_of("metric");
            one_of(cx, n, &p, METRIC_NAMES).map(builtin_metric).and_then(|b| {
                if b.latency().is_none() {
                    cx.error(
                        n.pos,
                        &p,
                        format!("`buckets` are a latency histogram; `{}` is not a latency: name `latency_p99` (or another `latency_pXX` or `latency_total_pXX`)", b.id()),
                    );
                    return None;
                }
                Some(b)
            })
        }
        None => {
            cx.error(
                m.get("buckets").map_or(m.pos(), |n| n.pos),
                &m.path_of("metric"),
                "`buckets` are a latency histogram: name the quantile judged with `metric: latency_p99` (or another `latency_pXX` or `latency_total_pXX`)",
            );
            None
        }
    };
    let buckets = match m.get("buckets") {
        Some(n) => decode_query(cx, n, &m.path_of("buckets")),
        None => {
            cx.error(
                m.get("metric").map_or(m.pos(), |n| n.pos),
                &m.path_of("buckets"),
                "a `prometheus` latency metric is read from histogram buckets: add `buckets`, a query with one series per `le`, like `sum by (le) (increase(http_request_duration_seconds_bucket{service=\"{service}\",track=\"{variant}\"}[{interval}]))`",
            );
            None
        }
    };
    let unit = m
        .optional_with(cx, "unit", |cx, n, p| {
            one_of(cx, n, p, &["seconds", "milliseconds"])
        })
        .map_or(BucketUnit::Seconds, |u| match u {
            "milliseconds" => BucketUnit::Milliseconds,
            _ => BucketUnit::Seconds,
        });
    let spec = decode_builtin_judged(cx, m, metric, default_min_samples, default_failure_limit)?;
    Some(MetricSpec {
        query: Some(QuerySpec {
            source: QuerySource::Prometheus,
            query: buckets?,
            range: false,
            samples: None,
            counts: false,
            buckets: Some(unit),
        }),
        ..spec
    })
}

/// The provider, with the fields only one source has (`url` and `headers` for
/// `http`, `command` for `command`) refused on the others.
fn decode_source(cx: &mut Decoder, m: &MapReader<'_>, source_id: &str) -> Option<QuerySource> {
    let own: &[&str] = match source_id {
        "http" => &["url", "headers"],
        "command" => &["command"],
        _ => &[],
    };
    for key in m.present(&["url", "headers", "command", "value"]) {
        let fetch_field = key == "value" && matches!(source_id, "http" | "command");
        if !own.contains(&key) && !fetch_field {
            let owner = match key {
                "command" => "`source: command`",
                "value" => "`source: http` and `source: command` (a JSON path)",
                _ => "`source: http`",
            };
            cx.error(
                m.get(key).map_or(m.pos(), |n| n.pos),
                &m.path_of(key),
                format!("`{key}` belongs to {owner}, not `source: {source_id}`"),
            );
        }
    }
    if own.is_empty() {
        return Some(match source_id {
            "datadog" => QuerySource::Datadog,
            "newrelic" => QuerySource::NewRelic,
            "cloudwatch" => QuerySource::CloudWatch,
            _ => QuerySource::Prometheus,
        });
    }
    if m.get("range").is_some() {
        cx.error(
            m.get("range").map_or(m.pos(), |n| n.pos),
            &m.path_of("range"),
            format!("a `{source_id}` metric is one document per variant and interval; `range` belongs to query sources"),
        );
    }
    match source_id {
        "http" => {
            let url = m.required_with(cx, "url", decode_url_template);
            let headers = m
                .optional_with(cx, "headers", decode_headers)
                .unwrap_or_default();
            Some(QuerySource::Http(HttpFetch { url: url?, headers }))
        }
        _ => m
            .required_with(cx, "command", decode_command)
            .map(QuerySource::Command),
    }
}

fn decode_query(cx: &mut Decoder, n: &Node, p: &str) -> Option<String> {
    let q = scalar(cx, n, p, "a query")?;
    if q.trim().is_empty() {
        cx.error(n.pos, p, "the query is empty");
        return None;
    }
    Some(q.to_string())
}

const JUDGES: &[&str] = &["sequential", "threshold"];

/// A metric's direction as its kind fixes it, with why (for the errors that refuse a
/// limit on the other side); `None` when its limits say it.
type Fixed = Option<(Direction, String)>;

/// `judge: sequential`, `judge: {sequential: {alpha, tolerance}}`,
/// `judge: {threshold: {max, max_ratio_to_stable, min, min_ratio_to_stable}}` or, for
/// short, the limits alone. Returns the judge and the metric's direction.
fn decode_judge(
    cx: &mut Decoder,
    node: &Node,
    path: &str,
    metric: BuiltinMetric,
    fixed: Fixed,
) -> Option<(Judge, Direction)> {
    let default_tolerance = match metric {
        BuiltinMetric::ErrorRate | BuiltinMetric::Query | BuiltinMetric::Counts => 1.0,
        BuiltinMetric::Latency(_) | BuiltinMetric::LatencyTotal(_) => 1.25,
    };
    let direction = fixed.as_ref().map_or(Direction::LowerIsBetter, |f| f.0);
    let default = Judge::Sequential(Sequential {
        alpha: DEFAULT_ALPHA,
        tolerance: default_tolerance,
    });
    if let NodeKind::Scalar { .. } = node.kind {
        return one_of(cx, node, path, &["sequential"]).map(|_| (default, direction));
    }
    let NodeKind::Map(entries) = &node.kind else {
        cx.error(
            node.pos,
            path,
            format!(
                "expected `sequential` or a mapping, found {}",
                node.type_name()
            ),
        );
        return None;
    };
    let named = entries
        .iter()
        .find(|(k, _)| JUDGES.contains(&k.text.as_str()));
    match named {
        Some((key, inner)) if entries.len() == 1 && key.text == "threshold" => {
            decode_threshold(cx, inner, &join(path, "threshold"), metric, fixed)
                .map(|(t, d)| (Judge::Threshold(t), d))
        }
        Some((key, inner)) if entries.len() == 1 => {
            if inner.kind == NodeKind::Null {
                return Some((default, direction));
            }
            let m = cx.map(inner, &join(path, &key.text), &["alpha", "tolerance"])?;
            let alpha = m.optional::<f64>(cx, "alpha").unwrap_or(DEFAULT_ALPHA);
            if !(alpha > 0.0 && alpha < 0.5) {
                cx.error(
                    m.get("alpha").map_or(m.pos(), |n| n.pos),
                    &m.path_of("alpha"),
                    format!("alpha {alpha} is not a useful false-alarm bound; use a probability above 0 and below 0.5, such as 0.01"),
                );
            }
            let tolerance = m
                .optional::<f64>(cx, "tolerance")
                .unwrap_or(default_tolerance);
            if tolerance < 1.0 {
                cx.error(
                    m.get("tolerance").map_or(m.pos(), |n| n.pos),
                    &m.path_of("tolerance"),
                    format!("tolerance {tolerance} is below 1: it would fail canaries that are better than stable"),
                );
            }
            Some((
                Judge::Sequential(Sequential { alpha, tolerance }),
                direction,
            ))
        }
        Some(_) => {
            cx.error(
                node.pos,
                path,
                "choose one judge: `sequential` or `threshold`, without other fields",
            );
            None
        }
        None => {
            decode_threshold(cx, node, path, metric, fixed).map(|(t, d)| (Judge::Threshold(t), d))
        }
    }
}

/// The limits, and the direction they are on. A limit on the side where the metric
/// gets better (`min` on an error rate) is refused at its line: it would fail a canary
/// for being better.
fn decode_threshold(
    cx: &mut Decoder,
    node: &Node,
    path: &str,
    metric: BuiltinMetric,
    fixed: Fixed,
) -> Option<(Threshold, Direction)> {
    let m = cx.map(node, path, &LIMITS)?;
    let bound = |cx: &mut Decoder, key: &str| match metric {
        BuiltinMetric::ErrorRate | BuiltinMetric::Counts => {
            m.optional::<Rate>(cx, key).map(|r| r.0)
        }
        BuiltinMetric::Latency(_) | BuiltinMetric::LatencyTotal(_) => m
            .optional::<Duration>(cx, key)
            .map(|d| d.as_secs_f64() * 1000.0),
        BuiltinMetric::Query => m.optional::<f64>(cx, key),
    };
    let ratio = |cx: &mut Decoder, key: &str, example: &str| {
        let r = m.optional::<f64>(cx, key)?;
        if r <= 0.0 {
            cx.error(
                m.get(key).map_or(m.pos(), |n| n.pos),
                &m.path_of(key),
                format!("{r} is not a useful ratio; use a number above 0, such as {example}"),
            );
        }
        Some(r)
    };
    let t = Threshold {
        max: bound(cx, "max"),
        max_ratio_to_stable: ratio(
            cx,
            "max_ratio_to_stable",
            "1.5 (canary may be 50 % worse than stable)",
        ),
        min: bound(cx, "min"),
        min_ratio_to_stable: ratio(
            cx,
            "min_ratio_to_stable",
            "0.9 (canary may be 10 % lower than stable)",
        ),
    };
    // The latency histograms count every request slower than their range in their
    // last bucket: a limit within it could never be broken.
    if let (BuiltinMetric::Latency(_) | BuiltinMetric::LatencyTotal(_), Some(max)) = (metric, t.max)
    {
        let top = crate::metrics::measured_up_to_ms();
        if max > top {
            cx.refuse_new(
                m.get("max").map_or(m.pos(), |n| n.pos),
                &m.path_of("max"),
                format!(
                    "latency is measured up to {:.0}s (every slower request counts as that long), so a `max` of {:.0}s could never be broken; use a lower `max`",
                    top / 1000.0,
                    max / 1000.0
                ),
            );
        }
    }
    let upper = m.present(&UPPER_LIMITS);
    let lower = m.present(&LOWER_LIMITS);
    // A limit written with no value (a template that rendered to nothing) bounds
    // nothing: said at its line, not read as absent.
    let mut empty = false;
    for key in UPPER_LIMITS.iter().chain(&LOWER_LIMITS) {
        if let Some(n) = m.get(key).filter(|n| n.kind == NodeKind::Null) {
            cx.refuse_new(
                n.pos,
                &m.path_of(key),
                format!("`{key}` has no value; give a limit, or leave `{key}` out"),
            );
            empty = true;
        }
    }
    if upper.is_empty() && lower.is_empty() && !empty {
        cx.error(
            m.pos(),
            path,
            "the judge sets no limit; give `max` or `max_ratio_to_stable` (lower is better), or `min` or `min_ratio_to_stable` (higher is better)",
        );
    }
    let (direction, why) = match fixed {
        Some(f) => f,
        None if lower.is_empty() => return Some((t, Direction::LowerIsBetter)),
        None if upper.is_empty() => return Some((t, Direction::HigherIsBetter)),
        None => (
            Direction::LowerIsBetter,
            format!(
                "`{}` bounds a lower-is-better metric and `{}` a higher-is-better one; a metric has one direction (set `direction` to say which)",
                upper[0], lower[0]
            ),
        ),
    };
    let (wrong, right) = match direction {
        Direction::LowerIsBetter => (&lower, &UPPER_LIMITS),
        Direction::HigherIsBetter => (&upper, &LOWER_LIMITS),
    };
    for key in wrong.iter() {
        let instead = if key.contains("ratio") {
            right[1]
        } else {
            right[0]
        };
        cx.error(
            m.get(key).map_or(m.pos(), |n| n.pos),
            &m.path_of(key),
            format!(
                "{why}: `{key}` would fail a canary for being better; limit it with `{instead}`"
            ),
        );
    }
    Some((t, direction))
}

/// Whether a request target may carry `c` as it is (in its query when `query`): what
/// the HTTP client sends, which is more than RFC 3986 allows (`[`, `]`, `|`, `{`, `}`,
/// `"`, `^`, `\\` and UTF-8 letters, common in real paths and queries), and not a
/// control character, `<`, `>`, `#` (a fragment is never sent), or a backtick
/// outside the query.
fn uri_char(c: char, query: bool) -> bool {
    !(c.is_control() || c == ' ' || c == '<' || c == '>' || c == '#' || (c == '`' && !query))
}
