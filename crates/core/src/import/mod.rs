//! `rampart import`: an Argo Rollouts `Rollout` with its analysis templates, or a
//! Flagger `Canary` with its metric templates, written as an equivalent rampart policy
//! for the Kubernetes adapter.
//!
//! Owns reading those manifests (several files, several documents each), mapping every
//! field it can, and listing every field it cannot with why, so nothing is dropped
//! silently. Pure: the caller reads the files and passes their text in, and writes the
//! result. The policy written is checked with the real policy decoder before it is
//! returned; a piece it refuses is moved to the unmapped list rather than written.

mod argo;
mod emit;
mod expr;
mod flagger;
mod tree;

use std::fmt;

use emit::{E, Y, e, ec, raw, s};
use tree::Doc;

use crate::yaml::{self, Pos};

/// Which tool the manifests come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Argo Rollouts: `Rollout`, `AnalysisTemplate`, `ClusterAnalysisTemplate`.
    Argo,
    /// Flagger: `Canary`, `MetricTemplate`, `AlertProvider`.
    Flagger,
}

impl Kind {
    /// `argo` or `flagger`.
    pub fn id(self) -> &'static str {
        match self {
            Kind::Argo => "argo",
            Kind::Flagger => "flagger",
        }
    }
}

/// One input file.
#[derive(Clone, Debug)]
pub struct Source {
    /// The file's name as the user gave it; it is only shown.
    pub name: String,
    /// Its text.
    pub text: String,
}

/// A source field the policy does not carry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Unmapped {
    /// The object: `Rollout demo`, `AnalysisTemplate success-rate`.
    pub object: String,
    /// The field's path in it: `spec.strategy.canary.steps[3].experiment`.
    pub field: String,
    /// Why it is not mapped, and what to do about it.
    pub why: String,
    /// The file and line it is at.
    pub file: String,
    /// The line, from 1.
    pub line: u32,
}

/// A document read.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourceDoc {
    /// The file.
    pub file: String,
    /// The document's index in the file, from 0.
    pub document: usize,
    /// Its `kind` (empty for a document that is no object).
    pub kind: String,
    /// Its `metadata.name`.
    pub name: String,
    /// Whether the import used it.
    pub used: bool,
}

/// The result of an import.
#[derive(Clone, Debug)]
pub struct Imported {
    /// Where the manifests came from.
    pub kind: Kind,
    /// The policy's service name.
    pub service: String,
    /// The policy, as YAML text with comments; it passes `rampart validate`.
    pub policy: String,
    /// Every source field the policy does not carry.
    pub unmapped: Vec<Unmapped>,
    /// Where the mapping keeps the meaning in another way, or assumes something the
    /// manifests do not say.
    pub notes: Vec<String>,
    /// Every document read.
    pub sources: Vec<SourceDoc>,
}

/// Input that is not a Rollout or a Canary this importer understands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ImportError {
    /// The file.
    pub file: String,
    /// The document in it, from 0 (`None`: the input as a whole).
    pub document: Option<usize>,
    /// Where in the document.
    pub pos: Pos,
    /// The field's path.
    pub field: String,
    /// What is wrong, and what would be understood.
    pub message: String,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(d) = self.document {
            write!(f, ": document {d}")?;
        }
        write!(f, ": {}", self.pos)?;
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ImportError {
    fn at(doc: &Doc, pos: Pos, field: &str, message: impl Into<String>) -> ImportError {
        ImportError {
            file: doc.file.clone(),
            document: Some(doc.index),
            pos,
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// Imports `sources` as manifests of `kind`.
///
/// # Errors
/// Bad YAML (with the file, document and line), no `Rollout` (or `Canary`) among the
/// documents, or one this importer cannot read (a missing template, a strategy it does
/// not know), each naming the file, the document and the field.
pub fn import(kind: Kind, sources: &[Source]) -> Result<Imported, ImportError> {
    let mut docs = Vec::new();
    let mut read = Vec::new();
    for src in sources {
        let nodes = yaml::parse_documents(&src.text).map_err(|e| ImportError {
            file: src.name.clone(),
            document: Some(e.document),
            pos: e.error.pos,
            field: String::new(),
            message: format!("YAML syntax: {}", e.error.message),
        })?;
        for (i, node) in nodes.into_iter().enumerate() {
            match tree::classify(&src.name, i, node) {
                Some(d) => {
                    read.push(SourceDoc {
                        file: d.file.clone(),
                        document: i,
                        kind: d.kind.clone(),
                        name: d.name.clone(),
                        used: false,
                    });
                    docs.push(d);
                }
                None => read.push(SourceDoc {
                    file: src.name.clone(),
                    document: i,
                    kind: String::new(),
                    name: String::new(),
                    used: false,
                }),
            }
        }
    }
    let mut cx = Cx::default();
    let draft = match kind {
        Kind::Argo => argo::import(&mut cx, &docs, sources)?,
        Kind::Flagger => flagger::import(&mut cx, &docs, sources)?,
    };
    for r in &mut read {
        r.used = cx
            .used
            .iter()
            .any(|(f, i)| *f == r.file && *i == r.document);
    }
    let service = draft.service.clone();
    let policy = finish(&mut cx, draft)?;
    Ok(Imported {
        kind,
        service,
        policy,
        unmapped: cx.unmapped,
        notes: cx.notes,
        sources: read,
    })
}

// === impl Cx ===

/// What an import collects on its way: unmapped fields, notes, documents used.
#[derive(Debug, Default)]
struct Cx {
    unmapped: Vec<Unmapped>,
    notes: Vec<String>,
    used: Vec<(String, usize)>,
}

impl Cx {
    /// `field` of `doc` is not carried, because `why`.
    pub fn unmapped(&mut self, doc: &Doc, field: &str, at: Pos, why: impl Into<String>) {
        let u = Unmapped {
            object: doc.label(),
            field: field.to_string(),
            why: why.into(),
            file: doc.file.clone(),
            line: at.line,
        };
        if !self.unmapped.contains(&u) {
            self.unmapped.push(u);
        }
    }

    /// A note on how the meaning is kept.
    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// Marks a document as used.
    pub fn use_doc(&mut self, doc: &Doc) {
        let key = (doc.file.clone(), doc.index);
        if !self.used.contains(&key) {
            self.used.push(key);
        }
    }

    /// Every key of the mapping `node` (at `path` in `doc`) that is neither in `mapped`
    /// nor handled elsewhere is unmapped: `known` gives the why of the ones rampart
    /// knows it lacks, anything else has no equivalent.
    pub fn rest(
        &mut self,
        doc: &Doc,
        node: &yaml::Node,
        path: &str,
        mapped: &[&str],
        known: &[(&str, &str)],
    ) {
        for (k, v) in tree::entries(node) {
            if mapped.contains(&k.text.as_str()) {
                continue;
            }
            let why = known.iter().find(|(key, _)| *key == k.text).map_or_else(
                || format!("rampart has no equivalent of `{}` here", k.text),
                |(_, why)| why.to_string(),
            );
            self.unmapped(doc, &join(path, &k.text), v.pos, why);
        }
    }
}

/// `a.b`, or `b` at the top.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

// === the policy draft ===

/// A policy being assembled, section by section, each value with the source field it
/// came from.
#[derive(Debug, Default)]
struct Draft {
    /// Comment lines at the top.
    pub header: Vec<String>,
    pub service: String,
    pub service_from: String,
    pub deploy: Vec<E>,
    pub traffic: Vec<E>,
    /// `canary`, `blue_green` or `full`.
    pub strategy: &'static str,
    pub strategy_fields: Vec<E>,
    pub steps: Vec<Step>,
    /// Each with the object and field it came from, reported if the decoder refuses it.
    pub gates: Vec<Hook>,
    pub analysis: Vec<E>,
    pub metrics: Vec<Metric>,
    pub rollback: Vec<E>,
    pub notify: Vec<Hook>,
    /// The metric judged when the decoder refuses the only one imported.
    pub fallback: Option<Metric>,
}

/// A gate or notification hook: its YAML, its comment, and the object and field it
/// came from.
type Hook = (Y, Option<String>, Option<(Doc, String)>);

/// A canary step.
#[derive(Clone, Debug)]
enum Step {
    /// `{weight, bake}`.
    Weight {
        /// Percent.
        weight: f64,
        bake_ms: u64,
        from: Vec<String>,
    },
    /// `{approval: {role, timeout}}`.
    Approval { timeout: String, from: String },
}

/// A metric: its YAML entries (without the name), where it came from, and how to
/// tell two imports of the same metric apart.
#[derive(Clone, Debug)]
struct Metric {
    pub name: String,
    pub from: String,
    pub fields: Vec<E>,
    /// The object and field reported if the policy decoder refuses it.
    pub object: Option<(Doc, String)>,
}

impl Metric {
    fn identity(&self) -> String {
        let mut out = String::new();
        emit::write_map(&mut out, &self.fields, 0);
        out
    }
}

impl Draft {
    /// Adds a metric; one already there with the same fields is kept once, and a name
    /// taken by another gets a suffix.
    pub fn add_metric(&mut self, mut m: Metric) -> String {
        let id = m.identity();
        if let Some(same) = self.metrics.iter_mut().find(|x| x.identity() == id) {
            if !same.from.contains(&m.from) {
                same.from = format!("{}; {}", same.from, m.from);
            }
            return same.name.clone();
        }
        let base = m.name.clone();
        let mut i = 2;
        while self.metrics.iter().any(|x| x.name == m.name) {
            m.name = format!("{base}-{i}");
            i += 1;
        }
        let name = m.name.clone();
        self.metrics.push(m);
        name
    }

    /// Adds the fallback metric (builtin error rate from Prometheus), with a
    /// placeholder for the server when the source named none.
    fn add_fallback(&mut self, f: Metric) {
        if !self.analysis.iter().any(|a| a.key == "prometheus") {
            self.analysis.insert(
                1.min(self.analysis.len()),
                ec(
                    "prometheus",
                    s("http://prometheus:9090"),
                    "REPLACE: the Prometheus server (not in the source)",
                ),
            );
        }
        self.add_metric(f);
    }

    fn render(&self) -> String {
        let mut top: Vec<E> = Vec::new();
        top.push(ec("service", s(&self.service), self.service_from.clone()));
        top.push(e(
            "deploy",
            Y::Map(vec![e("kubernetes", Y::Map(self.deploy.clone()))]),
        ));
        top.push(e(
            "traffic",
            Y::Map(vec![e("kubernetes", Y::Map(self.traffic.clone()))]),
        ));
        let mut strategy = self.strategy_fields.clone();
        if self.strategy == "canary" {
            let steps = self
                .steps
                .iter()
                .map(|st| match st {
                    Step::Weight {
                        weight,
                        bake_ms,
                        from,
                    } => (
                        raw(format!(
                            "{{weight: {}, bake: {}}}",
                            emit::number(*weight),
                            crate::units::format_duration(std::time::Duration::from_millis(
                                *bake_ms
                            ))
                        )),
                        Some(format!("from {}", from.join(" + "))),
                    ),
                    Step::Approval { timeout, from } => (
                        raw(format!(
                            "{{approval: {{role: approver, timeout: {timeout}}}}}"
                        )),
                        Some(format!("from {from}")),
                    ),
                })
                .collect();
            strategy.insert(0, e("steps", Y::Seq(steps)));
        }
        top.push(e(
            "strategy",
            Y::Map(vec![e(self.strategy, Y::Map(strategy))]),
        ));
        if !self.gates.is_empty() {
            top.push(e(
                "gates",
                Y::Map(vec![e(
                    "pre",
                    Y::Seq(
                        self.gates
                            .iter()
                            .map(|(y, c, _)| (y.clone(), c.clone()))
                            .collect(),
                    ),
                )]),
            ));
        }
        let mut analysis = self.analysis.clone();
        analysis.push(e(
            "metrics",
            Y::Seq(
                self.metrics
                    .iter()
                    .map(|m| {
                        let mut fields = vec![e("name", s(&m.name))];
                        fields.extend(m.fields.iter().cloned());
                        (Y::Map(fields), Some(format!("from {}", m.from)))
                    })
                    .collect(),
            ),
        ));
        top.push(e("analysis", Y::Map(analysis)));
        if !self.rollback.is_empty() {
            top.push(e("rollback", Y::Map(self.rollback.clone())));
        }
        if !self.notify.is_empty() {
            top.push(e(
                "notify",
                Y::Seq(
                    self.notify
                        .iter()
                        .map(|(y, c, _)| (y.clone(), c.clone()))
                        .collect(),
                ),
            ));
        }
        let mut out = String::new();
        for h in &self.header {
            out.push_str("# ");
            out.push_str(&h.replace(['\n', '\r'], " "));
            out.push('\n');
        }
        emit::write_map(&mut out, &top, 0);
        out
    }
}

/// Renders the draft and checks it with the policy decoder. A metric, gate or hook the
/// decoder refuses is taken out and reported as unmapped with the decoder's words;
/// anything else it refuses is a bug of the importer, reported as an error.
fn finish(cx: &mut Cx, mut draft: Draft) -> Result<String, ImportError> {
    for _ in 0..64 {
        let text = draft.render();
        let diagnostics = match crate::Policy::from_yaml(&text) {
            Ok(p) => {
                let interval = p.analysis.interval;
                let short = p
                    .strategy
                    .steps()
                    .iter()
                    .filter(|s| s.approval.is_none() && s.bake < interval)
                    .count();
                if short > 0 {
                    cx.note(format!(
                        "A rampart step ends at the first passing analysis interval after its bake: {short} step(s) shorter than `analysis.interval` ({}) hold for one interval, so every weight is judged at least once.",
                        dur(u64::try_from(interval.as_millis()).unwrap_or(u64::MAX))
                    ));
                }
                return Ok(text);
            }
            Err(e) => e.diagnostics,
        };
        let mut removed = false;
        for d in &diagnostics {
            // Every metric imported is a dry run (`critical: false`, `weight: 0`), so
            // none could fail the release: the source's analysis judged nothing either,
            // and the policy judges the fallback beside them.
            if matches!(d.path.as_str(), "analysis.metrics" | "analysis.fail_score")
                && let Some(f) = draft.fallback.take()
            {
                cx.note(format!(
                    "No metric of the source can fail the release (every one is a dry run): the policy judges `{}` beside them ({}).",
                    f.name, f.from
                ));
                draft.add_fallback(f);
                removed = true;
                break;
            }
            if let Some(i) = index_in(&d.path, "analysis.metrics[")
                && i < draft.metrics.len()
                && (draft.metrics.len() > 1 || draft.fallback.is_some())
            {
                let m = draft.metrics.remove(i);
                if let Some((doc, field)) = &m.object {
                    cx.unmapped(
                        doc,
                        field,
                        tree::pos_at(&doc.node, field),
                        format!("rampart refuses the metric as imported: {}", d.message),
                    );
                }
                if draft.metrics.is_empty()
                    && let Some(f) = draft.fallback.take()
                {
                    cx.note(format!(
                        "No metric of the source could be written: the policy judges `{}` instead ({}).",
                        f.name, f.from
                    ));
                    draft.add_fallback(f);
                }
                removed = true;
                break;
            }
            for (prefix, list) in [
                ("gates.pre[", &mut draft.gates),
                ("notify[", &mut draft.notify),
            ] {
                if let Some(i) = index_in(&d.path, prefix)
                    && i < list.len()
                {
                    let (_, from, object) = list.remove(i);
                    let why = format!("rampart refuses it as imported: {}", d.message);
                    match &object {
                        Some((doc, field)) => {
                            cx.unmapped(doc, field, tree::pos_at(&doc.node, field), why);
                        }
                        None => {
                            cx.note(format!("{} was left out: {why}", from.unwrap_or_default()))
                        }
                    }
                    removed = true;
                    break;
                }
            }
            if removed {
                break;
            }
        }
        if !removed {
            let d = &diagnostics[0];
            return Err(ImportError {
                file: "(imported policy)".into(),
                document: None,
                pos: Pos {
                    line: d.line,
                    col: d.col,
                },
                field: d.path.clone(),
                message: format!(
                    "the imported policy does not validate ({}); this is a bug of `rampart import`, please report it with the input",
                    d.message
                ),
            });
        }
    }
    Err(ImportError {
        file: "(imported policy)".into(),
        document: None,
        pos: Pos::default(),
        field: String::new(),
        message: "the imported policy does not validate".into(),
    })
}

fn index_in(path: &str, prefix: &str) -> Option<usize> {
    let rest = path.strip_prefix(prefix)?;
    rest.split(']').next()?.parse().ok()
}

// === shared pieces ===

/// A policy `service` name from an object name: lower-case letters, digits, `-`, `_`
/// and `.`, at most 63.
fn service_name(name: &str) -> String {
    let s: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let s = s.trim_start_matches(['-', '_', '.']).to_string();
    if s.is_empty() { "service".into() } else { s }
}

/// A Kubernetes object name that the policy decoder takes (`default` when empty).
fn kube_name(name: &str) -> String {
    let s: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() { "default".into() } else { s }
}

/// An image with its tag (or digest) replaced by `{version}`:
/// `registry:5000/team/app:1.2` becomes `registry:5000/team/app:{version}`.
fn image_template(image: &str) -> String {
    let base = image.split('@').next().unwrap_or(image);
    let last_slash = base.rfind('/').map_or(0, |i| i + 1);
    let repo = match base[last_slash..].rfind(':') {
        Some(colon) => &base[..last_slash + colon],
        None => base,
    };
    format!("{repo}:{{version}}")
}

/// A duration in rampart's spelling.
fn dur(ms: u64) -> String {
    crate::units::format_duration(std::time::Duration::from_millis(ms))
}

/// The `deploy.kubernetes` section for a workload: from a `Deployment` among the
/// inputs (or the Rollout's own pod template), else with the container and image left
/// for the user (and said so).
struct Workload<'a> {
    pub namespace: String,
    pub deployment: String,
    pub template: Option<(&'a Doc, &'a yaml::Node, String)>,
    pub from: String,
}

fn deploy_section(cx: &mut Cx, w: &Workload<'_>, owner: &Doc, missing_field: &str) -> Vec<E> {
    let mut out = vec![
        ec(
            "namespace",
            s(&kube_name(&w.namespace)),
            format!("from {} metadata.namespace", owner.label()),
        ),
        ec("deployment", s(&kube_name(&w.deployment)), w.from.clone()),
    ];
    let container = w.template.as_ref().and_then(|(doc, pod_spec, path)| {
        let containers = tree::get(pod_spec, "containers").map(tree::items)?;
        let first = containers.first()?;
        if containers.len() > 1 {
            cx.note(format!(
                "{} has {} containers: the first, `{}`, is the one whose image is the version",
                doc.label(),
                containers.len(),
                tree::str_at(first, "name").unwrap_or_default()
            ));
        }
        Some((
            tree::str_at(first, "name")?.to_string(),
            tree::str_at(first, "image").unwrap_or_default().to_string(),
            format!("from {} {path}.containers[0]", doc.label()),
        ))
    });
    match container {
        Some((name, image, from)) => {
            out.push(ec("container", s(&kube_name(&name)), from.clone()));
            let image = if image.is_empty() {
                format!("{}:{{version}}", kube_name(&w.deployment))
            } else {
                image_template(&image)
            };
            out.push(ec("image", s(&image), from));
        }
        None => {
            cx.unmapped(
                owner,
                missing_field,
                Pos { line: 1, col: 1 },
                format!(
                    "the Deployment `{}` is not among the inputs, so its container and image are not known: pass its manifest too, or set `deploy.kubernetes.container` and `image` (written as `{}` and `{}:{{version}}`)",
                    w.deployment,
                    kube_name(&w.deployment),
                    kube_name(&w.deployment)
                ),
            );
            out.push(ec(
                "container",
                s(&kube_name(&w.deployment)),
                "REPLACE: the container whose image is the version",
            ));
            out.push(ec(
                "image",
                s(&format!("{}:{{version}}", kube_name(&w.deployment))),
                "REPLACE: the image, with {version} for the tag",
            ));
        }
    }
    out
}

/// The Deployment named `name` among the inputs, if any.
fn find_deployment<'a>(docs: &'a [Doc], name: &str) -> Option<&'a Doc> {
    docs.iter()
        .find(|d| d.kind == "Deployment" && d.name == name)
}

/// A command metric's shell script that runs `script` for the canary only. rampart
/// runs a command metric once per variant (the variant in `RAMPART_METRIC_VARIANT`);
/// a job or webhook that ignores the variant would read the same failure for both
/// sides (the judge then halts for "both versions unhealthy" instead of rolling back)
/// and run its side effects twice. The stable side answers `pass` without running it.
fn canary_only(script: &str, pass: &str) -> String {
    format!("[ \"$RAMPART_METRIC_VARIANT\" = canary ] || {{ echo {pass}; exit 0; }}; {script}")
}

/// The comment on such a command.
const CANARY_ONLY: &str = "runs for the canary only: the stable side answers 0 (a pass) without running it, so the check runs once per interval and a failure rolls back";

/// The metric a policy needs when the source judges nothing: the error share of the
/// canary's requests from Prometheus, labelled as rampart's Kubernetes adapter labels
/// pods (docs/kubernetes.md).
fn error_rate_metric(namespace: &str, app: &str, from: String) -> Metric {
    Metric {
        name: "error-rate".into(),
        from,
        fields: error_counts(&pod_selector(namespace, app)).to_vec(),
        object: None,
    }
}

/// The PromQL label selector of one variant's pods, as the adapter labels them.
fn pod_selector(namespace: &str, app: &str) -> String {
    format!("namespace=\"{namespace}\",app=\"{app}\",track=\"{{variant}}\"")
}

/// A Prometheus counts metric's fields: 5xx responses out of all requests of the pods
/// `sel` selects.
fn error_counts(sel: &str) -> [E; 3] {
    [
        e("source", raw("prometheus")),
        e(
            "bad",
            s(&format!(
                "sum(increase(http_requests_total{{{sel},code=~\"5..\"}}[{{interval}}])) or vector(0)"
            )),
        ),
        e(
            "total",
            s(&format!(
                "sum(increase(http_requests_total{{{sel}}}[{{interval}}]))"
            )),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_templates_keep_registry_ports_and_drop_digests() {
        assert_eq!(image_template("nginx:1.27"), "nginx:{version}");
        assert_eq!(image_template("nginx"), "nginx:{version}");
        assert_eq!(
            image_template("registry:5000/team/app:1.2"),
            "registry:5000/team/app:{version}"
        );
        assert_eq!(
            image_template("ghcr.io/a/b@sha256:abc"),
            "ghcr.io/a/b:{version}"
        );
    }

    /// Random trees of the keys Argo Rollouts and Flagger use, with values of the
    /// shapes they take: the import never panics, and what it writes always decodes.
    mod random {
        use proptest::prelude::*;
        use serde_json::{Map, Value};

        use super::super::{Kind, Source, import};

        const KEYS: &[&str] = &[
            "metadata",
            "name",
            "namespace",
            "spec",
            "strategy",
            "canary",
            "blueGreen",
            "steps",
            "setWeight",
            "pause",
            "duration",
            "analysis",
            "templates",
            "templateName",
            "clusterScope",
            "args",
            "value",
            "valueFrom",
            "podTemplateHashValue",
            "metrics",
            "provider",
            "prometheus",
            "datadog",
            "web",
            "job",
            "address",
            "query",
            "url",
            "jsonPath",
            "successCondition",
            "failureCondition",
            "interval",
            "count",
            "failureLimit",
            "trafficRouting",
            "nginx",
            "stableIngress",
            "stableService",
            "activeService",
            "previewService",
            "autoPromotionEnabled",
            "prePromotionAnalysis",
            "postPromotionAnalysis",
            "workloadRef",
            "template",
            "containers",
            "image",
            "replicas",
            "targetRef",
            "stepWeight",
            "stepWeights",
            "maxWeight",
            "iterations",
            "threshold",
            "thresholdRange",
            "min",
            "max",
            "templateRef",
            "webhooks",
            "type",
            "timeout",
            "alerts",
            "providerRef",
            "service",
            "setHeaderRoute",
            "experiment",
            "consecutiveErrorLimit",
            "inconclusiveLimit",
            "scaleDownDelaySeconds",
            "progressDeadlineSeconds",
        ];
        const SCALARS: &[&str] = &[
            "10",
            "0",
            "-3",
            "150",
            "30s",
            "1m",
            "true",
            "false",
            "Latest",
            "x",
            "result[0] >= 0.95",
            "len(result) == 0 || result[0] <= 500",
            "{{args.x}}",
            "http://p:9090",
            "{$.a}",
            "confirm-rollout",
            "pre-rollout",
            "rollout",
            "event",
            "request-success-rate",
            "request-duration",
            "demo",
            "",
            "{{ target }}",
            "prometheus",
            "datadog",
            // Huge integers: the arithmetic on them saturates and clamps.
            "9223372036854775807",
            "-9223372036854775808",
            "4294967295",
            "4294967296",
            "99999999999999999999",
        ];

        fn tree() -> impl Strategy<Value = Value> {
            let leaf = prop::sample::select(SCALARS).prop_map(|s| Value::String(s.into()));
            leaf.prop_recursive(5, 64, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::vec((prop::sample::select(KEYS), inner), 0..5).prop_map(
                        |kv| {
                            let mut m = Map::new();
                            for (k, v) in kv {
                                m.insert(k.to_string(), v);
                            }
                            Value::Object(m)
                        }
                    ),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]
            #[test]
            fn random_manifests_never_panic_and_always_decode(
                body in tree(),
                steps in prop::collection::vec(tree(), 0..8),
                template in tree(),
                flagger in any::<bool>(),
                blue_green in any::<bool>(),
            ) {
                // A skeleton the importer gets past, with random flesh.
                let mut body = match body {
                    Value::Object(m) => m,
                    other => {
                        let mut m = Map::new();
                        m.insert("extra".into(), other);
                        m
                    }
                };
                let (api, kind, tkind, spec) = if flagger {
                    body.insert(
                        if blue_green { "iterations" } else { "stepWeights" }.into(),
                        if blue_green { Value::String("3".into()) } else { Value::Array(steps) },
                    );
                    let spec = serde_json::json!({"targetRef": {"name": "demo"}, "analysis": body});
                    ("flagger.app/v1beta1", "Canary", "MetricTemplate", spec)
                } else {
                    body.insert("steps".into(), Value::Array(steps));
                    let strategy = if blue_green { "blueGreen" } else { "canary" };
                    let spec = serde_json::json!({"strategy": {strategy: body}});
                    ("argoproj.io/v1alpha1", "Rollout", "AnalysisTemplate", spec)
                };
                let text = format!(
                    "apiVersion: {api}\nkind: {kind}\nmetadata: {{name: demo}}\nspec: {spec}\n---\napiVersion: {api}\nkind: {tkind}\nmetadata: {{name: x}}\nspec: {template}\n"
                );
                let kind = if flagger { Kind::Flagger } else { Kind::Argo };
                let out = import(kind, &[Source { name: "r.yaml".into(), text: text.clone() }]);
                if let Ok(i) = out {
                    prop_assert!(crate::Policy::from_yaml(&i.policy).is_ok(), "{}\n{}", text, i.policy);
                } else if let Err(e) = out {
                    prop_assert!(!e.message.contains("bug of"), "{e}\n{text}");
                }
            }
        }
    }

    fn imp(kind: Kind, text: &str) -> Imported {
        import(
            kind,
            &[Source {
                name: "in.yaml".into(),
                text: text.into(),
            }],
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn pol(i: &Imported) -> crate::Policy {
        crate::Policy::from_yaml(&i.policy)
            .unwrap_or_else(|e| panic!("{:?}\n{}", e.diagnostics, i.policy))
    }

    fn has_unmapped(i: &Imported, field: &str) -> bool {
        i.unmapped.iter().any(|u| u.field == field)
    }

    const ARGO_HEAD: &str = "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: demo}\nspec:\n  strategy:\n    canary:\n      steps: [{setWeight: 50}]\n      analysis: {templates: [{templateName: t}]}\n---\napiVersion: argoproj.io/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: t}\nspec:\n";

    fn argo(template_spec: &str) -> Imported {
        imp(Kind::Argo, &format!("{ARGO_HEAD}{template_spec}"))
    }

    const FLAGGER_HEAD: &str = "apiVersion: flagger.app/v1beta1\nkind: Canary\nmetadata: {name: demo}\nspec:\n  targetRef: {name: demo}\n";

    fn flagger(rest: &str) -> Imported {
        imp(Kind::Flagger, &format!("{FLAGGER_HEAD}{rest}"))
    }

    /// Runs a command metric's argv as the given variant: its output.
    fn run_as(argv: &[String], variant: &str) -> String {
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env("RAMPART_METRIC_VARIANT", variant)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn command_of<'a>(p: &'a crate::Policy, name: &str) -> &'a [String] {
        let m = p.analysis.metrics.iter().find(|m| m.name == name).unwrap();
        match &m.query.as_ref().unwrap().source {
            crate::policy::QuerySource::Command(c) => &c.argv,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_job_or_rollout_webhook_runs_for_the_canary_only() {
        let i = argo(
            "  metrics:\n  - name: smoke\n    provider:\n      job:\n        spec:\n          template:\n            spec:\n              containers: [{name: c, image: i, command: [\"false\"]}]\n",
        );
        let p = pol(&i);
        let argv = command_of(&p, "smoke");
        assert_eq!(run_as(argv, "stable"), "0", "{}", i.policy);
        assert_eq!(run_as(argv, "canary"), "1", "{}", i.policy);
        assert!(i.policy.contains("canary only"), "{}", i.policy);
        let i = flagger(
            "  analysis:\n    interval: 1m\n    stepWeights: [50]\n    webhooks:\n    - {name: check, type: rollout, url: \"http://127.0.0.1:1/\", timeout: 5s}\n",
        );
        let p = pol(&i);
        let argv = command_of(&p, "webhook-check");
        assert_eq!(run_as(argv, "stable"), "0", "{}", i.policy);
        assert_eq!(run_as(argv, "canary"), "1", "{}", i.policy);
        assert!(i.policy.contains("canary only"), "{}", i.policy);
    }

    #[test]
    fn templated_numbers_are_filled_in_or_listed() {
        let i = argo(
            "  args:\n  - {name: fl, value: \"3\"}\n  - {name: iv, value: 30s}\n  - {name: bad, value: zz}\n  metrics:\n  - name: m\n    interval: \"{{args.iv}}\"\n    failureLimit: \"{{args.fl}}\"\n    consecutiveErrorLimit: \"{{args.bad}}\"\n    count: \"{{args.nope}}\"\n    successCondition: result[0] >= 0.9\n    provider: {prometheus: {address: \"http://p:9090\", query: up}}\n",
        );
        let p = pol(&i);
        let m = p.analysis.metrics.iter().find(|m| m.name == "m").unwrap();
        assert_eq!(m.failure_limit, 4, "{}", i.policy);
        assert_eq!(p.analysis.interval, std::time::Duration::from_secs(30));
        assert!(
            has_unmapped(&i, "spec.metrics[0].consecutiveErrorLimit"),
            "{:?}",
            i.unmapped
        );
        assert!(
            has_unmapped(&i, "spec.metrics[0].count"),
            "{:?}",
            i.unmapped
        );
    }

    #[test]
    fn dry_run_regexes_are_matched_or_listed() {
        let metric = |name: &str| {
            format!(
                "  - name: {name}\n    successCondition: result[0] >= 0.9\n    provider: {{prometheus: {{address: \"http://p:9090\", query: up}}}}\n"
            )
        };
        let i = argo(&format!(
            "  dryRun:\n  - metricName: \"lat\"\n  - metricName: \"^err.*$\"\n  metrics:\n{}{}",
            metric("latency-p99"),
            metric("errors")
        ));
        let p = pol(&i);
        let m = |n: &str| p.analysis.metrics.iter().find(|m| m.name == n).unwrap();
        assert!(!m("latency-p99").critical, "{}", i.policy);
        assert!(m("errors").critical, "{}", i.policy);
        assert!(
            has_unmapped(&i, "spec.dryRun[1].metricName"),
            "{:?}",
            i.unmapped
        );
    }

    /// Every metric a dry run (`dryRun: [{metricName: ".*"}]`, which Argo documents):
    /// the source's analysis could fail nothing, and a policy that can fail nothing is
    /// refused; the import judges its fallback beside them instead of failing.
    #[test]
    fn an_analysis_of_dry_runs_only_gets_the_fallback_beside_them() {
        let i = argo(
            "  dryRun:\n  - metricName: \".*\"\n  metrics:\n  - name: errors\n    successCondition: result[0] <= 0.01\n    provider: {prometheus: {address: \"http://p:9090\", query: up}}\n",
        );
        let p = pol(&i);
        let m = |n: &str| p.analysis.metrics.iter().find(|m| m.name == n);
        assert!(m("errors").is_some_and(|m| !m.critical), "{}", i.policy);
        assert!(
            p.analysis.metrics.iter().any(|m| m.critical),
            "no metric can fail the release: {}",
            i.policy
        );
        assert!(
            i.notes.iter().any(|n| n.contains("every one is a dry run")),
            "{:?}",
            i.notes
        );
    }

    #[test]
    fn refused_pieces_are_unmapped_at_their_line() {
        let i = argo(
            "  metrics:\n  - name: m\n    successCondition: result[0] >= 0.9\n    provider: {web: {url: \"ftp://x/y\", jsonPath: \"{$.a}\"}}\n",
        );
        let p = pol(&i);
        assert_eq!(p.analysis.metrics[0].name, "error-rate", "{}", i.policy);
        let u = i
            .unmapped
            .iter()
            .find(|u| u.field == "spec.metrics[0]")
            .unwrap();
        assert_eq!(u.line, 15, "{:?}", i.unmapped);
        let i = flagger(
            "  analysis:\n    interval: 1m\n    stepWeights: [50]\n    webhooks:\n    - {name: n, type: event, url: \"ftp://h/\"}\n",
        );
        pol(&i);
        assert!(
            has_unmapped(&i, "spec.analysis.webhooks[0]"),
            "{:?}\n{}",
            i.unmapped,
            i.policy
        );
    }

    #[test]
    fn fields_accepted_but_not_carried_are_listed() {
        let i = imp(
            Kind::Argo,
            "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: demo}\nspec:\n  strategy:\n    canary:\n      steps: [{setWeight: 50}]\n      trafficRouting:\n        managedRoutes: [{name: beta}]\n        plugins: {\"acme/router\": {x: 1}}\n        istio:\n          destinationRule: {name: dr}\n          virtualServices: [{name: a, routes: [primary]}, {name: b}]\n",
        );
        pol(&i);
        for f in [
            "spec.strategy.canary.trafficRouting.managedRoutes",
            "spec.strategy.canary.trafficRouting.plugins.acme/router",
            "spec.strategy.canary.trafficRouting.istio.destinationRule",
            "spec.strategy.canary.trafficRouting.istio.virtualServices[1]",
            "spec.strategy.canary.trafficRouting.istio.virtualServices[0].routes",
        ] {
            assert!(has_unmapped(&i, f), "{f}: {:?}", i.unmapped);
        }
        let i = argo(
            "  metrics:\n  - name: smoke\n    provider:\n      job:\n        spec:\n          backoffLimit: 2\n          template:\n            spec:\n              containers: [{name: c, image: i, command: [\"true\"], env: [{name: A, value: b}]}]\n  - name: cw\n    successCondition: result[0] <= 1\n    provider:\n      cloudWatch:\n        interval: 10m\n        metricDataQueries: [{id: q, expression: \"SELECT 1\", period: 300}]\n",
        );
        pol(&i);
        for f in [
            "spec.metrics[0].provider.job.spec.backoffLimit",
            "spec.metrics[0].provider.job.spec.template.spec.containers[0].env",
            "spec.metrics[1].provider.cloudWatch.interval",
            "spec.metrics[1].provider.cloudWatch.metricDataQueries[0].period",
        ] {
            assert!(has_unmapped(&i, f), "{f}: {:?}", i.unmapped);
        }
        // An interval of a part of CloudWatch's minute is rounded up to whole ones.
        let i = argo(
            "  metrics:\n  - name: cw\n    interval: 30s\n    successCondition: result[0] <= 1\n    provider:\n      cloudWatch:\n        metricDataQueries: [{id: q, expression: \"SELECT 1\"}]\n",
        );
        assert_eq!(
            pol(&i).analysis.interval,
            std::time::Duration::from_secs(60)
        );
        let i = imp(
            Kind::Flagger,
            &format!(
                "{FLAGGER_HEAD}  service: {{name: demo, port: 80, retries: {{attempts: 3}}, gatewayRefs: [{{name: gw}}]}}\n  analysis:\n    interval: 1m\n    stepWeights: [50]\n    alerts: [{{name: a, providerRef: {{name: slack}}}}]\n---\napiVersion: flagger.app/v1beta1\nkind: AlertProvider\nmetadata: {{name: slack}}\nspec: {{type: slack, channel: ops, username: bot, address: \"https://hooks.slack.com/x\"}}\n"
            ),
        );
        pol(&i);
        for f in [
            "spec.service.port",
            "spec.service.retries",
            "spec.service.gatewayRefs",
            "spec.channel",
            "spec.username",
        ] {
            assert!(has_unmapped(&i, f), "{f}: {:?}", i.unmapped);
        }
    }

    #[test]
    fn flagger_value_changes_are_listed_or_kept() {
        let i = flagger(
            "  analysis:\n    interval: 1m\n    stepWeights: [50]\n    webhooks:\n    - {name: check, type: rollout, url: \"http://h/\", timeout: 60s}\n    metrics:\n    - {name: request-success-rate, interval: 5m, thresholdRange: {min: 99}}\n    - {name: q, interval: 2m, query: \"sum(rate(x[{{ interval }}]))\", thresholdRange: {max: 1}}\n",
        );
        let p = pol(&i);
        assert!(
            has_unmapped(&i, "spec.analysis.webhooks[0].timeout"),
            "{:?}",
            i.unmapped
        );
        let q = |n: &str| {
            let m = p.analysis.metrics.iter().find(|m| m.name == n).unwrap();
            format!("{:?}", m.query)
        };
        assert!(q("q").contains("x[120s]"), "{}", i.policy);
        assert!(q("request-success-rate").contains("[300s]"), "{}", i.policy);
        assert!(
            !q("request-success-rate").contains("{interval}"),
            "{}",
            i.policy
        );
    }

    #[test]
    fn strict_conditions_decode_to_the_adjacent_bound() {
        let i = argo(
            "  metrics:\n  - name: a\n    failureCondition: result[0] >= 1\n    provider: {prometheus: {address: \"http://p:9090\", query: up}}\n  - name: b\n    successCondition: result[0] > 0\n    provider: {prometheus: {address: \"http://p:9090\", query: up2}}\n",
        );
        let p = pol(&i);
        let lim = |n: &str| {
            let m = p.analysis.metrics.iter().find(|m| m.name == n).unwrap();
            match &m.judge {
                crate::policy::Judge::Threshold(t) => (t.min, t.max),
                crate::policy::Judge::Sequential(_) => panic!(),
            }
        };
        assert_eq!(lim("a"), (None, Some(1f64.next_down())), "{}", i.policy);
        assert_eq!(lim("b"), (Some(0f64.next_up()), None), "{}", i.policy);
    }

    #[test]
    fn a_canary_scale_down_delay_is_not_a_drain() {
        let i = imp(
            Kind::Argo,
            "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: demo}\nspec:\n  strategy:\n    canary:\n      scaleDownDelaySeconds: 600\n      steps: [{setWeight: 50}]\n",
        );
        let p = pol(&i);
        assert_eq!(
            p.rollback.drain,
            std::time::Duration::from_secs(10),
            "{}",
            i.policy
        );
        assert!(
            has_unmapped(&i, "spec.strategy.canary.scaleDownDelaySeconds"),
            "{:?}",
            i.unmapped
        );
    }

    #[test]
    fn a_release_wide_flagger_threshold_is_listed() {
        let metrics = "    metrics:\n    - {name: request-success-rate, thresholdRange: {min: 99}}\n    - {name: request-duration, thresholdRange: {max: 500}}\n";
        let i = flagger(&format!(
            "  analysis:\n    interval: 1m\n    threshold: 5\n    stepWeights: [50]\n{metrics}"
        ));
        pol(&i);
        assert!(
            has_unmapped(&i, "spec.analysis.threshold"),
            "{:?}",
            i.unmapped
        );
        // One failed check rolls back either way.
        let i = flagger(&format!(
            "  analysis:\n    interval: 1m\n    threshold: 1\n    stepWeights: [50]\n{metrics}"
        ));
        assert!(!has_unmapped(&i, "spec.analysis.threshold"));
    }

    #[test]
    fn huge_integers_are_clamped_and_listed() {
        let big = i64::MAX;
        let i = argo(&format!(
            "  metrics:\n  - name: m\n    failureLimit: {big}\n    consecutiveErrorLimit: {big}\n    successCondition: result[0] >= 0.9\n    provider: {{prometheus: {{address: \"http://p:9090\", query: up}}}}\n"
        ));
        let p = pol(&i);
        assert_eq!(p.analysis.metrics[0].failure_limit, u32::MAX);
        assert!(has_unmapped(&i, "spec.metrics[0].failureLimit"));
        assert!(has_unmapped(&i, "spec.metrics[0].consecutiveErrorLimit"));
        let i = imp(
            Kind::Argo,
            &format!(
                "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {{name: demo}}\nspec:\n  strategy:\n    blueGreen:\n      activeService: demo\n      scaleDownDelaySeconds: {big}\n"
            ),
        );
        pol(&i);
        assert!(
            has_unmapped(&i, "spec.strategy.blueGreen.scaleDownDelaySeconds"),
            "{:?}",
            i.unmapped
        );
    }

    #[test]
    fn garbage_never_panics() {
        let inputs = [
            "",
            "---",
            "kind: Rollout",
            "kind: Canary\napiVersion: flagger.app/v1beta1",
            "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nspec: 5",
            "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: x}\nspec: {strategy: {canary: {steps: [{setWeight: 500}, {pause: {duration: zz}}, 7, {analysis: {templates: 3}}]}}}",
            "apiVersion: flagger.app/v1beta1\nkind: Canary\nmetadata: {name: x}\nspec: {targetRef: {name: x}, analysis: {stepWeights: [90, 10, x], metrics: [{name: request-success-rate, thresholdRange: {min: abc}}], webhooks: [{type: rollout}]}}",
            "[1, 2",
        ];
        for kind in [Kind::Argo, Kind::Flagger] {
            for text in inputs {
                let _ = import(
                    kind,
                    &[Source {
                        name: "x.yaml".into(),
                        text: text.into(),
                    }],
                );
                // Every prefix too: truncated files.
                for cut in (0..text.len()).filter(|i| text.is_char_boundary(*i)) {
                    let _ = import(
                        kind,
                        &[Source {
                            name: "x.yaml".into(),
                            text: text[..cut].into(),
                        }],
                    );
                }
            }
        }
    }
}

/// No object of the kind asked for among the inputs.
fn not_found(docs: &[Doc], sources: &[Source], what: &str) -> ImportError {
    let found: Vec<String> = docs
        .iter()
        .map(|d| format!("{} `{}` ({} document {})", d.kind, d.name, d.file, d.index))
        .collect();
    let doc = docs.first();
    ImportError {
        file: doc.map_or_else(
            || sources.first().map_or_else(String::new, |s| s.name.clone()),
            |d| d.file.clone(),
        ),
        document: doc.map(|d| d.index),
        pos: doc.map_or(Pos { line: 1, col: 1 }, |d| {
            tree::pos_of(tree::get(&d.node, "kind"))
        }),
        field: "kind".into(),
        message: format!(
            "no {what} among the inputs; found {}",
            if found.is_empty() {
                "no Kubernetes object".to_string()
            } else {
                found.join(", ")
            }
        ),
    }
}

/// The analysis-wide settings the metrics need: the interval, and each provider's
/// server or account.
#[derive(Debug, Default)]
struct Providers {
    /// The shortest interval of the metrics, and where it came from.
    pub interval_ms: Option<(u64, String)>,
    pub prometheus: Option<(String, String)>,
    pub needs_prometheus: bool,
    pub datadog: Option<(bool, String)>,
    /// `site: X` or `url: X`, from a provider's address.
    pub datadog_server: Option<(String, String)>,
    pub newrelic: Option<String>,
    pub cloudwatch: Option<String>,
    /// The region, when the source names it (Flagger's CloudWatch provider).
    pub cloudwatch_region: Option<String>,
}

impl Providers {
    /// A Prometheus server; the first one wins.
    pub fn prometheus(&mut self, cx: &mut Cx, url: String, from: String) {
        match &self.prometheus {
            None => self.prometheus = Some((url, from)),
            Some((first, _)) if *first != url => cx.note(format!(
                "rampart asks one Prometheus server (`analysis.prometheus`): {first}; {from} names {url}"
            )),
            Some(_) => {}
        }
        self.needs_prometheus = true;
    }

    pub fn datadog(&mut self, v2: bool, from: String) {
        if self.datadog.as_ref().is_none_or(|(was, _)| !was && v2) {
            self.datadog = Some((v2, from));
        }
    }

    /// A Datadog API address: one of Datadog's sites, or a URL of its own.
    pub fn datadog_server(&mut self, address: &str, from: String) {
        if self.datadog_server.is_some() {
            return;
        }
        let host = address
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let site = host.strip_prefix("api.").unwrap_or(host);
        let entry = if crate::policy::DATADOG_SITES.contains(&site) {
            format!("site: {}", emit::quote(site))
        } else if address.starts_with("http://") || address.starts_with("https://") {
            format!("url: {}", emit::quote(address))
        } else {
            return;
        };
        self.datadog_server = Some((entry, from));
    }

    pub fn newrelic(&mut self, cx: &mut Cx, doc: &Doc, path: &str, pos: Pos) {
        cx.unmapped(
            doc,
            path,
            pos,
            "the New Relic account id is in the provider's Secret, not in the manifests: set `analysis.newrelic.account_id` (written as 1, which blocks the release at its gates until it is set); the API key is read from NEW_RELIC_API_KEY",
        );
        self.newrelic
            .get_or_insert_with(|| format!("{} {path}", doc.label()));
    }

    pub fn cloudwatch(&mut self, cx: &mut Cx, doc: &Doc, path: &str, pos: Pos) {
        cx.unmapped(
            doc,
            path,
            pos,
            "the AWS region comes from the controller's environment, not the manifests: set `analysis.cloudwatch.region` (written as us-east-1); credentials are read from AWS_* or AWS_PROFILE",
        );
        self.cloudwatch
            .get_or_insert_with(|| format!("{} {path}", doc.label()));
    }

    /// The `analysis` entries before `metrics`.
    pub fn entries(&self, cx: &mut Cx) -> Vec<E> {
        let mut out = Vec::new();
        match &self.interval_ms {
            // CloudWatch answers in whole minutes (the period written below): an
            // interval of a part of one would read some minutes twice, so the
            // policy refuses it.
            Some((ms, from)) if self.cloudwatch.is_some() && !ms.is_multiple_of(60_000) => {
                out.push(ec(
                    "interval",
                    raw(dur(ms.div_ceil(60_000).clamp(1, 60) * 60_000)),
                    format!("from {from}, rounded up to whole minutes: CloudWatch's period"),
                ));
            }
            Some((ms, from)) => out.push(ec(
                "interval",
                raw(dur((*ms).clamp(100, 3_600_000))),
                format!("from {from}"),
            )),
            None => out.push(ec(
                "interval",
                raw("1m"),
                "no interval in the source: one measurement a minute",
            )),
        }
        if self.needs_prometheus {
            match &self.prometheus {
                Some((url, from)) => out.push(ec("prometheus", s(url), format!("from {from}"))),
                None => {
                    cx.note("No Prometheus address in the manifests: `analysis.prometheus` is written as http://prometheus:9090 (Flagger's and Argo's usual in-cluster name); set it to yours.");
                    out.push(ec(
                        "prometheus",
                        s("http://prometheus:9090"),
                        "REPLACE: the Prometheus server (not in the source)",
                    ));
                }
            }
        }
        if let Some((v2, from)) = &self.datadog {
            let mut fields = Vec::new();
            let mut froms = Vec::new();
            if let Some((entry, f)) = &self.datadog_server {
                fields.push(entry.clone());
                froms.push(f.clone());
            }
            if *v2 {
                fields.push("api: v2".into());
                froms.push(from.clone());
            }
            if !fields.is_empty() {
                out.push(ec(
                    "datadog",
                    raw(format!("{{{}}}", fields.join(", "))),
                    format!("from {}", froms.join(" + ")),
                ));
            }
        }
        if let Some(from) = &self.newrelic {
            out.push(ec(
                "newrelic",
                raw("{account_id: 1}"),
                format!("REPLACE: the account id (from {from}, whose Secret holds it)"),
            ));
        }
        match (&self.cloudwatch, &self.cloudwatch_region) {
            (Some(from), Some(region)) => out.push(ec(
                "cloudwatch",
                raw(format!("{{region: {}}}", emit::quote(region))),
                format!("from {from}"),
            )),
            (Some(from), None) => out.push(ec(
                "cloudwatch",
                raw("{region: us-east-1}"),
                format!("REPLACE: the region (from {from}: the controller's environment)"),
            )),
            _ => {}
        }
        out
    }
}
