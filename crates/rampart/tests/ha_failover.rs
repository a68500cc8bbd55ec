//! Two `rampart serve` replicas sharing a real PostgreSQL store (Debian's `postgresql`,
//! started on loopback in a temporary directory): the leader is killed (SIGKILL)
//! mid-release, the standby takes the lease over within the lease time and finishes
//! the release, with no decision recorded twice and no event lost.

#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;
#[path = "../../adapters/tests/common/postgres.rs"]
mod postgres;

use std::collections::HashSet;
use std::time::Duration;

use common::serve::{Server, policy, submit, until};
use common::{free_port, rampart, runtime, start_load};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);
const TTL_S: u64 = 3;

fn token(state: &std::path::Path, store: &str, role: &str, name: &str) -> String {
    Server::token_with(state, role, name, &["--store", store])
}

fn replica(state: &std::path::Path, store: &str, name: &str) -> Server {
    let ttl = format!("{TTL_S}s");
    Server::start_with(
        state,
        free_port(),
        &["--store", store, "--replica", name, "--lease-ttl", &ttl],
    )
}

fn events(server: &Server, token: &str, id: &str) -> Vec<Value> {
    let (status, v) = server.call(
        "GET",
        &format!("/api/v1/releases/{id}/events"),
        Some(token),
        None,
    );
    assert_eq!(status, 200, "{v}");
    v["events"].as_array().unwrap().clone()
}

/// How many live processes carry rampart's mark for `service`.
fn processes_of(service: &str) -> usize {
    let mark = format!("RAMPART_SERVICE={service}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == mark.as_bytes()))
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn the_standby_takes_over_a_killed_leaders_release_and_finishes_it_real_postgres() {
    let pg = postgres::Postgres::start();
    let store = pg.database("ha");
    let dir = tempfile::tempdir().unwrap();
    let (state_a, state_b) = (dir.path().join("a"), dir.path().join("b"));
    let ci = token(&state_a, &store, "deployer", "ci");
    let viewer = token(&state_a, &store, "viewer", "watch");
    let leader = || {
        pg.sql_in(
            "ha",
            "SELECT holder || ' ' || token FROM leases WHERE name = 'serve'",
        )
    };

    let mut a = replica(&state_a, &store, "a");
    until("replica a leads", LONG, || leader() == "a 1");
    let b = replica(&state_b, &store, "b");

    let port = free_port();
    let rt = runtime();
    let _load = start_load(&rt, port, 150);
    let slow = "      - {weight: 30, bake: 4s}\n";
    // Submitted through the standby: any replica's API queues releases.
    // A service name of this run's own, so that nothing an earlier run left counts.
    let service = format!("ha-{}", std::process::id());
    let id = submit(&b, &ci, &policy(&service, port, slow));
    a.wait_release(&id, &viewer, LONG, |v| {
        v["phase"] == "progressing" && v["weight"].as_f64().unwrap() >= 20.0
    });
    let before = events(&a, &viewer, &id);
    a.kill();

    let end = b.wait_release(&id, &viewer, LONG, |v| v["report"].is_object());
    assert_eq!(end["outcome"], "promoted", "{end}");
    // Each replica has a state directory of its own, yet b adopted the versions a
    // started (their records' directory is in the shared store): what runs now is the
    // promoted version alone, with no orphan of a's left beside it.
    assert_eq!(
        processes_of(&service),
        1,
        "versions of the old leader left running"
    );
    assert_eq!(
        leader(),
        "b 2",
        "b holds the lease with the next fencing token"
    );

    let after = events(&b, &viewer, &id);
    // No event lost: everything the old leader had recorded is still there, unchanged.
    assert_eq!(&after[..before.len()], &before[..], "the log was rewritten");
    // No gap in the log (its primary key forbids two entries at one position), and no
    // decision recorded twice.
    let span = pg.sql_in(
        "ha",
        &format!("SELECT count(*) || ' ' || (max(seq) + 1) FROM events WHERE release_id = '{id}'"),
    );
    let (n, next) = span.split_once(' ').unwrap();
    assert_eq!(n, next, "gaps in the log");
    let kinds: Vec<&str> = after.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for once in ["release_started", "promoted"] {
        assert_eq!(
            kinds.iter().filter(|k| **k == once).count(),
            1,
            "{once}: {kinds:?}"
        );
    }
    assert_eq!(
        kinds.iter().filter(|k| **k == "resumed").count(),
        1,
        "{kinds:?}"
    );
    // Each step's weight set once, each of the three steps completed once.
    let mut weights = HashSet::new();
    for e in after.iter().filter(|e| e["kind"] == "weight_set") {
        assert!(
            weights.insert(e["weight"].to_string()),
            "weight set twice: {e}"
        );
    }
    assert!(weights.len() >= 3, "{weights:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "step_completed").count(),
        3,
        "{kinds:?}"
    );
    // Taken over within the lease time (and a beat), measured on the log's own clock.
    let resumed = after.iter().position(|e| e["kind"] == "resumed").unwrap();
    let gap =
        after[resumed]["at"].as_u64().unwrap() - before.last().unwrap()["at"].as_u64().unwrap();
    assert!(
        gap <= (TTL_S + 2) * 1000 + 5_000,
        "took over after {gap} ms"
    );

    // `rampart stop` run elsewhere with the shared store stops what the servers run:
    // the versions recorded in the directory the store names (a's), not in its own,
    // and marks the service stopped there, where the supervisor looks.
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy(&service, port, slow)).unwrap();
    let out = rampart()
        .args(["stop", "--store", &store, "--state-dir"])
        .arg(dir.path().join("elsewhere"))
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (The surviving server's supervisor may have caught a replica gone before the
    // stop marked the service, and restarted it: it stops it again once it looks.)
    until("every version stopped", LONG, || {
        processes_of(&service) == 0
    });
    assert!(
        state_a
            .join("dataplane")
            .join(format!("{service}.stopped"))
            .exists(),
        "{said}"
    );

    // The audit chain is intact, checked through the shared store.
    let out = rampart()
        .args(["audit", "verify", "--output", "json", "--store", &store])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
