//! The embedded proxy as a data plane of its own: one long-lived process per service
//! address, which outlives every controller that drives it.
//!
//! Owns the data plane's files in `STATE_DIR/dataplane/` and what they mean:
//! - `SERVICE.sock`: the admin API, a Unix socket only its owner may open (the
//!   directory is 0700), which also asks for the token in `SERVICE.token` (0600);
//! - `SERVICE.json`: the routes, rewritten (atomically) at every change, so that a
//!   restarted data plane comes back with them;
//! - `SERVICE.lock`: held (`flock`) by the running data plane, with its pid, so a
//!   second one for the same service is refused while the first keeps serving;
//! - `SERVICE.handover`: where a newer data plane asks for the listening socket, which
//!   passes over (`SCM_RIGHTS`) with no connection refused or reset.
//!
//! It must not decide anything about a release: a controller sets the routes.

use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use rampart_core::policy::{IpNet, ProxyLimits, Sticky, Trust, UpstreamProtocol};
use serde::{Deserialize, Serialize};

use super::RouteTable;

/// The version of `SERVICE.json` this build writes and reads.
pub const FORMAT: u32 = 1;

/// Why a data plane cannot start, or a controller cannot reach one.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    /// A file of the data plane could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The state file does not parse: it is never reset while traffic may flow.
    #[error(
        "{path}: not a data-plane state file ({detail}); rampart will not guess the routes. Restore it from a backup, or delete it to start with no routes (users get no answer until the next release)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The state file was written by a newer rampart.
    #[error(
        "{path}: written by a newer rampart (state format {found}; this one reads {FORMAT}); run that version, or upgrade this one"
    )]
    Future {
        /// The file.
        path: PathBuf,
        /// Its format.
        found: u32,
    },
    /// Another data plane holds the service's lock.
    #[error(
        "a data plane for {service} already runs (pid {pid}, lock {path}); it keeps serving. Upgrade it in place with `rampart proxy --state-dir DIR --service {service} --take-over`, or stop it with `rampart stop`"
    )]
    Running {
        /// The service.
        service: String,
        /// The running one's pid, as it wrote it.
        pid: String,
        /// The lock file.
        path: PathBuf,
    },
    /// The hand-over of the listening socket failed.
    #[error("hand-over from the running data plane: {0}")]
    Handover(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PlaneError + '_ {
    move |source| PlaneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where one service's data plane keeps its files.
#[derive(Clone, Debug)]
pub struct PlaneFiles {
    dir: PathBuf,
    name: String,
}

impl PlaneFiles {
    /// The files of `service`'s data plane under `state_dir`.
    pub fn new(state_dir: &Path, service: &str) -> Self {
        PlaneFiles {
            dir: state_dir.join("dataplane"),
            name: crate::process::file_part(service),
        }
    }

    fn file(&self, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", self.name))
    }

    /// The admin API's socket.
    pub fn socket(&self) -> PathBuf {
        self.file("sock")
    }

    /// Where a newer data plane asks for the listening socket.
    pub fn handover(&self) -> PathBuf {
        self.file("handover")
    }

    /// The admin token.
    pub fn token(&self) -> PathBuf {
        self.file("token")
    }

    /// The persisted routes.
    pub fn state(&self) -> PathBuf {
        self.file("json")
    }

    /// The lock the running data plane holds.
    pub fn lock(&self) -> PathBuf {
        self.file("lock")
    }

    /// Present while the service is stopped on purpose (`rampart stop`): `serve` does
    /// not bring it back at start; its next release does.
    pub fn stopped(&self) -> PathBuf {
        self.file("stopped")
    }

    /// The data plane's own log (its standard output and error, when rampart starts it).
    pub fn log(&self) -> PathBuf {
        self.file("log")
    }

    /// Creates the directory, readable by its owner only.
    pub fn create_dir(&self) -> Result<(), PlaneError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&self.dir))
    }

    /// The admin token, created (random, 0600, written to a new file then linked into
    /// place, so nobody reads half of it) if there is none yet.
    pub fn ensure_token(&self) -> Result<String, PlaneError> {
        let path = self.token();
        if path.exists() {
            return self.read_token();
        }
        self.create_dir()?;
        let mut raw = [0u8; 24];
        getrandom::fill(&mut raw).map_err(|e| io(&path)(std::io::Error::other(e.to_string())))?;
        let token = hex::encode(raw);
        let tmp = path.with_extension(format!("token.{}.new", std::process::id()));
        write_private(&tmp, token.as_bytes())?;
        // Whoever links first wins; a second creator reads the winner's token.
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(token),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => self.read_token(),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The admin token; one shorter than 16 characters (an empty or damaged file) is
    /// refused, so it never lets a request through.
    pub fn read_token(&self) -> Result<String, PlaneError> {
        let path = self.token();
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let token = text.trim().to_string();
        if token.len() < 16 {
            return Err(io(&path)(std::io::Error::other(
                "the admin token is shorter than 16 characters; delete the file and restart the data plane to make a new one",
            )));
        }
        Ok(token)
    }

    /// The pid the running data plane wrote in its lock file, if any.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.lock())
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// Takes the service's lock, refusing when another data plane holds it.
    pub fn try_lock(&self, service: &str) -> Result<PlaneLock, PlaneError> {
        self.create_dir()?;
        let path = self.lock();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        let mut file = file;
        // `is_running` holds the lock shared for a moment: a start that meets only
        // such a look tries again, and only a data plane's exclusive hold refuses it.
        for _ in 0..200 {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut held) => {
                    held.set_len(0).map_err(io(&path))?;
                    writeln!(held, "{}", std::process::id()).map_err(io(&path))?;
                    held.sync_all().map_err(io(&path))?;
                    return Ok(PlaneLock { _held: held });
                }
                Err((taken, _)) => match Flock::lock(taken, FlockArg::LockSharedNonblock) {
                    Ok(looked) => {
                        file = looked
                            .unlock()
                            .map_err(|(_, e)| io(&path)(std::io::Error::from(e)))?;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err((taken, _)) => {
                        file = taken;
                        break;
                    }
                },
            }
        }
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        Err(PlaneError::Running {
            service: service.to_string(),
            pid: pid.trim().to_string(),
            path,
        })
    }

    /// Whether a data plane runs now: one holds the lock, or its admin socket answers
    /// (one that took over serves before the one it took over from lets go of the
    /// lock, and in the moment between the two nobody holds it).
    pub fn is_running(&self) -> bool {
        let locked = File::open(self.lock())
            .is_ok_and(|file| Flock::lock(file, FlockArg::LockSharedNonblock).is_err());
        locked || UnixStream::connect(self.socket()).is_ok()
    }
}

/// The lock of a running data plane; released when dropped (or the process ends).
#[derive(Debug)]
pub struct PlaneLock {
    _held: Flock<File>,
}

/// How the proxy keeps a user on one variant, as the state file spells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", content = "name", rename_all = "snake_case")]
pub enum StickyBy {
    /// Every request on its own.
    None,
    /// The client's IP address.
    ClientIp,
    /// A request header.
    Header(String),
    /// A cookie.
    Cookie(String),
}

impl From<&Sticky> for StickyBy {
    fn from(s: &Sticky) -> Self {
        match s {
            Sticky::None => StickyBy::None,
            Sticky::ClientIp => StickyBy::ClientIp,
            Sticky::Header(h) => StickyBy::Header(h.clone()),
            Sticky::Cookie(c) => StickyBy::Cookie(c.clone()),
        }
    }
}

impl From<StickyBy> for Sticky {
    fn from(s: StickyBy) -> Self {
        match s {
            StickyBy::None => Sticky::None,
            StickyBy::ClientIp => Sticky::ClientIp,
            StickyBy::Header(h) => Sticky::Header(h),
            StickyBy::Cookie(c) => Sticky::Cookie(c),
        }
    }
}

/// What a data plane persists: where it listens, how it keeps users on a variant, and
/// its routes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaneState {
    /// The file's format ([`FORMAT`]).
    pub format: u32,
    /// The service.
    pub service: String,
    /// Where users reach it.
    pub listen: SocketAddr,
    /// How users stay on one variant.
    pub sticky: StickyBy,
    /// The routes.
    pub routes: RouteTable,
    /// What one client may hold of it (`traffic.proxy.limits`); a file written before
    /// limits existed reads as the defaults.
    #[serde(default)]
    pub limits: LimitsState,
    /// TLS termination (`traffic.proxy.tls`, paths made absolute); absent for plain
    /// HTTP, as in files written before TLS existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsState>,
    /// Whose forwarding headers it believes (`traffic.proxy.forwarded.trust`); a file
    /// written before the setting existed reads as `none`.
    #[serde(default)]
    pub forwarded: TrustState,
    /// The protocol it speaks to the versions (`traffic.proxy.upstream_protocol`); a
    /// file written before the setting existed reads as `http1`.
    #[serde(default, skip_serializing_if = "UpstreamState::is_http1")]
    pub upstream_protocol: UpstreamState,
}

/// [`UpstreamProtocol`] as the state file spells it: `"http1"` or `"h2c"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamState {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge.
    H2c,
}

impl UpstreamState {
    fn is_http1(&self) -> bool {
        *self == UpstreamState::Http1
    }
}

impl From<UpstreamProtocol> for UpstreamState {
    fn from(p: UpstreamProtocol) -> Self {
        match p {
            UpstreamProtocol::Http1 => UpstreamState::Http1,
            UpstreamProtocol::H2c => UpstreamState::H2c,
        }
    }
}

impl From<UpstreamState> for UpstreamProtocol {
    fn from(s: UpstreamState) -> Self {
        match s {
            UpstreamState::Http1 => UpstreamProtocol::Http1,
            UpstreamState::H2c => UpstreamProtocol::H2c,
        }
    }
}

/// `traffic.proxy.tls` as the state file spells it: the PEM files by absolute path,
/// read again whenever they change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsState {
    /// In the policy's order.
    pub certificates: Vec<TlsCertState>,
    /// The index of the certificate for names no other answers.
    #[serde(default)]
    pub default: usize,
}

/// One certificate of [`TlsState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsCertState {
    /// The PEM certificate chain.
    pub cert: PathBuf,
    /// The PEM private key.
    pub key: PathBuf,
    /// The SNI names it answers; empty for the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// [`Trust`] as the state file spells it: `"none"`, `"all"` or
/// `{"networks": ["10.0.0.0/8", ...]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustState {
    /// Nobody.
    #[default]
    None,
    /// Every peer.
    All,
    /// Peers in these networks.
    Networks(Vec<String>),
}

impl From<&Trust> for TrustState {
    fn from(t: &Trust) -> Self {
        match t {
            Trust::None => TrustState::None,
            Trust::All => TrustState::All,
            Trust::Networks(nets) => {
                TrustState::Networks(nets.iter().map(ToString::to_string).collect())
            }
        }
    }
}

impl From<TrustState> for Trust {
    /// A network that does not parse (a hand-edited file) is left out: it trusts
    /// fewer peers, never more.
    fn from(s: TrustState) -> Self {
        match s {
            TrustState::None => Trust::None,
            TrustState::All => Trust::All,
            TrustState::Networks(nets) => {
                Trust::Networks(nets.iter().filter_map(|n| IpNet::parse(n).ok()).collect())
            }
        }
    }
}

/// [`ProxyLimits`] as the state file spells them: milliseconds and bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsState {
    /// `header_timeout`, in milliseconds.
    pub header_timeout_ms: u64,
    /// `idle_timeout`, in milliseconds.
    pub idle_timeout_ms: u64,
    /// `body_timeout`, in milliseconds; a file written before it existed reads as the
    /// default.
    #[serde(default = "default_body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// `send_timeout`, in milliseconds; a file written before it existed reads as the
    /// default.
    #[serde(default = "default_send_timeout_ms")]
    pub send_timeout_ms: u64,
    /// `max_header_bytes`.
    pub max_header_bytes: u64,
    /// `max_body_bytes`; `null` for no limit.
    pub max_body_bytes: Option<u64>,
    /// `max_connections`.
    pub max_connections: u32,
    /// `max_streams`; a file written before it existed reads as the default.
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
}

fn default_body_timeout_ms() -> u64 {
    millis(ProxyLimits::default().body_timeout)
}

fn default_send_timeout_ms() -> u64 {
    millis(ProxyLimits::default().send_timeout)
}

fn default_max_streams() -> u32 {
    ProxyLimits::default().max_streams
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Default for LimitsState {
    fn default() -> Self {
        LimitsState::from(&ProxyLimits::default())
    }
}

impl From<&ProxyLimits> for LimitsState {
    fn from(l: &ProxyLimits) -> Self {
        LimitsState {
            header_timeout_ms: millis(l.header_timeout),
            idle_timeout_ms: millis(l.idle_timeout),
            body_timeout_ms: millis(l.body_timeout),
            send_timeout_ms: millis(l.send_timeout),
            max_header_bytes: l.max_header_bytes,
            max_body_bytes: l.max_body_bytes,
            max_connections: l.max_connections,
            max_streams: l.max_streams,
        }
    }
}

impl From<LimitsState> for ProxyLimits {
    /// Values outside what a policy accepts (a hand-edited file) are brought back into
    /// range, so a data plane never starts unprotected or with a limit hyper refuses.
    fn from(s: LimitsState) -> Self {
        let hour = std::time::Duration::from_secs(3600);
        let ms = |v: u64| std::time::Duration::from_millis(v.max(1)).min(hour);
        ProxyLimits {
            header_timeout: ms(s.header_timeout_ms),
            idle_timeout: ms(s.idle_timeout_ms),
            body_timeout: ms(s.body_timeout_ms),
            send_timeout: ms(s.send_timeout_ms),
            max_header_bytes: s
                .max_header_bytes
                .clamp(ProxyLimits::MIN_HEADER_BYTES, ProxyLimits::MAX_HEADER_BYTES),
            max_body_bytes: s.max_body_bytes,
            max_connections: s.max_connections.clamp(1, ProxyLimits::MAX_CONNECTIONS),
            max_streams: s.max_streams.clamp(1, ProxyLimits::MAX_STREAMS),
        }
    }
}

impl PlaneState {
    /// Reads the state file: `None` when there is none. A file that does not parse, or
    /// that a newer rampart wrote, is an error (never silently replaced).
    pub fn load(path: &Path) -> Result<Option<PlaneState>, PlaneError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path)(e)),
        };
        let corrupt = |detail: String| PlaneError::Corrupt {
            path: path.to_path_buf(),
            detail,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        let found = value
            .get("format")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| corrupt("no `format`".into()))?;
        if found > u64::from(FORMAT) {
            return Err(PlaneError::Future {
                path: path.to_path_buf(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
            });
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| corrupt(e.to_string()))
    }

    /// Writes the state file atomically (a new file renamed over the old, both synced).
    pub fn save(&self, path: &Path) -> Result<(), PlaneError> {
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| io(path)(std::io::Error::other(e.to_string())))?;
        static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("json.{}-{n}.new", std::process::id()));
        write_private(&tmp, &text)?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(())
    }
}

/// Writes a file only its owner can read, synced.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), PlaneError> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Listens for a newer data plane asking for the listening socket.
pub fn handover_listener(files: &PlaneFiles) -> Result<UnixListener, PlaneError> {
    let path = files.handover();
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(io(&path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io(&path))?;
    Ok(listener)
}

/// What the new data plane sends back once it serves with the socket it was given.
pub const SERVING: &[u8] = b"serving\n";

/// Waits for the new data plane's [`SERVING`] on `stream`, at most `limit`; the
/// stream then carries the new one's routes (see [`Feed`], [`follow_routes`]).
pub fn await_serving(
    mut stream: UnixStream,
    limit: std::time::Duration,
) -> Result<UnixStream, PlaneError> {
    stream
        .set_read_timeout(Some(limit))
        .map_err(|e| PlaneError::Handover(e.to_string()))?;
    let mut got = [0u8; 8];
    stream.read_exact(&mut got).map_err(|e| {
        PlaneError::Handover(format!(
            "the new data plane did not confirm that it serves ({e})"
        ))
    })?;
    if got == SERVING {
        Ok(stream)
    } else {
        Err(PlaneError::Handover(
            "the new data plane did not confirm that it serves".into(),
        ))
    }
}

/// How long a data plane that took over waits for the one it took over from to put a
/// change of the routes in effect; one that does not answer within it is let go.
pub const FOLLOW_LIMIT: std::time::Duration = std::time::Duration::from_millis(250);

/// What a data plane that took over asks the one it took over from, while that one
/// drains: how many requests it has in flight to a variant, or to some endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InFlight {
    /// To every endpoint of a variant.
    Variant(rampart_core::Variant),
    /// To any of these endpoints.
    Endpoints(Vec<SocketAddr>),
}

/// How an [`InFlight`] question starts on the stream (a route table is a JSON object).
const ASK: &str = "in-flight ";

/// What a follower answers to a line it cannot read (a question of a newer rampart):
/// it goes on following.
const UNKNOWN: &str = "?";

/// The answer to an [`InFlight`] question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    /// Requests in flight there now, after every route change sent before.
    Count(u64),
    /// No answer for now: it answered late (the answer is read and dropped before
    /// the next exchange), or does not know the question.
    NotNow,
}

/// The stream to the data plane this one took over from, while it drains: route
/// changes and [`InFlight`] questions, each answered by one line, in order.
///
/// Guarantees: an answer is never taken for another's (one given up on is owed, and
/// read and dropped before the next exchange); an error means the stream is of no
/// more use (gone, or out of step), and the caller lets it go.
#[derive(Debug)]
pub struct Feed {
    stream: UnixStream,
    /// Answers still to come for exchanges given up on.
    owed: u32,
}

/// The feed failed on `e`: it is of no more use.
fn lost(e: std::io::Error) -> PlaneError {
    PlaneError::Handover(format!("the draining data plane: {e}"))
}

/// One exchange's answer line, or why there is none.
enum Answer {
    Line(String),
    /// Not within the limit: owed.
    Late,
}

impl Feed {
    /// The feed over `stream` (from [`await_serving`]).
    pub fn new(stream: UnixStream) -> Feed {
        Feed { stream, owed: 0 }
    }

    /// Tells the data plane this one took over from (still draining its connections)
    /// the routes in effect now, and waits until it has put them in effect too, within
    /// [`FOLLOW_LIMIT`]: a request on a connection it still serves never goes where
    /// the routes no longer send any. An error (late, too) lets it go.
    pub fn send_routes(&mut self, table: &super::RouteTable) -> Result<(), PlaneError> {
        let mut line =
            serde_json::to_vec(table).map_err(|e| PlaneError::Handover(e.to_string()))?;
        line.push(b'\n');
        match self.exchange(&line)? {
            Answer::Line(ok) if ok == "ok" => Ok(()),
            Answer::Line(_) => Err(PlaneError::Handover(
                "the draining data plane did not put the routes in effect".into(),
            )),
            Answer::Late => Err(PlaneError::Handover(format!(
                "the draining data plane did not confirm the routes within {} ms",
                FOLLOW_LIMIT.as_millis()
            ))),
        }
    }

    /// Asks the data plane this one took over from how many requests it has in flight
    /// to `what`, after every change of the routes sent before, within
    /// [`FOLLOW_LIMIT`]. An error means it has gone or is out of step.
    pub fn ask_in_flight(&mut self, what: &InFlight) -> Result<Asked, PlaneError> {
        let mut line = ASK.as_bytes().to_vec();
        serde_json::to_writer(&mut line, what).map_err(|e| PlaneError::Handover(e.to_string()))?;
        line.push(b'\n');
        match self.exchange(&line)? {
            Answer::Line(n) if n == UNKNOWN => Ok(Asked::NotNow),
            Answer::Line(n) => n.parse().map(Asked::Count).map_err(|_| {
                PlaneError::Handover("the draining data plane answered something else".into())
            }),
            Answer::Late => Ok(Asked::NotNow),
        }
    }

    /// Writes `line` and reads its answer, the answers owed read and dropped first:
    /// a quarter of [`FOLLOW_LIMIT`] for those, a quarter for the write, half for the
    /// answer.
    fn exchange(&mut self, line: &[u8]) -> Result<Answer, PlaneError> {
        while self.owed > 0 {
            match self.read_line(FOLLOW_LIMIT / 4)? {
                Some(_) => self.owed -= 1,
                None => return Ok(Answer::Late),
            }
        }
        self.stream
            .set_write_timeout(Some(FOLLOW_LIMIT / 4))
            .map_err(lost)?;
        // A write cut short leaves half a line: out of step for good.
        self.stream.write_all(line).map_err(lost)?;
        self.owed += 1;
        match self.read_line(FOLLOW_LIMIT / 2)? {
            Some(answer) => {
                self.owed = 0;
                Ok(Answer::Line(answer))
            }
            None => Ok(Answer::Late),
        }
    }

    /// One answer line (at most 64 bytes), `None` if none came within `limit`; a read
    /// cut short by the limit is finished by the next one. An error when the stream
    /// ended or the answer is too long.
    fn read_line(&mut self, limit: std::time::Duration) -> Result<Option<String>, PlaneError> {
        use std::io::ErrorKind::{TimedOut, WouldBlock};
        self.stream.set_read_timeout(Some(limit)).map_err(lost)?;
        let mut answer = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => {
                    return Err(PlaneError::Handover(
                        "the draining data plane has gone".into(),
                    ));
                }
                Ok(_) if byte[0] == b'\n' => {
                    return Ok(Some(String::from_utf8_lossy(&answer).into_owned()));
                }
                Ok(_) if answer.len() < 64 => answer.push(byte[0]),
                Ok(_) => {
                    return Err(PlaneError::Handover(
                        "the draining data plane answered something else".into(),
                    ));
                }
                // Bytes of this line already read belong to it: an owed answer is
                // read to its end next time.
                Err(e) if matches!(e.kind(), WouldBlock | TimedOut) => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(lost(e)),
            }
        }
    }
}

/// In a data plane that handed its socket over: puts in effect every table the one
/// that took over sends (see [`Feed::send_routes`]) and answers every [`InFlight`]
/// question with `in_flight`'s count (see [`Feed::ask_in_flight`]), until it closes
/// the stream.
/// Blocking: run it on a thread of its own.
pub fn follow_routes(
    stream: UnixStream,
    mut apply: impl FnMut(&super::RouteTable),
    mut in_flight: impl FnMut(&InFlight) -> u64,
) {
    use std::io::BufRead;
    let _ = stream.set_read_timeout(None);
    let Ok(mut ack) = stream.try_clone() else {
        return;
    };
    let mut lines = std::io::BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // A line it cannot read (a question or a table of a newer rampart) is answered
        // as unknown, and it goes on following.
        let answer = if let Some(asked) = line.strip_prefix(ASK) {
            match serde_json::from_str::<InFlight>(asked) {
                Ok(what) => format!("{}\n", in_flight(&what)),
                Err(_) => format!("{UNKNOWN}\n"),
            }
        } else {
            match serde_json::from_str::<super::RouteTable>(&line) {
                Ok(table) => {
                    apply(&table);
                    "ok\n".to_string()
                }
                Err(_) => format!("{UNKNOWN}\n"),
            }
        };
        if ack.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Reads one hand-over request from `stream` and checks its token (a line).
pub fn read_handover_request(stream: &mut UnixStream, token: &str) -> Result<(), PlaneError> {
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .map_err(|e| PlaneError::Handover(e.to_string()))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 256 {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(PlaneError::Handover(e.to_string())),
        }
    }
    let presented = String::from_utf8_lossy(&line);
    let presented = presented.strip_prefix("take-over ").unwrap_or("");
    if super::admin::same(presented.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        let _ = stream.write_all(b"refused: wrong token\n");
        Err(PlaneError::Handover(
            "a hand-over request without the data plane's token was refused".into(),
        ))
    }
}

/// Sends the listening socket over `stream` (after [`read_handover_request`]).
pub fn send_listener(stream: &UnixStream, listener: BorrowedFd<'_>) -> Result<(), PlaneError> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds = [listener.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"ok")];
    sendmsg::<()>(
        stream.as_fd().as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| PlaneError::Handover(format!("sending the listening socket: {e}")))?;
    Ok(())
}

/// Asks the running data plane for its listening socket. It goes on accepting until
/// this process writes [`SERVING`] on the returned stream; then it stops, and its open
/// connections drain while this process serves new ones.
pub fn take_listener(
    files: &PlaneFiles,
    token: &str,
) -> Result<(std::net::TcpListener, UnixStream), PlaneError> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let path = files.handover();
    let mut stream = UnixStream::connect(&path).map_err(|e| {
        PlaneError::Handover(format!(
            "{}: {e} (is a data plane of this rampart version running?)",
            path.display()
        ))
    })?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .map_err(|e| PlaneError::Handover(e.to_string()))?;
    stream
        .write_all(format!("take-over {token}\n").as_bytes())
        .map_err(|e| PlaneError::Handover(e.to_string()))?;
    let mut buf = [0u8; 64];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let (bytes, fd) = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| PlaneError::Handover(format!("receiving the listening socket: {e}")))?;
        let mut fd = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    fd = fds.first().copied();
                }
            }
        }
        (msg.bytes, fd)
    };
    let Some(fd) = fd else {
        let said = String::from_utf8_lossy(&buf[..bytes]).trim().to_string();
        return Err(PlaneError::Handover(if said.is_empty() {
            "the running data plane sent no socket".into()
        } else {
            said
        }));
    };
    // SAFETY: `fd` arrived in this process by SCM_RIGHTS a moment ago: the kernel made
    // it for us and nothing else in this process knows or owns it.
    #[allow(unsafe_code)]
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let listener = std::net::TcpListener::from(owned);
    listener
        .set_nonblocking(true)
        .map_err(|e| PlaneError::Handover(e.to_string()))?;
    Ok((listener, stream))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rampart_core::{Variant, Weight};

    /// The feed between a data plane that took over and the one draining: a question
    /// is answered after every route table sent before it is in effect, with the count
    /// the draining side has for what was asked; a line it cannot read is answered as
    /// unknown and it goes on following; a closed stream is an error.
    #[test]
    fn the_feed_answers_questions_in_order_with_the_routes() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut feed = Feed::new(ours);
        let applied = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Weight>::new()));
        let seen = applied.clone();
        let follower = std::thread::spawn(move || {
            follow_routes(
                theirs,
                |t| seen.lock().unwrap().push(t.weight),
                |what| match what {
                    // The canary's count: how many tables were applied before it.
                    InFlight::Variant(Variant::Canary) => seen.lock().unwrap().len() as u64,
                    InFlight::Variant(Variant::Stable) => 0,
                    InFlight::Endpoints(e) => 100 + e.len() as u64,
                },
            );
        });
        let mut table = state().routes;
        feed.send_routes(&table).unwrap();
        table.weight = Weight::ZERO;
        feed.send_routes(&table).unwrap();
        let asked = InFlight::Variant(Variant::Canary);
        assert_eq!(feed.ask_in_flight(&asked).unwrap(), Asked::Count(2));
        let endpoints = InFlight::Endpoints(table.stable.clone());
        assert_eq!(feed.ask_in_flight(&endpoints).unwrap(), Asked::Count(101));
        // A question of a newer rampart: unknown, and the routes still followed.
        feed.stream
            .write_all(b"in-flight {\"upstream\": \"nope\"}\n")
            .unwrap();
        assert_eq!(
            feed.read_line(FOLLOW_LIMIT).unwrap().as_deref(),
            Some(UNKNOWN)
        );
        table.weight = Weight::FULL;
        feed.send_routes(&table).unwrap();
        assert_eq!(
            *applied.lock().unwrap(),
            vec![
                Weight::from_basis_points(1250).unwrap(),
                Weight::ZERO,
                Weight::FULL
            ]
        );
        drop(feed.stream.shutdown(std::net::Shutdown::Write));
        follower.join().unwrap();
        assert!(feed.ask_in_flight(&asked).is_err(), "it has gone");
    }

    /// An answer that comes after its limit is owed: read and dropped before the next
    /// exchange, never taken for that one's (a late count read as a route change's
    /// confirmation, or the other way round), and the stream is kept.
    #[test]
    fn a_late_answer_is_dropped_not_taken_for_the_next_one() {
        use std::io::BufRead;
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut feed = Feed::new(ours);
        let asked = InFlight::Variant(Variant::Canary);
        // Nobody answers within the limit.
        assert_eq!(feed.ask_in_flight(&asked).unwrap(), Asked::NotNow);
        let mut lines = std::io::BufReader::new(theirs.try_clone().unwrap());
        let mut line = String::new();
        lines.read_line(&mut line).unwrap();
        assert!(line.starts_with(ASK), "{line:?}");
        // The late answer, then a follower that answers the next line at once.
        let mut answers = theirs;
        answers.write_all(b"7\n").unwrap();
        let follower = std::thread::spawn(move || {
            let mut next = String::new();
            lines.read_line(&mut next).unwrap();
            answers.write_all(b"3\n").unwrap();
            next
        });
        assert_eq!(feed.ask_in_flight(&asked).unwrap(), Asked::Count(3));
        assert!(follower.join().unwrap().starts_with(ASK));
    }

    fn state() -> PlaneState {
        PlaneState {
            format: FORMAT,
            service: "checkout".into(),
            listen: "127.0.0.1:8080".parse().unwrap(),
            sticky: StickyBy::Header("x-user".into()),
            routes: RouteTable {
                stable: vec!["127.0.0.1:9001".parse().unwrap()],
                canary: vec!["127.0.0.1:9002".parse().unwrap()],
                weight: Weight::from_basis_points(1250).unwrap(),
                matches: Vec::new(),
                salt: String::new(),
                uncounted: String::new(),
            },
            limits: LimitsState::from(&ProxyLimits {
                max_connections: 77,
                max_streams: 250,
                ..ProxyLimits::default()
            }),
            tls: Some(TlsState {
                certificates: vec![TlsCertState {
                    cert: "/etc/checkout/tls.pem".into(),
                    key: "/etc/checkout/tls.key".into(),
                    names: vec!["checkout.example.com".into()],
                }],
                default: 0,
            }),
            forwarded: TrustState::Networks(vec!["10.0.0.0/8".into(), "::1/128".into()]),
            upstream_protocol: UpstreamState::H2c,
        }
    }

    #[test]
    fn state_survives_a_save_and_a_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        assert_eq!(PlaneState::load(&path).unwrap(), None);
        state().save(&path).unwrap();
        assert_eq!(PlaneState::load(&path).unwrap(), Some(state()));
        // A file from before limits existed reads as the defaults.
        let mut old = serde_json::to_value(state()).unwrap();
        old.as_object_mut().unwrap().remove("limits");
        old.as_object_mut().unwrap().remove("forwarded");
        old.as_object_mut().unwrap().remove("upstream_protocol");
        std::fs::write(&path, old.to_string()).unwrap();
        let loaded = PlaneState::load(&path).unwrap().unwrap();
        assert_eq!(ProxyLimits::from(loaded.limits), ProxyLimits::default());
        // And one from before the upstream protocol, as HTTP/1.1.
        assert_eq!(
            UpstreamProtocol::from(loaded.upstream_protocol),
            UpstreamProtocol::Http1
        );
        // And one from before the forwarding trust, as trusting nobody.
        assert_eq!(Trust::from(loaded.forwarded), Trust::None);
        // And one with limits but from before `body_timeout`, as its default.
        let mut old = serde_json::to_value(state()).unwrap();
        old["limits"]
            .as_object_mut()
            .unwrap()
            .remove("body_timeout_ms");
        old["limits"].as_object_mut().unwrap().remove("max_streams");
        std::fs::write(&path, old.to_string()).unwrap();
        let loaded = PlaneState::load(&path).unwrap().unwrap();
        assert_eq!(
            ProxyLimits::from(loaded.limits).body_timeout,
            ProxyLimits::default().body_timeout
        );
        assert_eq!(ProxyLimits::from(loaded.limits).max_connections, 77);
        assert_eq!(
            ProxyLimits::from(loaded.limits).max_streams,
            ProxyLimits::default().max_streams
        );
        let nets = Trust::from(state().forwarded);
        assert!(nets.trusts("10.9.9.9".parse().unwrap()) && !nets.trusts("::2".parse().unwrap()));
        state().save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_or_future_state_file_is_refused_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        for text in [
            "{\"format\": 1, \"service\": ",
            "[]",
            "{\"service\": \"x\"}",
        ] {
            std::fs::write(&path, text).unwrap();
            let e = PlaneState::load(&path).unwrap_err();
            assert!(matches!(e, PlaneError::Corrupt { .. }), "{text}: {e}");
        }
        let mut future = serde_json::to_value(state()).unwrap();
        future["format"] = 2.into();
        std::fs::write(&path, future.to_string()).unwrap();
        let e = PlaneState::load(&path).unwrap_err();
        assert!(e.to_string().contains("newer rampart"), "{e}");
        // The refused file is still there, as it was.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), future.to_string());
    }

    #[test]
    fn a_second_lock_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let files = PlaneFiles::new(dir.path(), "checkout");
        assert!(!files.is_running());
        let held = files.try_lock("checkout").unwrap();
        assert!(files.is_running());
        let e = files.try_lock("checkout").unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(held);
        assert!(!files.is_running());
        files.try_lock("checkout").unwrap();
    }

    #[test]
    fn a_data_plane_whose_admin_socket_answers_runs_while_no_one_holds_the_lock() {
        // After a take-over the new process serves (its admin socket answers) before
        // the old one lets go of the lock, and in the moment between the two nobody
        // holds it: a controller looking then must not start a third.
        let dir = tempfile::tempdir().unwrap();
        let files = PlaneFiles::new(dir.path(), "checkout");
        files.create_dir().unwrap();
        let admin = UnixListener::bind(files.socket()).unwrap();
        assert!(files.is_running());
        // A socket file nobody listens on any more (a crash) is not a data plane.
        drop(admin);
        assert!(files.socket().exists());
        assert!(!files.is_running());
    }

    #[test]
    fn the_listening_socket_passes_to_a_process_with_the_token_only() {
        let dir = tempfile::tempdir().unwrap();
        let files = PlaneFiles::new(dir.path(), "checkout");
        files.create_dir().unwrap();
        let token = files.ensure_token().unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let handover = handover_listener(&files).unwrap();
        let serve = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut s, _) = handover.accept().unwrap();
                if read_handover_request(&mut s, &token).is_ok() {
                    send_listener(&s, tcp.as_fd()).unwrap();
                }
            }
        });
        let wrong = take_listener(&files, "not-the-token").unwrap_err();
        assert!(wrong.to_string().contains("wrong token"), "{wrong}");
        let (taken, _confirm) = take_listener(&files, &files.read_token().unwrap()).unwrap();
        serve.join().unwrap();
        assert_eq!(taken.local_addr().unwrap(), addr);
        // It is the same socket: a connection to the address is accepted through it.
        let _client = std::net::TcpStream::connect(addr).unwrap();
        taken.set_nonblocking(false).unwrap();
        taken.accept().unwrap();
    }
}
