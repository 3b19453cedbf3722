//! The agent protocol's RPC messages, wire-compatible with ngrok agents and SDKs.
//!
//! Every RPC is one typed stream: the opener writes the [`StreamType`] as a big-endian `u32`,
//! then one JSON request, half-closes, and reads one JSON reply to EOF. Keys are PascalCase.
//! Replies signal failure with a non-empty `Error` string whose lines may include an
//! `ERR_NGROK_nnn` code, which ngrok clients parse out.
//!
//! This crate has serde types only: no I/O.

use serde::{Deserialize, Serialize};

pub mod dns;
pub mod error_codes;
pub mod fold;
#[doc(hidden)]
pub mod fuzzing;

/// The protocol versions the edge speaks, most preferred first.
pub const VERSIONS: [&str; 2] = ["3", "2"];

/// Largest RPC request or reply accepted, in bytes.
pub const MAX_RPC_LEN: usize = 256 * 1024;
/// Largest proxy header accepted, in bytes.
pub const MAX_PROXY_HEADER_LEN: usize = 64 * 1024;

/// The `u32` that starts every typed stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamType {
    /// Client → edge: authenticate the session ([`Auth`] → [`AuthResp`]).
    Auth,
    /// Client → edge: bind an endpoint ([`Bind`] → [`BindResp`]).
    Bind,
    /// Client → edge: release an endpoint ([`Unbind`] → [`UnbindResp`]).
    Unbind,
    /// Edge → client: a visitor connection ([`ProxyHeader`], then raw bytes).
    Proxy,
    /// Edge → client: restart the agent ([`Restart`] → [`CommandResp`]).
    Restart,
    /// Edge → client: stop the agent ([`Stop`] → [`CommandResp`]).
    Stop,
    /// Edge → client: update the agent ([`Update`] → [`CommandResp`]).
    Update,
    /// Client → edge: legacy labeled bind ([`StartTunnelWithLabel`]).
    BindLabeled,
    /// Client → edge: server information ([`SrvInfo`] → [`SrvInfoResp`]).
    SrvInfo,
    /// Edge → client: an endpoint was stopped ([`StopTunnel`], no reply).
    StopTunnel,
    /// Client → edge: update an endpoint's settings in place.
    PatchTunnelState,
    /// Either way: heartbeats (4-byte ids echoed back).
    Heartbeat,
    /// Anything else; refused.
    Unknown(u32),
}

impl StreamType {
    /// Decodes the wire value.
    pub fn from_u32(v: u32) -> StreamType {
        match v {
            0 => StreamType::Auth,
            1 => StreamType::Bind,
            2 => StreamType::Unbind,
            3 => StreamType::Proxy,
            4 => StreamType::Restart,
            5 => StreamType::Stop,
            6 => StreamType::Update,
            7 => StreamType::BindLabeled,
            8 => StreamType::SrvInfo,
            9 => StreamType::StopTunnel,
            10 => StreamType::PatchTunnelState,
            0xFFFF_FFFF => StreamType::Heartbeat,
            v => StreamType::Unknown(v),
        }
    }

    /// The wire value.
    pub fn to_u32(self) -> u32 {
        match self {
            StreamType::Auth => 0,
            StreamType::Bind => 1,
            StreamType::Unbind => 2,
            StreamType::Proxy => 3,
            StreamType::Restart => 4,
            StreamType::Stop => 5,
            StreamType::Update => 6,
            StreamType::BindLabeled => 7,
            StreamType::SrvInfo => 8,
            StreamType::StopTunnel => 9,
            StreamType::PatchTunnelState => 10,
            StreamType::Heartbeat => 0xFFFF_FFFF,
            StreamType::Unknown(v) => v,
        }
    }
}

/// A string that never shows in `Debug` output (tokens, cookies).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"********\"" })
    }
}

/// Client → edge: the first RPC of a session.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Auth {
    /// Protocol versions the client speaks, most preferred first.
    pub version: Vec<String>,
    /// Empty for a new session; the previous id when resuming.
    pub client_id: String,
    /// Everything else the client tells about itself.
    pub extra: AuthExtra,
}

/// Client details sent with [`Auth`]. Unknown fields are ignored, as ngrok does.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AuthExtra {
    /// Operating system.
    #[serde(rename = "OS")]
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// The authtoken.
    #[serde(rename = "AuthToken")]
    pub authtoken: Secret,
    /// Client version.
    pub version: String,
    /// Client host name.
    pub hostname: String,
    /// User agent string.
    pub user_agent: String,
    /// Free-form metadata shown on the session.
    pub metadata: String,
    /// Resume cookie from a previous [`AuthResp`].
    pub cookie: Secret,
    /// Heartbeat interval in nanoseconds.
    pub heartbeat_interval: i64,
    /// Heartbeat tolerance in nanoseconds.
    pub heartbeat_tolerance: i64,
    /// Client kind (`ngrok-rust`, `warren`, ...).
    pub client_type: String,
    /// Null when the client cannot stop on request; empty when it can.
    pub stop_unsupported_error: Option<String>,
    /// Null when the client cannot restart on request; empty when it can.
    pub restart_unsupported_error: Option<String>,
    /// Null when the client cannot update on request; empty when it can.
    pub update_unsupported_error: Option<String>,
    /// The agent's outbound proxy type (informational).
    pub proxy_type: String,
    /// The agent uses mutual TLS to the edge (informational).
    #[serde(rename = "MutualTLS")]
    pub mutual_tls: bool,
    /// The agent runs as an OS service (informational).
    pub service_run: bool,
    /// The agent's config file version (informational).
    pub config_version: String,
    /// The agent binds a chosen interface (informational).
    pub custom_interface: bool,
    /// The agent trusts custom CAs (informational).
    #[serde(rename = "CustomCAs")]
    pub custom_cas: bool,
    /// ngrok-go's "entirely unused" fingerprint.
    pub fingerprint: Option<serde_json::Value>,
    /// Extra legs of a multi-connection session (ngrok-go); warren sessions have one.
    pub leg_number: u32,
}

/// Edge → client: the reply to [`Auth`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AuthResp {
    /// The version chosen from the client's list.
    pub version: String,
    /// The session id to resume with.
    pub client_id: String,
    /// Failure, as `msg\nERR_NGROK_nnn`; empty on success.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Details of the session.
    pub extra: AuthRespExtra,
}

/// Session details sent with [`AuthResp`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AuthRespExtra {
    /// Edge version.
    pub version: Option<String>,
    /// Region or node name.
    pub region: Option<String>,
    /// Resume cookie to present on reconnect.
    pub cookie: Option<Secret>,
    /// Account the token belongs to.
    pub account_name: Option<String>,
    /// Maximum session duration in seconds, if limited.
    pub session_duration: Option<i64>,
    /// Plan name (always warren's).
    pub plan_name: Option<String>,
    /// Message for the user.
    pub banner: Option<String>,
    /// warren's addition: the edge node holding the session, so an agent with two sessions
    /// (`--ha`) keeps them on different nodes. ngrok's clients ignore it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// Client → edge: bind an endpoint. `Opts` depends on `Proto` and is kept as raw JSON so the
/// reply can echo it back exactly as ngrok clients expect.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Bind {
    /// Client-chosen endpoint id.
    #[serde(rename = "Id")]
    pub client_id: String,
    /// `http`, `https`, `tcp` or `tls`.
    pub proto: String,
    /// Upstream description, shown to users.
    pub forwards_to: String,
    /// `""`, `http1` or `http2`.
    pub forwards_proto: String,
    /// Protocol-specific options ([`HttpOpts`], [`TcpOpts`], [`TlsOpts`]).
    pub opts: serde_json::Value,
    /// Common options.
    pub extra: BindExtra,
}

/// Common bind options.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct BindExtra {
    /// Endpoint name (v3 config).
    pub name: String,
    /// Token for edge-side resumption (unused).
    pub token: Secret,
    /// IP policy to attach.
    #[serde(rename = "IPPolicyRef")]
    pub ip_policy_ref: String,
    /// Free-form metadata.
    pub metadata: String,
    /// Description.
    pub description: String,
    /// `public`, `internal`...
    pub bindings: Vec<String>,
    /// Whether several sessions may share the endpoint.
    pub pooling_enabled: bool,
}

/// The options of an http or https endpoint, every field ngrok's clients send (ngrok-rust
/// 0.19, ngrok-go, agent 2.3.41). Protocol 2 clients send `Hostname`/`Subdomain`; protocol 3
/// clients send `Domain` (and newer ones `URL`). The nested objects are the SDKs' middleware
/// options; the edge turns each into Traffic Policy rules or refuses it by name.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HttpOpts {
    /// Requested full URL (`https://app.example.com`).
    #[serde(rename = "URL")]
    pub url: String,
    /// Requested host name.
    pub domain: String,
    /// Requested host name (protocol 2).
    pub hostname: String,
    /// Requested label under the edge's base domain.
    pub subdomain: String,
    /// Basic auth `user:pass` (protocol 2).
    pub auth: String,
    /// The agent rewrites `Host` itself (informational).
    pub host_header_rewrite: bool,
    /// The upstream's scheme (informational).
    #[serde(rename = "LocalURLScheme")]
    pub local_url_scheme: Option<String>,
    /// PROXY protocol version for the upstream (0, 1, 2).
    pub proxy_proto: i64,
    /// Compress responses at the edge (`{}` turns it on).
    pub compression: Option<serde_json::Value>,
    /// Stop sending requests while this share of them fail.
    pub circuit_breaker: Option<serde_json::Value>,
    /// CIDR allow and deny lists.
    #[serde(rename = "IPRestriction")]
    pub ip_restriction: Option<IpRestriction>,
    /// Basic auth at the edge.
    pub basic_auth: Option<BasicAuth>,
    /// Sign-in with an ngrok-managed OAuth provider.
    #[serde(rename = "OAuth")]
    pub oauth: Option<serde_json::Value>,
    /// Sign-in with an OpenID Connect provider.
    #[serde(rename = "OIDC")]
    pub oidc: Option<OidcOpts>,
    /// Verify webhook signatures.
    pub webhook_verification: Option<WebhookVerification>,
    /// Mutual TLS at the edge: `{"mutual_tls_ca": base64 of PEM CA certificates}`.
    #[serde(rename = "MutualTLSCA")]
    pub mutual_tls_ca: Option<serde_json::Value>,
    /// Request headers to add and remove.
    pub request_headers: Option<Headers>,
    /// Response headers to add and remove.
    pub response_headers: Option<Headers>,
    /// Turn WebSocket connections into TCP for the upstream.
    #[serde(rename = "WebsocketTCPConverter")]
    pub websocket_tcp_converter: Option<serde_json::Value>,
    /// User-Agent allow and deny regular expressions.
    pub user_agent_filter: Option<UserAgentFilter>,
    /// The legacy policy object (ngrok-go up to 1.9).
    pub policy: Option<serde_json::Value>,
    /// Traffic policy document (a JSON string or object), compiled when the endpoint is
    /// bound; its `terminate-tls` action sets the endpoint's TLS.
    pub traffic_policy: Option<serde_json::Value>,
}

/// `IPRestriction`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct IpRestriction {
    /// Networks allowed in.
    pub allow_cidrs: Vec<String>,
    /// Networks refused.
    pub deny_cidrs: Vec<String>,
}

/// `BasicAuth`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BasicAuth {
    /// Accepted credentials.
    pub credentials: Vec<BasicCredential>,
}

/// One `BasicAuth` credential.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BasicCredential {
    /// The user name.
    pub username: String,
    /// The password as given.
    pub cleartext_password: Secret,
    /// A hash of the password (base64); warren needs the cleartext one.
    pub hashed_password: Option<serde_json::Value>,
}

/// `OIDC`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OidcOpts {
    /// The provider.
    pub issuer_url: String,
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: Secret,
    /// A secret sealed for ngrok's cloud; warren cannot open it.
    pub sealed_client_secret: Option<serde_json::Value>,
    /// Only these addresses get in.
    pub allow_emails: Vec<String>,
    /// Only addresses at these domains get in.
    pub allow_domains: Vec<String>,
    /// Scopes besides `openid`.
    pub scopes: Vec<String>,
}

/// `WebhookVerification`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookVerification {
    /// The provider (`github`, `stripe`, ...).
    pub provider: String,
    /// The signing secret.
    pub secret: Secret,
    /// A secret sealed for ngrok's cloud; warren cannot open it.
    pub sealed_secret: Option<serde_json::Value>,
}

/// `RequestHeaders` / `ResponseHeaders`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Headers {
    /// `name:value` pairs to add.
    pub add: Vec<String>,
    /// Names to remove.
    pub remove: Vec<String>,
    /// Parsed pairs to add (ngrok-go).
    #[serde(rename = "addParsed")]
    pub add_parsed: std::collections::BTreeMap<String, String>,
}

/// `UserAgentFilter`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UserAgentFilter {
    /// Regular expressions; a visitor's User-Agent must match one.
    pub allow: Vec<String>,
    /// Regular expressions that are refused.
    pub deny: Vec<String>,
}

/// The options of a tcp endpoint, every field ngrok's clients send.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TcpOpts {
    /// Requested URL (`tcp://host:port`).
    #[serde(rename = "URL")]
    pub url: String,
    /// Requested `host:port`.
    pub addr: String,
    /// Requested port (protocol 2).
    pub remote_port: u16,
    /// PROXY protocol version for the upstream.
    pub proxy_proto: i64,
    /// CIDR allow and deny lists.
    #[serde(rename = "IPRestriction")]
    pub ip_restriction: Option<IpRestriction>,
    /// The legacy policy object (ngrok-go up to 1.9).
    pub policy: Option<serde_json::Value>,
    /// Traffic policy document (a JSON string or object): `on_tcp_connect` rules.
    pub traffic_policy: Option<serde_json::Value>,
}

/// The options of a tls endpoint, every field ngrok's clients send.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TlsOpts {
    /// Requested URL (`tls://host`).
    #[serde(rename = "URL")]
    pub url: String,
    /// Requested host name.
    pub domain: String,
    /// Requested host name (protocol 2).
    pub hostname: String,
    /// Requested label under the edge's base domain.
    pub subdomain: String,
    /// PROXY protocol version for the upstream.
    pub proxy_proto: i64,
    /// The agent checks client certificates itself (informational).
    #[serde(rename = "MutualTLSAtAgent")]
    pub mutual_tls_at_agent: bool,
    /// Client certificates checked at the edge (refused: the edge does not terminate tls
    /// endpoints).
    #[serde(rename = "MutualTLSAtEdge")]
    pub mutual_tls_at_edge: Option<serde_json::Value>,
    /// Certificate and key for TLS termination at the edge (refused: the edge does not take
    /// agents' keys).
    #[serde(rename = "TLSTermination")]
    pub tls_termination: Option<serde_json::Value>,
    /// CIDR allow and deny lists.
    #[serde(rename = "IPRestriction")]
    pub ip_restriction: Option<IpRestriction>,
    /// The legacy policy object (ngrok-go up to 1.9).
    pub policy: Option<serde_json::Value>,
    /// Traffic policy document (a JSON string or object): `on_tcp_connect` rules.
    pub traffic_policy: Option<serde_json::Value>,
}

/// Edge → client: the reply to [`Bind`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct BindResp {
    /// The client's endpoint id, echoed.
    #[serde(rename = "Id")]
    pub client_id: String,
    /// The public URL.
    #[serde(rename = "URL")]
    pub url: String,
    /// The protocol bound.
    pub proto: String,
    /// The client's options, echoed.
    pub opts: serde_json::Value,
    /// Failure, as `msg\nERR_NGROK_nnn`; empty on success.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Extra reply fields.
    pub extra: BindRespExtra,
}

/// Extra fields of [`BindResp`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct BindRespExtra {
    /// Resumption token (unused, always empty).
    pub token: Secret,
}

/// Client → edge: the legacy labeled bind, refused by warren with a clear error.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct StartTunnelWithLabel {
    /// Edge labels.
    pub labels: std::collections::HashMap<String, String>,
    /// Upstream description.
    pub forwards_to: String,
    /// Upstream protocol.
    pub forwards_proto: String,
    /// Metadata.
    pub metadata: String,
}

/// Reply to [`StartTunnelWithLabel`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct StartTunnelWithLabelResp {
    /// Tunnel id.
    pub id: String,
    /// Failure.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Client → edge: release an endpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Unbind {
    /// The client's endpoint id.
    #[serde(rename = "Id")]
    pub client_id: String,
}

/// Reply to [`Unbind`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UnbindResp {
    /// Failure; empty on success.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Client → edge: ask for server information.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SrvInfo {}

/// Reply to [`SrvInfo`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SrvInfoResp {
    /// Region or node name.
    pub region: String,
}

/// Edge → client: the header of a proxy stream, before the visitor's bytes. On the wire it is
/// an `i64` little-endian length followed by this JSON.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ProxyHeader {
    /// The client's endpoint id the visitor arrived on.
    pub id: String,
    /// The visitor's `ip:port`.
    pub client_addr: String,
    /// `http`, `https`, `tcp`, `tls`.
    pub proto: String,
    /// `"1"` tcp, `"2"` tls, `"3"` https (ngrok edge types); `"0"` otherwise.
    pub edge_type: String,
    /// True when the bytes are a TLS session the edge did not terminate.
    #[serde(rename = "PassthroughTLS")]
    pub passthrough_tls: bool,
}

impl ProxyHeader {
    /// Encodes the header with its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("proxy header serializes");
        let mut out = Vec::with_capacity(8 + json.len());
        out.extend_from_slice(&(json.len() as i64).to_le_bytes());
        out.extend_from_slice(&json);
        out
    }

    /// Validates the length prefix of a header; the JSON of that many bytes follows.
    pub fn decode_len(prefix: [u8; 8]) -> Result<usize, ProtoError> {
        let n = i64::from_le_bytes(prefix);
        if n < 0 || n as usize > MAX_PROXY_HEADER_LEN {
            return Err(ProtoError::TooLarge(n));
        }
        Ok(n as usize)
    }
}

/// Edge → client: stop the agent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Stop {}

/// Edge → client: restart the agent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Restart {}

/// Edge → client: update the agent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Update {
    /// Version to update to.
    pub version: String,
    /// Whether a new major version is acceptable.
    pub permit_major_version: bool,
}

/// Reply to [`Stop`], [`Restart`] and [`Update`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CommandResp {
    /// Failure; absent on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Edge → client: one endpoint was stopped by the edge.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct StopTunnel {
    /// The client's endpoint id.
    #[serde(rename = "Id")]
    pub client_id: String,
    /// Why.
    pub message: String,
    /// An `ERR_NGROK_nnn` code.
    pub error_code: Option<String>,
}

/// A message that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The JSON did not match the message.
    #[error("invalid {what} message: {source}")]
    Json {
        /// The message type expected.
        what: &'static str,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A length prefix was negative or over the limit.
    #[error("message length {0} is out of range")]
    TooLarge(i64),
    /// An RPC message grew past [`MAX_RPC_LEN`] without ending.
    #[error("the {what} message is larger than the {limit}-byte limit")]
    Oversized {
        /// The message type expected.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
}

/// Assembles one JSON RPC message from stream reads, with no I/O of its own.
///
/// ngrok clients write a request and wait for the reply without half-closing their side, so a
/// message ends where its JSON value ends; peers that do half-close end it at end of stream.
/// Both work: feed every read to [`MessageBuf::push`] and call [`MessageBuf::finish`] at EOF.
///
/// Each byte is looked at once: a small scanner follows strings and nesting to find where the
/// value ends, and only then is it parsed. (Parsing the whole buffer on every read let a peer
/// that drips its message one byte per frame make the edge do quadratic work.)
#[derive(Debug)]
pub struct MessageBuf {
    what: &'static str,
    limit: usize,
    buf: Vec<u8>,
    scan: Scan,
}

/// Where the scanner is in the JSON value.
#[derive(Debug, Default)]
struct Scan {
    /// Bytes of `buf` already looked at.
    seen: usize,
    /// Open `{` and `[`.
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The value started with `{` or `[` (anything else is parsed at end of stream).
    nested: bool,
}

impl Scan {
    /// Looks at `bytes` (the buffer from `self.seen` on); returns the buffer length at which
    /// the top-level value ended, if it did.
    fn advance(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            let at = self.seen + i;
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    self.nested = true;
                    self.depth += 1;
                }
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.nested && self.depth == 0 {
                        self.seen = at + 1;
                        return Some(at + 1);
                    }
                }
                _ => {}
            }
        }
        self.seen += bytes.len();
        None
    }
}

impl MessageBuf {
    /// A buffer for one `what` message of at most `limit` bytes.
    pub fn new(what: &'static str, limit: usize) -> MessageBuf {
        MessageBuf { what, limit, buf: Vec::new(), scan: Scan::default() }
    }

    /// Adds bytes; returns the message once a complete JSON value has arrived.
    pub fn push<T: serde::de::DeserializeOwned>(&mut self, bytes: &[u8]) -> Result<Option<T>, ProtoError> {
        if self.buf.len() + bytes.len() > self.limit {
            return Err(ProtoError::Oversized { what: self.what, limit: self.limit });
        }
        self.buf.extend_from_slice(bytes);
        let from = self.scan.seen;
        match self.scan.advance(&self.buf[from..]) {
            Some(end) => decode(self.what, &self.buf[..end]).map(Some),
            None => Ok(None),
        }
    }

    /// The peer half-closed: what arrived must be the whole message.
    pub fn finish<T: serde::de::DeserializeOwned>(self) -> Result<T, ProtoError> {
        decode(self.what, &self.buf)
    }
}

/// Parses one JSON message, naming the message type in the error. Keys match fields in any
/// case, as Go clients expect ([`fold`]); keys that match no field are ignored here (see
/// [`decode_checked`]).
pub fn decode<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, ProtoError> {
    decode_checked(what, bytes).map(|(t, _)| t)
}

/// [`decode`], also returning the paths of the keys that matched no field, for the caller to
/// refuse what it would otherwise drop.
pub fn decode_checked<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<(T, Vec<String>), ProtoError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|source| ProtoError::Json { what, source })?;
    fold::from_value(value).map_err(|source| ProtoError::Json { what, source })
}

/// Serializes one JSON message.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).expect("protocol messages serialize")
}

/// Formats an error the way ngrok clients parse it: the message, then the code on its own line.
pub fn error_text(msg: &str, code: &str) -> String {
    format!("{msg}\n\n{code}\n")
}

/// Picks the protocol version to answer in: the client's most preferred that the edge speaks.
pub fn choose_version(offered: &[String]) -> Option<&'static str> {
    offered.iter().find_map(|v| VERSIONS.iter().find(|s| **s == v.as_str()).copied())
}

/// Unix seconds as RFC 3339 UTC (without a date crate, for this one format).
pub fn rfc3339(secs: u64) -> String {
    match rfc3339_bytes(secs) {
        Ok(text) => String::from_utf8(text.to_vec()).expect("ASCII"),
        Err((y, m, d)) => {
            let rem = secs % 86_400;
            format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
        }
    }
}

/// Unix seconds as the 20 bytes of RFC 3339 UTC text, for years 0 to 9999 (the year, month
/// and day otherwise). Traffic events write it in place into their text.
pub fn rfc3339_bytes(secs: u64) -> Result<[u8; 20], (i64, i64, i64)> {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), to avoid a date crate for one format.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    if !(0..=9999).contains(&y) {
        return Err((y, m, d));
    }
    // Written digit by digit: timestamps are made per traffic event, where `format!` cost
    // thousands of instructions each.
    let mut out = *b"0000-00-00T00:00:00Z";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y as u64);
    put(5, 2, m as u64);
    put(8, 2, d as u64);
    put(11, 2, rem / 3600);
    put(14, 2, rem % 3600 / 60);
    put(17, 2, rem % 60);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_buf_ends_at_the_json_value_or_at_eof() {
        let mut m = MessageBuf::new("Unbind", 64);
        assert!(m.push::<Unbind>(br#"{"Id":"#).unwrap().is_none());
        let u: Unbind = m.push(br#""ep0"}"#).unwrap().unwrap();
        assert_eq!(u.client_id, "ep0");

        let mut m = MessageBuf::new("Unbind", 64);
        assert!(m.push::<Unbind>(br#"{"Id":"x""#).unwrap().is_none());
        assert!(m.finish::<Unbind>().is_err(), "a truncated message is an error at EOF");

        let mut m = MessageBuf::new("Unbind", 64);
        assert!(matches!(m.push::<Unbind>(b"{not json}"), Err(ProtoError::Json { .. })));
        let mut m = MessageBuf::new("Unbind", 64);
        assert!(matches!(m.push::<Unbind>(b"nonsense "), Ok(None)));
        assert!(m.finish::<Unbind>().is_err());

        let mut m = MessageBuf::new("Unbind", 8);
        assert!(matches!(m.push::<Unbind>(&[b' '; 9]), Err(ProtoError::Oversized { limit: 8, .. })));
    }

    /// Braces and quotes inside strings do not end the message; one byte at a time, the
    /// message ends exactly at its last byte; bytes after it are not part of it.
    #[test]
    fn message_buf_follows_strings_and_nesting_a_byte_at_a_time() {
        let msg = br#" {"Version":["3"],"ClientId":"}{][\"x\\","Extra":{"AuthToken":"a{b","Metadata":"{\"k\":[1]}"}}"#;
        let mut m = MessageBuf::new("Auth", 1024);
        for (i, b) in msg.iter().enumerate() {
            let got = m.push::<Auth>(std::slice::from_ref(b)).unwrap();
            assert_eq!(got.is_some(), i == msg.len() - 1, "byte {i}");
            if let Some(a) = got {
                assert_eq!(a.client_id, r#"}{]["x\"#);
                assert_eq!(a.extra.metadata, r#"{"k":[1]}"#);
            }
        }
        let mut m = MessageBuf::new("Unbind", 64);
        let u: Unbind = m.push(br#"{"Id":"a"}{"Id":"b"}"#).unwrap().unwrap();
        assert_eq!(u.client_id, "a", "the first value is the message");
    }

    #[test]
    fn auth_from_ngrok_sdk_parses() {
        let json = br#"{"Version":["3","2"],"ClientId":"","Extra":{"OS":"linux","Arch":"x86_64","AuthToken":"tok_secret","Version":"0.19.0","Hostname":"h","UserAgent":"ngrok-rust/0.19.0","Metadata":"","Cookie":"","HeartbeatInterval":10000000000,"HeartbeatTolerance":15000000000,"UpdateUnsupportedError":"x","StopUnsupportedError":"","RestartUnsupportedError":"","ProxyType":"","MutualTLS":false,"ServiceRun":false,"ConfigVersion":"","CustomInterface":false,"CustomCAs":false,"ClientType":"ngrok-rust"}}"#;
        let a: Auth = decode("Auth", json).unwrap();
        assert_eq!(a.extra.authtoken.0, "tok_secret");
        assert_eq!(a.extra.heartbeat_interval, 10_000_000_000);
        assert_eq!(choose_version(&a.version), Some("3"));
        assert!(!format!("{a:?}").contains("tok_secret"));
    }

    #[test]
    fn version_negotiation_answers_in_client_choice() {
        assert_eq!(choose_version(&["2".into()]), Some("2"));
        assert_eq!(choose_version(&["1".into(), "2".into(), "3".into()]), Some("2"));
        assert_eq!(choose_version(&["1".into()]), None);
    }

    #[test]
    fn bind_resp_shape_matches_ngrok() {
        let r = BindResp {
            client_id: "t1".into(),
            url: "https://a.example".into(),
            proto: "https".into(),
            opts: serde_json::json!({"Domain": "a.example"}),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_slice(&encode(&r)).unwrap();
        assert_eq!(v["Id"], "t1");
        assert_eq!(v["URL"], "https://a.example");
        assert_eq!(v["Opts"]["Domain"], "a.example");
        assert_eq!(v["Extra"]["Token"], "");
        assert!(v.get("Error").is_none());
    }

    #[test]
    fn proxy_header_round_trips() {
        let h = ProxyHeader {
            id: "t".into(),
            client_addr: "1.2.3.4:5".into(),
            proto: "https".into(),
            edge_type: "3".into(),
            passthrough_tls: false,
        };
        let b = h.encode();
        let n = ProxyHeader::decode_len(b[..8].try_into().unwrap()).unwrap();
        let back: ProxyHeader = decode("ProxyHeader", &b[8..8 + n]).unwrap();
        assert_eq!(back.client_addr, "1.2.3.4:5");
        assert!(String::from_utf8_lossy(&b[8..]).contains("\"PassthroughTLS\":false"));
        assert!(ProxyHeader::decode_len((-1i64).to_le_bytes()).is_err());
        assert!(ProxyHeader::decode_len((1i64 << 40).to_le_bytes()).is_err());
    }

    #[test]
    fn stream_types_round_trip() {
        for v in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0xFFFF_FFFF] {
            assert_eq!(StreamType::from_u32(v).to_u32(), v);
        }
    }
}
