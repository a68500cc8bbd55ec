//! Alertmanager silences held while a release runs, through the v2 API.
//!
//! Owns creating, renewing and expiring the silence, and reconciling after a crash:
//! every silence rampart creates names the service and the release in its comment
//! (`rampart:SERVICE:RELEASE`), so on start or resume rampart can find its own, keep
//! the current release's, and expire any a previous run left behind. A silence also
//! lapses on its own after its time to live, so a rampart that died and never came
//! back cannot mute alerts for long.

use std::time::Duration;

use rampart_core::Millis;
use rampart_core::policy::SilencesSpec;
use rampart_core::ports::PortError;
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

    /// After a start or a restart: expires this service's silences left by other
    /// releases and returns the current release's, if it is still active.
    pub async fn reconcile(&self, release: &str) -> Result<Option<String>, PortError> {
        let mine = self.tag(release);
        let mut keep = None;
        for (id, tag) in self.ours().await? {
            if tag == mine && keep.is_none() {
                keep = Some(id);
            } else {
                self.expire(&id).await?;
            }
        }
        Ok(keep)
    }

    /// Creates the release's silence, or extends `existing`, until `now + ttl`.
    pub async fn hold(
        &self,
        release: &str,
        version: &str,
        existing: Option<&str>,
        now: Millis,
    ) -> Result<String, PortError> {
        let ttl = u64::try_from(self.spec.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut body = json!({
            "matchers": self.spec.matchers,
            "startsAt": rfc3339(now),
            "endsAt": rfc3339(now.saturating_add(ttl)),
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
    pub async fn expire(&self, id: &str) -> Result<(), PortError> {
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
    pub async fn release_ended(&self, release: &str) -> Result<(), PortError> {
        let mine = self.tag(release);
        for (id, tag) in self.ours().await? {
            if tag == mine {
                self.expire(&id).await?;
            }
        }
        Ok(())
    }

    /// How often to renew: half the time to live.
    pub fn renew_every(&self) -> Duration {
        self.spec.ttl / 2
    }
}
