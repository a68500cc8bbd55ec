//! The REST API's handlers and its errors.
//!
//! Owns request validation, the role check of each route, and the mapping of store
//! results to answers. Operator actions become requests queued in the store, where the
//! controller driving the release (this server's or a `rampart run`) applies them: the
//! API never steps a release itself. Every error is `{"error": {"code", "message"}}`
//! with a stable code.

use std::convert::Infallible;
use std::path::PathBuf;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use rampart_adapters::store::Submission;
use rampart_core::ports::{Clock, CommandKind, Freeze, OperatorCommand, Store};
use rampart_core::release::Phase;
use serde::Deserialize;
use serde_json::{Value, json};

use super::App;
use super::auth::{Caller, Right, Role};
use super::views::{Loaded, ReleaseView, queued_view, redact_policy};

/// An API error: an HTTP status, a stable code and a message for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }
    /// The same error with machine-readable details (`error.details`).
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }
    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    /// 500 `internal`.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!("{message}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(d) = self.details {
            error["details"] = d;
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"rampart\""),
            );
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::invalid(format!("request body: {}", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::invalid(format!("query: {}", r.body_text()))
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn store_err(e: rampart_core::ports::PortError) -> ApiError {
    ApiError::internal(e.0)
}

/// `GET /healthz`.
pub async fn healthz() -> Json<Value> {
    Json(json!({"ok": true}))
}

/// `GET /openapi.json`.
pub async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        super::OPENAPI,
    )
        .into_response()
}

/// Any unknown route.
pub async fn no_route() -> ApiError {
    ApiError::not_found("no such route; the API is described at /openapi.json")
}

/// A known route with another method.
pub async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /openapi.json",
    )
}

/// `GET /api/v1/whoami`.
pub async fn whoami(caller: Caller) -> Json<Caller> {
    Json(caller)
}

// === releases ===

/// Query of the release list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    service: Option<String>,
    limit: Option<usize>,
}

async fn view_of(app: &App, id: &str) -> ApiResult<ReleaseView> {
    let submission = app.store.submission(id).await.map_err(store_err)?;
    match Loaded::read(&app.store, id).await {
        Some(Ok(loaded)) => Ok(loaded.view(submission.as_ref().and_then(|s| s.report.as_deref()))),
        Some(Err(e)) => Err(ApiError::internal(e)),
        None => match submission {
            Some(s) => Ok(queued_view(&s)),
            None => Err(ApiError::not_found(format!("no release {id}"))),
        },
    }
}

/// `GET /api/v1/releases`.
pub async fn list_releases(
    State(app): State<App>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<ReleaseView>>> {
    caller.require(Right::Read)?;
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let service = q.service.as_deref();
    let mut out: Vec<ReleaseView> = Vec::new();
    // Queued submissions first: they have no release record yet.
    for s in app.store.open_submissions().await.map_err(store_err)? {
        if service.is_none_or(|svc| svc == s.service) && app.store.load(&s.id).await.is_err() {
            out.push(queued_view(&s));
        }
    }
    for rec in app
        .store
        .list_releases(service, limit)
        .await
        .map_err(store_err)?
    {
        out.push(view_of(&app, &rec.id).await?);
    }
    out.truncate(limit);
    Ok(Json(out))
}

/// Body of `POST /api/v1/releases`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRelease {
    /// The policy, as YAML text.
    policy: String,
    /// The version to release.
    version: String,
    /// The version serving now (defaults to what the store remembers).
    stable: Option<String>,
    /// Why this release may run during a freeze (it then needs an approval).
    hotfix: Option<String>,
    /// Where the policy's relative paths resolve, on the server.
    workdir: Option<String>,
}

/// A policy's problems, each with its line, column, field path and message.
fn diagnostics(e: &rampart_core::policy::PolicyError) -> Vec<Value> {
    e.diagnostics
        .iter()
        .map(|d| json!({"line": d.line, "col": d.col, "path": d.path, "message": d.message}))
        .collect()
}

fn invalid_policy(e: &rampart_core::policy::PolicyError) -> ApiError {
    let diagnostics = diagnostics(e);
    let mut err = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_policy",
        e.diagnostics
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("; "),
    );
    err.details = Some(json!({ "diagnostics": diagnostics }));
    err
}

fn check_version(what: &str, v: &str) -> ApiResult<()> {
    if v.is_empty() || v.len() > 128 || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::invalid(format!(
            "{what} must be 1 to 128 characters without spaces"
        )));
    }
    // Versions are substituted into commands and paths (`{version}`).
    if v.contains(['/', '\\']) || v.contains("..") {
        return Err(ApiError::invalid(format!(
            "{what} must not contain /, \\ or .."
        )));
    }
    Ok(())
}

/// What an agent may release: exactly what humans released last for the service, the
/// same policy text run from the same directory, only with a new version. A policy
/// names commands the server runs (gates, migrations, deploys, hooks) and the steps
/// that move traffic, so an agent never writes its own; it cannot name the version
/// that serves as stable, nor claim a hotfix during a freeze. Releases an agent starts
/// this way pass the same rule, so the policy an agent runs is always one a human ran.
async fn agent_may_release(
    app: &App,
    policy: &rampart_core::Policy,
    body: &CreateRelease,
    workdir: &std::path::Path,
) -> ApiResult<()> {
    let refuse = |message: String, instead: &str| {
        ApiError::forbidden(message).with_details(json!({"role": "agent", "instead": instead}))
    };
    if body.hotfix.is_some() {
        return Err(refuse(
            "an agent cannot start a hotfix during a freeze".into(),
            "a hotfix during a freeze is a human's call: call request_approval on the release in trouble, or tell a human",
        ));
    }
    let latest = app
        .store
        .list_releases(Some(&policy.service), 1)
        .await
        .map_err(store_err)?;
    let submitted = match latest.first() {
        Some(r) => app.store.submission(&r.id).await.map_err(store_err)?,
        None => None,
    };
    let same = latest
        .first()
        .zip(submitted.as_ref())
        .is_some_and(|(r, s)| {
            r.policy == body.policy && std::path::Path::new(&s.workdir) == workdir
        });
    if !same {
        return Err(refuse(
            format!(
                "an agent may release {} only with exactly the policy of its latest release on this server, from the same directory",
                policy.service
            ),
            "use the service's checked-in policy as it was last released (its file, unchanged), or ask a human (role deployer) to release this policy first",
        ));
    }
    if let Some(stable) = &body.stable {
        let serving = app
            .store
            .serving_version(&policy.service)
            .await
            .map_err(store_err)?;
        if serving.as_deref() != Some(stable.as_str()) {
            return Err(refuse(
                format!(
                    "an agent cannot name the stable version ({stable}); {} serves {}",
                    policy.service,
                    serving.as_deref().unwrap_or("nothing rampart knows of")
                ),
                "leave stable out: rampart uses the version serving now",
            ));
        }
    }
    Ok(())
}

/// `POST /api/v1/releases`: queues a release; the server runs it when the service has
/// no other release in progress.
pub async fn create_release(
    State(app): State<App>,
    caller: Caller,
    body: Result<Json<CreateRelease>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<ReleaseView>)> {
    caller.require(Right::Create)?;
    let Json(body) = body?;
    let policy = rampart_core::Policy::from_yaml(&body.policy).map_err(|e| invalid_policy(&e))?;
    check_version("version", &body.version)?;
    if let Some(stable) = &body.stable {
        check_version("stable", stable)?;
        if *stable == body.version {
            return Err(ApiError::invalid(
                "stable is the version being released; name the version serving now",
            ));
        }
    }
    let workdir = match &body.workdir {
        Some(w) => app.workdir.join(w),
        None => app.workdir.clone(),
    };
    if !workdir.is_dir() {
        return Err(ApiError::invalid(format!(
            "workdir {} is not a directory on the server",
            workdir.display()
        )));
    }
    if caller.role == Role::Agent {
        agent_may_release(&app, &policy, &body, &workdir).await?;
    }
    let freeze = app.store.freeze(&policy.service).await.map_err(store_err)?;
    if let (Some(f), None) = (&freeze, &body.hotfix) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "frozen",
            format!(
                "releases of {} are frozen by {}: {} (lift it, or submit a hotfix with a reason, which needs an approval)",
                policy.service, f.actor, f.reason
            ),
        ));
    }
    let now = app.clock.now();
    let mut submission = Submission {
        id: crate::run::release_id(&policy.service, now),
        service: policy.service.clone(),
        version: body.version,
        stable: body.stable,
        hotfix: body.hotfix,
        initiator: caller.name.clone(),
        policy: body.policy,
        workdir: workdir.display().to_string(),
        state: "queued".into(),
        report: None,
        created_at: now,
    };
    let mut attempts = 0;
    while let Err(e) = app.store.submit(&submission).await {
        attempts += 1;
        if attempts > 5 {
            return Err(store_err(e));
        }
        submission.id = crate::run::release_id(&policy.service, now);
    }
    app.queue.wake();
    Ok((StatusCode::CREATED, Json(queued_view(&submission))))
}

/// `GET /api/v1/releases/{id}`.
pub async fn get_release(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ReleaseView>> {
    caller.require(Right::Read)?;
    view_of(&app, &id).await.map(Json)
}

/// Query of the event list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after: Option<u64>,
}

async fn loaded(app: &App, id: &str) -> ApiResult<Option<Loaded>> {
    match Loaded::read(&app.store, id).await {
        Some(Ok(l)) => Ok(Some(l)),
        Some(Err(e)) => Err(ApiError::internal(e)),
        None if app.store.submission(id).await.map_err(store_err)?.is_some() => Ok(None),
        None => Err(ApiError::not_found(format!("no release {id}"))),
    }
}

/// `GET /api/v1/releases/{id}/events`.
pub async fn release_events(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Right::Read)?;
    let Query(q) = query?;
    let events = loaded(&app, &id)
        .await?
        .map(|l| l.events(q.after))
        .unwrap_or_default();
    Ok(Json(json!({ "release": id, "events": events })))
}

/// `GET /api/v1/releases/{id}/metrics`.
pub async fn release_metrics(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<super::views::SeriesView>> {
    caller.require(Right::Read)?;
    Ok(Json(match loaded(&app, &id).await? {
        Some(l) => l.series(),
        None => super::views::SeriesView {
            release: id,
            intervals: Vec::new(),
            weights: Vec::new(),
        },
    }))
}

/// `GET /api/v1/releases/{id}/audit`: the chain records about a release.
pub async fn release_audit(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Right::Read)?;
    loaded(&app, &id).await?;
    let records = app
        .store
        .chain_records(Some(&id))
        .await
        .map_err(store_err)?;
    Ok(Json(json!({ "release": id, "records": records })))
}

/// Body of an action on a release.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// Why, for the audit trail.
    #[serde(default)]
    reason: String,
    /// Rollback only: roll the code back even after non-backward-compatible migrations.
    #[serde(default)]
    force: bool,
}

/// What an action route asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Approve the current approval point.
    Approve,
    /// Promote now.
    Promote,
    /// Hold at the current step.
    Pause,
    /// Let a paused release advance.
    Resume,
    /// Stop and roll back.
    Abort,
    /// Roll back (optionally forced past contract migrations).
    Rollback,
}

impl Act {
    fn right(self, force: bool) -> Right {
        match self {
            Act::Approve | Act::Promote => Right::Approve,
            Act::Resume => Right::Resume,
            Act::Rollback if force => Right::Force,
            Act::Pause | Act::Abort | Act::Rollback => Right::Hold,
        }
    }
    fn kind(self) -> CommandKind {
        match self {
            Act::Approve => CommandKind::Approve,
            Act::Promote => CommandKind::Promote,
            Act::Pause => CommandKind::Pause,
            Act::Resume => CommandKind::Resume,
            Act::Abort | Act::Rollback => CommandKind::Rollback,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Act::Approve => "approve",
            Act::Promote => "promote",
            Act::Pause => "pause",
            Act::Resume => "resume",
            Act::Abort => "abort",
            Act::Rollback => "rollback",
        }
    }
}

/// `POST /api/v1/releases/{id}/{action}`: queues the request for the controller
/// driving the release and answers 202 once it is durably queued.
pub async fn act(
    app: App,
    caller: Caller,
    id: String,
    what: Act,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(what.right(false))?;
    // The body is optional: no body is `{}`.
    let body: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("request body: {e}")))?
    };
    caller.require(what.right(body.force))?;
    if body.force && what != Act::Rollback {
        return Err(ApiError::invalid("force applies to rollback only"));
    }
    if body.force && body.reason.trim().is_empty() {
        return Err(ApiError::invalid(
            "a forced rollback needs a reason: say how the data was repaired",
        ));
    }
    if body.reason.len() > 2000 {
        return Err(ApiError::invalid("reason is longer than 2000 characters"));
    }
    let Some(l) = loaded(&app, &id).await? else {
        // Not started yet: only an abort applies, and it withdraws the submission.
        if what != Act::Abort {
            return Err(ApiError::conflict(format!(
                "release {id} has not started yet; only abort applies"
            )));
        }
        let report = json!({
            "outcome": "blocked",
            "reason": format!("withdrawn by {} before it started: {}", caller.name, body.reason),
            "decided_at_s": 0.0,
            "release_id": id,
            "timeline": [],
        });
        app.store
            .withdraw(&id, &caller.name, &report.to_string(), app.clock.now())
            .await
            .map_err(|e| ApiError::conflict(e.0))?;
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"release": id, "request": "abort", "queued": false, "withdrawn": true})),
        ));
    };
    if let Some(outcome) = l.record.outcome {
        return Err(ApiError::conflict(format!(
            "release {id} is over ({})",
            outcome.as_str()
        )));
    }
    let state = l.state();
    if matches!(what, Act::Approve | Act::Promote)
        && (state.initiator == caller.name || caller.name.is_empty())
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "four_eyes",
            format!(
                "{} started release {id}; someone else must {}",
                caller.name,
                what.name()
            ),
        ));
    }
    let holding = state.phase == Phase::Progressing && state.window_hold.is_some();
    if what == Act::Approve && state.phase != Phase::AwaitingApproval && !holding {
        return Err(ApiError::conflict(format!(
            "release {id} is not waiting for an approval (it is {})",
            state.phase.as_str()
        )));
    }
    // An operator freeze stops everything going to 100 % but hotfix approvals.
    if what == Act::Promote
        && let Some(f) = app
            .store
            .freeze(&l.record.service)
            .await
            .map_err(store_err)?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "frozen",
            format!(
                "releases of {} are frozen by {}: {}; nothing is promoted during a freeze",
                l.record.service, f.actor, f.reason
            ),
        ));
    }
    let command = OperatorCommand {
        kind: what.kind(),
        actor: caller.name.clone(),
        reason: if body.reason.is_empty() {
            format!("{} through the API", what.name())
        } else {
            body.reason
        },
        force: body.force,
        at: app.clock.now(),
    };
    app.store
        .push_command_to(&id, &command)
        .await
        .map_err(|e| ApiError::conflict(e.0))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"release": id, "request": what.name(), "queued": true})),
    ))
}

/// Body of `POST /api/v1/releases/{id}/request-approval`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequestBody {
    /// Why, for the humans asked.
    #[serde(default)]
    reason: String,
}

/// `POST /api/v1/releases/{id}/request-approval`: asks the humans for an approval of an
/// unfinished release. Notifies the release's notification hooks (as an `approval`
/// notice, paging), records who asked in the audit chain, and answers 202 with a
/// handle. It approves nothing: an approver still must.
pub async fn request_approval(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Right::RequestApproval)?;
    let body: ApprovalRequestBody = if body.iter().all(u8::is_ascii_whitespace) {
        ApprovalRequestBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("request body: {e}")))?
    };
    if body.reason.len() > 2000 {
        return Err(ApiError::invalid("reason is longer than 2000 characters"));
    }
    let Some(l) = loaded(&app, &id).await? else {
        if app
            .store
            .submission(&id)
            .await
            .map_err(store_err)?
            .is_some()
        {
            return Err(ApiError::conflict(format!(
                "release {id} has not started yet; nothing waits for a human"
            )));
        }
        return Err(ApiError::not_found(format!("no release {id}")));
    };
    if let Some(outcome) = l.record.outcome {
        return Err(ApiError::conflict(format!(
            "release {id} is over ({})",
            outcome.as_str()
        )));
    }
    let state = l.state();
    // Only what a human can unblock pages a human: an approval point, a pause, a hold
    // for a release window.
    let waiting = state.phase == Phase::AwaitingApproval
        || state.paused.is_some()
        || state.window_hold.is_some();
    if !waiting {
        return Err(ApiError::conflict(format!(
            "release {id} is {} and waits for nobody; rampart moves it on by itself",
            state.phase.as_str()
        )));
    }
    let now = app.clock.now();
    let reason = if body.reason.trim().is_empty() {
        "no reason given".to_string()
    } else {
        body.reason
    };
    let record = json!({"reason": reason, "phase": state.phase.as_str(), "weight": state.weight.to_string()});
    let handle = app
        .store
        .note(
            now,
            &caller.name,
            "approval_requested",
            Some(&id),
            &record.to_string(),
        )
        .await
        .map_err(store_err)?;
    let notice = rampart_core::ports::Notice {
        kind: rampart_core::release::NoticeKind::Approval,
        page: true,
        service: l.record.service.clone(),
        release: id.clone(),
        version: l.record.version.clone(),
        stable: state.stable.clone(),
        weight: state.weight,
        message: format!(
            "{} asks a human to look at release {id} of {} {} ({}, {}): {reason}. Approve it with `rampart approve {id}` (or resume it, if paused) or on the dashboard.",
            caller.name,
            l.record.service,
            l.record.version,
            state.phase.as_str(),
            state.weight
        ),
        at: now,
    };
    let hooks = l.policy.notify.len();
    let notifier = rampart_adapters::notify::HookNotifier::new(l.policy.notify.clone());
    tokio::spawn(async move {
        use rampart_core::ports::Notifier;
        notifier.notify(&notice).await;
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "release": id,
            "handle": format!("approval-{handle}"),
            "requested_by": caller.name,
            "phase": state.phase.as_str(),
            "hooks_notified": hooks,
        })),
    ))
}

// === freeze, policies, services ===

/// `GET /api/v1/freeze`.
pub async fn get_freeze(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Right::Read)?;
    let freezes = app.store.freezes().await.map_err(store_err)?;
    Ok(Json(json!({ "freezes": freezes })))
}

/// Body of `POST /api/v1/freeze`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeBody {
    /// `on` or `off`.
    state: String,
    /// One service; every service without it.
    service: Option<String>,
    /// Why.
    reason: String,
}

/// `POST /api/v1/freeze`.
pub async fn set_freeze(
    State(app): State<App>,
    caller: Caller,
    body: Result<Json<FreezeBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    caller.require_any(&[Right::FreezeOff, Right::FreezeOn])?;
    let Json(body) = body?;
    let on = match body.state.as_str() {
        "on" => true,
        "off" => false,
        other => {
            return Err(ApiError::invalid(format!(
                "state is on or off, not {other:?}"
            )));
        }
    };
    caller.require(if on {
        Right::FreezeOn
    } else {
        Right::FreezeOff
    })?;
    if body.reason.trim().is_empty() {
        return Err(ApiError::invalid("a freeze change needs a reason"));
    }
    let by = Freeze {
        actor: caller.name.clone(),
        reason: body.reason,
        at: app.clock.now(),
    };
    app.store
        .set_freeze(body.service.as_deref(), on, &by)
        .await
        .map_err(store_err)?;
    let freezes = app.store.freezes().await.map_err(store_err)?;
    Ok(Json(json!({ "freezes": freezes })))
}

/// Body of `POST /api/v1/policies/validate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateBody {
    /// The policy, as YAML text.
    policy: String,
}

/// `POST /api/v1/policies/validate`: 200 with `valid` true or false.
pub async fn validate_policy(
    caller: Caller,
    body: Result<Json<ValidateBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    caller.require(Right::Read)?;
    let Json(body) = body?;
    Ok(Json(match rampart_core::Policy::from_yaml(&body.policy) {
        Ok(p) => json!({"valid": true, "service": p.service, "diagnostics": []}),
        Err(e) => json!({"valid": false, "service": null, "diagnostics": diagnostics(&e)}),
    }))
}

/// `GET /api/v1/policies/{service}`: the policy of the service's latest release, with
/// secrets redacted.
pub async fn get_policy(
    State(app): State<App>,
    caller: Caller,
    Path(service): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Right::Read)?;
    let latest = app
        .store
        .list_releases(Some(&service), 1)
        .await
        .map_err(store_err)?;
    let Some(rec) = latest.first() else {
        return Err(ApiError::not_found(format!(
            "no release of service {service} yet"
        )));
    };
    Ok(Json(json!({
        "service": service,
        "release": rec.id,
        "policy": redact_policy(&rec.policy),
    })))
}

/// `GET /api/v1/services`: each service's latest release, freeze and release window.
pub async fn services(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Right::Read)?;
    let now = app.clock.now();
    let mut names: Vec<String> = app.store.services().await.map_err(store_err)?;
    names.sort();
    let mut out = Vec::new();
    for service in names {
        let latest = app
            .store
            .list_releases(Some(&service), 1)
            .await
            .map_err(store_err)?;
        let last = match latest.first() {
            Some(rec) => Some(view_of(&app, &rec.id).await?),
            None => None,
        };
        let freeze = app.store.freeze(&service).await.map_err(store_err)?;
        let window = latest
            .first()
            .and_then(|rec| rampart_core::Policy::from_yaml(&rec.policy).ok())
            .and_then(|p| p.windows)
            .map(|w| match w.status(now) {
                rampart_core::windows::Status::Open => json!({"open": true}),
                rampart_core::windows::Status::Closed { why, opens_at, .. } => json!({
                    "open": false,
                    "why": why,
                    "opens_at": opens_at,
                    "opens": opens_at.map(|t| w.show(t)),
                }),
            });
        out.push(json!({
            "service": service,
            "last": last,
            "freeze": freeze.map(|f| json!({"actor": f.actor, "reason": f.reason, "at": f.at})),
            "window": window,
        }));
    }
    Ok(Json(json!({ "services": out, "now": now })))
}

// === tokens and audit ===

/// `GET /api/v1/tokens`.
pub async fn list_tokens(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Right::Tokens)?;
    let tokens = app.store.tokens().await.map_err(store_err)?;
    Ok(Json(json!({ "tokens": tokens })))
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// Unique name: who the token's actions are recorded as.
    name: String,
    /// `viewer`, `deployer`, `approver`, `admin` or `agent`.
    role: String,
}

/// Checks a token name: 1 to 64 of letters, digits, `.`, `_`, `-`, `@`.
pub fn check_token_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "token name {name:?}: use 1 to 64 letters, digits, '.', '_', '-' or '@'"
        ))
    }
}

/// `POST /api/v1/tokens`: the secret is in this answer and nowhere else.
pub async fn create_token(
    State(app): State<App>,
    caller: Caller,
    body: Result<Json<TokenBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    caller.require(Right::Tokens)?;
    let Json(body) = body?;
    check_token_name(&body.name).map_err(ApiError::invalid)?;
    let Some(role) = Role::parse(&body.role) else {
        return Err(ApiError::invalid(format!(
            "role is one of viewer, deployer, approver, admin, agent, not {:?}",
            body.role
        )));
    };
    let secret = app
        .store
        .create_token(&body.name, role.as_str(), &caller.name, app.clock.now())
        .await
        .map_err(|e| ApiError::conflict(e.0))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": body.name, "role": role.as_str(), "token": secret})),
    ))
}

/// `DELETE /api/v1/tokens/{name}`.
pub async fn revoke_token(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.require(Right::Tokens)?;
    app.store
        .revoke_token(&name, &caller.name, app.clock.now())
        .await
        .map_err(|e| ApiError::not_found(e.0))?;
    Ok(Json(json!({"name": name, "revoked": true})))
}

/// `GET /api/v1/audit/verify`.
pub async fn verify_audit(State(app): State<App>, caller: Caller) -> ApiResult<Json<Value>> {
    caller.require(Right::Read)?;
    let report = app.store.verify_chain().await.map_err(store_err)?;
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

/// `GET /api/v1/stream`: every new release log entry, as server-sent events named
/// `entry` (`{"release", "service", "seq", "at", "events"}`).
pub async fn stream(
    State(app): State<App>,
    caller: Caller,
) -> ApiResult<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>> {
    caller.require(Right::Read)?;
    let rx = app.feed.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(item) => Event::default().event("entry").data(item.as_str()),
            // A slow reader missed entries: tell it to reload.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                Event::default().event("lagged").data("{}")
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Where the server runs submitted releases from, by default.
pub fn default_workdir() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}
