//! The PostgreSQL connection under the state store (cargo feature `postgres`).
//!
//! Owns connecting (and reconnecting after the server or the network dropped the
//! connection), prepared statements, and the mapping between the store's plain values
//! and PostgreSQL's types. It must not know any table.

use std::collections::HashMap;
use std::error::Error;

use bytes::BytesMut;
use rampart_core::ports::PortError;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls, Statement};

use super::sql::{Row, Value, db_err, dollar_placeholders};

/// One connection to PostgreSQL.
pub struct PgConn {
    url: String,
    client: Option<Client>,
    statements: HashMap<String, Statement>,
    in_tx: bool,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("PgConn")
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

fn pg_err(e: tokio_postgres::Error) -> PortError {
    match e.as_db_error() {
        Some(db) => db_err(format!("{}: {}", db.code().code(), db.message())),
        None => db_err(e),
    }
}

impl PgConn {
    /// Connects to `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`, or the key=value
    /// form). The connection is plain TCP: keep the server on a private network or a
    /// local socket, or put a TLS tunnel in front (see docs/ha.md).
    pub async fn connect(url: &str) -> Result<PgConn, PortError> {
        let mut conn = PgConn {
            url: url.to_string(),
            client: None,
            statements: HashMap::new(),
            in_tx: false,
        };
        conn.client().await?;
        Ok(conn)
    }

    async fn client(&mut self) -> Result<&Client, PortError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.statements.clear();
            self.in_tx = false;
            let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
                .await
                .map_err(|e| db_err(format!("cannot connect to PostgreSQL: {e}")))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!("PostgreSQL connection ended: {e}");
                }
            });
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| db_err("no PostgreSQL connection"))
    }

    /// Makes the connection usable: reconnects if it dropped, and rolls back a
    /// transaction that was abandoned half-way.
    pub(crate) async fn recover(&mut self) -> Result<(), PortError> {
        let in_tx = self.in_tx;
        let client = self.client().await?;
        if in_tx {
            client.batch_execute("ROLLBACK").await.map_err(pg_err)?;
            self.in_tx = false;
        }
        Ok(())
    }

    pub(crate) async fn begin(&mut self) -> Result<(), PortError> {
        self.client()
            .await?
            .batch_execute("BEGIN")
            .await
            .map_err(pg_err)?;
        self.in_tx = true;
        Ok(())
    }

    pub(crate) async fn commit(&mut self) -> Result<(), PortError> {
        self.client()
            .await?
            .batch_execute("COMMIT")
            .await
            .map_err(pg_err)?;
        self.in_tx = false;
        Ok(())
    }

    pub(crate) async fn batch(&mut self, sql: &str) -> Result<(), PortError> {
        self.client()
            .await?
            .batch_execute(sql)
            .await
            .map_err(pg_err)
    }

    async fn statement(&mut self, sql: &str) -> Result<Statement, PortError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let text = dollar_placeholders(sql);
        let stmt = self.client().await?.prepare(&text).await.map_err(pg_err)?;
        self.statements.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    pub(crate) async fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, PortError> {
        let stmt = self.statement(sql).await?;
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
        let rows = self
            .client()
            .await?
            .query(&stmt, &params)
            .await
            .map_err(pg_err)?;
        rows.iter().map(from_pg).collect()
    }

    pub(crate) async fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, PortError> {
        let stmt = self.statement(sql).await?;
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
        self.client()
            .await?
            .execute(&stmt, &params)
            .await
            .map_err(pg_err)
    }
}

impl PgConn {
    /// Runs statements that do not depend on each other's results, pipelined: all are
    /// sent before the first answer is awaited, so a batch costs about one round trip.
    pub(crate) async fn execute_all(
        &mut self,
        statements: &[(&str, Vec<Value>)],
    ) -> Result<(), PortError> {
        let mut prepared = Vec::with_capacity(statements.len());
        for (sql, _) in statements {
            prepared.push(self.statement(sql).await?);
        }
        let client = self.client().await?;
        let runs = prepared
            .iter()
            .zip(statements)
            .map(|(stmt, (_, args))| async move {
                let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| a as _).collect();
                client.execute(stmt, &params).await
            });
        futures_util::future::try_join_all(runs)
            .await
            .map_err(pg_err)?;
        Ok(())
    }
}

fn from_pg(r: &tokio_postgres::Row) -> Result<Row, PortError> {
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
