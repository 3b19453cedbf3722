//! JWKS documents for `jwt-validation`: fetched when a policy naming them is bound, cached per
//! URL, and refreshed in the background so rotated keys are picked up. Only https URLs (with
//! publicly trusted certificates) are fetched, except on loopback, where a local identity
//! provider may speak plain http.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use warren_policy::Jwks;

/// The largest JWKS document read.
const MAX_JWKS: usize = 256 * 1024;
/// Time for one fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often cached key sets are fetched again.
pub(crate) const REFRESH: Duration = Duration::from_secs(300);

/// Key sets by URL.
#[derive(Default)]
pub(crate) struct JwksCache {
    sets: Mutex<HashMap<String, Arc<Jwks>>>,
}

impl JwksCache {
    /// The keys at `url`, fetched now unless cached.
    pub(crate) async fn get(&self, url: &str) -> Result<Arc<Jwks>, String> {
        if let Some(set) = self.sets.lock().unwrap_or_else(|e| e.into_inner()).get(url) {
            return Ok(set.clone());
        }
        let body = fetch(url).await?;
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
        for (url, set) in sets {
            match fetch(&url).await.and_then(|b| set.replace(&b)) {
                Ok(()) => tracing::debug!(%url, keys = set.len(), "JWKS refreshed"),
                Err(e) => tracing::warn!(%url, error = %e, "JWKS refresh failed; keeping the keys held"),
            }
        }
    }
}

/// Refreshes the cache every [`REFRESH`] until the edge shuts down.
pub(crate) async fn run(shared: Arc<crate::Shared>) {
    let stop = crate::shutting_down(shared.shutdown.clone());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(REFRESH) => shared.jwks.refresh().await,
        }
    }
}

async fn fetch(url: &str) -> Result<Bytes, String> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(url))
        .await
        .map_err(|_| format!("fetching {url} timed out"))?
}

async fn fetch_inner(url: &str) -> Result<Bytes, String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let host = uri.host().ok_or_else(|| format!("{url} has no host"))?.trim_matches(['[', ']']).to_owned();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if is_loopback(&host) => false,
        _ => return Err(format!("{url}: JWKS URLs must be https (plain http only on loopback)")),
    };
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp =
        tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("{url}: {e}"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
    let req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, concat!("warren/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
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
    if !resp.status().is_success() {
        return Err(format!("{url} answered {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS).collect().await.map_err(|e| format!("{url}: {e}"))?;
    Ok(body.to_bytes())
}

async fn send<I>(
    io: I,
    req: http::Request<Empty<Bytes>>,
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
