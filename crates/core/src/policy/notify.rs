//! Who hears about a release: the `notify` hooks (commands, webhooks, Slack,
//! PagerDuty) with their cadence, and the Alertmanager `silences` held meanwhile, with
//! their decoders. It must not send anything.

use std::time::Duration;

use super::values::{decode_argv, decode_base_url, decode_url};
use crate::decode::{Decoder, one_of};
use crate::notice::NoticeKind;
use crate::yaml::{Node, NodeKind};

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
    pub fn wants(&self, kind: NoticeKind) -> bool {
        self.on.contains(&kind.cadence())
    }

    /// Whether it hears about every moment.
    pub fn all(&self) -> bool {
        NoticeKind::CADENCE.iter().all(|c| self.on.contains(c))
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

pub(super) fn decode_silences(cx: &mut Decoder, node: &Node, path: &str) -> Option<SilencesSpec> {
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

pub(super) fn decode_notify(cx: &mut Decoder, node: &Node, path: &str) -> Option<NotifyHook> {
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
        // A secret written with no value (a template that rendered to nothing) would
        // send every notice unsigned, which the receiver may accept: refused.
        for key in ["secret", "secret_env"] {
            if let Some(n) = m.get(key).filter(|n| n.kind == NodeKind::Null) {
                cx.refuse_new(
                    n.pos,
                    &m.path_of(key),
                    format!("`{key}` has no value; give one, or leave `{key}` out to send unsigned notices"),
                );
                return None;
            }
        }
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
                &NoticeKind::CADENCE,
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
            "all" => Some(NoticeKind::CADENCE.to_vec()),
            _ => Some(PAGES.to_vec()),
        };
    }
    let on = cx.seq(n, p, |cx, n, p| one_of(cx, n, p, NAMES))?;
    if on.is_empty() {
        // A hook told of nothing looks configured and never fires.
        cx.refuse_new(
            n.pos,
            p,
            "`on` names no event, so this hook would never be told anything; list events (`[halted, escalated]`), use `pages` or `all`, or leave `on` out",
        );
    }
    Some(on)
}
