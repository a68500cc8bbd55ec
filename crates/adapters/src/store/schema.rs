//! The schema of the state store on each database, and the migrations that bring an
//! older store up to date.
//!
//! Owns the tables and how far each store has been migrated (SQLite's `user_version`,
//! PostgreSQL's `rampart_schema` table under an advisory lock, so replicas starting
//! together migrate one after another). It must not hold queries: those are the
//! store's, the same on both databases.

use super::error::StoreError;

use super::sql::{Db, args, db_err};

/// SQLite migrations, applied in order; `PRAGMA user_version` records how many ran.
const SQLITE: &[&str] = &[
    r#"
CREATE TABLE releases (
    id          TEXT PRIMARY KEY,
    service     TEXT NOT NULL,
    version     TEXT NOT NULL,
    policy      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    outcome     TEXT,
    finished_at INTEGER
);
-- At most one unfinished release per service.
CREATE UNIQUE INDEX releases_one_active ON releases(service) WHERE outcome IS NULL;
CREATE TABLE events (
    release_id TEXT NOT NULL REFERENCES releases(id),
    seq        INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    input      TEXT NOT NULL,
    audit      TEXT NOT NULL,
    PRIMARY KEY (release_id, seq)
);
CREATE TABLE services (
    service         TEXT PRIMARY KEY,
    serving_version TEXT
);
"#,
    r#"
-- Operator requests (rampart rollback) waiting for the controller driving a release.
CREATE TABLE commands (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    release_id TEXT NOT NULL REFERENCES releases(id),
    actor      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    taken      INTEGER NOT NULL DEFAULT 0
);
"#,
    r#"
-- A forced rollback (after non-backward-compatible migrations, data repaired).
ALTER TABLE commands ADD COLUMN force INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- Guardrails: the automatic-rollback cap counts these; freezes block new releases.
ALTER TABLE releases ADD COLUMN automatic_rollback INTEGER NOT NULL DEFAULT 0;
CREATE TABLE freezes (
    scope  TEXT PRIMARY KEY,  -- a service name, or '*' for every service
    actor  TEXT NOT NULL,
    reason TEXT NOT NULL,
    at     INTEGER NOT NULL
);
-- Operator actions outside any release (freeze on, freeze off).
CREATE TABLE audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    kind   TEXT NOT NULL,
    detail TEXT NOT NULL
);
"#,
    r#"
-- Approvals travel the same way as rollback requests.
ALTER TABLE commands ADD COLUMN kind TEXT NOT NULL DEFAULT 'rollback';
"#,
    r#"
-- The built-in feature-flag store; changes are audited.
CREATE TABLE flags (
    service    TEXT NOT NULL,
    name       TEXT NOT NULL,
    default_on INTEGER NOT NULL,
    ramp_bp    INTEGER NOT NULL,
    allow      TEXT NOT NULL,  -- JSON array of keys
    updated_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (service, name)
);
"#,
    r#"
-- The control plane: API tokens (hashes only), the hash-chained audit log, and the
-- queue of releases submitted to `rampart serve`.
CREATE TABLE tokens (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE chain (
    id         INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    release_id TEXT,
    seq        INTEGER,
    body       TEXT NOT NULL,
    prev       TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX chain_release ON chain(release_id);
ALTER TABLE commands ADD COLUMN at INTEGER NOT NULL DEFAULT 0;
CREATE TABLE submissions (
    id         TEXT PRIMARY KEY,
    service    TEXT NOT NULL,
    version    TEXT NOT NULL,
    stable     TEXT,
    hotfix     TEXT,
    initiator  TEXT NOT NULL,
    policy     TEXT NOT NULL,
    workdir    TEXT NOT NULL,
    state      TEXT NOT NULL,
    report     TEXT,
    created_at INTEGER NOT NULL
);
"#,
    r#"
-- The leader lease of replicas sharing a store: whoever holds it acts, with its
-- fencing token checked by every acting write.
CREATE TABLE leases (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token  INTEGER NOT NULL,
    beats  INTEGER NOT NULL
);
"#,
    PROCESS_OWNER,
];

/// Which host, and which directory there, records a service's local version processes:
/// a replica that takes a release over adopts them from there (issue of one state
/// directory per replica), and one on another host refuses instead of starting copies.
const PROCESS_OWNER: &str = r#"
ALTER TABLE services ADD COLUMN process_host TEXT;
ALTER TABLE services ADD COLUMN process_dir TEXT;
"#;

/// PostgreSQL migrations, applied in order; `rampart_schema` records how many ran. The
/// first is the whole schema of SQLite's migrations 1 to 8, with 64-bit integers
/// everywhere and `rowid` columns where SQLite has its implicit one.
const POSTGRES: &[&str] = &[
    r#"
CREATE TABLE releases (
    id                 TEXT PRIMARY KEY,
    service            TEXT NOT NULL,
    version            TEXT NOT NULL,
    policy             TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    outcome            TEXT,
    finished_at        BIGINT,
    automatic_rollback BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX releases_one_active ON releases(service) WHERE outcome IS NULL;
CREATE TABLE events (
    rowid      BIGSERIAL UNIQUE,
    release_id TEXT NOT NULL REFERENCES releases(id),
    seq        BIGINT NOT NULL,
    at         BIGINT NOT NULL,
    input      TEXT NOT NULL,
    audit      TEXT NOT NULL,
    PRIMARY KEY (release_id, seq)
);
CREATE TABLE services (
    service         TEXT PRIMARY KEY,
    serving_version TEXT
);
CREATE TABLE commands (
    id         BIGSERIAL PRIMARY KEY,
    release_id TEXT NOT NULL REFERENCES releases(id),
    actor      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    taken      BIGINT NOT NULL DEFAULT 0,
    force      BIGINT NOT NULL DEFAULT 0,
    kind       TEXT NOT NULL DEFAULT 'rollback',
    at         BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX commands_waiting ON commands(release_id) WHERE taken = 0;
CREATE TABLE freezes (
    scope  TEXT PRIMARY KEY,
    actor  TEXT NOT NULL,
    reason TEXT NOT NULL,
    at     BIGINT NOT NULL
);
CREATE TABLE audit (
    id     BIGSERIAL PRIMARY KEY,
    at     BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    kind   TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE flags (
    service    TEXT NOT NULL,
    name       TEXT NOT NULL,
    default_on BIGINT NOT NULL,
    ramp_bp    BIGINT NOT NULL,
    allow      TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (service, name)
);
CREATE TABLE tokens (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE chain (
    id         BIGINT PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    release_id TEXT,
    seq        BIGINT,
    body       TEXT NOT NULL,
    prev       TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX chain_release ON chain(release_id);
CREATE TABLE submissions (
    rowid      BIGSERIAL UNIQUE,
    id         TEXT PRIMARY KEY,
    service    TEXT NOT NULL,
    version    TEXT NOT NULL,
    stable     TEXT,
    hotfix     TEXT,
    initiator  TEXT NOT NULL,
    policy     TEXT NOT NULL,
    workdir    TEXT NOT NULL,
    state      TEXT NOT NULL,
    report     TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE leases (
    name   TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token  BIGINT NOT NULL,
    beats  BIGINT NOT NULL
);
"#,
    PROCESS_OWNER,
];

fn too_new(applied: usize, known: usize) -> StoreError {
    db_err(format!(
        "the store has schema version {applied}, newer than this rampart knows ({known}); upgrade rampart"
    ))
}

/// Whether the store has its audit chain's table yet (it is created by a migration).
pub(super) async fn has_chain(db: &Db) -> Result<bool, StoreError> {
    let mut c = db.conn().await?;
    let sql = if c.is_postgres() {
        "SELECT to_regclass('chain') IS NOT NULL"
    } else {
        "SELECT EXISTS(SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'chain')"
    };
    c.one(sql, args![]).await?.bool(0)
}

/// Brings the store's schema up to date.
pub(super) async fn migrate(db: &Db) -> Result<(), StoreError> {
    let mut c = db.conn().await?;
    if !c.is_postgres() {
        let applied = c.one("PRAGMA user_version", args![]).await?.uint(0)?;
        let applied = usize::try_from(applied).unwrap_or(usize::MAX);
        if applied > SQLITE.len() {
            return Err(too_new(applied, SQLITE.len()));
        }
        for (i, sql) in SQLITE.iter().enumerate().skip(applied) {
            c.batch(&format!(
                "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
                i + 1
            ))
            .await?;
        }
        return Ok(());
    }
    // One replica migrates at a time; the others wait here and then find nothing to do.
    c.batch("SELECT pg_advisory_lock(7243516); CREATE TABLE IF NOT EXISTS rampart_schema (version BIGINT NOT NULL)")
        .await?;
    let result = async {
        let applied = c
            .one(
                "SELECT COALESCE(MAX(version), 0) FROM rampart_schema",
                args![],
            )
            .await?
            .uint(0)?;
        let applied = usize::try_from(applied).unwrap_or(usize::MAX);
        if applied > POSTGRES.len() {
            return Err(too_new(applied, POSTGRES.len()));
        }
        for (i, sql) in POSTGRES.iter().enumerate().skip(applied) {
            c.batch(&format!(
                "BEGIN; {sql}; INSERT INTO rampart_schema (version) VALUES ({}); COMMIT;",
                i + 1
            ))
            .await?;
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        let _ = c.batch("ROLLBACK").await;
    }
    c.batch("SELECT pg_advisory_unlock(7243516)").await?;
    result
}
