//! What the state machine and the controller say to each other: the actions it asks
//! for, the inputs that answer them (and every other event), the effects of a step, and
//! the names they share (variants, check stages, gate results). Vocabulary only: it
//! must not hold a release's state or decide anything.

use crate::metrics::IntervalSample;
use crate::notice::NoticeKind;
use crate::policy::RouteMatch;
use crate::units::{Millis, Weight};

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

    /// The other copy.
    pub fn other(self) -> Variant {
        match self {
            Variant::Stable => Variant::Canary,
            Variant::Canary => Variant::Stable,
        }
    }
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
    /// Measure both variants over the window. Answered by [`Input::Measured`] or
    /// [`Input::MeasureFailed`].
    Measure(MeasureWindow),
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

/// What one [`Action::Measure`] covers: an analysis interval on the release's clock and
/// the versions it compares.
///
/// Guarantees (the state machine computes it, once, when it asks for the measurement):
/// - `from <= to`.
/// - Consecutive windows of one release are contiguous: a window starts where the
///   previous one ended. The first one (and the first after a controller restart)
///   covers the interval it closes, from when that interval started.
/// - Derived from the release's state alone, so replaying its inputs rebuilds it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MeasureWindow {
    /// Where the window starts: where the previous one ended, or when the interval it
    /// closes started.
    pub from: Millis,
    /// When the measurement was asked for (the time of the step that emitted it).
    pub to: Millis,
    /// The version serving before, if any (`{version}` for stable).
    pub stable: Option<String>,
    /// The version being released (`{version}` for the canary).
    pub canary: String,
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

/// What to do with the release's Alertmanager silence (policy `silences`). Answered by
/// [`Input::Silenced`], [`Input::SilenceExpired`] or [`Input::SilenceFailed`].
/// Idempotent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SilenceOp {
    /// Silence the release's alerts from `from` until `until`: create its silence, or
    /// extend the one it has (a previous run's included).
    Hold {
        /// When the silence starts (the time of the step that asked).
        from: Millis,
        /// When it lapses unless renewed.
        until: Millis,
    },
    /// The release is over: expire its silence.
    Expire,
}

/// What the state machine asks of the world.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Perform an action and report its result.
    Do(Action),
    /// Hold or expire the release's silence, beside the pending action: it is never the
    /// one outstanding action, so a slow or failing Alertmanager holds nothing up.
    Silence(SilenceOp),
    /// Tell people. Fire and forget.
    Notify {
        /// What happened, for the comms cadence.
        kind: NoticeKind,
        /// Whether a human must act now.
        page: bool,
        /// The message.
        message: String,
        /// What a person may do about it.
        instead: Option<crate::instead::Instead>,
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
/// their effects run; replaying them through [`step`](crate::step()) rebuilds the state exactly.
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
        /// When it was asked: an approval asked before the current approval point
        /// began was meant for an earlier one (a double click, two approvers at once)
        /// and is refused. `None` in logs written before it was kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        asked_at: Option<Millis>,
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
        /// The operator's freeze of the service in force when the promotion was taken
        /// (who and why), which the controller reads from the store then: a promotion
        /// asked before a freeze began is refused once it is in force.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        frozen: Option<String>,
    },
    /// Answer to [`SilenceOp::Hold`]: the release's alerts are silenced.
    Silenced {
        /// Alertmanager's id of the silence.
        id: String,
        /// When it lapses unless renewed.
        until: Millis,
    },
    /// Answer to [`SilenceOp::Expire`]: the silence is expired.
    SilenceExpired,
    /// Answer to a [`SilenceOp`] that failed. Recorded, never fatal to the release.
    SilenceFailed {
        /// What was asked.
        op: SilenceOp,
        /// What went wrong.
        detail: String,
    },
    /// The release's log, replayed under the policy and the rampart taking it up
    /// again, makes other decisions than the ones it recorded (the policy was edited,
    /// or rampart upgraded, while it ran): the state cannot be rebuilt, so the release
    /// halts where the log left it. Replaces whatever the replay made of the release.
    RulesChanged {
        /// The first entry of the log that replays differently: the state is rebuilt
        /// from the entries before it, and this input stands for the rest.
        seq: u64,
        /// The canary weight the log last recorded.
        weight: Weight,
        /// How the release ended, when its log recorded an end.
        #[serde(default)]
        ended: Option<super::model::OutcomeKind>,
        /// Who started the rollback the log recorded, if it recorded one.
        #[serde(default)]
        rollback_by: Option<String>,
        /// Rolling: the stable replicas the log last recorded in service.
        #[serde(default)]
        stable_replicas: Option<u32>,
        /// Rolling: the new version's replicas the log last recorded in service.
        #[serde(default)]
        canary_replicas: Option<u32>,
        /// What the entry recorded and what it gives now.
        detail: String,
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

impl Input {
    /// The input's `snake_case` name, as its `type` is stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Input::Start { .. } => "start",
            Input::Approved { .. } => "approved",
            Input::Resumed => "resumed",
            Input::GatesChecked { .. } => "gates_checked",
            Input::Deployed { .. } => "deployed",
            Input::TrafficSet { .. } => "traffic_set",
            Input::TrafficFailed { .. } => "traffic_failed",
            Input::Tick => "tick",
            Input::Measured { .. } => "measured",
            Input::MeasureFailed { .. } => "measure_failed",
            Input::Stopped { .. } => "stopped",
            Input::StableVerified { .. } => "stable_verified",
            Input::Migrated { .. } => "migrated",
            Input::Scaled { .. } => "scaled",
            Input::ChecksDone { .. } => "checks_done",
            Input::FlagsOff { .. } => "flags_off",
            Input::Pause { .. } => "pause",
            Input::Unpause { .. } => "unpause",
            Input::Promote { .. } => "promote",
            Input::Silenced { .. } => "silenced",
            Input::SilenceExpired => "silence_expired",
            Input::SilenceFailed { .. } => "silence_failed",
            Input::RulesChanged { .. } => "rules_changed",
            Input::Abort { .. } => "abort",
        }
    }
}
