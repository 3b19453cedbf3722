//! `/reserved_domains` and `/reserved_addrs`: names and TCP ports an account owns. Binding
//! them is refused to every other account; a custom domain (outside the edge's base domain)
//! can be bound only once reserved.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use rand::Rng;
use serde::{Deserialize, Serialize};
use warren_store::{ReservedAddr, ReservedDomain, StoreError};

use super::{ApiError, PageQuery, Principal, check_body_id, next_page_uri, parse_body};
use crate::Shared;
use crate::registry::EndpointKey;

/// Ports tried when choosing a free one for a new reserved address.
const PORT_TRIES: usize = 64;

#[derive(Serialize)]
pub(crate) struct DomainJson {
    id: String,
    uri: String,
    created_at: String,
    description: String,
    metadata: String,
    domain: String,
    region: &'static str,
    /// For a custom domain: the name its DNS CNAME must point at (under the base domain,
    /// whose wildcard record reaches the edge). Null for names under the base domain.
    cname_target: Option<String>,
    /// The uploaded certificate served for it, if any.
    certificate: Option<super::Ref>,
    /// Proof of control of a custom domain (warren's addition): until the TXT record holds
    /// the value, the name cannot be bound and gets no certificate.
    verification: Verification,
}

#[derive(Serialize)]
struct Verification {
    /// `verified` or `pending`.
    status: &'static str,
    /// The TXT record to create (null for names under the edge's base domain).
    txt_record_name: Option<String>,
    txt_record_value: Option<String>,
    verified_at: Option<String>,
}

pub(super) fn domain_json(shared: &Shared, d: ReservedDomain, certificate_id: Option<String>) -> DomainJson {
    let base = &shared.config.base_domain;
    let cname_target = (!crate::session::under_domain(d.domain.trim_start_matches("*."), base))
        .then(|| format!("{}.cname.{base}", d.id.to_ascii_lowercase().replace('_', "-")));
    let needs_proof = !d.verify_token.is_empty();
    let verification = Verification {
        status: if d.verified_at.is_some() { "verified" } else { "pending" },
        txt_record_name: needs_proof.then(|| d.challenge_name()),
        txt_record_value: needs_proof.then(|| d.verify_token.clone()),
        verified_at: d.verified_at.clone(),
    };
    DomainJson {
        verification,
        uri: format!("/reserved_domains/{}", d.id),
        id: d.id,
        created_at: d.created_at,
        description: d.description,
        metadata: d.metadata,
        domain: d.domain,
        region: "local",
        cname_target,
        certificate: certificate_id.map(|id| super::Ref::to("tls_certificates", id)),
    }
}

/// Attaches uploaded certificate `cert_id` to reserved domain `d` and serves it.
async fn attach(shared: &Shared, p: &Principal, d: &ReservedDomain, cert_id: &str) -> Result<(), ApiError> {
    let c = p.store.get_uploaded_certificate(&p.account_id, cert_id).await?;
    p.require_owner_or_admin(c.owner_id.as_deref(), "a tls certificate (to attach it)")?;
    if !super::certificates::covers(&c.chain_pem, &d.domain) {
        return Err(ApiError::bad_request(format!("tls certificate {cert_id} does not cover {}", d.domain)));
    }
    shared.admin(p).attach_certificate(d, &c).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDomainBody {
    domain: Option<String>,
    /// ngrok's older spelling of `domain`.
    name: Option<String>,
    #[serde(default)]
    region: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    metadata: String,
    /// An uploaded certificate (`/tls_certificates`) to serve for the domain.
    certificate_id: Option<String>,
    certificate_management_policy: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    /// ngrok's clients repeat the id in the body.
    id: Option<String>,
    description: Option<String>,
    metadata: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainUpdateBody {
    id: Option<String>,
    description: Option<String>,
    metadata: Option<String>,
    /// Attach an uploaded certificate (null leaves it as it is; detach with
    /// `DELETE /reserved_domains/{id}/certificate`).
    certificate_id: Option<String>,
    certificate_management_policy: Option<serde_json::Value>,
}

fn check_region(region: &str) -> Result<(), ApiError> {
    if region.is_empty() || region == "local" {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "region {region:?}: this edge has one region, \"local\"; leave region empty"
        )))
    }
}

pub(crate) async fn create_domain(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<DomainJson>), ApiError> {
    let b: CreateDomainBody = parse_body(&body)?;
    check_region(&b.region)?;
    if b.certificate_management_policy.is_some() {
        return Err(ApiError::bad_request(
            "certificate_management_policy is not supported: the edge manages certificates of custom domains itself when ACME is configured; omit it",
        ));
    }
    let domain = b.domain.or(b.name).filter(|d| !d.trim().is_empty());
    let domain = domain.ok_or_else(|| ApiError::bad_request("domain is required"))?;
    let domain = warren_store::normalize_domain(&domain)?;
    let base = &shared.config.base_domain;
    if domain == *base || domain == format!("*.{base}") || shared.config.connect_hostnames.contains(&domain) {
        return Err(ApiError::bad_request(format!("{domain} is the edge's own name and cannot be reserved")));
    }
    // A name online in another account's session now would change hands under it.
    // Overlaps with other accounts' reservations and live names (at any depth, any scheme,
    // on any node) are refused by the store, under one writer.
    let mut certificate = None;
    if let Some(cert_id) = &b.certificate_id {
        let c = p.store.get_uploaded_certificate(&p.account_id, cert_id).await?;
        p.require_owner_or_admin(c.owner_id.as_deref(), "a tls certificate (to attach it)")?;
        if !super::certificates::covers(&c.chain_pem, &domain) {
            return Err(ApiError::bad_request(format!("tls certificate {cert_id} does not cover {domain}")));
        }
        certificate = Some(c);
    }
    // A name under the edge's own domain needs no proof; a custom domain does.
    let own = crate::session::under_domain(domain.trim_start_matches("*."), base);
    let d = shared
        .admin(&p)
        .create_reserved_domain(
            &domain,
            &b.description,
            &b.metadata,
            p.user_id.as_deref(),
            own,
            certificate.as_ref(),
        )
        .await?;
    tracing::info!(reserved_domain = %d.id, domain = %d.domain, by = %p.key_id, "domain reserved");
    Ok((StatusCode::CREATED, Json(domain_json(&shared, d, b.certificate_id))))
}

pub(crate) async fn get_domain(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<DomainJson>, ApiError> {
    let d = p.store.get_reserved_domain(&p.account_id, &id).await?;
    let cert = p.store.domain_certificate_id(&p.account_id, &id).await?;
    Ok(Json(domain_json(&shared, d, cert)))
}

#[derive(Serialize)]
pub(crate) struct DomainListJson {
    reserved_domains: Vec<DomainJson>,
    uri: &'static str,
    next_page_uri: Option<String>,
}

pub(crate) async fn list_domains(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> Result<Json<DomainListJson>, ApiError> {
    let page = p.store.list_reserved_domains(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/reserved_domains", &q, page.more, page.items.last().map(|d| d.id.as_str()));
    let mut reserved_domains = Vec::with_capacity(page.items.len());
    for d in page.items {
        let cert = p.store.domain_certificate_id(&p.account_id, &d.id).await?;
        reserved_domains.push(domain_json(&shared, d, cert));
    }
    Ok(Json(DomainListJson { reserved_domains, uri: "/reserved_domains", next_page_uri: next }))
}

pub(crate) async fn update_domain(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<DomainJson>, ApiError> {
    let b: DomainUpdateBody = parse_body(&body)?;
    check_body_id(b.id.as_deref(), &id)?;
    if b.certificate_management_policy.is_some() {
        return Err(ApiError::bad_request("certificate_management_policy is not supported; omit it"));
    }
    let current = p.store.get_reserved_domain(&p.account_id, &id).await?;
    p.require_owner_or_admin(current.owner_id.as_deref(), "a reserved domain")?;
    let d =
        shared.admin(&p).update_reserved_domain(&id, b.description.as_deref(), b.metadata.as_deref()).await?;
    if let Some(cert_id) = &b.certificate_id {
        attach(&shared, &p, &d, cert_id).await?;
    }
    let cert = p.store.domain_certificate_id(&p.account_id, &id).await?;
    Ok(Json(domain_json(&shared, d, cert)))
}

/// `POST /reserved_domains/{id}/verify` (warren's addition): looks the domain's TXT record up
/// now. 200 with the reservation once verified; 409 saying what was found otherwise.
pub(crate) async fn verify_domain(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<DomainJson>, ApiError> {
    let d = p.store.get_reserved_domain(&p.account_id, &id).await?;
    p.require_owner_or_admin(d.owner_id.as_deref(), "a reserved domain")?;
    let d = shared.admin(&p).verify_domain(d).await.map_err(ApiError::conflict)?;
    tracing::info!(reserved_domain = %d.id, domain = %d.domain, by = %p.key_id, "custom domain verified");
    let cert = p.store.domain_certificate_id(&p.account_id, &id).await?;
    Ok(Json(domain_json(&shared, d, cert)))
}

/// `DELETE /reserved_domains/{id}/certificate`: stop serving the uploaded certificate (the
/// edge's default, or ACME's, takes over).
pub(crate) async fn detach_certificate(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let d = p.store.get_reserved_domain(&p.account_id, &id).await?;
    p.require_owner_or_admin(d.owner_id.as_deref(), "a reserved domain")?;
    shared.admin(&p).detach_certificate(&d).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn delete_domain(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let d = p.store.get_reserved_domain(&p.account_id, &id).await?;
    p.require_owner_or_admin(d.owner_id.as_deref(), "a reserved domain")?;
    shared.admin(&p).delete_reserved_domain(&d).await?;
    tracing::info!(reserved_domain = %id, by = %p.key_id, "reserved domain released");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub(crate) struct AddrJson {
    id: String,
    uri: String,
    created_at: String,
    description: String,
    metadata: String,
    addr: String,
    region: &'static str,
}

pub(super) fn addr_json(shared: &Shared, a: ReservedAddr) -> AddrJson {
    AddrJson {
        uri: format!("/reserved_addrs/{}", a.id),
        addr: format!("{}:{}", shared.config.tcp_host, a.port),
        id: a.id,
        created_at: a.created_at,
        description: a.description,
        metadata: a.metadata,
        region: "local",
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAddrBody {
    #[serde(default)]
    description: String,
    #[serde(default)]
    metadata: String,
    #[serde(default)]
    region: String,
    /// Sent as null by ngrok's API clients; endpoint configurations are not supported.
    endpoint_configuration_id: Option<String>,
}

/// As in ngrok, the edge chooses the port: a random one of the tcp range that no account
/// has reserved and no session holds.
pub(crate) async fn create_addr(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<AddrJson>), ApiError> {
    let b: CreateAddrBody = parse_body(&body)?;
    check_region(&b.region)?;
    if b.endpoint_configuration_id.is_some() {
        return Err(ApiError::bad_request("endpoint_configuration_id is not supported; omit it"));
    }
    let range = shared.config.tcp_ports.clone();
    for _ in 0..PORT_TRIES {
        let port = rand::rng().random_range(range.clone());
        if shared.sessions.registry.is_taken(&EndpointKey::Port(port)) {
            continue;
        }
        match shared
            .admin(&p)
            .create_reserved_addr(port, &b.description, &b.metadata, p.user_id.as_deref())
            .await
        {
            Ok(a) => {
                tracing::info!(reserved_addr = %a.id, port, by = %p.key_id, "tcp address reserved");
                return Ok((StatusCode::CREATED, Json(addr_json(&shared, a))));
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict("no free port left in this edge's tcp range to reserve"))
}

pub(crate) async fn get_addr(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<AddrJson>, ApiError> {
    let a = p.store.get_reserved_addr(&p.account_id, &id).await?;
    Ok(Json(addr_json(&shared, a)))
}

#[derive(Serialize)]
pub(crate) struct AddrListJson {
    reserved_addrs: Vec<AddrJson>,
    uri: &'static str,
    next_page_uri: Option<String>,
}

pub(crate) async fn list_addrs(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> Result<Json<AddrListJson>, ApiError> {
    let page = p.store.list_reserved_addrs(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/reserved_addrs", &q, page.more, page.items.last().map(|a| a.id.as_str()));
    Ok(Json(AddrListJson {
        reserved_addrs: page.items.into_iter().map(|a| addr_json(&shared, a)).collect(),
        uri: "/reserved_addrs",
        next_page_uri: next,
    }))
}

pub(crate) async fn update_addr(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<AddrJson>, ApiError> {
    let b: UpdateBody = parse_body(&body)?;
    check_body_id(b.id.as_deref(), &id)?;
    let current = p.store.get_reserved_addr(&p.account_id, &id).await?;
    p.require_owner_or_admin(current.owner_id.as_deref(), "a reserved address")?;
    let a =
        shared.admin(&p).update_reserved_addr(&id, b.description.as_deref(), b.metadata.as_deref()).await?;
    Ok(Json(addr_json(&shared, a)))
}

pub(crate) async fn delete_addr(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let current = p.store.get_reserved_addr(&p.account_id, &id).await?;
    p.require_owner_or_admin(current.owner_id.as_deref(), "a reserved address")?;
    shared.admin(&p).delete_reserved_addr(&id).await?;
    tracing::info!(reserved_addr = %id, by = %p.key_id, "reserved tcp address released");
    Ok(StatusCode::NO_CONTENT)
}
