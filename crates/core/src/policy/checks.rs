//! Checks a release runs: pre-release gates, preview and post-release checks (HTTP,
//! command, environment), and their decoders. It describes checks; it must not run
//! them.

use std::time::Duration;

use super::values::{HOUR, decode_argv, positive};
use crate::decode::{Decoder, list, one_of};
use crate::yaml::{Node, NodeKind};

/// Post-release verification.
#[derive(Clone, Debug, PartialEq)]
pub struct PostRelease {
    /// How long the new version serves all traffic before the checks run.
    pub wait: Duration,
    /// Checks against the new version; `{url}` is its address, a path is on it.
    pub checks: Vec<Gate>,
    /// What a failed check (or a failed watch) does.
    pub on_failure: PostFailure,
    /// How long the analysis goes on once all traffic is on the new version, judged
    /// against the previous version's measurements from before the switch, while the
    /// previous version keeps running for an instant switch back. Zero: no watch.
    pub watch: Duration,
}

/// What a failed post-release check does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostFailure {
    /// Switch back to the previous version, which is still running.
    Rollback,
    /// Stop and page; a human decides.
    Halt,
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

pub(super) fn decode_gates(cx: &mut Decoder, node: &Node, path: &str) -> Option<Gates> {
    let m = cx.map(node, path, &["pre"])?;
    let pre = m
        .optional_with(cx, "pre", |cx, n, p| {
            cx.seq(n, p, |cx, n, p| decode_check(cx, n, p, false))
        })
        .unwrap_or_default();
    Some(Gates { pre })
}

const GATE_KINDS: &[&str] = &["env", "http", "command"];

pub(super) fn decode_post_release(
    cx: &mut Decoder,
    node: &Node,
    path: &str,
) -> Option<PostRelease> {
    let m = cx.map(node, path, &["wait", "checks", "on_failure", "watch"])?;
    let wait = m.optional::<Duration>(cx, "wait").unwrap_or(Duration::ZERO);
    let watch = m
        .optional::<Duration>(cx, "watch")
        .unwrap_or(Duration::ZERO);
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
        watch,
    })
}

/// A gate or a check. `on_target` checks run against the new version: an http path
/// (`/healthz`) is on its address, and `{url}` in a command is its base URL.
pub(super) fn decode_check(
    cx: &mut Decoder,
    node: &Node,
    path: &str,
    on_target: bool,
) -> Option<Gate> {
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
            let timeout = positive(cx, &m, "timeout", HOUR).unwrap_or(Duration::from_secs(5));
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
            let timeout = positive(cx, &m, "timeout", HOUR).unwrap_or(Duration::from_secs(60));
            Some(GateCheck::Command { run: run?, timeout })
        }
    }
}
