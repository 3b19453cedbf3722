//! `/event_destinations` and `/event_subscriptions` (with `/sources`), in ngrok's shapes.
//! Admins change them; every role may read them. warren delivers to a signed webhook or a
//! JSON-lines file in the edge's events directory, or a NATS subject (JetStream); ngrok's cloud targets (kinesis, firehose,
//! cloudwatch_logs, datadog, azure_logs_ingestion) are refused by name. A webhook's signing
//! secret is in the response to create (or to an update that sets a new one) only.
//!
//! [`render_object`] turns an outbox record into the object an event carries: the API's own
//! representation of the resource, as ngrok's events do.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use warren_store::{EventDestination, EventSource, EventSubscription, NewEventDestination};

use super::{ApiError, PageQuery, Principal, Ref, check_body_id, next_page_uri, parse_body};
use crate::Shared;
use crate::events::{EVENT_TYPES, Target};

#[derive(Serialize)]
pub(crate) struct DestinationJson {
    id: String,
    uri: String,
    created_at: String,
    description: String,
    metadata: String,
    format: String,
    target: serde_json::Value,
    /// warren's addition: how delivery is going.
    delivery: DeliveryJson,
}

#[derive(Serialize)]
pub(crate) struct DeliveryJson {
    delivered: i64,
    last_delivered_at: Option<String>,
    /// Failed tries of the oldest undelivered event; 0 when all is well.
    attempts: i64,
    last_error: String,
    last_error_at: Option<String>,
    /// Events set aside after the destination refused them too often (newest first, at most
    /// 100); only on a single destination.
    parked_events: Option<Vec<ParkedJson>>,
}

#[derive(Serialize)]
pub(crate) struct ParkedJson {
    event_id: String,
    event_type: String,
    error: String,
    attempts: i64,
    parked_at: String,
}

fn destination_json(
    d: EventDestination,
    secret: Option<String>,
    parked: Option<Vec<ParkedJson>>,
) -> DestinationJson {
    let mut target: serde_json::Value = serde_json::from_str(&d.target).unwrap_or_default();
    if let (Some(s), Some(w)) = (secret, target.get_mut("webhook").and_then(|w| w.as_object_mut())) {
        w.insert("secret".into(), s.into());
    }
    DestinationJson {
        uri: format!("/event_destinations/{}", d.id),
        id: d.id,
        created_at: d.created_at,
        description: d.description,
        metadata: d.metadata,
        format: d.format,
        target,
        delivery: DeliveryJson {
            delivered: d.delivered,
            last_delivered_at: d.last_delivered_at,
            attempts: d.attempts,
            last_error: d.last_error,
            last_error_at: d.last_error_at,
            parked_events: parked,
        },
    }
}

#[derive(Serialize)]
pub(crate) struct SourceJson {
    #[serde(rename = "type")]
    kind: String,
    filter: String,
    fields: Vec<String>,
    uri: String,
}

fn source_json(subscription_id: &str, s: EventSource) -> SourceJson {
    SourceJson {
        uri: format!("/event_subscriptions/{subscription_id}/sources/{}", s.kind),
        kind: s.kind,
        filter: s.filter,
        fields: s.fields,
    }
}

#[derive(Serialize)]
pub(crate) struct SubscriptionJson {
    id: String,
    uri: String,
    created_at: String,
    metadata: String,
    description: String,
    sources: Vec<SourceJson>,
    destinations: Vec<Ref>,
}

fn subscription_json(s: EventSubscription) -> SubscriptionJson {
    SubscriptionJson {
        uri: format!("/event_subscriptions/{}", s.id),
        sources: s.sources.into_iter().map(|src| source_json(&s.id, src)).collect(),
        destinations: s.destination_ids.into_iter().map(|d| Ref::to("event_destinations", d)).collect(),
        id: s.id,
        created_at: s.created_at,
        metadata: s.metadata,
        description: s.description,
    }
}

/// The object an event carries for an outbox record of `kind`: the API's representation of
/// the resource as it was when it changed. Never holds a secret.
pub(crate) fn render_object(shared: &Shared, kind: &str, record: &str) -> Option<serde_json::Value> {
    fn to<T: serde::de::DeserializeOwned>(record: &str) -> Option<T> {
        serde_json::from_str(record).ok()
    }
    let v = match kind {
        "api_key" => serde_json::to_value(super::api_keys::json(to(record)?, None)),
        "credential" => serde_json::to_value(super::credentials::json(to(record)?, None)),
        "user" => serde_json::to_value(super::users::json(to(record)?)),
        "ip_policy" => serde_json::to_value(super::ip::policy(to(record)?)),
        "ip_policy_rule" => serde_json::to_value(super::ip::rule(to(record)?)),
        "ip_restriction" => serde_json::to_value(super::ip::restriction(to(record)?)),
        "reserved_domain" => serde_json::to_value(super::reserved::domain_json(shared, to(record)?, None)),
        "reserved_addr" => serde_json::to_value(super::reserved::addr_json(shared, to(record)?)),
        "tls_certificate" => serde_json::to_value(super::certificates::json(to(record)?).ok()?),
        "tunnel_session" => serde_json::to_value(super::sessions::session_json(to(record)?)),
        // Events carry the policy with its secrets masked, as non-admins see it.
        "cloud_endpoint" => serde_json::to_value(super::endpoints::cloud_json(to(record)?, false)),
        "event_destination" => serde_json::to_value(destination_json(to(record)?, None, None)),
        "event_subscription" => serde_json::to_value(subscription_json(to(record)?)),
        "traffic_policy" => {
            let p: warren_store::events::AccountTrafficPolicy = to(record)?;
            // Documents may hold OIDC client secrets and passwords: events carry them masked.
            let doc = (!p.document.is_empty()).then(|| {
                warren_policy::Document::redacted(&p.document)
                    .unwrap_or_else(|| "(not shown: it holds secrets)".into())
            });
            Ok(
                serde_json::json!({"uri": "/traffic_policy", "traffic_policy": doc, "updated_at": p.updated_at}),
            )
        }
        _ => return None,
    };
    v.ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDestinationBody {
    #[serde(default)]
    description: String,
    #[serde(default)]
    metadata: String,
    #[serde(default)]
    format: String,
    target: serde_json::Value,
    /// ngrok sends a test event first when asked; warren's deliveries show their errors on
    /// the resource instead, so asking for it is refused rather than ignored.
    verify_with_test_event: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateDestinationBody {
    id: Option<String>,
    description: Option<String>,
    metadata: Option<String>,
    format: Option<String>,
    target: Option<serde_json::Value>,
    verify_with_test_event: Option<bool>,
}

fn check_format(format: &str) -> Result<(), ApiError> {
    match format {
        "" | "json" => Ok(()),
        other => Err(ApiError::bad_request(format!("format {other:?}: the only format is json"))),
    }
}

fn refuse_test_event(v: Option<bool>) -> Result<(), ApiError> {
    if v == Some(true) {
        return Err(ApiError::bad_request(
            "verify_with_test_event is not supported; delivery errors show on the destination's `delivery`",
        ));
    }
    Ok(())
}

/// A target as stored, its sealed secret, and the secret to show once.
type Prepared = (String, Option<Vec<u8>>, Option<String>);

/// Checks `target` and seals its secret.
fn prepare_target(shared: &Shared, target: &serde_json::Value) -> Result<Prepared, ApiError> {
    let t = Target::parse(target, &shared.config).map_err(ApiError::bad_request)?;
    let (sealed, shown) = match t.secret() {
        Some(secret) => {
            let sealed = shared.master_key.seal(crate::events::SECRET_LABEL, secret.as_bytes());
            (Some(sealed), t.shown_secret().map(str::to_owned))
        }
        None => (None, None),
    };
    Ok((t.stored().to_string(), sealed, shown))
}

pub(crate) async fn create_destination(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<DestinationJson>), ApiError> {
    p.require_admin("event destinations")?;
    let b: CreateDestinationBody = parse_body(&body)?;
    check_format(&b.format)?;
    refuse_test_event(b.verify_with_test_event)?;
    let (target, secret_sealed, shown) = prepare_target(&shared, &b.target)?;
    let new = NewEventDestination {
        description: b.description,
        metadata: b.metadata,
        format: "json".into(),
        target,
        secret_sealed,
    };
    let d = shared.admin(&p).create_event_destination(&new).await?;
    Ok((StatusCode::CREATED, Json(destination_json(d, shown, Some(Vec::new())))))
}

async fn parked(p: &Principal, id: &str) -> Result<Vec<ParkedJson>, ApiError> {
    Ok(p.store
        .parked_events(id)
        .await?
        .into_iter()
        .map(|(event_id, event_type, error, attempts, parked_at)| ParkedJson {
            event_id,
            event_type,
            error,
            attempts,
            parked_at,
        })
        .collect())
}

pub(crate) async fn get_destination(
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<DestinationJson>, ApiError> {
    let d = p.store.get_event_destination(&p.account_id, &id).await?;
    let parked = parked(&p, &id).await?;
    Ok(Json(destination_json(d, None, Some(parked))))
}

#[derive(Serialize)]
pub(crate) struct DestinationListJson {
    event_destinations: Vec<DestinationJson>,
    uri: &'static str,
    next_page_uri: Option<String>,
}

pub(crate) async fn list_destinations(
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> Result<Json<DestinationListJson>, ApiError> {
    let page = p.store.list_event_destinations(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/event_destinations", &q, page.more, page.items.last().map(|d| d.id.as_str()));
    Ok(Json(DestinationListJson {
        event_destinations: page.items.into_iter().map(|d| destination_json(d, None, None)).collect(),
        uri: "/event_destinations",
        next_page_uri: next,
    }))
}

pub(crate) async fn update_destination(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<DestinationJson>, ApiError> {
    p.require_admin("event destinations")?;
    let b: UpdateDestinationBody = parse_body(&body)?;
    check_body_id(b.id.as_deref(), &id)?;
    check_format(b.format.as_deref().unwrap_or(""))?;
    refuse_test_event(b.verify_with_test_event)?;
    let prepared = b.target.as_ref().map(|t| prepare_target(&shared, t)).transpose()?;
    let (target, shown) = match prepared {
        Some((t, sealed, shown)) => (Some((t, sealed)), shown),
        None => (None, None),
    };
    let d = shared
        .admin(&p)
        .update_event_destination(
            &id,
            b.description.as_deref(),
            b.metadata.as_deref(),
            target.as_ref().map(|(t, s)| (t.as_str(), s.clone())),
        )
        .await?;
    let parked = parked(&p, &id).await?;
    Ok(Json(destination_json(d, shown, Some(parked))))
}

pub(crate) async fn delete_destination(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require_admin("event destinations")?;
    shared.admin(&p).delete_event_destination(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    filter: String,
    #[serde(default)]
    fields: Vec<String>,
    /// Sent by ngrok's clients when creating a source under a subscription's path.
    subscription_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSubscriptionBody {
    #[serde(default)]
    description: String,
    #[serde(default)]
    metadata: String,
    #[serde(default)]
    sources: Vec<SourceBody>,
    #[serde(default)]
    destination_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateSubscriptionBody {
    id: Option<String>,
    description: Option<String>,
    metadata: Option<String>,
    sources: Option<Vec<SourceBody>>,
    destination_ids: Option<Vec<String>>,
}

/// A known event type, and a filter that compiles.
fn check_source(b: SourceBody) -> Result<EventSource, ApiError> {
    if !EVENT_TYPES.contains(&b.kind.as_str()) {
        return Err(ApiError::bad_request(format!(
            "event type {:?} is not one warren emits; see docs/EVENTS.md for the list",
            b.kind
        )));
    }
    if !b.filter.trim().is_empty() {
        warren_policy::EventFilter::compile(&b.filter)
            .map_err(|e| ApiError::bad_request(format!("source {}: {e}", b.kind)))?;
    }
    if let Some(why) = b.fields.iter().find_map(|f| crate::events::unknown_field(&b.kind, f)) {
        return Err(ApiError::bad_request(why));
    }
    Ok(EventSource { kind: b.kind, filter: b.filter.trim().to_owned(), fields: b.fields })
}

pub(crate) async fn create_subscription(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<SubscriptionJson>), ApiError> {
    p.require_admin("event subscriptions")?;
    let b: CreateSubscriptionBody = parse_body(&body)?;
    let sources = b.sources.into_iter().map(check_source).collect::<Result<Vec<_>, _>>()?;
    let s = shared
        .admin(&p)
        .create_event_subscription(&b.description, &b.metadata, &sources, &b.destination_ids)
        .await?;
    Ok((StatusCode::CREATED, Json(subscription_json(s))))
}

pub(crate) async fn get_subscription(
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionJson>, ApiError> {
    Ok(Json(subscription_json(p.store.get_event_subscription(&p.account_id, &id).await?)))
}

#[derive(Serialize)]
pub(crate) struct SubscriptionListJson {
    event_subscriptions: Vec<SubscriptionJson>,
    uri: &'static str,
    next_page_uri: Option<String>,
}

pub(crate) async fn list_subscriptions(
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> Result<Json<SubscriptionListJson>, ApiError> {
    let page = p.store.list_event_subscriptions(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/event_subscriptions", &q, page.more, page.items.last().map(|s| s.id.as_str()));
    Ok(Json(SubscriptionListJson {
        event_subscriptions: page.items.into_iter().map(subscription_json).collect(),
        uri: "/event_subscriptions",
        next_page_uri: next,
    }))
}

pub(crate) async fn update_subscription(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<SubscriptionJson>, ApiError> {
    p.require_admin("event subscriptions")?;
    let b: UpdateSubscriptionBody = parse_body(&body)?;
    check_body_id(b.id.as_deref(), &id)?;
    let sources =
        b.sources.map(|s| s.into_iter().map(check_source).collect::<Result<Vec<_>, _>>()).transpose()?;
    let s = shared
        .admin(&p)
        .update_event_subscription(
            &id,
            b.description.as_deref(),
            b.metadata.as_deref(),
            sources.as_deref(),
            b.destination_ids.as_deref(),
        )
        .await?;
    Ok(Json(subscription_json(s)))
}

pub(crate) async fn delete_subscription(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    p.require_admin("event subscriptions")?;
    shared.admin(&p).delete_event_subscription(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub(crate) struct SourceListJson {
    sources: Vec<SourceJson>,
    uri: String,
}

pub(crate) async fn list_sources(
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<SourceListJson>, ApiError> {
    let s = p.store.get_event_subscription(&p.account_id, &id).await?;
    Ok(Json(SourceListJson {
        uri: format!("/event_subscriptions/{id}/sources"),
        sources: s.sources.into_iter().map(|src| source_json(&id, src)).collect(),
    }))
}

pub(crate) async fn create_source(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<SourceJson>), ApiError> {
    p.require_admin("event subscriptions")?;
    let b: SourceBody = parse_body(&body)?;
    check_body_id(b.subscription_id.as_deref(), &id)?;
    let src = check_source(b)?;
    let mut s = p.store.get_event_subscription(&p.account_id, &id).await?;
    if s.sources.iter().any(|x| x.kind == src.kind) {
        return Err(ApiError::conflict(format!(
            "subscription {id} already has a source of type {}",
            src.kind
        )));
    }
    s.sources.push(src.clone());
    shared.admin(&p).update_event_subscription(&id, None, None, Some(&s.sources), None).await?;
    Ok((StatusCode::CREATED, Json(source_json(&id, src))))
}

pub(crate) async fn get_source(
    Extension(p): Extension<Principal>,
    Path((id, kind)): Path<(String, String)>,
) -> Result<Json<SourceJson>, ApiError> {
    let s = p.store.get_event_subscription(&p.account_id, &id).await?;
    let src = s
        .sources
        .into_iter()
        .find(|x| x.kind == kind)
        .ok_or_else(|| ApiError::not_found(format!("subscription {id} has no source of type {kind}")))?;
    Ok(Json(source_json(&id, src)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateSourceBody {
    subscription_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    filter: Option<String>,
    fields: Option<Vec<String>>,
}

pub(crate) async fn update_source(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path((id, kind)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<SourceJson>, ApiError> {
    p.require_admin("event subscriptions")?;
    let b: UpdateSourceBody = parse_body(&body)?;
    check_body_id(b.subscription_id.as_deref(), &id)?;
    if b.kind.as_deref().is_some_and(|k| k != kind) {
        return Err(ApiError::bad_request("a source's type cannot change; delete it and create another"));
    }
    let mut s = p.store.get_event_subscription(&p.account_id, &id).await?;
    let Some(i) = s.sources.iter().position(|x| x.kind == kind) else {
        return Err(ApiError::not_found(format!("subscription {id} has no source of type {kind}")));
    };
    let current = s.sources[i].clone();
    let src = check_source(SourceBody {
        kind,
        filter: b.filter.unwrap_or(current.filter),
        fields: b.fields.unwrap_or(current.fields),
        subscription_id: None,
    })?;
    s.sources[i] = src.clone();
    shared.admin(&p).update_event_subscription(&id, None, None, Some(&s.sources), None).await?;
    Ok(Json(source_json(&id, src)))
}

pub(crate) async fn delete_source(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path((id, kind)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    p.require_admin("event subscriptions")?;
    let mut s = p.store.get_event_subscription(&p.account_id, &id).await?;
    let before = s.sources.len();
    s.sources.retain(|x| x.kind != kind);
    if s.sources.len() == before {
        return Err(ApiError::not_found(format!("subscription {id} has no source of type {kind}")));
    }
    shared.admin(&p).update_event_subscription(&id, None, None, Some(&s.sources), None).await?;
    Ok(StatusCode::NO_CONTENT)
}
