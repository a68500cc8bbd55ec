//! The freeze routes: read the freezes in force, freeze or lift one.
//!
//! Owns who may turn a freeze on and who may lift it. It must not enforce a freeze
//! (the controller and the release routes do).

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use rampart_core::ports::Freeze;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::serve::App;
use crate::serve::auth::{Caller, Right};
use crate::serve::error::{ApiError, ApiResult, store_err};

/// `GET /api/v1/freeze`.
pub async fn get_freeze(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Right::Read)?;
    let freezes = app.store.freezes().await.map_err(store_err)?;
    Ok(Json(json!({ "freezes": freezes })))
}

/// Body of `POST /api/v1/freeze`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeBody {
    /// `on` or `off`.
    state: String,
    /// One service; every service without it.
    service: Option<String>,
    /// Why.
    reason: String,
}

/// `POST /api/v1/freeze`.
pub async fn set_freeze(
    State(app): State<App>,
    caller: Caller,
    body: Result<Json<FreezeBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    caller.require_any(&[Right::FreezeOff, Right::FreezeOn])?;
    let Json(body) = body?;
    let on = match body.state.as_str() {
        "on" => true,
        "off" => false,
        other => {
            return Err(ApiError::invalid(format!(
                "state is on or off, not {other:?}"
            )));
        }
    };
    caller.require(if on {
        Right::FreezeOn
    } else {
        Right::FreezeOff
    })?;
    if let Some(problem) = crate::client::freeze_problem(on, body.service.as_deref(), &body.reason)
    {
        return Err(ApiError::invalid(problem));
    }
    let by = Freeze {
        actor: caller.name.clone(),
        reason: body.reason,
        at: app.clock.now(),
    };
    app.store
        .set_freeze(body.service.as_deref(), on, &by)
        .await
        .map_err(store_err)?;
    let freezes = app.store.freezes().await.map_err(store_err)?;
    Ok(Json(json!({ "freezes": freezes })))
}
