//! `/credentials`: authtokens. The token is in the response to create only.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use warren_store::{Credential, CredentialUpdate, NewCredential, Role};

use super::{ApiError, PageQuery, Principal, next_page_uri, parse_body};
use crate::Shared;

#[derive(Serialize)]
pub(crate) struct CredentialJson {
    id: String,
    uri: String,
    created_at: String,
    description: String,
    metadata: String,
    token: Option<String>,
    acl: Vec<String>,
    owner_id: Option<String>,
    /// warren's addition: IP policies the token's agent sessions must pass.
    ip_policy_ids: Vec<String>,
}

pub(super) fn json(c: Credential, token: Option<String>) -> CredentialJson {
    CredentialJson {
        uri: format!("/credentials/{}", c.id),
        id: c.id,
        created_at: c.created_at,
        description: c.description,
        metadata: c.metadata,
        token,
        acl: c.acl,
        owner_id: c.owner_id,
        ip_policy_ids: c.ip_policy_ids,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    description: String,
    #[serde(default)]
    metadata: String,
    #[serde(default)]
    acl: Vec<String>,
    owner_id: Option<String>,
    #[serde(default)]
    ip_policy_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    description: Option<String>,
    metadata: Option<String>,
    acl: Option<Vec<String>>,
    ip_policy_ids: Option<Vec<String>>,
}

pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<CredentialJson>), ApiError> {
    let b: CreateBody = parse_body(&body)?;
    let owner_id = match (p.role, b.owner_id) {
        (Role::Admin, Some(o)) => {
            p.store.get_user(&p.account_id, &o).await?;
            Some(o)
        }
        (Role::Admin, None) => None,
        (_, Some(o)) if Some(&o) != p.user_id.as_ref() => {
            return Err(ApiError::forbidden("only admins may create authtokens for other users"));
        }
        (_, _) => p.user_id.clone(),
    };
    within_ceiling(&p, &b.acl, &b.ip_policy_ids).await?;
    let new = NewCredential {
        description: b.description,
        metadata: b.metadata,
        acl: b.acl,
        owner_id,
        ip_policy_ids: b.ip_policy_ids,
    };
    let (c, token) = shared.admin(&p).create_credential(&new).await?;
    tracing::info!(credential = %c.id, by = %p.key_id, "authtoken created");
    Ok((StatusCode::CREATED, Json(json(c, Some(token.0)))))
}

/// A caller other than an admin keeps their authtokens within what an admin allows them: the
/// ACL within their ceiling, and every IP policy the admin requires. Admins are not limited.
async fn within_ceiling(p: &Principal, acl: &[String], ip_policy_ids: &[String]) -> Result<(), ApiError> {
    if p.role == Role::Admin {
        return Ok(());
    }
    let Some(uid) = &p.user_id else { return Ok(()) };
    let user = p.store.get_user(&p.account_id, uid).await?;
    if let Some(why) = user.acl_outside_ceiling(acl) {
        return Err(ApiError::forbidden(format!("{why}; only an administrator can widen it")));
    }
    let missing: Vec<&String> =
        user.authtoken_ip_policy_ids.iter().filter(|id| !ip_policy_ids.contains(id)).collect();
    if !missing.is_empty() {
        return Err(ApiError::forbidden(format!(
            "this user's authtokens must keep the IP policies {missing:?}; only an administrator can lift them"
        )));
    }
    Ok(())
}

pub(crate) async fn get(
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<CredentialJson>, ApiError> {
    Ok(Json(json(p.store.get_credential(&p.account_id, &id).await?, None)))
}

#[derive(Serialize)]
pub(crate) struct ListJson {
    credentials: Vec<CredentialJson>,
    uri: &'static str,
    next_page_uri: Option<String>,
}

pub(crate) async fn list(
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> Result<Json<ListJson>, ApiError> {
    let page = p.store.list_credentials(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/credentials", &q, page.more, page.items.last().map(|c| c.id.as_str()));
    Ok(Json(ListJson {
        credentials: page.items.into_iter().map(|c| json(c, None)).collect(),
        uri: "/credentials",
        next_page_uri: next,
    }))
}

pub(crate) async fn update(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<CredentialJson>, ApiError> {
    let b: UpdateBody = parse_body(&body)?;
    let current = p.store.get_credential(&p.account_id, &id).await?;
    p.require_owner_or_admin(current.owner_id.as_deref(), "an authtoken")?;
    let rules_change = b.acl.as_ref().is_some_and(|a| *a != current.acl)
        || b.ip_policy_ids.as_ref().is_some_and(|i| *i != current.ip_policy_ids);
    if rules_change {
        let acl = b.acl.as_ref().unwrap_or(&current.acl);
        let policies = b.ip_policy_ids.as_ref().unwrap_or(&current.ip_policy_ids);
        within_ceiling(&p, acl, policies).await?;
    }
    let up = CredentialUpdate {
        description: b.description,
        metadata: b.metadata,
        acl: b.acl,
        ip_policy_ids: b.ip_policy_ids,
    };
    let (updated, restarted) = shared.admin(&p).update_credential(&current, &up).await?;
    if rules_change {
        tracing::info!(credential = %id, by = %p.key_id, sessions_restarted = restarted, "authtoken rules changed");
    }
    Ok(Json(json(updated, None)))
}

pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let current = p.store.get_credential(&p.account_id, &id).await?;
    p.require_owner_or_admin(current.owner_id.as_deref(), "an authtoken")?;
    let ended = shared.admin(&p).delete_credential(&id).await?;
    tracing::info!(credential = %id, by = %p.key_id, sessions_ended = ended, "authtoken deleted");
    Ok(StatusCode::NO_CONTENT)
}
