//! `/tunnel_sessions` (live agent sessions: list, get, stop, restart), `/endpoints` and
//! `/tunnels` (what those sessions have bound). Read from the store, so any edge node
//! answers for the sessions of every node sharing its database.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use warren_proto::StreamType;

use warren_store::{LiveEndpoint, SessionCommand, TunnelSession};

use super::{ApiError, PageQuery, Principal, Ref, next_page_uri};
use crate::Shared;

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

pub(super) fn session_json(s: TunnelSession) -> SessionJson {
    SessionJson {
        uri: format!("/tunnel_sessions/{}", s.id),
        credential: Ref::to("credentials", s.credential_id),
        id: s.id,
        agent_version: s.agent_version,
        ip: s.ip,
        metadata: s.metadata,
        os: s.os,
        region: "local",
        started_at: s.started_at,
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
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> Result<Json<SessionList>, ApiError> {
    let page = p.store.list_tunnel_sessions(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/tunnel_sessions", &q, page.more, page.items.last().map(|s| s.id.as_str()));
    let tunnel_sessions = page.items.into_iter().map(session_json).collect();
    Ok(Json(SessionList { tunnel_sessions, uri: "/tunnel_sessions", next_page_uri: next }))
}

pub(crate) async fn get(
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SessionJson>, ApiError> {
    Ok(Json(session_json(p.store.get_tunnel_session(&p.account_id, &id).await?)))
}

/// Stop or restart, as ngrok's API does: the agent is told and acts. A session held by
/// another edge node is handed to that node through the store.
async fn command(shared: &Shared, p: &Principal, id: &str, ty: StreamType) -> Result<StatusCode, ApiError> {
    let row = p.store.get_tunnel_session(&p.account_id, id).await?;
    let owner = match p.store.get_credential(&p.account_id, &row.credential_id).await {
        Ok(c) => c.owner_id,
        Err(warren_store::StoreError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    p.require_owner_or_admin(owner.as_deref(), "a tunnel session")?;
    tracing::info!(session = %row.id, node = %row.node_id, by = %p.key_id, ?ty, "tunnel session command");
    if row.node_id != shared.node_id {
        let cmd = if ty == StreamType::Stop { SessionCommand::Stop } else { SessionCommand::Restart };
        p.store.queue_session_command(&row.node_id, &row.id, cmd).await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    let s = shared
        .registry
        .session(&row.id)
        .ok_or_else(|| ApiError::not_found(format!("tunnel session {id} not found")))?;
    crate::session::command_agent(shared, &s, ty).await;
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
    created_at: String,
    url: String,
    proto: String,
    public_url: String,
    r#type: &'static str,
    tunnel_session: Ref,
    name: String,
    metadata: String,
    description: String,
    upstream_url: String,
    pooling_enabled: bool,
}

fn endpoint_json(e: LiveEndpoint) -> EndpointJson {
    EndpointJson {
        pooling_enabled: e.pooled,
        name: e.details.name,
        metadata: e.details.metadata,
        description: e.details.description,
        upstream_url: e.details.upstream_url,
        uri: format!("/endpoints/{}", e.id),
        tunnel_session: Ref::to("tunnel_sessions", e.session_id),
        id: e.id,
        created_at: e.created_at,
        public_url: e.url.clone(),
        url: e.url,
        proto: e.proto,
        r#type: "ephemeral",
    }
}

#[derive(Serialize)]
pub(crate) struct EndpointList {
    endpoints: Vec<EndpointJson>,
    uri: &'static str,
    next_page_uri: Option<String>,
}

pub(crate) async fn endpoints(
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> Result<Json<EndpointList>, ApiError> {
    let page = p.store.list_endpoints(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/endpoints", &q, page.more, page.items.last().map(|e| e.id.as_str()));
    let endpoints = page.items.into_iter().map(endpoint_json).collect();
    Ok(Json(EndpointList { endpoints, uri: "/endpoints", next_page_uri: next }))
}

pub(crate) async fn endpoint(
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<EndpointJson>, ApiError> {
    Ok(Json(endpoint_json(p.store.get_endpoint(&p.account_id, &id).await?)))
}

#[derive(Serialize)]
pub(crate) struct TunnelList {
    tunnels: Vec<EndpointJson>,
    uri: &'static str,
    next_page_uri: Option<String>,
}

/// ngrok's older name for the same list.
pub(crate) async fn tunnels(
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> Result<Json<TunnelList>, ApiError> {
    let page = p.store.list_endpoints(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/tunnels", &q, page.more, page.items.last().map(|e| e.id.as_str()));
    let tunnels = page.items.into_iter().map(endpoint_json).collect();
    Ok(Json(TunnelList { tunnels, uri: "/tunnels", next_page_uri: next }))
}
