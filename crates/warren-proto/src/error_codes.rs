//! The `ERR_NGROK_nnn` codes warren answers with, chosen to match what ngrok clients and their
//! users know (https://ngrok.com/docs/errors).

/// The authtoken is missing or not of the form warren issues.
pub const AUTHTOKEN_MALFORMED: &str = "ERR_NGROK_105";
/// The authtoken is well-formed but unknown, revoked or expired.
pub const AUTHTOKEN_INVALID: &str = "ERR_NGROK_107";
/// The client offered no protocol version the edge speaks.
pub const UNSUPPORTED_VERSION: &str = "ERR_NGROK_121";
/// An RPC arrived before Auth succeeded.
pub const NOT_AUTHENTICATED: &str = "ERR_NGROK_4018";
/// The requested endpoint is bound by another session.
pub const ENDPOINT_IN_USE: &str = "ERR_NGROK_334";
/// The requested name is not under a domain this edge serves.
pub const DOMAIN_NOT_SERVED: &str = "ERR_NGROK_320";
/// The requested TCP address is invalid, taken or outside the edge's port range.
pub const TCP_ADDR_UNAVAILABLE: &str = "ERR_NGROK_324";
/// The bind request was malformed or asked for something unsupported.
pub const BIND_INVALID: &str = "ERR_NGROK_9010";
/// No session serves the host the visitor asked for.
pub const ENDPOINT_NOT_FOUND: &str = "ERR_NGROK_3200";
/// The agent could not reach its upstream.
pub const UPSTREAM_UNREACHABLE: &str = "ERR_NGROK_8012";
/// The session serving the endpoint went away while the visitor waited.
pub const SESSION_GONE: &str = "ERR_NGROK_3004";
/// The client's address is refused by an IP restriction (warren's code: ngrok documents none).
pub const IP_RESTRICTED: &str = "ERR_WARREN_IP_RESTRICTED";
/// The requested name or TCP address is reserved by another account (warren's code).
pub const RESERVED_ELSEWHERE: &str = "ERR_WARREN_RESERVED";
/// A request reached a connection whose TLS handshake was made for another endpoint's TLS
/// settings (another SNI, or a reused connection); the visitor must connect again with the
/// endpoint's own name (warren's code; HTTP 421).
pub const MISDIRECTED: &str = "ERR_WARREN_MISDIRECTED";
/// The edge could not complete the request because a part of it failed (its store); the
/// client should try again (warren's code, so no client takes it for a refusal).
pub const UNAVAILABLE: &str = "ERR_WARREN_UNAVAILABLE";
/// A cloud endpoint's traffic policy reached its end without answering the request.
pub const CLOUD_POLICY_NON_TERMINATING: &str = "ERR_NGROK_6029";
