//! Flagger: a `Canary` with its `MetricTemplate`s and `AlertProvider`s, as a rampart
//! policy. Step weights become canary steps, iterations a blue-green stability
//! window, metrics rampart metrics with their limits, webhooks gates, approvals,
//! metrics and notification hooks, and alerts notification hooks.

use super::emit::{E, Y, e, ec, list, n, number, raw, s};
use super::tree::{
    Doc, Found, at, duration_of, entries, found_elsewhere, get, int, items, pos_of, resolve,
    str_at, text, twice,
};
use super::{
    Cx, Draft, ImportError, Metric, Providers, Source, Step, Workload, deploy_section, dur,
    error_counts, find_deployment, kube_name, not_found, pod_selector, service_name,
};
use crate::yaml::Node;

pub(super) fn import(cx: &mut Cx, docs: &[Doc], sources: &[Source]) -> Result<Draft, ImportError> {
    let canaries: Vec<&Doc> = docs
        .iter()
        .filter(|d| d.is("flagger.app", "Canary"))
        .collect();
    let Some(cn) = canaries.first().copied() else {
        return Err(not_found(
            docs,
            sources,
            "Canary (apiVersion flagger.app/v1beta1, kind Canary)",
        ));
    };
    if let Some(second) = canaries.get(1) {
        return Err(ImportError::at(
            second,
            pos_of(get(&second.node, "kind")),
            "kind",
            format!(
                "a second Canary (`{}`, after `{}` in {}): import one Canary at a time",
                second.name, cn.name, cn.file
            ),
        ));
    }
    cx.use_doc(cn);
    let label = cn.label();
    let spec = get(&cn.node, "spec").ok_or_else(|| {
        ImportError::at(cn, pos_of(Some(&cn.node)), "spec", "the Canary has no spec")
    })?;
    let target = get(spec, "targetRef")
        .and_then(|t| str_at(t, "name"))
        .ok_or_else(|| {
            ImportError::at(
                cn,
                pos_of(get(spec, "targetRef")).max(spec.pos),
                "spec.targetRef.name",
                "the Canary names no target Deployment (`spec.targetRef.name`)",
            )
        })?;
    let analysis = get(spec, "analysis").or_else(|| get(spec, "canaryAnalysis")).ok_or_else(|| {
        ImportError::at(
            cn,
            spec.pos,
            "spec.analysis",
            "the Canary has no analysis; rampart imports a canary (stepWeight, stepWeights) or a blue-green (iterations)",
        )
    })?;
    let apath = if get(spec, "analysis").is_some() {
        "spec.analysis"
    } else {
        "spec.canaryAnalysis"
    };
    cx.rest(
        cn,
        spec,
        "spec",
        &["targetRef", "service", "analysis", "canaryAnalysis", "provider", "progressDeadlineSeconds", "ingressRef"],
        &[
            ("autoscalerRef", "rampart keeps within the bounds of an HPA that scales the stable Deployment (replica_ratio) and creates none for the canary"),
            ("upstreamRef", "rampart moves Gateway API HTTPRoute weights, not a Gloo upstream's"),
            ("routeRef", "rampart moves Gateway API HTTPRoute weights"),
            ("skipAnalysis", "rampart never promotes without analysis"),
            ("revertOnDeletion", "rampart owns no copy of the Deployment to revert: the stable Deployment is yours"),
            ("suspend", "`rampart freeze on --service S` stops new releases of a service"),
        ],
    );
    if let Some(tr) = get(spec, "targetRef") {
        cx.rest(
            cn,
            tr,
            "spec.targetRef",
            &["apiVersion", "kind", "name"],
            &[],
        );
        if let Some(k) = str_at(tr, "kind").filter(|k| *k != "Deployment") {
            cx.unmapped(
                cn,
                "spec.targetRef.kind",
                pos_of(get(tr, "kind")),
                format!("rampart releases Deployments, not a {k}"),
            );
        }
    }
    let mut draft = Draft {
        service: service_name(&cn.name),
        service_from: format!("from {label} metadata.name"),
        header: vec![
            format!("Imported by `rampart import flagger` from {label} ({}).", cn.file),
            "Comments name the source field of each value; `rampart import` lists what it could not map.".into(),
        ],
        ..Draft::default()
    };
    let namespace = cn.namespace.clone().unwrap_or_else(|| "default".into());
    let dep = find_deployment(docs, target);
    if let Some(d) = dep {
        cx.use_doc(d);
    }
    cx.note(format!(
        "The target Deployment `{target}` is rampart's stable Deployment (Flagger's `{target}-primary` has no counterpart): give it `rampart.dev/track: stable` in its selector and pod labels (docs/kubernetes.md)."
    ));
    let workload = Workload {
        namespace: namespace.clone(),
        deployment: target.to_string(),
        template: dep.and_then(|d| {
            at(&d.node, &["spec", "template", "spec"])
                .map(|p| (d, p, "spec.template.spec".to_string()))
        }),
        from: format!("from {label} spec.targetRef.name"),
    };
    draft.deploy = deploy_section(cx, &workload, cn, "spec.targetRef");
    if let Some(secs) = get(spec, "progressDeadlineSeconds").and_then(int) {
        draft.deploy.push(ec(
            "ready_timeout",
            raw(dur(secs.clamp(1, 3600) as u64 * 1000)),
            format!("from {label} spec.progressDeadlineSeconds"),
        ));
    }
    let mut f = Flagger {
        docs,
        cn,
        namespace,
        target: target.to_string(),
        service: target.to_string(),
        providers: Providers::default(),
        interval_ms: 60_000,
        hold_ms: 60_000,
        threshold: 1,
    };
    f.analysis(cx, &mut draft, spec, analysis, apath)?;
    Ok(draft)
}

struct Flagger<'a> {
    docs: &'a [Doc],
    cn: &'a Doc,
    namespace: String,
    target: String,
    /// `spec.service.name`, else the target's name: `{{ service }}` in a MetricTemplate.
    service: String,
    providers: Providers,
    interval_ms: u64,
    /// How long Flagger holds each weight: `analysis.interval`, unbounded.
    hold_ms: u64,
    threshold: i64,
}

/// The webhooks of an analysis by what they do.
#[derive(Default)]
struct Hooks<'a> {
    confirm_rollout: Vec<(String, &'a Node)>,
    confirm_promotion: Vec<(String, &'a Node)>,
    confirm_traffic: Vec<(String, &'a Node)>,
}

impl<'a> Flagger<'a> {
    /// The `kind` named `name` that a reference (`templateRef`, `providerRef`) means:
    /// in its `namespace`, or else the Canary's, as Flagger looks it up.
    fn referred(&self, reference: &Node, kind: &str, name: &str) -> Found<'a> {
        let ns = str_at(reference, "namespace").or(self.cn.namespace.as_deref());
        resolve(self.docs, "flagger.app", kind, name, ns)
    }

    fn from(&self, path: &str) -> String {
        format!("{} {path}", self.cn.label())
    }

    fn analysis(
        &mut self,
        cx: &mut Cx,
        draft: &mut Draft,
        spec: &Node,
        a: &'a Node,
        apath: &str,
    ) -> Result<(), ImportError> {
        let cn = self.cn;
        cx.rest(
            cn,
            a,
            apath,
            &["interval", "threshold", "maxWeight", "stepWeight", "stepWeights", "iterations", "metrics", "webhooks", "alerts"],
            &[
                ("match", "`traffic.kubernetes` moves weights only; header and cookie routes need rampart's embedded proxy or nginx (`match` steps)"),
                ("stepWeightPromotion", "rampart promotes in one move after the last step"),
                ("mirror", "rampart does not mirror traffic: the canary is judged on the share of real requests it serves"),
                ("mirrorWeight", "rampart does not mirror traffic"),
                ("sessionAffinity", "`traffic.kubernetes` splits by weight only; sticky users need rampart's embedded proxy or nginx (`sticky`)"),
                ("primaryReadyThreshold", "rampart waits for the whole rollout of each side"),
                ("canaryReadyThreshold", "rampart waits for the whole rollout of each side"),
                ("alertmanager", "rampart holds Alertmanager silences with `silences`, which the Canary does not describe"),
            ],
        );
        if let Some(ms) = get(a, "interval").and_then(duration_of) {
            // Flagger holds each weight for one interval, however long: the steps keep
            // it, and only the policy's `analysis.interval` is bounded.
            // (A policy's durations are at most 365 days.)
            self.hold_ms = ms.clamp(100, super::argo::MAX_MS);
            self.interval_ms = ms.clamp(100, 3_600_000);
            if ms > 3_600_000 {
                let held = if ms > super::argo::MAX_MS {
                    format!(
                        "each weight is held {}, a policy's longest duration (Flagger holds it {})",
                        dur(self.hold_ms),
                        dur(ms)
                    )
                } else {
                    format!("each weight is still held {} as Flagger holds it", dur(ms))
                };
                cx.unmapped(
                    self.cn,
                    &format!("{apath}.interval"),
                    pos_of(get(a, "interval")),
                    format!(
                        "a policy's `analysis.interval` is at most 1h: the metrics are read every hour, and {held}"
                    ),
                );
            }
        }
        self.providers.interval_ms =
            Some((self.interval_ms, self.from(&format!("{apath}.interval"))));
        self.threshold = get(a, "threshold").and_then(int).unwrap_or(1).max(1);
        if self.threshold > i64::from(u32::MAX) {
            self.threshold = i64::from(u32::MAX);
            cx.unmapped(
                self.cn,
                &format!("{apath}.threshold"),
                pos_of(get(a, "threshold")),
                format!(
                    "more than a policy's `failure_limit` can hold; written as {}",
                    u32::MAX
                ),
            );
        }
        let hooks = self.webhooks(cx, draft, a, apath);
        let steps: Vec<(u32, String)> = self.weights(cx, a, apath);
        let iterations = get(a, "iterations").and_then(int).filter(|i| *i > 0);
        let service = get(spec, "service")
            .and_then(|s| str_at(s, "name"))
            .unwrap_or(&self.target)
            .to_string();
        self.service = service.clone();
        if let Some(svc) = get(spec, "service") {
            cx.rest(
                cn,
                svc,
                "spec.service",
                &["name"],
                &[
                    ("port", PORTS),
                    ("targetPort", PORTS),
                    ("portName", PORTS),
                    ("portDiscovery", PORTS),
                    ("appProtocol", PORTS),
                    ("gatewayRefs", "rampart moves the weights of an HTTPRoute that exists; it generates no route and attaches none to gateways"),
                    ("hosts", "rampart moves the weights of an HTTPRoute that exists; it generates no route, so its hosts are the route's own"),
                    ("gateways", "rampart moves the weights of an HTTPRoute that exists; it generates no route and attaches none to gateways"),
                ],
            );
        }
        let provider = str_at(spec, "provider")
            .unwrap_or("the mesh of Flagger's --mesh-provider")
            .to_string();
        let interval = dur(self.hold_ms);
        // Flagger runs a blue/green whenever `iterations` is set, step weights or not.
        if iterations.is_some()
            && let Some((key, node)) = ["stepWeights", "stepWeight"]
                .iter()
                .find_map(|k| get(a, k).map(|n| (*k, n)))
        {
            cx.unmapped(
                cn,
                &format!("{apath}.{key}"),
                node.pos,
                "with `iterations` Flagger runs a blue/green and never uses the step weights",
            );
        }
        if !steps.is_empty() && iterations.is_none() {
            draft.strategy = "canary";
            for (i, h) in hooks.confirm_rollout.iter().enumerate() {
                if i == 0 {
                    draft.steps.push(Step::Approval {
                        timeout: "24h".into(),
                        from: h.0.clone(),
                    });
                }
            }
            // Flagger asks before every increase, the first (0 -> the first weight)
            // too; right after the confirm-rollout approval it is the same wait.
            for (i, (w, from)) in steps.iter().enumerate() {
                if (i > 0 || hooks.confirm_rollout.is_empty())
                    && let Some(h) = hooks.confirm_traffic.first()
                {
                    draft.steps.push(Step::Approval {
                        timeout: "24h".into(),
                        from: h.0.clone(),
                    });
                }
                draft.steps.push(Step::Weight {
                    weight: f64::from(*w),
                    bake_ms: self.hold_ms,
                    from: vec![from.clone(), self.from(&format!("{apath}.interval"))],
                });
            }
            if let Some(h) = hooks.confirm_promotion.first() {
                draft.steps.push(Step::Approval {
                    timeout: "24h".into(),
                    from: h.0.clone(),
                });
            }
            if provider == "kubernetes" {
                cx.unmapped(cn, "spec.provider", pos_of(get(spec, "provider")), "Flagger's `kubernetes` provider does blue-green only; the steps are imported for an HTTPRoute (`mode: http_route`)");
            }
            let ingress = at(spec, &["ingressRef", "name"]).and_then(text);
            let route = kube_name(ingress.unwrap_or(&service));
            cx.note(format!(
                "rampart moves the weights of a Gateway API HTTPRoute: `{route}` ({}) sends to the Service `{service}` (stable pods only), and rampart creates `{service}-canary` for the canary's pods (docs/kubernetes.md). Flagger routed through {provider}.",
                if ingress.is_some() { "named after the Ingress it takes the place of" } else { "named after the apex Service, as Flagger names the routes it generates" }
            ));
            draft.traffic = vec![
                ec(
                    "mode",
                    raw("http_route"),
                    format!("from {} spec.provider ({provider})", cn.label()),
                ),
                ec(
                    "service",
                    s(&kube_name(&service)),
                    format!("from {}", self.from("spec.service.name")),
                ),
                match ingress {
                    Some(_) => ec(
                        "route",
                        s(&route),
                        format!(
                            "from {}: an HTTPRoute of that name takes the Ingress's place",
                            self.from("spec.ingressRef.name")
                        ),
                    ),
                    None => ec(
                        "route",
                        s(&route),
                        format!(
                            "from {} (the apex Service's name)",
                            self.from("spec.service.name")
                        ),
                    ),
                },
            ];
        } else if let Some(it) = iterations {
            let mut stability = (it as u64).saturating_mul(self.hold_ms);
            // A policy's durations are at most 365 days.
            if stability > super::argo::MAX_MS {
                stability = super::argo::MAX_MS;
                cx.unmapped(
                    cn,
                    &format!("{apath}.iterations"),
                    pos_of(get(a, "iterations")),
                    "iterations x interval is longer than a policy's durations (365d): written as 365d",
                );
            }
            let from = format!(
                "from {} ({it} x {interval})",
                self.from(&format!("{apath}.iterations"))
            );
            let confirm = hooks
                .confirm_promotion
                .first()
                .or(hooks.confirm_rollout.first());
            match confirm {
                Some((hfrom, _)) => {
                    draft.strategy = "full";
                    draft
                        .strategy_fields
                        .push(ec("stability", raw(dur(stability)), from));
                    draft.strategy_fields.push(ec(
                        "approval",
                        raw("{role: approver, timeout: 24h}"),
                        format!("from {hfrom}"),
                    ));
                    cx.note("A Flagger blue-green with a confirm webhook becomes `strategy.full`: the new version starts beside the old one and waits for `rampart approve` before it takes all traffic.".to_string());
                }
                None => {
                    draft.strategy = "blue_green";
                    draft
                        .strategy_fields
                        .push(ec("stability", raw(dur(stability)), from));
                }
            }
            cx.note(format!(
                "{} {apath}.iterations: Flagger judges the iterations on the new version before the switch (on the load tester's traffic); rampart judges them after it, at 100 %, and switches back at once on a failure.",
                cn.label()
            ));
            draft.traffic = vec![
                ec(
                    "mode",
                    raw("service_selector"),
                    format!("from {} {apath}.iterations (blue-green)", cn.label()),
                ),
                ec(
                    "service",
                    s(&kube_name(&service)),
                    format!("from {}", self.from("spec.service.name")),
                ),
            ];
            for (hfrom, node) in &hooks.confirm_traffic {
                cx.unmapped(
                    cn,
                    hfrom.split(' ').nth(2).unwrap_or(""),
                    node.pos,
                    "a blue-green switches once: there is no traffic increase to confirm",
                );
            }
        } else {
            return Err(ImportError::at(
                cn,
                a.pos,
                apath,
                if get(a, "stepWeights").is_some() || get(a, "stepWeight").is_some() {
                    "no step weight rampart can use (whole percentages from 1 to 100, rising), and no `iterations`"
                } else {
                    "neither `stepWeight`/`stepWeights` (a canary) nor `iterations` (blue-green); rampart imports those"
                },
            ));
        }
        self.metrics(cx, draft, a, apath)?;
        self.alerts(cx, draft, a, apath);
        let mut fallback = super::error_rate_metric(
            &self.namespace,
            &self.target,
            "rampart (the Canary has no metrics; a policy judges at least one)".into(),
        );
        fallback.fields.push(e("judge", raw("{max: 1%}")));
        fallback
            .fields
            .push(e("failure_limit", n(self.threshold as f64)));
        draft.fallback = Some(fallback.clone());
        if draft.metrics.is_empty() {
            draft.add_metric(fallback);
            self.providers.needs_prometheus = true;
            cx.note("The Canary judges no metric: the policy judges the canary's share of 5xx responses from Prometheus (`http_requests_total` by the `track` label rampart puts on pods); adjust it to your metrics.");
        }
        if self.threshold > 1 && draft.metrics.len() > 1 {
            cx.unmapped(
                self.cn,
                &format!("{apath}.threshold"),
                pos_of(get(a, "threshold")),
                format!("Flagger rolls back after {} failed checks counted across all metrics and webhooks together; rampart counts each metric's failures on its own (`failure_limit: {}` each), so failures spread over several metrics roll back later", self.threshold, self.threshold),
            );
        }
        let mut analysis = self.providers.entries(cx);
        analysis.push(ec(
            "failure_count",
            raw("total"),
            "Flagger's threshold counts failed checks in total, not in a row",
        ));
        analysis.push(ec(
            "no_data",
            raw(format!("{{limit: {}, action: rollback}}", self.threshold)),
            "Flagger fails a check that finds no values (or whose query fails), and rolls back at its threshold",
        ));
        draft.analysis.splice(0..0, analysis);
        Ok(())
    }

    /// The canary's weights, each with where it came from.
    fn weights(&self, cx: &mut Cx, a: &Node, apath: &str) -> Vec<(u32, String)> {
        let mut out: Vec<(u32, String)> = Vec::new();
        if let Some(sw) = get(a, "stepWeights") {
            let mut last = 0;
            for (i, w) in items(sw).iter().enumerate() {
                let field = format!("{apath}.stepWeights[{i}]");
                match int(w) {
                    Some(v) if (1..=100).contains(&v) && v as u32 > last => {
                        last = v as u32;
                        out.push((last, self.from(&field)));
                    }
                    _ => cx.unmapped(self.cn, &field, w.pos, format!("rampart's weights are 1 to 100 and rise step by step (the previous is {last})")),
                }
            }
            if get(a, "stepWeight").is_some() {
                cx.unmapped(
                    self.cn,
                    &format!("{apath}.stepWeight"),
                    pos_of(get(a, "stepWeight")),
                    "`stepWeights` are used; Flagger ignores `stepWeight` beside them too",
                );
            }
        } else if let Some(step) = get(a, "stepWeight")
            .and_then(int)
            .filter(|s| (1..=100).contains(s))
        {
            let max = get(a, "maxWeight")
                .and_then(int)
                .filter(|m| (1..=100).contains(m))
                .unwrap_or(100);
            // As Flagger runs it: the weight rises by `stepWeight` (capped at 100, not
            // at `maxWeight`) until it reaches `maxWeight` or more, then promotes: 20
            // by 20 up to 50 is 20, 40, 60.
            let mut w = step;
            loop {
                let v = w.min(100);
                out.push((
                    v as u32,
                    format!(
                        "{} ({apath}.stepWeight {step} until at least maxWeight {max})",
                        self.cn.label()
                    ),
                ));
                if v >= max {
                    break;
                }
                w += step;
            }
        } else if let Some(sw) = get(a, "stepWeight") {
            cx.unmapped(
                self.cn,
                &format!("{apath}.stepWeight"),
                sw.pos,
                "a step weight is 1 to 100",
            );
        }
        if get(a, "maxWeight").is_some() && get(a, "stepWeights").is_some() {
            cx.note(format!(
                "{} {apath}.maxWeight: the stepWeights list the weights themselves",
                self.cn.label()
            ));
        }
        out
    }

    fn webhooks(&mut self, cx: &mut Cx, draft: &mut Draft, a: &'a Node, apath: &str) -> Hooks<'a> {
        let cn = self.cn;
        let mut hooks = Hooks::default();
        for (i, w) in get(a, "webhooks")
            .map(items)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let path = format!("{apath}.webhooks[{i}]");
            let kind = str_at(w, "type").unwrap_or("rollout");
            let name = str_at(w, "name").unwrap_or("webhook").to_string();
            let url = str_at(w, "url").unwrap_or_default().to_string();
            let from = self.from(&path);
            cx.rest(cn, w, &path, &["name", "type", "url", "timeout", "metadata"], &[
                ("muteAlert", "rampart's notification hooks hear every release's moments"),
                ("retries", "rampart retries notification hooks with backoff; gates and metrics are judged as they answer"),
            ]);
            let timeout = get(w, "timeout")
                .and_then(duration_of)
                .unwrap_or(60_000)
                .clamp(1000, 3_600_000);
            let payload = self.payload(w, kind);
            match kind {
                "confirm-rollout" => hooks.confirm_rollout.push((from, w)),
                "confirm-promotion" => hooks.confirm_promotion.push((from, w)),
                "confirm-traffic-increase" => hooks.confirm_traffic.push((from, w)),
                "pre-rollout" => draft.gates.push((
                    Y::Map(vec![
                        e("name", s(&name)),
                        e("command", Y::Map(vec![
                            e("run", list(&curl(&payload, &url))),
                            e("timeout", raw(dur(timeout))),
                        ])),
                    ]),
                    Some(format!("from {from}: POSTs Flagger's payload; a failure blocks the release (exit 5) instead of counting toward the threshold")),
                    Some((cn.clone(), path.clone())),
                )),
                "rollout" | "" => {
                    if let Some(load) = self.load(w, &url) {
                        draft.analysis.push(ec("load", raw(load), format!("from {from}: the load tester's `hey` command")));
                        cx.note(format!("{from}: the load tester's `hey` becomes `analysis.load`: rampart sends the requests itself while the release runs."));
                        continue;
                    }
                    let mut cmd = vec![
                        "sh".to_string(),
                        "-c".to_string(),
                        super::canary_only("if curl -fsS -m \"$3\" -X POST -H 'Content-Type: application/json' -d \"$1\" \"$2\" >/dev/null 2>&1; then echo 0; else echo 1; fi", "0"),
                        "webhook".to_string(),
                    ];
                    cmd.push(payload.clone());
                    cmd.push(url.clone());
                    cmd.push(((timeout / 1000).clamp(1, 9)).to_string());
                    if let Some(tn) = get(w, "timeout")
                        && duration_of(tn).is_none_or(|ms| !(1000..=9000).contains(&ms))
                    {
                        cx.unmapped(cn, &format!("{path}.timeout"), tn.pos, format!("a command metric runs at most 10s, so the call times out after {}s instead", (timeout / 1000).clamp(1, 9)));
                    }
                    draft.add_metric(Metric {
                        name: kube_name(&format!("webhook-{name}")),
                        from: format!("{from} (a rollout webhook: each interval, a failed call is a failed check)"),
                        fields: vec![
                            e("source", raw("command")),
                            ec("command", list(&cmd), super::CANARY_ONLY),
                            ec("judge", raw("{max: 0}"), "the webhook failed: 1"),
                            e("failure_limit", n(self.threshold as f64)),
                        ],
                        object: Some((cn.clone(), path.clone())),
                    });
                }
                "post-rollout" => draft.notify.push((
                    Y::Map(vec![
                        e("command", list(&curl(&payload, &url))),
                        e("on", raw("[done]")),
                    ]),
                    Some(format!("from {from}: after the release ends, promoted or rolled back")),
                    Some((cn.clone(), path.clone())),
                )),
                "event" => draft.notify.push((
                    Y::Map(vec![e("webhook", s(&url)), e("on", raw("all"))]),
                    Some(format!("from {from}: rampart's notice JSON (docs/adapters.md), not Flagger's event payload")),
                    Some((cn.clone(), path.clone())),
                )),
                "rollback" => cx.unmapped(cn, &path, w.pos, "Flagger polls it to roll back on demand; with rampart, `rampart rollback RELEASE` (or the API) does"),
                other => cx.unmapped(cn, &path, w.pos, format!("`{other}` is not a webhook type rampart knows")),
            }
        }
        for list in [
            &hooks.confirm_rollout,
            &hooks.confirm_promotion,
            &hooks.confirm_traffic,
        ] {
            if let Some((from, _)) = list.first() {
                cx.note(format!("{from}: Flagger polls the webhook until it answers 200; rampart waits for `rampart approve RELEASE` from someone other than the release's initiator (24h, then it rolls back)."));
            }
            for (from, node) in list.iter().skip(1) {
                cx.unmapped(
                    cn,
                    from.split(' ').nth(2).unwrap_or(""),
                    node.pos,
                    "one approval point stands for every confirm webhook of its kind",
                );
            }
        }
        hooks
    }

    /// Flagger's webhook payload, as JSON text.
    fn payload(&self, w: &Node, kind: &str) -> String {
        let phase = match kind {
            "pre-rollout" | "confirm-rollout" => "Initializing",
            "post-rollout" => "Succeeded",
            _ => "Progressing",
        };
        let meta: Vec<String> = get(w, "metadata")
            .map(entries)
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}:{}",
                    json_str(&k.text),
                    json_str(text(v).unwrap_or_default())
                )
            })
            .collect();
        format!(
            "{{\"name\":{},\"namespace\":{},\"phase\":{},\"metadata\":{{{}}}}}",
            json_str(&self.cn.name),
            json_str(&self.namespace),
            json_str(phase),
            meta.join(",")
        )
    }

    /// A load tester's `hey` as `analysis.load`, when that is what the webhook runs.
    fn load(&self, w: &Node, url: &str) -> Option<String> {
        let cmd = at(w, &["metadata", "cmd"]).and_then(text)?;
        let words: Vec<&str> = cmd.split_whitespace().collect();
        if words.first() != Some(&"hey") || !url.contains("loadtester") {
            return None;
        }
        let flag = |f: &str| {
            words
                .iter()
                .position(|w| *w == f)
                .and_then(|i| words.get(i + 1))
                .and_then(|v| v.parse::<u32>().ok())
        };
        let workers = flag("-c").unwrap_or(50);
        let rate = flag("-q")
            .map_or(10, |q| q.saturating_mul(workers))
            .clamp(1, 10_000);
        let target = words.iter().rev().find(|w| w.starts_with("http://"))?;
        let rest = target.strip_prefix("http://")?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let mut fields = vec![
            format!("rate: {rate}"),
            format!("url: {}", s_raw(&format!("http://{host}"))),
        ];
        if path != "/" {
            fields.push(format!("paths: [{}]", s_raw(path)));
        }
        Some(format!("{{{}}}", fields.join(", ")))
    }

    fn metrics(
        &mut self,
        cx: &mut Cx,
        draft: &mut Draft,
        a: &Node,
        apath: &str,
    ) -> Result<(), ImportError> {
        let cn = self.cn;
        for (i, m) in get(a, "metrics")
            .map(items)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let path = format!("{apath}.metrics[{i}]");
            cx.rest(
                cn,
                m,
                &path,
                &[
                    "name",
                    "thresholdRange",
                    "threshold",
                    "interval",
                    "templateRef",
                    "query",
                    "templateVariables",
                ],
                &[],
            );
            let name = str_at(m, "name").unwrap_or("metric").to_string();
            if let Some(n) = get(m, "interval")
                && duration_of(n).is_none()
            {
                cx.unmapped(cn, &format!("{path}.interval"), n.pos, "not a duration; `{{ interval }}` is filled in with `analysis.interval` instead");
            }
            let range = get(m, "thresholdRange");
            let mut min = range.and_then(|r| get(r, "min")).and_then(super::tree::num);
            let mut max = range.and_then(|r| get(r, "max")).and_then(super::tree::num);
            // The older `threshold` of a metric: a floor for the success rate, a
            // ceiling for everything else.
            if range.is_none()
                && let Some(t) = get(m, "threshold").and_then(super::tree::num)
            {
                if name == "request-success-rate" {
                    min = Some(t);
                } else {
                    max = Some(t);
                }
            }
            let from = self.from(&path);
            let limit = match (min, max) {
                (Some(_), Some(_)) => {
                    cx.unmapped(cn, &format!("{path}.thresholdRange"), pos_of(range), "rampart's limits are on the side where a metric gets worse: a range with both `min` and `max` has no equivalent");
                    continue;
                }
                (Some(v), None) => Lim::Min(v),
                (None, Some(v)) => Lim::Max(v),
                (None, None) => {
                    cx.unmapped(cn, &path, m.pos, "a metric without `thresholdRange` is only recorded; rampart judges every metric it reads");
                    continue;
                }
            };
            let failure_limit = ec(
                "failure_limit",
                n(self.threshold as f64),
                "Flagger's threshold: failed checks in total before a rollback",
            );
            if let Some(tr) = get(m, "templateRef") {
                let tname = str_at(tr, "name").unwrap_or_default();
                cx.rest(
                    cn,
                    tr,
                    &format!("{path}.templateRef"),
                    &["name", "namespace"],
                    &[],
                );
                let t = match self.referred(tr, "MetricTemplate", tname) {
                    Found::One(t) => t,
                    Found::Twice(a, b) => {
                        return Err(ImportError::at(
                            cn,
                            pos_of(get(tr, "name")),
                            &format!("{path}.templateRef.name"),
                            format!("the MetricTemplate {}", twice(tname, "this Canary", a, b)),
                        ));
                    }
                    Found::Missing(elsewhere) => {
                        let found: Vec<String> = self
                            .docs
                            .iter()
                            .filter(|d| d.kind == "MetricTemplate")
                            .map(|d| format!("`{}`", d.name))
                            .collect();
                        let seen = found_elsewhere(tname, &elsewhere, "the one referred to");
                        return Err(ImportError::at(
                            cn,
                            pos_of(get(tr, "name")),
                            &format!("{path}.templateRef.name"),
                            format!(
                                "the MetricTemplate `{tname}` is not among the inputs{seen}; pass the file that defines it (found: {})",
                                if found.is_empty() {
                                    "none".into()
                                } else {
                                    found.join(", ")
                                }
                            ),
                        ));
                    }
                };
                cx.use_doc(t);
                let Some(mut fields) = self.template(cx, t, m) else {
                    continue;
                };
                fields.push(limit.judge());
                fields.push(failure_limit);
                draft.add_metric(Metric {
                    name: kube_name(&name),
                    from: format!("{from} + {} spec", t.label()),
                    fields,
                    object: Some((t.clone(), "spec".into())),
                });
                continue;
            }
            if let Some(q) = str_at(m, "query") {
                let query = match self.vars(q, m) {
                    Ok(q) => q,
                    Err(why) => {
                        cx.unmapped(cn, &format!("{path}.query"), pos_of(get(m, "query")), why);
                        continue;
                    }
                };
                self.providers.needs_prometheus = true;
                draft.add_metric(Metric {
                    name: kube_name(&name),
                    from,
                    fields: vec![
                        e("source", raw("prometheus")),
                        e("query", s(&query)),
                        limit.judge(),
                        failure_limit,
                    ],
                    object: Some((cn.clone(), path)),
                });
                continue;
            }
            let sel = pod_selector(&self.namespace, &self.target);
            let fields = match (name.as_str(), limit) {
                ("request-success-rate", Lim::Min(pct)) => [
                    error_counts(&sel).to_vec(),
                    vec![
                        ec(
                            "judge",
                            raw(format!(
                                "{{max: {}%}}",
                                number(((100.0 - pct) * 1e6).round() / 1e6)
                            )),
                            format!("a success rate of at least {pct} %"),
                        ),
                        failure_limit,
                    ],
                ]
                .concat(),
                ("request-duration", Lim::Max(ms)) => vec![
                    e("source", raw("prometheus")),
                    e("metric", raw("latency_p99")),
                    e(
                        "buckets",
                        s(&format!(
                            "sum by (le) (increase(http_request_duration_seconds_bucket{{{sel}}}[{{interval}}]))"
                        )),
                    ),
                    ec(
                        "judge",
                        raw(format!("{{max: {}ms}}", number(ms.round()))),
                        "Flagger's request-duration is the p99, in milliseconds",
                    ),
                    failure_limit,
                ],
                ("request-success-rate" | "request-duration", _) => {
                    cx.unmapped(
                        cn,
                        &format!("{path}.thresholdRange"),
                        pos_of(range),
                        "the success rate takes a `min`, the duration a `max`",
                    );
                    continue;
                }
                _ => {
                    cx.unmapped(
                        cn,
                        &path,
                        m.pos,
                        format!("`{name}` is no Flagger builtin and has no templateRef or query"),
                    );
                    continue;
                }
            };
            // The builtin's window is the metric's own interval when it has one.
            let fields = match get(m, "interval").and_then(duration_of) {
                Some(ms) => with_window(fields, &prom_window(ms)),
                None => fields,
            };
            self.providers.needs_prometheus = true;
            cx.note(format!(
                "{from}: Flagger's builtin `{name}` reads the mesh's own series; the imported one reads `http_requests_total` / `http_request_duration_seconds_bucket` by the `track` label rampart puts on pods (docs/kubernetes.md): adjust it to your metrics."
            ));
            draft.add_metric(Metric {
                name: kube_name(&name),
                from,
                fields,
                object: Some((cn.clone(), path)),
            });
        }
        Ok(())
    }

    /// `{{ namespace }}`, `{{ target }}`, `{{ interval }}`, `{{ service }}` and
    /// `{{ variables.X }}` filled in.
    fn vars(&self, q: &str, m: &Node) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = q;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or("an unclosed `{{`")?;
            let inner = after[..end].trim().trim_start_matches('.');
            match inner {
                "namespace" => out.push_str(&self.namespace),
                "target" => out.push_str(&format!("{}-canary", self.target)),
                // Flagger fills in the metric's own interval when it has one.
                "interval" => match get(m, "interval").and_then(duration_of) {
                    Some(ms) => out.push_str(&prom_window(ms)),
                    None => out.push_str("{interval}"),
                },
                "service" => out.push_str(&self.service),
                v if v.starts_with("variables.") => {
                    let key = &v["variables.".len()..];
                    let val = at(m, &["templateVariables", key])
                        .and_then(text)
                        .ok_or_else(|| format!("no templateVariables value for `{key}`"))?;
                    out.push_str(val);
                }
                other => {
                    return Err(format!(
                        "`{{{{ {other} }}}}` is not a variable rampart can fill in"
                    ));
                }
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// A MetricTemplate's provider and query.
    fn template(&mut self, cx: &mut Cx, t: &Doc, m: &Node) -> Option<Vec<E>> {
        let Some(spec) = get(&t.node, "spec") else {
            cx.unmapped(
                t,
                "spec",
                pos_of(Some(&t.node)),
                "the MetricTemplate has no spec",
            );
            return None;
        };
        cx.rest(t, spec, "spec", &["provider", "query"], &[]);
        let provider = get(spec, "provider");
        let kind = provider
            .and_then(|p| str_at(p, "type"))
            .unwrap_or("prometheus");
        let q = str_at(spec, "query").unwrap_or_default();
        let query = match self.vars(q, m) {
            Ok(q) if !q.trim().is_empty() => q.trim().to_string(),
            Ok(_) => {
                cx.unmapped(
                    t,
                    "spec.query",
                    pos_of(get(spec, "query")),
                    "an empty query",
                );
                return None;
            }
            Err(why) => {
                cx.unmapped(t, "spec.query", pos_of(get(spec, "query")), why);
                return None;
            }
        };
        if q.contains("target") {
            cx.note(format!(
                "{} spec.query: `{{{{ target }}}}` (Flagger's canary workload) is written as `{}-canary`, rampart's canary Deployment; the query reads the canary for both variants, so its limit judges the canary alone.",
                t.label(),
                self.target
            ));
        }
        if let Some(p) = provider {
            cx.rest(
                t,
                p,
                "spec.provider",
                &["type", "address", "secretRef", "region"],
                &[("insecureSkipVerify", "rampart verifies TLS certificates")],
            );
        }
        let from = format!("{} spec.provider", t.label());
        let source = match kind {
            "prometheus" => {
                if let Some(addr) = provider.and_then(|p| str_at(p, "address")) {
                    if addr.starts_with("http://") || addr.starts_with("https://") {
                        self.providers
                            .prometheus(cx, addr.to_string(), format!("{from}.address"));
                    } else {
                        cx.unmapped(
                            t,
                            "spec.provider.address",
                            pos_of(provider),
                            format!("`{addr}` is not an http:// or https:// URL"),
                        );
                    }
                }
                if provider.and_then(|p| get(p, "secretRef")).is_some() {
                    cx.unmapped(
                        t,
                        "spec.provider.secretRef",
                        pos_of(provider),
                        "rampart asks `analysis.prometheus` without credentials",
                    );
                }
                self.providers.needs_prometheus = true;
                "prometheus"
            }
            "datadog" => {
                self.providers.datadog(false, from.clone());
                if let Some(addr) = provider.and_then(|p| str_at(p, "address")) {
                    self.providers
                        .datadog_server(addr, format!("{from}.address"));
                }
                cx.note("Datadog keys: rampart reads them from DD_API_KEY and DD_APP_KEY where `rampart run` runs (Flagger reads the provider's Secret).");
                "datadog"
            }
            "newrelic" => {
                self.providers
                    .newrelic(cx, t, "spec.provider.secretRef", pos_of(provider));
                "newrelic"
            }
            "cloudwatch" => {
                if query.starts_with('[') {
                    cx.unmapped(t, "spec.query", pos_of(get(spec, "query")), "a list of MetricDataQueries: rampart reads one metric math or Metrics Insights expression");
                    return None;
                }
                match provider.and_then(|p| str_at(p, "region")) {
                    Some(region) => {
                        if self.providers.cloudwatch.is_none() {
                            self.providers.cloudwatch = Some(format!("{from}.region"));
                            self.providers.cloudwatch_region = Some(region.to_string());
                        }
                    }
                    None => self
                        .providers
                        .cloudwatch(cx, t, "spec.provider", pos_of(provider)),
                }
                "cloudwatch"
            }
            other => {
                cx.unmapped(t, "spec.provider.type", pos_of(provider), format!("rampart has no `{other}` metrics source; it reads Prometheus, Datadog, New Relic and CloudWatch"));
                return None;
            }
        };
        Some(vec![e("source", raw(source)), e("query", s(&query))])
    }

    fn alerts(&mut self, cx: &mut Cx, draft: &mut Draft, a: &Node, apath: &str) {
        let cn = self.cn;
        for (i, al) in get(a, "alerts")
            .map(items)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let path = format!("{apath}.alerts[{i}]");
            cx.rest(cn, al, &path, &["name", "severity", "providerRef"], &[]);
            let pname = at(al, &["providerRef", "name"])
                .and_then(text)
                .unwrap_or_default();
            let referred = match get(al, "providerRef") {
                Some(pr) => {
                    cx.rest(
                        cn,
                        pr,
                        &format!("{path}.providerRef"),
                        &["name", "namespace"],
                        &[],
                    );
                    self.referred(pr, "AlertProvider", pname)
                }
                None => Found::Missing(Vec::new()),
            };
            let p = match referred {
                Found::One(p) => p,
                Found::Twice(a, b) => {
                    cx.unmapped(
                        cn,
                        &format!("{path}.providerRef"),
                        al.pos,
                        format!("the AlertProvider {}", twice(pname, "this Canary", a, b)),
                    );
                    continue;
                }
                Found::Missing(_) => {
                    cx.unmapped(cn, &format!("{path}.providerRef"), al.pos, format!("the AlertProvider `{pname}` is not among the inputs: pass its manifest to map it"));
                    continue;
                }
            };
            cx.use_doc(p);
            let pspec = get(&p.node, "spec");
            let kind = pspec.and_then(|s| str_at(s, "type")).unwrap_or_default();
            let on = match str_at(al, "severity").unwrap_or("info") {
                "error" => "pages",
                "warn" => "[approval, rollback, halted, escalated]",
                _ => "all",
            };
            if let Some(ps) = pspec {
                cx.rest(
                    p,
                    ps,
                    "spec",
                    &["type", "address", "secretRef"],
                    &[
                        ("proxy", "rampart's hooks go out directly"),
                        ("channel", "rampart posts to the Slack webhook's own channel; a channel override has no equivalent"),
                        ("username", "rampart posts as the Slack webhook's own user; a username override has no equivalent"),
                    ],
                );
            }
            match kind {
                "slack" => {
                    let env = format!("{}_WEBHOOK_URL", pname.to_ascii_uppercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
                    cx.note(format!(
                        "{} {path}: the Slack webhook URL is a secret; rampart reads it from the environment variable `{env}` (set it to the AlertProvider's address).",
                        cn.label()
                    ));
                    draft.notify.push((
                        Y::Map(vec![e("slack", raw(format!("{{webhook_env: {env}}}"))), e("on", raw(on))]),
                        Some(format!("from {} {path} + {} spec", cn.label(), p.label())),
                        Some((cn.clone(), path.clone())),
                    ));
                }
                other => cx.unmapped(p, "spec.type", pos_of(pspec), format!("rampart notifies Slack, PagerDuty, signed webhooks and commands; `{other}` has no equivalent (a `command` hook can post to it)")),
            }
        }
    }
}

/// A PromQL range of `ms`: whole seconds when it is, else milliseconds.
fn prom_window(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `fields` with their `[{interval}]` ranges set to `window`.
fn with_window(fields: Vec<E>, window: &str) -> Vec<E> {
    fields
        .into_iter()
        .map(|mut f| {
            if let Y::Raw(v) = &f.val {
                f.val = Y::Raw(v.replace("[{interval}]", &format!("[{window}]")));
            }
            f
        })
        .collect()
}

/// Why Flagger's Service ports are not carried.
const PORTS: &str = "rampart's Service `<service>-canary` copies the stable Service's ports; Flagger's generated ports have no equivalent";

#[derive(Clone, Copy)]
enum Lim {
    Min(f64),
    Max(f64),
}

impl Lim {
    fn judge(self) -> E {
        match self {
            Lim::Max(v) => e("judge", raw(format!("{{max: {}}}", number(v)))),
            Lim::Min(v) => e("judge", raw(format!("{{min: {}}}", number(v)))),
        }
    }
}

/// `curl` POSTing `payload` to `url`, failing on an HTTP error.
fn curl(payload: &str, url: &str) -> Vec<String> {
    [
        "curl",
        "-fsS",
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        payload,
        url,
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect()
}

fn s_raw(t: &str) -> String {
    super::emit::quote(t)
}

/// A JSON string literal.
fn json_str(t: &str) -> String {
    let mut out = String::from("\"");
    for c in t.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
