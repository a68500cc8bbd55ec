//! The release state machine: `step(policy, state, input, now) -> transition`.
//!
//! Owns every decision a release makes: when to deploy, move traffic, measure, advance,
//! promote, roll back or halt. It is a pure function of its inputs, so replaying the
//! persisted inputs rebuilds the same state. It must not perform I/O or read a clock:
//! the controller executes the returned [`Action`]s and feeds their results back.
//!
//! Protocol: a release has at most one outstanding action ([`Release::pending`]). An
//! input that answers a different action than the pending one is stale and ignored.

use std::time::Duration;

use crate::judge::{self, Evidence, MetricReading, Verdict};
use crate::metrics::Histogram;
use crate::metrics::IntervalSample;
use crate::policy::{EscalationAction, Judge, Policy, RouteMatch};
use crate::units::{Millis, Weight};

pub use crate::notice::NoticeKind;

/// Which copy of the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// The version users had before this release.
    Stable,
    /// The version being released.
    Canary,
}

impl Variant {
    /// `stable` or `canary`.
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Stable => "stable",
            Variant::Canary => "canary",
        }
    }
}

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
    /// version still running so traffic can go back at once.
    Verifying,
    /// Promoted; the previous version kept running for an instant switch back until a
    /// timer ends.
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

/// Something the controller must do and report back on.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Run the pre-release gates. Answered by [`Input::GatesChecked`].
    RunGates,
    /// Start a version (or adopt it if already running) and wait for readiness, then
    /// register it with the traffic router at weight unchanged. Answered by
    /// [`Input::Deployed`]. Idempotent.
    Deploy {
        /// Which copy.
        variant: Variant,
        /// Which version.
        version: String,
    },
    /// Set the canary's share of traffic. Answered by [`Input::TrafficSet`] or
    /// [`Input::TrafficFailed`]. Idempotent.
    SetWeight {
        /// New canary weight.
        weight: Weight,
        /// Requests sent to the canary whatever the weight (replaces earlier rules).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        matches: Vec<RouteMatch>,
    },
    /// Measure both variants since the last measurement. Answered by
    /// [`Input::Measured`] or [`Input::MeasureFailed`].
    Measure,
    /// Drain and stop a version. Answered by [`Input::Stopped`]. Idempotent.
    Stop {
        /// Which copy.
        variant: Variant,
    },
    /// Check that stable is healthy after a rollback. Answered by
    /// [`Input::StableVerified`].
    VerifyStable,
    /// Run exactly `replicas` replicas of a variant (starting missing ones, draining and
    /// stopping extra ones) and route to all of them. Answered by [`Input::Scaled`].
    /// Idempotent.
    Scale {
        /// Which copy.
        variant: Variant,
        /// Which version.
        version: String,
        /// How many replicas.
        replicas: u32,
    },
    /// Apply the release's database migrations. Answered by [`Input::Migrated`].
    RunMigrations,
    /// Run checks against the new version. Answered by [`Input::ChecksDone`].
    RunChecks {
        /// Which checks.
        stage: CheckStage,
    },
    /// Rollback level 1: switch these feature flags off for everyone outside their
    /// allowlists (ramp 0, default off). Answered by [`Input::FlagsOff`]. Idempotent.
    FlagsOff {
        /// The flags.
        flags: Vec<String>,
    },
}

/// Which checks against the new version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStage {
    /// The strategy's preview checks, before any user reaches the new version.
    Preview,
    /// The post-release checks, after promotion.
    PostRelease,
}

/// What the state machine asks of the world.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Perform an action and report its result.
    Do(Action),
    /// Tell people. Fire and forget.
    Notify {
        /// What happened, for the comms cadence.
        kind: NoticeKind,
        /// Whether a human must act now.
        page: bool,
        /// The message.
        message: String,
    },
}

/// The result of one gate.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GateResult {
    /// The gate's name.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
}

/// Everything that can happen to a release. Inputs are persisted, in order, before
/// their effects run; replaying them through [`step`] rebuilds the state exactly.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Input {
    /// Begin a release.
    Start {
        /// Unique release id.
        release_id: String,
        /// The version to release.
        version: String,
        /// The version currently serving, if any. Without one, the release is an
        /// initial deployment: there is nothing to compare with or roll back to.
        stable: Option<String>,
        /// Automatic rollbacks of this service within the policy's cap window before
        /// this release (0 without a cap).
        #[serde(default)]
        automatic_rollbacks: u32,
        /// Who started the release (an approver must be someone else).
        #[serde(default)]
        initiator: String,
        /// The class of the migrations the release will apply, classified beforehand.
        #[serde(default)]
        planned_migrations: Option<crate::migrations::Class>,
        /// Set when the release is a hotfix started during a freeze: why. It needs an
        /// approval before anything runs.
        #[serde(default)]
        hotfix: Option<String>,
    },
    /// Someone approved the release at its current approval point.
    Approved {
        /// Who.
        by: String,
    },
    /// The controller restarted and is taking the release up again.
    Resumed,
    /// Answer to [`Action::RunGates`].
    GatesChecked {
        /// One result per gate, in policy order.
        results: Vec<GateResult>,
    },
    /// Answer to [`Action::Deploy`].
    Deployed {
        /// Which copy.
        variant: Variant,
        /// Whether it is running and ready.
        ok: bool,
        /// What happened.
        detail: String,
    },
    /// Answer to [`Action::SetWeight`]: the router now sends `weight` to the canary.
    TrafficSet {
        /// The weight now in effect.
        weight: Weight,
    },
    /// Answer to [`Action::SetWeight`]: the router refused.
    TrafficFailed {
        /// What went wrong.
        detail: String,
    },
    /// Time passed. Carries nothing: `now` is the step's argument.
    Tick,
    /// Answer to [`Action::Measure`].
    Measured {
        /// Both variants over the interval.
        sample: IntervalSample,
    },
    /// Answer to [`Action::Measure`]: the metrics source failed. Never a pass.
    MeasureFailed {
        /// What went wrong.
        detail: String,
    },
    /// Answer to [`Action::Stop`].
    Stopped {
        /// Which copy.
        variant: Variant,
        /// Whether it stopped cleanly.
        ok: bool,
        /// What happened.
        detail: String,
    },
    /// Answer to [`Action::VerifyStable`].
    StableVerified {
        /// Whether stable is healthy.
        healthy: bool,
        /// What was seen.
        detail: String,
    },
    /// Answer to [`Action::RunMigrations`].
    Migrated {
        /// Whether every migration applied.
        ok: bool,
        /// The class of what was shipped (classified before it ran).
        class: crate::migrations::Class,
        /// What happened.
        detail: String,
        /// Reviewer annotations that marked statements safe, for the audit trail.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        annotations: Vec<String>,
    },
    /// Answer to [`Action::Scale`].
    Scaled {
        /// Which copy.
        variant: Variant,
        /// The replica count asked for.
        replicas: u32,
        /// Whether exactly that many run, ready and routed.
        ok: bool,
        /// What happened.
        detail: String,
    },
    /// Answer to [`Action::RunChecks`].
    ChecksDone {
        /// Which checks.
        stage: CheckStage,
        /// One result per check, in policy order.
        results: Vec<GateResult>,
    },
    /// Answer to [`Action::FlagsOff`].
    FlagsOff {
        /// Whether every flag is off.
        ok: bool,
        /// What happened.
        detail: String,
    },
    /// An operator holds the release at its current step: analysis goes on (a failure
    /// still rolls back), but no step advances until [`Input::Unpause`].
    Pause {
        /// Who.
        actor: String,
        /// Why.
        reason: String,
    },
    /// An operator lets a paused release advance again.
    Unpause {
        /// Who.
        actor: String,
    },
    /// A human promotes the release now: all traffic to the new version, skipping the
    /// remaining steps and approval points. Someone other than the initiator, and never
    /// during a freeze.
    Promote {
        /// Who.
        actor: String,
        /// Why.
        reason: String,
    },
    /// A person or system asked to stop the release and roll back.
    Abort {
        /// Who asked.
        actor: String,
        /// Why.
        reason: String,
        /// Roll the code back even after non-backward-compatible migrations (a human
        /// who has repaired the data says so).
        #[serde(default)]
        force: bool,
    },
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
    /// A human approved going to 100 % outside a release window.
    #[serde(default)]
    pub window_attended: bool,
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
    /// Consecutive failing intervals, per metric in policy order.
    pub failure_streaks: Vec<u32>,
    /// Sequential judges' evidence, per metric in policy order.
    pub evidence: Vec<Evidence>,
    /// Stable's latency over every analysed interval (the sequential latency null).
    pub stable_latency: Histogram,
    /// Canary requests over every analysed interval.
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
            timer: None,
            stable_replicas: 0,
            canary_replicas: 0,
            migration_class: None,
            prior_automatic_rollbacks: 0,
            initiator: String::new(),
            planned_migrations: None,
            approving: None,
            window_hold: None,
            window_attended: false,
            paused: None,
            rollback_level: None,
            pending: None,
            queued: Vec::new(),
            failure_streaks: Vec::new(),
            evidence: Vec::new(),
            stable_latency: Histogram::default(),
            canary_seen: 0,
            inconclusive_streak: 0,
            no_data_streak: 0,
            intervals: 0,
            last_verdict: None,
            decision: None,
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
    fn before_anything(self) -> bool {
        !matches!(self, PreApproval::FullTraffic)
    }
}

/// How long a hotfix during a freeze waits for its approval.
const HOTFIX_APPROVAL_MS: Millis = 3_600_000;

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
    /// When the controller must feed a [`Input::Tick`] next, if it is waiting on time.
    pub fn wake_at(&self) -> Option<Millis> {
        match (self.phase, &self.pending) {
            (Phase::Progressing | Phase::RollingBack, None) => self.next_analysis_at,
            (Phase::Verifying | Phase::KeepingPrevious | Phase::AwaitingApproval, None) => {
                self.timer
            }
            _ => None,
        }
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

    /// Rebuilds a release from its persisted inputs.
    pub fn replay<'a>(
        policy: &Policy,
        inputs: impl IntoIterator<Item = (&'a Input, Millis)>,
    ) -> Release {
        inputs
            .into_iter()
            .fold(Release::default(), |state, (input, at)| {
                step(policy, &state, input, at).state
            })
    }
}

fn ms(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Builds one transition: a mutable copy of the state plus what to emit.
struct Builder<'a> {
    policy: &'a Policy,
    now: Millis,
    s: Release,
    effects: Vec<Effect>,
    events: Vec<AuditEvent>,
}

impl Builder<'_> {
    fn event(&mut self, kind: &str, actor: &str, message: String) {
        self.event_with(kind, actor, message, Vec::new());
    }

    fn event_with(
        &mut self,
        kind: &str,
        actor: &str,
        message: String,
        readings: Vec<MetricReading>,
    ) {
        let t_ms = self.now.saturating_sub(self.s.started_at);
        self.events.push(AuditEvent {
            at: self.now,
            t_s: t_ms as f64 / 1000.0,
            kind: kind.to_string(),
            actor: actor.to_string(),
            message,
            weight: self.s.weight,
            readings,
        });
    }

    fn act(&mut self, action: Action) {
        self.s.pending = Some(action.clone());
        self.effects.push(Effect::Do(action));
    }

    fn notify(&mut self, kind: NoticeKind, message: String) {
        let page = matches!(
            kind,
            NoticeKind::Approval | NoticeKind::Halted | NoticeKind::Escalated
        );
        self.effects.push(Effect::Notify {
            kind,
            page,
            message,
        });
    }

    fn decide(&mut self, kind: DecisionKind, reason: String) {
        // A promotion can still be undone (post-release checks, an operator while the
        // previous version runs); any other decision is final.
        let open = match &self.s.decision {
            None => true,
            Some(d) => d.kind == DecisionKind::Promote && kind != DecisionKind::Promote,
        };
        if open {
            self.s.decision = Some(Decision {
                kind,
                reason,
                at: self.now,
                by: "rampart".into(),
            });
        }
    }

    /// Sets a weight with no match rules (rollback, promotion).
    fn set_weight(&mut self, weight: Weight) {
        self.act(Action::SetWeight {
            weight,
            matches: Vec::new(),
        });
    }

    /// Sets the current step's weight and match rules.
    fn route_step(&mut self) {
        let chain = self.step_chain();
        self.chain(chain);
    }

    /// The actions that put the current step in force. Rolling: start the batch's new
    /// replicas, move their share of traffic, then retire as many old ones.
    fn step_chain(&self) -> Vec<Action> {
        let step = self.s.step;
        let weight = self.policy.strategy.steps()[step].weight;
        let Some(r) = self.policy.strategy.rolling() else {
            return vec![Action::SetWeight {
                weight,
                matches: self.policy.strategy.matches_at(step),
            }];
        };
        let k = r.replicas_at(step);
        vec![
            self.scale(Variant::Canary, k),
            Action::SetWeight {
                weight,
                matches: Vec::new(),
            },
            self.scale(Variant::Stable, r.replicas - k),
        ]
    }

    fn scale(&self, variant: Variant, replicas: u32) -> Action {
        let version = match variant {
            Variant::Stable => self.s.stable.clone().unwrap_or_default(),
            Variant::Canary => self.s.version.clone(),
        };
        Action::Scale {
            variant,
            version,
            replicas,
        }
    }

    /// Issues the first action of `chain` and queues the rest.
    fn chain(&mut self, mut chain: Vec<Action>) {
        if chain.is_empty() {
            return;
        }
        let first = chain.remove(0);
        self.s.queued = chain;
        self.act(first);
    }

    /// Rolling rollback: the replaced batches go back in reverse order, each one
    /// restoring old replicas before moving traffic and retiring new ones.
    fn rolling_back_chain(&self, r: &crate::policy::RollingSpec) -> Vec<Action> {
        let pending_canary = match &self.s.pending {
            Some(Action::Scale {
                variant: Variant::Canary,
                replicas,
                ..
            }) => *replicas,
            _ => 0,
        };
        let mut k = self.s.canary_replicas.max(pending_canary);
        let mut chain = Vec::new();
        loop {
            k = k.saturating_sub(r.batch.max(1));
            let bp = u64::from(k) * 10_000 / u64::from(r.replicas.max(1));
            chain.push(self.scale(Variant::Stable, r.replicas - k));
            chain.push(Action::SetWeight {
                weight: Weight::from_basis_points(u16::try_from(bp).unwrap_or(0))
                    .unwrap_or(Weight::ZERO),
                matches: Vec::new(),
            });
            chain.push(self.scale(Variant::Canary, k));
            if k == 0 {
                return chain;
            }
        }
    }

    /// Starts the ordered rollback: traffic to stable, stop canary, verify stable. After
    /// non-backward-compatible migrations it escalates instead.
    fn rollback(&mut self, actor: &str, reason: String) {
        self.rollback_with(actor, reason, false);
    }

    fn rollback_with(&mut self, actor: &str, reason: String, force: bool) {
        let incompatible = self
            .s
            .migration_class
            .is_some_and(|c| c >= crate::migrations::Class::Contract);
        let escalate = self.policy.migrations.as_ref().is_some_and(|m| m.escalate);
        if incompatible && escalate && !force {
            return self.escalate(reason);
        }
        if let Some(cap) = self.policy.rollback.max_automatic
            && actor == "rampart"
            && self.s.prior_automatic_rollbacks >= cap.count
        {
            return self.halt(format!(
                "{reason}; the automatic rollback cap is reached ({} in the last {}), so rampart takes no further automatic action",
                self.s.prior_automatic_rollbacks,
                crate::units::format_duration(cap.per)
            ));
        }
        self.decide(DecisionKind::Rollback, reason.clone());
        if let Some(d) = self.s.decision.as_mut()
            && d.kind == DecisionKind::Rollback
            && d.at == self.now
        {
            d.by = actor.to_string();
        }
        self.s.phase = Phase::RollingBack;
        self.s.queued.clear();
        self.s.next_analysis_at = None;
        self.s.timer = None;
        self.event("rollback_started", actor, reason.clone());
        self.notify(
            NoticeKind::Rollback,
            format!("rolling back {}: {reason}", self.s.version),
        );
        let flags = self.policy.level_one_flags();
        // Level 1 only helps where users met the new code: some traffic, or a flag ramp.
        if !flags.is_empty() && (self.s.weight > Weight::ZERO || self.policy.strategy.flag_only()) {
            self.s.rollback_level = Some(1);
            self.act(Action::FlagsOff { flags });
            return;
        }
        self.rollback_traffic();
    }

    /// Rollback levels 2 and 3: traffic back to stable, then the new version stopped
    /// (or, rolling, the replaced batches restored in reverse order).
    fn rollback_traffic(&mut self) {
        self.s.rollback_level = Some(if self.policy.strategy.flag_only() {
            1
        } else {
            2
        });
        self.s.next_analysis_at = None;
        if let Some(r) = self.policy.strategy.rolling() {
            let chain = self.rolling_back_chain(r);
            self.chain(chain);
            return;
        }
        // Always (re)assert weight 0 first, even if the canary never got traffic: it
        // is idempotent, and it makes "traffic is on stable" a confirmed fact.
        self.set_weight(Weight::ZERO);
    }

    /// Hands over to a human without touching traffic: rolling the code back would put
    /// old code on a schema it does not understand.
    fn escalate(&mut self, reason: String) {
        let class = self.s.migration_class.map_or("?", |c| c.as_str());
        let why = format!(
            "{reason}; not rolled back automatically because this release shipped {class} database migrations"
        );
        self.decide(DecisionKind::Escalate, why.clone());
        self.s.phase = Phase::Escalated;
        self.s.pending = None;
        self.s.queued.clear();
        self.s.next_analysis_at = None;
        self.s.timer = None;
        self.event("escalated", "rampart", why.clone());
        self.notify(
            NoticeKind::Escalated,
            format!(
                "release {} of {} ESCALATED at canary weight {}: {why}. Choose: roll forward with a fixed version, or repair the data and roll the code back with `rampart rollback {} --force --reason \"...\"`.",
                self.s.version, self.policy.service, self.s.weight, self.policy.service
            ),
        );
    }

    /// Who may not approve: the person who started the release.
    fn not_the_initiator(&self) -> String {
        if self.s.initiator.is_empty() {
            "the initiator".into()
        } else {
            self.s.initiator.clone()
        }
    }

    /// Holds the release at an approval point until `timeout_ms` passes, and asks for it.
    fn await_approval(&mut self, kind: Option<PreApproval>, timeout_ms: Millis, ask: String) {
        self.s.pending = None;
        self.s.phase = Phase::AwaitingApproval;
        self.s.approving = kind;
        self.s.timer = Some(self.now + timeout_ms);
        self.event("awaiting_approval", "rampart", ask.clone());
        self.notify(NoticeKind::Approval, ask);
    }

    /// Stops where it stands. Deliberately emits no traffic action.
    fn halt(&mut self, reason: String) {
        self.decide(DecisionKind::Halt, reason.clone());
        self.s.phase = Phase::Halted;
        self.s.pending = None;
        self.s.queued.clear();
        self.s.next_analysis_at = None;
        self.event("halted", "rampart", reason.clone());
        self.notify(
            NoticeKind::Halted,
            format!(
                "release {} of {} halted at canary weight {}: {reason}. A human must decide; rampart will not move traffic.",
                self.s.version, self.policy.service, self.s.weight
            ),
        );
    }

    fn finish(self) -> Transition {
        Transition {
            state: self.s,
            effects: self.effects,
            events: self.events,
        }
    }
}

/// Whether `input` answers `pending`.
fn answers(pending: Option<&Action>, input: &Input) -> bool {
    match (pending, input) {
        (Some(Action::RunGates), Input::GatesChecked { .. }) => true,
        (Some(Action::Deploy { variant, .. }), Input::Deployed { variant: v, .. }) => variant == v,
        (Some(Action::SetWeight { weight, .. }), Input::TrafficSet { weight: w }) => weight == w,
        (Some(Action::SetWeight { .. }), Input::TrafficFailed { .. }) => true,
        (Some(Action::Measure), Input::Measured { .. } | Input::MeasureFailed { .. }) => true,
        (Some(Action::Stop { variant }), Input::Stopped { variant: v, .. }) => variant == v,
        (Some(Action::VerifyStable), Input::StableVerified { .. }) => true,
        (Some(Action::RunChecks { stage }), Input::ChecksDone { stage: s, .. }) => stage == s,
        (Some(Action::RunMigrations), Input::Migrated { .. }) => true,
        (Some(Action::FlagsOff { .. }), Input::FlagsOff { .. }) => true,
        (
            Some(Action::Scale {
                variant, replicas, ..
            }),
            Input::Scaled {
                variant: v,
                replicas: r,
                ..
            },
        ) => variant == v && replicas == r,
        _ => false,
    }
}

fn is_success(input: &Input) -> bool {
    match input {
        Input::Deployed { ok, .. } | Input::Stopped { ok, .. } | Input::Scaled { ok, .. } => *ok,
        Input::GatesChecked { results } => results.iter().all(|r| r.ok),
        Input::TrafficSet { .. } | Input::Measured { .. } => true,
        Input::StableVerified { healthy, .. } => *healthy,
        Input::ChecksDone { results, .. } => results.iter().all(|r| r.ok),
        Input::FlagsOff { ok, .. } => *ok,
        _ => false,
    }
}

/// Advances a release by one input.
///
/// Guarantees:
/// - Pure and deterministic: same `(policy, state, input, now)`, same transition.
/// - At most one [`Effect::Do`] per transition.
/// - Once a rollback or halt is decided, no emitted weight is above the current one.
/// - In [`Phase::Halted`] nothing but human-driven inputs (none yet) changes anything.
pub fn step(policy: &Policy, state: &Release, input: &Input, now: Millis) -> Transition {
    let mut b = Builder {
        policy,
        now,
        s: state.clone(),
        effects: Vec::new(),
        events: Vec::new(),
    };
    if state.phase.is_terminal() {
        return b.finish();
    }
    match input {
        Input::Start {
            release_id,
            version,
            stable,
            automatic_rollbacks,
            initiator,
            planned_migrations,
            hotfix,
        } => {
            if state.phase == Phase::Pending {
                b.s.prior_automatic_rollbacks = *automatic_rollbacks;
                b.s.initiator = initiator.clone();
                b.s.planned_migrations = *planned_migrations;
                start(&mut b, release_id, version, stable.clone());
                match hotfix {
                    Some(why) => ask_hotfix_approval(&mut b, why),
                    None => open_or_wait(&mut b),
                }
            }
        }
        Input::Resumed => resume(&mut b),
        Input::Approved { by } => approved(&mut b, by),
        Input::Pause { actor, reason } => pause(&mut b, actor, reason),
        Input::Unpause { actor } => unpause(&mut b, actor),
        Input::Promote { actor, reason } => promote(&mut b, actor, reason),
        Input::Tick => tick(&mut b),
        Input::Abort {
            actor,
            reason,
            force,
        } => abort(&mut b, actor, reason, *force),
        answer => {
            if !answers(state.pending.as_ref(), answer) {
                return b.finish();
            }
            b.s.pending = None;
            if let Input::TrafficSet { weight } = answer {
                b.s.weight = *weight;
            }
            if let Input::Scaled {
                variant,
                replicas,
                ok: true,
                detail,
            } = answer
            {
                match variant {
                    Variant::Stable => b.s.stable_replicas = *replicas,
                    Variant::Canary => b.s.canary_replicas = *replicas,
                }
                b.event(
                    "scaled",
                    "rampart",
                    format!("{} at {replicas} replica(s): {detail}", variant.as_str()),
                );
            }
            if is_success(answer) && !b.s.queued.is_empty() {
                if let Input::TrafficSet { weight } = answer {
                    b.event("weight_set", "rampart", format!("canary weight {weight}"));
                }
                if let Input::Deployed {
                    variant, detail, ..
                } = answer
                {
                    b.event(
                        "version_ready",
                        "rampart",
                        format!("{} ready: {detail}", variant.as_str()),
                    );
                }
                let next = b.s.queued.remove(0);
                b.act(next);
                return b.finish();
            }
            b.s.queued.clear();
            on_answer(&mut b, answer);
        }
    }
    b.finish()
}

fn start(b: &mut Builder<'_>, id: &str, version: &str, stable: Option<String>) {
    b.s.id = id.to_string();
    b.s.version = version.to_string();
    // A flag release changes no code: the running version is both sides.
    b.s.stable = if b.policy.strategy.flag_only() {
        Some(version.to_string())
    } else {
        stable
    };
    b.s.started_at = b.now;
    b.s.phase = Phase::Gating;
    b.s.failure_streaks = vec![0; b.policy.analysis.metrics.len()];
    b.s.evidence = vec![Evidence::default(); b.policy.analysis.metrics.len()];
    let from = match &b.s.stable {
        Some(s) => format!(" (stable {s})"),
        None => " (initial release: nothing to compare with)".into(),
    };
    let msg = format!("releasing {} {version}{from}", b.policy.service);
    b.event("release_started", "rampart", msg.clone());
    b.notify(NoticeKind::Started, msg);
}

/// Why releases may not run now and when they next may, from the policy's windows.
fn window_closed(b: &Builder<'_>) -> Option<(String, bool, Option<Millis>)> {
    let w = b.policy.windows.as_ref()?;
    match w.status(b.now) {
        crate::windows::Status::Open => None,
        crate::windows::Status::Closed {
            why,
            freeze,
            opens_at,
        } => Some((why, freeze, opens_at)),
    }
}

/// Runs the gates now, or waits for the next release window, or is blocked.
fn open_or_wait(b: &mut Builder<'_>) {
    let Some((why, _, opens_at)) = window_closed(b) else {
        return b.act(Action::RunGates);
    };
    let Some(w) = b.policy.windows.as_ref() else {
        return b.act(Action::RunGates);
    };
    let when = opens_at.map_or("not within the next 60 days".to_string(), |t| {
        format!("at {}", w.show(t))
    });
    let waitable = opens_at.filter(|t| *t - b.now <= ms(w.max_wait));
    match (w.outside, waitable) {
        (crate::windows::Outside::Wait, Some(t)) => {
            let ask = format!(
                "release {} of {} started {why}; it waits for the next window, which opens {when}. Nothing runs until then; `rampart approve {} --as NAME` (anyone but {}) releases it now, attended",
                b.s.version,
                b.policy.service,
                b.s.id,
                b.not_the_initiator()
            );
            b.await_approval(Some(PreApproval::Window), t - b.now, ask);
        }
        _ => block(b, format!("{why}; the next window opens {when}")),
    }
}

fn resume(b: &mut Builder<'_>) {
    if b.policy.strategy.rolling().is_some()
        && matches!(b.s.phase, Phase::Progressing | Phase::RollingBack)
    {
        return resume_rolling(b);
    }
    let stable = b.s.stable.clone();
    let ensure_stable = stable.clone().map(|version| Action::Deploy {
        variant: Variant::Stable,
        version,
    });
    // A flag release runs no second copy: its canary is the flag-on users.
    let canary = (!b.policy.strategy.flag_only()).then(|| Action::Deploy {
        variant: Variant::Canary,
        version: b.s.version.clone(),
    });
    // The processes and the router may have died with the controller. Re-establish
    // the world this state assumes, with idempotent actions, before going on. No
    // decision is re-made: the chain only repeats what the state already records.
    let mut chain: Vec<Action> = Vec::new();
    match b.s.phase {
        Phase::Pending => return,
        Phase::Gating => chain.push(Action::RunGates),
        // The migration tool must be idempotent (it records what it applied), as every
        // real one is: the command runs again and applies what is left.
        Phase::Migrating => chain.push(Action::RunMigrations),
        Phase::Deploying => {
            chain.extend(ensure_stable);
            if matches!(
                b.s.pending,
                Some(Action::Deploy {
                    variant: Variant::Canary,
                    ..
                })
            ) {
                chain.extend(canary.clone());
            }
        }
        Phase::Progressing => {
            chain.extend(ensure_stable);
            chain.extend(canary.clone());
            // Mid-step, re-apply the confirmed weight; between steps, finish setting the
            // next step's weight (the decision to advance is already recorded).
            let weight = match b.s.step_started_at {
                Some(_) => b.s.weight,
                None => b.policy.strategy.steps()[b.s.step].weight,
            };
            let matches = b.policy.strategy.matches_at(b.s.step);
            chain.push(Action::SetWeight { weight, matches });
            // Counters restarted with the controller: measure a fresh full interval.
            b.s.next_analysis_at = None;
        }
        Phase::Previewing => {
            chain.extend(ensure_stable);
            chain.extend(canary.clone());
            chain.push(Action::RunChecks {
                stage: CheckStage::Preview,
            });
        }
        // Waiting to approve migrations: nothing runs yet, nothing to re-establish.
        Phase::AwaitingApproval if b.s.approving.is_some_and(PreApproval::before_anything) => {
            return;
        }
        Phase::AwaitingApproval => {
            chain.extend(ensure_stable);
            chain.extend(canary.clone());
            chain.push(Action::SetWeight {
                weight: b.s.weight,
                matches: b.policy.strategy.matches_at(b.s.step),
            });
        }
        Phase::Promoting => {
            match canary.clone() {
                Some(c) => chain.push(c),
                None => chain.extend(ensure_stable),
            }
            chain.push(Action::SetWeight {
                weight: Weight::FULL,
                matches: Vec::new(),
            });
        }
        Phase::Verifying | Phase::KeepingPrevious => {
            let checks_pending = matches!(b.s.pending, Some(Action::RunChecks { .. }));
            chain.extend(ensure_stable);
            chain.extend(canary.clone());
            chain.push(Action::SetWeight {
                weight: Weight::FULL,
                matches: Vec::new(),
            });
            if checks_pending {
                chain.push(Action::RunChecks {
                    stage: CheckStage::PostRelease,
                });
            }
        }
        // Waiting to see whether flags off was enough: switch them off again (it is
        // idempotent) and verify afresh.
        Phase::RollingBack if b.s.rollback_level == Some(1) && !b.policy.strategy.flag_only() => {
            chain.extend(ensure_stable);
            chain.extend(canary.clone());
            chain.push(Action::FlagsOff {
                flags: b.policy.level_one_flags(),
            });
        }
        Phase::RollingBack => {
            chain.extend(ensure_stable);
            chain.push(Action::SetWeight {
                weight: Weight::ZERO,
                matches: Vec::new(),
            });
        }
        _ => return,
    }
    b.event(
        "resumed",
        "rampart",
        format!(
            "controller restarted; resuming in phase {}",
            b.s.phase.as_str()
        ),
    );
    let first = chain.remove(0);
    b.s.queued = chain;
    b.act(first);
}

/// Rolling: re-establish the confirmed replica counts, then either re-apply the step's
/// traffic or go on with the step (or rollback) being put in force.
fn resume_rolling(b: &mut Builder<'_>) {
    let mut chain = vec![
        b.scale(Variant::Stable, b.s.stable_replicas),
        b.scale(Variant::Canary, b.s.canary_replicas),
    ];
    match (b.s.phase, b.s.step_started_at) {
        (Phase::RollingBack, _) => {
            let r = b.policy.strategy.rolling().cloned();
            if let Some(r) = r {
                chain.extend(b.rolling_back_chain(&r));
            }
        }
        (_, Some(_)) => chain.push(Action::SetWeight {
            weight: b.s.weight,
            matches: Vec::new(),
        }),
        (_, None) => chain.extend(b.step_chain()),
    }
    b.s.next_analysis_at = None;
    b.event(
        "resumed",
        "rampart",
        format!(
            "controller restarted; resuming in phase {}",
            b.s.phase.as_str()
        ),
    );
    b.chain(chain);
}

fn tick(b: &mut Builder<'_>) {
    if b.s.pending.is_some() {
        return;
    }
    let due = |t: Option<Millis>| t.is_some_and(|t| t <= b.now);
    match b.s.phase {
        Phase::Progressing | Phase::RollingBack if due(b.s.next_analysis_at) => {
            b.act(Action::Measure);
        }
        Phase::Verifying if due(b.s.timer) => {
            b.s.timer = None;
            b.act(Action::RunChecks {
                stage: CheckStage::PostRelease,
            });
        }
        Phase::AwaitingApproval if due(b.s.timer) && b.s.approving == Some(PreApproval::Window) => {
            b.s.timer = None;
            b.s.approving = None;
            b.event(
                "window_opened",
                "rampart",
                "the release window is open; starting".into(),
            );
            b.s.phase = Phase::Gating;
            b.act(Action::RunGates);
        }
        Phase::AwaitingApproval
            if due(b.s.timer) && b.s.approving == Some(PreApproval::FullTraffic) =>
        {
            b.s.timer = None;
            b.s.approving = None;
            start_progressing(b);
        }
        Phase::AwaitingApproval if due(b.s.timer) && b.s.approving.is_some() => {
            let what = match b.s.approving {
                Some(PreApproval::Hotfix) => "the hotfix during a freeze",
                _ => "the breaking migrations",
            };
            block(
                b,
                format!("{what} were not approved in time; nothing was applied or deployed"),
            );
        }
        Phase::AwaitingApproval if due(b.s.timer) => {
            b.s.timer = None;
            b.rollback(
                "rampart",
                "no approval came before the approval point timed out".into(),
            );
        }
        Phase::KeepingPrevious if due(b.s.timer) => {
            b.s.timer = None;
            b.s.phase = Phase::Promoting;
            b.event(
                "previous_released",
                "rampart",
                "keep_previous ended; stopping the previous version".into(),
            );
            b.act(Action::Stop {
                variant: Variant::Stable,
            });
        }
        _ => {}
    }
}

/// All traffic is on the new version: verify, keep the previous version, or stop it.
fn after_full(b: &mut Builder<'_>) {
    if b.s.stable.is_none() {
        return succeed(b);
    }
    match &b.policy.post_release {
        Some(post) => {
            b.s.phase = Phase::Verifying;
            b.event(
                "verifying",
                "rampart",
                format!(
                    "post-release checks in {}; the previous version stays up until they pass",
                    crate::units::format_duration(post.wait)
                ),
            );
            if post.wait.is_zero() {
                b.act(Action::RunChecks {
                    stage: CheckStage::PostRelease,
                });
            } else {
                b.s.timer = Some(b.now + ms(post.wait));
            }
        }
        None => keep_or_stop_previous(b),
    }
}

fn keep_or_stop_previous(b: &mut Builder<'_>) {
    if b.policy.strategy.flag_only() {
        // Nothing was deployed, so nothing is stopped: the flag is on for everyone.
        return succeed(b);
    }
    let keep = b.policy.strategy.keep_previous();
    if keep.is_zero() {
        b.s.phase = Phase::Promoting;
        b.act(Action::Stop {
            variant: Variant::Stable,
        });
        return;
    }
    b.s.phase = Phase::KeepingPrevious;
    b.s.timer = Some(b.now + ms(keep));
    b.event(
        "keeping_previous",
        "rampart",
        format!(
            "previous version kept for {} for an instant switch back (rampart rollback {})",
            crate::units::format_duration(keep),
            b.policy.service
        ),
    );
}

fn abort(b: &mut Builder<'_>, actor: &str, reason: &str, force: bool) {
    match b.s.phase {
        // Migrations are never interrupted half-way; the abort is refused.
        Phase::Migrating => {}
        Phase::AwaitingApproval if b.s.approving.is_some_and(PreApproval::before_anything) => {
            b.event("aborted", actor, reason.to_string());
            block(
                b,
                format!("aborted by {actor} before anything ran: {reason}"),
            );
        }
        Phase::Pending | Phase::Gating => {
            b.decide(DecisionKind::Block, format!("aborted by {actor}: {reason}"));
            b.s.phase = Phase::Blocked;
            b.s.pending = None;
            b.event(
                "aborted",
                actor,
                format!("aborted before deployment: {reason}"),
            );
        }
        Phase::Deploying
        | Phase::Previewing
        | Phase::AwaitingApproval
        | Phase::Progressing
        | Phase::Promoting
        | Phase::Verifying
        | Phase::KeepingPrevious => {
            b.event("aborted", actor, reason.to_string());
            b.rollback_with(actor, format!("aborted by {actor}: {reason}"), force);
        }
        // Waiting to see whether flags off was enough: the operator does not wait.
        Phase::RollingBack if b.s.rollback_level == Some(1) && b.s.pending.is_none() => {
            b.event("aborted", actor, reason.to_string());
            b.rollback_traffic();
        }
        // Already rolling back, or over: nothing more to do.
        _ => {}
    }
}

/// Level 1 is done: verify it over one analysis interval, or (flag release, operator
/// rollback, flags that did not switch off) go on to the traffic.
fn flags_off(b: &mut Builder<'_>, ok: bool, detail: &str) {
    if !ok {
        b.event(
            "flags_off_failed",
            "rampart",
            format!("level 1 failed: {detail}; moving traffic back instead"),
        );
        return b.rollback_traffic();
    }
    b.event("flags_off", "rampart", format!("level 1: {detail}"));
    let by_operator = b.s.decision.as_ref().is_some_and(|d| d.by != "rampart");
    if b.policy.strategy.flag_only() || by_operator {
        return b.rollback_traffic();
    }
    // Judge the interval after the switch on its own: fresh evidence, fresh streaks.
    let n = b.policy.analysis.metrics.len();
    b.s.evidence = vec![Evidence::default(); n];
    b.s.failure_streaks = vec![0; n];
    b.s.next_analysis_at = Some(b.now + ms(b.policy.analysis.interval));
}

/// Whether flags off restored health: the first interval after it must pass outright.
/// If it does, the rollback stops at level 1 and traffic stays where it is.
fn verify_level_one(b: &mut Builder<'_>, sample: Option<&IntervalSample>) {
    b.s.next_analysis_at = None;
    let verdict = sample.map(|s| judge_interval(b, s).verdict);
    if verdict == Some(Verdict::Pass) {
        b.event(
            "level_verified",
            "rampart",
            format!(
                "level 1 restored health: the flags are off and {} keeps {} of traffic; traffic and the new version are left as they are",
                b.s.version, b.s.weight
            ),
        );
        return rolled_back(b, "flags off restored health (rollback level 1)".into());
    }
    let seen = verdict.map_or("no measurement".to_string(), |v| v.label().to_string());
    b.event(
        "level_not_verified",
        "rampart",
        format!("level 1 did not restore health ({seen}); level 2: traffic back to stable"),
    );
    b.rollback_traffic();
}

fn on_answer(b: &mut Builder<'_>, input: &Input) {
    match (b.s.phase, input) {
        (Phase::Gating, Input::GatesChecked { results }) => gates_checked(b, results),
        (
            Phase::Migrating,
            Input::Migrated {
                ok,
                class,
                detail,
                annotations,
            },
        ) => migrated(b, *ok, *class, detail, annotations),
        (
            Phase::Deploying,
            Input::Deployed {
                variant,
                ok,
                detail,
            },
        ) => deployed(b, *variant, *ok, detail),
        (
            _,
            Input::Deployed {
                variant,
                ok,
                detail,
            },
        ) => ensured(b, *variant, *ok, detail),
        (Phase::Progressing, Input::TrafficSet { weight }) => step_in_force(b, *weight),
        (Phase::Progressing, Input::Scaled { ok: true, .. }) => step_in_force(b, b.s.weight),
        (
            Phase::Progressing | Phase::Promoting,
            Input::Scaled {
                variant, detail, ..
            },
        ) => {
            b.rollback(
                "rampart",
                format!("could not scale {}: {detail}", variant.as_str()),
            );
        }
        (Phase::RollingBack, Input::Scaled { ok, detail, .. }) => {
            if *ok {
                b.event(
                    "canary_stopped",
                    "rampart",
                    "every replaced batch restored; the new replicas are stopped".into(),
                );
                b.act(Action::VerifyStable);
            } else {
                b.halt(format!("could not restore the previous replicas: {detail}"));
            }
        }
        (Phase::Progressing | Phase::Promoting, Input::TrafficFailed { detail }) => {
            b.rollback(
                "rampart",
                format!("could not set the canary weight: {detail}"),
            );
        }
        (Phase::Progressing, Input::Measured { sample }) => measured(b, sample),
        (Phase::Progressing, Input::MeasureFailed { detail }) => {
            b.event(
                "analysis",
                "rampart",
                format!("metrics unavailable: {detail}; holding at {}", b.s.weight),
            );
            inconclusive(b, false);
        }
        (Phase::Promoting, Input::TrafficSet { .. }) => {
            b.event(
                "weight_set",
                "rampart",
                format!("all traffic on {}", b.s.version),
            );
            after_full(b);
        }
        (Phase::AwaitingApproval, Input::TrafficSet { weight }) => {
            b.event(
                "traffic_restored",
                "rampart",
                format!("canary weight re-applied at {weight}"),
            );
        }
        (Phase::Verifying | Phase::KeepingPrevious, Input::TrafficSet { .. }) => {
            b.event(
                "traffic_restored",
                "rampart",
                format!("all traffic on {}", b.s.version),
            );
        }
        (Phase::Previewing, Input::ChecksDone { results, .. }) => {
            if let Some(failed) = results.iter().find(|r| !r.ok) {
                b.event(
                    "preview_failed",
                    "rampart",
                    format!("{}: {}", failed.name, failed.detail),
                );
                b.rollback(
                    "rampart",
                    format!(
                        "preview check `{}` failed before any user reached the new version: {}",
                        failed.name, failed.detail
                    ),
                );
            } else {
                b.event(
                    "preview_passed",
                    "rampart",
                    format!("{} preview check(s) passed", results.len()),
                );
                start_progressing(b);
            }
        }
        (Phase::Verifying, Input::ChecksDone { results, .. }) => {
            if let Some(failed) = results.iter().find(|r| !r.ok) {
                let reason = format!(
                    "post-release check `{}` failed: {}",
                    failed.name, failed.detail
                );
                b.event("post_release_failed", "rampart", reason.clone());
                match b.policy.post_release.as_ref().map(|p| p.on_failure) {
                    Some(crate::policy::PostFailure::Halt) => b.halt(reason),
                    _ => b.rollback("rampart", reason),
                }
            } else {
                b.event(
                    "post_release_passed",
                    "rampart",
                    format!("{} post-release check(s) passed", results.len()),
                );
                keep_or_stop_previous(b);
            }
        }
        (Phase::Promoting, Input::Stopped { detail, ok, .. }) => {
            if !*ok {
                b.event(
                    "stop_failed",
                    "rampart",
                    format!("old version did not stop cleanly: {detail}"),
                );
            }
            succeed(b);
        }
        (Phase::RollingBack, Input::TrafficSet { .. }) if b.policy.strategy.flag_only() => {
            b.event(
                "flag_ramp_cleared",
                "rampart",
                "no user is in the flag's ramp".into(),
            );
            b.act(Action::VerifyStable);
        }
        (Phase::RollingBack, Input::TrafficSet { .. }) => {
            b.event(
                "traffic_restored",
                "rampart",
                "level 2: all traffic on stable".into(),
            );
            b.s.rollback_level = Some(3);
            b.act(Action::Stop {
                variant: Variant::Canary,
            });
        }
        (Phase::RollingBack, Input::FlagsOff { ok, detail }) => flags_off(b, *ok, detail),
        (Phase::RollingBack, Input::Measured { sample }) => verify_level_one(b, Some(sample)),
        (Phase::RollingBack, Input::MeasureFailed { detail }) => {
            b.event(
                "analysis",
                "rampart",
                format!("metrics unavailable while verifying level 1: {detail}"),
            );
            verify_level_one(b, None);
        }
        (Phase::RollingBack, Input::TrafficFailed { detail }) => {
            b.halt(format!("could not move traffic back to stable: {detail}"));
        }
        (Phase::RollingBack, Input::Stopped { ok, detail, .. }) => {
            let msg = if *ok {
                "canary stopped".to_string()
            } else {
                format!("canary did not stop cleanly ({detail}); it receives no traffic")
            };
            b.event("canary_stopped", "rampart", msg);
            if b.s.stable.is_some() {
                b.act(Action::VerifyStable);
            } else {
                rolled_back(b, "nothing to verify: there was no previous version".into());
            }
        }
        (Phase::RollingBack, Input::StableVerified { healthy, detail }) => {
            if *healthy {
                rolled_back(b, detail.clone());
            } else {
                b.halt(format!("stable is unhealthy after the rollback: {detail}"));
            }
        }
        // Anything else answers an action of an earlier phase; nothing to do.
        _ => {}
    }
}

/// The current step's traffic is confirmed: its bake starts (or, after a restart,
/// continues).
fn step_in_force(b: &mut Builder<'_>, weight: Weight) {
    if b.s.step_started_at.is_some() {
        b.event(
            "traffic_restored",
            "rampart",
            format!("canary weight re-applied at {weight}"),
        );
    } else {
        b.s.step_started_at = Some(b.now);
        let bake = b.policy.strategy.steps()[b.s.step].bake;
        let msg = format!(
            "step {}/{}: canary at {weight}, baking {}",
            b.s.step + 1,
            b.policy.strategy.steps().len(),
            crate::units::format_duration(bake)
        );
        b.event("weight_set", "rampart", msg.clone());
        b.notify(
            NoticeKind::Step,
            format!("{} {}: {msg}", b.policy.service, b.s.version),
        );
    }
    b.s.next_analysis_at = Some(b.now + ms(b.policy.analysis.interval));
}

fn gates_checked(b: &mut Builder<'_>, results: &[GateResult]) {
    let failed: Vec<&GateResult> = results.iter().filter(|r| !r.ok).collect();
    if let Some(first) = failed.first() {
        let reason = format!("gate `{}` failed: {}", first.name, first.detail);
        for r in &failed {
            b.event(
                "gate_failed",
                "rampart",
                format!("{}: {}", r.name, r.detail),
            );
        }
        return block(b, reason);
    }
    b.event(
        "gates_passed",
        "rampart",
        format!("{} gate(s) passed", results.len()),
    );
    if let Some(m) = &b.policy.migrations {
        let breaking =
            b.s.planned_migrations
                .is_some_and(|c| c >= crate::migrations::Class::Contract);
        if let (true, Some(approval)) = (breaking, m.approval.clone()) {
            // An irreversible step needs a human before it happens, not after.
            let class = b.s.planned_migrations.map_or("?", |c| c.as_str());
            let ask = format!(
                "release {} of {} ships {class} database migrations and waits for approval by {} before applying them: `rampart approve {} --as NAME` (anyone but {}); nothing is applied or deployed until then, and it is blocked if none comes within {}",
                b.s.version,
                b.policy.service,
                approval.role,
                b.s.id,
                b.not_the_initiator(),
                crate::units::format_duration(approval.timeout)
            );
            b.await_approval(Some(PreApproval::Migrations), ms(approval.timeout), ask);
            return;
        }
        b.s.phase = Phase::Migrating;
        b.act(Action::RunMigrations);
        return;
    }
    start_deploying(b);
}

/// A hotfix during a freeze waits for someone other than its initiator before anything
/// runs, gates included.
fn ask_hotfix_approval(b: &mut Builder<'_>, why: &str) {
    let ask = format!(
        "hotfix {} of {} during a freeze ({why}) waits for approval: `rampart approve {} --as NAME` (anyone but {}); it is blocked if none comes within 1h",
        b.s.version,
        b.policy.service,
        b.s.id,
        b.not_the_initiator()
    );
    b.await_approval(Some(PreApproval::Hotfix), HOTFIX_APPROVAL_MS, ask);
}

/// Nothing was applied or deployed: the release ends blocked.
fn block(b: &mut Builder<'_>, reason: String) {
    b.decide(DecisionKind::Block, reason.clone());
    b.s.phase = Phase::Blocked;
    b.s.pending = None;
    b.s.timer = None;
    b.event("blocked", "rampart", reason.clone());
    b.notify(
        NoticeKind::Blocked,
        format!("release {} blocked: {reason}", b.s.version),
    );
}

fn migrated(
    b: &mut Builder<'_>,
    ok: bool,
    class: crate::migrations::Class,
    detail: &str,
    annotations: &[String],
) {
    b.s.migration_class = Some(class);
    for a in annotations {
        b.event("migration_marked_safe", "reviewer", a.clone());
    }
    if ok {
        b.event(
            "migrated",
            "rampart",
            format!("{class} migrations applied: {detail}"),
        );
        return start_deploying(b);
    }
    let reason = format!("migrations failed: {detail}");
    b.event("migration_failed", "rampart", reason.clone());
    if class >= crate::migrations::Class::Contract {
        // Part of a breaking change may be in the database: a human must look.
        b.escalate(reason);
    } else {
        b.decide(DecisionKind::Block, reason.clone());
        b.s.phase = Phase::Blocked;
        b.event("blocked", "rampart", format!("{reason}; nothing was deployed, and expand-only changes are harmless to the running code"));
    }
}

fn start_deploying(b: &mut Builder<'_>) {
    b.s.phase = Phase::Deploying;
    match b.s.stable.clone() {
        Some(version) => b.act(Action::Deploy {
            variant: Variant::Stable,
            version,
        }),
        None => b.act(Action::Deploy {
            variant: Variant::Canary,
            version: b.s.version.clone(),
        }),
    }
}

fn deployed(b: &mut Builder<'_>, variant: Variant, ok: bool, detail: &str) {
    match (variant, ok) {
        (Variant::Stable, true) => {
            b.event(
                "version_ready",
                "rampart",
                format!("stable ready: {detail}"),
            );
            if let Some(r) = b.policy.strategy.rolling() {
                // Rolling: the new version's replicas start batch by batch.
                b.s.stable_replicas = r.replicas;
                start_progressing(b);
                return;
            }
            if b.policy.strategy.flag_only() {
                // The flag-on users are the canary, on the same processes.
                start_progressing(b);
                return;
            }
            b.act(Action::Deploy {
                variant: Variant::Canary,
                version: b.s.version.clone(),
            });
        }
        (Variant::Stable, false) => {
            b.halt(format!("stable did not start, so there is nothing safe to compare with or fall back to: {detail}"));
        }
        (Variant::Canary, true) => {
            b.event(
                "version_ready",
                "rampart",
                format!("canary ready: {detail}"),
            );
            if b.s.stable.is_none() {
                b.decide(DecisionKind::Promote, "initial release is ready".into());
                b.s.phase = Phase::Promoting;
                b.set_weight(Weight::FULL);
                return;
            }
            if b.policy.strategy.preview().is_empty() {
                start_progressing(b);
            } else {
                b.s.phase = Phase::Previewing;
                b.act(Action::RunChecks {
                    stage: CheckStage::Preview,
                });
            }
        }
        (Variant::Canary, false) => {
            b.event(
                "version_failed",
                "rampart",
                format!("canary never became ready: {detail}"),
            );
            b.rollback("rampart", format!("canary never became ready: {detail}"));
        }
    }
}

fn start_progressing(b: &mut Builder<'_>) {
    b.s.step = 0;
    let first = &b.policy.strategy.steps()[0];
    if first.approval.is_none() && first.weight == Weight::FULL && hold_for_window(b) {
        return;
    }
    enter_step(b);
}

/// Never 100 % unattended outside a release window: when the next move would put all
/// traffic on the new version while the windows are closed, hold. With traffic on the
/// canary, analysis goes on at the current weight (a failure still rolls back) and the
/// move happens at the first clean interval once the window opens; with none (a
/// blue-green switch), the release waits for the window. A human's approval at the hold
/// counts as attending. Returns whether the release holds.
fn hold_for_window(b: &mut Builder<'_>) -> bool {
    if b.s.window_attended {
        return false;
    }
    let (Some((why, _, opens_at)), Some(w)) = (window_closed(b), b.policy.windows.as_ref()) else {
        b.s.window_hold = None;
        return false;
    };
    let until = opens_at.unwrap_or(b.now + ms(w.max_wait));
    let when = w.show(until);
    if b.s.phase == Phase::Progressing && b.s.weight > Weight::ZERO {
        if b.s.window_hold.is_none() {
            let msg = format!(
                "release {} of {} is ready for 100 % but it is {why}: holding at {} with analysis going on until {when}; `rampart approve {} --as NAME` (anyone but {}) promotes now, attended",
                b.s.version,
                b.policy.service,
                b.s.weight,
                b.s.id,
                b.not_the_initiator()
            );
            b.event("holding_for_window", "rampart", msg.clone());
            b.notify(NoticeKind::Step, msg);
        }
        b.s.window_hold = Some(until);
        b.s.next_analysis_at = Some(b.now + ms(b.policy.analysis.interval));
        return true;
    }
    let ask = format!(
        "release {} of {} would switch all traffic at once but it is {why}: waiting until {when}; `rampart approve {} --as NAME` (anyone but {}) switches now, attended",
        b.s.version,
        b.policy.service,
        b.s.id,
        b.not_the_initiator()
    );
    b.await_approval(
        Some(PreApproval::FullTraffic),
        until.saturating_sub(b.now),
        ask,
    );
    true
}

/// Puts the current step in force: an approval point waits for a human; any other
/// step sets its traffic.
fn enter_step(b: &mut Builder<'_>) {
    b.s.step_started_at = None;
    b.s.next_analysis_at = None;
    let Some(approval) = b.policy.strategy.steps()[b.s.step].approval.clone() else {
        b.s.phase = Phase::Progressing;
        return b.route_step();
    };
    let ask = format!(
        "release {} of {} waits at {} for approval by {}: `rampart approve {} --as NAME` (anyone but {}); it rolls back if none comes within {}",
        b.s.version,
        b.policy.service,
        b.s.weight,
        approval.role,
        b.s.id,
        b.not_the_initiator(),
        crate::units::format_duration(approval.timeout)
    );
    b.await_approval(None, ms(approval.timeout), ask);
}

/// Leaves the current step: the next one, or promotion after the last.
fn next_step(b: &mut Builder<'_>) {
    let steps = b.policy.strategy.steps();
    let next = b.s.step + 1;
    let to_full = steps
        .get(next)
        .is_none_or(|s| s.approval.is_none() && s.weight == Weight::FULL);
    if to_full && hold_for_window(b) {
        return;
    }
    b.s.window_hold = None;
    if next < steps.len() {
        b.s.step = next;
        return enter_step(b);
    }
    b.decide(
        DecisionKind::Promote,
        format!("all {} step(s) passed", steps.len()),
    );
    b.s.phase = Phase::Promoting;
    b.s.next_analysis_at = None;
    b.event(
        "promoting",
        "rampart",
        "every step passed; promoting".into(),
    );
    b.set_weight(Weight::FULL);
}

/// Whether an operator's pause applies: only while the canary steps run (at a step or
/// a step's approval point). Earlier phases would put the first step in force anyway,
/// and a rollback is never held.
fn pausable(s: &Release) -> bool {
    s.phase == Phase::Progressing || (s.phase == Phase::AwaitingApproval && s.approving.is_none())
}

fn pause(b: &mut Builder<'_>, actor: &str, reason: &str) {
    if !pausable(&b.s) {
        return b.event(
            "pause_refused",
            actor,
            format!(
                "nothing to pause in phase {}: a release can be held once its canary steps run",
                b.s.phase.as_str()
            ),
        );
    }
    if b.s.paused.is_some() {
        return;
    }
    b.s.paused = Some(actor.to_string());
    b.event(
        "paused",
        actor,
        format!(
            "held at {}: analysis goes on and a failure still rolls back, but no step advances until resumed ({reason})",
            b.s.weight
        ),
    );
}

fn unpause(b: &mut Builder<'_>, actor: &str) {
    let Some(by) = b.s.paused.take() else {
        return;
    };
    b.event(
        "unpaused",
        actor,
        format!("resumed (paused by {by}); the next clean interval after the bake advances"),
    );
}

/// A human's promotion: straight to 100 %, as if every remaining step had passed.
fn promote(b: &mut Builder<'_>, actor: &str, reason: &str) {
    let refuse = |b: &mut Builder<'_>, why: String| {
        b.event("promote_refused", actor, why);
    };
    let step_approval = b.s.phase == Phase::AwaitingApproval && b.s.approving.is_none();
    if b.s.phase != Phase::Progressing && !step_approval {
        return refuse(
            b,
            format!(
                "a release can be promoted only while its canary steps run (it is {})",
                b.s.phase.as_str()
            ),
        );
    }
    if b.policy.strategy.rolling().is_some() {
        return refuse(
            b,
            "a rolling release replaces its batches in order and cannot skip them".into(),
        );
    }
    if actor.is_empty() || actor == b.s.initiator {
        return refuse(
            b,
            "the initiator cannot promote their own release (four eyes)".into(),
        );
    }
    if let Some((why, true, _)) = window_closed(b) {
        return refuse(
            b,
            format!("it is {why}: nothing goes to 100 % during a freeze"),
        );
    }
    b.event(
        "promoted_by_operator",
        actor,
        format!("promoted from {} by {actor}: {reason}", b.s.weight),
    );
    b.decide(
        DecisionKind::Promote,
        format!("promoted by {actor}: {reason}"),
    );
    if let Some(d) = b.s.decision.as_mut()
        && d.at == b.now
    {
        d.by = actor.to_string();
    }
    b.s.window_attended = true;
    b.s.window_hold = None;
    b.s.paused = None;
    b.s.timer = None;
    b.s.next_analysis_at = None;
    b.s.queued.clear();
    b.s.phase = Phase::Promoting;
    b.set_weight(Weight::FULL);
}

fn approved(b: &mut Builder<'_>, by: &str) {
    let holding = b.s.phase == Phase::Progressing && b.s.window_hold.is_some();
    if b.s.phase != Phase::AwaitingApproval && !holding {
        return;
    }
    if by.is_empty() || by == b.s.initiator {
        b.event(
            "approval_refused",
            by,
            "the initiator cannot approve their own release (four eyes)".into(),
        );
        return;
    }
    if let Some(paused_by) = &b.s.paused {
        let msg = format!("paused by {paused_by}: resume the release before approving it");
        b.event("approval_refused", by, msg);
        return;
    }
    let window = holding
        || matches!(
            b.s.approving,
            Some(PreApproval::Window | PreApproval::FullTraffic)
        );
    if window && let Some((why, true, _)) = window_closed(b) {
        b.event(
            "approval_refused",
            by,
            format!(
                "it is {why}: only a hotfix may run during a freeze (`rampart run --hotfix REASON`)"
            ),
        );
        return;
    }
    if holding {
        b.event(
            "approved",
            by,
            "going to 100 % outside the release window approved (attended)".into(),
        );
        b.s.window_attended = true;
        b.s.window_hold = None;
        if b.s.pending.is_none() {
            next_step(b);
        }
        return;
    }
    b.s.timer = None;
    match b.s.approving.take() {
        Some(PreApproval::Window) => {
            b.event(
                "approved",
                by,
                "releasing outside the release window approved (attended)".into(),
            );
            b.s.window_attended = true;
            b.s.phase = Phase::Gating;
            return b.act(Action::RunGates);
        }
        Some(PreApproval::FullTraffic) => {
            b.event(
                "approved",
                by,
                "switching all traffic outside the release window approved (attended)".into(),
            );
            b.s.window_attended = true;
            return start_progressing(b);
        }
        Some(PreApproval::Migrations) => {
            b.event("approved", by, "breaking migrations approved".into());
            b.s.phase = Phase::Migrating;
            return b.act(Action::RunMigrations);
        }
        Some(PreApproval::Hotfix) => {
            b.event("approved", by, "hotfix during a freeze approved".into());
            b.s.window_attended = true;
            b.s.phase = Phase::Gating;
            return b.act(Action::RunGates);
        }
        None => {}
    }
    let steps = b.policy.strategy.steps();
    let role = steps[b.s.step]
        .approval
        .as_ref()
        .map_or(String::new(), |a| a.role.clone());
    // A human approving the move to 100 % attends it.
    if steps
        .get(b.s.step + 1)
        .is_none_or(|s| s.weight == Weight::FULL)
    {
        b.s.window_attended = true;
    }
    b.event(
        "approved",
        by,
        format!("approved as {role} at {}", b.s.weight),
    );
    next_step(b);
}

/// Answer to a re-establishing deploy during resume, in a phase past Deploying.
fn ensured(b: &mut Builder<'_>, variant: Variant, ok: bool, detail: &str) {
    if ok {
        return;
    }
    match (b.s.phase, variant) {
        (
            Phase::Previewing
            | Phase::Progressing
            | Phase::Promoting
            | Phase::Verifying
            | Phase::KeepingPrevious,
            Variant::Canary,
        ) => {
            b.rollback(
                "rampart",
                format!("canary did not come back after restart: {detail}"),
            );
        }
        _ => b.halt(format!("stable did not come back after restart: {detail}")),
    }
}

/// One interval judged: every metric's reading, the overall verdict, and the metrics
/// whose failures decide the release.
struct Judged {
    readings: Vec<MetricReading>,
    verdict: Verdict,
    deciding: Vec<usize>,
}

/// Judges one interval, updates the evidence and streaks, and records the analysis.
fn judge_interval(b: &mut Builder<'_>, sample: &IntervalSample) -> Judged {
    let metrics = &b.policy.analysis.metrics;
    let mut readings: Vec<MetricReading> = Vec::with_capacity(metrics.len());
    for (i, m) in metrics.iter().enumerate() {
        readings.push(match &m.judge {
            Judge::Threshold(t) => judge::threshold(m, t, sample),
            Judge::Sequential(seq) => judge::sequential(
                m,
                seq,
                sample,
                &mut b.s.evidence[i],
                &b.s.stable_latency,
                b.s.canary_seen,
            ),
        });
    }
    // Only after judging: the null for this interval came from earlier intervals.
    b.s.stable_latency.merge(&sample.stable.latency);
    b.s.canary_seen += sample.canary.requests;
    b.s.intervals += 1;

    let mut tripped: Vec<usize> = Vec::new();
    for (i, r) in readings.iter().enumerate() {
        match r.verdict {
            Verdict::Pass => b.s.failure_streaks[i] = 0,
            Verdict::Fail => b.s.failure_streaks[i] += 1,
            Verdict::Inconclusive | Verdict::NoData => {}
        }
        let trips = match metrics[i].judge {
            Judge::Threshold(_) => b.s.failure_streaks[i] >= metrics[i].failure_limit,
            // Anytime-valid: the first rejection is the decision.
            Judge::Sequential(_) => r.verdict == Verdict::Fail,
        };
        if trips {
            tripped.push(i);
        }
    }
    // Critical metrics fail the release alone; the others only together, once their
    // weights reach the failure score. Below it, their failures are warnings.
    let score: f64 = tripped
        .iter()
        .filter(|i| !metrics[**i].critical)
        .map(|i| metrics[*i].weight)
        .sum();
    let failing_score: f64 = readings
        .iter()
        .zip(metrics)
        .filter(|(r, m)| !m.critical && r.verdict == Verdict::Fail)
        .map(|(_, m)| m.weight)
        .sum();
    let counts = |i: usize| {
        metrics[i].critical
            || readings[i].verdict != Verdict::Fail
            || failing_score >= b.policy.analysis.fail_score
    };
    let counted: Vec<&MetricReading> = (0..readings.len())
        .filter(|i| counts(*i))
        .map(|i| &readings[i])
        .collect();
    let deciding: Vec<usize> =
        if tripped.iter().any(|i| metrics[*i].critical) || score >= b.policy.analysis.fail_score {
            tripped
                .into_iter()
                .filter(|i| counts(*i) || score >= b.policy.analysis.fail_score)
                .collect()
        } else {
            Vec::new()
        };
    let verdict = if counted.iter().any(|r| r.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if !counted.is_empty() && counted.iter().all(|r| r.verdict == Verdict::NoData) {
        Verdict::NoData
    } else if counted.iter().any(|r| r.verdict != Verdict::Pass) {
        Verdict::Inconclusive
    } else {
        Verdict::Pass
    };
    b.s.last_verdict = Some(verdict);
    let summary: Vec<String> = readings
        .iter()
        .map(|r| format!("{} {}: {}", r.name, r.verdict.label(), r.detail))
        .collect();
    b.event_with(
        "analysis",
        "rampart",
        format!(
            "interval {} {}: {}",
            b.s.intervals,
            verdict.label(),
            summary.join("; ")
        ),
        readings.clone(),
    );
    Judged {
        readings,
        verdict,
        deciding,
    }
}

fn measured(b: &mut Builder<'_>, sample: &IntervalSample) {
    let Judged {
        readings,
        verdict,
        deciding,
    } = judge_interval(b, sample);
    let metrics = &b.policy.analysis.metrics;
    if !deciding.is_empty() {
        let tripped = deciding;
        let why: Vec<String> = tripped
            .iter()
            .map(|i| match metrics[*i].judge {
                Judge::Threshold(_) => format!(
                    "{} {} for {} consecutive interval(s)",
                    readings[*i].name, readings[*i].detail, b.s.failure_streaks[*i]
                ),
                Judge::Sequential(_) => format!("{} {}", readings[*i].name, readings[*i].detail),
            })
            .collect();
        if tripped.iter().all(|i| readings[*i].stable_breached) {
            b.halt(format!(
                "both versions are unhealthy ({}); rolling back would not help",
                why.join("; ")
            ));
        } else {
            b.rollback("rampart", why.join("; "));
        }
        return;
    }
    match verdict {
        Verdict::Pass => {
            b.s.inconclusive_streak = 0;
            b.s.no_data_streak = 0;
        }
        Verdict::Fail => {
            b.s.inconclusive_streak = 0;
            b.s.no_data_streak = 0;
        }
        Verdict::NoData => {
            if inconclusive(b, true) {
                return;
            }
        }
        Verdict::Inconclusive => {
            if inconclusive(b, false) {
                return;
            }
        }
    }
    let steps = b.policy.strategy.steps();
    let baked =
        b.s.step_started_at
            .is_some_and(|t| b.now >= t + ms(steps[b.s.step].bake));
    let clean = verdict == Verdict::Pass
        && metrics
            .iter()
            .zip(&b.s.failure_streaks)
            .all(|(m, s)| !m.critical || *s == 0);
    if baked && clean && b.s.paused.is_some() {
        // Held by an operator: keep analysing at this weight.
        b.s.next_analysis_at = Some(b.now + ms(b.policy.analysis.interval));
    } else if baked && clean {
        b.event(
            "step_completed",
            "rampart",
            format!(
                "step {}/{} passed at {}",
                b.s.step + 1,
                steps.len(),
                b.s.weight
            ),
        );
        next_step(b);
    } else {
        b.s.next_analysis_at = Some(b.now + ms(b.policy.analysis.interval));
    }
}

/// Counts an interval that could not be judged. Returns whether the release stopped.
fn inconclusive(b: &mut Builder<'_>, no_data: bool) -> bool {
    let (streak, escalation, what) = if no_data {
        b.s.no_data_streak += 1;
        (
            b.s.no_data_streak,
            b.policy.analysis.no_data,
            "without canary traffic or metric values",
        )
    } else {
        b.s.inconclusive_streak += 1;
        (
            b.s.inconclusive_streak,
            b.policy.analysis.inconclusive,
            "inconclusive",
        )
    };
    if streak >= escalation.limit {
        let reason = format!(
            "{streak} consecutive interval(s) {what}; a release that cannot be judged is never promoted"
        );
        match escalation.action {
            EscalationAction::Halt => b.halt(reason),
            EscalationAction::Rollback => b.rollback("rampart", reason),
        }
        return true;
    }
    b.s.next_analysis_at = Some(b.now + ms(b.policy.analysis.interval));
    false
}

fn succeed(b: &mut Builder<'_>) {
    b.s.phase = Phase::Succeeded;
    b.event(
        "promoted",
        "rampart",
        format!("{} is now stable", b.s.version),
    );
    b.notify(
        NoticeKind::Promoted,
        format!("{} {} promoted", b.policy.service, b.s.version),
    );
}

fn rolled_back(b: &mut Builder<'_>, detail: String) {
    b.s.phase = Phase::RolledBack;
    let level_one = b.s.rollback_level == Some(1) && !b.policy.strategy.flag_only();
    let message = match (&b.s.stable, b.policy.strategy.ramped_flag()) {
        _ if level_one => format!(
            "{} keeps {} of traffic with its flags off; {detail}",
            b.s.version, b.s.weight
        ),
        (Some(stable), Some(flag)) if b.policy.strategy.flag_only() => {
            format!(
                "`{flag}` is off for everyone outside its allowlist and {stable} keeps serving; {detail}"
            )
        }
        (Some(stable), _) => format!("{stable} serves all traffic; {detail}"),
        (None, _) => format!("the new version is stopped and nothing was serving before; {detail}"),
    };
    b.event("rolled_back", "rampart", message.clone());
    b.notify(
        NoticeKind::RolledBack,
        format!(
            "{} {} rolled back: {message}",
            b.policy.service, b.s.version
        ),
    );
}
