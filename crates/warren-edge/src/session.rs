//! Agent sessions: TLS on the connect listener, then muxado. The first RPC must be Auth
//! (heartbeat streams may come first, as ngrok clients open them at once); after it, Bind,
//! Unbind and SrvInfo. Every RPC runs in its own task with a read timeout and a size limit, so
//! a slow or broken stream never holds up the session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use warren_mux::{ErrorCode, Mux, Role, Stream};
use warren_proto::{self as proto, StreamType, error_codes as codes};

use crate::registry::{AgentSession, BindRefused, Endpoint, EndpointKey, Proto};
use crate::{Shared, ingress_tcp};

/// Accepts agent connections until shutdown.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let stop = crate::shutting_down(shared.shutdown.clone());
    tokio::pin!(stop);
    loop {
        let (tcp, remote, permit) = tokio::select! {
            _ = &mut stop => return,
            c = crate::conn_limit::accept(&listener, &shared.session_limit, "agent listener") => c,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            serve_connection(shared, tcp, remote).await;
            drop(permit);
        });
    }
}

async fn serve_connection(shared: Arc<Shared>, mut tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let Some(remote) = crate::client_addr::resolve(&shared, &mut tcp, peer).await else { return };
    serve_agent(shared, tcp, remote).await;
}

/// One agent connection, from its first TLS byte (on the connect listener, or replayed by
/// the shared TLS port's SNI front).
pub(crate) async fn serve_agent<IO>(shared: Arc<Shared>, io: IO, remote: SocketAddr)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tls =
        match tokio::time::timeout(shared.config.limits.handshake_timeout, shared.connect_tls.accept(io))
            .await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "agent TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "agent TLS handshake timed out");
                return;
            }
        };
    // Until Auth succeeds the peer is nobody: it may hold a few streams and a few KiB.
    let limits = &shared.config.limits;
    let pre_auth = warren_mux::Limits {
        max_streams: limits.pre_auth_streams,
        accept_backlog: limits.pre_auth_streams,
        max_buffered: limits.pre_auth_buffer,
    };
    let mux = warren_mux::start(tls, Role::Server, warren_mux::Config::default().with_limits(pre_auth));
    let Some(session) = authenticate(&shared, &mux, remote).await else {
        // Let the error reply and GOAWAY drain before the transport closes.
        mux.close(ErrorCode::None, "authentication failed");
        let _ = tokio::time::timeout(Duration::from_secs(5), mux.closed()).await;
        return;
    };
    let session = Arc::new(session);
    mux.set_limits(warren_mux::Limits {
        max_buffered: limits.session_buffer,
        ..warren_mux::Config::default().limits()
    });
    let row = warren_store::TunnelSession {
        id: session.id.clone(),
        account_id: session.account_id.clone(),
        node_id: shared.node_id.clone(),
        credential_id: session.credential.id.clone(),
        ip: remote.ip().to_string(),
        agent_version: session.info.agent_version.clone(),
        os: session.info.os.clone(),
        metadata: session.info.metadata.clone(),
        started_at: session.info.started_at.clone(),
        resume_hash: session.resume_hash.to_vec(),
    };
    if let Err(e) = shared.store.insert_tunnel_session(&row).await {
        tracing::error!(error = %e, "store failed while recording a session; closing it");
        mux.close(ErrorCode::Internal, "the edge could not record the session");
        return;
    }
    shared.registry.add_session(session.clone());
    tracing::info!(session = %session.id, %remote, "agent session started");

    let heartbeats = {
        let mux = mux.clone();
        let (interval, tolerance) = (shared.config.heartbeat_interval, shared.config.heartbeat_tolerance);
        async move { warren_mux::typed::run_heartbeats(&mux, interval, tolerance).await }
    };
    tokio::select! {
        _ = serve_rpcs(&shared, &session) => {}
        e = heartbeats => {
            tracing::info!(session = %session.id, error = %e, "agent heartbeat failed; closing session");
            mux.close(ErrorCode::None, "heartbeat timeout");
        }
    }
    // However it ended (the peer's GOAWAY, a heartbeat timeout, a stop), the transport goes
    // too: a peer that sent GOAWAY and then nothing must not keep its socket.
    mux.close(ErrorCode::None, "session ended");
    shared.end_session(&session.id).await;
    tracing::info!(session = %session.id, remote = %session.remote, "agent session ended");
}

/// Waits for Auth within the auth timeout. Returns the session on success; on failure the
/// error reply has been written.
async fn authenticate(shared: &Arc<Shared>, mux: &Mux, remote: SocketAddr) -> Option<AgentSession> {
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
) -> Option<AgentSession> {
    let auth: proto::Auth = match read_request(shared, &mut stream, "Auth").await {
        Ok(a) => a,
        Err(text) => {
            let _ = reply(&mut stream, &proto::AuthResp { error: text, ..Default::default() }).await;
            return None;
        }
    };
    let fail =
        |msg: &str, code: &str| proto::AuthResp { error: proto::error_text(msg, code), ..Default::default() };
    let Some(version) = proto::choose_version(&auth.version) else {
        let r = fail(
            &format!("unsupported protocol versions {:?}; this edge speaks 3 and 2", auth.version),
            codes::UNSUPPORTED_VERSION,
        );
        let _ = reply(&mut stream, &r).await;
        return None;
    };
    let token = auth.extra.authtoken.0.trim();
    if token.is_empty() {
        let r = fail(
            "no authtoken was given; pass --authtoken or set WARREN_AUTHTOKEN",
            codes::AUTHTOKEN_MALFORMED,
        );
        let _ = reply(&mut stream, &r).await;
        return None;
    }
    if let Some(wait) = shared.auth_failures.blocked(remote.ip(), std::time::Instant::now()) {
        let r = fail(
            &format!("too many wrong authtokens or API keys from {}; try again in {wait} s", remote.ip()),
            codes::AUTHTOKEN_INVALID,
        );
        let _ = reply(&mut stream, &r).await;
        return None;
    }
    let credential = match shared.store.verify_credential(token).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            shared.auth_failures.failed(remote.ip(), std::time::Instant::now());
            tracing::info!(%remote, "agent presented an invalid authtoken");
            let r = fail("the authtoken is invalid, revoked or expired", codes::AUTHTOKEN_INVALID);
            let _ = reply(&mut stream, &r).await;
            return None;
        }
        Err(e) => {
            tracing::error!(error = %e, "store failed while verifying an authtoken");
            let r = fail("the edge could not check the authtoken; try again", codes::AUTHTOKEN_INVALID);
            let _ = reply(&mut stream, &r).await;
            return None;
        }
    };
    // IP restrictions of type `agent` apply before anything else of the session.
    match shared.ip_rules.check(&shared.store, &credential.account_id, "agent", remote.ip()).await {
        Ok(warren_store::IpDecision::Allow) => {}
        Ok(warren_store::IpDecision::Deny { restriction, enforced: false }) => {
            tracing::warn!(%remote, %restriction, "agent session from an address outside an IP restriction (log only; allowed)");
        }
        Ok(warren_store::IpDecision::Deny { restriction, enforced: true }) => {
            tracing::info!(%remote, %restriction, "agent session refused by IP restriction");
            let r = fail(
                &format!(
                    "agent sessions from {} are not allowed by IP restriction {restriction}; ask an administrator",
                    remote.ip()
                ),
                codes::IP_RESTRICTED,
            );
            let _ = reply(&mut stream, &r).await;
            return None;
        }
        Err(e) => {
            tracing::error!(error = %e, "store failed while checking IP restrictions");
            let r = fail("the edge could not check its IP restrictions; try again", codes::AUTHTOKEN_INVALID);
            let _ = reply(&mut stream, &r).await;
            return None;
        }
    }
    // The authtoken's own IP policies: where this token may be used from.
    if !credential.ip_policy_ids.is_empty() {
        match shared
            .store
            .ip_policies_allow(&credential.account_id, &credential.ip_policy_ids, remote.ip())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(%remote, credential = %credential.id, "agent session refused by the authtoken's IP policies");
                let r = fail(
                    &format!(
                        "the authtoken {} may not be used from {}; its IP policies do not allow that address",
                        credential.id,
                        remote.ip()
                    ),
                    codes::IP_RESTRICTED,
                );
                let _ = reply(&mut stream, &r).await;
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, "store failed while checking an authtoken's IP policies");
                let r = fail("the edge could not check its IP policies; try again", codes::AUTHTOKEN_INVALID);
                let _ = reply(&mut stream, &r).await;
                return None;
            }
        }
    }
    // What the token's owner may do at most, as an admin set it: IP policies now, bind rules
    // at each Bind.
    let mut owner_acl = None;
    let mut owner_ip_policy_ids = Vec::new();
    if let Some(owner) = &credential.owner_id {
        match shared.store.get_user(&credential.account_id, owner).await {
            Ok(user) => {
                if !user.authtoken_ip_policy_ids.is_empty() {
                    let allowed = shared
                        .store
                        .ip_policies_allow(&credential.account_id, &user.authtoken_ip_policy_ids, remote.ip())
                        .await;
                    if !matches!(allowed, Ok(true)) {
                        tracing::info!(%remote, user = %owner, "agent session refused by its user's IP policies");
                        let r = fail(
                            &format!(
                                "authtokens of this user may not be used from {}; an administrator limits where",
                                remote.ip()
                            ),
                            codes::IP_RESTRICTED,
                        );
                        let _ = reply(&mut stream, &r).await;
                        return None;
                    }
                }
                owner_acl = user.authtoken_acl;
                owner_ip_policy_ids = user.authtoken_ip_policy_ids;
            }
            Err(e) => {
                // The owner is gone (its tokens go with it) or the store failed: no session.
                tracing::warn!(error = %e, credential = %credential.id, "authtoken owner not readable; refusing");
                let r = fail("the authtoken is invalid, revoked or expired", codes::AUTHTOKEN_INVALID);
                let _ = reply(&mut stream, &r).await;
                return None;
            }
        }
    }
    // Resume: a reconnecting agent presents its previous session id and the cookie the edge
    // gave that session. The old session is probably a dead connection the edge has not
    // noticed yet; it is closed so its endpoints can be bound again at once instead of
    // failing with "already bound". Only the same authtoken with the session's own cookie
    // may do this: a session id is visible to every API reader of the account.
    let cookie = auth.extra.cookie.0.as_str();
    if !auth.client_id.is_empty() && !cookie.is_empty() {
        if let Some(old) = shared.registry.session_for_resume(&auth.client_id, &credential.id, cookie) {
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
    let new_cookie = {
        use base64::Engine;
        use rand::Rng;
        let mut raw = [0u8; 32];
        rand::rng().fill(&mut raw);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    };
    let id = warren_store::generate_id("ts");
    let resp = proto::AuthResp {
        version: version.into(),
        client_id: id.clone(),
        error: String::new(),
        extra: proto::AuthRespExtra {
            version: Some(env!("CARGO_PKG_VERSION").into()),
            region: Some("local".into()),
            cookie: Some(proto::Secret(new_cookie.clone())),
            account_name: Some("default".into()),
            session_duration: None,
            plan_name: Some("warren".into()),
            banner: None,
        },
    };
    if reply(&mut stream, &resp).await.is_err() {
        return None;
    }
    let info = crate::registry::SessionInfo {
        started_at: warren_store::now_rfc3339(),
        agent_version: auth.extra.version.chars().take(64).collect(),
        os: auth.extra.os.chars().take(64).collect(),
        metadata: auth.extra.metadata.chars().take(4096).collect(),
    };
    Some(AgentSession {
        id,
        mux: mux.clone(),
        account_id: credential.account_id.clone(),
        remote,
        credential,
        info,
        resume_hash: warren_store::hash_secret(&new_cookie),
        owner_acl,
        owner_ip_policy_ids,
    })
}

async fn serve_rpcs(shared: &Arc<Shared>, session: &Arc<AgentSession>) {
    while let Some(mut stream) = session.mux.accept().await {
        let shared = shared.clone();
        let session = session.clone();
        tokio::spawn(async move {
            let ty = match tokio::time::timeout(
                shared.config.limits.rpc_timeout,
                warren_mux::typed::read_type(&mut stream),
            )
            .await
            {
                Ok(Ok(t)) => StreamType::from_u32(t),
                _ => return,
            };
            match ty {
                StreamType::Heartbeat => warren_mux::typed::answer_heartbeats(stream).await,
                StreamType::Bind => handle_bind(&shared, &session, stream).await,
                StreamType::Unbind => handle_unbind(&shared, &session, stream).await,
                StreamType::SrvInfo => {
                    let _ = reply(&mut stream, &proto::SrvInfoResp { region: "local".into() }).await;
                }
                StreamType::BindLabeled => {
                    let text = proto::error_text(
                        "labeled tunnels (edges) are not supported by warren; bind an endpoint URL instead",
                        codes::BIND_INVALID,
                    );
                    let _ = reply(
                        &mut stream,
                        &proto::StartTunnelWithLabelResp { error: text, ..Default::default() },
                    )
                    .await;
                }
                other => {
                    tracing::debug!(session = %session.id, ?other, "unexpected stream type; resetting stream");
                    stream.reset(ErrorCode::Protocol);
                }
            }
        });
    }
}

async fn handle_bind(shared: &Arc<Shared>, session: &Arc<AgentSession>, mut stream: Stream) {
    // Read as JSON first: the options are decoded per endpoint kind, and every key of the
    // message that matches no field is refused when set (bind_options.rs).
    let decoded = read_request::<serde_json::Value>(shared, &mut stream, "Bind").await.and_then(|raw| {
        proto::fold::from_value::<proto::Bind>(raw.clone())
            .map(|(bind, unknown)| (bind, raw, unknown))
            .map_err(|e| proto::error_text(&format!("invalid Bind message: {e}"), codes::BIND_INVALID))
    });
    let (mut bind, raw, unknown) = match decoded {
        Ok(d) => d,
        Err(text) => {
            let _ = reply(&mut stream, &proto::BindResp { error: text, ..Default::default() }).await;
            return;
        }
    };
    // `Opts` is decoded per endpoint kind.
    let unknown: Vec<String> = unknown.into_iter().filter(|p| !p.eq_ignore_ascii_case("Opts")).collect();
    // ngrok SDKs leave the Id empty and use the one the edge answers with for proxy streams.
    if bind.client_id.is_empty() {
        bind.client_id = warren_store::generate_id("ep");
    }
    let resp = match bind_endpoint(shared, session, &bind, &raw, &unknown).await {
        Ok(url) => proto::BindResp {
            client_id: bind.client_id.clone(),
            url,
            proto: bind.proto.clone(),
            opts: bind.opts.clone(),
            ..Default::default()
        },
        Err(text) => proto::BindResp { client_id: bind.client_id.clone(), error: text, ..Default::default() },
    };
    if !resp.error.is_empty() {
        tracing::info!(session = %session.id, proto = %bind.proto, error = %resp.error.lines().next().unwrap_or(""), "bind refused");
    }
    let _ = reply(&mut stream, &resp).await;
}

/// Binds the requested endpoint; the error is formatted for the client.
async fn bind_endpoint(
    shared: &Arc<Shared>,
    session: &Arc<AgentSession>,
    bind: &proto::Bind,
    raw: &serde_json::Value,
    unknown: &[String],
) -> Result<String, String> {
    let invalid = |msg: String| proto::error_text(&msg, codes::BIND_INVALID);
    if bind.client_id.len() > 256 {
        return Err(invalid("the bind request's Id is longer than 256 characters".into()));
    }
    let max = shared.config.limits.max_endpoints_per_session;
    match bind.proto.as_str() {
        "http" | "https" => {
            let proto = if bind.proto == "http" { Proto::Http } else { Proto::Https };
            let opts: proto::HttpOpts =
                crate::bind_options::decode_opts(raw, &bind.proto).map_err(|e| invalid(e))?;
            let extras = crate::bind_options::http(bind, &opts, raw, unknown).map_err(invalid)?;
            let host = requested_host(shared, &opts.url, &opts.domain, &opts.hostname, &opts.subdomain)?;
            let host = match host {
                Some(h) => h,
                None if session.may_bind_any() => random_host(shared, proto).await?,
                None => {
                    return Err(not_allowed(session, "a random name"));
                }
            };
            if !session.may_bind(&host) {
                return Err(not_allowed(session, &host));
            }
            check_domain_reservation(shared, session, &host).await?;
            let url = match (proto, shared.https_port, shared.http_port) {
                (Proto::Https, 443, _) => format!("https://{host}"),
                (Proto::Https, p, _) => format!("https://{host}:{p}"),
                (_, _, Some(80)) => format!("http://{host}"),
                (_, _, Some(p)) => format!("http://{host}:{p}"),
                (_, _, None) => {
                    return Err(invalid("this edge has no plain http listener; use an https:// URL".into()));
                }
            };
            let policy = crate::policy::compile_for_bind(
                shared,
                session,
                proto.as_str(),
                extras.policy.as_ref(),
                opts.traffic_policy.as_ref(),
            )
            .await?;
            let tls = match crate::endpoint_tls::EdgeTls::for_bind(&opts, policy.account.as_ref())
                .map_err(invalid)?
            {
                None => None,
                Some(_) if proto == Proto::Http => {
                    return Err(invalid(
                        "TLS settings need an https endpoint; this one is plain http".into(),
                    ));
                }
                Some(t) => {
                    Some(t.server_config(crate::tls::provider(), shared.certs.clone()).map_err(invalid)?)
                }
            };
            let (policy, ip_policies) = (policy.chain, policy.ip_policies);
            let id = warren_store::generate_id("ep");
            let ep = Endpoint {
                info: crate::policy::endpoint_info(&id, &url, proto.as_str()),
                id,
                session: session.clone(),
                client_id: bind.client_id.clone(),
                proto,
                url: url.clone(),
                key: EndpointKey::Host(proto, host.clone()),
                tls,
                policy,
                ip_policies,
                proxy_proto: 0,
            };
            let ep = shared.registry.bind(ep, max).map_err(|r| refused(r, &url))?;
            record_endpoint(shared, &ep).await?;
            tracing::info!(session = %session.id, %url, "endpoint bound");
            Ok(url)
        }
        "tcp" => {
            let opts: proto::TcpOpts =
                crate::bind_options::decode_opts(raw, "tcp").map_err(|e| invalid(e))?;
            let extras = crate::bind_options::tcp(bind, &opts, raw, unknown).map_err(invalid)?;
            let wanted = requested_port(&opts).map_err(invalid)?;
            match wanted {
                Some(p) if !session.may_bind(&format!("{}:{p}", shared.config.tcp_host)) => {
                    return Err(not_allowed(session, &format!("{}:{p}", shared.config.tcp_host)));
                }
                None if !session.may_bind_any() => {
                    return Err(not_allowed(session, "a random tcp address"));
                }
                _ => {}
            }
            let for_bind = crate::policy::compile_for_bind(
                shared,
                session,
                "tcp",
                extras.policy.as_ref(),
                opts.traffic_policy.as_ref(),
            )
            .await?;
            ingress_tcp::bind(shared, session, &bind.client_id, wanted, for_bind, extras.proxy_proto).await
        }
        "tls" => {
            let opts: proto::TlsOpts =
                crate::bind_options::decode_opts(raw, "tls").map_err(|e| invalid(e))?;
            let extras = crate::bind_options::tls(bind, &opts, raw, unknown).map_err(invalid)?;
            if opts.tls_termination.as_ref().is_some_and(|t| !t.is_null()) {
                return Err(invalid(
                    "TLS termination at the edge with the agent's key is not supported: the edge never holds \
                     your key. Terminate at the agent (warren tls --crt/--key) or in the upstream"
                        .into(),
                ));
            }
            let host = requested_host(shared, &opts.url, &opts.domain, &opts.hostname, &opts.subdomain)?;
            let host = match host {
                Some(h) => h,
                None if session.may_bind_any() => random_host(shared, Proto::Tls).await?,
                None => return Err(not_allowed(session, "a random name")),
            };
            if !session.may_bind(&host) {
                return Err(not_allowed(session, &host));
            }
            check_domain_reservation(shared, session, &host).await?;
            let url = match shared.https_port {
                443 => format!("tls://{host}"),
                p => format!("tls://{host}:{p}"),
            };
            let for_bind = crate::policy::compile_for_bind(
                shared,
                session,
                "tls",
                extras.policy.as_ref(),
                opts.traffic_policy.as_ref(),
            )
            .await?;
            let id = warren_store::generate_id("ep");
            let ep = Endpoint {
                info: crate::policy::endpoint_info(&id, &url, "tls"),
                id,
                session: session.clone(),
                client_id: bind.client_id.clone(),
                proto: Proto::Tls,
                url: url.clone(),
                key: EndpointKey::Host(Proto::Tls, host),
                tls: None,
                policy: for_bind.chain,
                ip_policies: for_bind.ip_policies,
                proxy_proto: extras.proxy_proto,
            };
            let ep = shared.registry.bind(ep, max).map_err(|r| refused(r, &url))?;
            record_endpoint(shared, &ep).await?;
            tracing::info!(session = %session.id, %url, "endpoint bound");
            Ok(url)
        }
        other => Err(invalid(format!("unknown endpoint protocol {other:?}; use http, https, tcp or tls"))),
    }
}

/// Records a newly bound endpoint in the store, where its URL is unique across every edge
/// node. If another node holds the URL, or the store fails, the bind is undone.
pub(crate) async fn record_endpoint(shared: &Shared, ep: &Endpoint) -> Result<(), String> {
    let row = warren_store::LiveEndpoint {
        id: ep.id.clone(),
        account_id: ep.session.account_id.clone(),
        session_id: ep.session.id.clone(),
        client_id: ep.client_id.clone(),
        proto: ep.proto.as_str().into(),
        url: ep.url.clone(),
        route_key: match &ep.key {
            EndpointKey::Host(proto, host) => format!("{}://{host}", proto.as_str()),
            EndpointKey::Port(_) => ep.url.clone(),
        },
        host: match &ep.key {
            EndpointKey::Host(_, host) => host.clone(),
            EndpointKey::Port(_) => String::new(),
        },
        created_at: warren_store::now_rfc3339(),
    };
    let mut result = shared.store.insert_endpoint(&row).await;
    if matches!(result, Err(warren_store::StoreError::Conflict(_)))
        && holder_is_stale(shared, &row.route_key).await
    {
        result = shared.store.insert_endpoint(&row).await;
    }
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            shared.registry.unbind(&ep.session.id, &ep.client_id);
            match e {
                warren_store::StoreError::Conflict(_) => Err(refused(BindRefused::InUse, &ep.url)),
                e => {
                    tracing::error!(error = %e, "store failed while recording an endpoint");
                    Err(proto::error_text(
                        "the edge could not record the endpoint; try again",
                        codes::BIND_INVALID,
                    ))
                }
            }
        }
    }
}

/// Whether the row holding `route_key` belongs to a session of this node that has already
/// ended (its rows are being removed as the new bind arrives). If so the rows are removed now
/// and the bind may retry; a live holder, or one on another node, is a real conflict.
async fn holder_is_stale(shared: &Shared, route_key: &str) -> bool {
    let Ok(Some(holder)) = shared.store.endpoint_holder(route_key).await else { return false };
    if shared.registry.session(&holder).is_some() {
        return false;
    }
    match shared.store.tunnel_session_node(&holder).await {
        Ok(Some(node)) if node == shared.node_id => shared.store.delete_tunnel_session(&holder).await.is_ok(),
        _ => false,
    }
}

/// The authtoken's ACL does not cover `what`.
fn not_allowed(session: &AgentSession, what: &str) -> String {
    let cred = &session.credential;
    let msg = match &session.owner_acl {
        Some(ceiling) if cred.acl.is_empty() || warren_store::acl_allows(&cred.acl, what) => format!(
            "the authtoken {} may not bind {what}: its owner's authtokens may bind only: {} (an administrator sets this)",
            cred.id,
            ceiling.join(", ")
        ),
        _ => format!(
            "the authtoken {} may not bind {what}; its ACL allows only: {}",
            cred.id,
            cred.acl.join(", ")
        ),
    };
    proto::error_text(&msg, codes::BIND_INVALID)
}

pub(crate) fn refused(r: BindRefused, url: &str) -> String {
    match r {
        BindRefused::InUse => proto::error_text(
            &format!("the endpoint {url} is already online in another session"),
            codes::ENDPOINT_IN_USE,
        ),
        BindRefused::DuplicateId => {
            proto::error_text("this session already has an endpoint with that Id", codes::BIND_INVALID)
        }
        BindRefused::TooMany => {
            proto::error_text("this session has reached its endpoint limit", codes::BIND_INVALID)
        }
        BindRefused::SessionGone => proto::error_text("the session is closing", codes::BIND_INVALID),
    }
}

/// The host an http(s) bind asks for, checked against the domains the edge serves.
fn requested_host(
    shared: &Shared,
    url: &str,
    domain: &str,
    hostname: &str,
    subdomain: &str,
) -> Result<Option<String>, String> {
    let base = &shared.config.base_domain;
    let from_url = url.split_once("://").map_or(url, |(_, rest)| rest).split(['/', ':']).next().unwrap_or("");
    let host = [from_url, domain, hostname].into_iter().find(|s| !s.is_empty()).map(str::to_ascii_lowercase);
    let host = match (host, subdomain.is_empty()) {
        (Some(h), _) => h,
        (None, false) => format!("{}.{base}", subdomain.to_ascii_lowercase()),
        (None, true) => return Ok(None),
    };
    let host = host.trim_end_matches('.').to_owned();
    if !crate::config::is_valid_hostname(&host) {
        return Err(proto::error_text(&format!("{host:?} is not a valid host name"), codes::BIND_INVALID));
    }
    if shared.config.connect_hostnames.contains(&host) {
        return Err(proto::error_text(
            &format!("{host} is this edge's connect hostname and cannot be an endpoint"),
            codes::BIND_INVALID,
        ));
    }
    Ok(Some(host))
}

/// Whether `host` is a name strictly under `domain`.
pub(crate) fn under_domain(host: &str, domain: &str) -> bool {
    host.len() > domain.len() + 1
        && host.ends_with(domain)
        && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
}

/// A name reserved by another account is refused; a name outside the base domain (a custom
/// domain) must be reserved by the session's own account first.
async fn check_domain_reservation(shared: &Shared, session: &AgentSession, host: &str) -> Result<(), String> {
    let base = &shared.config.base_domain;
    let reservation = shared.store.domain_reservation(host).await.map_err(|e| {
        tracing::error!(error = %e, "store failed while checking domain reservations");
        proto::error_text("the edge could not check domain reservations; try again", codes::BIND_INVALID)
    })?;
    match reservation {
        Some(r) if r.account_id != session.account_id => Err(proto::error_text(
            &format!("{host} is reserved by another account (reservation {})", r.domain),
            codes::RESERVED_ELSEWHERE,
        )),
        Some(r) if r.verified_at.is_none() => {
            // The DNS record may have been created since: look once more now.
            verify_domain(shared, r)
                .await
                .map(|_| ())
                .map_err(|why| proto::error_text(&why, codes::DOMAIN_NOT_SERVED))
        }
        Some(_) => Ok(()),
        None if under_domain(host, base) => Ok(()),
        None => Err(proto::error_text(
            &format!(
                "{host} is not a domain this edge serves; use a name under {base} (for example myapp.{base}), \
                 or reserve {host} first (warren api reserved-domains create --domain {host})"
            ),
            codes::DOMAIN_NOT_SERVED,
        )),
    }
}

/// Proves control of a reserved custom domain: its TXT record `_warren-challenge.<domain>`
/// must hold the reservation's token. Returns the reservation, now verified, or what to do.
pub(crate) async fn verify_domain(
    shared: &Shared,
    d: warren_store::ReservedDomain,
) -> Result<warren_store::ReservedDomain, String> {
    if d.verified_at.is_some() {
        return Ok(d);
    }
    let name = d.challenge_name();
    let how = format!(
        "{} is reserved but its control is not proven yet: create a DNS TXT record {name} with the value {} (then bind again, or POST /reserved_domains/{}/verify)",
        d.domain, d.verify_token, d.id
    );
    let Some(resolver) = shared.config.dns_resolver.or_else(crate::dns::system_resolver) else {
        return Err(format!("{how}; this edge has no DNS resolver configured (--dns-resolver)"));
    };
    match crate::dns::txt(resolver, &name).await {
        Ok(values) if values.iter().any(|v| v.trim() == d.verify_token) => {
            shared.store.mark_domain_verified(&d.account_id, &d.id).await.map_err(|e| {
                tracing::error!(error = %e, "store failed while recording a verified domain");
                "the edge could not record the verification; try again".to_string()
            })
        }
        Ok(values) if values.is_empty() => Err(format!("{how}; no TXT record was found")),
        Ok(values) => Err(format!("{how}; the TXT records found hold other values ({})", values.len())),
        Err(e) => {
            tracing::warn!(domain = %d.domain, %resolver, error = %e, "TXT lookup failed");
            Err(format!("{how}; the lookup failed: {e}"))
        }
    }
}

/// A random free name under the base domain that no account has reserved.
async fn random_host(shared: &Shared, proto: Proto) -> Result<String, String> {
    use rand::Rng;
    for _ in 0..16 {
        let label: String = (0..10).map(|_| (b'a' + rand::rng().random_range(0..26)) as char).collect();
        let host = format!("{label}.{}", shared.config.base_domain);
        if shared.registry.is_taken(&EndpointKey::Host(proto, host.clone())) {
            continue;
        }
        match shared.store.domain_reservation(&host).await {
            Ok(None) => return Ok(host),
            Ok(Some(_)) => continue,
            Err(e) => {
                tracing::error!(error = %e, "store failed while checking domain reservations");
                break;
            }
        }
    }
    Err(proto::error_text("the edge could not choose a free random name; try again", codes::BIND_INVALID))
}

fn requested_port(opts: &proto::TcpOpts) -> Result<Option<u16>, String> {
    let addr = if !opts.addr.is_empty() {
        opts.addr.as_str()
    } else {
        opts.url.strip_prefix("tcp://").unwrap_or(&opts.url)
    };
    if addr.is_empty() {
        return Ok((opts.remote_port != 0).then_some(opts.remote_port));
    }
    let port = addr.rsplit_once(':').map_or(addr, |(_, p)| p);
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .map(Some)
        .ok_or_else(|| format!("invalid tcp address {addr:?}; expected host:port"))
}

async fn handle_unbind(shared: &Arc<Shared>, session: &Arc<AgentSession>, mut stream: Stream) {
    let resp = match read_request::<proto::Unbind>(shared, &mut stream, "Unbind").await {
        Ok(u) if shared.registry.unbind(&session.id, &u.client_id) => {
            if let Err(e) = shared.store.delete_endpoint(&session.id, &u.client_id).await {
                tracing::warn!(error = %e, "store failed while forgetting an endpoint; it goes with its session");
            }
            proto::UnbindResp::default()
        }
        Ok(u) => proto::UnbindResp {
            error: proto::error_text(&format!("no endpoint with Id {:?}", u.client_id), codes::BIND_INVALID),
        },
        Err(text) => proto::UnbindResp { error: text },
    };
    let _ = reply(&mut stream, &resp).await;
}

/// Reads one JSON request within the RPC timeout and size limit. ngrok clients write the
/// request and then wait for the reply without half-closing, so the request ends where the
/// JSON value ends, not at end of stream.
async fn read_request<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    stream: &mut Stream,
    what: &'static str,
) -> Result<T, String> {
    let read = read_json(stream, what, proto::MAX_RPC_LEN);
    match tokio::time::timeout(shared.config.limits.rpc_timeout, read).await {
        Ok(r) => r.map_err(|e| proto::error_text(&e, codes::BIND_INVALID)),
        Err(_) => Err(proto::error_text(
            &format!("the {what} request was not completed in time"),
            codes::BIND_INVALID,
        )),
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    stream: &mut Stream,
    what: &'static str,
    limit: usize,
) -> Result<T, String> {
    use tokio::io::AsyncReadExt;
    let mut msg = proto::MessageBuf::new(what, limit);
    let mut chunk = [0u8; 4096];
    loop {
        let n =
            stream.read(&mut chunk).await.map_err(|e| format!("could not read the {what} request: {e}"))?;
        if n == 0 {
            return msg.finish().map_err(|e| e.to_string());
        }
        if let Some(v) = msg.push(&chunk[..n]).map_err(|e| e.to_string())? {
            return Ok(v);
        }
    }
}

async fn reply<T: serde::Serialize>(stream: &mut Stream, msg: &T) -> std::io::Result<()> {
    stream.write_all(&proto::encode(msg)).await?;
    stream.shutdown().await
}

/// Sends the agent a Stop (or Restart) command, as ngrok's API does. The agent answers and
/// acts; an agent that does not support the command gets its session closed instead.
pub(crate) async fn command_agent(shared: &Shared, s: &Arc<AgentSession>, ty: StreamType) {
    let sent = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = s.mux.open_typed(ty.to_u32()).await?;
        stream.write_all(b"{}").await?;
        stream.shutdown().await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = tokio::time::timeout(Duration::from_secs(5), sent).await;
    let refused = match &reply {
        Ok(Ok(r)) => serde_json::from_slice::<proto::CommandResp>(r)
            .ok()
            .and_then(|c| c.error)
            .filter(|e| !e.is_empty()),
        _ => Some("no answer".into()),
    };
    if ty == StreamType::Stop || refused.is_some() {
        s.mux.close(ErrorCode::None, "stopped through the API");
        shared.end_session(&s.id).await;
    }
}
