//! The `traffic` section: which router splits traffic (the embedded proxy, nginx,
//! HAProxy or Kubernetes) and what keeps a user on one variant, and its decoder. It
//! must not talk to a router.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::values::{HOUR, decode_addr, decode_kube_name, one_kind, positive};
use crate::decode::{Decoder, one_of, scalar};
use crate::units::{format_bytes, parse_bytes};
use crate::yaml::{Node, NodeKind, Pos};

/// How traffic is split.
#[derive(Clone, Debug, PartialEq)]
pub enum Traffic {
    /// The embedded proxy.
    Proxy(ProxySpec),
    /// An nginx rampart renders an include file for, tests and reloads.
    Nginx(NginxSpec),
    /// An HAProxy whose server weights rampart sets through the runtime API.
    Haproxy(HaproxySpec),
    /// Kubernetes objects: replica counts, a Service selector or HTTPRoute weights.
    Kubernetes(KubeTrafficSpec),
}

/// Kubernetes as the traffic router (`traffic.kubernetes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeTrafficSpec {
    /// What moves traffic.
    pub mode: KubeMode,
}

/// How traffic moves between the stable and the canary Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeMode {
    /// One Service selects both Deployments; the share is the canary's share of the
    /// pods, in multiples of `100 / replicas` percent.
    ReplicaRatio {
        /// The grid of the split (the pods are sized from the live Deployments).
        replicas: u32,
    },
    /// Blue-green: the Service selects either the stable or the canary pods.
    ServiceSelector {
        /// The Service whose selector rampart switches.
        service: String,
    },
    /// Gateway API: an HTTPRoute's backendRefs weigh the stable Service against
    /// `<service>-canary`, which rampart creates.
    HttpRoute {
        /// The stable Service, named in the route's backendRefs.
        service: String,
        /// The HTTPRoute.
        route: String,
    },
}

impl KubeMode {
    /// The mode's name in the policy.
    pub fn name(&self) -> &'static str {
        match self {
            KubeMode::ReplicaRatio { .. } => "replica_ratio",
            KubeMode::ServiceSelector { .. } => "service_selector",
            KubeMode::HttpRoute { .. } => "http_route",
        }
    }
}

/// nginx as the traffic router.
#[derive(Clone, Debug, PartialEq)]
pub struct NginxSpec {
    /// Where nginx serves the service (the rendered `server` block listens here).
    pub listen: SocketAddr,
    /// The file rampart owns and rewrites: upstreams, the split, the server block. The
    /// main nginx configuration must include it inside `http {}`.
    pub include: String,
    /// Validates the configuration; a failure leaves the old file in place.
    pub test: Vec<String>,
    /// Makes nginx load the configuration.
    pub reload: Vec<String>,
    /// How a request is pinned to one variant (`split_clients` hashes it).
    pub sticky: Sticky,
    /// nginx's pid file: its workers are watched to know when a change is in force
    /// everywhere and when old requests have drained.
    pub pid: String,
}

/// HAProxy as the traffic router.
#[derive(Clone, Debug, PartialEq)]
pub struct HaproxySpec {
    /// The runtime API socket (`stats socket PATH level admin`).
    pub socket: String,
    /// The backend whose `stable<N>` and `canary<N>` servers (a `server-template` each)
    /// rampart points at the versions and weighs.
    pub backend: String,
    /// Where HAProxy sends its request log (UDP syslog) for rampart to measure, as
    /// `log ADDR local0` with `log-format "rampart-ms %b %s %ST %Tr %Ta"` (a format
    /// ending in `%Tr` still counts, without the total time).
    pub log_listen: SocketAddr,
}

/// The embedded proxy's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxySpec {
    /// Where users connect.
    pub listen: SocketAddr,
    /// How a request is pinned to one variant.
    pub sticky: Sticky,
    /// What one client may hold of the proxy (`traffic.proxy.limits`).
    pub limits: ProxyLimits,
    /// TLS termination (`traffic.proxy.tls`); `None` serves plain HTTP.
    pub tls: Option<ProxyTls>,
    /// Whose `X-Forwarded-*` and `Forwarded` headers are believed
    /// (`traffic.proxy.forwarded.trust`).
    pub forwarded: Trust,
    /// The protocol the proxy speaks to the versions
    /// (`traffic.proxy.upstream_protocol`).
    pub upstream_protocol: UpstreamProtocol,
}

/// The protocol the embedded proxy speaks to the versions, whatever its clients speak
/// (`traffic.proxy.upstream_protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (the default).
    #[default]
    Http1,
    /// HTTP/2 in cleartext with prior knowledge (gRPC servers, h2c-enabled servers).
    H2c,
}

impl UpstreamProtocol {
    /// As the policy spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
        }
    }
}

/// The certificates the embedded proxy terminates TLS with (`traffic.proxy.tls`).
///
/// Decoding checks the shape only; the files are read where rampart may touch the
/// disk (the CLI's checks and the proxy itself), and their problems are reported at
/// the lines kept here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyTls {
    /// One or more certificates, in the policy's order; never empty.
    pub certificates: Vec<TlsCertificate>,
}

/// One certificate chain and its private key, and the server names it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsCertificate {
    /// The PEM certificate chain, leaf first, as written (relative to the policy file).
    pub cert: String,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1), as written.
    pub key: String,
    /// The SNI names it answers, lower-case; `*.example.com` matches one label.
    /// Empty: the default certificate, for names no other certificate answers and for
    /// clients that send none.
    pub names: Vec<String>,
    /// The field path of this certificate (`traffic.proxy.tls` or
    /// `traffic.proxy.tls.certificates[1]`), for messages about its files.
    pub path: String,
    /// Where `cert` is written.
    pub cert_pos: Pos,
    /// Where `key` is written.
    pub key_pos: Pos,
}

impl ProxyTls {
    /// The certificate for clients whose name no other answers: the one without
    /// `names`, or else the first.
    pub fn default_index(&self) -> usize {
        self.certificates
            .iter()
            .position(|c| c.names.is_empty())
            .unwrap_or(0)
    }
}

/// The peers whose forwarding headers (`X-Forwarded-For`, `-Proto`, `-Host`,
/// `Forwarded`) the proxy believes and extends; anyone else's are replaced by the
/// proxy's own, so a client cannot spoof its address to the versions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Trust {
    /// Nobody: the proxy is the edge (the default).
    #[default]
    None,
    /// Every peer: something trusted always stands in front.
    All,
    /// Peers inside one of these networks.
    Networks(Vec<IpNet>),
}

impl Trust {
    /// Whether a TCP peer at `peer` is believed. An IPv4 peer seen on an IPv6 socket
    /// (`::ffff:a.b.c.d`) is matched as the IPv4 address it is.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        match self {
            Trust::None => false,
            Trust::All => true,
            Trust::Networks(nets) => {
                let peer = peer.to_canonical();
                nets.iter().any(|n| n.contains(peer))
            }
        }
    }
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `fd00::/8`); a bare address is the
/// network of that one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `10.0.0.0/8`, `::1/128` or a bare address. Refuses a prefix longer than
    /// the address and an address with bits set past the prefix (`10.0.0.1/8`), which
    /// is usually a typo in a list that grants trust.
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("`{text}` is not a network like 10.0.0.0/8 or fd00::/8"))?;
        let bits: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= bits => p,
                _ => return Err(format!("`{text}`: the prefix length must be 0 to {bits}")),
            },
        };
        // An IPv4 network written IPv4-mapped (`::ffff:10.0.0.0/104`) is that IPv4
        // network: a peer is matched as the IPv4 address it is (see `Trust::trusts`),
        // so the mapped form would match nobody.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        let net = IpNet { addr, prefix };
        if net.masked(addr) != bits_of(addr) {
            let base = match addr {
                IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(
                    u32::try_from(net.masked(addr)).unwrap_or(0),
                )),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(net.masked(addr))),
            };
            return Err(format!(
                "`{text}` has bits set past its /{prefix}; the network is {base}/{prefix}"
            ));
        }
        Ok(net)
    }

    /// Whether `ip` is in this network (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && self.masked(ip) == bits_of(self.addr)
    }

    /// `ip`'s bits under this network's mask.
    fn masked(&self, ip: IpAddr) -> u128 {
        let bits: u32 = if ip.is_ipv4() { 32 } else { 128 };
        let host = bits - u32::from(self.prefix);
        let mask = u128::MAX.checked_shl(host).unwrap_or(0) & (u128::MAX >> (128 - bits));
        bits_of(ip) & mask
    }
}

fn bits_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The limits that keep the embedded proxy serving whatever its clients do
/// (`traffic.proxy.limits`). Each has a default, so a policy without the section is
/// protected too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyLimits {
    /// How long a client has to send a complete request head: from the connection's
    /// opening, or from the first byte of a later request on a kept-alive connection.
    /// Past it the connection is closed.
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait, after an answer, for the first byte
    /// of its next request before the proxy closes it.
    pub idle_timeout: Duration,
    /// How long the proxy waits for the next bytes of a request body it is forwarding
    /// (restarted at every chunk that arrives: an inactivity deadline, not a cap on the
    /// whole upload). Past it the client is answered 408 and its connection closed, and
    /// no version is counted an error.
    pub body_timeout: Duration,
    /// How long the proxy waits for a client to take the next bytes of what it sends
    /// (an answer, or a tunnel's data): restarted at every write that goes through,
    /// so a slow reader is never cut, only one that takes nothing. Past it the
    /// connection is closed, and its request counts as its client's leaving, no
    /// version's error.
    pub send_timeout: Duration,
    /// The largest request head (request line and headers) accepted; a larger one is
    /// answered 431 and its connection closed.
    pub max_header_bytes: u64,
    /// The largest request body forwarded, `None` for no limit; a larger one is
    /// answered 413.
    pub max_body_bytes: Option<u64>,
    /// Client connections open at once; one more is answered 503 and closed.
    pub max_connections: u32,
    /// HTTP/2 streams (requests) open at once on one client connection
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`); one more is refused (`REFUSED_STREAM`),
    /// and the connection's other streams go on.
    pub max_streams: u32,
}

impl ProxyLimits {
    /// The smallest `max_header_bytes` accepted: a request line and a few headers.
    pub const MIN_HEADER_BYTES: u64 = 1 << 10;
    /// The largest `max_header_bytes` accepted.
    pub const MAX_HEADER_BYTES: u64 = 1 << 20;
    /// The largest `max_body_bytes` accepted (use `none` for no limit).
    pub const MAX_BODY_BYTES: u64 = 1 << 40;
    /// The most `max_connections` accepted.
    pub const MAX_CONNECTIONS: u32 = 1_000_000;
    /// The most `max_streams` accepted.
    pub const MAX_STREAMS: u32 = 10_000;
}

impl Default for ProxyLimits {
    /// The documented defaults (docs/dataplane.md, "Limits").
    fn default() -> Self {
        ProxyLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            max_header_bytes: 64 << 10,
            max_body_bytes: Some(16 << 20),
            max_connections: 10_000,
            // RFC 9113 6.5.2: no lower, so as not to limit parallelism needlessly.
            max_streams: 100,
        }
    }
}

/// What keeps one user on one variant while the weight changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Sticky {
    /// Every request is assigned on its own (the default).
    #[default]
    None,
    /// The client's IP address.
    ClientIp,
    /// The value of a request header.
    Header(String),
    /// The value of a cookie.
    Cookie(String),
}

pub(super) fn decode_traffic(cx: &mut Decoder, node: &Node, path: &str) -> Option<Traffic> {
    let (kind, inner, p) = one_kind(cx, node, path, &["proxy", "nginx", "haproxy", "kubernetes"])?;
    match kind {
        "kubernetes" => decode_kube_traffic(cx, inner, &p).map(Traffic::Kubernetes),
        "nginx" => {
            let m = cx.map(
                inner,
                &p,
                &["listen", "include", "test", "reload", "sticky", "pid"],
            )?;
            let listen = m.required_with(cx, "listen", decode_addr);
            let include = m.required::<String>(cx, "include");
            let test = m
                .optional::<Vec<String>>(cx, "test")
                .unwrap_or_else(|| vec!["nginx".into(), "-t".into()]);
            let reload = m
                .optional::<Vec<String>>(cx, "reload")
                .unwrap_or_else(|| vec!["nginx".into(), "-s".into(), "reload".into()]);
            for (key, cmd) in [("test", &test), ("reload", &reload)] {
                if cmd.is_empty() {
                    cx.error(
                        m.pos(),
                        &m.path_of(key),
                        "a command needs at least a program",
                    );
                }
            }
            let sticky = m
                .optional_with(cx, "sticky", decode_sticky)
                .unwrap_or(Sticky::None);
            let pid = m
                .optional::<String>(cx, "pid")
                .unwrap_or_else(|| "/run/nginx.pid".into());
            Some(Traffic::Nginx(NginxSpec {
                listen: listen?,
                include: include?,
                test,
                reload,
                sticky,
                pid,
            }))
        }
        "haproxy" => {
            let m = cx.map(inner, &p, &["socket", "backend", "log_listen"])?;
            let socket = m.required::<String>(cx, "socket");
            let backend = m.required::<String>(cx, "backend");
            let log_listen = m.required_with(cx, "log_listen", decode_addr);
            Some(Traffic::Haproxy(HaproxySpec {
                socket: socket?,
                backend: backend?,
                log_listen: log_listen?,
            }))
        }
        _ => {
            let m = cx.map(
                inner,
                &p,
                &[
                    "listen",
                    "sticky",
                    "limits",
                    "tls",
                    "forwarded",
                    "upstream_protocol",
                ],
            )?;
            let listen = m.required_with(cx, "listen", decode_addr);
            let sticky = m
                .optional_with(cx, "sticky", decode_sticky)
                .unwrap_or(Sticky::None);
            let limits = match m.get("limits") {
                Some(node) => decode_limits(cx, node, &m.path_of("limits"))?,
                None => ProxyLimits::default(),
            };
            let tls = match m.get("tls") {
                Some(node) if node.kind != NodeKind::Null => {
                    Some(decode_tls(cx, node, &m.path_of("tls"))?)
                }
                _ => None,
            };
            let forwarded = match m.get("forwarded") {
                Some(node) => decode_forwarded(cx, node, &m.path_of("forwarded"))?,
                None => Trust::None,
            };
            let upstream_protocol = m
                .optional_with(cx, "upstream_protocol", |cx, n, p| {
                    match one_of(cx, n, p, &["http1", "h2c"])? {
                        "h2c" => Some(UpstreamProtocol::H2c),
                        _ => Some(UpstreamProtocol::Http1),
                    }
                })
                .unwrap_or_default();
            Some(Traffic::Proxy(ProxySpec {
                listen: listen?,
                sticky,
                limits,
                tls,
                forwarded,
                upstream_protocol,
            }))
        }
    }
}

fn decode_limits(cx: &mut Decoder, node: &Node, path: &str) -> Option<ProxyLimits> {
    let m = cx.map(
        node,
        path,
        &[
            "header_timeout",
            "idle_timeout",
            "body_timeout",
            "send_timeout",
            "max_header_bytes",
            "max_body_bytes",
            "max_connections",
            "max_streams",
        ],
    )?;
    // A field that is refused is reported at its line; the policy is then invalid,
    // so the default that stands in for it never serves.
    let defaults = ProxyLimits::default();
    let header_timeout = positive(cx, &m, "header_timeout", HOUR);
    let idle_timeout = positive(cx, &m, "idle_timeout", HOUR);
    let body_timeout = positive(cx, &m, "body_timeout", HOUR);
    let send_timeout = positive(cx, &m, "send_timeout", HOUR);
    let max_header_bytes = m.optional_with(cx, "max_header_bytes", |cx, n, p| {
        decode_size(
            cx,
            n,
            p,
            ProxyLimits::MIN_HEADER_BYTES,
            ProxyLimits::MAX_HEADER_BYTES,
        )
    });
    let max_body_bytes = m.optional_with(cx, "max_body_bytes", |cx, n, p| {
        if let NodeKind::Scalar { text, .. } = &n.kind
            && text.trim() == "none"
        {
            return Some(None);
        }
        decode_size(cx, n, p, 1, ProxyLimits::MAX_BODY_BYTES).map(Some)
    });
    let max_connections = m.optional::<u32>(cx, "max_connections");
    if let Some(n) = max_connections
        && !(1..=ProxyLimits::MAX_CONNECTIONS).contains(&n)
    {
        cx.error(
            m.get("max_connections").map_or(m.pos(), |n| n.pos),
            &m.path_of("max_connections"),
            format!("{n} connections: use 1 to {}", ProxyLimits::MAX_CONNECTIONS),
        );
    }
    let max_streams = m.optional::<u32>(cx, "max_streams");
    if let Some(n) = max_streams
        && !(1..=ProxyLimits::MAX_STREAMS).contains(&n)
    {
        cx.error(
            m.get("max_streams").map_or(m.pos(), |n| n.pos),
            &m.path_of("max_streams"),
            format!("{n} streams: use 1 to {}", ProxyLimits::MAX_STREAMS),
        );
    }
    Some(ProxyLimits {
        header_timeout: header_timeout.unwrap_or(defaults.header_timeout),
        idle_timeout: idle_timeout.unwrap_or(defaults.idle_timeout),
        body_timeout: body_timeout.unwrap_or(defaults.body_timeout),
        send_timeout: send_timeout.unwrap_or(defaults.send_timeout),
        max_header_bytes: max_header_bytes.unwrap_or(defaults.max_header_bytes),
        max_body_bytes: max_body_bytes.unwrap_or(defaults.max_body_bytes),
        max_connections: max_connections.unwrap_or(defaults.max_connections),
        max_streams: max_streams.unwrap_or(defaults.max_streams),
    })
}

/// `tls: {cert, key}` (one certificate for every name) or `tls: {certificates: [...]}`.
fn decode_tls(cx: &mut Decoder, node: &Node, path: &str) -> Option<ProxyTls> {
    let m = cx.map(node, path, &["cert", "key", "certificates"])?;
    let certificates = match (
        m.get("certificates"),
        m.present(&["cert", "key"]).is_empty(),
    ) {
        (None, _) => vec![decode_certificate(cx, &m, false)?],
        (Some(list), true) => {
            let certs = cx.seq(list, &m.path_of("certificates"), |cx, n, p| {
                let entry = cx.map(n, p, &["cert", "key", "names"])?;
                decode_certificate(cx, &entry, true)
            })?;
            if certs.is_empty() {
                cx.error(
                    list.pos,
                    &m.path_of("certificates"),
                    "an empty list: give at least one `{cert, key}`, or leave `tls` out to serve plain HTTP",
                );
                return None;
            }
            certs
        }
        (Some(_), false) => {
            cx.error(
                m.pos(),
                path,
                "`cert`/`key` and `certificates` together: write one certificate as `cert` and `key`, or several under `certificates`",
            );
            return None;
        }
    };
    let defaults = certificates.iter().filter(|c| c.names.is_empty()).count();
    if defaults > 1 {
        cx.error(
            m.pos(),
            &m.path_of("certificates"),
            format!("{defaults} certificates without `names`: only one can be the default; give the others the SNI names they answer"),
        );
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    for c in &certificates {
        for name in &c.names {
            if seen.contains(&name.as_str()) {
                cx.error(
                    c.cert_pos,
                    &format!("{}.names", c.path),
                    format!("`{name}` is answered by two certificates; name it once"),
                );
                return None;
            }
            seen.push(name);
        }
    }
    Some(ProxyTls { certificates })
}

fn decode_certificate(
    cx: &mut Decoder,
    m: &crate::decode::MapReader<'_>,
    named: bool,
) -> Option<TlsCertificate> {
    let cert = m.required::<String>(cx, "cert");
    let key = m.required::<String>(cx, "key");
    let names = if named {
        m.optional_with(cx, "names", |cx, n, p| cx.seq(n, p, decode_server_name))
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let (cert, key) = (cert?, key?);
    for (field, value) in [("cert", &cert), ("key", &key)] {
        if value.trim().is_empty() {
            cx.error(
                m.get(field).map_or(m.pos(), |n| n.pos),
                &m.path_of(field),
                "an empty path: give the PEM file's path (relative to the policy file)",
            );
            return None;
        }
    }
    let pos_of = |key: &str| m.get(key).map_or(m.pos(), |n| n.pos);
    Some(TlsCertificate {
        cert,
        key,
        names,
        path: m.path().to_string(),
        cert_pos: pos_of("cert"),
        key_pos: pos_of("key"),
    })
}

/// A DNS name a client may send in SNI, or `*.` and one.
fn decode_server_name(cx: &mut Decoder, node: &Node, path: &str) -> Option<String> {
    let text = scalar(cx, node, path, "a server name such as api.example.com")?;
    let name = text.trim().to_ascii_lowercase();
    let host = name.strip_prefix("*.").unwrap_or(&name);
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        cx.error(
            node.pos,
            path,
            format!("`{text}` is not a server name: use a DNS name such as api.example.com, or *.example.com for one label"),
        );
        return None;
    }
    Some(name)
}

/// `forwarded: {trust: none | all | [CIDR, ...]}`; each network refused at its own line.
fn decode_forwarded(cx: &mut Decoder, node: &Node, path: &str) -> Option<Trust> {
    let m = cx.map(node, path, &["trust"])?;
    let Some(trust) = m.get("trust") else {
        return Some(Trust::None);
    };
    let p = m.path_of("trust");
    if let NodeKind::Scalar { .. } = trust.kind {
        return match one_of(cx, trust, &p, &["none", "all"])? {
            "all" => Some(Trust::All),
            _ => Some(Trust::None),
        };
    }
    let nets = cx.seq(trust, &p, |cx, n, p| {
        let text = scalar(cx, n, p, "a network like 10.0.0.0/8 or fd00::/8")?;
        match IpNet::parse(text.trim()) {
            Ok(net) => Some(net),
            Err(msg) => {
                cx.error(n.pos, p, msg);
                None
            }
        }
    })?;
    Some(Trust::Networks(nets))
}

/// A size with its unit (`64KiB`), from `at_least` to `at_most` bytes.
fn decode_size(
    cx: &mut Decoder,
    node: &Node,
    path: &str,
    at_least: u64,
    at_most: u64,
) -> Option<u64> {
    let text = scalar(cx, node, path, "a size such as 64KiB or 16MiB")?;
    let n = match parse_bytes(text) {
        Ok(n) => n,
        Err(msg) => {
            cx.error(node.pos, path, msg);
            return None;
        }
    };
    if !(at_least..=at_most).contains(&n) {
        cx.error(
            node.pos,
            path,
            format!(
                "`{text}` is out of range; use {} to {}",
                format_bytes(at_least),
                format_bytes(at_most)
            ),
        );
        return None;
    }
    Some(n)
}

fn decode_sticky(cx: &mut Decoder, node: &Node, path: &str) -> Option<Sticky> {
    if let NodeKind::Scalar { .. } = node.kind {
        return match one_of(cx, node, path, &["none", "client-ip"])? {
            "client-ip" => Some(Sticky::ClientIp),
            _ => Some(Sticky::None),
        };
    }
    let (kind, inner, p) = one_kind(cx, node, path, &["header", "cookie"])?;
    let name = scalar(cx, inner, &p, "a header or cookie name")?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        cx.error(
            inner.pos,
            &p,
            format!("`{name}` is not a valid {kind} name"),
        );
        return None;
    }
    Some(if kind == "header" {
        Sticky::Header(name.to_ascii_lowercase())
    } else {
        Sticky::Cookie(name.to_string())
    })
}

const KUBE_MODES: &[&str] = &["replica_ratio", "service_selector", "http_route"];

fn decode_kube_traffic(cx: &mut Decoder, node: &Node, path: &str) -> Option<KubeTrafficSpec> {
    let m = cx.map(node, path, &["mode", "service", "route", "replicas"])?;
    let mode = m.required_with(cx, "mode", |cx, n, p| one_of(cx, n, p, KUBE_MODES));
    let service = m.optional_with(cx, "service", decode_kube_name);
    let route = m.optional_with(cx, "route", decode_kube_name);
    let replicas = m.optional::<u32>(cx, "replicas");
    let mode = mode?;
    let pos_of = |key: &str| m.get(key).map_or(m.pos(), |n| n.pos);
    let misplaced = |cx: &mut Decoder, key: &str, modes: &str| {
        if m.get(key).is_some() {
            cx.error(
                pos_of(key),
                &m.path_of(key),
                format!("`{key}` belongs to `mode: {modes}`, not `mode: {mode}`"),
            );
        }
    };
    match mode {
        "replica_ratio" => {
            misplaced(cx, "route", "http_route");
            let Some(replicas) = replicas else {
                cx.error(
                    m.pos(),
                    &m.path_of("replicas"),
                    "missing: `replica_ratio` splits this many replicas between stable and canary (for example `replicas: 10` allows steps of 10 %)",
                );
                return None;
            };
            if replicas == 0 || replicas > 1000 {
                cx.error(
                    pos_of("replicas"),
                    &m.path_of("replicas"),
                    format!("{replicas} replicas: use 1 to 1000 (stable and canary together)"),
                );
                return None;
            }
            Some(KubeTrafficSpec {
                mode: KubeMode::ReplicaRatio { replicas },
            })
        }
        _ => {
            misplaced(cx, "replicas", "replica_ratio");
            let Some(service) = service else {
                if m.get("service").is_none() {
                    cx.error(
                        m.pos(),
                        &m.path_of("service"),
                        format!("missing: `mode: {mode}` needs the stable Service's name"),
                    );
                }
                return None;
            };
            if mode == "service_selector" {
                misplaced(cx, "route", "http_route");
                return Some(KubeTrafficSpec {
                    mode: KubeMode::ServiceSelector { service },
                });
            }
            let Some(route) = route else {
                if m.get("route").is_none() {
                    cx.error(
                        m.pos(),
                        &m.path_of("route"),
                        "missing: `mode: http_route` needs the HTTPRoute's name",
                    );
                }
                return None;
            };
            Some(KubeTrafficSpec {
                mode: KubeMode::HttpRoute { service, route },
            })
        }
    }
}
