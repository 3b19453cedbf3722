//! `/tunnel_sessions` (live agent sessions: list, get, stop, restart), `/endpoints` and
//! `/tunnels` (what those sessions have bound). Live state, not stored: each edge node
//! answers for its own sessions.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use warren_proto::StreamType;

use super::{ApiError, Principal};
use crate::Shared;
use crate::registry::{AgentSession, Endpoint};

#[derive(Serialize)]
pub(crate) struct Ref {
    id: String,
    uri: String,
}

#[derive(Serialize)]
pub(crate) struct SessionJson {
    id: String,
    uri: String,
    agent_version: String,
    credential: Ref,
    ip: String,
    metadata: String,
    os: String,
    region: &'static str,
    started_at: String,
    transport: &'static str,
}

fn session_json(s: &AgentSession) -> SessionJson {
    SessionJson {
        id: s.id.clone(),
        uri: format!("/tunnel_sessions/{}", s.id),
        agent_version: s.info.agent_version.clone(),
        credential: Ref { id: s.credential.id.clone(), uri: format!("/credentials/{}", s.credential.id) },
        ip: s.remote.ip().to_string(),
        metadata: s.info.metadata.clone(),
        os: s.info.os.clone(),
        region: "local",
        started_at: s.info.started_at.clone(),
        transport: "ngrok/v2",
    }
}

#[derive(Serialize)]
pub(crate) struct SessionList {
    tunnel_sessions: Vec<SessionJson>,
    uri: &'static str,
    next_page_uri: Option<String>,
}

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
) -> Json<SessionList> {
    let tunnel_sessions =
        shared.registry.sessions_of(&p.account_id).iter().map(|s| session_json(s)).collect();
    Json(SessionList { tunnel_sessions, uri: "/tunnel_sessions", next_page_uri: None })
}

fn find(shared: &Shared, p: &Principal, id: &str) -> Result<Arc<AgentSession>, ApiError> {
    shared
        .registry
        .sessions_of(&p.account_id)
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| ApiError::not_found(format!("tunnel session {id} not found")))
}

pub(crate) async fn get(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SessionJson>, ApiError> {
    let s = find(&shared, &p, &id)?;
    Ok(Json(session_json(&s)))
}

/// Sends the agent a Stop (or Restart) command, as ngrok's API does. The agent answers and
/// acts; an agent that does not support the command gets its session closed instead.
async fn command(shared: &Shared, p: &Principal, id: &str, ty: StreamType) -> Result<StatusCode, ApiError> {
    let s = find(shared, p, id)?;
    p.require_owner_or_admin(s.credential.owner_id.as_deref(), "a tunnel session")?;
    tracing::info!(session = %s.id, by = %p.key_id, ?ty, "tunnel session command");
    let sent = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = s.mux.open_typed(ty.to_u32()).await?;
        stream.write_all(b"{}").await?;
        stream.shutdown().await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = tokio::time::timeout(std::time::Duration::from_secs(5), sent).await;
    let refused = match &reply {
        Ok(Ok(r)) => serde_json::from_slice::<warren_proto::CommandResp>(r)
            .ok()
            .and_then(|c| c.error)
            .filter(|e| !e.is_empty()),
        _ => Some("no answer".into()),
    };
    if ty == StreamType::Stop || refused.is_some() {
        s.mux.close(warren_mux::ErrorCode::None, "stopped through the API");
        shared.registry.remove_session(&s.id);
    }
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn stop(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    command(&shared, &p, &id, StreamType::Stop).await
}

pub(crate) async fn restart(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    command(&shared, &p, &id, StreamType::Restart).await
}

#[derive(Serialize)]
pub(crate) struct EndpointJson {
    id: String,
    uri: String,
    url: String,
    proto: &'static str,
    public_url: String,
    r#type: &'static str,
    tunnel_session: Ref,
}

fn endpoint_json(e: &Endpoint) -> EndpointJson {
    EndpointJson {
        id: e.client_id.clone(),
        uri: format!("/endpoints/{}", e.client_id),
        url: e.url.clone(),
        proto: e.proto.as_str(),
        public_url: e.url.clone(),
        r#type: "ephemeral",
        tunnel_session: Ref { id: e.session.id.clone(), uri: format!("/tunnel_sessions/{}", e.session.id) },
    }
}

#[derive(Serialize)]
pub(crate) struct EndpointList {
    endpoints: Vec<EndpointJson>,
    uri: &'static str,
    next_page_uri: Option<String>,
}

pub(crate) async fn endpoints(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
) -> Json<EndpointList> {
    let endpoints = shared.registry.endpoints_of(&p.account_id).iter().map(|e| endpoint_json(e)).collect();
    Json(EndpointList { endpoints, uri: "/endpoints", next_page_uri: None })
}

#[derive(Serialize)]
pub(crate) struct TunnelList {
    tunnels: Vec<EndpointJson>,
    uri: &'static str,
    next_page_uri: Option<String>,
}

pub(crate) async fn tunnels(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
) -> Json<TunnelList> {
    let tunnels = shared.registry.endpoints_of(&p.account_id).iter().map(|e| endpoint_json(e)).collect();
    Json(TunnelList { tunnels, uri: "/tunnels", next_page_uri: None })
}
