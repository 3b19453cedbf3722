//! `/api_keys`. The key is in the response to create only. Rotation: create a new key, move
//! clients to it, delete the old one; the old one is refused on its next call.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use warren_store::{ApiKey, NewApiKey, Role};

use super::{ApiError, PageQuery, Principal, next_page_uri, parse_body};
use crate::Shared;

#[derive(Serialize)]
pub(crate) struct ApiKeyJson {
    id: String,
    uri: String,
    description: String,
    metadata: String,
    created_at: String,
    token: Option<String>,
    owner_id: Option<String>,
    expires_at: Option<String>,
}

pub(super) fn json(k: ApiKey, token: Option<String>) -> ApiKeyJson {
    ApiKeyJson {
        uri: format!("/api_keys/{}", k.id),
        id: k.id,
        description: k.description,
        metadata: k.metadata,
        created_at: k.created_at,
        token,
        owner_id: k.owner_id,
        expires_at: k.expires_at,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    description: String,
    #[serde(default)]
    metadata: String,
    owner_id: Option<String>,
    expires_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    description: Option<String>,
    metadata: Option<String>,
}

pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<ApiKeyJson>), ApiError> {
    let b: CreateBody = parse_body(&body)?;
    // A key carries its owner's role: nobody may mint a key stronger than themselves.
    let owner_id = match (p.role, b.owner_id) {
        (Role::Admin, Some(o)) => {
            p.store.get_user(&p.account_id, &o).await?;
            Some(o)
        }
        (Role::Admin, None) => p.user_id.clone(),
        (_, Some(o)) if Some(&o) != p.user_id.as_ref() => {
            return Err(ApiError::forbidden("only admins may create API keys for other users"));
        }
        (_, _) => p.user_id.clone(),
    };
    let new =
        NewApiKey { description: b.description, metadata: b.metadata, owner_id, expires_at: b.expires_at };
    let (k, token) = shared.admin(&p).create_api_key(&new).await?;
    tracing::info!(api_key = %k.id, by = %p.key_id, "API key created");
    Ok((StatusCode::CREATED, Json(json(k, Some(token.0)))))
}

pub(crate) async fn get(
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<ApiKeyJson>, ApiError> {
    Ok(Json(json(p.store.get_api_key(&p.account_id, &id).await?, None)))
}

#[derive(Serialize)]
pub(crate) struct ListJson {
    keys: Vec<ApiKeyJson>,
    uri: &'static str,
    next_page_uri: Option<String>,
}

pub(crate) async fn list(
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> Result<Json<ListJson>, ApiError> {
    let page = p.store.list_api_keys(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/api_keys", &q, page.more, page.items.last().map(|k| k.id.as_str()));
    Ok(Json(ListJson {
        keys: page.items.into_iter().map(|k| json(k, None)).collect(),
        uri: "/api_keys",
        next_page_uri: next,
    }))
}

pub(crate) async fn update(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<ApiKeyJson>, ApiError> {
    let b: UpdateBody = parse_body(&body)?;
    let current = p.store.get_api_key(&p.account_id, &id).await?;
    p.require_owner_or_admin(current.owner_id.as_deref(), "an API key")?;
    Ok(Json(json(shared.admin(&p).update_api_key(&id, b.description, b.metadata).await?, None)))
}

pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let current = p.store.get_api_key(&p.account_id, &id).await?;
    p.require_owner_or_admin(current.owner_id.as_deref(), "an API key")?;
    shared.admin(&p).delete_api_key(&id).await?;
    tracing::info!(api_key = %id, by = %p.key_id, "API key deleted");
    Ok(StatusCode::NO_CONTENT)
}
