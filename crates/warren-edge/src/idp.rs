//! Identity providers, for `jwt-validation` and `openid-connect`: JWKS documents and OpenID
//! discovery documents, fetched when a policy naming them is bound and cached per URL (keys
//! are refreshed in the background so rotated keys are picked up), and the authorization-code
//! exchange. Only https URLs (with publicly trusted certificates) are used; plain http on
//! loopback only when the edge is configured to allow it (a local identity provider).

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
    allow_loopback_http: bool,
    exchanges: tokio::sync::Semaphore,
}

impl IdpCache {
    pub(crate) fn new(allow_loopback_http: bool) -> IdpCache {
        IdpCache {
            sets: Mutex::default(),
            providers: Mutex::default(),
            allow_loopback_http,
            exchanges: tokio::sync::Semaphore::new(MAX_EXCHANGES),
        }
    }

    /// The OpenID provider at `issuer_url`, discovered now unless cached, with its keys.
    pub(crate) async fn provider(&self, issuer_url: &str) -> Result<Arc<Provider>, String> {
        if let Some(p) = self.providers.lock().unwrap_or_else(|e| e.into_inner()).get(issuer_url) {
            return Ok(p.clone());
        }
        let url = Discovery::url(issuer_url);
        let body = fetch(&url, self.allow_loopback_http).await?;
        let discovery = Discovery::parse(issuer_url, &body)?;
        for endpoint in [&discovery.authorization_endpoint, &discovery.token_endpoint] {
            check_url(endpoint, self.allow_loopback_http)?;
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
        let body = fetch(url, self.allow_loopback_http).await?;
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
            let loopback = self.allow_loopback_http;
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
            _ = tokio::time::sleep(REFRESH) => shared.idp.refresh().await,
        }
    }
}

impl IdpCache {
    /// Performs an `openid-connect` code exchange: its status and body, or why it failed.
    pub(crate) async fn exchange(&self, req: &TokenRequest) -> Result<(u16, Bytes), String> {
        let Ok(_permit) = self.exchanges.try_acquire() else {
            return Err("too many sign-ins at once on this edge; try again".into());
        };
        let post = Post { body: req.body.clone(), authorization: req.authorization.clone() };
        let limit = warren_policy::oidc::MAX_TOKEN_RESPONSE;
        tokio::time::timeout(FETCH_TIMEOUT, call(&req.url, Some(post), limit, self.allow_loopback_http))
            .await
            .map_err(|_| format!("{} did not answer in time", req.url))?
    }
}

/// A form POST.
struct Post {
    body: String,
    authorization: Option<String>,
}

/// GETs a document; anything but 2xx is an error.
async fn fetch(url: &str, loopback: bool) -> Result<Bytes, String> {
    let (status, body) = tokio::time::timeout(FETCH_TIMEOUT, call(url, None, MAX_DOCUMENT, loopback))
        .await
        .map_err(|_| format!("fetching {url} timed out"))??;
    if !(200..300).contains(&status) {
        return Err(format!("{url} answered {status}"));
    }
    Ok(body)
}

/// https, or (when `loopback` allows it) http on loopback.
fn check_url(url: &str, loopback: bool) -> Result<(http::Uri, String, bool), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let host = uri.host().ok_or_else(|| format!("{url} has no host"))?.trim_matches(['[', ']']).to_owned();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if loopback && is_loopback(&host) => false,
        _ if loopback => {
            return Err(format!("{url}: identity provider URLs must be https (plain http only on loopback)"));
        }
        _ => return Err(format!("{url}: identity provider URLs must be https")),
    };
    Ok((uri, host, https))
}

async fn call(url: &str, post: Option<Post>, limit: usize, loopback: bool) -> Result<(u16, Bytes), String> {
    let (uri, host, https) = check_url(url, loopback)?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp =
        tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("{url}: {e}"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
    let mut req = http::Request::builder()
        .uri(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, concat!("warren/", env!("CARGO_PKG_VERSION")));
    let body = match post {
        Some(p) => {
            req = req
                .method(http::Method::POST)
                .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            if let Some(a) = p.authorization {
                req = req.header(http::header::AUTHORIZATION, a);
            }
            Full::new(Bytes::from(p.body))
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

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
