//! A real OpenID Connect provider for tests: npm `oidc-provider` (tests/peers/oidc), run
//! with Node.js on a loopback port. `.ci/run` installs it (`npm ci` in that directory).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use http_body_util::BodyExt;
use hyper::Request;

/// The provider process; killed on drop.
pub struct OidcProvider {
    /// `http://127.0.0.1:PORT`.
    pub issuer: String,
    child: Child,
}

impl OidcProvider {
    /// Starts the provider and waits until it listens.
    pub async fn start() -> OidcProvider {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "the OIDC test peer is not installed: run `npm ci` in {} (.ci/run does)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node (Node.js) runs the OIDC test peer");
        let out = child.stdout.take().expect("piped");
        let issuer = tokio::task::spawn_blocking(move || {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .find_map(|l| l.strip_prefix("issuer ").map(str::to_owned))
        });
        let issuer =
            crate::within("the OIDC provider to listen", issuer).await.unwrap().expect("issuer line");
        OidcProvider { issuer, child }
    }

    /// The provider's JWKS URL, from its discovery document.
    pub async fn jwks_uri(&self) -> String {
        let v = self.call("GET", "/.well-known/openid-configuration", None).await;
        v["jwks_uri"].as_str().expect("jwks_uri").to_owned()
    }

    /// An access token (a JWT) for `resource`, by the client credentials grant.
    pub async fn access_token(&self, resource: &str) -> String {
        let form = format!(
            "grant_type=client_credentials&scope=api&resource={}",
            resource.replace(':', "%3A").replace('/', "%2F")
        );
        let v = self.call("POST", "/token", Some(form)).await;
        v["access_token"].as_str().unwrap_or_else(|| panic!("no token: {v}")).to_owned()
    }

    async fn call(&self, method: &str, path: &str, form: Option<String>) -> serde_json::Value {
        let addr = self.issuer.trim_start_matches("http://").to_owned();
        let tcp = tokio::net::TcpStream::connect(&addr).await.expect("connect to the OIDC provider");
        let mut send = crate::http1(tcp).await;
        let mut req = Request::builder().method(method).uri(path).header("host", &addr);
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
