//! The state store: releases and their append-only input logs, operator requests,
//! freezes, flags, and the control plane's tables, in SQLite (the embedded default,
//! one file) or PostgreSQL (shared by several `rampart serve` replicas; cargo feature
//! `postgres`).
//!
//! Owns opening a store and the fencing of a replica's writes by its leader lease; each
//! table's queries (the same on both databases) live in the module of its concept:
//! `releases`, `appends`, `requests`, `freezes`, `flags`, `chain`, `tokens`,
//! `submissions`, `listing`, `lease`. The ports it implements are in `ports` (core's)
//! and `plane` (the control plane's). It must not interpret the log (replay is core's
//! job), and what differs between the databases lives in `value`, `sql`, `schema` and
//! `postgres`.

use std::sync::{Arc, Mutex};

pub mod acting;
mod appends;
mod chain;
mod error;
mod flags;
mod freezes;
pub mod lease;
mod listing;
mod locate;
#[cfg(feature = "memory")]
pub mod memory;
pub mod plane;
mod ports;
#[cfg(feature = "postgres")]
mod postgres;
mod releases;
mod requests;
mod schema;
mod sql;
mod submissions;
mod tokens;
mod value;

pub use chain::{ChainRecord, ChainReport, sha256_hex};
pub use error::StoreError;
pub use locate::{Location, locate};
pub use plane::{AuditChain, ControlPlane, Listing, Submissions, Tokens};
use sql::{Backend, Db, Tx, args, db_err};
pub use submissions::Submission;
pub use tokens::{TOKEN_PREFIX, TokenInfo};

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

/// The fence, and until when a leader may act without having renewed its lease again
/// (on the lease's clock): past it, the replica is a standby from its next check,
/// whatever its renewal task has seen yet.
#[derive(Debug)]
struct Fencing {
    fence: Fence,
    until: Option<(Arc<dyn rampart_core::ports::Clock>, rampart_core::Millis)>,
}

impl Fencing {
    /// The fence in force: a leader past its deadline becomes a standby, for good.
    fn in_force(&mut self) -> &Fence {
        if matches!(self.fence, Fence::Leader { .. })
            && let Some((clock, until)) = &self.until
            && clock.now() >= *until
        {
            tracing::warn!("the leader lease was not renewed in time; this replica no longer acts");
            self.fence = Fence::Standby;
            self.until = None;
        }
        &self.fence
    }
}

/// The state store.
#[derive(Debug)]
pub struct StateStore {
    db: Db,
    /// The lease's own connection (the same one on SQLite): a renewal never waits
    /// behind API reads or a batch of appends.
    lease_db: Db,
    fence: Mutex<Fencing>,
    postgres: bool,
    appends: Mutex<appends::Appends>,
    /// How to open a connection of its own for a long read (the audit chain's check),
    /// so that it never holds the connection releases append through.
    reopen: Reopen,
    /// One long read at a time: checks asked together (any reader may ask) wait for
    /// each other rather than open a connection each.
    long_reads: tokio::sync::Semaphore,
}

/// Where a store's database is, to open another connection on it.
#[derive(Clone)]
enum Reopen {
    /// Nowhere else (an in-memory database): long reads share the main connection.
    Shared,
    Sqlite(std::path::PathBuf),
    /// The server's URL, which may hold a password: never printed.
    #[cfg(feature = "postgres")]
    Postgres(String),
}

impl std::fmt::Debug for Reopen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reopen::Shared => f.write_str("Shared"),
            Reopen::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            #[cfg(feature = "postgres")]
            Reopen::Postgres(_) => f.write_str("Postgres(..)"),
        }
    }
}

/// SQLite with its durability settings: WAL and `synchronous=FULL`, so an append that
/// returned survives a crash or a power loss.
fn sqlite(conn: rusqlite::Connection) -> Result<Backend, StoreError> {
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
    pub async fn open(path: &std::path::Path) -> Result<StateStore, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| db_err(format!("creating {}: {e}", dir.display())))?;
        }
        let conn = rusqlite::Connection::open(path).map_err(db_err)?;
        // SQLite's own name for a private in-memory database: nothing to reopen.
        let reopen = if path.as_os_str() == ":memory:" {
            Reopen::Shared
        } else {
            Reopen::Sqlite(path.to_path_buf())
        };
        Self::init(sqlite(conn)?, None, reopen).await
    }

    /// An in-memory SQLite store, for tests.
    pub async fn in_memory() -> Result<StateStore, StoreError> {
        let conn = rusqlite::Connection::open_in_memory().map_err(db_err)?;
        Self::init(sqlite(conn)?, None, Reopen::Shared).await
    }

    /// Connects to the PostgreSQL store at `url` and migrates it (replicas starting
    /// together migrate one after another).
    #[cfg(feature = "postgres")]
    pub async fn connect(url: &str) -> Result<StateStore, StoreError> {
        let main = Backend::Postgres(Box::new(postgres::PgConn::connect(url).await?));
        let lease = Db::new(Backend::Postgres(Box::new(
            postgres::PgConn::connect(url).await?,
        )));
        Self::init(main, Some(lease), Reopen::Postgres(url.to_string())).await
    }

    /// Opens the store a URL names: `sqlite:PATH` (or a bare path), or
    /// `postgres://...` in a build with the `postgres` feature.
    pub async fn open_url(url: &str) -> Result<StateStore, StoreError> {
        match locate(url)? {
            Location::Sqlite(path) => Self::open(path).await,
            #[cfg(feature = "postgres")]
            Location::Postgres => Self::connect(url).await,
            #[cfg(not(feature = "postgres"))]
            Location::Postgres => Err(StoreError::Unsupported(
                "this build of rampart has no PostgreSQL store: build it with `--features postgres`, or use sqlite:PATH".into(),
            )),
        }
    }

    async fn init(
        backend: Backend,
        lease_db: Option<Db>,
        reopen: Reopen,
    ) -> Result<StateStore, StoreError> {
        let postgres = !matches!(backend, Backend::Sqlite(_));
        let db = Db::new(backend);
        let chain_table_is_new = !schema::has_chain(&db).await?;
        schema::migrate(&db).await?;
        let store = StateStore {
            lease_db: lease_db.unwrap_or_else(|| db.clone()),
            db,
            fence: Mutex::new(Fencing {
                fence: Fence::Unfenced,
                until: None,
            }),
            postgres,
            appends: Mutex::new(appends::Appends::default()),
            reopen,
            long_reads: tokio::sync::Semaphore::new(1),
        };
        store.start_chain(chain_table_is_new).await?;
        Ok(store)
    }

    /// Whether the store is on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// A connection of its own, for a read that may take long (the audit chain's
    /// check over the whole history): appends and API reads never wait behind it.
    /// Opened for the read and closed after it; an in-memory store has only its main
    /// connection.
    async fn long_reader(&self) -> Result<Db, StoreError> {
        match &self.reopen {
            Reopen::Shared => Ok(self.db.clone()),
            Reopen::Sqlite(path) => {
                let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let conn = rusqlite::Connection::open_with_flags(path, flags).map_err(db_err)?;
                conn.busy_timeout(std::time::Duration::from_secs(5))
                    .map_err(db_err)?;
                Ok(Db::new(Backend::Sqlite(conn)))
            }
            #[cfg(feature = "postgres")]
            Reopen::Postgres(url) => Ok(Db::new(Backend::Postgres(Box::new(
                postgres::PgConn::connect(url).await?,
            )))),
        }
    }

    /// The fence in force: a leader past its deadline (see [`Fencing`]) is a standby
    /// from now on.
    fn fence(&self) -> Fence {
        match self.fence.lock() {
            Ok(mut f) => f.in_force().clone(),
            Err(_) => Fence::Standby,
        }
    }

    /// Sets the fence; a leader has no deadline until [`StateStore::act_until`] gives
    /// it one.
    fn set_fence(&self, fence: Fence) {
        if let Ok(mut f) = self.fence.lock() {
            *f = Fencing { fence, until: None };
        }
    }

    /// From now on, the leader holding fencing token `token` acts only until `until`
    /// on `clock`, unless this is called again (its lease renewed). Returns `false`,
    /// changing nothing, when this store is not that leader (any more): a deadline
    /// that passed has made it a standby for good, whatever the renewal says.
    #[must_use]
    pub(crate) fn act_until(
        &self,
        token: i64,
        clock: Arc<dyn rampart_core::ports::Clock>,
        until: rampart_core::Millis,
    ) -> bool {
        let Ok(mut f) = self.fence.lock() else {
            return false;
        };
        if !matches!(f.in_force(), Fence::Leader { token: t, .. } if *t == token) {
            return false;
        }
        f.until = Some((clock, until));
        true
    }

    /// Refuses at once, asking nothing of the database, when this process is a
    /// standby or a leader whose lease it could not renew in time: what a caller
    /// checks right before it changes the world outside the store (a router's
    /// weights, a deployment), where the fencing token cannot follow.
    pub fn may_act(&self) -> Result<(), StoreError> {
        match self.fence() {
            Fence::Standby => Err(StoreError::NotLeader(
                "this replica is not the leader (a standby, or a leader whose lease lapsed); it no longer acts"
                    .into(),
            )),
            Fence::Unfenced | Fence::Leader { .. } => Ok(()),
        }
    }

    /// Checks, inside a write transaction, that this process may act: it holds no
    /// lease (the single-process default), or it still holds its lease with its token.
    /// The row lock taken here makes a takeover wait for this transaction, so a
    /// deposed leader's write either lands before the takeover or is refused.
    async fn fenced(&self, tx: &mut Tx) -> Result<(), StoreError> {
        match self.fence() {
            Fence::Unfenced => Ok(()),
            Fence::Standby => Err(StoreError::NotLeader(
                "this replica is a standby; the leader acts on releases".into(),
            )),
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
                    Err(StoreError::NotLeader(format!(
                        "lease {name} has moved on from fencing token {token}; this replica no longer acts"
                    )))
                }
            }
        }
    }

    /// Begins a transaction for a write that acts on a release, checked by the fence,
    /// with the audit chain locked.
    async fn acting(&self) -> Result<Tx, StoreError> {
        let mut tx = self.db.begin().await?;
        tx.lock_chain().await?;
        self.fenced(&mut tx).await?;
        Ok(tx)
    }

    /// Begins a transaction for a write that appends to the audit chain.
    async fn chained(&self) -> Result<Tx, StoreError> {
        let mut tx = self.db.begin().await?;
        tx.lock_chain().await?;
        Ok(tx)
    }
}

#[cfg(test)]
mod tests;
