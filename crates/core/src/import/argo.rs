//! Argo Rollouts: a `Rollout` (canary or blue-green) with its `AnalysisTemplate`s and
//! `ClusterAnalysisTemplate`s, as a rampart policy. Steps become canary steps and
//! approval points, analysis runs become metrics with their limits, and traffic
//! routing becomes `traffic.kubernetes`.

use std::collections::HashMap;

use super::emit::{E, Y, e, ec, list, n, raw, s};
use super::expr::{self, Limit};
use super::tree::{
    Doc, Found, at, boolean, duration_ms, duration_of, entries, found_elsewhere, get, int, items,
    pos_of, resolve, str_at, text, twice,
};
use super::{
    Cx, Draft, ImportError, Metric, Providers, Source, Step, Workload, deploy_section, dur,
    error_rate_metric, find_deployment, not_found, service_name,
};
use crate::policy::ValuePath;
use crate::yaml::{Node, Pos};

/// Steps Argo has that rampart's Kubernetes adapter cannot take.
const STEP_WHY: &[(&str, &str)] = &[
    (
        "setHeaderRoute",
        "`traffic.kubernetes` moves weights only; header routes need rampart's embedded proxy or nginx (`match` steps)",
    ),
    (
        "setMirrorRoute",
        "rampart does not mirror traffic: the canary is judged on the share of real requests it serves",
    ),
    (
        "experiment",
        "rampart runs no experiments beside a release; judge the canary itself with `analysis.metrics`",
    ),
    (
        "setCanaryScale",
        "rampart sizes the canary's pods from the weight (and the stable's live replicas); there is no separate scale",
    ),
    (
        "plugin",
        "step plugins run Argo's own code; rampart has no plugin steps (a `gates.pre` command can run a check before the release)",
    ),
];

pub(super) fn import(cx: &mut Cx, docs: &[Doc], sources: &[Source]) -> Result<Draft, ImportError> {
    let rollouts: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.is("argoproj.io", "Rollout"))
        .collect();
    let Some(ro) = rollouts.first().copied() else {
        return Err(not_found(
            docs,
            sources,
            "Rollout (apiVersion argoproj.io/v1alpha1, kind Rollout)",
        ));
    };
    if let Some(second) = rollouts.get(1) {
        return Err(ImportError::at(
            second,
            pos_of(get(&second.node, "kind")),
            "kind",
            format!(
                "a second Rollout (`{}`, after `{}` in {}): import one Rollout at a time",
                second.name, ro.name, ro.file
            ),
        ));
    }
    cx.use_doc(ro);
    if ro.name.is_empty() {
        return Err(ImportError::at(
            ro,
            pos_of(Some(&ro.node)),
            "metadata.name",
            "the Rollout has no name",
        ));
    }
    let spec = get(&ro.node, "spec").ok_or_else(|| {
        ImportError::at(
            ro,
            pos_of(Some(&ro.node)),
            "spec",
            "the Rollout has no spec",
        )
    })?;
    let strategy = get(spec, "strategy").ok_or_else(|| {
        ImportError::at(
            ro,
            spec.pos,
            "spec.strategy",
            "the Rollout has no strategy; rampart imports `canary` and `blueGreen`",
        )
    })?;
    let canary = get(strategy, "canary");
    let blue_green = get(strategy, "blueGreen");
    if canary.is_some() && blue_green.is_some() {
        // Argo Rollouts refuses such a Rollout: it never ran, and which of the two its
        // author meant, nobody can tell.
        return Err(ImportError::at(
            ro,
            strategy.pos,
            "spec.strategy",
            "both `canary` and `blueGreen`: Argo Rollouts refuses a Rollout with more than one strategy; keep the one you run",
        ));
    }
    if canary.is_none() && blue_green.is_none() {
        return Err(ImportError::at(
            ro,
            strategy.pos,
            "spec.strategy",
            format!(
                "neither `canary` nor `blueGreen` (found: {}); rampart imports those two",
                keys(strategy)
            ),
        ));
    }
    cx.rest(ro, strategy, "spec.strategy", &["canary", "blueGreen"], &[]);
    let mut a = Argo {
        docs,
        ro,
        providers: Providers::default(),
        error_limit: None,
        empty_limit: None,
        any_metric: false,
    };
    let mut draft = Draft {
        service: service_name(&ro.name),
        service_from: format!("from Rollout {} metadata.name", ro.name),
        header: vec![
            format!(
                "Imported by `rampart import argo` from Rollout {} ({}).",
                ro.name, ro.file
            ),
            "Comments name the source field of each value; `rampart import` lists what it could not map.".into(),
        ],
        ..Draft::default()
    };
    a.deploy(cx, &mut draft, spec);
    if let Some(c) = canary {
        a.canary(cx, &mut draft, c)?;
    } else if let Some(bg) = blue_green {
        a.blue_green(cx, &mut draft, bg)?;
    }
    a.finish(cx, &mut draft);
    Ok(draft)
}

fn keys(n: &Node) -> String {
    let k: Vec<String> = entries(n)
        .iter()
        .map(|(k, _)| format!("`{}`", k.text))
        .collect();
    if k.is_empty() {
        "nothing".into()
    } else {
        k.join(", ")
    }
}

/// A resolved analysis argument.
#[derive(Clone, Debug)]
enum Arg {
    Value(String),
    /// The new version's pods (`podTemplateHashValue: Latest`): `{version}`.
    Version,
    /// A Secret's key: an environment variable where rampart runs (headers only).
    Env(String),
    /// Cannot be filled in, and why.
    Unresolved(String),
}

struct Argo<'a> {
    docs: &'a [Doc],
    ro: &'a Doc,
    providers: Providers,
    /// The lowest `consecutiveErrorLimit`, and where it came from.
    error_limit: Option<(i64, String)>,
    /// The fewest failed measurements at which Argo aborts on empty results, where a
    /// failure condition fails them.
    empty_limit: Option<u32>,
    any_metric: bool,
}

impl<'a> Argo<'a> {
    fn label(&self) -> String {
        self.ro.label()
    }

    fn deploy(&mut self, cx: &mut Cx, draft: &mut Draft, spec: &'a Node) {
        let ro = self.ro;
        cx.rest(
            ro,
            spec,
            "spec",
            &[
                "replicas",
                "selector",
                "template",
                "workloadRef",
                "strategy",
                "progressDeadlineSeconds",
            ],
            &[
                ("revisionHistoryLimit", "rampart keeps no ReplicaSet history of its own; the stable Deployment's `revisionHistoryLimit` applies"),
                ("minReadySeconds", "set `minReadySeconds` on the stable Deployment: rampart waits for its rollouts, and the canary inherits it"),
                ("paused", "a paused Rollout has no rampart equivalent; `rampart pause RELEASE` holds a release in progress"),
                ("progressDeadlineAbort", "rampart always fails a rollout past its deadline (`deploy.kubernetes.ready_timeout`) and rolls back"),
                ("restartAt", "rampart does not restart pods; `kubectl rollout restart` does"),
                ("rollbackWindow", "rampart rolls back only a release in progress; an earlier version is released again with `rampart run --version`"),
                ("analysis", "Argo's analysis-run history limits have no equivalent: rampart keeps every release's audit trail"),
            ],
        );
        let namespace = ro.namespace.clone().unwrap_or_else(|| "default".into());
        let workload = if let Some(wr) = get(spec, "workloadRef") {
            cx.rest(
                ro,
                wr,
                "spec.workloadRef",
                &["apiVersion", "kind", "name"],
                &[("scaleDown", "rampart never scales the stable Deployment down behind a Rollout: it is the stable itself")],
            );
            let name = str_at(wr, "name").unwrap_or(&ro.name).to_string();
            let dep = find_deployment(self.docs, &name);
            if let Some(d) = dep {
                cx.use_doc(d);
            }
            cx.note(format!(
                "The Deployment `{name}` the Rollout references is rampart's stable Deployment: give it `rampart.dev/track: stable` in its selector and pod labels, and scale it back up (docs/kubernetes.md)."
            ));
            Workload {
                namespace,
                deployment: name,
                template: dep.and_then(|d| {
                    at(&d.node, &["spec", "template", "spec"])
                        .map(|p| (d, p, "spec.template.spec".to_string()))
                }),
                from: format!("from Rollout {} spec.workloadRef.name", ro.name),
            }
        } else {
            cx.note(format!(
                "The Rollout's pod template becomes the stable Deployment `{}`: apply it as a Deployment with `rampart.dev/track: stable` in its selector and pod labels (docs/kubernetes.md).",
                ro.name
            ));
            Workload {
                namespace,
                deployment: ro.name.clone(),
                template: at(spec, &["template", "spec"])
                    .map(|p| (ro, p, "spec.template.spec".to_string())),
                from: format!("from Rollout {} metadata.name (its pod template)", ro.name),
            }
        };
        let missing = if get(spec, "workloadRef").is_some() {
            "spec.workloadRef"
        } else {
            "spec.template"
        };
        draft.deploy = deploy_section(cx, &workload, ro, missing);
        if let Some(secs) = get(spec, "progressDeadlineSeconds").and_then(int) {
            let secs = secs.clamp(1, 3600);
            draft.deploy.push(ec(
                "ready_timeout",
                raw(dur(secs as u64 * 1000)),
                format!("from {} spec.progressDeadlineSeconds", self.label()),
            ));
        }
    }

    fn canary(&mut self, cx: &mut Cx, draft: &mut Draft, c: &'a Node) -> Result<(), ImportError> {
        let ro = self.ro;
        let path = "spec.strategy.canary";
        cx.rest(
            ro,
            c,
            path,
            &["steps", "analysis", "trafficRouting", "stableService", "canaryService", "scaleDownDelaySeconds"],
            &[
                ("maxSurge", "rampart sizes the canary's pods itself (docs/kubernetes.md, replica_ratio); surge has no equivalent"),
                ("maxUnavailable", "rampart grows one side before shrinking the other, so no pod is ever unavailable on purpose"),
                ("canaryMetadata", "rampart labels the canary's pods itself (`rampart.dev/track: canary`, `rampart.dev/version`)"),
                ("stableMetadata", "rampart labels the stable's pods itself (`rampart.dev/track: stable`)"),
                ("abortScaleDownDelaySeconds", "after a rollback rampart drains the canary for `rollback.drain`, then deletes it"),
                ("dynamicStableScale", "rampart scales the stable down only as the canary takes its share under `replica_ratio`, and never under `http_route`"),
                ("antiAffinity", "set pod anti-affinity on the stable Deployment; the canary inherits its pod template"),
                ("pingPong", "rampart's stable is always the one Deployment; ping-pong Services have no equivalent"),
                ("minPodsPerReplicaSet", "rampart sizes each side from the weight and the stable's live replicas"),
                ("scaleDownDelayRevisionLimit", "rampart keeps one previous version, never a chain of them"),
                ("replicaProgressThreshold", "rampart waits for the whole rollout of each side"),
            ],
        );
        if let Some(n) = get(c, "scaleDownDelaySeconds") {
            cx.unmapped(
                ro,
                &format!("{path}.scaleDownDelaySeconds"),
                n.pos,
                SCALE_DOWN_DELAY,
            );
        }
        // Steps. With `trafficRouting.maxTrafficWeight` Argo counts setWeight in parts
        // of it (10 of 1000 is 1 %).
        let max_weight = at(c, &["trafficRouting", "maxTrafficWeight"])
            .and_then(int)
            .filter(|m| (1..=i64::from(u32::MAX)).contains(m))
            .unwrap_or(100);
        if max_weight != 100 {
            cx.note(format!(
                "{} {path}.trafficRouting.maxTrafficWeight is {max_weight}: each setWeight is written as its share of it in percent, to 0.01 %",
                self.label()
            ));
        }
        let mut weight = 0u32;
        let mut percent = 0.0;
        let mut open: Option<usize> = None;
        let steps = get(c, "steps").map(items).unwrap_or_default();
        for (i, step) in steps.iter().enumerate() {
            let sp = format!("{path}.steps[{i}]");
            let Some((k, v)) = entries(step).first() else {
                cx.unmapped(ro, &sp, step.pos, "not a step rampart knows");
                continue;
            };
            let field = format!("{sp}.{}", k.text);
            let from = format!("{} {field}", self.label());
            match k.text.as_str() {
                "setWeight" => match int(v) {
                    Some(w) if (1..=max_weight).contains(&w) && w as u32 >= weight => {
                        weight = w as u32;
                        percent = ((w as f64 * 10_000.0 / max_weight as f64).round() / 100.0).max(0.01);
                        draft.steps.push(Step::Weight {
                            weight: percent,
                            bake_ms: 0,
                            from: vec![from],
                        });
                        open = Some(draft.steps.len() - 1);
                    }
                    Some(0) if weight == 0 => {
                        cx.note(format!("{from}: a weight of 0 before any step is where rampart starts anyway"));
                    }
                    _ => cx.unmapped(
                        ro,
                        &field,
                        v.pos,
                        format!(
                            "rampart's weights are 1 to {max_weight} (of {max_weight}) and never go down within a release (the previous step is at {weight})"
                        ),
                    ),
                },
                "pause" => match get(v, "duration") {
                    Some(d) => match duration_of(d) {
                        Some(ms) => self.bake(cx, draft, &mut open, percent, ms, from, &field, v.pos),
                        None => cx.unmapped(ro, &format!("{field}.duration"), d.pos, "not a duration (`30s`, `5m`, or seconds)"),
                    },
                    None => {
                        draft.steps.push(Step::Approval {
                            timeout: "30d".into(),
                            from: format!("{from} (an indefinite pause: a human promotes; rampart waits at most 30d, then rolls back)"),
                        });
                        open = None;
                    }
                },
                "analysis" => {
                    let run = self.analysis_ref(cx, draft, v, &field, false)?;
                    let ms = run.unwrap_or(0);
                    self.bake(cx, draft, &mut open, percent, ms, from, &field, v.pos);
                    cx.note(format!(
                        "{} {field}: rampart judges its metrics at every step, from the first, not only at this step; the step holds for the run's count x interval.",
                        self.label()
                    ));
                }
                other => {
                    let why = STEP_WHY
                        .iter()
                        .find(|(k, _)| *k == other)
                        .map_or_else(|| format!("`{other}` is not a step rampart knows"), |(_, w)| (*w).to_string());
                    cx.unmapped(ro, &field, k.pos, why);
                }
            }
            if entries(step).len() > 1 {
                for (k, _) in entries(step).iter().skip(1) {
                    cx.unmapped(
                        ro,
                        &format!("{sp}.{}", k.text),
                        k.pos,
                        "a step has one kind; this one is read as its first key",
                    );
                }
            }
        }
        if !draft.steps.iter().any(|s| matches!(s, Step::Weight { .. })) {
            draft.steps.push(Step::Weight {
                weight: 100.0,
                bake_ms: 0,
                from: vec![format!(
                    "{} {path} (no setWeight: all traffic at once)",
                    self.label()
                )],
            });
        }
        // Background analysis.
        if let Some(bg) = get(c, "analysis") {
            self.analysis_ref(cx, draft, bg, &format!("{path}.analysis"), true)?;
        }
        // Traffic.
        let stable_service = str_at(c, "stableService");
        match get(c, "trafficRouting") {
            Some(tr) => {
                self.traffic_routing(cx, draft, tr, stable_service, str_at(c, "canaryService"))
            }
            None => self.replica_ratio(cx, draft, path),
        }
        Ok(())
    }

    /// Without traffic routing Argo splits by pod counts: the canary gets
    /// ceil(weight x spec.replicas / 100) pods. With `spec.replicas` on a grid rampart
    /// can split exactly (a divisor of 10 000), the policy keeps Argo's own split: that
    /// grid, each weight rounded up as Argo rounds it. Otherwise the smallest grid on
    /// which every weight is exact.
    fn replica_ratio(&self, cx: &mut Cx, draft: &mut Draft, path: &str) {
        let label = self.label();
        let weights: Vec<u32> = draft
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Weight { weight, .. } => Some(weight.round() as u32),
                Step::Approval { .. } => None,
            })
            .collect();
        let replicas = get(self.ro.node_spec(), "replicas")
            .and_then(int)
            .filter(|r| (1..=1000).contains(r) && 10_000 % r == 0)
            .map(|r| r as u32);
        let grid = match replicas {
            Some(r) => {
                let mut changed = Vec::new();
                for st in &mut draft.steps {
                    if let Step::Weight { weight, .. } = st {
                        let pods = (*weight * f64::from(r) / 100.0).ceil().max(1.0);
                        let exact = (pods * 10_000.0 / f64::from(r)).round() / 100.0;
                        if (exact - *weight).abs() > f64::EPSILON {
                            changed.push(format!(
                                "{} -> {}",
                                super::emit::number(*weight),
                                super::emit::number(exact)
                            ));
                            *weight = exact;
                        }
                    }
                }
                cx.note(format!(
                    "Without trafficRouting Argo splits by pod counts of spec.replicas ({r}), the canary's rounded up; rampart's `replica_ratio` on a grid of {r} makes the same split{}, sizing both sides from the stable Deployment's live replicas (rounded up to a multiple of {r}).",
                    if changed.is_empty() { String::new() } else { format!(" (weights as Argo's pods make them: {})", changed.join(", ")) }
                ));
                r
            }
            None => {
                let g = weights.iter().fold(100u32, |g, w| gcd(g, *w));
                let grid = 100 / g.max(1);
                cx.note(format!(
                    "Without trafficRouting Argo approximates each setWeight by pod counts of spec.replicas; rampart's `replica_ratio` splits on a grid of {grid} part(s), on which every step's weight is exact, sizing both sides from the stable Deployment's live replicas (rounded up to a multiple of {grid})."
                ));
                grid
            }
        };
        draft.traffic = vec![
            ec(
                "mode",
                raw("replica_ratio"),
                format!("from {label} {path} without trafficRouting"),
            ),
            ec(
                "replicas",
                n(f64::from(grid)),
                format!(
                    "Argo splits by pod counts of spec.replicas{}",
                    replicas.map_or_else(
                        || " (unset, or no exact grid): the smallest exact grid".to_string(),
                        |r| format!(" ({r})")
                    )
                ),
            ),
        ];
    }

    /// Adds `ms` of waiting at the current weight: to the open step, or a new step.
    #[allow(clippy::too_many_arguments)]
    fn bake(
        &self,
        cx: &mut Cx,
        draft: &mut Draft,
        open: &mut Option<usize>,
        weight: f64,
        ms: u64,
        from: String,
        field: &str,
        pos: Pos,
    ) {
        match open.and_then(|i| draft.steps.get_mut(i)) {
            Some(Step::Weight { bake_ms, from: f, .. }) => {
                *bake_ms = bake_ms.saturating_add(ms);
                f.push(from);
            }
            _ if weight > 0.0 => {
                draft.steps.push(Step::Weight {
                    weight,
                    bake_ms: ms,
                    from: vec![from],
                });
                *open = Some(draft.steps.len() - 1);
            }
            _ => cx.unmapped(
                self.ro,
                field,
                pos,
                "a wait before the canary has any traffic: a rampart step at weight 0 sends it nothing to judge (its metrics still run from the first step)",
            ),
        }
    }

    fn traffic_routing(
        &mut self,
        cx: &mut Cx,
        draft: &mut Draft,
        tr: &Node,
        stable_service: Option<&str>,
        canary_service: Option<&str>,
    ) {
        let path = "spec.strategy.canary.trafficRouting";
        let label = self.label();
        let mut route: Option<(String, String)> = None;
        let name_at = |n: Option<&Node>| n.and_then(text).map(String::from);
        for (k, v) in entries(tr) {
            let found = match k.text.as_str() {
                "plugins" => entries(v).iter().find_map(|(pk, pv)| {
                    pk.text.contains("gatewayAPI").then(|| {
                        name_at(get(pv, "httpRoute")).or_else(|| {
                            get(pv, "httpRoutes")
                                .and_then(|r| items(r).first())
                                .and_then(|r| name_at(get(r, "name")))
                        })
                    })?
                }),
                "nginx" => name_at(get(v, "stableIngress")).or_else(|| {
                    get(v, "stableIngresses")
                        .and_then(|i| items(i).first())
                        .and_then(|n| name_at(Some(n)))
                }),
                "istio" => name_at(at(v, &["virtualService", "name"])).or_else(|| {
                    get(v, "virtualServices")
                        .and_then(|i| items(i).first())
                        .and_then(|n| name_at(get(n, "name")))
                }),
                "alb" => name_at(get(v, "ingress")),
                "smi" => {
                    name_at(get(v, "trafficSplitName")).or_else(|| name_at(get(v, "rootService")))
                }
                "traefik" => name_at(get(v, "weightedTraefikServiceName")),
                "apisix" => name_at(at(v, &["route", "name"])),
                "ambassador" => get(v, "mappings")
                    .and_then(|m| items(m).first())
                    .and_then(|n| name_at(Some(n))),
                "appMesh" => name_at(at(v, &["virtualService", "name"])),
                _ => None,
            };
            if let Some(r) = found
                && route.is_none()
            {
                route = Some((r, k.text.clone()));
            }
        }
        let service = stable_service.unwrap_or(&self.ro.name).to_string();
        let (route, provider) =
            route.unwrap_or_else(|| (self.ro.name.clone(), "traffic routing".into()));
        cx.rest(
            self.ro,
            tr,
            path,
            &[
                "plugins",
                "maxTrafficWeight",
                "nginx",
                "istio",
                "alb",
                "smi",
                "traefik",
                "apisix",
                "ambassador",
                "appMesh",
            ],
            &[
                (
                    "managedRoutes",
                    "rampart adds no header or mirror routes of its own (setHeaderRoute and setMirrorRoute steps have no equivalent)",
                ),
            ],
        );
        self.routing_rest(cx, tr, path, &provider, &route);
        if provider != "plugins" {
            cx.note(format!(
                "rampart moves the weights of a Gateway API HTTPRoute: Argo's `{provider}` routing becomes the HTTPRoute `{route}`, whose rules send to the Service `{service}` (stable pods only); rampart creates `{service}-canary` for the canary's pods (docs/kubernetes.md, http_route)."
            ));
        }
        if let Some(cs) = canary_service {
            cx.note(format!(
                "The canary Service is rampart's own `{service}-canary`, not Argo's `{cs}` (spec.strategy.canary.canaryService)."
            ));
        }
        draft.traffic = vec![
            ec(
                "mode",
                raw("http_route"),
                format!("from {label} {path}.{provider}"),
            ),
            ec(
                "service",
                s(&super::kube_name(&service)),
                format!("from {label} spec.strategy.canary.stableService"),
            ),
            ec(
                "route",
                s(&super::kube_name(&route)),
                format!("from {label} {path}.{provider}"),
            ),
        ];
    }

    /// Every field of the routing providers that the HTTPRoute does not carry: the
    /// other providers, the chosen one's other keys, and its routes after the first.
    fn routing_rest(&self, cx: &mut Cx, tr: &Node, path: &str, chosen: &str, route: &str) {
        let ro = self.ro;
        let other = format!(
            "rampart moves the weights of one HTTPRoute (`{route}`); this routing has no equivalent"
        );
        let extra = |cx: &mut Cx, v: &Node, key: &str, ppath: &str| {
            for (j, item) in get(v, key)
                .map(items)
                .unwrap_or_default()
                .iter()
                .enumerate()
                .skip(1)
            {
                cx.unmapped(
                    ro,
                    &format!("{ppath}.{key}[{j}]"),
                    item.pos,
                    format!("rampart moves the weights of one route (`{route}`), not of several"),
                );
            }
        };
        for (k, v) in entries(tr) {
            let ppath = format!("{path}.{}", k.text);
            let (mapped, lists, named): (&[&str], &[&str], &[&str]) = match k.text.as_str() {
                "plugins" => {
                    for (pk, pv) in entries(v) {
                        let plpath = format!("{ppath}.{}", pk.text);
                        if chosen == "plugins" && pk.text.contains("gatewayAPI") {
                            cx.rest(ro, pv, &plpath, &["httpRoute", "httpRoutes"], &[]);
                            extra(cx, pv, "httpRoutes", &plpath);
                            if let Some(first) =
                                get(pv, "httpRoutes").and_then(|r| items(r).first())
                            {
                                cx.rest(
                                    ro,
                                    first,
                                    &format!("{plpath}.httpRoutes[0]"),
                                    &["name"],
                                    &[],
                                );
                            }
                        } else {
                            cx.unmapped(ro, &plpath, pk.pos, "rampart moves Gateway API HTTPRoute weights; this traffic-router plugin has no equivalent");
                        }
                    }
                    continue;
                }
                "nginx" => (
                    &["stableIngress", "stableIngresses"],
                    &["stableIngresses"],
                    &[],
                ),
                "istio" => (
                    &["virtualService", "virtualServices"],
                    &["virtualServices"],
                    &["virtualService"],
                ),
                "alb" => (&["ingress"], &[], &[]),
                "smi" => (&["trafficSplitName", "rootService"], &[], &[]),
                "traefik" => (&["weightedTraefikServiceName"], &[], &[]),
                "apisix" => (&["route"], &[], &["route"]),
                "ambassador" => (&["mappings"], &["mappings"], &[]),
                "appMesh" => (&["virtualService"], &[], &["virtualService"]),
                _ => continue,
            };
            if k.text != chosen {
                cx.unmapped(ro, &ppath, k.pos, other.clone());
                continue;
            }
            cx.rest(ro, v, &ppath, mapped, &[]);
            for key in lists {
                extra(cx, v, key, &ppath);
                if let Some(first) = get(v, key).and_then(|r| items(r).first()) {
                    cx.rest(ro, first, &format!("{ppath}.{key}[0]"), &["name"], &[]);
                }
            }
            for key in named {
                if let Some(n) = get(v, key) {
                    cx.rest(ro, n, &format!("{ppath}.{key}"), &["name"], &[]);
                }
            }
        }
    }

    fn blue_green(
        &mut self,
        cx: &mut Cx,
        draft: &mut Draft,
        bg: &'a Node,
    ) -> Result<(), ImportError> {
        let ro = self.ro;
        let label = self.label();
        let path = "spec.strategy.blueGreen";
        cx.rest(
            ro,
            bg,
            path,
            &["activeService", "autoPromotionEnabled", "scaleDownDelaySeconds", "prePromotionAnalysis", "postPromotionAnalysis", "previewService"],
            &[
                ("autoPromotionSeconds", "rampart switches as soon as the new colour is ready and its preview checks pass; a timed wait before the switch has no equivalent"),
                ("previewReplicaCount", "the new colour starts at the stable's replicas"),
                ("antiAffinity", "set pod anti-affinity on the stable Deployment; the new colour inherits its pod template"),
                ("activeMetadata", "rampart labels the pods itself (`rampart.dev/track`)"),
                ("previewMetadata", "rampart labels the pods itself (`rampart.dev/track`)"),
                ("scaleDownDelayRevisionLimit", "rampart keeps one previous version"),
                ("abortScaleDownDelaySeconds", "after a rollback rampart drains the new colour for `rollback.drain`, then deletes it"),
                ("maxUnavailable", "rampart starts the new colour beside the old one"),
            ],
        );
        let service = str_at(bg, "activeService").unwrap_or(&ro.name).to_string();
        draft.traffic = vec![
            ec(
                "mode",
                raw("service_selector"),
                format!("from {label} {path}"),
            ),
            ec(
                "service",
                s(&super::kube_name(&service)),
                format!("from {label} {path}.activeService"),
            ),
        ];
        if let Some(p) = get(bg, "previewService") {
            cx.unmapped(
                ro,
                &format!("{path}.previewService"),
                p.pos,
                "rampart's blue-green on Kubernetes has no preview Service; checks of the new colour before the switch are `strategy.blue_green.preview` with absolute URLs",
            );
        }
        let mut stability = 0u64;
        let mut stability_from = Vec::new();
        if let Some(pre) = get(bg, "prePromotionAnalysis") {
            let field = format!("{path}.prePromotionAnalysis");
            let run = self.analysis_ref(cx, draft, pre, &field, false)?;
            stability += run.unwrap_or(0);
            stability_from.push(field.clone());
            cx.note(format!(
                "{label} {field}: Argo judges it on the new colour before the switch; rampart judges the same metrics after it, in the stability window at 100 %, and switches back at once on a failure (the old colour is kept running)."
            ));
        }
        if let Some(post) = get(bg, "postPromotionAnalysis") {
            let field = format!("{path}.postPromotionAnalysis");
            let run = self.analysis_ref(cx, draft, post, &field, false)?;
            stability += run.unwrap_or(0);
            stability_from.push(field);
        }
        let interval = self
            .providers
            .interval_ms
            .as_ref()
            .map_or(60_000, |(ms, _)| *ms);
        if stability == 0 {
            stability = interval;
            stability_from.push("one analysis interval (no counted analysis run)".into());
        }
        let stability_comment = format!("from {label} {}", stability_from.join(" + "));
        let auto = get(bg, "autoPromotionEnabled")
            .and_then(boolean)
            .unwrap_or(true);
        let delay = get(bg, "scaleDownDelaySeconds").and_then(int);
        if auto {
            draft.strategy = "blue_green";
            draft
                .strategy_fields
                .push(ec("stability", raw(dur(stability)), stability_comment));
            let mut keep = u64::try_from(delay.unwrap_or(30).max(0))
                .unwrap_or(0)
                .saturating_mul(1000);
            // A policy's durations are at most 365 days.
            if keep > MAX_MS {
                keep = MAX_MS;
                cx.unmapped(
                    ro,
                    &format!("{path}.scaleDownDelaySeconds"),
                    pos_of(get(bg, "scaleDownDelaySeconds")),
                    "longer than a policy's durations (365d): written as 365d",
                );
            }
            draft.strategy_fields.push(ec(
                "keep_previous",
                raw(dur(keep)),
                format!(
                    "from {label} {path}.scaleDownDelaySeconds{}",
                    if delay.is_none() {
                        " (Argo's default, 30)"
                    } else {
                        ""
                    }
                ),
            ));
        } else {
            draft.strategy = "full";
            draft
                .strategy_fields
                .push(ec("stability", raw(dur(stability)), stability_comment));
            draft.strategy_fields.push(ec(
                "approval",
                raw("{role: approver, timeout: 30d}"),
                format!("from {label} {path}.autoPromotionEnabled: false (a human promotes)"),
            ));
            if let Some(n) = get(bg, "scaleDownDelaySeconds") {
                cx.unmapped(
                    ro,
                    &format!("{path}.scaleDownDelaySeconds"),
                    n.pos,
                    SCALE_DOWN_DELAY,
                );
            }
            cx.note(format!(
                "{label} {path}.autoPromotionEnabled: false becomes `strategy.full`: the new version starts beside the old one and waits for `rampart approve` before it takes all traffic."
            ));
        }
        Ok(())
    }

    /// An analysis reference (`templates`, `args`, `dryRun`): its metrics, added to the
    /// draft. Returns how long the run takes (count x interval), when it counts.
    fn analysis_ref(
        &mut self,
        cx: &mut Cx,
        draft: &mut Draft,
        node: &Node,
        path: &str,
        background: bool,
    ) -> Result<Option<u64>, ImportError> {
        let ro = self.ro;
        cx.rest(
            ro,
            node,
            path,
            &[
                "templates",
                "args",
                "dryRun",
                "templateName",
                "clusterScope",
            ],
            &[
                (
                    "startingStep",
                    "rampart judges from the first step; a later start has no equivalent",
                ),
                (
                    "measurementRetention",
                    "rampart keeps every measurement in the release's audit trail",
                ),
                ("analysisRunMetadata", "rampart runs no AnalysisRun objects"),
            ],
        );
        let ref_args = self.args_of(cx, get(node, "args"), &format!("{path}.args"));
        let dry = dry_runs(cx, ro, node, path);
        let mut refs: Vec<(String, &Node, String, bool)> = Vec::new();
        // Old single-template form.
        if let Some(t) = get(node, "templateName") {
            refs.push((
                text(t).unwrap_or_default().to_string(),
                t,
                format!("{path}.templateName"),
                get(node, "clusterScope").and_then(boolean).unwrap_or(false),
            ));
        }
        for (i, t) in get(node, "templates")
            .map(items)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let name_node = get(t, "templateName").unwrap_or(t);
            refs.push((
                text(name_node).unwrap_or_default().to_string(),
                name_node,
                format!("{path}.templates[{i}].templateName"),
                get(t, "clusterScope").and_then(boolean).unwrap_or(false),
            ));
        }
        if refs.is_empty() {
            cx.unmapped(
                ro,
                path,
                node.pos,
                "an analysis without templates judges nothing",
            );
            return Ok(None);
        }
        let mut run: Option<u64> = None;
        for (name, name_node, field, cluster) in refs {
            let kind = if cluster {
                "ClusterAnalysisTemplate"
            } else {
                "AnalysisTemplate"
            };
            let other = if cluster {
                "AnalysisTemplate"
            } else {
                "ClusterAnalysisTemplate"
            };
            // Looked up as Argo does: a namespaced template in the Rollout's namespace.
            let find = |kind: &str| {
                let ns = (kind == "AnalysisTemplate")
                    .then_some(ro.namespace.as_deref())
                    .flatten();
                resolve(self.docs, "argoproj.io", kind, &name, ns)
            };
            let found = match find(kind) {
                Found::Missing(elsewhere) => match find(other) {
                    Found::Missing(_) => Found::Missing(elsewhere),
                    found => found,
                },
                found => found,
            };
            let t = match found {
                Found::One(t) => t,
                Found::Twice(a, b) => {
                    return Err(ImportError::at(
                        ro,
                        name_node.pos,
                        &field,
                        twice(&name, "this Rollout", a, b),
                    ));
                }
                Found::Missing(elsewhere) => {
                    let seen = found_elsewhere(&name, &elsewhere, "the Rollout's");
                    return Err(ImportError::at(
                        ro,
                        name_node.pos,
                        &field,
                        format!(
                            "the {kind} `{name}` is not among the inputs{seen}; pass the file that defines it (templates found: {})",
                            self.template_names()
                        ),
                    ));
                }
            };
            if t.kind != kind {
                cx.note(format!("{} {field}: `{name}` is a {} (the reference says {kind}); it is used as found.", self.label(), t.kind));
            }
            cx.use_doc(t);
            let tspec = get(&t.node, "spec");
            let Some(tspec) = tspec else {
                return Err(ImportError::at(
                    t,
                    pos_of(Some(&t.node)),
                    "spec",
                    format!("the {} has no spec", t.kind),
                ));
            };
            cx.rest(
                t,
                tspec,
                "spec",
                &["args", "metrics", "dryRun"],
                &[(
                    "measurementRetention",
                    "rampart keeps every measurement in the release's audit trail",
                )],
            );
            let mut args = self.args_of(cx, get(tspec, "args"), "spec.args");
            // The reference's values win over the template's defaults.
            for (k, v) in &ref_args {
                args.insert(k.clone(), v.clone());
            }
            let tdry = dry_runs(cx, t, tspec, "spec");
            for (i, m) in get(tspec, "metrics")
                .map(items)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let mpath = format!("spec.metrics[{i}]");
                let mname = str_at(m, "name").unwrap_or("metric").to_string();
                let is_dry = [&dry, &tdry]
                    .iter()
                    .any(|l| l.iter().any(|d| d == ".*" || mname.contains(d.as_str())));
                if let Some(ms) =
                    self.metric(cx, draft, t, m, &mpath, &args, is_dry, path, background)
                {
                    run = Some(run.map_or(ms, |r: u64| r.max(ms)));
                }
            }
        }
        Ok(run)
    }

    fn template_names(&self) -> String {
        let names: Vec<String> = self
            .docs
            .iter()
            .filter(|d| d.kind.ends_with("AnalysisTemplate"))
            .map(|d| format!("{} `{}`", d.kind, d.name))
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// `args: [{name, value | valueFrom}]`, resolved where they are static.
    fn args_of(&self, cx: &mut Cx, node: Option<&Node>, path: &str) -> HashMap<String, Arg> {
        let mut out = HashMap::new();
        for (i, a) in node.map(items).unwrap_or_default().iter().enumerate() {
            let Some(name) = str_at(a, "name") else {
                continue;
            };
            let v = if let Some(v) = get(a, "value") {
                Arg::Value(text(v).unwrap_or_default().to_string())
            } else if let Some(vf) = get(a, "valueFrom") {
                if let Some(h) = str_at(vf, "podTemplateHashValue") {
                    if h == "Latest" {
                        cx.note(format!(
                            "The argument `{name}` (the new pods' template hash) is written as `{{version}}`: rampart labels pods `rampart.dev/version` with the version, so the query must select that label (relabelled) where it selected `rollouts-pod-template-hash`."
                        ));
                        Arg::Version
                    } else {
                        Arg::Unresolved(format!(
                            "`{name}` is the {h} pods' hash: rampart reads each variant itself (`{{variant}}`, `{{version}}`); compare with stable by `max_ratio_to_stable` instead"
                        ))
                    }
                } else if let Some(fp) = at(vf, &["fieldRef", "fieldPath"]).and_then(text) {
                    match self.field_value(fp) {
                        Some(v) => Arg::Value(v),
                        None => Arg::Unresolved(format!(
                            "`{name}` comes from `{fp}`, which is not a static field of the Rollout"
                        )),
                    }
                } else if let Some(sk) = get(vf, "secretKeyRef") {
                    let env = env_name(name);
                    cx.note(format!(
                        "The argument `{name}` comes from the Secret `{}` (key `{}`): rampart reads it from the environment variable `{env}` where `rampart run` runs.",
                        str_at(sk, "name").unwrap_or_default(),
                        str_at(sk, "key").unwrap_or_default()
                    ));
                    Arg::Env(env)
                } else {
                    Arg::Unresolved(format!("`{name}` has a `valueFrom` rampart cannot read"))
                }
            } else {
                Arg::Unresolved(format!("`{name}` has no value ({path}[{i}])"))
            };
            out.insert(name.to_string(), v);
        }
        out
    }

    fn field_value(&self, fp: &str) -> Option<String> {
        let node = &self.ro.node;
        let fp = fp.trim();
        for (prefix, keys) in [
            ("metadata.labels", "labels"),
            ("metadata.annotations", "annotations"),
        ] {
            if let Some(rest) = fp.strip_prefix(prefix) {
                let key = rest
                    .trim_start_matches("['")
                    .trim_start_matches("[\"")
                    .trim_end_matches("']")
                    .trim_end_matches("\"]")
                    .trim_start_matches('.');
                return at(node, &["metadata", keys, key])
                    .and_then(text)
                    .map(String::from);
            }
        }
        match fp {
            "metadata.name" => Some(self.ro.name.clone()),
            "metadata.namespace" => Some(
                self.ro
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            ),
            _ => {
                let keys: Vec<&str> = fp.split('.').collect();
                at(node, &keys).and_then(text).map(String::from)
            }
        }
    }

    /// One metric of a template; returns its run time (count x interval) when it was
    /// mapped and counts.
    #[allow(clippy::too_many_arguments)]
    fn metric(
        &mut self,
        cx: &mut Cx,
        draft: &mut Draft,
        t: &Doc,
        m: &Node,
        mpath: &str,
        args: &HashMap<String, Arg>,
        dry: bool,
        ref_path: &str,
        background: bool,
    ) -> Option<u64> {
        cx.rest(
            t,
            m,
            mpath,
            &["name", "interval", "count", "successCondition", "failureCondition", "failureLimit", "consecutiveErrorLimit", "provider", "inconclusiveLimit"],
            &[
                ("initialDelay", "rampart judges from the first interval; a longer first step (its bake) gives the canary time instead"),
                ("consecutiveSuccessLimit", "a rampart step ends at its first passing interval after its bake"),
            ],
        );
        let name = str_at(m, "name").unwrap_or("metric").to_string();
        let interval = templated(cx, t, m, mpath, "interval", args, duration_ms);
        let count = templated(cx, t, m, mpath, "count", args, parse_int).filter(|c| *c > 0);
        if !background && interval.is_some() && count.is_none() {
            cx.unmapped(
                t,
                &format!("{mpath}.count"),
                m.pos,
                format!(
                    "metric `{name}` has an `interval` and no `count`: it runs indefinitely, which Argo Rollouts refuses outside background analysis (the analysis could never end); nothing says how long rampart should wait for it, so nothing waits"
                ),
            );
        }
        let Some(provider) = get(m, "provider") else {
            cx.unmapped(
                t,
                &format!("{mpath}.provider"),
                m.pos,
                "a metric without a provider measures nothing",
            );
            return None;
        };
        let Some((pkey, pnode)) = entries(provider).first() else {
            cx.unmapped(
                t,
                &format!("{mpath}.provider"),
                provider.pos,
                "a metric without a provider measures nothing",
            );
            return None;
        };
        let ppath = format!("{mpath}.provider.{}", pkey.text);
        let job = pkey.text == "job";
        let fields = match pkey.text.as_str() {
            "prometheus" => self.prometheus(cx, t, pnode, &ppath, args),
            "datadog" => self.datadog(cx, t, pnode, &ppath, args),
            "newRelic" => self.newrelic(cx, t, pnode, &ppath, args),
            "cloudWatch" => self.cloudwatch(cx, t, pnode, &ppath, args),
            "web" => self.web(cx, t, pnode, &ppath, args),
            "job" => self.job(cx, t, pnode, &ppath, args),
            other => {
                cx.unmapped(
                    t,
                    &ppath,
                    pkey.pos,
                    format!("rampart has no `{other}` metrics source; it reads Prometheus, Datadog, New Relic, CloudWatch, an HTTP JSON document (`web`) or a command (`job`)"),
                );
                None
            }
        }?;
        let mut fields = fields;
        let mut empty_fails = false;
        if job {
            for c in ["successCondition", "failureCondition"] {
                if let Some(n) = get(m, c) {
                    cx.unmapped(t, &format!("{mpath}.{c}"), n.pos, "a job metric is judged by the job's exit status; the command's exit status is what rampart judges");
                }
            }
            fields.push(ec("judge", raw("{max: 0}"), "the job failed: 1"));
        } else {
            let (limit, fails_on_empty) = self.limit(cx, t, m, mpath, args)?;
            empty_fails = fails_on_empty;
            match limit {
                Limit::Max(v) => {
                    fields.push(e("direction", raw("lower_is_better")));
                    fields.push(e(
                        "judge",
                        raw(format!("{{max: {}}}", super::emit::number(v))),
                    ));
                }
                Limit::Min(v) => {
                    fields.push(e("direction", raw("higher_is_better")));
                    fields.push(e(
                        "judge",
                        raw(format!("{{min: {}}}", super::emit::number(v))),
                    ));
                }
            }
        }
        let failure_limit =
            templated(cx, t, m, mpath, "failureLimit", args, parse_int).unwrap_or(0);
        if failure_limit < 0 {
            cx.unmapped(
                t,
                &format!("{mpath}.failureLimit"),
                pos_of(get(m, "failureLimit")),
                "a negative failureLimit never fails; a rampart metric always can",
            );
        }
        // A policy's failure_limit is a u32 of at least 1.
        let trips = u32::try_from(failure_limit.max(0).saturating_add(1)).unwrap_or(u32::MAX);
        if failure_limit >= i64::from(u32::MAX) {
            cx.unmapped(
                t,
                &format!("{mpath}.failureLimit"),
                pos_of(get(m, "failureLimit")),
                format!(
                    "more failures than a policy's `failure_limit` can count; written as {trips}"
                ),
            );
        }
        if empty_fails {
            self.empty_limit = Some(self.empty_limit.map_or(trips, |l: u32| l.min(trips)));
        }
        fields.push(ec(
            "failure_limit",
            n(f64::from(trips)),
            format!(
                "Argo's failureLimit {} allows that many failed measurements in total; rampart trips at {trips}",
                trips - 1
            ),
        ));
        if let Some(il) =
            templated(cx, t, m, mpath, "inconclusiveLimit", args, parse_int).filter(|v| *v > 0)
        {
            cx.unmapped(
                t,
                &format!("{mpath}.inconclusiveLimit"),
                pos_of(get(m, "inconclusiveLimit")),
                format!("Argo pauses after {il} inconclusive measurements (between the success and failure conditions); rampart's threshold judge has no such band"),
            );
        }
        let mut cel = templated(cx, t, m, mpath, "consecutiveErrorLimit", args, parse_int)
            .unwrap_or(4)
            .max(0);
        // `no_data.limit` (cel + 1) is a u32.
        if cel >= i64::from(u32::MAX) {
            cel = i64::from(u32::MAX) - 1;
            cx.unmapped(
                t,
                &format!("{mpath}.consecutiveErrorLimit"),
                pos_of(get(m, "consecutiveErrorLimit")),
                format!(
                    "more errors than a policy's `no_data.limit` can count; written as {}",
                    cel + 1
                ),
            );
        }
        if self.error_limit.as_ref().is_none_or(|(l, _)| cel < *l) {
            self.error_limit = Some((cel, format!("{} {mpath}.consecutiveErrorLimit", t.label())));
        }
        if dry {
            fields.push(ec(
                "critical",
                raw("false"),
                format!("dry run in {} {ref_path}", self.label()),
            ));
            fields.push(e("weight", raw("0")));
        }
        if let Some(ms) = interval {
            let from = format!("{} {mpath}.interval", t.label());
            match &self.providers.interval_ms {
                Some((cur, _)) if *cur <= ms => {
                    if *cur != ms {
                        cx.note(format!("{from} ({}): rampart judges every metric each `analysis.interval` ({})", dur(ms), dur(*cur)));
                    }
                }
                _ => {
                    if let Some((cur, _)) = &self.providers.interval_ms {
                        cx.note(format!("rampart judges every metric each `analysis.interval`: the shortest of the metrics' intervals ({} from {from}) replaces {}", dur(ms), dur(*cur)));
                    }
                    self.providers.interval_ms = Some((ms, from));
                }
            }
        }
        let from = format!(
            "{} {mpath} (via {} {ref_path}{})",
            t.label(),
            self.label(),
            if background { ", background" } else { "" }
        );
        draft.add_metric(Metric {
            name: super::kube_name(&name),
            from,
            fields,
            object: Some((t.clone(), mpath.to_string())),
        });
        self.any_metric = true;
        Some(match (count, interval) {
            (Some(c), Some(i)) => (c as u64).saturating_mul(i),
            (Some(_), None) | (None, _) => 0,
        })
    }

    /// The metric's limit from its conditions, or `None` (reported) when none is read;
    /// and whether the judged condition fails an empty result (`len(result) == 0 ||`).
    fn limit(
        &self,
        cx: &mut Cx,
        t: &Doc,
        m: &Node,
        mpath: &str,
        args: &HashMap<String, Arg>,
    ) -> Option<(Limit, bool)> {
        let read = |cx: &mut Cx, key: &str, f: fn(&str) -> Option<expr::Condition>| {
            let n = get(m, key)?;
            // Argo fills the arguments in a metric as a whole, conditions included.
            let src = match self.subst(text(n).unwrap_or_default(), args, false) {
                Ok(src) => src,
                Err(why) => {
                    cx.unmapped(t, &format!("{mpath}.{key}"), n.pos, why);
                    return Some(None);
                }
            };
            let src = src.as_str();
            match f(src) {
                Some(c) => Some(Some(c)),
                None => {
                    cx.unmapped(
                        t,
                        &format!("{mpath}.{key}"),
                        n.pos,
                        format!("`{src}` is not a form rampart reads (one comparison of `result` or `result[0]` with a number, optionally `len(result) == 0 ||` or `isNaN(..) ||`)"),
                    );
                    Some(None)
                }
            }
        };
        let success = read(cx, "successCondition", expr::success);
        let failure = read(cx, "failureCondition", expr::failure);
        let empty_note = |cx: &mut Cx, c: &expr::Condition, key: &str| {
            if c.empty_clause {
                cx.note(format!(
                    "{} {mpath}.{key} speaks of an empty or NaN result: in rampart an empty result is no data (the step holds; at `analysis.no_data.limit` it rolls back), never a pass or a failure",
                    t.label()
                ));
            }
        };
        match (success, failure) {
            (Some(Some(sc)), Some(Some(fc))) => {
                empty_note(cx, &sc, "successCondition");
                empty_note(cx, &fc, "failureCondition");
                if sc.limit != fc.limit {
                    cx.unmapped(
                        t,
                        &format!("{mpath}.successCondition"),
                        pos_of(get(m, "successCondition")),
                        "values between the success and the failure condition are inconclusive in Argo (the rollout pauses); rampart judges by the failure condition alone and passes them",
                    );
                }
                Some((fc.limit, fc.empty_clause))
            }
            (Some(Some(c)), _) => {
                empty_note(cx, &c, "successCondition");
                Some((c.limit, false))
            }
            (_, Some(Some(c))) => {
                empty_note(cx, &c, "failureCondition");
                Some((c.limit, c.empty_clause))
            }
            (None, None) => {
                cx.unmapped(t, mpath, m.pos, "a metric without a successCondition or failureCondition is only recorded by Argo; rampart judges every metric it reads");
                None
            }
            _ => None,
        }
    }

    fn subst(
        &self,
        text: &str,
        args: &HashMap<String, Arg>,
        header: bool,
    ) -> Result<String, String> {
        subst(text, args, header)
    }

    fn prometheus(
        &mut self,
        cx: &mut Cx,
        t: &Doc,
        p: &Node,
        path: &str,
        args: &HashMap<String, Arg>,
    ) -> Option<Vec<E>> {
        cx.rest(
            t,
            p,
            path,
            &["address", "query"],
            &[
                (
                    "authentication",
                    "rampart asks `analysis.prometheus` without authentication",
                ),
                ("headers", "rampart sends no extra headers to Prometheus"),
                (
                    "timeout",
                    "rampart's Prometheus requests have their own timeout",
                ),
                ("insecure", "rampart verifies TLS certificates"),
                (
                    "rangeQuery",
                    "a `range: true` metric averages over the analysis interval instead",
                ),
            ],
        );
        let query = self.query_text(cx, t, p, path, "query", args)?;
        if let Some(addr) = get(p, "address") {
            match self.subst(text(addr).unwrap_or_default(), args, false) {
                Ok(a) if a.starts_with("http://") || a.starts_with("https://") => {
                    self.providers
                        .prometheus(cx, a, format!("{} {path}.address", t.label()));
                }
                Ok(a) => cx.unmapped(
                    t,
                    &format!("{path}.address"),
                    addr.pos,
                    format!("`{a}` is not an http:// or https:// URL"),
                ),
                Err(why) => cx.unmapped(t, &format!("{path}.address"), addr.pos, why),
            }
        }
        self.providers.needs_prometheus = true;
        Some(vec![e("source", raw("prometheus")), e("query", s(&query))])
    }

    fn query_text(
        &self,
        cx: &mut Cx,
        t: &Doc,
        p: &Node,
        path: &str,
        key: &str,
        args: &HashMap<String, Arg>,
    ) -> Option<String> {
        let Some(q) = get(p, key) else {
            cx.unmapped(t, path, p.pos, format!("no `{key}`"));
            return None;
        };
        match self.subst(text(q).unwrap_or_default(), args, false) {
            Ok(q) if !q.trim().is_empty() => Some(q.trim().to_string()),
            Ok(_) => {
                cx.unmapped(t, &format!("{path}.{key}"), q.pos, "an empty query");
                None
            }
            Err(why) => {
                cx.unmapped(t, &format!("{path}.{key}"), q.pos, why);
                None
            }
        }
    }

    fn datadog(
        &mut self,
        cx: &mut Cx,
        t: &Doc,
        p: &Node,
        path: &str,
        args: &HashMap<String, Arg>,
    ) -> Option<Vec<E>> {
        cx.rest(
            t,
            p,
            path,
            &["query", "queries", "apiVersion"],
            &[
                (
                    "interval",
                    "rampart reads each query over its own analysis interval",
                ),
                (
                    "formula",
                    "rampart reads one Datadog query; a formula over several has no equivalent",
                ),
                ("aggregator", "rampart reads the query's last point"),
            ],
        );
        let v2 = str_at(p, "apiVersion") == Some("v2");
        let query = if get(p, "query").is_some() {
            self.query_text(cx, t, p, path, "query", args)?
        } else {
            let qs = get(p, "queries")?;
            let all = entries(qs);
            if all.len() != 1 || get(p, "formula").is_some() {
                cx.unmapped(
                    t,
                    &format!("{path}.queries"),
                    qs.pos,
                    "rampart reads one Datadog query; several with a formula have no equivalent",
                );
                return None;
            }
            let (k, q) = &all[0];
            match self.subst(text(q).unwrap_or_default(), args, false) {
                Ok(q) => q,
                Err(why) => {
                    cx.unmapped(t, &format!("{path}.queries.{}", k.text), q.pos, why);
                    return None;
                }
            }
        };
        self.providers.datadog(
            v2 || get(p, "queries").is_some(),
            format!("{} {path}", t.label()),
        );
        cx.note("Datadog keys: rampart reads them from DD_API_KEY and DD_APP_KEY where `rampart run` runs (Argo reads the Secret `datadog`).");
        Some(vec![e("source", raw("datadog")), e("query", s(&query))])
    }

    fn newrelic(
        &mut self,
        cx: &mut Cx,
        t: &Doc,
        p: &Node,
        path: &str,
        args: &HashMap<String, Arg>,
    ) -> Option<Vec<E>> {
        cx.rest(t, p, path, &["query", "profile"], &[]);
        let query = self.query_text(cx, t, p, path, "query", args)?;
        self.providers.newrelic(cx, t, path, p.pos);
        Some(vec![e("source", raw("newrelic")), e("query", s(&query))])
    }

    fn cloudwatch(
        &mut self,
        cx: &mut Cx,
        t: &Doc,
        p: &Node,
        path: &str,
        args: &HashMap<String, Arg>,
    ) -> Option<Vec<E>> {
        cx.rest(
            t,
            p,
            path,
            &["metricDataQueries"],
            &[(
                "interval",
                "rampart reads CloudWatch over each analysis interval; Argo's lookback window has no equivalent",
            )],
        );
        let queries = get(p, "metricDataQueries").map(items).unwrap_or_default();
        let returned: Vec<&Node> = queries
            .iter()
            .filter(|q| get(q, "returnData").and_then(boolean).unwrap_or(true))
            .collect();
        let [q] = returned.as_slice() else {
            cx.unmapped(t, &format!("{path}.metricDataQueries"), p.pos, "rampart reads one CloudWatch expression; several queries returning data have no equivalent");
            return None;
        };
        if queries.len() > 1 {
            cx.unmapped(t, &format!("{path}.metricDataQueries"), p.pos, "rampart reads one CloudWatch expression; an expression over other queries' ids has no equivalent");
            return None;
        }
        cx.rest(
            t,
            q,
            &format!("{path}.metricDataQueries[0]"),
            &["id", "expression", "returnData", "label", "metricStat"],
            &[(
                "period",
                "rampart asks CloudWatch for one point over each analysis interval; a period of its own has no equivalent",
            )],
        );
        let Some(expr) = get(q, "expression") else {
            cx.unmapped(t, &format!("{path}.metricDataQueries[0].metricStat"), q.pos, "rampart reads a metric math or Metrics Insights `expression`; rewrite the metricStat as one");
            return None;
        };
        let query = match self.subst(text(expr).unwrap_or_default(), args, false) {
            Ok(q) => q,
            Err(why) => {
                cx.unmapped(
                    t,
                    &format!("{path}.metricDataQueries[0].expression"),
                    expr.pos,
                    why,
                );
                return None;
            }
        };
        self.providers.cloudwatch(cx, t, path, p.pos);
        Some(vec![e("source", raw("cloudwatch")), e("query", s(&query))])
    }

    fn web(
        &mut self,
        cx: &mut Cx,
        t: &Doc,
        p: &Node,
        path: &str,
        args: &HashMap<String, Arg>,
    ) -> Option<Vec<E>> {
        cx.rest(
            t,
            p,
            path,
            &["url", "headers", "jsonPath", "method"],
            &[
                (
                    "timeoutSeconds",
                    "rampart's HTTP metrics have their own timeout",
                ),
                ("insecure", "rampart verifies TLS certificates"),
                (
                    "body",
                    "rampart GETs the document; a request body has no equivalent",
                ),
                (
                    "jsonBody",
                    "rampart GETs the document; a request body has no equivalent",
                ),
                (
                    "authentication",
                    "use a header with `{env:NAME}` for a token",
                ),
            ],
        );
        if let Some(m) = str_at(p, "method").filter(|m| !m.eq_ignore_ascii_case("GET")) {
            cx.unmapped(t, &format!("{path}.method"), pos_of(get(p, "method")), format!("rampart's `http` source GETs the document; `{m}` has no equivalent (a `command` metric with curl can)"));
            return None;
        }
        let url = self.query_text(cx, t, p, path, "url", args)?;
        let mut fields = vec![e("source", raw("http")), e("url", s(&url))];
        let mut headers = Vec::new();
        for (i, h) in get(p, "headers")
            .map(items)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let (Some(k), Some(v)) = (str_at(h, "key"), str_at(h, "value")) else {
                continue;
            };
            match self.subst(v, args, true) {
                Ok(v) => headers.push(e(k, s(&v))),
                Err(why) => {
                    cx.unmapped(t, &format!("{path}.headers[{i}]"), h.pos, why);
                    return None;
                }
            }
        }
        if !headers.is_empty() {
            fields.push(e("headers", Y::Map(headers)));
        }
        if let Some(jp) = get(p, "jsonPath") {
            let raw_path = text(jp).unwrap_or_default().trim();
            let inner = raw_path
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
                .unwrap_or(raw_path)
                .trim();
            let inner = if inner.starts_with('$') {
                inner.to_string()
            } else {
                format!("$.{}", inner.trim_start_matches('.'))
            };
            match ValuePath::parse(&inner) {
                Ok(_) => fields.push(e("value", s(&inner))),
                Err(why) => {
                    cx.unmapped(t, &format!("{path}.jsonPath"), jp.pos, format!("`{raw_path}` is not a JSON path rampart reads ({why}): `$` then `.field`, `[\"field\"]` or `[index]` steps"));
                    return None;
                }
            }
        }
        Some(fields)
    }

    fn job(
        &mut self,
        cx: &mut Cx,
        t: &Doc,
        p: &Node,
        path: &str,
        args: &HashMap<String, Arg>,
    ) -> Option<Vec<E>> {
        let containers = at(p, &["spec", "template", "spec", "containers"])
            .map(items)
            .unwrap_or_default();
        let cpath = format!("{path}.spec.template.spec.containers");
        let [c] = containers else {
            cx.unmapped(t, &cpath, p.pos, "rampart runs one command; a job with several containers (or none) has no equivalent");
            return None;
        };
        // The Job around the command: rampart runs the command itself, so none of it
        // is carried.
        let job_why = "rampart runs the job's command where `rampart run` runs, once per interval; the Job's other settings have no equivalent";
        cx.rest(t, p, path, &["spec"], &[("metadata", job_why)]);
        if let Some(spec) = get(p, "spec") {
            cx.rest(
                t,
                spec,
                &format!("{path}.spec"),
                &["template"],
                &[(
                    "backoffLimit",
                    "rampart runs the command once per interval, never retried",
                )],
            );
            if let Some(tpl) = get(spec, "template") {
                cx.rest(
                    t,
                    tpl,
                    &format!("{path}.spec.template"),
                    &["spec"],
                    &[("metadata", job_why)],
                );
                if let Some(ps) = get(tpl, "spec") {
                    cx.rest(
                        t,
                        ps,
                        &format!("{path}.spec.template.spec"),
                        &["containers"],
                        &[("restartPolicy", job_why)],
                    );
                }
            }
        }
        cx.rest(
            t,
            c,
            &format!("{cpath}[0]"),
            &["name", "command", "args"],
            &[(
                "image",
                "the job's command runs where `rampart run` runs, not in this image: make sure the program is there",
            )],
        );
        let mut argv: Vec<String> = Vec::new();
        for key in ["command", "args"] {
            for (i, a) in get(c, key)
                .map(items)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                match self.subst(text(a).unwrap_or_default(), args, false) {
                    Ok(v) => argv.push(v),
                    Err(why) => {
                        cx.unmapped(t, &format!("{cpath}[0].{key}[{i}]"), a.pos, why);
                        return None;
                    }
                }
            }
        }
        if argv.is_empty() {
            cx.unmapped(t, &format!("{cpath}[0]"), c.pos, "the job runs its image's entrypoint, which rampart cannot run without the image; give it a `command`");
            return None;
        }
        cx.note(format!(
            "{} {path}: the job's command runs where `rampart run` runs, not in the image `{}`; its exit status is the measurement (0 passes, anything else fails).",
            t.label(),
            str_at(c, "image").unwrap_or_default()
        ));
        let mut cmd = vec![
            "sh".to_string(),
            "-c".to_string(),
            super::canary_only(
                "if \"$@\" >/dev/null 2>&1; then echo 0; else echo 1; fi",
                "0",
            ),
            "job".to_string(),
        ];
        cmd.extend(argv);
        Some(vec![
            e("source", raw("command")),
            ec("command", list(&cmd), super::CANARY_ONLY),
        ])
    }

    fn finish(&mut self, cx: &mut Cx, draft: &mut Draft) {
        let label = self.label();
        let ns = self
            .ro
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let mut fallback = error_rate_metric(
            &ns,
            &self.ro.name,
            "rampart (the Rollout has no analysis; a policy judges at least one metric)"
                .to_string(),
        );
        fallback.fields.push(e("judge", raw("{max: 1%}")));
        draft.fallback = Some(fallback.clone());
        if !self.any_metric {
            draft.add_metric(fallback);
            self.providers.needs_prometheus = true;
            cx.note(format!(
                "{label} has no analysis: the policy judges the canary's share of 5xx responses from Prometheus (`http_requests_total` by the `track` label rampart puts on pods); adjust the query and the limit to your metrics."
            ));
        }
        draft.analysis = self.providers.entries(cx);
        draft.analysis.push(ec(
            "failure_count",
            raw("total"),
            "Argo counts failed measurements in total, not in a row",
        ));
        // A measurement error in Argo (a failed query, `result[0]` of an empty result)
        // is no data in rampart: Argo aborts after consecutiveErrorLimit + 1 of them in
        // a row, and after failureLimit + 1 empty results where the failure condition
        // fails them.
        if let Some((limit, from)) = &self.error_limit {
            let errors = u32::try_from(limit.saturating_add(1)).unwrap_or(u32::MAX);
            let (n, why) = match self.empty_limit {
                Some(empty) if empty < errors => (
                    empty,
                    format!(
                        "a failure condition fails an empty result, and Argo aborts after {empty} failed measurements"
                    ),
                ),
                _ => (
                    errors,
                    format!(
                        "from {from}: Argo aborts after more than {limit} measurement errors in a row (a failed query, an empty result), which rampart calls no data"
                    ),
                ),
            };
            draft.analysis.push(ec(
                "no_data",
                raw(format!("{{limit: {n}, action: rollback}}")),
                why,
            ));
        }
        if draft.strategy.is_empty() {
            draft.strategy = "canary";
        }
    }
}

impl Doc {
    fn node_spec(&self) -> &Node {
        get(&self.node, "spec").unwrap_or(&self.node)
    }
}

/// The longest duration a policy takes: 365 days.
pub(super) const MAX_MS: u64 = 365 * 86_400_000;

/// Why `scaleDownDelaySeconds` is not carried outside an automatic blue-green.
const SCALE_DOWN_DELAY: &str = "Argo keeps the old pods this long after promotion; rampart keeps a previous version running only in a blue-green (`keep_previous`), and `rollback.drain` is something else (how long requests in flight to a version get to finish before it is stopped)";

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// `FOO_BAR` from `foo-bar`.
fn env_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{s}")
    } else {
        s
    }
}

/// The `dryRun[].metricName`s under `node` that the import can match. Argo reads each
/// as a regular expression matched anywhere in a metric's name: a plain name (no
/// regex metacharacters) matches as a substring and `.*` matches every metric; any
/// other expression is unmapped (rampart has no regex matcher here), and the metrics
/// it would select are judged in earnest.
fn dry_runs(cx: &mut Cx, doc: &Doc, node: &Node, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (j, d) in get(node, "dryRun")
        .map(items)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let Some(name) = str_at(d, "metricName") else {
            continue;
        };
        if name == ".*" || !name.contains(|c: char| "\\.+*?()|[]{}^$".contains(c)) {
            out.push(name.to_string());
        } else {
            cx.unmapped(
                doc,
                &format!("{path}.dryRun[{j}].metricName"),
                pos_of(get(d, "metricName")),
                format!("Argo reads `{name}` as a regular expression; the import matches only plain names and `.*`, so the metrics it selects are judged (and can roll back) instead of dry-run: list them by name"),
            );
        }
    }
    out
}

/// A number or duration field of a metric, `{{args.NAME}}` filled in first. A value
/// that still does not parse is unmapped (the field then takes Argo's default), never
/// defaulted silently.
#[allow(clippy::too_many_arguments)]
fn templated<T>(
    cx: &mut Cx,
    t: &Doc,
    m: &Node,
    mpath: &str,
    key: &str,
    args: &HashMap<String, Arg>,
    parse: fn(&str) -> Option<T>,
) -> Option<T> {
    let n = get(m, key)?;
    let src = text(n).unwrap_or_default();
    let why = match subst(src, args, false) {
        Ok(v) => match parse(v.trim()) {
            Some(v) => return Some(v),
            None => format!(
                "`{v}` is not a value rampart reads here; the import uses Argo's default instead"
            ),
        },
        Err(why) => format!("{why}; the import uses Argo's default instead"),
    };
    cx.unmapped(t, &format!("{mpath}.{key}"), n.pos, why);
    None
}

fn parse_int(s: &str) -> Option<i64> {
    s.parse().ok()
}

/// `{{args.NAME}}` filled in; anything it cannot fill in is an error saying why.
fn subst(text: &str, args: &HashMap<String, Arg>, header: bool) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err("an unclosed `{{`".into());
        };
        let inner = after[..end].trim();
        let Some(name) = inner.strip_prefix("args.") else {
            return Err(format!(
                "`{{{{{inner}}}}}` is not an argument rampart can fill in"
            ));
        };
        match args.get(name.trim()) {
            Some(Arg::Value(v)) => out.push_str(v),
            Some(Arg::Version) => out.push_str("{version}"),
            Some(Arg::Env(env)) if header => out.push_str(&format!("{{env:{env}}}")),
            Some(Arg::Env(env)) => {
                return Err(format!(
                    "the argument `{name}` is a Secret's value; rampart puts secrets only in headers (`{{env:{env}}}`), never in a query or URL"
                ));
            }
            Some(Arg::Unresolved(why)) => return Err(why.clone()),
            None => {
                return Err(format!(
                    "no value for the argument `{name}` in the template or the Rollout"
                ));
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_fill_in_values_and_the_latest_hash_as_the_version() {
        let mut args = HashMap::new();
        args.insert("svc".to_string(), Arg::Value("demo".into()));
        args.insert("hash".to_string(), Arg::Version);
        args.insert("token".to_string(), Arg::Env("TOKEN".into()));
        assert_eq!(
            subst(
                "x{svc=\"{{args.svc}}\",h=\"{{ args.hash }}\"}",
                &args,
                false
            )
            .unwrap(),
            "x{svc=\"demo\",h=\"{version}\"}"
        );
        assert_eq!(
            subst("Bearer {{args.token}}", &args, true).unwrap(),
            "Bearer {env:TOKEN}"
        );
        assert!(subst("{{args.token}}", &args, false).is_err());
        assert!(subst("{{args.nope}}", &args, false).is_err());
        assert!(subst("{{templates.x}}", &args, false).is_err());
        assert!(subst("{{args.svc", &args, false).is_err());
    }
}
