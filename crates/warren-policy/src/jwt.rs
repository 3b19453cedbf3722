//! `jwt-validation`: a bearer JWT must be signed by a key from the configured JWKS URLs, with
//! an allowed algorithm, issuer and audience, and be within its validity period. Keys are
//! fetched and refreshed by the caller (this crate does no I/O) into a shared [`Jwks`]; the
//! time is the caller's too, so expiry is checked here rather than by the JWT library.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

/// The keys published at one JWKS URL, replaced as the caller refreshes them.
#[derive(Debug, Default)]
pub struct Jwks {
    set: RwLock<JwkSet>,
}

impl Jwks {
    /// Keys parsed from a JWKS document.
    pub fn parse(json: &[u8]) -> Result<Jwks, String> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        Ok(Jwks { set: RwLock::new(set) })
    }

    /// Replaces the keys (a refresh).
    pub fn replace(&self, json: &[u8]) -> Result<(), String> {
        let set: JwkSet = serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = set;
        Ok(())
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.set.read().unwrap_or_else(|e| e.into_inner()).keys.len()
    }

    /// True with no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a token is read from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenSource {
    #[serde(rename = "type", default = "jwt")]
    _kind: String,
    #[serde(default = "header")]
    method: String,
    #[serde(default = "authorization")]
    name: String,
    #[serde(default = "bearer")]
    prefix: String,
}

fn jwt() -> String {
    "jwt".into()
}
fn header() -> String {
    "header".into()
}
fn authorization() -> String {
    "authorization".into()
}
fn bearer() -> String {
    "Bearer ".into()
}

/// An allow-list entry: a string or ngrok's `{value: ...}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Allowed {
    Plain(String),
    Value { value: String },
}

impl Allowed {
    fn text(&self) -> &str {
        match self {
            Allowed::Plain(s) | Allowed::Value { value: s } => s,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AllowList {
    allow_list: Vec<Allowed>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpTokens {
    tokens: Vec<TokenSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Sources {
    #[serde(default)]
    additional_jkus: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Keys {
    sources: Sources,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Jws {
    allowed_algorithms: Vec<String>,
    keys: Keys,
}

/// ngrok's `jwt-validation` config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    issuer: AllowList,
    audience: AllowList,
    #[serde(default)]
    http: Option<HttpTokens>,
    jws: Jws,
}

impl Config {
    /// The JWKS URLs the caller must fetch before compiling.
    pub(crate) fn jwks_urls(v: &serde_json::Value) -> Vec<String> {
        v.pointer("/jws/keys/sources/additional_jkus")
            .and_then(|l| l.as_array())
            .map(|l| l.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }
}

/// A compiled `jwt-validation`.
pub(crate) struct Validator {
    issuers: Vec<String>,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    tokens: Vec<TokenSource>,
    keys: Vec<Arc<Jwks>>,
}

impl Validator {
    pub(crate) fn compile(
        c: Config,
        jwks: &std::collections::HashMap<String, Arc<Jwks>>,
    ) -> Result<Validator, String> {
        let mut algorithms = Vec::new();
        for a in &c.jws.allowed_algorithms {
            let alg: Algorithm =
                a.parse().map_err(|_| format!("allowed_algorithms: {a:?} is not a JWS algorithm"))?;
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                return Err(format!(
                    "allowed_algorithms: {a} needs a shared secret; use an asymmetric algorithm with keys from a JWKS URL"
                ));
            }
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            return Err("jws.allowed_algorithms is empty".into());
        }
        if c.jws.keys.sources.additional_jkus.is_empty() {
            return Err("jws.keys.sources.additional_jkus must name at least one JWKS URL".into());
        }
        let mut keys = Vec::new();
        for url in &c.jws.keys.sources.additional_jkus {
            keys.push(
                jwks.get(url).cloned().ok_or_else(|| format!("the keys at {url} could not be fetched"))?,
            );
        }
        let issuers: Vec<String> = c.issuer.allow_list.iter().map(|a| a.text().to_owned()).collect();
        let audiences: Vec<String> = c.audience.allow_list.iter().map(|a| a.text().to_owned()).collect();
        if issuers.is_empty() || audiences.is_empty() {
            return Err("issuer.allow_list and audience.allow_list must not be empty".into());
        }
        let tokens = c.http.map(|h| h.tokens).unwrap_or_default();
        for t in &tokens {
            if t.method != "header" {
                return Err(format!("http.tokens: method {:?} is not supported; use header", t.method));
            }
        }
        let tokens = if tokens.is_empty() {
            vec![TokenSource { _kind: jwt(), method: header(), name: authorization(), prefix: bearer() }]
        } else {
            tokens
        };
        Ok(Validator { issuers, audiences, algorithms, tokens, keys })
    }

    /// Ok with the token's claims when the request carries a valid token.
    pub(crate) fn check(
        &self,
        headers: &http::HeaderMap,
        now: SystemTime,
    ) -> Result<serde_json::Value, String> {
        let token = self
            .tokens
            .iter()
            .find_map(|t| {
                let v = headers.get(t.name.as_str())?.to_str().ok()?;
                let prefix = t.prefix.as_str();
                (v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix))
                    .then(|| v[prefix.len()..].trim())
            })
            .ok_or("no bearer token")?;
        decode(token, &self.keys, &self.algorithms, &self.audiences, &self.issuers, now)
    }
}

/// Checks a token's signature against `keys` (only the `algorithms` allowed), its audience
/// and issuer against the lists, and its validity period against `now`; Ok with its claims.
pub(crate) fn decode(
    token: &str,
    keys: &[Arc<Jwks>],
    algorithms: &[Algorithm],
    audiences: &[String],
    issuers: &[String],
    now: SystemTime,
) -> Result<serde_json::Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
    if !algorithms.contains(&header.alg) {
        return Err(format!("algorithm {:?} is not allowed", header.alg));
    }
    let mut last = "no key matches the token".to_owned();
    for set in keys {
        let set = set.set.read().unwrap_or_else(|e| e.into_inner());
        for jwk in &set.keys {
            if header.kid.is_some() && jwk.common.key_id != header.kid {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            let mut v = Validation::new(header.alg);
            // The token's own algorithm, checked against the allowed ones above: the JWT
            // library refuses a list that mixes key families.
            v.algorithms = vec![header.alg];
            // Expiry is checked below against the caller's clock.
            v.validate_exp = false;
            v.validate_nbf = false;
            // Present, not only right when present: a token without an audience would pass
            // any audience list.
            v.required_spec_claims = ["exp", "iss", "aud"].iter().map(|c| c.to_string()).collect();
            v.set_audience(audiences);
            v.set_issuer(issuers);
            match jsonwebtoken::decode::<serde_json::Value>(token, &key, &v) {
                Ok(data) => return times(data.claims, now),
                Err(e) => last = e.to_string(),
            }
        }
    }
    Err(last)
}

fn times(claims: serde_json::Value, now: SystemTime) -> Result<serde_json::Value, String> {
    let now = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    let exp = claims.get("exp").and_then(|v| v.as_u64()).ok_or("the token has no exp")?;
    if now > exp.saturating_add(LEEWAY_SECS) {
        return Err("the token has expired".into());
    }
    if let Some(nbf) = claims.get("nbf").and_then(|v| v.as_u64())
        && now.saturating_add(LEEWAY_SECS) < nbf
    {
        return Err("the token is not valid yet".into());
    }
    Ok(claims)
}
