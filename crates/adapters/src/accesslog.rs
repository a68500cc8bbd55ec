//! The request log nginx and HAProxy send rampart over UDP syslog: per-request status,
//! time to response headers and total time, by variant, counted like the embedded
//! proxy counts them.
//!
//! Owns parsing one log line per request, in the format rampart asks for:
//!
//! - `rampart-ms BACKEND SERVER STATUS MILLISECONDS TOTAL_MILLISECONDS` (HAProxy:
//!   `%b %s %ST %Tr %Ta`, where `%Tr` is `-1` when no server answered). A line without
//!   the last field (a log-format from before total time, `%b %s %ST %Tr`) still
//!   counts, with no total time;
//! - `rampart-s SERVICE VARIANT STATUS SECONDS TOTAL_SECONDS` (nginx:
//!   `$upstream_header_time`, `-` when no upstream answered, or a list such as
//!   `0.003, 0.002 : 0.001` when several were tried, of which the last attempt counts;
//!   then `$request_time`, absent from lines of a configuration rendered before it).
//!
//! A request no version answered has neither time: both histograms hold the same
//! requests.
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
    /// A request abandoned by its client (`499`) or given up on by the router (its own
    /// `504`, with no header time) is timed by its wait instead.
    pub header_time: Option<Duration>,
    /// How long the whole request took, to the response body's last byte sent to the
    /// client (`%Ta`, `$request_time`); `None` when the line does not carry it (an
    /// older log-format) or no version answered.
    pub total_time: Option<Duration>,
    /// Whether its client left before the version answered (nginx's `499` with no
    /// upstream header time): timed by its wait, as the embedded proxy times one.
    pub abandoned: bool,
}

/// A time field: `Some(None)` for the router's "no time" (`-1`, `-`), `None` when the
/// field is malformed (the line is not counted).
type Field = Option<Option<Duration>>;

/// nginx's status for a request whose client closed its connection before the answer.
const ABANDONED: u16 = 499;

/// The status a router answers with when it gave up waiting for the version.
const GAVE_UP: u16 = 504;

/// Parses one log line (a syslog header before the tag is skipped).
pub fn parse(line: &str) -> Option<LoggedRequest<'_>> {
    let (tag, rest) = ["rampart-ms ", "rampart-s "]
        .iter()
        .find_map(|tag| line.find(tag).map(|i| (*tag, &line[i + tag.len()..])))?;
    let mut fields = rest.split_whitespace();
    let service = fields.next()?;
    let server = fields.next()?;
    let status: u16 = fields.next()?.parse().ok()?;
    let variant = match server.trim_end_matches(|c: char| c.is_ascii_digit()) {
        "stable" => Variant::Stable,
        "canary" => Variant::Canary,
        _ => return None,
    };
    let (header_time, total_time) = match tag {
        "rampart-ms " => haproxy_times(fields)?,
        _ => nginx_times(fields)?,
    };
    // nginx's 499: the client left before the version answered. Counted as the
    // embedded proxy counts a request its client abandoned, with its wait as its
    // latency (a lower bound), so that a version hanging past its callers' patience
    // shows, whichever router is in front of it.
    let abandoned = status == ABANDONED && header_time.is_none();
    // The router's own 504 (nginx's `proxy_read_timeout`, HAProxy's `timeout server`):
    // it gave up waiting for the version. Timed by that wait, as a lower bound, for the
    // same reason: a version that hangs would otherwise lose exactly its slowest
    // requests from its latency.
    let gave_up = status == GAVE_UP && header_time.is_none();
    let header_time = if abandoned || gave_up {
        total_time
    } else {
        header_time
    };
    Some(LoggedRequest {
        service,
        variant,
        status,
        header_time,
        abandoned,
        // Without an answer, the total time is rampart's router's own error page.
        total_time: header_time.and(total_time),
    })
}

/// HAProxy's `%Tr` and, when the log-format has it, `%Ta`, in milliseconds.
fn haproxy_times<'a>(
    mut fields: impl Iterator<Item = &'a str>,
) -> Option<(Option<Duration>, Option<Duration>)> {
    let header = millis(fields.next()?)?;
    let total = match fields.next() {
        Some(f) => millis(f)?,
        None => None,
    };
    fields.next().is_none().then_some((header, total))
}

/// nginx's `$upstream_header_time` and, when the line has it, `$request_time`. The
/// first may list several attempts, joined by `, ` and ` : `: it goes on while a value
/// ends in `,` or a `:` follows it, and its last value is the answer the client got.
fn nginx_times<'a>(
    fields: impl Iterator<Item = &'a str>,
) -> Option<(Option<Duration>, Option<Duration>)> {
    let mut fields = fields.peekable();
    let mut last = fields.next()?;
    while last.ends_with(',') || fields.next_if_eq(&":").is_some() {
        last = fields.next()?;
    }
    let header = seconds(last)?;
    let total = match fields.next() {
        Some(f) => seconds(f)?,
        None => None,
    };
    fields.next().is_none().then_some((header, total))
}

/// A HAProxy time in milliseconds; `-1` is none.
fn millis(field: &str) -> Field {
    if field == "-1" {
        return Some(None);
    }
    field.parse().ok().map(|ms| Some(Duration::from_millis(ms)))
}

/// An nginx time in seconds (millisecond resolution); `-` is none.
fn seconds(field: &str) -> Field {
    if field == "-" {
        return Some(None);
    }
    let secs: f64 = field.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Some(Duration::from_secs_f64(secs)))
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
                    if r.abandoned {
                        counters.abandon();
                    }
                    counters.record_logged(r.status >= 500, r.header_time, r.total_time);
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

    fn abandoned(&self) -> Option<(u64, u64)> {
        Some((
            self.counted.stable.abandoned(),
            self.counted.canary.abandoned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review (issue 18): nginx's 499 (the client left before the version answered)
    /// counted with no latency at all, where the embedded proxy counts the wait.
    #[test]
    fn a_request_its_client_left_is_timed_by_its_wait_and_is_no_error() {
        let r = parse("rampart-s web canary 499 - 1.250").unwrap();
        assert_eq!((r.status, r.abandoned), (499, true));
        assert_eq!(r.header_time, Some(Duration::from_millis(1250)));
        assert_eq!(r.total_time, Some(Duration::from_millis(1250)));
        // Left mid-body, after the answer's headers: timed as any answer.
        let r = parse("rampart-s web canary 499 0.010 1.250").unwrap();
        assert_eq!(r.header_time, Some(Duration::from_millis(10)));
        assert!(!r.abandoned, "answered; its client left during the body");
        // A version that did not answer at all is still no latency.
        let r = parse("rampart-s web canary 502 - 0.003").unwrap();
        assert_eq!((r.header_time, r.total_time), (None, None));
    }

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
                header_time: Some(Duration::from_millis(12)),
                total_time: None,
                abandoned: false,
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
    fn five_field_lines_carry_the_total_time() {
        let h = parse("<134>haproxy[12]: rampart-ms checkout canary3 200 12 340").unwrap();
        assert_eq!(
            (h.header_time, h.total_time),
            (
                Some(Duration::from_millis(12)),
                Some(Duration::from_millis(340))
            )
        );
        let n = parse("<190>nginx: rampart-s checkout stable 200 0.004 0.251").unwrap();
        assert_eq!(
            (n.header_time, n.total_time),
            (
                Some(Duration::from_millis(4)),
                Some(Duration::from_millis(251))
            )
        );
        // Several nginx attempts, then the request's total time.
        let n = parse("rampart-s checkout canary 200 0.010, 0.020 : 0.003 0.300").unwrap();
        assert_eq!(
            (n.header_time, n.total_time),
            (
                Some(Duration::from_millis(3)),
                Some(Duration::from_millis(300))
            )
        );
        for junk in [
            "rampart-ms checkout canary1 200 12 x",
            "rampart-ms checkout canary1 200 12 340 7",
            "rampart-s checkout stable 200 0.004 x",
            "rampart-s checkout stable 200 0.004 0.2 0.3",
            "rampart-s checkout stable 200 0.004 -0.2",
            "rampart-s checkout stable 200 0.004,",
        ] {
            assert_eq!(parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn four_field_lines_of_an_older_log_format_count_without_a_total_time() {
        // HAProxy's `rampart-ms %b %s %ST %Tr`, and nginx configurations rendered
        // before `$request_time` was added (including a list of attempts).
        let h = parse("rampart-ms checkout stable2 200 12").unwrap();
        assert_eq!(
            (h.variant, h.header_time, h.total_time),
            (Variant::Stable, Some(Duration::from_millis(12)), None)
        );
        let n = parse("rampart-s checkout canary 200 0.010, 0.020 : 0.003").unwrap();
        assert_eq!(
            (n.header_time, n.total_time),
            (Some(Duration::from_millis(3)), None)
        );
    }

    #[test]
    fn a_request_no_version_answered_counts_without_a_latency() {
        // HAProxy's `%Tr` is -1, nginx's `$upstream_header_time` is `-`.
        let h = parse("rampart-ms checkout stable1 503 -1").unwrap();
        assert_eq!((h.status, h.header_time), (503, None));
        let n = parse("rampart-s checkout canary 502 -").unwrap();
        assert_eq!((n.status, n.header_time), (502, None));
        // The router's own error page took time, but no version answered: neither.
        let h = parse("rampart-ms checkout stable1 503 -1 5").unwrap();
        assert_eq!((h.header_time, h.total_time), (None, None));
        let n = parse("rampart-s checkout canary 502 - 0.001").unwrap();
        assert_eq!((n.header_time, n.total_time), (None, None));
    }

    #[test]
    fn the_last_of_several_nginx_attempts_is_the_answer() {
        let n = parse("rampart-s checkout canary 200 0.010, 0.020 : 0.003").unwrap();
        assert_eq!(n.header_time, Some(Duration::from_millis(3)));
        let failed_last = parse("rampart-s checkout canary 502 0.010, -").unwrap();
        assert_eq!(failed_last.header_time, None);
        let failed_last = parse("rampart-s checkout canary 502 0.010, - 0.012").unwrap();
        assert_eq!(
            (failed_last.header_time, failed_last.total_time),
            (None, None)
        );
    }
}
