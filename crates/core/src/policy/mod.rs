//! The release policy: what a service's `rampart.yaml` means, decoded and validated.
//!
//! Owns the schema, its defaults and every cross-field rule. Decoding is pure: it takes
//! text and returns either a [`Policy`] or every problem found. It must not read files,
//! the environment or the clock; callers do that and pass the text in.
//!
//! Each section of the policy has its own file with its types and their decoder;
//! `rules` holds the checks that span sections and `values` the field decoders several
//! sections share. Every public item is re-exported here: `policy::X` is the one path
//! callers use.

mod analysis;
mod checks;
mod deploy;
mod flags;
mod migrations;
mod notify;
mod providers;
mod rollback;
mod rules;
mod strategy;
mod traffic;
mod values;

#[cfg(test)]
mod tests;

use std::time::Duration;

use analysis::decode_analysis;
use checks::{decode_gates, decode_post_release};
use deploy::decode_deploy;
use flags::decode_flags;
use migrations::decode_migrations;
use notify::{decode_notify, decode_silences};
use rollback::decode_rollback;
use rules::{check_blue_green_metrics, check_flags, check_kubernetes, on_the_new_version};
use strategy::decode_strategy;
use traffic::decode_traffic;

use crate::decode::{Decoder, Diagnostic, scalar};
use crate::yaml::{self, Node, NodeKind};

pub use analysis::{
    Analysis, BucketUnit, BuiltinMetric, DEFAULT_ALPHA, Direction, Escalation, EscalationAction,
    FailureCount, Judge, LOAD_HEADER, Load, MetricSpec, QuerySpec, Sequential, Threshold,
};
pub use checks::{Gate, GateCheck, Gates, PostFailure, PostRelease};
pub use deploy::{Deploy, KubeDeploySpec, ProcessSpec, Readiness};
pub use flags::FlagsSpec;
pub use migrations::Migrations;
pub use notify::{NotifyHook, NotifyTarget, PAGES, Secret, SilenceMatcher, SilencesSpec};
pub use providers::{
    CloudWatchSpec, CommandFetch, DATADOG_KEY_VARS, DATADOG_SITES, DatadogApi, DatadogSpec,
    HttpFetch, NEWRELIC_KEY_VAR, NEWRELIC_REGIONS, NewRelicSpec, PLACEHOLDERS, PathStep,
    QuerySource, ValuePath, aws_region, cloudwatch_alignment, cloudwatch_endpoint,
    datadog_endpoint, env_refs, newrelic_endpoint,
};
pub use rollback::{Rollback, RollbackCap};
pub use strategy::{
    Approval, BlueGreenSpec, CanarySpec, FullSpec, MatchSource, RollingSpec, RouteMatch, Step,
    Strategy,
};
pub use traffic::{
    HaproxySpec, IpNet, KubeMode, KubeTrafficSpec, NginxSpec, ProxyLimits, ProxySpec, ProxyTls,
    Sticky, TlsCertificate, Traffic, Trust, UpstreamProtocol,
};

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
        Self::decode_with(src, Decoder::default())
    }

    /// [`Policy::from_yaml`] for a release's stored policy, taken up again (a resume,
    /// a view, a stop): the rules added since an older rampart accepted it, which
    /// refuse only new releases, are not applied.
    pub fn from_stored(src: &str) -> Result<Policy, PolicyError> {
        Self::decode_with(src, Decoder::stored())
    }

    fn decode_with(src: &str, mut cx: Decoder) -> Result<Policy, PolicyError> {
        let root = yaml::parse(src).map_err(|e| PolicyError {
            diagnostics: vec![Diagnostic::new(
                e.pos,
                "",
                format!("YAML syntax: {}", e.message),
            )],
        })?;
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

    /// Why the previous version has no replicas running once all traffic is on the new
    /// one, if so: a switch back from 100 % (a failed watch or post-release check, a
    /// rollback while the previous version is kept) must then start them again before
    /// traffic can move, which takes as long as they take to get ready. `None` when the
    /// previous version keeps running, and a switch back is a traffic change alone.
    pub fn previous_stopped_at_full(&self) -> Option<&'static str> {
        if self.strategy.rolling().is_some() {
            return Some("its replicas were replaced batch by batch");
        }
        match self.kubernetes() {
            Some((_, t)) if matches!(t.mode, KubeMode::ReplicaRatio { .. }) => Some(
                "`replica_ratio` splits traffic by pods, so at 100 % its Deployment has 0 replicas",
            ),
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
    // Top-level keys that start with `x-` are the user's own: a place to define YAML
    // anchors that the policy's fields merge in (`<<: *name`), never read.
    let own;
    let root = match &root.kind {
        NodeKind::Map(entries) if entries.iter().any(|(k, _)| k.text.starts_with("x-")) => {
            own = Node {
                kind: NodeKind::Map(
                    entries
                        .iter()
                        .filter(|(k, _)| !k.text.starts_with("x-"))
                        .cloned()
                        .collect(),
                ),
                pos: root.pos,
            };
            &own
        }
        _ => root,
    };
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
        let strategy = m.get("strategy");
        let at = |key: &str| {
            let rolling = strategy.and_then(|n| n.field("rolling"));
            rolling
                .and_then(|n| n.field(key))
                .or(rolling)
                .or(strategy)
                .map_or(m.pos(), |n| n.pos)
        };
        if r.batch > d.replicas {
            cx.error(
                at("batch"),
                "strategy.rolling.batch",
                format!(
                    "a batch of {} is more than the {} replica(s) in `deploy.process.replicas`",
                    r.batch, d.replicas
                ),
            );
        }
        if r.max_unavailable >= d.replicas {
            cx.error(
                at("max_unavailable"),
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
    if let (Some(load), Some(t)) = (analysis.as_ref().and_then(|a| a.load.as_ref()), &traffic) {
        // At the field refused (or `load` itself, for one left out).
        let node = m.get("analysis").and_then(|a| a.field("load"));
        let at = |key: &str| node.map_or(m.pos(), |n| n.pos_of(key));
        let embedded = matches!(t, Traffic::Proxy(_));
        if !load.counts && !embedded {
            cx.error(
                at("counts"),
                "analysis.load.counts",
                "only the embedded proxy can leave rampart's own load out of the metrics; nginx, HAProxy and Kubernetes count every request (set `counts: true`, or filter `x-rampart-load` out of a `prometheus` query)",
            );
        }
        if !load.counts && load.url.is_some() {
            cx.error(
                at("url"),
                "analysis.load.url",
                "load that does not count goes through the embedded proxy's own address (it carries a token only the proxy may see); leave `url` out",
            );
        }
        if load.url.is_none() && !embedded && !matches!(t, Traffic::Nginx(_)) {
            cx.error(
                at("url"),
                "analysis.load.url",
                "rampart knows the service's address only behind the embedded proxy or nginx; give the address to send the load to (`url: http://HOST:PORT`)",
            );
        }
        // Under a flag ramp, the proxy and the application put a user in the flag-on
        // cohort by the same key. Stuck by address, all of the load has one (rampart's
        // own): it is all on, or all off, wherever the proxy sends it.
        if let (Traffic::Proxy(p), Some(flag)) =
            (t, strategy.as_ref().and_then(Strategy::ramped_flag))
            && p.sticky == Sticky::ClientIp
        {
            cx.refuse_new(
                node.map_or(m.pos(), |n| n.pos),
                "analysis.load",
                format!(
                    "rampart's own load comes from one address, so under `sticky: client-ip` flag `{flag}` is on for all of it or for none, and the proxy could not measure it as the flag's users are measured; stick by a header (`sticky: {{header: x-user-id}}`, which the load varies), or leave `load` out"
                ),
            );
        }
        // The load speaks plain HTTP: a TLS listener would fail every request in
        // its handshake, counted nowhere, and the quiet service stays unjudged.
        let tls = matches!(t, Traffic::Proxy(p) if p.tls.is_some());
        if load
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
            || (tls && load.url.is_none())
        {
            cx.error(
                at("url"),
                "analysis.load.url",
                if tls && load.url.is_none() {
                    "the built-in load speaks plain HTTP, and the embedded proxy listens with TLS (`traffic.proxy.tls`): every request would fail its handshake; give a plain `http://` address of the service (`url`, counted), or leave `load` out"
                } else {
                    "the built-in load speaks plain HTTP; give an `http://` address"
                },
            );
        }
    }
    // A plain `query` value has no baseline to compare with once all traffic is on the
    // new version: one judged by ratio limits alone would be judged by nothing during
    // the watch, and no interval of it could ever be clean.
    if let (Some(post), Some(a)) = (&post_release, &analysis)
        && !post.watch.is_zero()
    {
        for (i, metric) in a.metrics.iter().enumerate() {
            if let Judge::Threshold(t) = &metric.judge
                && metric.metric == BuiltinMetric::Query
                && metric.query.as_ref().is_none_or(|q| q.buckets.is_none())
                && !t.absolute()
            {
                let node =
                    m.get("analysis")
                        .and_then(|n| n.field("metrics"))
                        .and_then(|n| match &n.kind {
                            NodeKind::Seq(items) => items.get(i),
                            _ => None,
                        });
                cx.error(
                    node.map_or(m.pos(), |n| n.pos_of("judge")),
                    &format!("analysis.metrics[{i}].judge"),
                    format!(
                        "`{}` is a plain query judged against stable's value alone, and during `post_release.watch` no version serves beside the new one: nothing would judge it, and the watch could never end; add an absolute limit (`max` or `min`), read it as counts (`bad`/`good` with `total`), or leave the watch out",
                        metric.name
                    ),
                );
            }
        }
    }
    // CloudWatch is read `delay` behind: unless the metrics read as they happen can
    // fail the watch on their own (one critical, or weights reaching `fail_score`), a
    // watch must outlast the delay by an interval, or every window that can fail it
    // is from before the switch.
    let cloudwatch_delay = analysis.as_ref().and_then(|a| {
        let now: Vec<_> = a
            .metrics
            .iter()
            .filter(|m| {
                !m.query
                    .as_ref()
                    .is_some_and(|q| q.source == QuerySource::CloudWatch)
            })
            .collect();
        let can_fail = now.iter().any(|m| m.critical)
            || now.iter().map(|m| m.weight).sum::<f64>() >= a.fail_score;
        let behind = now.len() < a.metrics.len() && !can_fail;
        a.cloudwatch.as_ref().filter(|_| behind).map(|c| c.delay)
    });
    if let (Some(post), Some(a), Some(delay)) = (&post_release, &analysis, cloudwatch_delay)
        && !post.watch.is_zero()
        && post.watch < a.interval + delay
    {
        cx.error(
            m.get("post_release").map_or(m.pos(), |n| n.pos_of("watch")),
            "post_release.watch",
            format!(
                "a watch of {} is shorter than `cloudwatch.delay` ({}) and one analysis interval ({}): the metrics that can fail it read CloudWatch, that far behind (any other is not critical, and their weights stay under `fail_score`), so every window that could fail it would be from before the switch; make the watch at least {}",
                crate::units::format_duration(post.watch),
                crate::units::format_duration(delay),
                crate::units::format_duration(a.interval),
                crate::units::format_duration(a.interval + delay)
            ),
        );
    } else if let (Some(post), Some(a)) = (&post_release, &analysis)
        && !post.watch.is_zero()
        && post.watch < a.interval
    {
        cx.error(
            m.get("post_release").map_or(m.pos(), |n| n.pos),
            "post_release.watch",
            format!(
                "a watch of {} is shorter than one analysis interval ({}): nothing would be judged",
                crate::units::format_duration(post.watch),
                crate::units::format_duration(a.interval)
            ),
        );
    }
    if let (Some(Strategy::BlueGreen(_) | Strategy::Full(_)), Some(a)) = (&strategy, &analysis) {
        check_blue_green_metrics(cx, &m, a);
    }
    if let (Some(s), Some(a)) = (&strategy, &analysis)
        && s.flag_only()
    {
        rules::check_flag_metrics(cx, &m, a);
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

/// Whether `name` can name a service: 1 to 63 lower-case letters, digits, `-`, `_`
/// or `.`, starting with a letter or digit.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn decode_service(cx: &mut Decoder, node: &Node, path: &str) -> Option<String> {
    let name = scalar(cx, node, path, "a service name")?;
    if !valid_service_name(name) {
        cx.error(
            node.pos,
            path,
            format!("`{name}` is not a valid service name; use 1 to 63 lower-case letters, digits, `-`, `_` or `.`, starting with a letter or digit"),
        );
        return None;
    }
    Some(name.to_string())
}
