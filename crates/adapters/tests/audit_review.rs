//! An adversarial review of the audit chain's verification: rows the chain records
//! that can be inserted or deleted without `verify_chain` (`rampart audit verify`)
//! noticing, in a store whose chain began when it was new.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;

use rampart_adapters::store::{StateStore, Submission};
use rampart_core::ports::{ReleaseRecord, Store};

/// A new store (its chain begins with it) with one release and one queued submission.
async fn store_with_a_queue(path: &Path) -> StateStore {
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
    let sub = Submission {
        id: "cart-1".into(),
        service: "cart".into(),
        version: "v7".into(),
        stable: None,
        hotfix: None,
        initiator: "ci".into(),
        policy: "service: cart".into(),
        workdir: "/".into(),
        state: "queued".into(),
        report: None,
        created_at: 2_000,
    };
    store.submit(&sub).await.unwrap();
    store
}

fn tamper(path: &Path, sql: &str) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    let changed = c.execute(sql, []).unwrap();
    assert!(
        changed > 0,
        "the tampering statement changed nothing: {sql}"
    );
}

async fn verify_after(sql: &str) -> rampart_adapters::store::ChainReport {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let store = store_with_a_queue(&path).await;
    let before = store.verify_chain().await.unwrap();
    assert!(before.ok, "untouched: {:?}", before.problems);
    drop(store);
    tamper(&path, sql);
    StateStore::open(&path)
        .await
        .unwrap()
        .verify_chain()
        .await
        .unwrap()
}

/// Review: `verify_tables` (crates/adapters/src/store/chain.rs) skips every release
/// row without a `release_created` record as one "created before the chain began",
/// even in a store whose chain began empty (its `chain_started` record lists no
/// release). A forged release row (say a promoted release of a service, which
/// `GET /api/v1/policies/{service}`, the service list and the agent's "latest policy"
/// rule read) is therefore never reported, though the docs say an inserted row is.
#[tokio::test]
async fn a_release_row_inserted_after_the_chain_began_is_reported() {
    let report = verify_after(
        "INSERT INTO releases (id, service, version, policy, created_at, outcome, finished_at) \
         VALUES ('shop-0', 'shop', 'v9', 'service: shop', 500, 'promoted', 600)",
    )
    .await;
    assert!(
        !report.ok && report.problems.iter().any(|p| p.contains("shop-0")),
        "a forged release row went unnoticed: {:?}",
        report.problems
    );
}

/// Review: submissions are checked only row by row against the chain, never the
/// other way: a queued submission the chain recorded (`release_submitted`) whose row
/// is deleted is a release silently dropped from the queue without the
/// `release_withdrawn` record an abort leaves, and `verify` says intact.
#[tokio::test]
async fn a_queued_submission_deleted_from_the_table_is_reported() {
    let report = verify_after("DELETE FROM submissions WHERE id = 'cart-1'").await;
    assert!(
        !report.ok && report.problems.iter().any(|p| p.contains("cart-1")),
        "a deleted submission went unnoticed: {:?}",
        report.problems
    );
}

/// Review: the same drop done by marking the queued submission `done` (the queue
/// skips it) without a `release_withdrawn` record: the state is not compared.
#[tokio::test]
async fn a_queued_submission_marked_done_without_a_record_is_reported() {
    let report = verify_after("UPDATE submissions SET state = 'done' WHERE id = 'cart-1'").await;
    assert!(
        !report.ok && report.problems.iter().any(|p| p.contains("cart-1")),
        "a submission withdrawn without a record went unnoticed: {:?}",
        report.problems
    );
}

/// The chain's hash joined a record's fields with line breaks, and wrote an absent
/// release the same as an empty one: a record's `release_id` set from NULL to `''` (or
/// a line moved from one field to the next) kept its hash, and `verify` said intact,
/// `--expect-head` or not. Fields are length-prefixed now.
#[tokio::test]
async fn a_record_edited_into_the_same_joined_text_is_reported() {
    let report = verify_after("UPDATE chain SET release_id = '' WHERE release_id IS NULL").await;
    assert!(
        !report.ok
            && report
                .problems
                .iter()
                .any(|p| p.contains("does not match its hash")),
        "an edited chain record kept its hash: {:?}",
        report.problems
    );
}
