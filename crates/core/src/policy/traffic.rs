//! The `traffic` section: which router splits traffic (the embedded proxy, nginx,
//! HAProxy or Kubernetes) and what keeps a user on one variant, and its decoder. It
//! must not talk to a router.

use std::net::SocketAddr;

use super::values::{decode_addr, decode_kube_name, one_kind};
use crate::decode::{Decoder, one_of, scalar};
use crate::yaml::{Node, NodeKind};

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
}

/// What keeps one user on one variant while the weight changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sticky {
    /// Every request is assigned on its own.
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
            let m = cx.map(inner, &p, &["listen", "sticky"])?;
            let listen = m.required_with(cx, "listen", decode_addr);
            let sticky = m
                .optional_with(cx, "sticky", decode_sticky)
                .unwrap_or(Sticky::None);
            Some(Traffic::Proxy(ProxySpec {
                listen: listen?,
                sticky,
            }))
        }
    }
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
