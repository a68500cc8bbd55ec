//! The rules that span policy sections (flags against strategy and traffic, blue-green
//! metrics, Kubernetes), checked once every section is decoded. It reports problems;
//! it must not change a decoded section.

use super::analysis::{Analysis, Judge};
use super::checks::{Gate, GateCheck};
use super::deploy::Deploy;
use super::flags::FlagsSpec;
use super::rollback::Rollback;
use super::strategy::Strategy;
use super::traffic::{KubeMode, Sticky, Traffic};
use crate::decode::{Decoder, MapReader};
use crate::yaml::{Node, NodeKind};

/// Flags named by the strategy and the rollback must be defined, and a ramp needs a
/// sticky key so a user keeps their flag (and their cohort) from request to request.
pub(super) fn check_flags(
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
        // Whoever is outside the ramp gets the default: a flag on by default is on
        // for them (and for every caller without a key), and the ramp measures
        // nothing the proxy could tell apart.
        if let Some(i) =
            flags.and_then(|f| f.define.iter().position(|d| d.name == name && d.default))
        {
            let at = root
                .get("flags")
                .and_then(|n| n.field("define"))
                .and_then(|n| match &n.kind {
                    NodeKind::Seq(items) => items.get(i).map(|n| n.pos),
                    _ => None,
                })
                .unwrap_or(pos("flags"));
            cx.refuse_new(
                at,
                &format!("flags.define[{i}].default"),
                format!(
                    "flag `{name}` is ramped by the release, so it must default to off (`default: false`): with `default: true` everyone outside the ramp has it on already"
                ),
            );
        }
        // The proxy measures a rule's users as the canary, but the flag endpoint puts
        // users in the flag-on cohort by the ramp and the allowlist only.
        if let Some(strategy) = strategy {
            let items = root
                .get("strategy")
                .and_then(|n| n.field(strategy.name()))
                .and_then(|n| n.field("steps"))
                .and_then(|n| match &n.kind {
                    NodeKind::Seq(items) => Some(items),
                    _ => None,
                });
            for (i, step) in strategy.steps().iter().enumerate() {
                if !step.matches.is_empty() {
                    let at = items
                        .and_then(|it| it.get(i))
                        .and_then(|n| n.field("match").or(Some(n)))
                        .map_or(pos("strategy"), |n| n.pos);
                    cx.refuse_new(
                        at,
                        &format!("strategy.{}.steps[{i}].match", strategy.name()),
                        format!(
                            "a release that ramps flag `{name}` takes no `match` rules: the flag endpoint would answer \"off\" to the users a rule sends to the canary cohort. Put testers on the flag's allowlist (`flags.define[].allow`) instead: they get it on, and the proxy measures them as the canary"
                        ),
                    );
                }
            }
        }
        if let Some(Traffic::Nginx(_) | Traffic::Haproxy(_) | Traffic::Kubernetes(_)) = traffic {
            cx.error(
                pos("traffic"),
                "traffic",
                "a flag ramp needs the embedded proxy (`traffic.proxy`): it hashes users exactly as the flag store does, so the users measured as the canary are the users with the flag on",
            );
        }
        // The proxy can send an allowlisted key to the canary only by a header or a
        // cookie: an allowlisted address would get the flag on from the old version.
        if let Some(Traffic::Proxy(p)) = traffic
            && p.sticky == Sticky::ClientIp
            && let Some(i) = flags.and_then(|f| {
                f.define
                    .iter()
                    .position(|d| d.name == name && !d.allow.is_empty())
            })
        {
            cx.refuse_new(
                pos("flags"),
                &format!("flags.define[{i}].allow"),
                format!(
                    "flag `{name}` is ramped under `sticky: client-ip`, where the proxy cannot route an allowlisted address to the canary: its testers would get the flag on from the old version. Keep users apart by a header or a cookie, or leave the allowlist empty"
                ),
            );
        }
        if let Some(Traffic::Proxy(p)) = traffic
            && p.sticky == Sticky::None
        {
            cx.error(
                pos("traffic"),
                "traffic.proxy.sticky",
                "a flag ramp needs a sticky key (`sticky: {header: x-user-id}`, a cookie or `client-ip`): the proxy and the flag endpoint put the same users in the ramp by hashing it",
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
pub(super) fn check_blue_green_metrics(
    cx: &mut Decoder,
    root: &MapReader<'_>,
    analysis: &Analysis,
) {
    let items = metric_nodes(root);
    for (i, metric) in analysis.metrics.iter().enumerate() {
        let absolute = matches!(metric.judge, Judge::Threshold(t) if t.absolute());
        if !absolute {
            let pos = items.and_then(|it| it.get(i)).map_or(root.pos(), |n| n.pos);
            cx.error(
                pos,
                &format!("analysis.metrics[{i}].judge"),
                "a blue-green or full release sends stable no traffic after the switch, so there is nothing to compare with; give this metric an absolute `max` (or `min`, where higher is better)",
            );
        }
    }
}

/// A flag release runs one version on both sides: a query that tells them apart only
/// by `{version}` reads the same series for both, so the sequential judge or a ratio
/// to stable on it could never find the flag's users worse.
pub(super) fn check_flag_metrics(cx: &mut Decoder, root: &MapReader<'_>, analysis: &Analysis) {
    let items = metric_nodes(root);
    for (i, metric) in analysis.metrics.iter().enumerate() {
        let Some(compares) = metric.judge.comparison() else {
            continue;
        };
        let Some(query) = &metric.query else { continue };
        if !query.per_variant() || query.per_variant_on_one_version() {
            // (One that names neither is refused with the metric itself.)
            continue;
        }
        let pos = items.and_then(|it| it.get(i)).map_or(root.pos(), |n| n.pos);
        cx.error(
            pos,
            &format!("analysis.metrics[{i}].{}", query.field(metric.direction)),
            format!("a flag release runs the same version on both sides, so `{{version}}` reads the same series for each and {compares} could never find the flag's users worse: select each side with `{{variant}}`, or judge the flag's side alone with `max`/`min`"),
        );
    }
}

/// Whether a check runs against the new version's own address.
pub(super) fn on_the_new_version(check: &Gate) -> bool {
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
        .and_then(|a| a.field("metrics"))
        .and_then(|n| match &n.kind {
            NodeKind::Seq(items) => Some(items),
            _ => None,
        })
}

/// The rules that hold only when Kubernetes runs the release: the deployer and the
/// router come together, nothing measures requests, and every step's weight is one
/// the mode can make.
pub(super) fn check_kubernetes(
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
                    format!("metric `{}` is `source: builtin`, but with `traffic.kubernetes` there is no rampart proxy in the request path to count requests; use `source: prometheus` with a `query`, or for a latency its histogram's `buckets` (and `analysis.prometheus`)", metric.name),
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
                // Written as the decoder reads weights: one pod of 8 is 12.5 %, not 12 %.
                let achievable: Vec<String> = (1..=*replicas)
                    .filter(|c| c * 10_000 % replicas == 0)
                    .filter_map(|c| u16::try_from(c * 10_000 / replicas).ok())
                    .filter_map(crate::units::Weight::from_basis_points)
                    .map(|w| w.to_string())
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
