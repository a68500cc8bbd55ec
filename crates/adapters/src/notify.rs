//! Notification hooks: commands, signed webhooks, Slack and PagerDuty, each hearing the
//! moments of a release its policy asks for.
//!
//! Owns the payloads (a generic JSON notice signed with HMAC-SHA256 over timestamp and
//! body, Slack blocks, PagerDuty Events v2 with one dedup key per release), delivery
//! with retries and backoff, and never failing a release: a hook that keeps failing is
//! logged and given up on. The controller sends notices from their own task, so a slow
//! hook never holds up a rollback either.

use std::process::ExitStatus;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rampart_core::instead::{Instead, with_command};
use rampart_core::policy::{NotifyHook, NotifyTarget, Secret};
use rampart_core::ports::{BoxFuture, Notice, Notifier};
use rampart_core::release::NoticeKind;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::AsyncWriteExt;

use crate::http::post_json_with;

/// Sends notices to the policy's hooks.
#[derive(Debug, Clone)]
pub struct HookNotifier {
    hooks: Vec<NotifyHook>,
    timeout: Duration,
    attempts: u32,
    backoff: Duration,
}

/// Why one delivery attempt failed. [`NotifyError::retryable`] says whether another
/// attempt may succeed; the message is what the log says when rampart gives up.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A secret the hook needs is in an environment variable that is not set.
    #[error("the environment variable {0} (a notification secret) is not set")]
    MissingSecret(String),
    /// The receiver answered, with a status that is not 2xx.
    #[error("{url} answered {code}")]
    Status {
        /// Where the notice was posted.
        url: String,
        /// The HTTP status.
        code: u16,
    },
    /// The receiver did not answer (refused, timed out, TLS).
    #[error("{url}: {why}")]
    Unanswered {
        /// Where the notice was posted.
        url: String,
        /// What the HTTP client saw (a secret URL replaced by how it is named).
        why: String,
    },
    /// The hook command could not be started.
    #[error("`{program}`: {source}")]
    Spawn {
        /// The command's program.
        program: String,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// The hook command exited unsuccessfully.
    #[error("`{program}` {status}")]
    Exited {
        /// The command's program.
        program: String,
        /// How it exited.
        status: ExitStatus,
    },
    /// Waiting for the hook command failed.
    #[error("`{program}`: {source}")]
    Wait {
        /// The command's program.
        program: String,
        /// Why waiting failed.
        source: std::io::Error,
    },
    /// The hook command ran past the attempt's time limit (it is killed).
    #[error("`{program}` did not finish in {}s", .timeout.as_secs())]
    TimedOut {
        /// The command's program.
        program: String,
        /// The time limit.
        timeout: Duration,
    },
}

impl NotifyError {
    /// Whether another attempt may succeed: throttling and the receiver's faults are
    /// worth retrying; ours (a missing secret, a 4xx, a command that does not exist)
    /// are not.
    pub fn retryable(&self) -> bool {
        match self {
            NotifyError::MissingSecret(_) | NotifyError::Spawn { .. } => false,
            NotifyError::Status { code, .. } => *code == 429 || *code >= 500,
            NotifyError::Unanswered { .. }
            | NotifyError::Exited { .. }
            | NotifyError::Wait { .. }
            | NotifyError::TimedOut { .. } => true,
        }
    }
}

impl HookNotifier {
    /// Hooks for a service: 4 attempts each, 250 ms backoff doubling, 10 s per attempt.
    pub fn new(hooks: Vec<NotifyHook>) -> Self {
        HookNotifier {
            hooks,
            timeout: Duration::from_secs(10),
            attempts: 4,
            backoff: Duration::from_millis(250),
        }
    }

    /// The same hooks with another retry schedule (tests use short ones).
    pub fn with_retries(mut self, attempts: u32, backoff: Duration, timeout: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.backoff = backoff;
        self.timeout = timeout;
        self
    }

    async fn deliver(&self, hook: &NotifyHook, n: &Notice) -> Result<(), NotifyError> {
        let mut wait = self.backoff;
        let mut attempt = 1;
        loop {
            match self.attempt(&hook.target, n, attempt).await {
                Ok(()) => return Ok(()),
                Err(e) if !e.retryable() || attempt >= self.attempts => return Err(e),
                Err(_) => {}
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
            attempt += 1;
        }
    }

    async fn attempt(
        &self,
        target: &NotifyTarget,
        n: &Notice,
        attempt: u32,
    ) -> Result<(), NotifyError> {
        match target {
            NotifyTarget::Command(argv) => self.run(argv, n, attempt).await,
            NotifyTarget::Webhook { url, secret } => {
                let body = generic(n).to_string();
                let mut headers = Vec::new();
                if let Some(secret) = secret {
                    let key = reveal(secret)?;
                    let ts = (n.at / 1000).to_string();
                    headers.push(("x-rampart-timestamp", ts.clone()));
                    headers.push((
                        "x-rampart-signature",
                        format!("v1={}", sign(&key, &ts, &body)),
                    ));
                }
                self.post(url, url, body, &headers).await
            }
            NotifyTarget::Slack { url, dashboard } => {
                // The URL is the secret: errors name where it came from instead.
                let shown = match url {
                    Secret::Env(name) => format!("the Slack webhook (${name})"),
                    Secret::Value(_) => "the Slack webhook".to_string(),
                };
                let url = reveal(url)?;
                self.post(
                    &url,
                    &shown,
                    slack(n, dashboard.as_deref()).to_string(),
                    &[],
                )
                .await
            }
            NotifyTarget::PagerDuty {
                url,
                routing_key,
                dashboard,
            } => {
                let key = reveal(routing_key)?;
                match pagerduty(n, &key, dashboard.as_deref()) {
                    Some(event) => self.post(url, url, event.to_string(), &[]).await,
                    None => Ok(()),
                }
            }
        }
    }

    /// POSTs `body` to `url`; errors name it as `shown` (a URL that is a secret is
    /// never in them, nor in what the HTTP client said).
    async fn post(
        &self,
        url: &str,
        shown: &str,
        body: String,
        headers: &[(&str, String)],
    ) -> Result<(), NotifyError> {
        match post_json_with(url, body, headers, self.timeout).await {
            Ok(code) if (200..300).contains(&code) => Ok(()),
            Ok(code) => Err(NotifyError::Status {
                url: shown.to_string(),
                code,
            }),
            Err(why) => Err(NotifyError::Unanswered {
                url: shown.to_string(),
                why: if url.is_empty() {
                    why.to_string()
                } else {
                    why.to_string().replace(url, shown)
                },
            }),
        }
    }

    async fn run(&self, argv: &[String], n: &Notice, attempt: u32) -> Result<(), NotifyError> {
        let body = generic(n).to_string();
        let program = || argv[0].clone();
        let mut child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env("RAMPART_SERVICE", &n.service)
            .env("RAMPART_RELEASE", &n.release)
            .env("RAMPART_KIND", n.kind.as_str())
            .env("RAMPART_PAGE", if n.page { "1" } else { "0" })
            .env("RAMPART_NOTICE_ID", notice_id(n))
            .env("RAMPART_ATTEMPT", attempt.to_string())
            .env("RAMPART_MESSAGE", env_text(&n.message))
            .env(
                "RAMPART_INSTEAD",
                env_text(
                    &n.instead
                        .as_ref()
                        .map(Instead::command_line)
                        .unwrap_or_default(),
                ),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own process group: at the time limit the whole group goes, children
            // it started included.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| NotifyError::Spawn {
                program: program(),
                source,
            })?;
        let group = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .map(nix::unistd::Pid::from_raw);
        let mut stdin = child.stdin.take();
        // The notice is written within the time limit too: a hook that never reads
        // its stdin cannot hold it (or the notices after it) once the pipe is full.
        let finished = async {
            if let Some(stdin) = stdin.as_mut() {
                let _ = stdin.write_all(body.as_bytes()).await;
            }
            drop(stdin.take());
            child.wait().await
        };
        let waited = tokio::time::timeout(self.timeout, finished).await;
        if waited.is_err()
            && let Some(group) = group
        {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
        match waited {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(NotifyError::Exited {
                program: program(),
                status,
            }),
            Ok(Err(source)) => Err(NotifyError::Wait {
                program: program(),
                source,
            }),
            Err(_) => Err(NotifyError::TimedOut {
                program: program(),
                timeout: self.timeout,
            }),
        }
    }
}

/// The most of a notice's text a hook's environment carries: Linux refuses to start a
/// program with one environment string over 128 KiB (`E2BIG`), and the whole notice is
/// on its stdin anyway.
const ENV_TEXT_MAX: usize = 32 * 1024;

/// `text` as an environment value that always lets the hook start: NUL bytes (which no
/// environment string can hold; a version's stderr tail may carry them) written as
/// U+FFFD, and cut at [`ENV_TEXT_MAX`] bytes on a character boundary, saying so.
fn env_text(text: &str) -> String {
    if text.len() <= ENV_TEXT_MAX && !text.contains('\0') {
        return text.to_string();
    }
    let mut cut = text.len().min(ENV_TEXT_MAX);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = text[..cut].replace('\0', "\u{fffd}");
    if cut < text.len() {
        out.push_str(&format!(
            " [{} more bytes in the notice on stdin]",
            text.len() - cut
        ));
    }
    out
}

fn reveal(secret: &Secret) -> Result<String, NotifyError> {
    match secret {
        Secret::Value(v) => Ok(v.clone()),
        Secret::Env(name) => {
            std::env::var(name).map_err(|_| NotifyError::MissingSecret(name.clone()))
        }
    }
}

/// `hex(HMAC-SHA256(key, timestamp + "." + body))`, the webhook signature.
pub fn sign(key: &str, timestamp: &str, body: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A notice's id: the same on every attempt to deliver it (a hook that failed after
/// it acted, say a paging script that paged and then exited 1, is tried again), so a
/// receiver that pages someone can drop a notice it has already acted on.
pub fn notice_id(n: &Notice) -> String {
    use sha2::Digest;
    let text = format!(
        "{}\n{}\n{}\n{}\n{}",
        n.service,
        n.release,
        n.kind.as_str(),
        n.at,
        n.message
    );
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

/// The generic JSON notice (webhooks and commands).
pub fn generic(n: &Notice) -> Value {
    json!({
        "id": notice_id(n),
        "service": n.service,
        "release": n.release,
        "kind": n.kind.as_str(),
        "page": n.page,
        "version": n.version,
        "stable": n.stable,
        "weight": n.weight,
        "message": n.message,
        "instead": n.instead,
        "at": n.at,
    })
}

/// The message with the command that acts on it, for chat and pager text.
fn said(n: &Notice) -> String {
    with_command(&n.message, n.instead.as_ref())
}

fn title(n: &Notice) -> String {
    let what = match n.kind {
        NoticeKind::Started => "release started",
        NoticeKind::Step => "step",
        NoticeKind::Approval => "approval needed",
        NoticeKind::Rollback => "rolling back",
        NoticeKind::Halted => "HALTED",
        NoticeKind::Escalated => "ESCALATED",
        NoticeKind::Promoted => "promoted",
        NoticeKind::RolledBack => "rolled back",
        NoticeKind::Blocked => "blocked",
    };
    format!("{} {}: {what}", n.service, n.version)
}

/// A Slack incoming-webhook message: a header, the service, versions, weight and
/// release, the reason, and a link to the dashboard.
pub fn slack(n: &Notice, dashboard: Option<&str>) -> Value {
    let versions = match &n.stable {
        Some(s) if *s != n.version => format!("{s} → {}", n.version),
        _ => n.version.clone(),
    };
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": title(n)}}),
        json!({"type": "section", "fields": [
            {"type": "mrkdwn", "text": format!("*Service*\n{}", n.service)},
            {"type": "mrkdwn", "text": format!("*Versions*\n{versions}")},
            {"type": "mrkdwn", "text": format!("*Canary weight*\n{}", n.weight)},
            {"type": "mrkdwn", "text": format!("*Release*\n`{}`", n.release)},
        ]}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Reason*\n{}", n.message)}}),
    ];
    if let Some(i) = &n.instead {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*To act*\n{}", i.command_line())}}));
    }
    if let Some(url) = dashboard {
        blocks.push(json!({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Dashboard"}, "url": url}
        ]}));
    }
    json!({"text": format!("{}: {}", title(n), said(n)), "blocks": blocks})
}

/// A PagerDuty Events v2 event: pages trigger, the outcome resolves, with one dedup key
/// per release. Other moments send nothing.
pub fn pagerduty(n: &Notice, routing_key: &str, dashboard: Option<&str>) -> Option<Value> {
    let dedup_key = format!("rampart-{}", n.release);
    let action = match n.kind {
        NoticeKind::Approval | NoticeKind::Halted | NoticeKind::Escalated => "trigger",
        NoticeKind::Promoted | NoticeKind::RolledBack | NoticeKind::Blocked => "resolve",
        _ => return None,
    };
    if action == "resolve" {
        return Some(json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        }));
    }
    let severity = match n.kind {
        NoticeKind::Approval => "warning",
        _ => "critical",
    };
    let mut event = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": format!("{}: {}", title(n), said(n)).chars().take(1024).collect::<String>(),
            "source": format!("rampart/{}", n.service),
            "severity": severity,
            "component": n.service,
            "custom_details": generic(n),
        },
    });
    if let Some(url) = dashboard {
        event["links"] = json!([{"href": url, "text": "Dashboard"}]);
    }
    Some(event)
}

impl Notifier for HookNotifier {
    fn notify<'a>(&'a self, notice: &'a Notice) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for hook in self.hooks.iter().filter(|h| h.wants(notice.kind)) {
                if let Err(e) = self.deliver(hook, notice).await {
                    tracing::warn!(error = %e, kind = notice.kind.as_str(), "notification hook failed; giving up on this notice");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_core::Weight;

    pub(crate) fn notice(kind: NoticeKind) -> Notice {
        Notice {
            kind,
            page: matches!(kind, NoticeKind::Halted),
            service: "shop".into(),
            release: "shop-1".into(),
            version: "v2".into(),
            stable: Some("v1".into()),
            weight: Weight::from_percent(20).unwrap(),
            message: "error-rate 9% > max 2%".into(),
            instead: None,
            at: 1_700_000_000_123,
        }
    }

    #[tokio::test]
    async fn command_hooks_hear_only_the_moments_they_ask_for() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pages.txt");
        let script = format!(
            "cat >> {0}; echo \" kind=$RAMPART_KIND page=$RAMPART_PAGE\" >> {0}",
            out.display()
        );
        let hook = |on: Vec<&'static str>| NotifyHook {
            target: NotifyTarget::Command(vec!["sh".into(), "-c".into(), script.clone()]),
            on,
        };
        let n = HookNotifier::new(vec![hook(rampart_core::policy::PAGES.to_vec())]);
        n.notify(&notice(NoticeKind::Promoted)).await;
        n.notify(&notice(NoticeKind::Halted)).await;
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(!text.contains("kind=promoted"), "{text}");
        assert!(
            text.contains("kind=halted page=1") && text.contains("\"release\":\"shop-1\""),
            "{text}"
        );
        HookNotifier::new(vec![hook(vec!["done"])])
            .notify(&notice(NoticeKind::Promoted))
            .await;
        assert!(
            std::fs::read_to_string(&out)
                .unwrap()
                .contains("kind=promoted")
        );
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let known: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            known,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The signed text is the timestamp, a dot, then the body.
        assert_eq!(sign("Jefe", "what do ya want for nothing", "").len(), 64);
        assert_eq!(sign("Jefe", "what do ya want for nothing", "")[..], {
            let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
            mac.update(b"what do ya want for nothing.");
            mac.finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        });
    }

    #[test]
    fn only_throttling_and_the_receivers_faults_are_retried() {
        let status = |code| NotifyError::Status {
            url: "http://hook".into(),
            code,
        };
        assert!(status(429).retryable() && status(500).retryable() && status(503).retryable());
        assert!(!status(400).retryable() && !status(404).retryable());
        assert!(!NotifyError::MissingSecret("SLACK_URL".into()).retryable());
        assert_eq!(status(503).to_string(), "http://hook answered 503");
    }

    #[test]
    fn pagerduty_triggers_on_pages_and_resolves_on_the_outcome() {
        let t = pagerduty(&notice(NoticeKind::Halted), "KEY", Some("http://grafana")).unwrap();
        assert_eq!(t["event_action"], "trigger");
        assert_eq!(t["dedup_key"], "rampart-shop-1");
        assert_eq!(t["payload"]["severity"], "critical");
        assert_eq!(t["links"][0]["href"], "http://grafana");
        let r = pagerduty(&notice(NoticeKind::RolledBack), "KEY", None).unwrap();
        assert_eq!(
            (r["event_action"].as_str(), r["dedup_key"].as_str()),
            (Some("resolve"), Some("rampart-shop-1"))
        );
        assert!(pagerduty(&notice(NoticeKind::Step), "KEY", None).is_none());
    }
}
