//! Event subscriptions end to end: audit events of API changes reach a webhook that checks
//! their signatures, in order; a failing webhook is retried and shows its error; an event it
//! refuses is parked and the rest flow; traffic events go through a CEL filter and a field
//! selection to a rotating file; hostile destinations are refused.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use warren_agent::{Agent, EndpointConfig};
use warren_testkit::*;

const SECRET: &str = "a-webhook-secret-for-tests";

/// What the receiver answers: by default 204; `answer` can pick per batch.
type Answer = Arc<dyn Fn(&[Value]) -> u16 + Send + Sync>;

/// A webhook receiver that checks each batch's signature (independently of warren's code,
/// with aws-lc-rs) and passes accepted batches' events on.
struct Receiver {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<Value>,
    /// Every batch that arrived, accepted or not.
    arrivals: Arc<Mutex<Vec<Vec<Value>>>>,
    /// The headers of every batch that arrived.
    headers: Arc<Mutex<Vec<hyper::HeaderMap>>>,
}

impl Receiver {
    async fn start(answer: Answer) -> Receiver {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let (seen, seen_headers) = (arrivals.clone(), headers.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (tx, seen, answer, seen_headers) =
                    (tx.clone(), seen.clone(), answer.clone(), seen_headers.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                        let (tx, seen, answer, seen_headers) =
                            (tx.clone(), seen.clone(), answer.clone(), seen_headers.clone());
                        async move {
                            seen_headers.lock().unwrap().push(req.headers().clone());
                            let sig =
                                req.headers().get("warren-signature").map(|v| v.to_str().unwrap().to_owned());
                            let count = req
                                .headers()
                                .get("warren-event-count")
                                .map(|v| v.to_str().unwrap().to_owned());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let sig = sig.expect("every delivery is signed");
                            let (t, v1) = sig.split_once(",v1=").expect("t=...,v1=...");
                            let t = t.strip_prefix("t=").unwrap();
                            let key =
                                aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
                            let mut signed = format!("{t}.").into_bytes();
                            signed.extend_from_slice(&body);
                            let want: String = aws_lc_rs::hmac::sign(&key, &signed)
                                .as_ref()
                                .iter()
                                .map(|b| format!("{b:02x}"))
                                .collect();
                            assert_eq!(v1, want, "signature over t.body");
                            let age = warren_store::unix_now() - t.parse::<i64>().unwrap();
                            assert!((0..60).contains(&age), "a fresh timestamp");
                            let batch: Vec<Value> = serde_json::from_slice(&body).unwrap();
                            assert_eq!(count, Some(batch.len().to_string()));
                            seen.lock().unwrap().push(batch.clone());
                            let status = answer(&batch);
                            if (200..300).contains(&status) {
                                for ev in batch {
                                    let _ = tx.send(ev);
                                }
                            }
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder().status(status).body(empty()).unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Receiver { addr, events, arrivals, headers }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    async fn next(&mut self) -> Value {
        within("an event at the webhook", self.events.recv()).await.expect("receiver open")
    }
}

fn ok() -> Answer {
    Arc::new(|_| 204)
}

async fn subscribe(edge: &TestEdge, target: Value, sources: Value) -> (Value, Value) {
    let key = Some(edge.api_key.as_str());
    let (s, _, dest) =
        edge.api("POST", "/event_destinations", key, Some(json!({"format": "json", "target": target}))).await;
    assert_eq!(s, StatusCode::CREATED, "{dest}");
    let body = json!({"description": "security", "sources": sources, "destination_ids": [dest["id"]]});
    let (s, _, sub) = edge.api("POST", "/event_subscriptions", key, Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{sub}");
    (dest, sub)
}

#[tokio::test]
async fn audit_events_of_an_api_session_reach_a_signed_webhook_in_order() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let mut rx = Receiver::start(ok()).await;
    let sources: Vec<Value> = [
        "ip_policy_created.v0",
        "ip_policy_updated.v0",
        "ip_policy_deleted.v0",
        "tunnel_credential_created.v0",
        "tunnel_credential_deleted.v0",
        "agent_session_start.v0",
    ]
    .iter()
    .map(|t| json!({"type": t}))
    .collect();
    let (dest, sub) =
        subscribe(&edge, json!({"webhook": {"url": rx.url(), "secret": SECRET}}), json!(sources)).await;
    assert_eq!(dest["target"]["webhook"]["secret"], SECRET, "shown on create");
    assert_eq!(sub["sources"].as_array().unwrap().len(), 6);
    let (_, _, got) =
        edge.api("GET", &format!("/event_destinations/{}", dest["id"].as_str().unwrap()), key, None).await;
    assert_eq!(got["target"]["webhook"].get("secret"), None, "never shown again: {got}");

    // An API session: each change, in order; one type nobody subscribed to in between.
    let (_, _, policy) = edge.api("POST", "/ip_policies", key, Some(json!({"description": "office"}))).await;
    let pid = policy["id"].as_str().unwrap().to_owned();
    edge.api("POST", "/users", key, Some(json!({"email": "x@example.com", "role": "developer"}))).await;
    edge.api("PATCH", &format!("/ip_policies/{pid}"), key, Some(json!({"description": "office v2"}))).await;
    let (_, _, cred) = edge.api("POST", "/credentials", key, Some(json!({"description": "ci"}))).await;
    let token = cred["token"].as_str().unwrap().to_owned();
    let cid = cred["id"].as_str().unwrap().to_owned();
    edge.api("DELETE", &format!("/ip_policies/{pid}"), key, None).await;
    edge.api("DELETE", &format!("/credentials/{cid}"), key, None).await;

    let expect = [
        ("ip_policy_created.v0", pid.as_str()),
        ("ip_policy_updated.v0", pid.as_str()),
        ("tunnel_credential_created.v0", cid.as_str()),
        ("ip_policy_deleted.v0", pid.as_str()),
        ("tunnel_credential_deleted.v0", cid.as_str()),
    ];
    let admin_key_id = edge.api_key.split('_').take(2).collect::<Vec<_>>().join("_");
    for (ty, id) in expect {
        let ev = rx.next().await;
        assert_eq!((ev["event_type"].as_str(), ev["object"]["id"].as_str()), (Some(ty), Some(id)), "{ev}");
        assert!(ev["event_id"].as_str().unwrap().starts_with("ev_"));
        assert_eq!(ev["principal"]["id"], admin_key_id, "who did it: {ev}");
        assert_eq!(ev["principal"]["source"], "api");
        assert_eq!(ev["principal"]["role"], "admin");
        assert_eq!(ev["principal"]["ip"], "127.0.0.1");
        assert!(!ev.to_string().contains(&token[token.len() - 16..]), "no authtoken in any event");
    }
    let updated = rx
        .arrivals
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .find(|e| e["event_type"] == "ip_policy_updated.v0")
        .cloned()
        .unwrap();
    assert_eq!(updated["object"]["description"], "office v2", "the object as it was after the change");
    assert_eq!(updated["object"]["uri"], format!("/ip_policies/{pid}"));

    // An agent session starting, with its address and version.
    let up = HttpUpstream::start().await;
    let mut agent = Agent::start(edge.agent_with(EndpointConfig::http(&up.url(), None).unwrap()));
    within("online", agent.wait_online()).await.unwrap();
    let ev = rx.next().await;
    assert_eq!(ev["event_type"], "agent_session_start.v0", "{ev}");
    assert!(ev["object"]["id"].as_str().unwrap().starts_with("ts_"));
    assert_eq!(ev["object"]["ip"], "127.0.0.1");
    assert!(
        rx.arrivals.lock().unwrap().iter().flatten().all(|e| e["event_type"] != "user_created.v0"),
        "not subscribed"
    );
    // The count is recorded once the webhook has answered.
    within("the delivery count", async {
        loop {
            let path = format!("/event_destinations/{}", dest["id"].as_str().unwrap());
            let (_, _, got) = edge.api("GET", &path, key, None).await;
            assert_eq!(got["delivery"]["last_error"], "", "{got}");
            if got["delivery"]["delivered"].as_i64().unwrap() >= 6 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_webhook_is_retried_and_shows_why_and_a_refused_event_is_parked() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    // Down (500) for the first two tries; then it refuses (400) any batch holding the
    // policy described "poison", and takes the rest.
    let tries = Arc::new(Mutex::new(0));
    let t = tries.clone();
    let answer: Answer = Arc::new(move |batch: &[Value]| {
        let mut n = t.lock().unwrap();
        *n += 1;
        if *n <= 2 {
            return 500;
        }
        if batch.iter().any(|e| e["object"]["description"] == "poison") { 400 } else { 204 }
    });
    let mut rx = Receiver::start(answer).await;
    let (dest, _) = subscribe(
        &edge,
        json!({"webhook": {"url": rx.url(), "secret": SECRET}}),
        json!([{"type": "ip_policy_created.v0"}]),
    )
    .await;
    let did = dest["id"].as_str().unwrap().to_owned();
    edge.api("POST", "/ip_policies", key, Some(json!({"description": "first"}))).await;
    // While it is down, the destination says why.
    within("the error shows", async {
        loop {
            let (_, _, d) = edge.api("GET", &format!("/event_destinations/{did}"), key, None).await;
            if d["delivery"]["last_error"].as_str().unwrap().contains("answered 500") {
                assert!(d["delivery"]["attempts"].as_i64().unwrap() >= 1);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    edge.api("POST", "/ip_policies", key, Some(json!({"description": "poison"}))).await;
    edge.api("POST", "/ip_policies", key, Some(json!({"description": "last"}))).await;
    // Nothing lost to the outage, the refused one set aside, the rest in order.
    assert_eq!(rx.next().await["object"]["description"], "first");
    let last = rx.next().await;
    assert_eq!(last["object"]["description"], "last", "{last}");
    let (_, _, d) = edge.api("GET", &format!("/event_destinations/{did}"), key, None).await;
    let parked = d["delivery"]["parked_events"].as_array().unwrap();
    assert_eq!(parked.len(), 1, "{d}");
    assert_eq!(parked[0]["event_type"], "ip_policy_created.v0");
    assert!(parked[0]["error"].as_str().unwrap().contains("answered 400"), "{d}");
    assert!(parked[0]["attempts"].as_i64().unwrap() >= 5);
    // A destination still in use cannot be deleted.
    let (s, _, e) = edge.api("DELETE", &format!("/event_destinations/{did}"), key, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("used by event subscriptions"), "{e}");
}

#[tokio::test]
async fn destinations_that_are_not_http_or_point_at_the_edge_or_elsewhere_are_refused_by_name() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let api = edge.api_addr();
    let https = edge.https_addr();
    for (target, says) in [
        (json!({"webhook": {"url": "file:///etc/passwd"}}), "is not a URL"),
        (json!({"webhook": {"url": "ftp://example.com/x"}}), "must be https"),
        (json!({"webhook": {"url": format!("http://127.0.0.1:{}/x", api.port())}}), "own listeners"),
        (json!({"webhook": {"url": format!("http://localhost:{}/x", https.port())}}), "this edge's own"),
        (json!({"webhook": {"url": "https://hooks.warren.localhost/x"}}), "own name"),
        (json!({"webhook": {"url": "https://example.com/x", "retries": 3}}), "webhook.retries"),
        (json!({"file": {"name": "../../warren.db"}}), "plain file name"),
        (json!({"kinesis": {"stream_arn": "arn:aws:kinesis:x"}}), "does not deliver to kinesis"),
    ] {
        let (s, _, e) = edge.api("POST", "/event_destinations", key, Some(json!({"target": target}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{target}: {e}");
        assert!(e["msg"].as_str().unwrap().contains(says), "{target}: {e}");
    }
    let (s, _, e) = edge
        .api(
            "POST",
            "/event_destinations",
            key,
            Some(json!({"format": "xml", "target": {"file": {"name": "a"}}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let (s, _, e) = edge
        .api("POST", "/event_subscriptions", key, Some(json!({"sources": [{"type": "everything.v0"}]})))
        .await;
    assert!(s == StatusCode::BAD_REQUEST && e["msg"].as_str().unwrap().contains("everything.v0"), "{e}");
    let bad_field =
        json!({"sources": [{"type": "http_request_complete.v0", "fields": ["http.request.urlpath"]}]});
    let (s, _, e) = edge.api("POST", "/event_subscriptions", key, Some(bad_field)).await;
    assert!(s == StatusCode::BAD_REQUEST && e["msg"].as_str().unwrap().contains("urlpath"), "{e}");
    let bad_filter =
        json!({"sources": [{"type": "http_request_complete.v0", "filter": "req.method == 'GET'"}]});
    let (s, _, e) = edge.api("POST", "/event_subscriptions", key, Some(bad_filter)).await;
    assert!(s == StatusCode::BAD_REQUEST && e["msg"].as_str().unwrap().contains("unknown variable"), "{e}");
    // Only admins manage them; every role reads them.
    let (_, _, user) =
        edge.api("POST", "/users", key, Some(json!({"email": "dev@example.com", "role": "developer"}))).await;
    let (_, _, dev) = edge.api("POST", "/api_keys", key, Some(json!({"owner_id": user["id"]}))).await;
    let dev = dev["token"].as_str().unwrap();
    let (s, _, _) = edge
        .api("POST", "/event_destinations", Some(dev), Some(json!({"target": {"file": {"name": "a"}}})))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = edge.api("GET", "/event_subscriptions", Some(dev), None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn traffic_events_pass_a_cel_filter_and_a_field_selection_into_a_rotating_file() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let (_, sub) = subscribe(
        &edge,
        json!({"file": {"name": "traffic.jsonl", "max_bytes": 4096, "max_files": 3}}),
        json!([{
            "type": "http_request_complete.v0",
            "filter": "ev.http.response.status_code >= 400",
            "fields": ["http.request.method", "http.request.url.path", "http.response.status_code", "conn.client_ip", "endpoint.url"],
        }]),
    )
    .await;
    let mut agent = Agent::start(edge.agent_with(EndpointConfig::http(&up.url(), None).unwrap()));
    let urls = within("online", agent.wait_online()).await.unwrap();
    let host = url_host(&urls[0]);
    for i in 0..30 {
        let (status, _, _) = https_get(&edge, &host, "/status/200").await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = https_get(&edge, &host, &format!("/status/404?n={i}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let dir = edge.data_dir().join("events");
    let read_all = || {
        let mut lines = Vec::new();
        for name in ["traffic.jsonl.3", "traffic.jsonl.2", "traffic.jsonl.1", "traffic.jsonl"] {
            let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            lines.extend(text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()));
        }
        lines
    };
    let events = within("30 events in the files", async {
        loop {
            let e = read_all();
            if e.len() >= 30 {
                return e;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(events.len(), 30, "only the 404s");
    assert!(dir.join("traffic.jsonl.1").exists(), "rotated past 4096 bytes");
    for ev in &events {
        assert_eq!(ev["event_type"], "http_request_complete.v0");
        assert!(ev.get("principal").is_none());
        let o = &ev["object"];
        assert_eq!(o["http"]["response"]["status_code"], 404, "{ev}");
        assert_eq!(o["http"]["request"]["method"], "GET");
        assert_eq!(o["http"]["request"]["url"]["path"], "/status/404");
        assert_eq!(o["conn"]["client_ip"], "127.0.0.1");
        assert_eq!(o["endpoint"]["url"], urls[0].as_str());
        assert_eq!(o["http"]["request"].get("headers"), None, "only the selected fields: {ev}");
        assert_eq!(o.get("tls"), None);
    }
    // Without a field selection, the whole object: body lengths and timings included.
    let sid = sub["id"].as_str().unwrap();
    let key = Some(edge.api_key.as_str());
    let (s, _, src) = edge
        .api(
            "PATCH",
            &format!("/event_subscriptions/{sid}/sources/http_request_complete.v0"),
            key,
            Some(json!({"fields": []})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{src}");
    let (status, _, _) = https_get(&edge, &host, "/status/404").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let full = within("the 31st event", async {
        loop {
            let e = read_all();
            if e.len() > 30 {
                return e.last().unwrap().clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let o = &full["object"];
    assert!(o["http"]["response"]["body_length"].as_u64().unwrap() > 0, "{full}");
    assert!(o["http"]["response_time_ms"].is_u64());
    assert_eq!(o["tls"]["version"], "1.3");
    assert!(o["http"]["request"]["headers"]["host"].is_array());
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn tcp_connections_closing_are_events_with_their_byte_counts() {
    let edge = TestEdge::start().await;
    let mut rx = Receiver::start(ok()).await;
    subscribe(
        &edge,
        json!({"webhook": {"url": rx.url(), "secret": SECRET}}),
        json!([{"type": "tcp_connection_closed.v0"}]),
    )
    .await;
    let (echo, _task) = tcp_echo().await;
    let mut agent = Agent::start(edge.agent_with(EndpointConfig::tcp(&echo.to_string(), None).unwrap()));
    let urls = within("online", agent.wait_online()).await.unwrap();
    let port = url_port(&urls[0]);
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let back = echo_roundtrip(&mut tcp, &[7u8; 5000]).await;
    assert_eq!(back.len(), 5000);
    drop(tcp);
    let ev = rx.next().await;
    assert_eq!(ev["event_type"], "tcp_connection_closed.v0", "{ev}");
    assert_eq!(ev["object"]["conn"]["bytes_in"], 5000, "{ev}");
    assert_eq!(ev["object"]["conn"]["bytes_out"], 5000, "{ev}");
    assert_eq!(ev["object"]["endpoint"]["url"], urls[0].as_str());
    agent.stop().await.unwrap();
}

/// `WARREN_TEST_NATS_URL` (default `nats://127.0.0.1:4222`), a NATS server with JetStream.
fn nats_url() -> String {
    std::env::var("WARREN_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// `PYTHONPATH` for PyPI `nats-py`, NATS's own Python client.
fn nats_py_path() -> String {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-nats");
    python_packages(&dir, "import nats.js", "nats-py==2.9.0")
}

/// Makes a JetStream stream for a subject, prints `ready`, then reads `count` events from it
/// and prints them as one JSON array (NATS's own Python client). Arguments: URL, CA file for
/// TLS (`-`: none), subject, stream, count.
const JETSTREAM_READER: &str = r#"
import asyncio, json, ssl, sys
import nats
async def main():
    url, cafile, subject, stream, count = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    tls = ssl.create_default_context(cafile=cafile) if cafile != "-" else None
    nc = await nats.connect(url, tls=tls)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[subject])
    print("ready", flush=True)
    sub = await js.pull_subscribe(subject, durable="reader")
    got = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while len(got) < count and loop.time() < deadline:
        try:
            msgs = await sub.fetch(count - len(got), timeout=1)
        except nats.errors.TimeoutError:
            continue
        for m in msgs:
            got.append(json.loads(m.data))
            await m.ack()
    print(json.dumps(got), flush=True)
    await js.delete_stream(stream)
    await nc.close()
asyncio.run(main())
"#;

/// [`JETSTREAM_READER`] running: its stream made, its events to come.
struct JetStreamReader {
    child: tokio::process::Child,
    lines: tokio::io::BufReader<tokio::process::ChildStdout>,
}

impl JetStreamReader {
    async fn start(url: &str, cafile: &str, subject: &str, stream: &str, count: usize) -> JetStreamReader {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("python3")
            .args(["-c", JETSTREAM_READER, url, cafile, subject, stream, &count.to_string()])
            .env("PYTHONPATH", nats_py_path())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        within("the stream is made", lines.read_line(&mut line)).await.unwrap();
        assert_eq!(line.trim(), "ready");
        JetStreamReader { child, lines }
    }

    /// The events it read, in order.
    async fn events(&mut self) -> Vec<Value> {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        within("the events in the stream", self.lines.read_line(&mut line)).await.unwrap();
        let got = serde_json::from_str(&line).unwrap();
        let _ = self.child.wait().await;
        got
    }
}

/// Audit events published to a NATS subject are stored by a JetStream stream, in order, and
/// read back with NATS's own Python client; a subject no stream takes is an error shown on
/// the destination, not a silent loss.
#[tokio::test]
async fn audit_events_reach_a_jetstream_stream_through_nats() {
    let url = nats_url();
    let host_port = url.trim_start_matches("nats://").to_owned();
    if tokio::net::TcpStream::connect(&host_port).await.is_err() {
        panic!("a NATS server with JetStream is needed at {url} (set WARREN_TEST_NATS_URL)");
    }
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let tag = warren_store::generate_id("t").to_lowercase();
    let subject = format!("warren.test.{tag}");
    let stream = format!("WARREN_{tag}").to_uppercase();
    let mut reader = JetStreamReader::start(&url, "-", &subject, &stream, 3).await;

    let target = json!({"nats": {"url": url, "subject": subject, "jetstream": true}});
    let (_, sub) = subscribe(&edge, target, json!([{"type": "ip_policy_created.v0"}])).await;
    // A second destination on a subject no stream takes.
    let lost = json!({"nats": {"url": url, "subject": format!("{subject}.nobody")}});
    let (s, _, lost) = edge.api("POST", "/event_destinations", key, Some(json!({"target": lost}))).await;
    assert_eq!(s, StatusCode::CREATED, "{lost}");
    assert_eq!(lost["target"]["nats"]["jetstream"], true, "JetStream acknowledgements by default");
    let mut dest_ids: Vec<Value> =
        sub["destinations"].as_array().unwrap().iter().map(|d| d["id"].clone()).collect();
    dest_ids.push(lost["id"].clone());
    let sid = sub["id"].as_str().unwrap();
    let (s, _, _) = edge
        .api("PATCH", &format!("/event_subscriptions/{sid}"), key, Some(json!({"destination_ids": dest_ids})))
        .await;
    assert_eq!(s, StatusCode::OK);

    let mut ids = Vec::new();
    for i in 0..3 {
        let (_, _, p) =
            edge.api("POST", "/ip_policies", key, Some(json!({"description": format!("n{i}")}))).await;
        ids.push(p["id"].as_str().unwrap().to_owned());
    }
    let got = reader.events().await;
    let got_ids: Vec<&str> = got.iter().map(|e| e["object"]["id"].as_str().unwrap()).collect();
    assert_eq!(got_ids, ids, "every event, in order");
    assert!(
        got.iter().all(|e| e["event_type"] == "ip_policy_created.v0" && e["principal"]["source"] == "api")
    );
    let lid = lost["id"].as_str().unwrap();
    within("the error shows", async {
        loop {
            let (_, _, d) = edge.api("GET", &format!("/event_destinations/{lid}"), key, None).await;
            if d["delivery"]["last_error"].as_str().unwrap().contains("no JetStream stream takes subject") {
                assert_eq!(d["delivery"]["delivered"], 0);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// `PYTHONPATH` for PyPI `opentelemetry-proto`, OpenTelemetry's official protobuf types.
fn otel_proto_path() -> String {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-otel-proto");
    python_packages(
        &dir,
        "from opentelemetry.proto.collector.logs.v1 import logs_service_pb2",
        "opentelemetry-proto==1.29.0",
    )
}

/// Traffic events reach an OTLP/HTTP logs receiver that decodes each request strictly into
/// OpenTelemetry's own `ExportLogsServiceRequest` (unknown or mistyped fields fail).
#[tokio::test]
async fn traffic_events_reach_an_otlp_receiver_as_logs() {
    let script = r#"
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        req = json_format.Parse(body, ExportLogsServiceRequest())
        for rl in req.resource_logs:
            service = {a.key: a.value.string_value for a in rl.resource.attributes}["service.name"]
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    attrs = {a.key: a.value.string_value for a in r.attributes}
                    print(json.dumps({"path": self.path, "auth": self.headers.get("Authorization"),
                        "tenant": self.headers.get("X-Scope-OrgID"), "service": service, "scope": sl.scope.name,
                        "time": r.time_unix_nano, "severity": r.severity_number, "attrs": attrs,
                        "body": json.loads(r.body.string_value)}), flush=True)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *a):
        pass
s = HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
    let mut receiver = tokio::process::Command::new("python3")
        .args(["-c", script])
        .env("PYTHONPATH", otel_proto_path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(receiver.stdout.take().unwrap()).lines();
    let port: u16 = within("the receiver's port", lines.next_line()).await.unwrap().unwrap().parse().unwrap();

    let edge = TestEdge::start().await;
    // A collector that wants a bearer token and a tenant: the values are kept sealed, shown
    // masked, and sent with every batch.
    let headers = json!({"Authorization": "Bearer otlp-collector-token", "X-Scope-OrgID": "team-a"});
    let target = json!({"otlp": {"url": format!("http://127.0.0.1:{port}/v1/logs"), "headers": headers}});
    let (dest, _) = subscribe(&edge, target, json!([{"type": "http_request_complete.v0"}])).await;
    let shown = dest["target"]["otlp"]["headers"].clone();
    assert_eq!(shown, json!({"authorization": "********", "x-scope-orgid": "********"}), "{dest}");
    assert!(!dest.to_string().contains("otlp-collector-token"), "{dest}");
    for bad in [
        json!({"Host": "x"}),
        json!({"Content-Type": "text/plain"}),
        json!({"bad header": "x"}),
        json!({"a": 1}),
    ] {
        let body =
            json!({"target": {"otlp": {"url": format!("http://127.0.0.1:{port}/v1/logs"), "headers": bad}}});
        let (s, _, e) =
            edge.api("POST", "/event_destinations", Some(edge.api_key.as_str()), Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {e}");
        assert!(e["msg"].as_str().unwrap().contains("target.otlp.headers"), "{e}");
    }
    let up = HttpUpstream::start().await;
    let mut agent = Agent::start(edge.agent_with(EndpointConfig::http(&up.url(), None).unwrap()));
    let urls = within("online", agent.wait_online()).await.unwrap();
    let host = url_host(&urls[0]);
    for path in ["/a", "/status/503"] {
        https_get(&edge, &host, path).await;
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let line = within("a log record", lines.next_line()).await.unwrap().unwrap();
        got.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    for (rec, (path, status)) in got.iter().zip([("/a", 200), ("/status/503", 503)]) {
        assert_eq!(rec["path"], "/v1/logs");
        assert_eq!(
            (rec["auth"].as_str(), rec["tenant"].as_str()),
            (Some("Bearer otlp-collector-token"), Some("team-a"))
        );
        assert_eq!((rec["service"].as_str(), rec["scope"].as_str()), (Some("warren"), Some("warren.events")));
        assert_eq!(rec["attrs"]["event.name"], "http_request_complete.v0", "{rec}");
        assert_eq!(rec["attrs"]["event.id"], rec["body"]["event_id"]);
        assert!(rec["time"].as_u64().unwrap() > 1_700_000_000 * 1_000_000_000);
        assert_eq!(rec["body"]["object"]["http"]["request"]["url"]["path"], path);
        assert_eq!(rec["body"]["object"]["http"]["response"]["status_code"], status);
    }
    agent.stop().await.unwrap();
}

/// A destination that accepts connections and never answers is retried with backoff and
/// shows why; another destination of the same subscription gets every event meanwhile.
#[tokio::test]
async fn a_destination_that_never_answers_does_not_hold_up_another() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    // Accepts, reads, never writes; keeps every connection open.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_port = hole.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = hole.accept().await {
            held.push(c);
        }
    });
    let mut rx = Receiver::start(ok()).await;
    let (good, sub) = subscribe(
        &edge,
        json!({"webhook": {"url": rx.url(), "secret": SECRET}}),
        json!([{"type": "ip_policy_created.v0"}]),
    )
    .await;
    let silent = json!({"target": {"webhook": {"url": format!("http://127.0.0.1:{hole_port}/hook")}}});
    let (_, _, silent) = edge.api("POST", "/event_destinations", key, Some(silent)).await;
    let sid = sub["id"].as_str().unwrap();
    let both = json!({"destination_ids": [good["id"], silent["id"]]});
    let (s, _, _) = edge.api("PATCH", &format!("/event_subscriptions/{sid}"), key, Some(both)).await;
    assert_eq!(s, StatusCode::OK);
    for i in 0..3 {
        edge.api("POST", "/ip_policies", key, Some(json!({"description": format!("h{i}")}))).await;
    }
    for i in 0..3 {
        assert_eq!(rx.next().await["object"]["description"], format!("h{i}"));
    }
    // The silent one times out (10 s) and says so.
    let id = silent["id"].as_str().unwrap();
    within("the timeout shows", async {
        loop {
            let (_, _, d) = edge.api("GET", &format!("/event_destinations/{id}"), key, None).await;
            if d["delivery"]["last_error"].as_str().unwrap().contains("did not answer within 10 s") {
                assert_eq!(d["delivery"]["delivered"], 0);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
}

/// Traffic events leave from memory, one queue per destination: a destination that cannot be
/// reached shows why on the resource and loses only its own events, while visitors are
/// served and another destination of the same account gets every event, once, in the
/// envelope the outbox path makes.
#[tokio::test]
async fn a_dead_traffic_destination_shows_why_and_the_others_get_every_event() {
    // Each destination holds at most 30 waiting events: the dead one drops the rest.
    let edge = TestEdge::start_with(|c| c.limits.max_traffic_events_per_destination = 30).await;
    let key = Some(edge.api_key.as_str());
    let up = HttpUpstream::start().await;
    let closed = {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        l.local_addr().unwrap()
    };
    let sources = json!([{"type": "http_request_complete.v0"}]);
    let (dead, _) = subscribe(
        &edge,
        json!({"webhook": {"url": format!("http://{closed}/hook"), "secret": SECRET}}),
        sources.clone(),
    )
    .await;
    let (alive, _) = subscribe(&edge, json!({"file": {"name": "alive.jsonl"}}), sources).await;
    let mut agent = Agent::start(edge.agent_with(EndpointConfig::http(&up.url(), None).unwrap()));
    let urls = within("online", agent.wait_online()).await.unwrap();
    let host = url_host(&urls[0]);
    for i in 0..50 {
        let (status, _, _) = https_get(&edge, &host, &format!("/n/{i}")).await;
        assert_eq!(status, StatusCode::OK, "visitors are served");
    }
    let file = edge.data_dir().join("events/alive.jsonl");
    let events: Vec<Value> = within("50 events in the file", async {
        loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if text.lines().count() >= 50 {
                return text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(events.len(), 50);
    let ids: std::collections::HashSet<&str> =
        events.iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 50, "each event once");
    let mut paths: Vec<&str> =
        events.iter().map(|e| e["object"]["http"]["request"]["url"]["path"].as_str().unwrap()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), 50, "every request");
    for e in &events {
        assert_eq!(e["event_type"], "http_request_complete.v0");
        assert_eq!(e["account_id"], events[0]["account_id"]);
        assert!(!e["account_id"].as_str().unwrap().is_empty(), "{e}");
        assert!(e["event_timestamp"].as_str().unwrap().ends_with('Z'), "{e}");
        assert!(e.get("principal").is_none(), "{e}");
    }
    let dead_id = dead["id"].as_str().unwrap();
    let why = within("the dead destination shows its error", async {
        loop {
            let (_, _, d) = edge.api("GET", &format!("/event_destinations/{dead_id}"), key, None).await;
            let e = d["delivery"]["last_error"].as_str().unwrap_or_default().to_owned();
            if !e.is_empty() {
                return e;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(why.starts_with("traffic events:"), "{why}");
    let alive_id = alive["id"].as_str().unwrap();
    let counted = within("the live destination's count", async {
        loop {
            let (_, _, d) = edge.api("GET", &format!("/event_destinations/{alive_id}"), key, None).await;
            if d["delivery"]["delivered"].as_i64() == Some(50) {
                return d;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(counted["delivery"]["last_error"], "", "{counted}");
    // What the dead destination had no room for is counted, not kept.
    let (_, _, metrics) = plain_get(edge.api_addr(), "api.warren.localhost", "/metrics").await;
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("warren_traffic_events_dropped_total "))
        .unwrap_or_else(|| panic!("no dropped counter: {metrics}"))
        .trim()
        .parse()
        .unwrap();
    // 50 events: 30 wait, one batch is in flight (a few, gathered for 5 ms), the rest dropped.
    assert!((1.0..=20.0).contains(&dropped), "{dropped}");
}

/// A webhook destination's own headers (a receiver's `Authorization`, a tenant id) go with
/// every signed batch; they are sealed like the secret, shown masked, and the signature's own
/// headers cannot be set.
#[tokio::test]
async fn a_webhook_gets_its_own_headers_with_every_signed_batch() {
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let mut rx = Receiver::start(ok()).await;
    let headers = json!({"Authorization": "Bearer receiver-token", "X-Tenant": "blue"});
    let target = json!({"webhook": {"url": rx.url(), "secret": SECRET, "headers": headers}});
    let (dest, _) = subscribe(&edge, target, json!([{"type": "ip_policy_created.v0"}])).await;
    assert_eq!(
        dest["target"]["webhook"]["headers"],
        json!({"authorization": "********", "x-tenant": "********"})
    );
    let id = dest["id"].as_str().unwrap();
    let (_, _, got) = edge.api("GET", &format!("/event_destinations/{id}"), key, None).await;
    assert!(!got.to_string().contains("receiver-token"), "never shown: {got}");
    edge.api("POST", "/ip_policies", key, Some(json!({"description": "office"}))).await;
    let ev = rx.next().await;
    assert_eq!(ev["event_type"], "ip_policy_created.v0");
    let h = rx.headers.lock().unwrap().last().cloned().unwrap();
    assert_eq!(h["authorization"], "Bearer receiver-token");
    assert_eq!(h["x-tenant"], "blue");
    assert!(h["warren-signature"].to_str().unwrap().starts_with("t="), "still signed");
    for bad in
        [json!({"Warren-Signature": "t=1,v1=00"}), json!({"Content-Length": "1"}), json!({"X-Bad": "a\nb"})]
    {
        let body = json!({"target": {"webhook": {"url": rx.url(), "headers": bad}}});
        let (s, _, e) = edge.api("POST", "/event_destinations", key, Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {e}");
        assert!(e["msg"].as_str().unwrap().contains("target.webhook.headers"), "{e}");
    }
}

/// A NATS server that requires TLS: a `tls://` destination trusting the server's own CA
/// (`tls_ca`) delivers into a JetStream stream (read back over TLS with NATS's Python
/// client); a `nats://` destination to it is refused with the reason shown, never sent in
/// the clear; a `tls_ca` for a plain URL or that holds no certificate is refused at create.
#[tokio::test]
async fn audit_events_reach_jetstream_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("NATS CA");
    let (cert, key_pem, _) = ca.leaf("127.0.0.1");
    let (cert_file, key_file, ca_file) =
        (dir.path().join("c.pem"), dir.path().join("k.pem"), dir.path().join("ca.pem"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key_pem).unwrap();
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let port = free_port();
    let bin = if std::path::Path::new("/usr/sbin/nats-server").exists() {
        "/usr/sbin/nats-server"
    } else {
        "nats-server"
    };
    let mut server = tokio::process::Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path().join("js"))
        .args(["--tls", "--tlscert"])
        .arg(&cert_file)
        .arg("--tlskey")
        .arg(&key_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server is installed (.ci/run installs it)");
    within("nats-server listens", async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let edge = TestEdge::start().await;
    let key = Some(edge.api_key.as_str());
    let url = format!("tls://127.0.0.1:{port}");
    let subject = "warren.tls.audit";
    let mut reader = JetStreamReader::start(&url, ca_file.to_str().unwrap(), subject, "WARREN_TLS", 2).await;

    for (bad, says) in [
        (
            json!({"url": format!("nats://127.0.0.1:{port}"), "subject": subject, "tls_ca": ca.pem}),
            "only for a tls://",
        ),
        (json!({"url": url, "subject": subject, "tls_ca": "not PEM"}), "tls_ca"),
    ] {
        let (s, _, e) =
            edge.api("POST", "/event_destinations", key, Some(json!({"target": {"nats": bad}}))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert!(e["msg"].as_str().unwrap().contains(says), "{e}");
    }
    let target = json!({"nats": {"url": url, "subject": subject, "tls_ca": ca.pem}});
    let (dest, sub) = subscribe(&edge, target, json!([{"type": "ip_policy_created.v0"}])).await;
    assert_eq!(dest["target"]["nats"]["tls_ca"], ca.pem.as_str(), "a CA is not secret: shown");
    // The same server behind nats://: refused, not spoken to in the clear.
    let plain = json!({"nats": {"url": format!("nats://127.0.0.1:{port}"), "subject": subject}});
    let (s, _, plain) = edge.api("POST", "/event_destinations", key, Some(json!({"target": plain}))).await;
    assert_eq!(s, StatusCode::CREATED, "{plain}");
    let ids = json!([dest["id"], plain["id"]]);
    let sid = sub["id"].as_str().unwrap();
    let (s, _, _) = edge
        .api("PATCH", &format!("/event_subscriptions/{sid}"), key, Some(json!({"destination_ids": ids})))
        .await;
    assert_eq!(s, StatusCode::OK);

    let mut created = Vec::new();
    for i in 0..2 {
        let (_, _, p) =
            edge.api("POST", "/ip_policies", key, Some(json!({"description": format!("tls{i}")}))).await;
        created.push(p["id"].as_str().unwrap().to_owned());
    }
    let got = reader.events().await;
    let got_ids: Vec<&str> = got.iter().map(|e| e["object"]["id"].as_str().unwrap()).collect();
    assert_eq!(got_ids, created, "every event, in order, over TLS");
    let pid = plain["id"].as_str().unwrap();
    within("the plain destination shows why", async {
        loop {
            let (_, _, d) = edge.api("GET", &format!("/event_destinations/{pid}"), key, None).await;
            if d["delivery"]["last_error"].as_str().unwrap().contains("requires TLS; use tls://") {
                assert_eq!(d["delivery"]["delivered"], 0);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let _ = server.kill().await;
}

/// `subscribe` for another account, with its own API key.
async fn subscribe_as(edge: &TestEdge, key: &str, target: Value, sources: Value) {
    let (s, _, dest) = edge
        .api("POST", "/event_destinations", Some(key), Some(json!({"format": "json", "target": target})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{dest}");
    let body = json!({"sources": sources, "destination_ids": [dest["id"]]});
    let (s, _, sub) = edge.api("POST", "/event_subscriptions", Some(key), Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{sub}");
}

#[tokio::test]
async fn each_accounts_traffic_events_reach_only_its_own_destinations() {
    let edge = TestEdge::start().await;
    let up = HttpUpstream::start().await;
    let other = edge.tenant("other").await;
    let every = json!([{"type": "http_request_complete.v0"}]);
    subscribe(&edge, json!({"file": {"name": "mine.jsonl"}}), every.clone()).await;
    let mut agent = Agent::start(edge.agent_with(EndpointConfig::http(&up.url(), None).unwrap()));
    let mine = within("online", agent.wait_online()).await.unwrap();
    let mut cfg = other.agent_config(&edge);
    cfg.endpoints = vec![EndpointConfig::http(&up.url(), None).unwrap()];
    let mut other_agent = Agent::start(cfg);
    let theirs = within("online", other_agent.wait_online()).await.unwrap();
    let get = |url: &str, path: String| {
        let host = url_host(url);
        let edge = &edge;
        async move {
            let (status, _, _) = https_get(edge, &host, &path).await;
            assert_eq!(status, StatusCode::OK);
        }
    };
    // The other account's requests before it subscribes: this node has cached that it takes
    // nothing; its subscription must reach the request path at once, and only its own.
    for i in 0..3 {
        get(&theirs[0], format!("/status/200?before={i}")).await;
    }
    subscribe_as(&edge, &other.admin.api_key, json!({"file": {"name": "theirs.jsonl"}}), every).await;
    for i in 0..5 {
        get(&mine[0], format!("/status/200?mine={i}")).await;
        get(&theirs[0], format!("/status/200?theirs={i}")).await;
    }
    let dir = edge.data_dir().join("events");
    let read = |name: &str| -> Vec<Value> {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let (my_events, their_events) = within("both files", async {
        loop {
            let (a, b) = (read("mine.jsonl"), read("theirs.jsonl"));
            if a.len() >= 5 && b.len() >= 5 {
                return (a, b);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let query = |ev: &Value| ev["object"]["http"]["request"]["url"]["query"].as_str().unwrap().to_owned();
    let expected = |who: &str| (0..5).map(|i| format!("{who}={i}")).collect::<Vec<_>>();
    assert_eq!(my_events.iter().map(query).collect::<Vec<_>>(), expected("mine"));
    assert_eq!(
        their_events.iter().map(query).collect::<Vec<_>>(),
        expected("theirs"),
        "none from before it subscribed"
    );
    for (events, url, account) in
        [(&my_events, &mine[0], None), (&their_events, &theirs[0], Some(&other.account_id))]
    {
        for ev in events {
            assert_eq!(ev["object"]["endpoint"]["url"], url.as_str(), "{ev}");
            if let Some(account) = account {
                assert_eq!(ev["account_id"], account.as_str());
            } else {
                assert_ne!(ev["account_id"], other.account_id.as_str());
            }
        }
    }
    agent.stop().await.unwrap();
    other_agent.stop().await.unwrap();
}

#[tokio::test]
async fn each_request_of_a_kept_alive_connection_names_its_own_client() {
    // The test's connections come from 127.0.0.1, trusted here: X-Forwarded-For names the
    // client. An event writes a connection's addresses once and reuses them, which must not
    // give one request the client another request named.
    let edge =
        TestEdge::start_with(|c| c.trusted_proxies = vec![warren_edge::Cidr::parse("127.0.0.1/32").unwrap()])
            .await;
    let up = HttpUpstream::start().await;
    subscribe(
        &edge,
        json!({"file": {"name": "clients.jsonl"}}),
        json!([{"type": "http_request_complete.v0"}]),
    )
    .await;
    let mut agent = Agent::start(
        edge.agent_with(EndpointConfig::http(&up.url(), Some("http://clients.warren.localhost")).unwrap()),
    );
    within("online", agent.wait_online()).await.unwrap();
    let tcp = tokio::net::TcpStream::connect(edge.http_addr()).await.unwrap();
    let mut send = http1(tcp).await;
    for (i, xff) in [None, Some("10.0.0.5"), None, Some("192.0.2.9")].into_iter().enumerate() {
        let mut req = hyper::Request::get(format!("/?n={i}")).header("host", "clients.warren.localhost");
        if let Some(xff) = xff {
            req = req.header("x-forwarded-for", xff);
        }
        let res = within("response", send.send_request(req.body(empty()).unwrap())).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        res.into_body().collect().await.unwrap();
    }
    let path = edge.data_dir().join("events").join("clients.jsonl");
    let events: Vec<Value> = within("four events", async {
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let events: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            if events.len() >= 4 {
                return events;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let clients: Vec<&str> =
        events.iter().map(|e| e["object"]["conn"]["client_ip"].as_str().unwrap()).collect();
    assert_eq!(clients, ["127.0.0.1", "10.0.0.5", "127.0.0.1", "192.0.2.9"]);
    let ports: Vec<u64> =
        events.iter().map(|e| e["object"]["conn"]["client_port"].as_u64().unwrap()).collect();
    assert!(ports.iter().all(|p| *p == ports[0]), "one connection: {ports:?}");
    agent.stop().await.unwrap();
}
