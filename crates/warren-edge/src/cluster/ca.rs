//! The cluster CA and this node's relay certificate. The first node on a database makes the
//! CA and stores it with its key sealed by the master key, so every node that shares the
//! master key (which the nodes of a cluster must, for sealed certificate keys too) can issue
//! itself a certificate at start; relay links are mutual TLS under that CA and nothing else.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use warren_store::{ClusterCa, Store};

use crate::sealed::MasterKey;

/// Why the cluster's TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaError {
    #[error(transparent)]
    Store(#[from] warren_store::StoreError),
    #[error(
        "this node's master key does not open the cluster CA's key: every node of a cluster needs the same master key (WARREN_MASTER_KEY or the master key file)"
    )]
    WrongMasterKey,
    #[error("cluster certificate: {0}")]
    Cert(String),
}

impl From<rcgen::Error> for CaError {
    fn from(e: rcgen::Error) -> CaError {
        CaError::Cert(e.to_string())
    }
}

impl From<rustls::Error> for CaError {
    fn from(e: rustls::Error) -> CaError {
        CaError::Cert(e.to_string())
    }
}

/// This node's side of relay links: what it presents and whom it trusts.
pub(crate) struct NodeTls {
    /// For links other nodes open to this one (client certificates required).
    pub(crate) server: Arc<rustls::ServerConfig>,
    /// For links this node opens.
    pub(crate) client: Arc<rustls::ClientConfig>,
}

/// The name a node's relay certificate holds, and that a node dialling it expects: derived
/// from the node id, so a link reaches the node the route named and no other member.
pub(crate) fn node_name(node_id: &str) -> String {
    let digest = warren_store::hash_secret(node_id);
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.node.warren.invalid")
}

/// The server name to dial `node_id` with.
pub(crate) fn server_name(node_id: &str) -> ServerName<'static> {
    ServerName::try_from(node_name(node_id)).expect("a hex label under a fixed domain is a DNS name")
}

/// Loads the cluster CA (making it if this is the first node) and issues this node its relay
/// certificate.
pub(crate) async fn node_tls(store: &Store, master: &MasterKey, node_id: &str) -> Result<NodeTls, CaError> {
    let stored = match store.cluster_ca().await? {
        Some(ca) => ca,
        None => {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            let fresh = ClusterCa {
                cert_pem: cert.pem(),
                key_sealed: master.seal(crate::sealed::CLUSTER_CA_LABEL, key.serialize_pem().as_bytes()),
            };
            // Another node may have won the race: use whichever CA was stored.
            store.init_cluster_ca(&fresh).await?
        }
    };
    let key_pem = master
        .open(crate::sealed::CLUSTER_CA_LABEL, &stored.key_sealed)
        .map_err(|_| CaError::WrongMasterKey)?;
    let key_pem = String::from_utf8(key_pem).map_err(|_| CaError::WrongMasterKey)?;
    let ca_key = KeyPair::from_pem(&key_pem)?;
    let ca_der = CertificateDer::pem_slice_iter(stored.cert_pem.as_bytes())
        .next()
        .ok_or_else(|| CaError::Cert("the stored cluster CA has no certificate".into()))?
        .map_err(|e| CaError::Cert(e.to_string()))?;

    let issuer = Issuer::new(ca_params(), &ca_key);
    let leaf_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names.push(SanType::DnsName(node_name(node_id).try_into()?));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("warren node {node_id}"));
    params.distinguished_name = dn;
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let leaf = params.signed_by(&leaf_key, &issuer)?;
    let chain = vec![leaf.der().clone(), ca_der.clone()];
    let key = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der)?;
    let roots = Arc::new(roots);
    let provider = crate::tls::provider();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| CaError::Cert(e.to_string()))?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key())?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key())?;
    Ok(NodeTls { server: Arc::new(server), client: Arc::new(client) })
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "warren cluster CA");
    dn.push(DnType::OrganizationName, "warren");
    p.distinguished_name = dn;
    p.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}
