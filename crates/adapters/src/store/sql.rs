//! The little SQL layer under the state store: one connection to SQLite or PostgreSQL,
//! and transactions on it.
//!
//! Owns what differs between the two databases at run time: how a transaction begins
//! and ends, how rows come back from SQLite, and how writers of the audit chain are
//! serialised (values and placeholders are `value`'s). It must not know any table: the
//! schema and every query are the store's.

use std::sync::Arc;

use super::error::StoreError;
pub(crate) use super::value::{Row, Value, args, db_err};

/// The database behind a store.
#[derive(Debug)]
pub enum Backend {
    /// One SQLite file (or memory).
    Sqlite(rusqlite::Connection),
    /// A PostgreSQL server.
    #[cfg(feature = "postgres")]
    Postgres(Box<super::postgres::PgConn>),
}

/// A connection, shared by the store's methods one at a time.
#[derive(Debug, Clone)]
pub struct Db {
    conn: Arc<tokio::sync::Mutex<Backend>>,
}

/// A handle on the connection: a transaction (rolled back unless committed) or plain
/// statements that each commit on their own.
#[derive(Debug)]
pub struct Tx {
    /// Always `Some` until dropped (then a transaction still open is rolled back).
    guard: Option<tokio::sync::OwnedMutexGuard<Backend>>,
    open: bool,
}

impl Db {
    /// Wraps a connection.
    pub fn new(backend: Backend) -> Db {
        Db {
            conn: Arc::new(tokio::sync::Mutex::new(backend)),
        }
    }

    /// Begins a transaction.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        self.conn().await?.begin().await
    }

    /// Begins a read-only transaction that sees one snapshot of the whole store.
    pub async fn snapshot(&self) -> Result<Tx, StoreError> {
        let mut tx = self.conn().await?;
        match tx.backend() {
            // A deferred transaction's first read fixes its snapshot (WAL), and it takes
            // no write lock.
            Backend::Sqlite(c) => c.execute_batch("BEGIN DEFERRED").map_err(db_err)?,
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.begin_snapshot().await?,
        }
        tx.open = true;
        Ok(tx)
    }

    /// The connection for statements outside a transaction.
    pub async fn conn(&self) -> Result<Tx, StoreError> {
        let mut conn = self.conn.clone().lock_owned().await;
        // A transaction dropped half-way (its task cancelled, or an error returned
        // early) is rolled back before anything else runs on the connection.
        match &mut *conn {
            Backend::Sqlite(c) => {
                if !c.is_autocommit() {
                    c.execute_batch("ROLLBACK").map_err(db_err)?;
                }
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.recover().await?,
        }
        Ok(Tx {
            guard: Some(conn),
            open: false,
        })
    }
}

fn sqlite_value(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(i) => rusqlite::types::Value::Integer(*i),
        Value::Text(t) => rusqlite::types::Value::Text(t.clone()),
    }
}

fn sqlite_rows(
    c: &rusqlite::Connection,
    sql: &str,
    args: &[Value],
) -> Result<Vec<Row>, StoreError> {
    let mut stmt = c.prepare_cached(sql).map_err(db_err)?;
    let n = stmt.column_count();
    let mut rows = stmt.query(sqlite_params(args)).map_err(db_err)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(db_err)? {
        let mut row = Vec::with_capacity(n);
        for i in 0..n {
            row.push(match r.get_ref(i).map_err(db_err)? {
                rusqlite::types::ValueRef::Null => Value::Null,
                rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                // Only aggregates over integers produce reals here.
                rusqlite::types::ValueRef::Real(v) => Value::Int(v as i64),
                rusqlite::types::ValueRef::Text(t) => {
                    Value::Text(String::from_utf8_lossy(t).into_owned())
                }
                rusqlite::types::ValueRef::Blob(_) => {
                    return Err(db_err(format!("column {i} holds a blob")));
                }
            });
        }
        out.push(Row::from(row));
    }
    Ok(out)
}

/// A transaction dropped before its commit (an error returned early, a cancelled task)
/// is rolled back at once, so it never keeps its locks: synchronously on SQLite, by a
/// task that holds the connection until the rollback is done on PostgreSQL.
impl Drop for Tx {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        match &mut *guard {
            Backend::Sqlite(c) => {
                if !c.is_autocommit() {
                    let _ = c.execute_batch("ROLLBACK");
                }
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(_) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let Backend::Postgres(pg) = &mut *guard {
                            let _ = pg.recover().await;
                        }
                    });
                }
                // Without a runtime the next use of the connection rolls it back.
            }
        }
    }
}

impl Tx {
    fn backend(&mut self) -> &mut Backend {
        // The guard is taken only by `drop`.
        match self.guard.as_mut() {
            Some(g) => g,
            None => unreachable!("a transaction is used after it was dropped"),
        }
    }

    /// Begins a transaction on this connection.
    pub async fn begin(mut self) -> Result<Tx, StoreError> {
        match self.backend() {
            // Every transaction here writes: take the write lock at once, so another
            // process's write cannot turn this one into a busy error half-way.
            Backend::Sqlite(c) => c.execute_batch("BEGIN IMMEDIATE").map_err(db_err)?,
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.begin().await?,
        }
        self.open = true;
        Ok(self)
    }

    /// Runs statements without arguments (schema changes, transaction control).
    pub async fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        match self.backend() {
            Backend::Sqlite(c) => c.execute_batch(sql).map_err(db_err),
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.batch(sql).await,
        }
    }

    /// Every row a query returns.
    pub async fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        match self.backend() {
            Backend::Sqlite(c) => sqlite_rows(c, sql, args),
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.query(sql, args).await,
        }
    }

    /// The first row a query returns, if any.
    pub async fn query_opt(
        &mut self,
        sql: &str,
        args: &[Value],
    ) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, args).await?.into_iter().next())
    }

    /// The one row a query must return.
    pub async fn one(&mut self, sql: &str, args: &[Value]) -> Result<Row, StoreError> {
        self.query_opt(sql, args)
            .await?
            .ok_or_else(|| db_err("a query that always returns a row returned none"))
    }

    /// Runs a statement and returns how many rows it changed.
    pub async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        match self.backend() {
            Backend::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql).map_err(db_err)?;
                let n = stmt.execute(sqlite_params(args)).map_err(db_err)?;
                Ok(n as u64)
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.execute(sql, args).await,
        }
    }

    /// Runs statements that do not depend on each other's results: pipelined on
    /// PostgreSQL (one round trip for all), one after another on SQLite.
    pub async fn execute_all(
        &mut self,
        statements: &[(&str, Vec<Value>)],
    ) -> Result<(), StoreError> {
        match self.backend() {
            Backend::Sqlite(c) => {
                for (sql, args) in statements {
                    let mut stmt = c.prepare_cached(sql).map_err(db_err)?;
                    stmt.execute(sqlite_params(args)).map_err(db_err)?;
                }
                Ok(())
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.execute_all(statements).await,
        }
    }

    /// Serialises writers of the audit chain until this transaction ends. SQLite has
    /// one writer at a time already; PostgreSQL takes a transaction advisory lock, so
    /// two replicas never link two records to the same predecessor.
    pub async fn lock_chain(&mut self) -> Result<(), StoreError> {
        match self.backend() {
            Backend::Sqlite(_) => Ok(()),
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.batch("SELECT pg_advisory_xact_lock(7243517)").await,
        }
    }

    /// Whether this is a PostgreSQL connection.
    pub fn is_postgres(&self) -> bool {
        !matches!(self.guard.as_deref(), Some(Backend::Sqlite(_)))
    }

    /// Commits the transaction.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        if self.open {
            match self.backend() {
                Backend::Sqlite(c) => c.execute_batch("COMMIT").map_err(db_err)?,
                #[cfg(feature = "postgres")]
                Backend::Postgres(pg) => pg.commit().await?,
            }
            self.open = false;
        }
        Ok(())
    }
}

fn sqlite_params(args: &[Value]) -> impl rusqlite::Params + '_ {
    rusqlite::params_from_iter(args.iter().map(sqlite_value))
}
