//! AWS credentials found the way the AWS tools find them: the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), else a profile
//! (`AWS_PROFILE`, default `default`) in the shared credentials file
//! (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`).
//!
//! Owns that lookup and reading the file's INI. It must not print a credential: its
//! errors name the variables, the file and the profile it looked at, never a value or a
//! line of the file. Profiles that assume a role, use SSO or run a `credential_process`,
//! and instance or container roles, are not read: such a lookup fails and says so.

use std::path::{Path, PathBuf};

use super::{ReadError, Secret, sigv4};

/// The variable holding the access key id.
pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// The variable holding the secret access key.
pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// The variable holding a session token (temporary credentials).
pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
/// The variable naming the profile.
pub const PROFILE: &str = "AWS_PROFILE";
/// The variable naming the shared credentials file.
pub const SHARED_CREDENTIALS_FILE: &str = "AWS_SHARED_CREDENTIALS_FILE";

/// A set of keys and where they were found. `Debug` prints where, never a value.
#[derive(Clone)]
pub struct Credentials {
    /// The access key id.
    pub access_key_id: Secret,
    /// The secret access key; only signatures made with it are sent.
    pub secret_access_key: Secret,
    /// The session token, if the keys are temporary.
    pub session_token: Option<Secret>,
    /// Where they were found, for people: `the environment`, or the profile and file.
    pub source: String,
    /// Whether they came from the shared credentials file, which whatever refreshes
    /// temporary credentials rewrites: such keys are looked up again before each use.
    pub from_file: bool,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("source", &self.source)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .finish()
    }
}

impl Credentials {
    /// The keys, for the signer.
    pub fn keys(&self) -> sigv4::Keys<'_> {
        sigv4::Keys {
            access_key_id: self.access_key_id.expose(),
            secret_access_key: self.secret_access_key.expose(),
            session_token: self.session_token.as_ref().map(Secret::expose),
        }
    }

    /// Every value to scrub from what a provider echoes.
    pub fn secrets(&self) -> Vec<&Secret> {
        let mut all = vec![&self.secret_access_key, &self.access_key_id];
        all.extend(&self.session_token);
        all
    }
}

/// Every variable [`find`] reads.
pub const VARIABLES: [&str; 6] = [
    ACCESS_KEY_ID,
    SECRET_ACCESS_KEY,
    SESSION_TOKEN,
    PROFILE,
    SHARED_CREDENTIALS_FILE,
    "HOME",
];

/// The credentials in `env`, else in the shared credentials file it points at; or
/// what was looked for, and why it is not there.
pub fn find(env: &dyn Fn(&str) -> Option<String>) -> Result<Credentials, ReadError> {
    let set = |var: &str| env(var).filter(|v| !v.is_empty());
    match (set(ACCESS_KEY_ID), set(SECRET_ACCESS_KEY)) {
        (Some(_), Some(_)) => {
            return Ok(Credentials {
                access_key_id: Secret::from_env(ACCESS_KEY_ID, env)?,
                secret_access_key: Secret::from_env(SECRET_ACCESS_KEY, env)?,
                session_token: Secret::from_env(SESSION_TOKEN, env).ok(),
                source: format!("the environment ({ACCESS_KEY_ID})"),
                from_file: false,
            });
        }
        (Some(_), None) | (None, Some(_)) => {
            let (is, not) = match set(ACCESS_KEY_ID) {
                Some(_) => (ACCESS_KEY_ID, SECRET_ACCESS_KEY),
                None => (SECRET_ACCESS_KEY, ACCESS_KEY_ID),
            };
            return Err(ReadError::Other(format!(
                "{is} is set but {not} is not: set both, or neither to use the shared credentials file"
            )));
        }
        (None, None) => {}
    }
    let profile = set(PROFILE).unwrap_or_else(|| "default".to_string());
    let path = match (set(SHARED_CREDENTIALS_FILE), set("HOME")) {
        (Some(file), _) => PathBuf::from(file),
        (None, Some(home)) => Path::new(&home).join(".aws").join("credentials"),
        (None, None) => {
            return Err(ReadError::Other(format!(
                "no AWS credentials: {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY} are not set, and neither {SHARED_CREDENTIALS_FILE} nor HOME says where the shared credentials file is"
            )));
        }
    };
    let nothing =
        format!("no AWS credentials: {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY} are not set");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ReadError::Other(format!(
            "{nothing}, and the shared credentials file {} cannot be read ({})",
            path.display(),
            e.kind()
        ))
    })?;
    let from = format!("profile `{profile}` in {}", path.display());
    let Some(section) = profile_section(&text, &profile) else {
        return Err(ReadError::Other(format!(
            "{nothing}, and {} has no profile `{profile}` ({PROFILE} picks another)",
            path.display()
        )));
    };
    let key = |name: &str| {
        section
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(k, v)| Secret::from_file(k, v.clone()))
    };
    match (key("aws_access_key_id"), key("aws_secret_access_key")) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials {
            access_key_id,
            secret_access_key,
            session_token: key("aws_session_token"),
            source: from,
            from_file: true,
        }),
        _ => Err(ReadError::Other(format!(
            "{from} has no aws_access_key_id and aws_secret_access_key; profiles that assume a role, use SSO or a credential_process are not read: export {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY} instead"
        ))),
    }
}

/// The `key = value` pairs of `[profile]` in an INI text (`#` and `;` start comment
/// lines); `None` when there is no such section.
fn profile_section(text: &str, profile: &str) -> Option<Vec<(String, String)>> {
    let mut found = false;
    let mut inside = false;
    let mut pairs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == profile;
            found |= inside;
            continue;
        }
        // Key names in any case, as the AWS CLI's parser reads them.
        if inside && let Some((k, v)) = line.split_once('=') {
            pairs.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    found.then_some(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# a comment\n[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key=defaultsecretvalue\n\n[ci]\n; temporary\naws_access_key_id = ASIACI\naws_secret_access_key = cisecretvalue\naws_session_token = citokenvalue\n[sso]\nsso_start_url = https://example.awsapps.com/start\n";

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |var| pairs.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone())
    }

    /// Review: `AWS_ACCESS_KEY_ID = ...` in the file, which the AWS CLI reads (its
    /// parser lower-cases key names), was not found.
    #[test]
    fn key_names_are_read_in_any_case() {
        let pairs = profile_section(
            "[default]\nAWS_Access_Key_ID = AKIDUPPER\nAWS_SECRET_ACCESS_KEY = uppersecret\n",
            "default",
        )
        .unwrap();
        assert_eq!(
            pairs,
            vec![
                ("aws_access_key_id".to_string(), "AKIDUPPER".to_string()),
                (
                    "aws_secret_access_key".to_string(),
                    "uppersecret".to_string()
                )
            ]
        );
    }

    #[test]
    fn the_environment_comes_first() {
        let env = env_of(&[
            (ACCESS_KEY_ID, "AKIDENV"),
            (SECRET_ACCESS_KEY, "envsecretvalue"),
            (SESSION_TOKEN, "envtokenvalue"),
            (SHARED_CREDENTIALS_FILE, "/nonexistent/credentials"),
        ]);
        let c = find(&env).unwrap();
        let keys = c.keys();
        assert_eq!(
            (
                keys.access_key_id,
                keys.secret_access_key,
                keys.session_token
            ),
            ("AKIDENV", "envsecretvalue", Some("envtokenvalue"))
        );
        assert_eq!(c.source, "the environment (AWS_ACCESS_KEY_ID)");
        let shown = format!("{c:?} {keys:?}");
        assert!(
            !shown.contains("envsecretvalue") && !shown.contains("envtokenvalue"),
            "{shown}"
        );
    }

    #[test]
    fn half_the_environment_is_an_error_naming_the_other_half() {
        let e = find(&env_of(&[(ACCESS_KEY_ID, "AKIDENV")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set both, or neither to use the shared credentials file"
        );
    }

    #[test]
    fn profiles_from_the_shared_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(&path, FILE).unwrap();
        let file = path.to_str().unwrap();
        let c = find(&env_of(&[(SHARED_CREDENTIALS_FILE, file)])).unwrap();
        assert_eq!(
            (c.keys().access_key_id, c.keys().secret_access_key),
            ("AKIDDEFAULT", "defaultsecretvalue")
        );
        assert!(c.session_token.is_none());
        let ci = find(&env_of(&[(SHARED_CREDENTIALS_FILE, file), (PROFILE, "ci")])).unwrap();
        assert_eq!(ci.keys().session_token, Some("citokenvalue"));
        assert_eq!(ci.source, format!("profile `ci` in {file}"));
        // ~/.aws/credentials under HOME.
        std::fs::create_dir(dir.path().join(".aws")).unwrap();
        std::fs::write(dir.path().join(".aws/credentials"), FILE).unwrap();
        let home = find(&env_of(&[("HOME", dir.path().to_str().unwrap())])).unwrap();
        assert_eq!(home.keys().access_key_id, "AKIDDEFAULT");

        for (env, says) in [
            (
                vec![(SHARED_CREDENTIALS_FILE, file), (PROFILE, "prod")],
                format!("no AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set, and {file} has no profile `prod` (AWS_PROFILE picks another)"),
            ),
            (
                vec![(SHARED_CREDENTIALS_FILE, file), (PROFILE, "sso")],
                format!("profile `sso` in {file} has no aws_access_key_id and aws_secret_access_key"),
            ),
            (
                vec![(SHARED_CREDENTIALS_FILE, "/nonexistent/credentials")],
                "no AWS credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set, and the shared credentials file /nonexistent/credentials cannot be read (entity not found)".to_string(),
            ),
            (
                vec![],
                "neither AWS_SHARED_CREDENTIALS_FILE nor HOME says where".to_string(),
            ),
        ] {
            let e = find(&env_of(&env)).unwrap_err().to_string();
            assert!(e.contains(&says), "{e}");
            assert!(!e.contains("secretvalue") && !e.contains("AKIDDEFAULT"), "{e}");
        }
    }
}
