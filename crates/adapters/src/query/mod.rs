//! Metrics providers: the policy's query metrics read from Prometheus, Datadog, New
//! Relic, CloudWatch, an HTTP endpoint or a command, beside the builtin measurements.
//!
//! Owns the one seam every provider plugs into ([`QueryProvider`]: one variant's
//! value, and its request count, over a window), the source that mixes them
//! ([`WithQueries`]), and what all providers share: placeholder substitution, secrets
//! read from the environment ([`Secret`]), JSON paths, and HTTP exchanges that back off
//! on 429 ([`fetch`]).
//!
//! Guarantees:
//! - Every way a read can go wrong (no answer, 401/403, 429 past the interval's
//!   budget, an empty series, NaN, a command that fails) is a missing value with a
//!   detail: no data to the judges, never a pass.
//! - A secret's value never appears in a detail, an error, a log line or a `Debug`
//!   print: details name the environment variable, and anything a provider echoes
//!   is scrubbed of every secret the provider holds.
//! - A rate-limited provider is asked again only after its `Retry-After`, at most
//!   [`fetch::ATTEMPTS`] times, and never past what is left of the interval. The wait
//!   is remembered: no other read (another metric, the other variant, the next
//!   measurement, the pre-release check) sends to that server before it is over.
//!
//! It must not judge (core's judges do) nor decide anything about the release.

pub mod aws_credentials;
pub mod cloudwatch;
pub mod command;
pub mod datadog;
pub mod fetch;
pub mod http_json;
pub mod newrelic;
pub mod sigv4;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_core::Millis;
use rampart_core::metrics::{Histogram, IntervalSample, QueryReading};
use rampart_core::policy::{Analysis, QuerySource, QuerySpec, ValuePath};
use rampart_core::ports::{BoxFuture, Clock, MetricsSource, PortError};
use rampart_core::release::{GateResult, MeasureWindow};
use serde_json::Value;

/// Reads a query metric's numbers for one variant from one provider.
///
/// Assumptions: `spec.source` is this provider's (the [`WithQueries`] routing
/// guarantees it). Implementations wait out rate limits within `ask.budget`.
pub trait QueryProvider: Send + Sync + std::fmt::Debug {
    /// The metric's value (`spec.query`) for `ask`'s variant, and its request count
    /// (`spec.samples`) when the metric has one.
    fn read<'a>(&'a self, spec: &'a QuerySpec, ask: &'a Ask) -> BoxFuture<'a, Reading>;

    /// Whether the provider can read at all, checked before anything is deployed:
    /// `Err` says why not (a missing key, rejected credentials).
    fn check(&self) -> BoxFuture<'_, Result<String, ReadError>>;

    /// The secrets it holds, and every one it held and replaced since, for whatever
    /// else must keep them out of what it shows: a `command` metric's program
    /// inherits rampart's environment, and its output is scrubbed of them.
    fn secrets(&self) -> Vec<Secret> {
        Vec::new()
    }
}

/// One variant's numbers, or why each is missing.
#[derive(Debug)]
pub struct Reading {
    /// The value (or the `bad`/`good` count).
    pub value: Result<f64, ReadError>,
    /// The request count (or the `total`); `None` when the metric has none.
    pub samples: Option<Result<f64, ReadError>>,
    /// A latency metric's histogram read from Prometheus buckets (then `value` is its
    /// total); `None` for every other metric.
    pub histogram: Option<Result<Histogram, ReadError>>,
}

impl Reading {
    /// Every number `spec` asks for, missing for `why`.
    pub fn missing(spec: &QuerySpec, why: impl Fn() -> ReadError) -> Reading {
        Reading {
            value: Err(why()),
            samples: spec.samples.as_ref().map(|_| Err(why())),
            histogram: spec.buckets.map(|_| Err(why())),
        }
    }
}

/// What a read is about: one variant over one window.
#[derive(Debug)]
pub struct Ask {
    /// The service.
    pub service: String,
    /// `stable` or `canary`.
    pub variant: &'static str,
    /// The variant's version (empty for a stable that has none).
    pub version: String,
    /// The window's start, ms since the Unix epoch.
    pub from: Millis,
    /// The window's end, ms since the Unix epoch.
    pub to: Millis,
    /// What `{interval}` reads back from `to`: the window's length in whole seconds
    /// (the analysis interval, unless a restart shortened the window or a slow
    /// measurement lengthened it).
    pub interval: Duration,
    /// How long rate limits may still be waited out in this measurement.
    pub budget: Arc<Budget>,
}

impl Ask {
    /// `text` with its placeholders filled; `escape` transforms each value first (a
    /// URL percent-encodes them).
    pub fn fill(&self, text: &str, escape: impl Fn(&str) -> String) -> String {
        text.replace("{service}", &escape(&self.service))
            .replace("{variant}", &escape(self.variant))
            .replace("{version}", &escape(&self.version))
            .replace("{interval}", &escape(&prom_duration(self.interval)))
            .replace("{from}", &escape(&(self.from / 1000).to_string()))
            .replace("{to}", &escape(&(self.to / 1000).to_string()))
    }
}

/// Waiting time shared by every read of one measurement: what is left of the
/// interval. Rate limits are waited out of it, never beyond.
#[derive(Debug)]
pub struct Budget(Mutex<Duration>);

impl Budget {
    /// A budget of `d`.
    pub fn new(d: Duration) -> Budget {
        Budget(Mutex::new(d))
    }

    /// Takes `d` out of the budget if it is all there.
    pub fn take(&self, d: Duration) -> bool {
        let Ok(mut left) = self.0.lock() else {
            return false;
        };
        match left.checked_sub(d) {
            Some(rest) => {
                *left = rest;
                true
            }
            None => false,
        }
    }

    /// What is left.
    pub fn left(&self) -> Duration {
        self.0.lock().map(|d| *d).unwrap_or_default()
    }
}

/// A secret read from the environment (or a credentials file). It prints as the
/// variable's name, never its value.
#[derive(Clone)]
pub struct Secret {
    /// The environment variable it came from (or the file's key, `aws_secret_access_key`).
    pub var: String,
    value: String,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(${}, redacted)", self.var)
    }
}

impl Secret {
    /// The variable `var` from `env`, or why not (unset or empty).
    pub fn from_env(var: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, ReadError> {
        match env(var) {
            Some(value) if !value.is_empty() => Ok(Secret {
                var: var.to_string(),
                value,
            }),
            _ => Err(ReadError::MissingSecret(var.to_string())),
        }
    }

    /// A secret read from a file under the key `key`, which names it wherever it
    /// would show; `None` when the value is empty.
    pub fn from_file(key: &str, value: String) -> Option<Secret> {
        (!value.is_empty()).then(|| Secret {
            var: key.to_string(),
            value,
        })
    }

    /// The value, for the one place it is sent.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// `text` with this secret's value replaced by its variable's name: as it is, and
    /// as JSON writes it in a string (a server echoing a header in its error, a value
    /// printed back as JSON), with `/` escaped too (as PHP's `json_encode` does).
    pub fn scrub(&self, text: &str) -> String {
        if self.value.is_empty() {
            return text.to_string();
        }
        let escaped = serde_json::to_string(&self.value)
            .map(|q| q[1..q.len() - 1].to_string())
            .unwrap_or_default();
        let mut forms = vec![escaped.replace('/', "\\/"), escaped, self.value.clone()];
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        forms.dedup();
        let name = format!("<${}>", self.var);
        forms
            .iter()
            .filter(|f| !f.is_empty())
            .fold(text.to_string(), |t, f| t.replace(f.as_str(), &name))
    }
}

/// The process environment, as [`Secret::from_env`] reads it.
pub fn process_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// `text` with every one of `secrets` replaced by its variable's name.
pub fn scrub(text: &str, secrets: &[&Secret]) -> String {
    // The longest first: a secret holding a shorter one (a tenant name inside a
    // token) would otherwise no longer match once the shorter one was replaced, and
    // most of it would show.
    let mut longest_first = secrets.to_vec();
    longest_first.sort_by_key(|s| std::cmp::Reverse(s.value.len()));
    longest_first
        .iter()
        .fold(text.to_string(), |t, s| s.scrub(&t))
}

/// What a provider or a program said, fit for a detail: scrubbed of `secrets`, then
/// [`short`]ened (in that order: a secret cut at the end would not match).
pub fn said(text: &str, secrets: &[&Secret]) -> String {
    short(&scrub(text, secrets))
}

impl ReadError {
    /// Whether the source refused the question itself (credentials, a query it cannot
    /// parse, a path or account that does not exist) or cannot be reached at all (no
    /// connection, no TLS session), as opposed to having no data or no answer for
    /// now: what a trial read before the release must not let through.
    pub fn is_misconfiguration(&self) -> bool {
        self.refuses_every_question()
            || matches!(
                self,
                ReadError::Refused { .. }
                    // A success that is not JSON (a UI's page, a login page) and a
                    // redirect (rampart follows none: it would carry the headers'
                    // secrets elsewhere) answer every read the same way.
                    | ReadError::NotJson(_)
                    | ReadError::Status {
                        status: 300..=399 | 400 | 404 | 405 | 422,
                        ..
                    }
            )
    }

    /// Whether no question could get an answer: the credentials are missing or
    /// refused, or the source cannot be reached.
    pub fn refuses_every_question(&self) -> bool {
        matches!(
            self,
            ReadError::MissingSecret(_) | ReadError::Auth { .. } | ReadError::Unreachable(_)
        )
    }
}

/// The version a trial read before the release fills `{version}` with: the versions
/// are not known yet, and an empty one turns a valid query into one its source
/// refuses (a Datadog tag `version:` with no value).
pub const TRIAL_VERSION: &str = "rampart-check";

/// How a series of points becomes one number: counts are summed, a `range` value is
/// the mean, another value the last point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    /// The sum of the points (counts).
    Sum,
    /// Their mean (`range: true`).
    Mean,
    /// The last point.
    Last,
}

impl Reduce {
    /// How `spec`'s value is reduced.
    pub fn of(spec: &QuerySpec) -> Reduce {
        match (spec.counts, spec.range) {
            (true, _) => Reduce::Sum,
            (false, true) => Reduce::Mean,
            (false, false) => Reduce::Last,
        }
    }

    /// `points` as one number; `empty` says why there is none.
    pub fn apply(self, points: &[f64], empty: &str) -> Result<f64, ReadError> {
        let Some(last) = points.last() else {
            return Err(ReadError::Empty(empty.into()));
        };
        let sum: f64 = points.iter().sum();
        Ok(match self {
            Reduce::Sum => sum,
            Reduce::Mean => sum / points.len() as f64,
            Reduce::Last => *last,
        })
    }
}

/// Why a value is missing. The text goes into the reading's detail and the
/// pre-release check, where operators see it; it never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A credential's environment variable is unset or empty.
    #[error("the environment variable {0} is not set (it holds the credential)")]
    MissingSecret(String),
    /// No connection could be made (a name that does not resolve, a connection
    /// refused, a TLS session that failed, a URL that names no server): the text
    /// names the server, never a secret.
    #[error("cannot reach {0}")]
    Unreachable(String),
    /// The request was sent and got no answer (timed out, the connection closed),
    /// scrubbed of secrets.
    #[error("{0}")]
    Unanswered(String),
    /// 401 or 403: the credentials are missing, wrong or lack a permission.
    #[error("{provider} refused the credentials ({status}): {why}")]
    Auth {
        /// The provider.
        provider: &'static str,
        /// 401 or 403.
        status: u16,
        /// What it said, scrubbed of secrets, or what to check.
        why: String,
    },
    /// 429 (or the provider's own throttling answer) for longer than what was left of
    /// the interval, or too many times.
    #[error("{provider} is rate limiting ({status}) {why}; this interval has no data")]
    RateLimited {
        /// The provider.
        provider: &'static str,
        /// 429, or the status the provider throttles with.
        status: u16,
        /// How it went: the Retry-After asked, the attempts made.
        why: String,
    },
    /// Any other status that is not a success.
    #[error("{provider} answered {status}: {why}")]
    Status {
        /// The provider.
        provider: &'static str,
        /// The HTTP status.
        status: u16,
        /// What it said, shortened and scrubbed of secrets.
        why: String,
    },
    /// The source answered that it cannot run the question: New Relic's GraphQL
    /// `errors` (an NRQL syntax error, an account the key cannot see), other than a
    /// time limit or a failure on its side.
    #[error("{provider}: {why}")]
    Refused {
        /// The provider.
        provider: &'static str,
        /// What it said, shortened and scrubbed of secrets.
        why: String,
    },
    /// The answer is not JSON where JSON was expected.
    #[error("{0} answered with something that is not JSON")]
    NotJson(&'static str),
    /// The answer holds no data point: an empty series is no data.
    #[error("empty series: {0}")]
    Empty(String),
    /// Several series where one number per variant is needed.
    #[error("the query returned {0} series; aggregate it to one")]
    ManySeries(usize),
    /// Nothing at the JSON path, and where the path left the answer (a key it lacks,
    /// an item past its end, a null), so that a typo in the path shows.
    #[error("nothing at `{path}` in the answer ({why})")]
    NoValue {
        /// The path asked.
        path: String,
        /// Where it found nothing.
        why: String,
    },
    /// A value that is not a number.
    #[error("`{0}` is not a number")]
    NotANumber(String),
    /// NaN or infinite.
    #[error("the value is {0}")]
    NotFinite(String),
    /// The policy's JSON path does not parse (`rampart validate` refuses it first).
    #[error("{0}")]
    BadPath(String),
    /// A `command` metric's program failed, timed out or could not start.
    #[error("{0}")]
    Command(String),
    /// A provider-specific failure.
    #[error("{0}")]
    Other(String),
}

/// The number at `path` in `doc`: a JSON number, or a string holding one. Never NaN.
/// What the error shows of `doc` is scrubbed of `secrets`: a document can echo what
/// its request carried (a header, an inherited environment variable).
pub fn number_at(doc: &Value, path: &str, secrets: &[&Secret]) -> Result<f64, ReadError> {
    use rampart_core::policy::PathStep;
    let steps = ValuePath::parse(path).map_err(ReadError::BadPath)?;
    let none = |why: String| ReadError::NoValue {
        path: path.to_string(),
        why: said(&why, secrets),
    };
    let mut at = doc;
    let mut so_far = String::from("$");
    for step in &steps.0 {
        let next = match step {
            PathStep::Key(k) => at.get(k),
            PathStep::Index(i) => at.as_array().and_then(|a| {
                let i = if *i < 0 { a.len() as i64 + i } else { *i };
                usize::try_from(i).ok().and_then(|i| a.get(i))
            }),
        };
        let Some(next) = next else {
            return Err(none(match (step, at) {
                (PathStep::Key(k), Value::Object(o)) => {
                    let keys: Vec<String> = o.keys().take(8).map(|k| format!("`{k}`")).collect();
                    let more = if o.len() > keys.len() { ", ..." } else { "" };
                    if keys.is_empty() {
                        format!("`{so_far}` is an empty object, with no `{k}`")
                    } else {
                        format!("`{so_far}` has no `{k}`; it has {}{more}", keys.join(", "))
                    }
                }
                (PathStep::Index(i), Value::Array(a)) => {
                    format!("`{so_far}` has {} items, no [{i}]", a.len())
                }
                (_, other) => format!("`{so_far}` is {}", kind_of(other)),
            }));
        };
        match step {
            PathStep::Key(k) => {
                so_far.push('.');
                so_far.push_str(k);
            }
            PathStep::Index(i) => so_far.push_str(&format!("[{i}]")),
        }
        at = next;
    }
    number(at).ok_or_else(|| match at {
        Value::Null => none("it is null".into()),
        Value::String(s) if s.parse::<f64>().is_ok() => ReadError::NotFinite(said(s, secrets)),
        other => ReadError::NotANumber(said(&other.to_string(), secrets)),
    })
}

/// What a JSON value is, for a message.
fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A finite number from a JSON number or a numeric string.
pub fn number(v: &Value) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    n.is_finite().then_some(n)
}

/// The first 200 characters of `text`, on one line.
pub fn short(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = line.chars().take(200).collect();
    if out.len() < line.len() {
        out.push('…');
    }
    out
}

/// A Prometheus-style duration: whole seconds, or milliseconds below a second.
pub fn prom_duration(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Builtin measurements plus the policy's query metrics, each read by its provider.
pub struct WithQueries {
    builtin: Arc<dyn MetricsSource>,
    service: String,
    interval: Duration,
    queries: Vec<(String, QuerySpec, Arc<dyn QueryProvider>)>,
    providers: Vec<(&'static str, Arc<dyn QueryProvider>)>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for WithQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithQueries")
            .field("providers", &self.providers)
            .field("queries", &self.queries.len())
            .finish_non_exhaustive()
    }
}

impl WithQueries {
    /// Adds `analysis`'s query metrics to `builtin`, each routed to its provider,
    /// with secrets read from `env`. Commands run in `dir` (the policy's directory);
    /// requests signed with the time (CloudWatch's) take it from `clock`.
    /// Building never fails: what cannot work is reported by [`MetricsSource::check`]
    /// before the release moves traffic, and by every reading.
    pub fn new(
        builtin: Arc<dyn MetricsSource>,
        service: &str,
        analysis: &Analysis,
        dir: &std::path::Path,
        env: &dyn Fn(&str) -> Option<String>,
        clock: Arc<dyn Clock>,
    ) -> WithQueries {
        let specs: Vec<&QuerySpec> = analysis
            .metrics
            .iter()
            .filter_map(|m| m.query.as_ref())
            .collect();
        // One provider per kind: a server's settings are the analysis's; a fetch's
        // are on each spec.
        let mut built: Vec<(&'static str, Arc<dyn QueryProvider>)> = Vec::new();
        for spec in &specs {
            let id = spec.source.id();
            if built.iter().any(|(k, _)| *k == id) {
                continue;
            }
            let p: Arc<dyn QueryProvider> = match &spec.source {
                QuerySource::Prometheus => Arc::new(crate::prometheus::Prometheus::new(
                    analysis.prometheus.clone().unwrap_or_default(),
                    clock.clone(),
                )),
                QuerySource::Datadog => Arc::new(datadog::Datadog::new(
                    &analysis.datadog.clone().unwrap_or_default(),
                    env,
                    clock.clone(),
                )),
                QuerySource::NewRelic => match &analysis.newrelic {
                    Some(spec) => Arc::new(newrelic::NewRelic::new(spec, env, clock.clone())),
                    // The policy refuses a `newrelic` metric without its account.
                    None => continue,
                },
                QuerySource::CloudWatch => match &analysis.cloudwatch {
                    Some(spec) => Arc::new(cloudwatch::CloudWatch::new(spec, env, clock.clone())),
                    // The policy refuses a `cloudwatch` metric without its region.
                    None => continue,
                },
                QuerySource::Http(_) => {
                    Arc::new(http_json::HttpJson::new(analysis, env, clock.clone()))
                }
                // Built last, with every other provider's secrets.
                QuerySource::Command(_) => continue,
            };
            built.push((id, p));
        }
        // A program inherits rampart's environment, the other providers' secrets
        // with it: whatever it prints is scrubbed of them.
        if specs
            .iter()
            .any(|s| matches!(s.source, QuerySource::Command(_)))
        {
            let others = built.iter().map(|(_, p)| p.clone()).collect();
            let command = command::Command::new(dir)
                .with_programs(analysis)
                .with_secrets_of(others);
            built.push(("command", Arc::new(command)));
        }
        // In the order the metrics first name them (the checks run in it).
        let mut providers: Vec<(&'static str, Arc<dyn QueryProvider>)> = Vec::new();
        let mut queries = Vec::new();
        for m in &analysis.metrics {
            let Some(spec) = &m.query else { continue };
            let id = spec.source.id();
            let Some((_, provider)) = built.iter().find(|(k, _)| *k == id) else {
                continue;
            };
            if !providers.iter().any(|(k, _)| *k == id) {
                providers.push((id, provider.clone()));
            }
            queries.push((m.name.clone(), spec.clone(), provider.clone()));
        }
        WithQueries {
            builtin,
            service: service.to_string(),
            interval: analysis.interval,
            queries,
            providers,
            clock,
        }
    }

    /// Whether any metric is read from a provider.
    pub fn any(&self) -> bool {
        !self.queries.is_empty()
    }
}

impl MetricsSource for WithQueries {
    /// Every query metric is read for stable, then canary, all within one analysis
    /// interval (a read still unanswered then is missing, and so are the reads after
    /// it: the measurement never runs much past its interval whatever the sources
    /// do); `{version}` is the window's stable (empty without one) or canary version.
    /// Rampart's own counters count from now; queries read their windows' ranges.
    fn open_window(&self, at: Millis) -> BoxFuture<'_, ()> {
        self.builtin.open_window(at)
    }

    fn resume_window(&self, at: Millis) -> BoxFuture<'_, ()> {
        self.builtin.resume_window(at)
    }

    fn measure<'a>(
        &'a self,
        window: &'a MeasureWindow,
    ) -> BoxFuture<'a, Result<IntervalSample, PortError>> {
        Box::pin(async move {
            let mut sample = self.builtin.measure(window).await?;
            let budget = Arc::new(Budget::new(self.interval));
            let stable = window.stable.clone().unwrap_or_default();
            // One deadline for the whole measurement: reads run in turn (a provider
            // sees its requests in order), each with what is left of it.
            let deadline = tokio::time::Instant::now() + self.interval.max(Duration::from_secs(1));
            // `{interval}` is the window, read back from its end (PromQL's
            // `[{interval}]`): never reaching back before it (no time counted twice)
            // nor stopping short of its start (a slow measurement or a late tick
            // lengthens the next window, and its events all count). In whole seconds,
            // rounded down: under a second is no time at all.
            let span = Duration::from_millis(window.to.saturating_sub(window.from));
            let interval = Duration::from_secs(span.as_secs());
            let mut answers: Vec<Option<Reading>> = Vec::new();
            for (_, spec, provider) in &self.queries {
                if interval.is_zero() {
                    // A window with no time in it (a clock behind the last window
                    // read, or less than a second of it): nothing to ask.
                    let empty = || {
                        ReadError::Empty("the window holds no time yet (the clock is behind the last window read)".to_string())
                    };
                    for _ in 0..2 {
                        answers.push(Some(Reading::missing(spec, empty)));
                    }
                    continue;
                }
                for (variant, version) in [("stable", &stable), ("canary", &window.canary)] {
                    let ask = Ask {
                        service: self.service.clone(),
                        variant,
                        version: version.clone(),
                        from: window.from,
                        to: window.to,
                        interval,
                        budget: budget.clone(),
                    };
                    let read = tokio::time::timeout_at(deadline, provider.read(spec, &ask))
                        .await
                        .unwrap_or_else(|_| {
                            Reading::missing(spec, || {
                                ReadError::Other(
                                    "no answer within the analysis interval".to_string(),
                                )
                            })
                        });
                    answers.push(Some(read));
                }
            }
            let mut answers = answers.into_iter();
            for (name, _, _) in &self.queries {
                let mut reading = QueryReading {
                    name: name.clone(),
                    ..QueryReading::default()
                };
                let mut why = Vec::new();
                for variant in ["stable", "canary"] {
                    let Some(read) = answers.next().flatten() else {
                        why.push(format!("{variant}: the read did not finish"));
                        continue;
                    };
                    let stable_side = variant == "stable";
                    // A histogram's total is its request count; its value says no more.
                    if let Some(histogram) = read.histogram {
                        match histogram {
                            Ok(h) => {
                                let n = Some(h.count() as f64);
                                if stable_side {
                                    (reading.stable_histogram, reading.stable_samples) =
                                        (Some(h), n);
                                } else {
                                    (reading.canary_histogram, reading.canary_samples) =
                                        (Some(h), n);
                                }
                            }
                            Err(e) => why.push(format!("{variant}: {e}")),
                        }
                        continue;
                    }
                    match read.value {
                        Ok(v) if stable_side => reading.stable = Some(v),
                        Ok(v) => reading.canary = Some(v),
                        Err(e) => why.push(format!("{variant}: {e}")),
                    }
                    match read.samples {
                        Some(Ok(n)) if stable_side => reading.stable_samples = Some(n),
                        Some(Ok(n)) => reading.canary_samples = Some(n),
                        Some(Err(e)) => why.push(format!("{variant} samples: {e}")),
                        None => {}
                    }
                }
                reading.detail = why.join("; ");
                sample.queries.push(reading);
            }
            Ok(sample)
        })
    }

    /// Each provider's own check, then one trial read of every query metric over the
    /// last interval (stable's side, `{version}` filled with [`TRIAL_VERSION`]): a
    /// query its source refuses (a PromQL or NRQL syntax error, a path or account
    /// that does not exist, credentials it turns down) or a source that cannot be
    /// reached blocks the release before traffic moves. No data, or a source that
    /// does not answer in time, is no reason to block: a quiet service has none yet.
    /// An `http` URL that names `{version}` may well not know the placeholder: only
    /// refused credentials and an unreachable server block it.
    fn check(&self) -> BoxFuture<'_, Vec<GateResult>> {
        Box::pin(async move {
            let mut results = Vec::new();
            for (id, provider) in &self.providers {
                let (ok, detail) = match provider.check().await {
                    Ok(what) => (true, what),
                    Err(e) => (false, e.to_string()),
                };
                results.push(GateResult {
                    name: format!("metrics source {id}"),
                    ok,
                    detail,
                });
            }
            if results.iter().any(|r| !r.ok) {
                return results;
            }
            let now = self.clock.now();
            // One interval for all the trial reads, run at once: a slow source uses
            // up no other's time. No waiting out rate limits.
            let deadline = tokio::time::Instant::now() + self.interval.max(Duration::from_secs(1));
            let no_waits = Arc::new(Budget::new(Duration::ZERO));
            let reads: Vec<_> = self
                .queries
                .iter()
                .map(|(_, spec, provider)| {
                    let ask = Ask {
                        service: self.service.clone(),
                        variant: "stable",
                        version: TRIAL_VERSION.to_string(),
                        from: now.saturating_sub(
                            Millis::try_from(self.interval.as_millis()).unwrap_or(Millis::MAX),
                        ),
                        to: now,
                        interval: self.interval,
                        budget: no_waits.clone(),
                    };
                    let (spec, provider) = (spec.clone(), provider.clone());
                    tokio::spawn(async move {
                        tokio::time::timeout_at(deadline, provider.read(&spec, &ask))
                            .await
                            .ok()
                    })
                })
                .collect();
            for ((name, spec, _), read) in self.queries.iter().zip(reads) {
                let read = match read.await {
                    Ok(Some(read)) => read,
                    // No answer in time is no reason to block.
                    Ok(None) => continue,
                    // A read that died (a bug) proves nothing: it blocks.
                    Err(e) => {
                        results.push(GateResult {
                            name: format!("metric {name}"),
                            ok: false,
                            detail: format!("the trial read did not finish: {e}"),
                        });
                        continue;
                    }
                };
                let histogram = read.histogram.map(|h| h.map(|h| h.count() as f64));
                let refused = [Some(read.value), read.samples, histogram]
                    .into_iter()
                    .flatten()
                    .find_map(|r| r.err().filter(|e| blocks_the_gate(e, spec)));
                if let Some(e) = refused {
                    let how = match e {
                        ReadError::Unreachable(_) => "a trial read failed",
                        _ => "a trial read was refused",
                    };
                    results.push(GateResult {
                        name: format!("metric {name}"),
                        ok: false,
                        detail: format!("{how}: {e}"),
                    });
                }
            }
            results
        })
    }
}

/// Whether a trial read's failure blocks the release. A server asked for a version it
/// does not know (an `http` URL naming `{version}`) may answer 404 or 400: only
/// refused credentials and an unreachable server block it; and where `{version}`
/// is in the URL's host (a service per version), the placeholder's host does not
/// exist, so only refused credentials do.
fn blocks_the_gate(e: &ReadError, spec: &QuerySpec) -> bool {
    let QuerySource::Http(http) = &spec.source else {
        return e.is_misconfiguration();
    };
    let authority = http
        .url
        .split_once("://")
        .map_or(http.url.as_str(), |(_, rest)| rest);
    let host = authority.split(['/', '?', '#']).next().unwrap_or_default();
    if host.contains("{version}") {
        matches!(e, ReadError::MissingSecret(_) | ReadError::Auth { .. })
    } else if http.url.contains("{version}") {
        e.refuses_every_question()
    } else {
        e.is_misconfiguration()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (review): an `http` URL with `{version}` in its host (a service per
    /// version) was tried at `rampart-check`'s host, which never resolves, and the
    /// gate blocked a correct policy as unreachable. Refused credentials still block.
    #[test]
    fn a_version_in_the_host_blocks_the_gate_on_refused_credentials_only() {
        let spec = |url: &str| {
            let p = rampart_core::Policy::from_yaml(&format!(
                "service: shop\ndeploy: {{process: {{command: [x, \"{{port}}\"]}}}}\ntraffic: {{proxy: {{listen: \"127.0.0.1:1\"}}}}\nstrategy: {{canary: {{steps: [{{weight: 10, bake: 1m}}]}}}}\nanalysis:\n  metrics:\n    - {{name: m, source: http, url: '{url}', value: $.v, judge: {{max: 1}}}}\n"
            ))
            .unwrap_or_else(|e| panic!("{e:?}"));
            p.analysis.metrics[0].query.clone().unwrap()
        };
        let unreachable = ReadError::Unreachable("the HTTP source at shop-rampart-check".into());
        let refused = ReadError::Auth {
            provider: "the HTTP source",
            status: 403,
            why: "no".into(),
        };
        let not_found = ReadError::Status {
            provider: "the HTTP source",
            status: 404,
            why: "no such version".into(),
        };
        let in_host = spec("http://shop-{version}.svc:8080/stats");
        assert!(!blocks_the_gate(&unreachable, &in_host));
        assert!(!blocks_the_gate(&not_found, &in_host));
        assert!(blocks_the_gate(&refused, &in_host));
        let in_path = spec("http://stats.svc/{version}/errors");
        assert!(blocks_the_gate(&unreachable, &in_path));
        assert!(!blocks_the_gate(&not_found, &in_path));
        let plain = spec("http://stats.svc/errors?track={variant}");
        assert!(blocks_the_gate(&not_found, &plain));
    }

    #[test]
    fn numbers_at_paths() {
        let doc: Value =
            serde_json::from_str(r#"{"a": {"b": [1, "2.5", null, "NaN", "x", {"c": 3}]}, "n": 7}"#)
                .unwrap();
        assert_eq!(number_at(&doc, "$.n", &[]).ok(), Some(7.0));
        assert_eq!(number_at(&doc, "$.a.b[1]", &[]).ok(), Some(2.5));
        assert_eq!(number_at(&doc, "$.a.b[-1].c", &[]).ok(), Some(3.0));
        assert!(matches!(
            number_at(&doc, "$.a.b[2]", &[]),
            Err(ReadError::NoValue { .. })
        ));
        assert!(matches!(
            number_at(&doc, "$.a.b[3]", &[]),
            Err(ReadError::NotFinite(_))
        ));
        assert!(matches!(
            number_at(&doc, "$.a.b[4]", &[]),
            Err(ReadError::NotANumber(_))
        ));
        assert!(matches!(
            number_at(&doc, "$.a.z", &[]),
            Err(ReadError::NoValue { .. })
        ));
        assert!(matches!(
            number_at(&doc, "$.a.b[9]", &[]),
            Err(ReadError::NoValue { .. })
        ));
        assert_eq!(number_at(&Value::from(4), "$", &[]).ok(), Some(4.0));
    }

    #[test]
    fn a_path_that_finds_nothing_says_where_it_left_the_answer() {
        // A typo in a key shows the keys that are there.
        let doc: Value = serde_json::from_str(
            r#"{"data": {"result": [{"value": [1, "0.5"]}], "status": "ok"}}"#,
        )
        .unwrap();
        let why = |path: &str| number_at(&doc, path, &[]).unwrap_err().to_string();
        assert_eq!(
            why("$.data.reslt[0].value[1]"),
            "nothing at `$.data.reslt[0].value[1]` in the answer (`$.data` has no `reslt`; it has `result`, `status`)"
        );
        assert_eq!(
            why("$.data.result[1].value[1]"),
            "nothing at `$.data.result[1].value[1]` in the answer (`$.data.result` has 1 items, no [1])"
        );
        assert_eq!(
            why("$.data.status.code"),
            "nothing at `$.data.status.code` in the answer (`$.data.status` is a string)"
        );
        // Keys are scrubbed of secrets like any text from the source.
        let secret = Secret {
            var: "API_KEY".into(),
            value: "k3y-s3cr3t".into(),
        };
        let doc: Value = serde_json::from_str(r#"{"k3y-s3cr3t": 1}"#).unwrap();
        let e = number_at(&doc, "$.value", &[&secret])
            .unwrap_err()
            .to_string();
        assert!(!e.contains("k3y-s3cr3t"), "{e}");
    }

    #[test]
    fn placeholders_and_budget() {
        let ask = Ask {
            service: "shop".into(),
            variant: "canary",
            version: "v2+b".into(),
            from: 1_000_500,
            to: 1_030_500,
            interval: Duration::from_secs(30),
            budget: Arc::new(Budget::new(Duration::from_secs(3))),
        };
        assert_eq!(
            ask.fill(
                "{service}/{variant}/{version}/{interval}/{from}/{to}",
                str::to_string
            ),
            "shop/canary/v2+b/30s/1000/1030"
        );
        assert_eq!(ask.fill("{version}", crate::http::encode), "v2%2Bb");
        assert!(ask.budget.take(Duration::from_secs(2)));
        assert!(!ask.budget.take(Duration::from_secs(2)), "only 1s is left");
        assert_eq!(ask.budget.left(), Duration::from_secs(1));
        assert_eq!(prom_duration(Duration::from_millis(1500)), "1500ms");
    }

    /// Regression (review): secrets were replaced in the order given, so a token
    /// holding a shorter secret (`acme` inside `acme-9f8e...`) no longer matched once
    /// the shorter one was replaced, and most of the token showed.
    #[test]
    fn a_secret_holding_a_shorter_one_is_scrubbed_whole() {
        let env = |v: &str| match v {
            "A_TENANT" => Some("acme".to_string()),
            "B_TOKEN" => Some("acme-9f8e7d6c5b4a3921".to_string()),
            _ => None,
        };
        let tenant = Secret::from_env("A_TENANT", &env).unwrap();
        let token = Secret::from_env("B_TOKEN", &env).unwrap();
        for order in [[&tenant, &token], [&token, &tenant]] {
            let said = scrub("Bearer acme-9f8e7d6c5b4a3921 for acme", &order);
            assert_eq!(said, "Bearer <$B_TOKEN> for <$A_TENANT>");
        }
    }

    #[test]
    fn secrets_print_as_their_variable() {
        let env = |v: &str| (v == "K").then(|| "s3cr3t-value".to_string());
        let s = Secret::from_env("K", &env).unwrap();
        assert_eq!(format!("{s:?}"), "Secret($K, redacted)");
        assert_eq!(s.scrub("key s3cr3t-value!"), "key <$K>!");
        let missing = Secret::from_env("NOPE", &env).unwrap_err().to_string();
        assert_eq!(
            missing,
            "the environment variable NOPE is not set (it holds the credential)"
        );
    }
}
