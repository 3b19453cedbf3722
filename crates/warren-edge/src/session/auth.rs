//! Auth: waiting for it (heartbeat streams may come first), the decision, resume, the reply.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use warren_mux::{ErrorCode, Mux, Stream};
use warren_proto::{self as proto, StreamType, error_codes as codes};
use warren_store::Credential;

use super::rpc::{read_request, reply};
use crate::Shared;
use crate::registry::AgentSession;

/// Why an Auth was refused. [`AuthError::code`] is the one place each maps to an ngrok code;
/// the message is what the agent shows.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// The request could not be read: malformed, too large, too slow.
    #[error("{0}")]
    Unreadable(String),
    /// No protocol version in common.
    #[error("unsupported protocol versions {0:?}; this edge speaks 3 and 2")]
    UnsupportedVersion(Vec<String>),
    /// No authtoken in the request.
    #[error("no authtoken was given; pass --authtoken or set WARREN_AUTHTOKEN")]
    NoAuthtoken,
    /// Too many wrong secrets from the address lately.
    #[error("too many wrong authtokens or API keys from {ip}; try again in {wait} s")]
    Throttled {
        /// The address.
        ip: IpAddr,
        /// Seconds until it may try again.
        wait: u64,
    },
    /// Unknown, revoked or expired, or its owner is gone.
    #[error("the authtoken is invalid, revoked or expired")]
    InvalidAuthtoken,
    /// An `agent` IP restriction of the account refuses the address.
    #[error("agent sessions from {ip} are not allowed by IP restriction {restriction}; ask an administrator")]
    IpRestriction {
        /// The address.
        ip: IpAddr,
        /// The restriction's id.
        restriction: String,
    },
    /// The authtoken's own IP policies refuse the address.
    #[error(
        "the authtoken {credential} may not be used from {ip}; its IP policies do not allow that address"
    )]
    TokenIpPolicy {
        /// The authtoken's id.
        credential: String,
        /// The address.
        ip: IpAddr,
    },
    /// The IP policies an admin set for the token's owner refuse the address.
    #[error("authtokens of this user may not be used from {ip}; an administrator limits where")]
    OwnerIpPolicy {
        /// The address.
        ip: IpAddr,
    },
    /// The store failed; the agent should try again.
    #[error("the edge could not check {0}; try again")]
    Unavailable(&'static str),
}

impl AuthError {
    /// The ngrok error code the agent sees (and decides by whether to retry).
    pub(crate) fn code(&self) -> &'static str {
        match self {
            AuthError::Unreadable(_) => codes::BIND_INVALID,
            AuthError::UnsupportedVersion(_) => codes::UNSUPPORTED_VERSION,
            AuthError::NoAuthtoken => codes::AUTHTOKEN_MALFORMED,
            AuthError::Throttled { .. } | AuthError::InvalidAuthtoken => codes::AUTHTOKEN_INVALID,
            AuthError::IpRestriction { .. }
            | AuthError::TokenIpPolicy { .. }
            | AuthError::OwnerIpPolicy { .. } => codes::IP_RESTRICTED,
            AuthError::Unavailable(_) => codes::UNAVAILABLE,
        }
    }

    /// The `Error` field of the reply.
    pub(crate) fn text(&self) -> String {
        proto::error_text(&self.to_string(), self.code())
    }
}

/// What a successful Auth decided.
#[derive(Debug)]
pub(super) struct Admitted {
    /// The protocol version to answer in.
    pub(super) version: &'static str,
    pub(super) credential: Credential,
    /// The name of the credential's account, told to the agent (ngrok's agent shows it).
    pub(super) account_name: String,
    /// The bind rules an admin set for the token's owner, checked at each Bind.
    pub(super) owner_acl: Option<Vec<String>>,
    pub(super) owner_ip_policy_ids: Vec<String>,
}

/// An Auth the edge admitted and has not answered yet: the answer goes out once the session
/// is registered, so a change made after the agent hears "welcome" always finds the session.
pub(super) struct Admission {
    remote: SocketAddr,
    auth: proto::Auth,
    stream: Stream,
    resp: proto::AuthResp,
    /// The registry's rules epoch before the decision.
    pub(super) decided_at: u64,
}

impl Admission {
    /// Answers the agent. With `decide_again` (the rules changed while the session was being
    /// registered) the Auth is decided once more first, and a refusal is answered instead.
    /// Returns whether the agent was welcomed.
    pub(super) async fn answer(mut self, shared: &Shared, decide_again: bool) -> bool {
        if decide_again && let Err(e) = decide(shared, &self.auth, self.remote).await {
            tracing::info!(remote = %self.remote, error = %e, "Auth refused: the rules changed while it was admitted");
            let _ = reply(&mut self.stream, &proto::AuthResp { error: e.text(), ..Default::default() }).await;
            return false;
        }
        reply(&mut self.stream, &self.resp).await.is_ok()
    }
}

/// Waits for Auth within the auth timeout. Returns the admitted session, not yet answered;
/// on failure the error reply has been written.
pub(super) async fn authenticate(
    shared: &Arc<Shared>,
    mux: &Mux,
    remote: SocketAddr,
) -> Option<(AgentSession, Admission)> {
    let deadline = tokio::time::Instant::now() + shared.config.limits.auth_timeout;
    loop {
        let mut stream = match tokio::time::timeout_at(deadline, mux.accept()).await {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(_) => {
                tracing::debug!(%remote, "no Auth within the auth timeout");
                return None;
            }
        };
        let ty = match tokio::time::timeout_at(deadline, warren_mux::typed::read_type(&mut stream)).await {
            Ok(Ok(t)) => StreamType::from_u32(t),
            _ => return None,
        };
        match ty {
            StreamType::Heartbeat => {
                tokio::spawn(warren_mux::typed::answer_heartbeats(stream));
            }
            StreamType::Auth => return handle_auth(shared, mux, stream, remote).await,
            other => {
                // Answer in the shape every reply shares, so clients show the reason.
                tracing::debug!(%remote, ?other, "RPC before Auth");
                let text =
                    proto::error_text("authenticate before any other request", codes::NOT_AUTHENTICATED);
                let _ = reply(&mut stream, &proto::UnbindResp { error: text }).await;
            }
        }
    }
}

async fn handle_auth(
    shared: &Arc<Shared>,
    mux: &Mux,
    mut stream: Stream,
    remote: SocketAddr,
) -> Option<(AgentSession, Admission)> {
    let decided_at = shared.sessions.registry.rules_epoch();
    let decided = match read_request::<proto::Auth>(shared, &mut stream, "Auth").await {
        Ok(auth) => decide(shared, &auth, remote).await.map(|a| (auth, a)),
        Err(e) => Err(AuthError::Unreadable(e)),
    };
    let (auth, admitted) = match decided {
        Ok(d) => d,
        Err(e) => {
            if matches!(e, AuthError::InvalidAuthtoken) {
                tracing::info!(%remote, "agent presented an invalid authtoken");
            } else {
                tracing::info!(%remote, error = %e, "Auth refused");
            }
            let _ = reply(&mut stream, &proto::AuthResp { error: e.text(), ..Default::default() }).await;
            return None;
        }
    };
    resume(shared, &auth, &admitted.credential).await;
    let cookie = {
        use base64::Engine;
        use rand::Rng;
        let mut raw = [0u8; 32];
        rand::rng().fill(&mut raw);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    };
    let id = warren_store::generate_id("ts");
    let resp = proto::AuthResp {
        version: admitted.version.into(),
        client_id: id.clone(),
        error: String::new(),
        extra: proto::AuthRespExtra {
            version: Some(env!("CARGO_PKG_VERSION").into()),
            region: Some("local".into()),
            node: Some(shared.node_id.clone()),
            cookie: Some(proto::Secret(cookie.clone())),
            account_name: Some(admitted.account_name.clone()),
            session_duration: None,
            plan_name: Some("warren".into()),
            banner: None,
        },
    };
    let info = crate::registry::SessionInfo {
        started_at: warren_store::now_rfc3339(),
        agent_version: auth.extra.version.chars().take(64).collect(),
        os: auth.extra.os.chars().take(64).collect(),
        metadata: auth.extra.metadata.chars().take(4096).collect(),
    };
    let session = AgentSession {
        id,
        mux: mux.clone(),
        account_id: admitted.credential.account_id.clone(),
        remote,
        credential: admitted.credential,
        info,
        resume_hash: warren_store::hash_secret(&cookie),
        owner_acl: admitted.owner_acl,
        owner_ip_policy_ids: admitted.owner_ip_policy_ids,
    };
    Some((session, Admission { remote, auth, stream, resp, decided_at }))
}

/// Decides an Auth from the request, the address it came from and the edge's state: the
/// protocol version, the authtoken (throttled per address), the account's `agent` IP
/// restrictions, the token's IP policies and those an admin set for its owner.
pub(super) async fn decide(
    shared: &Shared,
    auth: &proto::Auth,
    remote: SocketAddr,
) -> Result<Admitted, AuthError> {
    let ip = remote.ip();
    let version = proto::choose_version(&auth.version)
        .ok_or_else(|| AuthError::UnsupportedVersion(auth.version.clone()))?;
    let token = auth.extra.authtoken.0.trim();
    if token.is_empty() {
        return Err(AuthError::NoAuthtoken);
    }
    if let Some(wait) = shared.accounts.auth_failures.blocked(ip, std::time::Instant::now()) {
        return Err(AuthError::Throttled { ip, wait });
    }
    let credential = match shared.store.verify_credential(token).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            shared.accounts.auth_failures.failed(ip, std::time::Instant::now());
            return Err(AuthError::InvalidAuthtoken);
        }
        Err(e) => {
            shared.metrics.store_errors.inc();
            tracing::error!(error = %e, "store failed while verifying an authtoken");
            return Err(AuthError::Unavailable("the authtoken"));
        }
    };
    // IP restrictions of type `agent` apply before anything else of the session.
    match shared.accounts.ip_rules.check(&shared.store, &credential.account_id, "agent", ip).await {
        Ok(warren_store::IpDecision::Allow) => {}
        Ok(warren_store::IpDecision::Deny { restriction, enforced: false }) => {
            tracing::warn!(%remote, %restriction, "agent session from an address outside an IP restriction (log only; allowed)");
        }
        Ok(warren_store::IpDecision::Deny { restriction, enforced: true }) => {
            return Err(AuthError::IpRestriction { ip, restriction });
        }
        Err(e) => {
            shared.metrics.store_errors.inc();
            tracing::error!(error = %e, "store failed while checking IP restrictions");
            return Err(AuthError::Unavailable("its IP restrictions"));
        }
    }
    // The authtoken's own IP policies: where this token may be used from.
    if !credential.ip_policy_ids.is_empty() {
        match shared.store.ip_policies_allow(&credential.account_id, &credential.ip_policy_ids, ip).await {
            Ok(true) => {}
            Ok(false) => return Err(AuthError::TokenIpPolicy { credential: credential.id.clone(), ip }),
            Err(e) => {
                shared.metrics.store_errors.inc();
                tracing::error!(error = %e, "store failed while checking an authtoken's IP policies");
                return Err(AuthError::Unavailable("its IP policies"));
            }
        }
    }
    // What the token's owner may do at most, as an admin set it: IP policies now, bind rules
    // at each Bind.
    let (mut owner_acl, mut owner_ip_policy_ids) = (None, Vec::new());
    if let Some(owner) = &credential.owner_id {
        let user = shared.store.get_user(&credential.account_id, owner).await.map_err(|e| {
            // The owner is gone (its tokens go with it) or the store failed: no session.
            tracing::warn!(error = %e, credential = %credential.id, "authtoken owner not readable; refusing");
            AuthError::InvalidAuthtoken
        })?;
        if !user.authtoken_ip_policy_ids.is_empty() {
            let allowed = shared
                .store
                .ip_policies_allow(&credential.account_id, &user.authtoken_ip_policy_ids, ip)
                .await;
            if !matches!(allowed, Ok(true)) {
                return Err(AuthError::OwnerIpPolicy { ip });
            }
        }
        owner_acl = user.authtoken_acl;
        owner_ip_policy_ids = user.authtoken_ip_policy_ids;
    }
    let account_name = match shared.store.account(&credential.account_id).await {
        Ok(Some(a)) => a.name,
        // A credential outlives its account only if the store was edited by hand.
        Ok(None) => return Err(AuthError::InvalidAuthtoken),
        Err(e) => {
            shared.metrics.store_errors.inc();
            tracing::error!(error = %e, "store failed while reading an authtoken's account");
            return Err(AuthError::Unavailable("the authtoken's account"));
        }
    };
    Ok(Admitted { version, credential, account_name, owner_acl, owner_ip_policy_ids })
}

/// Resume: a reconnecting agent presents its previous session id and the cookie the edge
/// gave that session. The old session is probably a dead connection the edge has not noticed
/// yet; it is closed so its endpoints can be bound again at once instead of failing with
/// "already bound". Only the same authtoken with the session's own cookie may do this: a
/// session id is visible to every API reader of the account.
async fn resume(shared: &Shared, auth: &proto::Auth, credential: &Credential) {
    let cookie = auth.extra.cookie.0.as_str();
    if auth.client_id.is_empty() || cookie.is_empty() {
        return;
    }
    if let Some(old) = shared.sessions.registry.session_for_resume(&auth.client_id, &credential.id, cookie) {
        tracing::info!(session = %old.id, "agent resumed; closing its previous connection");
        old.mux.close(ErrorCode::None, "session resumed elsewhere");
        shared.end_session(&old.id).await;
    } else if let Ok(old) = shared.store.get_tunnel_session(&credential.account_id, &auth.client_id).await
        && old.credential_id == credential.id
        && crate::registry::cookie_matches(cookie, &old.resume_hash)
    {
        // Held by another node: free its names now and ask that node to close it.
        tracing::info!(session = %old.id, node = %old.node_id, "agent resumed from another node's session");
        let _ = shared.store.delete_tunnel_session(&old.id).await;
        let _ = shared
            .store
            .queue_session_command(&old.node_id, &old.id, warren_store::SessionCommand::Stop)
            .await;
    }
}
