//! Admission: whether a release may start or resume, which version serves as stable,
//! which migrations it applies, and whether an operator's request may reach a running
//! release.
//!
//! Every front end (`rampart run`, `rampart serve`, the MCP server, the local CLI) asks
//! these questions with facts it read from the store, the data plane and the disk, and
//! renders the answer its own way. Nothing here reads state or words a command line: a
//! refusal names what stood in the way, and the caller says what to do instead.

use std::path::PathBuf;

use crate::migrations::{CheckReport, Class};
use crate::policy::Migrations;
use crate::ports::{CommandKind, Freeze, ReleaseRecord};
use crate::release::{OutcomeKind, Phase};

/// How a requested release goes ahead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// The service has an unfinished release of the same version: it resumes, with the
    /// policy it started with (a policy edited since does not apply to it).
    Resume {
        /// The unfinished release.
        id: String,
        /// The policy text it started with.
        policy: String,
        /// Whether the policy the caller holds differs from that one.
        policy_changed: bool,
    },
    /// A new release.
    New {
        /// Set when it runs during a freeze as a hotfix: why, and whose freeze. A
        /// hotfix waits for an approval by someone other than its initiator.
        hotfix: Option<String>,
    },
}

/// Why a release may not start.
#[derive(Clone, Debug, PartialEq)]
pub enum StartRefusal {
    /// Another version of the service is still being released; it must finish first.
    Unfinished(ReleaseRecord),
    /// An operator froze the service (or every service) and this is no hotfix.
    Frozen(Freeze),
}

/// Decides whether `version` of a service may be released now.
///
/// `active` is the service's unfinished release, `freeze` the operator freeze that
/// applies to it, `hotfix` the reason the caller gave for releasing during a freeze.
///
/// Guarantees: an unfinished release of the same version is resumed, never started
/// twice; one of another version blocks; a freeze blocks new releases but never one
/// already under way, and lets a hotfix through (which then needs an approval).
pub fn admit_release(
    version: &str,
    policy: &str,
    hotfix: Option<&str>,
    active: Option<&ReleaseRecord>,
    freeze: Option<&Freeze>,
) -> Result<Start, StartRefusal> {
    match active {
        Some(rec) if rec.version == version => Ok(Start::Resume {
            id: rec.id.clone(),
            policy: rec.policy.clone(),
            policy_changed: rec.policy != policy,
        }),
        Some(rec) => Err(StartRefusal::Unfinished(rec.clone())),
        None => Ok(Start::New {
            hotfix: freeze_gate(freeze, hotfix)?,
        }),
    }
}

/// The freeze rule for a new release: blocked while frozen unless it is a hotfix.
/// Returns the hotfix note the release carries (`None` when nothing is frozen: a hotfix
/// reason outside a freeze changes nothing).
pub fn freeze_gate(
    freeze: Option<&Freeze>,
    hotfix: Option<&str>,
) -> Result<Option<String>, StartRefusal> {
    match (freeze, hotfix) {
        (Some(f), None) => Err(StartRefusal::Frozen(f.clone())),
        (Some(f), Some(why)) => Ok(Some(format!("{why}; freeze by {}: {}", f.actor, f.reason))),
        (None, _) => Ok(None),
    }
}

/// The hotfix note of a release started with `hotfix` (its reason) while a calendar
/// freeze of `windows` is in force at `now`: it waits for an approval before anything
/// runs, as under an operator's freeze ([`freeze_gate`]). `None` without a reason or
/// outside a freeze (a reason then changes nothing; release windows are not a freeze).
pub fn calendar_hotfix(
    hotfix: Option<&str>,
    windows: Option<&crate::windows::Windows>,
    now: crate::units::Millis,
) -> Option<String> {
    let reason = hotfix?;
    match windows?.status(now) {
        crate::windows::Status::Closed {
            why, freeze: true, ..
        } => Some(format!("{reason}; {why}")),
        _ => None,
    }
}

/// The version serving before this release, from the most to the least authoritative
/// fact: what the operator named, what the data plane runs (a cluster's stable
/// Deployment), what the store remembers the last release left serving.
pub fn stable_version(
    named: Option<&str>,
    running: Option<&str>,
    remembered: Option<&str>,
) -> Option<String> {
    named.or(running).or(remembered).map(str::to_string)
}

/// The migrations a release applies before it deploys, classified before anything runs.
#[derive(Clone, Debug, PartialEq)]
pub struct MigrationPlan {
    /// Files, in the order they apply.
    pub files: Vec<PathBuf>,
    /// The worst class over them: from `contract` on, a failure after they applied
    /// escalates to a human instead of rolling the code back (policy `on_incompatible`),
    /// and they wait for an approval before they apply (policy `approval`).
    pub class: Class,
    /// Reviewer annotations (`file:line: reason`) that marked statements safe, for the
    /// audit trail.
    pub annotations: Vec<String>,
}

/// Which migrations a release of a version applies, from the policy's `migrations`
/// section and what the version's directory ([`Migrations::dir_for`]) ships: its
/// check report, or `None` when it holds no SQL.
///
/// Guarantees: no plan without a `migrations` section; a version that ships no SQL
/// applies nothing, as `expand`; otherwise every file in the report's order, the worst
/// class over them, and every reviewer annotation.
pub fn migration_plan(
    spec: Option<&Migrations>,
    shipped: Option<&CheckReport>,
) -> Option<MigrationPlan> {
    spec?;
    let Some(report) = shipped else {
        return Some(MigrationPlan {
            files: Vec::new(),
            class: Class::Expand,
            annotations: Vec::new(),
        });
    };
    let annotations = report
        .files
        .iter()
        .flat_map(|f| {
            f.statements.iter().filter_map(move |s| {
                s.safe
                    .as_ref()
                    .map(|r| format!("{}:{}: {r}", f.path, s.line))
            })
        })
        .collect();
    Some(MigrationPlan {
        files: report
            .files
            .iter()
            .map(|f| PathBuf::from(&f.path))
            .collect(),
        class: report.class,
        annotations,
    })
}

/// What is known of a running release when an operator's request arrives.
#[derive(Clone, Copy, Debug)]
pub struct CommandFacts<'a> {
    /// The release's outcome, once it is over.
    pub outcome: Option<OutcomeKind>,
    /// Its phase.
    pub phase: Phase,
    /// Whether it holds at 100 % outside its release window (an approval ends the hold).
    pub holding_for_window: bool,
    /// Who started it.
    pub initiator: &'a str,
    /// The operator freeze that applies to its service.
    pub freeze: Option<&'a Freeze>,
    /// Whether the approval awaited is one a calendar freeze refuses
    /// ([`Release::approval_needs_no_freeze`](crate::release::Release::approval_needs_no_freeze)).
    pub approval_needs_no_freeze: bool,
    /// The calendar freeze of the release's policy in force now (why), if one is.
    pub calendar_freeze: Option<&'a str>,
    /// Whether a hotfix's approval lifted the calendar freeze for this release (a
    /// promotion may then go through it).
    pub freeze_lifted: bool,
}

/// Why an operator's request is refused before it reaches the release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandRefusal {
    /// The release is over.
    Over(OutcomeKind),
    /// The initiator (or someone unnamed) asked to approve or promote their own
    /// release: someone else must.
    FourEyes,
    /// An approval for a release that waits for none.
    NotAwaitingApproval(Phase),
    /// A promotion during an operator freeze: nothing goes to 100 % then.
    Frozen(Freeze),
    /// During a calendar freeze of the policy (why), an approval of a start outside
    /// the window or of a move to 100 %, or a promotion: only a hotfix runs through one.
    CalendarFreeze(String),
}

/// Decides whether `actor`'s request `kind` may be queued for a release.
///
/// The state machine enforces the same rules again when the request arrives (a request
/// can wait in the queue while the release moves on); this answers the operator at
/// once, the same way whichever path the request took.
pub fn admit_command(
    kind: CommandKind,
    actor: &str,
    facts: &CommandFacts<'_>,
) -> Result<(), CommandRefusal> {
    if let Some(outcome) = facts.outcome {
        return Err(CommandRefusal::Over(outcome));
    }
    if matches!(kind, CommandKind::Approve | CommandKind::Promote)
        && crate::release::same_person_or_nobody(actor, facts.initiator)
    {
        return Err(CommandRefusal::FourEyes);
    }
    if kind == CommandKind::Approve
        && facts.phase != Phase::AwaitingApproval
        && !(facts.phase == Phase::Progressing && facts.holding_for_window)
    {
        return Err(CommandRefusal::NotAwaitingApproval(facts.phase));
    }
    // The release would refuse these when they arrive: say so now, not after a 202.
    if let Some(why) = facts.calendar_freeze {
        let refused = match kind {
            CommandKind::Approve => facts.approval_needs_no_freeze,
            CommandKind::Promote => !facts.freeze_lifted,
            _ => false,
        };
        if refused {
            return Err(CommandRefusal::CalendarFreeze(why.to_string()));
        }
    }
    if kind == CommandKind::Promote
        && let Some(f) = facts.freeze
    {
        return Err(CommandRefusal::Frozen(f.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: &str, policy: &str) -> ReleaseRecord {
        ReleaseRecord {
            id: "svc-1".into(),
            service: "svc".into(),
            version: version.into(),
            policy: policy.into(),
            created_at: 0,
            outcome: None,
        }
    }

    fn freeze() -> Freeze {
        Freeze {
            actor: "ops".into(),
            reason: "black friday".into(),
            at: 5,
        }
    }

    #[test]
    fn an_unfinished_release_of_the_same_version_resumes_with_its_own_policy() {
        let rec = record("v2", "old policy");
        let start = admit_release("v2", "new policy", None, Some(&rec), Some(&freeze()));
        assert_eq!(
            start,
            Ok(Start::Resume {
                id: "svc-1".into(),
                policy: "old policy".into(),
                policy_changed: true,
            })
        );
        let same = admit_release("v2", "old policy", None, Some(&rec), None);
        assert!(matches!(
            same,
            Ok(Start::Resume {
                policy_changed: false,
                ..
            })
        ));
    }

    #[test]
    fn an_unfinished_release_of_another_version_blocks() {
        let rec = record("v2", "p");
        assert_eq!(
            admit_release("v3", "p", Some("urgent"), Some(&rec), None),
            Err(StartRefusal::Unfinished(rec))
        );
    }

    #[test]
    fn a_freeze_blocks_new_releases_but_lets_a_hotfix_through_with_its_reason() {
        assert_eq!(
            admit_release("v3", "p", None, None, Some(&freeze())),
            Err(StartRefusal::Frozen(freeze()))
        );
        assert_eq!(
            admit_release("v3", "p", Some("cve"), None, Some(&freeze())),
            Ok(Start::New {
                hotfix: Some("cve; freeze by ops: black friday".into())
            })
        );
        assert_eq!(
            admit_release("v3", "p", Some("cve"), None, None),
            Ok(Start::New { hotfix: None })
        );
    }

    #[test]
    fn the_named_stable_wins_over_the_running_one_over_the_remembered_one() {
        assert_eq!(
            stable_version(Some("a"), Some("b"), Some("c")).as_deref(),
            Some("a")
        );
        assert_eq!(
            stable_version(None, Some("b"), Some("c")).as_deref(),
            Some("b")
        );
        assert_eq!(stable_version(None, None, Some("c")).as_deref(), Some("c"));
        assert_eq!(stable_version(None, None, None), None);
    }

    fn facts(phase: Phase) -> CommandFacts<'static> {
        CommandFacts {
            outcome: None,
            phase,
            holding_for_window: false,
            initiator: "alice",
            freeze: None,
            approval_needs_no_freeze: false,
            calendar_freeze: None,
            freeze_lifted: false,
        }
    }

    #[test]
    fn nobody_approves_or_promotes_their_own_release() {
        let f = facts(Phase::AwaitingApproval);
        for kind in [CommandKind::Approve, CommandKind::Promote] {
            assert_eq!(
                admit_command(kind, "alice", &f),
                Err(CommandRefusal::FourEyes)
            );
            assert_eq!(admit_command(kind, "", &f), Err(CommandRefusal::FourEyes));
        }
        assert_eq!(admit_command(CommandKind::Approve, "bob", &f), Ok(()));
        assert_eq!(admit_command(CommandKind::Rollback, "alice", &f), Ok(()));
    }

    #[test]
    fn an_approval_needs_a_release_that_waits_for_one() {
        let progressing = facts(Phase::Progressing);
        assert_eq!(
            admit_command(CommandKind::Approve, "bob", &progressing),
            Err(CommandRefusal::NotAwaitingApproval(Phase::Progressing))
        );
        let holding = CommandFacts {
            holding_for_window: true,
            ..progressing
        };
        assert_eq!(admit_command(CommandKind::Approve, "bob", &holding), Ok(()));
    }

    #[test]
    fn a_freeze_refuses_promotion_only() {
        let fz = freeze();
        let f = CommandFacts {
            freeze: Some(&fz),
            ..facts(Phase::Progressing)
        };
        assert_eq!(
            admit_command(CommandKind::Promote, "bob", &f),
            Err(CommandRefusal::Frozen(freeze()))
        );
        for kind in [
            CommandKind::Rollback,
            CommandKind::Pause,
            CommandKind::Resume,
        ] {
            assert_eq!(admit_command(kind, "bob", &f), Ok(()));
        }
    }

    #[test]
    fn nothing_reaches_a_release_that_is_over() {
        let f = CommandFacts {
            outcome: Some(OutcomeKind::Promoted),
            ..facts(Phase::Succeeded)
        };
        for kind in CommandKind::ALL {
            assert_eq!(
                admit_command(kind, "bob", &f),
                Err(CommandRefusal::Over(OutcomeKind::Promoted))
            );
        }
    }

    #[test]
    fn a_calendar_freeze_refuses_an_approval_to_full_traffic_and_a_promotion() {
        let holding = CommandFacts {
            holding_for_window: true,
            approval_needs_no_freeze: true,
            calendar_freeze: Some("in the freeze \"holidays\""),
            ..facts(Phase::Progressing)
        };
        assert_eq!(
            admit_command(CommandKind::Approve, "bob", &holding),
            Err(CommandRefusal::CalendarFreeze(
                "in the freeze \"holidays\"".into()
            ))
        );
        // A canary step's approval is taken (the move to 100 % after it waits), and
        // outside a freeze the hold's is too.
        let step = CommandFacts {
            approval_needs_no_freeze: false,
            ..holding
        };
        assert_eq!(admit_command(CommandKind::Approve, "bob", &step), Ok(()));
        let open = CommandFacts {
            calendar_freeze: None,
            ..holding
        };
        assert_eq!(admit_command(CommandKind::Approve, "bob", &open), Ok(()));
        // Rollbacks and pauses are never frozen.
        for kind in [CommandKind::Rollback, CommandKind::Pause] {
            assert_eq!(admit_command(kind, "bob", &holding), Ok(()));
        }
        // Nothing is promoted through the freeze, unless a hotfix's approval lifted it.
        assert_eq!(
            admit_command(CommandKind::Promote, "bob", &holding),
            Err(CommandRefusal::CalendarFreeze(
                "in the freeze \"holidays\"".into()
            ))
        );
        let hotfix = CommandFacts {
            freeze_lifted: true,
            ..holding
        };
        assert_eq!(admit_command(CommandKind::Promote, "bob", &hotfix), Ok(()));
    }

    fn spec() -> Migrations {
        Migrations {
            dir: "migrations/{version}".into(),
            command: vec!["psql".into(), "-f".into(), "{file}".into()],
            escalate: true,
            timeout: std::time::Duration::from_secs(600),
            approval: None,
        }
    }

    #[test]
    fn the_migration_plan_is_the_versions_files_their_worst_class_and_their_annotations() {
        use crate::migrations::{FileReport, classify};
        assert_eq!(spec().dir_for("v2"), "migrations/v2");
        assert_eq!(migration_plan(None, None), None, "no `migrations` section");
        let nothing = migration_plan(Some(&spec()), None).unwrap();
        assert_eq!(nothing.class, Class::Expand, "a version that ships no SQL");
        assert!(nothing.files.is_empty() && nothing.annotations.is_empty());
        let file = |path: &str, sql: &str| FileReport::new(path.into(), classify(sql).unwrap());
        let shipped = CheckReport::new(vec![
            file(
                "m/001.sql",
                "ALTER TABLE t ADD COLUMN c int;\n-- rampart:safe backfill of c, reviewed by dana\nUPDATE t SET c = 0;\n",
            ),
            file("m/002.sql", "ALTER TABLE t DROP COLUMN old;\n"),
        ]);
        let plan = migration_plan(Some(&spec()), Some(&shipped)).unwrap();
        assert_eq!(
            plan.files,
            vec![PathBuf::from("m/001.sql"), PathBuf::from("m/002.sql")]
        );
        assert_eq!(plan.class, Class::Irreversible, "the worst over every file");
        assert_eq!(
            plan.annotations,
            vec!["m/001.sql:3: backfill of c, reviewed by dana".to_string()]
        );
    }
}
