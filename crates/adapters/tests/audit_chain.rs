//! The hash-chained audit log in the SQLite store: every kind of tampering with the
//! chain, the release logs or the tokens is found by `verify_chain`.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;

use rampart_adapters::store::StateStore;
use rampart_core::Weight;
use rampart_core::ports::{
    CommandKind, Freeze, OperatorCommand, ReleaseRecord, Store, StoredInput,
};
use rampart_core::release::{AuditEvent, Input};

/// A store with one release (three log entries), a freeze, a request and a token.
async fn busy_store(path: &Path) -> StateStore {
    let store = StateStore::open(path).await.unwrap();
    let rec = ReleaseRecord {
        id: "shop-1".into(),
        service: "shop".into(),
        version: "v2".into(),
        policy: "service: shop".into(),
        created_at: 1_000,
        outcome: None,
    };
    store.create(&rec).await.unwrap();
    let approve = OperatorCommand {
        kind: CommandKind::Approve,
        actor: "bob".into(),
        reason: "looks fine".into(),
        force: false,
        at: 1_500,
    };
    store.push_command("shop", &approve).await.unwrap();
    let inputs = [
        Input::Resumed,
        Input::Approved {
            by: "bob".into(),
            asked_at: None,
        },
        Input::Tick,
    ];
    for (seq, input) in inputs.into_iter().enumerate() {
        let entry = StoredInput {
            seq: seq as u64,
            at: 2_000 + seq as u64,
            input,
            events: vec![AuditEvent {
                at: 2_000,
                t_s: 1.0,
                kind: "approved".into(),
                actor: "bob".into(),
                message: format!("entry {seq}"),
                weight: Weight::ZERO,
                readings: vec![],
                instead: None,
            }],
        };
        store.append("shop-1", &entry).await.unwrap();
    }
    let by = Freeze {
        actor: "carol".into(),
        reason: "holiday".into(),
        at: 3_000,
    };
    store.set_freeze(Some("shop"), true, &by).await.unwrap();
    let cmd = OperatorCommand {
        kind: CommandKind::Pause,
        actor: "dave".into(),
        reason: "look".into(),
        force: false,
        at: 0,
    };
    store.push_command("shop", &cmd).await.unwrap();
    store
        .create_token("ci", "deployer", "admin", 4_000)
        .await
        .unwrap();
    let sub = rampart_adapters::store::Submission {
        id: "shop-2".into(),
        service: "shop".into(),
        version: "v3".into(),
        stable: None,
        hotfix: None,
        initiator: "ci".into(),
        policy: "service: shop".into(),
        workdir: "/".into(),
        state: "queued".into(),
        report: None,
        created_at: 5_000,
    };
    store.submit(&sub).await.unwrap();
    store
}

/// Fails unless `verify_chain` reported a problem containing `needle`.
fn assert_found(report: &rampart_adapters::store::ChainReport, needle: &str) {
    assert!(
        report.problems.iter().any(|p| p.contains(needle)),
        "{needle}: {:?}",
        report.problems
    );
}

fn tamper(path: &Path, sql: &str) {
    let c = rusqlite::Connection::open(path).unwrap();
    // An attacker with write access is not held back by foreign keys.
    c.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    let changed = c.execute(sql, []).unwrap();
    assert!(
        changed > 0,
        "the tampering statement changed nothing: {sql}"
    );
}

#[tokio::test]
async fn an_untouched_store_verifies_and_reports_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let store = busy_store(&path).await;
    let report = store.verify_chain().await.unwrap();
    assert!(report.ok, "{:?}", report.problems);
    // chain_started, created, request, three inputs, freeze, request, token, submission.
    assert_eq!((report.records, report.log_entries), (10, 3));
    let records = store.chain_records(Some("shop-1")).await.unwrap();
    let actors: Vec<_> = records.iter().map(|r| r.actor.as_str()).collect();
    assert_eq!(
        actors,
        ["rampart", "bob", "rampart", "bob", "rampart", "dave"]
    );
    assert_eq!(
        report.head,
        store.chain_records(None).await.unwrap()[9].hash
    );
}

#[tokio::test]
async fn every_kind_of_tampering_is_found() {
    let cases = [
        (
            "UPDATE events SET audit = replace(audit, 'entry 1', 'entry one') WHERE seq = 1",
            "entry 1: differs",
        ),
        (
            "DELETE FROM events WHERE seq = 2",
            "entry 2: recorded by chain record",
        ),
        (
            "INSERT INTO events (release_id, seq, at, input, audit) VALUES ('shop-1', 3, 9, '{\"type\":\"tick\"}', '[]')",
            "entry 3: not in the audit chain",
        ),
        (
            "UPDATE chain SET actor = 'mallory' WHERE action = 'freeze_on'",
            "does not match its hash",
        ),
        (
            "DELETE FROM chain WHERE action = 'request:pause'",
            "does not link",
        ),
        ("UPDATE tokens SET role = 'admin'", "token ci"),
        (
            "UPDATE tokens SET hash = 'f00d' WHERE name = 'ci'",
            "token ci",
        ),
        (
            "UPDATE events SET at = at + 60000 WHERE seq = 0",
            "entry 0: differs",
        ),
        (
            "UPDATE releases SET policy = 'service: shop\n# edited'",
            "release shop-1: its service",
        ),
        (
            "UPDATE releases SET outcome = 'promoted'",
            "release shop-1: its outcome",
        ),
        (
            "UPDATE submissions SET initiator = 'mallory'",
            "submission shop-2",
        ),
        ("DELETE FROM freezes", "gone from the table"),
        // A forged entry at an explicit row position before the chain began (both
        // databases accept one) is no less forged.
        (
            "INSERT INTO events (rowid, release_id, seq, at, input, audit) VALUES (0, 'shop-1', 3, 9, '{\"type\":\"approved\",\"by\":\"bob\"}', '[]')",
            "entry 3: not in the audit chain",
        ),
        (
            "DELETE FROM releases WHERE id = 'shop-1'",
            "release shop-1: created in the chain but its row is gone",
        ),
        (
            "DELETE FROM chain WHERE action = 'chain_started'",
            "does not begin with its chain_started record",
        ),
        ("DELETE FROM chain", "no audit chain: the chain was emptied"),
        ("UPDATE freezes SET reason = 'none'", "freeze of shop"),
    ];
    for (sql, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        drop(busy_store(&path).await);
        tamper(&path, sql);
        let report = StateStore::open(&path)
            .await
            .unwrap()
            .verify_chain()
            .await
            .unwrap();
        assert!(!report.ok, "not found: {sql}");
        assert!(
            report.problems.iter().any(|p| p.contains(expected)),
            "{sql}: {:?}",
            report.problems
        );
    }
}

/// Verifying never writes: an emptied chain stays empty (and reported) however often
/// the store is opened and verified, and a later write does not hide it either.
#[tokio::test]
async fn an_emptied_chain_is_never_restarted_over_the_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    drop(busy_store(&path).await);
    tamper(&path, "DELETE FROM chain");
    for _ in 0..2 {
        let store = StateStore::open(&path).await.unwrap();
        let report = store.verify_chain().await.unwrap();
        assert!(!report.ok);
        assert_eq!(report.records, 0, "the verifier or the open wrote a record");
    }
    // A write after the emptying links from nothing: still reported.
    let store = StateStore::open(&path).await.unwrap();
    store
        .create_token("late", "viewer", "admin", 9_000)
        .await
        .unwrap();
    let report = store.verify_chain().await.unwrap();
    assert_found(&report, "does not begin with its chain_started record");
}

/// A resume reads the log through `check_log` first: a forged approval (at any row
/// position), an edited or a deleted entry is refused before anything acts on it.
#[tokio::test]
async fn a_release_log_that_differs_from_the_chain_is_refused_before_a_resume() {
    let cases = [
        "INSERT INTO events (rowid, release_id, seq, at, input, audit) VALUES (0, 'shop-1', 3, 9, '{\"type\":\"approved\",\"by\":\"bob\"}', '[]')",
        "UPDATE events SET input = '{\"type\":\"approved\",\"by\":\"mallory\"}' WHERE seq = 1",
        "DELETE FROM events WHERE seq = 2",
    ];
    for sql in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let store = busy_store(&path).await;
        store.check_log("shop-1").await.unwrap();
        drop(store);
        tamper(&path, sql);
        let store = StateStore::open(&path).await.unwrap();
        let refused = store.check_log("shop-1").await.unwrap_err();
        assert!(
            refused.to_string().contains("rampart will not act on it"),
            "{sql}: {refused}"
        );
    }
}

/// A new store starts its chain at once; so does a wiped one that holds nothing.
#[tokio::test]
async fn an_empty_store_starts_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    drop(StateStore::open(&path).await.unwrap());
    tamper(&path, "DELETE FROM chain");
    let report = StateStore::open(&path)
        .await
        .unwrap()
        .verify_chain()
        .await
        .unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.records, 1);
}

#[tokio::test]
async fn tokens_are_kept_as_hashes_and_revocation_is_final() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(&dir.path().join("r.db")).await.unwrap();
    let secret = store
        .create_token("ops", "approver", "admin", 1)
        .await
        .unwrap();
    assert!(
        secret.starts_with("rampart_") && secret.len() > 60,
        "{secret}"
    );
    assert_eq!(
        store.token(&secret).await.unwrap(),
        Some(("ops".into(), "approver".into()))
    );
    assert_eq!(store.token("rampart_guess").await.unwrap(), None);
    let dump = std::fs::read(dir.path().join("r.db")).unwrap();
    let text = String::from_utf8_lossy(&dump);
    assert!(!text.contains(&secret), "the secret is stored in clear");
    assert!(
        store
            .create_token("ops", "admin", "admin", 2)
            .await
            .is_err()
    );
    store.revoke_token("ops", "admin", 3).await.unwrap();
    assert_eq!(store.token(&secret).await.unwrap(), None);
    let again = store
        .create_token("ops", "viewer", "admin", 4)
        .await
        .unwrap();
    assert_ne!(again, secret);
    assert!(store.verify_chain().await.unwrap().ok);
}

#[tokio::test]
async fn an_approval_nobody_asked_for_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let store = busy_store(&path).await;
    // A request smuggled into the commands table, applied by a controller: the input
    // is chained, but no request was.
    let entry = StoredInput {
        seq: 3,
        at: 9_000,
        input: Input::Approved {
            by: "mallory".into(),
            asked_at: None,
        },
        events: vec![],
    };
    store.append("shop-1", &entry).await.unwrap();
    let report = store.verify_chain().await.unwrap();
    assert_found(&report, "approve by mallory that nobody asked for");
}
