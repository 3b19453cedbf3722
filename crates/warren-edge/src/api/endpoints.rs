//! `/endpoints` (and ngrok's older `/tunnels`): every endpoint of the account, the ones agents
//! have bound on any node (type `ephemeral`, read-only here: their agent owns them) and cloud
//! endpoints (type `cloud`), which live on the edge without an agent and are made, changed
//! and deleted here by administrators.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use warren_store::{CloudEndpoint, CloudEndpointChange, CloudEndpointSpec, LiveEndpoint, Role, StoreError};

use super::{ApiError, PageQuery, Principal, Ref, check_body_id, next_page_uri, parse_body};
use crate::Shared;
use crate::registry::Proto;
use crate::session::BindError;

#[derive(Serialize)]
pub(crate) struct EndpointJson {
    id: String,
    uri: String,
    created_at: String,
    updated_at: String,
    url: String,
    public_url: String,
    proto: String,
    host: String,
    port: u16,
    hostport: String,
    /// `ephemeral` (an agent's) or `cloud`.
    r#type: &'static str,
    /// The agent session serving it; null for a cloud endpoint.
    tunnel_session: Option<Ref>,
    name: String,
    metadata: String,
    description: String,
    upstream_url: String,
    pooling_enabled: bool,
    /// `public`, or `internal` for `NAME.internal`.
    bindings: Vec<&'static str>,
    /// A cloud endpoint's policy document (masked for roles other than admin); null for an
    /// agent's endpoint, whose policy its agent holds.
    traffic_policy: Option<String>,
}

/// `host`, port and `host:port` of a URL, as ngrok's Endpoint object has them.
fn host_port(url: &str, proto: &str) -> (String, u16, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_owned(), p.parse().unwrap_or(0)),
        _ => (rest.to_owned(), if proto == "http" { 80 } else { 443 }),
    };
    let hostport = format!("{host}:{port}");
    (host, port, hostport)
}

fn bindings(host: &str) -> Vec<&'static str> {
    vec![if crate::registry::is_internal(host) { "internal" } else { "public" }]
}

fn agent_json(e: LiveEndpoint) -> EndpointJson {
    let (host, port, hostport) = host_port(&e.url, &e.proto);
    EndpointJson {
        pooling_enabled: e.pooled,
        name: e.details.name,
        metadata: e.details.metadata,
        description: e.details.description,
        upstream_url: e.details.upstream_url,
        uri: format!("/endpoints/{}", e.id),
        tunnel_session: Some(Ref::to("tunnel_sessions", e.session_id)),
        id: e.id,
        updated_at: e.created_at.clone(),
        created_at: e.created_at,
        public_url: e.url.clone(),
        url: e.url,
        proto: e.proto,
        bindings: bindings(&host),
        host,
        port,
        hostport,
        r#type: "ephemeral",
        traffic_policy: None,
    }
}

/// A cloud endpoint as the API (and its audit events) show it; `reveal`: the policy as
/// written (admins), else with its secrets masked.
pub(crate) fn cloud_json(e: CloudEndpoint, reveal: bool) -> EndpointJson {
    let (host, port, hostport) = host_port(&e.url, &e.proto);
    let traffic_policy = if reveal {
        e.traffic_policy
    } else {
        warren_policy::Document::redacted(&e.traffic_policy)
            .unwrap_or_else(|| "(not shown: it holds secrets)".into())
    };
    EndpointJson {
        uri: format!("/endpoints/{}", e.id),
        id: e.id,
        created_at: e.created_at,
        updated_at: e.updated_at,
        public_url: e.url.clone(),
        url: e.url,
        proto: e.proto,
        bindings: bindings(&host),
        host,
        port,
        hostport,
        r#type: "cloud",
        tunnel_session: None,
        name: String::new(),
        metadata: e.metadata,
        description: e.description,
        upstream_url: String::new(),
        pooling_enabled: false,
        traffic_policy: Some(traffic_policy),
    }
}

#[derive(Serialize)]
pub(crate) struct EndpointList {
    endpoints: Vec<EndpointJson>,
    uri: &'static str,
    next_page_uri: Option<String>,
}

/// One page of the account's endpoints of both kinds, newest first (ids are time-ordered
/// across both tables).
async fn page(p: &Principal, q: &PageQuery) -> Result<(Vec<EndpointJson>, bool), ApiError> {
    let limit = q.limit();
    let before = q.before_id.as_deref();
    let agents = p.store.list_endpoints(&p.account_id, limit, before).await?;
    let clouds = p.store.list_cloud_endpoints(&p.account_id, limit, before).await?;
    let reveal = p.role == Role::Admin;
    let mut all: Vec<EndpointJson> = agents
        .items
        .into_iter()
        .map(agent_json)
        .chain(clouds.items.into_iter().map(|c| cloud_json(c, reveal)))
        .collect();
    all.sort_by(|a, b| b.id.cmp(&a.id));
    let keep = limit.clamp(1, 100) as usize;
    let more = agents.more || clouds.more || all.len() > keep;
    all.truncate(keep);
    Ok((all, more))
}

pub(crate) async fn list(
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> Result<Json<EndpointList>, ApiError> {
    let (endpoints, more) = page(&p, &q).await?;
    let next = next_page_uri("/endpoints", &q, more, endpoints.last().map(|e| e.id.as_str()));
    Ok(Json(EndpointList { endpoints, uri: "/endpoints", next_page_uri: next }))
}

pub(crate) async fn get(
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<EndpointJson>, ApiError> {
    match p.store.get_cloud_endpoint(&p.account_id, &id).await {
        Ok(c) => return Ok(Json(cloud_json(c, p.role == Role::Admin))),
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Json(agent_json(p.store.get_endpoint(&p.account_id, &id).await?)))
}

#[derive(Serialize)]
pub(crate) struct TunnelList {
    tunnels: Vec<EndpointJson>,
    uri: &'static str,
    next_page_uri: Option<String>,
}

/// ngrok's older name for the agents' endpoints.
pub(crate) async fn tunnels(
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> Result<Json<TunnelList>, ApiError> {
    let page = p.store.list_endpoints(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/tunnels", &q, page.more, page.items.last().map(|e| e.id.as_str()));
    let tunnels = page.items.into_iter().map(agent_json).collect();
    Ok(Json(TunnelList { tunnels, uri: "/tunnels", next_page_uri: next }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    url: Option<String>,
    /// Only `cloud` (ngrok's default).
    r#type: Option<String>,
    /// YAML or JSON text, or a JSON object.
    traffic_policy: Option<serde_json::Value>,
    description: Option<String>,
    metadata: Option<String>,
    bindings: Option<Vec<String>>,
    pooling_enabled: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    id: Option<String>,
    url: Option<String>,
    traffic_policy: Option<serde_json::Value>,
    description: Option<String>,
    metadata: Option<String>,
    bindings: Option<Vec<String>>,
    pooling_enabled: Option<bool>,
}

/// Longest policy document taken, as for the account's.
const MAX_POLICY: usize = 256 * 1024;

fn policy_text(v: serde_json::Value) -> Result<String, ApiError> {
    let text = match v {
        serde_json::Value::String(s) => s,
        v @ serde_json::Value::Object(_) => v.to_string(),
        serde_json::Value::Null => String::new(),
        _ => return Err(ApiError::bad_request("traffic_policy must be a document (text or an object)")),
    };
    if text.trim().is_empty() {
        return Err(ApiError::bad_request(
            "traffic_policy is required: a cloud endpoint is its traffic policy",
        ));
    }
    if text.len() > MAX_POLICY {
        return Err(ApiError::bad_request("traffic_policy is longer than 256 KiB"));
    }
    Ok(text)
}

/// What warren does not do with cloud endpoints is refused by name.
fn check_unsupported(bindings: Option<&[String]>, pooling: Option<bool>) -> Result<(), ApiError> {
    match bindings {
        None => {}
        Some([]) => {}
        Some([b]) if b == "public" => {}
        Some([b]) if b == "internal" => {
            return Err(ApiError::bad_request(
                "bindings [\"internal\"]: internal cloud endpoints are not supported; an internal endpoint is an agent's (https://NAME.internal)",
            ));
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "bindings {other:?}: a cloud endpoint's binding is \"public\""
            )));
        }
    }
    if pooling == Some(true) {
        return Err(ApiError::bad_request(
            "pooling_enabled: cloud endpoints do not join pools here; leave it out or false",
        ));
    }
    Ok(())
}

/// The URL checked as at Bind: a name this account may serve (under the base domain and not
/// another account's, or a reserved and proven domain of its own) that the edge's
/// certificates cover for https.
async fn checked_url(
    shared: &Shared,
    account_id: &str,
    url: &str,
) -> Result<(String, Proto, String), ApiError> {
    let (url, proto, host) = crate::cloud::parse_url(shared, url).map_err(ApiError::bad_request)?;
    crate::session::check_domain_reservation(shared, account_id, &host).await.map_err(|e| match e {
        BindError::ReservedElsewhere(m) => ApiError::conflict(m),
        BindError::Unavailable(_) => ApiError::internal(),
        other => ApiError::bad_request(other.to_string()),
    })?;
    let base = &shared.config.base_domain;
    if proto == Proto::Https
        && crate::session::under_domain(&host, base)
        && !shared.listeners.certs.covers(&host)
    {
        return Err(ApiError::bad_request(format!(
            "{host} is not covered by this edge's certificate (*.{base} covers one level below {base})"
        )));
    }
    Ok((url, proto, host))
}

pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<EndpointJson>), ApiError> {
    p.require_admin("cloud endpoints")?;
    let b: CreateBody = parse_body(&body)?;
    match b.r#type.as_deref() {
        None | Some("" | "cloud") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "type {other:?}: only cloud endpoints are made through the API; agents bind the others"
            )));
        }
    }
    check_unsupported(b.bindings.as_deref(), b.pooling_enabled)?;
    let url = b.url.filter(|u| !u.trim().is_empty()).ok_or_else(|| {
        ApiError::bad_request(
            "url is required: a cloud endpoint has a fully qualified URL, never a random one",
        )
    })?;
    let policy = policy_text(b.traffic_policy.unwrap_or(serde_json::Value::Null))?;
    let (url, proto, host) = checked_url(&shared, &p.account_id, &url).await?;
    crate::cloud::check_policy(&shared, &p.account_id, proto, &policy)
        .await
        .map_err(|e| ApiError::bad_request(format!("invalid traffic policy: {e}")))?;
    let spec = CloudEndpointSpec {
        url,
        proto: proto.as_str().into(),
        host,
        traffic_policy: policy,
        description: b.description.unwrap_or_default(),
        metadata: b.metadata.unwrap_or_default(),
    };
    let e = shared.admin(&p).create_cloud_endpoint(&spec, p.user_id.as_deref()).await?;
    tracing::info!(endpoint = %e.id, url = %e.url, by = %p.key_id, "cloud endpoint created");
    Ok((StatusCode::CREATED, Json(cloud_json(e, true))))
}

/// A cloud endpoint of the account; an agent's endpoint is refused with what to do instead.
async fn cloud_or_refuse(p: &Principal, id: &str, op: &str) -> Result<CloudEndpoint, ApiError> {
    match p.store.get_cloud_endpoint(&p.account_id, id).await {
        Ok(c) => Ok(c),
        Err(StoreError::NotFound(_)) if p.store.get_endpoint(&p.account_id, id).await.is_ok() => {
            Err(ApiError::bad_request(format!(
                "{id} is an agent's endpoint: only cloud endpoints are {op} through the API; stop or change the agent (POST /tunnel_sessions/ID/stop)"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) async fn update(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<EndpointJson>, ApiError> {
    p.require_admin("cloud endpoints")?;
    let b: UpdateBody = parse_body(&body)?;
    check_body_id(b.id.as_deref(), &id)?;
    check_unsupported(b.bindings.as_deref(), b.pooling_enabled)?;
    let old = cloud_or_refuse(&p, &id, "changed").await?;
    let mut change =
        CloudEndpointChange { description: b.description, metadata: b.metadata, ..Default::default() };
    let mut proto = if old.proto == "http" { Proto::Http } else { Proto::Https };
    if let Some(u) = b.url.filter(|u| *u != old.url) {
        let (url, p2, host) = checked_url(&shared, &p.account_id, &u).await?;
        proto = p2;
        change.url = Some((url, p2.as_str().into(), host));
    }
    let policy = match b.traffic_policy {
        Some(v) => Some(policy_text(v)?),
        None if change.url.is_some() => Some(old.traffic_policy.clone()),
        None => None,
    };
    if let Some(text) = &policy {
        crate::cloud::check_policy(&shared, &p.account_id, proto, text)
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid traffic policy: {e}")))?;
    }
    change.traffic_policy = policy;
    let e = shared.admin(&p).update_cloud_endpoint(&id, change).await?;
    tracing::info!(endpoint = %e.id, url = %e.url, by = %p.key_id, "cloud endpoint updated");
    Ok(Json(cloud_json(e, true)))
}

pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require_admin("cloud endpoints")?;
    cloud_or_refuse(&p, &id, "deleted").await?;
    let e = shared.admin(&p).delete_cloud_endpoint(&id).await?;
    tracing::info!(endpoint = %e.id, url = %e.url, by = %p.key_id, "cloud endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}
