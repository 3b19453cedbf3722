//! ngrok's `tunnels:` entries (version 3 files still read them, and most existing files have
//! them), mapped onto endpoints: the address, the name the edge should give, and the older
//! options as the Traffic Policy rules they stand for. A key warren does not act on is refused
//! by name (the file's parser reports it with its line); nothing is dropped.

use serde::Deserialize;

use crate::config::{EndpointConfig, LegacyFlags, OidcFlags};

/// One `tunnels:` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TunnelBlock {
    proto: String,
    addr: serde_json::Value,
    #[serde(default)]
    domain: String,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    subdomain: String,
    #[serde(default)]
    remote_addr: String,
    #[serde(default)]
    metadata: String,
    inspect: Option<bool>,
    host_header: Option<String>,
    schemes: Option<Vec<String>>,
    #[serde(default)]
    basic_auth: Vec<String>,
    ip_restriction: Option<IpRestriction>,
    circuit_breaker: Option<f64>,
    #[serde(default)]
    compression: bool,
    request_header: Option<HeaderChanges>,
    response_header: Option<HeaderChanges>,
    verify_webhook: Option<VerifyWebhook>,
    oidc: Option<Oidc>,
    traffic_policy: Option<serde_json::Value>,
    crt: Option<String>,
    key: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IpRestriction {
    #[serde(default)]
    allow_cidrs: Vec<String>,
    #[serde(default)]
    deny_cidrs: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderChanges {
    #[serde(default)]
    add: Vec<String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyWebhook {
    provider: String,
    secret: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Oidc {
    issuer_url: String,
    client_id: String,
    #[serde(default)]
    client_secret: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    allow_emails: Vec<String>,
    #[serde(default)]
    allow_domains: Vec<String>,
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.trim().to_owned(),
        serde_json::Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

impl TunnelBlock {
    /// The entry's own traffic policy when written as a mapping, with the protocol it is
    /// compiled for: what can be checked with positions in the file.
    pub(crate) fn own_policy(&self) -> Option<(&serde_json::Value, &str)> {
        match &self.traffic_policy {
            Some(v @ serde_json::Value::Object(_)) => Some((v, self.proto.as_str())),
            _ => None,
        }
    }

    /// The endpoint this tunnel stands for.
    pub(crate) fn endpoint(&self, name: &str) -> Result<EndpointConfig, String> {
        let addr = text(&self.addr);
        let names = [("domain", &self.domain), ("hostname", &self.hostname), ("subdomain", &self.subdomain)];
        let given: Vec<&str> = names.iter().filter(|(_, v)| !v.is_empty()).map(|(k, _)| *k).collect();
        if given.len() > 1 {
            return Err(format!("give one of domain, hostname and subdomain, not {}", given.join(" and ")));
        }
        let host = if self.domain.is_empty() { &self.hostname } else { &self.domain };
        let http_only = |key: &str, set: bool| -> Result<(), String> {
            if set && self.proto != "http" {
                return Err(format!("{key} is for http tunnels, not {}", self.proto));
            }
            Ok(())
        };
        http_only("host_header", self.host_header.is_some())?;
        http_only("schemes", self.schemes.is_some())?;
        http_only("basic_auth", !self.basic_auth.is_empty())?;
        http_only("circuit_breaker", self.circuit_breaker.is_some())?;
        http_only("compression", self.compression)?;
        http_only("request_header", self.request_header.is_some())?;
        http_only("response_header", self.response_header.is_some())?;
        http_only("verify_webhook", self.verify_webhook.is_some())?;
        http_only("oidc", self.oidc.is_some())?;
        if self.proto != "tls" && (self.crt.is_some() || self.key.is_some()) {
            return Err(format!("crt and key are for tls tunnels, not {}", self.proto));
        }
        if self.proto != "tcp" && !self.remote_addr.is_empty() {
            return Err(format!("remote_addr is for tcp tunnels, not {}", self.proto));
        }
        let mut ep = match self.proto.as_str() {
            "http" => {
                let scheme = match self.schemes.as_deref() {
                    None => "https",
                    Some([s]) if s == "https" || s == "http" => s.as_str(),
                    Some(other) => {
                        return Err(format!(
                            "schemes {other:?}: warren serves a name over https (plain http redirected) or over http, one of the two; write [https] or [http]"
                        ));
                    }
                };
                let url = (!host.is_empty()).then(|| format!("{scheme}://{host}"));
                let url = url.or_else(|| (scheme == "http").then(String::new));
                let mut ep = match url.as_deref() {
                    Some("") => EndpointConfig::http(&addr, Some("http://"))?,
                    other => EndpointConfig::http(&addr, other)?,
                };
                ep.host_header = self.host_header.clone();
                ep
            }
            "tcp" => {
                if !given.is_empty() {
                    return Err(format!(
                        "{} is for http and tls tunnels; tcp tunnels take remote_addr",
                        given[0]
                    ));
                }
                let url = (!self.remote_addr.is_empty()).then(|| format!("tcp://{}", self.remote_addr));
                EndpointConfig::tcp(&addr, url.as_deref())?
            }
            "tls" => {
                let termination = match (&self.crt, &self.key) {
                    (None, None) => None,
                    (Some(crt), Some(key)) => {
                        let read = |p: &str| std::fs::read(p).map_err(|e| format!("cannot read {p}: {e}"));
                        Some(crate::tls::agent_termination(&read(crt)?, &read(key)?, None)?)
                    }
                    _ => return Err("crt and key go together".into()),
                };
                let url = (!host.is_empty()).then(|| format!("tls://{host}"));
                EndpointConfig::tls(&addr, url.as_deref(), termination)?
            }
            other => return Err(format!("proto {other:?}: use http, tcp or tls")),
        };
        ep.name = name.to_owned();
        ep.metadata = self.metadata.clone();
        ep.subdomain = self.subdomain.to_ascii_lowercase();
        ep.inspect = self.inspect.unwrap_or(true);
        ep.traffic_policy = match &self.traffic_policy {
            None | Some(serde_json::Value::Null) => None,
            Some(v @ serde_json::Value::Object(_)) => Some(v.clone()),
            Some(serde_json::Value::String(t)) => Some(crate::config::policy_from_text(t)?),
            Some(other) => return Err(format!("traffic_policy must be a mapping, not {other}")),
        };
        let restriction =
            self.ip_restriction.clone().unwrap_or(IpRestriction { allow_cidrs: vec![], deny_cidrs: vec![] });
        let (req, res) = (self.request_header.clone(), self.response_header.clone());
        let legacy = LegacyFlags {
            cidr_allow: restriction.allow_cidrs,
            cidr_deny: restriction.deny_cidrs,
            basic_auth: self.basic_auth.clone(),
            request_header_add: req.as_ref().map(|h| h.add.clone()).unwrap_or_default(),
            request_header_remove: req.map(|h| h.remove).unwrap_or_default(),
            response_header_add: res.as_ref().map(|h| h.add.clone()).unwrap_or_default(),
            response_header_remove: res.map(|h| h.remove).unwrap_or_default(),
            verify_webhook: self.verify_webhook.clone().map(|v| (v.provider, v.secret)),
            oidc: self.oidc.clone().map(|o| OidcFlags {
                issuer: o.issuer_url,
                client_id: o.client_id,
                client_secret: o.client_secret,
                scopes: o.scopes,
                allow_emails: o.allow_emails,
                allow_domains: o.allow_domains,
            }),
            compression: self.compression,
            circuit_breaker: self.circuit_breaker,
        };
        if let Some(rules) = legacy.rules(ep.proto.is_http())? {
            ep.prepend_policy(rules)?;
        }
        if let Some(p) = &ep.traffic_policy {
            crate::config::check_policy(p, ep.proto.as_str())?;
        }
        Ok(ep)
    }
}
