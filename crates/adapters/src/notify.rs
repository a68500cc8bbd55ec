//! Notification hooks: a command or a webhook that hears about pages (and, if asked,
//! every notice).
//!
//! Owns delivering one notice to each hook with a time limit. A hook that fails is
//! logged and never fails the release: paging must not be able to break a rollback.

use std::time::Duration;

use rampart_core::policy::{NotifyHook, NotifyTarget};
use rampart_core::ports::{BoxFuture, Notifier};
use tokio::io::AsyncWriteExt;

use crate::http::post_json;

/// Sends notices to the policy's hooks.
#[derive(Debug, Clone)]
pub struct HookNotifier {
    service: String,
    hooks: Vec<NotifyHook>,
    timeout: Duration,
}

impl HookNotifier {
    /// Hooks for `service`.
    pub fn new(service: &str, hooks: Vec<NotifyHook>) -> Self {
        HookNotifier {
            service: service.to_string(),
            hooks,
            timeout: Duration::from_secs(10),
        }
    }

    async fn deliver(&self, hook: &NotifyHook, page: bool, message: &str) -> Result<(), String> {
        let body = serde_json::json!({"service": self.service, "page": page, "message": message})
            .to_string();
        match &hook.target {
            NotifyTarget::Webhook(url) => match post_json(url, body, self.timeout).await {
                Ok(code) if (200..300).contains(&code) => Ok(()),
                Ok(code) => Err(format!("{url} answered {code}")),
                Err(e) => Err(format!("{url}: {e}")),
            },
            NotifyTarget::Command(argv) => {
                let mut child = tokio::process::Command::new(&argv[0])
                    .args(&argv[1..])
                    .env("RAMPART_SERVICE", &self.service)
                    .env("RAMPART_PAGE", if page { "1" } else { "0" })
                    .env("RAMPART_MESSAGE", message)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| format!("`{}`: {e}", argv[0]))?;
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(body.as_bytes()).await;
                }
                match tokio::time::timeout(self.timeout, child.wait()).await {
                    Ok(Ok(status)) if status.success() => Ok(()),
                    Ok(Ok(status)) => Err(format!("`{}` {status}", argv[0])),
                    Ok(Err(e)) => Err(format!("`{}`: {e}", argv[0])),
                    Err(_) => Err(format!(
                        "`{}` did not finish in {}s",
                        argv[0],
                        self.timeout.as_secs()
                    )),
                }
            }
        }
    }
}

impl Notifier for HookNotifier {
    fn notify<'a>(&'a self, page: bool, message: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            for hook in self.hooks.iter().filter(|h| page || h.all) {
                if let Err(e) = self.deliver(hook, page, message).await {
                    tracing::warn!(error = %e, "notification hook failed");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn command_hooks_get_pages_and_only_pages_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pages.txt");
        let script = format!(
            "cat >> {0}; echo \" page=$RAMPART_PAGE\" >> {0}",
            out.display()
        );
        let hook = |all| NotifyHook {
            target: NotifyTarget::Command(vec!["sh".into(), "-c".into(), script.clone()]),
            all,
        };
        let n = HookNotifier::new("shop", vec![hook(false)]);
        n.notify(false, "promoted").await;
        n.notify(true, "halted: stable is unhealthy").await;
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(!text.contains("promoted"), "{text}");
        assert!(
            text.contains("\"message\":\"halted: stable is unhealthy\"") && text.contains("page=1"),
            "{text}"
        );
        HookNotifier::new("shop", vec![hook(true)])
            .notify(false, "promoted")
            .await;
        assert!(std::fs::read_to_string(&out).unwrap().contains("promoted"));
    }

    #[tokio::test]
    async fn a_failing_hook_is_not_fatal() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let n = HookNotifier::new(
            "shop",
            vec![
                NotifyHook {
                    target: NotifyTarget::Webhook(format!("http://127.0.0.1:{port}/hook")),
                    all: false,
                },
                NotifyHook {
                    target: NotifyTarget::Command(vec!["/nonexistent/pager".into()]),
                    all: false,
                },
            ],
        );
        n.notify(true, "halted").await;
    }
}
