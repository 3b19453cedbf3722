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

/// One endpoint's TLS settings: every layer that sets any (the account's traffic policy, the
/// endpoint's own policy, the SDK's `MutualTLSCA`) holds, so the most restrictive wins.
#[derive(Clone, Debug)]
pub(crate) struct EdgeTls {
    layers: Vec<Layer>,
}

/// The settings of one layer.
#[derive(Clone, Debug, Default)]
struct Layer {
    tls13_only: bool,
    tls12_only: bool,
    client_cas: Vec<CertificateDer<'static>>,
    /// Set when the layer asks for client certificates (CAs, or a strategy).
    strategy: Option<Strategy>,
}

impl EdgeTls {
    /// The settings a Bind asks for together with the account's, if its traffic policy has
    /// `terminate-tls`; `None` when neither asks for anything.
    pub(crate) fn for_bind(
        opts: &warren_proto::HttpOpts,
        account: Option<&warren_policy::Document>,
    ) -> Result<Option<EdgeTls>, String> {
        let mut layers = Vec::new();
        if let Some(doc) = account {
            for config in terminate_tls_actions(doc)? {
                let mut l = Layer::default();
                l.apply(&config).map_err(|e| format!("the account's traffic policy: {e}"))?;
                layers.push(l);
            }
        }
        if let Some(m) = opts.mutual_tls_ca.as_ref().filter(|v| !v.is_null()) {
            let b64 = m.get("mutual_tls_ca").and_then(Value::as_str).unwrap_or("");
            let pem = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("MutualTLSCA is not base64: {e}"))?;
            layers.push(Layer {
                client_cas: parse_cas(&pem)?,
                strategy: Some(Strategy::RequireAndVerify),
                ..Layer::default()
            });
        }
        if let Some(policy) = opts.traffic_policy.as_ref().filter(|v| !v.is_null()) {
            // The document's syntax errors are reported by the policy compiler with the rest.
            if let Ok(doc) = warren_policy::Document::from_value(policy) {
                for config in terminate_tls_actions(&doc)? {
                    let mut l = Layer::default();
                    l.apply(&config)?;
                    layers.push(l);
                }
            }
        }
        if layers.iter().any(|l| l.tls13_only) && layers.iter().any(|l| l.tls12_only) {
            return Err(
                "terminate-tls: one policy asks for TLS 1.3 at least and another for 1.2 at most".into()
            );
        }
        Ok((!layers.is_empty()).then_some(EdgeTls { layers }))
    }

    /// The rustls config for this endpoint, serving the edge's certificates.
    pub(crate) fn server_config(
        &self,
        provider: Arc<CryptoProvider>,
        certs: Arc<dyn ResolvesServerCert>,
    ) -> Result<Arc<ServerConfig>, String> {
        let tls13_only = self.layers.iter().any(|l| l.tls13_only);
        let tls12_only = self.layers.iter().any(|l| l.tls12_only);
        let versions: &[&'static rustls::SupportedProtocolVersion] = match (tls13_only, tls12_only) {
            (true, _) => &[&rustls::version::TLS13],
            (_, true) => &[&rustls::version::TLS12],
            _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?;
        // Each layer's requirement holds: a certificate is required when any layer requires
        // one, and it must chain to the CAs of every layer that verifies.
        let required = self
            .layers
            .iter()
            .any(|l| matches!(l.strategy, Some(Strategy::RequireAndVerify | Strategy::RequireAny)));
        let mut verifiers: Vec<Arc<dyn ClientCertVerifier>> = Vec::new();
        for l in &self.layers {
            match l.strategy {
                None | Some(Strategy::RequireAny) => continue,
                Some(_) if l.client_cas.is_empty() => {
                    return Err("mutual TLS needs at least one CA certificate".into());
                }
                Some(_) => {}
            }
            let mut roots = RootCertStore::empty();
            for ca in &l.client_cas {
                roots.add(ca.clone()).map_err(|e| format!("unusable mutual TLS CA: {e}"))?;
            }
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let b = if required { b } else { b.allow_unauthenticated() };
            verifiers.push(b.build().map_err(|e| format!("mutual TLS: {e}"))?);
        }
        let builder = match (verifiers.len(), required) {
            (0, false) => builder.with_no_client_auth(),
            (0, true) => builder.with_client_cert_verifier(Arc::new(AnyClientCert(provider.clone()))),
            (1, _) => builder.with_client_cert_verifier(verifiers.pop().expect("one")),
            _ => builder.with_client_cert_verifier(Arc::new(AllOf(verifiers))),
        };
        let mut cfg = builder.with_cert_resolver(certs);
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg.ignore_client_order = true;
        Ok(Arc::new(cfg))
    }
}

impl Layer {
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
                    self.strategy.get_or_insert(Strategy::RequireAndVerify);
                }
                "mutual_tls_verification_strategy" => {
                    self.strategy = Some(match value.as_str() {
                        Some("require-and-verify") => Strategy::RequireAndVerify,
                        Some("require-any") => Strategy::RequireAny,
                        Some("request") => Strategy::Request,
                        _ => {
                            return Err("terminate-tls: mutual_tls_verification_strategy must be require-and-verify, require-any or request".into());
                        }
                    })
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
}

/// True when `doc` has a `terminate-tls` action anywhere (for endpoints that cannot honour
/// one: the edge terminates TLS for https endpoints only).
pub(crate) fn has_terminate_tls(doc: &warren_policy::Document) -> bool {
    [&doc.on_tcp_connect, &doc.on_http_request, &doc.on_http_response]
        .iter()
        .any(|rules| rules.iter().any(|r| r.actions.iter().any(|a| a.kind == "terminate-tls")))
}

/// The `config` of every unconditional `terminate-tls` action in `on_tcp_connect`.
fn terminate_tls_actions(
    doc: &warren_policy::Document,
) -> Result<Vec<serde_json::Map<String, Value>>, String> {
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

/// A client certificate must satisfy every verifier (each layer's CAs).
#[derive(Debug)]
struct AllOf(Vec<Arc<dyn ClientCertVerifier>>);

impl ClientCertVerifier for AllOf {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.iter().any(|v| v.client_auth_mandatory())
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; a client with one certificate sends it either way.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        for v in &self.0 {
            v.verify_client_cert(end_entity, intermediates, now)?;
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0[0].verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0[0].verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0[0].supported_verify_schemes()
    }
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
