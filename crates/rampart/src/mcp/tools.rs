//! The MCP server's handler: its tools, each a thin body over the client the CLI uses
//! (`client::Backend`), and the answers an agent can act on. A refusal says what the
//! agent may do instead.
//!
//! Owns the tools' names, descriptions and argument types (their JSON schemas are
//! derived from those types by the SDK), and turning the client's failures into tool
//! results. It must not decide who may do what: the server does, by the token's role.
//! It must not write to stdout (the SDK's transport owns it).

use std::path::PathBuf;

use rmcp::handler::server::tool::{IntoCallToolResult, ToolCallContext, ToolRouter};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, ListResourcesResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::{Backend, Failure, NewRelease, workdir_of};
use crate::report::Output;

/// What the server tells an agent at the handshake.
const INSTRUCTIONS: &str = "rampart runs releases safely. Start a release with start_release and follow it with release_status. You may pause, abort, roll back and freeze; approvals, promotion, resuming, forced rollbacks and lifting freezes are for humans: ask with request_approval.";

/// How many releases `list_releases` answers (the API's default).
const LIST_LIMIT: usize = 50;

/// The MCP server: the tools and resources over one backend.
#[derive(Debug)]
pub(super) struct Rampart {
    backend: Backend,
    tool_router: ToolRouter<Self>,
}

impl Rampart {
    /// A server whose tools and resources act through `backend` (a `rampart serve`).
    pub(super) fn new(backend: Backend) -> Rampart {
        Rampart {
            backend,
            tool_router: Self::tool_router(),
        }
    }
}

// === answers ===

/// What a tool answers: its structured result, or a refusal.
type Answer = Result<Structured, Refusal>;

/// A tool's result as structured content: an object (anything else is wrapped as
/// `result`, since structured content is an object).
#[derive(Debug)]
struct Structured(Value);

impl Structured {
    fn of<T: serde::Serialize>(value: &T) -> Answer {
        match serde_json::to_value(value) {
            Ok(v) if v.is_object() => Ok(Structured(v)),
            Ok(v) => Ok(Structured(json!({ "result": v }))),
            Err(e) => Err(Refusal::new("internal", e.to_string())),
        }
    }
}

impl IntoCallToolResult for Structured {
    fn into_call_tool_result(self) -> Result<CallToolResponse, ErrorData> {
        Ok(CallToolResult::structured(self.0).into())
    }
}

/// A refusal an agent can act on: what went wrong and what to do instead.
#[derive(Debug)]
struct Refusal {
    code: String,
    message: String,
    instead: String,
    details: Value,
}

impl Refusal {
    fn new(code: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            code: code.into(),
            message: message.into(),
            instead: instead_of(code).into(),
            details: Value::Null,
        }
    }

    fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new("invalid_request", message)
    }
}

impl From<Failure> for Refusal {
    /// The server's own `instead` wins over the generic one for its code; its HTTP
    /// status goes into the details.
    fn from(f: Failure) -> Refusal {
        let instead = f.details["instead"]
            .as_str()
            .map_or_else(|| instead_of(&f.code).to_string(), str::to_string);
        let mut details = f.details;
        if let Some(status) = f.status {
            if details.is_object() {
                details["http_status"] = status.into();
            } else {
                details = json!({ "http_status": status });
            }
        }
        Refusal {
            code: f.code,
            message: f.message,
            instead,
            details,
        }
    }
}

impl IntoCallToolResult for Refusal {
    fn into_call_tool_result(self) -> Result<CallToolResponse, ErrorData> {
        let error = json!({"error": {"code": self.code, "message": self.message, "instead": self.instead, "details": self.details}});
        Ok(CallToolResult::structured_error(error).into())
    }
}

/// What an agent can do about an error of this code.
fn instead_of(code: &str) -> &'static str {
    match code {
        "four_eyes" => {
            "someone other than who started the release must approve: call request_approval"
        }
        "frozen" => {
            "releases of this service are frozen, by an operator or by its policy's freeze calendar: wait for the freeze to end (a human may lift an operator's), or call request_approval"
        }
        "conflict" => {
            "the release is not in a state that allows this: read release_status and release_events"
        }
        "not_found" => "check the release id with list_releases",
        "invalid_request" | "invalid_policy" => "fix the arguments as the message says",
        "unauthorized" => "rampart mcp needs a valid agent token in RAMPART_TOKEN",
        "unreachable" => "rampart serve cannot be reached: tell a human",
        _ => "tell a human operator",
    }
}

/// A tool error the SDK made without structured content (arguments that do not match
/// the tool's schema; every tool here answers structured) becomes a refusal like the
/// tools' own.
fn refuse_unstructured(response: CallToolResponse) -> Result<CallToolResponse, ErrorData> {
    match response {
        CallToolResponse::Complete(result)
            if result.is_error == Some(true) && result.structured_content.is_none() =>
        {
            let text: Vec<&str> = result
                .content
                .iter()
                .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
                .collect();
            Refusal::invalid(text.join("\n")).into_call_tool_result()
        }
        other => Ok(other),
    }
}

// === arguments ===

const FILE: &str = "path of the policy file (rampart.yaml), relative to where rampart mcp runs";
const POLICY: &str = "the policy as YAML text, instead of file";
const RELEASE: &str = "the release id";
const REASON: &str = "why, in words for the humans reading the audit log";

/// A policy, from a file or as text.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PolicyArgs {
    #[schemars(description = FILE)]
    file: Option<String>,
    #[schemars(description = POLICY)]
    policy: Option<String>,
}

/// A release to start.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StartArgs {
    #[schemars(description = FILE)]
    file: Option<String>,
    #[schemars(description = POLICY)]
    policy: Option<String>,
    /// the version to release
    version: String,
    /// the version serving now, if rampart does not know it
    stable: Option<String>,
}

/// A runbook to render.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RunbookArgs {
    #[schemars(description = FILE)]
    file: Option<String>,
    #[schemars(description = POLICY)]
    policy: Option<String>,
    version: Option<String>,
}

/// One release.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ReleaseArgs {
    #[schemars(description = RELEASE)]
    release: String,
}

/// Releases, of one service or all.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    service: Option<String>,
}

/// A release's events.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EventsArgs {
    #[schemars(description = RELEASE)]
    release: String,
    /// only events after this log position
    after: Option<u64>,
}

/// A replay of recorded traffic.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ReplayArgs {
    /// the policy file
    file: String,
    /// the samples CSV file
    samples: String,
}

/// Migrations to classify.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MigrationsArgs {
    /// SQL files or directories
    #[schemars(length(min = 1))]
    paths: Vec<String>,
}

/// An action on a release, with why.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ActArgs {
    #[schemars(description = RELEASE)]
    release: String,
    #[schemars(description = REASON)]
    reason: String,
}

/// A rollback.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RollbackArgs {
    #[schemars(description = RELEASE)]
    release: String,
    #[schemars(description = REASON)]
    reason: String,
    /// roll back past contract migrations (humans only)
    force: Option<bool>,
}

/// An approval.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ApproveArgs {
    #[schemars(description = RELEASE)]
    release: String,
    #[schemars(description = REASON)]
    reason: Option<String>,
}

/// A freeze.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FreezeArgs {
    #[schemars(description = REASON)]
    reason: String,
    /// one service; every service without it
    service: Option<String>,
}

/// An optional argument; empty is not given.
fn given(arg: &Option<String>) -> Option<&str> {
    arg.as_deref().filter(|s| !s.is_empty())
}

/// A required argument, refused when empty.
fn required<'a>(name: &str, arg: &'a str) -> Result<&'a str, Refusal> {
    if arg.is_empty() {
        return Err(Refusal::invalid(format!("argument {name} is required")));
    }
    Ok(arg)
}

/// The most a file an agent names may hold (a policy, recorded samples, a migration).
const AGENT_FILE_MAX: u64 = 64 * 1024 * 1024;

/// Checks a path an agent names before anything reads it: a regular file of at most
/// [`AGENT_FILE_MAX`] bytes (or, with `dirs`, a directory). `/dev/stdin` (the
/// protocol's own input), a FIFO or `/dev/zero` would hang the session or fill memory.
fn agent_path(path: &str, dirs: bool) -> Result<PathBuf, Refusal> {
    let meta = std::fs::metadata(path).map_err(|e| Refusal::invalid(format!("{path}: {e}")))?;
    if dirs && meta.is_dir() {
        return Ok(PathBuf::from(path));
    }
    if !meta.is_file() {
        return Err(Refusal::invalid(format!(
            "{path}: not a regular file (a device, a pipe or a directory cannot be read here)"
        )));
    }
    if meta.len() > AGENT_FILE_MAX {
        return Err(Refusal::invalid(format!(
            "{path}: {} bytes, more than the {} MiB a file may have here",
            meta.len(),
            AGENT_FILE_MAX / (1024 * 1024)
        )));
    }
    Ok(PathBuf::from(path))
}

/// The policy text and the file it came from (if any).
fn policy_text(
    file: &Option<String>,
    policy: &Option<String>,
) -> Result<(String, Option<PathBuf>), Refusal> {
    match (given(file), given(policy)) {
        (Some(file), None) => {
            let path = agent_path(file, false)?;
            std::fs::read_to_string(&path)
                .map(|t| (t, Some(path)))
                .map_err(|e| Refusal::invalid(format!("{file}: {e}")))
        }
        (None, Some(text)) => Ok((text.to_string(), None)),
        _ => Err(Refusal::invalid(
            "give the policy as file or as policy (YAML text), one of them",
        )),
    }
}

// === tools ===

#[tool_router]
impl Rampart {
    #[tool(
        description = "Checks a release policy and lists every problem with its line and field."
    )]
    async fn validate_policy(&self, Parameters(a): Parameters<PolicyArgs>) -> Answer {
        let (text, file) = policy_text(&a.file, &a.policy)?;
        Ok(Structured(match rampart_core::Policy::from_yaml(&text) {
            Ok(p) => json!({"valid": true, "service": p.service, "diagnostics": []}),
            Err(e) => json!({
                "valid": false,
                "file": file.map(|f| f.display().to_string()),
                "diagnostics": crate::serve::api::policies::diagnostics(&e),
            }),
        }))
    }

    #[tool(
        description = "Submits a release of VERSION under the policy to rampart serve and returns its id at once; follow it with release_status."
    )]
    async fn start_release(&self, Parameters(a): Parameters<StartArgs>) -> Answer {
        let (text, file) = policy_text(&a.file, &a.policy)?;
        let release = NewRelease {
            policy: &text,
            version: required("version", &a.version)?,
            stable: given(&a.stable),
            hotfix: None,
            // The policy's relative paths resolve next to its file, as with `rampart run`.
            workdir: file.as_deref().and_then(workdir_of),
        };
        Structured::of(&self.backend.submit(&release).await?)
    }

    #[tool(
        description = "A release's phase, weight, step, what it waits for, and its outcome once over."
    )]
    async fn release_status(&self, Parameters(a): Parameters<ReleaseArgs>) -> Answer {
        let release = required("release", &a.release)?;
        Structured::of(&self.backend.release(release).await?)
    }

    #[tool(description = "The newest releases, optionally of one service.")]
    async fn list_releases(&self, Parameters(a): Parameters<ListArgs>) -> Answer {
        Structured::of(&self.backend.list(given(&a.service), LIST_LIMIT).await?)
    }

    #[tool(
        description = "A release's audit events (decisions, weights, verdicts, who acted), optionally only after a log position."
    )]
    async fn release_events(&self, Parameters(a): Parameters<EventsArgs>) -> Answer {
        let release = self
            .backend
            .release(required("release", &a.release)?)
            .await?;
        let events = self.backend.events(&release.id, a.after).await?;
        Structured::of(&json!({"release": release.id, "events": events}))
    }

    #[tool(
        description = "Backtests a policy on recorded traffic (a CSV of t_s,variant,requests,errors) in simulated time: the outcome it would have reached and when."
    )]
    async fn replay_policy(&self, Parameters(a): Parameters<ReplayArgs>) -> Answer {
        let file = agent_path(required("file", &a.file)?, false)?;
        let samples = agent_path(required("samples", &a.samples)?, false)?;
        // Progress goes to stderr with JSON output (stdout carries the protocol).
        let report = crate::replay::replay(&file, &samples, Output::Json)
            .map_err(|e| Refusal::invalid(e.to_string()))?;
        Structured::of(&report)
    }

    #[tool(
        description = "Classifies PostgreSQL migrations: expand (safe to roll back), contract or irreversible (automatic rollback blocked, a human decides)."
    )]
    async fn check_migrations(&self, Parameters(a): Parameters<MigrationsArgs>) -> Answer {
        let paths: Vec<PathBuf> = a
            .paths
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| agent_path(p, true))
            .collect::<Result<_, _>>()?;
        if paths.is_empty() {
            return Err(Refusal::invalid(
                "paths: give at least one SQL file or directory",
            ));
        }
        Structured::of(&crate::migrations::check(&paths).map_err(Refusal::invalid)?)
    }

    #[tool(
        description = "The release runbook derived from the policy: checklist, triggers, approval points, rollback order."
    )]
    async fn render_runbook(&self, Parameters(a): Parameters<RunbookArgs>) -> Answer {
        let (text, _) = policy_text(&a.file, &a.policy)?;
        let policy =
            rampart_core::Policy::from_yaml(&text).map_err(|e| Refusal::invalid(e.to_string()))?;
        let file = a.file.as_deref().unwrap_or("POLICY");
        let runbook = rampart_core::runbook::render(&policy, file, given(&a.version), None);
        Structured::of(&json!({"service": policy.service, "runbook": runbook}))
    }

    #[tool(
        description = "Holds a release at its current step (analysis goes on, a failure still rolls back)."
    )]
    async fn pause_release(&self, Parameters(a): Parameters<ActArgs>) -> Answer {
        self.act(&a.release, "pause", &a.reason, false).await
    }

    #[tool(description = "Stops a release and rolls it back in order (flags, traffic, artifact).")]
    async fn abort_release(&self, Parameters(a): Parameters<ActArgs>) -> Answer {
        self.act(&a.release, "abort", &a.reason, false).await
    }

    #[tool(
        description = "Rolls a release back now. A release that shipped a contract migration is escalated instead; only a human may force that rollback."
    )]
    async fn rollback_release(&self, Parameters(a): Parameters<RollbackArgs>) -> Answer {
        let force = a.force == Some(true);
        self.act(&a.release, "rollback", &a.reason, force).await
    }

    #[tool(
        description = "Freezes new releases of one service, or of every service (audited). Lifting a freeze is for humans."
    )]
    async fn freeze_releases(&self, Parameters(a): Parameters<FreezeArgs>) -> Answer {
        let reason = required("reason", &a.reason)?;
        Structured::of(&self.backend.freeze(true, given(&a.service), reason).await?)
    }

    #[tool(
        description = "Asks the humans to approve a release (they are notified through the policy's hooks) and returns a handle; the release moves on once an approver approves."
    )]
    async fn request_approval(&self, Parameters(a): Parameters<ActArgs>) -> Answer {
        self.act(&a.release, "request-approval", &a.reason, false)
            .await
    }

    #[tool(
        description = "Approves the approval point a release waits at. Needs a human approver: an agent's token is refused, and the refusal says what to do instead."
    )]
    async fn approve_release(&self, Parameters(a): Parameters<ApproveArgs>) -> Answer {
        let reason = given(&a.reason).unwrap_or_default();
        self.act(&a.release, "approve", reason, false).await
    }
}

impl Rampart {
    /// One operator action, as the CLI's: find the release, then ask for the action.
    async fn act(&self, release: &str, what: &str, reason: &str, force: bool) -> Answer {
        let release = self.backend.target(required("release", release)?).await?;
        Structured::of(&self.backend.act(&release, what, reason, force).await?)
    }
}

// === the handler ===

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Rampart {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("rampart", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let call = ToolCallContext::new(self, request, context);
        refuse_unstructured(self.tool_router.call(call).await?)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(ListResourcesResult::with_all_items(
            super::resources::list(&self.backend).await,
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        super::resources::read(&self.backend, &request.uri)
            .await
            .map(ReadResourceResponse::from)
    }
}
