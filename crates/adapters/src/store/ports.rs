//! The ports the SQL store implements: core's `Store` and `FlagStore`, and the control
//! plane's (`plane`).
//!
//! Owns the delegation from each port method to the store's own method of that name or
//! concept, and turning a [`StoreError`] into a core `PortError` (`StoreError::into_port`, its kind
//! kept). It must
//! not contain queries: those live in the module of their concept.

use rampart_core::Millis;
use rampart_core::flags::{FlagDef, FlagState};
use rampart_core::ports::{
    BoxFuture, FlagChange, FlagStore, Freeze, MigrationMark, OperatorCommand, PortError,
    ReleaseRecord, Store, StoredInput,
};
use rampart_core::release::OutcomeKind;

use super::error::StoreError;
use super::plane::{AuditChain, Listing, LogEntry, Submissions, Tokens};
use super::{ChainRecord, ChainReport, StateStore, Submission, TokenInfo};

// === impl Store ===

impl Store for StateStore {
    fn may_act(&self) -> Result<(), PortError> {
        StateStore::may_act(self).map_err(StoreError::into_port)
    }

    fn create<'a>(&'a self, rel: &'a ReleaseRecord) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.create_release(rel)
                .await
                .map_err(StoreError::into_port)
        })
    }

    fn append<'a>(
        &'a self,
        release_id: &'a str,
        entry: &'a StoredInput,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.append_entry(release_id, entry, None)
                .await
                .map_err(StoreError::into_port)
        })
    }

    fn load<'a>(
        &'a self,
        release_id: &'a str,
    ) -> BoxFuture<'a, Result<(ReleaseRecord, Vec<StoredInput>), PortError>> {
        Box::pin(async move {
            self.load_release(release_id)
                .await
                .map_err(StoreError::into_port)
        })
    }

    fn check_log<'a>(&'a self, release_id: &'a str) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.check_release_log(release_id)
                .await
                .map_err(StoreError::into_port)
        })
    }

    fn active<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Option<ReleaseRecord>, PortError>> {
        Box::pin(async move {
            self.active_release(service)
                .await
                .map_err(StoreError::into_port)
        })
    }

    fn finish<'a>(
        &'a self,
        release_id: &'a str,
        outcome: OutcomeKind,
        serving: Option<&'a str>,
        automatic_rollback: bool,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.finish_release(release_id, outcome, serving, automatic_rollback)
                .await
                .map_err(StoreError::into_port)
        })
    }

    fn automatic_rollbacks<'a>(
        &'a self,
        service: &'a str,
        since: u64,
    ) -> BoxFuture<'a, Result<u32, PortError>> {
        Box::pin(async move {
            self.count_automatic_rollbacks(service, since)
                .await
                .map_err(StoreError::into_port)
        })
    }

    fn set_freeze<'a>(
        &'a self,
        scope: Option<&'a str>,
        freeze: bool,
        by: &'a Freeze,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.change_freeze(scope, freeze, by)
                .await
                .map_err(StoreError::into_port)
        })
    }

    fn freeze<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Option<Freeze>, PortError>> {
        Box::pin(async move { self.freeze_of(service).await.map_err(StoreError::into_port) })
    }

    fn push_command<'a>(
        &'a self,
        service: &'a str,
        command: &'a OperatorCommand,
    ) -> BoxFuture<'a, Result<String, PortError>> {
        Box::pin(async move {
            self.queue_for_service(service, command)
                .await
                .map_err(StoreError::into_port)
        })
    }

    fn releases_with_requests(&self) -> BoxFuture<'_, Result<Vec<String>, PortError>> {
        Box::pin(async move {
            self.releases_with_requests_now()
                .await
                .map_err(StoreError::into_port)
        })
    }

    fn next_command<'a>(
        &'a self,
        release_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<(u64, OperatorCommand)>, PortError>> {
        Box::pin(async move {
            self.next_command_now(release_id)
                .await
                .map_err(StoreError::into_port)
        })
    }

    fn append_answering<'a>(
        &'a self,
        release_id: &'a str,
        entry: &'a StoredInput,
        command: u64,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.append_entry(release_id, entry, Some(command))
                .await
                .map_err(StoreError::into_port)
        })
    }

    fn drop_command<'a>(
        &'a self,
        release_id: &'a str,
        command: u64,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.drop_command_now(release_id, command)
                .await
                .map_err(StoreError::into_port)
        })
    }

    fn serving_version<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, PortError>> {
        Box::pin(async move { self.serving(service).await.map_err(StoreError::into_port) })
    }

    fn mark_migration<'a>(
        &'a self,
        release_id: &'a str,
        file: &'a str,
        mark: MigrationMark,
        at: Millis,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.note_acting(at, mark.action(), release_id, &migration_body(file))
                .await
                .map(|_| ())
                .map_err(StoreError::into_port)
        })
    }

    fn migration_marks<'a>(
        &'a self,
        release_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, MigrationMark)>, PortError>> {
        migration_marks_in(self, release_id)
    }
}

/// A migration mark's audit-chain record body. The chain is durable and
/// tamper-evident, which is what a ledger of applied migrations must be.
pub(super) fn migration_body(file: &str) -> String {
    serde_json::json!({ "file": file }).to_string()
}

/// The migration marks in a release's audit-chain records, oldest first.
pub(super) fn migration_marks_in<'a>(
    chain: &'a dyn AuditChain,
    release_id: &'a str,
) -> BoxFuture<'a, Result<Vec<(String, MigrationMark)>, PortError>> {
    Box::pin(async move {
        let records = chain
            .chain_records(Some(release_id))
            .await
            .map_err(StoreError::into_port)?;
        Ok(records
            .iter()
            .filter_map(|r| {
                let mark = MigrationMark::from_action(&r.action)?;
                let body: serde_json::Value = serde_json::from_str(&r.body).ok()?;
                Some((body.get("file")?.as_str()?.to_string(), mark))
            })
            .collect())
    })
}

// === impl FlagStore ===

impl FlagStore for StateStore {
    fn define<'a>(
        &'a self,
        service: &'a str,
        defs: &'a [FlagDef],
        at: Millis,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.define_flags(service, defs, at)
                .await
                .map_err(StoreError::into_port)
        })
    }

    fn flags<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Vec<FlagState>, PortError>> {
        Box::pin(async move { self.flags_of(service).await.map_err(StoreError::into_port) })
    }

    fn set_flag<'a>(
        &'a self,
        service: &'a str,
        change: &'a FlagChange,
    ) -> BoxFuture<'a, Result<FlagState, PortError>> {
        Box::pin(async move {
            self.change_flag(service, change)
                .await
                .map_err(StoreError::into_port)
        })
    }
}

// === impl the control plane ===
//
// `StateStore::name(self, ..)` is the inherent method of that name (inherent methods
// come first), which the CLI's server-side commands call directly.

impl Tokens for StateStore {
    fn create_token<'a>(
        &'a self,
        name: &'a str,
        role: &'a str,
        by: &'a str,
        at: Millis,
    ) -> BoxFuture<'a, Result<String, StoreError>> {
        Box::pin(StateStore::create_token(self, name, role, by, at))
    }

    fn revoke_token<'a>(
        &'a self,
        name: &'a str,
        by: &'a str,
        at: Millis,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(StateStore::revoke_token(self, name, by, at))
    }

    fn token<'a>(
        &'a self,
        secret: &'a str,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, StoreError>> {
        Box::pin(StateStore::token(self, secret))
    }

    fn tokens(&self) -> BoxFuture<'_, Result<Vec<TokenInfo>, StoreError>> {
        Box::pin(StateStore::tokens(self))
    }
}

impl AuditChain for StateStore {
    fn note<'a>(
        &'a self,
        at: Millis,
        actor: &'a str,
        action: &'a str,
        release: Option<&'a str>,
        body: &'a str,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(StateStore::note(self, at, actor, action, release, body))
    }

    fn chain_records<'a>(
        &'a self,
        release: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<ChainRecord>, StoreError>> {
        Box::pin(StateStore::chain_records(self, release))
    }

    fn verify_chain(&self) -> BoxFuture<'_, Result<ChainReport, StoreError>> {
        Box::pin(StateStore::verify_chain(self))
    }
}

impl Submissions for StateStore {
    fn submit<'a>(&'a self, s: &'a Submission) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(StateStore::submit(self, s))
    }

    fn submit_acting<'a>(&'a self, s: &'a Submission) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(StateStore::submit_acting(self, s))
    }

    fn submission<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Submission>, StoreError>> {
        Box::pin(StateStore::submission(self, id))
    }

    fn open_submissions(&self) -> BoxFuture<'_, Result<Vec<Submission>, StoreError>> {
        Box::pin(StateStore::open_submissions(self))
    }

    fn submissions_of<'a>(
        &'a self,
        service: &'a str,
        version: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Submission>, StoreError>> {
        Box::pin(StateStore::submissions_of(self, service, version, limit))
    }

    fn withdraw<'a>(
        &'a self,
        id: &'a str,
        by: &'a str,
        report: &'a str,
        at: Millis,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(StateStore::withdraw(self, id, by, report, at))
    }

    fn push_command_to<'a>(
        &'a self,
        id: &'a str,
        command: &'a OperatorCommand,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(StateStore::push_command_to(self, id, command))
    }
}

impl Listing for StateStore {
    fn list_releases<'a>(
        &'a self,
        service: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ReleaseRecord>, StoreError>> {
        Box::pin(StateStore::list_releases(self, service, limit))
    }

    fn services(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(StateStore::services(self))
    }

    fn freezes(&self) -> BoxFuture<'_, Result<Vec<serde_json::Value>, StoreError>> {
        Box::pin(StateStore::freezes(self))
    }

    fn log_cursor(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        Box::pin(StateStore::log_cursor(self))
    }

    fn entries_after(
        &self,
        cursor: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<LogEntry>, StoreError>> {
        Box::pin(StateStore::entries_after(self, cursor, limit))
    }
}
