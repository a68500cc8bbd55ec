//! The live feed: every new release log entry, as server-sent events.
//!
//! Owns the event stream's shape. It must not read the store: the server's follower
//! publishes entries on the feed.

use std::convert::Infallible;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};

use crate::serve::App;
use crate::serve::auth::{Caller, Right};
use crate::serve::error::ApiResult;

/// `GET /api/v1/stream`: every new release log entry, as server-sent events named
/// `entry` (`{"release", "service", "seq", "at", "events"}`).
pub async fn stream(
    State(app): State<App>,
    caller: Caller,
) -> ApiResult<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>> {
    caller.require(Right::Read)?;
    let rx = app.feed.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(item) => Event::default().event("entry").data(item.as_str()),
            // A slow reader missed entries: tell it to reload.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                Event::default().event("lagged").data("{}")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
