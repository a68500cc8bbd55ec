//! The state store's errors, by kind, so that callers match a variant instead of
//! reading the words.
//!
//! Owns what each failure is called and how it reads (the words are those the audit
//! trail, the logs and the API have always shown). It must not decide what a caller does
//! about one: the server maps them to answers, the controller to a stop.

use rampart_core::ports::{PortError, PortErrorKind};

/// A failure of the state store.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// `create` of a release whose id exists already (a new id may be drawn).
    #[error("release id taken: {0}")]
    IdTaken(String),
    /// `create` of a release of a service that has an unfinished one.
    #[error("service {0} already has an unfinished release")]
    Busy(String),
    /// No release has this id.
    #[error("no release {0}")]
    NoRelease(String),
    /// Something else that was named does not exist (a live token, a flag, a release in
    /// progress of a service); the message says what.
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the state (a release is over, a submission has started,
    /// a live token has that name); the message says how.
    #[error("{0}")]
    Conflict(String),
    /// An append at a position other than the log's next: another controller is acting
    /// on the release.
    #[error(
        "release {release}: refusing to append event {seq} when the log's next is {expected} (another controller is acting on this release)"
    )]
    OutOfSequence {
        /// The release.
        release: String,
        /// The position asked for.
        seq: u64,
        /// The log's next position.
        expected: u64,
    },
    /// An acting write of a replica that does not hold (or no longer holds) the leader
    /// lease; the message says why.
    #[error("not the leader: {0}")]
    NotLeader(String),
    /// The store URL names a store this build cannot open.
    #[error("{0}")]
    Unsupported(String),
    /// The operating system gave no randomness for a token's secret.
    #[error("no randomness for a token: {0}")]
    NoRandomness(String),
    /// The store's contents disagree with its audit chain; the message says where.
    #[error("{0}")]
    Tampered(String),
    /// The database failed, or holds something unreadable.
    #[error("state store: {0}")]
    Database(String),
}

impl StoreError {
    /// The same failure as a core port's: the words stay the same, and the kinds a
    /// caller of the port tells apart travel with them. (A method, not `From`: a second
    /// `From` impl for `PortError` would leave every `?` whose error type is inferred
    /// ambiguous, in this crate and in every crate that uses it.)
    pub fn into_port(self) -> PortError {
        let kind = match &self {
            StoreError::IdTaken(_) => PortErrorKind::AlreadyExists,
            StoreError::NoRelease(_) | StoreError::NotFound(_) => PortErrorKind::NotFound,
            StoreError::NotLeader(_) => PortErrorKind::Fenced,
            _ => PortErrorKind::Other,
        };
        PortError::with_kind(kind, self)
    }
}
