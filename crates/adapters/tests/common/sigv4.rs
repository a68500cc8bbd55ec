//! A second, small Signature Version 4 check, written apart from rampart's signer and
//! from the request as it arrived: what a fake AWS endpoint does to decide whether a
//! request was signed with the secret it knows. Its own test holds it to AWS's
//! published get-vanilla example.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::fake_provider::Seen;

/// What an `Authorization` header claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The access key id.
    pub key_id: String,
    /// `YYYYMMDD`.
    pub date: String,
    /// The region.
    pub region: String,
    /// The service.
    pub service: String,
    /// The signed header names, as listed.
    pub signed: Vec<String>,
    /// The hex signature.
    pub signature: String,
}

/// Parses `AWS4-HMAC-SHA256 Credential=ID/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b, Signature=HEX`.
pub fn claim(authorization: &str) -> Result<Claim, String> {
    let rest = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not AWS4-HMAC-SHA256")?;
    let mut credential = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(", ") {
        match part.split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => signature = Some(v),
            _ => return Err(format!("unexpected part `{part}`")),
        }
    }
    let credential: Vec<&str> = credential.ok_or("no Credential")?.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = credential.as_slice() else {
        return Err("a Credential is ID/DATE/REGION/SERVICE/aws4_request".into());
    };
    let signature = signature.ok_or("no Signature")?;
    if signature.len() != 64 || !signature.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("the Signature is not 64 hex digits".into());
    }
    Ok(Claim {
        key_id: key_id.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed: signed
            .ok_or("no SignedHeaders")?
            .split(';')
            .map(str::to_string)
            .collect(),
        signature: signature.to_string(),
    })
}

/// Whether `req` carries a valid signature by `secret`; the claim if so, or why not.
pub fn verify(req: &Seen, secret: &str) -> Result<Claim, String> {
    let claim = claim(&req.header("authorization"))?;
    let amz_date = req.header("x-amz-date");
    if !amz_date.starts_with(&claim.date) || amz_date.len() != 16 {
        return Err(format!("X-Amz-Date `{amz_date}` is not of {}", claim.date));
    }
    for needed in ["host", "x-amz-date"] {
        if !claim.signed.iter().any(|h| h == needed) {
            return Err(format!("{needed} is not signed"));
        }
    }
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    let mut canonical = format!("{}\n{path}\n{}\n", req.method, pairs.join("&"));
    for name in &claim.signed {
        let values: Vec<String> = req
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        canonical += &format!("{name}:{}\n", values.join(","));
    }
    canonical += &format!(
        "\n{}\n{:x}",
        claim.signed.join(";"),
        Sha256::digest(req.body.as_bytes())
    );
    let scope = format!(
        "{}/{}/{}/aws4_request",
        claim.date, claim.region, claim.service
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{:x}",
        Sha256::digest(canonical.as_bytes())
    );
    let mut key = format!("AWS4{secret}").into_bytes();
    for step in [
        claim.date.as_str(),
        &claim.region,
        &claim.service,
        "aws4_request",
    ] {
        key = mac(&key, step.as_bytes());
    }
    let expected: String = mac(&key, to_sign.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if expected == claim.signature {
        Ok(claim)
    } else {
        Err("the signature does not match".into())
    }
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().to_vec()
}
