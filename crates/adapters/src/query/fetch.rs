//! One JSON exchange with a provider's HTTP API, the way every provider needs it:
//! 401/403 as a clear credentials error, 429 (or the provider's own way of saying
//! "slow down") waited out per `Retry-After` within the measurement's budget, each
//! attempt signed afresh when the provider signs with the time, and nothing a secret
//! could leak through.
//!
//! It must not know any provider's request or answer shapes: a provider that signs or
//! throttles its own way says so through [`Request::sign`] and [`Request::throttled`].

use std::time::Duration;

use serde_json::Value;

use super::{Budget, ReadError, Secret, short};

/// Requests made for one read at most: the first and two retries after 429s.
pub const ATTEMPTS: u32 = 3;
/// How long one request may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The wait after a 429 without a usable `Retry-After` (none, or an HTTP date), and
/// the least wait after any 429: a provider is never asked again at once.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(1);

/// Headers made for each attempt (a signature over the time it is sent).
pub type Sign<'a> = &'a (dyn Fn() -> Result<Vec<(&'static str, String)>, ReadError> + Send + Sync);

/// A request to a provider. Its `Debug` names the provider, method and URL only:
/// header values carry secrets.
pub struct Request<'a> {
    /// The provider, for errors (`Datadog`).
    pub provider: &'static str,
    /// `GET` or `POST`.
    pub method: &'static str,
    /// The full URL; never holds a secret.
    pub url: String,
    /// A JSON body, if any.
    pub body: Option<String>,
    /// Headers, secrets among them.
    pub headers: Vec<(&'a str, String)>,
    /// Every secret the request carries: scrubbed from anything shown.
    pub secrets: Vec<&'a Secret>,
    /// Headers added to `headers` at each attempt, made again after every wait: an
    /// AWS signature covers the time, so a retry needs a new one.
    pub sign: Option<Sign<'a>>,
    /// Whether an answer that is not a 429 (status, body) asks to slow down all the
    /// same, as CloudWatch's 400 `Throttling` does: it is waited out like a 429.
    pub throttled: Option<fn(u16, &str) -> bool>,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("provider", &self.provider)
            .field("method", &self.method)
            .field("url", &self.url)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            )
            .field("signed", &self.sign.is_some())
            .finish_non_exhaustive()
    }
}

impl Request<'_> {
    fn scrub(&self, text: &str) -> String {
        super::scrub(text, &self.secrets)
    }
}

/// Sends `req` and parses the JSON answer, waiting out 429s within `budget`.
pub async fn json(req: &Request<'_>, budget: &Budget) -> Result<Value, ReadError> {
    let provider = req.provider;
    let mut attempt = 1;
    loop {
        let mut headers = req.headers.clone();
        if let Some(sign) = req.sign {
            headers.extend(sign()?);
        }
        let answer =
            crate::http::send_answer(req.method, &req.url, req.body.clone(), &headers, TIMEOUT)
                .await
                .map_err(|e| ReadError::Unanswered(req.scrub(&e.to_string())))?;
        // Scrubbed before it is shortened: a secret cut at the end would not match.
        let said = || short(&req.scrub(&answer.body));
        let throttled = answer.status == 429
            || req
                .throttled
                .is_some_and(|slow_down| slow_down(answer.status, &answer.body));
        match answer.status {
            200..=299 => {
                return serde_json::from_str(&answer.body)
                    .map_err(|_| ReadError::NotJson(provider));
            }
            401 | 403 => {
                return Err(ReadError::Auth {
                    provider,
                    status: answer.status,
                    why: said(),
                });
            }
            _ if throttled => {
                let wait = retry_after(answer.retry_after.as_deref());
                if attempt >= ATTEMPTS {
                    return Err(ReadError::RateLimited {
                        provider,
                        status: answer.status,
                        why: format!("after {ATTEMPTS} attempts"),
                    });
                }
                let left = budget.left();
                if !budget.take(wait) {
                    return Err(ReadError::RateLimited {
                        provider,
                        status: answer.status,
                        why: format!(
                            "and asks to wait {}s, more than the {}s left of the interval",
                            wait.as_secs_f64(),
                            left.as_secs_f64()
                        ),
                    });
                }
                tracing::info!(
                    provider,
                    status = answer.status,
                    wait_s = wait.as_secs_f64(),
                    "rate limited: waiting as asked"
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            status => {
                return Err(ReadError::Status {
                    provider,
                    status,
                    why: said(),
                });
            }
        }
    }
}

/// How long a 429 asks to wait: `Retry-After` in seconds, at least [`DEFAULT_WAIT`].
/// An HTTP date cannot be read without a wall clock here, so it waits the default.
pub fn retry_after(header: Option<&str>) -> Duration {
    header
        .and_then(|h| h.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_WAIT)
        .max(DEFAULT_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_never_below_the_floor() {
        assert_eq!(retry_after(Some("7")), Duration::from_secs(7));
        assert_eq!(retry_after(Some("0")), DEFAULT_WAIT);
        assert_eq!(retry_after(None), DEFAULT_WAIT);
        assert_eq!(
            retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            DEFAULT_WAIT
        );
    }
}
