//! The token routes: list, create (the secret is answered once), revoke.
//!
//! Owns token names and the roles a token may be given. It must not keep a secret:
//! the store keeps only its hash.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::serve::App;
use crate::serve::auth::{Caller, Right, Role};
use crate::serve::error::{ApiError, ApiResult, store_err};

/// `GET /api/v1/tokens`.
pub async fn list_tokens(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Right::Tokens)?;
    let tokens = app.store.tokens().await.map_err(store_err)?;
    Ok(Json(json!({ "tokens": tokens })))
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// Unique name: who the token's actions are recorded as.
    name: String,
    /// `viewer`, `deployer`, `approver`, `admin` or `agent`.
    role: String,
}

/// Checks a token name: 1 to 64 of letters, digits, `.`, `_`, `-`, `@`.
pub fn check_token_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if name == rampart_core::flags::RELEASE_ACTOR {
        Err(format!(
            "token name {name:?} is the name rampart's releases act under; choose another"
        ))
    } else if ok {
        Ok(())
    } else {
        Err(format!(
            "token name {name:?}: use 1 to 64 letters, digits, '.', '_', '-' or '@'"
        ))
    }
}

/// `POST /api/v1/tokens`: the secret is in this answer and nowhere else.
pub async fn create_token(
    State(app): State<App>,
    caller: Caller,
    body: Result<Json<TokenBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Right::Tokens)?;
    let Json(body) = body?;
    check_token_name(&body.name).map_err(ApiError::invalid)?;
    let Some(role) = Role::parse(&body.role) else {
        return Err(ApiError::invalid(format!(
            "role is one of viewer, deployer, approver, admin, agent, not {:?}",
            body.role
        )));
    };
    let secret = app
        .store
        .create_token(&body.name, role.as_str(), &caller.name, app.clock.now())
        .await
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": body.name, "role": role.as_str(), "token": secret})),
    ))
}

/// `DELETE /api/v1/tokens/{name}`.
pub async fn revoke_token(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Right::Tokens)?;
    app.store
        .revoke_token(&name, &caller.name, app.clock.now())
        .await
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    Ok(Json(json!({"name": name, "revoked": true})))
}
