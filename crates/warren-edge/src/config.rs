//! The edge's configuration, validated once at start.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the edge needs to know. [`EdgeConfig::local_default`] is the embedded default.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// Where the store, certificates and credentials live.
    pub data_dir: PathBuf,
    /// `postgres://...` to keep the store in PostgreSQL (shared by several edge nodes);
    /// `None` keeps it in `warren.db` (SQLite) in the data directory.
    pub database_url: Option<DatabaseUrl>,
    /// Endpoints get names under this domain (`name.<base_domain>`).
    pub base_domain: String,
    /// Host names agents may use in `connect_url` (covered by the edge certificate).
    pub connect_hostnames: Vec<String>,
    /// The agent listener (TLS).
    pub connect_addr: SocketAddr,
    /// The https ingress (TLS terminated here, HTTP/1.1 and HTTP/2).
    pub https_addr: SocketAddr,
    /// The plain http ingress: redirects to https except for endpoints bound as `http://`.
    pub http_addr: Option<SocketAddr>,
    /// Port shown in https URLs when the edge sits behind a port mapping; defaults to the bound port.
    pub public_https_port: Option<u16>,
    /// Port shown in http URLs; defaults to the bound port.
    pub public_http_port: Option<u16>,
    /// The REST API listener (ngrok API v2 compatible); `None` disables it.
    pub api_addr: Option<SocketAddr>,
    /// The API's public base URL (`https://api.tunnels.example.com`), for the absolute `uri`
    /// and `next_page_uri` in answers; `None`: the scheme and `Host` of each request.
    pub api_public_url: Option<String>,
    /// API requests allowed per key per window (ngrok: 120 per 60 s).
    pub api_rate_limit: (u32, Duration),
    /// Address tcp endpoints listen on.
    pub tcp_bind_ip: IpAddr,
    /// Host shown in `tcp://host:port` URLs.
    pub tcp_host: String,
    /// Ports tcp endpoints are allocated from.
    pub tcp_ports: RangeInclusive<u16>,
    /// Where this node takes relay links from the other nodes of its cluster (needs
    /// `database_url`); `None`: it neither relays nor is relayed to, and visitors reaching it
    /// for another node's endpoints get 404.
    pub cluster_addr: Option<SocketAddr>,
    /// The address other nodes dial for `cluster_addr` (`host:port`), when that is not
    /// what the listener bound (0.0.0.0, a NAT).
    pub cluster_advertise: Option<String>,
    /// How often the edge sends heartbeats to each agent.
    pub heartbeat_interval: Duration,
    /// How long a heartbeat may go unanswered before the session is dropped.
    pub heartbeat_tolerance: Duration,
    /// Load balancers in front of the edge. Only from these peers does the edge believe
    /// `X-Forwarded-For` (API and http ingress) or a PROXY protocol header.
    pub trusted_proxies: Vec<warren_store::Cidr>,
    /// Who may scrape `/metrics` on the API listener (the metrics describe every account, so
    /// they are the operator's): loopback by default; empty turns `/metrics` off.
    pub metrics_allow: Vec<warren_store::Cidr>,
    /// Connections from trusted proxies start with a PROXY protocol v1 or v2 header (on every
    /// listener: connect, https, http, tcp endpoints, API); it is required from them.
    pub proxy_protocol: bool,
    /// Automatic certificates for reserved custom domains; `None` disables ACME.
    pub acme: Option<AcmeConfig>,
    /// The edge's own certificate chain and key (PEM files) instead of the local CA's; the
    /// files are watched and reloaded when they change.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Where the master key that seals private keys lives (default `master.key` in the data
    /// directory; `WARREN_MASTER_KEY` overrides).
    pub master_key_file: Option<PathBuf>,
    /// Let traffic policies fetch identity-provider documents (JWKS, OpenID discovery, the
    /// token endpoint) over plain http on loopback. Off by default: on a shared edge it would
    /// let any account make the edge call services on the edge's own loopback. For a local
    /// identity provider in development and tests.
    pub idp_allow_loopback_http: bool,
    /// Single sign-on to the dashboard; `None`: passwords and one-time links only.
    pub dashboard_sso: Option<DashboardSso>,
    /// Let identity-provider fetches reach private, link-local and other non-public
    /// addresses (an identity provider inside the operator's network). Off by default, for
    /// the same reason.
    pub idp_allow_private_networks: bool,
    /// Event delivery: where file destinations write (`None`: `<data_dir>/events`), and
    /// which addresses webhook destinations may reach besides public ones (both off by
    /// default, like identity-provider fetches: a tenant's webhook must not make the edge
    /// call the operator's internal services).
    pub events: EventsConfig,
    /// The DNS resolver asked for the TXT records that prove control of custom domains;
    /// `None`: the first `nameserver` of `/etc/resolv.conf`.
    pub dns_resolver: Option<SocketAddr>,
    /// When https responses carry `Strict-Transport-Security` (unless the upstream sends its
    /// own).
    pub hsts: Hsts,
    /// Limits on every listener.
    pub limits: Limits,
}

/// Event delivery settings.
#[derive(Clone, Debug, Default)]
pub struct EventsConfig {
    /// The directory file destinations write into (`None`: `<data_dir>/events`).
    pub dir: Option<PathBuf>,
    /// Webhooks may reach loopback (over https or plain http).
    pub allow_loopback: bool,
    /// Webhooks may reach private, link-local and other non-public addresses.
    pub allow_private_networks: bool,
}

/// When the edge adds `Strict-Transport-Security` to https responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hsts {
    /// On names with a certificate of their own (ACME or uploaded: custom domains), which
    /// browsers trust; not on names served with the edge's default certificate, which may
    /// be a local CA's.
    Auto {
        /// `max-age`, in seconds.
        max_age: u64,
    },
    /// On every https response.
    Always {
        /// `max-age`, in seconds.
        max_age: u64,
    },
    /// Never.
    Off,
}

impl Hsts {
    /// One year, as browsers' preload lists ask.
    pub const DEFAULT_MAX_AGE: u64 = 31_536_000;
}

/// Which ACME challenge the edge answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// A file on the plain http port (`/.well-known/acme-challenge/`).
    Http01,
    /// A special certificate on the TLS port (ALPN `acme-tls/1`).
    TlsAlpn01,
}

/// The ACME settings.
#[derive(Clone, Debug)]
pub struct AcmeConfig {
    /// The directory URL (Let's Encrypt: `https://acme-v02.api.letsencrypt.org/directory`).
    pub directory: String,
    /// A CA certificate (PEM file) to trust for the directory besides the system's, for a
    /// private ACME server.
    pub directory_ca: Option<PathBuf>,
    /// Contact address for the account (`mailto:` is added).
    pub email: Option<String>,
    /// The challenge to answer.
    pub challenge: AcmeChallenge,
    /// Renew when a certificate has less than this left (Let's Encrypt: 30 days of 90).
    pub renew_before: Duration,
    /// How often certificates are checked.
    pub check_interval: Duration,
    /// Certificate orders one account's domains may start per hour, so that one account's
    /// many reservations cannot use up the ACME server's rate limits for everyone.
    pub orders_per_account_per_hour: u32,
    /// DNS-01 through RFC 2136 dynamic updates: with it, wildcard reservations
    /// (`*.example.com`) get their certificates too (ACME issues wildcards only for DNS-01).
    pub dns01: Option<Dns01Config>,
}

/// Where and how the edge publishes DNS-01 answers (`_acme-challenge.<domain>` TXT records):
/// RFC 2136 updates, signed with TSIG, sent over TCP to the zone's primary server.
#[derive(Clone, Debug)]
pub struct Dns01Config {
    /// The primary server that takes updates.
    pub server: std::net::SocketAddr,
    /// The zone updated; `None`: the reserved domain without its `*.` (set it when the names
    /// are deeper in the zone, e.g. zone `example.com` for `*.apps.example.com`).
    pub zone: Option<String>,
    /// The TSIG key's name, as the server knows it.
    pub key_name: String,
    /// `hmac-sha256` or `hmac-sha512`.
    pub algorithm: TsigAlgorithm,
    /// The key's secret (the server's `secret`, base64-decoded).
    pub secret: SecretBytes,
}

/// TSIG algorithms the edge signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsigAlgorithm {
    /// `hmac-sha256` (RFC 8945's mandatory one).
    HmacSha256,
    /// `hmac-sha512`.
    HmacSha512,
}

impl TsigAlgorithm {
    /// Parses `hmac-sha256` or `hmac-sha512`.
    pub fn parse(s: &str) -> Result<TsigAlgorithm, String> {
        match s.trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Ok(TsigAlgorithm::HmacSha256),
            "hmac-sha512" => Ok(TsigAlgorithm::HmacSha512),
            other => Err(format!("TSIG algorithm {other:?}: use hmac-sha256 or hmac-sha512")),
        }
    }

    /// Its name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }
}

/// Secret bytes, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(pub Vec<u8>);

impl SecretBytes {
    /// Decodes a base64 secret (as `named.conf` and `tsig-keygen` write them).
    pub fn from_base64(text: &str) -> Result<SecretBytes, String> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map(SecretBytes)
            .map_err(|e| format!("not base64: {e}"))
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBytes(********)")
    }
}

impl AcmeConfig {
    /// Let's Encrypt's production directory, HTTP-01, renewal 30 days before expiry.
    pub fn lets_encrypt() -> AcmeConfig {
        AcmeConfig {
            directory: "https://acme-v02.api.letsencrypt.org/directory".into(),
            directory_ca: None,
            email: None,
            challenge: AcmeChallenge::Http01,
            renew_before: Duration::from_secs(30 * 86_400),
            check_interval: Duration::from_secs(3600),
            orders_per_account_per_hour: 10,
            dns01: None,
        }
    }
}

/// A user's role (for the SSO default role).
pub use warren_store::Role;

/// Single sign-on to the dashboard with an OpenID Connect provider.
#[derive(Clone, Debug)]
pub struct DashboardSso {
    /// The provider's issuer URL (its discovery document is read from there).
    pub issuer_url: String,
    /// The client registered at the provider; its redirect URI is
    /// `<dashboard origin>/warren/oidc/callback`.
    pub client_id: String,
    /// The client's secret (empty for a public client); `Debug` hides it.
    pub client_secret: SecretString,
    /// The account whose users sign in this way (by name).
    pub account: String,
    /// E-mail domains allowed in; a verified e-mail elsewhere is refused.
    pub allowed_domains: Vec<String>,
    /// The role of users made at their first sign-in.
    pub default_role: warren_store::Role,
    /// Turns password sign-in off for everyone but the `break_glass` users.
    pub required: bool,
    /// E-mails that may still sign in with a password while SSO is required.
    pub break_glass: Vec<String>,
}

/// A secret in the config; `Debug` shows only that there is one.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(pub String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"********\"" })
    }
}

/// A database URL; `Debug` hides the credentials in it.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(pub String);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.0.split_once("://"), self.0.rsplit_once('@')) {
            (Some((scheme, _)), Some((_, host))) => write!(f, "\"{scheme}://********@{host}\""),
            _ => write!(f, "{:?}", self.0),
        }
    }
}

/// Explicit limits; every listener faces the internet.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Agent sessions at once.
    pub max_sessions: usize,
    /// Visitor connections at once, all ingresses together.
    pub max_visitor_connections: usize,
    /// Time for a TLS handshake on any listener.
    pub handshake_timeout: Duration,
    /// Time from connect to a successful Auth.
    pub auth_timeout: Duration,
    /// Time to read one RPC request.
    pub rpc_timeout: Duration,
    /// Time for a visitor to send request headers.
    pub header_read_timeout: Duration,
    /// Endpoints one session may bind.
    pub max_endpoints_per_session: usize,
    /// Cloud endpoints one account may have (every node compiles and holds each).
    pub max_cloud_endpoints_per_account: usize,
    /// API connections at once.
    pub max_api_connections: usize,
    /// Streams an agent connection may hold open before its Auth succeeds (the Auth stream
    /// and heartbeat streams need a few).
    pub pre_auth_streams: usize,
    /// Bytes an agent connection may have received and not yet read, over all its streams,
    /// before its Auth succeeds.
    pub pre_auth_buffer: usize,
    /// Bytes an authenticated session may have received and not yet read, over all its
    /// streams; a stream whose data would go beyond it is reset.
    pub session_buffer: usize,
    /// Time from accepting an http, https (after the TLS handshake) or API connection to
    /// its first byte.
    pub first_byte_timeout: Duration,
    /// An http, https or API connection with no byte in either direction for this long is
    /// closed (upgraded connections such as WebSockets included).
    pub idle_timeout: Duration,
    /// Visitor connections at once from one client address (before any PROXY header or
    /// `X-Forwarded-For`: the socket's address), all ingresses together.
    pub max_visitor_connections_per_ip: usize,
    /// Connections at once on the agent listener from one address, authenticated or not.
    pub max_agent_connections_per_ip: usize,
    /// API connections at once from one address.
    pub max_api_connections_per_ip: usize,
    /// Wrong API keys and authtokens one address may present per minute (both together);
    /// then every attempt from it is refused until the minute is over.
    pub max_auth_failures_per_ip: u32,
    /// Responses `compress-response` compresses at once (each holds an encoder of up to about
    /// 1 MiB); beyond it, responses pass uncompressed.
    pub max_compressed_responses: usize,
    /// Traffic events waiting (in memory) for the dispatcher, which evaluates the filters and
    /// selects the fields of the sources that have them; beyond it, such traffic events are
    /// dropped and counted. Audit events never wait here and are never
    /// dropped.
    pub max_queued_traffic_events: usize,
    /// Traffic events waiting (in memory) for one destination; beyond it, that destination's
    /// new traffic events are dropped and counted, and no other destination is affected.
    pub max_traffic_events_per_destination: usize,
    /// At shutdown, how long visitors' requests and connections may take to finish after
    /// the edge stops accepting new ones; then the agents' sessions are closed regardless.
    pub drain_timeout: Duration,
    /// At shutdown, how long the edge keeps serving, with `/healthz` failing, before it stops
    /// accepting: a balancer's health checks take the node out first, so no connection is
    /// sent into a closing socket. 0: stop accepting at once.
    pub shutdown_delay: Duration,
    /// A visitor connection's proxy stream, kept for its next request, is closed after it has
    /// been idle about this long (between this and one and a half times it): an idle
    /// keep-alive connection then holds no stream, no buffers and no upstream connection at the
    /// agent (15 KiB of the edge's memory per idle https connection, 5 KiB of the agent's, in
    /// docs/BENCHMARKS.md). Its next request opens a new stream. The same holds for the relay
    /// streams a node keeps to the node holding an endpoint.
    pub proxy_stream_idle: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_sessions: 10_000,
            max_visitor_connections: 100_000,
            handshake_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            max_endpoints_per_session: 64,
            max_cloud_endpoints_per_account: 200,
            max_api_connections: 1024,
            pre_auth_streams: 8,
            pre_auth_buffer: 64 * 1024,
            session_buffer: 256 * 1024 * 1024,
            first_byte_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            proxy_stream_idle: Duration::from_secs(5),
            max_visitor_connections_per_ip: 10_000,
            max_agent_connections_per_ip: 1_000,
            max_api_connections_per_ip: 64,
            max_auth_failures_per_ip: 20,
            max_compressed_responses: 1024,
            max_queued_traffic_events: 10_000,
            max_traffic_events_per_destination: 5_000,
            drain_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
        }
    }
}

impl EdgeConfig {
    /// The embedded default: everything on loopback, `*.warren.localhost` names (which resolve to
    /// loopback without DNS), connect on 4443, https on 8443, http on 8080.
    pub fn local_default(data_dir: PathBuf) -> EdgeConfig {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        EdgeConfig {
            data_dir,
            database_url: None,
            // Two labels: TLS clients (webpki, OpenSSL) refuse a wildcard directly under a
            // single-label name such as `*.localhost`.
            base_domain: "warren.localhost".into(),
            connect_hostnames: vec!["connect.warren.localhost".into()],
            connect_addr: SocketAddr::new(lo, 4443),
            https_addr: SocketAddr::new(lo, 8443),
            http_addr: Some(SocketAddr::new(lo, 8080)),
            public_https_port: None,
            api_addr: Some(SocketAddr::new(lo, 8088)),
            api_public_url: None,
            api_rate_limit: (120, Duration::from_secs(60)),
            public_http_port: None,
            tcp_bind_ip: lo,
            tcp_host: "localhost".into(),
            tcp_ports: 20000..=29999,
            cluster_addr: None,
            cluster_advertise: None,
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_tolerance: Duration::from_secs(15),
            trusted_proxies: Vec::new(),
            metrics_allow: ["127.0.0.0/8", "::1/128"]
                .iter()
                .map(|c| warren_store::Cidr::parse(c).expect("loopback CIDRs parse"))
                .collect(),
            proxy_protocol: false,
            acme: None,
            master_key_file: None,
            idp_allow_loopback_http: false,
            dashboard_sso: None,
            idp_allow_private_networks: false,
            events: EventsConfig::default(),
            tls_files: None,
            dns_resolver: None,
            hsts: Hsts::Auto { max_age: Hsts::DEFAULT_MAX_AGE },
            limits: Limits::default(),
        }
    }

    /// The names the edge certificate must cover.
    pub fn certificate_names(&self) -> Vec<String> {
        let mut names = vec![self.base_domain.clone(), format!("*.{}", self.base_domain)];
        for h in &self.connect_hostnames {
            if !names.contains(h) {
                names.push(h.clone());
            }
        }
        for extra in ["localhost", "127.0.0.1", "::1"] {
            if !names.iter().any(|n| n == extra) {
                names.push(extra.into());
            }
        }
        names
    }

    /// Whether `ip` is one of the trusted load balancers.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }

    /// Checks the configuration; the message names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(sso) = &self.dashboard_sso {
            if !(sso.issuer_url.starts_with("https://") || sso.issuer_url.starts_with("http://")) {
                return Err(format!("dashboard SSO issuer {:?} must be an http(s) URL", sso.issuer_url));
            }
            if sso.client_id.is_empty() {
                return Err("dashboard SSO needs a client id".into());
            }
            if sso.allowed_domains.is_empty() {
                return Err(
                    "dashboard SSO needs at least one allowed e-mail domain (--dashboard-sso-domain); otherwise anyone the provider knows could sign in"
                        .into(),
                );
            }
            if let Some(d) = sso.allowed_domains.iter().find(|d| !is_valid_hostname(d)) {
                return Err(format!("dashboard SSO domain {d:?} is not a domain name"));
            }
        }
        if self.limits.proxy_stream_idle < Duration::from_millis(10) {
            // Checked every half of it: zero would check without pause.
            return Err("limits.proxy_stream_idle must be at least 10 ms".into());
        }
        if !is_valid_hostname(&self.base_domain) {
            return Err(format!("base_domain {:?} is not a valid host name", self.base_domain));
        }
        if !self.base_domain.contains('.') {
            return Err(format!(
                "base_domain {:?} needs at least two labels (for example dev.{0}): TLS clients refuse the wildcard certificate *.{0}",
                self.base_domain
            ));
        }
        for h in &self.connect_hostnames {
            if !is_valid_hostname(h) {
                return Err(format!("connect hostname {h:?} is not a valid host name"));
            }
        }
        if self.tcp_ports.is_empty() || *self.tcp_ports.start() == 0 {
            return Err(format!(
                "tcp_ports {:?} must be a non-empty range of non-zero ports",
                self.tcp_ports
            ));
        }
        if self.cluster_addr.is_some() && self.database_url.is_none() {
            return Err(
                "cluster_addr needs database_url: the nodes of a cluster share one PostgreSQL database"
                    .into(),
            );
        }
        if self.cluster_advertise.is_some() && self.cluster_addr.is_none() {
            return Err(
                "cluster_advertise needs cluster_addr: it is the address other nodes dial for it".into()
            );
        }
        if let Some(a) = &self.cluster_advertise
            && (a.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()))
        {
            return Err(format!("cluster_advertise {a:?} is not host:port"));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_tolerance.is_zero() {
            return Err("heartbeat interval and tolerance must be positive".into());
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return Err(
                "proxy_protocol is on but trusted_proxies is empty: name the load balancers that send the header"
                    .into(),
            );
        }
        if self.limits.max_sessions == 0
            || self.limits.max_visitor_connections == 0
            || self.limits.max_api_connections == 0
        {
            return Err("limits must be positive".into());
        }
        Ok(())
    }
}

/// A DNS host name: labels of letters, digits and hyphens, 1–63 characters, not starting or
/// ending with a hyphen; 253 characters at most.
pub(crate) fn is_valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashboard_sso_needs_a_client_and_an_allowed_domain_and_hides_its_secret() {
        let mut c = EdgeConfig::local_default("/tmp/x".into());
        let sso = DashboardSso {
            issuer_url: "https://id.example.com".into(),
            client_id: "dash".into(),
            client_secret: SecretString("s3cret".into()),
            account: "default".into(),
            allowed_domains: vec!["example.com".into()],
            default_role: Role::ReadOnly,
            required: false,
            break_glass: vec![],
        };
        c.dashboard_sso = Some(sso.clone());
        assert_eq!(c.validate(), Ok(()));
        assert!(!format!("{c:?}").contains("s3cret"));
        for (bad, says) in [
            (DashboardSso { allowed_domains: vec![], ..sso.clone() }, "allowed e-mail domain"),
            (DashboardSso { allowed_domains: vec!["not a domain".into()], ..sso.clone() }, "not a domain"),
            (DashboardSso { client_id: String::new(), ..sso.clone() }, "client id"),
            (DashboardSso { issuer_url: "id.example.com".into(), ..sso.clone() }, "http(s) URL"),
        ] {
            c.dashboard_sso = Some(bad);
            let e = c.validate().unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn host_names_are_validated() {
        assert!(is_valid_hostname("a.example.com"));
        assert!(is_valid_hostname("localhost"));
        assert!(!is_valid_hostname("a..b"));
        assert!(!is_valid_hostname("-a.b"));
        assert!(!is_valid_hostname("a_b.c"));
        assert!(!is_valid_hostname(&"a".repeat(64)));
        assert!(!is_valid_hostname(""));
    }

    #[test]
    fn default_config_is_valid_and_covers_connect_names() {
        let c = EdgeConfig::local_default("/tmp/x".into());
        c.validate().unwrap();
        let names = c.certificate_names();
        assert!(names.contains(&"*.warren.localhost".to_string()));
        assert!(names.contains(&"connect.warren.localhost".to_string()));
        assert!(names.contains(&"127.0.0.1".to_string()));
    }

    #[test]
    fn debug_hides_database_credentials() {
        let mut c = EdgeConfig::local_default("/tmp/x".into());
        c.database_url = Some(DatabaseUrl("postgres://warren:hunter2@db.internal/warren".into()));
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2") && d.contains("db.internal/warren"), "{d}");
    }

    #[test]
    fn bad_config_names_the_setting() {
        let mut c = EdgeConfig::local_default("/tmp/x".into());
        c.tcp_ports = 0..=10;
        assert!(c.validate().unwrap_err().contains("tcp_ports"));
        let mut c = EdgeConfig::local_default("/tmp/x".into());
        c.base_domain = "localhost".into();
        assert!(c.validate().unwrap_err().contains("two labels"));
        // Cluster settings that would do nothing are refused by name.
        let mut c = EdgeConfig::local_default("/tmp/x".into());
        c.cluster_addr = Some("127.0.0.1:0".parse().unwrap());
        assert!(c.validate().unwrap_err().contains("cluster_addr needs database_url"));
        let mut c = EdgeConfig::local_default("/tmp/x".into());
        c.cluster_advertise = Some("10.0.0.1:7443".into());
        assert!(c.validate().unwrap_err().contains("cluster_advertise needs cluster_addr"));
        c.database_url = Some(DatabaseUrl("postgres://db/w".into()));
        c.cluster_addr = Some("0.0.0.0:7443".parse().unwrap());
        c.cluster_advertise = Some("no-port".into());
        assert!(c.validate().unwrap_err().contains("not host:port"));
    }
}
