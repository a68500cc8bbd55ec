//! Everything before the first deploy: the start, release windows and freezes, the
//! gates, a hotfix's approval, the migrations and their approval, and blocking. It
//! must not deploy or move traffic; it hands over to progress.

use super::builder::{Builder, ms, window_closed};
use super::model::{DecisionKind, Phase, PreApproval};
use super::progress::start_deploying;
use super::protocol::{Action, GateResult};
use crate::judge::Evidence;
use crate::notice::NoticeKind;
use crate::policy::Judge;
use crate::units::Millis;

/// How long a hotfix during a freeze waits for its approval.
const HOTFIX_APPROVAL_MS: Millis = 3_600_000;

pub(super) fn start(b: &mut Builder<'_>, id: &str, version: &str, stable: Option<String>) {
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
    // Sequential judges also test from later steps' starts, planned here.
    let later = super::progress::later_test_steps(b.policy.strategy.steps()).len();
    b.s.evidence = b
        .policy
        .analysis
        .metrics
        .iter()
        .map(|m| match m.judge {
            Judge::Sequential(_) => Evidence::with_later_tests(later),
            Judge::Threshold(_) => Evidence::default(),
        })
        .collect();
    b.s.pooled = vec![None; b.policy.analysis.metrics.len()];
    let from = match &b.s.stable {
        Some(s) => format!(" (stable {s})"),
        None => " (initial release: nothing to compare with)".into(),
    };
    let msg = format!("releasing {} {version}{from}", b.policy.service);
    b.event("release_started", "rampart", msg.clone());
    b.notify(NoticeKind::Started, msg);
}

/// Runs the gates now, or waits for the next release window, or is blocked.
pub(super) fn open_or_wait(b: &mut Builder<'_>) {
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
                "release {} of {} started {why}; it waits for the next window, which opens {when}. Nothing runs until then; an approval (by anyone but {}) releases it now, attended",
                b.s.version,
                b.policy.service,
                b.not_the_initiator()
            );
            b.await_approval(Some(PreApproval::Window), t - b.now, ask);
        }
        _ => block(b, format!("{why}; the next window opens {when}")),
    }
}

pub(super) fn gates_checked(b: &mut Builder<'_>, results: &[GateResult]) {
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
                "release {} of {} ships {class} database migrations and waits for approval by {} (anyone but {}) before applying them; nothing is applied or deployed until then, and it is blocked if none comes within {}",
                b.s.version,
                b.policy.service,
                approval.role,
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
pub(super) fn ask_hotfix_approval(b: &mut Builder<'_>, why: &str) {
    let ask = format!(
        "hotfix {} of {} during a freeze ({why}) waits for approval (by anyone but {}); it is blocked if none comes within 1h",
        b.s.version,
        b.policy.service,
        b.not_the_initiator()
    );
    b.await_approval(Some(PreApproval::Hotfix), HOTFIX_APPROVAL_MS, ask);
}

/// Nothing was applied or deployed: the release ends blocked.
pub(super) fn block(b: &mut Builder<'_>, reason: String) {
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

pub(super) fn migrated(
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
