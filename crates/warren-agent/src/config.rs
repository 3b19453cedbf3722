//! Agent configuration: where the edge is, how to trust it, and what to expose.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How the agent verifies the edge's certificate (`connect_cas`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectCas {
    /// Publicly trusted CAs (Mozilla's list, compiled in).
    Trusted,
    /// The operating system's store (for corporate TLS-inspecting proxies).
    Host,
    /// A PEM file with the CA(s), such as the edge's local CA.
    Pem(PathBuf),
    /// PEM bytes.
    PemBytes(Vec<u8>),
}

impl ConnectCas {
    /// Parses `trusted`, `host` or a path.
    pub fn parse(s: &str) -> ConnectCas {
        match s {
            "trusted" => ConnectCas::Trusted,
            "host" => ConnectCas::Host,
            p => ConnectCas::Pem(PathBuf::from(p)),
        }
    }
}

/// Which endpoint protocol to bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointProto {
    /// TLS terminated at the edge (the default for `warren http`).
    Https,
    /// Plain http, only when asked for with an `http://` URL.
    Http,
    /// A TCP port on the edge.
    Tcp,
    /// TLS routed by SNI and passed through by the edge: terminated here (with
    /// [`EndpointConfig::tls_termination`]) or by the upstream.
    Tls,
}

impl EndpointProto {
    /// True for http and https endpoints (the edge sends HTTP/1.1 on their proxy streams).
    pub fn is_http(self) -> bool {
        matches!(self, EndpointProto::Http | EndpointProto::Https)
    }

    /// `https`, `http`, `tcp` or `tls`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointProto::Https => "https",
            EndpointProto::Http => "http",
            EndpointProto::Tcp => "tcp",
            EndpointProto::Tls => "tls",
        }
    }
}

/// How to reach the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamScheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
    /// Raw TCP.
    Tcp,
}

/// The service the agent forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Protocol to the upstream.
    pub scheme: UpstreamScheme,
    /// Host name or IP.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// An endpoint URL names a host (and port), never a path: the edge routes by name, so a path
/// would be dropped and every path of the name would reach the upstream.
fn refuse_path(url: &str) -> Result<(), String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find(['/', '?', '#']) {
        Some(i) if &rest[i..] != "/" => Err(format!(
            "--url {url:?} has a path or query ({:?}); endpoint URLs name a host only, and every path under it reaches the upstream",
            &rest[i..]
        )),
        _ => Ok(()),
    }
}

impl Upstream {
    /// Parses what `warren http|tcp` take: `8080`, `host:8080`, `http://host:8080`,
    /// `https://host:8443`, `tcp://host:22`. A bare port 443 means https, as in ngrok.
    pub fn parse(s: &str, tcp: bool) -> Result<Upstream, String> {
        let (scheme, rest) = match s.split_once("://") {
            Some(("http", r)) => (Some(UpstreamScheme::Http), r),
            Some(("https", r)) => (Some(UpstreamScheme::Https), r),
            Some(("tcp", r)) => (Some(UpstreamScheme::Tcp), r),
            Some((other, _)) => return Err(format!("unsupported upstream scheme {other:?} in {s:?}")),
            None => (None, s),
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(format!("upstream {s:?} must not have a path"));
        }
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) && rest.parse::<u16>().is_err() {
            // A number is a port, never a host name: `warren http 99999` must not forward to a
            // host called 99999.
            return Err(format!("port {rest} in upstream {s:?} is out of range (1-65535)"));
        }
        let (host, port) = match rest.parse::<u16>() {
            Ok(p) => ("localhost".to_owned(), Some(p)),
            Err(_) => match rest.rsplit_once(':') {
                Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                    let port = p.parse::<u16>().map_err(|_| format!("invalid port in upstream {s:?}"))?;
                    (h.trim_start_matches('[').trim_end_matches(']').to_owned(), Some(port))
                }
                _ => (rest.trim_start_matches('[').trim_end_matches(']').to_owned(), None),
            },
        };
        if host.is_empty() {
            return Err(format!("upstream {s:?} has no host"));
        }
        let scheme = match (scheme, tcp) {
            (Some(s), _) => s,
            (None, true) => UpstreamScheme::Tcp,
            (None, false) if port == Some(443) => UpstreamScheme::Https,
            (None, false) => UpstreamScheme::Http,
        };
        let port = match (port, scheme) {
            (Some(p), _) => p,
            (None, UpstreamScheme::Http) => 80,
            (None, UpstreamScheme::Https) => 443,
            (None, UpstreamScheme::Tcp) => return Err(format!("upstream {s:?} needs a port")),
        };
        if port == 0 {
            return Err(format!("upstream {s:?} has port 0"));
        }
        Ok(Upstream { scheme, host, port })
    }

    /// True when the upstream is this machine; its TLS certificate is then not verified by
    /// default (local dev servers use self-signed certificates).
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self.host.ends_with(".localhost")
            || self.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            UpstreamScheme::Http => "http",
            UpstreamScheme::Https => "https",
            UpstreamScheme::Tcp => "tcp",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// One endpoint to bind.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Endpoint protocol.
    pub proto: EndpointProto,
    /// The URL asked for (`https://app.example.com`, `tcp://host:21000`); empty for a random one.
    pub url: String,
    /// Where to forward.
    pub upstream: Upstream,
    /// Rewrite the `Host` header: `rewrite` uses the upstream's host:port, anything else is used
    /// as given.
    pub host_header: Option<String>,
    /// Verify the upstream's TLS certificate; `None` means verify unless it is loopback.
    pub upstream_tls_verify: Option<bool>,
    /// For tls endpoints: terminate TLS here with this certificate (and, if it asks for
    /// client certificates, mutual TLS); `None` passes the TLS through to the upstream.
    pub tls_termination: Option<Arc<rustls::ServerConfig>>,
    /// The endpoint's name in the local API and the console; empty gets `command_line`.
    pub name: String,
    /// Capture its HTTP requests for the inspector (http and https endpoints; ngrok's
    /// `--inspect`, on by default).
    pub inspect: bool,
    /// The endpoint's traffic policy document (a JSON object, or YAML or JSON text), sent
    /// with the Bind; the edge compiles and enforces it.
    pub traffic_policy: Option<serde_json::Value>,
    /// A name under the edge's base domain for the edge to complete (ngrok's `--subdomain`);
    /// empty: the URL (or a random name) decides.
    pub subdomain: String,
    /// Free-form metadata, shown by the API (ngrok's `--metadata`).
    pub metadata: String,
    /// A description, shown by the API (ngrok's `--description`).
    pub description: String,
    /// Join the pool of endpoints on this URL (ngrok's `--pooling-enabled`,
    /// `pooling_enabled`): other agents of the account that ask for it serve it too, and
    /// visitors are spread across them.
    pub pooling: bool,
    /// Speak HTTP/2 to the upstream (ngrok's `upstream.protocol: http2`,
    /// `--upstream-protocol http2`): prior knowledge (h2c) to an `http://` upstream, ALPN
    /// `h2` over TLS to an `https://` one. The edge sends the requests as HTTP/2, so gRPC and
    /// trailers pass through. http and https endpoints only.
    pub upstream_http2: bool,
}

impl EndpointConfig {
    /// `warren http <upstream> [--url U]`: https unless `U` starts with `http://`.
    pub fn http(upstream: &str, url: Option<&str>) -> Result<EndpointConfig, String> {
        let url = url.unwrap_or("").to_owned();
        refuse_path(&url)?;
        let proto = if url.starts_with("http://") {
            EndpointProto::Http
        } else if url.is_empty() || url.starts_with("https://") || !url.contains("://") {
            EndpointProto::Https
        } else {
            return Err(format!("--url {url:?} must be an http:// or https:// URL for an http endpoint"));
        };
        Ok(EndpointConfig {
            proto,
            url,
            upstream: Upstream::parse(upstream, false)?,
            host_header: None,
            upstream_tls_verify: None,
            tls_termination: None,
            name: String::new(),
            inspect: true,
            traffic_policy: None,
            subdomain: String::new(),
            metadata: String::new(),
            description: String::new(),
            pooling: false,
            upstream_http2: false,
        })
    }

    /// `warren tcp <upstream> [--url tcp://host:port]`.
    pub fn tcp(upstream: &str, url: Option<&str>) -> Result<EndpointConfig, String> {
        let url = url.unwrap_or("").to_owned();
        refuse_path(&url)?;
        if let Some((_, port)) = url.strip_prefix("tcp://").and_then(|a| a.rsplit_once(':'))
            && !port.parse::<u16>().is_ok_and(|p| p != 0)
        {
            return Err(format!("--url {url:?}: the port must be 1 to 65535"));
        }
        if !url.is_empty() && !url.starts_with("tcp://") {
            return Err(format!("--url {url:?} must be a tcp:// URL for a tcp endpoint"));
        }
        Ok(EndpointConfig {
            proto: EndpointProto::Tcp,
            url,
            upstream: Upstream::parse(upstream, true)?,
            host_header: None,
            upstream_tls_verify: None,
            tls_termination: None,
            name: String::new(),
            inspect: true,
            traffic_policy: None,
            subdomain: String::new(),
            metadata: String::new(),
            description: String::new(),
            pooling: false,
            upstream_http2: false,
        })
    }

    /// `warren tls <upstream> [--url tls://host] [--crt F --key F [--mutual-tls-cas F]]`:
    /// passthrough to the upstream, or TLS terminated by the agent with its own certificate.
    pub fn tls(
        upstream: &str,
        url: Option<&str>,
        termination: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<EndpointConfig, String> {
        let url = url.unwrap_or("").to_owned();
        refuse_path(&url)?;
        if !url.is_empty() && !url.starts_with("tls://") {
            return Err(format!("--url {url:?} must be a tls:// URL for a tls endpoint"));
        }
        Ok(EndpointConfig {
            proto: EndpointProto::Tls,
            url,
            upstream: Upstream::parse(upstream, true)?,
            host_header: None,
            upstream_tls_verify: None,
            tls_termination: termination,
            name: String::new(),
            inspect: true,
            traffic_policy: None,
            subdomain: String::new(),
            metadata: String::new(),
            description: String::new(),
            pooling: false,
            upstream_http2: false,
        })
    }

    /// Adds rules to the endpoint's traffic policy, before the rules it has (ngrok's older
    /// flags, like `--cidr-allow`, become rules that run first).
    pub fn prepend_policy(&mut self, rules: serde_json::Value) -> Result<(), String> {
        let serde_json::Value::Object(extra) = rules else {
            return Err("policy rules must be an object".into());
        };
        let mut doc = match self.traffic_policy.take() {
            Some(serde_json::Value::Object(m)) => m,
            None => serde_json::Map::new(),
            Some(other) => return Err(format!("a traffic policy must be an object, not {other}")),
        };
        for (phase, list) in extra {
            let serde_json::Value::Array(mut list) = list else {
                return Err(format!("{phase} must be a list"));
            };
            if let Some(serde_json::Value::Array(existing)) = doc.remove(&phase) {
                list.extend(existing);
            }
            doc.insert(phase, serde_json::Value::Array(list));
        }
        self.traffic_policy = Some(serde_json::Value::Object(doc));
        Ok(())
    }

    pub(crate) fn verify_upstream_tls(&self) -> bool {
        self.upstream_tls_verify.unwrap_or(!self.upstream.is_loopback())
    }
}

/// Everything the agent needs.
#[derive(Clone)]
pub struct AgentConfig {
    /// The authtoken.
    pub authtoken: String,
    /// `host:port` of the edge's connect listener.
    pub connect_url: String,
    /// How to trust the edge.
    pub connect_cas: ConnectCas,
    /// What to expose.
    pub endpoints: Vec<EndpointConfig>,
    /// How often the agent sends heartbeats.
    pub heartbeat_interval: Duration,
    /// How long a heartbeat may go unanswered before the agent reconnects.
    pub heartbeat_tolerance: Duration,
    /// First reconnect delay.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Time for TCP + TLS to the edge.
    pub connect_timeout: Duration,
    /// Free-form metadata shown on the session.
    pub metadata: String,
    /// Where the inspector and local API listen; `None` turns them off.
    pub web_addr: Option<std::net::SocketAddr>,
    /// When `web_addr` is taken, try the next nine ports (ngrok's behaviour for the default
    /// 127.0.0.1:4040, so two agents on one machine both get an inspector).
    pub web_addr_fallback: bool,
    /// `Host` values the inspector answers besides localhost and its own address: names,
    /// `.suffix` patterns, IPs and CIDRs (the DNS-rebinding guard).
    pub web_allow_hosts: Vec<String>,
    /// Bytes of captured requests kept: 0 means 50 MB, negative turns inspection off.
    pub inspect_db_size: i64,
    /// On the first connect, an endpoint the edge refuses is reported and dropped while the
    /// others stay up (`warren start --keep-going`); otherwise the whole start fails and
    /// nothing stays bound.
    pub keep_going: bool,
    /// Resolvers that look the connect host up instead of the system's
    /// (`agent.dns_resolver_ips`); empty: the system's.
    pub dns_resolvers: Vec<std::net::SocketAddr>,
    /// High availability (`--ha`): a second session, dialled to another address of the
    /// connect host when it has several (or through a balancer that spreads connections),
    /// serves every endpoint too, each endpoint joining a pool; losing one edge node then
    /// loses no endpoint. Endpoints need fixed URLs.
    pub ha: bool,
    /// Which of the connect host's addresses this session dials first (the `ha` companion
    /// session: the next one).
    pub dial_rotation: usize,
    /// What an `ha` agent's two sessions know of each other (set by [`crate::Agent::start`]).
    pub ha_peer: Option<std::sync::Arc<HaPeer>>,
}

/// Where each of an `ha` agent's two sessions is: the second moves when it finds itself on
/// the same edge node as the first (the first keeps serving meanwhile).
#[derive(Debug, Default)]
pub struct HaPeer {
    nodes: std::sync::Mutex<[Option<String>; 2]>,
    /// Addresses the second session has moved past.
    moves: std::sync::atomic::AtomicUsize,
}

impl HaPeer {
    /// Session `which` (0 or 1) is now on `node` (`None`: not connected).
    pub(crate) fn set(&self, which: usize, node: Option<String>) {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())[which % 2] = node;
    }

    /// Whether both sessions are on one node.
    pub(crate) fn colocated(&self) -> bool {
        let n = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        n[0].is_some() && n[0] == n[1]
    }

    pub(crate) fn moved(&self) {
        self.moves.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn moves(&self) -> usize {
        self.moves.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("authtoken", &"********")
            .field("connect_url", &self.connect_url)
            .field("connect_cas", &self.connect_cas)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl AgentConfig {
    /// A configuration with ngrok's defaults for timing.
    pub fn new(
        authtoken: impl Into<String>,
        connect_url: impl Into<String>,
        connect_cas: ConnectCas,
    ) -> AgentConfig {
        AgentConfig {
            authtoken: authtoken.into(),
            connect_url: connect_url.into(),
            connect_cas,
            endpoints: Vec::new(),
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_tolerance: Duration::from_secs(15),
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            metadata: String::new(),
            web_addr: None,
            web_addr_fallback: false,
            web_allow_hosts: Vec::new(),
            inspect_db_size: 0,
            keep_going: false,
            dns_resolvers: Vec::new(),
            ha: false,
            dial_rotation: 0,
            ha_peer: None,
        }
    }

    /// Splits `connect_url` into host and port (default 443).
    pub fn connect_host_port(&self) -> Result<(String, u16), String> {
        let s = self.connect_url.trim();
        let s = s.strip_prefix("tls://").unwrap_or(s);
        if s.is_empty() {
            return Err("connect_url is empty".into());
        }
        match s.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => {
                let port = p.parse::<u16>().map_err(|_| format!("invalid port in connect_url {s:?}"))?;
                Ok((h.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
            }
            _ => Ok((s.to_owned(), 443)),
        }
    }
}

/// Reads a traffic policy document (YAML or JSON) into the JSON object sent with a Bind;
/// the edge checks its rules.
pub fn policy_from_text(text: &str) -> Result<serde_json::Value, String> {
    let v: serde_json::Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("traffic policy: invalid JSON: {e}"))?
    } else {
        serde_saphyr::from_str(text).map_err(|e| format!("traffic policy: invalid YAML: {e}"))?
    };
    if !v.is_object() {
        return Err("traffic policy: the document must be a mapping of phases".into());
    }
    Ok(v)
}

/// ngrok's older endpoint flags, as traffic policy rules that run before the endpoint's own.
#[derive(Clone, Debug, Default)]
pub struct LegacyFlags {
    /// `--cidr-allow`.
    pub cidr_allow: Vec<String>,
    /// `--cidr-deny`.
    pub cidr_deny: Vec<String>,
    /// `--basic-auth user:password`.
    pub basic_auth: Vec<String>,
    /// `--request-header-add "name: value"`.
    pub request_header_add: Vec<String>,
    /// `--request-header-remove name`.
    pub request_header_remove: Vec<String>,
    /// `--response-header-add "name: value"`.
    pub response_header_add: Vec<String>,
    /// `--response-header-remove name`.
    pub response_header_remove: Vec<String>,
    /// `--verify-webhook PROVIDER --verify-webhook-secret SECRET`.
    pub verify_webhook: Option<(String, String)>,
    /// `--oidc ISSUER` and its companion flags.
    pub oidc: Option<OidcFlags>,
    /// `--compression`.
    pub compression: bool,
    /// `--circuit-breaker ERROR_THRESHOLD`.
    pub circuit_breaker: Option<f64>,
}

/// ngrok's `--oidc*` flags.
#[derive(Clone, Default)]
pub struct OidcFlags {
    /// `--oidc`: the issuer URL.
    pub issuer: String,
    /// `--oidc-client-id`.
    pub client_id: String,
    /// `--oidc-client-secret`.
    pub client_secret: String,
    /// `--oidc-scope` (repeat).
    pub scopes: Vec<String>,
    /// `--oidc-allow-email` (repeat): only these addresses get in.
    pub allow_emails: Vec<String>,
    /// `--oidc-allow-domain` (repeat): only addresses at these domains get in.
    pub allow_domains: Vec<String>,
}

impl std::fmt::Debug for OidcFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcFlags")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"********")
            .field("scopes", &self.scopes)
            .field("allow_emails", &self.allow_emails)
            .field("allow_domains", &self.allow_domains)
            .finish()
    }
}

impl LegacyFlags {
    /// The rules, or `None` when no flag was given. `http` is false for tcp/tls endpoints,
    /// where only the CIDR flags apply. The translation is warren-policy's, shared with the
    /// options ngrok's SDKs send, so a flag and its SDK option mean the same thing.
    pub fn rules(&self, http: bool) -> Result<Option<serde_json::Value>, String> {
        let pairs = |list: &[String], flag: &str| -> Result<Vec<(String, String)>, String> {
            list.iter()
                .map(|h| {
                    let (k, v) =
                        h.split_once(':').ok_or_else(|| format!("{flag} {h:?}: use \"name: value\""))?;
                    Ok((k.trim().to_owned(), v.trim().to_owned()))
                })
                .collect()
        };
        let legacy = warren_policy::legacy::Legacy {
            cidr_allow: self.cidr_allow.clone(),
            cidr_deny: self.cidr_deny.clone(),
            basic_auth: self.basic_auth.clone(),
            verify_webhook: self.verify_webhook.clone(),
            oidc: self.oidc.as_ref().map(|o| warren_policy::legacy::Oidc {
                issuer: o.issuer.clone(),
                client_id: o.client_id.clone(),
                client_secret: o.client_secret.clone(),
                scopes: o.scopes.clone(),
                allow_emails: o.allow_emails.clone(),
                allow_domains: o.allow_domains.clone(),
            }),
            request_header_add: pairs(&self.request_header_add, "--request-header-add")?,
            request_header_remove: self.request_header_remove.clone(),
            response_header_add: pairs(&self.response_header_add, "--response-header-add")?,
            response_header_remove: self.response_header_remove.clone(),
            compression: self.compression,
            circuit_breaker: self.circuit_breaker,
            ..warren_policy::legacy::Legacy::default()
        };
        legacy.to_document(http)
    }
}

/// Writes a file only its owner can read (it holds the authtoken), created with those
/// permissions so it is never briefly readable by others.
pub(crate) fn write_private_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Compiles an endpoint's traffic policy as the edge will (action types and configs, CEL
/// expressions), before anything binds. What only the edge can know is stood in for: IP
/// policies it names allow everything, key sets are empty, providers are described by their
/// issuer URL alone. The edge compiles the real thing at Bind; this catches the mistakes a
/// file can show on its own.
pub fn check_policy(doc: &serde_json::Value, proto: &str) -> Result<(), String> {
    check_policy_at(doc, proto).map_err(|p| p.msg)
}

/// [`check_policy`], saying where in the document the problem is, for callers that hold the
/// text the user wrote (see [`crate::locate`]).
pub fn check_policy_at(doc: &serde_json::Value, proto: &str) -> Result<(), crate::locate::PolicyProblem> {
    use std::sync::Arc;
    use warren_policy::{CompileEnv, Document, Policy};
    let problem = |msg: String| crate::locate::PolicyProblem {
        unknown_key: crate::locate::unknown_key(&msg),
        msg,
        path: Vec::new(),
    };
    let doc = Document::from_value(doc).map_err(|e| problem(format!("traffic policy: {e}")))?;
    let mut env = CompileEnv {
        cookie_secret: Some(warren_policy::oidc::CookieSecret([7; 32])),
        ..CompileEnv::default()
    };
    for id in doc.ip_policy_ids() {
        env.ip_policies.insert(id, (Vec::new(), Vec::new()));
    }
    for url in doc.jwks_urls() {
        let keys = warren_policy::Jwks::parse(br#"{"keys":[]}"#)
            .map_err(|e| problem(format!("traffic policy: {e}")))?;
        env.jwks.insert(url, Arc::new(keys));
    }
    for issuer in doc.oidc_issuers() {
        let base = issuer.trim_end_matches('/');
        let discovery = serde_json::json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{base}/authorize"),
            "token_endpoint": format!("{base}/token"),
            "jwks_uri": format!("{base}/jwks"),
        });
        let d = warren_policy::oidc::Discovery::parse(&issuer, discovery.to_string().as_bytes())
            .map_err(|e| problem(format!("traffic policy: openid-connect {issuer}: {e}")))?;
        let keys = warren_policy::Jwks::parse(br#"{"keys":[]}"#)
            .map_err(|e| problem(format!("traffic policy: {e}")))?;
        env.oidc.insert(issuer, Arc::new(warren_policy::oidc::Provider::new(d, Arc::new(keys))));
    }
    Policy::compile(&doc, proto, &env).map(|_| ()).map_err(|e| crate::locate::PolicyProblem {
        msg: format!("traffic policy: {e}"),
        path: crate::locate::error_path(&e),
        unknown_key: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_parse_like_ngrok() {
        let u = Upstream::parse("8080", false).unwrap();
        assert_eq!((u.scheme, u.host.as_str(), u.port), (UpstreamScheme::Http, "localhost", 8080));
        assert_eq!(Upstream::parse("443", false).unwrap().scheme, UpstreamScheme::Https);
        let u = Upstream::parse("https://localhost:8443", false).unwrap();
        assert_eq!((u.scheme, u.port), (UpstreamScheme::Https, 8443));
        let u = Upstream::parse("10.0.0.5:3000", false).unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.5", 3000));
        assert!(!u.is_loopback());
        assert_eq!(Upstream::parse("22", true).unwrap().scheme, UpstreamScheme::Tcp);
        assert_eq!(Upstream::parse("[::1]:80", false).unwrap().host, "::1");
        assert!(Upstream::parse("ftp://x:1", false).is_err());
        assert!(Upstream::parse("x:notaport", false).is_err());
        assert!(Upstream::parse("db.internal", true).is_err());
        assert!(Upstream::parse("http://x:1/path", false).is_err());
        for out_of_range in ["99999", "65536", "http://localhost:70000"] {
            let e = Upstream::parse(out_of_range, false).unwrap_err();
            assert!(e.contains("out of range") || e.contains("invalid port"), "{out_of_range}: {e}");
        }
        assert_eq!(Upstream::parse("65535", true).unwrap().port, 65535);
    }

    #[test]
    fn endpoint_urls_with_a_path_or_query_are_refused_not_cut() {
        for url in
            ["https://x.example/path", "https://x.example/?a=1", "x.example/api", "https://x.example#f"]
        {
            let e = EndpointConfig::http("80", Some(url)).unwrap_err();
            assert!(e.contains("has a path or query"), "{url}: {e}");
        }
        assert!(EndpointConfig::tcp("22", Some("tcp://x:1/db")).is_err());
        assert!(EndpointConfig::tls("443", Some("tls://x.example/a"), None).is_err());
        assert!(EndpointConfig::http("80", Some("https://x.example/")).is_ok(), "a bare / is no path");
    }

    #[test]
    fn https_is_the_default_and_http_must_be_explicit() {
        assert_eq!(EndpointConfig::http("80", None).unwrap().proto, EndpointProto::Https);
        assert_eq!(EndpointConfig::http("80", Some("app.localhost")).unwrap().proto, EndpointProto::Https);
        assert_eq!(
            EndpointConfig::http("80", Some("http://app.localhost")).unwrap().proto,
            EndpointProto::Http
        );
        assert!(EndpointConfig::http("80", Some("tcp://x:1")).is_err());
        assert!(EndpointConfig::tcp("22", Some("https://x")).is_err());
    }

    #[test]
    fn upstream_tls_is_verified_unless_loopback() {
        let mut e = EndpointConfig::http("https://example.com:443", None).unwrap();
        assert!(e.verify_upstream_tls());
        e.upstream = Upstream::parse("https://127.0.0.1:8443", false).unwrap();
        assert!(!e.verify_upstream_tls());
        e.upstream_tls_verify = Some(true);
        assert!(e.verify_upstream_tls());
    }

    #[test]
    fn debug_masks_the_authtoken() {
        let c = AgentConfig::new("cr_secret_value", "localhost:4443", ConnectCas::Trusted);
        assert!(!format!("{c:?}").contains("secret_value"));
        assert_eq!(c.connect_host_port().unwrap(), ("localhost".into(), 4443));
        let c = AgentConfig::new("t", "edge.example.com", ConnectCas::Trusted);
        assert_eq!(c.connect_host_port().unwrap(), ("edge.example.com".into(), 443));
    }
}
