//! Taking a release up again after the controller restarted: re-establish the world
//! the persisted state assumes, with idempotent actions. It must not re-make a
//! decision the state already records.

use super::builder::Builder;
use super::model::{Phase, PreApproval};
use super::protocol::{Action, CheckStage, Variant};
use crate::units::Weight;

pub(super) fn resume(b: &mut Builder<'_>) {
    if b.policy.strategy.rolling().is_some()
        && matches!(b.s.phase, Phase::Progressing | Phase::RollingBack)
    {
        return resume_rolling(b);
    }
    let stable = b.s.stable.clone();
    let mut ensure_stable = stable.clone().map(|version| Action::Deploy {
        variant: Variant::Stable,
        version,
    });
    // A flag release runs no second copy: its canary is the flag-on users.
    let mut canary = (!b.policy.strategy.flag_only()).then(|| Action::Deploy {
        variant: Variant::Canary,
        version: b.s.version.clone(),
    });
    // Rolling, once its first replicas were counted (waiting for an approval between
    // steps, or past the steps): the old replicas were replaced batch by batch, and a
    // deploy would start a whole set of them again (a second copy of the service,
    // which rolling exists to avoid). The replica counts the state records are
    // re-established instead.
    if b.policy.strategy.rolling().is_some()
        && matches!(
            b.s.phase,
            Phase::AwaitingApproval
                | Phase::Promoting
                | Phase::Watching
                | Phase::Verifying
                | Phase::KeepingPrevious
        )
    {
        ensure_stable = stable
            .is_some()
            .then(|| b.scale(Variant::Stable, b.s.stable_replicas));
        canary = Some(b.scale(Variant::Canary, b.s.canary_replicas));
    }
    // The processes and the router may have died with the controller. Re-establish
    // the world this state assumes, with idempotent actions, before going on. No
    // decision is re-made: the chain only repeats what the state already records.
    let mut chain: Vec<Action> = Vec::new();
    match b.s.phase {
        Phase::Pending => return,
        Phase::Gating => chain.push(Action::RunGates),
        // A migration tool records what it applied: its command runs again and applies
        // what is left. Run file by file, the controller's ledger skips the files
        // applied and refuses to run again the one it was running.
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
        // Stopping the previous version was under way: the new one serves everyone,
        // and the stop is asked again (it is idempotent), never a watch or a keep
        // window that would offer a switch back to what is going.
        Phase::Promoting if b.s.releasing_previous => {
            chain.extend(canary.clone());
            chain.push(Action::SetWeight {
                weight: Weight::FULL,
                matches: Vec::new(),
            });
            chain.push(Action::Stop {
                variant: Variant::Stable,
            });
        }
        Phase::Promoting => {
            match canary.clone() {
                Some(c) => {
                    chain.push(c);
                    // A previous version that a watch, a post-release check or an
                    // operator in the keep window may switch back to must run.
                    if !b.policy.strategy.keep_previous().is_zero()
                        || b.policy.post_release.is_some()
                    {
                        chain.extend(ensure_stable);
                    }
                }
                None => chain.extend(ensure_stable),
            }
            chain.push(Action::SetWeight {
                weight: Weight::FULL,
                matches: Vec::new(),
            });
        }
        Phase::Watching => {
            chain.extend(ensure_stable);
            chain.extend(canary.clone());
            chain.push(Action::SetWeight {
                weight: Weight::FULL,
                matches: Vec::new(),
            });
            // Counters restarted with the controller: measure a fresh full interval.
            b.s.next_analysis_at = None;
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
        // (A flag release's level 1 goes on to its traffic, the flag's ramp, once the
        // flags are off: asked again too, since the kill switches may still be on.)
        Phase::RollingBack if b.s.rollback_level == Some(1) => {
            chain.extend(ensure_stable);
            // At 100 % level 1 is not judged: traffic goes back once the flags are
            // off, so the version being rolled back is not started again (one that
            // does not come back would halt the rollback).
            if !b.s.stable_idle() {
                chain.extend(canary.clone());
            }
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
    // The builtin counters restarted with the controller: the next window is a
    // fresh interval, not the time since the last measurement before the restart.
    b.s.measured_until = None;
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
        // Level 1: the flags off again (idempotent), then verified afresh, as
        // without a restart; the batches stay until that says otherwise.
        (Phase::RollingBack, _) if b.s.rollback_level == Some(1) => {
            chain.push(Action::FlagsOff {
                flags: b.policy.level_one_flags(),
            });
        }
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
    // The builtin counters restarted with the controller: the next window is a
    // fresh interval, not the time since the last measurement before the restart.
    b.s.measured_until = None;
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

/// Answer to a re-establishing deploy during resume, in a phase past Deploying.
pub(super) fn ensured(b: &mut Builder<'_>, variant: Variant, ok: bool, detail: &str) {
    if ok {
        return;
    }
    if b.s.releasing_previous {
        // The previous version is being stopped: nothing to switch back to.
        return b.halt(format!(
            "{} did not come back after restart while the previous version was being stopped: {detail}",
            variant.as_str()
        ));
    }
    match (b.s.phase, variant) {
        // The switch to the new version goes on (it serves everyone, or is about to),
        // or the promotion it already was: only the switch back is lost, and said
        // so. What the failure cut short of re-establishing is asked again.
        (Phase::Promoting | Phase::KeepingPrevious, Variant::Stable)
            if !b.policy.strategy.flag_only() =>
        {
            b.event(
                "previous_lost",
                "rampart",
                format!(
                    "the previous version did not come back after restart ({detail}): the promotion goes on, with no switch back to it (a failure now halts and pages)"
                ),
            );
            b.s.previous_lost = true;
            let mut rest = Vec::new();
            if b.s.phase == Phase::KeepingPrevious {
                rest.push(Action::Deploy {
                    variant: Variant::Canary,
                    version: b.s.version.clone(),
                });
            }
            rest.push(Action::SetWeight {
                weight: Weight::FULL,
                matches: Vec::new(),
            });
            b.chain(rest);
        }
        (
            Phase::Previewing
            | Phase::Progressing
            | Phase::Promoting
            | Phase::Watching
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
