//! `/traffic_policy`: the account-wide traffic policy (a warren addition to ngrok's API).
//! It runs before every endpoint's own policy, so an agent cannot undo it. Administrators set
//! and remove it; every role may read it (other roles with its secrets masked). A change restarts the account's agent sessions so
//! every endpoint is bound again under it.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, Principal, parse_body};
use crate::Shared;

#[derive(Serialize)]
pub(crate) struct PolicyJson {
    uri: &'static str,
    /// The document as given (YAML or JSON text); null when none is set.
    traffic_policy: Option<String>,
    updated_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    /// YAML or JSON text, or a JSON object.
    traffic_policy: serde_json::Value,
}

pub(crate) async fn get(Extension(p): Extension<Principal>) -> Result<Json<PolicyJson>, ApiError> {
    let current = p.store.account_traffic_policy(&p.account_id).await?;
    let (mut traffic_policy, updated_at) = current.map_or((None, None), |(d, u)| (Some(d), Some(u)));
    // The document may hold an OIDC client secret or basic-auth passwords: only admins (who
    // can set it anyway) see it as written; other roles see it as JSON with those masked.
    if p.role != warren_store::Role::Admin {
        traffic_policy = traffic_policy.map(|t| {
            warren_policy::Document::redacted(&t).unwrap_or_else(|| "(not shown: it holds secrets)".into())
        });
    }
    Ok(Json(PolicyJson { uri: "/traffic_policy", traffic_policy, updated_at }))
}

pub(crate) async fn put(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<Json<PolicyJson>, ApiError> {
    p.require_admin("the account's traffic policy")?;
    let b: PutBody = parse_body(&body)?;
    let text = match b.traffic_policy {
        serde_json::Value::String(s) => s,
        v @ serde_json::Value::Object(_) => v.to_string(),
        _ => return Err(ApiError::bad_request("traffic_policy must be a document (text or an object)")),
    };
    if text.len() > 256 * 1024 {
        return Err(ApiError::bad_request("traffic_policy is longer than 256 KiB"));
    }
    crate::policy::check_account_policy(&shared, &p.account_id, &text)
        .await
        .map_err(|e| ApiError::bad_request(format!("invalid traffic policy: {e}")))?;
    let (updated_at, ended) = shared.admin(&p).set_account_traffic_policy(&text).await?;
    tracing::info!(by = %p.key_id, sessions_restarted = ended, "account traffic policy set");
    Ok(Json(PolicyJson { uri: "/traffic_policy", traffic_policy: Some(text), updated_at: Some(updated_at) }))
}

pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
) -> Result<StatusCode, ApiError> {
    p.require_admin("the account's traffic policy")?;
    let Some(ended) = shared.admin(&p).delete_account_traffic_policy().await? else {
        return Err(ApiError::not_found("this account has no traffic policy"));
    };
    tracing::info!(by = %p.key_id, sessions_restarted = ended, "account traffic policy removed");
    Ok(StatusCode::NO_CONTENT)
}
