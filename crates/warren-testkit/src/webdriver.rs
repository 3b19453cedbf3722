//! A small W3C WebDriver client driving Debian's headless Chromium through `chromedriver`,
//! for the inspector's browser test. WebDriver is JSON over HTTP, so hyper is enough.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// The key W3C WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session; chromedriver (and with it the browser) is killed on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

/// An element of the page.
#[derive(Clone, Debug)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a headless Chromium session. Panics with what to install when
    /// they are missing (`.ci/run` installs Debian's `chromium` and `chromium-driver`).
    pub async fn start() -> Browser {
        let driver_bin =
            std::env::var("WARREN_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chrome_bin = std::env::var("WARREN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            std::path::Path::new(&driver_bin).exists() && std::path::Path::new(&chrome_bin).exists(),
            "the browser test needs {chrome_bin} and {driver_bin}: apt-get install chromium chromium-driver"
        );
        let port = crate::free_port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut b = Browser { driver, port, session: String::new() };
        // chromedriver answers /status once it listens.
        crate::within("chromedriver to listen", async {
            loop {
                if let Ok(v) = b.call(Method::GET, "/status", None).await
                    && v["value"]["ready"] == json!(true)
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chrome_bin,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
            },
        }}});
        let v = b.call(Method::POST, "/session", Some(caps)).await.expect("start a browser session");
        b.session = v["value"]["sessionId"].as_str().expect("session id").to_owned();
        b
    }

    /// Ends the session, which closes the browser.
    pub async fn quit(self) {
        let path = format!("/session/{}", self.session);
        let _ = self.call(Method::DELETE, &path, None).await;
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.cmd(Method::POST, "url", json!({ "url": url })).await;
    }

    /// The first element matching `css`, if any.
    pub async fn find(&self, css: &str) -> Option<Element> {
        let path = format!("/session/{}/element", self.session);
        let v = self
            .call(Method::POST, &path, Some(json!({ "using": "css selector", "value": css })))
            .await
            .ok()?;
        v["value"][ELEMENT].as_str().map(|id| Element(id.to_owned()))
    }

    /// Every element matching `css`.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let v = self.cmd(Method::POST, "elements", json!({ "using": "css selector", "value": css })).await;
        v["value"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e[ELEMENT].as_str().map(|id| Element(id.to_owned()))).collect())
            .unwrap_or_default()
    }

    /// Waits (up to [`crate::STEP`]) until `css` matches an element whose text contains
    /// `text`, and returns it.
    pub async fn wait_for_text(&self, css: &str, text: &str) -> Element {
        crate::within(&format!("{css} containing {text:?}"), async {
            loop {
                // A page being replaced (a form sent, a reload) leaves stale elements: not
                // an error, just not there yet.
                for e in self.find_all(css).await {
                    let path = format!("/session/{}/element/{}/text", self.session, e.0);
                    if let Ok(v) = self.call(Method::GET, &path, None).await
                        && v["value"].as_str().unwrap_or("").contains(text)
                    {
                        return e;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
    }

    /// Clicks `e`.
    pub async fn click(&self, e: &Element) {
        self.cmd(Method::POST, &format!("element/{}/click", e.0), json!({})).await;
    }

    /// Clicks `e` (a form's button) and waits until the page it was on has been replaced:
    /// until then, what the old page shows (a notice the previous answer left) would be read
    /// as the new answer's, and its fields would go stale under the next typing.
    pub async fn click_and_wait_for_page(&self, e: &Element) {
        self.click(e).await;
        crate::within("the next page", async {
            let path = format!("/session/{}/element/{}/enabled", self.session, e.0);
            while self.call(Method::GET, &path, None).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }

    /// The visible text of `e`.
    pub async fn text(&self, e: &Element) -> String {
        let v = self.cmd(Method::GET, &format!("element/{}/text", e.0), Value::Null).await;
        v["value"].as_str().unwrap_or("").to_owned()
    }

    /// The value of a form field.
    pub async fn value(&self, e: &Element) -> String {
        let v = self.cmd(Method::GET, &format!("element/{}/property/value", e.0), Value::Null).await;
        v["value"].as_str().unwrap_or("").to_owned()
    }

    /// Replaces a form field's text by typing `text` into it.
    pub async fn type_into(&self, e: &Element, text: &str) {
        self.cmd(Method::POST, &format!("element/{}/clear", e.0), json!({})).await;
        self.cmd(Method::POST, &format!("element/{}/value", e.0), json!({ "text": text })).await;
    }

    /// The page as PNG bytes.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let v = self.cmd(Method::GET, "screenshot", Value::Null).await;
        base64::engine::general_purpose::STANDARD
            .decode(v["value"].as_str().unwrap_or(""))
            .expect("base64 PNG")
    }

    /// Writes a screenshot to `$WARREN_SCREENSHOTS/<name>.png` when that variable is set (to
    /// refresh the pictures in the docs); otherwise does nothing.
    pub async fn screenshot_for_docs(&self, name: &str) {
        if let Ok(dir) = std::env::var("WARREN_SCREENSHOTS") {
            let png = self.screenshot().await;
            std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png)
                .expect("write screenshot");
        }
    }

    async fn cmd(&self, method: Method, what: &str, body: Value) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        let body = (method != Method::GET).then_some(body);
        self.call(method, &path, body).await.unwrap_or_else(|e| panic!("WebDriver {what}: {e}"))
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.map_err(|e| e.to_string())?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("127.0.0.1:{}", self.port))
            .header("content-type", "application/json")
            .body(Full::new(bytes))
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", v["value"]["message"]));
        }
        Ok(v)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
