//! The built-in feature flags, per service: defined by the policy, changed at run
//! time (ramp, default), every change audited and chained.
//!
//! Owns the flags table. It must not evaluate a flag for a request (the flag server
//! does).

use rampart_core::Weight;
use rampart_core::flags::{FlagDef, FlagState};
use rampart_core::ports::FlagChange;

use super::StateStore;
use super::chain::chain;
use super::error::StoreError;
use super::sql::{Row, args, db_err};

fn row_to_flag(r: &Row) -> Result<FlagState, StoreError> {
    Ok(FlagState {
        name: r.text(0)?,
        default: r.bool(1)?,
        ramp: u16::try_from(r.int(2)?)
            .ok()
            .and_then(Weight::from_basis_points)
            .unwrap_or(Weight::ZERO),
        allow: serde_json::from_str(&r.text(3)?).unwrap_or_default(),
        changed_by: r.text(4)?,
        changed_at: u64::try_from(r.int(5)?).unwrap_or(0),
    })
}

const FLAG_COLUMNS: &str = "name, default_on, ramp_bp, allow, updated_by, updated_at";

// === impl StateStore: flags ===

impl StateStore {
    pub(super) async fn define_flags(
        &self,
        service: &str,
        defs: &[FlagDef],
        at: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.acting().await?;
        for d in defs {
            let allow = serde_json::to_string(&d.allow).map_err(db_err)?;
            let before = tx
                .query_opt(
                    &format!("SELECT {FLAG_COLUMNS} FROM flags WHERE service = ?1 AND name = ?2"),
                    args![service, &d.name],
                )
                .await?
                .map(|r| row_to_flag(&r))
                .transpose()?;
            tx.execute(
                "INSERT INTO flags (service, name, default_on, ramp_bp, allow, updated_at, updated_by) VALUES (?1, ?2, ?3, 0, ?4, 0, 'policy') ON CONFLICT(service, name) DO UPDATE SET allow = excluded.allow",
                args![service, &d.name, d.default, allow],
            )
            .await?;
            // Who has the flag on whatever its ramp: a change to it is a flag change.
            let had = before.map(|b| b.allow).unwrap_or_default();
            let same = had.iter().collect::<std::collections::BTreeSet<_>>()
                == d.allow.iter().collect::<std::collections::BTreeSet<_>>();
            if !same {
                let added: Vec<&String> = d.allow.iter().filter(|k| !had.contains(k)).collect();
                let removed: Vec<&String> = had.iter().filter(|k| !d.allow.contains(k)).collect();
                let detail = format!(
                    "{service}/{}: allowlist from the policy, added {added:?}, removed {removed:?}",
                    d.name
                );
                tx.execute(
                    "INSERT INTO audit (at, actor, kind, detail) VALUES (?1, 'policy', 'flag_set', ?2)",
                    args![at, detail],
                )
                .await?;
                let body = serde_json::json!({
                    "service": service,
                    "flag": d.name,
                    "allow": d.allow,
                    "reason": "allowlist from the policy",
                })
                .to_string();
                chain(&mut tx, at, "policy", "flag_set", None, &body).await?;
            }
        }
        tx.commit().await
    }

    pub(super) async fn change_flag(
        &self,
        service: &str,
        change: &FlagChange,
    ) -> Result<FlagState, StoreError> {
        let mut tx = self.acting().await?;
        let before = tx
            .query_opt(
                &format!("SELECT {FLAG_COLUMNS} FROM flags WHERE service = ?1 AND name = ?2"),
                args![service, &change.name],
            )
            .await?
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "{service} has no flag `{}`; define it under `flags.define` in the policy",
                    change.name
                ))
            })?;
        let before = row_to_flag(&before)?;
        let after = FlagState {
            ramp: change.ramp.unwrap_or(before.ramp),
            default: change.default.unwrap_or(before.default),
            changed_by: change.actor.clone(),
            changed_at: change.at,
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
        chain(&mut tx, change.at, &change.actor, "flag_set", None, &body).await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Every flag of a service, by name.
    pub(super) async fn flags_of(&self, service: &str) -> Result<Vec<FlagState>, StoreError> {
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
    }
}
