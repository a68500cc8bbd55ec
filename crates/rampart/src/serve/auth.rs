//! Who may call the API: bearer tokens, their roles, and what each role may do.
//!
//! Owns the role table and the `Caller` extractor. A token is looked up by its hash;
//! the secret itself is never logged or stored. It must not act on releases.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::App;
use super::error::ApiError;

/// A token's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Reads; starts, pauses, resumes, aborts and rolls back releases.
    Deployer,
    /// Reads; approves and promotes.
    Approver,
    /// Everything, including freezes and tokens.
    Admin,
    /// An automated operator (an AI agent through `rampart mcp`): reads, starts
    /// releases, and moves them only in the safe direction (pause, abort, roll back
    /// without force, freeze on), and asks humans for approvals. It never approves,
    /// promotes, resumes, forces a rollback, lifts a freeze or manages tokens.
    Agent,
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    /// Read releases, events, metrics, policies, freezes.
    Read,
    /// Start a release.
    Create,
    /// Pause, abort or roll back: never towards more traffic on the new version.
    Hold,
    /// Let a paused release advance again.
    Resume,
    /// Roll back past non-backward-compatible migrations (the data was repaired).
    Force,
    /// Approve at an approval point, or promote.
    Approve,
    /// Freeze releases.
    FreezeOn,
    /// Lift a freeze.
    FreezeOff,
    /// Create, list and revoke tokens.
    Tokens,
    /// Ask the humans for an approval (they are notified).
    RequestApproval,
}

impl Right {
    /// What an agent refused this right should do instead, in words for its model.
    fn instead(self) -> &'static str {
        match self {
            Right::Approve => {
                "an approval from a human with role approver is needed: call request_approval and wait for the release to move on"
            }
            Right::Resume => {
                "a paused release is resumed by a human (role deployer): call request_approval"
            }
            Right::Force => {
                "a forced rollback past contract migrations needs a human who repaired the data: call request_approval, or roll back without force"
            }
            Right::FreezeOff => "a freeze is lifted by a human admin: call request_approval",
            Right::Tokens => "tokens are managed by a human admin",
            Right::Create
            | Right::Hold
            | Right::FreezeOn
            | Right::RequestApproval
            | Right::Read => "ask a human operator",
        }
    }
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Deployer,
        Role::Approver,
        Role::Admin,
        Role::Agent,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::Agent => "agent",
        }
    }

    /// The role with this name.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// Whether the role has the right.
    pub fn allows(self, right: Right) -> bool {
        match self {
            Role::Admin => true,
            Role::Viewer => right == Right::Read,
            Role::Deployer => matches!(
                right,
                Right::Read
                    | Right::Create
                    | Right::Hold
                    | Right::Resume
                    | Right::Force
                    | Right::RequestApproval
            ),
            Role::Approver => {
                matches!(right, Right::Read | Right::Approve | Right::RequestApproval)
            }
            Role::Agent => matches!(
                right,
                Right::Read
                    | Right::Create
                    | Right::Hold
                    | Right::FreezeOn
                    | Right::RequestApproval
            ),
        }
    }

    /// The roles that have a right, for error messages.
    pub fn with(right: Right) -> Vec<&'static str> {
        Role::ALL
            .into_iter()
            .filter(|r| r.allows(right))
            .map(Role::as_str)
            .collect()
    }
}

/// The caller of a request: the token's name (recorded as the actor of everything it
/// does) and role.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

impl Caller {
    /// Fails with 403 unless the caller's role has `right`. The error's details name
    /// the roles that have it and, for an agent, what it may do instead.
    pub fn require(&self, right: Right) -> Result<(), ApiError> {
        if self.role.allows(right) {
            return Ok(());
        }
        let needs = Role::with(right);
        let humans: Vec<&str> = needs.iter().copied().filter(|r| *r != "agent").collect();
        let mut details = serde_json::json!({"role": self.role.as_str(), "needs": needs});
        if self.role == Role::Agent {
            details["instead"] = right.instead().into();
        }
        Err(ApiError::forbidden(format!(
            "token {} has role {}; this needs one of: {}{}",
            self.name,
            self.role.as_str(),
            humans.join(", "),
            if self.role == Role::Agent {
                format!(" ({})", right.instead())
            } else {
                String::new()
            }
        ))
        .with_details(details))
    }

    /// Fails with 403 unless the caller's role has at least one of `rights` (the
    /// precise one is checked once the request says which it needs).
    pub fn require_any(&self, rights: &[Right]) -> Result<(), ApiError> {
        match rights.iter().find(|r| self.role.allows(**r)) {
            Some(_) => Ok(()),
            None => rights.first().map_or(Ok(()), |r| self.require(*r)),
        }
    }
}

/// The token a request presents, and whether it came in the dashboard's session
/// cookie: `Authorization: Bearer TOKEN` first, else the cookie.
fn presented(parts: &Parts) -> Option<(String, bool)> {
    if let Some(h) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let (scheme, token) = h.to_str().ok()?.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| (token.trim().to_string(), false));
    }
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == super::SESSION_COOKIE)
        .map(|(_, v)| (v.to_string(), true))
}

/// The token a request presented, kept for a long-lived answer (the live feed) to ask
/// again whether it still holds: a revoked token's stream ends. Its `Debug` shows no
/// secret.
pub struct Credential(String);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(redacted)")
    }
}

impl Credential {
    /// Whether the token is still known, not revoked, and its role still has `right`.
    pub async fn still_allows(&self, app: &App, right: Right) -> bool {
        matches!(
            app.store.token(&self.0).await,
            Ok(Some((_, role))) if Role::parse(&role).is_some_and(|r| r.allows(right))
        )
    }
}

impl FromRequestParts<App> for Credential {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &App) -> Result<Self, Self::Rejection> {
        presented(parts)
            .map(|(token, _)| Credential(token))
            .ok_or_else(|| ApiError::unauthorized("no token"))
    }
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let Some((token, by_cookie)) = presented(parts) else {
            return Err(ApiError::unauthorized(
                "no token: send `Authorization: Bearer TOKEN` (create one with `rampart token create`)",
            ));
        };
        // A cookie rides along with any request the browser makes; a change made with
        // one must also carry the dashboard's header, which other sites cannot set.
        if by_cookie
            && parts.method != axum::http::Method::GET
            && !parts.headers.contains_key("x-rampart-ui")
        {
            return Err(ApiError::forbidden(
                "a change made with the dashboard's session needs the X-Rampart-UI header",
            ));
        }
        let found = app
            .store
            .token(&token)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let Some((name, role)) = found else {
            return Err(ApiError::unauthorized("the token is unknown or revoked"));
        };
        let Some(role) = Role::parse(&role) else {
            return Err(ApiError::forbidden(format!(
                "token {name} has a role this server does not know ({role})"
            )));
        };
        Ok(Caller { name, role })
    }
}
