#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
//! Adversarial review of the PostgreSQL store under high availability (real
//! PostgreSQL on loopback, started by `common/postgres.rs`).

#![cfg(feature = "postgres")]

#[path = "common/postgres.rs"]
mod postgres;

use rampart_adapters::store::StateStore;
use rampart_core::ports::{
    CommandKind, OperatorCommand, PortErrorKind, ReleaseRecord, Store, StoredInput,
};
use rampart_core::release::Input;

fn rel(id: &str, service: &str) -> ReleaseRecord {
    ReleaseRecord {
        id: id.into(),
        service: service.into(),
        version: "v2".into(),
        policy: format!("service: {service}"),
        created_at: 1,
        outcome: None,
    }
}

fn entry(seq: u64, input: Input) -> StoredInput {
    StoredInput {
        seq,
        at: 10 + seq,
        input,
        events: vec![],
    }
}

/// An operator's rollback request, queued through any replica's API (202 "queued"),
/// is taken by the leader, which is deposed before it can record the input the request
/// becomes: its append is refused by the fencing token, as it should be. The request
/// must then still reach the next leader: it was durably queued and chained
/// (`request:rollback`), and docs/ha.md promises that a failover loses nothing the old
/// leader recorded. `take_commands` marked the request taken in a transaction of its
/// own, before the append, so the new leader found nothing to take and the release
/// carried on as if nobody had asked for the rollback; a request is now marked with
/// the append that records its input.
#[tokio::test]
async fn a_request_taken_by_a_leader_deposed_before_applying_it_reaches_the_next_leader_real_postgres()
 {
    let pg = postgres::Postgres::start();
    let url = pg.database("lost_request");
    let a = StateStore::connect(&url).await.unwrap();
    let b = StateStore::connect(&url).await.unwrap();
    let token_a = a.take_lease("serve", "a", None).await.unwrap().unwrap();
    a.fence_as_leader("serve", "a", token_a);
    b.fence_as_standby();
    a.create(&rel("r1", "shop")).await.unwrap();
    a.append("r1", &entry(0, Input::Tick)).await.unwrap();

    // An operator asks for a rollback through the standby's API.
    let rollback = OperatorCommand {
        kind: CommandKind::Rollback,
        actor: "ops".into(),
        reason: "error budget burning".into(),
        force: false,
        at: 20,
    };
    b.push_command_to("r1", &rollback).await.unwrap();

    // The leader's controller takes it (into memory)...
    let (queued, taken) = a.next_command("r1").await.unwrap().unwrap();
    let input = taken.kind.input(&taken);

    // ...and is deposed before it records it: b takes the lease over.
    let seen = b.lease_state("serve").await.unwrap().unwrap();
    let token_b = b
        .take_lease("serve", "b", Some(&seen))
        .await
        .unwrap()
        .unwrap();
    b.fence_as_leader("serve", "b", token_b);
    let late = a
        .append_answering("r1", &entry(1, input), queued)
        .await
        .unwrap_err();
    assert_eq!(late.kind(), PortErrorKind::Fenced, "{late}");
    let (_, log) = b.load("r1").await.unwrap();
    assert_eq!(
        log.len(),
        1,
        "the deposed leader recorded nothing of the request"
    );

    // The new leader resumes the release and looks for requests: the rollback the
    // operator was told is queued must still be there.
    let pending = b.releases_with_requests().await.unwrap();
    let again = b.next_command("r1").await.unwrap();
    assert!(
        again.is_some(),
        "the operator's rollback was lost in the failover: never applied, yet no longer queued \
         (releases with requests: {pending:?})"
    );
    let (queued, cmd) = again.unwrap();
    assert_eq!(cmd.kind, CommandKind::Rollback);
    // Recorded by the new leader, it is answered: never handed out again.
    b.append_answering("r1", &entry(1, cmd.kind.input(&cmd)), queued)
        .await
        .unwrap();
    assert!(b.next_command("r1").await.unwrap().is_none());
    assert!(b.releases_with_requests().await.unwrap().is_empty());
}
