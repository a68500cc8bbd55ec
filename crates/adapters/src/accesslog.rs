//! The request log nginx and HAProxy send rampart over UDP syslog: per-request status
//! and duration, by variant, counted like the embedded proxy counts them.
//!
//! Owns parsing one log line per request, in the format rampart asks for:
//!
//! - `rampart-ms SERVICE SERVER STATUS MILLISECONDS` (HAProxy: `%b %s %ST %Ta`);
//! - `rampart-s SERVICE VARIANT STATUS SECONDS` (nginx: `$request_time`).
//!
//! The server (`stable2`, `canary1`) or variant name says which variant answered.
//! Anything else on the socket (HAProxy's own notices, say) is ignored. It must not block a sender:
//! UDP, so a stalled rampart never slows the data path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rampart_core::Variant;
use rampart_core::metrics::IntervalSample;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::proxy::{Totals, VariantCounters};

#[derive(Debug, Default)]
struct Counted {
    stable: VariantCounters,
    canary: VariantCounters,
}

/// A UDP syslog receiver counting per-variant requests. Dropping it stops it.
#[derive(Debug, Clone)]
pub struct AccessLog {
    counted: Arc<Counted>,
    task: Arc<Receiver>,
}

#[derive(Debug)]
struct Receiver {
    task: JoinHandle<()>,
    addr: SocketAddr,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One parsed request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoggedRequest {
    /// Which variant answered.
    pub variant: Variant,
    /// The HTTP status.
    pub status: u16,
    /// How long it took.
    pub duration: Duration,
}

/// Parses one log line (a syslog header before the tag is skipped).
pub fn parse(line: &str) -> Option<LoggedRequest> {
    let (tag, rest) = ["rampart-ms ", "rampart-s "]
        .iter()
        .find_map(|tag| line.find(tag).map(|i| (*tag, &line[i + tag.len()..])))?;
    let mut fields = rest.split_whitespace();
    let _service = fields.next()?;
    let server = fields.next()?;
    let status: u16 = fields.next()?.parse().ok()?;
    let time = fields.next()?;
    let variant = match server.trim_end_matches(|c: char| c.is_ascii_digit()) {
        "stable" => Variant::Stable,
        "canary" => Variant::Canary,
        _ => return None,
    };
    let duration = if tag == "rampart-ms " {
        Duration::from_millis(time.parse().ok()?)
    } else {
        let secs: f64 = time.parse().ok()?;
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        Duration::from_secs_f64(secs)
    };
    Some(LoggedRequest {
        variant,
        status,
        duration,
    })
}

impl AccessLog {
    /// Binds `listen` (UDP; port 0 picks one) and starts counting.
    pub async fn bind(listen: SocketAddr) -> std::io::Result<AccessLog> {
        let socket = UdpSocket::bind(listen).await?;
        let addr = socket.local_addr()?;
        let counted = Arc::new(Counted::default());
        let into = Arc::clone(&counted);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let Ok(n) = socket.recv(&mut buf).await else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buf[..n]);
                for line in text.lines() {
                    if let Some(r) = parse(line) {
                        let counters = match r.variant {
                            Variant::Stable => &into.stable,
                            Variant::Canary => &into.canary,
                        };
                        counters.record(r.status >= 500, r.duration);
                    }
                }
            }
        });
        Ok(AccessLog {
            counted,
            task: Arc::new(Receiver { task, addr }),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.task.addr
    }
}

impl Totals for AccessLog {
    fn totals(&self) -> IntervalSample {
        IntervalSample {
            stable: self.counted.stable.snapshot(),
            canary: self.counted.canary.snapshot(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_and_nginx_lines_parse() {
        let h =
            parse("<134>Nov 22 02:50:00 haproxy[12]: rampart-ms checkout canary3 503 12").unwrap();
        assert_eq!(
            h,
            LoggedRequest {
                variant: Variant::Canary,
                status: 503,
                duration: Duration::from_millis(12)
            }
        );
        let n = parse("<190>nginx: rampart-s checkout stable 200 0.004").unwrap();
        assert_eq!(n.variant, Variant::Stable);
        assert_eq!(n.duration, Duration::from_millis(4));
        for junk in [
            "rampart-ms checkout <NOSRV> 503 0",
            "rampart-ms checkout canary1 - 3",
            "rampart-s checkout stable 200 -1",
            "hello",
            "rampart-ms checkout",
        ] {
            assert_eq!(parse(junk), None, "{junk}");
        }
    }
}
