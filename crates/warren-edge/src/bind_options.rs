//! Every option a Bind carries besides the name it asks for: each is acted on, or refused by
//! name with what to use instead. Nothing a client sends is dropped: an SDK user who asks for
//! basic auth or an IP allow-list gets it, or a Bind error, never a public endpoint.
//!
//! The SDKs' middleware options (basic auth, CIDR lists, OIDC, webhook verification, header
//! changes, User-Agent filters, `IPPolicyRef`) become Traffic Policy rules through
//! [`warren_policy::legacy`], the same translation as the agent's flags; they run after the
//! account's policy and before the endpoint's own. Informational fields (the upstream's
//! scheme, the agent's host-header rewrite, names and descriptions) are taken as given.

use serde_json::Value;
use warren_policy::legacy::{Legacy, Oidc, Spelling};
use warren_proto::{Bind, HttpOpts, TcpOpts, TlsOpts};

/// What the options add to an endpoint.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    /// The middleware options as a traffic policy document.
    pub(crate) policy: Option<Value>,
    /// PROXY protocol version to put before each connection's bytes (0: none).
    pub(crate) proxy_proto: u8,
}

/// Why an option was refused: the option's name and what to do instead.
fn refuse(option: &str, why: &str) -> String {
    format!("the Bind option {option} is not supported by this edge: {why}")
}

/// A value that asks for nothing: what clients send for an option they do not use.
fn unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        // `{}` is not unset: ngrok's `Compression: {}` turns compression on.
        Value::Object(_) => false,
    }
}

/// `v[key]`, the key matched in any case (as the message's keys were).
fn get_ci<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    v.as_object()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v)
}

/// Keys of the message that matched no field: refused when set, so an option this edge does
/// not know never passes unnoticed. `unknown` are paths in `raw` (`Extra.Foo`, `Opts.Bar`).
fn refuse_unknown(raw: &Value, unknown: &[String]) -> Result<(), String> {
    for path in unknown {
        let v = path.split('.').try_fold(raw, get_ci).unwrap_or(&Value::Null);
        if !unset(v) {
            return Err(refuse(path, "warren does not know this option, so it cannot honour it"));
        }
    }
    Ok(())
}

/// The options of `raw_bind` decoded into `T`, keys matched in any case; an option `T` does
/// not have is refused when set.
pub(crate) fn decode_opts<T: serde::de::DeserializeOwned>(raw_bind: &Value, what: &str) -> Result<T, String> {
    let opts = get_ci(raw_bind, "Opts").cloned().unwrap_or(Value::Null);
    let opts = if opts.is_null() { Value::Object(Default::default()) } else { opts };
    let (t, unknown) =
        warren_proto::fold::from_value::<T>(opts).map_err(|e| format!("invalid {what} options: {e}"))?;
    let unknown: Vec<String> = unknown.into_iter().map(|p| format!("Opts.{p}")).collect();
    refuse_unknown(raw_bind, &unknown)?;
    Ok(t)
}

/// The checks every endpoint kind shares: the Bind's own fields and `Extra`.
fn common(bind: &Bind, unknown: &[String], raw_bind: &Value) -> Result<(), String> {
    refuse_unknown(raw_bind, unknown)?;
    match bind.forwards_proto.as_str() {
        "" | "http1" => {}
        // The edge speaks HTTP/2 (prior knowledge) on the proxy streams of such an endpoint.
        "http2" if matches!(bind.proto.as_str(), "http" | "https") => {}
        "http2" => {
            return Err(refuse(
                &format!("ForwardsProto http2 on a {} endpoint", bind.proto),
                "it is for http and https endpoints; a tcp or tls endpoint carries any protocol as it is",
            ));
        }
        other => return Err(refuse(&format!("ForwardsProto {other:?}"), "use \"\", http1 or http2")),
    }
    let e = &bind.extra;
    if let Some(b) = e.bindings.iter().find(|b| !matches!(b.as_str(), "public" | "internal")) {
        return Err(refuse(&format!("Extra.Bindings {b:?}"), "endpoints here are public or internal"));
    }
    if e.bindings.len() > 1 {
        return Err(refuse("Extra.Bindings", "one binding per endpoint: public or internal"));
    }
    if e.metadata.len() > 4096 || e.description.len() > 4096 || e.name.len() > 256 {
        return Err(
            "the Bind's Extra.Metadata and Extra.Description are limited to 4096 bytes, Extra.Name to 256"
                .into(),
        );
    }
    Ok(())
}

/// ngrok-go up to 1.9 sent the policy as an object under `Policy`; warren reads only
/// `TrafficPolicy`, so one that is set is refused rather than dropped.
fn no_legacy_policy(policy: Option<&Value>) -> Result<(), String> {
    match policy {
        Some(v) if !v.is_null() => {
            Err(refuse("Policy", "the legacy policy object is not read; send the document as TrafficPolicy"))
        }
        _ => Ok(()),
    }
}

fn ip_policies(bind: &Bind) -> Vec<String> {
    let r = bind.extra.ip_policy_ref.trim();
    if r.is_empty() { Vec::new() } else { vec![r.to_owned()] }
}

fn proxy_proto(v: i64) -> Result<u8, String> {
    match v {
        0..=2 => Ok(v as u8),
        _ => Err(refuse(&format!("ProxyProto {v}"), "the PROXY protocol versions are 1 and 2")),
    }
}

/// An http or https endpoint's options.
pub(crate) fn http(
    bind: &Bind,
    opts: &HttpOpts,
    raw_bind: &Value,
    unknown: &[String],
) -> Result<Extras, String> {
    common(bind, unknown, raw_bind)?;
    let o = opts;
    let set = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    if set(&o.oauth) {
        return Err(refuse(
            "OAuth",
            "ngrok's managed OAuth providers do not exist on a self-hosted edge; use OIDC with your identity provider (the SDK's oidc(), or an openid-connect traffic policy action)",
        ));
    }
    if set(&o.websocket_tcp_converter) {
        return Err(refuse("WebsocketTCPConverter", "WebSockets are passed on as they are"));
    }
    no_legacy_policy(o.policy.as_ref())?;
    if o.proxy_proto != 0 {
        return Err(refuse(
            &format!("ProxyProto {}", o.proxy_proto),
            "PROXY protocol to the upstream is for tcp and tls endpoints; http upstreams get X-Forwarded-For",
        ));
    }
    let mut legacy = Legacy { spelling: Spelling::Bind, ip_policies: ip_policies(bind), ..Legacy::default() };
    if let Some(c) = o.compression.as_ref().filter(|v| !v.is_null()) {
        // `{}` turns it on; it has no settings, so anything inside is something we would drop.
        if let Some((k, _)) = c.as_object().and_then(|m| m.iter().find(|(_, v)| !unset(v))) {
            return Err(refuse(&format!("Compression.{k}"), "compression has no settings here"));
        }
        if !c.is_object() {
            return Err(refuse("Compression", "turn it on with {}"));
        }
        legacy.compression = true;
    }
    if let Some(c) = o.circuit_breaker.as_ref().filter(|v| !v.is_null()) {
        let map =
            c.as_object().ok_or_else(|| refuse("CircuitBreaker", "expected {\"error_threshold\": 0.5}"))?;
        let mut threshold = None;
        for (k, v) in map {
            if k.eq_ignore_ascii_case("error_threshold") || k.eq_ignore_ascii_case("ErrorThreshold") {
                threshold = Some(v.as_f64().ok_or_else(|| {
                    refuse("CircuitBreaker.error_threshold", "it is a number between 0.0 and 1.0")
                })?);
            } else if !unset(v) {
                return Err(refuse(&format!("CircuitBreaker.{k}"), "only error_threshold is read"));
            }
        }
        let t = threshold.ok_or_else(|| refuse("CircuitBreaker", "error_threshold is missing"))?;
        if !(0.0..=1.0).contains(&t) {
            return Err(refuse(
                &format!("CircuitBreaker.error_threshold {t}"),
                "it is a share of failed requests, between 0.0 and 1.0 (ERR_NGROK_361)",
            ));
        }
        legacy.circuit_breaker = Some(t);
    }
    if let Some(r) = &o.ip_restriction {
        legacy.cidr_allow = r.allow_cidrs.clone();
        legacy.cidr_deny = r.deny_cidrs.clone();
    }
    if !o.auth.is_empty() {
        if !o.auth.contains(':') {
            return Err(refuse("Auth", "basic auth is given as user:password"));
        }
        legacy.basic_auth.push(o.auth.clone());
    }
    if let Some(b) = &o.basic_auth {
        for c in &b.credentials {
            if c.cleartext_password.0.is_empty() {
                return Err(refuse(
                    "BasicAuth.credentials.hashed_password",
                    "the edge checks passwords it was given in cleartext; send cleartext_password",
                ));
            }
            legacy.basic_auth.push(format!("{}:{}", c.username, c.cleartext_password.0));
        }
    }
    if let Some(w) = &o.webhook_verification {
        if w.secret.0.is_empty() {
            return Err(refuse("WebhookVerification.sealed_secret", "send the secret itself"));
        }
        legacy.verify_webhook = Some((w.provider.clone(), w.secret.0.clone()));
    }
    if let Some(oidc) = &o.oidc {
        if oidc.client_secret.0.is_empty() && oidc.sealed_client_secret.as_ref().is_some_and(|v| !unset(v)) {
            return Err(refuse("OIDC.sealed_client_secret", "send client_secret itself"));
        }
        legacy.oidc = Some(Oidc {
            issuer: oidc.issuer_url.clone(),
            client_id: oidc.client_id.clone(),
            client_secret: oidc.client_secret.0.clone(),
            scopes: oidc.scopes.clone(),
            allow_emails: oidc.allow_emails.clone(),
            allow_domains: oidc.allow_domains.clone(),
        });
    }
    let pairs = |h: &warren_proto::Headers, what: &str| -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        for a in &h.add {
            let (k, v) =
                a.split_once(':').ok_or_else(|| refuse(what, &format!("{a:?} is not name:value")))?;
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        out.extend(h.add_parsed.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(out)
    };
    if let Some(h) = &o.request_headers {
        legacy.request_header_add = pairs(h, "RequestHeaders.add")?;
        legacy.request_header_remove = h.remove.clone();
    }
    if let Some(h) = &o.response_headers {
        legacy.response_header_add = pairs(h, "ResponseHeaders.add")?;
        legacy.response_header_remove = h.remove.clone();
    }
    if let Some(u) = &o.user_agent_filter {
        legacy.user_agent_allow = u.allow.clone();
        legacy.user_agent_deny = u.deny.clone();
    }
    Ok(Extras { policy: legacy.to_document(true)?, proxy_proto: 0 })
}

/// A tcp endpoint's options.
pub(crate) fn tcp(
    bind: &Bind,
    opts: &TcpOpts,
    raw_bind: &Value,
    unknown: &[String],
) -> Result<Extras, String> {
    common(bind, unknown, raw_bind)?;
    no_legacy_policy(opts.policy.as_ref())?;
    network_only(bind, opts.ip_restriction.as_ref(), proxy_proto(opts.proxy_proto)?)
}

/// A tls endpoint's options.
pub(crate) fn tls(
    bind: &Bind,
    opts: &TlsOpts,
    raw_bind: &Value,
    unknown: &[String],
) -> Result<Extras, String> {
    common(bind, unknown, raw_bind)?;
    no_legacy_policy(opts.policy.as_ref())?;
    if opts.mutual_tls_at_edge.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(refuse(
            "MutualTLSAtEdge",
            "the edge passes tls endpoints' TLS through untouched, so it cannot check client certificates; check them at the agent or the upstream",
        ));
    }
    network_only(bind, opts.ip_restriction.as_ref(), proxy_proto(opts.proxy_proto)?)
}

fn network_only(
    bind: &Bind,
    restriction: Option<&warren_proto::IpRestriction>,
    proxy_proto: u8,
) -> Result<Extras, String> {
    let mut legacy = Legacy { spelling: Spelling::Bind, ip_policies: ip_policies(bind), ..Legacy::default() };
    if let Some(r) = restriction {
        legacy.cidr_allow = r.allow_cidrs.clone();
        legacy.cidr_deny = r.deny_cidrs.clone();
    }
    Ok(Extras { policy: legacy.to_document(false)?, proxy_proto })
}

/// What the edge does with a field a client sends.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// It changes what the edge does (names, security options, policies).
    Acted,
    /// Taken as given and shown or ignored: it asks the edge for nothing.
    Informational,
    /// Refused by name whenever it asks for something.
    RefusedWhenSet,
}

/// Every field of every message ngrok's clients send, and what warren does with it (also in
/// docs/COMPATIBILITY.md). A field added to a message type without a row here fails
/// `every_field_of_every_message_is_classified`.
#[cfg(test)]
pub(crate) const FIELDS: &[(&str, &str, Use)] = &[
    ("Auth", "Version", Use::Acted),
    ("Auth", "ClientId", Use::Acted),
    ("Auth", "Extra", Use::Acted),
    ("AuthExtra", "AuthToken", Use::Acted),
    ("AuthExtra", "Cookie", Use::Acted),
    ("AuthExtra", "OS", Use::Informational),
    ("AuthExtra", "Arch", Use::Informational),
    ("AuthExtra", "Version", Use::Informational),
    ("AuthExtra", "Hostname", Use::Informational),
    ("AuthExtra", "UserAgent", Use::Informational),
    ("AuthExtra", "Metadata", Use::Informational),
    ("AuthExtra", "HeartbeatInterval", Use::Informational),
    ("AuthExtra", "HeartbeatTolerance", Use::Informational),
    ("AuthExtra", "ClientType", Use::Informational),
    ("AuthExtra", "StopUnsupportedError", Use::Acted),
    ("AuthExtra", "RestartUnsupportedError", Use::Acted),
    ("AuthExtra", "UpdateUnsupportedError", Use::Informational),
    ("AuthExtra", "ProxyType", Use::Informational),
    ("AuthExtra", "MutualTLS", Use::Informational),
    ("AuthExtra", "ServiceRun", Use::Informational),
    ("AuthExtra", "ConfigVersion", Use::Informational),
    ("AuthExtra", "CustomInterface", Use::Informational),
    ("AuthExtra", "CustomCAs", Use::Informational),
    ("AuthExtra", "Fingerprint", Use::Informational),
    ("AuthExtra", "LegNumber", Use::Informational),
    ("Bind", "Id", Use::Acted),
    ("Bind", "Proto", Use::Acted),
    ("Bind", "ForwardsTo", Use::Informational),
    ("Bind", "ForwardsProto", Use::Acted),
    ("Bind", "Opts", Use::Acted),
    ("Bind", "Extra", Use::Acted),
    ("BindExtra", "Name", Use::Informational),
    ("BindExtra", "Token", Use::Informational),
    ("BindExtra", "IPPolicyRef", Use::Acted),
    ("BindExtra", "Metadata", Use::Informational),
    ("BindExtra", "Description", Use::Informational),
    ("BindExtra", "Bindings", Use::RefusedWhenSet),
    ("BindExtra", "PoolingEnabled", Use::Acted),
    ("HttpOpts", "URL", Use::Acted),
    ("HttpOpts", "Domain", Use::Acted),
    ("HttpOpts", "Hostname", Use::Acted),
    ("HttpOpts", "Subdomain", Use::Acted),
    ("HttpOpts", "Auth", Use::Acted),
    ("HttpOpts", "HostHeaderRewrite", Use::Informational),
    ("HttpOpts", "LocalURLScheme", Use::Informational),
    ("HttpOpts", "ProxyProto", Use::RefusedWhenSet),
    ("HttpOpts", "Compression", Use::Acted),
    ("HttpOpts", "CircuitBreaker", Use::Acted),
    ("HttpOpts", "IPRestriction", Use::Acted),
    ("HttpOpts", "BasicAuth", Use::Acted),
    ("HttpOpts", "OAuth", Use::RefusedWhenSet),
    ("HttpOpts", "OIDC", Use::Acted),
    ("HttpOpts", "WebhookVerification", Use::Acted),
    ("HttpOpts", "MutualTLSCA", Use::Acted),
    ("HttpOpts", "RequestHeaders", Use::Acted),
    ("HttpOpts", "ResponseHeaders", Use::Acted),
    ("HttpOpts", "WebsocketTCPConverter", Use::RefusedWhenSet),
    ("HttpOpts", "UserAgentFilter", Use::Acted),
    ("HttpOpts", "Policy", Use::RefusedWhenSet),
    ("HttpOpts", "TrafficPolicy", Use::Acted),
    ("TcpOpts", "URL", Use::Acted),
    ("TcpOpts", "Addr", Use::Acted),
    ("TcpOpts", "RemotePort", Use::Acted),
    ("TcpOpts", "ProxyProto", Use::Acted),
    ("TcpOpts", "IPRestriction", Use::Acted),
    ("TcpOpts", "Policy", Use::RefusedWhenSet),
    ("TcpOpts", "TrafficPolicy", Use::Acted),
    ("TlsOpts", "URL", Use::Acted),
    ("TlsOpts", "Domain", Use::Acted),
    ("TlsOpts", "Hostname", Use::Acted),
    ("TlsOpts", "Subdomain", Use::Acted),
    ("TlsOpts", "ProxyProto", Use::Acted),
    ("TlsOpts", "MutualTLSAtAgent", Use::Informational),
    ("TlsOpts", "MutualTLSAtEdge", Use::RefusedWhenSet),
    ("TlsOpts", "TLSTermination", Use::RefusedWhenSet),
    ("TlsOpts", "IPRestriction", Use::Acted),
    ("TlsOpts", "Policy", Use::RefusedWhenSet),
    ("TlsOpts", "TrafficPolicy", Use::Acted),
    ("Unbind", "Id", Use::Acted),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys a message type has, as serialized.
    fn keys<T: serde::Serialize + Default>() -> Vec<String> {
        serde_json::to_value(T::default()).unwrap().as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn every_field_of_every_message_is_classified() {
        let messages: [(&str, Vec<String>); 8] = [
            ("Auth", keys::<warren_proto::Auth>()),
            ("AuthExtra", keys::<warren_proto::AuthExtra>()),
            ("Bind", keys::<Bind>()),
            ("BindExtra", keys::<warren_proto::BindExtra>()),
            ("HttpOpts", keys::<HttpOpts>()),
            ("TcpOpts", keys::<TcpOpts>()),
            ("TlsOpts", keys::<TlsOpts>()),
            ("Unbind", keys::<warren_proto::Unbind>()),
        ];
        for (message, fields) in &messages {
            let mut classified: Vec<&str> =
                FIELDS.iter().filter(|(m, _, _)| m == message).map(|(_, f, _)| *f).collect();
            let mut fields: Vec<&str> = fields.iter().map(String::as_str).collect();
            classified.sort();
            fields.sort();
            assert_eq!(fields, classified, "{message}: every field has exactly one row in FIELDS");
        }
    }

    /// What real clients sent (captured from ngrok's Go agent 2.3.41; ngrok-rust 0.19's
    /// defaults as it serializes them) has no key the edge does not know.
    #[test]
    fn what_real_clients_send_has_no_unknown_key() {
        let go_auth = r#"{"Version":["2"],"ClientId":"","Extra":{"OS":"linux","Arch":"amd64","Authtoken":"t","Version":"2.3.41","Hostname":"127.0.0.1","UserAgent":"ngrok/2","Metadata":"","Cookie":"","HeartbeatInterval":10000000000,"HeartbeatTolerance":15000000000,"Fingerprint":null,"UpdateUnsupportedError":"x","StopUnsupportedError":"","RestartUnsupportedError":""}}"#;
        let rust_auth = r#"{"Version":["3","2"],"ClientId":"","Extra":{"OS":"linux","Arch":"x86_64","AuthToken":"t","Version":"0.19.0","Hostname":"","UserAgent":"ngrok-rust/0.19.0","Metadata":"","Cookie":"","HeartbeatInterval":10000000000,"HeartbeatTolerance":15000000000,"UpdateUnsupportedError":"x","StopUnsupportedError":"x","RestartUnsupportedError":"x","ProxyType":"","MutualTLS":false,"ServiceRun":false,"ConfigVersion":"","CustomInterface":false,"CustomCAs":false,"ClientType":"ngrok-rust"}}"#;
        let go_bind = r#"{"Id":"","Proto":"https","Opts":{"Hostname":"","Auth":"u:p","Subdomain":"foo","HostHeaderRewrite":true,"LocalURLScheme":"http"},"Extra":{"Token":"","IPPolicyRef":"","Metadata":""}}"#;
        let rust_bind = r#"{"Id":"","Proto":"https","ForwardsTo":"app://h/x?pid=1","ForwardsProto":"","Opts":{"Domain":"","Hostname":"","Auth":"","Subdomain":"","HostHeaderRewrite":false,"LocalURLScheme":null,"ProxyProto":0,"Compression":null,"CircuitBreaker":null,"IPRestriction":null,"BasicAuth":null,"OAuth":null,"OIDC":null,"WebhookVerification":null,"MutualTLSCA":null,"RequestHeaders":null,"ResponseHeaders":null,"WebsocketTCPConverter":null,"UserAgentFilter":null,"TrafficPolicy":null},"Extra":{"Token":"","IPPolicyRef":"","Metadata":"","Bindings":[],"PoolingEnabled":false}}"#;
        let go_sdk_bind = r#"{"Id":"","Proto":"https","ForwardsTo":"localhost:8080","ForwardsProto":"","Opts":{"URL":"","Domain":"","Hostname":"","Subdomain":"","Auth":"","HostHeaderRewrite":false,"LocalURLScheme":"","ProxyProto":0,"Compression":null,"CircuitBreaker":null,"IPRestriction":null,"BasicAuth":null,"OAuth":null,"OIDC":null,"WebhookVerification":null,"MutualTLSCA":null,"RequestHeaders":null,"ResponseHeaders":null,"WebsocketTCPConverter":null,"UserAgentFilter":null,"Policy":null,"TrafficPolicy":""},"Extra":{"Name":"","Token":"","IPPolicyRef":"","Metadata":"","Description":"","Bindings":null,"PoolingEnabled":false}}"#;
        for auth in [go_auth, rust_auth] {
            let (_, unknown) =
                warren_proto::decode_checked::<warren_proto::Auth>("Auth", auth.as_bytes()).unwrap();
            assert!(unknown.is_empty(), "{unknown:?}");
        }
        for b in [go_bind, rust_bind, go_sdk_bind] {
            let raw: Value = serde_json::from_str(b).unwrap();
            let (bind, unknown) = warren_proto::fold::from_value::<Bind>(raw.clone()).unwrap();
            assert_eq!(unknown, Vec::<String>::new());
            let opts: HttpOpts = decode_opts(&raw, "https").unwrap();
            let x = http(&bind, &opts, &raw, &unknown).unwrap();
            assert_eq!(x.policy.is_some(), b == go_bind, "only the Go agent's -auth asks for a rule");
        }
    }

    fn bind(json: Value) -> (Bind, Value, Vec<String>) {
        let (b, unknown) = warren_proto::fold::from_value::<Bind>(json.clone()).unwrap();
        (b, json, unknown)
    }

    #[test]
    fn every_option_is_acted_on_or_refused_by_name() {
        let (b, raw, unknown) =
            bind(serde_json::json!({"Id": "", "Proto": "https", "Opts": {}, "Extra": {"Bindings": []}}));
        let opts = |o: Value| warren_proto::fold::from_value::<HttpOpts>(o).unwrap().0;
        let x = http(&b, &opts(serde_json::json!({"BasicAuth": {"credentials": [{"username": "alice", "cleartext_password": "password123"}]}, "IPRestriction": {"allow_cidrs": ["10.0.0.0/8"]}})), &raw, &unknown).unwrap();
        let doc = x.policy.unwrap().to_string();
        assert!(
            doc.contains("basic-auth") && doc.contains("alice:password123") && doc.contains("restrict-ips"),
            "{doc}"
        );
        let x = http(
            &b,
            &opts(serde_json::json!({"Compression": {}, "CircuitBreaker": {"error_threshold": 0.25}})),
            &raw,
            &unknown,
        )
        .unwrap();
        let doc = x.policy.unwrap().to_string();
        assert!(
            doc.contains("compress-response") && doc.contains("circuit-breaker") && doc.contains("0.25"),
            "{doc}"
        );
        for (o, name) in [
            (serde_json::json!({"Compression": {"level": 9}}), "Compression.level"),
            (
                serde_json::json!({"CircuitBreaker": {"error_threshold": 1.5}}),
                "CircuitBreaker.error_threshold 1.5",
            ),
            (
                serde_json::json!({"CircuitBreaker": {"error_threshold": "half"}}),
                "CircuitBreaker.error_threshold",
            ),
            (
                serde_json::json!({"CircuitBreaker": {"error_threshold": 0.5, "tripped": "5s"}}),
                "CircuitBreaker.tripped",
            ),
            (serde_json::json!({"OAuth": {"provider": "google"}}), "OAuth"),
            (serde_json::json!({"WebsocketTCPConverter": {}}), "WebsocketTCPConverter"),
            (serde_json::json!({"Policy": {"inbound": []}}), "Policy"),
            (serde_json::json!({"ProxyProto": 1}), "ProxyProto"),
            (
                serde_json::json!({"BasicAuth": {"credentials": [{"username": "a", "hashed_password": "eA=="}]}}),
                "hashed_password",
            ),
        ] {
            let e = http(&b, &opts(o.clone()), &raw, &unknown).unwrap_err();
            assert!(e.contains(name), "{o}: {e}");
        }
        let (b2, raw2, unknown2) =
            bind(serde_json::json!({"Proto": "https", "Extra": {"PoolingEnabled": true}}));
        assert!(http(&b2, &HttpOpts::default(), &raw2, &unknown2).is_ok(), "pooling is acted on");
        let (b3, raw3, unknown3) =
            bind(serde_json::json!({"Proto": "https", "Extra": {"Teleport": "yes", "LegacyUnset": ""}}));
        assert!(http(&b3, &HttpOpts::default(), &raw3, &unknown3).unwrap_err().contains("Extra.Teleport"));
        let (b4, raw4, unknown4) = bind(serde_json::json!({"Proto": "https", "ForwardsProto": "http2"}));
        assert!(http(&b4, &HttpOpts::default(), &raw4, &unknown4).is_ok(), "http2 upstreams are spoken to");
        let (b5, raw5, unknown5) = bind(serde_json::json!({"Proto": "https", "ForwardsProto": "http3"}));
        assert!(http(&b5, &HttpOpts::default(), &raw5, &unknown5).unwrap_err().contains("http3"));
        let legacy = Some(serde_json::json!({"inbound": []}));
        let t = TcpOpts { policy: legacy.clone(), ..Default::default() };
        assert!(tcp(&b, &t, &raw, &unknown).unwrap_err().contains("Policy"));
        let t = TlsOpts { policy: legacy, ..Default::default() };
        assert!(tls(&b, &t, &raw, &unknown).unwrap_err().contains("Policy"));
    }
}
