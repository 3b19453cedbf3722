//! `/ip_policies`, `/ip_policy_rules`, `/ip_restrictions`. Admins change them; every role
//! may read them. Each change drops the edge's cached view of the account's restrictions, so
//! it applies to the next connection.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use warren_store::{IpPolicy, IpPolicyRule, IpPolicyRuleUpdate, IpRestriction, IpRestrictionUpdate};

use super::{ApiError, PageQuery, Principal, Ref, check_body_id, next_page_uri, parse_body};
use crate::Shared;

fn policy_ref(id: &str) -> Ref {
    Ref::to("ip_policies", id)
}

#[derive(Serialize)]
pub(crate) struct PolicyJson {
    id: String,
    uri: String,
    created_at: String,
    description: String,
    metadata: String,
}

pub(super) fn policy(p: IpPolicy) -> PolicyJson {
    PolicyJson {
        uri: format!("/ip_policies/{}", p.id),
        id: p.id,
        created_at: p.created_at,
        description: p.description,
        metadata: p.metadata,
    }
}

#[derive(Serialize)]
pub(crate) struct RuleJson {
    id: String,
    uri: String,
    created_at: String,
    description: String,
    metadata: String,
    cidr: String,
    ip_policy: Ref,
    action: String,
}

pub(super) fn rule(r: IpPolicyRule) -> RuleJson {
    RuleJson {
        uri: format!("/ip_policy_rules/{}", r.id),
        ip_policy: policy_ref(&r.ip_policy_id),
        id: r.id,
        created_at: r.created_at,
        description: r.description,
        metadata: r.metadata,
        cidr: r.cidr,
        action: r.action,
    }
}

#[derive(Serialize)]
pub(crate) struct RestrictionJson {
    id: String,
    uri: String,
    created_at: String,
    description: String,
    metadata: String,
    enforced: bool,
    r#type: String,
    ip_policies: Vec<Ref>,
}

pub(super) fn restriction(x: IpRestriction) -> RestrictionJson {
    RestrictionJson {
        uri: format!("/ip_restrictions/{}", x.id),
        ip_policies: x.ip_policy_ids.iter().map(|p| policy_ref(p)).collect(),
        id: x.id,
        created_at: x.created_at,
        description: x.description,
        metadata: x.metadata,
        enforced: x.enforced,
        r#type: x.kind,
    }
}

/// A page in ngrok's list shape, under the resource's own key.
#[derive(Serialize)]
pub(crate) struct ListJson<T> {
    #[serde(flatten)]
    items: std::collections::BTreeMap<&'static str, Vec<T>>,
    uri: String,
    next_page_uri: Option<String>,
}

fn list<T>(key: &'static str, items: Vec<T>, next_page_uri: Option<String>) -> Json<ListJson<T>> {
    Json(ListJson { items: [(key, items)].into(), uri: format!("/{key}"), next_page_uri })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyCreate {
    #[serde(default)]
    description: String,
    #[serde(default)]
    metadata: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyUpdate {
    id: Option<String>,
    description: Option<String>,
    metadata: Option<String>,
}

pub(crate) async fn create_policy(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<PolicyJson>), ApiError> {
    p.require_admin("changing IP policies")?;
    let b: PolicyCreate = parse_body(&body)?;
    let created = shared.admin(&p).create_ip_policy(&b.description, &b.metadata).await?;
    Ok((StatusCode::CREATED, Json(policy(created))))
}

pub(crate) async fn get_policy(
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<PolicyJson>, ApiError> {
    Ok(Json(policy(p.store.get_ip_policy(&p.account_id, &id).await?)))
}

pub(crate) async fn update_policy(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<PolicyJson>, ApiError> {
    p.require_admin("changing IP policies")?;
    let b: PolicyUpdate = parse_body(&body)?;
    check_body_id(b.id.as_deref(), &id)?;
    let up = shared.admin(&p).update_ip_policy(&id, b.description.as_deref(), b.metadata.as_deref()).await?;
    Ok(Json(policy(up)))
}

pub(crate) async fn delete_policy(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require_admin("changing IP policies")?;
    shared.admin(&p).delete_ip_policy(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn list_policies(
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> Result<Json<ListJson<PolicyJson>>, ApiError> {
    let page = p.store.list_ip_policies(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/ip_policies", &q, page.more, page.items.last().map(|x| x.id.as_str()));
    Ok(list("ip_policies", page.items.into_iter().map(policy).collect(), next))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleCreate {
    ip_policy_id: String,
    cidr: String,
    action: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    metadata: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleUpdate {
    id: Option<String>,
    cidr: Option<String>,
    action: Option<String>,
    description: Option<String>,
    metadata: Option<String>,
}

pub(crate) async fn create_rule(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<RuleJson>), ApiError> {
    p.require_admin("changing IP policies")?;
    let b: RuleCreate = parse_body(&body)?;
    let r = shared
        .admin(&p)
        .create_ip_policy_rule(&b.ip_policy_id, &b.cidr, &b.action, &b.description, &b.metadata)
        .await?;
    Ok((StatusCode::CREATED, Json(rule(r))))
}

pub(crate) async fn get_rule(
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<RuleJson>, ApiError> {
    Ok(Json(rule(p.store.get_ip_policy_rule(&p.account_id, &id).await?)))
}

pub(crate) async fn list_rules(
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> Result<Json<ListJson<RuleJson>>, ApiError> {
    let page = p.store.list_ip_policy_rules(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/ip_policy_rules", &q, page.more, page.items.last().map(|x| x.id.as_str()));
    Ok(list("ip_policy_rules", page.items.into_iter().map(rule).collect(), next))
}

pub(crate) async fn update_rule(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<RuleJson>, ApiError> {
    p.require_admin("changing IP policies")?;
    let b: RuleUpdate = parse_body(&body)?;
    check_body_id(b.id.as_deref(), &id)?;
    let up = IpPolicyRuleUpdate {
        cidr: b.cidr,
        action: b.action,
        description: b.description,
        metadata: b.metadata,
    };
    let r = shared.admin(&p).update_ip_policy_rule(&id, &up).await?;
    Ok(Json(rule(r)))
}

pub(crate) async fn delete_rule(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require_admin("changing IP policies")?;
    shared.admin(&p).delete_ip_policy_rule(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestrictionCreate {
    r#type: String,
    #[serde(default = "yes")]
    enforced: bool,
    ip_policy_ids: Vec<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    metadata: String,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestrictionUpdateBody {
    id: Option<String>,
    enforced: Option<bool>,
    ip_policy_ids: Option<Vec<String>>,
    description: Option<String>,
    metadata: Option<String>,
}

pub(crate) async fn create_restriction(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<RestrictionJson>), ApiError> {
    p.require_admin("changing IP restrictions")?;
    let b: RestrictionCreate = parse_body(&body)?;
    let x = shared
        .admin(&p)
        .create_ip_restriction(&b.r#type, b.enforced, &b.ip_policy_ids, &b.description, &b.metadata)
        .await?;
    tracing::info!(restriction = %x.id, kind = %x.kind, enforced = x.enforced, by = %p.key_id, "IP restriction created");
    Ok((StatusCode::CREATED, Json(restriction(x))))
}

pub(crate) async fn get_restriction(
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<RestrictionJson>, ApiError> {
    Ok(Json(restriction(p.store.get_ip_restriction(&p.account_id, &id).await?)))
}

pub(crate) async fn list_restrictions(
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> Result<Json<ListJson<RestrictionJson>>, ApiError> {
    let page = p.store.list_ip_restrictions(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/ip_restrictions", &q, page.more, page.items.last().map(|x| x.id.as_str()));
    Ok(list("ip_restrictions", page.items.into_iter().map(restriction).collect(), next))
}

pub(crate) async fn update_restriction(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<RestrictionJson>, ApiError> {
    p.require_admin("changing IP restrictions")?;
    let b: RestrictionUpdateBody = parse_body(&body)?;
    check_body_id(b.id.as_deref(), &id)?;
    let up = IpRestrictionUpdate {
        enforced: b.enforced,
        ip_policy_ids: b.ip_policy_ids,
        description: b.description,
        metadata: b.metadata,
    };
    let x = shared.admin(&p).update_ip_restriction(&id, &up).await?;
    tracing::info!(restriction = %x.id, enforced = x.enforced, by = %p.key_id, "IP restriction changed");
    Ok(Json(restriction(x)))
}

pub(crate) async fn delete_restriction(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require_admin("changing IP restrictions")?;
    shared.admin(&p).delete_ip_restriction(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
