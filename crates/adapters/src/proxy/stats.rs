//! Lock-free per-variant counters on the proxy's hot path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rampart_core::metrics::{BUCKETS, Histogram, VariantStats, bucket_of};

/// Requests, errors, in-flight count and two latency histograms (to response headers,
/// and total) for one variant.
#[derive(Debug)]
pub struct VariantCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    routed: AtomicU64,
    abandoned: AtomicU64,
    latency: Box<[AtomicU64]>,
    latency_total: Box<[AtomicU64]>,
}

impl Default for VariantCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl VariantCounters {
    /// All zero.
    pub fn new() -> Self {
        VariantCounters {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            routed: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            latency_total: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts one request whose response headers came `elapsed` after it was
    /// forwarded. Its total time is recorded apart, with [`Self::record_total`], once
    /// its body is sent.
    pub fn record(&self, error: bool, elapsed: Duration) {
        self.record_logged(error, Some(elapsed), None);
    }

    /// Records the total time of a request counted with [`Self::record`]: from the
    /// same start to its body's last byte.
    pub fn record_total(&self, elapsed: Duration) {
        add(&self.latency_total, elapsed);
    }

    /// Counts one finished request from a router's request log: its time to headers
    /// is known only when `header_time` is given (the log says when no version
    /// answered), its total time only when `total_time` is (HAProxy logs it only with
    /// `%Ta`).
    pub fn record_logged(
        &self,
        error: bool,
        header_time: Option<Duration>,
        total_time: Option<Duration>,
    ) {
        if let Some(elapsed) = header_time {
            add(&self.latency, elapsed);
        }
        if let Some(elapsed) = total_time {
            add(&self.latency_total, elapsed);
        }
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        // Requests last, so a reader never sees more errors than requests.
        self.requests.fetch_add(1, Ordering::Release);
    }

    /// Marks a request routed and in flight, until [`Self::leave`].
    pub fn enter(&self) {
        self.routed.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// Ends a request in flight; whether it was the last one.
    pub fn leave(&self) -> bool {
        self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// Notes one request its client abandoned before its answer was done (it is
    /// counted with [`Self::record`] too).
    pub fn abandon(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests abandoned by their clients so far.
    pub fn abandoned(&self) -> u64 {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Requests routed to this variant so far (counted when routed, not when answered).
    pub fn routed(&self) -> u64 {
        self.routed.load(Ordering::Relaxed)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A consistent-enough copy: requests are read first, so errors never exceed them.
    pub fn snapshot(&self) -> VariantStats {
        let requests = self.requests.load(Ordering::Acquire);
        let errors = self.errors.load(Ordering::Relaxed).min(requests);
        VariantStats {
            requests,
            errors,
            latency: snapshot(&self.latency),
            latency_total: snapshot(&self.latency_total),
        }
    }
}

/// Counts one observation in a histogram's bucket.
fn add(histogram: &[AtomicU64], elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    histogram[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
}

/// A copy of a histogram's buckets.
fn snapshot(histogram: &[AtomicU64]) -> Histogram {
    let dense: Vec<u64> = histogram
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    Histogram::from_dense(&dense)
}
