//! The server's release queue: one release per service at a time, in submission order,
//! many services at once. Submissions live in the store, so a restarted server resumes
//! the releases it was running and starts the ones still queued.
//!
//! Owns which submission runs when. Running a release is `run::run_release`'s job.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_adapters::store::{StateStore, Submission};
use rampart_core::ports::{Clock, Store};

use crate::run::{Output, RunError, RunOptions, Served, run_release};

/// How often the queue looks again when it waits on something outside itself (another
/// controller's release of the same service, a failed run to retry).
const RECHECK: Duration = Duration::from_secs(1);

/// How long a release whose run failed on an internal error waits before it is tried
/// again (it stays resumable; an operator can abort it meanwhile).
const RETRY: Duration = Duration::from_secs(15);

/// The queue.
#[derive(Debug)]
pub struct Queue {
    store: Arc<StateStore>,
    state_dir: PathBuf,
    /// Services with a worker.
    busy: Mutex<HashSet<String>>,
    /// What each service's last release left serving.
    serving: crate::run::Serving,
    /// Wakes the controllers when requests are queued for their releases.
    inbox: Arc<rampart_controller::Inbox>,
    wake: Arc<tokio::sync::Notify>,
    /// The clock releases run on.
    clock: Arc<dyn Clock>,
    /// The cluster client releases on Kubernetes use instead of their kubeconfig's.
    cluster: Option<crate::dataplane::Cluster>,
}

impl Queue {
    /// A queue over the store's submissions.
    pub fn new(store: Arc<StateStore>, state_dir: PathBuf, clock: Arc<dyn Clock>) -> Arc<Queue> {
        Queue::with_cluster(store, state_dir, clock, None)
    }

    /// A queue whose releases on Kubernetes use `cluster` (`serve --kubernetes`).
    pub fn with_cluster(
        store: Arc<StateStore>,
        state_dir: PathBuf,
        clock: Arc<dyn Clock>,
        cluster: Option<crate::dataplane::Cluster>,
    ) -> Arc<Queue> {
        let inbox = rampart_controller::Inbox::start(store.clone(), clock.clone());
        Arc::new(Queue {
            cluster,
            clock,
            inbox,
            store,
            state_dir,
            busy: Mutex::new(HashSet::new()),
            serving: Default::default(),
            wake: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Closes what served releases left in this process (request-log receivers, flag
    /// endpoints) at an orderly shutdown; the services keep serving.
    pub async fn stop_serving(&self) {
        crate::run::stop_serving(&self.serving).await;
    }

    /// Takes the service for a moment (a supervisor restarting its version): no
    /// release of it starts until [`Queue::unclaim`]. False when a worker has it.
    pub fn claim(&self, service: &str) -> bool {
        self.busy
            .lock()
            .map(|mut b| b.insert(service.to_string()))
            .unwrap_or(false)
    }

    /// Gives back a service [`Queue::claim`] took.
    pub fn unclaim(&self, service: &str) {
        if let Ok(mut b) = self.busy.lock() {
            b.remove(service);
        }
    }

    /// The server's store.
    pub fn store(&self) -> &Arc<StateStore> {
        &self.store
    }

    /// The server's state directory.
    pub fn state_dir(&self) -> &std::path::Path {
        &self.state_dir
    }

    /// What wakes the queue to look at once (after a submission), for the API.
    pub fn waker(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// Runs forever: first brings every service back on the version its last release
    /// left serving, then starts a worker for every service with open submissions.
    pub async fn run(self: Arc<Self>) {
        for line in super::restore::restore(&self.store, &self.state_dir, &self.clock).await {
            eprintln!("{line}");
        }
        tokio::spawn(super::restore::supervise(self.clone(), self.clock.clone()));
        loop {
            match self.store.open_submissions().await {
                Ok(open) => {
                    for s in open {
                        let fresh = self
                            .busy
                            .lock()
                            .map(|mut b| b.insert(s.service.clone()))
                            .unwrap_or(false);
                        if fresh {
                            tokio::spawn(self.clone().work(s.service));
                        }
                    }
                }
                Err(e) => tracing::error!("the release queue cannot be read: {e}"),
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(RECHECK) => {}
            }
        }
    }

    /// The oldest open submission of a service; releases the service when none is left.
    async fn next(&self, service: &str) -> Option<Submission> {
        let open = self.store.open_submissions().await.ok()?;
        let next = open.into_iter().find(|s| s.service == service);
        let Ok(mut busy) = self.busy.lock() else {
            return None;
        };
        if next.is_none() {
            busy.remove(service);
        }
        next
    }

    /// Runs a service's submissions one after another.
    async fn work(self: Arc<Self>, service: String) {
        while let Some(next) = self.next(&service).await {
            // Another controller (a `rampart run`) may be driving a release of this
            // service in the same store: wait for it to finish.
            match self.store.active(&service).await {
                Ok(Some(active)) if active.id != next.id => {
                    tokio::time::sleep(RECHECK).await;
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(service = %service, "{e}");
                    tokio::time::sleep(RECHECK).await;
                    continue;
                }
            }
            // The server stopped after the release ended but before it noted so.
            if let Ok((record, log)) = self.store.load(&next.id).await
                && record.outcome.is_some()
            {
                let report = finished_report(&record, &log);
                if let Err(e) = self
                    .store
                    .set_submission(&next.id, "done", report.as_deref(), self.clock.now())
                    .await
                {
                    tracing::error!(release = %next.id, "{e}");
                    tokio::time::sleep(RECHECK).await;
                }
                continue;
            }
            match self.store.claim_submission(&next.id).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(release = %next.id, "{e}");
                    tokio::time::sleep(RECHECK).await;
                    continue;
                }
            }
            let report = match run_release(self.options(&next), None).await {
                Ok(report) => serde_json::to_string(&report).ok(),
                Err(RunError::Internal(e)) => {
                    tracing::error!(release = %next.id, "the release stopped on an internal error and will be resumed: {e:#}");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
                Err(e) => Some(
                    serde_json::json!({
                        "outcome": if e.exit_code() == 5 { Some("blocked") } else { None },
                        "reason": e.to_string(),
                        "decided_at_s": 0.0,
                        "release_id": next.id,
                        "service": next.service,
                        "version": next.version,
                        "exit_code": e.exit_code(),
                        "timeline": [],
                    })
                    .to_string(),
                ),
            };
            if let Err(e) = self
                .store
                .set_submission(&next.id, "done", report.as_deref(), self.clock.now())
                .await
            {
                tracing::error!(release = %next.id, "{e}");
                tokio::time::sleep(RECHECK).await;
            }
        }
    }

    fn options(&self, s: &Submission) -> RunOptions {
        RunOptions {
            policy_path: PathBuf::from(format!("release {}", s.id)),
            policy_text: s.policy.clone(),
            version: s.version.clone(),
            stable: s.stable.clone(),
            state_dir: self.state_dir.clone(),
            output: Output::Text,
            keep_running: false,
            attach: true,
            stop_after: false,
            initiator: s.initiator.clone(),
            hotfix: s.hotfix.clone(),
            metrics_listen: None,
            served: Some(Served {
                store: self.store.clone(),
                release_id: s.id.clone(),
                base_dir: PathBuf::from(&s.workdir),
                log: self.state_dir.join("logs").join(format!("{}.log", s.id)),
                serving: self.serving.clone(),
                inbox: self.inbox.clone(),
                cluster: self.cluster.clone(),
            }),
            clock: self.clock.clone(),
        }
    }
}

/// The report of a release that ended while nobody was watching, from its log (request
/// counts are those the analysis saw).
fn finished_report(
    record: &rampart_core::ports::ReleaseRecord,
    log: &[rampart_core::ports::StoredInput],
) -> Option<String> {
    let policy = rampart_core::Policy::from_stored(&record.policy).ok()?;
    let loaded = super::views::Loaded {
        record: record.clone(),
        log: log.to_vec(),
        policy,
    };
    serde_json::to_string(&loaded.finished_report()).ok()
}
