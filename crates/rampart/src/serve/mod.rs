//! `rampart serve`: the long-running controller with its API.
//!
//! Owns wiring the store, the release queue, the live feed and the HTTP routes (the
//! route table, [`routes`], is the one list both the router and the tests read). Each
//! route's rules are in `api`, who may call it in `auth`, its errors in `error`, and the
//! answers' shapes in `views`. It binds to loopback unless told otherwise.

pub mod api;
pub mod auth;
pub mod error;
#[cfg(feature = "kubernetes")]
pub mod gitops;
pub mod queue;
pub mod restore;
pub mod ui;
pub mod views;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::MethodRouter;
use rampart_adapters::store::lease::{Deposed, Held, Lease};
use rampart_adapters::store::{ControlPlane, StateStore};
use rampart_core::ports::Clock;

use api::actions::Act;
use auth::Caller;

/// The API description, checked in and served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

/// The dashboard's session cookie (holds the token the user signed in with).
pub const SESSION_COOKIE: &str = "rampart_session";

/// How often the live feed looks for new release log entries.
const FEED_POLL: Duration = Duration::from_millis(250);

/// Shared by every request.
#[derive(Clone)]
pub struct App {
    /// The store, through the control plane's port: the SQL store when serving, the
    /// in-memory one in tests of the API.
    pub store: Arc<dyn ControlPlane>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Wakes the release queue after a submission.
    pub submitted: Arc<tokio::sync::Notify>,
    /// New release log entries, as JSON, for server-sent events.
    pub feed: tokio::sync::broadcast::Sender<Arc<String>>,
    /// Where submitted releases run from unless they say otherwise.
    pub workdir: PathBuf,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("workdir", &self.workdir)
            .finish_non_exhaustive()
    }
}

/// Opens the store for the CLI's server-side commands (`token`, `audit`, `serve`): the
/// state directory's SQLite file, or the one `url` names (`sqlite:PATH`, a bare path,
/// or `postgres://...` in a build with the `postgres` feature).
pub async fn open_store(
    url: Option<&str>,
    state_dir: &std::path::Path,
) -> Result<Arc<StateStore>, String> {
    let opened = match url {
        None => StateStore::open(&state_dir.join("rampart.db")).await,
        Some(url) => StateStore::open_url(url).await,
    };
    opened.map(Arc::new).map_err(|e| match url {
        None => format!("{}: {e}", state_dir.join("rampart.db").display()),
        Some(url) => format!("{}: {e}", without_password(url)),
    })
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(
            without_password("postgres://rampart:s3cret@db:5432/r"),
            "postgres://rampart:***@db:5432/r"
        );
        assert_eq!(
            without_password("postgres://db/r?user=u&password=s3cret&sslmode=disable"),
            "postgres://db/r?user=u&password=***&sslmode=disable"
        );
        assert_eq!(
            without_password("host=db password=s3cret dbname=r password=again"),
            "host=db password=*** dbname=r password=***"
        );
        assert_eq!(
            without_password("sqlite:/var/lib/r.db"),
            "sqlite:/var/lib/r.db"
        );
    }
}

/// A store URL fit for messages: any password (in the authority, a `password=`
/// parameter, or the `key=value` form) replaced by `***`.
pub fn without_password(url: &str) -> String {
    let mut out = match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) if auth.contains(':') => {
                let user = auth.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***@{host}")
            }
            _ => url.to_string(),
        },
        None => url.to_string(),
    };
    let mut from = 0;
    while let Some(at) = out[from..].find("password=") {
        let start = from + at + "password=".len();
        let end = out[start..]
            .find(['&', ' '])
            .map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "***");
        from = start + 3;
    }
    out
}

macro_rules! action {
    ($name:ident, $act:expr) => {
        async fn $name(
            State(app): State<App>,
            caller: Caller,
            Path(id): Path<String>,
            body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
        ) -> Result<(axum::http::StatusCode, axum::Json<serde_json::Value>), error::ApiError> {
            api::actions::act(app, caller, id, $act, body?).await
        }
    };
}

action!(approve, Act::Approve);
action!(promote, Act::Promote);
action!(pause, Act::Pause);
action!(resume, Act::Resume);
action!(abort, Act::Abort);
action!(rollback, Act::Rollback);

/// One route the server serves: its method, its whole path, and its handler.
#[derive(Debug)]
pub struct Route {
    /// The method.
    pub method: Method,
    /// The path, with `{param}` placeholders, as the router matches it.
    pub path: &'static str,
    handler: MethodRouter<App>,
}

impl Route {
    fn new<H, T>(method: Method, path: &'static str, handler: H) -> Route
    where
        H: Handler<T, App>,
        T: 'static,
    {
        let handler = match method {
            Method::POST => axum::routing::post(handler),
            Method::DELETE => axum::routing::delete(handler),
            _ => axum::routing::get(handler),
        };
        Route {
            method,
            path,
            handler,
        }
    }
}

/// Every route the server serves; [`router`] is built from exactly this list.
pub fn routes() -> Vec<Route> {
    use Method as M;
    vec![
        Route::new(M::GET, "/healthz", api::healthz),
        Route::new(M::GET, "/openapi.json", api::openapi),
        Route::new(M::GET, "/", ui::index),
        Route::new(M::GET, "/ui/app.js", ui::script),
        Route::new(M::GET, "/ui/app.css", ui::style),
        Route::new(M::POST, "/ui/login", ui::login),
        Route::new(M::POST, "/ui/logout", ui::logout),
        Route::new(M::GET, "/api/v1/whoami", api::whoami),
        Route::new(M::GET, "/api/v1/releases", api::releases::list_releases),
        Route::new(M::POST, "/api/v1/releases", api::releases::create_release),
        Route::new(M::GET, "/api/v1/releases/{id}", api::releases::get_release),
        Route::new(
            M::GET,
            "/api/v1/releases/{id}/events",
            api::releases::release_events,
        ),
        Route::new(
            M::GET,
            "/api/v1/releases/{id}/metrics",
            api::releases::release_metrics,
        ),
        Route::new(
            M::GET,
            "/api/v1/releases/{id}/audit",
            api::releases::release_audit,
        ),
        Route::new(M::POST, "/api/v1/releases/{id}/approve", approve),
        Route::new(M::POST, "/api/v1/releases/{id}/promote", promote),
        Route::new(M::POST, "/api/v1/releases/{id}/pause", pause),
        Route::new(M::POST, "/api/v1/releases/{id}/resume", resume),
        Route::new(M::POST, "/api/v1/releases/{id}/abort", abort),
        Route::new(M::POST, "/api/v1/releases/{id}/rollback", rollback),
        Route::new(
            M::POST,
            "/api/v1/releases/{id}/request-approval",
            api::approvals::request_approval,
        ),
        Route::new(M::GET, "/api/v1/freeze", api::freeze::get_freeze),
        Route::new(M::POST, "/api/v1/freeze", api::freeze::set_freeze),
        Route::new(
            M::POST,
            "/api/v1/policies/validate",
            api::policies::validate_policy,
        ),
        Route::new(
            M::GET,
            "/api/v1/policies/{service}",
            api::policies::get_policy,
        ),
        Route::new(M::GET, "/api/v1/services", api::services::services),
        Route::new(M::GET, "/api/v1/tokens", api::tokens::list_tokens),
        Route::new(M::POST, "/api/v1/tokens", api::tokens::create_token),
        Route::new(
            M::DELETE,
            "/api/v1/tokens/{name}",
            api::tokens::revoke_token,
        ),
        Route::new(M::GET, "/api/v1/audit/verify", api::audit::verify_audit),
        Route::new(M::GET, "/api/v1/stream", api::stream::stream),
    ]
}

/// Every route, from [`routes`]; the methods of one path are merged into one route.
pub fn router(app: App) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |r, route| r.route(route.path, route.handler))
        .fallback(api::no_route)
        .method_not_allowed_fallback(api::wrong_method)
        .with_state(app)
}

/// Follows every release's log and publishes each new entry on the feed.
async fn follow(app: App) {
    let mut cursor = app.store.log_cursor().await.unwrap_or(0);
    loop {
        tokio::time::sleep(FEED_POLL).await;
        let entries = match app.store.entries_after(cursor, 500).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("live feed: {e}");
                continue;
            }
        };
        for (at, release, entry) in entries {
            cursor = at;
            let item = serde_json::json!({
                "release": release,
                "seq": entry.seq,
                "at": entry.at,
                "events": entry.events,
            });
            // Nobody listening is fine.
            let _ = app.feed.send(Arc::new(item.to_string()));
        }
    }
}

/// Options of `rampart serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where the API listens.
    pub listen: SocketAddr,
    /// Where state and logs are kept.
    pub state_dir: PathBuf,
    /// The store URL, overriding the state directory's SQLite file.
    pub store: Option<String>,
    /// This replica's name in the leader lease.
    pub replica: Option<String>,
    /// How long a silent leader keeps the lease.
    pub lease_ttl: Duration,
    /// Set when the server runs inside another command (`rampart mcp`): it is told the
    /// address the API listens on, and status lines go to stderr (stdout is not ours).
    pub announce: Option<tokio::sync::mpsc::UnboundedSender<SocketAddr>>,
    /// The clock the server, its lease and its releases run on.
    pub clock: Arc<dyn Clock>,
    /// `--kubernetes`: watch opted-in Deployments and release what Git applies to them
    /// (only in a build with the `kubernetes` feature; the command refuses it otherwise).
    pub kubernetes: Option<KubernetesWatch>,
}

/// The options of `rampart serve --kubernetes`.
#[derive(Debug, Clone)]
pub struct KubernetesWatch {
    /// Namespaces to watch (the kubeconfig's or service account's when empty).
    pub namespaces: Vec<String>,
    /// How often the opted-in Deployments are read.
    pub interval: Duration,
}

/// One `rampart serve` per SQLite store: two would both run the release queue. The lock
/// is the operating system's, so it goes with the process, however it ends.
fn lock_sqlite_store(opts: &ServeOptions) -> Result<Option<std::fs::File>, String> {
    use rampart_adapters::store::{Location, locate};
    let db = match opts.store.as_deref().map(locate) {
        None => opts.state_dir.join("rampart.db"),
        Some(Ok(Location::Sqlite(path))) => path.to_path_buf(),
        // PostgreSQL has the lease; a bad URL is reported when the store opens.
        Some(Ok(Location::Postgres) | Err(_)) => return Ok(None),
    };
    let path = PathBuf::from(format!("{}.serve-lock", db.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "another rampart serve (or rampart mcp) runs on {}; talk to it with --server, or use a PostgreSQL store for several replicas",
            db.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("{}: {e}", path.display())),
    }
}

/// The lease replicas sharing a store campaign for.
pub const LEASE: &str = "serve";

/// How long a client has to send a request's head once its connection is open (or
/// once the previous answer was sent): a connection that never finishes one is closed,
/// so idle or hostile ones cannot pile up (none of them needs a token to connect).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once; one more is closed at once.
pub const MAX_CONNECTIONS: usize = 4096;

/// Serves `app` on `listener`, each connection within [`HEADER_TIMEOUT`] and at most
/// [`MAX_CONNECTIONS`] at once. Runs until the listener fails for good.
async fn serve_api(listener: tokio::net::TcpListener, app: Router) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors, or a connection reset before it was accepted:
            // the listener itself is fine; try again shortly.
            Err(e) => {
                tracing::debug!(error = %e, "accepting an API connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            if let Err(e) = http.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, "API connection ended");
            }
        });
    }
}

/// This replica's default name in the lease: the host's name and the process id.
fn default_replica() -> String {
    format!("{}-{}", crate::run::host_name(), std::process::id())
}

/// Acts on releases: at once with a store of its own; with a shared (PostgreSQL) store
/// only once this replica holds the leader lease, and only for as long as it does.
/// Resolves only when the lease is lost, with why.
async fn lead(
    queue: Arc<queue::Queue>,
    lease: Option<Lease>,
    token: Arc<std::sync::Mutex<Option<Held>>>,
    say: &(dyn Fn(String) + Sync),
    watch: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
) -> Deposed {
    let Some(lease) = lease else {
        if let Some(w) = watch {
            tokio::spawn(w);
        }
        queue.run().await;
        return std::future::pending().await;
    };
    say("rampart serve: standby; waiting for the leader lease".into());
    let held = lease.acquire().await;
    if let Ok(mut t) = token.lock() {
        *t = Some(held);
    }
    say(format!(
        "rampart serve: leader (fencing token {}); resuming releases in flight",
        held.token
    ));
    tokio::spawn(queue.run());
    // Only the leader starts releases, so only it watches the cluster.
    if let Some(w) = watch {
        tokio::spawn(w);
    }
    lease.hold(held).await
}

#[cfg(feature = "kubernetes")]
type Watched = rampart_kubernetes::gitops::Watched;
#[cfg(not(feature = "kubernetes"))]
type Watched = std::convert::Infallible;

/// The cluster `--kubernetes` watches, connected (kubeconfig, then the service account).
#[cfg(feature = "kubernetes")]
async fn watched(opts: &ServeOptions) -> Result<Option<Watched>, String> {
    match &opts.kubernetes {
        None => Ok(None),
        Some(k) => Watched::connect(k.namespaces.clone())
            .await
            .map(Some)
            .map_err(|e| e.to_string()),
    }
}

#[cfg(not(feature = "kubernetes"))]
async fn watched(opts: &ServeOptions) -> Result<Option<Watched>, String> {
    match &opts.kubernetes {
        None => Ok(None),
        Some(_) => Err(crate::dataplane::NO_KUBERNETES.into()),
    }
}

#[cfg(feature = "kubernetes")]
fn cluster_of(w: Option<&Watched>) -> Option<crate::dataplane::Cluster> {
    w.map(|w| crate::dataplane::Cluster(w.client()))
}

#[cfg(not(feature = "kubernetes"))]
fn cluster_of(w: Option<&Watched>) -> Option<crate::dataplane::Cluster> {
    w.map(|never| match *never {})
}

type Loop = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

#[cfg(feature = "kubernetes")]
fn watch_loop(
    watched: Option<Watched>,
    app: &App,
    opts: &ServeOptions,
    say: &(dyn Fn(String) + Sync),
) -> Option<Loop> {
    let (watched, k) = (watched?, opts.kubernetes.as_ref()?);
    say(format!(
        "rampart serve: releasing what Git applies to opted-in Deployments in {} (every {})",
        watched.namespaces().join(", "),
        rampart_core::units::format_duration(k.interval)
    ));
    let watch = gitops::Watch::new(app.clone(), watched);
    Some(Box::pin(watch.run(k.interval)))
}

#[cfg(not(feature = "kubernetes"))]
fn watch_loop(
    watched: Option<Watched>,
    _: &App,
    _: &ServeOptions,
    _: &(dyn Fn(String) + Sync),
) -> Option<Loop> {
    watched.map(|never| match never {})
}

/// Runs the server until SIGINT or SIGTERM. Releases in flight stay in the store and
/// resume when the server starts again.
pub async fn run(opts: ServeOptions) -> i32 {
    let _lock = match lock_sqlite_store(&opts) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let say = |line: String| {
        if opts.announce.is_some() {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let store = match open_store(opts.store.as_deref(), &opts.state_dir).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let listener = match tokio::net::TcpListener::bind(opts.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", opts.listen);
            return 1;
        }
    };
    let addr = listener.local_addr().unwrap_or(opts.listen);
    if !addr.ip().is_loopback() {
        eprintln!(
            "warning: serving on {addr}, beyond this machine, over plain HTTP: put a TLS terminator in front"
        );
    }
    let (feed, _) = tokio::sync::broadcast::channel(1024);
    let watched = match watched(&opts).await {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: rampart serve --kubernetes: {e}");
            return 2;
        }
    };
    let queue = queue::Queue::with_cluster(
        store.clone(),
        opts.state_dir.clone(),
        opts.clock.clone(),
        cluster_of(watched.as_ref()),
    );
    let app = App {
        submitted: queue.waker(),
        store: store.clone(),
        clock: opts.clock.clone(),
        feed,
        workdir: api::default_workdir(),
    };
    let clock = app.clock.clone();
    let lease = store.is_postgres().then(|| {
        let replica = opts.replica.clone().unwrap_or_else(default_replica);
        Lease::new(store.clone(), clock, LEASE, &replica, opts.lease_ttl)
    });
    let held = Arc::new(std::sync::Mutex::new(None));
    let watch = watch_loop(watched, &app, &opts, &say);
    let leading = lead(queue.clone(), lease.clone(), held.clone(), &say, watch);
    tokio::spawn(follow(app.clone()));
    say(format!("rampart serve: listening on http://{addr}"));
    if let Some(tx) = &opts.announce {
        let _ = tx.send(addr);
    }
    let shutdown = async {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = serve_api(listener, router(app)) => {
            if let Err(e) = r {
                eprintln!("error: {e}");
                return 1;
            }
        }
        deposed = leading => {
            // Another replica acts now (or will, once its lease time has passed):
            // stop at once, leaving releases and their processes to it.
            eprintln!("error: rampart serve: no longer the leader: {deposed}; exiting so that this replica restarts as a standby");
            return 1;
        }
        () = shutdown => {
            eprintln!("rampart serve: stopping; releases in flight resume at the next start");
            queue.stop_serving().await;
            let token = held.lock().ok().and_then(|t| *t);
            if let (Some(lease), Some(token)) = (lease, token) {
                lease.release(token).await;
            }
        }
    }
    0
}
