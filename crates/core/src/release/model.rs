//! The state of one release and what one step makes of it: its phase, its decision,
//! the audit trail and the transition a step returns. Data and its plain readings:
//! it must not decide anything (that is the step functions' job).

use super::protocol::{Action, Effect};
use crate::judge::{Evidence, MetricReading, Verdict};
use crate::metrics::{Histogram, IntervalSample};
use crate::units::{Millis, Weight};

/// Where a release is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Not started.
    Pending,
    /// Pre-release gates are running; nothing is deployed.
    Gating,
    /// Starting the stable and canary versions; the canary has no traffic.
    Deploying,
    /// Checking the new version (blue-green preview) before any user reaches it.
    Previewing,
    /// Canary steps: weight set, baking, analysed every interval.
    Progressing,
    /// At an approval point: traffic holds where it is until someone other than the
    /// initiator approves, or the wait times out (which rolls back).
    AwaitingApproval,
    /// All traffic moving to the new version, then the old one stops.
    Promoting,
    /// All traffic on the new version; post-release checks pending, the previous
    /// version still running so traffic can go back at once (except where
    /// [`Policy::previous_stopped_at_full`](crate::Policy::previous_stopped_at_full)
    /// says why it is not).
    Verifying,
    /// All traffic on the new version, still analysed for `post_release.watch` against
    /// the previous version's measurements from before the switch; the previous
    /// version still runs so a failure switches back at once (except where
    /// [`Policy::previous_stopped_at_full`](crate::Policy::previous_stopped_at_full)
    /// says why it is not: the switch back then starts it again first).
    Watching,
    /// Promoted; the previous version kept for a switch back until a timer ends,
    /// running (an instant one) unless
    /// [`Policy::previous_stopped_at_full`](crate::Policy::previous_stopped_at_full)
    /// says why not.
    KeepingPrevious,
    /// Traffic moving back to stable, canary stopping, stable being verified.
    RollingBack,
    /// Done: the new version serves all traffic. Terminal.
    Succeeded,
    /// Done: stable serves all traffic and was verified healthy. Terminal.
    RolledBack,
    /// Stopped where it stood; a human must act. Never moves traffic by itself. Terminal.
    Halted,
    /// Stopped before anything was deployed (a gate failed, or it was aborted). Terminal.
    Blocked,
    /// Applying the release's database migrations; nothing is deployed yet.
    Migrating,
    /// A release that shipped non-backward-compatible migrations failed: no automatic
    /// code rollback (the old code would meet the new schema); a human decides. Holds
    /// traffic where it was. Terminal.
    Escalated,
}

impl Phase {
    /// Whether the release is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Succeeded
                | Phase::RolledBack
                | Phase::Halted
                | Phase::Blocked
                | Phase::Escalated
        )
    }

    /// `snake_case` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Gating => "gating",
            Phase::Deploying => "deploying",
            Phase::Previewing => "previewing",
            Phase::AwaitingApproval => "awaiting_approval",
            Phase::Progressing => "progressing",
            Phase::Promoting => "promoting",
            Phase::Verifying => "verifying",
            Phase::Watching => "watching",
            Phase::KeepingPrevious => "keeping_previous",
            Phase::RollingBack => "rolling_back",
            Phase::Succeeded => "succeeded",
            Phase::RolledBack => "rolled_back",
            Phase::Halted => "halted",
            Phase::Blocked => "blocked",
            Phase::Migrating => "migrating",
            Phase::Escalated => "escalated",
        }
    }
}

/// How a finished release ended, as the CLI contract names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// The new version serves all traffic.
    Promoted,
    /// Stable serves all traffic.
    RolledBack,
    /// A human must act.
    Halted,
    /// A non-backward-compatible migration shipped; a human must act.
    Escalated,
    /// Never started: a gate, freeze or window stopped it.
    Blocked,
}

impl OutcomeKind {
    /// The process exit code of `rampart run`, `demo` and `replay`.
    pub fn exit_code(self) -> i32 {
        match self {
            OutcomeKind::Promoted => 0,
            OutcomeKind::RolledBack => 3,
            OutcomeKind::Halted | OutcomeKind::Escalated => 4,
            OutcomeKind::Blocked => 5,
        }
    }

    /// `snake_case` name.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Promoted => "promoted",
            OutcomeKind::RolledBack => "rolled_back",
            OutcomeKind::Halted => "halted",
            OutcomeKind::Escalated => "escalated",
            OutcomeKind::Blocked => "blocked",
        }
    }
}

/// The decision that ends a release, made once and never repeated.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// What was decided.
    pub kind: DecisionKind,
    /// Why, in words.
    pub reason: String,
    /// When, on the controller's clock.
    pub at: Millis,
    /// Who decided: `rampart`, or the person or system that asked.
    #[serde(default = "rampart")]
    pub by: String,
}

fn rampart() -> String {
    "rampart".into()
}

/// What a decision chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// Send everything to the new version.
    Promote,
    /// Send everything back to stable.
    Rollback,
    /// Stop and page.
    Halt,
    /// Do not start.
    Block,
    /// Hand over to a human.
    Escalate,
}

/// One line of the audit trail.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuditEvent {
    /// When, on the controller's clock.
    pub at: Millis,
    /// Seconds since the release started.
    pub t_s: f64,
    /// A stable, `snake_case` event name.
    pub kind: String,
    /// Who caused it: `rampart` or the person or system named in the input.
    pub actor: String,
    /// What happened and why.
    pub message: String,
    /// The canary weight after the event.
    pub weight: Weight,
    /// Metric readings, for analysis events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readings: Vec<MetricReading>,
    /// What a person may do about it, for each interface to render its own way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instead: Option<crate::instead::Instead>,
}

/// The full state of one release.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Release {
    /// Unique id.
    pub id: String,
    /// The version being released.
    pub version: String,
    /// The version that was serving before, if any.
    pub stable: Option<String>,
    /// When the release started.
    pub started_at: Millis,
    /// Where it is.
    pub phase: Phase,
    /// The canary weight the router has confirmed.
    pub weight: Weight,
    /// The current canary step (index into the policy's steps).
    pub step: usize,
    /// When the current step's weight took effect; `None` while it is being set.
    pub step_started_at: Option<Millis>,
    /// When the next measurement is due.
    pub next_analysis_at: Option<Millis>,
    /// Where the last measurement's window ended, so that the next one starts there.
    /// Unset until the first measurement and after a restart (the counters restarted
    /// with the controller): the next window is then the current interval.
    #[serde(default)]
    pub measured_until: Option<Millis>,
    /// Where the latest window read ended, kept across restarts: no window starts
    /// before it, so a source is never asked for the same time twice, even by a
    /// controller whose clock is behind the one before it.
    #[serde(default)]
    pub read_until: Option<Millis>,
    /// When the current wait (post-release wait, keeping the previous version) ends.
    #[serde(default)]
    pub timer: Option<Millis>,
    /// Rolling: stable replicas confirmed in service.
    #[serde(default)]
    pub stable_replicas: u32,
    /// Rolling: new-version replicas confirmed in service.
    #[serde(default)]
    pub canary_replicas: u32,
    /// The class of the database migrations this release shipped, once applied.
    #[serde(default)]
    pub migration_class: Option<crate::migrations::Class>,
    /// Automatic rollbacks of the service in the cap window before this release.
    #[serde(default)]
    pub prior_automatic_rollbacks: u32,
    /// Who started the release.
    #[serde(default)]
    pub initiator: String,
    /// The class of the migrations the release will apply, classified beforehand.
    #[serde(default)]
    pub planned_migrations: Option<crate::migrations::Class>,
    /// What the current approval point guards, when it is not a canary step.
    #[serde(default)]
    pub approving: Option<PreApproval>,
    /// When the release window the release is holding for opens: set while it holds
    /// short of 100 % outside a window, analysis going on.
    #[serde(default)]
    pub window_hold: Option<Millis>,
    /// Set once the first step was put in force: a wait for all traffic at once that
    /// ends then goes on to the next step, not back to the first.
    #[serde(default)]
    pub steps_begun: bool,
    /// Set once the previous version is being stopped, the promotion's last step:
    /// past it nothing switches back to it (it is going, or gone).
    #[serde(default)]
    pub releasing_previous: bool,
    /// When the current approval point began (an approval asked before it was meant
    /// for an earlier one).
    #[serde(default)]
    pub awaiting_since: Option<Millis>,
    /// A human approved going to 100 % outside a release window. It lifts release
    /// windows, never a calendar freeze (see `freeze_lifted`).
    #[serde(default)]
    pub window_attended: bool,
    /// A human approved starting outside the release windows: that attends the
    /// release through the closed time it started in, up to this instant (the next
    /// opening). A release still running when a later closed time comes holds short
    /// of 100 % again, since nobody said they would be there then.
    #[serde(default)]
    pub attended_until: Option<Millis>,
    /// An operator asked for the rollback while its level 1 (flags off) was being
    /// put in force: once the flags are off, it goes on to the traffic without
    /// waiting to see whether they were enough.
    #[serde(default)]
    pub hurried_by: Option<String>,
    /// The previous version did not come back after a restart past the switch:
    /// nothing to switch back to, so no switch back is offered, and a failure (or an
    /// operator's rollback) halts and pages instead.
    #[serde(default)]
    pub previous_lost: bool,
    /// A hotfix whose approval during a freeze was given: the freeze does not hold it.
    #[serde(default)]
    pub freeze_lifted: bool,
    /// Who paused the release, while it is paused: no step advances.
    #[serde(default)]
    pub paused: Option<String>,
    /// The rollback level reached: 1 flags off, 2 traffic back to stable, 3 the new
    /// version reverted. The release stops at the first level that restores health.
    #[serde(default)]
    pub rollback_level: Option<u8>,
    /// The one action being waited for.
    pub pending: Option<Action>,
    /// Actions to issue after `pending` succeeds (used to re-establish the world on
    /// resume).
    pub queued: Vec<Action>,
    /// An operator's approval or promotion taken while a restarted controller starts
    /// the versions again (`pending` a deploy or a scale): applied once that chain
    /// is done, never in its place. Absent from releases saved before it existed.
    #[serde(default)]
    pub deferred: Option<super::protocol::Input>,
    /// Consecutive failing intervals, per metric in policy order.
    pub failure_streaks: Vec<u32>,
    /// Sequential judges' evidence, per metric in policy order.
    pub evidence: Vec<Evidence>,
    /// The previous version's measurements over the analysis before all traffic moved
    /// (its side of every interval, counts metrics included): what a watch after the
    /// switch judges the new version against.
    #[serde(default)]
    pub baseline: Option<IntervalSample>,
    /// Threshold judges' intervals pooled so far because they held fewer than
    /// `min_samples` requests, per metric in policy order: (the intervals as one, how
    /// many).
    #[serde(default)]
    pub pooled: Vec<Option<(IntervalSample, u32)>>,
    /// Stable's time to headers over every analysed interval (the sequential latency
    /// null).
    pub stable_latency: Histogram,
    /// Stable's total time over every analysed interval (the null of
    /// `latency_total_pXX`). Absent from releases saved before it existed.
    #[serde(default)]
    pub stable_latency_total: Histogram,
    /// Canary requests over every analysed interval since the evidence was last
    /// started afresh (the release's start, rollback level 1's check). Informational:
    /// each sequential judge gates on the requests it tested (`Evidence::tested`).
    pub canary_seen: u64,
    /// Consecutive inconclusive intervals.
    pub inconclusive_streak: u32,
    /// Consecutive intervals without canary traffic.
    pub no_data_streak: u32,
    /// Intervals analysed so far.
    pub intervals: u32,
    /// The verdict of the last analysed interval.
    pub last_verdict: Option<Verdict>,
    /// The decision that ends the release, once made.
    pub decision: Option<Decision>,
    /// The Alertmanager silence held for the release, from its start until it is
    /// expired after the end (policy `silences`).
    #[serde(default)]
    pub silence: Option<SilenceHold>,
}

/// The release's Alertmanager silence, as its answers recorded it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SilenceHold {
    /// Alertmanager's id of it, once this run of the controller got one.
    pub id: Option<String>,
    /// When it lapses unless renewed: the last hold asked for.
    pub until: Millis,
    /// When to renew it; `None` once the release is over and it is being expired.
    pub renew_at: Option<Millis>,
}

impl Default for Release {
    fn default() -> Self {
        Release {
            id: String::new(),
            version: String::new(),
            stable: None,
            started_at: 0,
            phase: Phase::Pending,
            weight: Weight::ZERO,
            step: 0,
            step_started_at: None,
            next_analysis_at: None,
            measured_until: None,
            read_until: None,
            timer: None,
            stable_replicas: 0,
            canary_replicas: 0,
            migration_class: None,
            prior_automatic_rollbacks: 0,
            initiator: String::new(),
            planned_migrations: None,
            approving: None,
            window_hold: None,
            steps_begun: false,
            releasing_previous: false,
            awaiting_since: None,
            window_attended: false,
            attended_until: None,
            hurried_by: None,
            previous_lost: false,
            freeze_lifted: false,
            paused: None,
            rollback_level: None,
            pending: None,
            queued: Vec::new(),
            deferred: None,
            failure_streaks: Vec::new(),
            evidence: Vec::new(),
            pooled: Vec::new(),
            baseline: None,
            stable_latency: Histogram::default(),
            stable_latency_total: Histogram::default(),
            canary_seen: 0,
            inconclusive_streak: 0,
            no_data_streak: 0,
            intervals: 0,
            last_verdict: None,
            decision: None,
            silence: None,
        }
    }
}

/// An approval asked for before anything runs, rather than at a canary step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreApproval {
    /// A hotfix during a freeze.
    Hotfix,
    /// Breaking database migrations.
    Migrations,
    /// Started outside a release window: waits for the next one (or a human).
    Window,
    /// About to switch all traffic at once outside a release window: waits for the next
    /// one (or a human).
    FullTraffic,
}

impl PreApproval {
    /// Whether nothing is deployed yet while waiting for this approval.
    pub(super) fn before_anything(self) -> bool {
        !matches!(self, PreApproval::FullTraffic)
    }
}

/// The result of one step: the new state, what to do, and what to record.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// The state after the input.
    pub state: Release,
    /// Effects to perform, in order. At most one is an [`Effect::Do`].
    pub effects: Vec<Effect>,
    /// Audit events to append.
    pub events: Vec<AuditEvent>,
}

impl Transition {
    /// Whether the input changed nothing (a stale answer or an idle tick). Such inputs
    /// need not be persisted.
    pub fn is_noop(&self, before: &Release) -> bool {
        self.effects.is_empty() && self.events.is_empty() && self.state == *before
    }
}

impl Release {
    /// Whether a traffic change toward the canary is decided and not yet answered (in
    /// flight, or queued behind the versions a resume re-establishes): the router may
    /// have it in force already, put there by a controller that died before logging
    /// the answer.
    pub fn weight_asked(&self) -> bool {
        std::iter::once(&self.pending)
            .flatten()
            .chain(&self.queued)
            .any(|a| matches!(a, Action::SetWeight { weight, .. } if *weight > Weight::ZERO))
    }

    /// Whether the approval this release awaits is one a calendar freeze refuses
    /// (unless a hotfix's approval lifted it): the hold at 100 % outside the release
    /// window, a start outside the window, a move to all traffic at once, and breaking
    /// migrations (irreversible, so never applied while nothing may change).
    pub fn approval_needs_no_freeze(&self) -> bool {
        let holding = self.phase == Phase::Progressing && self.window_hold.is_some();
        !self.freeze_lifted
            && (holding
                || matches!(
                    self.approving,
                    Some(PreApproval::Window | PreApproval::FullTraffic | PreApproval::Migrations)
                ))
    }

    /// Whether all traffic is on the new version (the watch after the switch, a step
    /// or a switch at 100 %): stable serves nothing, so the previous version's side of
    /// an interval is its baseline from before, and flags off (rollback level 1) has
    /// nothing at the same time to be verified against.
    pub fn stable_idle(&self) -> bool {
        self.phase == Phase::Watching || self.weight == Weight::FULL
    }

    /// Whether the transition from `before` to this state started an analysis window
    /// afresh (the first, a new step's, the watch's after promotion, the check's after
    /// flags off): the next measurement reads from the transition's time, and what a
    /// source counted before it belongs to no window (see
    /// [`MetricsSource::open_window`](crate::ports::MetricsSource::open_window)).
    pub fn opened_window(&self, before: &Release) -> bool {
        self.measured_until.is_none()
            && self.next_analysis_at.is_some()
            && self.next_analysis_at != before.next_analysis_at
    }

    /// When the controller must feed a [`Input::Tick`](super::Input::Tick) next, if it is waiting on time.
    pub fn wake_at(&self) -> Option<Millis> {
        match (self.phase, &self.pending) {
            (Phase::Progressing | Phase::RollingBack | Phase::Watching, None) => {
                self.next_analysis_at
            }
            (Phase::Verifying | Phase::KeepingPrevious | Phase::AwaitingApproval, None) => {
                self.timer
            }
            _ => None,
        }
    }

    /// When the controller must feed a [`Input::Tick`](super::Input::Tick) to renew the
    /// release's silence, whatever else it waits for (an action in flight included).
    pub fn silence_renewal_at(&self) -> Option<Millis> {
        self.silence.as_ref().and_then(|s| s.renew_at)
    }

    /// The final outcome, once the release is over.
    pub fn outcome(&self) -> Option<OutcomeKind> {
        match self.phase {
            Phase::Succeeded => Some(OutcomeKind::Promoted),
            Phase::RolledBack => Some(OutcomeKind::RolledBack),
            Phase::Halted => Some(OutcomeKind::Halted),
            Phase::Blocked => Some(OutcomeKind::Blocked),
            Phase::Escalated => Some(OutcomeKind::Escalated),
            _ => None,
        }
    }
}
