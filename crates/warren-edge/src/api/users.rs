//! `/users` (warren's own): people in the account and their roles. Admins change them; every
//! role may read them.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use warren_store::{Role, User};

use super::{ApiError, PageQuery, Principal, next_page_uri, parse_body};
use crate::Shared;

#[derive(Serialize)]
pub(crate) struct UserJson {
    id: String,
    uri: String,
    email: String,
    role: &'static str,
    created_at: String,
    /// The bind rules every authtoken of the user stays within (null: no ceiling).
    authtoken_acl: Option<Vec<String>>,
    /// IP policies every session of the user's authtokens must pass.
    authtoken_ip_policy_ids: Vec<String>,
}

pub(super) fn json(u: User) -> UserJson {
    UserJson {
        uri: format!("/users/{}", u.id),
        id: u.id,
        email: u.email,
        role: u.role.as_str(),
        created_at: u.created_at,
        authtoken_acl: u.authtoken_acl,
        authtoken_ip_policy_ids: u.authtoken_ip_policy_ids,
    }
}

fn role(s: &str) -> Result<Role, ApiError> {
    Role::parse(s).ok_or_else(|| {
        ApiError::bad_request(format!("invalid role {s:?}: use admin, developer or read-only"))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    email: String,
    role: String,
    /// warren's: a dashboard password, kept only as its argon2id hash.
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    role: Option<String>,
    /// warren's: a new dashboard password; signs the user out of every dashboard session.
    password: Option<String>,
    /// Absent: unchanged; null: no ceiling; a list: the ceiling.
    #[serde(default, deserialize_with = "present")]
    authtoken_acl: Option<Option<Vec<String>>>,
    authtoken_ip_policy_ids: Option<Vec<String>>,
}

/// Tells an explicit `null` (`Some(None)`) from an absent field (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<UserJson>), ApiError> {
    p.require_admin("adding users")?;
    let b: CreateBody = parse_body(&body)?;
    if let Some(pw) = &b.password {
        // Refused before the user exists, so a bad password leaves nothing behind.
        warren_store::dashboard::check_password_rules(pw)?;
    }
    let admin = shared.admin(&p);
    let mut u = admin.create_user(&b.email, role(&b.role)?).await?;
    if let Some(pw) = &b.password {
        u = admin.set_user_password(&u.id, pw).await?;
    }
    Ok((StatusCode::CREATED, Json(json(u))))
}

pub(crate) async fn get(
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<UserJson>, ApiError> {
    Ok(Json(json(p.store.get_user(&p.account_id, &id).await?)))
}

#[derive(Serialize)]
pub(crate) struct ListJson {
    users: Vec<UserJson>,
    uri: &'static str,
    next_page_uri: Option<String>,
}

pub(crate) async fn list(
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> Result<Json<ListJson>, ApiError> {
    let page = p.store.list_users(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/users", &q, page.more, page.items.last().map(|u| u.id.as_str()));
    Ok(Json(ListJson {
        users: page.items.into_iter().map(json).collect(),
        uri: "/users",
        next_page_uri: next,
    }))
}

pub(crate) async fn update(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<UserJson>, ApiError> {
    p.require_admin("changing users")?;
    let b: UpdateBody = parse_body(&body)?;
    let mut user = p.store.get_user(&p.account_id, &id).await?;
    if let Some(pw) = &b.password {
        warren_store::dashboard::check_password_rules(pw)?;
    }
    let admin = shared.admin(&p);
    if let Some(r) = &b.role {
        user = admin.set_user_role(&id, role(r)?).await?;
    }
    if let Some(pw) = &b.password {
        user = admin.set_user_password(&id, pw).await?;
        tracing::info!(user = %id, by = %p.key_id, "dashboard password set");
    }
    if b.authtoken_acl.is_some() || b.authtoken_ip_policy_ids.is_some() {
        user = admin.set_user_limits(&id, b.authtoken_acl, b.authtoken_ip_policy_ids).await?;
        tracing::info!(user = %id, by = %p.key_id, "authtoken limits of a user changed");
    }
    Ok(Json(json(user)))
}

pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require_admin("removing users")?;
    if p.user_id.as_deref() == Some(id.as_str()) {
        return Err(ApiError::bad_request("an admin cannot remove themselves; ask another admin"));
    }
    // Their authtokens go with them: so do the sessions those tokens started.
    let revoked = shared.admin(&p).delete_user(&id).await?;
    tracing::info!(user = %id, revoked_authtokens = revoked.len(), by = %p.key_id, "user removed with their keys and authtokens");
    Ok(StatusCode::NO_CONTENT)
}
