//! ngrok's endpoint options from before Traffic Policy (the agent's `--basic-auth`,
//! `--cidr-allow`, `--oidc`, header flags; the SDKs' `basic_auth()`, `allow_cidr()`,
//! `request_header()`, ...) as the Traffic Policy rules ngrok now documents them as. The
//! agent's flags and the options ngrok's SDKs send in a Bind both become a document through
//! here, so they mean the same thing.

use serde_json::{Map, Value, json};

/// The options, as plain values.
#[derive(Clone, Debug, Default)]
pub struct Legacy {
    /// Networks allowed in (empty: any not denied).
    pub cidr_allow: Vec<String>,
    /// Networks refused.
    pub cidr_deny: Vec<String>,
    /// Stored IP policies visitors must pass (`IPPolicyRef`).
    pub ip_policies: Vec<String>,
    /// `user:password` pairs; any one lets a visitor in.
    pub basic_auth: Vec<String>,
    /// (provider, secret) of webhook signatures to verify.
    pub verify_webhook: Option<(String, String)>,
    /// OpenID Connect sign-in.
    pub oidc: Option<Oidc>,
    /// `name: value` request headers to add, and names to remove.
    pub request_header_add: Vec<(String, String)>,
    /// Request header names to remove.
    pub request_header_remove: Vec<String>,
    /// Response headers to add.
    pub response_header_add: Vec<(String, String)>,
    /// Response header names to remove.
    pub response_header_remove: Vec<String>,
    /// User-Agent regular expressions: when any is given, a visitor must match one.
    pub user_agent_allow: Vec<String>,
    /// User-Agent regular expressions that are refused.
    pub user_agent_deny: Vec<String>,
    /// Compress responses (gzip, deflate or br, as the visitor accepts).
    pub compression: bool,
    /// Refuse requests (503) while this share of recent answers were errors.
    pub circuit_breaker: Option<f64>,
    /// Where the option came from, for rule names (`--basic-auth` or `BasicAuth`).
    pub spelling: Spelling,
}

/// How the options are named in rules and errors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Spelling {
    /// The agent's flags (`--basic-auth`).
    #[default]
    Flags,
    /// The Bind message's option names (`BasicAuth`).
    Bind,
}

/// OpenID Connect sign-in with optional allow lists.
#[derive(Clone, Debug, Default)]
pub struct Oidc {
    /// The issuer URL.
    pub issuer: String,
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
    /// Scopes besides `openid`.
    pub scopes: Vec<String>,
    /// Only these addresses get in.
    pub allow_emails: Vec<String>,
    /// Only addresses at these domains get in.
    pub allow_domains: Vec<String>,
}

impl Legacy {
    fn name(&self, flag: &'static str, option: &'static str) -> &'static str {
        match self.spelling {
            Spelling::Flags => flag,
            Spelling::Bind => option,
        }
    }

    /// The document, or `None` when no option is set. `http` is false for tcp and tls
    /// endpoints, where only the network options apply.
    pub fn to_document(&self, http: bool) -> Result<Option<Value>, String> {
        let mut first = Vec::new();
        let mut request = Vec::new();
        let mut response = Vec::new();
        if !self.cidr_allow.is_empty() || !self.cidr_deny.is_empty() {
            first.push(json!({ "name": self.name("--cidr-allow/--cidr-deny", "IPRestriction"), "actions": [{ "type": "restrict-ips", "config": { "allow": self.cidr_allow, "deny": self.cidr_deny } }] }));
        }
        if !self.ip_policies.is_empty() {
            first.push(json!({ "name": self.name("--ip-policy", "IPPolicyRef"), "actions": [{ "type": "restrict-ips", "config": { "ip_policies": self.ip_policies } }] }));
        }
        let http_only = !self.basic_auth.is_empty()
            || self.verify_webhook.is_some()
            || self.oidc.is_some()
            || !self.request_header_add.is_empty()
            || !self.request_header_remove.is_empty()
            || !self.response_header_add.is_empty()
            || !self.response_header_remove.is_empty()
            || !self.user_agent_allow.is_empty()
            || !self.user_agent_deny.is_empty()
            || self.compression
            || self.circuit_breaker.is_some();
        if http_only && !http {
            return Err(match self.spelling {
                Spelling::Flags => "--basic-auth, --oidc, --compression, --circuit-breaker and the header flags are for http endpoints".into(),
                Spelling::Bind => "basic auth, OIDC, webhook verification, header, user-agent, compression and circuit breaker options are for http endpoints".into(),
            });
        }
        // ngrok applies the circuit breaker before the other modules: an open circuit refuses
        // a request before anything else is spent on it.
        if let Some(t) = self.circuit_breaker {
            if !(0.0..=1.0).contains(&t) {
                return Err(format!(
                    "{}: the error threshold must be between 0.0 and 1.0, not {t}",
                    self.name("--circuit-breaker", "CircuitBreaker")
                ));
            }
            request.push(json!({ "name": self.name("--circuit-breaker", "CircuitBreaker"), "actions": [{ "type": "circuit-breaker", "config": { "error_threshold": t } }] }));
        }
        if let Some((provider, secret)) = &self.verify_webhook {
            request.push(json!({ "name": self.name("--verify-webhook", "WebhookVerification"), "actions": [{ "type": "verify-webhook", "config": { "provider": provider, "secret": secret } }] }));
        }
        if let Some(oidc) = &self.oidc {
            request.extend(oidc.rules(self)?);
        }
        if !self.basic_auth.is_empty() {
            request.push(json!({ "name": self.name("--basic-auth", "BasicAuth"), "actions": [{ "type": "basic-auth", "config": { "credentials": self.basic_auth } }] }));
        }
        if !self.user_agent_allow.is_empty() || !self.user_agent_deny.is_empty() {
            request.push(user_agent_rule(self)?);
        }
        let headers = |list: &[(String, String)]| -> Value {
            Value::Object(
                list.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>(),
            )
        };
        if !self.request_header_remove.is_empty() {
            request.push(json!({ "name": self.name("--request-header-remove", "RequestHeaders.remove"), "actions": [{ "type": "remove-headers", "config": { "headers": self.request_header_remove } }] }));
        }
        if !self.request_header_add.is_empty() {
            request.push(json!({ "name": self.name("--request-header-add", "RequestHeaders.add"), "actions": [{ "type": "add-headers", "config": { "headers": headers(&self.request_header_add) } }] }));
        }
        if !self.response_header_remove.is_empty() {
            response.push(json!({ "name": self.name("--response-header-remove", "ResponseHeaders.remove"), "actions": [{ "type": "remove-headers", "config": { "headers": self.response_header_remove } }] }));
        }
        if !self.response_header_add.is_empty() {
            response.push(json!({ "name": self.name("--response-header-add", "ResponseHeaders.add"), "actions": [{ "type": "add-headers", "config": { "headers": headers(&self.response_header_add) } }] }));
        }
        if self.compression {
            response.push(json!({ "name": self.name("--compression", "Compression"), "actions": [{ "type": "compress-response", "config": {} }] }));
        }
        if first.is_empty() && request.is_empty() && response.is_empty() {
            return Ok(None);
        }
        let mut doc = Map::new();
        if http {
            first.extend(request);
            doc.insert("on_http_request".into(), Value::Array(first));
            if !response.is_empty() {
                doc.insert("on_http_response".into(), Value::Array(response));
            }
        } else {
            doc.insert("on_tcp_connect".into(), Value::Array(first));
        }
        Ok(Some(Value::Object(doc)))
    }
}

/// A CEL string literal for `s`, refusing what could end it early.
fn quote(s: &str, what: &str) -> Result<String, String> {
    if s.chars().any(|c| matches!(c, '\'' | '\\' | '"') || c.is_control()) {
        return Err(format!("{what} {s:?}: quotes, backslashes and control characters are not allowed"));
    }
    Ok(format!("'{s}'"))
}

/// One rule refusing visitors whose User-Agent matches a deny expression, or (with allow
/// expressions) matches none of them.
fn user_agent_rule(l: &Legacy) -> Result<Value, String> {
    let what = l.name("--ua-filter", "UserAgentFilter");
    for r in l.user_agent_allow.iter().chain(&l.user_agent_deny) {
        regex::Regex::new(r).map_err(|e| format!("{what}: {r:?} is not a regular expression: {e}"))?;
    }
    let any = |list: &[String]| -> Result<String, String> {
        let alts = list
            .iter()
            .map(|r| Ok(format!("u.matches({})", quote(r, what)?)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(format!("getReqHeader('user-agent').exists(u, {})", alts.join(" || ")))
    };
    let mut refused = Vec::new();
    if !l.user_agent_deny.is_empty() {
        refused.push(any(&l.user_agent_deny)?);
    }
    if !l.user_agent_allow.is_empty() {
        refused.push(format!("!{}", any(&l.user_agent_allow)?));
    }
    Ok(json!({
        "name": what,
        "expressions": [refused.join(" || ")],
        "actions": [{ "type": "custom-response", "config": { "status_code": 403, "body": "Your user agent is not allowed to use this endpoint.\n" } }],
    }))
}

impl Oidc {
    /// An openid-connect rule, then (with allow lists) a rule refusing everyone else: it sees
    /// the `Warren-Auth-User-Email` header the first rule set, which a visitor cannot forge.
    fn rules(&self, l: &Legacy) -> Result<Vec<Value>, String> {
        let what = l.name("--oidc", "OIDC");
        if self.client_id.is_empty() {
            return Err(format!("{what} needs a client id"));
        }
        let mut config = json!({ "issuer_url": self.issuer, "client_id": self.client_id, "client_secret": self.client_secret });
        if !self.scopes.is_empty() {
            config["scopes"] = json!(self.scopes);
        }
        let mut rules =
            vec![json!({ "name": what, "actions": [{ "type": "openid-connect", "config": config }] })];
        if self.allow_emails.is_empty() && self.allow_domains.is_empty() {
            return Ok(rules);
        }
        let lists = l.name("--oidc-allow-email/--oidc-allow-domain", "OIDC.allow_emails/allow_domains");
        let mut allowed = Vec::new();
        if !self.allow_emails.is_empty() {
            let list = self
                .allow_emails
                .iter()
                .map(|e| quote(&e.to_lowercase(), lists))
                .collect::<Result<Vec<_>, _>>()?;
            allowed.push(format!("lower(e) in [{}]", list.join(", ")));
        }
        for d in &self.allow_domains {
            allowed.push(format!(
                "lower(e).endsWith({})",
                quote(&format!("@{}", d.trim_start_matches('@').to_lowercase()), lists)?
            ));
        }
        let expr = format!("!getReqHeader('warren-auth-user-email').exists(e, {})", allowed.join(" || "));
        rules.push(json!({
            "name": lists,
            "expressions": [expr],
            "actions": [{ "type": "custom-response", "config": { "status_code": 403, "body": "Your account is not allowed to use this endpoint.\n" } }],
        }));
        Ok(rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_become_rules_in_ngroks_order_and_compile() {
        let l = Legacy {
            cidr_allow: vec!["10.0.0.0/8".into()],
            basic_auth: vec!["alice:password123".into()],
            request_header_add: vec![("x-added".into(), "yes".into())],
            response_header_remove: vec!["server".into()],
            user_agent_deny: vec!["(?i)badbot".into()],
            compression: true,
            circuit_breaker: Some(0.5),
            spelling: Spelling::Bind,
            ..Legacy::default()
        };
        let doc = l.to_document(true).unwrap().unwrap();
        let names = |phase: &str| -> Vec<String> {
            doc[phase].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_owned()).collect()
        };
        assert_eq!(
            names("on_http_request"),
            ["IPRestriction", "CircuitBreaker", "BasicAuth", "UserAgentFilter", "RequestHeaders.add"]
        );
        assert_eq!(names("on_http_response"), ["ResponseHeaders.remove", "Compression"]);
        let wide = Legacy { circuit_breaker: Some(1.5), ..Legacy::default() };
        assert!(wide.to_document(true).unwrap_err().contains("between 0.0 and 1.0"));
        let text = doc.to_string();
        crate::Policy::from_text(&text, "https", &crate::CompileEnv::default()).unwrap();
        assert!(l.to_document(false).unwrap_err().contains("for http endpoints"));
        let bad = Legacy { user_agent_deny: vec!["it's".into()], ..Legacy::default() };
        assert!(bad.to_document(true).is_err());
        assert_eq!(Legacy::default().to_document(true).unwrap(), None);
    }
}
