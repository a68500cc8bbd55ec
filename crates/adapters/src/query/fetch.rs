//! One JSON exchange with a provider's HTTP API, the way every provider needs it:
//! 401/403 as a clear credentials error, 429 (or the provider's own way of saying
//! "slow down") waited out per `Retry-After` within the measurement's budget and
//! remembered past it ([`Quiet`]), each attempt signed afresh when the provider signs
//! with the time, and nothing a secret could leak through.
//!
//! It must not know any provider's request or answer shapes: a provider that signs or
//! throttles its own way says so through [`Request::sign`] and [`Request::throttled`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_core::Millis;
use rampart_core::ports::Clock;
use serde_json::Value;

use super::{Budget, ReadError, Secret, short};

/// Requests made for one read at most: the first and two retries after 429s.
pub const ATTEMPTS: u32 = 3;
/// How long one request may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The wait after a 429 without a usable `Retry-After` (none, or one that does not
/// parse), and the least wait after any 429: a provider is never asked again at once.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(1);
/// The longest wait a 429 is obeyed for. A server asking for more (a date a year on,
/// a clock far ahead of rampart's) is asked again after this: one request every ten
/// minutes is no hammering, and a release is not left without data for its whole
/// life by one answer.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// A provider's memory of the waits it was asked for: per origin (scheme, host and
/// port), the time before which nothing is sent there again, and the status that
/// asked for it. One per provider, shared by all its metrics, kept from one
/// measurement to the next.
///
/// Guarantees: after a 429 (or the provider's own "slow down") asking to wait, no
/// read of that provider sends to that origin before the wait is over, whichever
/// metric, variant or measurement it is for; a read that cannot wait that long within
/// its budget is rate limited at once, without sending.
///
/// Assumptions: the clock advances with tokio's (as [`crate::clock::TokioClock`]
/// does), since the waits are slept on tokio's timer.
pub struct Quiet {
    clock: Arc<dyn Clock>,
    until: Mutex<HashMap<String, (Millis, u16)>>,
}

impl std::fmt::Debug for Quiet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let until = self.until.lock().map(|u| u.clone()).unwrap_or_default();
        f.debug_struct("Quiet").field("until", &until).finish()
    }
}

impl Quiet {
    /// Nothing to wait for yet; the time is `clock`'s.
    pub fn new(clock: Arc<dyn Clock>) -> Quiet {
        Quiet {
            clock,
            until: Mutex::default(),
        }
    }

    /// What is left of the wait asked for at `origin`, and the status that asked;
    /// `None` when there is none.
    fn left(&self, origin: &str) -> Option<(Duration, u16)> {
        let now = self.clock.now();
        let until = self.until.lock().ok()?;
        let (at, status) = *until.get(origin)?;
        (at > now).then(|| (Duration::from_millis(at - now), status))
    }

    /// Asks nothing of `origin` for `wait` from now (a later end already set stays).
    fn hold(&self, origin: &str, wait: Duration, status: u16) {
        let wait = Millis::try_from(wait.as_millis()).unwrap_or(Millis::MAX);
        let at = self.clock.now().saturating_add(wait);
        if let Ok(mut until) = self.until.lock() {
            let entry = until.entry(origin.to_string()).or_insert((at, status));
            if at >= entry.0 {
                *entry = (at, status);
            }
        }
    }
}

/// The scheme, host and port of `url`, lower-cased: what one rate limit covers, and
/// how an error names the server (never with a user or password the URL holds).
fn origin(url: &str) -> String {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return "a URL that does not parse".to_string();
    };
    let port = uri.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}",
        uri.scheme_str().unwrap_or_default(),
        uri.host().unwrap_or_default()
    )
    .to_ascii_lowercase()
}

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

/// Sends `req` and parses the JSON answer, waiting out 429s within `budget`. A wait
/// asked for earlier (`quiet`, the provider's) is waited out first within `budget`,
/// or the read is rate limited without sending; a wait asked for now is remembered
/// there, whether or not this read waits it out.
pub async fn json(req: &Request<'_>, budget: &Budget, quiet: &Quiet) -> Result<Value, ReadError> {
    let provider = req.provider;
    let answer = answer(req, budget, quiet).await?;
    // Scrubbed before it is shortened: a secret cut at the end would not match.
    let said = || short(&req.scrub(&answer.body));
    match answer.status {
        200..=299 => serde_json::from_str(&answer.body).map_err(|_| ReadError::NotJson(provider)),
        401 | 403 => Err(ReadError::Auth {
            provider,
            status: answer.status,
            why: said(),
        }),
        status => Err(ReadError::Status {
            provider,
            status,
            why: said(),
        }),
    }
}

/// Sends `req` and returns the first answer that does not ask to slow down, waiting
/// out 429s within `budget` as [`json`] describes; the caller reads its status.
pub async fn answer(
    req: &Request<'_>,
    budget: &Budget,
    quiet: &Quiet,
) -> Result<crate::http::Answer, ReadError> {
    let provider = req.provider;
    let origin = origin(&req.url);
    let mut attempt = 1;
    loop {
        if let Some((wait, status)) = quiet.left(&origin) {
            let left = budget.left();
            if !budget.take(wait) {
                return Err(ReadError::RateLimited {
                    provider,
                    status,
                    why: format!(
                        "and asked not to be asked again for {}s more, longer than the {}s left of the interval (nothing was sent)",
                        wait.as_secs_f64(),
                        left.as_secs_f64()
                    ),
                });
            }
            tokio::time::sleep(wait).await;
        }
        let mut headers = req.headers.clone();
        if let Some(sign) = req.sign {
            headers.extend(sign()?);
        }
        let answer =
            crate::http::send_answer(req.method, &req.url, req.body.clone(), &headers, TIMEOUT)
                .await
                .map_err(|e| {
                    let said = req.scrub(&e.to_string());
                    if e.is_unreachable() {
                        ReadError::Unreachable(format!("{provider} at {origin}: {said}"))
                    } else {
                        ReadError::Unanswered(said)
                    }
                })?;
        // A 503 that says when to come back (`Retry-After`, RFC 9110 15.6.4) is
        // waited for like a 429.
        let throttled = answer.status == 429
            || (answer.status == 503 && answer.retry_after.is_some())
            || req
                .throttled
                .is_some_and(|slow_down| slow_down(answer.status, &answer.body));
        match answer.status {
            200..=299 | 401 | 403 => return Ok(answer),
            _ if throttled => {
                // Datadog sends no `Retry-After`: its 429 says in `X-RateLimit-Reset`
                // how many seconds until its limit resets (other APIs write an
                // epoch there, so only Datadog's is read).
                let asked = answer.retry_after.as_deref().or_else(|| {
                    (provider == super::datadog::NAME)
                        .then_some(answer.ratelimit_reset.as_deref())
                        .flatten()
                });
                let wait = retry_after(asked, quiet.clock.now());
                quiet.hold(&origin, wait, answer.status);
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
            _ => return Ok(answer),
        }
    }
}

/// How long a 429 asks to wait, at least [`DEFAULT_WAIT`] and at most [`MAX_WAIT`]:
/// `Retry-After` in seconds,
/// or as an HTTP date (RFC 9110 10.2.3: IMF-fixdate, or the obsolete RFC 850 and
/// asctime forms) less `now` (ms since the Unix epoch). None, or one that does not
/// parse, waits the default; a number of seconds too large to hold waits the cap.
pub fn retry_after(header: Option<&str>, now: Millis) -> Duration {
    let Some(header) = header.map(str::trim) else {
        return DEFAULT_WAIT;
    };
    let digits = !header.is_empty() && header.bytes().all(|b| b.is_ascii_digit());
    let wait = match header.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        // More seconds than a u64 holds: more than the cap.
        Err(_) if digits => MAX_WAIT,
        Err(_) => match httpdate::parse_http_date(header) {
            Ok(at) => at
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .saturating_sub(Duration::from_millis(now)),
            Err(_) => DEFAULT_WAIT,
        },
    };
    wait.clamp(DEFAULT_WAIT, MAX_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2015-10-21T07:28:00Z, in ms since the Unix epoch.
    const OCT_21: Millis = 1_445_412_480_000;

    #[test]
    fn retry_after_in_seconds_never_below_the_floor() {
        assert_eq!(retry_after(Some("7"), OCT_21), Duration::from_secs(7));
        assert_eq!(retry_after(Some("0"), OCT_21), DEFAULT_WAIT);
        assert_eq!(retry_after(None, OCT_21), DEFAULT_WAIT);
        assert_eq!(retry_after(Some("soon"), OCT_21), DEFAULT_WAIT);
    }

    /// Regression (review): an HTTP date was taken for no usable `Retry-After`, and a
    /// provider that asked for two minutes was asked again after one second.
    #[test]
    fn retry_after_as_an_http_date_waits_until_that_date() {
        let two_minutes_on = "Wed, 21 Oct 2015 07:30:00 GMT";
        assert_eq!(
            retry_after(Some(two_minutes_on), OCT_21),
            Duration::from_secs(120)
        );
        assert_eq!(
            retry_after(Some(two_minutes_on), OCT_21 + 500),
            Duration::from_millis(119_500)
        );
        // The obsolete forms RFC 9110 says to accept.
        assert_eq!(
            retry_after(Some("Wednesday, 21-Oct-15 07:29:00 GMT"), OCT_21),
            Duration::from_secs(60)
        );
        assert_eq!(
            retry_after(Some("Wed Oct 21 07:29:30 2015"), OCT_21),
            Duration::from_secs(90)
        );
        // A date already past waits the least.
        assert_eq!(
            retry_after(Some("Wed, 21 Oct 2015 07:00:00 GMT"), OCT_21),
            DEFAULT_WAIT
        );
    }

    /// Regression (review): a `Retry-After` of a year (or a date that far on) kept the
    /// provider quiet for the process's whole life; waits stop at [`MAX_WAIT`].
    #[test]
    fn retry_after_never_waits_longer_than_the_cap() {
        assert_eq!(retry_after(Some("31536000"), OCT_21), MAX_WAIT);
        assert_eq!(retry_after(Some("18446744073709551615"), OCT_21), MAX_WAIT);
        assert_eq!(
            retry_after(Some("Fri, 21 Oct 2016 07:28:00 GMT"), OCT_21),
            MAX_WAIT
        );
        assert_eq!(retry_after(Some("600"), OCT_21), MAX_WAIT);
        assert_eq!(retry_after(Some("599"), OCT_21), Duration::from_secs(599));
    }

    #[test]
    fn one_origin_per_scheme_host_and_port() {
        assert_eq!(
            origin("https://API.datadoghq.com/api/v1/query?q=1"),
            "https://api.datadoghq.com"
        );
        assert_eq!(origin("http://127.0.0.1:9/a/b"), "http://127.0.0.1:9");
        assert_ne!(
            origin("http://127.0.0.1:9/a"),
            origin("http://127.0.0.1:10/a")
        );
        assert_eq!(origin("https://u:pw@example.com/x"), "https://example.com");
    }
}
