//! What a gRPC answer says about the version that gave it: gRPC reports a call's
//! outcome in its `grpc-status` trailer (or in the headers of a Trailers-Only
//! answer), under an HTTP status of 200, so the HTTP rule (5xx is an error) sees every
//! failed call as a success.
//!
//! Owns which answers are gRPC and which of their codes are the version's failures. It
//! must not touch a byte of the answer, and it decides nothing at the headers of a
//! call whose status comes in its trailers: `timed.rs` calls it when the body ends.
//!
//! The failures are the codes that the canonical mapping of gRPC codes to HTTP
//! (`google.rpc.Code`, the one grpc-gateway and Envoy's transcoder follow) puts in
//! 5xx: what the HTTP rule already counts, kept for gRPC. The 4xx codes (a bad
//! argument, a missing entity, a denied or unauthenticated caller, a failed
//! precondition, an exhausted quota, a cancelled call) are about the caller or the
//! data, which both versions see alike. `UNIMPLEMENTED` is counted: a method that
//! exists on stable but not on the canary is a regression a release must catch, and
//! one that exists on neither fails on both alike, which a comparison cancels out.

use std::time::Duration;

use hyper::HeaderMap;
use hyper::header::{CONTENT_TYPE, HeaderName};

/// gRPC's status trailer (or header, in a Trailers-Only answer).
pub(super) const STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The deadline a gRPC client states with its call.
pub(super) const TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// `UNKNOWN`: what a `grpc-status` that does not parse is taken for (as gRPC's own
/// clients do).
const UNKNOWN: u32 = 2;

/// The codes counted against the version: `UNKNOWN`, `DEADLINE_EXCEEDED`,
/// `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE` and `DATA_LOSS`.
pub(super) const FAILURES: [u32; 6] = [2, 4, 12, 13, 14, 15];

/// Whether an answer's headers say it is a gRPC answer (`application/grpc`, alone or
/// with a `+codec` or parameters). gRPC-Web (`application/grpc-web`) is not: it
/// carries its status inside the body, so it is judged by the HTTP rule.
pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    let ct = ct.as_bytes();
    let prefix = b"application/grpc";
    ct.len() >= prefix.len()
        && ct[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(ct.get(prefix.len()), None | Some(b'+' | b';'))
}

/// The `grpc-status` in `headers` (trailers, or a Trailers-Only answer's headers):
/// `None` when there is none. As gRPC clients read it: ASCII digits only (no sign,
/// no spaces), a code gRPC does not define (above 16), one that does not parse, or
/// several values (clients disagree on which counts) is `UNKNOWN`.
pub(super) fn status(headers: &HeaderMap) -> Option<u32> {
    let mut values = headers.get_all(STATUS).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return Some(UNKNOWN);
    }
    let bytes = value.as_bytes();
    let code = (!bytes.is_empty() && bytes.len() <= 9 && bytes.iter().all(u8::is_ascii_digit))
        .then(|| bytes.iter().fold(0u32, |n, b| n * 10 + u32::from(b - b'0')))
        .filter(|code| *code <= 16);
    Some(code.unwrap_or(UNKNOWN))
}

/// The deadline a call's request headers state (`grpc-timeout`: at most 8 ASCII
/// digits and a unit, `H`, `M`, `S`, `m`, `u` or `n`); `None` when there is none or it
/// does not parse (gRPC servers then take the call as having no deadline).
pub(super) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(TIMEOUT)?.as_bytes();
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Whether a call that ended with `status` counts against its version: a failure
/// code, or no status at all (the version broke the protocol).
pub(super) fn is_failure(status: Option<u32>) -> bool {
    status.is_none_or(|code| FAILURES.contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn grpc_is_told_by_its_content_type_and_grpc_web_is_not() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;charset=utf-8",
            "Application/GRPC+json",
        ] {
            assert!(is_grpc(&headers(&[("content-type", ct)])), "{ct}");
        }
        for ct in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_grpc(&headers(&[("content-type", ct)])), "{ct}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn the_server_side_codes_fail_and_the_callers_do_not() {
        let failing: Vec<u32> = (0..=16).filter(|c| is_failure(Some(*c))).collect();
        assert_eq!(failing, [2, 4, 12, 13, 14, 15]);
        assert!(is_failure(None), "no grpc-status at all");
    }

    /// Review: `+13` parsed as 13, codes above 16 passed as successes, and of several
    /// values the first counted (grpc-go reads the last).
    #[test]
    fn a_status_grpc_clients_would_not_read_as_such_is_unknown() {
        for odd in ["+13", " 14", "17", "99", "1.0", "", "4294967296"] {
            assert_eq!(
                status(&headers(&[("grpc-status", odd)])),
                Some(UNKNOWN),
                "{odd:?}"
            );
        }
        assert_eq!(status(&headers(&[("grpc-status", "16")])), Some(16));
        assert_eq!(status(&headers(&[("grpc-status", "014")])), Some(14));
        assert_eq!(status(&headers(&[("grpc-status", "0")])), Some(0));
        let mut two = headers(&[("grpc-status", "0")]);
        two.append("grpc-status", "14".parse().unwrap());
        assert_eq!(status(&two), Some(UNKNOWN));
        assert!(is_failure(status(&headers(&[("grpc-status", "+0")]))));
    }

    #[test]
    fn a_calls_deadline_is_read_in_every_unit_and_nonsense_is_none() {
        let t = |v: &'static str| timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(t("3M"), Some(Duration::from_secs(180)));
        assert_eq!(t("99999999S"), Some(Duration::from_secs(99_999_999)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("7u"), Some(Duration::from_micros(7)));
        assert_eq!(t("0n"), Some(Duration::ZERO));
        for odd in [
            "",
            "S",
            "123456789S",
            "1s",
            "1.5S",
            "-1S",
            " 1S",
            "1 S",
            "1",
        ] {
            assert_eq!(t(odd), None, "{odd:?}");
        }
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn a_status_that_does_not_parse_is_unknown() {
        assert_eq!(status(&headers(&[("grpc-status", "14")])), Some(14));
        assert_eq!(status(&headers(&[("grpc-status", "ok")])), Some(UNKNOWN));
        assert_eq!(status(&headers(&[("grpc-message", "x")])), None);
    }
}
