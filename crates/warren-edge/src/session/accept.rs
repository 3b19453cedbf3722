//! One agent connection's life: TLS, muxado with tight limits until Auth succeeds, the
//! session registered, its RPCs served beside its heartbeats, and its end, which always drops
//! the transport.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use warren_mux::{ErrorCode, Role};

use crate::Shared;

/// Accepts agent connections until shutdown.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let stop = crate::shutting_down(shared.shutdown.clone());
    tokio::pin!(stop);
    loop {
        let (tcp, remote, permit) = tokio::select! {
            _ = &mut stop => return,
            c = crate::conn_limit::accept(&listener, &shared.sessions.limit, "agent listener") => c,
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
    let tls = match tokio::time::timeout(
        shared.config.limits.handshake_timeout,
        shared.sessions.connect_tls.accept(io),
    )
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
    let Some((session, admission)) = super::auth::authenticate(&shared, &mux, remote).await else {
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
    let changed =
        shared.sessions.registry.add_session_decided_at(session.clone(), Some(admission.decided_at));
    if !admission.answer(&shared, changed).await {
        mux.close(ErrorCode::None, "authentication failed");
        shared.end_session(&session.id).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), mux.closed()).await;
        return;
    }
    tracing::info!(session = %session.id, %remote, "agent session started");

    let heartbeats = {
        let mux = mux.clone();
        let (interval, tolerance) = (shared.config.heartbeat_interval, shared.config.heartbeat_tolerance);
        async move { warren_mux::typed::run_heartbeats(&mux, interval, tolerance).await }
    };
    tokio::select! {
        _ = super::rpc::serve(&shared, &session) => {}
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
