//! The session loop: dial, authenticate, bind, serve proxy streams; on loss, back off and
//! start over with the previous session id so the edge hands the endpoints over.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use warren_mux::{ErrorCode, Mux, Role, Stream};
use warren_proto::{self as proto, StreamType, error_codes as codes};

use crate::config::{AgentConfig, EndpointProto};
use crate::forward;
use crate::state::{Control, LiveEndpoint, Shared};
use crate::{AgentError, Status};

/// How often the second session of an `ha` agent checks that it is not on the first one's
/// edge node.
const HA_PLACEMENT_CHECK: Duration = Duration::from_millis(250);

/// Checks in a row that must find both sessions on one node before the second moves (1 s).
const HA_MOVE_AFTER_CHECKS: u32 = 4;
/// How long a stopping agent keeps serving the requests in flight on its pooled endpoints
/// after leaving their pools.
const POOL_DRAIN: Duration = Duration::from_secs(1);
/// Read buffer under the session's TLS: the agent holds one session, so 256 KiB is cheap.
const SESSION_READ_BUF: usize = 256 * 1024;

/// Why one session attempt ended.
enum Ended {
    /// Retry after backoff.
    Retry(String),
    /// Give up.
    Fatal(AgentError),
    /// Stop requested locally or by the edge.
    Stopped,
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    mut control: mpsc::Receiver<Control>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let config = &shared.config;
    let status = &shared.status;
    let (host, port) = config.connect_host_port().map_err(AgentError::Config)?;
    let edge_tls = crate::tls::edge_config(&config.connect_cas).map_err(AgentError::Config)?;
    let server_name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|_| AgentError::Config(format!("connect_url host {host:?} is not a valid name")))?;
    if config.endpoints.is_empty() && config.web_addr.is_none() {
        return Err(AgentError::Config("no endpoints to start".into()));
    }
    let mut resume = Resume::default();
    let mut delay = config.reconnect_initial;
    let mut ever_online = false;
    loop {
        let attempt = session(
            &shared,
            &mut control,
            &host,
            port,
            &edge_tls,
            &server_name,
            &mut resume,
            &mut stop,
            ever_online,
        );
        let ended = attempt.await;
        if let Some(p) = &config.ha_peer {
            p.set(config.dial_rotation, None);
        }
        let error = match ended {
            (Ended::Stopped, _) => return Ok(()),
            (Ended::Fatal(e), _) => return Err(e),
            (Ended::Retry(e), was_online) => {
                if was_online {
                    ever_online = true;
                    delay = config.reconnect_initial;
                }
                e
            }
        };
        // Full jitter keeps a fleet of agents from reconnecting in lockstep after an edge restart.
        let sleep = delay.mul_f64(rand::rng().random_range(0.5..=1.0));
        // "Lost" only once there was a session to lose.
        if ever_online {
            tracing::warn!(error = %error, retry_in = ?sleep, "session lost; reconnecting");
        } else {
            tracing::warn!(error = %error, retry_in = ?sleep, "cannot connect to the edge yet; retrying");
        }
        status.send_replace(Status::Reconnecting { error, delay: sleep });
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = stopped(&mut stop) => return Ok(()),
        }
        delay = (delay * 2).min(config.reconnect_max);
    }
}

/// What a reconnect presents to take the previous session over at once: its id and the
/// cookie the edge gave it.
#[derive(Default)]
struct Resume {
    id: String,
    cookie: proto::Secret,
}

#[allow(clippy::too_many_arguments)]
async fn session(
    shared: &Arc<Shared>,
    control: &mut mpsc::Receiver<Control>,
    host: &str,
    port: u16,
    edge_tls: &Arc<rustls::ClientConfig>,
    server_name: &rustls::pki_types::ServerName<'static>,
    resume: &mut Resume,
    stop: &mut watch::Receiver<bool>,
    ever_online: bool,
) -> (Ended, bool) {
    let config = &shared.config;
    let dial = async {
        let unreachable = |e: std::io::Error| {
            format!(
                "cannot reach the edge at {host}:{port}: {e}; check that the edge is running and that connect_url is its connect address"
            )
        };
        let mut addrs: Vec<std::net::SocketAddr> =
            if config.dns_resolvers.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
                tokio::net::lookup_host((host, port)).await.map_err(unreachable)?.collect()
            } else {
                // dns_resolver_ips: the name is looked up there; the TLS name stays the host's.
                crate::dns::lookup(&config.dns_resolvers, host)
                    .await?
                    .into_iter()
                    .map(|ip| std::net::SocketAddr::new(ip, port))
                    .collect()
            };
        // An `ha` companion starts with another address than the first session, so the two
        // land on different edge nodes when the name has one address per node.
        if !addrs.is_empty() {
            let moves = config.ha_peer.as_ref().map_or(0, |p| p.moves());
            let turn = (config.dial_rotation + moves) % addrs.len();
            addrs.rotate_left(turn);
        }
        let tcp = TcpStream::connect(&addrs[..]).await.map_err(unreachable)?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(edge_tls.clone());
        // rustls asks the socket for at most one record (~16 KiB) per read; a buffer under it
        // lets one syscall carry many records when the edge sends in bulk.
        let tcp = tokio::io::BufReader::with_capacity(SESSION_READ_BUF, tcp);
        connector.connect(server_name.clone(), tcp).await.map_err(|e| tls_failure(host, port, &e))
    };
    let tls = match tokio::time::timeout(config.connect_timeout, dial).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return (Ended::Retry(e), false),
        Err(_) => return (Ended::Retry(format!("connecting to the edge at {host}:{port} timed out")), false),
    };
    let mux = warren_mux::start(tls, Role::Client, warren_mux::Config::default());
    let close = |why: &str| mux.close(ErrorCode::None, why);

    let auth = proto::Auth {
        version: proto::VERSIONS.iter().map(|v| v.to_string()).collect(),
        client_id: resume.id.clone(),
        extra: proto::AuthExtra {
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            authtoken: proto::Secret(config.authtoken.clone()),
            version: env!("CARGO_PKG_VERSION").into(),
            hostname: std::env::var("HOSTNAME").unwrap_or_default(),
            user_agent: format!("warren/{}", env!("CARGO_PKG_VERSION")),
            metadata: config.metadata.clone(),
            heartbeat_interval: config.heartbeat_interval.as_nanos() as i64,
            heartbeat_tolerance: config.heartbeat_tolerance.as_nanos() as i64,
            client_type: "warren".into(),
            stop_unsupported_error: Some(String::new()),
            restart_unsupported_error: Some(String::new()),
            update_unsupported_error: Some("warren agents are updated by their package manager".into()),
            cookie: resume.cookie.clone(),
            ..Default::default()
        },
    };
    let resp: proto::AuthResp = match rpc(&mux, StreamType::Auth, "Auth", &auth, config.connect_timeout).await
    {
        Ok(r) => r,
        Err(e) => {
            close("auth failed");
            return (Ended::Retry(format!("authentication did not complete: {e}")), false);
        }
    };
    if !resp.error.is_empty() {
        close("auth failed");
        let msg = clean(&resp.error);
        let fatal = resp.error.contains(codes::AUTHTOKEN_INVALID)
            || resp.error.contains(codes::AUTHTOKEN_MALFORMED)
            || resp.error.contains(codes::UNSUPPORTED_VERSION)
            || resp.error.contains(codes::IP_RESTRICTED);
        return if fatal { (Ended::Fatal(AgentError::Auth(msg)), false) } else { (Ended::Retry(msg), false) };
    }
    *resume = Resume { id: resp.client_id.clone(), cookie: resp.extra.cookie.clone().unwrap_or_default() };

    shared.set_session(|s| {
        s.account = resp.extra.account_name.clone().unwrap_or_default();
        s.region = resp.extra.region.clone().unwrap_or_default();
    });
    if let Some(peer) = &config.ha_peer {
        peer.set(config.dial_rotation, resp.extra.node.clone());
    }
    // Only the second session of an `ha` agent moves; the first stays where it is.
    let mover = config.ha_peer.clone().filter(|_| config.dial_rotation % 2 == 1);
    let mut placement = tokio::time::interval(HA_PLACEMENT_CHECK);
    let mut colocated_for = 0u32;
    placement.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for ep in shared.endpoints() {
        if let Err(msg) = bind(&mux, config, &ep).await {
            if config.keep_going && !ever_online && !msg.contains(codes::UNAVAILABLE) {
                tracing::error!(endpoint = %ep.name, error = %clean(&msg), "endpoint refused; the others keep running");
                shared.refuse(&ep, &clean(&msg));
                continue;
            }
            close("bind failed");
            // On the first connect a refusal is the user's to fix; after that, an endpoint
            // held by our own dying session frees up, so keep trying. An edge that could not
            // decide (its store failed) is asked again either way.
            return if ever_online || msg.contains(codes::UNAVAILABLE) {
                (Ended::Retry(msg), false)
            } else {
                (Ended::Fatal(AgentError::Bind(msg)), false)
            };
        }
    }
    if shared.endpoints().is_empty() && !config.endpoints.is_empty() {
        close("bind failed");
        let why: Vec<String> = shared.refused().into_iter().map(|(n, m)| format!("{n}: {m}")).collect();
        return (
            Ended::Fatal(AgentError::Bind(format!("every endpoint was refused; {}", why.join("; ")))),
            false,
        );
    }
    shared.publish_online(&resp.client_id);

    let heartbeats = warren_mux::typed::run_heartbeats_with(
        &mux,
        config.heartbeat_interval,
        config.heartbeat_tolerance,
        |rtt| shared.set_session(|s| s.latency = Some(rtt)),
    );
    tokio::pin!(heartbeats);
    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::channel(1);
    loop {
        tokio::select! {
            s = mux.accept() => {
                let Some(stream) = s else {
                    let why = mux.remote_goaway().map_or_else(|| "the edge closed the session".to_owned(), |(_, m)| format!("the edge closed the session: {m}"));
                    return (Ended::Retry(why), true);
                };
                let (shared, cmd_tx) = (shared.clone(), cmd_tx.clone());
                tokio::spawn(async move {
                    if let Some(cmd) = handle_stream(stream, &shared).await {
                        let _ = cmd_tx.send(cmd).await;
                    }
                });
            }
            Some(cmd) = cmd_rx.recv() => match cmd {
                Command::Stop => {
                    close("stopped by the edge");
                    return (Ended::Fatal(AgentError::StoppedByEdge), true);
                }
                Command::Restart => {
                    close("restart requested");
                    return (Ended::Retry("the edge asked for a restart".into()), true);
                }
            },
            Some(c) = control.recv() => match c {
                Control::Add(ep, reply) => {
                    let r = bind(&mux, config, &ep).await;
                    if r.is_ok() {
                        shared.add(ep);
                        shared.publish_online(&resp.client_id);
                    }
                    let _ = reply.send(r);
                }
                Control::Remove(ep, reply) => {
                    let r = unbind(&mux, config, &ep).await;
                    shared.remove(&ep.id);
                    shared.publish_online(&resp.client_id);
                    let _ = reply.send(r);
                }
            },
            e = &mut heartbeats => {
                close("heartbeat timeout");
                return (Ended::Retry(format!("heartbeat failed: {e}")), true);
            }
            _ = placement.tick(), if mover.is_some() => {
                // Both sessions on one node: losing it would lose both. The first session
                // serves while this one connects again, to the next address or through the
                // balancer to another node. Only once they have been together for a while:
                // every node must first see the first session's endpoints where they are now.
                colocated_for = if mover.as_ref().is_some_and(|p| p.colocated()) { colocated_for + 1 } else { 0 };
                if colocated_for < HA_MOVE_AFTER_CHECKS {
                    continue;
                }
                if let Some(p) = &mover {
                    p.moved();
                    p.set(config.dial_rotation, None);
                }
                leave_pools(&shared, &mux, config).await;
                close("moving to another edge node");
                return (Ended::Retry("this agent's two sessions were on one edge node; moving".into()), true);
            }
            _ = stopped(stop) => {
                leave_pools(&shared, &mux, config).await;
                close("agent stopping");
                let _ = tokio::time::timeout(Duration::from_secs(2), mux.closed()).await;
                return (Ended::Stopped, true);
            }
        }
    }
}

/// Pooled endpoints leave their pools before the session closes: the edge sends new visitors
/// to the other members while the requests already here finish ([`POOL_DRAIN`]).
async fn leave_pools(shared: &Arc<Shared>, mux: &Mux, config: &AgentConfig) {
    let pooled: Vec<_> = shared.endpoints().into_iter().filter(|e| e.config.pooling).collect();
    if pooled.is_empty() {
        return;
    }
    for ep in &pooled {
        let _ = unbind(mux, config, ep).await;
    }
    // Requests the edge sent before the Unbind reached it still open streams: keep taking
    // them until the drain ends.
    let drain = tokio::time::sleep(POOL_DRAIN);
    tokio::pin!(drain);
    loop {
        tokio::select! {
            _ = &mut drain => return,
            s = mux.accept() => {
                let Some(stream) = s else { return };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _ = handle_stream(stream, &shared).await;
                });
            }
        }
    }
}

/// Binds one endpoint on the session and records its URL.
async fn bind(mux: &Mux, config: &AgentConfig, live: &LiveEndpoint) -> Result<(), String> {
    let ep = &live.config;
    if ep.upstream_http2 && (!ep.proto.is_http() || ep.host_header.is_some()) {
        return Err(
            "upstream http2 is for http and https endpoints, and cannot rewrite the Host header (host_header)".into(),
        );
    }
    // ngrok's agents send the document as a JSON string.
    let traffic_policy = ep.traffic_policy.as_ref().map(|p| match p {
        serde_json::Value::String(s) => serde_json::Value::String(s.clone()),
        other => serde_json::Value::String(other.to_string()),
    });
    let opts = match ep.proto {
        EndpointProto::Tcp => options(&proto::TcpOpts {
            addr: ep.url.strip_prefix("tcp://").unwrap_or(&ep.url).to_owned(),
            traffic_policy,
            ..Default::default()
        }),
        EndpointProto::Tls => options(&proto::TlsOpts {
            url: ep.url.clone(),
            hostname: host_of(&ep.url),
            subdomain: ep.subdomain.clone(),
            traffic_policy,
            ..Default::default()
        }),
        _ => options(&proto::HttpOpts {
            url: ep.url.clone(),
            domain: host_of(&ep.url),
            subdomain: ep.subdomain.clone(),
            traffic_policy,
            ..Default::default()
        }),
    };
    let bind = proto::Bind {
        client_id: live.id.clone(),
        proto: ep.proto.as_str().into(),
        forwards_to: ep.upstream.to_string(),
        forwards_proto: if ep.upstream_http2 { "http2".into() } else { String::new() },
        opts,
        extra: proto::BindExtra {
            name: live.name.clone(),
            metadata: ep.metadata.clone(),
            description: ep.description.clone(),
            pooling_enabled: ep.pooling,
            ..Default::default()
        },
    };
    let resp: proto::BindResp = rpc(mux, StreamType::Bind, "Bind", &bind, config.connect_timeout)
        .await
        .map_err(|e| format!("bind did not complete: {e}"))?;
    if !resp.error.is_empty() {
        return Err(clean(&resp.error));
    }
    tracing::info!(name = %live.name, url = %resp.url, upstream = %ep.upstream, "endpoint online");
    live.set_url(&resp.url);
    Ok(())
}

/// Releases one endpoint on the session.
async fn unbind(mux: &Mux, config: &AgentConfig, live: &LiveEndpoint) -> Result<(), String> {
    let req = proto::Unbind { client_id: live.id.clone() };
    let resp: proto::UnbindResp = rpc(mux, StreamType::Unbind, "Unbind", &req, config.connect_timeout)
        .await
        .map_err(|e| format!("unbind did not complete: {e}"))?;
    if !resp.error.is_empty() {
        return Err(clean(&resp.error));
    }
    tracing::info!(name = %live.name, url = %live.url(), "endpoint stopped");
    Ok(())
}

enum Command {
    Stop,
    Restart,
}

/// Handles one stream the edge opened (in its own task); commands are answered and returned.
async fn handle_stream(mut stream: Stream, shared: &Arc<Shared>) -> Option<Command> {
    let mut ty = [0u8; 4];
    if tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut ty))
        .await
        .map_or(true, |r| r.is_err())
    {
        return None;
    }
    match StreamType::from_u32(u32::from_be_bytes(ty)) {
        StreamType::Proxy => {
            match read_proxy_header(&mut stream).await {
                Ok(header) => match shared.endpoint_by_id(&header.id) {
                    Some(ep) => forward::forward(stream, &header, &ep, shared).await,
                    None => stream.reset(ErrorCode::StreamRefused),
                },
                Err(e) => {
                    tracing::debug!(error = %e, "invalid proxy header");
                    stream.reset(ErrorCode::Protocol);
                }
            }
            None
        }
        StreamType::Heartbeat => {
            warren_mux::typed::answer_heartbeats(stream).await;
            None
        }
        StreamType::Stop => {
            let _ = drain_and_reply(&mut stream, &proto::CommandResp::default()).await;
            Some(Command::Stop)
        }
        StreamType::Restart => {
            let _ = drain_and_reply(&mut stream, &proto::CommandResp::default()).await;
            Some(Command::Restart)
        }
        StreamType::Update => {
            let r = proto::CommandResp {
                error: Some("warren agents are updated by their package manager".into()),
            };
            let _ = drain_and_reply(&mut stream, &r).await;
            None
        }
        StreamType::StopTunnel => {
            if let Ok(st) = read_message::<proto::StopTunnel>(&mut stream, "StopTunnel").await {
                tracing::warn!(endpoint = %st.client_id, message = %st.message, "the edge stopped an endpoint");
            }
            None
        }
        other => {
            tracing::debug!(?other, "unexpected stream type from the edge");
            stream.reset(ErrorCode::Protocol);
            None
        }
    }
}

async fn read_proxy_header(stream: &mut Stream) -> Result<proto::ProxyHeader, String> {
    let mut len = [0u8; 8];
    stream.read_exact(&mut len).await.map_err(|e| e.to_string())?;
    let n = proto::ProxyHeader::decode_len(len).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    proto::decode("ProxyHeader", &buf).map_err(|e| e.to_string())
}

/// Reads one JSON message from the edge, which may or may not half-close after it.
async fn read_message<T: serde::de::DeserializeOwned>(
    stream: &mut Stream,
    what: &'static str,
) -> Result<T, String> {
    warren_mux::rpc::read_message(stream, what, proto::MAX_RPC_LEN).await.map_err(|e| e.to_string())
}

async fn drain_and_reply<T: serde::Serialize>(stream: &mut Stream, msg: &T) -> std::io::Result<()> {
    // The request body (Stop, Restart, Update) carries nothing the agent needs.
    let _ = read_message::<serde_json::Value>(stream, "command").await;
    warren_mux::rpc::reply(stream, msg).await
}

/// One RPC with the edge, within `timeout`.
async fn rpc<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    mux: &Mux,
    ty: StreamType,
    what: &'static str,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, String> {
    warren_mux::rpc::call(mux, ty.to_u32(), what, req, proto::MAX_RPC_LEN, timeout).await.map_err(|e| match e
    {
        warren_mux::rpc::RpcError::Timeout(_) => "the edge did not answer in time".to_owned(),
        e => e.to_string(),
    })
}

/// An endpoint's options as the Bind carries them.
fn options<T: serde::Serialize>(opts: &T) -> serde_json::Value {
    serde_json::to_value(opts).expect("endpoint options serialize")
}

/// Why TLS with the edge failed, and what to change.
fn tls_failure(host: &str, port: u16, e: &std::io::Error) -> String {
    let text = e.to_string();
    if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        format!(
            "the edge's certificate at {host}:{port} is not trusted ({text}); set connect_cas (--connect-cas) to the edge's CA file, which the edge prints when it starts, or `host` to use this machine's trust store"
        )
    } else if text.contains("NotValidForName") {
        format!(
            "the edge's certificate does not cover {host:?} ({text}); use a connect_url host name the edge serves (its base domain or a --connect-hostname)"
        )
    } else if text.contains("Expired") {
        format!("the edge's certificate has expired ({text}); the edge's administrator must renew it")
    } else {
        format!("TLS with the edge at {host}:{port} failed: {text}")
    }
}

/// The error text without the code line, plus the code in brackets.
fn clean(e: &str) -> String {
    let is_code = |l: &str| l.starts_with("ERR_NGROK_") || l.starts_with("ERR_WARREN_");
    let code = e.lines().map(str::trim).find(|l| is_code(l));
    let msg: Vec<&str> = e.lines().map(str::trim).filter(|l| !l.is_empty() && !is_code(l)).collect();
    match code {
        Some(c) => format!("{} [{c}]", msg.join(" ")),
        None => msg.join(" "),
    }
}

fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', ':']).next().unwrap_or("").to_owned()
}

/// Resolves once a stop was requested (the watch guard is not held across awaits).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
