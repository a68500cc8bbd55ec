//! rampart-controller: the runtime loop around the pure state machine.
//!
//! Owns the order of operations that makes releases crash-safe: every transition is
//! persisted before its action runs; on restart the log is replayed and the release
//! resumes with [`Input::Resumed`], so no decision is made twice. It must not make
//! release decisions itself (that is `rampart_core::release::step`) nor talk to the
//! world except through the ports.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rampart_core::Millis;
use rampart_core::policy::{Gate, GateCheck, Policy};
use rampart_core::ports::{
    Clock, Deployer, GateRunner, MetricsSource, MigrationMark, Notice, Notifier, PortError,
    ReleaseRecord, Silencer, Store, StoredInput, TrafficRouter,
};
use rampart_core::release::{
    Action, AuditEvent, CheckStage, Effect, GateResult, Input, OutcomeKind, Release, SilenceOp,
    Variant, step,
};
use tokio::sync::mpsc;

/// The adapters a controller drives.
#[derive(Clone)]
pub struct Ports {
    /// Runs versions.
    pub deployer: Arc<dyn Deployer>,
    /// Splits traffic.
    pub router: Arc<dyn TrafficRouter>,
    /// Measures variants.
    pub metrics: Arc<dyn MetricsSource>,
    /// Runs gates.
    pub gates: Arc<dyn GateRunner>,
    /// Persists releases.
    pub store: Arc<dyn Store>,
    /// Tells time.
    pub clock: Arc<dyn Clock>,
    /// Tells people.
    pub notifier: Arc<dyn Notifier>,
    /// Keeps feature flags.
    pub flags: Arc<dyn rampart_core::ports::FlagStore>,
    /// Silences the release's alerts in Alertmanager; `None` when the policy asks for
    /// no silence.
    pub silencer: Option<Arc<dyn Silencer>>,
}

impl std::fmt::Debug for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ports { .. }")
    }
}

/// Sees every persisted transition (for live progress output).
pub trait Observer: Send + Sync {
    /// Called after a transition is persisted, before its action runs.
    fn on_transition(&self, input: &Input, state: &Release, events: &[AuditEvent]);
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Silent;

impl Observer for Silent {
    fn on_transition(&self, _: &Input, _: &Release, _: &[AuditEvent]) {}
}

/// Why a release could not be driven.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The store failed; state may not be recorded, so the controller stops acting.
    #[error("{0}")]
    Store(#[from] PortError),
    /// The state machine waits for nothing; a bug.
    #[error("release {0} is stuck in phase {1}: nothing pending and no timer")]
    Stuck(String, &'static str),
}

/// Drives releases of one policy.
pub struct Controller {
    policy: Policy,
    ports: Ports,
    observer: Arc<dyn Observer>,
    /// Where each variant was last deployed, for checks against the new version.
    endpoints: Mutex<HashMap<Variant, Vec<SocketAddr>>>,
    /// The migrations this release ships, classified before the release starts.
    migrations: Option<MigrationPlan>,
    /// Who starts releases through this controller.
    initiator: String,
    /// Why a release started during a freeze is a hotfix, if it is one.
    hotfix: Option<String>,
    /// Notices waiting for the delivery task, in order, while a release is driven.
    outbox: Mutex<Option<mpsc::UnboundedSender<Notice>>>,
    /// Shared with the process's other controllers: wakes this one when a request is
    /// queued for its release. Without it, the controller polls the store itself.
    inbox: Option<Arc<Inbox>>,
}

/// Wakes the controllers of one process when requests are queued for their releases,
/// with one store query per poll for all of them (polling once per release does not
/// scale: ten thousand releases made forty thousand queries a second).
#[derive(Debug, Default)]
pub struct Inbox {
    waiting: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
}

impl Inbox {
    /// An inbox polling `store` every quarter second, for as long as it is in use.
    pub fn start(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Arc<Inbox> {
        let inbox = Arc::new(Inbox::default());
        let weak = Arc::downgrade(&inbox);
        tokio::spawn(async move {
            loop {
                clock.sleep_until(clock.now() + COMMAND_POLL_MS).await;
                let Some(inbox) = weak.upgrade() else {
                    return;
                };
                match store.releases_with_requests().await {
                    Ok(ids) => {
                        if let Ok(waiting) = inbox.waiting.lock() {
                            for id in ids {
                                if let Some(n) = waiting.get(&id) {
                                    n.notify_one();
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!("operator requests cannot be read: {e}"),
                }
            }
        });
        inbox
    }

    fn register(&self, id: &str) -> Option<Arc<tokio::sync::Notify>> {
        let mut waiting = self.waiting.lock().ok()?;
        Some(waiting.entry(id.to_string()).or_default().clone())
    }

    fn unregister(&self, id: &str) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.remove(id);
        }
    }
}

/// How long queued notices get to go out after a release ends.
const NOTICE_FLUSH: std::time::Duration = std::time::Duration::from_secs(30);

/// How long the silence's last answers (its expiry) get after a release ends, on the
/// controller's clock, before the release is recorded finished without them.
const SILENCE_FLUSH_MS: Millis = 30_000;

/// Whether the action in flight must run to its end (`Some(true)`): one that starts
/// processes (dropped half-way, it could leave one nobody tracks) or applies migrations
/// (a half-applied migration is worse than a late abort).
fn action_kind<F>(inflight: &Option<(Action, F)>) -> Option<bool> {
    inflight.as_ref().map(|(a, _)| {
        matches!(
            a,
            Action::Deploy { .. } | Action::Scale { .. } | Action::RunMigrations
        )
    })
}

/// The release's migration files, in the order they apply, and their class (decided in
/// core's admission).
pub use rampart_core::admission::MigrationPlan;

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("service", &self.policy.service)
            .finish()
    }
}

/// A release being driven: its id, state, the next log position, and where its
/// silence's operations go (to run beside the pending action).
struct Run {
    id: String,
    state: Release,
    seq: u64,
    silences: Option<mpsc::UnboundedSender<SilenceOp>>,
    /// Resumed mid-step: the window the resume opens again counts from the last
    /// measurement an earlier controller took, so that what the versions served while
    /// none ran is judged (a data plane that kept running still has it).
    carry: bool,
}

/// How often the store is asked for operator requests.
const COMMAND_POLL_MS: u64 = 250;

/// How many times a traffic change is tried before it counts as failed.
const WEIGHT_ATTEMPTS: u32 = 3;

impl Controller {
    /// A controller for `policy`.
    pub fn new(policy: Policy, ports: Ports, observer: Arc<dyn Observer>) -> Self {
        Controller {
            policy,
            ports,
            observer,
            endpoints: Mutex::new(HashMap::new()),
            migrations: None,
            initiator: String::new(),
            hotfix: None,
            outbox: Mutex::new(None),
            inbox: None,
        }
    }

    /// Marks releases started by this controller as hotfixes during a freeze: each
    /// waits for an approval before anything runs.
    pub fn with_hotfix(mut self, why: &str) -> Self {
        self.hotfix = Some(why.to_string());
        self
    }

    /// Sets who starts releases (an approver must be someone else).
    pub fn with_initiator(mut self, who: &str) -> Self {
        self.initiator = who.to_string();
        self
    }

    /// Sets the migrations this release ships.
    pub fn with_migrations(mut self, plan: MigrationPlan) -> Self {
        self.migrations = Some(plan);
        self
    }

    /// Shares `inbox` with the process's other controllers instead of polling alone.
    pub fn with_inbox(mut self, inbox: Arc<Inbox>) -> Self {
        self.inbox = Some(inbox);
        self
    }

    /// Records a new release (fails if the service has an unfinished one).
    pub async fn create(
        &self,
        id: &str,
        version: &str,
        policy_text: &str,
    ) -> Result<(), ControllerError> {
        let record = ReleaseRecord {
            id: id.to_string(),
            service: self.policy.service.clone(),
            version: version.to_string(),
            policy: policy_text.to_string(),
            created_at: self.ports.clock.now(),
            outcome: None,
        };
        self.ports.store.create(&record).await?;
        Ok(())
    }

    /// Drives release `id` to its end: starts it if its log is empty, resumes it
    /// otherwise. `stable` is used only when starting. External inputs (an operator's
    /// abort) arrive on `commands`.
    ///
    /// Guarantees: each input is durably appended before the action it leads to runs;
    /// if the store refuses an append, the controller stops without acting on it.
    pub async fn drive(
        &self,
        id: &str,
        stable: Option<String>,
        commands: Option<mpsc::UnboundedReceiver<Input>>,
    ) -> Result<Release, ControllerError> {
        use tracing::Instrument;
        // Every log line of the release, adapters' included, carries its id.
        let span = tracing::info_span!("release", release = %id, service = %self.policy.service);
        // Notices go out from their own task, in order: a slow or dead webhook must
        // never hold up a rollback.
        let (tx, mut rx) = mpsc::unbounded_channel::<Notice>();
        let notifier = self.ports.notifier.clone();
        let delivery = tokio::spawn(
            async move {
                while let Some(notice) = rx.recv().await {
                    notifier.notify(&notice).await;
                }
            }
            .instrument(span.clone()),
        );
        if let Ok(mut outbox) = self.outbox.lock() {
            *outbox = Some(tx);
        }
        let result = self
            .drive_in_span(id, stable, commands)
            .instrument(span)
            .await;
        if let Ok(mut outbox) = self.outbox.lock() {
            outbox.take();
        }
        if let Some(inbox) = &self.inbox {
            inbox.unregister(id);
        }
        // The last notices (the outcome) go out before the release returns, within a
        // bound.
        if tokio::time::timeout(NOTICE_FLUSH, delivery).await.is_err() {
            tracing::warn!(release = %id, "notices still undelivered after 30s were dropped");
        }
        result
    }

    async fn drive_in_span(
        &self,
        id: &str,
        stable: Option<String>,
        mut commands: Option<mpsc::UnboundedReceiver<Input>>,
    ) -> Result<Release, ControllerError> {
        let (record, log) = self.ports.store.load(id).await?;
        if !log.is_empty() {
            // A resume acts on the log: a forged or edited entry is refused, not obeyed.
            self.ports.store.check_log(id).await?;
        }
        // A log that replays differently under this policy and this rampart (edited or
        // upgraded while the release ran) does not rebuild what happened: the release
        // halts where the log left it instead of acting on a state it never had.
        let diverged = rampart_core::release::divergence(&self.policy, &log);
        let (silences, answers) = self.silence_worker(id, &record.version);
        let mut answers = Some(answers);
        let mut run = Run {
            id: id.to_string(),
            state: Release::replay(&self.policy, log.iter().map(|e| (&e.input, e.at))),
            seq: log.len() as u64,
            silences: Some(silences),
            carry: false,
        };
        if log.is_empty() {
            let automatic_rollbacks = match self.policy.rollback.max_automatic {
                Some(cap) => {
                    let window = u64::try_from(cap.per.as_millis()).unwrap_or(u64::MAX);
                    let since = self.ports.clock.now().saturating_sub(window);
                    self.ports
                        .store
                        .automatic_rollbacks(&self.policy.service, since)
                        .await?
                }
                None => 0,
            };
            let start = Input::Start {
                release_id: id.to_string(),
                version: record.version.clone(),
                stable,
                automatic_rollbacks,
                initiator: self.initiator.clone(),
                planned_migrations: self.migrations.as_ref().map(|m| m.class),
                hotfix: self.hotfix.clone(),
            };
            self.feed(&mut run, start).await?;
        } else if let Some(diverged) = diverged {
            tracing::error!(release = %id, seq = diverged.seq, "{}", diverged.detail);
            // Rebuilt from the entries before the one that replays differently (and
            // the start), as every later replay of the log will be.
            let kept = diverged.kept().min(log.len());
            run.state = Release::replay(&self.policy, log[..kept].iter().map(|e| (&e.input, e.at)));
            self.feed(&mut run, diverged.input()).await?;
        } else {
            // A release that ended but was not recorded finished may still hold its
            // silence: resuming it expires that (and changes nothing else). Its end
            // may not have been told: told again.
            if run.state.phase.is_terminal() {
                self.notify_end_again(&run, &log).await;
            }
            self.feed(&mut run, Input::Resumed).await?;
        }

        // The action being performed. An operator's request that leaves it pending (a
        // pause, a refused approval) does not restart it; one that replaces it (an abort)
        // drops it.
        type Work<'w> = std::pin::Pin<Box<dyn std::future::Future<Output = Input> + Send + 'w>>;
        let mut inflight: Option<(Action, Work<'_>)> = None;
        while !run.state.phase.is_terminal() {
            // The silence is renewed on time whatever the release waits for, and its
            // answers are taken as they come: neither changes the pending action.
            let renewal = run.state.silence_renewal_at();
            let input = if let Some(action) = run.state.pending.clone() {
                if inflight.as_ref().is_none_or(|(a, _)| *a != action) {
                    // Before starting a version (which is not interrupted), apply what
                    // operators asked meanwhile.
                    if matches!(action, Action::Deploy { .. } | Action::Scale { .. })
                        && let Some((cmd, queued)) =
                            self.waiting_command(&run.id, &mut commands).await?
                    {
                        self.feed_answering(&mut run, cmd, queued).await?;
                        continue;
                    }
                    // A replica that may no longer act (its lease lapsed since it
                    // recorded this action) starts nothing: the next leader does.
                    self.ports.store.may_act()?;
                    let (owned, id) = (action.clone(), run.id.clone());
                    inflight = Some((
                        action,
                        Box::pin(async move { self.execute(&owned, &id).await }),
                    ));
                }
                // Starting a version or applying migrations is not interrupted.
                // Requests wait until it is done (at most its readiness or migration
                // timeout).
                let interruptible = !matches!(action_kind(&inflight), Some(true));
                let (next, done) = match inflight.as_mut() {
                    Some((_, work)) => tokio::select! {
                        input = work => (Some(input), true),
                        Some(answer) = recv(&mut answers) => (Some(answer), false),
                        () = at(&*self.ports.clock, renewal) => (Some(Input::Tick), false),
                        Some(cmd) = recv(&mut commands), if interruptible => (Some(cmd), false),
                        () = self.request_signal(&run.id), if interruptible => (None, false),
                    },
                    None => return Err(ControllerError::Stuck(run.id, run.state.phase.as_str())),
                };
                if done {
                    inflight = None;
                }
                // Read outside the select (a request stays queued until the input it
                // becomes is recorded, so nothing is lost there either way).
                match next {
                    Some(input) => (input, None),
                    None => match self.take_queued(&run.id).await? {
                        Some(queued) => queued,
                        None => continue,
                    },
                }
            } else if let Some(wake) = run.state.wake_at() {
                inflight = None;
                let sleep = self
                    .ports
                    .clock
                    .sleep_until(renewal.map_or(wake, |r| r.min(wake)));
                let next = tokio::select! {
                    () = sleep => Some(Input::Tick),
                    Some(answer) = recv(&mut answers) => Some(answer),
                    Some(cmd) = recv(&mut commands) => Some(cmd),
                    () = self.request_signal(&run.id) => None,
                };
                match next {
                    Some(input) => (input, None),
                    None => match self.take_queued(&run.id).await? {
                        Some(queued) => queued,
                        None => continue,
                    },
                }
            } else {
                return Err(ControllerError::Stuck(run.id, run.state.phase.as_str()));
            };
            let (input, queued) = input;
            self.feed_answering(&mut run, input, queued).await?;
        }
        // Over: the silence's last operations (the expiry the end asked for) run out
        // and their answers are recorded before the release is marked finished.
        run.silences = None;
        if let Some(mut answers) = answers.take() {
            let deadline = self.ports.clock.now().saturating_add(SILENCE_FLUSH_MS);
            while let Some(answer) = tokio::select! {
                answer = answers.recv() => answer,
                () = self.ports.clock.sleep_until(deadline) => None,
            } {
                self.feed(&mut run, answer).await?;
            }
        }
        if let Some(outcome) = run.state.outcome() {
            let serving = match outcome {
                OutcomeKind::Promoted => Some(run.state.version.as_str()),
                OutcomeKind::RolledBack => run.state.stable.as_deref(),
                _ => None,
            };
            let automatic = run.state.decision.as_ref().is_some_and(|d| {
                d.kind == rampart_core::release::DecisionKind::Rollback && d.by == "rampart"
            });
            self.ports
                .store
                .finish(&run.id, outcome, serving, automatic)
                .await?;
        }
        Ok(run.state)
    }

    async fn run_migrations(&self, release_id: &str) -> Input {
        use rampart_core::migrations::Class;
        let (Some(spec), Some(plan)) = (&self.policy.migrations, &self.migrations) else {
            return Input::Migrated {
                ok: true,
                class: Class::Expand,
                detail: "no migrations shipped".into(),
                annotations: Vec::new(),
            };
        };
        let per_file = spec.command.iter().any(|a| a.contains("{file}"));
        let runs: Vec<Vec<String>> = if plan.files.is_empty() {
            Vec::new()
        } else if per_file {
            plan.files
                .iter()
                .map(|f| {
                    spec.command
                        .iter()
                        .map(|a| a.replace("{file}", &f.display().to_string()))
                        .collect()
                })
                .collect()
        } else {
            vec![spec.command.clone()]
        };
        let failed = |detail: String| Input::Migrated {
            ok: false,
            class: plan.class,
            detail,
            annotations: plan.annotations.clone(),
        };
        // Run file by file, rampart is the ledger of what was applied: each file is
        // marked started, then applied, in the audit trail before the next. Taken up
        // again after a crash, the files applied are skipped, and a file that started
        // and was never marked applied is not run again: whether it changed the
        // database is unknown, and running it twice may corrupt data. (A single
        // command is the migration tool's own run: it records what it applied.)
        let marks = if per_file {
            match self.ports.store.migration_marks(release_id).await {
                Ok(marks) => marks,
                Err(e) => {
                    return failed(format!(
                        "could not read which migration files were applied: {}; none was run",
                        e.0
                    ));
                }
            }
        } else {
            Vec::new()
        };
        let keys = ledger_keys(&plan.files);
        let mut applied = Vec::new();
        let mut skipped = 0;
        for (i, argv) in runs.iter().enumerate() {
            let file = keys.get(i).filter(|_| per_file).cloned();
            if let Some(file) = &file {
                let marked = |m| marks.iter().any(|(f, k)| f == file && *k == m);
                if marked(MigrationMark::Applied) {
                    skipped += 1;
                    applied.push(file.clone());
                    continue;
                }
                if marked(MigrationMark::Started) {
                    let before = if applied.is_empty() {
                        "none applied".to_string()
                    } else {
                        format!("{} applied ({})", applied.len(), applied.join(", "))
                    };
                    return failed(format!(
                        "{before}, then the controller stopped while {file} ran: whether it changed the database is unknown, so rampart does not run it again. Check the database and finish or undo {file} by hand; a new release runs every file again, so make them safe to re-run (`IF NOT EXISTS`) or remove what is applied from its directory"
                    ));
                }
                let now = self.ports.clock.now();
                if let Err(e) = self
                    .ports
                    .store
                    .mark_migration(release_id, file, MigrationMark::Started, now)
                    .await
                {
                    return failed(format!(
                        "{} applied, then {file} was not run: recording its start failed: {}",
                        applied.len(),
                        e.0
                    ));
                }
            }
            let gate = Gate {
                name: format!("migration {}", i + 1),
                check: GateCheck::Command {
                    run: argv.clone(),
                    timeout: spec.timeout,
                },
            };
            let result = self.ports.gates.run_alone(&gate).await;
            if !result.ok {
                return failed(format!("{} applied, then {}", applied.len(), result.detail));
            }
            if let Some(file) = &file {
                let now = self.ports.clock.now();
                if let Err(e) = self
                    .ports
                    .store
                    .mark_migration(release_id, file, MigrationMark::Applied, now)
                    .await
                {
                    return failed(format!(
                        "{file} was applied, but recording it failed: {}; the rest were not run",
                        e.0
                    ));
                }
            }
            applied.push(file.unwrap_or_else(|| "all".to_string()));
        }
        Input::Migrated {
            ok: true,
            class: plan.class,
            detail: if applied.is_empty() {
                "no migration files for this version".into()
            } else {
                let files = plan
                    .files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                let before = if skipped > 0 {
                    format!(" ({skipped} applied before the controller restarted, not run again)")
                } else {
                    String::new()
                };
                format!("{} file(s): {files}{before}", plan.files.len())
            },
            annotations: plan.annotations.clone(),
        }
    }

    /// Resolves when an operator request may be queued in the store for this release
    /// (`rampart rollback`, `approve`, the API): when the inbox says so, or every
    /// quarter second without one. Takes nothing, so it is safe to drop.
    async fn request_signal(&self, id: &str) {
        match self.inbox.as_ref().and_then(|i| i.register(id)) {
            Some(n) => n.notified().await,
            None => {
                let next = self.ports.clock.now() + COMMAND_POLL_MS;
                self.ports.clock.sleep_until(next).await;
            }
        }
    }

    /// The oldest operator request queued in the store for this release, as the input
    /// it becomes, with its queue id: it stays queued until that input is recorded.
    async fn take_queued(&self, id: &str) -> Result<Option<(Input, Option<u64>)>, ControllerError> {
        let next = self.ports.store.next_command(id).await?;
        Ok(next.map(|(queued, cmd)| (cmd.kind.input(&cmd), Some(queued))))
    }

    /// A request already waiting (from the channel or the store), without waiting.
    async fn waiting_command(
        &self,
        id: &str,
        commands: &mut Option<mpsc::UnboundedReceiver<Input>>,
    ) -> Result<Option<(Input, Option<u64>)>, ControllerError> {
        if let Some(rx) = commands.as_mut()
            && let Ok(cmd) = rx.try_recv()
        {
            return Ok(Some((cmd, None)));
        }
        self.take_queued(id).await
    }

    /// Applies one input: step, persist, observe, notify.
    async fn feed(&self, run: &mut Run, input: Input) -> Result<(), ControllerError> {
        self.feed_answering(run, input, None).await
    }

    /// [`Controller::feed`] of the input queued request `queued` became: the request is
    /// marked answered with the input's record, in one write (or dropped, when the
    /// input changes nothing).
    async fn feed_answering(
        &self,
        run: &mut Run,
        mut input: Input,
        queued: Option<u64>,
    ) -> Result<(), ControllerError> {
        // A promotion is judged on the operator's freeze in force when it is taken,
        // not only when it was asked for: a freeze may have begun while it waited.
        if let Input::Promote { frozen, .. } = &mut input {
            *frozen = match self.ports.store.freeze(&self.policy.service).await {
                Ok(f) => f.map(|f| format!("by {}: {}", f.actor, f.reason)),
                // Whether a freeze is in force cannot be told: refused, never guessed.
                Err(e) => Some(format!("the freeze could not be read: {}", e.0)),
            };
        }
        let now = self.ports.clock.now();
        let t = step(&self.policy, &run.state, &input, now);
        if t.is_noop(&run.state) {
            if let Some(queued) = queued {
                self.ports.store.drop_command(&run.id, queued).await?;
            }
            return Ok(());
        }
        if matches!(input, Input::Resumed) {
            // Mid-step only: between steps (after an approval, or once the next
            // step was decided) the window is the next step's, fresh.
            run.carry = run.state.phase == rampart_core::release::Phase::Progressing
                && run.state.step_started_at.is_some();
        }
        let entry = StoredInput {
            seq: run.seq,
            at: now,
            input,
            events: t.events.clone(),
        };
        match queued {
            Some(queued) => {
                self.ports
                    .store
                    .append_answering(&run.id, &entry, queued)
                    .await?
            }
            None => self.ports.store.append(&run.id, &entry).await?,
        }
        let input = entry.input;
        run.seq += 1;
        let opened = t.state.opened_window(&run.state);
        let step = run.state.step;
        run.state = t.state;
        // The carried window is the resumed step's own, or none.
        if run.state.phase != rampart_core::release::Phase::Progressing || run.state.step != step {
            run.carry = false;
        }
        if opened {
            if std::mem::take(&mut run.carry) {
                self.ports.metrics.resume_window(now).await;
            } else {
                // Counted before now (an approval wait, another weight) is no window's.
                self.ports.metrics.open_window(now).await;
            }
        }
        for e in &t.events {
            tracing::info!(release = %run.id, kind = %e.kind, weight = %e.weight, "{}", e.message);
        }
        self.observer.on_transition(&input, &run.state, &t.events);
        self.send_notices(run, &run.state, &t.effects, now).await;
        for effect in &t.effects {
            if let (Effect::Silence(op), Some(silences)) = (effect, &run.silences) {
                let _ = silences.send(op.clone());
            }
        }
        Ok(())
    }

    /// Hands on the notices among `effects`, of the transition logged at `at` that
    /// left the release in `state`. A notice is dated when its transition was logged,
    /// so one sent again after a crash has the same id (receivers drop it).
    async fn send_notices(&self, run: &Run, state: &Release, effects: &[Effect], at: Millis) {
        for effect in effects {
            let Effect::Notify {
                kind,
                page,
                message,
                instead,
            } = effect
            else {
                continue;
            };
            let notice = Notice {
                kind: *kind,
                page: *page,
                service: self.policy.service.clone(),
                release: run.id.clone(),
                version: state.version.clone(),
                stable: state.stable.clone(),
                weight: state.weight,
                message: message.clone(),
                instead: instead.clone(),
                at,
            };
            let queued = self
                .outbox
                .lock()
                .ok()
                .and_then(|o| o.as_ref().map(|tx| tx.send(notice.clone()).is_ok()))
                .unwrap_or(false);
            if !queued {
                self.ports.notifier.notify(&notice).await;
            }
        }
    }

    /// The notices of the transition that ended a release taken up again before it
    /// was recorded finished: the controller that logged the end may have died before
    /// they went out (a halt nobody was paged about). Sent again, with their ids.
    async fn notify_end_again(&self, run: &Run, log: &[StoredInput]) {
        let Some((before, n)) =
            Release::before_end(&self.policy, log.iter().map(|e| (&e.input, e.at)))
        else {
            return;
        };
        let last = &log[n];
        let t = step(&self.policy, &before, &last.input, last.at);
        if t.state.phase.is_terminal() {
            self.send_notices(run, &t.state, &t.effects, last.at).await;
        }
    }

    /// Starts the task that performs the release's silence operations, in order, beside
    /// whatever the release does: it takes operations and gives back their answers, and
    /// ends once the operations' sender is dropped and the last one is answered.
    fn silence_worker(
        &self,
        release: &str,
        version: &str,
    ) -> (
        mpsc::UnboundedSender<SilenceOp>,
        mpsc::UnboundedReceiver<Input>,
    ) {
        use tracing::Instrument;
        let (ops, mut todo) = mpsc::unbounded_channel::<SilenceOp>();
        let (done, answers) = mpsc::unbounded_channel::<Input>();
        let silencer = self.ports.silencer.clone();
        let store = self.ports.store.clone();
        let (release, version) = (release.to_string(), version.to_string());
        tokio::spawn(
            async move {
                while let Some(op) = todo.recv().await {
                    // A late expiry must not drop the silence the next leader holds.
                    if store.may_act().is_err() {
                        return;
                    }
                    let answer = silence(silencer.as_deref(), &release, &version, op).await;
                    if done.send(answer).is_err() {
                        return;
                    }
                }
            }
            .in_current_span(),
        );
        (ops, answers)
    }

    /// Puts a deployment's endpoints in rotation, then takes the replicas it retired
    /// (beyond the count, or of another version) out of it: out of rotation first,
    /// then drained, then stopped, so that no request is cut off. Returns the detail.
    async fn in_rotation(
        &self,
        variant: Variant,
        d: rampart_core::ports::Deployment,
    ) -> Result<String, PortError> {
        let p = &self.ports;
        if let Ok(mut known) = self.endpoints.lock() {
            known.insert(variant, d.endpoints.clone());
        }
        p.router.set_backends(variant, &d.endpoints).await?;
        let mut detail = d.detail;
        if !d.retired.is_empty() {
            if let Err(e) = p
                .router
                .drain_endpoints(&d.retired, self.policy.rollback.drain)
                .await
            {
                detail.push_str(&format!("; {e}"));
            }
            // In rotation already: a replica that would not stop is said, not a
            // failed deploy.
            let kept = u32::try_from(d.endpoints.len()).unwrap_or(u32::MAX);
            match p.deployer.trim(variant, kept).await {
                Ok(trimmed) => detail.push_str(&format!("; {trimmed}")),
                Err(e) => detail.push_str(&format!("; retired replicas not stopped: {e}")),
            }
        }
        Ok(detail)
    }

    /// Performs one action and turns its result into the answering input.
    async fn execute(&self, action: &Action, release_id: &str) -> Input {
        let p = &self.ports;
        match action {
            Action::FlagsOff { flags } => {
                // Off for everyone outside the allowlists, one flag at a time. Each
                // is tried, whatever became of the one before (a kill switch left on
                // because another could not be changed helps nobody); any failure is
                // reported and the state machine moves on to level 2.
                let mut failed = Vec::new();
                for name in flags {
                    let change = rampart_core::ports::FlagChange {
                        name: name.clone(),
                        ramp: Some(rampart_core::Weight::ZERO),
                        default: Some(false),
                        actor: "rampart".into(),
                        reason: "rollback level 1: flags off".into(),
                        at: p.clock.now(),
                    };
                    if let Err(e) = p.flags.set_flag(&self.policy.service, &change).await {
                        failed.push(format!("{name}: {}", e.0));
                    }
                }
                if failed.is_empty() {
                    Input::FlagsOff {
                        ok: true,
                        detail: format!("{} off", flags.join(", ")),
                    }
                } else {
                    Input::FlagsOff {
                        ok: false,
                        detail: failed.join("; "),
                    }
                }
            }
            Action::RunGates => {
                let mut results = Vec::new();
                for gate in &self.policy.gates.pre {
                    results.push(p.gates.run(gate).await);
                }
                // The metrics providers are gates too: a source that cannot read
                // would otherwise be found out mid-release, as no data.
                results.extend(p.metrics.check().await);
                Input::GatesChecked { results }
            }
            Action::Deploy { variant, version } => {
                let deployed = match p.deployer.deploy(*variant, version).await {
                    Ok(d) => self.in_rotation(*variant, d).await,
                    Err(e) => Err(e),
                };
                match deployed {
                    Ok(detail) => Input::Deployed {
                        variant: *variant,
                        ok: true,
                        detail,
                    },
                    Err(e) => Input::Deployed {
                        variant: *variant,
                        ok: false,
                        detail: e.0,
                    },
                }
            }
            Action::SetWeight { weight, matches } => {
                let mut last = String::new();
                for attempt in 1..=WEIGHT_ATTEMPTS {
                    match p.router.set_weight(*weight, matches).await {
                        Ok(actual) if actual == *weight => {
                            return Input::TrafficSet { weight: actual };
                        }
                        Ok(actual) => {
                            last = format!("router reports {actual} after setting {weight}")
                        }
                        Err(e) => last = e.0,
                    }
                    tracing::warn!(attempt, error = %last, "setting the canary weight failed");
                    let retry_at = p.clock.now() + 200 * u64::from(attempt);
                    p.clock.sleep_until(retry_at).await;
                }
                Input::TrafficFailed { detail: last }
            }
            Action::Measure(window) => match p.metrics.measure(window).await {
                Ok(sample) => Input::Measured { sample },
                Err(e) => Input::MeasureFailed { detail: e.0 },
            },
            Action::Stop { variant } => {
                let mut notes = Vec::new();
                if let Err(e) = p.router.drain(*variant, self.policy.rollback.drain).await {
                    notes.push(e.0);
                }
                let stopped = p.deployer.stop(*variant).await;
                let _ = p.router.set_backends(*variant, &[]).await;
                match stopped {
                    Ok(detail) => {
                        notes.push(detail);
                        Input::Stopped {
                            variant: *variant,
                            ok: true,
                            detail: notes.join("; "),
                        }
                    }
                    Err(e) => {
                        notes.push(e.0);
                        Input::Stopped {
                            variant: *variant,
                            ok: false,
                            detail: notes.join("; "),
                        }
                    }
                }
            }
            Action::Scale {
                variant,
                version,
                replicas,
            } => {
                let scaled = match p.deployer.scale(*variant, version, *replicas).await {
                    Ok(d) => self.in_rotation(*variant, d).await,
                    Err(e) => Err(e),
                };
                match scaled {
                    Ok(detail) => Input::Scaled {
                        variant: *variant,
                        replicas: *replicas,
                        ok: true,
                        detail,
                    },
                    Err(e) => Input::Scaled {
                        variant: *variant,
                        replicas: *replicas,
                        ok: false,
                        detail: e.0,
                    },
                }
            }
            Action::RunMigrations => self.run_migrations(release_id).await,
            Action::RunChecks { stage } => {
                let checks: &[Gate] = match stage {
                    CheckStage::Preview => self.policy.strategy.preview(),
                    CheckStage::PostRelease => self
                        .policy
                        .post_release
                        .as_ref()
                        .map_or(&[], |p| p.checks.as_slice()),
                };
                // The new version's processes: a flag release's are stable's own.
                let serving = if self.policy.strategy.flag_only() {
                    Variant::Stable
                } else {
                    Variant::Canary
                };
                let replicas: Vec<String> = self
                    .endpoints
                    .lock()
                    .ok()
                    .and_then(|e| e.get(&serving).cloned())
                    .unwrap_or_default()
                    .iter()
                    .map(|a| format!("http://{a}"))
                    .collect();
                let base = replicas.first();
                let mut results = Vec::new();
                for check in checks {
                    results.push(match base {
                        // An HTTP check on the new version asks every replica (a probe
                        // is cheap, and one bad replica serves its share of users); a
                        // command runs once, on the first (`{url}`).
                        Some(_) if matches!(check.check, GateCheck::Http { .. }) => {
                            on_every(&p.gates, check, &replicas).await
                        }
                        Some(base) => p.gates.run(&on_target(check, base)).await,
                        // A deployer may report no address (Kubernetes: pods are reached
                        // through Services); a check that names its own URL still runs.
                        None if !needs_target(check) => p.gates.run(check).await,
                        None => GateResult {
                            name: check.name.clone(),
                            ok: false,
                            detail: "the new version reports no address rampart can reach (a Kubernetes deployer reports none), so a check on `{url}` or a bare path cannot run; give the check an absolute URL".into(),
                        },
                    });
                }
                Input::ChecksDone {
                    stage: *stage,
                    results,
                }
            }
            Action::VerifyStable => {
                match p
                    .deployer
                    .verify(Variant::Stable, self.policy.rollback.verify_timeout)
                    .await
                {
                    Ok(detail) => Input::StableVerified {
                        healthy: true,
                        detail,
                    },
                    Err(e) => Input::StableVerified {
                        healthy: false,
                        detail: e.0,
                    },
                }
            }
        }
    }
}

/// Whether a check only makes sense on the new version's own address.
fn needs_target(check: &Gate) -> bool {
    match &check.check {
        GateCheck::Http { url, .. } => url.starts_with('/') || url.contains("{url}"),
        GateCheck::Command { run, .. } => run.iter().any(|a| a.contains("{url}")),
        _ => false,
    }
}

/// A check aimed at the new version: a path becomes a URL on its address, and `{url}`
/// in a command becomes its base URL.
/// `check` run on each of `replicas` (base URLs), in turn: it passes when it passes on
/// every one; the first that fails is reported, named.
async fn on_every(
    gates: &Arc<dyn rampart_core::ports::GateRunner>,
    check: &Gate,
    replicas: &[String],
) -> GateResult {
    let mut first = None;
    for (i, base) in replicas.iter().enumerate() {
        let result = gates.run(&on_target(check, base)).await;
        if !result.ok {
            return GateResult {
                detail: if replicas.len() > 1 {
                    format!(
                        "replica {} of {} ({base}): {}",
                        i + 1,
                        replicas.len(),
                        result.detail
                    )
                } else {
                    result.detail
                },
                ..result
            };
        }
        first.get_or_insert(result);
    }
    first.unwrap_or_else(|| GateResult {
        name: check.name.clone(),
        ok: false,
        detail: "no replica to check".into(),
    })
}

fn on_target(check: &Gate, base: &str) -> Gate {
    let check_on = match &check.check {
        GateCheck::Http {
            url,
            status,
            timeout,
        } => GateCheck::Http {
            url: if url.starts_with('/') {
                format!("{base}{url}")
            } else {
                url.replace("{url}", base)
            },
            status: *status,
            timeout: *timeout,
        },
        GateCheck::Command { run, timeout } => GateCheck::Command {
            run: run.iter().map(|a| a.replace("{url}", base)).collect(),
            timeout: *timeout,
        },
        other => other.clone(),
    };
    Gate {
        name: check.name.clone(),
        check: check_on,
    }
}

/// Performs one silence operation and turns its result into the answering input.
async fn silence(
    silencer: Option<&dyn Silencer>,
    release: &str,
    version: &str,
    op: SilenceOp,
) -> Input {
    let Some(silencer) = silencer else {
        return Input::SilenceFailed {
            op,
            detail: "no Alertmanager silencer is wired to this controller".into(),
        };
    };
    let done = match &op {
        SilenceOp::Hold { from, until } => silencer
            .hold(release, version, *from, *until)
            .await
            .map(|id| Input::Silenced { id, until: *until }),
        SilenceOp::Expire => silencer
            .expire(release)
            .await
            .map(|()| Input::SilenceExpired),
    };
    done.unwrap_or_else(|e| Input::SilenceFailed { op, detail: e.0 })
}

/// Resolves at `at` on `clock`; without a time, never.
async fn at(clock: &dyn Clock, at: Option<Millis>) {
    match at {
        Some(t) => clock.sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Receives from an optional channel; a closed or absent channel never resolves.
async fn recv(commands: &mut Option<mpsc::UnboundedReceiver<Input>>) -> Option<Input> {
    match commands {
        Some(rx) => match rx.recv().await {
            Some(cmd) => Some(cmd),
            None => {
                *commands = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// The names migration files go by in the ledger: their paths below the directory
/// they share, so that a release taken up again finds its marks however its policy's
/// path was spelled (`-f deploy/rampart.yaml` or `-f rampart.yaml` from `deploy/`).
fn ledger_keys(files: &[std::path::PathBuf]) -> Vec<String> {
    let mut common: Option<std::path::PathBuf> = None;
    for f in files {
        let parent = f
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        common = Some(match common {
            None => parent,
            Some(c) => c
                .ancestors()
                .find(|a| parent.starts_with(a))
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default(),
        });
    }
    let common = common.unwrap_or_default();
    files
        .iter()
        .map(|f| f.strip_prefix(&common).unwrap_or(f).display().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::ledger_keys;
    use std::path::PathBuf;

    fn keys(files: &[&str]) -> Vec<String> {
        ledger_keys(&files.iter().map(PathBuf::from).collect::<Vec<_>>())
    }

    #[test]
    fn ledger_keys_are_paths_below_the_shared_directory() {
        assert_eq!(
            keys(&["deploy/m/v2/001.sql", "deploy/m/v2/sub/002.sql"]),
            ["001.sql", "sub/002.sql"]
        );
        assert_eq!(
            keys(&[
                "/srv/app/deploy/m/v2/001.sql",
                "/srv/app/deploy/m/v2/sub/002.sql"
            ]),
            ["001.sql", "sub/002.sql"]
        );
        assert_eq!(
            keys(&["m/a/001.sql", "m/b/001.sql"]),
            ["a/001.sql", "b/001.sql"]
        );
        assert_eq!(keys(&["only.sql"]), ["only.sql"]);
        assert!(keys(&[]).is_empty());
    }
}
