//! The MCP server's resources: each service's policy (secrets redacted) and runbook,
//! and the audit log of the latest releases, read through the client the CLI uses.
//!
//! Owns the `rampart://` URIs and what each one reads. It must not change anything.

use rmcp::ErrorData;
use rmcp::model::{ReadResourceResult, Resource, ResourceContents};
use serde_json::Value;

use crate::client::Backend;

const POLICIES: &str = "rampart://policies/";
const RUNBOOKS: &str = "rampart://runbooks/";
const RELEASES: &str = "rampart://releases/";
const AUDIT: &str = "/audit";

/// How many releases have their audit log listed.
const RELEASES_LISTED: usize = 20;

/// The resources there are now: a policy and a runbook per service, the audit log of
/// the latest releases. What cannot be read is left out.
pub(super) async fn list(backend: &Backend) -> Vec<Resource> {
    let mut resources = Vec::new();
    if let Ok(v) = backend.call("GET", "/api/v1/services", None).await {
        for name in v["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["service"].as_str())
        {
            resources.push(
                Resource::new(format!("{POLICIES}{name}"), format!("{name} policy"))
                    .with_mime_type("application/yaml")
                    .with_description(format!(
                        "the policy of {name}'s latest release (secrets redacted)"
                    )),
            );
            resources.push(
                Resource::new(format!("{RUNBOOKS}{name}"), format!("{name} runbook"))
                    .with_mime_type("text/markdown")
                    .with_description(format!("the release runbook of {name}")),
            );
        }
    }
    if let Ok(releases) = backend.list(None, RELEASES_LISTED).await {
        for r in releases {
            resources.push(
                Resource::new(
                    format!("{RELEASES}{}{AUDIT}", r.id),
                    format!("audit log of {}", r.id),
                )
                .with_mime_type("application/json"),
            );
        }
    }
    resources
}

/// One resource's contents.
pub(super) async fn read(backend: &Backend, uri: &str) -> Result<ReadResourceResult, ErrorData> {
    let (mime, text) = if let Some(service) = uri.strip_prefix(POLICIES) {
        ("application/yaml", policy_of(backend, service).await?)
    } else if let Some(service) = uri.strip_prefix(RUNBOOKS) {
        let policy = rampart_core::Policy::from_stored(&policy_of(backend, service).await?)
            .map_err(|e| not_found(e.to_string()))?;
        (
            "text/markdown",
            rampart_core::runbook::render(&policy, "POLICY", None, None),
        )
    } else if let Some(id) = uri
        .strip_prefix(RELEASES)
        .and_then(|r| r.strip_suffix(AUDIT))
    {
        let path = format!("/api/v1/releases/{}/audit", encode(id));
        let audit = backend
            .call("GET", &path, None)
            .await
            .map_err(|f| not_found(f.message))?;
        (
            "application/json",
            serde_json::to_string_pretty(&audit).unwrap_or_default(),
        )
    } else {
        return Err(not_found(format!(
            "no resource {uri}; list them with resources/list"
        )));
    };
    Ok(ReadResourceResult::new(vec![
        ResourceContents::text(text, uri).with_mime_type(mime),
    ]))
}

/// The policy of a service's latest release, secrets redacted.
async fn policy_of(backend: &Backend, service: &str) -> Result<String, ErrorData> {
    let path = format!("/api/v1/policies/{}", encode(service));
    let v = backend
        .call("GET", &path, None)
        .await
        .map_err(|f| not_found(f.message))?;
    Ok(v["policy"].as_str().map(str::to_string).unwrap_or_default())
}

fn not_found(message: String) -> ErrorData {
    ErrorData::resource_not_found(message, None::<Value>)
}

fn encode(s: &str) -> String {
    rampart_adapters::http::encode(s)
}
