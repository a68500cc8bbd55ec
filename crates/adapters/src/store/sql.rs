//! The little SQL layer under the state store: one connection to SQLite or PostgreSQL,
//! transactions on it, and rows of plain values.
//!
//! Owns what differs between the two databases: placeholders, value types, how a
//! transaction begins and ends, and how writers of the audit chain are serialised. It
//! must not know any table: the schema and every query are the store's.

use std::sync::Arc;

use rampart_core::ports::PortError;

/// A value bound to a query or read from a row. Booleans travel as integers 0 and 1,
/// which both databases store and compare the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit integer (also booleans).
    Int(i64),
    /// Text.
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(i64::from(v))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Binds values to a query: `args![a, b]`.
macro_rules! args {
    ($($v:expr),* $(,)?) => { &[$($crate::store::sql::Value::from($v)),*][..] };
}
pub(crate) use args;

/// One result row.
#[derive(Clone, Debug, Default)]
pub struct Row(Vec<Value>);

impl From<Vec<Value>> for Row {
    fn from(values: Vec<Value>) -> Self {
        Row(values)
    }
}

impl Row {
    fn at(&self, i: usize) -> Result<&Value, PortError> {
        self.0
            .get(i)
            .ok_or_else(|| db_err(format!("a row has no column {i}")))
    }

    /// Column `i` as an integer (or a boolean as 0/1).
    pub fn int(&self, i: usize) -> Result<i64, PortError> {
        match self.at(i)? {
            Value::Int(v) => Ok(*v),
            other => Err(db_err(format!("column {i} is {other:?}, not an integer"))),
        }
    }

    /// Column `i` as a non-negative integer (negative values read as 0).
    pub fn uint(&self, i: usize) -> Result<u64, PortError> {
        Ok(u64::try_from(self.int(i)?).unwrap_or(0))
    }

    /// Column `i` as an integer, or `None` for NULL.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, PortError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.int(i).map(Some),
        }
    }

    /// Column `i` as a boolean.
    pub fn bool(&self, i: usize) -> Result<bool, PortError> {
        Ok(self.int(i)? != 0)
    }

    /// Column `i` as text.
    pub fn text(&self, i: usize) -> Result<String, PortError> {
        match self.at(i)? {
            Value::Text(v) => Ok(v.clone()),
            other => Err(db_err(format!("column {i} is {other:?}, not text"))),
        }
    }

    /// Column `i` as text, or `None` for NULL.
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, PortError> {
        match self.at(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
}

/// Every store error reads the same way in the audit trail and the logs.
pub fn db_err(e: impl std::fmt::Display) -> PortError {
    PortError(format!("state store: {e}"))
}

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
    pub async fn begin(&self) -> Result<Tx, PortError> {
        self.conn().await?.begin().await
    }

    /// Begins a read-only transaction that sees one snapshot of the whole store.
    pub async fn snapshot(&self) -> Result<Tx, PortError> {
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
    pub async fn conn(&self) -> Result<Tx, PortError> {
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

/// `?1`-style placeholders (the store's queries) as PostgreSQL's `$1`.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

fn sqlite_value(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Int(i) => rusqlite::types::Value::Integer(*i),
        Value::Text(t) => rusqlite::types::Value::Text(t.clone()),
    }
}

fn sqlite_rows(c: &rusqlite::Connection, sql: &str, args: &[Value]) -> Result<Vec<Row>, PortError> {
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
        out.push(Row(row));
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
    pub async fn begin(mut self) -> Result<Tx, PortError> {
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
    pub async fn batch(&mut self, sql: &str) -> Result<(), PortError> {
        match self.backend() {
            Backend::Sqlite(c) => c.execute_batch(sql).map_err(db_err),
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.batch(sql).await,
        }
    }

    /// Every row a query returns.
    pub async fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, PortError> {
        match self.backend() {
            Backend::Sqlite(c) => sqlite_rows(c, sql, args),
            #[cfg(feature = "postgres")]
            Backend::Postgres(pg) => pg.query(sql, args).await,
        }
    }

    /// The first row a query returns, if any.
    pub async fn query_opt(&mut self, sql: &str, args: &[Value]) -> Result<Option<Row>, PortError> {
        Ok(self.query(sql, args).await?.into_iter().next())
    }

    /// The one row a query must return.
    pub async fn one(&mut self, sql: &str, args: &[Value]) -> Result<Row, PortError> {
        self.query_opt(sql, args)
            .await?
            .ok_or_else(|| db_err("a query that always returns a row returned none"))
    }

    /// Runs a statement and returns how many rows it changed.
    pub async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, PortError> {
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
    ) -> Result<(), PortError> {
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
    pub async fn lock_chain(&mut self) -> Result<(), PortError> {
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
    pub async fn commit(mut self) -> Result<(), PortError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_only_before_digits() {
        assert_eq!(
            dollar_placeholders("SELECT a FROM t WHERE b = ?1 OR ?12 IS NULL AND c = '?'"),
            "SELECT a FROM t WHERE b = $1 OR $12 IS NULL AND c = '?'"
        );
    }
}
