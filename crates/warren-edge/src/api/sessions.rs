//! `/tunnel_sessions`: live agent sessions (list, get, stop, restart). Read from the store,
//! so any edge node answers for the sessions of every node sharing its database.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use warren_proto::StreamType;

use warren_store::{SessionCommand, TunnelSession};

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
        .sessions
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
