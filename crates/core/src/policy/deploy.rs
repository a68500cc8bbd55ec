//! The `deploy` section: how a version runs (local processes or a Kubernetes
//! Deployment), and its decoder. It describes; it must not start, probe or stop
//! anything.

use std::time::Duration;

use super::values::{HOUR, decode_argv, decode_kube_name, one_kind, positive};
use crate::decode::{Decoder, join, scalar};
use crate::yaml::{Node, NodeKind};

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

    /// The version an image runs, when it matches the template. A digest the template
    /// does not spell (`shop:v1@sha256:…`, as an admission webhook that pins images
    /// to their digests rewrites `shop:v1`) is not part of the version.
    pub fn version_of(&self, image: &str) -> Option<String> {
        let image = self.undigested(image);
        let (head, tail) = self.image.split_once("{version}")?;
        let v = image.strip_prefix(head)?.strip_suffix(tail)?;
        (!v.is_empty() && !v.contains('@') && self.image_of(v) == image).then(|| v.to_string())
    }

    /// Whether a Deployment running `running` runs `version`: its image, or that image
    /// pinned to a digest by an admission webhook (`shop:v1@sha256:…` runs `shop:v1`:
    /// the tag stays, the digest is added). A template that spells a digest itself is
    /// compared as it is.
    pub fn runs(&self, running: &str, version: &str) -> bool {
        self.undigested(running) == self.image_of(version)
    }

    /// `image` without a digest the template does not spell.
    fn undigested<'i>(&self, image: &'i str) -> &'i str {
        if self.image.contains('@') {
            return image;
        }
        image.split_once('@').map_or(image, |(name, _)| name)
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

pub(super) fn decode_deploy(cx: &mut Decoder, node: &Node, path: &str) -> Option<Deploy> {
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
    let timeout = positive(cx, &m, "timeout", HOUR).unwrap_or(Duration::from_secs(30));
    let period = positive(cx, &m, "period", HOUR).unwrap_or(Duration::from_millis(250));
    Some(Readiness {
        http,
        timeout,
        period,
    })
}

// === Kubernetes ===

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
    let ready_timeout = positive(cx, &m, "ready_timeout", HOUR).unwrap_or(Duration::from_secs(300));
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
