//! The PostgreSQL state store against a real PostgreSQL (Debian's `postgresql`, started
//! on a loopback port in a temporary directory): the same contract as SQLite, the audit
//! chain intact under writers on several connections, and the fencing token refusing a
//! deposed leader's writes.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "common/postgres.rs"]
mod postgres;

use std::sync::Arc;

use rampart_adapters::store::{StateStore, Submission};
use rampart_core::Weight;
use rampart_core::flags::FlagDef;
use rampart_core::ports::{
    CommandKind, FlagChange, FlagStore, Freeze, OperatorCommand, PortErrorKind, ReleaseRecord,
    Store, StoredInput,
};
use rampart_core::release::{Input, OutcomeKind};

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

fn entry(seq: u64) -> StoredInput {
    StoredInput {
        seq,
        at: 10 + seq,
        input: Input::Tick,
        events: vec![],
    }
}

fn command(kind: CommandKind, actor: &str) -> OperatorCommand {
    OperatorCommand {
        kind,
        actor: actor.into(),
        reason: "why".into(),
        force: true,
        at: 7,
    }
}

#[tokio::test]
async fn the_store_contract_holds_on_real_postgres() {
    let pg = postgres::Postgres::start();
    let url = pg.database("contract");
    let s = StateStore::connect(&url).await.unwrap();
    assert!(s.is_postgres());
    // Releases and their logs.
    s.create(&rel("r1", "shop")).await.unwrap();
    let busy = s.create(&rel("r2", "shop")).await.unwrap_err();
    assert!(
        busy.0.contains("already has an unfinished release"),
        "{busy}"
    );
    let taken = s.create(&rel("r1", "other")).await.unwrap_err();
    assert_eq!(taken.kind(), PortErrorKind::AlreadyExists, "{taken}");
    s.append("r1", &entry(0)).await.unwrap();
    s.append("r1", &entry(1)).await.unwrap();
    assert!(s.append("r1", &entry(1)).await.is_err(), "duplicate seq");
    assert!(s.append("r1", &entry(5)).await.is_err(), "gap");
    let (r, log) = s.load("r1").await.unwrap();
    assert_eq!((r.version.as_str(), log.len()), ("v2", 2));
    assert_eq!(log[1], entry(1));
    assert_eq!(s.active("shop").await.unwrap().unwrap().id, "r1");
    // Requests reach the unfinished release once, oldest first.
    s.push_command("shop", &command(CommandKind::Pause, "alice"))
        .await
        .unwrap();
    s.push_command_to("r1", &command(CommandKind::Approve, "bob"))
        .await
        .unwrap();
    assert_eq!(s.releases_with_requests().await.unwrap(), vec!["r1"]);
    // Each stays queued until the input it becomes is recorded.
    let (pause, got) = s.next_command("r1").await.unwrap().unwrap();
    assert_eq!(got, command(CommandKind::Pause, "alice"));
    assert_eq!(s.next_command("r1").await.unwrap().unwrap().0, pause);
    s.drop_command("r1", pause).await.unwrap();
    let (approve, got) = s.next_command("r1").await.unwrap().unwrap();
    assert_eq!(got, command(CommandKind::Approve, "bob"));
    s.drop_command("r1", approve).await.unwrap();
    assert!(s.next_command("r1").await.unwrap().is_none());
    // Finishing, the rollback cap, what serves.
    s.finish("r1", OutcomeKind::RolledBack, Some("v1"), true)
        .await
        .unwrap();
    assert!(s.active("shop").await.unwrap().is_none());
    assert_eq!(
        s.serving_version("shop").await.unwrap().as_deref(),
        Some("v1")
    );
    assert_eq!(s.automatic_rollbacks("shop", 0).await.unwrap(), 1);
    assert_eq!(s.automatic_rollbacks("shop", 12).await.unwrap(), 0);
    assert!(
        s.push_command_to("r1", &command(CommandKind::Rollback, "x"))
            .await
            .is_err()
    );
    // Freezes: a service's own, then the global one.
    let by = Freeze {
        actor: "carol".into(),
        reason: "incident".into(),
        at: 20,
    };
    s.set_freeze(None, true, &by).await.unwrap();
    assert_eq!(s.freeze("shop").await.unwrap().unwrap().actor, "carol");
    s.set_freeze(None, false, &by).await.unwrap();
    assert!(s.freeze("shop").await.unwrap().is_none());
    // Flags keep their runtime state.
    let def = FlagDef {
        name: "new-checkout".into(),
        default: false,
        allow: vec!["qa".into()],
    };
    s.define("shop", std::slice::from_ref(&def), 29)
        .await
        .unwrap();
    let change = FlagChange {
        name: "new-checkout".into(),
        ramp: Some(Weight::from_percent(20).unwrap()),
        default: None,
        actor: "dave".into(),
        reason: "ramp".into(),
        at: 30,
    };
    s.set_flag("shop", &change).await.unwrap();
    s.define("shop", &[def], 31).await.unwrap();
    let flags = s.flags("shop").await.unwrap();
    assert_eq!(flags[0].ramp, Weight::from_percent(20).unwrap());
    // Tokens: hashes only, one live token per name.
    let secret = s.create_token("ci", "deployer", "admin", 40).await.unwrap();
    assert!(s.create_token("ci", "viewer", "admin", 41).await.is_err());
    assert_eq!(
        s.token(&secret).await.unwrap(),
        Some(("ci".to_string(), "deployer".to_string()))
    );
    s.revoke_token("ci", "admin", 42).await.unwrap();
    assert_eq!(s.token(&secret).await.unwrap(), None);
    assert!(s.tokens().await.unwrap()[0].revoked);
    // Submissions, in order.
    for (i, id) in ["s1", "s2"].iter().enumerate() {
        s.submit(&Submission {
            id: id.to_string(),
            service: "cart".into(),
            version: format!("v{i}"),
            stable: None,
            hotfix: None,
            initiator: "erin".into(),
            policy: "service: cart".into(),
            workdir: "/".into(),
            state: "queued".into(),
            report: None,
            created_at: 50 + i as u64,
        })
        .await
        .unwrap();
    }
    assert!(s.claim_submission("s1").await.unwrap());
    s.withdraw("s2", "erin", "{}", 60).await.unwrap();
    let open: Vec<String> = s
        .open_submissions()
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(open, vec!["s1"]);
    let mut services = s.services().await.unwrap();
    services.sort();
    assert_eq!(services, vec!["cart", "shop"]);
    // Listing and following logs.
    assert_eq!(s.list_releases(Some("shop"), 10).await.unwrap().len(), 1);
    let entries = s.entries_after(0, 10).await.unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(s.log_cursor().await.unwrap(), entries[1].0);
    // Everything above is in the audit chain, intact.
    let report = s.verify_chain().await.unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.log_entries, 2);
}

/// PostgreSQL, like SQLite, takes an explicit row position: a forged approval placed
/// before the chain began is still found, and so is a deleted release row.
#[tokio::test]
async fn a_forged_entry_at_an_early_row_position_is_found_real_postgres() {
    let pg = postgres::Postgres::start();
    let url = pg.database("forged");
    let s = StateStore::connect(&url).await.unwrap();
    s.create(&rel("r1", "shop")).await.unwrap();
    s.append("r1", &entry(0)).await.unwrap();
    assert!(s.verify_chain().await.unwrap().ok);
    pg.sql_in(
        "forged",
        "INSERT INTO events (rowid, release_id, seq, at, input, audit) VALUES (0, 'r1', 1, 9, '{\"type\":\"approved\",\"by\":\"bob\"}', '[]')",
    );
    let report = s.verify_chain().await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("entry 1: not in the audit chain")),
        "{:?}",
        report.problems
    );
    pg.sql_in("forged", "DELETE FROM events; DELETE FROM releases");
    let report = s.verify_chain().await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("release r1: created in the chain but its row is gone")),
        "{:?}",
        report.problems
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_several_connections_never_fork_the_audit_chain_real_postgres() {
    let pg = postgres::Postgres::start();
    let url = pg.database("chain");
    let stores: Vec<Arc<StateStore>> = futures_join(&url, 4).await;
    let mut tasks = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("r{i}");
            s.create(&rel(&id, &format!("svc{i}"))).await.unwrap();
            for seq in 0..25 {
                s.append(&id, &entry(seq)).await.unwrap();
                if seq % 5 == 0 {
                    s.push_command_to(&id, &command(CommandKind::Pause, "ops"))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    // Meanwhile, verification on another connection never takes the appends landing
    // under it for tampering (it reads one snapshot).
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let verifier = {
        let (s, done) = (
            Arc::new(StateStore::connect(&url).await.unwrap()),
            done.clone(),
        );
        tokio::spawn(async move {
            let mut runs = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || runs == 0 {
                let report = s.verify_chain().await.unwrap();
                assert!(report.ok, "verified while writing: {:?}", report.problems);
                runs += 1;
            }
            runs
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(verifier.await.unwrap() >= 1);
    let report = stores[0].verify_chain().await.unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.log_entries, 100);
    // 1 chain start + 4 creations + 100 entries + 20 requests.
    assert_eq!(report.records, 125);
}

async fn futures_join(url: &str, n: usize) -> Vec<Arc<StateStore>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Arc::new(StateStore::connect(url).await.unwrap()));
    }
    out
}

#[tokio::test]
async fn a_deposed_leaders_late_write_is_refused_real_postgres() {
    let pg = postgres::Postgres::start();
    let url = pg.database("fencing");
    let a = StateStore::connect(&url).await.unwrap();
    let b = StateStore::connect(&url).await.unwrap();
    let token_a = a.take_lease("serve", "a", None).await.unwrap().unwrap();
    a.fence_as_leader("serve", "a", token_a);
    b.fence_as_standby();
    assert_eq!(
        b.take_lease("serve", "b", None).await.unwrap(),
        None,
        "held"
    );
    a.create(&rel("r1", "shop")).await.unwrap();
    a.append("r1", &entry(0)).await.unwrap();
    let standby = b.append("r1", &entry(1)).await.unwrap_err();
    assert_eq!(standby.kind(), PortErrorKind::Fenced, "{standby}");
    // `b` takes the lease over from the row as it saw it (a's lease ran out).
    let seen = b.lease_state("serve").await.unwrap().unwrap();
    let token_b = b
        .take_lease("serve", "b", Some(&seen))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(token_b, token_a + 1);
    b.fence_as_leader("serve", "b", token_b);
    // A second takeover from the same stale view loses the race.
    assert_eq!(b.take_lease("serve", "c", Some(&seen)).await.unwrap(), None);
    let late = a.append("r1", &entry(1)).await.unwrap_err();
    assert_eq!(late.kind(), PortErrorKind::Fenced, "{late}");
    assert!(!a.renew_lease("serve", "a", token_a).await.unwrap());
    b.append("r1", &entry(1)).await.unwrap();
    assert!(b.renew_lease("serve", "b", token_b).await.unwrap());
    let (_, log) = b.load("r1").await.unwrap();
    assert_eq!(log.len(), 2);
    // Operators' requests are not fenced: any replica's API queues them.
    a.push_command_to("r1", &command(CommandKind::Pause, "ops"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_on_one_connection_are_combined_and_each_told_its_own_outcome_real_postgres()
 {
    let pg = postgres::Postgres::start();
    let url = pg.database("combined");
    let s = Arc::new(StateStore::connect(&url).await.unwrap());
    let n = 40;
    for i in 0..n {
        s.create(&rel(&format!("r{i}"), &format!("svc{i}")))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..n {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("r{i}");
            let mut refused = 0;
            for seq in 0..10 {
                s.append(&id, &entry(seq)).await.unwrap();
                // Every fourth release also tries an entry out of sequence, which must
                // fail alone without failing the appends written with it.
                if i % 4 == 0 && seq == 5 {
                    let err = s.append(&id, &entry(seq + 3)).await.unwrap_err();
                    assert!(err.0.contains("refusing to append event 8"), "{err}");
                    refused += 1;
                }
            }
            refused
        }));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    assert_eq!(refused, n / 4);
    for i in 0..n {
        let (_, log) = s.load(&format!("r{i}")).await.unwrap();
        assert_eq!(
            log.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
    }
    let report = s.verify_chain().await.unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.log_entries, 10 * n as u64);
    let batches = s.append_batches();
    assert!(
        batches < 10 * n as u64,
        "{batches} transactions: nothing was combined"
    );
}

#[tokio::test]
async fn a_store_whose_connections_were_cut_reconnects_and_loses_nothing_real_postgres() {
    let pg = postgres::Postgres::start();
    let url = pg.database("cut");
    let s = StateStore::connect(&url).await.unwrap();
    s.create(&rel("r1", "shop")).await.unwrap();
    s.append("r1", &entry(0)).await.unwrap();
    // The server ends every session of the store (a restart, a failover, a proxy).
    let ended = pg.sql_in(
        "cut",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = 'cut' AND pid <> pg_backend_pid()",
    );
    assert_eq!(ended, "2", "the store's two connections");
    // The first use after the cut may fail (the loss is only seen then); none is
    // half-applied, and the store reconnects by itself.
    let mut appended = false;
    for _ in 0..3 {
        if s.append("r1", &entry(1)).await.is_ok() {
            appended = true;
            break;
        }
    }
    assert!(appended, "never reconnected");
    let (_, log) = s.load("r1").await.unwrap();
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 1]);
    let report = s.verify_chain().await.unwrap();
    assert!(report.ok, "{:?}", report.problems);
}
