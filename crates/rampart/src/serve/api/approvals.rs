//! Asking the humans for an approval: notifies the release's hooks and records who
//! asked in the audit chain.
//!
//! Owns when a request for an approval makes sense (something waits for a human). It
//! must not approve anything: an approver still must.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rampart_core::release::Phase;
use serde::Deserialize;
use serde_json::{Value, json};

use super::releases::loaded;
use crate::serve::App;
use crate::serve::auth::{Caller, Right};
use crate::serve::error::{ApiError, ApiResult, store_err};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequestBody {
    /// Why, for the humans asked.
    #[serde(default)]
    reason: String,
}

/// `POST /api/v1/releases/{id}/request-approval`: asks the humans for an approval of an
/// unfinished release. Notifies the release's notification hooks (as an `approval`
/// notice, paging), records who asked in the audit chain, and answers 202 with a
/// handle. It approves nothing: an approver still must.
pub async fn request_approval(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Right::RequestApproval)?;
    let body = body?;
    let body: ApprovalRequestBody = if body.iter().all(u8::is_ascii_whitespace) {
        ApprovalRequestBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("request body: {e}")))?
    };
    if body.reason.len() > 2000 {
        return Err(ApiError::invalid("reason is longer than 2000 characters"));
    }
    let Some(l) = loaded(&app, &id).await? else {
        if app
            .store
            .submission(&id)
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Err(ApiError::conflict(format!(
                "release {id} has not started yet; nothing waits for a human"
            )));
        }
        return Err(ApiError::not_found(format!("no release {id}")));
    };
    if let Some(outcome) = l.record.outcome {
        return Err(ApiError::conflict(format!(
            "release {id} is over ({})",
            outcome.as_str()
        )));
    }
    let state = l.state();
    // Only what a human can unblock pages a human: an approval point, a pause, a hold
    // for a release window.
    let waiting = state.phase == Phase::AwaitingApproval
        || state.paused.is_some()
        || state.window_hold.is_some();
    if !waiting {
        return Err(ApiError::conflict(format!(
            "release {id} is {} and waits for nobody; rampart moves it on by itself",
            state.phase.as_str()
        )));
    }
    let now = app.clock.now();
    let reason = if body.reason.trim().is_empty() {
        "no reason given".to_string()
    } else {
        body.reason
    };
    let record = json!({"reason": reason, "phase": state.phase.as_str(), "weight": state.weight.to_string()});
    let handle = app
        .store
        .note(
            now,
            &caller.name,
            "approval_requested",
            Some(&id),
            &record.to_string(),
        )
        .await
        .map_err(store_err)?;
    let notice = rampart_core::ports::Notice {
        kind: rampart_core::release::NoticeKind::Approval,
        page: true,
        service: l.record.service.clone(),
        release: id.clone(),
        version: l.record.version.clone(),
        stable: state.stable.clone(),
        weight: state.weight,
        message: format!(
            "{} asks a human to look at release {id} of {} {} ({}, {}): {reason}. Approve it (or resume it, if paused) if it should go on.",
            caller.name,
            l.record.service,
            l.record.version,
            state.phase.as_str(),
            state.weight
        ),
        instead: Some(rampart_core::release::Instead::Approve {
            release: id.clone(),
            not_by: state.initiator.clone(),
        }),
        at: now,
    };
    let hooks = l.policy.notify.len();
    let notifier = rampart_adapters::notify::HookNotifier::new(l.policy.notify.clone());
    tokio::spawn(async move {
        use rampart_core::ports::Notifier;
        notifier.notify(&notice).await;
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "release": id,
            "handle": format!("approval-{handle}"),
            "requested_by": caller.name,
            "phase": state.phase.as_str(),
            "hooks_notified": hooks,
        })),
    ))
}
