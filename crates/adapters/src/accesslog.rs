//! The request log nginx and HAProxy send rampart over UDP syslog: per-request status
//! and time to response headers, by variant, counted like the embedded proxy counts
//! them.
//!
//! Owns parsing one log line per request, in the format rampart asks for:
//!
//! - `rampart-ms BACKEND SERVER STATUS MILLISECONDS` (HAProxy: `%b %s %ST %Tr`, where
//!   `%Tr` is `-1` when no server answered);
//! - `rampart-s SERVICE VARIANT STATUS SECONDS` (nginx: `$upstream_header_time`, `-`
//!   when no upstream answered, or a list such as `0.003, 0.002 : 0.001` when several
//!   were tried, of which the last attempt counts).
//!
//! Lines of another service or backend (a shared nginx or HAProxy) are not counted:
//! the receiver only counts lines naming its own. The server (`stable2`, `canary1`) or
//! variant name says which variant answered. Anything else on the socket (HAProxy's
//! own notices, say) is ignored. It must not block a sender: UDP, so a stalled rampart
//! never slows the data path.

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

/// A UDP syslog receiver counting per-variant requests of one service. Dropping it
/// stops it.
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
pub struct LoggedRequest<'a> {
    /// The service (nginx) or backend (HAProxy) the line is about.
    pub service: &'a str,
    /// Which variant answered.
    pub variant: Variant,
    /// The HTTP status.
    pub status: u16,
    /// How long the version took to send its response headers; `None` when it sent
    /// none (it refused the connection, say): the request counts, its latency not.
    pub header_time: Option<Duration>,
}

/// Parses one log line (a syslog header before the tag is skipped).
pub fn parse(line: &str) -> Option<LoggedRequest<'_>> {
    let (tag, rest) = ["rampart-ms ", "rampart-s "]
        .iter()
        .find_map(|tag| line.find(tag).map(|i| (*tag, &line[i + tag.len()..])))?;
    let mut fields = rest.split_whitespace();
    let service = fields.next()?;
    let server = fields.next()?;
    let status: u16 = fields.next()?.parse().ok()?;
    // nginx separates the attempts of one request with `, ` and ` : `: the last one
    // is the answer the client got.
    let time = fields
        .flat_map(|f| f.split([',', ':']))
        .rfind(|f| !f.is_empty())?;
    let variant = match server.trim_end_matches(|c: char| c.is_ascii_digit()) {
        "stable" => Variant::Stable,
        "canary" => Variant::Canary,
        _ => return None,
    };
    let header_time = match (tag, time) {
        ("rampart-ms ", "-1") | ("rampart-s ", "-") => None,
        ("rampart-ms ", ms) => Some(Duration::from_millis(ms.parse().ok()?)),
        (_, s) => {
            let secs: f64 = s.parse().ok()?;
            if !secs.is_finite() || secs < 0.0 {
                return None;
            }
            Some(Duration::from_secs_f64(secs))
        }
    };
    Some(LoggedRequest {
        service,
        variant,
        status,
        header_time,
    })
}

impl AccessLog {
    /// Binds `listen` (UDP; port 0 picks one) and starts counting the lines of
    /// `service` (the nginx service, or the HAProxy backend).
    pub async fn bind(listen: SocketAddr, service: &str) -> std::io::Result<AccessLog> {
        let socket = UdpSocket::bind(listen).await?;
        let addr = socket.local_addr()?;
        let counted = Arc::new(Counted::default());
        let into = Arc::clone(&counted);
        let service = service.to_string();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let Ok(n) = socket.recv(&mut buf).await else {
                    continue;
                };
                let text = String::from_utf8_lossy(&buf[..n]);
                for r in text.lines().filter_map(parse) {
                    if r.service != service {
                        continue;
                    }
                    let counters = match r.variant {
                        Variant::Stable => &into.stable,
                        Variant::Canary => &into.canary,
                    };
                    counters.record_logged(r.status >= 500, r.header_time);
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
                service: "checkout",
                variant: Variant::Canary,
                status: 503,
                header_time: Some(Duration::from_millis(12))
            }
        );
        let n = parse("<190>nginx: rampart-s checkout stable 200 0.004").unwrap();
        assert_eq!(n.variant, Variant::Stable);
        assert_eq!(n.header_time, Some(Duration::from_millis(4)));
        for junk in [
            "rampart-ms checkout <NOSRV> 503 0",
            "rampart-ms checkout canary1 - 3",
            "rampart-s checkout stable 200 -1",
            "rampart-s checkout stable 200",
            "rampart-s checkout stable 200 0.1, x",
            "hello",
            "rampart-ms checkout",
        ] {
            assert_eq!(parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn a_request_no_version_answered_counts_without_a_latency() {
        // HAProxy's `%Tr` is -1, nginx's `$upstream_header_time` is `-`.
        let h = parse("rampart-ms checkout stable1 503 -1").unwrap();
        assert_eq!((h.status, h.header_time), (503, None));
        let n = parse("rampart-s checkout canary 502 -").unwrap();
        assert_eq!((n.status, n.header_time), (502, None));
    }

    #[test]
    fn the_last_of_several_nginx_attempts_is_the_answer() {
        let n = parse("rampart-s checkout canary 200 0.010, 0.020 : 0.003").unwrap();
        assert_eq!(n.header_time, Some(Duration::from_millis(3)));
        let failed_last = parse("rampart-s checkout canary 502 0.010, -").unwrap();
        assert_eq!(failed_last.header_time, None);
    }
}
