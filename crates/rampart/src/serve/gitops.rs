//! `rampart serve --kubernetes`: releases of the pod templates Git applies to
//! Deployments that opt in (`rampart.dev/policy`).
//!
//! Owns the watch loop: each [`Watch::tick`] lists the opted-in Deployments, keeps
//! them paused, starts a release of a new revision through the same path as the
//! API's `POST /api/v1/releases` (so approvals, freezes, windows and the migration
//! guard hold unchanged), supersedes a release whose revision Git replaced, ends the
//! release of a deleted Deployment, and writes each one's phase back to it. It must
//! not step a release: the server's queue runs them.
//!
//! Polling (`list` and `get` every `--kubernetes-interval`) rather than a kube-rs
//! watch: a tick is a plain function the tests drive step by step, a missed event
//! cannot exist, and the client stays the adapter's (no kube-runtime).

use std::time::Duration;

use rampart_adapters::store::Submission;
use rampart_kubernetes::gitops::{self, Phase, Watched, Workload};

use super::App;
use super::api::actions::{Act, act};
use super::api::releases::{CreateRelease, submit_as, view_of};
use super::auth::{Caller, Role};

/// The initiator of a release the watch loop starts: `gitops:NAMESPACE/NAME`.
pub const INITIATOR_PREFIX: &str = "gitops:";

/// How long a revision whose release was blocked (a freeze that began after it was
/// queued, a failed gate) waits before it is tried again.
const BLOCKED_RETRY: Duration = Duration::from_secs(60);

/// How many of a service's newest releases are searched for the outcome of a
/// revision's. Only those since the running revision's own promotion count, which
/// stops the search early; past this many, a revision is released again.
const FINISHED_LOOKBACK: usize = 200;

/// The options of `--kubernetes`.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Namespaces to watch (the client's default one when empty).
    pub namespaces: Vec<String>,
    /// How often the Deployments are read.
    pub interval: Duration,
}

/// What one tick did to one Deployment, for logs and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Did {
    /// Paused it (first sight, or someone unpaused it), keeping its running pods.
    Adopted,
    /// Nothing new: its revision is released, refused, or its release runs.
    Nothing,
    /// Queued a release of its revision.
    Started(String),
    /// Ended the release of a Deployment that was deleted.
    Ended(String),
    /// Waits for a rollout under way before it is adopted.
    Rollout,
    /// No longer opts in: unpaused, rampart's annotations removed.
    LetGo,
    /// Asked a release of an older revision to roll back.
    Superseded(String),
    /// A freeze holds its revision: it is submitted once the freeze is lifted.
    Held(String),
    /// Its opt-in is unusable, or the submission path refused its policy.
    Invalid(String),
    /// The namespace could not be listed (keyed by the namespace): nothing in it is
    /// started or ended this time.
    Unreadable(String),
}

/// The watch loop.
#[derive(Debug)]
pub struct Watch {
    app: App,
    watched: Watched,
}

impl Watch {
    /// `Err` once this replica may no longer act (see `Store::may_act`).
    fn acting(&self) -> Result<(), String> {
        self.app.store.may_act().map_err(|e| e.to_string())
    }

    /// A loop over `watched` that submits through `app`.
    pub fn new(app: App, watched: Watched) -> Watch {
        Watch { app, watched }
    }

    /// Runs [`tick`](Self::tick) every `interval`, forever.
    pub async fn run(self, interval: Duration) {
        loop {
            if let Err(e) = self.tick().await {
                tracing::warn!("rampart serve --kubernetes: {e}");
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Looks once at every opted-in Deployment and acts on what changed.
    ///
    /// Guarantees: idempotent; a revision is submitted at most once while a release of
    /// it is queued, running or finished (found in the store by its version, which
    /// names the revision), so a restarted server never releases a change twice.
    pub async fn tick(&self) -> Result<Vec<(String, Did)>, String> {
        // A leader that lost its lease (or stalled past it) leaves the cluster and
        // the queue to the next one: it neither ends, pauses nor submits anything.
        self.acting()?;
        // The open releases are read before the Deployments are: a release that ends
        // between the two reads is then still open here, or its end (the revision
        // recorded as released) is in the Deployment read after. The other way round,
        // a promotion that ended in between read as no release and an older revision,
        // and the revision just promoted was released again.
        let open = self
            .app
            .store
            .open_submissions()
            .await
            .map_err(|e| e.to_string())?;
        let seen = self.watched.workloads().await;
        let workloads = &seen.workloads;
        let mut did = Vec::new();
        // A Deployment that is gone (pruned from Git, deleted by hand) or no longer opts
        // in ends its release. One in a namespace this server does not watch (any
        // more) is left alone: nothing here knows about it.
        for s in open.iter().filter(|s| is_gitops(s)) {
            let key = &s.initiator[INITIATOR_PREFIX.len()..];
            // Only a namespace listed just now can tell that a Deployment is gone.
            let watched = key.split_once('/').is_some_and(|(ns, _)| {
                self.watched.namespaces().iter().any(|n| n == ns)
                    && !seen.unreadable.iter().any(|(n, _)| n == ns)
            });
            if watched && !workloads.iter().any(|w| w.key() == key) {
                self.acting()?;
                let reason = format!(
                    "Deployment {key} was deleted (or no longer opts in): its release of {} ends, and its canary goes",
                    s.version
                );
                self.abort(s, &reason).await;
                did.push((key.to_string(), Did::Ended(s.id.clone())));
            }
        }
        for (ns, why) in &seen.unreadable {
            tracing::warn!("rampart serve --kubernetes: {why}");
            did.push((ns.clone(), Did::Unreadable(why.clone())));
        }
        self.acting()?;
        for gone in self.watched.let_go().await {
            match gone {
                Ok(key) => did.push((key, Did::LetGo)),
                Err(e) => tracing::warn!("{e}"),
            }
        }
        for w in workloads {
            match self.one(w, &open).await {
                Ok(done) => did.extend(done.into_iter().map(|d| (w.key(), d))),
                Err(e) => tracing::warn!("{}: {e}", w.key()),
            }
        }
        Ok(did)
    }

    async fn one(&self, w: &Workload, open: &[Submission]) -> Result<Vec<Did>, String> {
        // A tick makes round trips to the cluster: the lease is looked at again before
        // each workload's writes.
        self.acting()?;
        let mut did = Vec::new();
        let next = self.one_revision(w, open, &mut did).await?;
        did.push(next);
        Ok(did)
    }

    /// What to do about `w`'s revision; releases it supersedes go to `did` first.
    async fn one_revision(
        &self,
        w: &Workload,
        open: &[Submission],
        did: &mut Vec<Did>,
    ) -> Result<Did, String> {
        let e = |e: rampart_kubernetes::Error| e.to_string();
        let adopted = w.annotation(gitops::RELEASED_REVISION).is_some();
        if let (Err(why), false) = (&w.policy, adopted) {
            // Not taken yet: reported, and left as it is until its opt-in works.
            self.watched
                .report(w, Phase::Failed, "", why, &[])
                .await
                .map_err(e)?;
            return Ok(Did::Invalid(why.clone()));
        }
        // The service's releases, and this Deployment's own under whatever service its
        // policy named when they were queued (a renamed service is still this one).
        let own = initiator(w);
        let service = w.policy.as_ref().ok().map(|p| p.service.as_str());
        let mine: Vec<&Submission> = open
            .iter()
            .filter(|s| Some(s.service.as_str()) == service || s.initiator == own)
            .collect();
        if !adopted && !w.rolled_out {
            // Opted in mid-rollout: pausing now would freeze a mix of old and new
            // pods, and neither would be a released revision. A rollout that failed,
            // or that someone paused, will not complete on its own: said so.
            let (phase, message) = match (&w.rollout_failed, w.paused) {
                (Some(why), _) => (
                    Phase::Failed,
                    format!(
                        "its rollout failed ({why}): fix the template in Git (or roll it back there); the Deployment is adopted once a rollout completes"
                    ),
                ),
                (None, true) => (
                    Phase::Waiting,
                    "paused mid-rollout by someone else: `kubectl rollout resume` it, and it is adopted once its rollout completes".to_string(),
                ),
                (None, false) => (
                    Phase::Waiting,
                    "a rollout is under way: the Deployment is adopted once it completes"
                        .to_string(),
                ),
            };
            self.watched
                .report(w, phase, "", &message, &[])
                .await
                .map_err(e)?;
            return Ok(Did::Rollout);
        }
        // Unpaused is only right while a promotion rolls out: its mark names the
        // version, and that version's release is open and promoting. First sight,
        // someone's `kubectl rollout resume`, or a mark whose promotion is over (a
        // crash, another release since): paused again on the pods it runs, and the
        // mark cleared (even on a paused Deployment: the template lock keys on it).
        let mark = w.annotation(gitops::PROMOTING);
        let in_flight = match mark {
            Some(version) => self.promoting(&mine, version).await,
            None => false,
        };
        let stale = mark.is_some() && !in_flight;
        if !adopted || (!w.paused && !in_flight) || stale {
            self.watched.adopt(w, stale).await.map_err(e)?;
            return Ok(Did::Adopted);
        }
        let p = match &w.policy {
            Ok(p) => p,
            Err(why) => {
                self.watched
                    .report(w, Phase::Failed, "", why, &[])
                    .await
                    .map_err(e)?;
                return Ok(Did::Invalid(why.clone()));
            }
        };
        let released = w.annotation(gitops::RELEASED_REVISION) == Some(w.revision.as_str());
        // A release of the revision Git holds now: its version, or this Deployment's
        // release naming the same template under another version (the policy's image
        // pattern, which the version's tag is read with, was edited since).
        let this_revision = |s: &Submission| {
            s.version == p.version
                || (s.initiator == own
                    && rampart_kubernetes::gitops::names_revision(&s.version, &w.revision))
        };
        // A release of another revision (Git moved on, or back) is superseded.
        for s in mine
            .iter()
            // Only this Deployment's own: another Deployment whose policy names the
            // same service is not Git moving on.
            .filter(|s| !this_revision(s) && s.initiator == own)
        {
            let reason = format!(
                "superseded: Git applied revision {} (version {}) to Deployment {} while this release of {} ran; it rolls back, and {}",
                w.revision,
                p.version,
                w.key(),
                s.version,
                if released {
                    "the Deployment stays on the released revision".to_string()
                } else {
                    format!("version {} is released next", p.version)
                }
            );
            let record = serde_json::json!({
                "deployment": w.key(),
                "superseded": {"release": s.id, "version": s.version},
                "by": {"revision": w.revision, "version": p.version},
            });
            self.note(&initiator(w), "gitops_superseded", Some(&s.id), &record)
                .await;
            self.abort(s, &reason).await;
            did.push(Did::Superseded(s.id.clone()));
        }
        // Released by its annotations, but its pods are not all on it (a promotion
        // that halted left them mixed, its canary still serving): not released.
        if released && !w.rolled_out {
            let release = w.annotation(gitops::RELEASE).unwrap_or("").to_string();
            self.watched
                .report(
                    w,
                    Phase::Failed,
                    &release,
                    &format!(
                        "revision {} is the one last released, but the Deployment's pods are not all on it: a release that halted left them (its canary may still serve); a person decides (`rampart stop --canary` sends the canary's users back)",
                        w.revision
                    ),
                    &[],
                )
                .await
                .map_err(e)?;
            return Ok(Did::Nothing);
        }
        if released {
            let version = w.annotation(gitops::RELEASED_VERSION).unwrap_or("");
            let release = w.annotation(gitops::RELEASE).unwrap_or("").to_string();
            self.watched
                .report(
                    w,
                    Phase::Released,
                    &release,
                    &format!("runs revision {} (version {version})", w.revision),
                    &[],
                )
                .await
                .map_err(e)?;
            return Ok(Did::Nothing);
        }
        if let Some(s) = mine.iter().find(|s| this_revision(s)) {
            let view = view_of(&self.app, &s.id)
                .await
                .map_err(|e| e.message().to_string())?;
            let phase = if view.phase == "queued" {
                Phase::Waiting
            } else {
                Phase::Progressing
            };
            let message = match view.phase.as_str() {
                "queued" => format!(
                    "release {} of {} is queued behind the service's current release",
                    s.id, p.version
                ),
                other => format!(
                    "release {} of {}: {other}, {}% to the canary",
                    s.id, p.version, view.weight
                ),
            };
            self.watched
                .report(w, phase, &s.id, &message, &[])
                .await
                .map_err(e)?;
            return Ok(Did::Nothing);
        }
        if w.annotation(gitops::REFUSED_REVISION) == Some(w.revision.as_str()) {
            // Said again about the revision Git has now (it may have gone elsewhere
            // and come back): never left saying `released` about another. What the
            // refusal said (which release, who, why) stays when it is still about it.
            let said = w.annotation(gitops::PHASE) == Some(Phase::Refused.as_str())
                && w.annotation(gitops::REVISION) == Some(w.revision.as_str());
            if !said {
                let release = w.annotation(gitops::RELEASE).unwrap_or("").to_string();
                self.watched
                    .report(
                        w,
                        Phase::Refused,
                        &release,
                        &format!(
                            "Git revision {} (version {}) was refused earlier; the Deployment stays paused on revision {}: apply another template to release again",
                            w.revision,
                            p.version,
                            w.annotation(gitops::RELEASED_REVISION).unwrap_or("?")
                        ),
                        &[],
                    )
                    .await
                    .map_err(e)?;
            }
            return Ok(Did::Nothing);
        }
        let released_version = w.annotation(gitops::RELEASED_VERSION);
        if let Some(done) = self
            .finished(&p.service, &p.version, &w.revision, released_version)
            .await?
        {
            let outcome = done.outcome.as_str();
            let blocked_long_ago = self.app.clock.now().saturating_sub(done.created_at)
                >= u64::try_from(BLOCKED_RETRY.as_millis()).unwrap_or(u64::MAX);
            match outcome {
                // A promotion records the revision as released before it ends, so
                // a promoted release of this version since the running revision's
                // own cannot be: it is history from before an adoption. Released
                // again, through a canary.
                "promoted" => {}
                "rolled_back" => {
                    self.watched
                        .report(
                            w,
                            Phase::Refused,
                            &done.id,
                            &format!(
                                "Git revision {} (version {}) was refused: release {} rolled back; the Deployment stays paused on revision {}",
                                w.revision,
                                p.version,
                                done.id,
                                w.annotation(gitops::RELEASED_REVISION).unwrap_or("?")
                            ),
                            &[(gitops::REFUSED_REVISION, &w.revision)],
                        )
                        .await
                        .map_err(e)?;
                    return Ok(Did::Nothing);
                }
                // A person withdrew it before it started: their decision stands until
                // Git applies another template.
                "withdrawn" => {
                    self.watched
                        .report(
                            w,
                            Phase::Refused,
                            &done.id,
                            &format!(
                                "Git revision {} (version {}) was refused: release {} was {}; the Deployment stays paused on revision {}",
                                w.revision,
                                p.version,
                                done.id,
                                done.reason,
                                w.annotation(gitops::RELEASED_REVISION).unwrap_or("?")
                            ),
                            &[(gitops::REFUSED_REVISION, &w.revision)],
                        )
                        .await
                        .map_err(e)?;
                    return Ok(Did::Nothing);
                }
                "blocked" if blocked_long_ago => {}
                "blocked" => {
                    self.watched
                        .report(
                            w,
                            Phase::Waiting,
                            &done.id,
                            &format!(
                                "release {} was blocked ({}); tried again within {}s",
                                done.id,
                                done.reason,
                                BLOCKED_RETRY.as_secs()
                            ),
                            &[],
                        )
                        .await
                        .map_err(e)?;
                    return Ok(Did::Nothing);
                }
                _ => {
                    self.watched
                        .report(
                            w,
                            Phase::Failed,
                            &done.id,
                            &if done.reason.is_empty() {
                                format!(
                                    "release {} of {} {outcome}: a human must act (see `rampart status {}`)",
                                    done.id, p.version, done.id
                                )
                            } else {
                                format!(
                                    "release {} of {} was refused before it started: {}; a human must act",
                                    done.id, p.version, done.reason
                                )
                            },
                            &[],
                        )
                        .await
                        .map_err(e)?;
                    return Ok(Did::Nothing);
                }
            }
        }
        // This Deployment's release queued under another service (its policy's service
        // was renamed since) runs on the same canary, and no queue orders the two: the
        // new one waits for it to end (it was superseded above).
        if let Some(other) = mine
            .iter()
            .find(|s| s.initiator == own && s.service != p.service)
        {
            self.watched
                .report(
                    w,
                    Phase::Waiting,
                    &other.id,
                    &format!(
                        "release {} of this Deployment (under service `{}`, before the policy named `{}`) is ending; revision {} is released after it",
                        other.id, other.service, p.service, w.revision
                    ),
                    &[],
                )
                .await
                .map_err(e)?;
            return Ok(Did::Nothing);
        }
        let caller = Caller {
            name: initiator(w),
            role: Role::Deployer,
        };
        let body = CreateRelease {
            policy: p.text.clone(),
            version: p.version.clone(),
            stable: None,
            hotfix: None,
            workdir: None,
        };
        match submit_as(&self.app, &caller, body, true).await {
            Ok(s) => {
                self.watched
                    .report(
                        w,
                        Phase::Waiting,
                        &s.id,
                        &format!(
                            "release {} of {} (Git revision {}) queued",
                            s.id, p.version, w.revision
                        ),
                        &[],
                    )
                    .await
                    .map_err(e)?;
                Ok(Did::Started(s.id))
            }
            // This replica is no longer the leader: nothing reported; the next leader
            // asks again.
            Err(deposed) if deposed.code() == "not_leader" => Err(deposed.message().to_string()),
            Err(refused) => {
                let (phase, message) = match refused.code() {
                    "frozen" => (
                        Phase::Waiting,
                        format!(
                            "held: {}; revision {} is released once that allows it",
                            refused.message(),
                            w.revision
                        ),
                    ),
                    _ => (Phase::Failed, refused.message().to_string()),
                };
                if w.annotation(gitops::MESSAGE) != Some(message.as_str()) {
                    // Once per revision and refusal, not at every tick.
                    let record = serde_json::json!({
                        "deployment": w.key(),
                        "revision": w.revision,
                        "version": p.version,
                        "refused": refused.code(),
                        "reason": refused.message(),
                    });
                    self.note(&initiator(w), "gitops_held", None, &record).await;
                }
                self.watched
                    .report(w, phase, "", &message, &[])
                    .await
                    .map_err(e)?;
                Ok(match phase {
                    Phase::Waiting => Did::Held(message),
                    _ => Did::Invalid(message),
                })
            }
        }
    }

    /// The newest finished release of `version` of the service since the running
    /// pods' own (`released`): an older one is history, and a revision Git goes back
    /// to is released again, not taken as promoted or refused by what happened then.
    /// A submission of it that ended before its release began counts too: withdrawn
    /// by a person (`withdrawn`), or refused at its start (`blocked`, or the failure):
    /// without it, a revision whose release is refused before it starts (a canary a
    /// halted release left with users) would be queued again at every tick. A release
    /// of the service under another version naming the same template (`revision`: the
    /// policy's image pattern was edited since) is this revision's too.
    async fn finished(
        &self,
        service: &str,
        version: &str,
        revision: &str,
        released: Option<&str>,
    ) -> Result<Option<Done>, String> {
        let recent = self
            .app
            .store
            .list_releases(Some(service), FINISHED_LOOKBACK)
            .await
            .map_err(|e| e.to_string())?;
        // The newest release of the version since the running revision's own
        // promotion; a release this loop ended because Git moved on (or its Deployment
        // went) is no verdict on its version: Git returning to it releases it again.
        let own_promotion = |r: &&rampart_core::ports::ReleaseRecord| {
            r.outcome.map(|o| o.as_str()) == Some("promoted")
                && Some(r.version.as_str()) == released
        };
        let since = recent.iter().find(own_promotion).map(|r| r.created_at);
        let mut released_as = None;
        for r in recent.iter().take_while(|r| !own_promotion(r)) {
            let same = r.version == version
                || rampart_kubernetes::gitops::names_revision(&r.version, revision);
            if same && r.outcome.is_some() && !self.ended_by_the_loop(&r.id).await {
                released_as = Some(Done {
                    id: r.id.clone(),
                    outcome: r.outcome.map(|o| o.as_str()).unwrap_or("").to_string(),
                    created_at: r.created_at,
                    reason: String::new(),
                });
                break;
            }
        }
        // The newest submission of it that ended before its release began, unless one
        // that started (judged above) or one the loop withdrew came after it.
        let submissions = self
            .app
            .store
            .submissions_of(service, version, FINISHED_LOOKBACK)
            .await
            .map_err(|e| e.to_string())?;
        let mut refused = None;
        for s in submissions {
            if since.is_some_and(|at| s.created_at <= at) {
                break;
            }
            let Some(report) = s.report.as_deref().filter(|_| s.state == "done") else {
                continue;
            };
            let report: serde_json::Value = serde_json::from_str(report).unwrap_or_default();
            let started = report["timeline"].as_array().is_some_and(|t| !t.is_empty())
                || recent.iter().any(|r| r.id == s.id);
            if started {
                break;
            }
            let outcome = match report["withdrawn_by"].as_str() {
                // The loop withdrew it (Git moved on): no verdict, nor what came before.
                Some(by) if by.starts_with(INITIATOR_PREFIX) => break,
                Some(_) => "withdrawn",
                None => report["outcome"].as_str().unwrap_or("failed"),
            };
            refused = Some(Done {
                id: s.id,
                outcome: outcome.to_string(),
                created_at: s.created_at,
                reason: report["reason"].as_str().unwrap_or("").to_string(),
            });
            break;
        }
        // Whichever came last.
        Ok(match (released_as, refused) {
            (Some(r), Some(s)) if s.created_at > r.created_at => Some(s),
            (Some(r), _) => Some(r),
            (None, s) => s,
        })
    }

    /// Whether the loop itself aborted release `id` (it superseded it, or its
    /// Deployment went): an abort by its `gitops:` initiator. Unreadable: not.
    async fn ended_by_the_loop(&self, id: &str) -> bool {
        use rampart_core::release::Input;
        let Ok((_, log)) = self.app.store.load(id).await else {
            return false;
        };
        log.iter().any(|e| {
            matches!(&e.input, Input::Abort { actor, .. } if actor.starts_with(INITIATOR_PREFIX))
        })
    }

    /// Whether the release of `version` among `mine` is open and promoting: the
    /// `promoting` mark it left is then its own, in flight.
    async fn promoting(&self, mine: &[&Submission], version: &str) -> bool {
        let Some(s) = mine.iter().find(|s| s.version == version) else {
            return false;
        };
        view_of(&self.app, &s.id)
            .await
            .is_ok_and(|v| v.phase == "promoting")
    }

    /// Records what the loop decided in the audit chain (a failure to is logged: the
    /// decision stands, and the Deployment's annotations still say it).
    async fn note(
        &self,
        actor: &str,
        action: &str,
        release: Option<&str>,
        record: &serde_json::Value,
    ) {
        let now = self.app.clock.now();
        if let Err(e) = self
            .app
            .store
            .note(now, actor, action, release, &record.to_string())
            .await
        {
            tracing::error!("the audit chain did not take {action}: {e}");
        }
    }

    /// Ends a release through the API's abort: a queued one is withdrawn, a running
    /// one rolls back; the reason is in the audit trail. One already over is left.
    async fn abort(&self, s: &Submission, reason: &str) {
        let caller = Caller {
            name: s.initiator.clone(),
            role: Role::Deployer,
        };
        let body = serde_json::json!({ "reason": reason }).to_string();
        if let Err(e) = act(
            self.app.clone(),
            caller,
            s.id.clone(),
            Act::Abort,
            body.into(),
        )
        .await
        {
            tracing::info!(release = %s.id, "not aborted: {}", e.message());
        }
    }
}

/// What became of the last release of a version (see [`Watch::finished`]).
struct Done {
    id: String,
    /// `promoted`, `rolled_back`, `halted`, `escalated`, `blocked`, `withdrawn`, or
    /// `failed` (refused at its start otherwise).
    outcome: String,
    created_at: u64,
    /// Why, for one that never started.
    reason: String,
}

/// Who starts the releases of `w`: `gitops:NAMESPACE/NAME`.
fn initiator(w: &Workload) -> String {
    format!("{INITIATOR_PREFIX}{}", w.key())
}

fn is_gitops(s: &Submission) -> bool {
    s.initiator.starts_with(INITIATOR_PREFIX)
}
