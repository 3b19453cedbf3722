//! Secrets never reach the logs or the database in clear: every log line of a session's life
//! (auth, bind, traffic, API calls that create and delete tokens and keys, a failed auth) is
//! captured at TRACE level and searched for every secret used.

use std::io::Write;
use std::sync::{Arc, Mutex};

use hyper::StatusCode;
use serde_json::json;
use warren_agent::{Agent, EndpointConfig};
use warren_testkit::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn no_secret_appears_in_logs_or_in_the_database_file() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let key = Some(edge.api_key.as_str());
    let (_, _, cred) = edge.api("POST", "/credentials", key, Some(json!({"description": "log test"}))).await;
    let token = cred["token"].as_str().unwrap().to_owned();
    let (_, _, k) = edge.api("POST", "/api_keys", key, Some(json!({"description": "log test"}))).await;
    let new_key = k["token"].as_str().unwrap().to_owned();

    let mut cfg =
        edge.agent_with(EndpointConfig::http(&up.url(), Some("https://logs.warren.localhost")).unwrap());
    cfg.authtoken = token.clone();
    let mut agent = Agent::start(cfg);
    within("online", agent.wait_online()).await.unwrap();
    let (s, _, _) = https_get(&edge, "logs.warren.localhost", "/").await;
    assert_eq!(s, StatusCode::OK);
    // A wrong secret on a real id, as an attacker would try.
    let mut bad = token.clone();
    bad.push('x');
    let mut cfg = edge.agent_with(EndpointConfig::http(&up.url(), None).unwrap());
    cfg.authtoken = bad.clone();
    assert!(within("refused", Agent::start(cfg).wait_online()).await.is_err());
    let (s, _, _) = edge.api("GET", "/credentials", Some(&new_key), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = edge
        .api("DELETE", &format!("/credentials/{}", cred["id"].as_str().unwrap()), Some(&new_key), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    agent.stop().await.ok();

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("agent session started"), "the capture holds the edge's logs");
    assert!(logs.contains(cred["id"].as_str().unwrap()), "ids may be logged");
    let secrets = [
        (warren_store::SecretKind::Credential, token.as_str()),
        (warren_store::SecretKind::Credential, edge.authtoken.as_str()),
        (warren_store::SecretKind::ApiKey, edge.api_key.as_str()),
        (warren_store::SecretKind::ApiKey, new_key.as_str()),
    ];
    let mut db = std::fs::read(edge.data_dir().join("warren.db")).unwrap();
    if let Ok(wal) = std::fs::read(edge.data_dir().join("warren.db-wal")) {
        db.extend(wal);
    }
    for (kind, full) in secrets {
        let secret = warren_store::parse_token(kind, full).unwrap().1;
        assert!(!logs.contains(secret), "a secret is in the logs");
        assert!(
            !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret is in the database file"
        );
    }
    assert!(!logs.contains(&bad[bad.len() - 20..]), "a presented wrong secret is not logged either");
}

#[tokio::test]
async fn private_keys_never_appear_in_logs_api_answers_or_the_database() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let ca = TestCa::new("operator CA");
    let (chain, pem_key, _) = ca.leaf("secret.example.com");
    let body = json!({"certificate_pem": chain, "private_key_pem": pem_key});
    let (s, _, cert) = edge.api("POST", "/tls_certificates", key, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED);
    let id = cert["id"].as_str().unwrap().to_owned();
    let (s, _, rd) = edge
        .api(
            "POST",
            "/reserved_domains",
            key,
            Some(json!({"domain": "secret.example.com", "certificate_id": id})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{rd}");
    let mut answers = Vec::new();
    for path in ["/tls_certificates", &format!("/tls_certificates/{id}"), "/reserved_domains"] {
        answers.push(edge.api("GET", path, key, None).await.2.to_string());
    }
    let master = std::fs::read_to_string(edge.data_dir().join("master.key")).unwrap();

    // Every line of the key's body, and the master key, are absent everywhere.
    let key_lines: Vec<&str> = pem_key.lines().filter(|l| !l.starts_with("-----") && l.len() > 16).collect();
    assert!(!key_lines.is_empty());
    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    let mut db = Vec::new();
    // The database file must be there (a scan of nothing would pass); its write-ahead log
    // may or may not be.
    db.extend(std::fs::read(edge.data_dir().join("warren.db")).expect("the SQLite database file"));
    db.extend(std::fs::read(edge.data_dir().join("warren.db-wal")).unwrap_or_default());
    assert!(db.len() > 4096, "the scan reads a real database ({} bytes)", db.len());
    for secret in key_lines.iter().copied().chain([master.trim()]) {
        assert!(!logs.contains(secret), "a key line is in the logs");
        assert!(answers.iter().all(|a| !a.contains(secret)), "a key line is in an API answer");
        assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()), "a key line is in the database");
    }
    assert!(!logs.contains("PRIVATE KEY"));
}
