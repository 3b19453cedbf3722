//! `warren`: the one binary. `main` parses arguments, sets up logging and calls the library's
//! `run`; everything else lives in the crates.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use warren_agent::{AgentConfig, ConnectCas, EndpointConfig};
use warren_edge::EdgeConfig;

mod api_cli;
mod edge_config;
mod output;
mod service;

#[derive(Parser)]
#[command(
    name = "warren",
    version,
    about = "Self-hosted, ngrok-compatible ingress: run an edge, expose local services through it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, global = true, env = "WARREN_LOG")]
    log_level: Option<String>,
    /// Where logs go: stdout, stderr, false, or a file. Agents on a terminal show the status
    /// console instead of logs unless this is given.
    #[arg(long, global = true, value_name = "stdout|stderr|false|FILE")]
    log: Option<String>,
    /// Log lines as text (`term` is ngrok's name for it) or one JSON object per line.
    #[arg(long, global = true, env = "WARREN_LOG_FORMAT", default_value = "text", value_parser = ["text", "term", "json"])]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run an edge. With no flags: everything on loopback, names under *.warren.localhost.
    /// Every flag can also be a key of the --config file (flags win).
    #[command(args_override_self = true)]
    Edge(Box<EdgeArgs>),
    /// Expose a local web server on an https endpoint (http only with an explicit http:// URL).
    Http {
        /// Upstream: a port (8080), host:port, or URL (https://localhost:8443).
        upstream: String,
        #[command(flatten)]
        agent: AgentArgs,
        #[command(flatten)]
        names: NameArgs,
        #[command(flatten)]
        http: Box<HttpArgs>,
    },
    /// Call the edge's REST API, like `ngrok api`: `warren api credentials create --description ci
    /// --acl bind:app.example.com`, `warren api tunnel_sessions list`, `warren api api_keys delete ID`.
    #[command(disable_help_flag = true)]
    Api {
        /// credentials, api_keys, users, ip_policies, ip_policy_rules, ip_restrictions,
        /// reserved_domains, reserved_addrs, tunnel_sessions, endpoints, tunnels (ngrok's
        /// hyphenated spelling, like reserved-domains, works too).
        #[arg(required_unless_present = "help")]
        resource: Option<String>,
        /// list, get, create, update, delete, stop, restart, verify (a reserved domain's TXT record).
        #[arg(required_unless_present = "help")]
        op: Option<String>,
        /// An id, then fields as `--name value` (repeat for lists) or `--data JSON`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
        /// API key (shown once when created; the first edge start prints one).
        #[arg(long, env = "WARREN_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Where the edge's API listens.
        #[arg(long, env = "WARREN_API_URL", default_value = "http://127.0.0.1:8088")]
        api_url: String,
        /// Print help; after RESOURCE OP, the call it makes and the fields it takes.
        #[arg(short = 'h', long, action = clap::ArgAction::SetTrue)]
        help: bool,
    },
    /// Expose a local TCP service on a tcp endpoint.
    Tcp {
        /// Upstream: a port (22) or host:port.
        upstream: String,
        #[command(flatten)]
        agent: AgentArgs,
        /// Not for tcp (hidden): taken only to say what to use instead.
        #[arg(long, hide = true)]
        domain: Option<String>,
        /// Not for tcp (hidden): taken only to say what to use instead.
        #[arg(long, hide = true)]
        subdomain: Option<String>,
    },
    /// Start endpoints from the config file(s) (ngrok agent config v3).
    Start {
        /// Endpoint names to start.
        names: Vec<String>,
        /// Start every endpoint in the config.
        #[arg(long)]
        all: bool,
        /// When the edge refuses an endpoint, report it and keep the others up (default: the
        /// start fails and nothing stays bound).
        #[arg(long)]
        keep_going: bool,
        /// Config file (repeat to merge several; default: the per-user warren.yml).
        #[arg(long = "config", value_name = "FILE")]
        config: Vec<PathBuf>,
    },
    /// Operator commands on the edge's store (run where the edge's data directory or database
    /// is reachable): `warren admin accounts create acme --admin-email ops@acme.example`.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Check or edit the agent config file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Run the agent as a systemd service (Linux): install, start, stop, uninstall.
    Service {
        #[command(subcommand)]
        action: service::ServiceAction,
    },
    /// Expose a TLS service by name (`--url tls://app.example.com`): the edge routes by SNI
    /// and never decrypts. The upstream terminates TLS, or this agent does with --crt/--key.
    Tls {
        /// Upstream: a port (443) or host:port.
        upstream: String,
        #[command(flatten)]
        agent: AgentArgs,
        #[command(flatten)]
        names: NameArgs,
        /// Certificate chain (PEM) to terminate TLS here instead of in the upstream.
        #[arg(long, requires = "key")]
        crt: Option<PathBuf>,
        /// Private key (PEM) for --crt.
        #[arg(long, requires = "crt")]
        key: Option<PathBuf>,
        /// With --crt: require visitors' client certificates signed by these CAs (PEM).
        #[arg(long, requires = "crt")]
        mutual_tls_cas: Option<PathBuf>,
    },
}

/// Where an edge keeps its store; `warren admin` opens the same one.
#[derive(Args)]
struct StoreArgs {
    /// Data directory (store, certificates, credentials).
    #[arg(long, env = "WARREN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keep the store in PostgreSQL (postgres://user:pass@host/db) instead of the SQLite file in
    /// the data directory.
    #[arg(long, env = "WARREN_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

#[derive(Subcommand)]
enum AdminAction {
    /// Accounts (tenants): each has its own users, authtokens, API keys, names and endpoints.
    Accounts {
        #[command(subcommand)]
        action: AccountsAction,
    },
    /// Users of an account.
    Users {
        #[command(subcommand)]
        action: UsersAction,
    },
    /// Write a consistent copy of the store to FILE while the edge runs (SQLite; for
    /// PostgreSQL use pg_dump). Sealed keys are in it; the master key is not: keep master.key
    /// (or WARREN_MASTER_KEY) apart, and safe.
    Backup {
        /// The backup file to write (must not exist).
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Restore a backup made by `warren admin backup` into a data directory that has no store
    /// yet, then open it (an older backup is brought up to this version's schema).
    Restore {
        /// The backup file.
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum UsersAction {
    /// Print a one-time dashboard sign-in link for a user (valid 24 hours, used once): the way
    /// in for a user without a password, or when nobody can sign in.
    SignInLink {
        /// The user's e-mail.
        #[arg(long)]
        email: String,
        /// The account's name.
        #[arg(long, default_value = "default")]
        account: String,
        /// The dashboard's base URL, for the printed link.
        #[arg(long, env = "WARREN_API_URL", default_value = "http://127.0.0.1:8088")]
        dashboard_url: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum AccountsAction {
    /// Create an account with a first admin user, and print that admin's authtoken and API key
    /// (shown only now).
    Create {
        /// The account's name (unique on this edge).
        name: String,
        /// The first admin user's email.
        #[arg(long, default_value = "admin")]
        admin_email: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the accounts.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Parse the config files and report problems with file, line and key.
    Check {
        /// Config file (repeat to merge several).
        #[arg(long = "config", value_name = "FILE")]
        config: Vec<PathBuf>,
    },
    /// Save an authtoken in the config file (created if missing, owner-only).
    AddAuthtoken {
        /// The authtoken.
        token: String,
        /// Config file (default: the per-user warren.yml).
        #[arg(long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Save the edge's connect URL (host:port) in the config file.
    AddConnectUrl {
        /// host:port.
        url: String,
        /// Config file (default: the per-user warren.yml).
        #[arg(long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Save how to trust the edge in the config file: `trusted` (public CAs), `host` (the
    /// system store) or a PEM file (saved as an absolute path).
    AddConnectCas {
        /// trusted, host or FILE.
        cas: String,
        /// Config file (default: the per-user warren.yml).
        #[arg(long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Save an API key in the config file, for `warren api`.
    AddApiKey {
        /// The API key.
        key: String,
        /// Config file (default: the per-user warren.yml).
        #[arg(long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Open the config file in $VISUAL, $EDITOR or vi (created if missing, owner-only), then
    /// check it.
    Edit {
        /// Config file (default: the per-user warren.yml).
        #[arg(long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

#[derive(Args)]
struct EdgeArgs {
    /// A YAML file of settings: every flag below as a key (`connect_addr: 0.0.0.0:4443`,
    /// `trusted_proxy: [10.0.0.0/8]`, `no_http: true`). Flags and WARREN_* variables win over
    /// it; unknown keys and bad values are refused with file, line and column.
    #[arg(long, value_name = "FILE", env = "WARREN_EDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Check the settings, the store, the certificate and key files and that every listener
    /// can bind; report every problem, then exit (0 when there is none) without starting.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    store: StoreArgs,
    /// Endpoints get names under this domain (at least two labels).
    #[arg(long, default_value = "warren.localhost")]
    base_domain: String,
    /// Agent listener.
    #[arg(long, default_value = "127.0.0.1:4443")]
    connect_addr: SocketAddr,
    /// Extra host names agents may use in connect_url (covered by the edge certificate).
    #[arg(long = "connect-hostname")]
    connect_hostnames: Vec<String>,
    /// https ingress.
    #[arg(long, default_value = "127.0.0.1:8443")]
    https_addr: SocketAddr,
    /// Plain http ingress (redirects to https except for http:// endpoints).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http_addr: SocketAddr,
    /// REST API listener (ngrok API v2 compatible).
    #[arg(long, default_value = "127.0.0.1:8088")]
    api_addr: SocketAddr,
    /// Disable the REST API.
    #[arg(long)]
    no_api: bool,
    /// Disable the plain http ingress.
    #[arg(long)]
    no_http: bool,
    /// Address tcp endpoints listen on.
    #[arg(long, default_value = "127.0.0.1")]
    tcp_bind_ip: std::net::IpAddr,
    /// Host name shown in tcp:// URLs.
    #[arg(long, default_value = "localhost")]
    tcp_host: String,
    /// Port range for tcp endpoints, as FIRST-LAST.
    #[arg(long, default_value = "20000-29999")]
    tcp_ports: String,
    /// Take relay links from the other nodes of a cluster here (needs --database-url): a
    /// visitor reaching any node is carried to the node holding its endpoint. See
    /// docs/CLUSTER.md.
    #[arg(long, env = "WARREN_CLUSTER_ADDR", value_name = "ADDR:PORT")]
    cluster_addr: Option<SocketAddr>,
    /// The address other nodes dial for --cluster-addr, when that is 0.0.0.0 or behind NAT.
    #[arg(long, env = "WARREN_CLUSTER_ADVERTISE", value_name = "HOST:PORT")]
    cluster_advertise: Option<String>,
    /// A load balancer in front of the edge (CIDR; repeat for several). Only these peers are
    /// believed about the client's address, through X-Forwarded-For or a PROXY header.
    #[arg(long = "trusted-proxy", value_name = "CIDR")]
    trusted_proxies: Vec<String>,
    /// Who may scrape /metrics on the API listener (CIDR; repeat for several). Default:
    /// loopback only. `none` turns /metrics off.
    #[arg(long = "metrics-allow", value_name = "CIDR")]
    metrics_allow: Vec<String>,
    /// Trusted proxies send a PROXY protocol v1/v2 header on every connection (required).
    #[arg(long)]
    proxy_protocol: bool,
    /// Get certificates for reserved custom domains from this ACME directory
    /// (`letsencrypt` for Let's Encrypt's production directory, or a URL).
    #[arg(long, value_name = "URL")]
    acme_directory: Option<String>,
    /// Contact e-mail for the ACME account.
    #[arg(long, value_name = "EMAIL", requires = "acme_directory")]
    acme_email: Option<String>,
    /// Extra CA (PEM file) to trust for the ACME directory (a private ACME server).
    #[arg(long, value_name = "PEM", requires = "acme_directory")]
    acme_directory_ca: Option<PathBuf>,
    /// The ACME challenge to answer: http-01 (on the http port) or tls-alpn-01 (on the TLS port).
    #[arg(long, default_value = "http-01", requires = "acme_directory")]
    acme_challenge: String,
    /// Answer DNS-01 (needed for wildcard reservations, `*.example.com`) by RFC 2136 updates
    /// to this primary DNS server (host:port), signed with the TSIG key below.
    #[arg(long, value_name = "HOST:PORT", requires_all = ["acme_directory", "acme_dns_tsig_key", "acme_dns_tsig_secret_file"])]
    acme_dns_server: Option<String>,
    /// The zone the DNS-01 records go in (default: the reserved domain without `*.`).
    #[arg(long, value_name = "ZONE", requires = "acme_dns_server")]
    acme_dns_zone: Option<String>,
    /// The TSIG key's name, as the DNS server knows it.
    #[arg(long, value_name = "NAME", requires = "acme_dns_server")]
    acme_dns_tsig_key: Option<String>,
    /// The TSIG algorithm: hmac-sha256 or hmac-sha512.
    #[arg(long, value_name = "ALGORITHM", default_value = "hmac-sha256", requires = "acme_dns_server")]
    acme_dns_tsig_algorithm: String,
    /// A file holding the TSIG key's secret, base64 (as in named.conf's `secret`).
    #[arg(long, value_name = "FILE", requires = "acme_dns_server")]
    acme_dns_tsig_secret_file: Option<PathBuf>,
    /// The file holding the master key that seals private keys (default: master.key in the
    /// data directory; WARREN_MASTER_KEY overrides). Every node sharing a database needs the same.
    #[arg(long, value_name = "FILE")]
    master_key_file: Option<PathBuf>,
    /// Let traffic policies use identity providers over plain http on loopback (development
    /// only: any account could make the edge call services on its loopback).
    #[arg(long)]
    idp_allow_loopback_http: bool,
    /// The API's public base URL (e.g. https://api.tunnels.example.com), for the absolute
    /// `uri` and `next_page_uri` in its answers (default: the scheme and Host of each request).
    #[arg(long, value_name = "URL")]
    api_public_url: Option<String>,
    /// The DNS resolver asked for TXT records proving control of custom domains (default: the
    /// first nameserver of /etc/resolv.conf).
    #[arg(long, value_name = "IP:PORT")]
    dns_resolver: Option<std::net::SocketAddr>,
    /// When https responses get Strict-Transport-Security (the upstream's own wins): `auto`
    /// on names with their own certificate (ACME or uploaded), `always`, or `off`.
    #[arg(long, value_name = "auto|always|off", default_value = "auto")]
    hsts: String,
    /// HSTS max-age in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = warren_edge::Hsts::DEFAULT_MAX_AGE)]
    hsts_max_age: u64,
    /// Let traffic policies' identity providers be on private networks (10/8, 192.168/16,
    /// link-local, ...): any account could make the edge call services there.
    #[arg(long)]
    idp_allow_private_networks: bool,
    /// Single sign-on to the dashboard: the OpenID Connect provider's issuer URL. Register
    /// `<dashboard origin>/warren/oidc/callback` as the client's redirect URI.
    #[arg(long, requires_all = ["dashboard_sso_client_id", "dashboard_sso_domain"])]
    dashboard_sso_issuer: Option<String>,
    /// The dashboard's client id at the provider.
    #[arg(long, requires = "dashboard_sso_issuer")]
    dashboard_sso_client_id: Option<String>,
    /// The client's secret.
    #[arg(
        long,
        env = "WARREN_DASHBOARD_SSO_CLIENT_SECRET",
        hide_env_values = true,
        requires = "dashboard_sso_issuer"
    )]
    dashboard_sso_client_secret: Option<String>,
    /// E-mail domain allowed to sign in with SSO (repeatable; required with SSO).
    #[arg(long, requires = "dashboard_sso_issuer")]
    dashboard_sso_domain: Vec<String>,
    /// The account SSO users belong to.
    #[arg(long, default_value = "default")]
    dashboard_sso_account: String,
    /// The role of users made at their first SSO sign-in.
    #[arg(long, default_value = "read-only", value_parser = ["admin", "developer", "read-only"])]
    dashboard_sso_role: String,
    /// Turn password sign-in off for everyone but the --dashboard-break-glass users.
    #[arg(long, requires = "dashboard_sso_issuer")]
    dashboard_sso_required: bool,
    /// An e-mail that may still sign in with a password while SSO is required (repeatable).
    #[arg(long, requires = "dashboard_sso_required")]
    dashboard_break_glass: Vec<String>,
    /// Where file event destinations write (default: events/ in the data directory).
    #[arg(long, value_name = "DIR")]
    events_dir: Option<PathBuf>,
    /// Let webhook event destinations reach loopback, over https or plain http (development
    /// only: any account's admin could make the edge call services on its loopback).
    #[arg(long)]
    events_allow_loopback: bool,
    /// Let webhook event destinations reach private networks (an in-house collector): any
    /// account's admin could make the edge call services there.
    #[arg(long)]
    events_allow_private_networks: bool,
    /// The edge's own certificate chain (PEM) for its base domain and connect hostnames,
    /// instead of the local CA's; reloaded when the file changes.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// On SIGTERM or Ctrl-C: stop accepting, let requests in flight finish for up to this
    /// long, then close the agents' sessions and exit.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    drain_timeout: u64,
    /// On SIGTERM or Ctrl-C, first keep serving for this long with /healthz answering 503, so
    /// a load balancer's health checks take the node out before it stops accepting.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    shutdown_delay: u64,
    /// Agent sessions this node holds at once; beyond it, new agent connections are closed.
    #[arg(long, value_name = "N", default_value_t = warren_edge::Limits::default().max_sessions)]
    max_sessions: usize,
    /// Agent connections at once from one address, authenticated or not (a NAT in front of
    /// many agents needs more; 0: no per-address limit).
    #[arg(long, value_name = "N", default_value_t = warren_edge::Limits::default().max_agent_connections_per_ip)]
    max_agent_connections_per_ip: usize,
    /// Visitor connections this node holds at once, every ingress together.
    #[arg(long, value_name = "N", default_value_t = warren_edge::Limits::default().max_visitor_connections)]
    max_visitor_connections: usize,
    /// Visitor connections at once from one address (the socket's, before PROXY headers; 0:
    /// no per-address limit).
    #[arg(long, value_name = "N", default_value_t = warren_edge::Limits::default().max_visitor_connections_per_ip)]
    max_visitor_connections_per_ip: usize,
}

/// Flags every agent command (http, tcp, tls) takes.
#[derive(Args)]
struct AgentArgs {
    /// The URL to ask for (https://name.<domain>, http://name.<domain>, tls://name.<domain>,
    /// tcp://host:port).
    #[arg(long)]
    url: Option<String>,
    /// The endpoint's name (shown by the inspector, the console and the local API).
    #[arg(long)]
    name: Option<String>,
    /// Free-form metadata sent with the endpoint.
    #[arg(long)]
    metadata: Option<String>,
    /// A description sent with the endpoint.
    #[arg(long)]
    description: Option<String>,
    /// Join the pool of endpoints on this URL: other agents of the account that pass it too
    /// serve the same URL, and visitors are spread across them (give a fixed --url).
    #[arg(long)]
    pooling_enabled: bool,
    /// High availability: a second session, to another edge node when the connect address
    /// has one address per node or a balancer spreads connections, serves the endpoint too
    /// (pooled), so losing a node loses nothing. Needs a fixed --url.
    #[arg(long)]
    ha: bool,
    /// Authtoken.
    #[arg(long, env = "WARREN_AUTHTOKEN", hide_env_values = true)]
    authtoken: Option<String>,
    /// The edge's connect address, host:port (default: the config file's, else localhost:4443).
    #[arg(long, env = "WARREN_CONNECT_URL")]
    connect_url: Option<String>,
    /// Config file for the agent settings (authtoken, connect_url, connect_cas) not given as
    /// flags or WARREN_* variables; repeat to merge several. Default: the per-user warren.yml,
    /// when it exists.
    #[arg(long = "config", value_name = "FILE")]
    config: Vec<PathBuf>,
    /// How to trust the edge: `trusted` (public CAs), `host` (system store) or a PEM file.
    /// Defaults to the local edge's CA when that file exists, else `trusted`.
    #[arg(long, env = "WARREN_CONNECT_CAS")]
    connect_cas: Option<String>,
    /// Where the request inspector and local API listen (`false` turns them off). When the
    /// default is taken, the next free port up to 4049 is used, as ngrok does.
    #[arg(long, default_value = "127.0.0.1:4040")]
    web_addr: String,
    /// The endpoint's traffic policy (ngrok's format, YAML or JSON).
    #[arg(long, value_name = "FILE")]
    traffic_policy_file: Option<PathBuf>,
    /// Allow only these networks (CIDR; repeat). Becomes a restrict-ips rule.
    #[arg(long, value_name = "CIDR")]
    cidr_allow: Vec<String>,
    /// Refuse these networks (CIDR; repeat). Becomes a restrict-ips rule.
    #[arg(long, value_name = "CIDR")]
    cidr_deny: Vec<String>,
}

/// ngrok's ways to name a host instead of a whole URL: http and tls endpoints only.
#[derive(Args)]
struct NameArgs {
    /// ngrok's spelling of `--url https://DOMAIN` (`tls://DOMAIN` for tls endpoints).
    #[arg(long, conflicts_with_all = ["url", "subdomain"])]
    domain: Option<String>,
    /// A name under the edge's base domain (`--subdomain app`: https://app.<base domain>).
    #[arg(long, conflicts_with = "url")]
    subdomain: Option<String>,
}

/// Flags that act on HTTP requests and responses: `warren http` only.
#[derive(Args)]
struct HttpArgs {
    /// Rewrite the Host header: `rewrite` for the upstream's host:port, or a value.
    #[arg(long)]
    host_header: Option<String>,
    /// The protocol spoken to the upstream: http1 (default) or http2 (h2c to an http://
    /// upstream, h2 over TLS to an https:// one; for gRPC).
    #[arg(long, value_name = "PROTOCOL", value_parser = ["http1", "http2"])]
    upstream_protocol: Option<String>,
    /// Verify the upstream's TLS certificate (default: yes, unless the upstream is loopback).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    upstream_tls_verify: Option<bool>,
    /// Require HTTP basic auth, `user:password` (repeat for several users).
    #[arg(long, value_name = "USER:PASSWORD")]
    basic_auth: Vec<String>,
    /// Add a header to requests, `"name: value"` (repeat).
    #[arg(long, value_name = "HEADER")]
    request_header_add: Vec<String>,
    /// Remove a header from requests (repeat).
    #[arg(long, value_name = "NAME")]
    request_header_remove: Vec<String>,
    /// Add a header to responses, `"name: value"` (repeat).
    #[arg(long, value_name = "HEADER")]
    response_header_add: Vec<String>,
    /// Remove a header from responses (repeat).
    #[arg(long, value_name = "NAME")]
    response_header_remove: Vec<String>,
    /// Compress responses (gzip, deflate or br, as the visitor accepts). Becomes a
    /// compress-response rule.
    #[arg(long)]
    compression: bool,
    /// Refuse requests with 503 for a while when this share (0.0 to 1.0) of recent answers
    /// were errors. Becomes a circuit-breaker rule.
    #[arg(long, value_name = "ERROR_THRESHOLD")]
    circuit_breaker: Option<f64>,
    /// Require visitors to sign in with this OpenID Connect provider (its issuer URL); needs
    /// --oidc-client-id. Becomes an openid-connect rule.
    #[arg(long, value_name = "ISSUER", requires = "oidc_client_id")]
    oidc: Option<String>,
    /// The OAuth client id registered at the provider, for --oidc.
    #[arg(long, value_name = "ID", requires = "oidc")]
    oidc_client_id: Option<String>,
    /// The client's secret, for --oidc (empty for a public client).
    #[arg(
        long,
        value_name = "SECRET",
        requires = "oidc",
        env = "WARREN_OIDC_CLIENT_SECRET",
        hide_env_values = true
    )]
    oidc_client_secret: Option<String>,
    /// Scopes to ask for, for --oidc (repeat; default openid, profile, email).
    #[arg(long, value_name = "SCOPE", requires = "oidc")]
    oidc_scope: Vec<String>,
    /// Let in only this email address, for --oidc (repeat).
    #[arg(long, value_name = "EMAIL", requires = "oidc")]
    oidc_allow_email: Vec<String>,
    /// Let in only addresses at this domain, for --oidc (repeat).
    #[arg(long, value_name = "DOMAIN", requires = "oidc")]
    oidc_allow_domain: Vec<String>,
    /// Verify webhook signatures from this provider (github, stripe, slack, twilio, svix,
    /// hmac); needs --verify-webhook-secret. Becomes a verify-webhook rule.
    #[arg(long, value_name = "PROVIDER", requires = "verify_webhook_secret")]
    verify_webhook: Option<String>,
    /// The webhook's signing secret, for --verify-webhook.
    #[arg(long, value_name = "SECRET", requires = "verify_webhook")]
    verify_webhook_secret: Option<String>,
    /// Capture HTTP requests for the inspector (`--inspect=false` to turn off).
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    inspect: bool,
}

fn main() -> std::process::ExitCode {
    // A user's mistake is one or two lines, with its causes, never a backtrace (even with
    // RUST_BACKTRACE set: that is for panics, which still print theirs).
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli() -> anyhow::Result<()> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cli = Cli::parse_from(&argv);
    // Whether the command line or WARREN_LOG set the log level (then a reload keeps it).
    let log_level_pinned = cli.log_level.is_some();
    // `warren edge --config FILE`: the file's settings, under the command line's.
    if let Command::Edge(args) = &cli.command
        && let Some(file) = args.config.clone()
    {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        cmd.build();
        let matches = cmd.clone().get_matches_from(&argv);
        let (Some(edge), Some(edge_matches)) =
            (cmd.find_subcommand("edge"), matches.subcommand_matches("edge"))
        else {
            unreachable!("the edge command was parsed");
        };
        let merged = edge_config::merged_args(&argv, edge, edge_matches, &file)?;
        cli = Cli::try_parse_from(&merged).unwrap_or_else(|e| e.exit());
    }
    let agent_command = matches!(
        cli.command,
        Command::Http { .. } | Command::Tcp { .. } | Command::Tls { .. } | Command::Start { .. }
    );
    // `warren start` takes `agent.log` and `agent.log_level` from its config files; problems
    // in the files are reported by `start` itself.
    let (file_log, file_level) = match &cli.command {
        Command::Start { config, .. } => {
            let files = if config.is_empty() {
                vec![warren_agent::config_file::default_path()]
            } else {
                config.clone()
            };
            warren_agent::config_file::AgentFile::load(&files).map(|f| f.log()).unwrap_or_default()
        }
        _ => (None, None),
    };
    let log = cli.log.clone().or(file_log);
    let console = agent_command && log.is_none() && output::is_terminal();
    let default_level = match cli.command {
        Command::Edge(_) => "info",
        _ if agent_command => "info",
        _ => "warn",
    };
    let level = cli.log_level.clone().or(file_level);
    let json = cli.log_format == "json";
    output::init_logs(log.as_deref(), console, level.as_deref().unwrap_or(default_level), json)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        match cli.command {
            Command::Edge(args) => edge(*args, log_level_pinned).await,
            Command::Http { upstream, agent, names, http } => {
                let url = endpoint_url(&agent, Some(&names), "https")?;
                let mut ep = EndpointConfig::http(&upstream, url.as_deref()).map_err(anyhow::Error::msg)?;
                ep.host_header = http.host_header.clone();
                ep.upstream_http2 = http.upstream_protocol.as_deref() == Some("http2");
                ep.upstream_tls_verify = http.upstream_tls_verify;
                ep.inspect = http.inspect;
                run_agent(agent, Some(names), Some(*http), ep, console).await
            }
            Command::Api { resource, op, mut rest, api_key, api_url, help } => {
                let help = help || rest.iter().any(|a| a == "--help" || a == "-h");
                let (Some(resource), Some(op)) = (resource, op) else {
                    use clap::CommandFactory;
                    let mut cli = Cli::command();
                    cli.find_subcommand_mut("api").map(|c| c.print_help()).transpose()?;
                    return Ok(());
                };
                if help {
                    print!("{}", api_cli::help(&resource, &op)?);
                    return Ok(());
                }
                // `--api-key`/`--api-url` after the resource land in `rest`; take them out.
                let api_key = api_cli::take_flag(&mut rest, "--api-key").or(api_key);
                let api_url = api_cli::take_flag(&mut rest, "--api-url").unwrap_or(api_url);
                let from_file = || {
                    agent_files(&[]).ok().flatten().and_then(|f| f.agent_setting("api_key").map(str::to_owned))
                };
                let Some(key) = api_key.filter(|k| !k.is_empty()).or_else(from_file) else {
                    bail!("no API key: pass --api-key, set WARREN_API_KEY, or save one with `warren config add-api-key KEY` (the edge printed one on its first start)");
                };
                api_cli::run(&api_url, &key, &resource, &op, &rest).await
            }
            Command::Tls { upstream, agent, names, crt, key, mutual_tls_cas } => {
                let termination = match (crt, key) {
                    (Some(crt), Some(key)) => {
                        let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
                        let cas = mutual_tls_cas.as_ref().map(read).transpose()?;
                        let cfg = warren_agent::agent_termination(&read(&crt)?, &read(&key)?, cas.as_deref())
                            .map_err(anyhow::Error::msg)?;
                        Some(cfg)
                    }
                    _ => None,
                };
                let url = endpoint_url(&agent, Some(&names), "tls")?;
                let ep = EndpointConfig::tls(&upstream, url.as_deref(), termination).map_err(anyhow::Error::msg)?;
                run_agent(agent, Some(names), None, ep, console).await
            }
            Command::Start { names, all, config, keep_going } => {
                start(names, all, config, keep_going, console).await
            }
            Command::Config { action } => config_command(action),
            Command::Admin { action } => admin(action).await,
            Command::Service { action } => service::run(action),
            Command::Tcp { upstream, agent, domain, subdomain } => {
                if let Some(d) = domain {
                    bail!("--domain {d:?} is for http and tls endpoints; a tcp endpoint takes --url tcp://host:port")
                }
                if subdomain.is_some() {
                    bail!("--subdomain is for http and tls endpoints; a tcp endpoint takes --url tcp://host:port")
                }
                let url = endpoint_url(&agent, None, "tcp")?;
                let ep = EndpointConfig::tcp(&upstream, url.as_deref()).map_err(anyhow::Error::msg)?;
                run_agent(agent, None, None, ep, console).await
            }
        }
    })
}

fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("warren");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/warren"),
        None => PathBuf::from("warren-data"),
    }
}

/// Runs an edge until SIGTERM or Ctrl-C; SIGHUP reloads what can be reloaded (the
/// certificate files, IP restrictions, and the config file's `log_level` unless
/// `--log-level`/`WARREN_LOG` set it: `log_level_pinned`).
async fn edge(args: EdgeArgs, log_level_pinned: bool) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let config_file = args.config.clone();
    let data_dir = args.store.data_dir.clone().unwrap_or_else(default_data_dir);
    let mut config = store_config(args.store);
    config.base_domain = args.base_domain.to_ascii_lowercase();
    config.connect_hostnames.extend(args.connect_hostnames);
    config.connect_addr = args.connect_addr;
    config.https_addr = args.https_addr;
    config.http_addr = (!args.no_http).then_some(args.http_addr);
    config.api_addr = (!args.no_api).then_some(args.api_addr);
    config.tcp_bind_ip = args.tcp_bind_ip;
    config.tcp_host = args.tcp_host;
    config.cluster_addr = args.cluster_addr;
    config.cluster_advertise = args.cluster_advertise;
    let (a, b) = args.tcp_ports.split_once('-').context("--tcp-ports must be FIRST-LAST")?;
    config.tcp_ports = a.trim().parse().context("--tcp-ports first port")?
        ..=b.trim().parse().context("--tcp-ports last port")?;
    for cidr in &args.trusted_proxies {
        let parsed =
            warren_edge::Cidr::parse(cidr).map_err(|e| anyhow::anyhow!("--trusted-proxy {cidr}: {e}"))?;
        config.trusted_proxies.push(parsed);
    }
    if !args.metrics_allow.is_empty() {
        config.metrics_allow.clear();
        for cidr in args.metrics_allow.iter().filter(|c| c.as_str() != "none") {
            let parsed =
                warren_edge::Cidr::parse(cidr).map_err(|e| anyhow::anyhow!("--metrics-allow {cidr}: {e}"))?;
            config.metrics_allow.push(parsed);
        }
    }
    config.proxy_protocol = args.proxy_protocol;
    if let Some(dir) = args.acme_directory {
        let mut acme = warren_edge::config::AcmeConfig::lets_encrypt();
        if dir != "letsencrypt" {
            acme.directory = dir;
        }
        acme.email = args.acme_email;
        acme.directory_ca = args.acme_directory_ca;
        acme.challenge = match args.acme_challenge.as_str() {
            "http-01" => warren_edge::config::AcmeChallenge::Http01,
            "tls-alpn-01" => warren_edge::config::AcmeChallenge::TlsAlpn01,
            other => bail!("--acme-challenge {other:?}: use http-01 or tls-alpn-01"),
        };
        if let Some(server) = &args.acme_dns_server {
            let server = tokio::net::lookup_host(server)
                .await
                .with_context(|| format!("--acme-dns-server {server}"))?
                .next()
                .ok_or_else(|| anyhow::anyhow!("--acme-dns-server {server}: no address"))?;
            let file = args.acme_dns_tsig_secret_file.clone().expect("required by clap");
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let secret = warren_edge::config::SecretBytes::from_base64(&text)
                .map_err(|e| anyhow::anyhow!("{}: the TSIG secret is {e}", file.display()))?;
            acme.dns01 = Some(warren_edge::config::Dns01Config {
                server,
                zone: args.acme_dns_zone.clone(),
                key_name: args.acme_dns_tsig_key.clone().expect("required by clap"),
                algorithm: warren_edge::config::TsigAlgorithm::parse(&args.acme_dns_tsig_algorithm)
                    .map_err(|e| anyhow::anyhow!("--acme-dns-tsig-algorithm: {e}"))?,
                secret,
            });
        }
        config.acme = Some(acme);
    }
    config.master_key_file = args.master_key_file;
    config.idp_allow_loopback_http = args.idp_allow_loopback_http;
    config.events = warren_edge::config::EventsConfig {
        dir: args.events_dir,
        allow_loopback: args.events_allow_loopback,
        allow_private_networks: args.events_allow_private_networks,
    };
    config.idp_allow_private_networks = args.idp_allow_private_networks;
    config.dashboard_sso = args.dashboard_sso_issuer.map(|issuer_url| warren_edge::config::DashboardSso {
        issuer_url,
        client_id: args.dashboard_sso_client_id.unwrap_or_default(),
        client_secret: warren_edge::config::SecretString(
            args.dashboard_sso_client_secret.unwrap_or_default(),
        ),
        account: args.dashboard_sso_account,
        allowed_domains: args.dashboard_sso_domain,
        default_role: warren_edge::config::Role::parse(&args.dashboard_sso_role)
            .unwrap_or(warren_edge::config::Role::ReadOnly),
        required: args.dashboard_sso_required,
        break_glass: args.dashboard_break_glass,
    });
    config.dns_resolver = args.dns_resolver;
    config.api_public_url = args.api_public_url;
    config.hsts = match args.hsts.as_str() {
        "auto" => warren_edge::Hsts::Auto { max_age: args.hsts_max_age },
        "always" => warren_edge::Hsts::Always { max_age: args.hsts_max_age },
        "off" => warren_edge::Hsts::Off,
        other => anyhow::bail!("--hsts {other:?}: expected auto, always or off"),
    };
    config.tls_files = args.tls_cert.zip(args.tls_key);
    config.limits.drain_timeout = std::time::Duration::from_secs(args.drain_timeout);
    config.limits.shutdown_delay = std::time::Duration::from_secs(args.shutdown_delay);
    // Each is a semaphore's size: bounded well below what tokio accepts.
    const MAX_CONNECTIONS: usize = 100_000_000;
    for (flag, n, zero_refuses_all) in [
        ("--max-sessions", args.max_sessions, true),
        ("--max-agent-connections-per-ip", args.max_agent_connections_per_ip, false),
        ("--max-visitor-connections", args.max_visitor_connections, true),
        ("--max-visitor-connections-per-ip", args.max_visitor_connections_per_ip, false),
    ] {
        // 0 would refuse every connection: a typo, not a setting. (Per address, 0 means no
        // per-address limit.)
        if n == 0 && zero_refuses_all {
            anyhow::bail!("{flag} 0 would refuse every connection; give at least 1");
        }
        if n > MAX_CONNECTIONS {
            anyhow::bail!("{flag} {n} is more than {MAX_CONNECTIONS} connections");
        }
    }
    config.limits.max_sessions = args.max_sessions;
    config.limits.max_agent_connections_per_ip = args.max_agent_connections_per_ip;
    config.limits.max_visitor_connections = args.max_visitor_connections;
    config.limits.max_visitor_connections_per_ip = args.max_visitor_connections_per_ip;
    if args.check {
        return check_edge(&config).await;
    }
    config.validate().map_err(anyhow::Error::msg)?;

    let prepared = warren_edge::bootstrap::prepare(&config).await.context("preparing the data directory")?;
    // Refused before anything listens, rather than failing every handshake later.
    let key_file = config.master_key_file.clone().unwrap_or_else(|| config.data_dir.join("master.key"));
    let master_key = warren_edge::sealed::MasterKey::load(&key_file)
        .with_context(|| format!("the master key ({})", key_file.display()))?;
    if let Some(problem) = master_key_problem(&key_file, &master_key, &prepared.store).await {
        bail!("{problem}");
    }
    let ca = prepared.tls.ca_cert_path.clone();
    let edge = warren_edge::Edge::start(config.clone(), prepared.store, prepared.tls).await?;
    let connect = format!("localhost:{}", edge.connect_addr.port());
    println!("warren edge is running");
    println!("  data directory:  {}", data_dir.display());
    println!("  agents connect:  {connect} (CA certificate: {})", ca.display());
    println!("  https endpoints: https://<name>.{}:{}", config.base_domain, edge.https_addr.port());
    if let Some(http) = edge.http_addr {
        println!("  http endpoints:  http://<name>.{}:{}", config.base_domain, http.port());
    }
    if let Some(api) = edge.api_addr {
        println!(
            "  REST API:        http://{api} (ngrok API v2: Authorization: Bearer <API key>, Ngrok-Version: 2)"
        );
        println!("  dashboard:       http://{api}/dashboard/");
    }
    match &prepared.first_start {
        // Under systemd, stdout goes to the journal, which keeps it and lets others read it:
        // the secrets stay in the owner-only file.
        Some(first) if stdout_is_the_journal() => {
            println!(
                "First start: created an authtoken, an admin API key and a dashboard sign-in link; they are not printed here (this output goes to the journal) but saved, readable only by the service, in {}",
                first.credentials_file.display()
            );
            println!(
                "Sign in to the dashboard with a one-time link: warren admin users sign-in-link --email admin --data-dir {}",
                data_dir.display()
            );
        }
        Some(first) => {
            println!();
            println!("First start: created an authtoken and an admin API key. They are shown only now");
            println!("(and saved, readable only by you, in {}):", first.credentials_file.display());
            println!("  authtoken: {}", first.authtoken.0);
            println!("  API key:   {}", first.api_key.0);
            if let Some(api) = edge.api_addr {
                println!(
                    "Sign in to the dashboard once with this link (valid 24 hours), then set a password:"
                );
                println!("  http://{api}/dashboard/sign-in/link/{}", first.sign_in_link.0);
            }
            println!();
            println!("Expose a local web server on port 3000 (in another terminal):");
            println!(
                "  warren http 3000 --authtoken {} --connect-url {connect} --connect-cas {}",
                first.authtoken.0,
                ca.display()
            );
        }
        None => {
            println!();
            println!(
                "Dashboard: sign in with your password, or get a one-time link with\n  warren admin users sign-in-link --email <you>{}",
                if data_dir == default_data_dir() {
                    String::new()
                } else {
                    format!(" --data-dir {}", data_dir.display())
                }
            );
            println!(
                "Expose a local web server on port 3000 (the authtoken is in {}):",
                data_dir.join("credentials.txt").display()
            );
            println!(
                "  warren http 3000 --authtoken <token> --connect-url {connect} --connect-cas {}",
                ca.display()
            );
        }
    }
    println!(
        "Then visit it with: curl --cacert {} https://<name>.{}:{}/",
        ca.display(),
        config.base_domain,
        edge.https_addr.port()
    );
    tokio::pin!(shutdown);
    loop {
        #[cfg(unix)]
        let hup = hangup.recv();
        #[cfg(not(unix))]
        let hup = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hup => {
                let mut done: Vec<String> = Vec::new();
                match edge.reload() {
                    Ok(d) => done.extend(d.iter().map(|s| s.to_string())),
                    Err(e) => eprintln!("reload: the certificate files are not usable ({e}); keeping the current certificate"),
                }
                if let (Some(file), false) = (&config_file, log_level_pinned) {
                    match log_level_in(file) {
                        Ok(Some(level)) => match output::set_log_level(&level) {
                            Ok(()) => done.push(format!("log level {level}")),
                            Err(e) => eprintln!("reload: log_level {level:?}: {e}"),
                        },
                        Ok(None) => {}
                        Err(e) => eprintln!("reload: {e}"),
                    }
                }
                eprintln!("reloaded: {}", done.join(", "));
            }
        }
    }
    eprintln!("shutting down");
    edge.shutdown().await;
    Ok(())
}

/// The `log_level` key of an edge config file, read again (SIGHUP).
fn log_level_in(file: &std::path::Path) -> anyhow::Result<Option<String>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let keys =
        warren_agent::locate::top_level(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    Ok(keys
        .into_iter()
        .find(|(k, _, _)| k.replace('-', "_") == "log_level")
        .and_then(|(_, _, v)| v.as_str().map(str::to_owned)))
}

/// `warren edge --check`: every problem the edge would meet at start, all at once: the
/// settings, the store (opened as the edge opens it, so its migrations run), the certificate
/// and key files, the master key against the keys it sealed, and the listeners' addresses.
async fn check_edge(config: &EdgeConfig) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if let Err(e) = config.validate() {
        problems.push(e);
    }
    if let Some((cert, key)) = &config.tls_files {
        let pair = warren_edge::tls::load_pem_files(cert, key).map_err(|e| e.to_string()).and_then(
            |(chain, key)| {
                warren_edge::tls::CertStore::check_pair(chain, key)
                    .map_err(|e| format!("the key does not match the certificate ({e})"))
            },
        );
        if let Err(e) = pair {
            problems.push(format!("--tls-cert {} / --tls-key {}: {e}", cert.display(), key.display()));
        }
    }
    if let Some(ca) = config.acme.as_ref().and_then(|a| a.directory_ca.as_ref())
        && let Err(e) = std::fs::read(ca)
    {
        problems.push(format!("--acme-directory-ca {}: {e}", ca.display()));
    }
    let key_file = config.master_key_file.clone().unwrap_or_else(|| config.data_dir.join("master.key"));
    let master_key = if key_file.exists() || std::env::var_os("WARREN_MASTER_KEY").is_some() {
        match warren_edge::sealed::MasterKey::load(&key_file) {
            Ok(k) => Some(k),
            Err(e) => {
                problems.push(format!("master key ({}): {e}", key_file.display()));
                None
            }
        }
    } else {
        None
    };
    match warren_edge::bootstrap::open_store(config).await {
        Ok(store) => {
            // A master key that cannot open what the store holds would fail every TLS
            // handshake of those names: try one sealed key.
            if let Some(key) = &master_key
                && let Some(problem) = master_key_problem(&key_file, key, &store).await
            {
                problems.push(problem);
            }
        }
        Err(e) => problems.push(format!("store: {e}")),
    }
    let listeners = [
        ("--connect-addr", Some(config.connect_addr)),
        ("--https-addr", Some(config.https_addr)),
        ("--http-addr", config.http_addr),
        ("--api-addr", config.api_addr),
        ("--cluster-addr", config.cluster_addr),
    ];
    for (flag, addr) in listeners {
        let Some(addr) = addr else { continue };
        if addr.port() != 0
            && let Err(e) = std::net::TcpListener::bind(addr)
        {
            problems.push(format!("{flag} {addr}: cannot listen: {e}"));
        }
    }
    if problems.is_empty() {
        println!("configuration OK: the store opens, the files load, and every listener can bind");
        return Ok(());
    }
    bail!("{} problem(s):\n  {}", problems.len(), problems.join("\n  "));
}

/// A master key that cannot open what the store holds would fail every TLS handshake of the
/// names whose keys it sealed: tried on one sealed key.
async fn master_key_problem(
    key_file: &std::path::Path,
    key: &warren_edge::sealed::MasterKey,
    store: &warren_edge::Store,
) -> Option<String> {
    if let Ok(Some(ca)) = store.cluster_ca().await
        && key.open(warren_edge::sealed::CLUSTER_CA_LABEL, &ca.key_sealed).is_err()
    {
        return Some(format!(
            "master key ({}): it cannot open the cluster CA's key in the store; every node of a cluster needs the same master key (WARREN_MASTER_KEY or --master-key-file)",
            key_file.display()
        ));
    }
    // An ACME certificate's key is sealed under its domain, an uploaded one's under its id.
    let acme = store.all_certificates().await.ok()?.into_iter().next().map(|c| (c.domain, c.key_sealed));
    let uploaded =
        || async { store.any_uploaded_certificate().await.ok().flatten().map(|c| (c.id, c.key_sealed)) };
    let (label, sealed) = match acme {
        Some(found) => found,
        None => uploaded().await?,
    };
    key.open(&label, &sealed).is_err().then(|| {
        format!(
            "master key ({}): it cannot open the keys in the store (that of certificate {label} was sealed with another key); use the master key of the edge that wrote the store (WARREN_MASTER_KEY or --master-key-file)",
            key_file.display()
        )
    })
}

/// Whether stdout is systemd's journal: `JOURNAL_STREAM` names its device and inode (the
/// variable alone could be inherited by a process whose output goes elsewhere).
fn stdout_is_the_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else { return false };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::metadata("/proc/self/fd/1") {
            return m.dev().to_string() == dev && m.ino().to_string() == ino;
        }
    }
    false
}

/// An edge config with only the store's location set.
fn store_config(args: StoreArgs) -> EdgeConfig {
    let mut config = EdgeConfig::local_default(args.data_dir.unwrap_or_else(default_data_dir));
    config.database_url = args.database_url.map(warren_edge::config::DatabaseUrl);
    config
}

async fn admin(action: AdminAction) -> anyhow::Result<()> {
    let action = match action {
        AdminAction::Accounts { action } => action,
        AdminAction::Backup { file, store } => return backup(file, store).await,
        AdminAction::Restore { file, store } => return restore(file, store).await,
        AdminAction::Users { action: UsersAction::SignInLink { email, account, dashboard_url, store } } => {
            let store = warren_edge::bootstrap::open_store(&store_config(store))
                .await
                .context("opening the store")?;
            let link = warren_edge::bootstrap::sign_in_link(&store, &account, &email)
                .await
                .with_context(|| format!("making a sign-in link for {email:?} of account {account:?}"))?;
            println!("One-time sign-in link for {email} (valid 24 hours, works once):");
            println!("  {}/dashboard/sign-in/link/{}", dashboard_url.trim_end_matches('/'), link.0);
            return Ok(());
        }
    };
    match action {
        AccountsAction::Create { name, admin_email, store } => {
            let store = warren_edge::bootstrap::open_store(&store_config(store))
                .await
                .context("opening the store")?;
            let new = warren_edge::bootstrap::create_account(&store, &name, &admin_email)
                .await
                .with_context(|| format!("creating account {name:?}"))?;
            println!(
                "Created account {} ({}) with admin user {admin_email}.",
                new.account.name, new.account.id
            );
            println!("Its authtoken and API key are shown only now:");
            println!("  authtoken: {}", new.authtoken.0);
            println!("  API key:   {}", new.api_key.0);
        }
        AccountsAction::List { store } => {
            let store = warren_edge::bootstrap::open_store(&store_config(store))
                .await
                .context("opening the store")?;
            for a in store.list_accounts().await? {
                println!("{}\t{}", a.id, a.name);
            }
        }
    }
    Ok(())
}

/// `warren admin backup FILE`.
async fn backup(file: PathBuf, store: StoreArgs) -> anyhow::Result<()> {
    if file.exists() {
        bail!("{} exists; a backup goes to a new file", file.display());
    }
    let config = store_config(store);
    if config.database_url.is_none() && !config.data_dir.join("warren.db").exists() {
        bail!(
            "no store at {} (pass --data-dir or --database-url)",
            config.data_dir.join("warren.db").display()
        );
    }
    let store = warren_edge::bootstrap::open_store(&config).await.context("opening the store")?;
    store.backup_to(&file).await.with_context(|| format!("writing {}", file.display()))?;
    // The copy holds hashed tokens and sealed keys: readable by its owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
    }
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    println!("backed up the store (schema {}) to {} ({size} bytes)", store.schema_version(), file.display());
    println!(
        "The master key is not in it: keep {} (or WARREN_MASTER_KEY) with it, apart and safe.",
        config.master_key_file.clone().unwrap_or_else(|| config.data_dir.join("master.key")).display()
    );
    Ok(())
}

/// `warren admin restore FILE`.
async fn restore(file: PathBuf, store: StoreArgs) -> anyhow::Result<()> {
    let config = store_config(store);
    if config.database_url.is_some() {
        bail!(
            "restoring into PostgreSQL: use pg_restore (docs/DEPLOY.md); warren restores SQLite backups into a data directory"
        );
    }
    let target = config.data_dir.join("warren.db");
    if target.exists() {
        bail!(
            "{} already has a store; restore into a data directory without one (--data-dir)",
            config.data_dir.display()
        );
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))?;
    }
    std::fs::copy(&file, &target).with_context(|| format!("copying {}", file.display()))?;
    match warren_edge::Store::open_sqlite(&target).await {
        Ok(store) => {
            store.close().await;
            println!("restored {} into {}", file.display(), target.display());
            println!(
                "Copy the master key of the edge that made the backup to {} (or set WARREN_MASTER_KEY): the sealed keys need it.",
                config
                    .master_key_file
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("master.key"))
                    .display()
            );
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&target);
            for suffix in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(config.data_dir.join(format!("warren.db{suffix}")));
            }
            Err(anyhow::anyhow!("{} is not a store this warren can open: {e}", file.display()))
        }
    }
}

/// The agent needs no privileges; say so when it has them.
fn warn_if_root() {
    if warren_agent::running_as_root() {
        eprintln!(
            "warning: warren is running as root. The agent needs no privileges; anyone who can reach your endpoint talks to your upstream through a root-owned process. Run it as an ordinary user."
        );
    }
}

async fn run_agent(
    args: AgentArgs,
    names: Option<NameArgs>,
    http: Option<HttpArgs>,
    mut endpoint: EndpointConfig,
    console: bool,
) -> anyhow::Result<()> {
    warn_if_root();
    if let Some(sub) = names.as_ref().and_then(|n| n.subdomain.as_ref()) {
        if sub.is_empty() || !sub.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            bail!(
                "--subdomain {sub:?}: letters, digits and '-' only (one label; the edge adds its base domain)"
            );
        }
        endpoint.subdomain = sub.to_ascii_lowercase();
    }
    endpoint.name = args.name.clone().unwrap_or(endpoint.name);
    endpoint.metadata = args.metadata.clone().unwrap_or_default();
    endpoint.description = args.description.clone().unwrap_or_default();
    endpoint.pooling = args.pooling_enabled;
    if let Some(file) = &args.traffic_policy_file {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let doc = warren_agent::config::policy_from_text(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        // Checked alone first, so a problem is shown where it is in the user's own file.
        if let Err(p) = warren_agent::config::check_policy_at(&doc, endpoint.proto.as_str()) {
            match p.position(&text, &[]) {
                Some((line, col)) => bail!("{}:{line}:{col}: {}", file.display(), p.msg),
                None => bail!("{}: {}", file.display(), p.msg),
            }
        }
        endpoint.traffic_policy = Some(doc);
    }
    let mut legacy = warren_agent::config::LegacyFlags {
        cidr_allow: args.cidr_allow.clone(),
        cidr_deny: args.cidr_deny.clone(),
        ..Default::default()
    };
    if let Some(http) = http {
        legacy.basic_auth = http.basic_auth;
        legacy.request_header_add = http.request_header_add;
        legacy.request_header_remove = http.request_header_remove;
        legacy.response_header_add = http.response_header_add;
        legacy.response_header_remove = http.response_header_remove;
        legacy.verify_webhook = http.verify_webhook.zip(http.verify_webhook_secret);
        legacy.compression = http.compression;
        legacy.circuit_breaker = http.circuit_breaker;
        legacy.oidc = http.oidc.map(|issuer| warren_agent::config::OidcFlags {
            issuer,
            client_id: http.oidc_client_id.unwrap_or_default(),
            client_secret: http.oidc_client_secret.unwrap_or_default(),
            scopes: http.oidc_scope,
            allow_emails: http.oidc_allow_email,
            allow_domains: http.oidc_allow_domain,
        });
    }
    if let Some(rules) = legacy.rules(endpoint.proto.is_http()).map_err(anyhow::Error::msg)? {
        endpoint.prepend_policy(rules).map_err(anyhow::Error::msg)?;
    }
    if let Some(p) = &endpoint.traffic_policy {
        let checked = warren_agent::config::check_policy(p, endpoint.proto.as_str());
        match (&args.traffic_policy_file, checked) {
            (_, Ok(())) => {}
            (Some(file), Err(e)) => bail!("{}: {e}", file.display()),
            (None, Err(e)) => bail!("{e}"),
        }
    }
    // Flags and WARREN_* variables first, then the config files, then the defaults.
    let file = agent_files(&args.config)?;
    let from_file = |key: &str| file.as_ref().and_then(|f| f.agent_setting(key)).map(str::to_owned);
    let Some(token) = args.authtoken.filter(|t| !t.is_empty()).or_else(|| from_file("authtoken")) else {
        bail!(
            "no authtoken: pass --authtoken, set WARREN_AUTHTOKEN, or save one with `warren config add-authtoken TOKEN` (the edge printed one on its first start)"
        );
    };
    let connect_url = args
        .connect_url
        .filter(|u| !u.is_empty())
        .or_else(|| from_file("connect_url"))
        .unwrap_or_else(|| "localhost:4443".into());
    let cas = match args.connect_cas.filter(|c| !c.is_empty()).or_else(|| from_file("connect_cas")) {
        Some(c) => ConnectCas::parse(&c),
        None => local_edge_ca(),
    };
    if args.ha && endpoint.url.is_empty() {
        bail!("--ha needs a fixed --url: both sessions bind the same URL");
    }
    let mut config = AgentConfig::new(token, connect_url, cas);
    config.ha = args.ha;
    config.endpoints.push(endpoint);
    if args.web_addr != "false" {
        let addr = warren_agent::config_file::web_addr(&serde_json::Value::String(args.web_addr.clone()))
            .map_err(|e| anyhow::anyhow!("--web-addr: {}", e.trim_start_matches("agent.web_addr ")))?;
        config.web_addr = addr;
        config.web_addr_fallback = args.web_addr == "127.0.0.1:4040";
    }
    output::run_agent(config, console).await
}

/// `--url`, or ngrok's `--domain` as a URL of the command's scheme.
fn endpoint_url(args: &AgentArgs, names: Option<&NameArgs>, scheme: &str) -> anyhow::Result<Option<String>> {
    match (&args.url, names.and_then(|n| n.domain.as_ref())) {
        (_, Some(d)) if d.contains("://") || d.contains('/') => {
            bail!("--domain {d:?} is a host name only (like app.example.com); use --url for a URL")
        }
        (_, Some(d)) => Ok(Some(format!("{scheme}://{d}"))),
        (u, None) => Ok(u.clone()),
    }
}

/// The config files `warren http|tcp|tls` read agent settings from: those named, or the
/// per-user file when it exists (`None` when it does not). A file that is named but missing,
/// or that does not parse, is an error.
fn agent_files(named: &[PathBuf]) -> anyhow::Result<Option<warren_agent::config_file::AgentFile>> {
    let files = if named.is_empty() {
        let default = warren_agent::config_file::default_path();
        if !default.exists() {
            return Ok(None);
        }
        vec![default]
    } else {
        named.to_vec()
    };
    Ok(Some(warren_agent::config_file::AgentFile::load(&files)?))
}

/// The local edge's CA when this machine runs one (`warren edge` with the default data
/// directory), else the public CAs.
fn local_edge_ca() -> ConnectCas {
    let local = default_data_dir().join("tls/ca.pem");
    if local.exists() { ConnectCas::Pem(local) } else { ConnectCas::Trusted }
}

/// `warren start NAME... | --all`: the named endpoints of the config files.
async fn start(
    names: Vec<String>,
    all: bool,
    configs: Vec<PathBuf>,
    keep_going: bool,
    console: bool,
) -> anyhow::Result<()> {
    warn_if_root();
    if names.is_empty() && !all {
        bail!("name the endpoints to start (warren start web api) or pass --all");
    }
    let files = if configs.is_empty() { vec![warren_agent::config_file::default_path()] } else { configs };
    let file = warren_agent::config_file::AgentFile::load(&files)?;
    for key in &file.ignored {
        eprintln!("note: {key} is accepted but has no effect in warren yet");
    }
    let mut config = file.agent_config(&names)?;
    config.keep_going = keep_going;
    // As `warren http` does: with no connect_cas anywhere, trust the local edge's CA if any.
    if file.agent_setting("connect_cas").is_none()
        && std::env::var("WARREN_CONNECT_CAS").map_or(true, |v| v.is_empty())
    {
        config.connect_cas = local_edge_ca();
    }
    if config.authtoken.is_empty() {
        bail!("no authtoken: set agent.authtoken (warren config add-authtoken TOKEN) or WARREN_AUTHTOKEN");
    }
    output::run_agent(config, console).await
}

/// `warren config check|add-authtoken|add-connect-url|edit`.
fn config_command(action: ConfigAction) -> anyhow::Result<()> {
    use warren_agent::config_file::{AgentFile, default_path, set_agent_key};
    let files = |c: Vec<PathBuf>| if c.is_empty() { vec![default_path()] } else { c };
    match action {
        ConfigAction::Check { config } => {
            let files = files(config);
            let file = AgentFile::load(&files)?;
            for key in &file.ignored {
                println!("note: {key} is accepted but has no effect in warren yet");
            }
            // Every endpoint as `start` would make it (URLs, upstreams, policies), so check
            // and start agree; the edge's address and token may come from elsewhere.
            if !file.endpoint_names().is_empty() {
                let mut probe = file.clone_for_check();
                probe.fill_missing_agent_settings();
                probe.agent_config(&[])?;
            }
            let names = file.endpoint_names().join(", ");
            let shown: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            println!(
                "valid configuration: {} (endpoints: {})",
                shown.join(", "),
                if names.is_empty() { "none" } else { &names }
            );
        }
        ConfigAction::AddAuthtoken { token, config } => {
            let file = config.unwrap_or_else(default_path);
            set_agent_key(&file, "authtoken", &token)?;
            println!("authtoken saved to {}", file.display());
        }
        ConfigAction::AddConnectCas { cas, config } => {
            let file = config.unwrap_or_else(default_path);
            let value = match cas.as_str() {
                "trusted" | "host" => cas.clone(),
                path => {
                    let p = std::path::Path::new(path);
                    let pem = std::fs::read_to_string(p).with_context(|| format!("reading {path}"))?;
                    if !pem.contains("-----BEGIN CERTIFICATE-----") {
                        bail!("{path} holds no PEM certificate; expected trusted, host or a CA file");
                    }
                    std::fs::canonicalize(p)
                        .with_context(|| format!("resolving {path}"))?
                        .display()
                        .to_string()
                }
            };
            set_agent_key(&file, "connect_cas", &value)?;
            println!("connect_cas {value} saved to {}", file.display());
        }
        ConfigAction::AddApiKey { key, config } => {
            let file = config.unwrap_or_else(default_path);
            set_agent_key(&file, "api_key", &key)?;
            println!("api_key saved to {}", file.display());
        }
        ConfigAction::AddConnectUrl { url, config } => {
            let file = config.unwrap_or_else(default_path);
            set_agent_key(&file, "connect_url", &url)?;
            println!("connect_url saved to {}", file.display());
        }
        ConfigAction::Edit { config } => service::edit_config(config.unwrap_or_else(default_path))?,
    }
    Ok(())
}

/// Registers SIGINT/SIGTERM handlers now (so a signal that arrives during start-up is not
/// lost to the default action) and resolves when one arrives.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    #[cfg(unix)]
    let mut int =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        #[cfg(unix)]
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
