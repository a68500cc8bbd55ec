//! The release policy: what a service's `rampart.yaml` means, decoded and validated.
//!
//! Owns the schema, its defaults and every cross-field rule. Decoding is pure: it takes
//! text and returns either a [`Policy`] or every problem found. It must not read files,
//! the environment or the clock; callers do that and pass the text in.

use std::net::SocketAddr;
use std::time::Duration;

use crate::decode::{Decoder, Diagnostic, MapReader, join, list, one_of, scalar};
use crate::units::{Rate, Weight, format_duration};
use crate::yaml::{self, Node, NodeKind};

/// A validated release policy for one service.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// The service's name: lower-case letters, digits, `-`, `_` and `.`.
    pub service: String,
    /// How a version of the service is run.
    pub deploy: Deploy,
    /// How traffic is split between the stable and the canary version.
    pub traffic: Traffic,
    /// How the new version is exposed.
    pub strategy: Strategy,
    /// Checks that must pass before anything is deployed.
    pub gates: Gates,
    /// How the canary is judged.
    pub analysis: Analysis,
    /// How a failed release is undone.
    pub rollback: Rollback,
    /// Checks after promotion, while the previous version can still take traffic back.
    pub post_release: Option<PostRelease>,
    /// Database migrations the release ships, applied before anything is deployed.
    pub migrations: Option<Migrations>,
    /// Where pages (and, optionally, every notice) go besides the terminal.
    pub notify: Vec<NotifyHook>,
    /// Release windows and calendar freezes.
    pub windows: Option<crate::windows::Windows>,
    /// Feature flags rampart manages: their defaults, allowlists and HTTP endpoint.
    pub flags: Option<FlagsSpec>,
    /// Alertmanager silences held while the release runs.
    pub silences: Option<SilencesSpec>,
}

/// Alerts silenced in Alertmanager during the release, expired when it ends.
#[derive(Clone, Debug, PartialEq)]
pub struct SilencesSpec {
    /// Alertmanager's base URL.
    pub alertmanager: String,
    /// Which alerts: every matcher must match.
    pub matchers: Vec<SilenceMatcher>,
    /// How long a silence lasts before rampart renews it; a silence a crashed rampart
    /// cannot renew lapses after this.
    pub ttl: Duration,
}

/// One Alertmanager matcher.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SilenceMatcher {
    /// The label.
    pub name: String,
    /// The value, or a regular expression with `regex`.
    pub value: String,
    /// Whether `value` is a regular expression.
    #[serde(rename = "isRegex")]
    pub regex: bool,
    /// Matches when equal (true) or when not equal (false).
    #[serde(rename = "isEqual")]
    pub equal: bool,
}

/// The built-in feature-flag store's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct FlagsSpec {
    /// Where applications read flags over HTTP while rampart runs, if anywhere.
    pub listen: Option<std::net::SocketAddr>,
    /// The flags, with their defaults and allowlists.
    pub define: Vec<crate::flags::FlagDef>,
}

/// A notification hook.
#[derive(Clone, Debug, PartialEq)]
pub struct NotifyHook {
    /// Where it goes.
    pub target: NotifyTarget,
    /// Which moments of a release it hears about, by cadence name (`started`, `step`,
    /// `approval`, `rollback`, `halted`, `escalated`, `done`).
    pub on: Vec<&'static str>,
}

impl NotifyHook {
    /// Whether this hook hears about a notice of `kind`.
    pub fn wants(&self, kind: crate::release::NoticeKind) -> bool {
        self.on.contains(&kind.cadence())
    }

    /// Whether it hears about every moment.
    pub fn all(&self) -> bool {
        crate::release::NoticeKind::CADENCE
            .iter()
            .all(|c| self.on.contains(c))
    }
}

/// The cadence names that page a human.
pub const PAGES: [&str; 3] = ["approval", "halted", "escalated"];

/// A secret: written in the policy, or (better) read from an environment variable when
/// rampart runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Secret {
    /// The value itself.
    Value(String),
    /// The name of the environment variable holding it.
    Env(String),
}

/// Where a notification goes.
#[derive(Clone, Debug, PartialEq)]
pub enum NotifyTarget {
    /// A command; the notice is in `RAMPART_MESSAGE` and, as JSON, on stdin.
    Command(Vec<String>),
    /// A URL that receives the notice as a JSON POST, signed when there is a secret.
    Webhook {
        /// Where.
        url: String,
        /// The HMAC-SHA256 key for `X-Rampart-Signature`.
        secret: Option<Secret>,
    },
    /// A Slack incoming webhook.
    Slack {
        /// The incoming webhook URL (a secret: it lets anyone post to the channel).
        url: Secret,
        /// A dashboard to link from every message.
        dashboard: Option<String>,
    },
    /// PagerDuty Events API v2: pages trigger an incident, the outcome resolves it.
    PagerDuty {
        /// The events endpoint.
        url: String,
        /// The integration's routing key.
        routing_key: Secret,
        /// A dashboard to link from the incident.
        dashboard: Option<String>,
    },
}

/// The release's database migrations.
#[derive(Clone, Debug, PartialEq)]
pub struct Migrations {
    /// Directory of the `.sql` files this version ships (`{version}` is substituted),
    /// relative to the policy file. They are classified before anything runs.
    pub dir: String,
    /// The command that applies them; `{file}` runs it once per file, in name order.
    pub command: Vec<String>,
    /// Escalate to a human instead of rolling back the code when the release shipped
    /// `contract` or `irreversible` changes and then fails.
    pub escalate: bool,
    /// Time limit per command.
    pub timeout: Duration,
    /// The approval a breaking (`contract` or `irreversible`) migration needs before it
    /// runs; `None` when the policy says `approval: none`.
    pub approval: Option<Approval>,
}

/// Post-release verification.
#[derive(Clone, Debug, PartialEq)]
pub struct PostRelease {
    /// How long the new version serves all traffic before the checks run.
    pub wait: Duration,
    /// Checks against the new version; `{url}` is its address, a path is on it.
    pub checks: Vec<Gate>,
    /// What a failed check does.
    pub on_failure: PostFailure,
}

/// What a failed post-release check does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostFailure {
    /// Switch back to the previous version, which is still running.
    Rollback,
    /// Stop and page; a human decides.
    Halt,
}

/// How versions run.
#[derive(Clone, Debug, PartialEq)]
pub enum Deploy {
    /// Local processes started by rampart.
    Process(ProcessSpec),
    /// A canary Deployment derived from the service's stable Deployment.
    Kubernetes(KubeDeploySpec),
}

/// The Kubernetes deployer's settings (`deploy.kubernetes`).
#[derive(Clone, Debug, PartialEq)]
pub struct KubeDeploySpec {
    /// The namespace of every object rampart reads and writes.
    pub namespace: String,
    /// The stable Deployment: the template the canary is derived from, and what a
    /// promotion updates.
    pub deployment: String,
    /// The container whose image is the version.
    pub container: String,
    /// The container image, with `{version}` substituted.
    pub image: String,
    /// The canary Deployment's name (`<deployment>-canary` unless given).
    pub canary_name: String,
    /// How long a Deployment gets to become ready.
    pub ready_timeout: Duration,
    /// The kubeconfig context; `None` is the current context, or the in-cluster config.
    pub context: Option<String>,
}

impl KubeDeploySpec {
    /// The image of `version`.
    pub fn image_of(&self, version: &str) -> String {
        self.image.replace("{version}", version)
    }

    /// The version an image runs, when it matches the template.
    pub fn version_of(&self, image: &str) -> Option<String> {
        let (head, tail) = self.image.split_once("{version}")?;
        let v = image.strip_prefix(head)?.strip_suffix(tail)?;
        (!v.is_empty() && self.image_of(v) == image).then(|| v.to_string())
    }
}

/// The local process deployer's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessSpec {
    /// Program and arguments; `{port}` and `{version}` are substituted.
    pub command: Vec<String>,
    /// Extra environment, in file order; values may use `{port}` and `{version}`.
    pub env: Vec<(String, String)>,
    /// Working directory, relative to the policy file.
    pub workdir: Option<String>,
    /// How rampart knows a process is ready for traffic.
    pub readiness: Readiness,
    /// How long a process gets between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// Copies of each version; the proxy balances across a version's copies.
    pub replicas: u32,
}

/// A readiness probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Readiness {
    /// HTTP path probed on the process's port; `None` means a TCP connect.
    pub http: Option<String>,
    /// How long to wait for readiness before the version counts as failed.
    pub timeout: Duration,
    /// Time between probes.
    pub period: Duration,
}

/// How traffic is split.
#[derive(Clone, Debug, PartialEq)]
pub enum Traffic {
    /// The embedded proxy.
    Proxy(ProxySpec),
    /// An nginx rampart renders an include file for, tests and reloads.
    Nginx(NginxSpec),
    /// An HAProxy whose server weights rampart sets through the runtime API.
    Haproxy(HaproxySpec),
    /// Kubernetes objects: replica counts, a Service selector or HTTPRoute weights.
    Kubernetes(KubeTrafficSpec),
}

/// Kubernetes as the traffic router (`traffic.kubernetes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeTrafficSpec {
    /// What moves traffic.
    pub mode: KubeMode,
}

/// How traffic moves between the stable and the canary Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeMode {
    /// One Service selects both Deployments; the share is the canary's share of
    /// `replicas` (so only multiples of `100 / replicas` percent are possible).
    ReplicaRatio {
        /// Replicas of both Deployments together.
        replicas: u32,
    },
    /// Blue-green: the Service selects either the stable or the canary pods.
    ServiceSelector {
        /// The Service whose selector rampart switches.
        service: String,
    },
    /// Gateway API: an HTTPRoute's backendRefs weigh the stable Service against
    /// `<service>-canary`, which rampart creates.
    HttpRoute {
        /// The stable Service, named in the route's backendRefs.
        service: String,
        /// The HTTPRoute.
        route: String,
    },
}

impl KubeMode {
    /// The mode's name in the policy.
    pub fn name(&self) -> &'static str {
        match self {
            KubeMode::ReplicaRatio { .. } => "replica_ratio",
            KubeMode::ServiceSelector { .. } => "service_selector",
            KubeMode::HttpRoute { .. } => "http_route",
        }
    }
}

/// nginx as the traffic router.
#[derive(Clone, Debug, PartialEq)]
pub struct NginxSpec {
    /// Where nginx serves the service (the rendered `server` block listens here).
    pub listen: SocketAddr,
    /// The file rampart owns and rewrites: upstreams, the split, the server block. The
    /// main nginx configuration must include it inside `http {}`.
    pub include: String,
    /// Validates the configuration; a failure leaves the old file in place.
    pub test: Vec<String>,
    /// Makes nginx load the configuration.
    pub reload: Vec<String>,
    /// How a request is pinned to one variant (`split_clients` hashes it).
    pub sticky: Sticky,
    /// nginx's pid file: its workers are watched to know when a change is in force
    /// everywhere and when old requests have drained.
    pub pid: String,
}

/// HAProxy as the traffic router.
#[derive(Clone, Debug, PartialEq)]
pub struct HaproxySpec {
    /// The runtime API socket (`stats socket PATH level admin`).
    pub socket: String,
    /// The backend whose `stable<N>` and `canary<N>` servers (a `server-template` each)
    /// rampart points at the versions and weighs.
    pub backend: String,
    /// Where HAProxy sends its request log (UDP syslog) for rampart to measure, as
    /// `log ADDR local0` with `log-format "rampart-ms %b %s %ST %Ta"`.
    pub log_listen: SocketAddr,
}

/// The embedded proxy's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxySpec {
    /// Where users connect.
    pub listen: SocketAddr,
    /// How a request is pinned to one variant.
    pub sticky: Sticky,
}

/// What keeps one user on one variant while the weight changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sticky {
    /// Every request is assigned on its own.
    None,
    /// The client's IP address.
    ClientIp,
    /// The value of a request header.
    Header(String),
    /// The value of a cookie.
    Cookie(String),
}

/// How the new version is exposed.
#[derive(Clone, Debug, PartialEq)]
pub enum Strategy {
    /// Weighted canary steps.
    Canary(CanarySpec),
    /// Start the new colour beside the old, check it, switch all traffic at once.
    BlueGreen(BlueGreenSpec),
    /// Replace the replicas a batch at a time.
    Rolling(RollingSpec),
    /// Ramp a feature flag in steps, on the version already running: nothing new is
    /// deployed, and the flag-on users are the canary.
    Flag(CanarySpec),
    /// Switch all traffic at once after a human approves, then analyse at 100 %.
    Full(FullSpec),
}

/// An all-at-once release: the switch to 100 % is irreversible in practice (every user
/// sees the new version at once), so it waits for an approval by default.
#[derive(Clone, Debug, PartialEq)]
pub struct FullSpec {
    /// The approval before the switch; `None` only when the policy says `approval: none`.
    pub approval: Option<Approval>,
    /// How long the new version is analysed at 100 % before it counts as promoted.
    pub stability: Duration,
    /// The approval point, then 100 % for `stability`.
    steps: Vec<Step>,
}

/// A rolling release over `deploy.process.replicas` replicas.
#[derive(Clone, Debug, PartialEq)]
pub struct RollingSpec {
    /// Replicas replaced per batch.
    pub batch: u32,
    /// Replicas that may be out of service at once during a batch.
    pub max_unavailable: u32,
    /// Minimum time each batch is analysed before the next.
    pub bake: Duration,
    /// Replicas of each version.
    pub replicas: u32,
    /// One step per batch; the canary share is the new version's share of replicas.
    steps: Vec<Step>,
}

impl RollingSpec {
    fn plan(batch: u32, max_unavailable: u32, bake: Duration, replicas: u32) -> RollingSpec {
        let mut steps = Vec::new();
        let mut k = 0;
        while k < replicas {
            k = (k + batch.max(1)).min(replicas);
            let bp = u64::from(k) * 10_000 / u64::from(replicas.max(1));
            steps.push(Step {
                weight: Weight::from_basis_points(u16::try_from(bp).unwrap_or(10_000))
                    .unwrap_or(Weight::FULL),
                bake,
                matches: Vec::new(),
                approval: None,
            });
        }
        RollingSpec {
            batch,
            max_unavailable,
            bake,
            replicas,
            steps,
        }
    }

    /// New-version replicas in service during step `step`.
    pub fn replicas_at(&self, step: usize) -> u32 {
        (u32::try_from(step + 1)
            .unwrap_or(u32::MAX)
            .saturating_mul(self.batch))
        .min(self.replicas)
    }
}

/// A blue-green release.
#[derive(Clone, Debug, PartialEq)]
pub struct BlueGreenSpec {
    /// Checks against the new colour before any user reaches it.
    pub preview: Vec<Gate>,
    /// How long the new colour is analysed at 100 % before it counts as promoted.
    pub stability: Duration,
    /// How long the previous colour keeps running afterwards, for an instant switch back.
    pub keep_previous: Duration,
    /// The one step this amounts to: 100 % for `stability`.
    steps: Vec<Step>,
}

impl Strategy {
    /// The canary steps.
    pub fn steps(&self) -> &[Step] {
        match self {
            Strategy::Canary(c) | Strategy::Flag(c) => &c.steps,
            Strategy::BlueGreen(b) => &b.steps,
            Strategy::Rolling(r) => &r.steps,
            Strategy::Full(f) => &f.steps,
        }
    }

    /// The feature flag that ramps with the steps' weights, if any.
    pub fn ramped_flag(&self) -> Option<&str> {
        match self {
            Strategy::Canary(c) | Strategy::Flag(c) => c.flag.as_deref(),
            _ => None,
        }
    }

    /// Whether the release only ramps a flag on the running version.
    pub fn flag_only(&self) -> bool {
        matches!(self, Strategy::Flag(_))
    }

    /// The rolling plan, for a rolling release.
    pub fn rolling(&self) -> Option<&RollingSpec> {
        match self {
            Strategy::Rolling(r) => Some(r),
            _ => None,
        }
    }

    /// Checks on the new version before it gets traffic.
    pub fn preview(&self) -> &[Gate] {
        match self {
            Strategy::BlueGreen(b) => &b.preview,
            _ => &[],
        }
    }

    /// How long the previous version keeps running after promotion.
    pub fn keep_previous(&self) -> Duration {
        match self {
            Strategy::BlueGreen(b) => b.keep_previous,
            _ => Duration::ZERO,
        }
    }

    /// `canary` or `blue_green`.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Canary(_) => "canary",
            Strategy::BlueGreen(_) => "blue_green",
            Strategy::Rolling(_) => "rolling",
            Strategy::Flag(_) => "flag",
            Strategy::Full(_) => "full",
        }
    }

    /// The match rules in force during step `step`: its own and every earlier step's.
    pub fn matches_at(&self, step: usize) -> Vec<RouteMatch> {
        let mut out: Vec<RouteMatch> = Vec::new();
        for m in self.steps().iter().take(step + 1).flat_map(|s| &s.matches) {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }
}

/// A canary: a list of weights, each held for a bake time.
#[derive(Clone, Debug, PartialEq)]
pub struct CanarySpec {
    /// Steps in order. Promotion follows the last one.
    pub steps: Vec<Step>,
    /// A feature flag that is on exactly for the canary's users, its ramp following
    /// the weight (required for the `flag` strategy).
    pub flag: Option<String>,
}

/// One canary step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Share of traffic for the canary. A step that only adds a `match` keeps the
    /// previous step's weight (0 for the first step).
    pub weight: Weight,
    /// Minimum time at this weight; the step ends at the first passing analysis after it.
    pub bake: Duration,
    /// Requests that go to the canary whatever the weight, from this step on.
    pub matches: Vec<RouteMatch>,
    /// A human approval point: the release waits here, at the previous weight, until
    /// someone other than its initiator approves.
    pub approval: Option<Approval>,
}

/// An approval point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    /// Who may approve, for people (`release-manager`).
    pub role: String,
    /// How long to wait; without an approval by then, the release rolls back.
    pub timeout: Duration,
}

/// A rule that sends matching requests to the canary, whatever the weight: internal
/// users, beta testers, an allowlist of user ids.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteMatch {
    /// Where the value comes from.
    pub source: MatchSource,
    /// Values that match; empty means "present, with any value".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Where a match rule looks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchSource {
    /// A request header (lower-case name).
    Header(String),
    /// A cookie.
    Cookie(String),
}

/// Pre-release gates.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Gates {
    /// Run before anything is deployed; any failure blocks the release.
    pub pre: Vec<Gate>,
}

/// One gate.
#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    /// A name for logs and the audit trail.
    pub name: String,
    /// What it checks.
    pub check: GateCheck,
}

/// What a gate checks.
#[derive(Clone, Debug, PartialEq)]
pub enum GateCheck {
    /// These environment variables are set and not empty.
    Env(Vec<String>),
    /// An HTTP GET answers with the expected status.
    Http {
        /// `http://` URL.
        url: String,
        /// Expected status; `None` means any 2xx.
        status: Option<u16>,
        /// Time limit for the whole request.
        timeout: Duration,
    },
    /// A command exits with status 0.
    Command {
        /// Program and arguments.
        run: Vec<String>,
        /// Time limit; the command is killed after it.
        timeout: Duration,
    },
}

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
    /// Whether this metric fails the release on its own. A non-critical metric only
    /// adds its `weight` to the failure score.
    pub critical: bool,
    /// This metric's share of the failure score when it is not critical.
    pub weight: f64,
    /// For `source: prometheus`: the PromQL query, read for each variant.
    pub query: Option<QuerySpec>,
}

/// A Prometheus query judged like a builtin metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuerySpec {
    /// PromQL with `{service}`, `{variant}`, `{version}` and `{interval}` placeholders.
    pub query: String,
    /// Read over the analysis interval with a range query and averaged, rather than
    /// as one instant value.
    pub range: bool,
}

/// How a metric is judged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Judge {
    /// Fixed limits, judged interval by interval.
    Threshold(Threshold),
    /// An anytime-valid test of "canary worse than stable".
    Sequential(Sequential),
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
    /// A latency quantile, such as 0.99.
    Latency(f64),
    /// The value of the metric's Prometheus query, in its own unit.
    Query,
}

impl BuiltinMetric {
    /// The metric's policy name.
    pub fn id(&self) -> String {
        match self {
            BuiltinMetric::ErrorRate => "error_rate".into(),
            BuiltinMetric::Latency(q) => LATENCY_METRICS
                .iter()
                .find(|(_, v)| v == q)
                .map(|(n, _)| (*n).to_string())
                .unwrap_or_else(|| format!("latency_q{q}")),
            BuiltinMetric::Query => "query".into(),
        }
    }

    /// Formats a value of this metric for people.
    pub fn format(&self, v: f64) -> String {
        match self {
            BuiltinMetric::ErrorRate => Rate(v).to_string(),
            BuiltinMetric::Latency(_) => format!("{}ms", crate::units::trim_float(v, 1)),
            BuiltinMetric::Query => crate::units::trim_float(v, 4),
        }
    }
}

const LATENCY_METRICS: [(&str, f64); 5] = [
    ("latency_p50", 0.5),
    ("latency_p90", 0.9),
    ("latency_p95", 0.95),
    ("latency_p99", 0.99),
    ("latency_p999", 0.999),
];
const METRIC_NAMES: &[&str] = &[
    "error_rate",
    "latency_p50",
    "latency_p90",
    "latency_p95",
    "latency_p99",
    "latency_p999",
];

/// The threshold judge: absolute and relative limits. A metric passes an interval when
/// every limit it sets holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold {
    /// Upper limit in the metric's unit (a fraction for rates, milliseconds for latency).
    pub max: Option<f64>,
    /// Upper limit on canary / stable.
    pub max_ratio_to_stable: Option<f64>,
}

/// Rollback settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Rollback {
    /// How long in-flight canary requests get to finish after traffic leaves it.
    pub drain: Duration,
    /// How long stable gets to prove healthy after a rollback.
    pub verify_timeout: Duration,
    /// A cap on automatic rollbacks of the service, across releases.
    pub max_automatic: Option<RollbackCap>,
    /// Flags switched off first on any rollback (level 1), besides a ramped flag.
    pub flags: Vec<String>,
}

/// At most `count` automatic rollbacks per `per`; at the cap, a failing release halts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RollbackCap {
    /// Automatic rollbacks allowed in the window.
    pub count: u32,
    /// The window.
    pub per: Duration,
}

/// A policy that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in policy", diagnostics.len())]
pub struct PolicyError {
    /// Every problem found, in file order.
    pub diagnostics: Vec<Diagnostic>,
}

impl Policy {
    /// The flags a rollback switches off first (level 1): the ramped flag, then the
    /// rollback's own list.
    pub fn level_one_flags(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .strategy
            .ramped_flag()
            .map(str::to_string)
            .into_iter()
            .collect();
        for f in &self.rollback.flags {
            if !out.contains(f) {
                out.push(f.clone());
            }
        }
        out
    }

    /// Decodes and validates policy text. Returns every problem found, each with its line,
    /// column and field path.
    pub fn from_yaml(src: &str) -> Result<Policy, PolicyError> {
        let root = yaml::parse(src).map_err(|e| PolicyError {
            diagnostics: vec![Diagnostic::new(
                e.pos,
                "",
                format!("YAML syntax: {}", e.message),
            )],
        })?;
        let mut cx = Decoder::default();
        let policy = decode_policy(&mut cx, &root);
        match policy {
            Some(p) if !cx.has_errors() => Ok(p),
            _ => {
                let mut diagnostics = cx.finish();
                if diagnostics.is_empty() {
                    diagnostics.push(Diagnostic::new(root.pos, "", "policy is incomplete"));
                }
                Err(PolicyError { diagnostics })
            }
        }
    }

    /// The process spec, when local processes run the versions.
    pub fn process(&self) -> Option<&ProcessSpec> {
        match &self.deploy {
            Deploy::Process(p) => Some(p),
            Deploy::Kubernetes(_) => None,
        }
    }

    /// The Kubernetes deployer's and router's specs, when Kubernetes runs the release.
    pub fn kubernetes(&self) -> Option<(&KubeDeploySpec, &KubeTrafficSpec)> {
        match (&self.deploy, &self.traffic) {
            (Deploy::Kubernetes(d), Traffic::Kubernetes(t)) => Some((d, t)),
            _ => None,
        }
    }

    /// The embedded proxy's spec, when the embedded proxy routes traffic.
    pub fn proxy(&self) -> Option<&ProxySpec> {
        match &self.traffic {
            Traffic::Proxy(p) => Some(p),
            _ => None,
        }
    }
}

fn decode_policy(cx: &mut Decoder, root: &Node) -> Option<Policy> {
    if root.kind == NodeKind::Null {
        cx.error(root.pos, "", "the policy is empty; it needs at least `service`, `deploy`, `traffic`, `strategy` and `analysis`");
        return None;
    }
    let m = cx.map(
        root,
        "",
        &[
            "service",
            "deploy",
            "traffic",
            "strategy",
            "gates",
            "analysis",
            "rollback",
            "post_release",
            "migrations",
            "notify",
            "windows",
            "flags",
            "silences",
        ],
    )?;
    let service = m.required_with(cx, "service", decode_service);
    let deploy = m.required_with(cx, "deploy", decode_deploy);
    let traffic = m.required_with(cx, "traffic", decode_traffic);
    let strategy = m.required_with(cx, "strategy", decode_strategy);
    let gates = m
        .optional_with(cx, "gates", decode_gates)
        .unwrap_or_default();
    let analysis = m.required_with(cx, "analysis", decode_analysis);
    let rollback = m
        .optional_with(cx, "rollback", decode_rollback)
        .unwrap_or(Rollback {
            drain: Duration::from_secs(10),
            verify_timeout: Duration::from_secs(30),
            max_automatic: None,
            flags: Vec::new(),
        });
    let post_release = m.optional_with(cx, "post_release", decode_post_release);
    let migrations = m.optional_with(cx, "migrations", decode_migrations);
    let notify = m
        .optional_with(cx, "notify", |cx, n, p| cx.seq(n, p, decode_notify))
        .unwrap_or_default();
    let windows = m.optional_with(cx, "windows", crate::windows::decode);
    let flags = m.optional_with(cx, "flags", decode_flags);
    let silences = m.optional_with(cx, "silences", decode_silences);
    let mut strategy = strategy;
    if let (Some(Strategy::Rolling(r)), Some(Deploy::Process(d))) = (&mut strategy, &deploy) {
        let pos = m.get("strategy").map_or(m.pos(), |n| n.pos);
        if r.batch > d.replicas {
            cx.error(
                pos,
                "strategy.rolling.batch",
                format!(
                    "a batch of {} is more than the {} replica(s) in `deploy.process.replicas`",
                    r.batch, d.replicas
                ),
            );
        }
        if r.max_unavailable >= d.replicas {
            cx.error(
                pos,
                "strategy.rolling.max_unavailable",
                format!(
                    "{} of {} replica(s) unavailable would leave nothing serving",
                    r.max_unavailable, d.replicas
                ),
            );
        }
        *r = RollingSpec::plan(r.batch, r.max_unavailable, r.bake, d.replicas);
    }
    check_flags(
        cx,
        &m,
        strategy.as_ref(),
        traffic.as_ref(),
        flags.as_ref(),
        &rollback,
    );
    if let (Some(Traffic::Haproxy(_)), Some(st)) = (&traffic, &strategy)
        && let Some(i) = st.steps().iter().position(|s| !s.matches.is_empty())
    {
        let pos = m.get("strategy").map_or(m.pos(), |n| n.pos);
        cx.error(
            pos,
            &format!("strategy.{}.steps[{i}].match", st.name()),
            "HAProxy's weights are set at run time without a reload, but match rules are not; use the embedded proxy or nginx for `match` steps",
        );
    }
    if let (Some(Strategy::BlueGreen(_) | Strategy::Full(_)), Some(a)) = (&strategy, &analysis) {
        check_blue_green_metrics(cx, &m, a);
    }
    check_kubernetes(
        cx,
        &m,
        deploy.as_ref(),
        traffic.as_ref(),
        strategy.as_ref(),
        analysis.as_ref(),
    );
    if let Some(Deploy::Kubernetes(_)) = &deploy {
        let preview = strategy.as_ref().map_or(&[][..], Strategy::preview);
        let post = post_release
            .as_ref()
            .map_or(&[][..], |p| p.checks.as_slice());
        for (key, path, checks) in [
            ("strategy", "strategy.blue_green.preview", preview),
            ("post_release", "post_release.checks", post),
        ] {
            for (i, check) in checks.iter().enumerate() {
                if on_the_new_version(check) {
                    cx.error(
                        m.get(key).map_or(m.pos(), |n| n.pos),
                        &format!("{path}[{i}]"),
                        "with `deploy.kubernetes` the new version has no address rampart can reach, so a check on a bare path or `{url}` cannot run; give it an absolute URL (the canary's Service DNS name or an ingress host)",
                    );
                }
            }
        }
    }
    Some(Policy {
        service: service?,
        deploy: deploy?,
        traffic: traffic?,
        strategy: strategy?,
        gates,
        analysis: analysis?,
        rollback,
        post_release,
        migrations,
        notify,
        windows,
        flags,
        silences,
    })
}

fn decode_service(cx: &mut Decoder, node: &Node, path: &str) -> Option<String> {
    let name = scalar(cx, node, path, "a service name")?;
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'));
    if !valid {
        cx.error(
            node.pos,
            path,
            format!("`{name}` is not a valid service name; use 1 to 63 lower-case letters, digits, `-`, `_` or `.`, starting with a letter or digit"),
        );
        return None;
    }
    Some(name.to_string())
}

/// Opens a mapping that must hold exactly one of `kinds` (such as `deploy: {process: ..}`).
fn one_kind<'n>(
    cx: &mut Decoder,
    node: &'n Node,
    path: &str,
    kinds: &'static [&'static str],
) -> Option<(&'static str, &'n Node, String)> {
    let m = cx.map(node, path, kinds)?;
    let present = m.present(kinds);
    match present.as_slice() {
        [one] => m.get(one).map(|n| (*one, n, m.path_of(one))),
        [] => {
            cx.error(node.pos, path, format!("expected one of {}", list(kinds)));
            None
        }
        _ => {
            cx.error(
                node.pos,
                path,
                format!("choose exactly one of {}", list(&present)),
            );
            None
        }
    }
}

fn decode_deploy(cx: &mut Decoder, node: &Node, path: &str) -> Option<Deploy> {
    let (kind, inner, p) = one_kind(cx, node, path, &["process", "kubernetes"])?;
    match kind {
        "kubernetes" => decode_kube_deploy(cx, inner, &p).map(Deploy::Kubernetes),
        _ => decode_process(cx, inner, &p).map(Deploy::Process),
    }
}

fn decode_process(cx: &mut Decoder, node: &Node, path: &str) -> Option<ProcessSpec> {
    let m = cx.map(
        node,
        path,
        &[
            "command",
            "env",
            "workdir",
            "readiness",
            "stop_timeout",
            "replicas",
        ],
    )?;
    let command = m.required_with(cx, "command", decode_argv);
    let env = m.optional_with(cx, "env", decode_env).unwrap_or_default();
    let workdir = m.optional::<String>(cx, "workdir");
    let readiness = m
        .optional_with(cx, "readiness", decode_readiness)
        .unwrap_or(Readiness {
            http: None,
            timeout: Duration::from_secs(30),
            period: Duration::from_millis(250),
        });
    let replicas = m.optional::<u32>(cx, "replicas").unwrap_or(1);
    if replicas == 0 || replicas > 64 {
        cx.error(
            m.get("replicas").map_or(m.pos(), |n| n.pos),
            &m.path_of("replicas"),
            format!("{replicas} replicas: use 1 to 64 copies of each version on this machine"),
        );
    }
    let stop_timeout = m
        .optional::<Duration>(cx, "stop_timeout")
        .unwrap_or(Duration::from_secs(10));
    let command = command?;
    let mentions_port = command.iter().any(|a| a.contains("{port}"))
        || env.iter().any(|(_, v)| v.contains("{port}"));
    if !mentions_port {
        cx.error(
            m.pos(),
            &m.path_of("command"),
            "neither `command` nor `env` mentions `{port}`; rampart picks a free port per version and the process must listen on it (for example `--port {port}` or `env: {PORT: \"{port}\"}`)",
        );
    }
    Some(ProcessSpec {
        command,
        env,
        workdir,
        readiness,
        stop_timeout,
        replicas,
    })
}

fn decode_argv(cx: &mut Decoder, node: &Node, path: &str) -> Option<Vec<String>> {
    let argv: Vec<String> = cx.value(node, path)?;
    if argv.is_empty() || argv[0].trim().is_empty() {
        cx.error(
            node.pos,
            path,
            "the command is empty; give the program and its arguments as a list, like [\"./server\", \"--port\", \"{port}\"]",
        );
        return None;
    }
    Some(argv)
}

fn decode_env(cx: &mut Decoder, node: &Node, path: &str) -> Option<Vec<(String, String)>> {
    let NodeKind::Map(entries) = &node.kind else {
        cx.error(
            node.pos,
            path,
            format!(
                "expected a mapping of NAME: value, found {}",
                node.type_name()
            ),
        );
        return None;
    };
    let mut out = Vec::new();
    for (key, value) in entries {
        let p = join(path, &key.text);
        let valid_name = !key.text.is_empty()
            && !key.text.starts_with(|c: char| c.is_ascii_digit())
            && key
                .text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            cx.error(
                key.pos,
                &p,
                format!(
                    "`{}` is not a valid environment variable name; use letters, digits and `_`",
                    key.text
                ),
            );
            continue;
        }
        if let Some(v) = cx.value::<String>(value, &p) {
            out.push((key.text.clone(), v));
        }
    }
    Some(out)
}

fn decode_readiness(cx: &mut Decoder, node: &Node, path: &str) -> Option<Readiness> {
    let m = cx.map(node, path, &["http", "timeout", "period"])?;
    let http = m.optional::<String>(cx, "http");
    if let Some(p) = &http
        && !p.starts_with('/')
    {
        cx.error(
            m.get("http").map_or(m.pos(), |n| n.pos),
            &m.path_of("http"),
            format!("`{p}` is not a path; the probe is a path on the process's own port, such as /healthz"),
        );
    }
    let timeout = positive(cx, &m, "timeout").unwrap_or(Duration::from_secs(30));
    let period = positive(cx, &m, "period").unwrap_or(Duration::from_millis(250));
    Some(Readiness {
        http,
        timeout,
        period,
    })
}

fn positive(cx: &mut Decoder, m: &MapReader<'_>, key: &str) -> Option<Duration> {
    let d = m.optional::<Duration>(cx, key)?;
    if d.is_zero() {
        cx.error(
            m.get(key).map_or(m.pos(), |n| n.pos),
            &m.path_of(key),
            "must be longer than 0s",
        );
        return None;
    }
    Some(d)
}

fn decode_addr(cx: &mut Decoder, n: &Node, p: &str) -> Option<SocketAddr> {
    let text = scalar(cx, n, p, "an address like 127.0.0.1:8080")?;
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            cx.error(
                n.pos,
                p,
                format!(
                    "`{text}` is not an IP address and port, like 127.0.0.1:8080 or [::1]:8080"
                ),
            );
            None
        }
    }
}

fn decode_traffic(cx: &mut Decoder, node: &Node, path: &str) -> Option<Traffic> {
    let (kind, inner, p) = one_kind(cx, node, path, &["proxy", "nginx", "haproxy", "kubernetes"])?;
    match kind {
        "kubernetes" => decode_kube_traffic(cx, inner, &p).map(Traffic::Kubernetes),
        "nginx" => {
            let m = cx.map(
                inner,
                &p,
                &["listen", "include", "test", "reload", "sticky", "pid"],
            )?;
            let listen = m.required_with(cx, "listen", decode_addr);
            let include = m.required::<String>(cx, "include");
            let test = m
                .optional::<Vec<String>>(cx, "test")
                .unwrap_or_else(|| vec!["nginx".into(), "-t".into()]);
            let reload = m
                .optional::<Vec<String>>(cx, "reload")
                .unwrap_or_else(|| vec!["nginx".into(), "-s".into(), "reload".into()]);
            for (key, cmd) in [("test", &test), ("reload", &reload)] {
                if cmd.is_empty() {
                    cx.error(
                        m.pos(),
                        &m.path_of(key),
                        "a command needs at least a program",
                    );
                }
            }
            let sticky = m
                .optional_with(cx, "sticky", decode_sticky)
                .unwrap_or(Sticky::None);
            let pid = m
                .optional::<String>(cx, "pid")
                .unwrap_or_else(|| "/run/nginx.pid".into());
            Some(Traffic::Nginx(NginxSpec {
                listen: listen?,
                include: include?,
                test,
                reload,
                sticky,
                pid,
            }))
        }
        "haproxy" => {
            let m = cx.map(inner, &p, &["socket", "backend", "log_listen"])?;
            let socket = m.required::<String>(cx, "socket");
            let backend = m.required::<String>(cx, "backend");
            let log_listen = m.required_with(cx, "log_listen", decode_addr);
            Some(Traffic::Haproxy(HaproxySpec {
                socket: socket?,
                backend: backend?,
                log_listen: log_listen?,
            }))
        }
        _ => {
            let m = cx.map(inner, &p, &["listen", "sticky"])?;
            let listen = m.required_with(cx, "listen", decode_addr);
            let sticky = m
                .optional_with(cx, "sticky", decode_sticky)
                .unwrap_or(Sticky::None);
            Some(Traffic::Proxy(ProxySpec {
                listen: listen?,
                sticky,
            }))
        }
    }
}

fn decode_sticky(cx: &mut Decoder, node: &Node, path: &str) -> Option<Sticky> {
    if let NodeKind::Scalar { .. } = node.kind {
        return match one_of(cx, node, path, &["none", "client-ip"])? {
            "client-ip" => Some(Sticky::ClientIp),
            _ => Some(Sticky::None),
        };
    }
    let (kind, inner, p) = one_kind(cx, node, path, &["header", "cookie"])?;
    let name = scalar(cx, inner, &p, "a header or cookie name")?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        cx.error(
            inner.pos,
            &p,
            format!("`{name}` is not a valid {kind} name"),
        );
        return None;
    }
    Some(if kind == "header" {
        Sticky::Header(name.to_ascii_lowercase())
    } else {
        Sticky::Cookie(name.to_string())
    })
}

fn decode_strategy(cx: &mut Decoder, node: &Node, path: &str) -> Option<Strategy> {
    let (kind, inner, p) = one_kind(
        cx,
        node,
        path,
        &["canary", "blue_green", "rolling", "flag", "full"],
    )?;
    if kind == "blue_green" {
        return decode_blue_green(cx, inner, &p);
    }
    if kind == "full" {
        return decode_full(cx, inner, &p);
    }
    if kind == "rolling" {
        let m = cx.map(inner, &p, &["batch", "max_unavailable", "bake"])?;
        let batch = limit(cx, &m, "batch").unwrap_or(1);
        let max_unavailable = m.optional::<u32>(cx, "max_unavailable").unwrap_or(0);
        let bake = m.required::<Duration>(cx, "bake")?;
        // The replica count lives under `deploy`; the plan is made once both are known.
        return Some(Strategy::Rolling(RollingSpec::plan(
            batch,
            max_unavailable,
            bake,
            0,
        )));
    }
    let m = cx.map(inner, &p, &["steps", "flag"])?;
    let flag = if kind == "flag" {
        m.required::<String>(cx, "flag")
    } else {
        m.optional::<String>(cx, "flag")
    };
    let steps = m.required_with(cx, "steps", |cx, n, p| {
        let NodeKind::Seq(items) = &n.kind else {
            cx.error(n.pos, p, format!("expected a list of steps, found {}", n.type_name()));
            return None;
        };
        if items.is_empty() {
            cx.error(n.pos, p, "a canary needs at least one step, like `- {weight: 10, bake: 5m}`");
            return None;
        }
        let raw = cx.seq(n, p, decode_step)?;
        let mut weight = Weight::ZERO;
        let steps: Vec<Step> = raw
            .into_iter()
            .map(|r| {
                weight = r.weight.unwrap_or(weight);
                Step {
                    weight,
                    bake: r.bake,
                    matches: r.matches,
                    approval: r.approval,
                }
            })
            .collect();
        for (i, pair) in steps.windows(2).enumerate() {
            if pair[1].weight < pair[0].weight {
                let node = &items[i + 1];
                cx.error(
                    node.pos,
                    &format!("{p}[{}].weight", i + 1),
                    format!(
                        "weights must not go down: {} comes after {}; a rollback is how traffic leaves a canary",
                        pair[1].weight, pair[0].weight
                    ),
                );
            }
        }
        Some(steps)
    });
    let spec = CanarySpec {
        steps: steps?,
        flag,
    };
    Some(match kind {
        "flag" => Strategy::Flag(spec),
        _ => Strategy::Canary(spec),
    })
}

fn decode_blue_green(cx: &mut Decoder, node: &Node, path: &str) -> Option<Strategy> {
    let m = cx.map(node, path, &["preview", "stability", "keep_previous"])?;
    let preview = m
        .optional_with(cx, "preview", |cx, n, p| {
            cx.seq(n, p, |cx, n, p| decode_check(cx, n, p, true))
        })
        .unwrap_or_default();
    let stability = m.required::<Duration>(cx, "stability");
    let keep_previous = m
        .optional::<Duration>(cx, "keep_previous")
        .unwrap_or(Duration::ZERO);
    let stability = stability?;
    Some(Strategy::BlueGreen(BlueGreenSpec {
        preview,
        stability,
        keep_previous,
        steps: vec![Step {
            weight: Weight::FULL,
            bake: stability,
            matches: Vec::new(),
            approval: None,
        }],
    }))
}

fn decode_full(cx: &mut Decoder, node: &Node, path: &str) -> Option<Strategy> {
    let m = cx.map(node, path, &["stability", "approval"])?;
    let stability = m.required::<Duration>(cx, "stability");
    let approval = match m.get("approval") {
        None => Some(Some(Approval {
            role: "approver".into(),
            timeout: Duration::from_secs(3600),
        })),
        Some(n) if matches!(&n.kind, NodeKind::Scalar { text, .. } if text == "none") => Some(None),
        Some(n) => decode_approval(cx, n, &m.path_of("approval")).map(Some),
    };
    let (stability, approval) = (stability?, approval?);
    let mut steps = Vec::new();
    if let Some(a) = &approval {
        steps.push(Step {
            weight: Weight::ZERO,
            bake: Duration::ZERO,
            matches: Vec::new(),
            approval: Some(a.clone()),
        });
    }
    steps.push(Step {
        weight: Weight::FULL,
        bake: stability,
        matches: Vec::new(),
        approval: None,
    });
    Some(Strategy::Full(FullSpec {
        approval,
        stability,
        steps,
    }))
}

/// An `http://` or `https://` URL with something after the scheme.
fn decode_url(cx: &mut Decoder, n: &Node, p: &str) -> Option<String> {
    let url = scalar(cx, n, p, "an http:// or https:// URL")?;
    let valid = ["http://", "https://"]
        .iter()
        .any(|s| url.strip_prefix(s).is_some_and(|rest| !rest.is_empty()));
    if !valid {
        cx.error(
            n.pos,
            p,
            format!("`{url}` is not an http:// or https:// URL"),
        );
        return None;
    }
    Some(url.to_string())
}

/// A server's base URL: [`decode_url`] without a trailing `/`.
fn decode_base_url(cx: &mut Decoder, n: &Node, p: &str) -> Option<String> {
    decode_url(cx, n, p).map(|u| u.trim_end_matches('/').to_string())
}

fn decode_silences(cx: &mut Decoder, node: &Node, path: &str) -> Option<SilencesSpec> {
    let m = cx.map(node, path, &["alertmanager", "matchers", "ttl"])?;
    let alertmanager = m.required_with(cx, "alertmanager", decode_base_url);
    let matchers = m.required_with(cx, "matchers", |cx, n, p| {
        let list = cx.seq(n, p, |cx, n, p| {
            let mm = cx.map(n, p, &["name", "value", "regex", "equal"])?;
            let name = mm.required::<String>(cx, "name");
            let value = mm.required::<String>(cx, "value");
            Some(SilenceMatcher {
                name: name?,
                value: value?,
                regex: mm.optional::<bool>(cx, "regex").unwrap_or(false),
                equal: mm.optional::<bool>(cx, "equal").unwrap_or(true),
            })
        })?;
        if list.is_empty() {
            cx.error(n.pos, p, "list at least one matcher, such as `{name: service, value: checkout}`; an empty silence would mute everything");
            return None;
        }
        if list.iter().all(|x| !x.equal) {
            cx.error(n.pos, p, "at least one matcher must be an equality (`equal: true`), as Alertmanager requires");
            return None;
        }
        Some(list)
    });
    let ttl = m
        .optional::<Duration>(cx, "ttl")
        .unwrap_or(Duration::from_secs(30 * 60));
    if ttl < Duration::from_secs(60) {
        cx.error(
            m.get("ttl").map_or(m.pos(), |n| n.pos),
            &m.path_of("ttl"),
            "a silence shorter than 1m would lapse between renewals; use at least 1m",
        );
    }
    Some(SilencesSpec {
        alertmanager: alertmanager?,
        matchers: matchers?,
        ttl,
    })
}

fn decode_flags(cx: &mut Decoder, node: &Node, path: &str) -> Option<FlagsSpec> {
    let m = cx.map(node, path, &["listen", "define"])?;
    let listen = m.optional_with(cx, "listen", decode_addr);
    let define = m
        .optional_with(cx, "define", |cx, n, p| {
            cx.seq(n, p, crate::flags::decode_def)
        })
        .unwrap_or_default();
    if let Some(items) = m.get("define").and_then(|n| match &n.kind {
        NodeKind::Seq(items) => Some(items),
        _ => None,
    }) {
        for (i, d) in define.iter().enumerate() {
            if define[..i].iter().any(|e| e.name == d.name) {
                cx.error(
                    items[i].pos,
                    &format!("{path}.define[{i}].name"),
                    format!("flag `{}` is defined twice", d.name),
                );
            }
        }
    }
    Some(FlagsSpec { listen, define })
}

/// Flags named by the strategy and the rollback must be defined, and a ramp needs a
/// sticky key so a user keeps their flag (and their cohort) from request to request.
fn check_flags(
    cx: &mut Decoder,
    root: &MapReader<'_>,
    strategy: Option<&Strategy>,
    traffic: Option<&Traffic>,
    flags: Option<&FlagsSpec>,
    rollback: &Rollback,
) {
    let defined = |name: &str| flags.is_some_and(|f| f.define.iter().any(|d| d.name == name));
    let pos = |key: &str| root.get(key).map_or(root.pos(), |n| n.pos);
    let hint = |name: &str| {
        format!(
            "flag `{name}` is not defined; add it under `flags.define`, like `- {{name: {name}, default: false}}`"
        )
    };
    if let Some(name) = strategy.and_then(Strategy::ramped_flag) {
        let path = format!(
            "strategy.{}.flag",
            strategy.map_or("canary", Strategy::name)
        );
        if !defined(name) {
            cx.error(pos("strategy"), &path, hint(name));
        }
        if let Some(Traffic::Nginx(_) | Traffic::Haproxy(_) | Traffic::Kubernetes(_)) = traffic {
            cx.error(
                pos("traffic"),
                "traffic",
                "a flag ramp needs the embedded proxy (`traffic.proxy`): it hashes users exactly as the flag store does, so the users measured as the canary are the users with the flag on",
            );
        }
        if let Some(Traffic::Proxy(p)) = traffic
            && p.sticky == Sticky::None
        {
            cx.error(
                pos("traffic"),
                "traffic.proxy.sticky",
                "a flag ramp needs a sticky key (`sticky: {header: x-user-id}`, a cookie or `client_ip`): the proxy and the flag endpoint put the same users in the ramp by hashing it",
            );
        }
    }
    for (i, name) in rollback.flags.iter().enumerate() {
        if !defined(name) {
            cx.error(pos("rollback"), &format!("rollback.flags[{i}]"), hint(name));
        }
    }
}

/// After a blue-green switch stable serves nothing, so only absolute limits can judge.
fn check_blue_green_metrics(cx: &mut Decoder, root: &MapReader<'_>, analysis: &Analysis) {
    let items = root
        .get("analysis")
        .and_then(|a| match &a.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.text == "metrics")
                .map(|(_, v)| v),
            _ => None,
        })
        .and_then(|n| match &n.kind {
            NodeKind::Seq(items) => Some(items),
            _ => None,
        });
    for (i, metric) in analysis.metrics.iter().enumerate() {
        let absolute = matches!(
            metric.judge,
            Judge::Threshold(Threshold { max: Some(_), .. })
        );
        if !absolute {
            let pos = items.and_then(|it| it.get(i)).map_or(root.pos(), |n| n.pos);
            cx.error(
                pos,
                &format!("analysis.metrics[{i}].judge"),
                "a blue-green or full release sends stable no traffic after the switch, so there is nothing to compare with; give this metric an absolute `max`",
            );
        }
    }
}

/// A step as written: the weight may be left out when the step adds a `match`.
struct RawStep {
    weight: Option<Weight>,
    bake: Duration,
    matches: Vec<RouteMatch>,
    approval: Option<Approval>,
}

fn decode_step(cx: &mut Decoder, node: &Node, path: &str) -> Option<RawStep> {
    let m = cx.map(node, path, &["weight", "bake", "match", "approval"])?;
    if let Some(n) = m.get("approval") {
        if let Some(extra) = m.present(&["weight", "bake", "match"]).first() {
            cx.error(
                m.pos(),
                &m.path_of(extra),
                "an approval step only waits for a human; put weights and bakes in their own steps",
            );
        }
        let approval = decode_approval(cx, n, &m.path_of("approval"))?;
        return Some(RawStep {
            weight: None,
            bake: Duration::ZERO,
            matches: Vec::new(),
            approval: Some(approval),
        });
    }
    let matches = m
        .optional_with(cx, "match", decode_match)
        .map(|r| vec![r])
        .unwrap_or_default();
    if m.get("match").is_some() && matches.is_empty() {
        return None;
    }
    let weight = if matches.is_empty() {
        m.required::<Weight>(cx, "weight")
    } else {
        m.optional::<Weight>(cx, "weight")
    };
    let bake = m.required::<Duration>(cx, "bake");
    if weight == Some(Weight::ZERO) && matches.is_empty() {
        cx.error(
            m.get("weight").map_or(m.pos(), |n| n.pos),
            &m.path_of("weight"),
            "a step at weight 0 sends the canary no traffic, so it can never be judged; use a weight above 0, or add a `match`",
        );
    }
    Some(RawStep {
        weight,
        bake: bake?,
        matches,
        approval: None,
    })
}

/// `ROLE` or `{role: ROLE, timeout: DURATION}` (24 hours by default).
fn decode_approval(cx: &mut Decoder, n: &Node, p: &str) -> Option<Approval> {
    Some(match &n.kind {
        NodeKind::Scalar { .. } => Approval {
            role: cx.value::<String>(n, p)?,
            timeout: Duration::from_secs(24 * 3600),
        },
        _ => {
            let a = cx.map(n, p, &["role", "timeout"])?;
            let role = a.required::<String>(cx, "role");
            let timeout = positive(cx, &a, "timeout").unwrap_or(Duration::from_secs(24 * 3600));
            Approval {
                role: role?,
                timeout,
            }
        }
    })
}

/// `{header: NAME}`, `{header: NAME, values: [..]}`, or the same with `cookie`.
fn decode_match(cx: &mut Decoder, node: &Node, path: &str) -> Option<RouteMatch> {
    let m = cx.map(node, path, &["header", "cookie", "values"])?;
    let kinds = m.present(&["header", "cookie"]);
    let [kind] = kinds.as_slice() else {
        cx.error(
            m.pos(),
            path,
            "a match looks at one `header` or one `cookie`",
        );
        return None;
    };
    let name: String = m.required(cx, kind)?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        cx.error(
            m.get(kind).map_or(m.pos(), |n| n.pos),
            &m.path_of(kind),
            format!("`{name}` is not a valid {kind} name"),
        );
        return None;
    }
    let values: Vec<String> = m.optional(cx, "values").unwrap_or_default();
    if m.get("values").is_some() && values.is_empty() {
        cx.error(
            m.get("values").map_or(m.pos(), |n| n.pos),
            &m.path_of("values"),
            "list at least one value, or leave `values` out to match any value",
        );
    }
    let source = if *kind == "header" {
        MatchSource::Header(name.to_ascii_lowercase())
    } else {
        MatchSource::Cookie(name)
    };
    Some(RouteMatch { source, values })
}

fn decode_gates(cx: &mut Decoder, node: &Node, path: &str) -> Option<Gates> {
    let m = cx.map(node, path, &["pre"])?;
    let pre = m
        .optional_with(cx, "pre", |cx, n, p| {
            cx.seq(n, p, |cx, n, p| decode_check(cx, n, p, false))
        })
        .unwrap_or_default();
    Some(Gates { pre })
}

const GATE_KINDS: &[&str] = &["env", "http", "command"];

fn decode_notify(cx: &mut Decoder, node: &Node, path: &str) -> Option<NotifyHook> {
    let m = cx.map(
        node,
        path,
        &[
            "command",
            "webhook",
            "slack",
            "pagerduty",
            "on",
            "secret",
            "secret_env",
            "dashboard",
        ],
    )?;
    let kinds = m.present(&["command", "webhook", "slack", "pagerduty"]);
    let [kind] = kinds.as_slice() else {
        cx.error(
            m.pos(),
            path,
            "a hook is one of `command`, `webhook`, `slack` or `pagerduty`",
        );
        return None;
    };
    let secret = |cx: &mut Decoder| -> Option<Secret> {
        match (m.get("secret"), m.get("secret_env")) {
            (Some(_), Some(_)) => {
                cx.error(
                    m.pos(),
                    &m.path_of("secret"),
                    "give `secret` or `secret_env`, not both",
                );
                None
            }
            (Some(_), None) => m.optional::<String>(cx, "secret").map(Secret::Value),
            (None, Some(_)) => m.optional::<String>(cx, "secret_env").map(Secret::Env),
            (None, None) => None,
        }
    };
    let dashboard = m.optional_with(cx, "dashboard", decode_url);
    for key in m.present(&["secret", "secret_env"]) {
        if *kind != "webhook" {
            cx.error(m.pos(), &m.path_of(key), "only a `webhook` hook is signed");
        }
    }
    if m.get("dashboard").is_some() && matches!(*kind, "command" | "webhook") {
        cx.error(
            m.pos(),
            &m.path_of("dashboard"),
            "`dashboard` is for `slack` and `pagerduty` hooks",
        );
    }
    let (target, default_on): (NotifyTarget, &[&'static str]) = match *kind {
        "command" => (
            NotifyTarget::Command(m.required_with(cx, "command", decode_argv)?),
            &PAGES,
        ),
        "webhook" => (
            NotifyTarget::Webhook {
                url: m.required_with(cx, "webhook", decode_url)?,
                secret: secret(cx),
            },
            &PAGES,
        ),
        "slack" => {
            // `slack: URL`, or `slack: {webhook_env: NAME}` (the URL is a secret).
            let node = m.get("slack")?;
            let p = m.path_of("slack");
            let url = match &node.kind {
                NodeKind::Scalar { .. } => decode_url(cx, node, &p).map(Secret::Value),
                _ => {
                    let sm = cx.map(node, &p, &["webhook", "webhook_env"])?;
                    match (sm.get("webhook"), sm.get("webhook_env")) {
                        (Some(n), None) => {
                            decode_url(cx, n, &sm.path_of("webhook")).map(Secret::Value)
                        }
                        (None, Some(_)) => {
                            sm.optional::<String>(cx, "webhook_env").map(Secret::Env)
                        }
                        _ => {
                            cx.error(sm.pos(), &p, "give the incoming webhook as `webhook_env` (an environment variable) or `webhook`");
                            None
                        }
                    }
                }
            };
            (
                NotifyTarget::Slack {
                    url: url?,
                    dashboard: dashboard.clone(),
                },
                &crate::release::NoticeKind::CADENCE,
            )
        }
        _ => {
            let pd = m.get("pagerduty")?;
            let p = m.path_of("pagerduty");
            let pm = cx.map(pd, &p, &["routing_key", "routing_key_env", "url"])?;
            let routing_key = match (pm.get("routing_key"), pm.get("routing_key_env")) {
                (Some(_), None) => pm.optional::<String>(cx, "routing_key").map(Secret::Value),
                (None, Some(_)) => pm
                    .optional::<String>(cx, "routing_key_env")
                    .map(Secret::Env),
                _ => {
                    cx.error(
                        pm.pos(),
                        &pm.path_of("routing_key_env"),
                        "give the integration's `routing_key_env` (an environment variable) or `routing_key`",
                    );
                    None
                }
            };
            let url = pm
                .optional_with(cx, "url", decode_url)
                .unwrap_or_else(|| "https://events.pagerduty.com/v2/enqueue".into());
            (
                NotifyTarget::PagerDuty {
                    url,
                    routing_key: routing_key?,
                    dashboard: dashboard.clone(),
                },
                &["approval", "halted", "escalated", "done"],
            )
        }
    };
    let on = match m.get("on") {
        None => default_on.to_vec(),
        Some(n) => decode_cadence(cx, n, &m.path_of("on"))?,
    };
    Some(NotifyHook { target, on })
}

/// `on: pages`, `on: all`, or a list of cadence names.
fn decode_cadence(cx: &mut Decoder, n: &Node, p: &str) -> Option<Vec<&'static str>> {
    const NAMES: &[&str] = &[
        "started",
        "step",
        "approval",
        "rollback",
        "halted",
        "escalated",
        "done",
    ];
    if let NodeKind::Scalar { .. } = n.kind {
        return match one_of(cx, n, p, &["pages", "all"])? {
            "all" => Some(crate::release::NoticeKind::CADENCE.to_vec()),
            _ => Some(PAGES.to_vec()),
        };
    }
    cx.seq(n, p, |cx, n, p| one_of(cx, n, p, NAMES))
}

fn decode_migrations(cx: &mut Decoder, node: &Node, path: &str) -> Option<Migrations> {
    let m = cx.map(
        node,
        path,
        &["dir", "command", "on_incompatible", "timeout", "approval"],
    )?;
    let approval = match m.get("approval") {
        None => Some(Approval {
            role: "migration-reviewer".into(),
            timeout: Duration::from_secs(24 * 3600),
        }),
        Some(n) if matches!(&n.kind, NodeKind::Scalar { text, .. } if text == "none") => None,
        Some(n) => decode_approval(cx, n, &m.path_of("approval")),
    };
    let dir = m.required::<String>(cx, "dir");
    let command = m.required_with(cx, "command", decode_argv);
    let escalate = !matches!(
        m.optional_with(cx, "on_incompatible", |cx, n, p| one_of(
            cx,
            n,
            p,
            &["escalate", "rollback"]
        )),
        Some("rollback")
    );
    let timeout = positive(cx, &m, "timeout").unwrap_or(Duration::from_secs(600));
    Some(Migrations {
        dir: dir?,
        command: command?,
        escalate,
        timeout,
        approval,
    })
}

fn decode_post_release(cx: &mut Decoder, node: &Node, path: &str) -> Option<PostRelease> {
    let m = cx.map(node, path, &["wait", "checks", "on_failure"])?;
    let wait = m.optional::<Duration>(cx, "wait").unwrap_or(Duration::ZERO);
    let checks = m
        .optional_with(cx, "checks", |cx, n, p| {
            cx.seq(n, p, |cx, n, p| decode_check(cx, n, p, true))
        })
        .unwrap_or_default();
    let on_failure = match m.optional_with(cx, "on_failure", |cx, n, p| {
        one_of(cx, n, p, &["rollback", "halt"])
    }) {
        Some("halt") => PostFailure::Halt,
        _ => PostFailure::Rollback,
    };
    Some(PostRelease {
        wait,
        checks,
        on_failure,
    })
}

/// A gate or a check. `on_target` checks run against the new version: an http path
/// (`/healthz`) is on its address, and `{url}` in a command is its base URL.
fn decode_check(cx: &mut Decoder, node: &Node, path: &str, on_target: bool) -> Option<Gate> {
    let m = cx.map(node, path, &["name", "env", "http", "command"])?;
    let name = m.optional::<String>(cx, "name");
    let kinds = m.present(GATE_KINDS);
    let kind = match kinds.as_slice() {
        [one] => *one,
        [] => {
            cx.error(
                m.pos(),
                path,
                format!("a gate needs one of {}", list(GATE_KINDS)),
            );
            return None;
        }
        _ => {
            cx.error(
                m.pos(),
                path,
                format!("a gate checks one thing; choose one of {}", list(&kinds)),
            );
            return None;
        }
    };
    let p = m.path_of(kind);
    let inner = m.get(kind)?;
    let check = match kind {
        "env" => {
            let vars: Vec<String> = match &inner.kind {
                NodeKind::Scalar { .. } => vec![cx.value::<String>(inner, &p)?],
                _ => cx.value(inner, &p)?,
            };
            if vars.is_empty() {
                cx.error(inner.pos, &p, "list at least one variable name");
                return None;
            }
            GateCheck::Env(vars)
        }
        "http" => decode_http_gate(cx, inner, &p, on_target)?,
        _ => decode_command_gate(cx, inner, &p)?,
    };
    let name = name.unwrap_or_else(|| match &check {
        GateCheck::Env(v) => format!("env {}", v.join(",")),
        GateCheck::Http { url, .. } => format!("http {url}"),
        GateCheck::Command { run, .. } => format!("command {}", run.join(" ")),
    });
    Some(Gate { name, check })
}

fn decode_http_gate(
    cx: &mut Decoder,
    node: &Node,
    path: &str,
    on_target: bool,
) -> Option<GateCheck> {
    let (url, status, timeout, url_pos, url_path) = match &node.kind {
        NodeKind::Scalar { .. } => (
            cx.value::<String>(node, path)?,
            None,
            Duration::from_secs(5),
            node.pos,
            path.to_string(),
        ),
        _ => {
            let m = cx.map(node, path, &["url", "status", "timeout"])?;
            let url = m.required::<String>(cx, "url");
            let status = m.optional::<u16>(cx, "status");
            if let Some(s) = status
                && !(100..=599).contains(&s)
            {
                cx.error(
                    m.get("status").map_or(m.pos(), |n| n.pos),
                    &m.path_of("status"),
                    format!("{s} is not an HTTP status; use 100 to 599"),
                );
            }
            let timeout = positive(cx, &m, "timeout").unwrap_or(Duration::from_secs(5));
            let pos = m.get("url").map_or(m.pos(), |n| n.pos);
            (url?, status, timeout, pos, m.path_of("url"))
        }
    };
    if let Some(rest) = url.strip_prefix("https://") {
        cx.error(
            url_pos,
            &url_path,
            format!("https is not built into the http gate yet; use a command gate such as `command: [curl, -fsS, \"https://{rest}\"]`"),
        );
        return None;
    }
    if on_target && url.starts_with('/') {
        return Some(GateCheck::Http {
            url,
            status,
            timeout,
        });
    }
    if !url.starts_with("http://") || url.len() <= "http://".len() {
        cx.error(url_pos, &url_path, format!("`{url}` is not an http:// URL"));
        return None;
    }
    Some(GateCheck::Http {
        url,
        status,
        timeout,
    })
}

fn decode_command_gate(cx: &mut Decoder, node: &Node, path: &str) -> Option<GateCheck> {
    match &node.kind {
        NodeKind::Seq(_) => Some(GateCheck::Command {
            run: decode_argv(cx, node, path)?,
            timeout: Duration::from_secs(60),
        }),
        _ => {
            let m = cx.map(node, path, &["run", "timeout"])?;
            let run = m.required_with(cx, "run", decode_argv);
            let timeout = positive(cx, &m, "timeout").unwrap_or(Duration::from_secs(60));
            Some(GateCheck::Command { run: run?, timeout })
        }
    }
}

fn decode_analysis(cx: &mut Decoder, node: &Node, path: &str) -> Option<Analysis> {
    let m = cx.map(
        node,
        path,
        &[
            "interval",
            "min_samples",
            "failure_limit",
            "inconclusive",
            "no_data",
            "metrics",
            "fail_score",
            "prometheus",
        ],
    )?;
    let prometheus = m.optional_with(cx, "prometheus", decode_base_url);
    let interval = positive(cx, &m, "interval").unwrap_or(Duration::from_secs(10));
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
        let metrics = cx.seq(n, p, |cx, n, p| decode_metric(cx, n, p, min_samples, failure_limit))?;
        if metrics.is_empty() {
            cx.error(n.pos, p, "list at least one metric; a canary nobody measures cannot fail, so it proves nothing");
            return None;
        }
        if let NodeKind::Seq(items) = &n.kind {
            for (i, metric) in metrics.iter().enumerate() {
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
    if prometheus.is_none()
        && m.get("prometheus").is_none()
        && let Some(i) = metrics.iter().position(|x| x.query.is_some())
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
    })
}

fn limit(cx: &mut Decoder, m: &MapReader<'_>, key: &str) -> Option<u32> {
    let v = m.optional::<u32>(cx, key)?;
    if v == 0 {
        cx.error(
            m.get(key).map_or(m.pos(), |n| n.pos),
            &m.path_of(key),
            "must be at least 1",
        );
        return None;
    }
    Some(v)
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
            "min_samples",
            "failure_limit",
            "critical",
            "weight",
            "query",
            "range",
        ],
    )?;
    let source = match m.get("source") {
        Some(n) => one_of(cx, n, &m.path_of("source"), &["builtin", "prometheus"]),
        None => Some("builtin"),
    };
    if source == Some("prometheus") {
        return decode_query_metric(cx, &m, default_failure_limit);
    }
    for key in m.present(&["query", "range"]) {
        cx.error(
            m.pos(),
            &m.path_of(key),
            format!("`{key}` belongs to `source: prometheus` metrics"),
        );
    }
    let metric = m.required_with(cx, "metric", |cx, n, p| {
        let id = one_of(cx, n, p, METRIC_NAMES)?;
        Some(match LATENCY_METRICS.iter().find(|(name, _)| *name == id) {
            Some((_, q)) => BuiltinMetric::Latency(*q),
            None => BuiltinMetric::ErrorRate,
        })
    });
    let name = m
        .optional::<String>(cx, "name")
        .or_else(|| metric.map(|k| k.id()));
    let min_samples = m
        .optional::<u64>(cx, "min_samples")
        .unwrap_or(default_min_samples);
    let failure_limit = limit(cx, &m, "failure_limit").unwrap_or(default_failure_limit);
    let critical = m.optional::<bool>(cx, "critical").unwrap_or(true);
    let weight = m.optional::<f64>(cx, "weight").unwrap_or(1.0);
    if weight < 0.0 {
        cx.error(
            m.get("weight").map_or(m.pos(), |n| n.pos),
            &m.path_of("weight"),
            "a weight cannot be negative",
        );
    }
    let metric = metric?;
    let judge = m.required_with(cx, "judge", |cx, n, p| decode_judge(cx, n, p, metric))?;
    Some(MetricSpec {
        name: name?,
        metric,
        judge,
        min_samples,
        failure_limit,
        critical,
        weight,
        query: None,
    })
}

/// A `source: prometheus` metric: a named PromQL query judged by thresholds.
fn decode_query_metric(
    cx: &mut Decoder,
    m: &MapReader<'_>,
    default_failure_limit: u32,
) -> Option<MetricSpec> {
    if m.get("metric").is_some() {
        cx.error(
            m.pos(),
            &m.path_of("metric"),
            "a `prometheus` metric is its `query`; `metric` names builtin measurements",
        );
    }
    let name = m.required::<String>(cx, "name");
    let query = m.required_with(cx, "query", |cx, n, p| {
        let q = scalar(cx, n, p, "a PromQL query")?;
        if q.trim().is_empty() {
            cx.error(n.pos, p, "the query is empty");
            return None;
        }
        Some(q.to_string())
    });
    let range = m.optional::<bool>(cx, "range").unwrap_or(false);
    let failure_limit = limit(cx, m, "failure_limit").unwrap_or(default_failure_limit);
    let critical = m.optional::<bool>(cx, "critical").unwrap_or(true);
    let weight = m.optional::<f64>(cx, "weight").unwrap_or(1.0);
    let judge = m.required_with(cx, "judge", |cx, n, p| {
        if matches!(&n.kind, NodeKind::Scalar { .. })
            || matches!(&n.kind, NodeKind::Map(e) if e.iter().any(|(k, _)| k.text == "sequential"))
        {
            cx.error(
                n.pos,
                p,
                "a query's value is judged by thresholds (`max`, `max_ratio_to_stable`); the sequential judge needs request counts",
            );
            return None;
        }
        decode_judge(cx, n, p, BuiltinMetric::Query)
    });
    Some(MetricSpec {
        name: name?,
        metric: BuiltinMetric::Query,
        judge: judge?,
        min_samples: 0,
        failure_limit,
        critical,
        weight,
        query: Some(QuerySpec {
            query: query?,
            range,
        }),
    })
}

const JUDGES: &[&str] = &["sequential", "threshold"];

/// `judge: sequential`, `judge: {sequential: {alpha, tolerance}}`,
/// `judge: {threshold: {max, max_ratio_to_stable}}` or, for short,
/// `judge: {max, max_ratio_to_stable}`.
fn decode_judge(cx: &mut Decoder, node: &Node, path: &str, metric: BuiltinMetric) -> Option<Judge> {
    let default_tolerance = match metric {
        BuiltinMetric::ErrorRate | BuiltinMetric::Query => 1.0,
        BuiltinMetric::Latency(_) => 1.25,
    };
    let default = Judge::Sequential(Sequential {
        alpha: DEFAULT_ALPHA,
        tolerance: default_tolerance,
    });
    if let NodeKind::Scalar { .. } = node.kind {
        return one_of(cx, node, path, &["sequential"]).map(|_| default);
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
            decode_threshold(cx, inner, &join(path, "threshold"), metric).map(Judge::Threshold)
        }
        Some((key, inner)) if entries.len() == 1 => {
            if inner.kind == NodeKind::Null {
                return Some(default);
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
            Some(Judge::Sequential(Sequential { alpha, tolerance }))
        }
        Some(_) => {
            cx.error(
                node.pos,
                path,
                "choose one judge: `sequential` or `threshold`, without other fields",
            );
            None
        }
        None => decode_threshold(cx, node, path, metric).map(Judge::Threshold),
    }
}

fn decode_threshold(
    cx: &mut Decoder,
    node: &Node,
    path: &str,
    metric: BuiltinMetric,
) -> Option<Threshold> {
    let m = cx.map(node, path, &["max", "max_ratio_to_stable"])?;
    let max = match metric {
        BuiltinMetric::ErrorRate => m.optional::<Rate>(cx, "max").map(|r| r.0),
        BuiltinMetric::Latency(_) => m
            .optional::<Duration>(cx, "max")
            .map(|d| d.as_secs_f64() * 1000.0),
        BuiltinMetric::Query => m.optional::<f64>(cx, "max"),
    };
    let ratio = m.optional::<f64>(cx, "max_ratio_to_stable");
    if let Some(r) = ratio
        && r <= 0.0
    {
        cx.error(
            m.get("max_ratio_to_stable").map_or(m.pos(), |n| n.pos),
            &m.path_of("max_ratio_to_stable"),
            format!("{r} is not a useful ratio; use a number above 0, such as 1.5 (canary may be 50 % worse than stable)"),
        );
    }
    if m.get("max").is_none() && m.get("max_ratio_to_stable").is_none() {
        cx.error(
            m.pos(),
            path,
            "the judge sets no limit; give `max`, `max_ratio_to_stable` or both",
        );
    }
    Some(Threshold {
        max,
        max_ratio_to_stable: ratio,
    })
}

fn decode_rollback(cx: &mut Decoder, node: &Node, path: &str) -> Option<Rollback> {
    let m = cx.map(
        node,
        path,
        &["drain", "verify_timeout", "max_automatic", "flags"],
    )?;
    let max_automatic = m.optional_with(cx, "max_automatic", |cx, n, p| {
        let m = cx.map(n, p, &["count", "per"])?;
        let count = m.required::<u32>(cx, "count");
        let per = m.required::<Duration>(cx, "per");
        Some(RollbackCap {
            count: count?,
            per: per?,
        })
    });
    let drain = m
        .optional::<Duration>(cx, "drain")
        .unwrap_or(Duration::from_secs(10));
    let verify_timeout = positive(cx, &m, "verify_timeout").unwrap_or(Duration::from_secs(30));
    let flags = m.optional::<Vec<String>>(cx, "flags").unwrap_or_default();
    Some(Rollback {
        drain,
        verify_timeout,
        max_automatic,
        flags,
    })
}

// === Kubernetes ===

/// A Kubernetes object name as the API accepts it (an RFC 1123 label): 1 to 63
/// lower-case letters, digits and `-`, starting and ending with a letter or digit.
fn decode_kube_name(cx: &mut Decoder, node: &Node, path: &str) -> Option<String> {
    let name = scalar(cx, node, path, "a Kubernetes object name")?;
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !valid {
        cx.error(
            node.pos,
            path,
            format!("`{name}` is not a valid Kubernetes name; use 1 to 63 lower-case letters, digits or `-`, starting and ending with a letter or digit"),
        );
        return None;
    }
    Some(name.to_string())
}

fn decode_kube_deploy(cx: &mut Decoder, node: &Node, path: &str) -> Option<KubeDeploySpec> {
    let m = cx.map(
        node,
        path,
        &[
            "namespace",
            "deployment",
            "container",
            "image",
            "canary_name",
            "ready_timeout",
            "context",
        ],
    )?;
    let namespace = m
        .optional_with(cx, "namespace", decode_kube_name)
        .unwrap_or_else(|| "default".into());
    let deployment = m.required_with(cx, "deployment", decode_kube_name);
    let container = m.required_with(cx, "container", decode_kube_name);
    let image = m.required_with(cx, "image", |cx, n, p| {
        let image = scalar(cx, n, p, "an image reference with `{version}`")?;
        if !image.contains("{version}") || image.chars().any(char::is_whitespace) {
            cx.error(
                n.pos,
                p,
                format!("`{image}` does not mention `{{version}}`; rampart substitutes the release's version into it, like `registry.example.com/checkout:{{version}}`"),
            );
            return None;
        }
        Some(image.to_string())
    });
    let canary_name = m.optional_with(cx, "canary_name", decode_kube_name);
    let ready_timeout = positive(cx, &m, "ready_timeout").unwrap_or(Duration::from_secs(300));
    let context = m.optional::<String>(cx, "context");
    let deployment = deployment?;
    let canary_name = canary_name.unwrap_or_else(|| format!("{deployment}-canary"));
    if canary_name == deployment {
        cx.error(
            m.get("canary_name").map_or(m.pos(), |n| n.pos),
            &m.path_of("canary_name"),
            "the canary needs its own Deployment; choose a name other than `deployment`",
        );
    }
    Some(KubeDeploySpec {
        namespace,
        deployment,
        container: container?,
        image: image?,
        canary_name,
        ready_timeout,
        context,
    })
}

const KUBE_MODES: &[&str] = &["replica_ratio", "service_selector", "http_route"];

fn decode_kube_traffic(cx: &mut Decoder, node: &Node, path: &str) -> Option<KubeTrafficSpec> {
    let m = cx.map(node, path, &["mode", "service", "route", "replicas"])?;
    let mode = m.required_with(cx, "mode", |cx, n, p| one_of(cx, n, p, KUBE_MODES));
    let service = m.optional_with(cx, "service", decode_kube_name);
    let route = m.optional_with(cx, "route", decode_kube_name);
    let replicas = m.optional::<u32>(cx, "replicas");
    let mode = mode?;
    let pos_of = |key: &str| m.get(key).map_or(m.pos(), |n| n.pos);
    let misplaced = |cx: &mut Decoder, key: &str, modes: &str| {
        if m.get(key).is_some() {
            cx.error(
                pos_of(key),
                &m.path_of(key),
                format!("`{key}` belongs to `mode: {modes}`, not `mode: {mode}`"),
            );
        }
    };
    match mode {
        "replica_ratio" => {
            misplaced(cx, "route", "http_route");
            let Some(replicas) = replicas else {
                cx.error(
                    m.pos(),
                    &m.path_of("replicas"),
                    "missing: `replica_ratio` splits this many replicas between stable and canary (for example `replicas: 10` allows steps of 10 %)",
                );
                return None;
            };
            if replicas == 0 || replicas > 1000 {
                cx.error(
                    pos_of("replicas"),
                    &m.path_of("replicas"),
                    format!("{replicas} replicas: use 1 to 1000 (stable and canary together)"),
                );
                return None;
            }
            Some(KubeTrafficSpec {
                mode: KubeMode::ReplicaRatio { replicas },
            })
        }
        _ => {
            misplaced(cx, "replicas", "replica_ratio");
            let Some(service) = service else {
                if m.get("service").is_none() {
                    cx.error(
                        m.pos(),
                        &m.path_of("service"),
                        format!("missing: `mode: {mode}` needs the stable Service's name"),
                    );
                }
                return None;
            };
            if mode == "service_selector" {
                misplaced(cx, "route", "http_route");
                return Some(KubeTrafficSpec {
                    mode: KubeMode::ServiceSelector { service },
                });
            }
            let Some(route) = route else {
                if m.get("route").is_none() {
                    cx.error(
                        m.pos(),
                        &m.path_of("route"),
                        "missing: `mode: http_route` needs the HTTPRoute's name",
                    );
                }
                return None;
            };
            Some(KubeTrafficSpec {
                mode: KubeMode::HttpRoute { service, route },
            })
        }
    }
}

/// Whether a check runs against the new version's own address.
fn on_the_new_version(check: &Gate) -> bool {
    match &check.check {
        GateCheck::Http { url, .. } => url.starts_with('/') || url.contains("{url}"),
        GateCheck::Command { run, .. } => run.iter().any(|a| a.contains("{url}")),
        _ => false,
    }
}

/// Where step `i` (its `key`, when it has one) is written, for positions.
fn step_pos(root: &MapReader<'_>, i: usize, key: &str) -> Option<crate::yaml::Pos> {
    let field = |n: &Node, k: &str| match &n.kind {
        NodeKind::Map(entries) => entries
            .iter()
            .find(|(e, _)| e.text == k)
            .map(|(_, v)| v.clone()),
        _ => None,
    };
    let strategy = root.get("strategy")?;
    let NodeKind::Map(kinds) = &strategy.kind else {
        return None;
    };
    let (_, spec) = kinds.first()?;
    let steps = field(spec, "steps")?;
    let NodeKind::Seq(items) = &steps.kind else {
        return None;
    };
    let step = items.get(i)?;
    Some(field(step, key).map_or(step.pos, |n| n.pos))
}

/// The nodes of `analysis.metrics`, for positions.
fn metric_nodes<'n>(root: &MapReader<'n>) -> Option<&'n Vec<Node>> {
    root.get("analysis")
        .and_then(|a| match &a.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.text == "metrics")
                .map(|(_, v)| v),
            _ => None,
        })
        .and_then(|n| match &n.kind {
            NodeKind::Seq(items) => Some(items),
            _ => None,
        })
}

/// The rules that hold only when Kubernetes runs the release: the deployer and the
/// router come together, nothing measures requests, and every step's weight is one
/// the mode can make.
fn check_kubernetes(
    cx: &mut Decoder,
    root: &MapReader<'_>,
    deploy: Option<&Deploy>,
    traffic: Option<&Traffic>,
    strategy: Option<&Strategy>,
    analysis: Option<&Analysis>,
) {
    let pos = |key: &str| root.get(key).map_or(root.pos(), |n| n.pos);
    let kube_deploy = matches!(deploy, Some(Deploy::Kubernetes(_)));
    let kube_traffic = match traffic {
        Some(Traffic::Kubernetes(t)) => Some(t),
        _ => None,
    };
    match (kube_deploy, kube_traffic, deploy, traffic) {
        (false, Some(_), Some(_), _) => cx.error(
            pos("traffic"),
            "traffic.kubernetes",
            "`traffic.kubernetes` moves traffic between Deployments, so it needs `deploy.kubernetes` (the stable Deployment, its container and the image template)",
        ),
        (true, None, _, Some(_)) => cx.error(
            pos("deploy"),
            "deploy.kubernetes",
            "`deploy.kubernetes` runs pods that have no address on this machine, so it needs `traffic.kubernetes` (mode `replica_ratio`, `service_selector` or `http_route`)",
        ),
        _ => {}
    }
    if kube_deploy && let Some(Strategy::Rolling(_)) = strategy {
        cx.error(
            pos("strategy"),
            "strategy.rolling",
            "with `deploy.kubernetes`, replace replicas batch by batch with `strategy.canary` and `traffic.kubernetes.mode: replica_ratio` (each step moves a share of the replicas)",
        );
    }
    let Some(kube) = kube_traffic else {
        return;
    };
    if let Some(a) = analysis {
        let items = metric_nodes(root);
        for (i, metric) in a.metrics.iter().enumerate() {
            if metric.query.is_none() {
                let at = items
                    .and_then(|it| it.get(i))
                    .map_or(pos("analysis"), |n| n.pos);
                cx.error(
                    at,
                    &format!("analysis.metrics[{i}].source"),
                    format!("metric `{}` is `source: builtin`, but with `traffic.kubernetes` there is no rampart proxy in the request path to count requests; use `source: prometheus` with a `query` (and `analysis.prometheus`)", metric.name),
                );
            }
        }
    }
    let Some(st) = strategy else {
        return;
    };
    for (i, step) in st.steps().iter().enumerate() {
        let path = format!("strategy.{}.steps[{i}]", st.name());
        let at = |key: &str| step_pos(root, i, key).unwrap_or(pos("strategy"));
        if !step.matches.is_empty() {
            cx.error(
                at("match"),
                &format!("{path}.match"),
                "`traffic.kubernetes` splits by weight only; use the embedded proxy or nginx for `match` steps",
            );
        }
        let bp = u32::from(step.weight.basis_points());
        match &kube.mode {
            KubeMode::ServiceSelector { .. } if bp != 0 && bp != 10_000 => cx.error(
                at("weight"),
                &format!("{path}.weight"),
                format!("`mode: service_selector` sends all traffic to one Deployment, so a weight is 0 % or 100 %, not {}; use `strategy.blue_green` or `strategy.full`, or `mode: http_route` for a gradual split", step.weight),
            ),
            KubeMode::ReplicaRatio { replicas } if bp * replicas % 10_000 != 0 => {
                let achievable: Vec<String> = (1..=*replicas)
                    .filter(|c| c * 10_000 % replicas == 0)
                    .map(|c| format!("{}%", c * 100 / replicas))
                    .take(8)
                    .collect();
                cx.error(
                    at("weight"),
                    &format!("{path}.weight"),
                    format!("{} of {replicas} replicas is not a whole number of pods; with `mode: replica_ratio` the weight moves in steps of one replica (possible: {}), or raise `traffic.kubernetes.replicas`", step.weight, achievable.join(", ")),
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const MINIMAL: &str = r#"
service: checkout
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
        Policy::from_yaml(src).unwrap_err().diagnostics
    }

    #[test]
    fn minimal_policy_gets_documented_defaults() {
        let p = Policy::from_yaml(MINIMAL).unwrap();
        assert_eq!(p.analysis.interval, Duration::from_secs(10));
        assert_eq!(p.analysis.metrics[0].name, "error_rate");
        assert_eq!(p.analysis.metrics[0].min_samples, 50);
        assert_eq!(p.analysis.metrics[0].failure_limit, 2);
        assert_eq!(p.proxy().unwrap().sticky, Sticky::None);
        assert_eq!(
            p.process().unwrap().readiness.timeout,
            Duration::from_secs(30)
        );
        assert_eq!(p.rollback.drain, Duration::from_secs(10));
    }

    #[test]
    fn typo_in_field_name_names_line_and_field() {
        let src = MINIMAL.replace("bake: 1m", "baek: 1m");
        let d = errors(&src);
        assert!(
            d.iter().any(|d| d.path == "strategy.canary.steps[0].baek"
                && d.line == 13
                && d.message.contains("did you mean `bake`")),
            "{d:?}"
        );
        assert!(d.iter().any(|d| d.path == "strategy.canary.steps[0].bake"
            && d.message.contains("missing")), "{d:?}");
    }

    #[test]
    fn weight_over_100_is_rejected_at_its_line() {
        let d = errors(&MINIMAL.replace("weight: 10", "weight: 120"));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].path, "strategy.canary.steps[0].weight");
        assert_eq!(d[0].line, 12);
        assert!(d[0].message.contains("0 to 100"));
    }

    #[test]
    fn bad_duration_is_rejected_with_a_fix() {
        let d = errors(&MINIMAL.replace("bake: 1m", "bake: 10 minutes"));
        assert_eq!(d[0].path, "strategy.canary.steps[0].bake");
        assert!(d[0].message.contains("duration unit"), "{d:?}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let src = MINIMAL
            .replace("weight: 10", "weight: 120")
            .replace("127.0.0.1:8080", "localhost")
            .replace("error_rate", "eror_rate");
        let d = errors(&src);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d.windows(2).all(|w| w[0].line <= w[1].line));
    }

    #[test]
    fn decreasing_weights_are_rejected() {
        let src = MINIMAL.replace(
            "      - weight: 10\n        bake: 1m\n",
            "      - weight: 50\n        bake: 1m\n      - weight: 10\n        bake: 1m\n",
        );
        let d = errors(&src);
        assert_eq!(d[0].path, "strategy.canary.steps[1].weight", "{d:?}");
    }

    #[test]
    fn command_must_receive_the_port() {
        let d = errors(&MINIMAL.replace(r#", "--port", "{port}""#, ""));
        assert!(d[0].message.contains("{port}"), "{d:?}");
    }

    #[test]
    fn latency_max_is_a_duration_and_error_rate_max_is_a_rate() {
        let src = MINIMAL.replace(
            "judge: { max: 1% }",
            "judge: { max: 1% }\n    - metric: latency_p99\n      judge: { max: 800ms, max_ratio_to_stable: 1.5 }",
        );
        let p = Policy::from_yaml(&src).unwrap();
        let max = |i: usize| match p.analysis.metrics[i].judge {
            Judge::Threshold(t) => t.max,
            Judge::Sequential(_) => None,
        };
        assert_eq!(max(0), Some(0.01));
        assert_eq!(max(1), Some(800.0));
        assert_eq!(p.analysis.metrics[1].metric, BuiltinMetric::Latency(0.99));
        let bad = src.replace("max: 800ms", "max: 5%");
        assert!(errors(&bad)[0].path.ends_with("judge.max"));
    }

    #[test]
    fn judge_forms() {
        let with = |judge: &str| MINIMAL.replace("judge: { max: 1% }", &format!("judge: {judge}"));
        let p = Policy::from_yaml(&with("sequential")).unwrap();
        let seq = |alpha| {
            Judge::Sequential(Sequential {
                alpha,
                tolerance: 1.0,
            })
        };
        assert_eq!(p.analysis.metrics[0].judge, seq(DEFAULT_ALPHA));
        let p = Policy::from_yaml(&with("{sequential: {alpha: 0.05}}")).unwrap();
        assert_eq!(p.analysis.metrics[0].judge, seq(0.05));
        let p = Policy::from_yaml(&with("{threshold: {max: 2%}}")).unwrap();
        assert!(
            matches!(p.analysis.metrics[0].judge, Judge::Threshold(Threshold { max: Some(m), .. }) if (m - 0.02).abs() < 1e-12)
        );
        assert!(p.analysis.metrics[0].critical);
        for bad in [
            "sequentail",
            "{sequential: {alpha: 0.7}}",
            "{sequential: {}, max: 1%}",
            "{sequential: {tolerance: 0.5}}",
        ] {
            assert!(Policy::from_yaml(&with(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn gates_accept_short_and_long_forms() {
        let src = format!(
            "{MINIMAL}gates:\n  pre:\n    - env: [DATABASE_URL]\n    - http: http://127.0.0.1:9/health\n    - command: [\"true\"]\n    - name: slow\n      command: {{run: [\"sleep\", \"1\"], timeout: 2s}}\n"
        );
        let p = Policy::from_yaml(&src).unwrap();
        assert_eq!(p.gates.pre.len(), 4);
        assert_eq!(p.gates.pre[3].name, "slow");
        let https = src.replace("http://127.0.0.1:9/health", "https://x/health");
        assert!(errors(&https)[0].message.contains("command gate"));
    }

    #[test]
    fn match_steps_come_before_and_alongside_weights() {
        let src = MINIMAL.replace(
            "      - weight: 10\n        bake: 1m\n",
            "      - match: {header: X-Internal-User}\n        bake: 1m\n      - match: {cookie: beta, values: [\"1\"]}\n        weight: 5\n        bake: 1m\n      - weight: 20\n        bake: 1m\n",
        );
        let p = Policy::from_yaml(&src).unwrap();
        let steps = p.strategy.steps();
        assert_eq!(steps[0].weight, Weight::ZERO);
        assert_eq!(
            steps[0].matches[0].source,
            MatchSource::Header("x-internal-user".into())
        );
        assert_eq!(steps[1].weight, Weight::from_percent(5).unwrap());
        assert_eq!(p.strategy.matches_at(2).len(), 2, "matches stay in force");
        assert_eq!(p.strategy.matches_at(0).len(), 1);
        let bad = src.replace("{header: X-Internal-User}", "{header: x, cookie: y}");
        assert!(
            errors(&bad)[0]
                .message
                .contains("one `header` or one `cookie`")
        );
    }

    #[test]
    fn blue_green_with_preview_post_release_and_absolute_metrics() {
        let src = MINIMAL.replace(
            "  canary:\n    steps:\n      - weight: 10\n        bake: 1m\n",
            "  blue_green:\n    preview:\n      - http: /healthz\n      - command: [\"./smoke.sh\", \"{url}\"]\n    stability: 2m\n    keep_previous: 10m\n",
        ) + "post_release:\n  wait: 30s\n  checks: [{http: /ready}]\n  on_failure: halt\n";
        let p = Policy::from_yaml(&src).unwrap();
        assert_eq!(p.strategy.name(), "blue_green");
        assert_eq!(p.strategy.steps()[0].weight, Weight::FULL);
        assert_eq!(p.strategy.steps()[0].bake, Duration::from_secs(120));
        assert_eq!(p.strategy.preview().len(), 2);
        assert_eq!(p.strategy.keep_previous(), Duration::from_secs(600));
        let post = p.post_release.unwrap();
        assert_eq!(
            (post.wait, post.checks.len(), post.on_failure),
            (Duration::from_secs(30), 1, PostFailure::Halt)
        );
        // A ratio-only or sequential metric cannot judge a blue-green release.
        let d = errors(&src.replace("judge: { max: 1% }", "judge: sequential"));
        assert_eq!(d[0].path, "analysis.metrics[0].judge", "{d:?}");
        // Relative paths are only for checks on the new version, not for pre-gates.
        let gate = format!("{MINIMAL}gates:\n  pre:\n    - http: /healthz\n");
        assert!(errors(&gate)[0].message.contains("not an http:// URL"));
    }

    #[test]
    fn rolling_plans_one_step_per_batch() {
        let src = MINIMAL
            .replace(
                "command: [\"./checkout\", \"--port\", \"{port}\"]",
                "command: [\"./checkout\", \"--port\", \"{port}\"]\n    replicas: 5",
            )
            .replace(
                "  canary:\n    steps:\n      - weight: 10\n        bake: 1m\n",
                "  rolling: {batch: 2, bake: 30s}\n",
            );
        let p = Policy::from_yaml(&src).unwrap();
        let r = p.strategy.rolling().unwrap();
        let weights: Vec<u16> = p
            .strategy
            .steps()
            .iter()
            .map(|s| s.weight.basis_points())
            .collect();
        assert_eq!(weights, vec![4000, 8000, 10_000]);
        assert_eq!(
            (r.replicas_at(0), r.replicas_at(1), r.replicas_at(2)),
            (2, 4, 5)
        );
        let too_big = src.replace("batch: 2", "batch: 6");
        assert!(
            errors(&too_big)[0]
                .message
                .contains("more than the 5 replica")
        );
    }

    #[test]
    fn sticky_forms() {
        for (text, want) in [
            ("client-ip", Sticky::ClientIp),
            ("{header: X-User}", Sticky::Header("x-user".into())),
            ("{cookie: sid}", Sticky::Cookie("sid".into())),
        ] {
            let src = MINIMAL.replace(
                "listen: 127.0.0.1:8080",
                &format!("listen: 127.0.0.1:8080\n    sticky: {text}"),
            );
            assert_eq!(
                Policy::from_yaml(&src).unwrap().proxy().unwrap().sticky,
                want
            );
        }
    }

    #[test]
    fn empty_and_non_mapping_documents_are_errors_not_panics() {
        for src in ["", "- 1\n- 2\n", "just text", "service: [", "{service: 5}"] {
            assert!(Policy::from_yaml(src).is_err(), "{src}");
        }
    }

    #[test]
    fn prometheus_metrics_need_a_server_a_query_and_a_threshold() {
        let base = MINIMAL.replace("    - metric: error_rate\n      judge: { max: 1% }\n", "");
        let ok = format!(
            "{base}  prometheus: http://127.0.0.1:9090\n  metrics:\n    - {{name: q, source: prometheus, query: 'sum(up)', range: true, judge: {{max: 0.5, max_ratio_to_stable: 2}}}}\n"
        )
        .replace("  metrics:\n  prometheus", "  prometheus");
        let p = Policy::from_yaml(&ok).unwrap_or_else(|e| panic!("{ok}\n{e:?}"));
        let q = p.analysis.metrics[0].query.clone().unwrap();
        assert_eq!((q.query.as_str(), q.range), ("sum(up)", true));
        let no_server = ok.replace("  prometheus: http://127.0.0.1:9090\n", "");
        assert!(
            errors(&no_server)
                .iter()
                .any(|d| d.message.contains("analysis.prometheus"))
        );
        let sequential = ok.replace(
            "judge: {max: 0.5, max_ratio_to_stable: 2}",
            "judge: sequential",
        );
        assert!(
            errors(&sequential)
                .iter()
                .any(|d| d.message.contains("judged by thresholds"))
        );
        let metric_too = ok.replace("query: 'sum(up)'", "query: 'sum(up)', metric: error_rate");
        assert!(
            errors(&metric_too)
                .iter()
                .any(|d| d.path.ends_with(".metric"))
        );
    }

    #[test]
    fn notify_hooks_take_secrets_from_the_environment_and_a_cadence() {
        let p = Policy::from_yaml(&format!(
            "{MINIMAL}notify:\n  - slack: {{webhook_env: SLACK_URL}}\n    dashboard: http://grafana\n  - pagerduty: {{routing_key_env: PD_KEY}}\n  - webhook: https://hooks.internal/x\n    secret_env: HOOK_SECRET\n    on: [started, done]\n  - command: [./page.sh]\n"
        ))
        .unwrap();
        assert_eq!(
            p.notify[0].target,
            NotifyTarget::Slack {
                url: Secret::Env("SLACK_URL".into()),
                dashboard: Some("http://grafana".into())
            }
        );
        assert!(p.notify[0].all());
        assert!(
            matches!(&p.notify[1].target, NotifyTarget::PagerDuty { routing_key: Secret::Env(k), url, .. } if k == "PD_KEY" && url.starts_with("https://events.pagerduty.com"))
        );
        assert_eq!(
            p.notify[1].on,
            vec!["approval", "halted", "escalated", "done"]
        );
        assert_eq!(p.notify[2].on, vec!["started", "done"]);
        assert_eq!(p.notify[3].on, PAGES.to_vec());
        for (bad, want) in [
            (
                "  - webhook: http://x\n    secret: a\n    secret_env: B\n",
                "not both",
            ),
            (
                "  - webhook: http://x\n    dashboard: http://d\n",
                "`dashboard` is for",
            ),
            ("  - slack: {}\n", "webhook_env"),
            ("  - command: [x]\n    on: [sometimes]\n", "not valid"),
            ("  - slack: ftp://x\n", "not an http:// or https:// URL"),
        ] {
            let e = errors(&format!("{MINIMAL}notify:\n{bad}"));
            assert!(e.iter().any(|d| d.message.contains(want)), "{bad}: {e:?}");
        }
    }

    // === Kubernetes ===

    const KUBE: &str = r#"
service: checkout
deploy:
  kubernetes:
    namespace: shop
    deployment: checkout
    container: app
    image: registry.example.com/checkout:{version}
traffic:
  kubernetes:
    mode: http_route
    service: checkout
    route: checkout
strategy:
  canary:
    steps:
      - weight: 10
        bake: 1m
analysis:
  prometheus: http://prometheus.monitoring:9090
  metrics:
    - name: errors
      source: prometheus
      query: 'sum(rate(http_errors_total{version="{version}"}[1m]))'
      judge: { max: 0.01 }
"#;

    #[test]
    fn kubernetes_sections_decode_with_defaults() {
        let p = Policy::from_yaml(KUBE).unwrap();
        let (d, t) = p.kubernetes().unwrap();
        assert_eq!(d.namespace, "shop");
        assert_eq!(d.canary_name, "checkout-canary");
        assert_eq!(d.ready_timeout, Duration::from_secs(300));
        assert_eq!(d.context, None);
        assert_eq!(d.image_of("v2"), "registry.example.com/checkout:v2");
        assert_eq!(
            d.version_of("registry.example.com/checkout:v1.4.1")
                .as_deref(),
            Some("v1.4.1")
        );
        assert_eq!(d.version_of("registry.example.com/other:v1"), None);
        assert_eq!(
            t.mode,
            KubeMode::HttpRoute {
                service: "checkout".into(),
                route: "checkout".into()
            }
        );
        assert!(p.process().is_none());
        let p = Policy::from_yaml(&KUBE.replace("    namespace: shop\n", "")).unwrap();
        assert_eq!(p.kubernetes().unwrap().0.namespace, "default");
    }

    #[test]
    fn kubernetes_modes_decode() {
        let ratio = KUBE.replace(
            "mode: http_route\n    service: checkout\n    route: checkout",
            "mode: replica_ratio\n    replicas: 10",
        );
        let p = Policy::from_yaml(&ratio).unwrap();
        assert_eq!(
            p.kubernetes().unwrap().1.mode,
            KubeMode::ReplicaRatio { replicas: 10 }
        );
        let selector = KUBE
            .replace("mode: http_route", "mode: service_selector")
            .replace("    route: checkout\n", "")
            .replace("weight: 10", "weight: 100");
        let p = Policy::from_yaml(&selector).unwrap();
        assert_eq!(p.kubernetes().unwrap().1.mode.name(), "service_selector");
    }

    #[test]
    fn kubernetes_typo_names_line_and_suggests() {
        let d = errors(&KUBE.replace("    container: app", "    contaner: app"));
        assert!(
            d.iter().any(|d| d.path == "deploy.kubernetes.contaner"
                && d.line == 7
                && d.message.contains("did you mean `container`")),
            "{d:?}"
        );
        let d = errors(&KUBE.replace("mode: http_route", "mode: http_routes"));
        assert!(
            d.iter().any(|d| d.path == "traffic.kubernetes.mode"
                && d.line == 11
                && d.message.contains("http_route")),
            "{d:?}"
        );
    }

    #[test]
    fn kubernetes_image_needs_the_version() {
        let d = errors(&KUBE.replace("checkout:{version}", "checkout:latest"));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].path, "deploy.kubernetes.image");
        assert_eq!(d[0].line, 8);
        assert!(d[0].message.contains("{version}"), "{d:?}");
    }

    #[test]
    fn kubernetes_names_must_be_valid() {
        let d = errors(&KUBE.replace("deployment: checkout", "deployment: Checkout_1"));
        assert_eq!(d[0].path, "deploy.kubernetes.deployment", "{d:?}");
        assert!(d[0].message.contains("lower-case"), "{d:?}");
    }

    #[test]
    fn http_route_mode_needs_a_route() {
        let d = errors(&KUBE.replace("    route: checkout\n", ""));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].path, "traffic.kubernetes.route");
        let d = errors(&KUBE.replace(
            "    route: checkout\n",
            "    route: checkout\n    replicas: 4\n",
        ));
        assert_eq!(d[0].path, "traffic.kubernetes.replicas", "{d:?}");
        assert!(d[0].message.contains("replica_ratio"), "{d:?}");
    }

    #[test]
    fn kubernetes_traffic_needs_kubernetes_deploy() {
        let src = KUBE.replace(
            "  kubernetes:\n    namespace: shop\n    deployment: checkout\n    container: app\n    image: registry.example.com/checkout:{version}\n",
            "  process:\n    command: [\"./checkout\", \"--port\", \"{port}\"]\n",
        );
        let d = errors(&src);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].path, "traffic.kubernetes");
        assert!(d[0].message.contains("deploy.kubernetes"), "{d:?}");
        let d = errors(&KUBE.replace(
            "  kubernetes:\n    mode: http_route\n    service: checkout\n    route: checkout\n",
            "  proxy:\n    listen: 127.0.0.1:8080\n",
        ));
        assert_eq!(d[0].path, "deploy.kubernetes", "{d:?}");
    }

    #[test]
    fn kubernetes_rejects_builtin_metrics_at_the_metric() {
        let src = KUBE.replace(
            "  metrics:\n",
            "  metrics:\n    - metric: error_rate\n      judge: { max: 1% }\n",
        );
        let d = errors(&src);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].path, "analysis.metrics[0].source");
        assert_eq!(d[0].line, 22);
        assert!(d[0].message.contains("source: prometheus"), "{d:?}");
        assert!(d[0].message.contains("no rampart proxy"), "{d:?}");
    }

    #[test]
    fn service_selector_rejects_partial_weights() {
        let src = KUBE
            .replace("mode: http_route", "mode: service_selector")
            .replace("    route: checkout\n", "");
        let d = errors(&src);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].path, "strategy.canary.steps[0].weight");
        assert_eq!(d[0].line, 16);
        assert!(d[0].message.contains("blue_green"), "{d:?}");
    }

    #[test]
    fn replica_ratio_rejects_weights_no_replica_count_makes() {
        let src = KUBE
            .replace(
                "mode: http_route\n    service: checkout\n    route: checkout",
                "mode: replica_ratio\n    replicas: 4",
            )
            .replace("weight: 10", "weight: 5");
        let d = errors(&src);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].path, "strategy.canary.steps[0].weight");
        assert_eq!(d[0].line, 16);
        assert!(d[0].message.contains("25%, 50%, 75%, 100%"), "{d:?}");
        let d = errors(&src.replace("replicas: 4", "replicas: 0"));
        assert_eq!(d[0].path, "traffic.kubernetes.replicas", "{d:?}");
    }

    #[test]
    fn kubernetes_checks_need_an_absolute_url() {
        let blue_green = KUBE
            .replace("mode: http_route", "mode: service_selector")
            .replace("    route: checkout\n", "")
            .replace(
                "  canary:\n    steps:\n      - weight: 10\n        bake: 1m\n",
                "  blue_green:\n    stability: 1m\n    preview: [{http: /healthz}]\n",
            );
        let d = errors(&blue_green);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].path, "strategy.blue_green.preview[0]");
        assert!(d[0].message.contains("absolute URL"), "{d:?}");
        let ok = blue_green.replace("/healthz", "http://checkout-canary.shop.svc/healthz");
        assert!(Policy::from_yaml(&ok).is_ok());
    }

    #[test]
    fn kubernetes_rejects_rolling_and_match_steps() {
        let d = errors(&KUBE.replace(
            "      - weight: 10\n        bake: 1m\n",
            "      - weight: 10\n        bake: 1m\n        match: {header: x-beta}\n",
        ));
        assert!(
            d.iter().any(|d| d.path == "strategy.canary.steps[0].match"),
            "{d:?}"
        );
    }
}
