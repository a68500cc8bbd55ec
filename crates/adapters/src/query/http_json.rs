//! The `http` source: GET a metric's URL once per variant and interval, and pick its
//! numbers out of the JSON answer with the metric's JSON paths.
//!
//! Owns filling the URL (placeholders percent-encoded) and the headers (`{env:NAME}`
//! from the environment). It must not put a secret anywhere but a header.

use std::collections::BTreeMap;
use std::sync::Arc;

use rampart_core::policy::{Analysis, QuerySource, QuerySpec, env_refs};
use rampart_core::ports::{BoxFuture, Clock};

use super::fetch::{self, Request};
use super::{Ask, QueryProvider, ReadError, Reading, Secret, number_at};

/// Every `http` metric of a policy, with the secrets their headers read.
pub struct HttpJson {
    secrets: BTreeMap<String, Result<Secret, String>>,
    /// One for all the metrics: a wait asked for holds for every URL on that server.
    quiet: fetch::Quiet,
}

impl std::fmt::Debug for HttpJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpJson")
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("quiet", &self.quiet)
            .finish()
    }
}

impl HttpJson {
    /// Reads, from `env`, every variable the `http` metrics' headers name; the waits
    /// the servers ask for are kept on `clock`'s time.
    pub fn new(
        analysis: &Analysis,
        env: &dyn Fn(&str) -> Option<String>,
        clock: Arc<dyn Clock>,
    ) -> HttpJson {
        let mut secrets = BTreeMap::new();
        for m in &analysis.metrics {
            let Some(QuerySource::Http(fetch)) = m.query.as_ref().map(|q| &q.source) else {
                continue;
            };
            for var in fetch.env_vars() {
                let secret = Secret::from_env(&var, env).map_err(|e| e.to_string());
                secrets.insert(var, secret);
            }
        }
        HttpJson {
            secrets,
            quiet: fetch::Quiet::new(clock),
        }
    }

    /// The secrets its headers read, found in the environment.
    fn found(&self) -> Vec<&Secret> {
        self.secrets
            .values()
            .filter_map(|s| s.as_ref().ok())
            .collect()
    }

    /// The header value with its `{env:NAME}` references filled.
    fn header(&self, template: &str) -> Result<(String, Vec<&Secret>), ReadError> {
        let mut value = template.to_string();
        let mut used = Vec::new();
        for var in env_refs(template) {
            let secret = match self.secrets.get(&var) {
                Some(Ok(s)) => s,
                _ => return Err(ReadError::MissingSecret(var)),
            };
            unsendable(secret)?;
            value = value.replace(&format!("{{env:{var}}}"), secret.expose());
            used.push(secret);
        }
        Ok((value, used))
    }

    async fn document(&self, spec: &QuerySpec, ask: &Ask) -> Result<serde_json::Value, ReadError> {
        let QuerySource::Http(http) = &spec.source else {
            return Err(ReadError::Other("not an `http` metric".into()));
        };
        let mut headers = Vec::new();
        let mut secrets = Vec::new();
        for (name, template) in &http.headers {
            let (value, used) = self.header(template)?;
            headers.push((name.as_str(), value));
            secrets.extend(used);
        }
        let req = Request {
            provider: "the HTTP source",
            method: "GET",
            url: ask.fill(&http.url, crate::http::encode),
            body: None,
            headers,
            secrets,
            sign: None,
            throttled: None,
        };
        fetch::json(&req, &ask.budget, &self.quiet).await
    }
}

/// Refuses a secret no HTTP header can carry (a line break, as a secret written from
/// a file with its newline has, or another control character): every read would fail
/// to be sent. Names the variable, never the value.
fn unsendable(secret: &Secret) -> Result<(), ReadError> {
    if hyper::header::HeaderValue::from_str(secret.expose()).is_ok() {
        return Ok(());
    }
    Err(ReadError::Refused {
        provider: "the HTTP source",
        why: format!(
            "${} holds a character no HTTP header can carry (a line break, or another control character; a secret written from a file keeps its newline): no read could be sent",
            secret.var
        ),
    })
}

impl QueryProvider for HttpJson {
    fn read<'a>(&'a self, spec: &'a QuerySpec, ask: &'a Ask) -> BoxFuture<'a, Reading> {
        Box::pin(async move {
            match self.document(spec, ask).await {
                // A 2xx can echo the request (a header) where a number belongs.
                Ok(doc) => Reading {
                    value: number_at(&doc, &spec.query, &self.found()),
                    samples: spec
                        .samples
                        .as_deref()
                        .map(|p| number_at(&doc, p, &self.found())),
                    histogram: None,
                },
                // The value's error says it all; the count has no document either.
                Err(e) => Reading {
                    value: Err(e),
                    samples: None,
                    histogram: None,
                },
            }
        })
    }

    fn secrets(&self) -> Vec<Secret> {
        self.found().into_iter().cloned().collect()
    }

    fn check(&self) -> BoxFuture<'_, Result<String, ReadError>> {
        Box::pin(async move {
            for (var, secret) in &self.secrets {
                match secret {
                    Ok(secret) => unsendable(secret)?,
                    Err(_) => return Err(ReadError::MissingSecret(var.clone())),
                }
            }
            Ok(if self.secrets.is_empty() {
                "no credentials needed".to_string()
            } else {
                let vars: Vec<&str> = self.secrets.keys().map(String::as_str).collect();
                format!("{} set", vars.join(", "))
            })
        })
    }
}
