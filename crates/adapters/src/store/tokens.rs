//! API tokens: created with a random secret of which only the SHA-256 is kept, listed
//! without secrets, looked up by secret, revoked; each change is chained.
//!
//! Owns the tokens table and the secrets' format. It must not decide what a role may do
//! (the server's role table does).

use super::StateStore;
use super::chain::{chain, sha256_hex};
use super::error::StoreError;
use super::sql::args;
use rampart_core::Millis;

/// An API token as listed: never its secret or hash.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    /// Unique name: the identity recorded for what the token does.
    pub name: String,
    /// `viewer`, `deployer`, `approver`, `admin` (checked by the server).
    pub role: String,
    /// When it was created.
    pub created_at: Millis,
    /// Who created it.
    pub created_by: String,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A random secret of `bytes` bytes, in hex, from the operating system's generator.
pub(super) fn random_hex(bytes: usize) -> Result<String, StoreError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| StoreError::NoRandomness(e.to_string()))?;
    Ok(hex::encode(buf))
}

/// The prefix of every API token (so a leaked one is easy to find and scan for).
pub const TOKEN_PREFIX: &str = "rampart_";

// === impl StateStore: tokens ===

impl StateStore {
    /// Creates a token and returns its secret, which is not kept (only its SHA-256 is).
    /// Fails if an unrevoked token has that name.
    pub async fn create_token(
        &self,
        name: &str,
        role: &str,
        by: &str,
        at: Millis,
    ) -> Result<String, StoreError> {
        let secret = format!("{TOKEN_PREFIX}{}", random_hex(32)?);
        let hash = sha256_hex(&secret);
        let mut tx = self.chained().await?;
        let live = tx
            .one(
                "SELECT EXISTS(SELECT 1 FROM tokens WHERE name = ?1 AND revoked_at IS NULL)",
                args![name],
            )
            .await?
            .bool(0)?;
        if live {
            return Err(StoreError::Conflict(format!(
                "a token named {name} exists; revoke it first (`rampart token revoke {name}`)"
            )));
        }
        tx.execute("DELETE FROM tokens WHERE name = ?1", args![name])
            .await?;
        tx.execute(
            "INSERT INTO tokens (name, role, hash, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5)",
            args![name, role, hash.as_str(), at, by],
        )
        .await?;
        let body = serde_json::json!({"name": name, "role": role, "hash": hash}).to_string();
        chain(&mut tx, at, by, "token_created", None, &body).await?;
        tx.commit().await?;
        Ok(secret)
    }

    /// Revokes a token by name. Fails if no live token has that name.
    pub async fn revoke_token(&self, name: &str, by: &str, at: Millis) -> Result<(), StoreError> {
        let mut tx = self.chained().await?;
        let n = tx
            .execute(
                "UPDATE tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                args![name, at],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no live token named {name}")));
        }
        let body = serde_json::json!({"name": name}).to_string();
        chain(&mut tx, at, by, "token_revoked", None, &body).await?;
        tx.commit().await
    }

    /// The name and role of the live token with this secret.
    pub async fn token(&self, secret: &str) -> Result<Option<(String, String)>, StoreError> {
        let hash = sha256_hex(secret);
        let row = self
            .db
            .conn()
            .await?
            .query_opt(
                "SELECT name, role FROM tokens WHERE hash = ?1 AND revoked_at IS NULL",
                args![hash],
            )
            .await?;
        row.map(|r| Ok((r.text(0)?, r.text(1)?))).transpose()
    }

    /// Every token, newest first, without secrets.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = self
            .db
            .conn()
            .await?
            .query(
                "SELECT name, role, created_at, created_by, revoked_at IS NOT NULL FROM tokens ORDER BY created_at DESC, name",
                args![],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    name: r.text(0)?,
                    role: r.text(1)?,
                    created_at: r.uint(2)?,
                    created_by: r.text(3)?,
                    revoked: r.bool(4)?,
                })
            })
            .collect()
    }
}
