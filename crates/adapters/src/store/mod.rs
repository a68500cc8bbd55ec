//! The state store: releases and their append-only input logs, operator requests,
//! freezes, flags, and the control plane's tables, in SQLite (the embedded default,
//! one file) or PostgreSQL (shared by several `rampart serve` replicas; cargo feature
//! `postgres`).
//!
//! Owns the queries, which are the same on both databases, and the fencing of a
//! replica's writes by its leader lease. It must not interpret the log (replay is
//! core's job), and what differs between the databases lives in `sql`, `schema` and
//! `postgres`.

use std::path::Path;
use std::sync::Mutex;

use rampart_core::Weight;
use rampart_core::flags::{FlagDef, FlagState};
use rampart_core::ports::{
    BoxFuture, CommandKind, FlagChange, FlagStore, Freeze, OperatorCommand, PortError,
    ReleaseRecord, Store, StoredInput,
};
use rampart_core::release::OutcomeKind;

mod control;
pub mod lease;
#[cfg(feature = "postgres")]
mod postgres;
mod schema;
mod sql;

pub use control::{ChainRecord, ChainReport, Submission, TOKEN_PREFIX, TokenInfo, sha256_hex};
use sql::{Backend, Db, Row, Tx, Value, args, db_err};

/// What a store lets its process do: everything (one process, or no lease in use), or
/// only while it holds the named lease with this fencing token.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fence {
    /// No lease: this process is the only one acting on the store.
    Unfenced,
    /// A replica that does not hold the lease: it serves reads and queues requests,
    /// but never acts on a release.
    Standby,
    /// The replica holding lease `name` with fencing token `token`.
    Leader {
        name: String,
        holder: String,
        token: i64,
    },
}

/// Where a store URL points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location<'a> {
    /// A SQLite file.
    Sqlite(&'a Path),
    /// A PostgreSQL server (`postgres://`, `postgresql://`, or `host=... dbname=...`).
    Postgres,
}

/// Reads a store URL: `sqlite:PATH`, `sqlite://PATH` or a bare path, or a PostgreSQL
/// one. The error never quotes the URL (it may carry a password).
pub fn locate(url: &str) -> Result<Location<'_>, PortError> {
    let key_value = !url.contains("://") && url.contains('=') && url.contains(' ');
    if url.starts_with("postgres://") || url.starts_with("postgresql://") || key_value {
        return Ok(Location::Postgres);
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if path.contains("://") {
        return Err(PortError::new(
            "the store URL has an unknown scheme; use sqlite:PATH or postgres://...",
        ));
    }
    Ok(Location::Sqlite(Path::new(path)))
}

/// The state store.
#[derive(Debug)]
pub struct StateStore {
    db: Db,
    /// The lease's own connection (the same one on SQLite): a renewal never waits
    /// behind API reads or a batch of appends.
    lease_db: Db,
    fence: Mutex<Fence>,
    postgres: bool,
    appends: Mutex<Appends>,
}

/// The most appends one transaction writes; the rest wait for the next writer.
const MAX_BATCH: usize = 512;

/// How many releases one query asks the next log position of.
const NEXT_SEQ_CHUNK: usize = 64;

/// `SELECT release_id, next seq` for [`NEXT_SEQ_CHUNK`] release ids (unused ones NULL).
static NEXT_SEQ: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let ids: Vec<String> = (1..=NEXT_SEQ_CHUNK).map(|i| format!("?{i}")).collect();
    format!(
        "SELECT release_id, MAX(seq) + 1 FROM events WHERE release_id IN ({}) GROUP BY release_id",
        ids.join(", ")
    )
});

/// Appends waiting for the connection.
#[derive(Debug, Default)]
struct Appends {
    next_id: u64,
    queue: Vec<PendingAppend>,
    /// Transactions that wrote appends, for the benchmark and tests.
    batches: u64,
}

/// One append waiting to be written, serialised already.
#[derive(Debug)]
struct PendingAppend {
    id: u64,
    release: String,
    seq: u64,
    at: u64,
    kind: String,
    actor: String,
    input: String,
    audit: String,
    done: tokio::sync::oneshot::Sender<Result<(), PortError>>,
}

/// The start of the error `create` returns when the release id exists already.
pub const ID_TAKEN: &str = "release id taken";

/// The start of the error every acting write returns once this replica has lost (or
/// never held) the leader lease.
pub const NOT_LEADER: &str = "not the leader";

const RELEASE_COLUMNS: &str = "id, service, version, policy, created_at, outcome";

fn outcome_from(text: Option<String>) -> Option<OutcomeKind> {
    text.and_then(|t| serde_json::from_value(serde_json::Value::String(t)).ok())
}

fn row_to_release(r: &Row) -> Result<ReleaseRecord, PortError> {
    Ok(ReleaseRecord {
        id: r.text(0)?,
        service: r.text(1)?,
        version: r.text(2)?,
        policy: r.text(3)?,
        created_at: r.uint(4)?,
        outcome: outcome_from(r.opt_text(5)?),
    })
}

fn row_to_entry(r: &Row, release: &str) -> Result<StoredInput, PortError> {
    let seq = r.uint(0)?;
    Ok(StoredInput {
        seq,
        at: r.uint(1)?,
        input: serde_json::from_str(&r.text(2)?)
            .map_err(|e| db_err(format!("event {seq} of {release} is unreadable: {e}")))?,
        events: serde_json::from_str(&r.text(3)?).map_err(|e| {
            db_err(format!(
                "audit of event {seq} of {release} is unreadable: {e}"
            ))
        })?,
    })
}

fn row_to_flag(r: &Row) -> Result<FlagState, PortError> {
    Ok(FlagState {
        name: r.text(0)?,
        default: r.bool(1)?,
        ramp: u16::try_from(r.int(2)?)
            .ok()
            .and_then(Weight::from_basis_points)
            .unwrap_or(Weight::ZERO),
        allow: serde_json::from_str(&r.text(3)?).unwrap_or_default(),
    })
}

const FLAG_COLUMNS: &str = "name, default_on, ramp_bp, allow";

/// SQLite with its durability settings: WAL and `synchronous=FULL`, so an append that
/// returned survives a crash or a power loss.
fn sqlite(conn: rusqlite::Connection) -> Result<Backend, PortError> {
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(db_err)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(db_err)?;
    Ok(Backend::Sqlite(conn))
}

impl StateStore {
    /// Opens (creating if needed) the SQLite store at `path` and migrates it.
    pub async fn open(path: &Path) -> Result<StateStore, PortError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| db_err(format!("creating {}: {e}", dir.display())))?;
        }
        let conn = rusqlite::Connection::open(path).map_err(db_err)?;
        Self::init(sqlite(conn)?, None).await
    }

    /// An in-memory SQLite store, for tests.
    pub async fn in_memory() -> Result<StateStore, PortError> {
        let conn = rusqlite::Connection::open_in_memory().map_err(db_err)?;
        Self::init(sqlite(conn)?, None).await
    }

    /// Connects to the PostgreSQL store at `url` and migrates it (replicas starting
    /// together migrate one after another).
    #[cfg(feature = "postgres")]
    pub async fn connect(url: &str) -> Result<StateStore, PortError> {
        let main = Backend::Postgres(Box::new(postgres::PgConn::connect(url).await?));
        let lease = Db::new(Backend::Postgres(Box::new(
            postgres::PgConn::connect(url).await?,
        )));
        Self::init(main, Some(lease)).await
    }

    /// Opens the store a URL names: `sqlite:PATH` (or a bare path), or
    /// `postgres://...` in a build with the `postgres` feature.
    pub async fn open_url(url: &str) -> Result<StateStore, PortError> {
        match locate(url)? {
            Location::Sqlite(path) => Self::open(path).await,
            #[cfg(feature = "postgres")]
            Location::Postgres => Self::connect(url).await,
            #[cfg(not(feature = "postgres"))]
            Location::Postgres => Err(PortError::new(
                "this build of rampart has no PostgreSQL store: build it with `--features postgres`, or use sqlite:PATH",
            )),
        }
    }

    async fn init(backend: Backend, lease_db: Option<Db>) -> Result<StateStore, PortError> {
        let postgres = !matches!(backend, Backend::Sqlite(_));
        let db = Db::new(backend);
        schema::migrate(&db).await?;
        let store = StateStore {
            lease_db: lease_db.unwrap_or_else(|| db.clone()),
            db,
            fence: Mutex::new(Fence::Unfenced),
            postgres,
            appends: Mutex::new(Appends::default()),
        };
        store.start_chain().await?;
        Ok(store)
    }

    /// How many transactions have written appends so far (fewer than the appends when
    /// concurrent appends were combined).
    pub fn append_batches(&self) -> u64 {
        self.appends.lock().map(|w| w.batches).unwrap_or(0)
    }

    /// Whether the store is on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    fn fence(&self) -> Fence {
        self.fence
            .lock()
            .map(|f| f.clone())
            .unwrap_or(Fence::Standby)
    }

    fn set_fence(&self, fence: Fence) {
        if let Ok(mut f) = self.fence.lock() {
            *f = fence;
        }
    }

    /// Checks, inside a write transaction, that this process may act: it holds no
    /// lease (the single-process default), or it still holds its lease with its token.
    /// The row lock taken here makes a takeover wait for this transaction, so a
    /// deposed leader's write either lands before the takeover or is refused.
    async fn fenced(&self, tx: &mut Tx) -> Result<(), PortError> {
        match self.fence() {
            Fence::Unfenced => Ok(()),
            Fence::Standby => Err(PortError(format!(
                "{NOT_LEADER}: this replica is a standby; the leader acts on releases"
            ))),
            Fence::Leader {
                name,
                holder,
                token,
            } => {
                let lock = if tx.is_postgres() { " FOR SHARE" } else { "" };
                let current = tx
                    .query_opt(
                        &format!("SELECT holder, token FROM leases WHERE name = ?1{lock}"),
                        args![name.as_str()],
                    )
                    .await?;
                let held = match &current {
                    Some(r) => r.text(0)? == holder && r.int(1)? == token,
                    None => false,
                };
                if held {
                    Ok(())
                } else {
                    Err(PortError(format!(
                        "{NOT_LEADER}: lease {name} has moved on from fencing token {token}; this replica no longer acts"
                    )))
                }
            }
        }
    }

    /// Begins a transaction for a write that acts on a release, checked by the fence,
    /// with the audit chain locked.
    async fn acting(&self) -> Result<Tx, PortError> {
        let mut tx = self.db.begin().await?;
        tx.lock_chain().await?;
        self.fenced(&mut tx).await?;
        Ok(tx)
    }

    /// Begins a transaction for a write that appends to the audit chain.
    async fn chained(&self) -> Result<Tx, PortError> {
        let mut tx = self.db.begin().await?;
        tx.lock_chain().await?;
        Ok(tx)
    }

    /// Begins the audit chain once, recording how much of the release logs predates it
    /// (those entries cannot be verified).
    async fn start_chain(&self) -> Result<(), PortError> {
        let mut tx = self.chained().await?;
        let started = tx
            .one("SELECT EXISTS(SELECT 1 FROM chain)", args![])
            .await?
            .bool(0)?;
        if !started {
            let r = tx
                .one(
                    "SELECT COALESCE(MAX(rowid), 0), COALESCE(MAX(at), 0) FROM events",
                    args![],
                )
                .await?;
            let body = serde_json::json!({"log_entries_before": r.int(0)?}).to_string();
            control::chain(&mut tx, r.uint(1)?, "rampart", "chain_started", None, &body).await?;
        }
        tx.commit().await
    }

    /// Every release of a service, newest first.
    pub async fn releases(&self, service: &str) -> Result<Vec<ReleaseRecord>, PortError> {
        let rows = self
            .db
            .conn()
            .await?
            .query(
                &format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE service = ?1 ORDER BY created_at DESC, id DESC"),
                args![service],
            )
            .await?;
        rows.iter().map(row_to_release).collect()
    }

    async fn create_release(&self, rel: &ReleaseRecord) -> Result<(), PortError> {
        let mut tx = self.acting().await?;
        // Checked before the insert: PostgreSQL aborts a transaction at its first error.
        let taken = tx
            .one(
                "SELECT EXISTS(SELECT 1 FROM releases WHERE id = ?1)",
                args![&rel.id],
            )
            .await?
            .bool(0)?;
        if taken {
            return Err(PortError(format!("{ID_TAKEN}: {}", rel.id)));
        }
        let busy = tx
            .one(
                "SELECT EXISTS(SELECT 1 FROM releases WHERE service = ?1 AND outcome IS NULL)",
                args![&rel.service],
            )
            .await?
            .bool(0)?;
        if busy {
            return Err(PortError(format!(
                "service {} already has an unfinished release",
                rel.service
            )));
        }
        tx.execute(
            "INSERT INTO releases (id, service, version, policy, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            args![&rel.id, &rel.service, &rel.version, &rel.policy, rel.created_at],
        )
        .await?;
        let body = serde_json::json!({
            "service": rel.service,
            "version": rel.version,
            "policy_sha256": control::sha256_hex(&rel.policy),
        })
        .to_string();
        control::chain(
            &mut tx,
            rel.created_at,
            "rampart",
            "release_created",
            Some((&rel.id, None)),
            &body,
        )
        .await?;
        tx.commit().await
    }

    /// Appends one entry. Appends from many controllers are combined: whoever gets the
    /// connection writes every append waiting at that moment in one transaction (one
    /// commit, one sync to disk), and each caller returns once its own is durable. A
    /// store with thousands of releases therefore writes in batches as large as the
    /// queue that formed during the previous commit.
    async fn append_entry(&self, release_id: &str, entry: &StoredInput) -> Result<(), PortError> {
        let input = serde_json::to_string(&entry.input).map_err(db_err)?;
        let audit = serde_json::to_string(&entry.events).map_err(db_err)?;
        let (done, result) = tokio::sync::oneshot::channel();
        let id = {
            let mut waiting = self
                .appends
                .lock()
                .map_err(|_| db_err("append queue poisoned"))?;
            waiting.next_id += 1;
            let id = waiting.next_id;
            waiting.queue.push(PendingAppend {
                id,
                release: release_id.to_string(),
                seq: entry.seq,
                at: entry.at,
                kind: serde_json::to_value(&entry.input)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_string))
                    .unwrap_or_default(),
                actor: control::input_actor(entry),
                input,
                audit,
                done,
            });
            id
        };
        let mut result = result;
        loop {
            // Whichever comes first: the outcome of this append, written by a caller
            // that got the connection before, or the connection (then this caller
            // writes what waits, at most a batch at a time, until its own is written).
            let conn = tokio::select! {
                biased;
                outcome = &mut result => {
                    return outcome.unwrap_or_else(|_| Err(db_err("the append was dropped by its writer")));
                }
                conn = self.db.conn() => conn,
            };
            match conn {
                Ok(conn) => {
                    let batch = self
                        .appends
                        .lock()
                        .map(|mut w| {
                            w.batches += u64::from(!w.queue.is_empty());
                            let take = w.queue.len().min(MAX_BATCH);
                            let rest = w.queue.split_off(take);
                            std::mem::replace(&mut w.queue, rest)
                        })
                        .unwrap_or_default();
                    if !batch.is_empty() {
                        self.write_appends(conn, batch).await;
                    }
                }
                Err(e) => {
                    // Withdraw this append unless another writer already took it (then
                    // its outcome is the one to report).
                    let mine = self.appends.lock().ok().and_then(|mut w| {
                        let at = w.queue.iter().position(|p| p.id == id)?;
                        Some(w.queue.remove(at))
                    });
                    if mine.is_some() {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Writes a batch of appends in one transaction and tells each its outcome. An
    /// append out of sequence fails alone; anything else fails the whole batch (and
    /// nothing of it is written).
    async fn write_appends(&self, conn: Tx, batch: Vec<PendingAppend>) {
        let mut outcomes: Vec<Result<(), PortError>> = Vec::with_capacity(batch.len());
        let written = async {
            let mut tx = conn.begin().await?;
            tx.lock_chain().await?;
            self.fenced(&mut tx).await?;
            let mut head = control::head(&mut tx).await?;
            // Each release's next position, read for all of them at once (the chain
            // lock keeps them so until the commit).
            let mut next: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
            let releases: Vec<&str> = {
                let mut seen = std::collections::HashSet::new();
                batch.iter().map(|p| p.release.as_str()).filter(|r| seen.insert(*r)).collect()
            };
            for chunk in releases.chunks(NEXT_SEQ_CHUNK) {
                let mut ids: Vec<Value> = chunk.iter().map(|r| Value::from(*r)).collect();
                ids.resize(NEXT_SEQ_CHUNK, Value::Null);
                for r in tx.query(&NEXT_SEQ, &ids).await? {
                    next.insert(r.text(0)?, r.uint(1)?);
                }
            }
            let mut writes: Vec<(&str, Vec<Value>)> = Vec::with_capacity(2 * batch.len());
            for p in &batch {
                let expected = next.get(&p.release).copied().unwrap_or(0);
                if p.seq != expected {
                    outcomes.push(Err(PortError(format!(
                        "release {}: refusing to append event {} when the log's next is {expected} (another controller is acting on this release)",
                        p.release, p.seq
                    ))));
                    continue;
                }
                next.insert(p.release.clone(), expected + 1);
                writes.push((
                    "INSERT INTO events (release_id, seq, at, input, audit) VALUES (?1, ?2, ?3, ?4, ?5)",
                    args![p.release.as_str(), p.seq, p.at, p.input.as_str(), p.audit.as_str()].to_vec(),
                ));
                writes.push((
                    control::INSERT_CHAIN,
                    control::next_record(
                        &mut head,
                        p.at,
                        &p.actor,
                        &format!("input:{}", p.kind),
                        Some((&p.release, Some(p.seq))),
                        &control::input_body(p.at, &p.input, &p.audit),
                    ),
                ));
                outcomes.push(Ok(()));
            }
            tx.execute_all(&writes).await?;
            tx.commit().await
        }
        .await;
        match written {
            Ok(()) => {
                for (p, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = p.done.send(outcome);
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.done.send(Err(e.clone()));
                }
            }
        }
    }

    async fn load_release(
        &self,
        release_id: &str,
    ) -> Result<(ReleaseRecord, Vec<StoredInput>), PortError> {
        let mut c = self.db.conn().await?;
        let rel = c
            .query_opt(
                &format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE id = ?1"),
                args![release_id],
            )
            .await?
            .ok_or_else(|| PortError(format!("no release {release_id}")))?;
        let rows = c
            .query(
                "SELECT seq, at, input, audit FROM events WHERE release_id = ?1 ORDER BY seq",
                args![release_id],
            )
            .await?;
        let log = rows
            .iter()
            .map(|r| row_to_entry(r, release_id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((row_to_release(&rel)?, log))
    }

    async fn finish_release(
        &self,
        release_id: &str,
        outcome: OutcomeKind,
        serving: Option<&str>,
        automatic_rollback: bool,
    ) -> Result<(), PortError> {
        let mut tx = self.acting().await?;
        let service = tx
            .query_opt(
                "SELECT service FROM releases WHERE id = ?1",
                args![release_id],
            )
            .await?
            .ok_or_else(|| PortError(format!("no release {release_id}")))?
            .text(0)?;
        tx.execute(
            "UPDATE releases SET outcome = ?2, automatic_rollback = ?3, finished_at = (SELECT MAX(at) FROM events WHERE release_id = ?1) WHERE id = ?1",
            args![release_id, outcome.as_str(), automatic_rollback],
        )
        .await?;
        if let Some(v) = serving {
            tx.execute(
                "INSERT INTO services (service, serving_version) VALUES (?1, ?2) ON CONFLICT(service) DO UPDATE SET serving_version = excluded.serving_version",
                args![service.as_str(), v],
            )
            .await?;
        }
        let body = serde_json::json!({
            "outcome": outcome.as_str(),
            "serving": serving,
            "automatic_rollback": automatic_rollback,
        })
        .to_string();
        let at = tx
            .one(
                "SELECT COALESCE(MAX(at), 0) FROM events WHERE release_id = ?1",
                args![release_id],
            )
            .await?
            .uint(0)?;
        control::chain(
            &mut tx,
            at,
            "rampart",
            "release_finished",
            Some((release_id, None)),
            &body,
        )
        .await?;
        tx.commit().await
    }

    async fn change_freeze(
        &self,
        scope: Option<&str>,
        freeze: bool,
        by: &Freeze,
    ) -> Result<(), PortError> {
        let scope = scope.unwrap_or("*");
        let mut tx = self.chained().await?;
        if freeze {
            tx.execute(
                "INSERT INTO freezes (scope, actor, reason, at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(scope) DO UPDATE SET actor = excluded.actor, reason = excluded.reason, at = excluded.at",
                args![scope, &by.actor, &by.reason, by.at],
            )
            .await?;
        } else {
            tx.execute("DELETE FROM freezes WHERE scope = ?1", args![scope])
                .await?;
        }
        let kind = if freeze { "freeze_on" } else { "freeze_off" };
        tx.execute(
            "INSERT INTO audit (at, actor, kind, detail) VALUES (?1, ?2, ?3, ?4)",
            args![by.at, &by.actor, kind, format!("{scope}: {}", by.reason)],
        )
        .await?;
        let body = serde_json::json!({"scope": scope, "reason": by.reason}).to_string();
        control::chain(&mut tx, by.at, &by.actor, kind, None, &body).await?;
        tx.commit().await
    }

    async fn queue_for_service(
        &self,
        service: &str,
        command: &OperatorCommand,
    ) -> Result<String, PortError> {
        let mut tx = self.chained().await?;
        let id = tx
            .query_opt(
                "SELECT id FROM releases WHERE service = ?1 AND outcome IS NULL",
                args![service],
            )
            .await?
            .ok_or_else(|| PortError(format!("service {service} has no release in progress")))?
            .text(0)?;
        control::queue_command(&mut tx, &id, command).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn take_one_command(&self, release_id: &str) -> Result<Vec<OperatorCommand>, PortError> {
        let mut tx = self.acting().await?;
        let Some(r) = tx
            .query_opt(
                "SELECT actor, reason, force, kind, at, id FROM commands WHERE release_id = ?1 AND taken = 0 ORDER BY id LIMIT 1",
                args![release_id],
            )
            .await?
        else {
            return Ok(Vec::new());
        };
        tx.execute(
            "UPDATE commands SET taken = 1 WHERE id = ?1",
            args![r.int(5)?],
        )
        .await?;
        tx.commit().await?;
        // A request this version does not know (written by a newer rampart) is
        // dropped rather than guessed at.
        let kind = r.text(3)?;
        let Some(kind) = CommandKind::parse(&kind) else {
            tracing::warn!(release = %release_id, kind = %kind, "unknown operator request ignored");
            return Ok(Vec::new());
        };
        Ok(vec![OperatorCommand {
            kind,
            actor: r.text(0)?,
            reason: r.text(1)?,
            force: r.bool(2)?,
            at: r.uint(4)?,
        }])
    }

    async fn define_flags(&self, service: &str, defs: &[FlagDef]) -> Result<(), PortError> {
        let mut tx = self.acting().await?;
        for d in defs {
            let allow = serde_json::to_string(&d.allow).map_err(db_err)?;
            tx.execute(
                "INSERT INTO flags (service, name, default_on, ramp_bp, allow, updated_at, updated_by) VALUES (?1, ?2, ?3, 0, ?4, 0, 'policy') ON CONFLICT(service, name) DO UPDATE SET allow = excluded.allow",
                args![service, &d.name, d.default, allow],
            )
            .await?;
        }
        tx.commit().await
    }

    async fn change_flag(
        &self,
        service: &str,
        change: &FlagChange,
    ) -> Result<FlagState, PortError> {
        let mut tx = self.acting().await?;
        let before = tx
            .query_opt(
                &format!("SELECT {FLAG_COLUMNS} FROM flags WHERE service = ?1 AND name = ?2"),
                args![service, &change.name],
            )
            .await?
            .ok_or_else(|| {
                PortError(format!(
                    "{service} has no flag `{}`; define it under `flags.define` in the policy",
                    change.name
                ))
            })?;
        let before = row_to_flag(&before)?;
        let after = FlagState {
            ramp: change.ramp.unwrap_or(before.ramp),
            default: change.default.unwrap_or(before.default),
            ..before
        };
        tx.execute(
            "UPDATE flags SET default_on = ?3, ramp_bp = ?4, updated_at = ?5, updated_by = ?6 WHERE service = ?1 AND name = ?2",
            args![
                service,
                &change.name,
                after.default,
                i64::from(after.ramp.basis_points()),
                change.at,
                &change.actor
            ],
        )
        .await?;
        let detail = format!(
            "{service}/{}: ramp {}, default {} ({})",
            change.name,
            after.ramp,
            if after.default { "on" } else { "off" },
            change.reason
        );
        tx.execute(
            "INSERT INTO audit (at, actor, kind, detail) VALUES (?1, ?2, 'flag_set', ?3)",
            args![change.at, &change.actor, detail],
        )
        .await?;
        let body = serde_json::json!({
            "service": service,
            "flag": change.name,
            "ramp": after.ramp.to_string(),
            "default": after.default,
            "reason": change.reason,
        })
        .to_string();
        control::chain(&mut tx, change.at, &change.actor, "flag_set", None, &body).await?;
        tx.commit().await?;
        Ok(after)
    }
}

impl Store for StateStore {
    fn create<'a>(&'a self, rel: &'a ReleaseRecord) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(self.create_release(rel))
    }

    fn append<'a>(
        &'a self,
        release_id: &'a str,
        entry: &'a StoredInput,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(self.append_entry(release_id, entry))
    }

    fn load<'a>(
        &'a self,
        release_id: &'a str,
    ) -> BoxFuture<'a, Result<(ReleaseRecord, Vec<StoredInput>), PortError>> {
        Box::pin(self.load_release(release_id))
    }

    fn active<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Option<ReleaseRecord>, PortError>> {
        Box::pin(async move {
            self.db
                .conn()
                .await?
                .query_opt(
                    &format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE service = ?1 AND outcome IS NULL"),
                    args![service],
                )
                .await?
                .as_ref()
                .map(row_to_release)
                .transpose()
        })
    }

    fn finish<'a>(
        &'a self,
        release_id: &'a str,
        outcome: OutcomeKind,
        serving: Option<&'a str>,
        automatic_rollback: bool,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(self.finish_release(release_id, outcome, serving, automatic_rollback))
    }

    fn automatic_rollbacks<'a>(
        &'a self,
        service: &'a str,
        since: u64,
    ) -> BoxFuture<'a, Result<u32, PortError>> {
        Box::pin(async move {
            let n = self
                .db
                .conn()
                .await?
                .one(
                    "SELECT COUNT(*) FROM releases WHERE service = ?1 AND automatic_rollback = 1 AND finished_at >= ?2",
                    args![service, since],
                )
                .await?
                .int(0)?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
    }

    fn set_freeze<'a>(
        &'a self,
        scope: Option<&'a str>,
        freeze: bool,
        by: &'a Freeze,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(self.change_freeze(scope, freeze, by))
    }

    fn freeze<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Option<Freeze>, PortError>> {
        Box::pin(async move {
            let row = self
                .db
                .conn()
                .await?
                .query_opt(
                    "SELECT actor, reason, at FROM freezes WHERE scope = ?1 OR scope = '*' ORDER BY scope = '*' LIMIT 1",
                    args![service],
                )
                .await?;
            row.map(|r| {
                Ok(Freeze {
                    actor: r.text(0)?,
                    reason: r.text(1)?,
                    at: r.uint(2)?,
                })
            })
            .transpose()
        })
    }

    fn push_command<'a>(
        &'a self,
        service: &'a str,
        command: &'a OperatorCommand,
    ) -> BoxFuture<'a, Result<String, PortError>> {
        Box::pin(self.queue_for_service(service, command))
    }

    fn releases_with_requests(&self) -> BoxFuture<'_, Result<Vec<String>, PortError>> {
        Box::pin(async move {
            let rows = self
                .db
                .conn()
                .await?
                .query(
                    "SELECT DISTINCT release_id FROM commands WHERE taken = 0",
                    args![],
                )
                .await?;
            rows.iter().map(|r| r.text(0)).collect()
        })
    }

    fn take_commands<'a>(
        &'a self,
        release_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<OperatorCommand>, PortError>> {
        Box::pin(self.take_one_command(release_id))
    }

    fn serving_version<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, PortError>> {
        Box::pin(async move {
            let row = self
                .db
                .conn()
                .await?
                .query_opt(
                    "SELECT serving_version FROM services WHERE service = ?1",
                    args![service],
                )
                .await?;
            Ok(row.map(|r| r.opt_text(0)).transpose()?.flatten())
        })
    }
}

impl FlagStore for StateStore {
    fn define<'a>(
        &'a self,
        service: &'a str,
        defs: &'a [FlagDef],
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(self.define_flags(service, defs))
    }

    fn flags<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Vec<FlagState>, PortError>> {
        Box::pin(async move {
            let rows = self
                .db
                .conn()
                .await?
                .query(
                    &format!("SELECT {FLAG_COLUMNS} FROM flags WHERE service = ?1 ORDER BY name"),
                    args![service],
                )
                .await?;
            rows.iter().map(row_to_flag).collect()
        })
    }

    fn set_flag<'a>(
        &'a self,
        service: &'a str,
        change: &'a FlagChange,
    ) -> BoxFuture<'a, Result<FlagState, PortError>> {
        Box::pin(self.change_flag(service, change))
    }
}

#[cfg(test)]
mod tests;
