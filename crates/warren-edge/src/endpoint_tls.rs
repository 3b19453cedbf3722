//! Per-endpoint TLS at the edge for https endpoints: minimum and maximum versions and mutual
//! TLS, from the endpoint's `terminate-tls` traffic policy action (ngrok's way) or the SDKs'
//! `MutualTLSCA` bind option. Each such endpoint gets its own rustls config, chosen by SNI
//! on the shared port; endpoints without settings share the edge's default (TLS 1.2–1.3, no
//! client certificates). The verified client certificate is described to the upstream in
//! `Warren-Client-Cert-*` headers; visitors' own copies of those headers are removed.

use std::sync::Arc;

use base64::Engine;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use serde_json::Value;

/// The headers that describe a verified client certificate to the upstream.
pub(crate) const CERT_HEADER_PREFIX: &str = "warren-client-cert-";

/// How a client certificate is asked for (ngrok's `mutual_tls_verification_strategy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// A certificate signed by one of the CAs is required.
    RequireAndVerify,
    /// Some certificate is required; its chain is not checked.
    RequireAny,
    /// Asked for; verified when given; visitors without one are let in.
    Request,
}

/// One endpoint's TLS settings.
#[derive(Clone, Debug)]
pub(crate) struct EdgeTls {
    tls13_only: bool,
    tls12_only: bool,
    client_cas: Vec<CertificateDer<'static>>,
    strategy: Strategy,
}

impl EdgeTls {
    /// The settings a Bind asks for; `None` when it asks for the defaults.
    pub(crate) fn from_bind(opts: &warren_proto::HttpOpts) -> Result<Option<EdgeTls>, String> {
        let mut tls = EdgeTls {
            tls13_only: false,
            tls12_only: false,
            client_cas: Vec::new(),
            strategy: Strategy::RequireAndVerify,
        };
        let mut any = false;
        if let Some(m) = opts.mutual_tls_ca.as_ref().filter(|v| !v.is_null()) {
            let b64 = m.get("mutual_tls_ca").and_then(Value::as_str).unwrap_or("");
            let pem = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("MutualTLSCA is not base64: {e}"))?;
            tls.client_cas.extend(parse_cas(&pem)?);
            any = true;
        }
        if let Some(policy) = opts.traffic_policy.as_ref().filter(|v| !v.is_null()) {
            for config in terminate_tls_actions(policy)? {
                tls.apply(&config)?;
                any = true;
            }
        }
        Ok(any.then_some(tls))
    }

    fn apply(&mut self, config: &serde_json::Map<String, Value>) -> Result<(), String> {
        for (key, value) in config {
            match key.as_str() {
                "min_version" => match value.as_str() {
                    Some("1.2") => {}
                    Some("1.3") => self.tls13_only = true,
                    _ => return Err("terminate-tls: min_version must be \"1.2\" or \"1.3\"".into()),
                },
                "max_version" => match value.as_str() {
                    Some("1.3") => {}
                    Some("1.2") => self.tls12_only = true,
                    _ => return Err("terminate-tls: max_version must be \"1.2\" or \"1.3\"".into()),
                },
                "mutual_tls_certificate_authorities" => {
                    let list = value.as_array().ok_or(
                        "terminate-tls: mutual_tls_certificate_authorities must be a list of PEM strings",
                    )?;
                    for pem in list {
                        let pem = pem.as_str().ok_or(
                            "terminate-tls: mutual_tls_certificate_authorities must hold PEM strings",
                        )?;
                        self.client_cas.extend(parse_cas(pem.as_bytes())?);
                    }
                }
                "mutual_tls_verification_strategy" => {
                    self.strategy = match value.as_str() {
                        Some("require-and-verify") => Strategy::RequireAndVerify,
                        Some("require-any") => Strategy::RequireAny,
                        Some("request") => Strategy::Request,
                        _ => {
                            return Err("terminate-tls: mutual_tls_verification_strategy must be require-and-verify, require-any or request".into());
                        }
                    }
                }
                "server_certificate" | "server_private_key" => {
                    return Err(format!(
                        "terminate-tls: {key} is not supported: the edge does not take private keys from agents; reserve the domain and let the edge get its certificate"
                    ));
                }
                other => return Err(format!("terminate-tls: unknown config key {other:?}")),
            }
        }
        if self.tls13_only && self.tls12_only {
            return Err("terminate-tls: min_version 1.3 is above max_version 1.2".into());
        }
        Ok(())
    }

    /// The rustls config for this endpoint, serving the edge's certificates.
    pub(crate) fn server_config(
        &self,
        provider: Arc<CryptoProvider>,
        certs: Arc<dyn ResolvesServerCert>,
    ) -> Result<Arc<ServerConfig>, String> {
        let versions: &[&'static rustls::SupportedProtocolVersion] = match (self.tls13_only, self.tls12_only)
        {
            (true, _) => &[&rustls::version::TLS13],
            (_, true) => &[&rustls::version::TLS12],
            _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?;
        let wants_client_certs = !self.client_cas.is_empty() || self.strategy == Strategy::RequireAny;
        let builder = if !wants_client_certs {
            builder.with_no_client_auth()
        } else {
            let verifier: Arc<dyn ClientCertVerifier> = match self.strategy {
                Strategy::RequireAny => Arc::new(AnyClientCert(provider.clone())),
                strategy => {
                    if self.client_cas.is_empty() {
                        return Err("mutual TLS needs at least one CA certificate".into());
                    }
                    let mut roots = RootCertStore::empty();
                    for ca in &self.client_cas {
                        roots.add(ca.clone()).map_err(|e| format!("unusable mutual TLS CA: {e}"))?;
                    }
                    let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                    let b = if strategy == Strategy::Request { b.allow_unauthenticated() } else { b };
                    b.build().map_err(|e| format!("mutual TLS: {e}"))?
                }
            };
            builder.with_client_cert_verifier(verifier)
        };
        let mut cfg = builder.with_cert_resolver(certs);
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg.ignore_client_order = true;
        Ok(Arc::new(cfg))
    }
}

/// The `config` of every unconditional `terminate-tls` action in `on_tcp_connect`.
fn terminate_tls_actions(policy: &Value) -> Result<Vec<serde_json::Map<String, Value>>, String> {
    // The document's syntax errors are reported by the policy compiler with the rest.
    let Ok(doc) = warren_policy::Document::from_value(policy) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for rule in &doc.on_tcp_connect {
        let conditional = !rule.expressions.is_empty();
        for action in rule.actions.iter().filter(|a| a.kind == "terminate-tls") {
            if conditional {
                return Err("terminate-tls with expressions is not supported yet; put it in a rule without expressions".into());
            }
            match &action.config {
                Value::Null => out.push(serde_json::Map::new()),
                Value::Object(m) => out.push(m.clone()),
                _ => return Err("terminate-tls: config must be an object".into()),
            }
        }
    }
    Ok(out)
}

/// CA certificates from PEM; each must be a CA (basicConstraints cA), as ngrok requires.
fn parse_cas(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid mutual TLS CA PEM: {e}"))?;
    if certs.is_empty() {
        return Err("the mutual TLS CA bundle holds no certificate".into());
    }
    for c in &certs {
        let (_, x) =
            x509_parser::parse_x509_certificate(c).map_err(|e| format!("invalid mutual TLS CA: {e}"))?;
        if !x.is_ca() {
            return Err(format!(
                "mutual TLS CA {} is not a CA certificate (basicConstraints cA is not set)",
                x.subject()
            ));
        }
    }
    Ok(certs)
}

/// What the upstream is told about a verified client certificate.
#[derive(Clone, Debug)]
pub(crate) struct ClientCert {
    pub(crate) subject: String,
    pub(crate) issuer: String,
    pub(crate) san: String,
    pub(crate) serial: String,
}

impl ClientCert {
    pub(crate) fn parse(der: &CertificateDer<'_>) -> Option<ClientCert> {
        let (_, x) = x509_parser::parse_x509_certificate(der).ok()?;
        let san = x
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|ext| ext.value.general_names.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default();
        Some(ClientCert {
            subject: x.subject().to_string(),
            issuer: x.issuer().to_string(),
            san,
            serial: x.raw_serial_as_string(),
        })
    }

    /// `(header name, value)` pairs for the upstream.
    pub(crate) fn headers(&self) -> [(&'static str, &str); 4] {
        [
            ("warren-client-cert-subject", &self.subject),
            ("warren-client-cert-issuer", &self.issuer),
            ("warren-client-cert-san", &self.san),
            ("warren-client-cert-serial", &self.serial),
        ]
    }
}

/// `require-any`: a certificate must be presented and must sign the handshake, but its
/// chain is not checked.
#[derive(Debug)]
struct AnyClientCert(Arc<CryptoProvider>);

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
