//! The transition under construction: a copy of the state, the effects and the audit
//! events one step emits, and the primitives every phase uses to add to them. It must
//! not make a phase's decisions itself; the phase files do.

use std::time::Duration;

use super::model::{AuditEvent, Decision, DecisionKind, Phase, PreApproval, Release, Transition};
use super::protocol::{Action, Effect, MeasureWindow, Variant};
use crate::instead::Instead;
use crate::judge::MetricReading;
use crate::notice::NoticeKind;
use crate::policy::Policy;
use crate::units::{Millis, Weight};

pub(super) fn ms(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Builds one transition: a mutable copy of the state plus what to emit.
pub(super) struct Builder<'a> {
    pub(super) policy: &'a Policy,
    pub(super) now: Millis,
    pub(super) s: Release,
    pub(super) effects: Vec<Effect>,
    pub(super) events: Vec<AuditEvent>,
}

impl Builder<'_> {
    pub(super) fn event(&mut self, kind: &str, actor: &str, message: String) {
        self.push_event(kind, actor, message, Vec::new(), None);
    }

    pub(super) fn event_with(
        &mut self,
        kind: &str,
        actor: &str,
        message: String,
        readings: Vec<MetricReading>,
    ) {
        self.push_event(kind, actor, message, readings, None);
    }

    /// An event with what a person may do about it.
    pub(super) fn event_offering(
        &mut self,
        kind: &str,
        actor: &str,
        message: String,
        instead: Instead,
    ) {
        self.push_event(kind, actor, message, Vec::new(), Some(instead));
    }

    fn push_event(
        &mut self,
        kind: &str,
        actor: &str,
        message: String,
        readings: Vec<MetricReading>,
        instead: Option<Instead>,
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
            instead,
        });
    }

    pub(super) fn act(&mut self, action: Action) {
        self.s.pending = Some(action.clone());
        self.effects.push(Effect::Do(action));
    }

    /// Starts an analysis interval now: the measurement that closes it is due one
    /// policy interval later.
    pub(super) fn start_interval(&mut self) {
        self.s.next_analysis_at = Some(self.now + ms(self.policy.analysis.interval));
    }

    /// Starts an analysis interval whose window starts now (a new step, the watch
    /// after promotion, the check after flags off): the next measurement reads none
    /// of the time before, at another weight or with the flags on, that the last
    /// window left unread (an approval wait spans hours).
    pub(super) fn start_fresh_interval(&mut self) {
        self.s.measured_until = None;
        self.start_interval();
    }

    /// The window of the measurement due now, up to now, with the release's versions:
    /// it starts where the last measurement's window ended, or, without one (the first
    /// measurement, or the first after a restart), when the current interval started
    /// (one policy interval before it was due, see [`Builder::start_interval`]). The
    /// only place a window is computed. It never starts before the latest window read
    /// ended (a controller whose clock is behind its predecessor's would otherwise ask
    /// the sources for time they already answered, and counts would be added twice).
    pub(super) fn measure_window(&self) -> MeasureWindow {
        let interval = ms(self.policy.analysis.interval);
        let due = self.s.next_analysis_at.unwrap_or(self.now).min(self.now);
        let from = self
            .s
            .measured_until
            .unwrap_or(due.saturating_sub(interval))
            .max(self.s.read_until.unwrap_or(0))
            .min(self.now);
        MeasureWindow {
            from,
            to: self.now,
            stable: self.s.stable.clone(),
            canary: self.s.version.clone(),
        }
    }

    pub(super) fn notify(&mut self, kind: NoticeKind, message: String) {
        self.notify_offering(kind, message, None);
    }

    /// A notice with what a person may do about it.
    pub(super) fn notify_offering(
        &mut self,
        kind: NoticeKind,
        message: String,
        instead: Option<Instead>,
    ) {
        let page = matches!(
            kind,
            NoticeKind::Approval | NoticeKind::Halted | NoticeKind::Escalated
        );
        self.effects.push(Effect::Notify {
            kind,
            page,
            message,
            instead,
        });
    }

    pub(super) fn decide(&mut self, kind: DecisionKind, reason: String) {
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
    pub(super) fn set_weight(&mut self, weight: Weight) {
        self.act(Action::SetWeight {
            weight,
            matches: Vec::new(),
        });
    }

    /// Sets the current step's weight and match rules.
    pub(super) fn route_step(&mut self) {
        let chain = self.step_chain();
        self.chain(chain);
    }

    /// The actions that put the current step in force. Rolling: start the batch's new
    /// replicas, move their share of traffic, then retire as many old ones.
    pub(super) fn step_chain(&self) -> Vec<Action> {
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

    pub(super) fn scale(&self, variant: Variant, replicas: u32) -> Action {
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
    pub(super) fn chain(&mut self, mut chain: Vec<Action>) {
        if chain.is_empty() {
            return;
        }
        let first = chain.remove(0);
        self.s.queued = chain;
        self.act(first);
    }

    /// Who may not approve: the person who started the release.
    pub(super) fn not_the_initiator(&self) -> String {
        if self.s.initiator.is_empty() {
            "the initiator".into()
        } else {
            self.s.initiator.clone()
        }
    }

    /// Holds the release, with no traffic moved, until a calendar freeze ends
    /// (`timeout_ms`): as a wait for all traffic at once, but asking no one, since no
    /// approval lifts a freeze.
    pub(super) fn await_window(&mut self, timeout_ms: Millis, msg: String) {
        self.s.pending = None;
        self.s.phase = Phase::AwaitingApproval;
        self.s.approving = Some(PreApproval::FullTraffic);
        self.s.awaiting_since = Some(self.now);
        self.s.timer = Some(self.now + timeout_ms);
        self.event("holding_for_window", "rampart", msg.clone());
        self.notify(NoticeKind::Step, msg);
    }

    /// Holds the release at an approval point until `timeout_ms` passes, and asks for it.
    pub(super) fn await_approval(
        &mut self,
        kind: Option<PreApproval>,
        timeout_ms: Millis,
        ask: String,
    ) {
        self.s.pending = None;
        // The same wait asked again (a window wait taken up late) is the same approval
        // point: an approval asked for it still counts. Each canary step's approval
        // (`kind` none) is a point of its own.
        let same =
            kind.is_some() && self.s.phase == Phase::AwaitingApproval && self.s.approving == kind;
        if !same || self.s.awaiting_since.is_none() {
            self.s.awaiting_since = Some(self.now);
        }
        self.s.phase = Phase::AwaitingApproval;
        self.s.approving = kind;
        self.s.timer = Some(self.now + timeout_ms);
        let instead = Instead::Approve {
            release: self.s.id.clone(),
            not_by: self.not_the_initiator(),
        };
        self.event_offering("awaiting_approval", "rampart", ask.clone(), instead.clone());
        self.notify_offering(NoticeKind::Approval, ask, Some(instead));
    }

    pub(super) fn finish(self) -> Transition {
        Transition {
            state: self.s,
            effects: self.effects,
            events: self.events,
        }
    }
}

/// Why releases may not run now and when they next may, from the policy's windows.
pub(super) fn window_closed(b: &Builder<'_>) -> Option<(String, bool, Option<Millis>)> {
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
