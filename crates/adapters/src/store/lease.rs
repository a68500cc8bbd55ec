//! The leader lease: several `rampart serve` replicas share one store, and only the
//! one holding the lease acts on releases.
//!
//! Owns campaigning for the lease, renewing it, and stepping down. The lease is a row
//! (holder, fencing token, heartbeat count). A candidate takes it over only after the
//! row has not changed for a whole lease time *on its own clock*, so replicas never
//! compare each other's clocks. Every takeover increments the fencing token, and every
//! acting write checks it (`StateStore::fenced`), so a deposed leader's late write is
//! refused. It must not decide what a leader does: that is the server's.
//!
//! Guarantees: at most one replica's acting writes succeed between two takeovers. A
//! leader that cannot renew stops acting after half a lease time, before any
//! candidate can take over.

use std::sync::Arc;
use std::time::Duration;

use rampart_core::Millis;
use rampart_core::ports::Clock;

use super::error::StoreError;

use super::sql::args;
use super::{Fence, StateStore};

/// The lease's row as a candidate observes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseState {
    /// Who holds it; empty once its holder released it.
    pub holder: String,
    /// The fencing token of the current holder.
    pub token: i64,
    /// Heartbeats since the holder took it.
    pub beats: i64,
}

// === impl StateStore: the lease row ===

impl StateStore {
    /// The lease's row, if anyone ever held it.
    pub async fn lease_state(&self, name: &str) -> Result<Option<LeaseState>, StoreError> {
        let row = self
            .lease_db
            .conn()
            .await?
            .query_opt(
                "SELECT holder, token, beats FROM leases WHERE name = ?1",
                args![name],
            )
            .await?;
        row.map(|r| {
            Ok(LeaseState {
                holder: r.text(0)?,
                token: r.int(1)?,
                beats: r.int(2)?,
            })
        })
        .transpose()
    }

    /// Takes the lease if its row is still exactly `seen` (or, with `None`, if nobody
    /// ever held it), and returns the new fencing token. `None` when someone else
    /// moved first.
    pub async fn take_lease(
        &self,
        name: &str,
        holder: &str,
        seen: Option<&LeaseState>,
    ) -> Result<Option<i64>, StoreError> {
        let mut c = self.lease_db.conn().await?;
        let Some(seen) = seen else {
            let n = c
                .execute(
                    "INSERT INTO leases (name, holder, token, beats) VALUES (?1, ?2, 1, 0) ON CONFLICT(name) DO NOTHING",
                    args![name, holder],
                )
                .await?;
            return Ok((n == 1).then_some(1));
        };
        // On PostgreSQL this waits for the old holder's acting transactions (they hold
        // the row FOR SHARE), so none of them commits after the takeover.
        let n = c
            .execute(
                "UPDATE leases SET holder = ?2, token = token + 1, beats = 0 WHERE name = ?1 AND holder = ?3 AND token = ?4 AND beats = ?5",
                args![name, holder, &seen.holder, seen.token, seen.beats],
            )
            .await?;
        Ok((n == 1).then_some(seen.token + 1))
    }

    /// Renews a held lease. `false` when it has moved on (this holder is deposed).
    pub async fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        token: i64,
    ) -> Result<bool, StoreError> {
        let n = self
            .lease_db
            .conn()
            .await?
            .execute(
                "UPDATE leases SET beats = beats + 1 WHERE name = ?1 AND holder = ?2 AND token = ?3",
                args![name, holder, token],
            )
            .await?;
        Ok(n == 1)
    }

    /// Gives a held lease up, so a candidate takes it at once instead of waiting a
    /// lease time (an orderly shutdown).
    pub async fn release_lease(
        &self,
        name: &str,
        holder: &str,
        token: i64,
    ) -> Result<(), StoreError> {
        self.set_fence(Fence::Standby);
        self.lease_db
            .conn()
            .await?
            .execute(
                "UPDATE leases SET holder = '', beats = beats + 1 WHERE name = ?1 AND holder = ?2 AND token = ?3",
                args![name, holder, token],
            )
            .await?;
        Ok(())
    }

    /// From now on this store acts only as the holder of lease `name` with `token`.
    pub fn fence_as_leader(&self, name: &str, holder: &str, token: i64) {
        self.set_fence(Fence::Leader {
            name: name.to_string(),
            holder: holder.to_string(),
            token,
        });
    }

    /// From now on this store refuses every acting write.
    pub fn fence_as_standby(&self) {
        self.set_fence(Fence::Standby);
    }

    /// Refuses, writing nothing, as an acting write would: this process is a standby,
    /// or its lease has moved on. A caller checks it before it acts outside the store
    /// (a release, before it touches its service's data plane).
    pub async fn check_acting(&self) -> Result<(), StoreError> {
        if matches!(self.fence(), Fence::Unfenced) {
            return Ok(());
        }
        let mut tx = self.db.begin().await?;
        self.fenced(&mut tx).await?;
        tx.commit().await
    }
}

/// One replica's part in the lease.
#[derive(Clone)]
pub struct Lease {
    store: Arc<StateStore>,
    clock: Arc<dyn Clock>,
    name: String,
    holder: String,
    ttl: Duration,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.name)
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Why a leader stopped leading.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Deposed {
    /// Another replica holds the lease now.
    #[error("another replica took the lease over (fencing token {0} is stale)")]
    TakenOver(i64),
    /// The store could not be reached for half a lease time.
    #[error("the lease could not be renewed for {0:?}: {1}")]
    Unreachable(Duration, String),
    /// This replica did not get to renew for half a lease time (it was paused, or its
    /// machine was overloaded).
    #[error("the lease was not renewed for {0:?} (this replica stalled)")]
    Stalled(Duration),
}

/// The lease as this replica holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// The fencing token.
    pub token: i64,
    /// When it was taken, on this replica's clock (before it asked).
    pub since: Millis,
}

fn ms(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Lease {
    /// `holder` names this replica (unique among the replicas); `ttl` is how long a
    /// silent holder keeps the lease.
    pub fn new(
        store: Arc<StateStore>,
        clock: Arc<dyn Clock>,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Lease {
        store.fence_as_standby();
        Lease {
            store,
            clock,
            name: name.to_string(),
            holder: holder.to_string(),
            ttl,
        }
    }

    /// How often a holder renews and a candidate looks.
    fn beat(&self) -> Millis {
        (ms(self.ttl) / 3).max(1)
    }

    /// Waits until this replica holds the lease, fences the store as its leader, and
    /// returns the fencing token with when it was taken.
    pub async fn acquire(&self) -> Held {
        // The row as last seen, and when (on this replica's clock, read after the row
        // came back) it was first seen so.
        let mut seen: Option<(Option<LeaseState>, Millis)> = None;
        loop {
            let started = self.clock.now();
            match self.store.lease_state(&self.name).await {
                Err(e) => tracing::warn!(lease = %self.name, "cannot read the lease: {e}"),
                Ok(state) => {
                    // A read that waited counts from its answer: the row may have been
                    // renewed just before it was read.
                    let now = self.clock.now();
                    let free = state.as_ref().is_none_or(|s| s.holder.is_empty());
                    let since = match &seen {
                        Some((prev, since)) if *prev == state => *since,
                        _ => now,
                    };
                    if free || now.saturating_sub(since) >= ms(self.ttl) {
                        let asked = self.clock.now();
                        match self
                            .store
                            .take_lease(&self.name, &self.holder, state.as_ref())
                            .await
                        {
                            Ok(Some(token)) => {
                                self.store.fence_as_leader(&self.name, &self.holder, token);
                                // Just made the leader: it applies (and if the clock
                                // already passed it, the first write refuses).
                                let _ = self.store.act_until(
                                    token,
                                    self.clock.clone(),
                                    asked.saturating_add(ms(self.ttl) / 2),
                                );
                                tracing::info!(lease = %self.name, holder = %self.holder, token, "took the leader lease");
                                return Held {
                                    token,
                                    since: asked,
                                };
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(lease = %self.name, "cannot take the lease: {e}");
                            }
                        }
                    }
                    seen = Some((state, since));
                }
            }
            self.clock.sleep_until(started + self.beat()).await;
        }
    }

    /// Renews the lease until it is lost, then fences the store as a standby and says
    /// why. A renewal that fails is retried soon; the leader steps down once half a
    /// lease time has passed since its last renewal (or since it took the lease)
    /// without another, before any candidate (which waits a whole lease time of no
    /// change) can take over.
    pub async fn hold(&self, held: Held) -> Deposed {
        let half = ms(self.ttl) / 2;
        let mut renewed = held.since;
        let mut wait = self.beat();
        let lost = loop {
            let deadline = renewed + half;
            self.clock
                .sleep_until((self.clock.now() + wait).min(deadline))
                .await;
            let asked = self.clock.now();
            // The store may have stopped acting on its own (a write found the
            // deadline passed while a renewal was on its way): the lease is let go
            // rather than renewed for a replica that no longer acts.
            if asked >= deadline || self.store.may_act().is_err() {
                break Deposed::Stalled(self.ttl / 2);
            }
            // A renewal that hangs (a partition) counts as failing at the deadline.
            let outcome = tokio::select! {
                r = self.store.renew_lease(&self.name, &self.holder, held.token) => Some(r),
                () = self.clock.sleep_until(deadline) => None,
            };
            match outcome {
                Some(Ok(true)) => {
                    renewed = asked;
                    if !self
                        .store
                        .act_until(held.token, self.clock.clone(), renewed + half)
                    {
                        break Deposed::Stalled(self.ttl / 2);
                    }
                    wait = self.beat();
                }
                Some(Ok(false)) => break Deposed::TakenOver(held.token),
                None => {
                    break Deposed::Unreachable(self.ttl / 2, "no answer from the store".into());
                }
                Some(Err(e)) => {
                    tracing::warn!(lease = %self.name, "cannot renew the lease (retrying): {e}");
                    wait = (self.beat() / 4).max(1);
                    if self.clock.now() >= deadline {
                        break Deposed::Unreachable(self.ttl / 2, e.to_string());
                    }
                }
            }
        };
        self.store.fence_as_standby();
        lost
    }

    /// Gives the lease up (orderly shutdown).
    pub async fn release(&self, held: Held) {
        if let Err(e) = self
            .store
            .release_lease(&self.name, &self.holder, held.token)
            .await
        {
            tracing::warn!(lease = %self.name, "cannot release the lease: {e}");
        }
    }
}
