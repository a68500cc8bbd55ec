//! The forwarding headers a version sees: `X-Forwarded-For`, `X-Forwarded-Proto`,
//! `X-Forwarded-Host` and `Forwarded` (RFC 7239), written by the proxy for each request
//! it forwards, under `traffic.proxy.forwarded.trust`.
//!
//! Owns what those four headers say when a request leaves the proxy, and which other
//! claims about the client's address or scheme reach the version ([`CLAIMS`]). It must
//! not decide whom to trust (the policy's [`Trust`](rampart_core::policy::Trust) does).
//!
//! - An untrusted peer's four headers are dropped and replaced by the proxy's own: its
//!   address, `http`, its `Host`, and one `Forwarded` element saying the same. Its
//!   other claims (`X-Real-IP`, `X-Forwarded-Ssl`, ...) are dropped: frameworks read
//!   them before, or instead of, the four.
//! - A trusted peer's chain is extended: its address appended to `X-Forwarded-For`
//!   and a `for=` element to `Forwarded`; its `X-Forwarded-Proto` and `-Host` are kept
//!   (set as for an untrusted peer when absent).
//!
//! Addresses carry no port, in both headers: an IPv4 address as is (`for=192.0.2.7`),
//! an IPv6 one in brackets and quotes in `Forwarded`, as RFC 7239 requires
//! (`for="[2001:db8::7]"`), bare in `X-Forwarded-For` (`2001:db8::7`). An IPv4 peer
//! seen on an IPv6 socket is written as IPv4.
//!
//! Costs: a few map lookups, and each header value the proxy writes is built on the
//! stack and copied once into its `HeaderValue` (the `Host` is shared, not copied).
//! An untrusted peer's values are kept per thread for the next request from the same
//! peer to the same host, which shares them.

use std::io::Write;
use std::net::IpAddr;

use hyper::HeaderMap;
use hyper::header::{HOST, HeaderName, HeaderValue};

const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const FOUR: [HeaderName; 4] = [XFF, XFP, XFH, FORWARDED];

/// What else servers and frameworks read as the client's address, scheme, port or path
/// prefix, often before the four (go-chi's `RealIP` reads `X-Real-IP` and
/// `True-Client-IP` first, Rack `X-Forwarded-Ssl`, Spring `X-Forwarded-Port` and
/// `-Prefix`): only a trusted peer may say them. Lower case, as `HeaderName` keeps it.
pub(super) const CLAIMS: [&str; 14] = [
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
    "x-forwarded-ssl",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-url-scheme",
    "front-end-https",
];

/// The scheme a client spoke to the proxy: plain, or TLS the proxy terminated.
const PROTO: HeaderValue = HeaderValue::from_static("http");
const PROTO_TLS: HeaderValue = HeaderValue::from_static("https");

/// Writes the forwarding headers of a request from `peer` (the TCP peer) that came
/// over TLS when `tls`, extending the incoming ones when `trusted`, replacing them
/// otherwise.
pub(super) fn set(headers: &mut HeaderMap, peer: IpAddr, trusted: bool, tls: bool) {
    let own = if tls { PROTO_TLS } else { PROTO };
    let peer = peer.to_canonical();
    // A client rarely sends any of them, or their look-alikes: one pass over the
    // names finds both, instead of lookups that find nothing.
    let (named, lookalikes, claims) =
        headers
            .keys()
            .fold((false, false, false), |(n, l, c), name| {
                (
                    n || FOUR.contains(name),
                    l || lookalike(name.as_str()),
                    c || (!trusted && claim(name.as_str())),
                )
            });
    if lookalikes {
        drop_lookalikes(headers);
    }
    if claims {
        drop_names(headers, claim);
    }
    if !trusted {
        if named {
            for name in &FOUR {
                headers.remove(name);
            }
        }
        let host = headers.get(HOST).cloned();
        let (xff, forwarded) = untrusted(peer, tls, host.as_ref());
        headers.insert(XFF, xff);
        if let Some(v) = forwarded {
            headers.insert(FORWARDED, v);
        }
        headers.insert(XFP, own);
        if let Some(host) = host {
            headers.insert(XFH, host);
        }
        return;
    }
    let mut ip = [0u8; 48];
    let ip = text_of(peer, &mut ip);
    let mut node = [0u8; 52];
    let node = node_of(peer, ip, &mut node);
    let xff = join(headers, &XFF, &[b"", ip]);
    // A chain that ends inside a quoted string (cut, or crafted by a client the peer
    // passed on) would swallow the element appended to it: the proxy's element starts
    // a new chain instead.
    let forwarded = if headers.contains_key(&FORWARDED)
        && headers
            .get_all(&FORWARDED)
            .iter()
            .all(|v| closed(v.as_bytes()))
    {
        join(headers, &FORWARDED, &[b"for=", node])
    } else {
        let proto = headers.get(&XFP).unwrap_or(&own);
        let host = headers.get(&XFH).or_else(|| headers.get(HOST));
        element(node, proto, host)
    };
    if let Some(v) = xff {
        headers.insert(XFF, v);
    }
    if let Some(v) = forwarded {
        headers.insert(FORWARDED, v);
    }
    if !headers.contains_key(&XFP) {
        headers.insert(XFP, own);
    }
    if !headers.contains_key(&XFH)
        && let Some(host) = headers.get(HOST).cloned()
    {
        headers.insert(XFH, host);
    }
}

/// Takes off what a server may read as one of the four forwarding headers, from
/// whoever sent it: a name spelled with `_` for `-` (`X_Forwarded_For`), which CGI-
/// style servers (WSGI, Rack, PHP) read as `HTTP_X_FORWARDED_FOR` beside the proxy's
/// own. One pass over the names (collecting none allocates nothing).
pub(super) fn drop_lookalikes(headers: &mut HeaderMap) {
    drop_names(headers, lookalike);
}

/// Takes off every field whose name `drop` picks (one pass over the names; collecting
/// none allocates nothing).
fn drop_names(headers: &mut HeaderMap, drop: fn(&str) -> bool) {
    let found: Vec<HeaderName> = headers
        .keys()
        .filter(|n| drop(n.as_str()))
        .cloned()
        .collect();
    for name in found {
        headers.remove(name);
    }
}

/// Whether `name` (lower case) is `canonical` with some `-` spelled `_`, or exactly it:
/// CGI-style servers read both as one header.
fn spelled(name: &str, canonical: &str) -> bool {
    canonical.len() == name.len()
        && canonical
            .bytes()
            .zip(name.bytes())
            .all(|(a, b)| a == b || (a == b'-' && b == b'_'))
}

/// Whether `name` (lower case) is one of the [`CLAIMS`], in either spelling.
fn claim(name: &str) -> bool {
    CLAIMS.iter().any(|c| spelled(name, c))
}

/// Whether `name` (lower case, as `HeaderName` keeps it) is one of the four forwarding
/// headers with a `_` for some `-`.
fn lookalike(name: &str) -> bool {
    // `x-forwarded-for`, `-host` and `-proto` are 15 to 17 bytes long.
    (15..=17).contains(&name.len())
        && name.contains('_')
        && [XFF, XFP, XFH].iter().any(|f| spelled(name, f.as_str()))
}

/// Takes the forwarding headers, and what looks like them, off a request's trailers:
/// trailers come after the head the proxy wrote them in, and a server that merges
/// trailers into the head would read the client's.
pub(super) fn drop_from_trailers(trailers: &mut HeaderMap) {
    super::remove_named(trailers, &FOUR);
    drop_lookalikes(trailers);
    drop_names(trailers, claim);
}

/// Whether a `Forwarded` line ends outside any quoted string (RFC 7239 4: a `"` opens
/// one, `\` escapes the byte after it within).
fn closed(value: &[u8]) -> bool {
    let mut quoted = false;
    let mut escaped = false;
    for &b in value {
        match (quoted, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (_, false, b'"') => quoted = !quoted,
            _ => {}
        }
    }
    !quoted
}

/// The last untrusted request's values on this thread, by what they were made of.
struct Last {
    peer: IpAddr,
    tls: bool,
    host: Option<HeaderValue>,
    xff: HeaderValue,
    forwarded: Option<HeaderValue>,
}

thread_local! {
    static LAST: std::cell::RefCell<Option<Last>> = const { std::cell::RefCell::new(None) };
}

/// `X-Forwarded-For` and `Forwarded` for an untrusted peer (whose own are dropped):
/// made of its address, the scheme and the `Host` alone. The same peer asking for the
/// same host again (a keep-alive connection, an HTTP/2 connection's streams, clients
/// behind one load balancer) gets the values made last on this thread, shared rather
/// than formatted and copied again.
fn untrusted(
    peer: IpAddr,
    tls: bool,
    host: Option<&HeaderValue>,
) -> (HeaderValue, Option<HeaderValue>) {
    let hit = |last: &Last| {
        last.peer == peer
            && last.tls == tls
            && last.host.as_ref().map(HeaderValue::as_bytes) == host.map(HeaderValue::as_bytes)
    };
    if let Some(found) = LAST.with_borrow(|last| {
        last.as_ref()
            .filter(|l| hit(l))
            .map(|l| (l.xff.clone(), l.forwarded.clone()))
    }) {
        return found;
    }
    let mut ip = [0u8; 48];
    let ip = text_of(peer, &mut ip);
    let mut node = [0u8; 52];
    let node = node_of(peer, ip, &mut node);
    let own = if tls { PROTO_TLS } else { PROTO };
    // An address's text is always a valid value.
    let xff = value(&[ip]).unwrap_or(HeaderValue::from_static(""));
    let forwarded = element(node, &own, host);
    // The host is kept as a copy: the request's own value may be a slice of its
    // connection's read buffer, which it would keep alive. One that cannot be copied
    // (it can: it is a valid value) is not kept, and neither is anything made of it.
    let kept = match host {
        Some(h) => HeaderValue::from_bytes(h.as_bytes()).ok().map(Some),
        None => Some(None),
    };
    if let Some(host) = kept {
        LAST.with_borrow_mut(|last| {
            *last = Some(Last {
                peer,
                tls,
                host,
                xff: xff.clone(),
                forwarded: forwarded.clone(),
            });
        });
    }
    (xff, forwarded)
}

/// `ip` as text, written into `buf`.
fn text_of(ip: IpAddr, buf: &mut [u8; 48]) -> &[u8] {
    let room = buf.len();
    let mut at: &mut [u8] = buf;
    // An address is at most 45 characters: it always fits.
    let _ = write!(at, "{ip}");
    let written = room - at.len();
    &buf[..written]
}

/// The RFC 7239 node for `ip` (whose text is `text`): bare for IPv4, `"[...]"` for
/// IPv6.
fn node_of<'b>(ip: IpAddr, text: &[u8], buf: &'b mut [u8; 52]) -> &'b [u8] {
    if ip.is_ipv4() {
        buf[..text.len()].copy_from_slice(text);
        return &buf[..text.len()];
    }
    buf[..2].copy_from_slice(b"\"[");
    buf[2..2 + text.len()].copy_from_slice(text);
    buf[2 + text.len()..4 + text.len()].copy_from_slice(b"]\"");
    &buf[..4 + text.len()]
}

/// The incoming values of `name`, joined with `, `, then `last`'s two pieces: the
/// header's new value.
fn join(headers: &HeaderMap, name: &HeaderName, last: &[&[u8]; 2]) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => value(last),
        (Some(one), None) => value(&[one.as_bytes(), b", ", last[0], last[1]]),
        // Several header lines: rare enough to gather on the heap.
        (Some(_), Some(_)) => {
            let mut all = Vec::new();
            for v in headers.get_all(name) {
                all.extend_from_slice(v.as_bytes());
                all.extend_from_slice(b", ");
            }
            all.extend_from_slice(&last.concat());
            HeaderValue::from_bytes(&all).ok()
        }
    }
}

/// A first `Forwarded` element: `for=NODE;proto=P;host=H` (a parameter that is not a
/// valid token or quoted string is left out).
fn element(node: &[u8], proto: &HeaderValue, host: Option<&HeaderValue>) -> Option<HeaderValue> {
    let proto = proto.as_bytes();
    let proto: &[u8] = if is_token(proto) { proto } else { b"" };
    let host = host.map_or(&b""[..], HeaderValue::as_bytes);
    let (open, close): (&[u8], &[u8]) = if is_token(host) {
        (b"host=", b"")
    } else {
        (b"host=\"", b"\"")
    };
    let host_ok = !host.is_empty()
        && host
            .iter()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\'));
    value(&[
        b"for=",
        node,
        if proto.is_empty() { b"" } else { b";proto=" },
        proto,
        if host_ok { b";" } else { b"" },
        if host_ok { open } else { b"" },
        if host_ok { host } else { b"" },
        if host_ok { close } else { b"" },
    ])
}

/// Whether `s` is an RFC 7230 token (may stand unquoted in `Forwarded`).
fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().copied().all(super::is_tchar)
}

/// A header value of `pieces` put end to end: on the stack when they fit, so the
/// value's own copy is the only allocation.
fn value(pieces: &[&[u8]]) -> Option<HeaderValue> {
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    let mut stack = [0u8; 256];
    if len > stack.len() {
        return HeaderValue::from_bytes(&pieces.concat()).ok();
    }
    let mut at = 0;
    for p in pieces {
        stack[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    HeaderValue::from_bytes(&stack[..len]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn get<'h>(h: &'h HeaderMap, name: &str) -> Vec<&'h str> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .collect()
    }

    /// Each of the four alone, among other fields, is found and replaced.
    #[test]
    fn any_one_of_an_untrusted_peers_headers_is_replaced() {
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
        ] {
            let mut h = headers(&[("host", "shop.example"), ("accept", "*/*"), ("x-a", "1")]);
            h.append(name, HeaderValue::from_static("for=6.6.6.6"));
            h.append("x-b", HeaderValue::from_static("2"));
            set(&mut h, "192.0.2.7".parse().unwrap(), false, false);
            assert_eq!(get(&h, "x-forwarded-for"), ["192.0.2.7"], "{name}");
            assert_eq!(get(&h, "x-forwarded-proto"), ["http"], "{name}");
            assert_eq!(get(&h, "x-forwarded-host"), ["shop.example"], "{name}");
            assert_eq!(
                get(&h, "forwarded"),
                ["for=192.0.2.7;proto=http;host=shop.example"],
                "{name}"
            );
            assert_eq!(h.len(), 8, "{name}");
        }
    }

    #[test]
    fn an_untrusted_peers_headers_are_replaced_by_the_proxys() {
        let mut h = headers(&[
            ("host", "shop.example:8080"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=6.6.6.6;proto=https"),
        ]);
        set(&mut h, "192.0.2.7".parse().unwrap(), false, false);
        assert_eq!(get(&h, "x-forwarded-for"), ["192.0.2.7"]);
        assert_eq!(get(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(get(&h, "x-forwarded-host"), ["shop.example:8080"]);
        assert_eq!(
            get(&h, "forwarded"),
            ["for=192.0.2.7;proto=http;host=\"shop.example:8080\""]
        );
    }

    #[test]
    fn a_trusted_peers_chain_is_extended_and_its_proto_and_host_kept() {
        let mut h = headers(&[
            ("host", "internal:80"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "shop.example"),
            ("forwarded", "for=203.0.113.9;proto=https;host=shop.example"),
        ]);
        set(&mut h, "10.0.0.3".parse().unwrap(), true, false);
        assert_eq!(
            get(&h, "x-forwarded-for"),
            ["203.0.113.9, 10.0.0.2, 10.0.0.3"]
        );
        assert_eq!(get(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(get(&h, "x-forwarded-host"), ["shop.example"]);
        assert_eq!(
            get(&h, "forwarded"),
            ["for=203.0.113.9;proto=https;host=shop.example, for=10.0.0.3"]
        );
        // A trusted peer that sent no Forwarded: the first element says its proto and host.
        let mut h = headers(&[("host", "shop"), ("x-forwarded-proto", "https")]);
        set(&mut h, "10.0.0.3".parse().unwrap(), true, false);
        assert_eq!(get(&h, "forwarded"), ["for=10.0.0.3;proto=https;host=shop"]);
    }

    #[test]
    fn ipv6_is_bracketed_and_quoted_in_forwarded_and_bare_in_x_forwarded_for() {
        let mut h = headers(&[]);
        set(&mut h, "::1".parse().unwrap(), false, false);
        assert_eq!(get(&h, "x-forwarded-for"), ["::1"]);
        assert_eq!(get(&h, "forwarded"), ["for=\"[::1]\";proto=http"]);
        assert!(h.get("x-forwarded-host").is_none());
        let mut h = headers(&[("host", "a")]);
        set(&mut h, "::ffff:192.0.2.1".parse().unwrap(), false, false);
        assert_eq!(get(&h, "x-forwarded-for"), ["192.0.2.1"]);
        assert_eq!(get(&h, "forwarded"), ["for=192.0.2.1;proto=http;host=a"]);
    }

    /// The values kept for the next request are only ever the ones its own peer,
    /// scheme and host would make.
    #[test]
    fn kept_values_follow_the_peer_the_scheme_and_the_host() {
        let cases = [
            ("192.0.2.7", false, Some("a")),
            ("192.0.2.7", false, Some("a")),
            ("192.0.2.8", false, Some("a")),
            ("192.0.2.8", true, Some("a")),
            ("192.0.2.8", true, Some("b")),
            ("192.0.2.8", true, None),
            ("::1", true, None),
            ("192.0.2.7", false, Some("a")),
        ];
        for (peer, tls, host) in cases {
            let mut h = match host {
                Some(host) => headers(&[("host", host), ("x-forwarded-for", "6.6.6.6")]),
                None => headers(&[("x-forwarded-for", "6.6.6.6")]),
            };
            set(&mut h, peer.parse().unwrap(), false, tls);
            let bare = peer.trim_start_matches("::ffff:");
            let node = if bare.contains(':') {
                format!("\"[{bare}]\"")
            } else {
                bare.to_string()
            };
            let proto = if tls { "https" } else { "http" };
            let host_part = host.map(|h| format!(";host={h}")).unwrap_or_default();
            assert_eq!(get(&h, "x-forwarded-for"), [bare], "{peer} {tls} {host:?}");
            assert_eq!(
                get(&h, "forwarded"),
                [format!("for={node};proto={proto}{host_part}")],
                "{peer} {tls} {host:?}"
            );
            assert_eq!(get(&h, "x-forwarded-proto"), [proto]);
            assert_eq!(
                get(&h, "x-forwarded-host"),
                host.into_iter().collect::<Vec<_>>()
            );
        }
    }

    /// The elements of a `Forwarded` value (RFC 7239 4: `#forwarded-element`, each a
    /// `;`-list of `token=(token / quoted-string)`), split where a reader splits them:
    /// at commas outside quoted strings. `None` when a quoted string never closes.
    fn elements(value: &str) -> Option<Vec<String>> {
        let (mut out, mut cur) = (Vec::new(), String::new());
        let (mut quoted, mut escaped) = (false, false);
        for c in value.chars() {
            if escaped {
                escaped = false;
            } else if quoted && c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = !quoted;
            } else if c == ',' && !quoted {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            cur.push(c);
        }
        if quoted || escaped {
            return None;
        }
        out.push(cur.trim().to_string());
        Some(out)
    }

    /// A trusted peer's `Forwarded` that ends inside a quoted string (a client's own
    /// value the peer passed on, cut or crafted) must not swallow the element the
    /// proxy appends: the version would read the proxy's `for=` as part of the peer's
    /// `host`, and lose the hop that says who connected to the proxy.
    #[test]
    fn a_trusted_peers_open_quote_does_not_swallow_the_proxys_element() {
        // The reader itself: a comma inside quotes is no boundary.
        assert_eq!(
            elements("for=1.2.3.4;host=\"a,b\", for=10.0.0.3").unwrap(),
            ["for=1.2.3.4;host=\"a,b\"", "for=10.0.0.3"]
        );
        for incoming in [
            "for=203.0.113.9;host=\"shop",
            "for=\"[2001:db8::1]",
            "for=203.0.113.9;host=\"a\\\"",
            "for=203.0.113.9;host=\"a\\",
        ] {
            let mut h = HeaderMap::new();
            h.append("host", HeaderValue::from_static("shop"));
            h.append("forwarded", HeaderValue::from_str(incoming).unwrap());
            set(&mut h, "10.0.0.3".parse().unwrap(), true, false);
            let out = get(&h, "forwarded");
            assert_eq!(out.len(), 1, "{incoming}: {out:?}");
            let parsed = elements(out[0]);
            // The unclosed chain is not extended: the proxy's element starts anew.
            assert_eq!(
                parsed.as_ref().and_then(|e| e.last()).map(String::as_str),
                Some("for=10.0.0.3;proto=http;host=shop"),
                "{incoming:?} became {:?}: the proxy's own element is not one a reader finds",
                out[0]
            );
        }
    }

    #[test]
    fn a_client_on_tls_is_forwarded_as_https_whatever_it_claims() {
        let mut h = headers(&[("x-forwarded-proto", "http")]);
        set(&mut h, "192.0.2.7".parse().unwrap(), false, true);
        assert_eq!(get(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(get(&h, "forwarded"), ["for=192.0.2.7;proto=https"]);
    }
}
