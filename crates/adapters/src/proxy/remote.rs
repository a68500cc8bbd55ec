//! A controller's side of a data plane that runs as its own process: the router, the
//! `builtin` metrics and the counts, over the data plane's admin socket.
//!
//! Owns the admin API's client: one short HTTP/1 exchange per call on the Unix socket,
//! with the token. It must not decide anything: it forwards what the controller asks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rampart_core::metrics::IntervalSample;
use rampart_core::policy::RouteMatch;
use rampart_core::ports::{BoxFuture, MetricsSource, PortError, TrafficRouter};
use rampart_core::release::MeasureWindow;
use rampart_core::{Variant, Weight};
use serde_json::{Value, json};

use super::{RouteTable, Totals};

/// How long one admin call may take (a drain adds its own timeout).
const CALL: Duration = Duration::from_secs(10);

/// Why a call to the data plane failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Nothing answers on the socket.
    #[error("the data plane's admin socket {path}: {source}")]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The data plane refused the token.
    #[error(
        "the data plane refused this controller's credential (the token in {0}); was the data plane started with another state directory?"
    )]
    Refused(PathBuf),
    /// The data plane answered with an error.
    #[error("the data plane answered {status} {code}: {message}")]
    Answer {
        /// The HTTP status.
        status: u16,
        /// Its machine-readable code.
        code: String,
        /// What it said.
        message: String,
    },
    /// The exchange broke off, or did not finish in time.
    #[error("the data plane: {0}")]
    Exchange(String),
}

impl From<RemoteError> for PortError {
    fn from(e: RemoteError) -> Self {
        PortError::new(e.to_string())
    }
}

/// A data plane reached through its admin socket.
pub struct RemotePlane {
    socket: PathBuf,
    token: String,
    token_file: PathBuf,
    /// What this controller's time attached counted, for [`Totals`].
    counted: Mutex<Counted>,
    /// The counts at the previous measurement.
    last: Mutex<IntervalSample>,
    /// Read along with the counts.
    since_closed: Mutex<Option<u64>>,
    /// The data plane's counter identity at the previous measurement.
    instance: Mutex<Option<u64>>,
    /// Set once attached: from then on a briefly absent socket is a hand-over.
    attached: std::sync::atomic::AtomicBool,
    /// Attached counting from an earlier controller's last measurement (see
    /// `resume_window`).
    carried: std::sync::atomic::AtomicBool,
}

/// Without the admin token, which moves all the traffic: a `{:?}` in a log or an error
/// must not show it.
impl std::fmt::Debug for RemotePlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePlane")
            .field("socket", &self.socket)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl RemotePlane {
    /// Attaches to the data plane listening on `socket`, with the token in
    /// `token_file`; checks the credential with one read of the counts.
    pub async fn attach(socket: &Path, token_file: &Path) -> Result<RemotePlane, RemoteError> {
        let token = std::fs::read_to_string(token_file)
            .map_err(|source| RemoteError::Unreachable {
                path: token_file.to_path_buf(),
                source,
            })?
            .trim()
            .to_string();
        RemotePlane::attach_with(socket, token_file, token).await
    }

    /// [`RemotePlane::attach`] with the token given.
    pub async fn attach_with(
        socket: &Path,
        token_file: &Path,
        token: String,
    ) -> Result<RemotePlane, RemoteError> {
        let plane = RemotePlane {
            socket: socket.to_path_buf(),
            token,
            token_file: token_file.to_path_buf(),
            counted: Mutex::default(),
            last: Mutex::default(),
            since_closed: Mutex::default(),
            instance: Mutex::default(),
            attached: std::sync::atomic::AtomicBool::new(false),
            carried: std::sync::atomic::AtomicBool::new(false),
        };
        let (now, instance, measured) = plane.counters(false).await?;
        *plane.instance.lock().unwrap_or_else(|p| p.into_inner()) = instance;
        plane.counted.lock().unwrap_or_else(|p| p.into_inner()).base = now.clone();
        plane
            .attached
            .store(true, std::sync::atomic::Ordering::Release);
        // The next measurement counts from the last one an earlier controller took
        // of this data plane: what the versions served while no controller ran (a
        // canary failing its users meanwhile) is judged, not skipped.
        plane
            .carried
            .store(measured.is_some(), std::sync::atomic::Ordering::Release);
        *plane.last.lock().unwrap_or_else(|p| p.into_inner()) = measured.unwrap_or(now);
        Ok(plane)
    }

    /// One admin call: `method path` with an optional JSON body; the JSON answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        extra: Duration,
    ) -> Result<Value, RemoteError> {
        let exchange = async {
            let stream = self.connect().await?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| RemoteError::Exchange(e.to_string()))?;
            let conn = tokio::spawn(conn);
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            let req = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, "rampart-dataplane")
                .header(
                    hyper::header::AUTHORIZATION,
                    format!("Bearer {}", self.token),
                )
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| RemoteError::Exchange(e.to_string()))?;
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| RemoteError::Exchange(e.to_string()))?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| RemoteError::Exchange(e.to_string()))?
                .to_bytes();
            conn.abort();
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status == hyper::StatusCode::UNAUTHORIZED {
                return Err(RemoteError::Refused(self.token_file.clone()));
            }
            if !status.is_success() {
                return Err(RemoteError::Answer {
                    status: status.as_u16(),
                    code: value["error"]["code"].as_str().unwrap_or("").to_string(),
                    message: value["error"]["message"]
                        .as_str()
                        .unwrap_or("no message")
                        .to_string(),
                });
            }
            Ok(value)
        };
        tokio::time::timeout(CALL + extra, exchange)
            .await
            .map_err(|_| {
                RemoteError::Exchange(format!("no answer within {}s", (CALL + extra).as_secs()))
            })?
    }

    /// Connects to the admin socket. While a data plane hands over to a newer one the
    /// socket is briefly absent or refuses: tried again for up to 5 s.
    async fn connect(&self) -> Result<tokio::net::UnixStream, RemoteError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::net::UnixStream::connect(&self.socket).await {
                Ok(s) => return Ok(s),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                    ) && tokio::time::Instant::now() < deadline
                        && self.attached.load(std::sync::atomic::Ordering::Acquire) =>
                {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(source) => {
                    return Err(RemoteError::Unreachable {
                        path: self.socket.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// Reads the cumulative counts now (and keeps them for [`Totals`]).
    pub async fn refresh(&self) -> Result<IntervalSample, RemoteError> {
        self.counters(false).await.map(|(totals, _, _)| totals)
    }

    /// The cumulative counts, the data plane's counter identity, and the counts as of
    /// the last measurement. `measure`: this read is a measurement (kept as such by
    /// the data plane; one from before it kept them is read plainly).
    async fn counters(
        &self,
        measure: bool,
    ) -> Result<(IntervalSample, Option<u64>, Option<IntervalSample>), RemoteError> {
        let read = || self.call(Method::GET, "/counters", None, Duration::ZERO);
        let v = if measure {
            match self
                .call(Method::POST, "/counters/measured", None, Duration::ZERO)
                .await
            {
                Err(RemoteError::Answer { status: 404, .. }) => read().await?,
                other => other?,
            }
        } else {
            read().await?
        };
        let totals: IntervalSample = serde_json::from_value(v["totals"].clone())
            .map_err(|e| RemoteError::Exchange(format!("counters: {e}")))?;
        let measured = serde_json::from_value::<Option<IntervalSample>>(v["measured"].clone())
            .ok()
            .flatten();
        self.counted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read(&totals, v["instance"].as_u64());
        *self.since_closed.lock().unwrap_or_else(|p| p.into_inner()) =
            v["canary_routed_since_closed"].as_u64();
        Ok((totals, v["instance"].as_u64(), measured))
    }

    /// Reads the counts every `period` in the background, for [`Totals`] readers (the
    /// status line, `/metrics`), for as long as the plane is in use elsewhere.
    pub fn keep_fresh(self: &std::sync::Arc<Self>, period: Duration) {
        let weak = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(plane) = weak.upgrade() else { return };
                let _ = plane.refresh().await;
            }
        });
    }

    /// Requests routed to the canary since traffic to it was last closed (weight 0,
    /// no match rule), as of the latest [`RemotePlane::refresh`].
    pub fn canary_routed_since_closed(&self) -> Option<u64> {
        *self.since_closed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The routes in effect.
    pub async fn table(&self) -> Result<RouteTable, RemoteError> {
        let v = self
            .call(Method::GET, "/state", None, Duration::ZERO)
            .await?;
        serde_json::from_value(v).map_err(|e| RemoteError::Exchange(format!("routes: {e}")))
    }

    /// Salts the sticky hash (a ramped flag's name).
    pub async fn set_salt(&self, salt: &str) -> Result<(), RemoteError> {
        self.call(
            Method::PUT,
            "/salt",
            Some(json!({ "salt": salt })),
            Duration::ZERO,
        )
        .await
        .map(drop)
    }

    /// Sets the token of rampart's own load that counts in no metric (empty: none).
    pub async fn set_uncounted(&self, token: &str) -> Result<(), RemoteError> {
        self.call(
            Method::PUT,
            "/uncounted",
            Some(json!({ "token": token })),
            Duration::ZERO,
        )
        .await
        .map(drop)
    }

    /// Asks the data plane to stop (it drains its connections first).
    pub async fn shutdown(&self) -> Result<(), RemoteError> {
        self.call(Method::POST, "/shutdown", None, Duration::ZERO)
            .await
            .map(drop)
    }

    async fn drain_with(&self, body: Value, timeout: Duration) -> Result<(), PortError> {
        let mut body = body;
        body["timeout_ms"] = json!(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let v = self
            .call(Method::POST, "/drain", Some(body), timeout)
            .await?;
        if v["drained"].as_bool() == Some(true) {
            Ok(())
        } else {
            Err(PortError::new(format!(
                "requests still in flight after {}ms",
                timeout.as_millis()
            )))
        }
    }
}

impl TrafficRouter for RemotePlane {
    fn set_backends<'a>(
        &'a self,
        variant: Variant,
        endpoints: &'a [SocketAddr],
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
            self.call(
                Method::PUT,
                &format!("/backends/{}", variant.as_str()),
                Some(json!({ "endpoints": list })),
                Duration::ZERO,
            )
            .await?;
            Ok(())
        })
    }

    fn set_weight<'a>(
        &'a self,
        weight: Weight,
        matches: &'a [RouteMatch],
    ) -> BoxFuture<'a, Result<Weight, PortError>> {
        Box::pin(async move {
            let v = self
                .call(
                    Method::PUT,
                    "/weight",
                    Some(json!({ "weight": weight, "matches": matches })),
                    Duration::ZERO,
                )
                .await?;
            serde_json::from_value(v["weight"].clone())
                .map_err(|e| PortError::new(format!("the data plane's weight: {e}")))
        })
    }

    fn drain(&self, variant: Variant, timeout: Duration) -> BoxFuture<'_, Result<(), PortError>> {
        Box::pin(self.drain_with(json!({ "variant": variant.as_str() }), timeout))
    }

    fn drain_endpoints<'a>(
        &'a self,
        endpoints: &'a [SocketAddr],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        Box::pin(self.drain_with(json!({ "endpoints": list }), timeout))
    }
}

impl RemotePlane {
    /// What the data plane counted since the previous reading; nothing when it
    /// restarted since (it counts from zero: that time cannot be told from the counts).
    async fn since_last(&self) -> Result<IntervalSample, PortError> {
        let (now, instance, _) = self.counters(true).await?;
        let mut known = self.instance.lock().unwrap_or_else(|p| p.into_inner());
        let restarted = known.is_some() && *known != instance;
        *known = instance;
        drop(known);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if restarted {
            *last = now;
            return Ok(IntervalSample::default());
        }
        let delta = IntervalSample {
            stable: now.stable.since(&last.stable),
            canary: now.canary.since(&last.canary),
            ..Default::default()
        };
        *last = now;
        Ok(delta)
    }
}

impl MetricsSource for RemotePlane {
    /// What the data plane counted since the previous call (see `BuiltinMetrics`): no
    /// data for an interval in which it restarted, the next one can be told.
    fn measure<'a>(
        &'a self,
        _window: &'a MeasureWindow,
    ) -> BoxFuture<'a, Result<IntervalSample, PortError>> {
        Box::pin(self.since_last())
    }

    /// Counts from now (see `BuiltinMetrics`); a data plane that does not answer
    /// leaves its counts to the next measurement.
    fn open_window(&self, _at: rampart_core::Millis) -> BoxFuture<'_, ()> {
        self.carried
            .store(false, std::sync::atomic::Ordering::Release);
        Box::pin(async move {
            if let Err(e) = self.since_last().await {
                tracing::debug!(error = %e.0, "the data plane's counters were not read at a window's start");
            }
        })
    }

    /// Keeps counting from the last measurement an earlier controller took, when it
    /// attached to one (the data plane ran on); else a fresh window.
    fn resume_window(&self, at: rampart_core::Millis) -> BoxFuture<'_, ()> {
        if self
            .carried
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return Box::pin(async {});
        }
        self.open_window(at)
    }
}

impl Totals for RemotePlane {
    /// The counts of this controller's time attached, as of the latest read.
    fn totals(&self) -> IntervalSample {
        self.counted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .totals()
    }
}

/// The counts of a controller's time attached: the release's report counts its own
/// requests only, across restarts of the data plane (each counts from zero under an
/// identity of its own).
#[derive(Default)]
struct Counted {
    /// The current data plane's counts when this controller first saw them.
    base: IntervalSample,
    /// The current data plane's latest counts read.
    latest: IntervalSample,
    /// The current data plane's counter identity.
    instance: Option<u64>,
    /// What the data planes before a restart counted while this controller watched.
    before: IntervalSample,
    /// Whether a reading was taken yet.
    seen: bool,
    /// The identities of the data planes that restarted under this controller: a late
    /// answer of one (read on another connection, answered after the new one's) is
    /// not counted twice.
    retired: Vec<Option<u64>>,
}

impl Counted {
    /// Takes a reading of the cumulative counts of the data plane `instance`.
    fn read(&mut self, totals: &IntervalSample, instance: Option<u64>) {
        if self.retired.contains(&instance) {
            return;
        }
        if self.seen && instance != self.instance {
            let counted = self.totals();
            self.before = counted;
            self.base = IntervalSample::default();
            self.retired.push(self.instance);
        }
        self.seen = true;
        self.instance = instance;
        self.latest = totals.clone();
    }

    fn totals(&self) -> IntervalSample {
        let mut stable = self.before.stable.clone();
        stable.merge(&self.latest.stable.since(&self.base.stable));
        let mut canary = self.before.canary.clone();
        canary.merge(&self.latest.canary.since(&self.base.canary));
        IntervalSample {
            stable,
            canary,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stable(requests: u64) -> IntervalSample {
        let mut s = IntervalSample::default();
        s.stable.requests = requests;
        s
    }

    /// Review: two readers (the status line's and the measurements') on their own
    /// connections: the old data plane's late answer, read after the new one's, flipped
    /// the identity back and forth and added its counts twice. And a data plane with no
    /// identity replaced by one with an identity is a restart too.
    #[test]
    fn a_late_reading_of_a_data_plane_that_restarted_is_not_counted_again() {
        let mut c = Counted::default();
        c.read(&stable(10), Some(1));
        c.base = stable(10);
        c.read(&stable(50), Some(1));
        c.read(&stable(5), Some(2));
        c.read(&stable(50), Some(1)); // late
        c.read(&stable(7), Some(2));
        assert_eq!(c.totals().stable.requests, 47);

        let mut c = Counted::default();
        c.read(&stable(0), None);
        c.read(&stable(30), None);
        c.read(&stable(4), Some(9));
        assert_eq!(c.totals().stable.requests, 34);
    }
}
