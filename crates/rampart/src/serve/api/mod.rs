//! The REST API's handlers, one module per resource: `releases`, `actions` (operator
//! actions on a release), `approvals`, `freeze`, `policies`, `services`, `tokens`,
//! `audit`, `stream`; the open routes are here.
//!
//! Owns request validation, the role check of each route, and the mapping of store
//! results to answers. Operator actions become requests queued in the store, where the
//! controller driving the release (this server's or a `rampart run`) applies them: the
//! API never steps a release itself. Errors are `serve::error`'s.

use std::path::PathBuf;

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::auth::Caller;
use super::error::ApiError;

pub mod actions;
pub mod approvals;
pub mod audit;
pub mod freeze;
pub mod policies;
pub mod releases;
pub mod services;
pub mod stream;
pub mod tokens;

pub use tokens::check_token_name;

/// `GET /healthz`.
pub async fn healthz() -> Json<Value> {
    Json(json!({"ok": true}))
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        super::OPENAPI,
    )
        .into_response()
}

/// Any unknown route.
pub async fn no_route() -> ApiError {
    ApiError::not_found("no such route; the API is described at /openapi.json")
}

/// A known route with another method.
pub async fn wrong_method() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /openapi.json",
    )
}

/// `GET /api/v1/whoami`.
pub async fn whoami(caller: Caller) -> Json<Caller> {
    Json(caller)
}

/// Where the server runs submitted releases from, by default.
pub fn default_workdir() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}
