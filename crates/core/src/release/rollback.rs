//! How a release stops when it must: the ordered rollback (flags off, traffic back,
//! the new version stopped, stable verified), escalation after breaking migrations,
//! and halting. Once a rollback is decided it must never move weight up.

use super::analysis::judge_interval;
use super::builder::Builder;
use super::model::{DecisionKind, Phase};
use super::progress::trip_reason;
use super::protocol::{Action, Variant};
use crate::instead::Instead;
use crate::judge::{Evidence, Verdict};
use crate::metrics::IntervalSample;
use crate::notice::NoticeKind;
use crate::units::Weight;

// === impl Builder: how a release stops ===

impl Builder<'_> {
    /// Rolling rollback: the replaced batches go back in reverse order, each one
    /// restoring old replicas before moving traffic and retiring new ones.
    pub(super) fn rolling_back_chain(&self, r: &crate::policy::RollingSpec) -> Vec<Action> {
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
    pub(super) fn rollback(&mut self, actor: &str, reason: String) {
        self.rollback_with(actor, reason, false);
    }

    pub(super) fn rollback_with(&mut self, actor: &str, reason: String, force: bool) {
        // An operator's rollback kept for the work in flight is this one now: theirs
        // (their name, their `force`, not counted as automatic), not applied again.
        if matches!(self.s.deferred, Some(super::protocol::Input::Abort { .. }))
            && let Some(super::protocol::Input::Abort {
                actor: asked,
                force: forced,
                ..
            }) = self.s.deferred.take()
            && actor == "rampart"
        {
            return self.rollback_with(
                &asked,
                format!("{reason}; {asked} had asked for a rollback"),
                forced,
            );
        }
        let incompatible = self
            .s
            .migration_class
            .is_some_and(|c| c >= crate::migrations::Class::Contract);
        let escalate = self.policy.migrations.as_ref().is_some_and(|m| m.escalate);
        if incompatible && escalate && !force {
            return self.escalate(reason);
        }
        // Switching back would send every user to a version that is not running.
        if self.s.previous_lost {
            return self.halt(format!(
                "{reason}; the previous version did not come back after a restart, so there is nothing to switch back to"
            ));
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
        // A traffic change decided but not answered may be in force: users may have
        // met the new code.
        let deciding = self.s.weight_asked();
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
        // During the watch, or at 100 %, the flags still go off first (the order holds),
        // but with no traffic left on the previous version that could not be verified:
        // traffic follows at once (see `flags_off`).
        let users_met_it =
            self.s.weight > Weight::ZERO || deciding || self.policy.strategy.flag_only();
        if !flags.is_empty() && users_met_it {
            self.s.rollback_level = Some(1);
            self.act(Action::FlagsOff { flags });
            return;
        }
        self.rollback_traffic();
    }

    /// Rollback levels 2 and 3: traffic back to stable, then the new version stopped
    /// (or, rolling, the replaced batches restored in reverse order).
    pub(super) fn rollback_traffic(&mut self) {
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
    pub(super) fn escalate(&mut self, reason: String) {
        self.refuse_deferred_abort("escalated");
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
        let instead = Instead::ForceRollback {
            service: self.policy.service.clone(),
        };
        self.event_offering("escalated", "rampart", why.clone(), instead.clone());
        self.notify_offering(
            NoticeKind::Escalated,
            format!(
                "release {} of {} ESCALATED at canary weight {}: {why}. Choose: roll forward with a fixed version, or repair the data and force the code's rollback.",
                self.s.version, self.policy.service, self.s.weight
            ),
            Some(instead),
        );
    }

    /// Stops where it stands. Deliberately emits no traffic action.
    pub(super) fn halt(&mut self, reason: String) {
        self.refuse_deferred_abort("halted");
        self.decide(DecisionKind::Halt, reason.clone());
        self.s.phase = Phase::Halted;
        self.s.pending = None;
        self.s.queued.clear();
        self.s.next_analysis_at = None;
        self.event("halted", "rampart", reason.clone());
        self.page_halted(&reason);
    }

    /// An operator's rollback kept for the work in flight when the release stops
    /// otherwise (`how`): it can no longer apply, and its author is told.
    fn refuse_deferred_abort(&mut self, how: &str) {
        if let Some(super::protocol::Input::Abort { actor, .. }) = self.s.deferred.take() {
            self.event(
                "command_refused",
                &actor,
                format!(
                    "the release {how} before the rollback asked could start; a human decides from here"
                ),
            );
        }
    }

    /// Pages that the release halted where it stands, for `reason`.
    pub(super) fn page_halted(&mut self, reason: &str) {
        self.notify(
            NoticeKind::Halted,
            format!(
                "release {} of {} halted at canary weight {}: {reason}. A human must decide; rampart will not move traffic.",
                self.s.version, self.policy.service, self.s.weight
            ),
        );
    }
}

/// Level 1 is done: verify it over one analysis interval, or (flag release, operator
/// rollback, flags that did not switch off) go on to the traffic.
pub(super) fn flags_off(b: &mut Builder<'_>, ok: bool, detail: &str) {
    if !ok {
        b.event(
            "flags_off_failed",
            "rampart",
            format!("level 1 failed: {detail}; moving traffic back instead"),
        );
        return b.rollback_traffic();
    }
    b.event("flags_off", "rampart", format!("level 1: {detail}"));
    let by_operator =
        b.s.decision.as_ref().is_some_and(|d| d.by != "rampart") || b.s.hurried_by.is_some();
    if b.policy.strategy.flag_only() || by_operator {
        return b.rollback_traffic();
    }
    if b.s.stable_idle() {
        b.event(
            "flags_off_unverified",
            "rampart",
            "the previous version has no traffic to compare with, so flags off cannot be judged: moving traffic back".to_string(),
        );
        return b.rollback_traffic();
    }
    // Judge the interval after the switch on its own: fresh evidence, fresh streaks,
    // and `min_samples` counted from the switch (a sequential judge's gate reads its
    // evidence's tested count).
    let n = b.policy.analysis.metrics.len();
    b.s.evidence = vec![Evidence::default(); n];
    b.s.canary_seen = 0;
    b.s.pooled = vec![None; n];
    b.s.failure_streaks = vec![0; n];
    b.start_fresh_interval();
}

/// Whether flags off restored health: the first interval after it must pass outright.
/// If it does, the rollback stops at level 1 and traffic stays where it is.
pub(super) fn verify_level_one(b: &mut Builder<'_>, sample: Option<&IntervalSample>) {
    b.s.next_analysis_at = None;
    let judged = sample.map(|s| judge_interval(b, s));
    let verdict = judged.as_ref().map(|j| j.verdict);
    // Stable failing every limit the canary still fails: moving the canary's users
    // there would not help (as at a trip, both versions unhealthy halt).
    if let Some(j) = &judged
        && j.verdict == Verdict::Fail
    {
        let failing: Vec<usize> = (0..j.readings.len())
            .filter(|i| j.readings[*i].verdict == Verdict::Fail)
            .collect();
        let (why, both) = trip_reason(b, &j.readings, &failing);
        if !failing.is_empty() && both {
            return b.halt(format!(
                "level 1 (flags off) did not restore health and stable breaks the same limits ({why}): both versions are unhealthy, and moving traffic back would not help"
            ));
        }
    }
    // A sequential judge passes an interval it has not rejected, which after one
    // interval of fresh evidence says little: a canary still twice as bad passes. It
    // cannot show health restored, so level 2 follows (stable is known good).
    let sequential = b
        .policy
        .analysis
        .metrics
        .iter()
        .any(|m| matches!(m.judge, crate::policy::Judge::Sequential(_)));
    if verdict == Some(Verdict::Pass) && sequential {
        b.event(
            "level_not_verified",
            "rampart",
            "level 1 cannot be verified by a sequential judge (one interval without a rejection is no evidence of health); level 2: traffic back to stable".to_string(),
        );
        return b.rollback_traffic();
    }
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

pub(super) fn rolled_back(b: &mut Builder<'_>, detail: String) {
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
