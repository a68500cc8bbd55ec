//! An in-memory store (cargo feature `memory`): core's `Store` and the control plane's
//! port without a database, for tests of code over those ports (the server's API).
//!
//! Owns keeping the same rules as the SQL store where a caller can see them: one
//! unfinished release per service, appends only at the log's next position, a taken id
//! told apart from a busy service, requests only to the release they name, tokens kept
//! as hashes and found only while live, the same orderings, and every change chained
//! with the same records (so handles and `verify_chain` read the same). It must not be
//! used to keep state anyone needs: nothing survives the process, and there is no lease
//! (it acts unfenced, like a single-process SQL store).

use std::collections::BTreeMap;
use std::sync::Mutex;

use rampart_core::Millis;
use rampart_core::ports::{
    BoxFuture, Freeze, MigrationMark, OperatorCommand, PortError, ReleaseRecord, Store, StoredInput,
};
use rampart_core::release::OutcomeKind;

use super::chain::{Forced, Head, genesis, input_actor, input_body, request_for};
use super::error::StoreError;
use super::plane::{AuditChain, Listing, LogEntry, Submissions, Tokens};
use super::tokens::random_hex;
use super::{ChainRecord, ChainReport, Submission, TOKEN_PREFIX, TokenInfo, sha256_hex};

/// The in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Releases in creation order.
    releases: Vec<Release>,
    /// Every log entry of every release in the order written, with its cursor (from 1).
    events: Vec<(i64, String, StoredInput)>,
    serving: BTreeMap<String, String>,
    freezes: BTreeMap<String, Freeze>,
    /// Operator requests in the order queued, with whether they were taken.
    commands: Vec<(String, OperatorCommand, bool)>,
    tokens: Vec<Token>,
    submissions: Vec<Submission>,
    chain: Vec<ChainRecord>,
}

#[derive(Debug)]
struct Release {
    record: ReleaseRecord,
    automatic_rollback: bool,
    finished_at: Option<Millis>,
}

#[derive(Debug)]
struct Token {
    info: TokenInfo,
    hash: String,
}

impl Inner {
    fn head(&self) -> Head {
        self.chain
            .last()
            .map_or_else(genesis, |r| (r.id, r.hash.clone()))
    }

    /// Appends a record to the chain, linked to the last one; returns its position.
    fn chain(
        &mut self,
        at: Millis,
        actor: &str,
        action: &str,
        release: Option<(&str, Option<u64>)>,
        body: &str,
    ) -> i64 {
        let rec = ChainRecord::next(&self.head(), at, actor, action, release, body);
        let id = rec.id;
        self.chain.push(rec);
        id
    }

    fn release(&self, id: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.record.id == id)
    }

    fn log(&self, id: &str) -> Vec<StoredInput> {
        self.events
            .iter()
            .filter(|(_, r, _)| r == id)
            .map(|(_, _, e)| e.clone())
            .collect()
    }

    fn queue_command(&mut self, id: &str, command: &OperatorCommand) {
        self.commands.push((id.to_string(), command.clone(), false));
        let body =
            serde_json::json!({"reason": command.reason, "force": command.force}).to_string();
        self.chain(
            command.at,
            &command.actor,
            &format!("request:{}", command.kind.as_str()),
            Some((id, None)),
            &body,
        );
    }
}

fn json(v: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Database(e.to_string()))
}

impl MemoryStore {
    /// An empty store, its chain begun.
    pub fn new() -> MemoryStore {
        let store = MemoryStore::default();
        if let Ok(mut s) = store.inner.lock() {
            let body = serde_json::json!({"log_entries_before": 0}).to_string();
            s.chain(0, "rampart", "chain_started", None, &body);
        }
        store
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| StoreError::Database("the memory store is poisoned".into()))?;
        f(&mut inner)
    }

    /// Runs `f` on the state, for a port method.
    fn port<'a, T: Send + 'a>(
        &'a self,
        f: impl FnOnce(&mut Inner) -> Result<T, StoreError> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, PortError>> {
        Box::pin(async move { self.with(f).map_err(StoreError::into_port) })
    }

    /// Runs `f` on the state, for a control-plane method.
    fn plane<'a, T: Send + 'a>(
        &'a self,
        f: impl FnOnce(&mut Inner) -> Result<T, StoreError> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        Box::pin(async move { self.with(f) })
    }
}

// === impl Store ===

impl Store for MemoryStore {
    fn create<'a>(&'a self, rel: &'a ReleaseRecord) -> BoxFuture<'a, Result<(), PortError>> {
        self.port(move |s| {
            if s.release(&rel.id).is_some() {
                return Err(StoreError::IdTaken(rel.id.clone()));
            }
            let busy = s
                .releases
                .iter()
                .any(|r| r.record.service == rel.service && r.record.outcome.is_none());
            if busy {
                return Err(StoreError::Busy(rel.service.clone()));
            }
            s.releases.push(Release {
                record: ReleaseRecord {
                    outcome: None,
                    ..rel.clone()
                },
                automatic_rollback: false,
                finished_at: None,
            });
            let body = serde_json::json!({
                "service": rel.service,
                "version": rel.version,
                "policy_sha256": sha256_hex(&rel.policy),
            })
            .to_string();
            s.chain(
                rel.created_at,
                "rampart",
                "release_created",
                Some((&rel.id, None)),
                &body,
            );
            Ok(())
        })
    }

    fn append<'a>(
        &'a self,
        release_id: &'a str,
        entry: &'a StoredInput,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        self.port(move |s| {
            if s.release(release_id).is_none() {
                return Err(StoreError::NoRelease(release_id.to_string()));
            }
            let expected = s.log(release_id).last().map_or(0, |e| e.seq + 1);
            if entry.seq != expected {
                return Err(StoreError::OutOfSequence {
                    release: release_id.to_string(),
                    seq: entry.seq,
                    expected,
                });
            }
            let input = json(&entry.input)?;
            let audit = json(&entry.events)?;
            let kind = serde_json::to_value(&entry.input)
                .ok()
                .and_then(|v| v["type"].as_str().map(str::to_string))
                .unwrap_or_default();
            let cursor = s.events.last().map_or(0, |(c, _, _)| *c) + 1;
            s.events
                .push((cursor, release_id.to_string(), entry.clone()));
            s.chain(
                entry.at,
                &input_actor(entry),
                &format!("input:{kind}"),
                Some((release_id, Some(entry.seq))),
                &input_body(entry.at, &input, &audit),
            );
            Ok(())
        })
    }

    fn load<'a>(
        &'a self,
        release_id: &'a str,
    ) -> BoxFuture<'a, Result<(ReleaseRecord, Vec<StoredInput>), PortError>> {
        self.port(move |s| {
            let rel = s
                .release(release_id)
                .ok_or_else(|| StoreError::NoRelease(release_id.to_string()))?;
            Ok((rel.record.clone(), s.log(release_id)))
        })
    }

    fn active<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Option<ReleaseRecord>, PortError>> {
        self.port(move |s| {
            Ok(s.releases
                .iter()
                .find(|r| r.record.service == service && r.record.outcome.is_none())
                .map(|r| r.record.clone()))
        })
    }

    fn finish<'a>(
        &'a self,
        release_id: &'a str,
        outcome: OutcomeKind,
        serving: Option<&'a str>,
        automatic_rollback: bool,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        self.port(move |s| {
            let at = s.log(release_id).iter().map(|e| e.at).max();
            let rel = s
                .releases
                .iter_mut()
                .find(|r| r.record.id == release_id)
                .ok_or_else(|| StoreError::NoRelease(release_id.to_string()))?;
            rel.record.outcome = Some(outcome);
            rel.automatic_rollback = automatic_rollback;
            rel.finished_at = at;
            let service = rel.record.service.clone();
            if let Some(v) = serving {
                s.serving.insert(service, v.to_string());
            }
            let body = serde_json::json!({
                "outcome": outcome.as_str(),
                "serving": serving,
                "automatic_rollback": automatic_rollback,
            })
            .to_string();
            s.chain(
                at.unwrap_or(0),
                "rampart",
                "release_finished",
                Some((release_id, None)),
                &body,
            );
            Ok(())
        })
    }

    fn automatic_rollbacks<'a>(
        &'a self,
        service: &'a str,
        since: Millis,
    ) -> BoxFuture<'a, Result<u32, PortError>> {
        self.port(move |s| {
            let n = s
                .releases
                .iter()
                .filter(|r| {
                    r.record.service == service
                        && r.automatic_rollback
                        && r.finished_at.is_some_and(|at| at >= since)
                })
                .count();
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
    }

    fn set_freeze<'a>(
        &'a self,
        scope: Option<&'a str>,
        freeze: bool,
        by: &'a Freeze,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        self.port(move |s| {
            let scope = scope.unwrap_or("*");
            if freeze {
                // A freeze in force stays as it was (see `StateStore::change_freeze`).
                if s.freezes.contains_key(scope) {
                    return Ok(());
                }
                s.freezes.insert(scope.to_string(), by.clone());
            } else {
                s.freezes.remove(scope);
            }
            let kind = if freeze { "freeze_on" } else { "freeze_off" };
            let body = serde_json::json!({"scope": scope, "reason": by.reason}).to_string();
            s.chain(by.at, &by.actor, kind, None, &body);
            Ok(())
        })
    }

    fn freeze<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Option<Freeze>, PortError>> {
        self.port(move |s| {
            Ok(s.freezes
                .get(service)
                .or_else(|| s.freezes.get("*"))
                .cloned())
        })
    }

    fn push_command<'a>(
        &'a self,
        service: &'a str,
        command: &'a OperatorCommand,
    ) -> BoxFuture<'a, Result<String, PortError>> {
        self.port(move |s| {
            let id = s
                .releases
                .iter()
                .find(|r| r.record.service == service && r.record.outcome.is_none())
                .map(|r| r.record.id.clone())
                .ok_or_else(|| {
                    StoreError::NotFound(format!("service {service} has no release in progress"))
                })?;
            s.queue_command(&id, command);
            Ok(id)
        })
    }

    fn releases_with_requests(&self) -> BoxFuture<'_, Result<Vec<String>, PortError>> {
        self.port(|s| {
            let mut ids: Vec<String> = Vec::new();
            for (id, _, taken) in &s.commands {
                if !taken && !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
            Ok(ids)
        })
    }

    fn next_command<'a>(
        &'a self,
        release_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<(u64, OperatorCommand)>, PortError>> {
        self.port(move |s| {
            Ok(s.commands
                .iter()
                .enumerate()
                .find(|(_, (id, _, taken))| id == release_id && !taken)
                .map(|(i, (_, command, _))| (i as u64, command.clone())))
        })
    }

    fn append_answering<'a>(
        &'a self,
        release_id: &'a str,
        entry: &'a StoredInput,
        command: u64,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.append(release_id, entry).await?;
            self.drop_command(release_id, command).await
        })
    }

    fn drop_command<'a>(
        &'a self,
        release_id: &'a str,
        command: u64,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        self.port(move |s| {
            if let Some((id, _, taken)) = usize::try_from(command)
                .ok()
                .and_then(|i| s.commands.get_mut(i))
                && id == release_id
            {
                *taken = true;
            }
            Ok(())
        })
    }

    fn serving_version<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, PortError>> {
        self.port(move |s| Ok(s.serving.get(service).cloned()))
    }

    fn mark_migration<'a>(
        &'a self,
        release_id: &'a str,
        file: &'a str,
        mark: MigrationMark,
        at: Millis,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        // No leases here: every note is the one controller's.
        let body = super::ports::migration_body(file);
        Box::pin(async move {
            self.note(at, "rampart", mark.action(), Some(release_id), &body)
                .await
                .map(|_| ())
                .map_err(StoreError::into_port)
        })
    }

    fn migration_marks<'a>(
        &'a self,
        release_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, MigrationMark)>, PortError>> {
        super::ports::migration_marks_in(self, release_id)
    }
}

// === impl Tokens ===

impl Tokens for MemoryStore {
    fn create_token<'a>(
        &'a self,
        name: &'a str,
        role: &'a str,
        by: &'a str,
        at: Millis,
    ) -> BoxFuture<'a, Result<String, StoreError>> {
        self.plane(move |s| {
            if s.tokens
                .iter()
                .any(|t| t.info.name == name && !t.info.revoked)
            {
                return Err(StoreError::Conflict(format!(
                    "a token named {name} exists; revoke it first (`rampart token revoke {name}`)"
                )));
            }
            let secret = format!("{TOKEN_PREFIX}{}", random_hex(32)?);
            let hash = sha256_hex(&secret);
            s.tokens.retain(|t| t.info.name != name);
            s.tokens.push(Token {
                info: TokenInfo {
                    name: name.to_string(),
                    role: role.to_string(),
                    created_at: at,
                    created_by: by.to_string(),
                    revoked: false,
                },
                hash: hash.clone(),
            });
            let body = serde_json::json!({"name": name, "role": role, "hash": hash}).to_string();
            s.chain(at, by, "token_created", None, &body);
            Ok(secret)
        })
    }

    fn revoke_token<'a>(
        &'a self,
        name: &'a str,
        by: &'a str,
        at: Millis,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.plane(move |s| {
            let live = s
                .tokens
                .iter_mut()
                .find(|t| t.info.name == name && !t.info.revoked)
                .ok_or_else(|| StoreError::NotFound(format!("no live token named {name}")))?;
            live.info.revoked = true;
            let body = serde_json::json!({"name": name}).to_string();
            s.chain(at, by, "token_revoked", None, &body);
            Ok(())
        })
    }

    fn token<'a>(
        &'a self,
        secret: &'a str,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, StoreError>> {
        self.plane(move |s| {
            let hash = sha256_hex(secret);
            Ok(s.tokens
                .iter()
                .find(|t| t.hash == hash && !t.info.revoked)
                .map(|t| (t.info.name.clone(), t.info.role.clone())))
        })
    }

    fn tokens(&self) -> BoxFuture<'_, Result<Vec<TokenInfo>, StoreError>> {
        self.plane(|s| {
            let mut out: Vec<TokenInfo> = s.tokens.iter().map(|t| t.info.clone()).collect();
            out.sort_by(|a, b| {
                b.created_at
                    .cmp(&a.created_at)
                    .then_with(|| a.name.cmp(&b.name))
            });
            Ok(out)
        })
    }
}

// === impl AuditChain ===

impl AuditChain for MemoryStore {
    fn note<'a>(
        &'a self,
        at: Millis,
        actor: &'a str,
        action: &'a str,
        release: Option<&'a str>,
        body: &'a str,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        self.plane(move |s| Ok(s.chain(at, actor, action, release.map(|r| (r, None)), body)))
    }

    fn chain_records<'a>(
        &'a self,
        release: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<ChainRecord>, StoreError>> {
        self.plane(move |s| {
            Ok(s.chain
                .iter()
                .filter(|r| release.is_none_or(|id| r.release_id.as_deref() == Some(id)))
                .cloned()
                .collect())
        })
    }

    /// Checks every link and hash, that every log entry is the one its input record
    /// recorded, and that every applied operator input was asked for. (The tables
    /// cannot be changed behind the store's back here, so the SQL store's checks of
    /// tokens, releases and freezes against the chain have nothing to find.)
    fn verify_chain(&self) -> BoxFuture<'_, Result<ChainReport, StoreError>> {
        self.plane(|s| {
            let mut problems = Vec::new();
            let mut links = super::chain::Links::new();
            let mut logged = BTreeMap::new();
            let mut asked: BTreeMap<(String, String, String), u32> = BTreeMap::new();
            let mut forced = Forced::default();
            for r in &s.chain {
                links.check(r, &mut problems);
                if let Some(rel) = &r.release_id {
                    forced.note((r.id, &r.action, rel, &r.actor), &r.body, &mut problems);
                }
                if let Some(kind) = r.action.strip_prefix("request:")
                    && let Some(rel) = &r.release_id
                {
                    *asked
                        .entry((rel.clone(), kind.to_string(), r.actor.clone()))
                        .or_default() += 1;
                }
                if let Some(input) = r.action.strip_prefix("input:")
                    && let (Some(rel), Some(seq)) = (&r.release_id, r.seq)
                {
                    logged.insert((rel.clone(), seq), (r.id, r.body.clone()));
                    if let Some(kind) = request_for(input) {
                        let key = (rel.clone(), kind.to_string(), r.actor.clone());
                        match asked.get_mut(&key) {
                            Some(n) if *n > 0 => *n -= 1,
                            _ => problems.push(format!(
                                "record {}: release {rel} entry {seq} applies a {kind} by {} that nobody asked for",
                                r.id, r.actor
                            )),
                        }
                    }
                }
            }
            for (_, release, e) in &s.events {
                let body = input_body(e.at, &json(&e.input)?, &json(&e.events)?);
                match logged.remove(&(release.clone(), e.seq)) {
                    None => problems.push(format!(
                        "release {release} entry {}: not in the audit chain (inserted after the fact)",
                        e.seq
                    )),
                    Some((id, recorded)) if recorded != body => problems.push(format!(
                        "release {release} entry {}: differs from what chain record {id} recorded (changed after the fact)",
                        e.seq
                    )),
                    Some(_) => {}
                }
            }
            for ((release, seq), (id, _)) in logged {
                problems.push(format!(
                    "release {release} entry {seq}: recorded by chain record {id} but gone from the log (deleted)"
                ));
            }
            Ok(ChainReport {
                ok: problems.is_empty(),
                records: s.chain.len() as u64,
                log_entries: s.events.len() as u64,
                head: links.head(),
                problems,
            })
        })
    }
}

// === impl Submissions ===

impl Submissions for MemoryStore {
    fn submit<'a>(&'a self, sub: &'a Submission) -> BoxFuture<'a, Result<(), StoreError>> {
        self.plane(move |s| {
            if s.submissions.iter().any(|x| x.id == sub.id) {
                // What the SQL store's primary key says.
                return Err(StoreError::Database(format!(
                    "submission {} exists already",
                    sub.id
                )));
            }
            s.submissions.push(sub.clone());
            let body = serde_json::json!({
                "service": sub.service,
                "version": sub.version,
                "stable": sub.stable,
                "hotfix": sub.hotfix,
                "policy_sha256": sha256_hex(&sub.policy),
                "workdir": sub.workdir,
            })
            .to_string();
            s.chain(
                sub.created_at,
                &sub.initiator,
                "release_submitted",
                Some((&sub.id, None)),
                &body,
            );
            Ok(())
        })
    }

    fn submission<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Submission>, StoreError>> {
        self.plane(move |s| Ok(s.submissions.iter().find(|x| x.id == id).cloned()))
    }

    fn open_submissions(&self) -> BoxFuture<'_, Result<Vec<Submission>, StoreError>> {
        self.plane(|s| {
            Ok(s.submissions
                .iter()
                .filter(|x| x.state != "done")
                .cloned()
                .collect())
        })
    }

    fn submissions_of<'a>(
        &'a self,
        service: &'a str,
        version: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Submission>, StoreError>> {
        self.plane(move |s| {
            Ok(s.submissions
                .iter()
                .rev()
                .filter(|x| x.service == service && x.version == version)
                .take(limit)
                .cloned()
                .collect())
        })
    }

    fn withdraw<'a>(
        &'a self,
        id: &'a str,
        by: &'a str,
        report: &'a str,
        at: Millis,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.plane(move |s| {
            let queued = s
                .submissions
                .iter_mut()
                .find(|x| x.id == id && x.state == "queued")
                .ok_or_else(|| {
                    StoreError::Conflict(format!(
                        "release {id} is no longer queued; abort it as a running release"
                    ))
                })?;
            queued.state = "done".into();
            queued.report = Some(report.to_string());
            s.chain(at, by, "release_withdrawn", Some((id, None)), report);
            Ok(())
        })
    }

    fn push_command_to<'a>(
        &'a self,
        id: &'a str,
        command: &'a OperatorCommand,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.plane(move |s| {
            match s.release(id) {
                None => return Err(StoreError::NoRelease(id.to_string())),
                Some(r) if r.record.outcome.is_some() => {
                    return Err(StoreError::Conflict(format!("release {id} is over")));
                }
                Some(_) => {}
            }
            s.queue_command(id, command);
            Ok(())
        })
    }
}

// === impl Listing ===

impl Listing for MemoryStore {
    fn list_releases<'a>(
        &'a self,
        service: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ReleaseRecord>, StoreError>> {
        self.plane(move |s| {
            let mut out: Vec<ReleaseRecord> = s
                .releases
                .iter()
                .filter(|r| service.is_none_or(|svc| r.record.service == svc))
                .map(|r| r.record.clone())
                .collect();
            out.sort_by(|a, b| {
                b.created_at
                    .cmp(&a.created_at)
                    .then_with(|| b.id.cmp(&a.id))
            });
            out.truncate(limit);
            Ok(out)
        })
    }

    fn services(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        self.plane(|s| {
            let mut names: Vec<String> = s
                .releases
                .iter()
                .map(|r| r.record.service.clone())
                .chain(s.submissions.iter().map(|x| x.service.clone()))
                .collect();
            names.sort();
            names.dedup();
            Ok(names)
        })
    }

    fn freezes(&self) -> BoxFuture<'_, Result<Vec<serde_json::Value>, StoreError>> {
        self.plane(|s| {
            Ok(s.freezes
                .iter()
                .map(|(scope, f)| {
                    serde_json::json!({
                        "scope": scope,
                        "actor": f.actor,
                        "reason": f.reason,
                        "at": f.at,
                    })
                })
                .collect())
        })
    }

    fn log_cursor(&self) -> BoxFuture<'_, Result<i64, StoreError>> {
        self.plane(|s| Ok(s.events.last().map_or(0, |(c, _, _)| *c)))
    }

    fn entries_after(
        &self,
        cursor: i64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<LogEntry>, StoreError>> {
        self.plane(move |s| {
            Ok(s.events
                .iter()
                .filter(|(c, _, _)| *c > cursor)
                .take(limit)
                .cloned()
                .collect())
        })
    }
}
