//! The leader lease on virtual time, with two replicas sharing one SQLite file: a
//! holder that keeps renewing is never replaced; a silent one is replaced after one
//! lease time; a deposed holder's writes are refused by the fencing token.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use rampart_adapters::clock::TokioClock;
use rampart_adapters::store::StateStore;
use rampart_adapters::store::lease::{Deposed, Lease};
use rampart_core::ports::{Clock, MigrationMark, PortErrorKind, ReleaseRecord, Store, StoredInput};
use rampart_core::release::Input;

const TTL: Duration = Duration::from_secs(9);
const TTL_MS: u64 = 9_000;
const BEAT_MS: u64 = 3_000;

fn rel(id: &str) -> ReleaseRecord {
    ReleaseRecord {
        id: id.into(),
        service: "shop".into(),
        version: "v2".into(),
        policy: "service: shop".into(),
        created_at: 0,
        outcome: None,
    }
}

fn entry(seq: u64) -> StoredInput {
    StoredInput {
        seq,
        at: seq,
        input: Input::Tick,
        events: vec![],
    }
}

struct Replicas {
    _dir: tempfile::TempDir,
    a: Arc<StateStore>,
    b: Arc<StateStore>,
    clock: Arc<TokioClock>,
}

async fn replicas() -> Replicas {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    Replicas {
        a: Arc::new(StateStore::open(&path).await.unwrap()),
        b: Arc::new(StateStore::open(&path).await.unwrap()),
        clock: Arc::new(TokioClock::starting_at(1_000_000)),
        _dir: dir,
    }
}

fn lease(store: &Arc<StateStore>, clock: &Arc<TokioClock>, holder: &str) -> Lease {
    Lease::new(store.clone(), clock.clone(), "serve", holder, TTL)
}

#[tokio::test(start_paused = true)]
async fn a_silent_leader_is_replaced_after_one_lease_time_and_its_late_writes_are_refused() {
    let r = replicas().await;
    let (la, lb) = (lease(&r.a, &r.clock, "a"), lease(&r.b, &r.clock, "b"));
    let token_a = la.acquire().await;
    assert_eq!(token_a.token, 1, "nobody held it: taken at once");
    r.a.create(&rel("r1")).await.unwrap();
    let standby = r.b.append("r1", &entry(0)).await.unwrap_err();
    assert_eq!(standby.kind(), PortErrorKind::Fenced, "{standby}");

    let holding = tokio::spawn(async move { la.hold(token_a).await });
    let campaign = tokio::spawn(async move { lb.acquire().await });
    // Ten lease times of renewals: the candidate never gets the lease.
    r.clock.sleep_until(r.clock.now() + 10 * TTL_MS).await;
    assert!(!campaign.is_finished(), "a renewing leader was replaced");
    r.a.append("r1", &entry(0)).await.unwrap();

    // The leader goes silent (its process is killed).
    holding.abort();
    let silent_at = r.clock.now();
    let token_b = campaign.await.unwrap();
    let took = r.clock.now() - silent_at;
    assert_eq!(token_b.token, 2);
    assert!(
        (TTL_MS - BEAT_MS..=TTL_MS + 2 * BEAT_MS).contains(&took),
        "taken over after {took} ms"
    );
    let late = r.a.append("r1", &entry(1)).await.unwrap_err();
    assert_eq!(late.kind(), PortErrorKind::Fenced, "{late}");
    // Nor may it mark a migration file started (and then run it beside the new
    // leader, which would find no mark of it).
    let late =
        r.a.mark_migration("r1", "003.sql", MigrationMark::Started, r.clock.now())
            .await
            .unwrap_err();
    assert_eq!(late.kind(), PortErrorKind::Fenced, "{late}");
    r.b.mark_migration("r1", "003.sql", MigrationMark::Started, r.clock.now())
        .await
        .unwrap();
    assert_eq!(
        r.b.migration_marks("r1").await.unwrap(),
        [("003.sql".to_string(), MigrationMark::Started)]
    );
    r.b.append("r1", &entry(1)).await.unwrap();
    let (_, log) = r.b.load("r1").await.unwrap();
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_stalled_past_half_its_lease_steps_down_at_once() {
    let r = replicas().await;
    let (la, lb) = (lease(&r.a, &r.clock, "a"), lease(&r.b, &r.clock, "b"));
    let held_a = la.acquire().await;
    r.a.create(&rel("r1")).await.unwrap();
    // `a` stalls (a long pause) without renewing; `b` takes over meanwhile.
    let held_b = lb.acquire().await;
    assert_eq!(held_b.token, held_a.token + 1);
    // When `a` wakes up, more than half a lease time has passed since it last renewed:
    // it steps down before asking anything, and the store refuses it at once.
    assert!(matches!(la.hold(held_a).await, Deposed::Stalled(_)));
    let err = r.a.append("r1", &entry(0)).await.unwrap_err();
    assert_eq!(err.kind(), PortErrorKind::Fenced, "{err}");
    r.b.append("r1", &entry(0)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_lease_was_taken_over_learns_it_at_its_next_renewal() {
    let r = replicas().await;
    let la = lease(&r.a, &r.clock, "a");
    let held_a = la.acquire().await;
    let holding = tokio::spawn(async move { la.hold(held_a).await });
    // Another replica takes the row over from under it (its clock ran fast, say).
    let seen = r.b.lease_state("serve").await.unwrap().unwrap();
    let token_b =
        r.b.take_lease("serve", "b", Some(&seen))
            .await
            .unwrap()
            .unwrap();
    r.b.fence_as_leader("serve", "b", token_b);
    let started = r.clock.now();
    assert_eq!(holding.await.unwrap(), Deposed::TakenOver(held_a.token));
    assert!(
        r.clock.now() - started <= BEAT_MS,
        "learnt it after more than a beat"
    );
    let err = r.a.create(&rel("r1")).await.unwrap_err();
    assert_eq!(err.kind(), PortErrorKind::Fenced, "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_released_lease_is_taken_without_waiting_a_lease_time() {
    let r = replicas().await;
    let (la, lb) = (lease(&r.a, &r.clock, "a"), lease(&r.b, &r.clock, "b"));
    let held_a = la.acquire().await;
    let campaign = tokio::spawn(async move { lb.acquire().await });
    r.clock.sleep_until(r.clock.now() + BEAT_MS).await;
    la.release(held_a).await;
    let released_at = r.clock.now();
    assert_eq!(campaign.await.unwrap().token, held_a.token + 1);
    assert!(
        r.clock.now() - released_at <= BEAT_MS,
        "waited for the lease time"
    );
    let err = r.a.create(&rel("r1")).await.unwrap_err();
    assert_eq!(err.kind(), PortErrorKind::Fenced, "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_store_without_a_lease_acts_unfenced() {
    let r = replicas().await;
    // Neither handle takes part in a lease: both act on the same file, one after the
    // other, with nobody's fencing token checked.
    r.a.create(&rel("r1")).await.unwrap();
    r.a.append("r1", &entry(0)).await.unwrap();
    r.b.append("r1", &entry(1)).await.unwrap();
    let (_, log) = r.a.load("r1").await.unwrap();
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(
        r.a.lease_state("serve").await.unwrap(),
        None,
        "acting unfenced takes no lease"
    );
    // The same handle once a replica of a lease acts only as its leader.
    let _candidate = lease(&r.b, &r.clock, "b");
    let err = r.b.append("r1", &entry(2)).await.unwrap_err();
    assert_eq!(err.kind(), PortErrorKind::Fenced, "{err}");
    r.a.append("r1", &entry(2)).await.unwrap();
}

/// A release checks its lease before it touches its service's data plane, writing
/// nothing: a store outside any lease, and a holder, may act; a deposed holder and a
/// standby may not.
#[tokio::test(start_paused = true)]
async fn check_acting_refuses_a_deposed_leader_and_a_standby_only() {
    let r = replicas().await;
    r.a.check_acting().await.unwrap();
    let token_a = r.a.take_lease("serve", "a", None).await.unwrap().unwrap();
    r.a.fence_as_leader("serve", "a", token_a);
    r.a.check_acting().await.unwrap();
    let seen = r.b.lease_state("serve").await.unwrap().unwrap();
    let token_b =
        r.b.take_lease("serve", "b", Some(&seen))
            .await
            .unwrap()
            .unwrap();
    r.b.fence_as_leader("serve", "b", token_b);
    r.b.check_acting().await.unwrap();
    let err = r.a.check_acting().await.unwrap_err();
    assert_eq!(err.into_port().kind(), PortErrorKind::Fenced);
    r.a.fence_as_standby();
    let err = r.a.check_acting().await.unwrap_err();
    assert_eq!(err.into_port().kind(), PortErrorKind::Fenced);
}

/// A release the leader queues on its own (a Git change under `serve --kubernetes`)
/// is an acting write: a standby (or a deposed leader) may not queue it, while a
/// person's submission through any replica's API is queued as before.
#[tokio::test(start_paused = true)]
async fn only_the_leader_queues_a_release_of_its_own() {
    use rampart_adapters::store::Submission;
    let r = replicas().await;
    let submission = |id: &str| Submission {
        id: id.into(),
        service: "shop".into(),
        version: "v2".into(),
        stable: None,
        hotfix: None,
        initiator: "gitops:shop/checkout".into(),
        policy: "service: shop".into(),
        workdir: ".".into(),
        state: "queued".into(),
        report: None,
        created_at: 0,
    };
    let token_a = r.a.take_lease("serve", "a", None).await.unwrap().unwrap();
    r.a.fence_as_leader("serve", "a", token_a);
    r.b.fence_as_standby();
    let err = r.b.submit_acting(&submission("r1")).await.unwrap_err();
    assert_eq!(err.into_port().kind(), PortErrorKind::Fenced);
    assert!(r.b.may_act().is_err());
    r.b.submit(&submission("r2")).await.unwrap();
    r.a.submit_acting(&submission("r3")).await.unwrap();
    let queued: Vec<String> =
        r.a.open_submissions()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
    assert_eq!(queued, ["r2", "r3"]);
}

/// A store that stopped acting on its own (a write found the leader's deadline passed
/// while a renewal was on its way, which makes it a standby for good) must not be
/// kept leader by renewals that go on succeeding: the row would beat for ever, no
/// candidate would take over, and the replica would refuse every write and never exit.
#[tokio::test(start_paused = true)]
async fn a_leader_whose_store_stopped_acting_lets_the_lease_go() {
    let r = replicas().await;
    let la = lease(&r.a, &r.clock, "a");
    let held = la.acquire().await;
    let holding = tokio::spawn(async move { la.hold(held).await });
    r.clock.sleep_until(r.clock.now() + BEAT_MS).await;
    assert!(!holding.is_finished());
    // What a write past the deadline does to the store (the race itself cannot be
    // timed on one clock): it acts no more.
    r.a.fence_as_standby();
    r.clock.sleep_until(r.clock.now() + 2 * BEAT_MS).await;
    assert!(
        holding.is_finished(),
        "a replica that no longer acts went on renewing the lease"
    );
    assert!(matches!(holding.await.unwrap(), Deposed::Stalled(_)));
}
