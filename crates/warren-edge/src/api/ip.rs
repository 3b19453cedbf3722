//! `/ip_policies`, `/ip_policy_rules`, `/ip_restrictions`. Admins change them; every role
//! may read them.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use warren_store::{IpPolicy, IpPolicyRule, IpRestriction};

use super::{ApiError, PageQuery, Principal, next_page_uri, parse_body};
use crate::Shared;

type PageResult = Result<Json<Value>, ApiError>;

fn policy(p: &IpPolicy) -> Value {
    json!({"id": p.id, "uri": format!("/ip_policies/{}", p.id), "description": p.description, "created_at": p.created_at})
}

fn rule(r: &IpPolicyRule) -> Value {
    json!({
        "id": r.id, "uri": format!("/ip_policy_rules/{}", r.id), "cidr": r.cidr, "action": r.action,
        "description": r.description, "created_at": r.created_at,
        "ip_policy": {"id": r.ip_policy_id, "uri": format!("/ip_policies/{}", r.ip_policy_id)},
    })
}

fn restriction(x: &IpRestriction) -> Value {
    json!({
        "id": x.id, "uri": format!("/ip_restrictions/{}", x.id), "type": x.kind, "enforced": x.enforced,
        "description": x.description, "created_at": x.created_at,
        "ip_policies": x.ip_policy_ids.iter().map(|p| json!({"id": p, "uri": format!("/ip_policies/{p}")})).collect::<Vec<_>>(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    #[serde(default)]
    description: String,
}

pub(crate) async fn create_policy(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require_admin("changing IP policies")?;
    let b: PolicyBody = parse_body(&body)?;
    Ok((
        StatusCode::CREATED,
        Json(policy(&shared.store.create_ip_policy(&p.account_id, &b.description).await?)),
    ))
}

pub(crate) async fn get_policy(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> PageResult {
    Ok(Json(policy(&shared.store.get_ip_policy(&p.account_id, &id).await?)))
}

pub(crate) async fn update_policy(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> PageResult {
    p.require_admin("changing IP policies")?;
    let b: PolicyBody = parse_body(&body)?;
    Ok(Json(policy(&shared.store.update_ip_policy(&p.account_id, &id, &b.description).await?)))
}

pub(crate) async fn delete_policy(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require_admin("changing IP policies")?;
    shared.store.delete_ip_policy(&p.account_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn list_policies(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> PageResult {
    let page = shared.store.list_ip_policies(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/ip_policies", &q, page.more, page.items.last().map(|x| x.id.as_str()));
    Ok(Json(
        json!({"ip_policies": page.items.iter().map(policy).collect::<Vec<_>>(), "uri": "/ip_policies", "next_page_uri": next}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleBody {
    ip_policy_id: String,
    cidr: String,
    action: String,
    #[serde(default)]
    description: String,
}

pub(crate) async fn create_rule(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require_admin("changing IP policies")?;
    let b: RuleBody = parse_body(&body)?;
    let r = shared
        .store
        .create_ip_policy_rule(&p.account_id, &b.ip_policy_id, &b.cidr, &b.action, &b.description)
        .await?;
    Ok((StatusCode::CREATED, Json(rule(&r))))
}

pub(crate) async fn list_rules(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> PageResult {
    let page = shared.store.list_ip_policy_rules(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/ip_policy_rules", &q, page.more, page.items.last().map(|x| x.id.as_str()));
    Ok(Json(
        json!({"ip_policy_rules": page.items.iter().map(rule).collect::<Vec<_>>(), "uri": "/ip_policy_rules", "next_page_uri": next}),
    ))
}

pub(crate) async fn delete_rule(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require_admin("changing IP policies")?;
    shared.store.delete_ip_policy_rule(&p.account_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestrictionBody {
    r#type: String,
    #[serde(default = "yes")]
    enforced: bool,
    ip_policy_ids: Vec<String>,
    #[serde(default)]
    description: String,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestrictionUpdate {
    enforced: bool,
}

pub(crate) async fn create_restriction(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    p.require_admin("changing IP restrictions")?;
    let b: RestrictionBody = parse_body(&body)?;
    let x = shared
        .store
        .create_ip_restriction(&p.account_id, &b.r#type, b.enforced, &b.ip_policy_ids, &b.description)
        .await?;
    tracing::info!(restriction = %x.id, kind = %x.kind, enforced = x.enforced, by = %p.key_id, "IP restriction created");
    Ok((StatusCode::CREATED, Json(restriction(&x))))
}

pub(crate) async fn list_restrictions(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> PageResult {
    let page = shared.store.list_ip_restrictions(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/ip_restrictions", &q, page.more, page.items.last().map(|x| x.id.as_str()));
    Ok(Json(
        json!({"ip_restrictions": page.items.iter().map(restriction).collect::<Vec<_>>(), "uri": "/ip_restrictions", "next_page_uri": next}),
    ))
}

pub(crate) async fn update_restriction(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    p.require_admin("changing IP restrictions")?;
    let b: RestrictionUpdate = parse_body(&body)?;
    shared.store.set_ip_restriction_enforced(&p.account_id, &id, b.enforced).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn delete_restriction(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require_admin("changing IP restrictions")?;
    shared.store.delete_ip_restriction(&p.account_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
