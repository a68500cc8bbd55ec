//! AWS Signature Version 4: the `Authorization` header that proves a request was made
//! with a secret access key, without sending the key.
//!
//! Owns the four documented steps: the canonical request (method, URI, query, the
//! signed headers, the payload's SHA-256), the string to sign (algorithm, time,
//! credential scope, the canonical request's hash), the signing key (HMAC-SHA256 of
//! `AWS4` + secret over the date, region, service and `aws4_request`), and the
//! signature over the string to sign. The unit tests pin it to the examples AWS
//! publishes.
//!
//! It must not read credentials, the clock or the network: the caller hands it the
//! keys and the time, and sends the headers it returns.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The only algorithm this signer speaks.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The keys a request is signed with. `Debug` never prints the secret or the token.
pub struct Keys<'a> {
    /// The access key id (`AKIA...`, `ASIA...`), sent in the credential scope.
    pub access_key_id: &'a str,
    /// The secret access key: only its HMACs leave this module.
    pub secret_access_key: &'a str,
    /// A session token for temporary credentials, sent as `X-Amz-Security-Token`
    /// (and signed).
    pub session_token: Option<&'a str>,
}

impl std::fmt::Debug for Keys<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("secret_access_key", &"redacted")
            .field("session_token", &self.session_token.map(|_| "redacted"))
            .finish_non_exhaustive()
    }
}

/// What a request is, as the signature covers it.
#[derive(Debug)]
pub struct Request<'a> {
    /// `GET`, `POST`.
    pub method: &'a str,
    /// The path as sent (`/`); each segment is encoded once more for the canonical URI,
    /// as every service but S3 expects.
    pub path: &'a str,
    /// Query parameters, unencoded, in any order.
    pub query: &'a [(&'a str, &'a str)],
    /// The headers to sign, `host` among them, with the values sent. `x-amz-date`
    /// and `x-amz-security-token` are added by [`sign`].
    pub headers: &'a [(&'a str, &'a str)],
    /// The body.
    pub payload: &'a [u8],
}

/// Where and when a signature holds: the scope's region and service, and the time.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// The region (`us-east-1`).
    pub region: &'a str,
    /// The service's signing name (`monitoring` for CloudWatch).
    pub service: &'a str,
    /// `YYYYMMDDTHHMMSSZ`, UTC: the `X-Amz-Date` header's value.
    pub amz_date: &'a str,
}

impl Scope<'_> {
    /// `YYYYMMDD`, the date the signing key is derived for.
    fn date(&self) -> &str {
        self.amz_date.get(..8).unwrap_or(self.amz_date)
    }

    /// `DATE/REGION/SERVICE/aws4_request`.
    pub fn credential_scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date(),
            self.region,
            self.service
        )
    }
}

/// The headers that sign `req`: `X-Amz-Date`, `X-Amz-Security-Token` when the keys
/// carry one, and `Authorization`. Send them with the headers `req` lists.
pub fn sign(req: &Request<'_>, keys: &Keys<'_>, scope: &Scope<'_>) -> Vec<(&'static str, String)> {
    let mut headers: Vec<(&str, &str)> = req.headers.to_vec();
    headers.push(("x-amz-date", scope.amz_date));
    if let Some(token) = keys.session_token {
        headers.push(("x-amz-security-token", token));
    }
    let signed = Request {
        headers: &headers,
        ..*req
    };
    let (canonical, signed_headers) = canonical_request(&signed);
    let to_sign = string_to_sign(scope, &canonical);
    let signature = hex::encode(hmac(
        &signing_key(keys.secret_access_key, scope),
        to_sign.as_bytes(),
    ));
    let mut out = vec![("X-Amz-Date", scope.amz_date.to_string())];
    if let Some(token) = keys.session_token {
        out.push(("X-Amz-Security-Token", token.to_string()));
    }
    out.push((
        "Authorization",
        format!(
            "{ALGORITHM} Credential={}/{}, SignedHeaders={signed_headers}, Signature={signature}",
            keys.access_key_id,
            scope.credential_scope()
        ),
    ));
    out
}

/// The canonical request, and its `SignedHeaders` list.
pub fn canonical_request(req: &Request<'_>) -> (String, String) {
    let uri: Vec<String> = req.path.split('/').map(crate::http::encode).collect();
    let uri = match uri.join("/") {
        empty if empty.is_empty() => "/".to_string(),
        uri => uri,
    };
    let mut query: Vec<(String, String)> = req
        .query
        .iter()
        .map(|(k, v)| (crate::http::encode(k), crate::http::encode(v)))
        .collect();
    query.sort();
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    // Lower-case names, sorted; repeated names joined with commas in the order sent;
    // values trimmed with inner runs of spaces folded to one.
    let mut headers: Vec<(String, String)> = Vec::new();
    for (name, value) in req.headers {
        let name = name.to_ascii_lowercase();
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        match headers.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push(',');
                v.push_str(&value);
            }
            None => headers.push((name, value)),
        }
    }
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    let signed = signed.join(";");
    let canonical = format!(
        "{}\n{uri}\n{}\n{canonical_headers}\n{signed}\n{}",
        req.method,
        query.join("&"),
        hex::encode(Sha256::digest(req.payload))
    );
    (canonical, signed)
}

/// The string to sign: the algorithm, the time, the credential scope and the
/// canonical request's SHA-256.
pub fn string_to_sign(scope: &Scope<'_>, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{}\n{}\n{}",
        scope.amz_date,
        scope.credential_scope(),
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    )
}

/// The signing key: `AWS4` + secret, HMAC'd over the date, region, service and
/// `aws4_request` in turn.
pub fn signing_key(secret_access_key: &str, scope: &Scope<'_>) -> [u8; 32] {
    let k_date = hmac(
        format!("AWS4{secret_access_key}").as_bytes(),
        scope.date().as_bytes(),
    );
    let k_region = hmac(&k_date, scope.region.as_bytes());
    let k_service = hmac(&k_region, scope.service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// `YYYYMMDDTHHMMSSZ` for `ms` since the Unix epoch, or `None` past the year 9999.
pub fn amz_date(ms: rampart_core::Millis) -> Option<String> {
    let ms = i64::try_from(ms).ok()?;
    let at = jiff::Timestamp::from_millisecond(ms).ok()?;
    Some(at.strftime("%Y%m%dT%H%M%SZ").to_string())
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The credentials every AWS signing example uses.
    const KEY_ID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const KEYS: Keys<'static> = Keys {
        access_key_id: KEY_ID,
        secret_access_key: SECRET,
        session_token: None,
    };
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// AWS's worked example in "Signature Version 4 signing process" (IAM ListUsers,
    /// 2015-08-30 12:36:00 UTC): every intermediate value is the documented one.
    #[test]
    fn the_documented_iam_list_users_example_step_by_step() {
        let req = Request {
            method: "GET",
            path: "/",
            query: &[("Version", "2010-05-08"), ("Action", "ListUsers")],
            headers: &[
                (
                    "Content-Type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
                ("Host", "iam.amazonaws.com"),
                ("X-Amz-Date", "20150830T123600Z"),
            ],
            payload: b"",
        };
        let scope = Scope {
            region: "us-east-1",
            service: "iam",
            amz_date: "20150830T123600Z",
        };
        let (canonical, signed) = canonical_request(&req);
        assert_eq!(
            canonical,
            format!(
                "GET\n/\nAction=ListUsers&Version=2010-05-08\ncontent-type:application/x-www-form-urlencoded; charset=utf-8\nhost:iam.amazonaws.com\nx-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n{EMPTY_SHA256}"
            )
        );
        assert_eq!(signed, "content-type;host;x-amz-date");
        let to_sign = string_to_sign(&scope, &canonical);
        assert_eq!(
            to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\nf536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        let key = signing_key(SECRET, &scope);
        assert_eq!(
            hex::encode(key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
        assert_eq!(
            hex::encode(hmac(&key, to_sign.as_bytes())),
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    /// The same example through [`sign`]: the documented `Authorization` header.
    #[test]
    fn the_documented_iam_example_authorization_header() {
        let req = Request {
            method: "GET",
            path: "/",
            query: &[("Action", "ListUsers"), ("Version", "2010-05-08")],
            headers: &[
                (
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                ),
                ("host", "iam.amazonaws.com"),
            ],
            payload: b"",
        };
        let scope = Scope {
            region: "us-east-1",
            service: "iam",
            amz_date: "20150830T123600Z",
        };
        let headers = sign(&req, &KEYS, &scope);
        assert_eq!(
            headers,
            vec![
                ("X-Amz-Date", "20150830T123600Z".to_string()),
                (
                    "Authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7".to_string()
                ),
            ]
        );
    }

    /// `get-vanilla` and `post-vanilla` from AWS's Signature Version 4 test suite
    /// (service `service`, `example.amazonaws.com`).
    #[test]
    fn the_test_suite_vanilla_requests() {
        let scope = Scope {
            region: "us-east-1",
            service: "service",
            amz_date: "20150830T123600Z",
        };
        for (method, signature) in [
            (
                "GET",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "POST",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
        ] {
            let req = Request {
                method,
                path: "/",
                query: &[],
                headers: &[("Host", "example.amazonaws.com")],
                payload: b"",
            };
            let auth = sign(&req, &KEYS, &scope).pop().unwrap().1;
            assert_eq!(
                auth,
                format!(
                    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={signature}"
                ),
                "{method}-vanilla"
            );
        }
    }

    #[test]
    fn a_session_token_is_sent_and_signed_and_changes_the_signature() {
        let req = Request {
            method: "POST",
            path: "/",
            query: &[],
            headers: &[("host", "monitoring.eu-west-1.amazonaws.com")],
            payload: b"{}",
        };
        let scope = Scope {
            region: "eu-west-1",
            service: "monitoring",
            amz_date: "20231114T221320Z",
        };
        let plain = sign(&req, &KEYS, &scope);
        let with_token = Keys {
            session_token: Some("FwoGZXIvYXdzEXAMPLETOKEN"),
            ..KEYS
        };
        let tokened = sign(&req, &with_token, &scope);
        assert_eq!(
            tokened[1],
            (
                "X-Amz-Security-Token",
                "FwoGZXIvYXdzEXAMPLETOKEN".to_string()
            )
        );
        let auth = &tokened[2].1;
        assert!(
            auth.contains("SignedHeaders=host;x-amz-date;x-amz-security-token,"),
            "{auth}"
        );
        assert_ne!(plain[1].1, *auth);
        assert!(!format!("{with_token:?}").contains("EXAMPLE"));
    }

    #[test]
    fn canonical_headers_fold_spaces_and_join_repeats() {
        let req = Request {
            method: "GET",
            path: "/a b/c",
            query: &[("b", "2"), ("a", "x y"), ("a", "1")],
            headers: &[
                ("My-Header", "  a   b  "),
                ("my-header", "c"),
                ("Host", "h"),
            ],
            payload: b"",
        };
        let (canonical, signed) = canonical_request(&req);
        assert_eq!(
            canonical,
            format!(
                "GET\n/a%20b/c\na=1&a=x%20y&b=2\nhost:h\nmy-header:a b,c\n\nhost;my-header\n{EMPTY_SHA256}"
            )
        );
        assert_eq!(signed, "host;my-header");
    }

    #[test]
    fn amz_dates_are_utc_seconds() {
        assert_eq!(
            amz_date(1_700_000_000_999).as_deref(),
            Some("20231114T221320Z")
        );
        assert_eq!(amz_date(u64::MAX), None);
    }
}
