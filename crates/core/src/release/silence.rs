//! The Alertmanager silence a release holds (policy `silences`): asked for at the start,
//! adopted again after a restart, renewed every half of its time to live, held through
//! a rollback, and expired once the release is over, whatever the outcome; its answers
//! go to the audit trail. It must never change the release's course: no phase, action,
//! timer, weight or decision depends on a silence, so one that fails is a warning.

use super::builder::{Builder, ms};
use super::model::SilenceHold;
use super::protocol::{Effect, Input, SilenceOp};
use crate::units::{Millis, format_duration};

/// Whether `input` answers a [`SilenceOp`].
pub(super) fn is_answer(input: &Input) -> bool {
    matches!(
        input,
        Input::Silenced { .. } | Input::SilenceExpired | Input::SilenceFailed { .. }
    )
}

/// After a step of a running release: holds the silence from the release's start (and
/// again after a restart, which adopts the one the previous run left), renews it when
/// due, and expires it once the step ended the release.
pub(super) fn follow(b: &mut Builder<'_>, started: bool, input: &Input) {
    let Some(spec) = &b.policy.silences else {
        return;
    };
    if b.s.phase.is_terminal() {
        return expire(b);
    }
    let resumed = matches!(input, Input::Resumed) && b.s.phase != super::Phase::Pending;
    let due = b.s.silence_renewal_at().is_some_and(|t| t <= b.now);
    if !(started || resumed || due) {
        return;
    }
    let ttl = ms(spec.ttl);
    let until = b.now.saturating_add(ttl);
    let id = match (&b.s.silence, resumed) {
        // A new run of the controller confirms the silence afresh (and says so).
        (Some(held), false) => held.id.clone(),
        _ => None,
    };
    b.s.silence = Some(SilenceHold {
        id,
        until,
        // Never due again at once, whatever the time to live.
        renew_at: Some(b.now.saturating_add((ttl / 2).max(1_000))),
    });
    b.effects
        .push(Effect::Silence(SilenceOp::Hold { from: b.now, until }));
}

/// The release is over: expires its silence, if one was asked for and is not expired
/// yet (again after a restart that found it still held).
pub(super) fn expire(b: &mut Builder<'_>) {
    if let Some(held) = b.s.silence.as_mut() {
        held.renew_at = None;
        b.effects.push(Effect::Silence(SilenceOp::Expire));
    }
}

/// Records what became of a [`SilenceOp`].
pub(super) fn answered(b: &mut Builder<'_>, input: &Input) {
    let renew = b
        .policy
        .silences
        .as_ref()
        .map_or(String::new(), |s| format_duration(s.ttl / 2));
    match input {
        Input::Silenced { id, until } => {
            let first = b.s.silence.as_ref().is_none_or(|s| s.id.is_none());
            if let Some(held) = b.s.silence.as_mut() {
                held.id = Some(id.clone());
            }
            let (kind, message) = if first {
                (
                    "silenced",
                    format!(
                        "alerts silenced while the release runs (Alertmanager silence {id} until {}, renewed every {renew})",
                        utc(*until)
                    ),
                )
            } else {
                (
                    "silence_renewed",
                    format!("alert silence {id} renewed until {}", utc(*until)),
                )
            };
            b.event(kind, "rampart", message);
        }
        Input::SilenceExpired => {
            b.s.silence = None;
            b.event(
                "silence_expired",
                "rampart",
                "alert silence expired: the release is over and its alerts are live again".into(),
            );
        }
        Input::SilenceFailed {
            op: SilenceOp::Hold { .. },
            detail,
        } => b.event(
            "silence_failed",
            "rampart",
            format!(
                "alerts not silenced ({detail}); the release goes on, and rampart tries again in {renew}"
            ),
        ),
        Input::SilenceFailed {
            op: SilenceOp::Expire,
            detail,
        } => {
            let lapses = b.s.silence.take().map_or(String::new(), |s| {
                format!(" by {}", utc(s.until))
            });
            b.event(
                "silence_failed",
                "rampart",
                format!(
                    "the alert silence could not be expired ({detail}); it lapses on its own{lapses}"
                ),
            );
        }
        _ => {}
    }
}

/// An instant in UTC, to the second, for messages.
fn utc(at: Millis) -> String {
    jiff::Timestamp::from_millisecond(i64::try_from(at).unwrap_or(i64::MAX))
        .unwrap_or(jiff::Timestamp::MAX)
        .strftime("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}
