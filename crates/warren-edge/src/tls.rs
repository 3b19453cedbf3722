//! The edge's certificates: a local CA made on first start, and a leaf certificate for the base
//! domain, its wildcard and the connect host names, signed by that CA. Agents trust the CA file
//! (`--connect-cas`), visitors trust it for the dev domain.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS material could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Generating a key or certificate failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A PEM file did not parse.
    #[error("{path}: invalid PEM: {msg}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        msg: String,
    },
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Paths of the edge's TLS files inside the data directory.
#[derive(Clone, Debug)]
pub struct TlsPaths {
    /// The local CA certificate (give this to agents and browsers).
    pub ca_cert: PathBuf,
    /// The CA's private key (owner-only permissions).
    pub ca_key: PathBuf,
    /// The edge's certificate chain.
    pub cert: PathBuf,
    /// The edge's private key (owner-only permissions).
    pub key: PathBuf,
    /// The names the certificate covers, one per line; a change re-issues it.
    pub names: PathBuf,
}

impl TlsPaths {
    /// The standard layout under `dir`.
    pub fn in_dir(dir: &Path) -> TlsPaths {
        TlsPaths {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            cert: dir.join("edge.pem"),
            key: dir.join("edge.key"),
            names: dir.join("edge.names"),
        }
    }
}

/// Loaded certificate and key, ready for rustls.
pub struct TlsMaterial {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
    /// Where the CA certificate is.
    pub ca_cert_path: PathBuf,
}

/// Makes sure a CA and a leaf certificate covering `names` exist under `dir`, creating or
/// re-issuing as needed, and loads them.
pub fn ensure_local_ca(dir: &Path, names: &[String]) -> Result<TlsMaterial, TlsError> {
    fs::create_dir_all(dir).map_err(|source| TlsError::Io { path: dir.to_owned(), source })?;
    let paths = TlsPaths::in_dir(dir);
    let ca_key = if paths.ca_key.exists() && paths.ca_cert.exists() {
        KeyPair::from_pem(&read_string(&paths.ca_key)?)?
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        write_private(&paths.ca_key, key.serialize_pem().as_bytes())?;
        write_file(&paths.ca_cert, cert.pem().as_bytes())?;
        // A new CA invalidates any old leaf.
        let _ = fs::remove_file(&paths.names);
        key
    };
    let wanted = names.join("\n");
    let current = fs::read_to_string(&paths.names).unwrap_or_default();
    if current != wanted || !paths.cert.exists() || !paths.key.exists() {
        let issuer = Issuer::new(ca_params(), &ca_key);
        let leaf_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        for n in names {
            params.subject_alt_names.push(match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.clone().try_into()?),
            });
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.first().cloned().unwrap_or_else(|| "warren edge".into()));
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&leaf_key, &issuer)?;
        let ca_pem = read_string(&paths.ca_cert)?;
        write_private(&paths.key, leaf_key.serialize_pem().as_bytes())?;
        write_file(&paths.cert, format!("{}{}", cert.pem(), ca_pem).as_bytes())?;
        write_file(&paths.names, wanted.as_bytes())?;
    }
    load(&paths.cert, &paths.key, paths.ca_cert)
}

/// Loads a PEM certificate chain and private key.
pub fn load(cert: &Path, key: &Path, ca_cert_path: PathBuf) -> Result<TlsMaterial, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem { path: cert.to_owned(), msg: e.to_string() })?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Pem { path: key.to_owned(), msg: e.to_string() })?;
    Ok(TlsMaterial { chain, key, ca_cert_path })
}

/// The rustls provider: aws-lc-rs only.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Server config for one of the edge's listeners. TLS 1.2 is the minimum; 1.3 is preferred.
pub fn server_config(certs: Arc<CertStore>, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // The edge's order of cipher suites, not the client's: a client that lists a weaker
    // suite first still gets the strongest both support.
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// The certificates the edge serves, chosen by SNI: a name's own certificate when it has
/// one, else the edge's default. Entries can be replaced while connections are served (new
/// handshakes see the new certificate; established ones are not touched).
#[derive(Debug)]
pub struct CertStore {
    default: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    /// The DNS names the default certificate holds (lowercase; `*.` wildcards kept).
    default_names: std::sync::RwLock<Vec<String>>,
    by_name: std::sync::RwLock<std::collections::HashMap<String, Arc<rustls::sign::CertifiedKey>>>,
}

impl CertStore {
    /// A store serving `m` by default.
    pub fn new(m: &TlsMaterial) -> Result<CertStore, TlsError> {
        Ok(CertStore {
            default: std::sync::RwLock::new(Arc::new(certified_key(m.chain.clone(), m.key.clone_key())?)),
            default_names: std::sync::RwLock::new(dns_names(&m.chain)),
            by_name: Default::default(),
        })
    }

    /// Serves `chain`/`key` for every name without its own certificate, from the next
    /// handshake on (established connections keep theirs).
    pub fn set_default(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsError> {
        let names = dns_names(&chain);
        let ck = Arc::new(certified_key(chain, key)?);
        *self.default.write().unwrap_or_else(|e| e.into_inner()) = ck;
        *self.default_names.write().unwrap_or_else(|e| e.into_inner()) = names;
        Ok(())
    }

    /// Whether a visitor asking for `name` gets a certificate valid for it: the name's own,
    /// or the default when one of its names (a `*.` wildcard covers one label) matches.
    pub fn covers(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.has_own(&name)
            || wildcard_of(&name).is_some_and(|w| self.has_own(&w))
            || self.default_names.read().unwrap_or_else(|e| e.into_inner()).iter().any(|p| {
                match p.strip_prefix("*.") {
                    Some(parent) => {
                        name.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == parent)
                    }
                    None => *p == name,
                }
            })
    }

    /// Checks that `key` belongs to the leaf of `chain` (and that rustls can use both).
    pub fn check_pair(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsError> {
        certified_key(chain, key).map(|_| ())
    }

    /// Whether `name` has a certificate of its own (ACME or uploaded), rather than the
    /// edge's default.
    pub fn has_own(&self, name: &str) -> bool {
        self.by_name.read().unwrap_or_else(|e| e.into_inner()).contains_key(name)
    }

    /// Stops serving a name's own certificate; the default is served for it again.
    pub fn remove(&self, name: &str) {
        self.by_name.write().unwrap_or_else(|e| e.into_inner()).remove(&name.to_ascii_lowercase());
    }

    /// Serves `chain`/`key` for `name` from the next handshake on.
    pub fn insert(
        &self,
        name: &str,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsError> {
        let ck = Arc::new(certified_key(chain, key)?);
        self.by_name.write().unwrap_or_else(|e| e.into_inner()).insert(name.to_ascii_lowercase(), ck);
        Ok(())
    }
}

/// The DNS names in the leaf certificate's subject alternative names, lowercase.
fn dns_names(chain: &[CertificateDer<'static>]) -> Vec<String> {
    let Some(leaf) = chain.first() else { return Vec::new() };
    let Ok((_, x)) = x509_parser::parse_x509_certificate(leaf) else { return Vec::new() };
    let Ok(Some(san)) = x.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let signer = provider().key_provider.load_private_key(key)?;
    let ck = rustls::sign::CertifiedKey::new(chain, signer);
    ck.keys_match()?;
    Ok(ck)
}

/// The wildcard name whose certificate covers `name` (one label: `a.example.com` →
/// `*.example.com`), for a name with at least two labels left after it.
fn wildcard_of(name: &str) -> Option<String> {
    let (label, parent) = name.split_once('.')?;
    (!label.is_empty() && parent.contains('.')).then(|| format!("*.{parent}"))
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            let name = name.to_ascii_lowercase();
            let by_name = self.by_name.read().unwrap_or_else(|e| e.into_inner());
            // The name's own certificate, else a wildcard certificate of its parent (an
            // issued `*.example.com` for `a.example.com`), else the default.
            if let Some(ck) = by_name.get(&name).or_else(|| wildcard_of(&name).and_then(|w| by_name.get(&w)))
            {
                return Some(ck.clone());
            }
        }
        Some(self.default.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "warren local CA");
    dn.push(DnType::OrganizationName, "warren");
    p.distinguished_name = dn;
    p.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p
}

fn read_string(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io { path: path.to_owned(), source })
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    fs::write(path, bytes).map_err(|source| TlsError::Io { path: path.to_owned(), source })
}

/// Writes a secret file readable by the owner only, created with those permissions so it is
/// never briefly world-readable.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let io = |source| TlsError::Io { path: path.to_owned(), source };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// A certificate chain and key from PEM files.
pub fn load_pem_files(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let pem = |path: &Path, msg: String| TlsError::Pem { path: path.to_owned(), msg };
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem(cert, "no certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
    Ok((chain, key_der))
}

/// How often the edge's own certificate files are checked for changes.
pub(crate) const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Reloads the edge's certificate when its files change, until shutdown. A bad new file is
/// logged and the current certificate kept.
pub(crate) async fn watch_files(
    certs: Arc<CertStore>,
    cert: PathBuf,
    key: PathBuf,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let read = || (fs::read(&cert).ok(), fs::read(&key).ok());
    let mut seen = read();
    loop {
        tokio::select! {
            _ = stop.wait_for(|v| *v) => return,
            _ = tokio::time::sleep(RELOAD_INTERVAL) => {}
        }
        let now = read();
        if now == seen {
            continue;
        }
        match load_pem_files(&cert, &key).and_then(|(c, k)| certs.set_default(c, k)) {
            Ok(()) => tracing::info!(cert = %cert.display(), "edge certificate reloaded"),
            Err(e) => tracing::warn!(error = %e, "new edge certificate not usable; keeping the current one"),
        }
        seen = now;
    }
}
