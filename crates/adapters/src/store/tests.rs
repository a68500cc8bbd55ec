//! The store's contract, on SQLite (the PostgreSQL store runs the same checks against
//! a real server in `tests/postgres_store.rs`).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use super::*;
use rampart_core::Weight;
use rampart_core::ports::{
    CommandKind, FlagChange, FlagStore, OperatorCommand, ReleaseRecord, Store, StoredInput,
};
use rampart_core::release::Input;
use rampart_core::release::OutcomeKind;
use sql::args;

fn rel(id: &str) -> ReleaseRecord {
    ReleaseRecord {
        id: id.into(),
        service: "shop".into(),
        version: "v2".into(),
        policy: "service: shop".into(),
        created_at: 1,
        outcome: None,
    }
}

fn entry(seq: u64) -> StoredInput {
    StoredInput {
        seq,
        at: 10 + seq,
        input: Input::Tick,
        events: vec![],
    }
}

#[tokio::test]
async fn append_rejects_duplicate_and_out_of_order_seq() {
    let s = StateStore::in_memory().await.unwrap();
    s.create(&rel("r1")).await.unwrap();
    s.append("r1", &entry(0)).await.unwrap();
    s.append("r1", &entry(1)).await.unwrap();
    assert!(s.append("r1", &entry(1)).await.is_err(), "duplicate seq");
    assert!(s.append("r1", &entry(5)).await.is_err(), "gap");
    let (_, log) = s.load("r1").await.unwrap();
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 1]);
}

#[tokio::test]
async fn one_unfinished_release_per_service() {
    let s = StateStore::in_memory().await.unwrap();
    s.create(&rel("r1")).await.unwrap();
    let err = s.create(&rel("r2")).await.unwrap_err();
    assert!(err.0.contains("unfinished"), "{err}");
    assert_eq!(s.active("shop").await.unwrap().unwrap().id, "r1");
    s.finish("r1", OutcomeKind::Promoted, Some("v2"), false)
        .await
        .unwrap();
    assert!(s.active("shop").await.unwrap().is_none());
    assert_eq!(
        s.serving_version("shop").await.unwrap().as_deref(),
        Some("v2")
    );
    s.create(&rel("r2")).await.unwrap();
}

#[tokio::test]
async fn commands_reach_the_unfinished_release_once() {
    let s = StateStore::in_memory().await.unwrap();
    let cmd = OperatorCommand {
        kind: CommandKind::Rollback,
        actor: "alice".into(),
        reason: "tickets".into(),
        force: false,
        at: 0,
    };
    assert!(
        s.push_command("shop", &cmd).await.is_err(),
        "nothing in progress"
    );
    s.create(&rel("r1")).await.unwrap();
    assert_eq!(s.push_command("shop", &cmd).await.unwrap(), "r1");
    // Handed out until it is answered: a reader that dies before leaves it queued.
    let (queued, got) = s.next_command("r1").await.unwrap().unwrap();
    assert_eq!(got, cmd);
    assert_eq!(s.next_command("r1").await.unwrap(), Some((queued, cmd)));
    s.drop_command("r1", queued).await.unwrap();
    assert_eq!(s.next_command("r1").await.unwrap(), None);
}

#[tokio::test]
async fn state_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = StateStore::open(&path).await.unwrap();
        s.create(&rel("r1")).await.unwrap();
        s.append("r1", &entry(0)).await.unwrap();
    }
    let s = StateStore::open(&path).await.unwrap();
    let (r, log) = s.load("r1").await.unwrap();
    assert_eq!(r.version, "v2");
    assert_eq!(log.len(), 1);
}

#[tokio::test]
async fn flags_keep_their_runtime_state_and_every_change_is_audited() {
    use rampart_core::flags::FlagDef;
    let s = StateStore::in_memory().await.unwrap();
    let def = |allow: &[&str]| FlagDef {
        name: "new-checkout".into(),
        default: true,
        allow: allow.iter().map(|a| a.to_string()).collect(),
    };
    s.define("shop", &[def(&["qa-1"])], 1).await.unwrap();
    let change = FlagChange {
        name: "new-checkout".into(),
        ramp: Some(Weight::from_percent(20).unwrap()),
        default: Some(false),
        actor: "alice".into(),
        reason: "ramp".into(),
        at: 5,
    };
    let after = s.set_flag("shop", &change).await.unwrap();
    assert_eq!(after.ramp, Weight::from_percent(20).unwrap());
    // Defining again (the next run) refreshes the allowlist, keeps ramp and default.
    s.define("shop", &[def(&["qa-2"])], 2).await.unwrap();
    let flags = s.flags("shop").await.unwrap();
    assert_eq!(
        (flags[0].ramp, flags[0].default, flags[0].allow.clone()),
        (
            Weight::from_percent(20).unwrap(),
            false,
            vec!["qa-2".to_string()]
        )
    );
    assert!(
        s.flags("other").await.unwrap().is_empty(),
        "flags are per service"
    );
    let unknown = FlagChange {
        name: "nope".into(),
        ..change
    };
    assert!(s.set_flag("shop", &unknown).await.is_err());
    let audited: Vec<String> = s
        .rows("SELECT detail FROM audit WHERE kind = 'flag_set'", args![])
        .await
        .unwrap()
        .iter()
        .map(|r| r.text(0).unwrap())
        .collect();
    // Who has it on whatever the ramp (the allowlist) is a change too.
    assert_eq!(
        audited,
        vec![
            r#"shop/new-checkout: allowlist from the policy, added ["qa-1"], removed []"#
                .to_string(),
            "shop/new-checkout: ramp 20%, default off (ramp)".to_string(),
            r#"shop/new-checkout: allowlist from the policy, added ["qa-2"], removed ["qa-1"]"#
                .to_string(),
        ]
    );
    // The same keys in another order change nothing, and say nothing.
    s.define("shop", &[def(&["qa-2", "qa-3"])], 3)
        .await
        .unwrap();
    s.define("shop", &[def(&["qa-3", "qa-2"])], 4)
        .await
        .unwrap();
    let count = s
        .rows(
            "SELECT count(*) FROM audit WHERE kind = 'flag_set'",
            args![],
        )
        .await
        .unwrap()[0]
        .int(0)
        .unwrap();
    assert_eq!(count, 4, "one record for qa-3 added, none for the reorder");
}

#[tokio::test]
async fn a_taken_id_is_told_apart_from_an_unfinished_release() {
    let s = StateStore::in_memory().await.unwrap();
    s.create(&rel("r1")).await.unwrap();
    let again = s.create_release(&rel("r2")).await.unwrap_err();
    assert_eq!(again, StoreError::Busy("shop".into()));
    assert!(
        again
            .to_string()
            .contains("already has an unfinished release"),
        "{again}"
    );
    let mut other = rel("r1");
    other.service = "other".into();
    let taken = s.create_release(&other).await.unwrap_err();
    assert_eq!(taken, StoreError::IdTaken("r1".into()));
    // Through the core port, the kind travels with the words.
    let taken = s.create(&other).await.unwrap_err();
    assert_eq!(
        taken.kind(),
        rampart_core::ports::PortErrorKind::AlreadyExists
    );
    assert_eq!(taken.0, "release id taken: r1");
}

/// Regression (review): the audit chain's check read the whole history on the store's
/// main connection, holding it for as long as the check took: every append of every
/// running release (and every API read) waited behind `GET /api/v1/audit/verify`. The
/// check has a connection of its own: it completes while the main one is busy.
#[tokio::test]
async fn the_chains_check_never_waits_for_the_main_connection() {
    let dir = tempfile::tempdir().unwrap();
    let s = StateStore::open(&dir.path().join("r.db")).await.unwrap();
    s.create(&rel("r1")).await.unwrap();
    s.append("r1", &entry(0)).await.unwrap();
    // A long batch of appends holds the main connection.
    let busy = s.db.begin().await.unwrap();
    let checked = tokio::time::timeout(std::time::Duration::from_secs(30), s.verify_chain()).await;
    drop(busy);
    let report = checked
        .expect("the check waited for the main connection")
        .unwrap();
    assert!(report.ok, "{:?}", report.problems);
}
