//! `/tls_certificates`: certificates operators upload with their private key (ngrok's API),
//! attached to reserved domains with `certificate_id`. The key is checked against the
//! certificate, sealed with the master key, and never returned.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use warren_store::UploadedCertificate;

use super::{ApiError, PageQuery, Principal, check_body_id, next_page_uri, parse_body};
use crate::Shared;

#[derive(Serialize)]
pub(crate) struct Sans {
    dns_names: Vec<String>,
    ips: Vec<String>,
}

#[derive(Serialize)]
pub(crate) struct CertificateJson {
    id: String,
    uri: String,
    created_at: String,
    description: String,
    metadata: String,
    certificate_pem: String,
    subject_common_name: String,
    subject_alternative_names: Sans,
    issuer_common_name: String,
    serial_number: String,
    not_before: String,
    not_after: String,
    private_key_type: &'static str,
}

/// What the leaf says about itself.
struct Leaf {
    common_name: String,
    dns_names: Vec<String>,
    ips: Vec<String>,
    issuer_common_name: String,
    serial: String,
    not_before: String,
    not_after: String,
}

fn leaf(chain_pem: &str) -> Result<Leaf, String> {
    let first = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or("certificate_pem holds no certificate")?
        .map_err(|e| format!("certificate_pem: {e}"))?;
    let (_, x) = x509_parser::parse_x509_certificate(&first).map_err(|e| format!("certificate_pem: {e}"))?;
    let cn = |n: &x509_parser::x509::X509Name<'_>| {
        n.iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or("").to_owned()
    };
    let (mut dns_names, mut ips) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => dns_names.push(d.to_ascii_lowercase()),
                x509_parser::extensions::GeneralName::IPAddress(b) => ips.push(match b.len() {
                    4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
                    16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()).to_string(),
                    _ => continue,
                }),
                _ => {}
            }
        }
    }
    let time =
        |t: x509_parser::time::ASN1Time| warren_store::rfc3339(u64::try_from(t.timestamp()).unwrap_or(0));
    Ok(Leaf {
        common_name: cn(x.subject()),
        dns_names,
        ips,
        issuer_common_name: cn(x.issuer()),
        serial: x.raw_serial_as_string(),
        not_before: time(x.validity().not_before),
        not_after: time(x.validity().not_after),
    })
}

pub(super) fn json(c: UploadedCertificate) -> Result<CertificateJson, ApiError> {
    let l = leaf(&c.chain_pem).map_err(|e| {
        tracing::error!(certificate = %c.id, error = %e, "stored certificate does not parse");
        ApiError::internal()
    })?;
    Ok(CertificateJson {
        uri: format!("/tls_certificates/{}", c.id),
        id: c.id,
        created_at: c.created_at,
        description: c.description,
        metadata: c.metadata,
        certificate_pem: c.chain_pem,
        subject_common_name: l.common_name,
        subject_alternative_names: Sans { dns_names: l.dns_names, ips: l.ips },
        issuer_common_name: l.issuer_common_name,
        serial_number: l.serial,
        not_before: l.not_before,
        not_after: l.not_after,
        private_key_type: "unknown",
    })
}

/// Whether the certificate's names cover `domain` (a wildcard covers one label).
pub(crate) fn covers(chain_pem: &str, domain: &str) -> bool {
    let Ok(l) = leaf(chain_pem) else { return false };
    l.dns_names.iter().any(|n| match n.strip_prefix("*.") {
        Some(parent) => {
            domain.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == parent)
        }
        None => n == domain,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    certificate_pem: String,
    private_key_pem: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    metadata: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    id: Option<String>,
    description: Option<String>,
    metadata: Option<String>,
}

pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<(StatusCode, Json<CertificateJson>), ApiError> {
    let b: CreateBody = parse_body(&body)?;
    leaf(&b.certificate_pem).map_err(ApiError::bad_request)?;
    let chain = CertificateDer::pem_slice_iter(b.certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request(format!("certificate_pem: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(b.private_key_pem.as_bytes())
        .map_err(|_| ApiError::bad_request("private_key_pem is not a PEM private key"))?;
    // The key must belong to the certificate; checked by loading both as rustls would.
    crate::tls::CertStore::check_pair(chain, key)
        .map_err(|_| ApiError::bad_request("private_key_pem does not match certificate_pem"))?;
    let id = warren_store::generate_id("cert");
    let c = UploadedCertificate {
        key_sealed: shared.master_key.seal(&id, b.private_key_pem.as_bytes()),
        id,
        account_id: p.account_id.clone(),
        description: b.description,
        metadata: b.metadata,
        chain_pem: b.certificate_pem,
        created_at: warren_store::now_rfc3339(),
        owner_id: p.user_id.clone(),
    };
    shared.admin(&p).insert_uploaded_certificate(&c).await?;
    tracing::info!(certificate = %c.id, by = %p.key_id, "tls certificate uploaded");
    Ok((StatusCode::CREATED, Json(json(c)?)))
}

pub(crate) async fn get(
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<CertificateJson>, ApiError> {
    Ok(Json(json(p.store.get_uploaded_certificate(&p.account_id, &id).await?)?))
}

#[derive(Serialize)]
pub(crate) struct ListJson {
    tls_certificates: Vec<CertificateJson>,
    uri: &'static str,
    next_page_uri: Option<String>,
}

pub(crate) async fn list(
    Extension(p): Extension<Principal>,
    q: PageQuery,
) -> Result<Json<ListJson>, ApiError> {
    let page = p.store.list_uploaded_certificates(&p.account_id, q.limit(), q.before_id.as_deref()).await?;
    let next = next_page_uri("/tls_certificates", &q, page.more, page.items.last().map(|c| c.id.as_str()));
    let tls_certificates = page.items.into_iter().map(json).collect::<Result<_, _>>()?;
    Ok(Json(ListJson { tls_certificates, uri: "/tls_certificates", next_page_uri: next }))
}

pub(crate) async fn update(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<CertificateJson>, ApiError> {
    let b: UpdateBody = parse_body(&body)?;
    check_body_id(b.id.as_deref(), &id)?;
    let current = p.store.get_uploaded_certificate(&p.account_id, &id).await?;
    p.require_owner_or_admin(current.owner_id.as_deref(), "a tls certificate")?;
    let c = shared
        .admin(&p)
        .update_uploaded_certificate(&id, b.description.as_deref(), b.metadata.as_deref())
        .await?;
    Ok(Json(json(c)?))
}

pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let current = p.store.get_uploaded_certificate(&p.account_id, &id).await?;
    p.require_owner_or_admin(current.owner_id.as_deref(), "a tls certificate")?;
    shared.admin(&p).delete_uploaded_certificate(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Serves an uploaded certificate for `domain` (sealed again under the domain's label, as
/// ACME certificates are) from the next handshake on.
pub(crate) async fn serve_for_domain(
    shared: &Shared,
    c: &UploadedCertificate,
    domain: &str,
) -> Result<(), ApiError> {
    let key_pem = shared.master_key.open(&c.id, &c.key_sealed).map_err(|e| {
        tracing::error!(certificate = %c.id, error = %e, "could not open an uploaded key");
        ApiError::internal()
    })?;
    let not_after = x509_not_after(&c.chain_pem).unwrap_or(0);
    let stored = warren_store::StoredCertificate {
        domain: domain.to_owned(),
        chain_pem: c.chain_pem.clone(),
        key_sealed: shared.master_key.seal(domain, &key_pem),
        not_after,
        source: "upload".into(),
        created_at: warren_store::now_rfc3339(),
    };
    shared.store.put_certificate(&stored).await?;
    crate::acme::install(shared, domain, &stored.chain_pem, &stored.key_sealed).map_err(|e| {
        tracing::error!(%domain, error = %e, "could not serve an uploaded certificate");
        ApiError::internal()
    })
}

fn x509_not_after(chain_pem: &str) -> Option<i64> {
    let first = CertificateDer::pem_slice_iter(chain_pem.as_bytes()).next()?.ok()?;
    let (_, x) = x509_parser::parse_x509_certificate(&first).ok()?;
    Some(x.validity().not_after.timestamp())
}
