//! The services route: each service's latest release, freeze and release window.
//!
//! Owns that overview. It must not change anything.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::releases::view_of;
use crate::serve::App;
use crate::serve::auth::{Caller, Right};
use crate::serve::error::{ApiResult, store_err};

/// `GET /api/v1/services`: each service's latest release, freeze and release window.
pub async fn services(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Right::Read)?;
    let now = app.clock.now();
    let mut names: Vec<String> = app.store.services().await.map_err(store_err)?;
    names.sort();
    let mut out = Vec::new();
    for service in names {
        let latest = app
            .store
            .list_releases(Some(&service), 1)
            .await
            .map_err(store_err)?;
        let last = match latest.first() {
            Some(rec) => Some(view_of(&app, &rec.id).await?),
            None => None,
        };
        let freeze = app.store.freeze(&service).await.map_err(store_err)?;
        let window = latest
            .first()
            .and_then(|rec| rampart_core::Policy::from_stored(&rec.policy).ok())
            .and_then(|p| p.windows)
            .map(|w| match w.status(now) {
                rampart_core::windows::Status::Open => json!({"open": true}),
                rampart_core::windows::Status::Closed { why, opens_at, .. } => json!({
                    "open": false,
                    "why": why,
                    "opens_at": opens_at,
                    "opens": opens_at.map(|t| w.show(t)),
                }),
            });
        out.push(json!({
            "service": service,
            "last": last,
            "freeze": freeze.map(|f| json!({"actor": f.actor, "reason": f.reason, "at": f.at})),
            "window": window,
        }));
    }
    Ok(Json(json!({ "services": out, "now": now })))
}
