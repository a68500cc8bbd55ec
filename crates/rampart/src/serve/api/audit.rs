//! The audit route: verify the hash-chained audit log.
//!
//! Owns nothing but the answer's shape. It must not repair anything it finds.

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use crate::serve::App;
use crate::serve::auth::{Caller, Right};
use crate::serve::error::{ApiResult, store_err};

/// `GET /api/v1/audit/verify`.
pub async fn verify_audit(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Right::Read)?;
    let report = app.store.verify_chain().await.map_err(store_err)?;
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}
