//! Identity providers, for `jwt-validation` and `openid-connect`: JWKS documents and OpenID
//! discovery documents, fetched when a policy naming them is bound and cached per URL (keys
//! are refreshed in the background so rotated keys are picked up), and the authorization-code
//! exchange. Only https URLs (with publicly trusted certificates) are used; plain http on
//! loopback only when the edge is configured to allow it (a local identity provider).
//!
//! The URLs come from tenants' policies, and the edge fetches them from inside the operator's
//! network: a host that resolves to a loopback, private, link-local or otherwise
//! non-public address is refused (after resolution, and the checked address is the one
//! connected to, so a name cannot change its answer in between) unless the operator allows
//! loopback (`--idp-allow-loopback-http`) or private networks (`--idp-allow-private-networks`).
//! Why a fetch failed goes to the edge's log only: the agent learns that it failed, not
//! whether a port is open, closed or filtered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use warren_policy::Jwks;
use warren_policy::oidc::{Discovery, Provider, TokenRequest};

/// The largest JWKS or discovery document read.
const MAX_DOCUMENT: usize = 256 * 1024;
/// Time for one fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often cached key sets are fetched again.
pub(crate) const REFRESH: Duration = Duration::from_secs(300);

/// Code exchanges in flight at once, for every endpoint together: each one is a connection
/// to a provider, started by a visitor.
const MAX_EXCHANGES: usize = 64;

/// Key sets and providers by URL.
pub(crate) struct IdpCache {
    sets: Mutex<HashMap<String, Arc<Jwks>>>,
    providers: Mutex<HashMap<String, Arc<Provider>>>,
    reach: Reach,
    exchanges: tokio::sync::Semaphore,
}

/// Which addresses identity-provider fetches (and event webhooks) may reach besides public
/// ones.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Reach {
    /// Loopback, over https or plain http (a local identity provider).
    pub(crate) loopback: bool,
    /// Private, link-local and other non-public ranges.
    pub(crate) private: bool,
}

impl IdpCache {
    pub(crate) fn new(reach: Reach) -> IdpCache {
        IdpCache {
            sets: Mutex::default(),
            providers: Mutex::default(),
            reach,
            exchanges: tokio::sync::Semaphore::new(MAX_EXCHANGES),
        }
    }

    /// Whether `url` may be fetched at all (its scheme and host, before any network): this
    /// much may be told to the agent.
    pub(crate) fn check(&self, url: &str) -> Result<(), String> {
        check_url(url, self.reach).map(|_| ())
    }

    /// The OpenID provider at `issuer_url`, discovered now unless cached, with its keys.
    pub(crate) async fn provider(&self, issuer_url: &str) -> Result<Arc<Provider>, String> {
        if let Some(p) = self.providers.lock().unwrap_or_else(|e| e.into_inner()).get(issuer_url) {
            return Ok(p.clone());
        }
        let url = Discovery::url(issuer_url);
        let body = fetch(&url, self.reach).await?;
        let discovery = Discovery::parse(issuer_url, &body)?;
        for endpoint in [&discovery.authorization_endpoint, &discovery.token_endpoint] {
            check_url(endpoint, self.reach)?;
        }
        let keys = self.get(&discovery.jwks_uri).await?;
        let provider = Arc::new(Provider::new(discovery, keys));
        self.providers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(issuer_url.to_owned(), provider.clone());
        Ok(provider)
    }

    /// The keys at `url`, fetched now unless cached.
    pub(crate) async fn get(&self, url: &str) -> Result<Arc<Jwks>, String> {
        if let Some(set) = self.sets.lock().unwrap_or_else(|e| e.into_inner()).get(url) {
            return Ok(set.clone());
        }
        let body = fetch(url, self.reach).await?;
        let set = Arc::new(Jwks::parse(&body)?);
        if set.is_empty() {
            return Err(format!("{url} holds no keys"));
        }
        self.sets.lock().unwrap_or_else(|e| e.into_inner()).insert(url.to_owned(), set.clone());
        Ok(set)
    }

    /// Fetches every cached set again; a failure keeps the keys already held.
    pub(crate) async fn refresh(&self) {
        let sets: Vec<(String, Arc<Jwks>)> = self
            .sets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // All at once: a URL that answers slowly (each fetch may take up to FETCH_TIMEOUT)
        // must not hold back the refresh of every other account's keys.
        let mut fetches = tokio::task::JoinSet::new();
        for (url, set) in sets {
            let loopback = self.reach;
            fetches.spawn(async move {
                match fetch(&url, loopback).await.and_then(|b| set.replace(&b)) {
                    Ok(()) => tracing::debug!(%url, keys = set.len(), "JWKS refreshed"),
                    Err(e) => tracing::warn!(%url, error = %e, "JWKS refresh failed; keeping the keys held"),
                }
            });
        }
        while fetches.join_next().await.is_some() {}
    }
}

/// Refreshes the cache every [`REFRESH`] until the edge shuts down.
pub(crate) async fn run(shared: Arc<crate::Shared>) {
    let stop = crate::shutting_down(shared.shutdown.clone());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(REFRESH) => shared.listeners.idp.refresh().await,
        }
    }
}

impl IdpCache {
    /// Performs an `openid-connect` code exchange: its status and body, or why it failed.
    pub(crate) async fn exchange(&self, req: &TokenRequest) -> Result<(u16, Bytes), String> {
        let Ok(_permit) = self.exchanges.try_acquire() else {
            return Err("too many sign-ins at once on this edge; try again".into());
        };
        let post = Post {
            body: Bytes::from(req.body.clone()),
            content_type: "application/x-www-form-urlencoded",
            headers: req.authorization.iter().map(|a| (http::header::AUTHORIZATION, a.clone())).collect(),
        };
        let limit = warren_policy::oidc::MAX_TOKEN_RESPONSE;
        tokio::time::timeout(FETCH_TIMEOUT, call(&req.url, Some(post), limit, self.reach))
            .await
            .map_err(|_| format!("{} did not answer in time", req.url))?
    }
}

/// A POST: its body, content type and other headers.
pub(crate) struct Post {
    pub(crate) body: Bytes,
    pub(crate) content_type: &'static str,
    pub(crate) headers: Vec<(http::HeaderName, String)>,
}

/// GETs a document; anything but 2xx is an error.
async fn fetch(url: &str, loopback: Reach) -> Result<Bytes, String> {
    let (status, body) = tokio::time::timeout(FETCH_TIMEOUT, call(url, None, MAX_DOCUMENT, loopback))
        .await
        .map_err(|_| format!("fetching {url} timed out"))??;
    if !(200..300).contains(&status) {
        return Err(format!("{url} answered {status}"));
    }
    Ok(body)
}

/// https, or (when `loopback` allows it) http on loopback.
pub(crate) fn check_url(url: &str, reach: Reach) -> Result<(http::Uri, String, bool), String> {
    let loopback = reach.loopback;
    let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let host = uri.host().ok_or_else(|| format!("{url} has no host"))?.trim_matches(['[', ']']).to_owned();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if loopback && is_loopback(&host) => false,
        _ if loopback => {
            return Err(format!("{url}: must be https (plain http only on loopback)"));
        }
        _ => return Err(format!("{url}: must be https")),
    };
    Ok((uri, host, https))
}

/// One request to `url` (a GET, or `post`), reading at most `limit` bytes of the answer. The
/// address connected to is the one checked against `reach`. Used by event webhooks too.
pub(crate) async fn call(
    url: &str,
    post: Option<Post>,
    limit: usize,
    reach: Reach,
) -> Result<(u16, Bytes), String> {
    let (uri, host, https) = check_url(url, reach)?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = connect_checked(url, &host, port, reach).await?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
    let mut req = http::Request::builder()
        .uri(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, concat!("warren/", env!("CARGO_PKG_VERSION")));
    let body = match post {
        Some(p) => {
            req = req.method(http::Method::POST).header(http::header::CONTENT_TYPE, p.content_type);
            for (name, value) in p.headers {
                req = req.header(name, value);
            }
            Full::new(p.body)
        }
        None => Full::new(Bytes::new()),
    };
    let req = req.body(body).map_err(|e| e.to_string())?;
    let resp = if https {
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("{url}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(client_config())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{url}: TLS failed: {e}"))?;
        send(TokioIo::new(tls), req).await?
    } else {
        send(TokioIo::new(tcp), req).await?
    };
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), limit).collect().await.map_err(|e| format!("{url}: {e}"))?;
    Ok((status, body.to_bytes()))
}

/// Resolves `host` and connects to the first address `reach` allows: the address checked is
/// the one connected to, so a name cannot change its answer in between. `url` is for errors.
pub(crate) async fn connect_checked(
    url: &str,
    host: &str,
    port: u16,
    reach: Reach,
) -> Result<tokio::net::TcpStream, String> {
    let lookup = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((lookup, port))
        .await
        .map_err(|e| format!("{url}: cannot resolve {host}: {e}"))?
        .collect();
    let addr = addrs.iter().copied().find(|a| reachable(a.ip(), reach).is_ok()).ok_or_else(|| {
        let why = addrs.first().map_or("no address".into(), |a| reachable(a.ip(), reach).unwrap_err());
        format!("{url}: refused: {host} resolves to {why}")
    })?;
    tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("{url}: {e}"))
}

async fn send<I>(
    io: I,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

fn client_config() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("the provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(cfg)
}

/// Whether a fetch may connect to `ip`; the error names what kind of address it is.
pub(crate) fn reachable(ip: std::net::IpAddr, reach: Reach) -> Result<(), String> {
    use std::net::IpAddr;
    let ip = ip.to_canonical();
    if ip.is_loopback() {
        return if reach.loopback { Ok(()) } else { Err(format!("{ip}, a loopback address")) };
    }
    let private = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                // 100.64.0.0/10 (carrier-grade NAT), 0.0.0.0/8, 192.0.0.0/24, 198.18.0.0/15, 240.0.0.0/4.
                || (o[0] == 100 && (o[1] & 0xC0) == 64)
                || o[0] == 0
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xFE) == 18)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local, 2001:db8::/32 documentation.
                || (seg[0] & 0xFE00) == 0xFC00
                || (seg[0] & 0xFFC0) == 0xFE80
                || (seg[0] == 0x2001 && seg[1] == 0x0DB8)
        }
    };
    if private && !reach.private {
        return Err(format!("{ip}, a private or non-public address"));
    }
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_reachable_unless_allowed() {
        let none = Reach::default();
        for ip in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(reachable(ip.parse().unwrap(), none).is_err(), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1::1", "1.1.1.1"] {
            assert!(reachable(ip.parse().unwrap(), none).is_ok(), "{ip}");
        }
        let lo = Reach { loopback: true, private: false };
        assert!(reachable("127.0.0.1".parse().unwrap(), lo).is_ok());
        assert!(reachable("10.0.0.1".parse().unwrap(), lo).is_err());
        let private = Reach { loopback: false, private: true };
        assert!(reachable("10.0.0.1".parse().unwrap(), private).is_ok());
        assert!(reachable("127.0.0.1".parse().unwrap(), private).is_err());
    }
}
