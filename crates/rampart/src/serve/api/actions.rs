//! The operator actions on a release (approve, promote, pause, resume, abort, roll
//! back): each becomes a request queued in the store for the controller driving it.
//!
//! Owns the rules of each action (the four-eyes rule, what a freeze stops, what applies
//! before a release starts). It must not step a release itself.

use axum::Json;
use axum::http::StatusCode;
use rampart_core::ports::{CommandKind, OperatorCommand};
use serde::Deserialize;
use serde_json::{Value, json};

use super::releases::loaded;
use crate::operator::{self, Why};
use crate::serve::App;
use crate::serve::auth::{Caller, Right};
use crate::serve::error::{ApiError, ApiResult};

/// Body of an action on a release.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Why, for the audit trail.
    #[serde(default)]
    reason: String,
    /// Rollback only: roll the code back even after non-backward-compatible migrations.
    #[serde(default)]
    force: bool,
}

/// What an action route asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Approve the current approval point.
    Approve,
    /// Promote now.
    Promote,
    /// Hold at the current step.
    Pause,
    /// Let a paused release advance.
    Resume,
    /// Stop and roll back.
    Abort,
    /// Roll back (optionally forced past contract migrations).
    Rollback,
}

impl Act {
    fn right(self, force: bool) -> Right {
        match self {
            Act::Approve | Act::Promote => Right::Approve,
            Act::Resume => Right::Resume,
            Act::Rollback if force => Right::Force,
            Act::Pause | Act::Abort | Act::Rollback => Right::Hold,
        }
    }
    fn kind(self) -> CommandKind {
        match self {
            Act::Approve => CommandKind::Approve,
            Act::Promote => CommandKind::Promote,
            Act::Pause => CommandKind::Pause,
            Act::Resume => CommandKind::Resume,
            Act::Abort | Act::Rollback => CommandKind::Rollback,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Act::Approve => "approve",
            Act::Promote => "promote",
            Act::Pause => "pause",
            Act::Resume => "resume",
            Act::Abort => "abort",
            Act::Rollback => "rollback",
        }
    }
}

/// `POST /api/v1/releases/{id}/{action}`: queues the request for the controller
/// driving the release and answers 202 once it is durably queued.
pub async fn act(
    app: App,
    caller: Caller,
    id: String,
    what: Act,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(what.right(false))?;
    // The body is optional: no body is `{}`.
    let body: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("request body: {e}")))?
    };
    caller.require(what.right(body.force))?;
    if body.force && what != Act::Rollback {
        return Err(ApiError::invalid("force applies to rollback only"));
    }
    if body.force && body.reason.trim().is_empty() {
        return Err(ApiError::invalid(
            "a forced rollback needs a reason: say how the data was repaired",
        ));
    }
    if body.reason.len() > 2000 {
        return Err(ApiError::invalid("reason is longer than 2000 characters"));
    }
    let Some(l) = loaded(&app, &id).await? else {
        // Not started yet: only an abort applies, and it withdraws the submission.
        if what != Act::Abort {
            return Err(ApiError::conflict(format!(
                "release {id} has not started yet; only abort applies"
            )));
        }
        let report = json!({
            "outcome": "blocked",
            "reason": format!("withdrawn by {} before it started: {}", caller.name, body.reason),
            "withdrawn_by": caller.name,
            "decided_at_s": 0.0,
            "release_id": id,
            "timeline": [],
        });
        app.store
            .withdraw(&id, &caller.name, &report.to_string(), app.clock.now())
            .await
            .map_err(|e| ApiError::conflict(e.to_string()))?;
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"release": id, "request": "abort", "queued": false, "withdrawn": true})),
        ));
    };
    operator::admit(
        &app.store,
        &l,
        what.kind(),
        &caller.name,
        what.name(),
        app.clock.now(),
    )
    .await
    .map_err(|r| {
        let status = match r.why {
            Why::FourEyes => StatusCode::FORBIDDEN,
            Why::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Why::Conflict | Why::Frozen => StatusCode::CONFLICT,
        };
        ApiError::new(status, r.why.code(), r.message)
    })?;
    let command = OperatorCommand {
        kind: what.kind(),
        actor: caller.name.clone(),
        reason: if body.reason.is_empty() {
            format!("{} through the API", what.name())
        } else {
            body.reason
        },
        force: body.force,
        at: app.clock.now(),
    };
    app.store
        .push_command_to(&id, &command)
        .await
        .map_err(|e| ApiError::conflict(e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"release": id, "request": what.name(), "queued": true})),
    ))
}
