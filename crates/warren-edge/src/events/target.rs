//! Where a destination delivers: a signed webhook or a JSON-lines file. Checked once, when
//! the destination is created or changed; every key is known or refused by name.

use serde_json::{Value, json};

use crate::config::EdgeConfig;

/// Largest file a file destination writes before rotating, by default.
const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated files kept besides the current one, by default.
const DEFAULT_MAX_FILES: u32 = 5;

/// A destination's target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// POSTs batches of events as a JSON array, signed with HMAC-SHA256.
    Webhook {
        /// http(s) URL.
        url: String,
        /// The signing secret (only while creating; the store keeps it sealed).
        secret: Option<String>,
        /// Names of the headers sent with every batch (a receiver's `Authorization`); shown,
        /// their values never.
        header_names: Vec<String>,
        /// The headers as a JSON object (only while creating; sealed with the secret).
        headers: Option<String>,
    },
    /// POSTs batches as OpenTelemetry logs (OTLP/HTTP, JSON encoding) to a collector.
    Otlp {
        /// The logs endpoint, e.g. `https://collector:4318/v1/logs`.
        url: String,
        /// Names of the headers sent with every batch (a collector's `Authorization`, a
        /// tenant header); shown, their values never.
        header_names: Vec<String>,
        /// The headers as a JSON object (only while creating; the store keeps it sealed).
        headers: Option<String>,
    },
    /// Publishes each event as a message on a NATS subject, acknowledged by JetStream when
    /// `jetstream`.
    Nats {
        /// `nats://host[:port]`.
        url: String,
        subject: String,
        jetstream: bool,
        /// An auth token (only while creating; the store keeps it sealed).
        token: Option<String>,
        /// PEM certificates to trust for a `tls://` server (a private CA); `None`: the
        /// public roots.
        tls_ca: Option<String>,
    },
    /// Appends events as JSON lines to a file in the events directory.
    File {
        /// A plain file name.
        name: String,
        /// Rotate beyond this size.
        max_bytes: u64,
        /// Keep this many rotated files.
        max_files: u32,
    },
}

impl Target {
    /// Parses and checks a target as an API client sends it.
    pub(crate) fn parse(v: &Value, config: &EdgeConfig) -> Result<Target, String> {
        let obj = v.as_object().ok_or("target must be an object with one of: webhook, otlp, nats, file")?;
        let set: Vec<(&String, &Value)> = obj.iter().filter(|(_, v)| !v.is_null()).collect();
        let [(kind, body)] = set.as_slice() else {
            return Err(format!(
                "target must name exactly one of: webhook, otlp, nats, file (it names {})",
                if set.is_empty() {
                    "none".to_owned()
                } else {
                    set.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
                }
            ));
        };
        let body = body.as_object().ok_or_else(|| format!("target.{kind} must be an object"))?;
        match kind.as_str() {
            "webhook" => {
                known_keys(kind, body, &["url", "secret", "headers"])?;
                let url = body.get("url").and_then(Value::as_str).ok_or("target.webhook.url is required")?;
                check_webhook_url(url, config)?;
                let secret = match body.get("secret") {
                    None | Some(Value::Null) => new_secret(),
                    Some(Value::String(s)) if s.len() >= 16 && s.len() <= 256 => s.clone(),
                    Some(_) => return Err(
                        "target.webhook.secret: 16 to 256 characters, or leave it out for a generated one"
                            .into(),
                    ),
                };
                let headers = header_object(kind, body)?;
                let header_names = check_headers(kind, &headers)?;
                let headers = (!headers.is_empty()).then(|| Value::Object(headers).to_string());
                Ok(Target::Webhook { url: url.to_owned(), secret: Some(secret), header_names, headers })
            }
            "file" => {
                known_keys(kind, body, &["name", "max_bytes", "max_files"])?;
                let name = body.get("name").and_then(Value::as_str).ok_or("target.file.name is required")?;
                check_file_name(name)?;
                let max_bytes = match body.get("max_bytes") {
                    None | Some(Value::Null) => DEFAULT_MAX_BYTES,
                    Some(v) => v
                        .as_u64()
                        .filter(|n| (4096..=1 << 30).contains(n))
                        .ok_or("target.file.max_bytes: 4096 to 1073741824")?,
                };
                let max_files = match body.get("max_files") {
                    None | Some(Value::Null) => DEFAULT_MAX_FILES,
                    Some(v) => v
                        .as_u64()
                        .filter(|n| (1..=100).contains(n))
                        .ok_or("target.file.max_files: 1 to 100")? as u32,
                };
                Ok(Target::File { name: name.to_owned(), max_bytes, max_files })
            }
            "otlp" => {
                known_keys(kind, body, &["url", "headers"])?;
                let url = body.get("url").and_then(Value::as_str).ok_or("target.otlp.url is required")?;
                check_webhook_url(url, config)?;
                let headers = header_object(kind, body)?;
                let header_names = check_headers(kind, &headers)?;
                let headers = (!headers.is_empty()).then(|| Value::Object(headers).to_string());
                Ok(Target::Otlp { url: url.to_owned(), header_names, headers })
            }
            "nats" => {
                known_keys(kind, body, &["url", "subject", "jetstream", "token", "tls_ca"])?;
                let url = body.get("url").and_then(Value::as_str).ok_or("target.nats.url is required")?;
                let (host, port) = super::nats::host_port(url).map_err(|e| format!("target.nats.url {e}"))?;
                check_not_own(url, &host, port, config)?;
                let subject =
                    body.get("subject").and_then(Value::as_str).ok_or("target.nats.subject is required")?;
                super::nats::check_subject(subject).map_err(|e| format!("target.nats.{e}"))?;
                let jetstream = match body.get("jetstream") {
                    None | Some(Value::Null) => true,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err("target.nats.jetstream: true or false".into()),
                };
                let token = match body.get("token") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(t)) if !t.is_empty() && t.len() <= 1024 => Some(t.clone()),
                    Some(_) => return Err("target.nats.token: 1 to 1024 characters".into()),
                };
                let tls_ca = match body.get("tls_ca") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(pem)) if super::nats::is_tls(url) && pem.len() <= 64 * 1024 => {
                        super::nats::tls_config(Some(pem)).map_err(|e| format!("target.nats.{e}"))?;
                        Some(pem.clone())
                    }
                    Some(Value::String(_)) if !super::nats::is_tls(url) => {
                        return Err("target.nats.tls_ca: only for a tls:// URL".into());
                    }
                    Some(_) => return Err("target.nats.tls_ca: PEM certificates (at most 64 KiB)".into()),
                };
                Ok(Target::Nats {
                    url: url.to_owned(),
                    subject: subject.to_owned(),
                    jetstream,
                    token,
                    tls_ca,
                })
            }
            "kinesis" | "firehose" | "cloudwatch_logs" | "datadog" | "azure_logs_ingestion" | "s3" => {
                Err(format!(
                    "target.{kind}: warren does not deliver to {kind}; use webhook or otlp (to a collector that forwards there), nats or file"
                ))
            }
            other => Err(format!(
                "target.{other} is not a destination warren knows; use webhook, otlp, nats or file"
            )),
        }
    }

    /// Reads a target as the store keeps it.
    pub(crate) fn from_stored(s: &str) -> Option<Target> {
        let v: Value = serde_json::from_str(s).ok()?;
        if let Some(w) = v.get("webhook") {
            return Some(Target::Webhook {
                url: w.get("url")?.as_str()?.to_owned(),
                secret: None,
                header_names: header_names(w),
                headers: None,
            });
        }
        if let Some(o) = v.get("otlp") {
            return Some(Target::Otlp {
                url: o.get("url")?.as_str()?.to_owned(),
                header_names: header_names(o),
                headers: None,
            });
        }
        if let Some(n) = v.get("nats") {
            return Some(Target::Nats {
                url: n.get("url")?.as_str()?.to_owned(),
                subject: n.get("subject")?.as_str()?.to_owned(),
                jetstream: n.get("jetstream")?.as_bool()?,
                token: None,
                tls_ca: n.get("tls_ca").and_then(Value::as_str).map(str::to_owned),
            });
        }
        let f = v.get("file")?;
        Some(Target::File {
            name: f.get("name")?.as_str()?.to_owned(),
            max_bytes: f.get("max_bytes")?.as_u64()?,
            max_files: f.get("max_files")?.as_u64()? as u32,
        })
    }

    /// The target as stored and shown: without the secret.
    pub(crate) fn stored(&self) -> Value {
        match self {
            Target::Webhook { url, header_names, .. } if header_names.is_empty() => {
                json!({"webhook": {"url": url}})
            }
            Target::Webhook { url, header_names, .. } => {
                json!({"webhook": {"url": url, "headers": masked(header_names)}})
            }
            Target::Nats { url, subject, jetstream, tls_ca: None, .. } => {
                json!({"nats": {"url": url, "subject": subject, "jetstream": jetstream}})
            }
            Target::Nats { url, subject, jetstream, tls_ca: Some(ca), .. } => {
                json!({"nats": {"url": url, "subject": subject, "jetstream": jetstream, "tls_ca": ca}})
            }
            Target::Otlp { url, header_names, .. } if header_names.is_empty() => {
                json!({"otlp": {"url": url}})
            }
            Target::Otlp { url, header_names, .. } => {
                json!({"otlp": {"url": url, "headers": masked(header_names)}})
            }
            Target::File { name, max_bytes, max_files } => {
                json!({"file": {"name": name, "max_bytes": max_bytes, "max_files": max_files}})
            }
        }
    }

    /// What to keep sealed, while known: a webhook's signing secret (with its headers, as
    /// `{"secret": ..., "headers": {...}}`, when it has any), a NATS token, an OTLP
    /// destination's headers.
    pub(crate) fn secret(&self) -> Option<String> {
        match self {
            Target::Webhook { secret: Some(s), headers: Some(h), .. } => {
                let headers: Value = serde_json::from_str(h).expect("checked headers are JSON");
                Some(json!({"secret": s, "headers": headers}).to_string())
            }
            Target::Webhook { secret, .. } => secret.clone(),
            Target::Nats { token, .. } => token.clone(),
            Target::Otlp { headers, .. } => headers.clone(),
            Target::File { .. } => None,
        }
    }

    /// The secret shown once in the response: a webhook's signing secret (generated ones
    /// must be); a NATS token or headers the client gave are not echoed.
    pub(crate) fn shown_secret(&self) -> Option<&str> {
        match self {
            Target::Webhook { secret, .. } => secret.as_deref(),
            _ => None,
        }
    }
}

/// A webhook's sealed secret, opened: the signing secret and the headers to send. Sealed
/// secrets from before webhooks had headers are the bare signing secret.
pub(crate) fn webhook_secret(opened: &str) -> (String, Vec<(String, String)>) {
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(opened)
        && let Some(Value::String(secret)) = o.get("secret")
    {
        let headers = o
            .get("headers")
            .and_then(Value::as_object)
            .map(|h| h.iter().filter_map(|(n, v)| Some((n.clone(), v.as_str()?.to_owned()))).collect())
            .unwrap_or_default();
        return (secret.clone(), headers);
    }
    (opened.to_owned(), Vec::new())
}

fn header_object(
    kind: &str,
    body: &serde_json::Map<String, Value>,
) -> Result<serde_json::Map<String, Value>, String> {
    match body.get("headers") {
        None | Some(Value::Null) => Ok(serde_json::Map::new()),
        Some(Value::Object(h)) => Ok(h.clone()),
        Some(_) => Err(format!("target.{kind}.headers: an object of header names to values")),
    }
}

fn header_names(target: &Value) -> Vec<String> {
    target.get("headers").and_then(Value::as_object).map(|h| h.keys().cloned().collect()).unwrap_or_default()
}

fn masked(names: &[String]) -> serde_json::Map<String, Value> {
    names.iter().map(|n| (n.clone(), Value::String("********".into()))).collect()
}

impl Target {}

/// Headers a destination may add: at most 16, valid names and values, none that HTTP or the
/// edge itself sets (a webhook's `Warren-*` signature headers included). Returns the names,
/// lowercase.
fn check_headers(kind: &str, headers: &serde_json::Map<String, Value>) -> Result<Vec<String>, String> {
    const RESERVED: [&str; 8] = [
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "keep-alive",
    ];
    if headers.len() > 16 {
        return Err(format!("target.{kind}.headers: at most 16"));
    }
    let mut names = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(lower.as_bytes()).is_err()
            || RESERVED.contains(&lower.as_str())
            || lower.starts_with("warren-")
        {
            return Err(format!("target.{kind}.headers: {name:?} is not a header a destination may set"));
        }
        match value {
            Value::String(v) if v.len() <= 4096 && http::HeaderValue::from_str(v).is_ok() => {}
            _ => {
                return Err(format!(
                    "target.{kind}.headers.{name}: a header value (text, at most 4096 bytes)"
                ));
            }
        }
        names.push(lower);
    }
    Ok(names)
}

fn known_keys(kind: &str, body: &serde_json::Map<String, Value>, known: &[&str]) -> Result<(), String> {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => {
            Err(format!("target.{kind}.{k} is not a setting warren knows; it knows {}", known.join(", ")))
        }
        None => Ok(()),
    }
}

/// `whsec_` and 32 random bytes, base64url.
fn new_secret() -> String {
    use base64::Engine;
    use rand::Rng;
    let mut raw = [0u8; 32];
    rand::rng().fill(&mut raw);
    format!("whsec_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// A plain file name: no directories, nothing hidden.
fn check_file_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "target.file.name {name:?}: a plain file name (letters, digits, '.', '_', '-'; not starting with '.'); it is written in the edge's events directory"
        ))
    }
}

/// http(s), a host that is not one of the edge's own names or listeners (events about
/// requests, sent as requests through the edge, would never end), and an address the
/// operator lets webhooks reach.
fn check_webhook_url(url: &str, config: &EdgeConfig) -> Result<(), String> {
    let reach = crate::idp::Reach {
        loopback: config.events.allow_loopback,
        private: config.events.allow_private_networks,
    };
    let (uri, host, https) =
        crate::idp::check_url(url, reach).map_err(|e| format!("target.webhook.url {e}"))?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    check_not_own(url, &host, port, config)
}

/// Refuses `host:port` when it is one of the edge's own names or listeners (events about
/// requests, sent as requests through the edge, would never end).
fn check_not_own(url: &str, host: &str, port: u16, config: &EdgeConfig) -> Result<(), String> {
    let host = host.to_ascii_lowercase();
    let own_name = std::iter::once(config.base_domain.as_str())
        .chain(config.connect_hostnames.iter().map(String::as_str))
        .chain(std::iter::once(config.tcp_host.as_str()))
        .any(|n| !n.is_empty() && (host == n || host.ends_with(&format!(".{n}"))));
    if own_name {
        return Err(format!(
            "target url {url}: {host} is this edge's own name; events would loop through it"
        ));
    }
    let listeners = [Some(config.connect_addr), Some(config.https_addr), config.http_addr, config.api_addr];
    let local_host = host == "localhost"
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
    for l in listeners.into_iter().flatten() {
        let same_ip = host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip == l.ip());
        if l.port() == port && (same_ip || (local_host && (l.ip().is_loopback() || l.ip().is_unspecified())))
        {
            return Err(format!("target url {url}: that is one of this edge's own listeners"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EdgeConfig {
        let mut c = EdgeConfig::local_default("/tmp/x".into());
        c.events.allow_loopback = true;
        c.https_addr = "127.0.0.1:8443".parse().unwrap();
        c
    }

    #[test]
    fn targets_are_checked_and_unknown_keys_refused_by_name() {
        let c = config();
        let t = Target::parse(&json!({"webhook": {"url": "http://127.0.0.1:9999/hook"}}), &c).unwrap();
        assert!(t.secret().unwrap().starts_with("whsec_"));
        assert_eq!(t.stored(), json!({"webhook": {"url": "http://127.0.0.1:9999/hook"}}));
        assert_eq!(
            Target::from_stored(&t.stored().to_string()),
            Some(Target::Webhook {
                url: "http://127.0.0.1:9999/hook".into(),
                secret: None,
                header_names: vec![],
                headers: None
            })
        );
        // Headers: sealed with the secret, shown masked, the signature's own refused.
        let h = json!({"webhook": {"url": "http://127.0.0.1:9999/h", "secret": "0123456789abcdef", "headers": {"Authorization": "Bearer t"}}});
        let t = Target::parse(&h, &c).unwrap();
        assert_eq!(t.stored()["webhook"]["headers"], json!({"authorization": "********"}));
        let (secret, headers) = webhook_secret(&t.secret().unwrap());
        assert_eq!(
            (secret.as_str(), headers),
            ("0123456789abcdef", vec![("Authorization".into(), "Bearer t".into())])
        );
        assert_eq!(
            webhook_secret("whsec_old"),
            ("whsec_old".into(), vec![]),
            "a secret sealed before headers"
        );
        assert_eq!(t.shown_secret(), Some("0123456789abcdef"));
        let f = Target::parse(&json!({"file": {"name": "audit.jsonl"}}), &c).unwrap();
        assert_eq!(Target::from_stored(&f.stored().to_string()), Some(f));
        for (bad, says) in [
            (json!({"webhook": {"url": "ftp://127.0.0.1/x"}}), "must be https"),
            (json!({"webhook": {"url": "http://10.0.0.1/x"}}), "must be https"),
            (json!({"webhook": {"url": "https://app.warren.localhost/x"}}), "own name"),
            (json!({"webhook": {"url": "http://127.0.0.1:8443/x"}}), "own listeners"),
            (json!({"webhook": {"url": "http://localhost:8443/x"}}), "own"),
            (json!({"webhook": {"url": "http://127.0.0.1:9999/x", "headers": []}}), "webhook.headers"),
            (
                json!({"webhook": {"url": "http://127.0.0.1:9999/x", "headers": {"Warren-Signature": "t=1,v1=0"}}}),
                "webhook.headers",
            ),
            (json!({"webhook": {"url": "http://127.0.0.1:9999/x", "secret": "short"}}), "16 to 256"),
            (json!({"file": {"name": "../etc/passwd"}}), "plain file name"),
            (json!({"file": {"name": ".hidden"}}), "plain file name"),
            (json!({"file": {"name": "a", "max_bytes": 10}}), "max_bytes"),
            (json!({"kinesis": {"stream_arn": "x"}}), "does not deliver to kinesis"),
            (json!({"nats": {"url": "nats://u:p@127.0.0.1:4222", "subject": "a"}}), "token"),
            (json!({"otlp": {"url": "http://10.0.0.1:4318/v1/logs"}}), "must be https"),
            (
                json!({"otlp": {"url": "http://127.0.0.1:4318/v1/logs", "headers": {"Host": "x"}}}),
                "otlp.headers",
            ),
            (json!({"nats": {"url": "nats://127.0.0.1:4222", "subject": "a.*"}}), "wildcards"),
            (json!({"nats": {"url": "nats://127.0.0.1:8443", "subject": "a"}}), "own listeners"),
            (json!({"nats": {"url": "nats://127.0.0.1:4222"}}), "subject is required"),
            (json!({"webhook": {"url": "https://a.example"}, "file": {"name": "a"}}), "exactly one"),
            (json!({}), "exactly one"),
            (json!({"smoke_signal": {}}), "smoke_signal"),
        ] {
            let e = Target::parse(&bad, &c).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let mut strict = config();
        strict.events.allow_loopback = false;
        assert!(Target::parse(&json!({"webhook": {"url": "http://127.0.0.1:9999/x"}}), &strict).is_err());
    }
}
