//! The live feed: every new release log entry, as server-sent events.
//!
//! Owns the event stream's shape. It reads the store only to ask whether the caller's
//! token still holds: the server's follower publishes entries on the feed.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};

use crate::serve::App;
use crate::serve::auth::{Caller, Credential, Right};
use crate::serve::error::ApiResult;

/// `GET /api/v1/stream`: every new release log entry, as server-sent events named
/// `entry` (`{"release", "service", "seq", "at", "events"}`).
/// Each entry is sent only while the token that opened the stream still holds (not
/// revoked, its role still reads): a revoked token's stream ends at the next entry.
pub async fn stream(
    State(app): State<App>,
    caller: Caller,
    credential: Credential,
) -> ApiResult<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>> {
    caller.require(Right::Read)?;
    let rx = app.feed.subscribe();
    let state = (rx, app, credential);
    let stream = futures_util::stream::unfold(state, |(mut rx, app, credential)| async move {
        let received = rx.recv().await;
        if !credential.still_allows(&app, Right::Read).await {
            return None;
        }
        let event = match received {
            Ok(item) => Event::default().event("entry").data(item.as_str()),
            // A slow reader missed entries: tell it to reload.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                Event::default().event("lagged").data("{}")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), (rx, app, credential)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
