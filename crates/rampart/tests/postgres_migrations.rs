//! Releases that ship database migrations, against a real PostgreSQL (Debian's
//! `postgresql`, started by this test on a loopback port in a temporary directory):
//! a failing release that shipped a contract migration escalates (exit 4) and leaves
//! traffic alone; one that shipped only expand changes rolls back (exit 3).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;
#[path = "../../adapters/tests/common/postgres.rs"]
mod postgres;

use common::{exe, free_port, release_json};
use postgres::Postgres;

fn release(pg: &Postgres, migration: &str) -> (i32, serde_json::Value) {
    release_with(pg, migration, "approval: none")
}

fn release_with(pg: &Postgres, migration: &str, approval: &str) -> (i32, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("migrations/v2")).unwrap();
    std::fs::write(dir.path().join("migrations/v2/001.sql"), migration).unwrap();
    let port = free_port();
    let command: Vec<String> = pg
        .psql_args()
        .into_iter()
        .chain(["-f".to_string(), "{file}".to_string()])
        .collect();
    let policy = format!(
        r#"service: orders
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env: {{SAMPLE_ERROR_RATE: "v1=0,v2=20%", SAMPLE_LATENCY_MS: "2"}}
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
traffic:
  proxy: {{listen: "127.0.0.1:{port}"}}
strategy:
  canary:
    steps: [{{weight: 50, bake: 30s}}]
analysis:
  interval: 1s
  min_samples: 10
  failure_limit: 2
  metrics:
    - {{metric: error_rate, judge: {{max: 2%}}}}
migrations:
  dir: migrations/{{version}}
  command: {command:?}
  {approval}
"#,
        exe = exe()
    );
    std::fs::write(dir.path().join("rampart.yaml"), policy).unwrap();
    release_json(&dir.path().join("rampart.yaml"), port, 200)
}

#[test]
fn migrations_against_a_real_postgres_escalate_or_roll_back_by_class() {
    let pg = Postgres::start();
    pg.sql("CREATE TABLE orders (id bigint PRIMARY KEY, total int)");

    // A rename breaks the old code: the failing release escalates.
    let (code, v) = release(
        &pg,
        "SET lock_timeout = '2s';\nALTER TABLE orders RENAME COLUMN total TO amount;\n",
    );
    assert_eq!(code, 4, "{v}");
    assert_eq!(v["outcome"], "escalated");
    assert!(
        v["final_weight"].as_f64().unwrap() > 0.0,
        "traffic was left where it was"
    );
    let kinds: Vec<&str> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"migrated") && kinds.contains(&"escalated"),
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"rollback_started"), "{kinds:?}");
    assert_eq!(pg.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'orders' ORDER BY 1"), "amount\nid");

    // An added column is backward compatible: the failing release rolls back.
    let (code, v) = release(&pg, "ALTER TABLE orders ADD COLUMN note text;\n");
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["outcome"], "rolled_back");
    assert_eq!(pg.sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'note'"), "1");
}

#[test]
fn a_migration_that_fails_in_postgres_blocks_the_release() {
    let pg = Postgres::start();
    // The table does not exist: psql fails, nothing is deployed.
    let (code, v) = release(&pg, "ALTER TABLE missing ADD COLUMN note text;\n");
    assert_eq!(code, 5, "{v}");
    assert_eq!(v["outcome"], "blocked");
    assert!(
        v["reason"].as_str().unwrap().contains("migrations failed"),
        "{}",
        v["reason"]
    );
    assert_eq!(v["requests"]["canary"], 0);
}

#[test]
fn a_breaking_migration_without_approval_is_never_applied() {
    let pg = Postgres::start();
    pg.sql("CREATE TABLE orders (id bigint PRIMARY KEY, total int)");
    let (code, v) = release_with(
        &pg,
        "ALTER TABLE orders DROP COLUMN total;\n",
        "approval: {role: dba, timeout: 1s}",
    );
    assert_eq!(code, 5, "{v}");
    assert_eq!(v["outcome"], "blocked");
    assert!(
        v["reason"].as_str().unwrap().contains("not approved"),
        "{}",
        v["reason"]
    );
    assert_eq!(
        pg.sql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' AND column_name = 'total'"),
        "1",
        "the column is still there"
    );
}
