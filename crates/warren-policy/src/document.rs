//! The document as written: ngrok's Traffic Policy in YAML or JSON, before compilation.

use serde::Deserialize;

use crate::PolicyError;

/// A traffic policy document.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Rules run when a connection arrives (every endpoint type).
    #[serde(default)]
    pub on_tcp_connect: Vec<RuleDoc>,
    /// Rules run on each HTTP request, before it is forwarded.
    #[serde(default)]
    pub on_http_request: Vec<RuleDoc>,
    /// Rules run on each HTTP response, before it is returned.
    #[serde(default)]
    pub on_http_response: Vec<RuleDoc>,
    /// The legacy name of `on_http_request` (and of `on_tcp_connect` on tcp/tls endpoints).
    #[serde(default)]
    pub inbound: Vec<RuleDoc>,
    /// The legacy name of `on_http_response`.
    #[serde(default)]
    pub outbound: Vec<RuleDoc>,
}

/// One rule: when every expression is true, the actions run in order.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    /// Shown in errors and logs.
    #[serde(default)]
    pub name: String,
    /// CEL expressions, ANDed; none means always.
    #[serde(default)]
    pub expressions: Vec<String>,
    /// Actions, in order.
    #[serde(default)]
    pub actions: Vec<ActionDoc>,
}

/// One action: its type and configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionDoc {
    /// `restrict-ips`, `deny`, `add-headers`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The action's settings.
    #[serde(default)]
    pub config: serde_json::Value,
}

impl Document {
    /// Parses YAML or JSON (JSON is YAML, but its errors read better from the JSON parser).
    pub fn parse(text: &str) -> Result<Document, PolicyError> {
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') {
            serde_json::from_str(trimmed).map_err(|e| PolicyError::Syntax(format!("invalid JSON: {e}")))
        } else {
            serde_saphyr::from_str(text).map_err(|e| PolicyError::Syntax(format!("invalid YAML: {e}")))
        }
    }

    /// The document as JSON with its secrets replaced by `********`, for readers who may see
    /// the policy but not what it protects with: every value whose key names a secret
    /// (`client_secret`, `secret`, `credentials`, `server_private_key`, anything with
    /// `password`, `token`, `api_key`, `authorization`, `cookie`) and every header value.
    /// `None` when the text does not parse.
    pub fn redacted(text: &str) -> Option<String> {
        /// Keys whose values are secrets wherever they appear (matched as parts of the name).
        const SECRET_PARTS: [&str; 9] = [
            "secret",
            "password",
            "passwd",
            "token",
            "credential",
            "private_key",
            "api_key",
            "authorization",
            "cookie",
        ];
        const MASK: &str = "********";
        fn secret_key(k: &str) -> bool {
            let k = k.to_ascii_lowercase();
            SECRET_PARTS.iter().any(|p| k.contains(p))
        }
        fn walk(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m.iter_mut() {
                        if secret_key(k) {
                            *v = serde_json::Value::String(MASK.into());
                        } else if k == "headers" && v.is_object() {
                            // Header values (`add-headers`, `custom-response`) may be bearer
                            // tokens or keys for the upstream: every value is masked, names kept.
                            if let serde_json::Value::Object(h) = v {
                                h.values_mut().for_each(|hv| *hv = serde_json::Value::String(MASK.into()));
                            }
                        } else {
                            walk(v);
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
                _ => {}
            }
        }
        let mut v: serde_json::Value = serde_saphyr::from_str(text).ok()?;
        walk(&mut v);
        Some(v.to_string())
    }

    /// A document as ngrok's clients send it in a Bind: a JSON object, or a string holding
    /// YAML or JSON.
    pub fn from_value(v: &serde_json::Value) -> Result<Document, PolicyError> {
        match v {
            serde_json::Value::String(s) => Document::parse(s),
            serde_json::Value::Object(_) => serde_json::from_value(v.clone())
                .map_err(|e| PolicyError::Syntax(format!("invalid traffic policy: {e}"))),
            serde_json::Value::Null => Ok(Document::default()),
            other => {
                Err(PolicyError::Syntax(format!("a traffic policy is an object or a string, not {other}")))
            }
        }
    }

    /// The JWKS URLs that `jwt-validation` actions name, for the caller to fetch before
    /// compiling.
    pub fn jwks_urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = self
            .on_http_request
            .iter()
            .chain(&self.inbound)
            .flat_map(|r| &r.actions)
            .filter(|a| a.kind == "jwt-validation")
            .flat_map(|a| crate::jwt::Config::jwks_urls(&a.config))
            .collect();
        urls.sort();
        urls.dedup();
        urls
    }

    /// The issuers that `openid-connect` actions name, for the caller to discover (and fetch
    /// the keys of) before compiling.
    pub fn oidc_issuers(&self) -> Vec<String> {
        let mut urls: Vec<String> = self
            .on_http_request
            .iter()
            .chain(&self.inbound)
            .flat_map(|r| &r.actions)
            .filter(|a| matches!(a.kind.as_str(), "openid-connect" | "oidc"))
            .filter_map(|a| crate::oidc::Config::issuer(&a.config))
            .collect();
        urls.sort();
        urls.dedup();
        urls
    }

    /// The ids of stored IP policies that `restrict-ips` actions name, for the caller to look
    /// up before compiling.
    pub fn ip_policy_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        let rules = self
            .on_tcp_connect
            .iter()
            .chain(&self.on_http_request)
            .chain(&self.on_http_response)
            .chain(&self.inbound)
            .chain(&self.outbound);
        for rule in rules {
            for a in rule.actions.iter().filter(|a| a.kind == "restrict-ips") {
                if let Some(list) = a.config.get("ip_policies").and_then(|v| v.as_array()) {
                    ids.extend(list.iter().filter_map(|v| v.as_str().map(str::to_owned)));
                }
            }
        }
        ids.sort();
        ids.dedup();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_masks_every_secret_and_header_value_and_keeps_the_shape() {
        let doc = r#"
on_http_request:
  - actions:
      - type: add-headers
        config: {headers: {authorization: "Bearer upstream-token", x-api-key: "k-123", x-team: "blue"}}
      - type: basic-auth
        config: {credentials: ["alice:hunter2"]}
      - type: openid-connect
        config: {issuer_url: "https://idp.example", client_id: "warren", client_secret: "s3cret"}
      - type: custom-response
        config: {status_code: 200, headers: {set-cookie: "session=abc"}, body: "ok"}
"#;
        let out = Document::redacted(doc).unwrap();
        for secret in ["upstream-token", "k-123", "blue", "hunter2", "s3cret", "session=abc"] {
            assert!(!out.contains(secret), "{secret} leaked: {out}");
        }
        for kept in ["authorization", "x-api-key", "https://idp.example", "warren", "add-headers", "\"ok\""] {
            assert!(out.contains(kept), "{kept} kept: {out}");
        }
    }
}
