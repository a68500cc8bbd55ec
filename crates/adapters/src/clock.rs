//! The runtime clock: wall time at start-up, advanced by tokio's monotonic clock.
//!
//! Owns the one place where rampart reads the wall clock. Because it advances with
//! `tokio::time`, tests that pause tokio's time get virtual time for free.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rampart_core::Millis;
use rampart_core::ports::{BoxFuture, Clock};
use tokio::time::Instant;

/// Wall-clock milliseconds, monotonic after start-up.
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin_ms: Millis,
    origin: Instant,
}

impl TokioClock {
    /// A clock that starts at the current wall time. The binary makes one, at start-up,
    /// and hands it down as a [`Clock`]; clippy refuses a call anywhere else.
    #[allow(clippy::new_without_default)] // a default wall clock would hide the read
    pub fn new() -> Self {
        #[allow(clippy::disallowed_methods)] // the one sanctioned wall-clock read
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self::starting_at(u64::try_from(wall.as_millis()).unwrap_or(0))
    }

    /// A clock that starts at `origin_ms` (virtual time in tests and replays).
    pub fn starting_at(origin_ms: Millis) -> Self {
        TokioClock {
            origin_ms,
            origin: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Millis {
        self.origin_ms + u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn sleep_until(&self, at: Millis) -> BoxFuture<'_, ()> {
        let target = self.origin + Duration::from_millis(at.saturating_sub(self.origin_ms));
        Box::pin(tokio::time::sleep_until(target))
    }

    fn now_micros(&self) -> u64 {
        self.origin_ms.saturating_mul(1000)
            + u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}
