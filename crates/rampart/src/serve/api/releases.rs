//! The release routes: list, submit, read one, its events, metrics and audit records.
//!
//! Owns validating a submission (and what an agent may submit) and reading releases
//! into views. It must not act on a release: submissions are queued for the server's
//! queue, and actions are `actions`'s.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use rampart_adapters::store::{StoreError, Submission};
use rampart_core::admission::{self, StartRefusal};
use serde::Deserialize;
use serde_json::{Value, json};

use super::policies::diagnostics;
use crate::serve::App;
use crate::serve::auth::{Caller, Right, Role};
use crate::serve::error::{ApiError, ApiResult, store_err};
use crate::serve::views::{Loaded, ReleaseView, SeriesView, queued_view};

// === releases ===

/// Query of the release list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    service: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn view_of(app: &App, id: &str) -> ApiResult<ReleaseView> {
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
    pub policy: String,
    /// The version to release.
    pub version: String,
    /// The version serving now (defaults to what the store remembers).
    pub stable: Option<String>,
    /// Why this release may run during a freeze (it then needs an approval).
    pub hotfix: Option<String>,
    /// Where the policy's relative paths resolve, on the server.
    pub workdir: Option<String>,
}

fn invalid_policy(e: &rampart_core::policy::PolicyError) -> ApiError {
    let diagnostics = diagnostics(e);
    let err = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_policy",
        e.diagnostics
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("; "),
    );
    err.with_details(json!({ "diagnostics": diagnostics }))
}

fn check_version(what: &str, v: &str) -> ApiResult<()> {
    // Versions are substituted into commands, paths and metric queries (`{version}`).
    match rampart_core::units::version_problem(v) {
        Some(why) => Err(ApiError::invalid(format!("{what}: {why}"))),
        None => Ok(()),
    }
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
    // The right first: a caller without it learns nothing about the body.
    caller.require(Right::Create)?;
    let Json(body) = body?;
    let submission = submit(&app, &caller, body).await?;
    Ok((StatusCode::CREATED, Json(queued_view(&submission))))
}

/// Queues a release for `caller`: the one path every release the server starts takes
/// (the API's, and the Kubernetes watch loop's for a template Git applied), so the
/// same rules hold for all: the caller's right, the policy, the versions, an agent's
/// limits, the freeze.
pub async fn submit(app: &App, caller: &Caller, body: CreateRelease) -> ApiResult<Submission> {
    submit_as(app, caller, body, false).await
}

/// [`submit`], by the leader itself when `acting` (a Git change `serve --kubernetes`
/// releases): written only while this replica holds the lease, never retried once
/// it does not.
pub async fn submit_as(
    app: &App,
    caller: &Caller,
    body: CreateRelease,
    acting: bool,
) -> ApiResult<Submission> {
    caller.require(Right::Create)?;
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
    // An agent's release is judged first, on the path alone: its answer must not
    // tell which directories exist on the server.
    if caller.role == Role::Agent {
        agent_may_release(app, &policy, &body, &workdir).await?;
    }
    if !workdir.is_dir() {
        return Err(ApiError::invalid(format!(
            "workdir {} is not a directory on the server",
            workdir.display()
        )));
    }
    let freeze = app.store.freeze(&policy.service).await.map_err(store_err)?;
    // The release itself applies the freeze again when it starts (a freeze set while it
    // queues still holds it); this answers the submitter at once, by the same rule.
    if let Err(StartRefusal::Frozen(f)) =
        admission::freeze_gate(freeze.as_ref(), body.hotfix.as_deref())
    {
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
    loop {
        let written = if acting {
            app.store.submit_acting(&submission).await
        } else {
            app.store.submit(&submission).await
        };
        let Err(e) = written else {
            break;
        };
        if let StoreError::NotLeader(why) = e {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_leader",
                format!("not the leader: {why}"),
            ));
        }
        attempts += 1;
        if attempts > 5 {
            return Err(store_err(e));
        }
        submission.id = crate::run::release_id(&policy.service, now);
    }
    app.submitted.notify_one();
    Ok(submission)
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

pub(super) async fn loaded(app: &App, id: &str) -> ApiResult<Option<Loaded>> {
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
) -> ApiResult<Json<SeriesView>> {
    caller.require(Right::Read)?;
    Ok(Json(match loaded(&app, &id).await? {
        Some(l) => l.series(),
        None => SeriesView {
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
