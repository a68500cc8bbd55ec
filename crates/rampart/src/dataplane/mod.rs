//! The data plane a release runs on: the embedded proxy, nginx, HAProxy or Kubernetes,
//! with the router and the `builtin` metrics that go with each, and the flag endpoint.
//!
//! Owns choosing and starting those pieces from the policy's `traffic` section. It must
//! not decide anything about the release.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use rampart_adapters::accesslog::AccessLog;
use rampart_adapters::flags::{FlagRouter, FlagServer};
use rampart_adapters::haproxy::HaproxyRouter;
use rampart_adapters::nginx::NginxRouter;
use rampart_adapters::proxy::remote::RemotePlane;
use rampart_adapters::proxy::{BuiltinMetrics, Proxy, ProxyOptions, ProxyServer, Totals};
use rampart_adapters::store::StateStore;
use rampart_core::policy::{Policy, Traffic};
use rampart_core::ports::{Clock, Deployer, FlagStore, MetricsSource, TrafficRouter};

use crate::report::RunError;

pub mod agent;
pub mod attach;
pub mod revive;

/// What routes and measures a release's traffic.
pub struct DataPlane {
    /// Moves traffic.
    pub router: Arc<dyn TrafficRouter>,
    /// Moves traffic, with no flag ramp in front (for handing the winner over after
    /// a release; the same as `router` when no flag is ramped).
    pub routes: Arc<dyn TrafficRouter>,
    /// Measures both variants.
    pub metrics: Arc<dyn MetricsSource>,
    /// Cumulative per-variant counts, for the report and the status line.
    pub counted: Arc<dyn Totals>,
    /// The embedded proxy, when it routes in this process.
    pub proxy: Option<Proxy>,
    /// The long-lived data plane, when the embedded proxy runs as its own process.
    pub remote: Option<Arc<RemotePlane>>,
    /// Where users reach the service, when rampart knows.
    pub entry: Option<SocketAddr>,
    /// The deployer that goes with this router, when the router is not independent of
    /// it (Kubernetes: one adapter owns the Deployments and the traffic between them).
    pub deployer: Option<Arc<dyn Deployer>>,
    /// The version the data plane reports serving now, when it can tell.
    pub running_version: Option<String>,
    /// How the long-lived data plane was reached ("started ...", "attached to ...").
    pub reached: Option<String>,
    /// The token that keeps rampart's own load out of the metrics (`analysis.load`
    /// with `counts: false`, behind the embedded proxy).
    pub uncounted: Option<String>,
    proxy_server: Option<ProxyServer>,
    flag_endpoint: Option<FlagServer>,
}

impl std::fmt::Debug for DataPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlane")
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

impl DataPlane {
    /// Whether the versions run on their own (in a cluster) after rampart exits, so
    /// rampart must leave them serving instead of stopping them.
    pub fn cluster_runs_versions(&self) -> bool {
        self.deployer.is_some()
    }

    /// The router outside rampart (nginx, HAProxy) that keeps pointing users at the
    /// versions after rampart exits, if the policy routes through one.
    pub fn external_router(policy: &Policy) -> Option<String> {
        match &policy.traffic {
            Traffic::Nginx(spec) => Some(format!("nginx (http://{})", spec.listen)),
            Traffic::Haproxy(spec) => Some(format!("HAProxy (backend `{}`)", spec.backend)),
            Traffic::Proxy(_) | Traffic::Kubernetes(_) => None,
        }
    }

    /// Where users reach the service, in words: its address, or the router's.
    pub fn serving_on(&self, policy: &Policy) -> String {
        match (self.entry, DataPlane::external_router(policy)) {
            (_, Some(router)) => router,
            (Some(entry), None) => format!("http://{entry}"),
            (None, None) => "the cluster".to_string(),
        }
    }

    /// Where its flag endpoint listens, if it serves one.
    pub fn flag_addr(&self) -> Option<SocketAddr> {
        self.flag_endpoint.as_ref().map(FlagServer::local_addr)
    }

    /// Stops the embedded proxy and the flag endpoint and returns once their addresses
    /// are free again (the next release of the service binds them at once).
    pub async fn close(self) {
        if let Some(server) = self.proxy_server {
            server.close().await;
        }
        if let Some(flags) = self.flag_endpoint {
            flags.close().await;
        }
    }
}

/// A client to a Kubernetes cluster, given to a release instead of the one its policy's
/// kubeconfig context makes (`rampart serve --kubernetes` passes the one it watches
/// with). A build without the `kubernetes` feature has none.
#[cfg(feature = "kubernetes")]
#[derive(Clone)]
pub struct Cluster(pub rampart_kubernetes::kube::Client);

#[cfg(feature = "kubernetes")]
impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cluster")
    }
}

/// A client to a Kubernetes cluster: none in a build without the `kubernetes` feature.
#[cfg(not(feature = "kubernetes"))]
#[derive(Clone, Debug)]
pub enum Cluster {}

/// What a release finds of its data plane before it changes anything of it. Every
/// refusal the data plane gives is given by [`find`] (a running data plane the policy
/// does not match, a cluster without its stable Deployment, certificates that do not
/// load, a build without Kubernetes), so that a refused release leaves the data plane
/// as it was; [`start`] then changes it.
pub struct Found {
    /// The cluster's adapter, on Kubernetes.
    cluster: Option<ClusterPlane>,
    /// The certificates a long-lived data plane started now serves (`None`: plain HTTP).
    plane_tls: Option<rampart_adapters::proxy::plane::TlsState>,
    /// The certificates, loaded, of an embedded proxy in this process.
    terminator: Option<rampart_adapters::proxy::tls::TlsTerminator>,
    /// This release's token that keeps its own load out of the metrics.
    uncounted: Option<String>,
    /// The endpoints of the service's versions that run now, where rampart runs them:
    /// a data plane started afresh routes to none other (see [`attach::attach_telling`]).
    live: Option<rampart_adapters::process::LiveEndpoints>,
}

impl std::fmt::Debug for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Found")
            .field("running_version", &self.running_version())
            .finish_non_exhaustive()
    }
}

impl Found {
    /// `live`: the endpoints of the versions rampart runs that run now (see
    /// [`Found::live`]).
    pub fn with_live(mut self, live: Option<rampart_adapters::process::LiveEndpoints>) -> Found {
        self.live = live;
        self
    }

    /// On Kubernetes, the canary a finished release left that users reach now (see
    /// `rampart_kubernetes::Kubernetes::canary_in_force`).
    pub fn canary_in_force(&self) -> Option<&(Option<String>, rampart_core::Weight)> {
        self.cluster
            .as_ref()
            .and_then(|c| c.canary_in_force.as_ref())
    }

    /// The version the data plane reports serving now, when it can tell (the stable
    /// Deployment's, on Kubernetes).
    pub fn running_version(&self) -> Option<&str> {
        self.cluster
            .as_ref()
            .and_then(|c| c.running_version.as_deref())
    }

    /// Whether the versions run on their own (in a cluster), deployed by the data
    /// plane's own adapter.
    pub fn cluster_runs_versions(&self) -> bool {
        self.cluster.is_some()
    }

    /// The deployer that goes with the router, when the router is not independent of
    /// it (Kubernetes).
    pub fn deployer(&self) -> Option<Arc<dyn Deployer>> {
        self.cluster.as_ref().map(|c| c.deployer.clone())
    }
}

/// Finds the policy's data plane as it is, changing nothing (see [`Found`]). With
/// `attach_in`, a running long-lived data plane there must match the policy; `tls` is
/// the policy's certificates, checked ([`crate::run::proxy_tls`]).
pub async fn find(
    policy: &Policy,
    attach_in: Option<&std::path::Path>,
    cluster: Option<Cluster>,
    tls: Option<rampart_adapters::proxy::tls::TlsFiles>,
) -> Result<Found, RunError> {
    let mut found = Found {
        cluster: None,
        plane_tls: None,
        terminator: None,
        uncounted: None,
        live: None,
    };
    match &policy.traffic {
        Traffic::Proxy(spec) => {
            match attach_in {
                Some(state_dir) => {
                    let plane_tls = tls.as_ref().map(Into::into);
                    attach::check(&policy.service, spec, state_dir, Some(&plane_tls))?;
                    found.plane_tls = plane_tls;
                }
                None => {
                    found.terminator = match tls {
                        Some(files) => Some(
                            rampart_adapters::proxy::tls::TlsTerminator::new(files)
                                .map_err(|(_, e)| RunError::Invalid(e.to_string()))?,
                        ),
                        None => None,
                    };
                }
            }
            found.uncounted = uncounted_token(policy)?;
        }
        Traffic::Kubernetes(_) => found.cluster = Some(self::cluster(policy, cluster).await?),
        Traffic::Nginx(_) | Traffic::Haproxy(_) => {}
    }
    Ok(found)
}

/// A release taken up again by a new controller.
#[derive(Clone, Copy, Debug)]
pub struct Resumed {
    /// The weight its log last says it set (none: it logged no routes).
    pub routed: Option<rampart_core::Weight>,
    /// When its log first asked for a weight above 0 (none: it never did, so no
    /// controller can have put one in force).
    pub since: Option<rampart_core::Millis>,
}

/// Starts the policy's data plane as [`find`] found it. With `attach_in` (a state
/// directory), the embedded proxy is the service's long-lived data plane process
/// there, started if absent; without, it runs in this process and ends with it.
/// `resumed` says a release is taken up again: a router outside rampart keeps the
/// split it finds in force once the release had set its routes, and a ramped flag
/// someone turned down meanwhile is not ramped over ([`Resumed`]). The flag endpoint serves from the start (what the store
/// holds), on `flags` when the caller bound its address already ([`flag_listener`]),
/// else on the address bound here; the policy's flags are defined last, once the data
/// plane is up.
///
/// What fails here is the data plane's own start (an address in use, a process that
/// does not come up): its refusals were [`find`]'s.
pub async fn start(
    policy: &Policy,
    store: &Arc<StateStore>,
    clock: &Arc<dyn Clock>,
    attach_in: Option<&std::path::Path>,
    found: Found,
    resumed: Option<Resumed>,
    flags: Option<tokio::net::TcpListener>,
) -> Result<DataPlane, RunError> {
    let Found {
        cluster,
        plane_tls,
        terminator,
        uncounted,
        live,
    } = found;
    // The flag endpoint answers from the moment its address is bound: with the flags
    // the store holds until this release's are defined, once its data plane is up.
    let flags = match flags {
        Some(listener) => Some(listener),
        None => flag_listener(policy).await?,
    };
    let flag_endpoint = match flags {
        Some(listener) => Some(
            FlagServer::serve(listener, store.clone(), &policy.service)
                .context("the flag endpoint cannot listen")?,
        ),
        None => None,
    };
    // The release checked its lease before it got here, with awaits since: a replica
    // that lost it touches no data plane (on a shared host, the next leader's).
    store
        .may_act()
        .map_err(|e| RunError::Internal(anyhow::anyhow!(e)))?;
    let mut plane = match &policy.traffic {
        Traffic::Proxy(spec) if let Some(state_dir) = attach_in => {
            let (remote, reached) = attach::attach_telling(
                &policy.service,
                spec,
                state_dir,
                Some(plane_tls),
                live.as_ref(),
            )
            .await?;
            // A release brings a service stopped with `rampart stop` back (once its
            // data plane runs: one that did not come up leaves it stopped).
            let _ = std::fs::remove_file(
                rampart_adapters::proxy::plane::PlaneFiles::new(state_dir, &policy.service)
                    .stopped(),
            );
            remote.keep_fresh(std::time::Duration::from_millis(250));
            remote
                .set_salt(policy.strategy.ramped_flag().unwrap_or(""))
                .await
                .map_err(|e| RunError::Internal(anyhow::anyhow!(e)))?;
            // This release's own token, or none (an earlier release's no longer counts; a
            // data plane from before tokens existed has none to clear).
            match &uncounted {
                Some(token) => remote
                    .set_uncounted(token)
                    .await
                    .map_err(|e| RunError::Internal(anyhow::anyhow!(e)))?,
                None => {
                    let _ = remote.set_uncounted("").await;
                }
            }
            let router: Arc<dyn TrafficRouter> = match policy.strategy.ramped_flag() {
                None => remote.clone(),
                Some(flag) => Arc::new(
                    FlagRouter::new(
                        remote.clone(),
                        store.clone(),
                        clock.clone(),
                        &policy.service,
                        flag,
                        policy.strategy.flag_only(),
                        spec.sticky.clone(),
                    )
                    .resumed(resumed.map(|r| (r.routed, r.since))),
                ),
            };
            let entry = rampart_adapters::proxy::plane::PlaneState::load(
                &rampart_adapters::proxy::plane::PlaneFiles::new(state_dir, &policy.service)
                    .state(),
            )
            .ok()
            .flatten()
            .map_or(spec.listen, |s| s.listen);
            DataPlane {
                router,
                routes: remote.clone(),
                metrics: remote.clone(),
                counted: remote.clone(),
                entry: Some(entry),
                proxy: None,
                remote: Some(remote),
                proxy_server: None,
                flag_endpoint: None,
                deployer: None,
                running_version: None,
                reached: Some(reached),
                uncounted,
            }
        }
        Traffic::Proxy(spec) => {
            let options = ProxyOptions {
                sticky: spec.sticky.clone(),
                limits: spec.limits,
                forwarded: spec.forwarded.clone(),
                upstream: spec.upstream_protocol,
                tls: terminator,
                ..ProxyOptions::default()
            };
            let (proxy, server) = Proxy::bind(spec.listen, options)
                .await
                .with_context(|| format!("the proxy cannot listen on {}", spec.listen))?;
            if let Some(token) = &uncounted {
                proxy.set_uncounted(token);
            }
            let router: Arc<dyn TrafficRouter> = match policy.strategy.ramped_flag() {
                None => Arc::new(proxy.clone()),
                Some(flag) => {
                    proxy.set_salt(flag);
                    Arc::new(
                        FlagRouter::new(
                            Arc::new(proxy.clone()),
                            store.clone(),
                            clock.clone(),
                            &policy.service,
                            flag,
                            policy.strategy.flag_only(),
                            spec.sticky.clone(),
                        )
                        .resumed(resumed.map(|r| (r.routed, r.since))),
                    )
                }
            };
            DataPlane {
                router,
                routes: Arc::new(proxy.clone()),
                metrics: Arc::new(BuiltinMetrics::new(proxy.clone())),
                counted: Arc::new(proxy.clone()),
                entry: Some(server.local_addr()),
                proxy: Some(proxy),
                remote: None,
                proxy_server: Some(server),
                flag_endpoint: None,
                deployer: None,
                running_version: None,
                reached: None,
                uncounted,
            }
        }
        Traffic::Nginx(spec) => {
            // nginx sends its request log to a port rampart picks and renders.
            let any_port = "127.0.0.1:0".parse().map_err(anyhow::Error::from)?;
            let log = AccessLog::bind(any_port, &policy.service)
                .await
                .context("the request log receiver cannot bind a UDP port on 127.0.0.1")?;
            let router: Arc<dyn TrafficRouter> = Arc::new(NginxRouter::new(
                spec.clone(),
                &policy.service,
                log.local_addr(),
            ));
            DataPlane {
                routes: router.clone(),
                router,
                metrics: Arc::new(BuiltinMetrics::new(log.clone())),
                counted: Arc::new(log),
                proxy: None,
                remote: None,
                entry: Some(spec.listen),
                proxy_server: None,
                flag_endpoint: None,
                deployer: None,
                running_version: None,
                reached: None,
                uncounted: None,
            }
        }
        Traffic::Haproxy(spec) => {
            let log = AccessLog::bind(spec.log_listen, &spec.backend)
                .await
                .with_context(|| {
                    format!(
                        "the request log receiver cannot bind UDP {}",
                        spec.log_listen
                    )
                })?;
            let router = HaproxyRouter::new(&spec.socket, &spec.backend);
            let router: Arc<dyn TrafficRouter> =
                Arc::new(if resumed.is_some_and(|r| r.routed.is_some()) {
                    router.keeping_the_split()
                } else {
                    router
                });
            DataPlane {
                routes: router.clone(),
                router,
                metrics: Arc::new(BuiltinMetrics::new(log.clone())),
                counted: Arc::new(log),
                proxy: None,
                remote: None,
                entry: None,
                proxy_server: None,
                flag_endpoint: None,
                deployer: None,
                running_version: None,
                reached: None,
                uncounted: None,
            }
        }
        Traffic::Kubernetes(_) => {
            let Some(cluster) = cluster else {
                return Err(RunError::Internal(anyhow::anyhow!(
                    "the Kubernetes adapter was not found before the release started"
                )));
            };
            DataPlane {
                routes: cluster.router.clone(),
                router: cluster.router,
                metrics: cluster.metrics,
                counted: cluster.counted,
                proxy: None,
                remote: None,
                entry: None,
                deployer: Some(cluster.deployer),
                running_version: cluster.running_version,
                reached: None,
                uncounted: None,
                proxy_server: None,
                flag_endpoint: None,
            }
        }
    };
    define_flags(policy, store, clock.now()).await?;
    plane.flag_endpoint = flag_endpoint;
    Ok(plane)
}

/// Nothing in rampart's path counts requests on Kubernetes: the policy's metrics are
/// all Prometheus queries (the policy decoder insists), added on top of this.
#[cfg(feature = "kubernetes")]
#[derive(Debug)]
struct Uncounted;

#[cfg(feature = "kubernetes")]
impl MetricsSource for Uncounted {
    fn measure<'a>(
        &'a self,
        _: &'a rampart_core::release::MeasureWindow,
    ) -> rampart_core::ports::BoxFuture<
        'a,
        Result<rampart_core::metrics::IntervalSample, rampart_core::ports::PortError>,
    > {
        Box::pin(async { Ok(rampart_core::metrics::IntervalSample::default()) })
    }
}

#[cfg(feature = "kubernetes")]
impl Totals for Uncounted {
    fn totals(&self) -> rampart_core::metrics::IntervalSample {
        rampart_core::metrics::IntervalSample::default()
    }
}

/// The Kubernetes adapter of a release, found: one object is both the deployer and
/// the router.
pub struct ClusterPlane {
    /// Moves traffic between the Deployments (no flag ramp in front on a cluster: it
    /// is also the data plane's routes).
    pub router: Arc<dyn TrafficRouter>,
    /// Deploys, scales and promotes the Deployments.
    pub deployer: Arc<dyn Deployer>,
    /// The version the stable Deployment runs, when its image matches the policy's
    /// template.
    pub running_version: Option<String>,
    /// The canary a finished release left that users reach now: its version and share.
    pub canary_in_force: Option<(Option<String>, rampart_core::Weight)>,
    metrics: Arc<dyn MetricsSource>,
    counted: Arc<dyn Totals>,
}

impl std::fmt::Debug for ClusterPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPlane")
            .field("running_version", &self.running_version)
            .finish_non_exhaustive()
    }
}

/// Connects to the policy's cluster (`cluster`, else the kubeconfig's) and reads the
/// version the stable Deployment runs; writes nothing. Fails when the stable
/// Deployment is missing or lacks the labels rampart needs.
#[cfg(feature = "kubernetes")]
pub(crate) async fn cluster(
    policy: &Policy,
    cluster: Option<Cluster>,
) -> Result<ClusterPlane, RunError> {
    let Some((deploy, traffic)) = policy.kubernetes() else {
        return Err(RunError::Invalid(
            "`traffic.kubernetes` needs `deploy.kubernetes`".into(),
        ));
    };
    let cluster = match cluster {
        Some(Cluster(client)) => {
            rampart_kubernetes::Kubernetes::new(client, deploy.clone(), traffic.clone())
        }
        None => rampart_kubernetes::Kubernetes::connect(deploy.clone(), traffic.clone())
            .await
            .map_err(|e| RunError::Internal(anyhow::anyhow!("Kubernetes: {e}")))?,
    }
    .with_drain(policy.rollback.drain);
    let running_version = cluster
        .stable_version()
        .await
        .map_err(|e| RunError::Internal(anyhow::anyhow!("Kubernetes: {e}")))?;
    // Read for a new release's refusal only; what cannot be read here (a Service that
    // selects neither track, a route without weights) is the release's to find, and
    // never stops `rampart stop --canary` or a resumed release.
    let canary_in_force = cluster.canary_in_force().await.unwrap_or_else(|e| {
        tracing::warn!("Kubernetes: where the canary's traffic stands could not be read: {e}");
        None
    });
    let cluster = Arc::new(cluster);
    Ok(ClusterPlane {
        router: cluster.clone(),
        deployer: cluster,
        running_version,
        canary_in_force,
        metrics: Arc::new(Uncounted),
        counted: Arc::new(Uncounted),
    })
}

/// This build has no Kubernetes adapter: say how to get one (exit 2).
#[cfg(not(feature = "kubernetes"))]
pub(crate) async fn cluster(_: &Policy, _: Option<Cluster>) -> Result<ClusterPlane, RunError> {
    Err(RunError::Invalid(NO_KUBERNETES.into()))
}

/// What a build without the `kubernetes` feature says about a Kubernetes policy.
pub const NO_KUBERNETES: &str = "this policy runs on Kubernetes (`deploy.kubernetes`, `traffic.kubernetes`), but this rampart was built without Kubernetes support; build it with `cargo build --release -p rampart --features kubernetes`";

/// A fresh token when the policy's own load must not count, else `None`.
fn uncounted_token(policy: &Policy) -> Result<Option<String>, RunError> {
    let wanted = policy.analysis.load.as_ref().is_some_and(|l| !l.counts);
    if !wanted {
        return Ok(None);
    }
    Proxy::fresh_token().map(Some).ok_or_else(|| {
        RunError::Internal(anyhow::anyhow!(
            "no randomness for the token that keeps rampart's own load out of the metrics"
        ))
    })
}

/// Binds the policy's flag endpoint's address, if it names one.
pub async fn flag_listener(policy: &Policy) -> Result<Option<tokio::net::TcpListener>, RunError> {
    let Some(listen) = policy.flags.as_ref().and_then(|f| f.listen) else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("the flag endpoint cannot listen on {listen}"))?;
    Ok(Some(listener))
}

/// Defines the policy's flags in the store (what the flag endpoint serves).
async fn define_flags(
    policy: &Policy,
    store: &Arc<StateStore>,
    at: rampart_core::Millis,
) -> Result<(), RunError> {
    let Some(flags) = &policy.flags else {
        return Ok(());
    };
    store
        .define(&policy.service, &flags.define, at)
        .await
        .map_err(|e| RunError::Internal(anyhow::anyhow!(e)))
}
