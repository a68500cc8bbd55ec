//! Ports: the small traits through which the controller reaches the world.
//!
//! Owns the contracts between the runtime and the adapters. Each trait is a few methods
//! returning boxed futures, so core stays free of any async runtime while adapters can
//! be chosen at run time (`Arc<dyn TrafficRouter>`). It must not contain behaviour.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use crate::metrics::IntervalSample;
use crate::policy::{Gate, RouteMatch};
use crate::release::{AuditEvent, GateResult, Input, MeasureWindow, OutcomeKind, Variant};
use crate::units::{Millis, Weight};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A failure reported by an adapter, in words fit for the audit trail, and what kind
/// of failure it is for the few callers that must react to one in particular.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PortError(pub String, PortErrorKind);

/// What kind of failure a [`PortError`] is. Most are [`PortErrorKind::Other`]: a caller
/// branches on the kind, never on the words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PortErrorKind {
    /// Anything a caller does not tell apart.
    #[default]
    Other,
    /// What was to be created exists already (a release id that is taken).
    AlreadyExists,
    /// What was named does not exist (no such release).
    NotFound,
    /// This process may no longer act: another one holds the lease it acted under.
    Fenced,
}

impl PortError {
    /// Wraps anything displayable, as [`PortErrorKind::Other`].
    pub fn new(msg: impl std::fmt::Display) -> Self {
        PortError(msg.to_string(), PortErrorKind::Other)
    }

    /// Wraps anything displayable as a failure of a kind callers tell apart.
    pub fn with_kind(kind: PortErrorKind, msg: impl std::fmt::Display) -> Self {
        PortError(msg.to_string(), kind)
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> PortErrorKind {
        self.1
    }
}

/// The controller's only source of time.
///
/// Assumptions: `now` never goes backwards.
pub trait Clock: Send + Sync {
    /// Milliseconds since an arbitrary, fixed epoch.
    fn now(&self) -> Millis;
    /// Resolves at or after `at`.
    fn sleep_until(&self, at: Millis) -> BoxFuture<'_, ()>;
    /// [`Clock::now`] in microseconds, for measurements finer than a millisecond; a
    /// clock that knows only milliseconds gives them times 1,000.
    fn now_micros(&self) -> u64 {
        self.now().saturating_mul(1000)
    }
}

impl std::fmt::Debug for dyn Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock(now: {})", self.now())
    }
}

/// What a deployment produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// Where the version accepts traffic.
    pub endpoints: Vec<SocketAddr>,
    /// Replicas beyond the requested count, or of another version that still answered,
    /// still running until trimmed: take them out of the router and drain them first.
    pub retired: Vec<SocketAddr>,
    /// A line for the audit trail (pid, port, adopted or started).
    pub detail: String,
}

/// Runs versions of the service.
///
/// Guarantees required of implementations: every method is idempotent. `deploy` of a
/// version already running and ready adopts it instead of starting a second copy;
/// `stop` of a version that is not running succeeds.
pub trait Deployer: Send + Sync {
    /// Starts (or adopts) `version` as `variant` and waits until it is ready. Replicas
    /// it does not keep that may still serve (beyond the count, or of another version)
    /// are reported `retired`, still running: the caller takes them out of rotation,
    /// drains them, then trims.
    fn deploy<'a>(
        &'a self,
        variant: Variant,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Deployment, PortError>>;
    /// Ensures `replicas` ready replicas of `version` (starting what is missing) and
    /// reports any beyond that count as retired, without stopping them yet.
    fn scale<'a>(
        &'a self,
        variant: Variant,
        version: &'a str,
        replicas: u32,
    ) -> BoxFuture<'a, Result<Deployment, PortError>>;
    /// Stops the replicas beyond the first `replicas`.
    fn trim(&self, variant: Variant, replicas: u32) -> BoxFuture<'_, Result<String, PortError>>;
    /// Stops `variant` gracefully, then forcefully.
    fn stop(&self, variant: Variant) -> BoxFuture<'_, Result<String, PortError>>;
    /// Checks that `variant` is running and ready, waiting at most `timeout`.
    fn verify(
        &self,
        variant: Variant,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<String, PortError>>;
}

/// Splits traffic between stable and canary.
///
/// Guarantees required of implementations: a weight change is atomic and effective for
/// the next request; requests in flight are not dropped.
pub trait TrafficRouter: Send + Sync {
    /// Points `variant` at these endpoints.
    fn set_backends<'a>(
        &'a self,
        variant: Variant,
        endpoints: &'a [SocketAddr],
    ) -> BoxFuture<'a, Result<(), PortError>>;
    /// Sets the canary's share and the rules that send matching requests to the canary
    /// whatever the weight (replacing earlier rules), in one atomic change, and returns
    /// the weight now in effect, read back.
    fn set_weight<'a>(
        &'a self,
        weight: Weight,
        matches: &'a [RouteMatch],
    ) -> BoxFuture<'a, Result<Weight, PortError>>;
    /// Waits until `variant` has no requests in flight, at most `timeout`.
    fn drain(&self, variant: Variant, timeout: Duration) -> BoxFuture<'_, Result<(), PortError>>;
    /// Waits until these endpoints (no longer routed) have no requests in flight.
    fn drain_endpoints<'a>(
        &'a self,
        endpoints: &'a [SocketAddr],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), PortError>>;
}

/// Measures both variants.
pub trait MetricsSource: Send + Sync {
    /// Measures both variants over `window` (from the state machine's
    /// [`Action::Measure`](crate::release::Action::Measure)).
    ///
    /// Assumptions: sources that read stored series (Prometheus) query `window`'s
    /// range and versions; sources that count as requests pass (rampart's own data
    /// path) report what they counted since the previous call, which is the window
    /// because the controller measures only when asked, one window after the other.
    fn measure<'a>(
        &'a self,
        window: &'a MeasureWindow,
    ) -> BoxFuture<'a, Result<IntervalSample, PortError>>;

    /// A measurement window starts at `at`: a new step, the watch after promotion,
    /// the check after a rollback switched flags off. The time before it is read by no
    /// window (an approval wait of hours at the weight before, the flags still on).
    ///
    /// Sources that count as requests pass forget what they counted until now, so the
    /// next measurement is the window's alone; sources that query stored series read
    /// the window's range and need nothing (the default). Best effort: a source that
    /// cannot reach its counters now leaves them, and the next measurement reads the
    /// time before too.
    fn open_window(&self, at: Millis) -> BoxFuture<'_, ()> {
        let _ = at;
        Box::pin(async {})
    }

    /// The window a resumed controller opens again, mid-step: a source that kept
    /// counting while no controller ran, and knows where the last measurement ended,
    /// keeps that count (what the versions served meanwhile is judged); any other
    /// opens a fresh window, as [`MetricsSource::open_window`] does (the default).
    fn resume_window(&self, at: Millis) -> BoxFuture<'_, ()> {
        self.open_window(at)
    }

    /// Checks, before anything is deployed, that the source can read at all: its
    /// credentials are there, its provider accepts them, its program exists. Each
    /// result is a pre-release gate (named after the provider), so a misconfigured
    /// source blocks the release before any traffic moves instead of turning every
    /// interval into no data. The default has nothing to check.
    fn check(&self) -> BoxFuture<'_, Vec<GateResult>> {
        Box::pin(async { Vec::new() })
    }
}

/// Runs pre-release gates.
pub trait GateRunner: Send + Sync {
    /// Runs one gate. A gate that cannot run has failed.
    fn run<'a>(&'a self, gate: &'a Gate) -> BoxFuture<'a, GateResult>;

    /// Runs a gate that must never run beside another run of it (a migration
    /// command), even one a controller that died left running: it waits for that run
    /// to end first, within the gate's timeout. By default, as [`GateRunner::run`].
    fn run_alone<'a>(&'a self, gate: &'a Gate) -> BoxFuture<'a, GateResult> {
        self.run(gate)
    }
}

/// One notice about a release, for people and paging systems.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Notice {
    /// What happened.
    pub kind: crate::release::NoticeKind,
    /// Whether a human must act now.
    pub page: bool,
    /// The service.
    pub service: String,
    /// The release id.
    pub release: String,
    /// The version being released.
    pub version: String,
    /// The version serving before, if any.
    pub stable: Option<String>,
    /// The canary weight now.
    pub weight: Weight,
    /// What happened, in words.
    pub message: String,
    /// What a person may do about it, for the hook to render its own way.
    pub instead: Option<crate::instead::Instead>,
    /// When, on the controller's clock.
    pub at: Millis,
}

/// Tells people what happened.
pub trait Notifier: Send + Sync {
    /// Delivers a notice. Failures are logged, never fatal to the release.
    fn notify<'a>(&'a self, notice: &'a Notice) -> BoxFuture<'a, ()>;
}

/// Holds an Alertmanager silence over a release's alerts while it runs (the state
/// machine's [`SilenceOp`](crate::release::SilenceOp)s).
///
/// Guarantees required of implementations: both methods are idempotent, and a release
/// has at most one silence: `hold` adopts the one a previous run of the release left
/// and expires those other releases of the service left; `expire` of a release that
/// has none succeeds. Each call ends within a bounded time.
pub trait Silencer: Send + Sync {
    /// Silences the release's alerts from `from` until `until`, creating its silence or
    /// extending the one it has, and returns the silence's id.
    fn hold<'a>(
        &'a self,
        release: &'a str,
        version: &'a str,
        from: Millis,
        until: Millis,
    ) -> BoxFuture<'a, Result<String, PortError>>;
    /// Expires the release's silence.
    fn expire<'a>(&'a self, release: &'a str) -> BoxFuture<'a, Result<(), PortError>>;
}

/// A release as the store keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseRecord {
    /// Unique id.
    pub id: String,
    /// Service name.
    pub service: String,
    /// The version being released.
    pub version: String,
    /// The policy text the release started with; a resumed release keeps using it.
    pub policy: String,
    /// When it was created.
    pub created_at: Millis,
    /// The outcome, once finished.
    pub outcome: Option<OutcomeKind>,
}

/// One persisted input and the audit events it produced.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredInput {
    /// Position in the release's log, from 0, without gaps.
    pub seq: u64,
    /// When it was applied.
    pub at: Millis,
    /// The input.
    pub input: Input,
    /// Audit events produced by the transition.
    pub events: Vec<AuditEvent>,
}

/// A request from an operator to an unfinished release, delivered through the store so
/// it reaches whichever controller is driving the release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorCommand {
    /// What is asked.
    pub kind: CommandKind,
    /// Who asked.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// Roll back even after non-backward-compatible migrations.
    pub force: bool,
    /// When it was asked.
    pub at: Millis,
}

/// What an operator asks of a running release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    /// Roll back now.
    Rollback,
    /// Approve the current approval point.
    Approve,
    /// Hold the release at its current step.
    Pause,
    /// Let a paused release advance again.
    Resume,
    /// Promote now: all traffic to the new version.
    Promote,
}

impl CommandKind {
    /// Every kind, for parsers and documentation.
    pub const ALL: [CommandKind; 5] = [
        CommandKind::Rollback,
        CommandKind::Approve,
        CommandKind::Pause,
        CommandKind::Resume,
        CommandKind::Promote,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Rollback => "rollback",
            CommandKind::Approve => "approve",
            CommandKind::Pause => "pause",
            CommandKind::Resume => "resume",
            CommandKind::Promote => "promote",
        }
    }

    /// The kind with this stored name; `None` for a name this version does not know.
    pub fn parse(name: &str) -> Option<CommandKind> {
        CommandKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The input this request feeds the release.
    pub fn input(self, command: &OperatorCommand) -> crate::release::Input {
        use crate::release::Input;
        let actor = command.actor.clone();
        match self {
            CommandKind::Rollback => Input::Abort {
                actor,
                reason: command.reason.clone(),
                force: command.force,
            },
            CommandKind::Approve => Input::Approved {
                by: actor,
                asked_at: Some(command.at),
            },
            CommandKind::Pause => Input::Pause {
                actor,
                reason: command.reason.clone(),
            },
            CommandKind::Resume => Input::Unpause { actor },
            CommandKind::Promote => Input::Promote {
                actor,
                reason: command.reason.clone(),
                frozen: None,
            },
        }
    }
}

/// Who froze (or unfroze), why, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Freeze {
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: Millis,
}

/// Durable release state: releases and their append-only input logs.
///
/// Guarantees required of implementations: `append` is durable when it returns; an
/// append at a `seq` that already exists fails (so two controllers can never both
/// record a decision); at most one unfinished release per service.
pub trait Store: Send + Sync {
    /// Records a new release. Fails if the service has an unfinished release.
    fn create<'a>(&'a self, release: &'a ReleaseRecord) -> BoxFuture<'a, Result<(), PortError>>;
    /// Appends one input to a release's log.
    fn append<'a>(
        &'a self,
        release_id: &'a str,
        entry: &'a StoredInput,
    ) -> BoxFuture<'a, Result<(), PortError>>;
    /// A release and its whole log, in order.
    fn load<'a>(
        &'a self,
        release_id: &'a str,
    ) -> BoxFuture<'a, Result<(ReleaseRecord, Vec<StoredInput>), PortError>>;
    /// Checks, before a controller acts on a release's log again (a resume), that
    /// every entry is what the store's audit trail recorded, so that a forged or edited
    /// entry is refused instead of acted on. A store without an audit trail has nothing
    /// to check.
    fn check_log<'a>(&'a self, release_id: &'a str) -> BoxFuture<'a, Result<(), PortError>> {
        let _ = release_id;
        Box::pin(async { Ok(()) })
    }
    /// Whether this process may still act on releases: not once it is a replica that
    /// does not hold (or could not renew in time) the leader lease. Checked, asking
    /// nothing of the database, right before a change outside the store (a migration,
    /// a silence, a data plane's settings). A store no lease fences always may.
    fn may_act(&self) -> Result<(), PortError> {
        Ok(())
    }
    /// The service's unfinished release, if any.
    fn active<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Option<ReleaseRecord>, PortError>>;
    /// Marks a release finished; `automatic_rollback` says rampart itself decided to roll
    /// it back (what the rollback cap counts).
    fn finish<'a>(
        &'a self,
        release_id: &'a str,
        outcome: OutcomeKind,
        version_now_serving: Option<&'a str>,
        automatic_rollback: bool,
    ) -> BoxFuture<'a, Result<(), PortError>>;
    /// Automatic rollbacks of a service finished at or after `since`.
    fn automatic_rollbacks<'a>(
        &'a self,
        service: &'a str,
        since: Millis,
    ) -> BoxFuture<'a, Result<u32, PortError>>;
    /// Freezes a service (or every service with `None`), or lifts the freeze, and
    /// audits who did it and why.
    fn set_freeze<'a>(
        &'a self,
        scope: Option<&'a str>,
        freeze: bool,
        by: &'a Freeze,
    ) -> BoxFuture<'a, Result<(), PortError>>;
    /// The freeze that applies to a service, if any (its own, or the global one).
    fn freeze<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Option<Freeze>, PortError>>;
    /// Queues an operator request for the service's unfinished release and returns that
    /// release's id. Fails when the service has no unfinished release.
    fn push_command<'a>(
        &'a self,
        service: &'a str,
        command: &'a OperatorCommand,
    ) -> BoxFuture<'a, Result<String, PortError>>;
    /// The releases that have requests not taken yet (one query for every release a
    /// process drives, instead of one per release).
    fn releases_with_requests(&self) -> BoxFuture<'_, Result<Vec<String>, PortError>>;
    /// The oldest queued request for a release that no recorded input answers yet,
    /// with its queue id. It stays queued until the input it becomes is appended with
    /// [`Store::append_answering`] (or, when it changes nothing, dropped with
    /// [`Store::drop_command`]), in that write's own transaction: a controller that
    /// dies, is deposed, or fails to record it leaves it to the next one, and one that
    /// recorded it never hands it out again.
    fn next_command<'a>(
        &'a self,
        release_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<(u64, OperatorCommand)>, PortError>>;
    /// [`Store::append`], marking queued request `command` (from
    /// [`Store::next_command`]) answered in the same transaction.
    fn append_answering<'a>(
        &'a self,
        release_id: &'a str,
        entry: &'a StoredInput,
        command: u64,
    ) -> BoxFuture<'a, Result<(), PortError>>;
    /// Marks queued request `command` answered without an input: it changed nothing.
    fn drop_command<'a>(
        &'a self,
        release_id: &'a str,
        command: u64,
    ) -> BoxFuture<'a, Result<(), PortError>>;
    /// The version the service last finished on (promoted, or kept by a rollback).
    fn serving_version<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, PortError>>;
    /// Records, durably and in the audit trail, that one migration file of a release
    /// started or was applied (migrations run file by file), so that a controller
    /// taking the release up again never runs a file a second time.
    fn mark_migration<'a>(
        &'a self,
        release_id: &'a str,
        file: &'a str,
        mark: MigrationMark,
        at: Millis,
    ) -> BoxFuture<'a, Result<(), PortError>>;
    /// The migration marks recorded for a release, oldest first: (file, mark).
    fn migration_marks<'a>(
        &'a self,
        release_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, MigrationMark)>, PortError>>;
}

/// What a controller recorded of one migration file it ran for a release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationMark {
    /// About to run: a file started and never applied ran when a controller stopped,
    /// and whether it changed the database is unknown.
    Started,
    /// Its command succeeded.
    Applied,
}

impl MigrationMark {
    /// The audit trail's name for it.
    pub fn action(self) -> &'static str {
        match self {
            MigrationMark::Started => "migration_started",
            MigrationMark::Applied => "migration_applied",
        }
    }

    /// The mark an audit action records, if it is one.
    pub fn from_action(action: &str) -> Option<MigrationMark> {
        [MigrationMark::Started, MigrationMark::Applied]
            .into_iter()
            .find(|m| m.action() == action)
    }
}

/// A change to one flag, and who made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagChange {
    /// The flag.
    pub name: String,
    /// The new ramp, if it changes.
    pub ramp: Option<Weight>,
    /// The new default, if it changes.
    pub default: Option<bool>,
    /// Who.
    pub actor: String,
    /// Why.
    pub reason: String,
    /// When.
    pub at: Millis,
}

/// The built-in feature-flag store, per service.
///
/// Guarantees required of implementations: every change is durable and audited when it
/// returns; a flag the policy never defined cannot be changed.
pub trait FlagStore: Send + Sync {
    /// Creates the policy's flags that do not exist yet (default from the policy, ramp
    /// 0) and refreshes every defined flag's allowlist, at `at`: a changed allowlist
    /// (who has the flag on) is audited like any flag change. Existing defaults and
    /// ramps are runtime state and are kept.
    fn define<'a>(
        &'a self,
        service: &'a str,
        defs: &'a [crate::flags::FlagDef],
        at: crate::units::Millis,
    ) -> BoxFuture<'a, Result<(), PortError>>;
    /// Every flag of a service, by name.
    fn flags<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Vec<crate::flags::FlagState>, PortError>>;
    /// Changes a flag and returns its new state.
    fn set_flag<'a>(
        &'a self,
        service: &'a str,
        change: &'a FlagChange,
    ) -> BoxFuture<'a, Result<crate::flags::FlagState, PortError>>;
}
