//! The policy routes: validate a policy, read a service's latest one (secrets
//! redacted).
//!
//! Owns a policy's diagnostics as the API shows them. It must not store a policy.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::serve::App;
use crate::serve::auth::{Caller, Right};
use crate::serve::error::{ApiError, ApiResult, store_err};
use crate::serve::views::redact_policy;

/// A policy's problems, each with its line, column, field path and message.
pub(crate) fn diagnostics(e: &rampart_core::policy::PolicyError) -> Vec<Value> {
    e.diagnostics
        .iter()
        .map(|d| json!({"line": d.line, "col": d.col, "path": d.path, "message": d.message}))
        .collect()
}

/// Body of `POST /api/v1/policies/validate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateBody {
    /// The policy, as YAML text.
    policy: String,
}

/// `POST /api/v1/policies/validate`: 200 with `valid` true or false.
pub async fn validate_policy(
    caller: Caller,
    body: Result<Json<ValidateBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Right::Read)?;
    let Json(body) = body?;
    Ok(Json(match rampart_core::Policy::from_yaml(&body.policy) {
        Ok(p) => json!({"valid": true, "service": p.service, "diagnostics": []}),
        Err(e) => json!({"valid": false, "service": null, "diagnostics": diagnostics(&e)}),
    }))
}

/// `GET /api/v1/policies/{service}`: the policy of the service's latest release, with
/// secrets redacted.
pub async fn get_policy(
    State(app): State<App>,
    caller: Caller,
    Path(service): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Right::Read)?;
    let latest = app
        .store
        .list_releases(Some(&service), 1)
        .await
        .map_err(store_err)?;
    let Some(rec) = latest.first() else {
        return Err(ApiError::not_found(format!(
            "no release of service {service} yet"
        )));
    };
    Ok(Json(json!({
        "service": service,
        "release": rec.id,
        "policy": redact_policy(&rec.policy),
    })))
}
