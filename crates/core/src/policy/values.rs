//! Field decoders several policy sections share: one-of-kinds mappings, commands,
//! durations, addresses, URLs, limits and Kubernetes names. Leaf of `policy`: it must
//! not know any section's types.

use std::net::SocketAddr;
use std::time::Duration;

use crate::decode::{Decoder, MapReader, list, scalar};
use crate::units::format_duration;
use crate::yaml::Node;

/// Opens a mapping that must hold exactly one of `kinds` (such as `deploy: {process: ..}`).
pub(super) fn one_kind<'n>(
    cx: &mut Decoder,
    node: &'n Node,
    path: &str,
    kinds: &'static [&'static str],
) -> Option<(&'static str, &'n Node, String)> {
    let m = cx.map(node, path, kinds)?;
    let present = m.present(kinds);
    match present.as_slice() {
        [one] => m.get(one).map(|n| (*one, n, m.path_of(one))),
        [] => {
            cx.error(node.pos, path, format!("expected one of {}", list(kinds)));
            None
        }
        _ => {
            cx.error(
                node.pos,
                path,
                format!("choose exactly one of {}", list(&present)),
            );
            None
        }
    }
}

pub(super) fn decode_argv(cx: &mut Decoder, node: &Node, path: &str) -> Option<Vec<String>> {
    let argv: Vec<String> = cx.value(node, path)?;
    if argv.is_empty() || argv[0].trim().is_empty() {
        cx.error(
            node.pos,
            path,
            "the command is empty; give the program and its arguments as a list, like [\"./server\", \"--port\", \"{port}\"]",
        );
        return None;
    }
    Some(argv)
}

pub(super) fn positive(
    cx: &mut Decoder,
    m: &MapReader<'_>,
    key: &str,
    at_most: Duration,
) -> Option<Duration> {
    let d = m.optional::<Duration>(cx, key)?;
    let pos = m.get(key).map_or(m.pos(), |n| n.pos);
    if d.is_zero() {
        cx.error(pos, &m.path_of(key), "must be longer than 0s");
        return None;
    }
    if d > at_most {
        // A wait so long that it never ends defeats its purpose (a dead version would
        // never be noticed, a release never decided).
        cx.error(
            pos,
            &m.path_of(key),
            format!(
                "{} is too long; at most {}",
                format_duration(d),
                format_duration(at_most)
            ),
        );
        return None;
    }
    Some(d)
}

/// One hour: the longest a single probe, check, readiness wait or analysis interval
/// may take.
pub(super) const HOUR: Duration = Duration::from_secs(3600);
/// One day.
pub(super) const DAY: Duration = Duration::from_secs(86_400);

pub(super) fn decode_addr(cx: &mut Decoder, n: &Node, p: &str) -> Option<SocketAddr> {
    let text = scalar(cx, n, p, "an address like 127.0.0.1:8080")?;
    match text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            cx.error(
                n.pos,
                p,
                format!(
                    "`{text}` is not an IP address and port, like 127.0.0.1:8080 or [::1]:8080"
                ),
            );
            None
        }
    }
}

/// An `http://` or `https://` URL with something after the scheme.
pub(super) fn decode_url(cx: &mut Decoder, n: &Node, p: &str) -> Option<String> {
    let url = scalar(cx, n, p, "an http:// or https:// URL")?;
    let valid = ["http://", "https://"]
        .iter()
        .any(|s| url.strip_prefix(s).is_some_and(|rest| !rest.is_empty()));
    if !valid {
        cx.error(
            n.pos,
            p,
            format!("`{url}` is not an http:// or https:// URL"),
        );
        return None;
    }
    Some(url.to_string())
}

/// A server's base URL: [`decode_url`] without a trailing `/`, and without a user
/// or password (see [`refuse_userinfo`]).
pub(super) fn decode_base_url(cx: &mut Decoder, n: &Node, p: &str) -> Option<String> {
    let url = decode_url(cx, n, p)?;
    refuse_userinfo(cx, n, p, &url)?;
    Some(url.trim_end_matches('/').to_string())
}

/// Refuses a URL that carries a user or password (`https://user:pw@host`): rampart
/// sends no credentials from a URL (the server refuses every read), and a URL is
/// shown in errors, logs and gates, where the password would be. The error shows the
/// URL without them.
pub(super) fn refuse_userinfo(cx: &mut Decoder, n: &Node, p: &str, url: &str) -> Option<()> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some((_, host)) = rest[..end].rsplit_once('@') else {
        return Some(());
    };
    cx.error(
        n.pos,
        p,
        format!(
            "`{scheme}://…@{host}{}` carries a user or password: rampart sends no credentials from a URL, and a URL is shown in errors and logs; leave them out (an `http` metric sends them in `headers`, from the environment: `Authorization: \"Basic {{env:STATS_AUTH}}\"`)",
            &rest[end..]
        ),
    );
    None
}

pub(super) fn limit(cx: &mut Decoder, m: &MapReader<'_>, key: &str) -> Option<u32> {
    let v = m.optional::<u32>(cx, key)?;
    if v == 0 {
        cx.error(
            m.get(key).map_or(m.pos(), |n| n.pos),
            &m.path_of(key),
            "must be at least 1",
        );
        return None;
    }
    Some(v)
}

/// A Kubernetes object name as the API accepts it (an RFC 1123 label): 1 to 63
/// lower-case letters, digits and `-`, starting and ending with a letter or digit.
pub(super) fn decode_kube_name(cx: &mut Decoder, node: &Node, path: &str) -> Option<String> {
    let name = scalar(cx, node, path, "a Kubernetes object name")?;
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !valid {
        cx.error(
            node.pos,
            path,
            format!("`{name}` is not a valid Kubernetes name; use 1 to 63 lower-case letters, digits or `-`, starting and ending with a letter or digit"),
        );
        return None;
    }
    Some(name.to_string())
}
