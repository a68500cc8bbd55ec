//! Freezes: no release of a service (or of any, with scope `*`) starts or goes to
//! 100 % while one is in force; each change is audited and chained.
//!
//! Owns the freezes table. It must not enforce a freeze: the controller and the server
//! do.

use rampart_core::ports::Freeze;

use super::StateStore;
use super::chain::chain;
use super::error::StoreError;
use super::sql::args;

// === impl StateStore: freezes ===

impl StateStore {
    pub(super) async fn change_freeze(
        &self,
        scope: Option<&str>,
        freeze: bool,
        by: &Freeze,
    ) -> Result<(), StoreError> {
        let scope = scope.unwrap_or("*");
        let mut tx = self.chained().await?;
        if freeze {
            // A freeze in force stays as it was: who froze and why is what decides
            // when to lift it, and nobody (an agent's routine freeze) rewrites it.
            let n = tx
                .execute(
                    "INSERT INTO freezes (scope, actor, reason, at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(scope) DO NOTHING",
                    args![scope, &by.actor, &by.reason, by.at],
                )
                .await?;
            if n == 0 {
                return Ok(());
            }
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
        chain(&mut tx, by.at, &by.actor, kind, None, &body).await?;
        tx.commit().await
    }

    /// Records an operator's action on a service outside any release (`kind`, e.g.
    /// `canary_stopped`), audited and chained as a freeze is.
    pub async fn record_operator_action(
        &self,
        at: rampart_core::units::Millis,
        actor: &str,
        kind: &str,
        service: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.chained().await?;
        tx.execute(
            "INSERT INTO audit (at, actor, kind, detail) VALUES (?1, ?2, ?3, ?4)",
            args![at, actor, kind, format!("{service}: {reason}")],
        )
        .await?;
        let body = serde_json::json!({"service": service, "reason": reason}).to_string();
        chain(&mut tx, at, actor, kind, None, &body).await?;
        tx.commit().await
    }

    /// The freeze that applies to a service, if any (its own, or the global one).
    pub(super) async fn freeze_of(&self, service: &str) -> Result<Option<Freeze>, StoreError> {
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
    }

    /// Every freeze in force: `scope` is a service, or `*` for every service.
    pub async fn freezes(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let rows = self
            .db
            .conn()
            .await?
            .query(
                "SELECT scope, actor, reason, at FROM freezes ORDER BY scope",
                args![],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(serde_json::json!({
                    "scope": r.text(0)?,
                    "actor": r.text(1)?,
                    "reason": r.text(2)?,
                    "at": r.int(3)?,
                }))
            })
            .collect()
    }
}
