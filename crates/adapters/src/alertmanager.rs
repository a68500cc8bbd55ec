//! Alertmanager silences held while a release runs, through the v2 API: the
//! [`Silencer`](rampart_core::ports::Silencer) port. When to hold, renew and expire is
//! the state machine's decision.
//!
//! Owns creating, renewing and expiring the silence, and reconciling after a crash:
//! every silence rampart creates names the service and the release in its comment
//! (`rampart:SERVICE:RELEASE`), so each hold finds its own, keeps the current release's,
//! and expires any a previous run left behind. A silence also lapses on its own after
//! its time to live, so a rampart that died and never came back cannot mute alerts for
//! long.

use std::time::Duration;

use rampart_core::Millis;
use rampart_core::policy::SilencesSpec;
use rampart_core::ports::{BoxFuture, PortError};
use serde_json::{Value, json};

use crate::http::send;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Manages one service's silence.
#[derive(Debug, Clone)]
pub struct Silencer {
    spec: SilencesSpec,
    service: String,
}

fn err(msg: impl Into<String>) -> PortError {
    PortError::new(Into::<String>::into(msg))
}

fn rfc3339(ms: Millis) -> String {
    jiff::Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl Silencer {
    /// A silencer for `service` with the policy's matchers.
    pub fn new(spec: SilencesSpec, service: &str) -> Silencer {
        Silencer {
            spec,
            service: service.to_string(),
        }
    }

    fn tag(&self, release: &str) -> String {
        format!("rampart:{}:{release}", self.service)
    }

    fn prefix(&self) -> String {
        format!("rampart:{}:", self.service)
    }

    /// This service's active silences that rampart created: (id, comment).
    async fn ours(&self) -> Result<Vec<(String, String)>, PortError> {
        let url = format!("{}/api/v2/silences", self.spec.alertmanager);
        let (status, body) = send("GET", &url, None, TIMEOUT)
            .await
            .map_err(|e| err(e.to_string()))?;
        if status != 200 {
            return Err(err(format!("Alertmanager answered {status} to GET {url}")));
        }
        let list: Value = serde_json::from_str(&body)
            .map_err(|e| err(format!("Alertmanager's silences are not JSON: {e}")))?;
        let prefix = self.prefix();
        Ok(list
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|s| s["status"]["state"] != "expired")
            .filter_map(|s| {
                let comment = s["comment"].as_str()?;
                let first = comment.split_whitespace().next()?;
                first.starts_with(&prefix).then(|| {
                    (
                        s["id"].as_str().unwrap_or_default().to_string(),
                        first.to_string(),
                    )
                })
            })
            .collect())
    }

    /// Expires this service's silences left by other releases and returns the current
    /// release's, if it is still active.
    async fn reconcile(&self, release: &str) -> Result<Option<String>, PortError> {
        let mine = self.tag(release);
        let mut keep = None;
        for (id, tag) in self.ours().await? {
            if tag == mine && keep.is_none() {
                keep = Some(id);
            } else {
                self.expire_id(&id).await?;
            }
        }
        Ok(keep)
    }

    /// Creates the release's silence, or extends `existing`, from `from` until `until`.
    async fn post(
        &self,
        release: &str,
        version: &str,
        existing: Option<&str>,
        from: Millis,
        until: Millis,
    ) -> Result<String, PortError> {
        let mut body = json!({
            "matchers": self.spec.matchers,
            "startsAt": rfc3339(from),
            "endsAt": rfc3339(until),
            "createdBy": "rampart",
            "comment": format!("{} silenced while rampart releases {} {version}; expired when the release ends", self.tag(release), self.service),
        });
        if let Some(id) = existing {
            body["id"] = json!(id);
        }
        let url = format!("{}/api/v2/silences", self.spec.alertmanager);
        let (status, answer) = send("POST", &url, Some(body.to_string()), TIMEOUT)
            .await
            .map_err(|e| err(e.to_string()))?;
        if status != 200 {
            return Err(err(format!(
                "Alertmanager answered {status} to a silence: {}",
                answer.trim()
            )));
        }
        let v: Value = serde_json::from_str(&answer)
            .map_err(|e| err(format!("Alertmanager's answer is not JSON: {e}")))?;
        v["silenceID"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| err("Alertmanager's answer has no silenceID"))
    }

    /// Expires one silence.
    async fn expire_id(&self, id: &str) -> Result<(), PortError> {
        let url = format!("{}/api/v2/silence/{id}", self.spec.alertmanager);
        let (status, body) = send("DELETE", &url, None, TIMEOUT)
            .await
            .map_err(|e| err(e.to_string()))?;
        match status {
            200 | 404 => Ok(()),
            _ => Err(err(format!(
                "Alertmanager answered {status} to expiring {id}: {}",
                body.trim()
            ))),
        }
    }

    /// Expires every silence of `release`.
    async fn release_ended(&self, release: &str) -> Result<(), PortError> {
        let mine = self.tag(release);
        for (id, tag) in self.ours().await? {
            if tag == mine {
                self.expire_id(&id).await?;
            }
        }
        Ok(())
    }
}

// === impl Silencer: the port ===

impl rampart_core::ports::Silencer for Silencer {
    fn hold<'a>(
        &'a self,
        release: &'a str,
        version: &'a str,
        from: Millis,
        until: Millis,
    ) -> BoxFuture<'a, Result<String, PortError>> {
        Box::pin(async move {
            // Other releases' silences that cannot be expired now are tried again at the
            // next renewal; this release's silence matters more than tidying up.
            let existing = match self.reconcile(release).await {
                Ok(kept) => kept,
                Err(e) => {
                    tracing::warn!("alert silences not reconciled: {e}");
                    None
                }
            };
            self.post(release, version, existing.as_deref(), from, until)
                .await
        })
    }

    fn expire<'a>(&'a self, release: &'a str) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(self.release_ended(release))
    }
}
