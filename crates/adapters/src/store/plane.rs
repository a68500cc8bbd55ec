//! The control plane's port: what `rampart serve` needs from a store beyond core's
//! [`Store`] (tokens, the audit chain, submissions and requests, listing), as small
//! traits with one blanket [`ControlPlane`] over them.
//!
//! Owns the contracts only. It must not contain behaviour: the SQL [`StateStore`] and
//! the in-memory store (`memory`, cargo feature `memory`) implement it.
//!
//! It lives here rather than in core's ports because its types (tokens, chain records,
//! submissions) are the control plane's, not the controller's: nothing in core or in the
//! controller reads them, and the errors are the store's own [`StoreError`], which a
//! caller matches by variant.
//!
//! [`StateStore`]: super::StateStore

use rampart_core::Millis;
use rampart_core::ports::{BoxFuture, OperatorCommand, ReleaseRecord, Store, StoredInput};

use super::error::StoreError;
use super::{ChainRecord, ChainReport, Submission, TokenInfo};

/// One release log entry with its cursor (its position among every release's entries)
/// and its release id.
pub type LogEntry = (i64, String, StoredInput);

/// API tokens.
///
/// Guarantees required of implementations: a secret is shown once (by `create_token`)
/// and never kept in a form it can be read back from; a revoked token is never found by
/// `token` again; every change is chained.
pub trait Tokens: Send + Sync {
    /// Creates a token and returns its secret. Fails with [`StoreError::Conflict`] if a
    /// live token has that name.
    fn create_token<'a>(
        &'a self,
        name: &'a str,
        role: &'a str,
        by: &'a str,
        at: Millis,
    ) -> BoxFuture<'a, Result<String, StoreError>>;
    /// Revokes a token by name. Fails with [`StoreError::NotFound`] if no live token
    /// has that name.
    fn revoke_token<'a>(
        &'a self,
        name: &'a str,
        by: &'a str,
        at: Millis,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The name and role of the live token with this secret.
    fn token<'a>(
        &'a self,
        secret: &'a str,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, StoreError>>;
    /// Every token, newest first, without secrets.
    fn tokens(&self) -> BoxFuture<'_, Result<Vec<TokenInfo>, StoreError>>;
}

/// The audit chain.
///
/// Guarantees required of implementations: records are numbered from 1 without gaps,
/// each linked to the previous one by its hash (`ChainRecord`'s rule).
pub trait AuditChain: Send + Sync {
    /// Records an action that changes no table, and returns the record's position.
    fn note<'a>(
        &'a self,
        at: Millis,
        actor: &'a str,
        action: &'a str,
        release: Option<&'a str>,
        body: &'a str,
    ) -> BoxFuture<'a, Result<i64, StoreError>>;
    /// Chain records, oldest first; with `release`, only that release's.
    fn chain_records<'a>(
        &'a self,
        release: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<ChainRecord>, StoreError>>;
    /// Checks the chain and what it covers.
    fn verify_chain(&self) -> BoxFuture<'_, Result<ChainReport, StoreError>>;
}

/// Releases submitted to the server, and operator requests to releases by id.
///
/// Guarantees required of implementations: a request reaches exactly the release it
/// names, never the service's next one; a submission is withdrawn only while queued.
pub trait Submissions: Send + Sync {
    /// Queues a release, and records who asked.
    fn submit<'a>(&'a self, s: &'a Submission) -> BoxFuture<'a, Result<(), StoreError>>;
    /// [`Submissions::submit`] by the leader itself, fenced like its acting writes
    /// (a store no lease fences queues it as `submit` does).
    fn submit_acting<'a>(&'a self, s: &'a Submission) -> BoxFuture<'a, Result<(), StoreError>> {
        self.submit(s)
    }
    /// A submission by release id.
    fn submission<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Submission>, StoreError>>;
    /// Submissions not done yet, oldest first.
    fn open_submissions(&self) -> BoxFuture<'_, Result<Vec<Submission>, StoreError>>;
    /// The last `limit` submissions of `version` of `service`, whatever their state,
    /// newest first.
    fn submissions_of<'a>(
        &'a self,
        service: &'a str,
        version: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Submission>, StoreError>>;
    /// Withdraws a queued submission with its final report. Fails with
    /// [`StoreError::Conflict`] when it has started or is over.
    fn withdraw<'a>(
        &'a self,
        id: &'a str,
        by: &'a str,
        report: &'a str,
        at: Millis,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Queues an operator request for exactly release `id`. Fails with
    /// [`StoreError::NoRelease`] or, when it is over, [`StoreError::Conflict`].
    fn push_command_to<'a>(
        &'a self,
        id: &'a str,
        command: &'a OperatorCommand,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Reading across releases.
pub trait Listing: Send + Sync {
    /// Releases, newest first, optionally of one service, at most `limit`.
    fn list_releases<'a>(
        &'a self,
        service: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ReleaseRecord>, StoreError>>;
    /// Every service the store knows of (from releases and submissions), unordered.
    fn services(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;
    /// Every freeze in force (`scope`, `actor`, `reason`, `at`), by scope.
    fn freezes(&self) -> BoxFuture<'_, Result<Vec<serde_json::Value>, StoreError>>;
    /// The position of the newest release log entry (0 when there is none).
    fn log_cursor(&self) -> BoxFuture<'_, Result<i64, StoreError>>;
    /// Release log entries appended after `cursor`, oldest first, at most `limit`,
    /// with their own cursor and release id.
    fn entries_after(
        &self,
        cursor: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<LogEntry>, StoreError>>;
}

/// Everything the server's API needs from a store: core's [`Store`] and the control
/// plane's traits. Implemented for every type that implements them all.
pub trait ControlPlane: Store + Tokens + AuditChain + Submissions + Listing {}

impl<T: Store + Tokens + AuditChain + Submissions + Listing + ?Sized> ControlPlane for T {}
