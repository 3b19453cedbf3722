//! Automatic certificates for reserved custom domains and the edge's connect hostnames, from
//! an ACME directory (Let's Encrypt, or any RFC 8555 server such as pebble). A manager task
//! wakes when a domain is reserved and on a timer: every such name without a certificate, or whose certificate has less than `renew_before` left, gets a new ECDSA
//! P-256 key and certificate. Failures back off per domain (1 min doubling to 6 h) while the
//! old certificate, or the edge's default, keeps being served. Keys are sealed with the
//! master key before they are stored and never leave the edge.
//!
//! Challenges are answered by the ingress: HTTP-01 on the plain http port
//! ([`Challenges::http01`]), TLS-ALPN-01 on the shared TLS port ([`Challenges::tls_alpn01`]);
//! wildcard reservations (`*.example.com`), which ACME validates only with DNS-01, by a TXT
//! record published with RFC 2136 updates when `dns01` is configured (`dns01.rs`).
//!
//! Several nodes on one database order each name once: a node orders only while it holds
//! the name's lease in the store, and keeps its challenge answers there too, so whichever
//! node the ACME server's validation reaches answers it. A certificate one node stores
//! reaches the others at once (PostgreSQL announces it) or at the next poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::Shared;
use crate::config::{AcmeChallenge, AcmeConfig};

/// First retry after a failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// How long a node may take to finish an order before another node may start one.
const ORDER_LEASE_SECS: i64 = 600;

/// Store lookups of other nodes' challenge answers at once; further misses get no answer
/// (a flood of made-up tokens costs the store at most this many queries in flight).
const SHARED_LOOKUPS: usize = 4;

/// Answers to challenges in flight, read by the ingress.
#[derive(Default)]
pub(crate) struct Challenges {
    /// HTTP-01: token → key authorization.
    http: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: domain → the challenge certificate's TLS config.
    alpn: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
    /// Bounds the store lookups for other nodes' answers (several nodes on one database).
    lookups: LookupPermits,
}

struct LookupPermits(tokio::sync::Semaphore);

impl Default for LookupPermits {
    fn default() -> LookupPermits {
        LookupPermits(tokio::sync::Semaphore::new(SHARED_LOOKUPS))
    }
}

impl Challenges {
    /// The body for `GET /.well-known/acme-challenge/{token}`: this node's answer, or
    /// another node's.
    pub(crate) async fn http01(&self, shared: &Shared, token: &str) -> Option<String> {
        if let Some(a) = self.http.lock().unwrap_or_else(|e| e.into_inner()).get(token).cloned() {
            return Some(a);
        }
        self.from_other_nodes(shared, &format!("http:{token}")).await
    }

    /// The TLS config answering an `acme-tls/1` handshake for `domain`: this node's, or one
    /// made from another node's answer.
    pub(crate) async fn tls_alpn01(
        &self,
        shared: &Shared,
        domain: &str,
    ) -> Option<Arc<rustls::ServerConfig>> {
        if let Some(c) = self.alpn.lock().unwrap_or_else(|e| e.into_inner()).get(domain).cloned() {
            return Some(c);
        }
        let digest = self.from_other_nodes(shared, &format!("alpn:{domain}")).await?;
        let digest = hex_decode(&digest)?;
        alpn_config(domain, &digest).ok()
    }

    async fn from_other_nodes(&self, shared: &Shared, id: &str) -> Option<String> {
        // Tokens are base64url (RFC 8555 §8.1), domains are names: anything else is not asked.
        let plausible = id.len() <= 300
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !several_nodes(shared) || !plausible {
            return None;
        }
        let Ok(_permit) = self.lookups.0.try_acquire() else {
            tracing::debug!(%id, "too many challenge lookups at once; not answered");
            return None;
        };
        match shared.store.acme_challenge(id).await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "could not read another node's challenge answer");
                None
            }
        }
    }
}

/// Whether other nodes may share this node's database (then orders and answers go through it).
fn several_nodes(shared: &Shared) -> bool {
    shared.config.database_url.is_some()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// How often a node picks up certificates stored by others (several nodes on one database:
/// one node's renewal or upload reaches the rest within this).
const SYNC_INTERVAL: Duration = Duration::from_secs(30);

/// Installed certificates: domain → the stored row's `created_at`.
pub(crate) type Installed = HashMap<String, String>;

/// Serves what the store holds: new and renewed certificates are installed, removed ones
/// dropped. The edge awaits the first pass before it listens, so stored certificates are
/// served from the first handshake.
pub(crate) async fn sync_once(shared: &Shared, installed: &mut Installed) {
    match shared.store.all_certificates().await {
        Ok(certs) => {
            let present: std::collections::HashSet<String> = certs.iter().map(|c| c.domain.clone()).collect();
            for c in certs {
                if installed.get(&c.domain) == Some(&c.created_at) {
                    continue;
                }
                match install(shared, &c.domain, &c.chain_pem, &c.key_sealed) {
                    Ok(()) => {
                        installed.insert(c.domain, c.created_at);
                    }
                    Err(e) => tracing::warn!(domain = %c.domain, error = %e, "stored certificate not usable"),
                }
            }
            installed.retain(|domain, _| {
                let keep = present.contains(domain);
                if !keep {
                    shared.listeners.certs.remove(domain);
                }
                keep
            });
        }
        Err(e) => tracing::warn!(error = %e, "could not load stored certificates"),
    }
}

/// Repeats [`sync_once`] on every node, with or without ACME, so one node's renewal or
/// upload reaches the others sharing the database.
pub(crate) async fn sync(shared: Arc<Shared>, mut installed: Installed) {
    let stop = crate::shutting_down(shared.shutdown.clone());
    tokio::pin!(stop);
    let wake = Arc::new(tokio::sync::Notify::new());
    let announcements = several_nodes(&shared).then(|| tokio::spawn(listen(shared.clone(), wake.clone())));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(SYNC_INTERVAL) => {}
            _ = wake.notified() => {}
        }
        sync_once(&shared, &mut installed).await;
    }
    if let Some(a) = announcements {
        a.abort();
    }
}

/// Wakes the certificate sync whenever another node announces a certificate change.
async fn listen(shared: Arc<Shared>, wake: Arc<tokio::sync::Notify>) {
    loop {
        match shared.store.listen(warren_store::Announcement::Certificates).await {
            Ok(mut changes) => {
                while changes.next().await.is_ok() {
                    wake.notify_one();
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot listen for certificate changes; polling only"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Keeps the certificates of reserved custom domains and connect hostnames issued and renewed.
pub(crate) async fn run(shared: Arc<Shared>, config: AcmeConfig) {
    let stop = crate::shutting_down(shared.shutdown.clone());
    tokio::pin!(stop);
    let mut account = None;
    let mut failures: HashMap<String, (u32, Instant)> = HashMap::new();
    let mut orders = OrdersPerAccount::default();
    loop {
        match shared.store.all_reserved_domain_names().await {
            Ok(reserved) => {
                // The edge's connect hostnames too: agents verify them like any site (they
                // count against no account).
                let connect = shared
                    .config
                    .connect_hostnames
                    .iter()
                    .filter(|h| h.contains('.'))
                    .map(|h| (h.clone(), None));
                let domains = reserved
                    .into_iter()
                    .filter(|(d, _)| wants_certificate(&shared, &config, d))
                    .map(|(d, account)| (d, Some(account)))
                    .chain(connect);
                for (domain, account_id) in domains {
                    if failures.get(&domain).is_some_and(|(_, retry_at)| Instant::now() < *retry_at) {
                        continue;
                    }
                    match due(&shared, &config, &domain).await {
                        Ok(false) => continue,
                        Ok(true) => {}
                        Err(e) => {
                            tracing::warn!(%domain, error = %e, "could not read the stored certificate");
                            continue;
                        }
                    }
                    if let Some(a) = &account_id
                        && !orders.take(a, config.orders_per_account_per_hour, Instant::now())
                    {
                        tracing::warn!(%domain, account = %a, "this account's certificate orders this hour are used up; later");
                        continue;
                    }
                    if several_nodes(&shared) {
                        match shared.store.claim_acme_order(&domain, &shared.node_id, ORDER_LEASE_SECS).await
                        {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::debug!(%domain, "another node is ordering this certificate");
                                continue;
                            }
                            Err(e) => {
                                tracing::warn!(%domain, error = %e, "could not claim the certificate order");
                                continue;
                            }
                        }
                    }
                    let issued = issue(&shared, &config, &mut account, &domain).await;
                    if several_nodes(&shared)
                        && let Err(e) = shared.store.release_acme_order(&domain, &shared.node_id).await
                    {
                        tracing::debug!(%domain, error = %e, "could not release the certificate order; it lapses");
                    }
                    match issued {
                        Ok(()) => {
                            failures.remove(&domain);
                        }
                        Err(e) => {
                            let n = failures.get(&domain).map_or(0, |(n, _)| *n) + 1;
                            let wait = FIRST_BACKOFF.saturating_mul(1 << (n - 1).min(10)).min(MAX_BACKOFF);
                            tracing::warn!(%domain, error = %e, retry_in = ?wait, "certificate not issued; the default certificate is served meanwhile");
                            failures.insert(domain, (n, Instant::now() + wait));
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not list reserved domains"),
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = shared.accounts.acme_wake.notified() => {}
            _ = tokio::time::sleep(config.check_interval) => {}
        }
    }
}

/// Certificate orders started per account in the current hour.
#[derive(Default)]
struct OrdersPerAccount(HashMap<String, (Instant, u32)>);

impl OrdersPerAccount {
    /// Counts an order for `account` if it has one left this hour.
    fn take(&mut self, account: &str, per_hour: u32, now: Instant) -> bool {
        let e = self.0.entry(account.to_owned()).or_insert((now, 0));
        if now.saturating_duration_since(e.0) >= std::time::Duration::from_secs(3600) {
            *e = (now, 0);
        }
        if e.1 >= per_hour {
            return false;
        }
        e.1 += 1;
        true
    }
}

/// Custom domains, and wildcard reservations when DNS-01 is configured: names one level under
/// the base domain have the edge's own wildcard.
fn wants_certificate(shared: &Shared, config: &AcmeConfig, domain: &str) -> bool {
    match domain.strip_prefix("*.") {
        Some(parent) => config.dns01.is_some() && parent != shared.config.base_domain,
        None => !crate::session::under_domain(domain, &shared.config.base_domain),
    }
}

async fn due(shared: &Shared, config: &AcmeConfig, domain: &str) -> Result<bool, warren_store::StoreError> {
    let Some(c) = shared.store.get_certificate(domain).await? else { return Ok(true) };
    if c.source == "upload" {
        // The operator's certificate: theirs to renew.
        return Ok(false);
    }
    let left = c.not_after - warren_store::unix_now();
    Ok(left < i64::try_from(config.renew_before.as_secs()).unwrap_or(i64::MAX))
}

/// Serves a stored certificate from the next handshake on.
pub(crate) fn install(
    shared: &Shared,
    domain: &str,
    chain_pem: &str,
    key_sealed: &[u8],
) -> Result<(), String> {
    let key_pem = shared.master_key.open(domain, key_sealed).map_err(|e| e.to_string())?;
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate PEM: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("key PEM: {e}"))?;
    shared.listeners.certs.insert(domain, chain, key).map_err(|e| e.to_string())
}

type AcmeResult<T> = Result<T, String>;

async fn account(shared: &Shared, config: &AcmeConfig) -> AcmeResult<Account> {
    let builder = || match &config.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let label = format!("acme-account {}", config.directory);
    if let Some(sealed) = shared.store.get_acme_account(&config.directory).await.map_err(|e| e.to_string())? {
        let json = shared.master_key.open(&label, &sealed).map_err(|e| e.to_string())?;
        let creds: AccountCredentials = serde_json::from_slice(&json).map_err(|e| e.to_string())?;
        return builder()
            .map_err(|e| e.to_string())?
            .from_credentials(creds)
            .await
            .map_err(|e| e.to_string());
    }
    let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
    let (account, creds) = builder()
        .map_err(|e| e.to_string())?
        .create(&new, config.directory.clone(), None)
        .await
        .map_err(|e| format!("creating the ACME account: {e}"))?;
    let json = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
    shared
        .store
        .put_acme_account(&config.directory, &shared.master_key.seal(&label, &json))
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(directory = %config.directory, "ACME account created");
    Ok(account)
}

async fn issue(
    shared: &Shared,
    config: &AcmeConfig,
    cached: &mut Option<Account>,
    domain: &str,
) -> AcmeResult<()> {
    if cached.is_none() {
        *cached = Some(account(shared, config).await?);
    }
    let account = cached.as_ref().expect("set above");
    tracing::info!(%domain, challenge = ?config.challenge, "requesting a certificate");
    let ids = [Identifier::Dns(domain.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await.map_err(|e| format!("new order: {e}"))?;
    let mut answered = Vec::new();
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let dns01 = config.dns01.as_ref().filter(|_| authz.identifier().wildcard);
            let ty = match (dns01, config.challenge) {
                (Some(_), _) => ChallengeType::Dns01,
                (None, AcmeChallenge::Http01) => ChallengeType::Http01,
                (None, AcmeChallenge::TlsAlpn01) => ChallengeType::TlsAlpn01,
            };
            let wanted = format!("{ty:?}");
            let mut challenge =
                authz.challenge(ty).ok_or_else(|| format!("the server offers no {wanted} challenge"))?;
            let key_auth = challenge.key_authorization();
            if let Some(d) = dns01 {
                let value = key_auth.dns_value();
                crate::dns01::update(d, domain, &value, true).await?;
                answered.push(Answer::Dns(value.clone()));
                crate::dns01::wait_visible(d, domain, &value).await?;
                challenge.set_ready().await.map_err(|e| format!("challenge: {e}"))?;
                continue;
            }
            match config.challenge {
                AcmeChallenge::Http01 => {
                    shared
                        .listeners
                        .challenges
                        .http
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(challenge.token.clone(), key_auth.as_str().to_owned());
                    answered.push(Answer::Http(challenge.token.clone()));
                    share(shared, &format!("http:{}", challenge.token), key_auth.as_str()).await?;
                }
                AcmeChallenge::TlsAlpn01 => {
                    let cfg = alpn_config(domain, key_auth.digest().as_ref())?;
                    shared
                        .listeners
                        .challenges
                        .alpn
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(domain.to_owned(), cfg);
                    answered.push(Answer::Alpn(domain.to_owned()));
                    let hex: String = key_auth.digest().as_ref().iter().map(|b| format!("{b:02x}")).collect();
                    share(shared, &format!("alpn:{domain}"), &hex).await?;
                }
            }
            challenge.set_ready().await.map_err(|e| format!("challenge: {e}"))?;
        }
        let status =
            order.poll_ready(&RetryPolicy::default()).await.map_err(|e| format!("validation: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!("the order is {status:?}, not ready"));
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let csr = rcgen::CertificateParams::new(vec![domain.to_owned()])
            .map_err(|e| e.to_string())?
            .serialize_request(&key)
            .map_err(|e| e.to_string())?;
        order.finalize_csr(csr.der()).await.map_err(|e| format!("finalize: {e}"))?;
        let chain_pem =
            order.poll_certificate(&RetryPolicy::default()).await.map_err(|e| format!("certificate: {e}"))?;
        Ok((chain_pem, key.serialize_pem()))
    }
    .await;
    for a in answered {
        let id = match a {
            Answer::Dns(value) => {
                if let Some(d) = &config.dns01
                    && let Err(e) = crate::dns01::update(d, domain, &value, false).await
                {
                    tracing::warn!(%domain, error = %e, "could not delete the DNS-01 record; it is left in the zone");
                }
                continue;
            }
            Answer::Http(token) => {
                shared.listeners.challenges.http.lock().unwrap_or_else(|e| e.into_inner()).remove(&token);
                format!("http:{token}")
            }
            Answer::Alpn(d) => {
                shared.listeners.challenges.alpn.lock().unwrap_or_else(|e| e.into_inner()).remove(&d);
                format!("alpn:{d}")
            }
        };
        if several_nodes(shared) {
            let _ = shared.store.delete_acme_challenge(&id).await;
        }
    }
    let (chain_pem, key_pem) = result?;
    let first = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or("the server sent no certificate")?
        .map_err(|e| format!("certificate PEM: {e}"))?;
    let (_, x) = x509_parser::parse_x509_certificate(&first).map_err(|e| format!("certificate: {e}"))?;
    let stored = warren_store::StoredCertificate {
        domain: domain.to_owned(),
        chain_pem,
        key_sealed: shared.master_key.seal(domain, key_pem.as_bytes()),
        not_after: x.validity().not_after.timestamp(),
        source: "acme".into(),
        created_at: warren_store::now_rfc3339(),
    };
    shared.store.put_certificate(&stored).await.map_err(|e| e.to_string())?;
    install(shared, domain, &stored.chain_pem, &stored.key_sealed)?;
    tracing::info!(%domain, not_after = stored.not_after, "certificate issued and served");
    Ok(())
}

/// Keeps a challenge answer where the other nodes find it (several nodes only).
async fn share(shared: &Shared, id: &str, answer: &str) -> AcmeResult<()> {
    if several_nodes(shared) {
        shared
            .store
            .put_acme_challenge(id, answer, ORDER_LEASE_SECS)
            .await
            .map_err(|e| format!("could not share the challenge answer: {e}"))?;
    }
    Ok(())
}

enum Answer {
    Http(String),
    Alpn(String),
    /// A published TXT record's value.
    Dns(String),
}

/// The TLS-ALPN-01 answer (RFC 8737): a self-signed certificate for `domain` carrying the
/// key authorization's digest in the critical acmeIdentifier extension, offered only to
/// clients that ask for ALPN `acme-tls/1`.
fn alpn_config(domain: &str, digest: &[u8]) -> AcmeResult<Arc<rustls::ServerConfig>> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| e.to_string())?;
    let provider = crate::tls::provider();
    let signer = provider.key_provider.load_private_key(key).map_err(|e| e.to_string())?;
    // Built by hand: rustls's certificate checks (webpki) refuse the critical acmeIdentifier
    // extension, which only the ACME server needs to understand.
    let answer = Arc::new(rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signer));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(answer)));
    cfg.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Always the same certificate.
#[derive(Debug)]
struct Fixed(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_account_gets_its_orders_per_hour() {
        let mut o = OrdersPerAccount::default();
        let t0 = Instant::now();
        assert!(o.take("a", 2, t0) && o.take("a", 2, t0));
        assert!(!o.take("a", 2, t0), "a's hour is used up");
        assert!(o.take("b", 2, t0), "b has its own");
        assert!(o.take("a", 2, t0 + std::time::Duration::from_secs(3600)), "a new hour");
    }
}
