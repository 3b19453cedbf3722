//! A real OpenID Connect provider for tests: npm `oidc-provider` (tests/peers/oidc), run
//! with Node.js on a loopback port. `.ci/run` installs it (`npm ci` in that directory).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use std::net::SocketAddr;

use http_body_util::BodyExt;
use hyper::{HeaderMap, Request, StatusCode};

/// The provider process; killed on drop.
pub struct OidcProvider {
    /// `http://127.0.0.1:PORT`.
    pub issuer: String,
    child: Child,
}

impl OidcProvider {
    /// Starts the provider and waits until it listens.
    pub async fn start() -> OidcProvider {
        OidcProvider::start_with_redirects(&[]).await
    }

    /// Starts it with the `warren-web` client (secret `web-secret`, authorization code flow)
    /// registered for these redirect URIs.
    pub async fn start_with_redirects(redirect_uris: &[&str]) -> OidcProvider {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "the OIDC test peer is not installed: run `npm ci` in {} (.ci/run does)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .env("OIDC_REDIRECT_URIS", redirect_uris.join(","))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node (Node.js) runs the OIDC test peer");
        let out = child.stdout.take().expect("piped");
        // The provider logs to stdout as it serves; the pipe is read to the end so it never
        // writes into a closed pipe (Node.js dies of EPIPE).
        let (tx, issuer) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(i) = line.strip_prefix("issuer ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(i.to_owned());
                }
            }
        });
        let issuer = crate::within("the OIDC provider to listen", issuer).await.expect("issuer line");
        OidcProvider { issuer, child }
    }

    /// The provider's JWKS URL, from its discovery document.
    pub async fn jwks_uri(&self) -> String {
        let v = self.call("GET", "/.well-known/openid-configuration", None, 0).await;
        v["jwks_uri"].as_str().expect("jwks_uri").to_owned()
    }

    /// An access token (a JWT) for `resource`, by the client credentials grant.
    pub async fn access_token(&self, resource: &str) -> String {
        self.access_token_at(resource, 0).await
    }

    /// An access token minted with the provider's clock moved by `skew_secs` (negative: in
    /// the past, so the token is already expired when it arrives).
    pub async fn access_token_at(&self, resource: &str, skew_secs: i64) -> String {
        let form = format!(
            "grant_type=client_credentials&scope=api&resource={}",
            resource.replace(':', "%3A").replace('/', "%2F")
        );
        let v = self.call("POST", "/token", Some(form), skew_secs).await;
        v["access_token"].as_str().unwrap_or_else(|| panic!("no token: {v}")).to_owned()
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        form: Option<String>,
        skew_secs: i64,
    ) -> serde_json::Value {
        let addr = self.issuer.trim_start_matches("http://").to_owned();
        let tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect to the OIDC provider");
        let mut send = crate::http1(tcp).await;
        let mut req = Request::builder().method(method).uri(path).header("host", &addr);
        if skew_secs != 0 {
            req = req.header("x-test-clock-skew", skew_secs.to_string());
        }
        if form.is_some() {
            // warren-api:api-secret
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .header("authorization", "Basic d2FycmVuLWFwaTphcGktc2VjcmV0");
        }
        let body = form.map_or_else(crate::empty, crate::full);
        let res =
            crate::within("OIDC provider answer", send.send_request(req.body(body).unwrap())).await.unwrap();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"))
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a [`Browser`] got back.
#[derive(Debug)]
pub struct Page {
    /// The URL that answered (after redirects, when followed).
    pub url: String,
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body as text.
    pub body: String,
}

/// A browser without JavaScript: it keeps cookies per host, follows redirects and submits
/// forms, which is all the authorization-code flow needs. Hosts under `edge_suffix` are the
/// edge's https endpoints (reached at the edge's https address, trusting its CA); anything
/// else is plain http on loopback (the provider).
pub struct Browser {
    edge_https: SocketAddr,
    ca_pem: Vec<u8>,
    edge_suffix: String,
    jar: Vec<(String, String, String)>,
}

impl Browser {
    /// A browser for the edge's endpoints under `edge_suffix` (like `.warren.localhost`).
    pub fn new(edge: &crate::TestEdge, edge_suffix: &str) -> Browser {
        Browser {
            edge_https: edge.https_addr(),
            ca_pem: edge.ca_pem.clone(),
            edge_suffix: edge_suffix.to_owned(),
            jar: Vec::new(),
        }
    }

    /// A cookie's value for a host.
    pub fn cookie(&self, host: &str, name: &str) -> Option<String> {
        self.jar.iter().find(|(h, n, _)| h == host && n == name).map(|(_, _, v)| v.clone())
    }

    /// Sets (or replaces) a cookie, as a visitor can.
    pub fn set_cookie(&mut self, host: &str, name: &str, value: &str) {
        self.jar.retain(|(h, n, _)| !(h == host && n == name));
        self.jar.push((host.to_owned(), name.to_owned(), value.to_owned()));
    }

    /// Every cookie the browser holds for a host.
    pub fn cookies(&self, host: &str) -> Vec<(String, String)> {
        self.jar.iter().filter(|(h, _, _)| h == host).map(|(_, n, v)| (n.clone(), v.clone())).collect()
    }

    /// GET without following redirects.
    pub async fn get(&mut self, url: &str, headers: &[(&str, &str)]) -> Page {
        self.request("GET", url, headers, None).await
    }

    /// GET, following redirects (at most 20).
    pub async fn open(&mut self, url: &str) -> Page {
        let page = self.get(url, &[]).await;
        self.follow(page).await
    }

    /// Opens `url` and goes through the provider's login and consent forms as alice (password
    /// `wonderland`), as far as the provider at `issuer` asks for them (it remembers her after
    /// the first sign-in).
    pub async fn sign_in(&mut self, issuer: &str, url: &str) -> Page {
        let mut page = self.open(url).await;
        for _ in 0..3 {
            if !page.url.starts_with(issuer) {
                return page;
            }
            page = if page.body.contains("name=\"password\"") {
                self.submit(&page, &[("login", "alice"), ("password", "wonderland")]).await
            } else {
                self.submit(&page, &[]).await
            };
        }
        page
    }

    /// Follows a page's redirects (at most 20).
    pub async fn follow(&mut self, mut page: Page) -> Page {
        for _ in 0..20 {
            if !page.status.is_redirection() {
                return page;
            }
            let location = page.headers[hyper::header::LOCATION].to_str().expect("ASCII Location").to_owned();
            let next = resolve(&page.url, &location);
            page = self.get(&next, &[]).await;
        }
        panic!("more than 20 redirects, last at {}", page.url);
    }

    /// Submits the page's first form with its hidden inputs plus `fields`, and follows the
    /// redirects that answer it.
    pub async fn submit(&mut self, page: &Page, fields: &[(&str, &str)]) -> Page {
        let form_start =
            page.body.find("<form").unwrap_or_else(|| panic!("no form at {}: {}", page.url, page.body));
        self.submit_at(page, form_start, fields).await
    }

    /// Like [`Browser::submit`], for the form whose `action` is `action` (the first such).
    pub async fn submit_form(&mut self, page: &Page, action: &str, fields: &[(&str, &str)]) -> Page {
        let needle = format!("action=\"{action}\"");
        let at = page
            .body
            .find(&needle)
            .unwrap_or_else(|| panic!("no form to {action} at {}: {}", page.url, page.body));
        let form_start = page.body[..at].rfind("<form").expect("the form's start");
        self.submit_at(page, form_start, fields).await
    }

    /// Sends `body` as a form POST to `url` without following redirects (for forms the page
    /// does not have: forged ones).
    pub async fn post_form(&mut self, url: &str, body: &[(&str, &str)], headers: &[(&str, &str)]) -> Page {
        let mut b = form_urlencoded::Serializer::new(String::new());
        for (k, v) in body {
            b.append_pair(k, v);
        }
        let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
        all.extend_from_slice(headers);
        self.request("POST", url, &all, Some(b.finish())).await
    }

    async fn submit_at(&mut self, page: &Page, form_start: usize, fields: &[(&str, &str)]) -> Page {
        let form = &page.body[form_start..];
        let form = &form[..form.find("</form>").unwrap_or(form.len())];
        let action = attr(form, "action").map(|a| unescape(&a)).unwrap_or_else(|| page.url.clone());
        let mut body = form_urlencoded::Serializer::new(String::new());
        let mut rest = form;
        while let Some(i) = rest.find("<input") {
            let tag = &rest[i..rest[i..].find('>').map_or(rest.len(), |e| i + e)];
            if let (Some(name), Some("hidden")) = (attr(tag, "name"), attr(tag, "type").as_deref()) {
                body.append_pair(&name, &unescape(&attr(tag, "value").unwrap_or_default()));
            }
            rest = &rest[i + 6..];
        }
        for (k, v) in fields {
            body.append_pair(k, v);
        }
        let url = resolve(&page.url, &action);
        let answer = self
            .request(
                "POST",
                &url,
                &[("content-type", "application/x-www-form-urlencoded")],
                Some(body.finish()),
            )
            .await;
        self.follow(answer).await
    }

    async fn request(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Page {
        let uri: hyper::Uri = url.parse().unwrap_or_else(|e| panic!("{url}: {e}"));
        let host = uri.host().expect("a host").to_owned();
        let authority = uri.authority().expect("an authority").as_str().to_owned();
        let mut req = Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header("host", &authority);
        let cookies: Vec<String> = self.cookies(&host).iter().map(|(n, v)| format!("{n}={v}")).collect();
        if !cookies.is_empty() {
            req = req.header("cookie", cookies.join("; "));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body.map_or_else(crate::empty, crate::full)).unwrap();
        let res = if host.ends_with(&self.edge_suffix) {
            let tls = crate::tls_connect(self.edge_https, &host, &self.ca_pem, &[b"http/1.1"]).await;
            crate::within("the edge's answer", crate::http1(tls).await.send_request(req)).await
        } else {
            let port = uri.port_u16().unwrap_or(80);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.expect("connect");
            crate::within("the provider's answer", crate::http1(tcp).await.send_request(req)).await
        }
        .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
        let (parts, body) = res.into_parts();
        for c in parts.headers.get_all(hyper::header::SET_COOKIE) {
            self.store(&host, c.to_str().expect("ASCII Set-Cookie"));
        }
        let bytes = body.collect().await.expect("body").to_bytes();
        Page {
            url: url.to_owned(),
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    fn store(&mut self, host: &str, set_cookie: &str) {
        let mut parts = set_cookie.split(';');
        let Some((name, value)) = parts.next().and_then(|kv| kv.trim().split_once('=')) else { return };
        let expired = parts.map(str::trim).any(|a| {
            let a = a.to_ascii_lowercase();
            a == "max-age=0" || (a.starts_with("expires=") && a.contains("1970"))
        });
        self.jar.retain(|(h, n, _)| !(h == host && n == name));
        if !expired {
            self.jar.push((host.to_owned(), name.to_owned(), value.to_owned()));
        }
    }
}

/// A link or form action relative to `base`.
fn resolve(base: &str, target: &str) -> String {
    if target.starts_with("http://") || target.starts_with("https://") {
        return target.to_owned();
    }
    let scheme_end = base.find("://").expect("an absolute base") + 3;
    let origin_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    format!("{}{}", &base[..origin_end], target)
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = tag[start..].find('"')? + start;
    Some(tag[start..end].to_owned())
}

fn unescape(s: &str) -> String {
    s.replace("&amp;", "&")
        .replace("&#x2F;", "/")
        .replace("&#47;", "/")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
}
