//! The PostgreSQL connection under the state store (cargo feature `postgres`).
//!
//! Owns connecting (and reconnecting after the server or the network dropped the
//! connection), prepared statements, and the mapping between the store's plain values
//! and PostgreSQL's types. It must not know any table.

use std::collections::HashMap;
use std::error::Error;

use bytes::BytesMut;
use std::time::Duration;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use tokio_postgres::{Client, Config, NoTls, Statement};

use super::error::StoreError;
use super::value::{Row, Value, db_err, dollar_placeholders};

/// How long one round trip may take before the connection counts as lost.
const ROUND_TRIP: Duration = Duration::from_secs(10);

/// Server-side limits of every session: a transaction left idle (its client cut off)
/// is ended and its locks freed, and a statement waits at most this long for a lock,
/// so a lost replica never holds the lease row or the chain lock for long.
const SESSION_LIMITS: &str =
    "SET idle_in_transaction_session_timeout = '5s'; SET lock_timeout = '8s'";

/// One connection to PostgreSQL.
pub struct PgConn {
    config: Config,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
    /// Set before `BEGIN` is sent and cleared once `COMMIT` or `ROLLBACK` returned:
    /// while set, the session may be inside a transaction.
    in_tx: bool,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration may carry a password.
        f.debug_struct("PgConn")
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => db_err(format!("{}: {}", db.code().code(), db.message())),
        None => db_err(e),
    }
}

impl PgConn {
    /// Connects to `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`, or the
    /// `host=... dbname=...` form). The connection is plain TCP: keep the server on a
    /// private network or a local socket, or put a TLS tunnel in front (docs/ha.md).
    pub async fn connect(url: &str) -> Result<PgConn, StoreError> {
        // The error would quote the URL, password included.
        let mut config: Config = url
            .parse()
            .map_err(|_| db_err("the PostgreSQL URL is not valid (postgres://USER@HOST/DB)"))?;
        config
            .connect_timeout(ROUND_TRIP)
            .keepalives_idle(Duration::from_secs(5))
            .tcp_user_timeout(ROUND_TRIP);
        let mut conn = PgConn {
            config,
            client: None,
            statements: HashMap::new(),
            in_tx: false,
        };
        conn.connected().await?;
        Ok(conn)
    }

    /// Connects, or reconnects after the server or the network dropped the connection.
    /// Never inside a transaction: statements after a silent reconnect would run
    /// outside it (each committing on its own) while the caller believes them atomic.
    async fn connected(&mut self) -> Result<&Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            if self.in_tx {
                return Err(db_err(
                    "the connection to PostgreSQL was lost in the middle of a transaction; its outcome is unknown until the log is read again",
                ));
            }
            self.statements.clear();
            let (client, connection) = tokio::time::timeout(ROUND_TRIP, self.config.connect(NoTls))
                .await
                .map_err(|_| db_err("cannot connect to PostgreSQL: timed out"))?
                .map_err(|e| db_err(format!("cannot connect to PostgreSQL: {e}")))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!("PostgreSQL connection ended: {e}");
                }
            });
            bounded(client.batch_execute(SESSION_LIMITS)).await?;
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| db_err("no PostgreSQL connection"))
    }

    /// Makes the connection usable: a transaction abandoned half-way is rolled back
    /// (or, when the connection itself was lost, was rolled back by the server), and a
    /// lost connection is opened again.
    pub(crate) async fn recover(&mut self) -> Result<(), StoreError> {
        if self.in_tx {
            let alive = self.client.as_ref().is_some_and(|c| !c.is_closed());
            if alive {
                let client = self
                    .client
                    .as_ref()
                    .ok_or_else(|| db_err("no PostgreSQL connection"))?;
                if bounded(client.batch_execute("ROLLBACK")).await.is_err() {
                    // Not answered in time: give the session up (the server ends it).
                    self.client = None;
                }
            } else {
                self.client = None;
            }
            self.in_tx = false;
        }
        self.connected().await?;
        Ok(())
    }

    /// Runs one round trip, bounded: a connection that does not answer in time is
    /// given up (its session ends on the server within its limits).
    async fn round_trip<T>(
        &mut self,
        work: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, StoreError> {
        let client = self.connected().await?;
        match tokio::time::timeout(ROUND_TRIP, work(client)).await {
            Ok(r) => r.map_err(pg_err),
            Err(_) => {
                self.client = None;
                Err(db_err("PostgreSQL did not answer in time"))
            }
        }
    }

    pub(crate) async fn begin(&mut self) -> Result<(), StoreError> {
        // Marked first: if the answer is lost, the session may be in a transaction.
        self.connected().await?;
        self.in_tx = true;
        self.round_trip(async |c| c.batch_execute("BEGIN").await)
            .await
    }

    pub(crate) async fn begin_snapshot(&mut self) -> Result<(), StoreError> {
        self.connected().await?;
        self.in_tx = true;
        self.round_trip(async |c| {
            c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
        })
        .await
    }

    pub(crate) async fn commit(&mut self) -> Result<(), StoreError> {
        self.round_trip(async |c| c.batch_execute("COMMIT").await)
            .await?;
        self.in_tx = false;
        Ok(())
    }

    pub(crate) async fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.round_trip(async |c| c.batch_execute(sql).await).await
    }

    async fn statement(&mut self, sql: &str) -> Result<Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let text = dollar_placeholders(sql);
        let stmt = self.round_trip(async |c| c.prepare(&text).await).await?;
        self.statements.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    pub(crate) async fn query(
        &mut self,
        sql: &str,
        args: &[Value],
    ) -> Result<Vec<Row>, StoreError> {
        let stmt = self.statement(sql).await?;
        let rows = self
            .round_trip(async |c| {
                let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
                c.query(&stmt, &params).await
            })
            .await?;
        rows.iter().map(from_pg).collect()
    }

    pub(crate) async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        let stmt = self.statement(sql).await?;
        self.round_trip(async |c| {
            let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
            c.execute(&stmt, &params).await
        })
        .await
    }

    /// Runs statements that do not depend on each other's results, pipelined: all are
    /// sent before the first answer is awaited, so a batch costs about one round trip.
    pub(crate) async fn execute_all(
        &mut self,
        statements: &[(&str, Vec<Value>)],
    ) -> Result<(), StoreError> {
        let mut prepared = Vec::with_capacity(statements.len());
        for (sql, _) in statements {
            prepared.push(self.statement(sql).await?);
        }
        self.round_trip(async |client| {
            let runs = prepared
                .iter()
                .zip(statements)
                .map(|(stmt, (_, args))| async move {
                    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
                    client.execute(stmt, &params).await
                });
            futures_util::future::try_join_all(runs).await.map(|_| ())
        })
        .await
    }
}

/// A round trip outside `PgConn::round_trip` (while connecting), bounded the same way.
async fn bounded<T>(
    work: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(ROUND_TRIP, work)
        .await
        .map_err(|_| db_err("PostgreSQL did not answer in time"))?
        .map_err(pg_err)
}

fn from_pg(r: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let mut out = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let ty = col.type_();
        let v = if *ty == Type::INT8 {
            r.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int))
        } else if *ty == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)
                .map(|v| v.map(|v| Value::Int(v.into())))
        } else if *ty == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)
                .map(|v| v.map(|v| Value::Int(v.into())))
        } else if *ty == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)
                .map(|v| v.map(|v| Value::Int(v.into())))
        } else {
            r.try_get::<_, Option<String>>(i)
                .map(|v| v.map(Value::Text))
        }
        .map_err(|e| db_err(format!("column {} ({ty}): {e}", col.name())))?;
        out.push(v.unwrap_or(Value::Null));
    }
    Ok(Row::from(out))
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) if *ty == Type::BOOL => (*v != 0).to_sql(ty, out),
            Value::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) => v.to_sql(ty, out),
            Value::Text(t) => t.as_str().to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        <i64 as ToSql>::accepts(ty)
            || <i32 as ToSql>::accepts(ty)
            || <i16 as ToSql>::accepts(ty)
            || <bool as ToSql>::accepts(ty)
            || <&str as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}
