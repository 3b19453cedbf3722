//! rustls client configurations (aws-lc-rs only).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use crate::config::ConnectCas;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
}

/// The config for dialing the edge.
pub(crate) fn edge_config(cas: &ConnectCas) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match cas {
        ConnectCas::Trusted => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        ConnectCas::Host => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err("connect_cas is 'host' but no certificates were found in the system store".into());
            }
        }
        ConnectCas::Pem(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("cannot read connect_cas {}: {e}", path.display()))?;
            add_all(&mut roots, certs).map_err(|e| format!("connect_cas {}: {e}", path.display()))?;
        }
        ConnectCas::PemBytes(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("invalid connect_cas PEM: {e}"))?;
            add_all(&mut roots, certs)?;
        }
    }
    Ok(Arc::new(builder().with_root_certificates(roots).with_no_client_auth()))
}

fn add_all(roots: &mut RootCertStore, certs: Vec<CertificateDer<'static>>) -> Result<(), String> {
    if certs.is_empty() {
        return Err("no certificates found".into());
    }
    for c in certs {
        roots.add(c).map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    Ok(())
}

/// The server config for TLS terminated at the agent (tls endpoints): the certificate chain
/// and key from PEM files, and with `client_cas`, mutual TLS that requires a client
/// certificate signed by one of them.
pub fn agent_termination(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_cas: Option<&[u8]>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls_pki_types::PrivateKeyDer;
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate file holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("invalid private key PEM: {e}"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match client_cas {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("invalid client CA PEM: {e}"))?;
            add_all(&mut roots, cas)?;
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| format!("client CAs: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let cfg = builder.with_single_cert(chain, key).map_err(|e| format!("certificate and key: {e}"))?;
    Ok(Arc::new(cfg))
}

/// The config for an https upstream: verified against public CAs, or not verified at all
/// (loopback upstreams by default, or `--upstream-tls-verify=false`).
pub(crate) fn upstream_config(verify: bool, http2: bool) -> Arc<ClientConfig> {
    let mut cfg = if verify {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        builder().with_root_certificates(roots).with_no_client_auth()
    } else {
        builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth()
    };
    // An http2 upstream is offered h2 only: the bytes on the proxy stream are HTTP/2.
    cfg.alpn_protocols = vec![if http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    Arc::new(cfg)
}

/// Accepts any certificate but still checks the handshake signatures, so the connection is
/// encrypted to whoever holds the key the upstream presented.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
