//! `rampart mcp`: a Model Context Protocol server on stdio, through which an AI agent
//! drives releases.
//!
//! Owns the protocol (JSON-RPC 2.0, one message a line), the tools and resources, and
//! turning the server's answers into tool results an agent can act on: a refusal says
//! what the agent may do instead. It must not decide who may do what: `rampart serve`
//! does, by the token's role (an `agent` token can never approve, promote, resume,
//! force a rollback or lift a freeze), so a tool that is listed here is no permission.
//! Nothing but protocol messages goes to stdout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::report::Output;

/// Protocol revisions this server speaks through the `initialize` handshake, oldest
/// first; a client asking for another gets the newest.
const PROTOCOL_VERSIONS: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the server's tools act.
#[derive(Debug, Clone)]
pub struct McpOptions {
    /// The `rampart serve` the release tools act on; without one, the local store.
    pub server: Option<String>,
    /// The local state directory, without a server.
    pub state_dir: PathBuf,
    /// Its API token (an `agent` token).
    pub token: Option<String>,
    /// Accept a token of a human role (approver, admin), which lets the agent do
    /// what only humans should.
    pub any_role: bool,
}

/// One tool: its name, what it does, its arguments' JSON schema.
struct Tool {
    name: &'static str,
    description: &'static str,
    schema: fn() -> Value,
}

fn props(properties: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn policy_props(extra: Value, required: &[&str]) -> Value {
    let mut p = json!({
        "file": {"type": "string", "description": "path of the policy file (rampart.yaml), relative to where rampart mcp runs"},
        "policy": {"type": "string", "description": "the policy as YAML text, instead of file"},
    });
    if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
        p.extend(extra.clone());
    }
    props(p, required)
}

fn release_props(extra: Value, required: &[&str]) -> Value {
    let mut p = json!({"release": {"type": "string", "description": "the release id"}});
    if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
        p.extend(extra.clone());
    }
    props(p, required)
}

fn reason() -> Value {
    json!({"reason": {"type": "string", "description": "why, in words for the humans reading the audit log"}})
}

const TOOLS: &[Tool] = &[
    Tool {
        name: "validate_policy",
        description: "Checks a release policy and lists every problem with its line and field.",
        schema: || policy_props(json!({}), &[]),
    },
    Tool {
        name: "start_release",
        description: "Submits a release of VERSION under the policy to rampart serve and returns its id at once; follow it with release_status.",
        schema: || {
            policy_props(
                json!({
                    "version": {"type": "string", "description": "the version to release"},
                    "stable": {"type": "string", "description": "the version serving now, if rampart does not know it"},
                }),
                &["version"],
            )
        },
    },
    Tool {
        name: "release_status",
        description: "A release's phase, weight, step, what it waits for, and its outcome once over.",
        schema: || release_props(json!({}), &["release"]),
    },
    Tool {
        name: "list_releases",
        description: "The newest releases, optionally of one service.",
        schema: || props(json!({"service": {"type": "string"}}), &[]),
    },
    Tool {
        name: "release_events",
        description: "A release's audit events (decisions, weights, verdicts, who acted), optionally only after a log position.",
        schema: || {
            release_props(
                json!({"after": {"type": "integer", "minimum": 0, "description": "only events after this log position"}}),
                &["release"],
            )
        },
    },
    Tool {
        name: "replay_policy",
        description: "Backtests a policy on recorded traffic (a CSV of t_s,variant,requests,errors) in simulated time: the outcome it would have reached and when.",
        schema: || {
            props(
                json!({
                    "file": {"type": "string", "description": "the policy file"},
                    "samples": {"type": "string", "description": "the samples CSV file"},
                }),
                &["file", "samples"],
            )
        },
    },
    Tool {
        name: "check_migrations",
        description: "Classifies PostgreSQL migrations: expand (safe to roll back), contract or irreversible (automatic rollback blocked, a human decides).",
        schema: || {
            props(
                json!({"paths": {"type": "array", "items": {"type": "string"}, "minItems": 1, "description": "SQL files or directories"}}),
                &["paths"],
            )
        },
    },
    Tool {
        name: "render_runbook",
        description: "The release runbook derived from the policy: checklist, triggers, approval points, rollback order.",
        schema: || policy_props(json!({"version": {"type": "string"}}), &[]),
    },
    Tool {
        name: "pause_release",
        description: "Holds a release at its current step (analysis goes on, a failure still rolls back).",
        schema: || release_props(reason(), &["release", "reason"]),
    },
    Tool {
        name: "abort_release",
        description: "Stops a release and rolls it back in order (flags, traffic, artifact).",
        schema: || release_props(reason(), &["release", "reason"]),
    },
    Tool {
        name: "rollback_release",
        description: "Rolls a release back now. A release that shipped a contract migration is escalated instead; only a human may force that rollback.",
        schema: || {
            let mut p = reason();
            p["force"] = json!({"type": "boolean", "description": "roll back past contract migrations (humans only)"});
            release_props(p, &["release", "reason"])
        },
    },
    Tool {
        name: "freeze_releases",
        description: "Freezes new releases of one service, or of every service (audited). Lifting a freeze is for humans.",
        schema: || {
            let mut p = reason();
            p["service"] =
                json!({"type": "string", "description": "one service; every service without it"});
            props(p, &["reason"])
        },
    },
    Tool {
        name: "request_approval",
        description: "Asks the humans to approve a release (they are notified through the policy's hooks) and returns a handle; the release moves on once an approver approves.",
        schema: || release_props(reason(), &["release", "reason"]),
    },
    Tool {
        name: "approve_release",
        description: "Approves the approval point a release waits at. Needs a human approver: an agent's token is refused, and the refusal says what to do instead.",
        schema: || release_props(reason(), &["release"]),
    },
];

/// A tool's outcome: its structured content and whether it is an error.
type Outcome = (Value, bool);

fn ok(v: Value) -> Outcome {
    (v, false)
}

fn refusal(code: &str, message: &str, instead: &str, details: Value) -> Outcome {
    (
        json!({"error": {"code": code, "message": message, "instead": instead, "details": details}}),
        true,
    )
}

/// What an agent can do about an error the server answered.
fn instead_of(code: &str) -> &'static str {
    match code {
        "four_eyes" => {
            "someone other than who started the release must approve: call request_approval"
        }
        "frozen" => {
            "releases of this service are frozen: wait for a human to lift the freeze, or call request_approval"
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

struct Api {
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Outcome> {
        let base = &self.base;
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let headers = [
            ("authorization", format!("Bearer {}", self.token)),
            ("content-type", "application/json".to_string()),
        ];
        let answer = rampart_adapters::http::send_with(
            method,
            &url,
            body.map(|b| b.to_string()),
            &headers,
            TIMEOUT,
        )
        .await;
        let (status, text) = match answer {
            Ok(a) => a,
            Err(e) => {
                return Err(refusal(
                    "unreachable",
                    &format!("{base}: {e}"),
                    instead_of("unreachable"),
                    Value::Null,
                ));
            }
        };
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let error = &value["error"];
        // An answer without rampart's error body (a proxy's page, a framework's
        // rejection) is named by its status.
        let code = error["code"].as_str().unwrap_or(match status {
            400 | 413 | 422 => "invalid_request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            409 => "conflict",
            _ => "internal",
        });
        let fallback = format!(
            "HTTP {status}: {}",
            text.chars().take(200).collect::<String>().trim()
        );
        let details = error["details"].clone();
        let instead = details["instead"]
            .as_str()
            .map_or_else(|| instead_of(code).to_string(), str::to_string);
        let mut details = details;
        if details.is_object() {
            details["http_status"] = status.into();
        } else {
            details = json!({"http_status": status});
        }
        Err(refusal(
            code,
            error["message"].as_str().unwrap_or(&fallback),
            &instead,
            details,
        ))
    }
}

fn string_arg<'a>(args: &'a Value, name: &str) -> Option<&'a str> {
    args[name].as_str().filter(|s| !s.is_empty())
}

fn required<'a>(args: &'a Value, name: &str) -> Result<&'a str, Outcome> {
    string_arg(args, name).ok_or_else(|| {
        refusal(
            "invalid_request",
            &format!("argument {name} is required"),
            instead_of("invalid_request"),
            Value::Null,
        )
    })
}

fn invalid(message: impl Into<String>) -> Outcome {
    refusal(
        "invalid_request",
        &message.into(),
        instead_of("invalid_request"),
        Value::Null,
    )
}

/// The policy text and the file it came from (if any).
fn policy_arg(args: &Value) -> Result<(String, Option<PathBuf>), Outcome> {
    match (string_arg(args, "file"), string_arg(args, "policy")) {
        (Some(file), None) => {
            let path = PathBuf::from(file);
            std::fs::read_to_string(&path)
                .map(|t| (t, Some(path)))
                .map_err(|e| invalid(format!("{file}: {e}")))
        }
        (None, Some(text)) => Ok((text.to_string(), None)),
        _ => Err(invalid(
            "give the policy as file or as policy (YAML text), one of them",
        )),
    }
}

fn enc(s: &str) -> String {
    rampart_adapters::http::encode(s)
}

async fn call_tool(api: &Api, name: &str, args: &Value) -> Outcome {
    let result = match name {
        "validate_policy" => validate(args),
        "start_release" => start(api, args).await,
        "release_status" => match required(args, "release") {
            Ok(id) => {
                api.call("GET", &format!("/api/v1/releases/{}", enc(id)), None)
                    .await
            }
            Err(e) => Err(e),
        },
        "list_releases" => {
            let path = match string_arg(args, "service") {
                Some(s) => format!("/api/v1/releases?service={}", enc(s)),
                None => "/api/v1/releases".into(),
            };
            api.call("GET", &path, None).await
        }
        "release_events" => match required(args, "release") {
            Ok(id) => {
                let after = args["after"]
                    .as_u64()
                    .map(|a| format!("?after={a}"))
                    .unwrap_or_default();
                api.call(
                    "GET",
                    &format!("/api/v1/releases/{}/events{after}", enc(id)),
                    None,
                )
                .await
            }
            Err(e) => Err(e),
        },
        "replay_policy" => replay(args),
        "check_migrations" => migrations(args),
        "render_runbook" => runbook(args),
        "pause_release" => act(api, args, "pause").await,
        "abort_release" => act(api, args, "abort").await,
        "rollback_release" => act(api, args, "rollback").await,
        "approve_release" => act(api, args, "approve").await,
        "request_approval" => act(api, args, "request-approval").await,
        "freeze_releases" => match required(args, "reason") {
            Ok(reason) => {
                let mut body = json!({"state": "on", "reason": reason});
                if let Some(s) = string_arg(args, "service") {
                    body["service"] = s.into();
                }
                api.call("POST", "/api/v1/freeze", Some(body)).await
            }
            Err(e) => Err(e),
        },
        other => Err(invalid(format!(
            "no tool named {other}; list them with tools/list"
        ))),
    };
    match result {
        Ok(v) if v.is_object() => ok(v),
        Ok(v) => ok(json!({"result": v})),
        Err(e) => e,
    }
}

fn validate(args: &Value) -> Result<Value, Outcome> {
    let (text, file) = policy_arg(args)?;
    let name = file.as_deref().map(|f| f.display().to_string());
    Ok(match rampart_core::Policy::from_yaml(&text) {
        Ok(p) => json!({"valid": true, "service": p.service, "diagnostics": []}),
        Err(e) => json!({
            "valid": false,
            "file": name,
            "diagnostics": e.diagnostics.iter().map(|d| json!({"line": d.line, "col": d.col, "path": d.path, "message": d.message})).collect::<Vec<_>>(),
        }),
    })
}

async fn start(api: &Api, args: &Value) -> Result<Value, Outcome> {
    let (text, file) = policy_arg(args)?;
    let version = required(args, "version")?;
    let mut body = json!({"policy": text, "version": version});
    if let Some(stable) = string_arg(args, "stable") {
        body["stable"] = stable.into();
    }
    // The policy's relative paths resolve next to its file, as with `rampart run`.
    if let Some(dir) = file.as_deref().and_then(Path::parent).and_then(|d| {
        std::fs::canonicalize(if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        })
        .ok()
    }) {
        body["workdir"] = dir.display().to_string().into();
    }
    api.call("POST", "/api/v1/releases", Some(body)).await
}

async fn act(api: &Api, args: &Value, action: &str) -> Result<Value, Outcome> {
    let id = required(args, "release")?;
    let mut body = json!({"reason": string_arg(args, "reason").unwrap_or_default()});
    if args["force"].as_bool() == Some(true) {
        body["force"] = true.into();
    }
    api.call(
        "POST",
        &format!("/api/v1/releases/{}/{action}", enc(id)),
        Some(body),
    )
    .await
}

fn replay(args: &Value) -> Result<Value, Outcome> {
    let file = PathBuf::from(required(args, "file")?);
    let samples = PathBuf::from(required(args, "samples")?);
    // Progress goes to stderr (stdout carries the protocol).
    let report =
        crate::replay::replay(&file, &samples, Output::Json).map_err(|e| invalid(e.to_string()))?;
    serde_json::to_value(report).map_err(|e| invalid(e.to_string()))
}

fn migrations(args: &Value) -> Result<Value, Outcome> {
    let paths: Vec<PathBuf> = args["paths"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    if paths.is_empty() {
        return Err(invalid("paths: give at least one SQL file or directory"));
    }
    let report = crate::migrations::check(&paths).map_err(invalid)?;
    serde_json::to_value(report).map_err(|e| invalid(e.to_string()))
}

fn runbook(args: &Value) -> Result<Value, Outcome> {
    let (text, _) = policy_arg(args)?;
    let policy = rampart_core::Policy::from_yaml(&text).map_err(|e| invalid(e.to_string()))?;
    let version = string_arg(args, "version");
    Ok(
        json!({"service": policy.service, "runbook": rampart_core::runbook::render(&policy, version, None)}),
    )
}

// === resources ===

async fn list_resources(api: &Api) -> Value {
    let mut resources = Vec::new();
    if let Ok(v) = api.call("GET", "/api/v1/services", None).await {
        for s in v["services"].as_array().into_iter().flatten() {
            let Some(name) = s["service"].as_str() else {
                continue;
            };
            resources.push(json!({"uri": format!("rampart://policies/{name}"), "name": format!("{name} policy"), "mimeType": "application/yaml", "description": format!("the policy of {name}'s latest release (secrets redacted)")}));
            resources.push(json!({"uri": format!("rampart://runbooks/{name}"), "name": format!("{name} runbook"), "mimeType": "text/markdown", "description": format!("the release runbook of {name}")}));
        }
    }
    if let Ok(v) = api.call("GET", "/api/v1/releases?limit=20", None).await {
        for r in v.as_array().into_iter().flatten() {
            let Some(id) = r["id"].as_str() else {
                continue;
            };
            resources.push(json!({"uri": format!("rampart://releases/{id}/audit"), "name": format!("audit log of {id}"), "mimeType": "application/json"}));
        }
    }
    json!({ "resources": resources })
}

async fn read_resource(api: &Api, uri: &str) -> Result<Value, String> {
    let text_of = |outcome: Outcome| {
        outcome.0["error"]["message"]
            .as_str()
            .unwrap_or("refused")
            .to_string()
    };
    let (mime, text) = if let Some(service) = uri.strip_prefix("rampart://policies/") {
        let v = api
            .call("GET", &format!("/api/v1/policies/{}", enc(service)), None)
            .await
            .map_err(text_of)?;
        (
            "application/yaml",
            v["policy"].as_str().unwrap_or_default().to_string(),
        )
    } else if let Some(service) = uri.strip_prefix("rampart://runbooks/") {
        let v = api
            .call("GET", &format!("/api/v1/policies/{}", enc(service)), None)
            .await
            .map_err(text_of)?;
        let policy = rampart_core::Policy::from_yaml(v["policy"].as_str().unwrap_or_default())
            .map_err(|e| e.to_string())?;
        (
            "text/markdown",
            rampart_core::runbook::render(&policy, None, None),
        )
    } else if let Some(id) = uri
        .strip_prefix("rampart://releases/")
        .and_then(|r| r.strip_suffix("/audit"))
    {
        let v = api
            .call("GET", &format!("/api/v1/releases/{}/audit", enc(id)), None)
            .await
            .map_err(text_of)?;
        (
            "application/json",
            serde_json::to_string_pretty(&v).unwrap_or_default(),
        )
    } else {
        return Err(format!("no resource {uri}; list them with resources/list"));
    };
    Ok(json!({"contents": [{"uri": uri, "mimeType": mime, "text": text}]}))
}

// === the protocol ===

fn tools_list() -> Value {
    let tools: Vec<Value> = TOOLS
        .iter()
        .map(|t| json!({"name": t.name, "description": t.description, "inputSchema": (t.schema)()}))
        .collect();
    json!({ "tools": tools })
}

fn rpc_error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

async fn handle(api: &Api, message: &Value) -> Option<Value> {
    // A notification (no id) is not answered; neither is a response to us (no method).
    let id = message.get("id")?.clone();
    let Some(method) = message.get("method").and_then(Value::as_str) else {
        if message.get("result").is_some() || message.get("error").is_some() {
            return None;
        }
        return Some(rpc_error(&id, -32600, "a request needs a method"));
    };
    let params = &message["params"];
    let result = match method {
        "initialize" => {
            let asked = params["protocolVersion"].as_str().unwrap_or_default();
            let version = PROTOCOL_VERSIONS
                .iter()
                .find(|v| **v == asked)
                .unwrap_or(&PROTOCOL_VERSIONS[PROTOCOL_VERSIONS.len() - 1]);
            json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}, "resources": {"listChanged": false}},
                "serverInfo": {"name": "rampart", "version": env!("CARGO_PKG_VERSION")},
                "instructions": "rampart runs releases safely. Start a release with start_release and follow it with release_status. You may pause, abort, roll back and freeze; approvals, promotion, resuming, forced rollbacks and lifting freezes are for humans: ask with request_approval.",
            })
        }
        "ping" => json!({}),
        "tools/list" => tools_list(),
        "tools/call" => {
            let Some(name) = params["name"].as_str() else {
                return Some(rpc_error(&id, -32602, "tools/call needs a tool name"));
            };
            if !TOOLS.iter().any(|t| t.name == name) {
                return Some(rpc_error(&id, -32602, &format!("unknown tool {name}")));
            }
            let args = if params["arguments"].is_object() {
                params["arguments"].clone()
            } else {
                json!({})
            };
            let (content, is_error) = call_tool(api, name, &args).await;
            let text = serde_json::to_string_pretty(&content).unwrap_or_default();
            json!({
                "content": [{"type": "text", "text": text}],
                "structuredContent": content,
                "isError": is_error,
            })
        }
        "resources/list" => list_resources(api).await,
        "resources/read" => {
            let Some(uri) = params["uri"].as_str() else {
                return Some(rpc_error(&id, -32602, "resources/read needs a uri"));
            };
            match read_resource(api, uri).await {
                Ok(v) => v,
                Err(e) => return Some(rpc_error(&id, -32002, &e)),
            }
        }
        "resources/templates/list" => json!({"resourceTemplates": []}),
        "prompts/list" => json!({"prompts": []}),
        _ => {
            return Some(rpc_error(
                &id,
                -32601,
                &format!("method {method} not found"),
            ));
        }
    };
    Some(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

/// Runs the server until stdin closes. Exit code 0, or 2 when the token's role would
/// let an agent do what only humans may (unless told to accept it).
pub async fn run(opts: McpOptions) -> i32 {
    let local = match &opts.server {
        Some(_) => None,
        None => match local_server(&opts.state_dir).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        },
    };
    let api = match &local {
        Some(l) => Api {
            base: format!("http://{}", l.addr),
            token: l.token.clone(),
        },
        None => Api {
            base: opts.server.clone().unwrap_or_default(),
            token: opts.token.clone().unwrap_or_default(),
        },
    };
    let code = serve_stdio(&api, &opts).await;
    if let Some(l) = local {
        l.close().await;
    }
    code
}

/// The local store behind a `rampart serve` of this process on loopback, with an agent
/// token for this session only: the same rules as against a real server, enforced the
/// same way.
struct Local {
    addr: std::net::SocketAddr,
    token: String,
    name: String,
    store: std::sync::Arc<rampart_adapters::store::StateStore>,
}

impl Local {
    async fn close(self) {
        use rampart_core::ports::Clock;
        let now = rampart_adapters::clock::TokioClock::new().now();
        if let Err(e) = self
            .store
            .revoke_token(&self.name, "rampart mcp", now)
            .await
        {
            eprintln!(
                "warning: the session's agent token {} stays live: {e}",
                self.name
            );
        }
    }
}

async fn local_server(state_dir: &Path) -> Result<Local, String> {
    use rampart_core::ports::Clock;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = crate::serve::ServeOptions {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        state_dir: state_dir.to_path_buf(),
        store: None,
        replica: None,
        lease_ttl: Duration::from_secs(15),
        announce: Some(tx),
    };
    let server = tokio::spawn(crate::serve::run(opts));
    // The server holds the store's lock once it listens; only then is a token made.
    let Some(addr) = rx.recv().await else {
        let code = server.await.unwrap_or(1);
        return Err(format!(
            "the local server did not start (exit {code}); see the message above"
        ));
    };
    let store = crate::serve::open_store(None, state_dir).await?;
    let name = format!("mcp-agent-{}", std::process::id());
    let now = rampart_adapters::clock::TokioClock::new().now();
    let token = store
        .create_token(&name, "agent", "rampart mcp", now)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Local {
        addr,
        token,
        name,
        store,
    })
}

async fn serve_stdio(api: &Api, opts: &McpOptions) -> i32 {
    if opts.server.is_some() {
        match api.call("GET", "/api/v1/whoami", None).await {
            Ok(who) => {
                let role = who["role"].as_str().unwrap_or_default();
                if !matches!(role, "agent" | "viewer") && !opts.any_role {
                    eprintln!(
                        "error: the token in RAMPART_TOKEN has role {role}: an agent using it could approve, promote or lift freezes. Create one with `rampart token create --role agent --name NAME` (or pass --any-role)"
                    );
                    return 2;
                }
            }
            Err((e, _)) => {
                eprintln!(
                    "error: {}",
                    e["error"]["message"]
                        .as_str()
                        .unwrap_or("the server refused the token")
                );
                return 2;
            }
        }
    }
    let mut input = BufReader::new(tokio::io::stdin());
    let mut stdout = tokio::io::stdout();
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bytes, not text: a line that is not UTF-8 is answered as a parse error
        // instead of ending the server.
        match (&mut input)
            .take(MAX_MESSAGE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) => return 0,
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: reading stdin: {e}");
                return 1;
            }
        }
        if line.len() as u64 >= MAX_MESSAGE && !line.ends_with(b"\n") {
            // Too long: skip the rest of it.
            let mut rest = Vec::new();
            let _ = input.read_until(b'\n', &mut rest).await;
            let answer = rpc_error(&Value::Null, -32600, "message too long");
            if write_line(&mut stdout, &answer).await.is_err() {
                return 0;
            }
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let answer = match serde_json::from_slice::<Value>(&line) {
            Ok(Value::Array(batch)) if batch.is_empty() => {
                Some(rpc_error(&Value::Null, -32600, "an empty batch"))
            }
            Ok(Value::Array(batch)) => {
                let mut out = Vec::new();
                for m in &batch {
                    if let Some(a) = handle(api, m).await {
                        out.push(a);
                    }
                }
                (!out.is_empty()).then_some(Value::Array(out))
            }
            Ok(m) => handle(api, &m).await,
            Err(e) => Some(rpc_error(
                &Value::Null,
                -32700,
                &format!("parse error: {e}"),
            )),
        };
        if let Some(a) = answer
            && write_line(&mut stdout, &a).await.is_err()
        {
            return 0;
        }
    }
}

/// The longest message read, in bytes.
const MAX_MESSAGE: u64 = 4 << 20;

async fn write_line(out: &mut tokio::io::Stdout, message: &Value) -> std::io::Result<()> {
    let mut text = message.to_string();
    text.push('\n');
    out.write_all(text.as_bytes()).await?;
    out.flush().await
}
