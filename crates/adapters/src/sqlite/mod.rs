//! The SQLite store: releases and their append-only input logs, in one file.
//!
//! Owns the schema, its migrations and durability settings (WAL, `synchronous=FULL`,
//! so an append that returned survives a crash or power loss). It must not interpret
//! the log; replay is core's job.

use std::path::Path;
use std::sync::Mutex;

use rampart_core::Weight;
use rampart_core::flags::{FlagDef, FlagState};
use rampart_core::ports::{
    BoxFuture, CommandKind, FlagChange, FlagStore, Freeze, OperatorCommand, PortError,
    ReleaseRecord, Store, StoredInput,
};
use rampart_core::release::OutcomeKind;
use rusqlite::{Connection, OptionalExtension, params};

mod control;
pub use control::{ChainRecord, ChainReport, Submission, TOKEN_PREFIX, TokenInfo, sha256_hex};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
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
];

/// A store in one SQLite file.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn db_err(e: impl std::fmt::Display) -> PortError {
    PortError(format!("state store: {e}"))
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and migrates it.
    pub fn open(path: &Path) -> Result<SqliteStore, PortError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| db_err(format!("creating {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(db_err)?;
        Self::init(conn)
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Result<SqliteStore, PortError> {
        Self::init(Connection::open_in_memory().map_err(db_err)?)
    }

    fn init(conn: Connection) -> Result<SqliteStore, PortError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(db_err)?;
        let applied: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db_err)?;
        let applied = usize::try_from(applied).unwrap_or(usize::MAX);
        if applied > MIGRATIONS.len() {
            return Err(db_err(format!(
                "the state file has schema version {applied}, newer than this rampart knows ({}); upgrade rampart",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
            conn.execute_batch(&format!(
                "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
                i + 1
            ))
            .map_err(db_err)?;
        }
        let store = SqliteStore {
            conn: Mutex::new(conn),
        };
        store.start_chain()?;
        Ok(store)
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, PortError>,
    ) -> Result<T, PortError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| db_err("connection poisoned"))?;
        f(&mut conn)
    }

    /// Begins the audit chain once, recording how much of the release logs predates it
    /// (those entries cannot be verified).
    fn start_chain(&self) -> Result<(), PortError> {
        self.with(|c| {
            let tx = c.transaction().map_err(db_err)?;
            let started: bool = tx
                .query_row("SELECT EXISTS(SELECT 1 FROM chain)", [], |r| r.get(0))
                .map_err(db_err)?;
            if !started {
                let before: i64 = tx
                    .query_row("SELECT COALESCE(MAX(rowid), 0) FROM events", [], |r| {
                        r.get(0)
                    })
                    .map_err(db_err)?;
                let at: i64 = tx
                    .query_row("SELECT COALESCE(MAX(at), 0) FROM events", [], |r| r.get(0))
                    .map_err(db_err)?;
                let body = serde_json::json!({"log_entries_before": before}).to_string();
                control::chain(
                    &tx,
                    u64::try_from(at).unwrap_or(0),
                    "rampart",
                    "chain_started",
                    None,
                    &body,
                )?;
            }
            tx.commit().map_err(db_err)
        })
    }

    /// Every release of a service, newest first.
    pub fn releases(&self, service: &str) -> Result<Vec<ReleaseRecord>, PortError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT id, service, version, policy, created_at, outcome FROM releases WHERE service = ?1 ORDER BY created_at DESC, id DESC")
                .map_err(db_err)?;
            let rows = stmt.query_map([service], row_to_release).map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
    }
}

fn outcome_from(text: Option<String>) -> Option<OutcomeKind> {
    text.and_then(|t| serde_json::from_value(serde_json::Value::String(t)).ok())
}

fn row_to_release(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReleaseRecord> {
    Ok(ReleaseRecord {
        id: r.get(0)?,
        service: r.get(1)?,
        version: r.get(2)?,
        policy: r.get(3)?,
        created_at: r.get::<_, i64>(4)?.try_into().unwrap_or(0),
        outcome: outcome_from(r.get(5)?),
    })
}

/// The start of the error `create` returns when the release id exists already.
pub const ID_TAKEN: &str = "release id taken";

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store for SqliteStore {
    fn create<'a>(&'a self, rel: &'a ReleaseRecord) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.with(|c| {
                let tx = c.transaction().map_err(db_err)?;
                let inserted = tx.execute(
                    "INSERT INTO releases (id, service, version, policy, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![rel.id, rel.service, rel.version, rel.policy, to_i64(rel.created_at)],
                );
                match inserted {
                    Ok(_) => {
                        let body = serde_json::json!({
                            "service": rel.service,
                            "version": rel.version,
                            "policy_sha256": control::sha256_hex(&rel.policy),
                        })
                        .to_string();
                        control::chain(&tx, rel.created_at, "rampart", "release_created", Some((&rel.id, None)), &body)?;
                        tx.commit().map_err(db_err)
                    }
                    Err(rusqlite::Error::SqliteFailure(f, _))
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        let taken: bool = tx
                            .query_row("SELECT EXISTS(SELECT 1 FROM releases WHERE id = ?1)", [&rel.id], |r| r.get(0))
                            .map_err(db_err)?;
                        Err(PortError(if taken {
                            format!("{ID_TAKEN}: {}", rel.id)
                        } else {
                            format!("service {} already has an unfinished release", rel.service)
                        }))
                    }
                    Err(e) => Err(db_err(e)),
                }
            })
        })
    }

    fn append<'a>(
        &'a self,
        release_id: &'a str,
        entry: &'a StoredInput,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            let input = serde_json::to_string(&entry.input).map_err(db_err)?;
            let audit = serde_json::to_string(&entry.events).map_err(db_err)?;
            self.with(|c| {
                let tx = c.transaction().map_err(db_err)?;
                let next: i64 = tx
                    .query_row("SELECT COALESCE(MAX(seq) + 1, 0) FROM events WHERE release_id = ?1", [release_id], |r| r.get(0))
                    .map_err(db_err)?;
                if next != to_i64(entry.seq) {
                    return Err(PortError(format!(
                        "release {release_id}: refusing to append event {} when the log's next is {next} (another controller is acting on this release)",
                        entry.seq
                    )));
                }
                tx.execute(
                    "INSERT INTO events (release_id, seq, at, input, audit) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![release_id, to_i64(entry.seq), to_i64(entry.at), input, audit],
                )
                .map_err(db_err)?;
                let kind = serde_json::to_value(&entry.input)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_string))
                    .unwrap_or_default();
                control::chain(
                    &tx,
                    entry.at,
                    &control::input_actor(entry),
                    &format!("input:{kind}"),
                    Some((release_id, Some(entry.seq))),
                    &control::input_body(entry.at, &input, &audit),
                )?;
                tx.commit().map_err(db_err)
            })
        })
    }

    fn load<'a>(
        &'a self,
        release_id: &'a str,
    ) -> BoxFuture<'a, Result<(ReleaseRecord, Vec<StoredInput>), PortError>> {
        Box::pin(async move {
            self.with(|c| {
                let rel = c
                    .query_row(
                        "SELECT id, service, version, policy, created_at, outcome FROM releases WHERE id = ?1",
                        [release_id],
                        row_to_release,
                    )
                    .optional()
                    .map_err(db_err)?
                    .ok_or_else(|| PortError(format!("no release {release_id}")))?;
                let mut stmt = c
                    .prepare("SELECT seq, at, input, audit FROM events WHERE release_id = ?1 ORDER BY seq")
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map([release_id], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?))
                    })
                    .map_err(db_err)?;
                let mut out = Vec::new();
                for row in rows {
                    let (seq, at, input, audit) = row.map_err(db_err)?;
                    out.push(StoredInput {
                        seq: u64::try_from(seq).unwrap_or(0),
                        at: u64::try_from(at).unwrap_or(0),
                        input: serde_json::from_str(&input)
                            .map_err(|e| db_err(format!("event {seq} of {release_id} is unreadable: {e}")))?,
                        events: serde_json::from_str(&audit)
                            .map_err(|e| db_err(format!("audit of event {seq} of {release_id} is unreadable: {e}")))?,
                    });
                }
                Ok((rel, out))
            })
        })
    }

    fn active<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Option<ReleaseRecord>, PortError>> {
        Box::pin(async move {
            self.with(|c| {
                c.query_row(
                    "SELECT id, service, version, policy, created_at, outcome FROM releases WHERE service = ?1 AND outcome IS NULL",
                    [service],
                    row_to_release,
                )
                .optional()
                .map_err(db_err)
            })
        })
    }

    fn finish<'a>(
        &'a self,
        release_id: &'a str,
        outcome: OutcomeKind,
        serving: Option<&'a str>,
        automatic_rollback: bool,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.with(|c| {
                let tx = c.transaction().map_err(db_err)?;
                let service: String = tx
                    .query_row("SELECT service FROM releases WHERE id = ?1", [release_id], |r| r.get(0))
                    .map_err(db_err)?;
                tx.execute(
                    "UPDATE releases SET outcome = ?2, automatic_rollback = ?3, finished_at = (SELECT MAX(at) FROM events WHERE release_id = ?1) WHERE id = ?1",
                    params![release_id, outcome.as_str(), automatic_rollback],
                )
                .map_err(db_err)?;
                if let Some(v) = serving {
                    tx.execute(
                        "INSERT INTO services (service, serving_version) VALUES (?1, ?2) ON CONFLICT(service) DO UPDATE SET serving_version = excluded.serving_version",
                        params![service, v],
                    )
                    .map_err(db_err)?;
                }
                let body = serde_json::json!({
                    "outcome": outcome.as_str(),
                    "serving": serving,
                    "automatic_rollback": automatic_rollback,
                })
                .to_string();
                let at: i64 = tx
                    .query_row("SELECT COALESCE(MAX(at), 0) FROM events WHERE release_id = ?1", [release_id], |r| r.get(0))
                    .map_err(db_err)?;
                control::chain(&tx, u64::try_from(at).unwrap_or(0), "rampart", "release_finished", Some((release_id, None)), &body)?;
                tx.commit().map_err(db_err)
            })
        })
    }

    fn automatic_rollbacks<'a>(
        &'a self,
        service: &'a str,
        since: u64,
    ) -> BoxFuture<'a, Result<u32, PortError>> {
        Box::pin(async move {
            self.with(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM releases WHERE service = ?1 AND automatic_rollback = 1 AND finished_at >= ?2",
                    params![service, to_i64(since)],
                    |r| r.get::<_, u32>(0),
                )
                .map_err(db_err)
            })
        })
    }

    fn set_freeze<'a>(
        &'a self,
        scope: Option<&'a str>,
        freeze: bool,
        by: &'a Freeze,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            let scope = scope.unwrap_or("*");
            self.with(|c| {
                let tx = c.transaction().map_err(db_err)?;
                if freeze {
                    tx.execute(
                        "INSERT INTO freezes (scope, actor, reason, at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(scope) DO UPDATE SET actor = excluded.actor, reason = excluded.reason, at = excluded.at",
                        params![scope, by.actor, by.reason, to_i64(by.at)],
                    )
                    .map_err(db_err)?;
                } else {
                    tx.execute("DELETE FROM freezes WHERE scope = ?1", [scope]).map_err(db_err)?;
                }
                let kind = if freeze { "freeze_on" } else { "freeze_off" };
                tx.execute(
                    "INSERT INTO audit (at, actor, kind, detail) VALUES (?1, ?2, ?3, ?4)",
                    params![to_i64(by.at), by.actor, kind, format!("{scope}: {}", by.reason)],
                )
                .map_err(db_err)?;
                let body = serde_json::json!({"scope": scope, "reason": by.reason}).to_string();
                control::chain(&tx, by.at, &by.actor, kind, None, &body)?;
                tx.commit().map_err(db_err)
            })
        })
    }

    fn freeze<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Option<Freeze>, PortError>> {
        Box::pin(async move {
            self.with(|c| {
                c.query_row(
                    "SELECT actor, reason, at FROM freezes WHERE scope = ?1 OR scope = '*' ORDER BY scope = '*' LIMIT 1",
                    [service],
                    |r| {
                        Ok(Freeze {
                            actor: r.get(0)?,
                            reason: r.get(1)?,
                            at: r.get::<_, i64>(2)?.try_into().unwrap_or(0),
                        })
                    },
                )
                .optional()
                .map_err(db_err)
            })
        })
    }

    fn push_command<'a>(
        &'a self,
        service: &'a str,
        command: &'a OperatorCommand,
    ) -> BoxFuture<'a, Result<String, PortError>> {
        Box::pin(async move {
            self.with(|c| {
                let tx = c.transaction().map_err(db_err)?;
                let id: String = tx
                    .query_row(
                        "SELECT id FROM releases WHERE service = ?1 AND outcome IS NULL",
                        [service],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(db_err)?
                    .ok_or_else(|| {
                        PortError(format!("service {service} has no release in progress"))
                    })?;
                control::queue_command(&tx, &id, command)?;
                tx.commit().map_err(db_err)?;
                Ok(id)
            })
        })
    }

    fn releases_with_requests(&self) -> BoxFuture<'_, Result<Vec<String>, PortError>> {
        Box::pin(async move {
            self.with(|c| {
                let mut stmt = c
                    .prepare_cached("SELECT DISTINCT release_id FROM commands WHERE taken = 0")
                    .map_err(db_err)?;
                let rows = stmt.query_map([], |r| r.get(0)).map_err(db_err)?;
                rows.collect::<Result<Vec<String>, _>>().map_err(db_err)
            })
        })
    }

    fn take_commands<'a>(
        &'a self,
        release_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<OperatorCommand>, PortError>> {
        Box::pin(async move {
            self.with(|c| {
                let tx = c.transaction().map_err(db_err)?;
                let taken = {
                    let mut stmt = tx
                        .prepare("SELECT actor, reason, force, kind, at, id FROM commands WHERE release_id = ?1 AND taken = 0 ORDER BY id LIMIT 1")
                        .map_err(db_err)?;
                    let rows = stmt
                        .query_map([release_id], |r| {
                            let kind: String = r.get(3)?;
                            let row: i64 = r.get(5)?;
                            Ok((kind, row, OperatorCommand {
                                kind: CommandKind::Rollback,
                                actor: r.get(0)?,
                                reason: r.get(1)?,
                                force: r.get(2)?,
                                at: r.get::<_, i64>(4)?.try_into().unwrap_or(0),
                            }))
                        })
                        .map_err(db_err)?;
                    let rows = rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?;
                    for (_, row, _) in &rows {
                        tx.execute("UPDATE commands SET taken = 1 WHERE id = ?1", [row])
                            .map_err(db_err)?;
                    }
                    // A request this version does not know (written by a newer rampart) is
                    // dropped rather than guessed at.
                    rows.into_iter()
                        .filter_map(|(kind, _, cmd)| match CommandKind::parse(&kind) {
                            Some(kind) => Some(OperatorCommand { kind, ..cmd }),
                            None => {
                                tracing::warn!(release = %release_id, kind = %kind, "unknown operator request ignored");
                                None
                            }
                        })
                        .collect::<Vec<_>>()
                };
                tx.commit().map_err(db_err)?;
                Ok(taken)
            })
        })
    }

    fn serving_version<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, PortError>> {
        Box::pin(async move {
            self.with(|c| {
                c.query_row(
                    "SELECT serving_version FROM services WHERE service = ?1",
                    [service],
                    |r| r.get(0),
                )
                .optional()
                .map(Option::flatten)
                .map_err(db_err)
            })
        })
    }
}

fn row_to_flag(r: &rusqlite::Row<'_>) -> rusqlite::Result<FlagState> {
    let allow: String = r.get(3)?;
    let bp: i64 = r.get(2)?;
    Ok(FlagState {
        name: r.get(0)?,
        default: r.get(1)?,
        ramp: u16::try_from(bp)
            .ok()
            .and_then(Weight::from_basis_points)
            .unwrap_or(Weight::ZERO),
        allow: serde_json::from_str(&allow).unwrap_or_default(),
    })
}

const FLAG_COLUMNS: &str = "name, default_on, ramp_bp, allow";

impl FlagStore for SqliteStore {
    fn define<'a>(
        &'a self,
        service: &'a str,
        defs: &'a [FlagDef],
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.with(|c| {
                let tx = c.transaction().map_err(db_err)?;
                for d in defs {
                    let allow = serde_json::to_string(&d.allow).map_err(db_err)?;
                    tx.execute(
                        "INSERT INTO flags (service, name, default_on, ramp_bp, allow, updated_at, updated_by) VALUES (?1, ?2, ?3, 0, ?4, 0, 'policy') ON CONFLICT(service, name) DO UPDATE SET allow = excluded.allow",
                        params![service, d.name, d.default, allow],
                    )
                    .map_err(db_err)?;
                }
                tx.commit().map_err(db_err)
            })
        })
    }

    fn flags<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Vec<FlagState>, PortError>> {
        Box::pin(async move {
            self.with(|c| {
                let mut stmt = c
                    .prepare_cached(&format!(
                        "SELECT {FLAG_COLUMNS} FROM flags WHERE service = ?1 ORDER BY name"
                    ))
                    .map_err(db_err)?;
                let rows = stmt.query_map([service], row_to_flag).map_err(db_err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
            })
        })
    }

    fn set_flag<'a>(
        &'a self,
        service: &'a str,
        change: &'a FlagChange,
    ) -> BoxFuture<'a, Result<FlagState, PortError>> {
        Box::pin(async move {
            self.with(|c| {
                let tx = c.transaction().map_err(db_err)?;
                let before = tx
                    .query_row(
                        &format!("SELECT {FLAG_COLUMNS} FROM flags WHERE service = ?1 AND name = ?2"),
                        params![service, change.name],
                        row_to_flag,
                    )
                    .optional()
                    .map_err(db_err)?
                    .ok_or_else(|| {
                        PortError(format!(
                            "{service} has no flag `{}`; define it under `flags.define` in the policy",
                            change.name
                        ))
                    })?;
                let after = FlagState {
                    ramp: change.ramp.unwrap_or(before.ramp),
                    default: change.default.unwrap_or(before.default),
                    ..before
                };
                tx.execute(
                    "UPDATE flags SET default_on = ?3, ramp_bp = ?4, updated_at = ?5, updated_by = ?6 WHERE service = ?1 AND name = ?2",
                    params![
                        service,
                        change.name,
                        after.default,
                        i64::from(after.ramp.basis_points()),
                        to_i64(change.at),
                        change.actor
                    ],
                )
                .map_err(db_err)?;
                tx.execute(
                    "INSERT INTO audit (at, actor, kind, detail) VALUES (?1, ?2, 'flag_set', ?3)",
                    params![
                        to_i64(change.at),
                        change.actor,
                        format!(
                            "{service}/{}: ramp {}, default {} ({})",
                            change.name,
                            after.ramp,
                            if after.default { "on" } else { "off" },
                            change.reason
                        )
                    ],
                )
                .map_err(db_err)?;
                let body = serde_json::json!({
                    "service": service,
                    "flag": change.name,
                    "ramp": after.ramp.to_string(),
                    "default": after.default,
                    "reason": change.reason,
                })
                .to_string();
                control::chain(&tx, change.at, &change.actor, "flag_set", None, &body)?;
                tx.commit().map_err(db_err)?;
                Ok(after)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_core::release::Input;

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
        let s = SqliteStore::in_memory().unwrap();
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
        let s = SqliteStore::in_memory().unwrap();
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
        let s = SqliteStore::in_memory().unwrap();
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
        assert_eq!(s.take_commands("r1").await.unwrap(), vec![cmd]);
        assert!(s.take_commands("r1").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn state_survives_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.create(&rel("r1")).await.unwrap();
            s.append("r1", &entry(0)).await.unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let (r, log) = s.load("r1").await.unwrap();
        assert_eq!(r.version, "v2");
        assert_eq!(log.len(), 1);
    }

    #[tokio::test]
    async fn flags_keep_their_runtime_state_and_every_change_is_audited() {
        use rampart_core::flags::FlagDef;
        let s = SqliteStore::in_memory().unwrap();
        let def = |allow: &[&str]| FlagDef {
            name: "new-checkout".into(),
            default: true,
            allow: allow.iter().map(|a| a.to_string()).collect(),
        };
        s.define("shop", &[def(&["qa-1"])]).await.unwrap();
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
        s.define("shop", &[def(&["qa-2"])]).await.unwrap();
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
            .with(|c| {
                let mut st = c
                    .prepare("SELECT detail FROM audit WHERE kind = 'flag_set'")
                    .map_err(db_err)?;
                let rows = st.query_map([], |r| r.get(0)).map_err(db_err)?;
                rows.collect::<Result<Vec<String>, _>>().map_err(db_err)
            })
            .unwrap();
        assert_eq!(
            audited,
            vec!["shop/new-checkout: ramp 20%, default off (ramp)".to_string()]
        );
    }

    #[tokio::test]
    async fn a_taken_id_is_told_apart_from_an_unfinished_release() {
        let s = SqliteStore::in_memory().unwrap();
        s.create(&rel("r1")).await.unwrap();
        let again = s.create(&rel("r2")).await.unwrap_err();
        assert!(
            again.0.contains("already has an unfinished release"),
            "{again}"
        );
        let mut other = rel("r1");
        other.service = "other".into();
        let taken = s.create(&other).await.unwrap_err();
        assert!(taken.0.starts_with(ID_TAKEN), "{taken}");
    }
}
