//! `/metrics`, scraped after real traffic and parsed with Prometheus's own Python client
//! (`prometheus_client.openmetrics.parser`, PyPI `prometheus-client`), so the text is
//! checked by an implementation other than the one that wrote it.

use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use warren_agent::{Agent, EndpointConfig};
use warren_testkit::*;

/// `PYTHONPATH` for PyPI `prometheus-client`, Prometheus's own parser.
fn parser_path() -> String {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-prometheus-client");
    python_packages(&dir, "import prometheus_client.openmetrics.parser", "prometheus-client==0.21.1")
}

/// Every sample of `text` as `{name, labels, value}`, parsed by Prometheus's client. A text
/// the parser refuses fails the test.
async fn parse(text: &str) -> Vec<Value> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"name": s.name, "labels": s.labels, "value": s.value, "type": family.type})
print(json.dumps(out))
"#;
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", script])
        .env("PYTHONPATH", parser_path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = within("the parser", child.wait_with_output()).await.unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
fn value(samples: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][k] == *v))
        .and_then(|s| s["value"].as_f64())
}

async fn scrape(edge: &TestEdge) -> (StatusCode, String, String) {
    let (status, headers, body) = plain_get(edge.api_addr(), "api.warren.localhost", "/metrics").await;
    let ct = headers.get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, ct, body)
}

#[tokio::test]
async fn metrics_count_sessions_requests_bytes_and_event_deliveries() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    // A file destination taking 404s, so delivery has something to count.
    let (s, _, dest) = edge
        .api("POST", "/event_destinations", key, Some(json!({"target": {"file": {"name": "m.jsonl"}}})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{dest}");
    let sub = json!({"sources": [{"type": "http_request_complete.v0", "filter": "ev.http.response.status_code == 404"}], "destination_ids": [dest["id"]]});
    let (s, _, _) = edge.api("POST", "/event_subscriptions", key, Some(sub)).await;
    assert_eq!(s, StatusCode::CREATED);

    let up = HttpUpstream::start().await;
    let mut web = Agent::start(edge.agent_with(EndpointConfig::http(&up.url(), None).unwrap()));
    let web_url = within("http online", web.wait_online()).await.unwrap()[0].clone();
    let (echo, _task) = tcp_echo().await;
    let mut tcp = Agent::start(edge.agent_with(EndpointConfig::tcp(&echo.to_string(), None).unwrap()));
    let tcp_url = within("tcp online", tcp.wait_online()).await.unwrap()[0].clone();

    let host = url_host(&web_url);
    for _ in 0..3 {
        assert_eq!(https_get(&edge, &host, "/status/200").await.0, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(https_get(&edge, &host, "/status/404").await.0, StatusCode::NOT_FOUND);
    }
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", url_port(&tcp_url))).await.unwrap();
    assert_eq!(echo_roundtrip(&mut conn, &[1u8; 3000]).await.len(), 3000);
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.unwrap();
    drop(conn);

    // Counts land as things finish: scrape until they all have.
    let samples = within("the counts", async {
        loop {
            let (status, ct, text) = scrape(&edge).await;
            assert_eq!(status, StatusCode::OK, "{text}");
            assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
            let samples = parse(&text).await;
            let done = value(&samples, "warren_bytes_total", &[("endpoint", &tcp_url), ("direction", "in")])
                == Some(3000.0)
                && value(
                    &samples,
                    "warren_events_delivered_total",
                    &[("destination", dest["id"].as_str().unwrap())],
                ) == Some(2.0);
            if done {
                return samples;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(value(&samples, "warren_agent_sessions", &[]), Some(2.0));
    assert_eq!(value(&samples, "warren_endpoints", &[("proto", "https")]), Some(1.0));
    assert_eq!(value(&samples, "warren_endpoints", &[("proto", "tcp")]), Some(1.0));
    assert_eq!(
        value(&samples, "warren_http_requests_total", &[("endpoint", &web_url), ("code", "2xx")]),
        Some(3.0)
    );
    assert_eq!(
        value(&samples, "warren_http_requests_total", &[("endpoint", &web_url), ("code", "4xx")]),
        Some(2.0)
    );
    assert_eq!(
        value(&samples, "warren_http_request_duration_seconds_count", &[("endpoint", &web_url)]),
        Some(5.0)
    );
    assert_eq!(
        value(&samples, "warren_bytes_total", &[("endpoint", &tcp_url), ("direction", "out")]),
        Some(3000.0)
    );
    assert_eq!(value(&samples, "warren_tcp_connections_total", &[("endpoint", &tcp_url)]), Some(1.0));
    assert_eq!(value(&samples, "warren_traffic_events_dropped_total", &[]), Some(0.0));
    assert!(value(&samples, "warren_event_delivery_lag_seconds", &[]).is_some());
    assert!(value(&samples, "warren_visitor_connections", &[]).is_some());

    // An endpoint that goes away takes its series with it.
    web.stop().await.unwrap();
    edge.wait_sessions(1).await;
    let (_, _, text) = scrape(&edge).await;
    let samples = parse(&text).await;
    assert_eq!(
        value(&samples, "warren_http_requests_total", &[("endpoint", &web_url), ("code", "2xx")]),
        None,
        "{text}"
    );
    assert_eq!(value(&samples, "warren_endpoints", &[("proto", "https")]), None);
    tcp.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_are_refused_to_addresses_outside_metrics_allow() {
    let edge = TestEdge::start_with(|c| c.metrics_allow.clear()).await;
    let (status, _, body) = scrape(&edge).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("--metrics-allow"), "{body}");
    // An API key does not open them: they are the operator's, not an account's.
    let (status, _, _) = edge.api("GET", "/metrics", Some(&edge.api_key), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
