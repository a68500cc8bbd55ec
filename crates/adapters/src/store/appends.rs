//! Appending to release logs: appends from many controllers are combined into one
//! transaction per batch, each checked against its log's next position and chained.
//!
//! Owns the append queue and the batch writer. It must not read logs back (that is
//! `releases`'s) nor decide what is appended (the controller does).

use rampart_core::ports::StoredInput;

use super::StateStore;
use super::chain::{INSERT_CHAIN, head, input_actor, input_body, next_record};
use super::error::StoreError;
use super::requests::ANSWER_COMMAND;
use super::sql::{Tx, Value, args, db_err};

/// The most appends one transaction writes; the rest wait for the next writer.
const MAX_BATCH: usize = 512;

/// How many releases one query asks the next log position of.
const NEXT_SEQ_CHUNK: usize = 64;

/// `SELECT release_id, next seq` for [`NEXT_SEQ_CHUNK`] release ids (unused ones NULL).
static NEXT_SEQ: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let ids: Vec<String> = (1..=NEXT_SEQ_CHUNK).map(|i| format!("?{i}")).collect();
    format!(
        "SELECT release_id, MAX(seq) + 1 FROM events WHERE release_id IN ({}) GROUP BY release_id",
        ids.join(", ")
    )
});

/// Appends waiting for the connection.
#[derive(Debug, Default)]
pub(super) struct Appends {
    next_id: u64,
    queue: Vec<PendingAppend>,
    /// Transactions that wrote appends, for the benchmark and tests.
    batches: u64,
}

/// One append waiting to be written, serialised already.
#[derive(Debug)]
struct PendingAppend {
    id: u64,
    release: String,
    seq: u64,
    at: u64,
    kind: String,
    actor: String,
    input: String,
    audit: String,
    /// The queued request this input answers, marked answered with it.
    command: Option<u64>,
    done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

// === impl StateStore: appends ===

impl StateStore {
    /// How many transactions have written appends so far (fewer than the appends when
    /// concurrent appends were combined).
    pub fn append_batches(&self) -> u64 {
        self.appends.lock().map(|w| w.batches).unwrap_or(0)
    }

    /// Appends one entry. Appends from many controllers are combined: whoever gets the
    /// connection writes every append waiting at that moment in one transaction (one
    /// commit, one sync to disk), and each caller returns once its own is durable. A
    /// store with thousands of releases therefore writes in batches as large as the
    /// queue that formed during the previous commit.
    pub(super) async fn append_entry(
        &self,
        release_id: &str,
        entry: &StoredInput,
        command: Option<u64>,
    ) -> Result<(), StoreError> {
        let input = serde_json::to_string(&entry.input).map_err(db_err)?;
        let audit = serde_json::to_string(&entry.events).map_err(db_err)?;
        let (done, result) = tokio::sync::oneshot::channel();
        let id = {
            let mut waiting = self
                .appends
                .lock()
                .map_err(|_| db_err("append queue poisoned"))?;
            waiting.next_id += 1;
            let id = waiting.next_id;
            waiting.queue.push(PendingAppend {
                id,
                release: release_id.to_string(),
                seq: entry.seq,
                at: entry.at,
                kind: serde_json::to_value(&entry.input)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_string))
                    .unwrap_or_default(),
                actor: input_actor(entry),
                input,
                audit,
                command,
                done,
            });
            id
        };
        let mut result = result;
        loop {
            // Whichever comes first: the outcome of this append, written by a caller
            // that got the connection before, or the connection (then this caller
            // writes what waits, at most a batch at a time, until its own is written).
            let conn = tokio::select! {
                biased;
                outcome = &mut result => {
                    return outcome.unwrap_or_else(|_| Err(db_err("the append was dropped by its writer")));
                }
                conn = self.db.conn() => conn,
            };
            match conn {
                Ok(conn) => {
                    let batch = self
                        .appends
                        .lock()
                        .map(|mut w| {
                            w.batches += u64::from(!w.queue.is_empty());
                            let take = w.queue.len().min(MAX_BATCH);
                            let rest = w.queue.split_off(take);
                            std::mem::replace(&mut w.queue, rest)
                        })
                        .unwrap_or_default();
                    if !batch.is_empty() {
                        self.write_appends(conn, batch).await;
                    }
                }
                Err(e) => {
                    // Withdraw this append unless another writer already took it (then
                    // its outcome is the one to report).
                    let mine = self.appends.lock().ok().and_then(|mut w| {
                        let at = w.queue.iter().position(|p| p.id == id)?;
                        Some(w.queue.remove(at))
                    });
                    if mine.is_some() {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Writes a batch of appends in one transaction and tells each its outcome. An
    /// append out of sequence fails alone; anything else fails the whole batch (and
    /// nothing of it is written).
    async fn write_appends(&self, conn: Tx, batch: Vec<PendingAppend>) {
        let mut outcomes: Vec<Result<(), StoreError>> = Vec::with_capacity(batch.len());
        let written = async {
            let mut tx = conn.begin().await?;
            tx.lock_chain().await?;
            self.fenced(&mut tx).await?;
            let mut head = head(&mut tx).await?;
            // Each release's next position, read for all of them at once (the chain
            // lock keeps them so until the commit).
            let mut next: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
            let releases: Vec<&str> = {
                let mut seen = std::collections::HashSet::new();
                batch.iter().map(|p| p.release.as_str()).filter(|r| seen.insert(*r)).collect()
            };
            for chunk in releases.chunks(NEXT_SEQ_CHUNK) {
                let mut ids: Vec<Value> = chunk.iter().map(|r| Value::from(*r)).collect();
                ids.resize(NEXT_SEQ_CHUNK, Value::Null);
                for r in tx.query(&NEXT_SEQ, &ids).await? {
                    next.insert(r.text(0)?, r.uint(1)?);
                }
            }
            let mut writes: Vec<(&str, Vec<Value>)> = Vec::with_capacity(2 * batch.len());
            for p in &batch {
                let expected = next.get(&p.release).copied().unwrap_or(0);
                if p.seq != expected {
                    outcomes.push(Err(StoreError::OutOfSequence {
                        release: p.release.clone(),
                        seq: p.seq,
                        expected,
                    }));
                    continue;
                }
                next.insert(p.release.clone(), expected + 1);
                writes.push((
                    "INSERT INTO events (release_id, seq, at, input, audit) VALUES (?1, ?2, ?3, ?4, ?5)",
                    args![p.release.as_str(), p.seq, p.at, p.input.as_str(), p.audit.as_str()].to_vec(),
                ));
                writes.push((
                    INSERT_CHAIN,
                    next_record(
                        &mut head,
                        p.at,
                        &p.actor,
                        &format!("input:{}", p.kind),
                        Some((&p.release, Some(p.seq))),
                        &input_body(p.at, &p.input, &p.audit),
                    ),
                ));
                if let Some(command) = p.command {
                    writes.push((
                        ANSWER_COMMAND,
                        args![command, p.release.as_str()].to_vec(),
                    ));
                }
                outcomes.push(Ok(()));
            }
            tx.execute_all(&writes).await?;
            tx.commit().await
        }
        .await;
        match written {
            Ok(()) => {
                for (p, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = p.done.send(outcome);
                }
            }
            Err(e) => {
                for p in batch {
                    let _ = p.done.send(Err(e.clone()));
                }
            }
        }
    }
}
