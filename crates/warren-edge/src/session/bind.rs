//! Bind and Unbind: the decision for each scheme (the name or port asked for, the
//! authtoken's rules, reservations, options and policies), the endpoint recorded in the store,
//! where its URL is unique across every edge node.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::Rng;
use tokio::net::TcpListener;
use warren_mux::Stream;
use warren_proto::{self as proto, error_codes as codes};

use super::rpc::{read_request, reply};
use crate::Shared;
use crate::registry::{AgentSession, BindRefused, Endpoint, EndpointKey, Proto};

/// Why a Bind was refused. [`BindError::code`] is the one place each maps to an ngrok code;
/// the message is what the agent shows.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BindError {
    /// The request or one of its options is wrong or not supported; the message names it and
    /// says what to do instead.
    #[error("{0}")]
    Invalid(String),
    /// The authtoken (or the ceiling an admin set for its owner) does not allow the name.
    #[error("{0}")]
    NotAllowed(String),
    /// Another session holds the URL.
    #[error("the endpoint {0} is already online in another session")]
    InUse(String),
    /// Another account reserved the name or address.
    #[error("{0}")]
    ReservedElsewhere(String),
    /// Not a name this edge serves, or a custom domain whose control is not proven yet.
    #[error("{0}")]
    DomainNotServed(String),
    /// The tcp address is outside the range, taken outside warren, or none is free.
    #[error("{0}")]
    AddrUnavailable(String),
    /// The session's own state refuses it: a duplicate Id, its endpoint limit, closing.
    #[error("{0}")]
    Session(&'static str),
    /// A part of the edge failed (its store); the agent should try again.
    #[error("the edge could not {0}; try again")]
    Unavailable(&'static str),
}

impl BindError {
    /// The ngrok error code the agent sees.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            BindError::Invalid(_) | BindError::NotAllowed(_) | BindError::Session(_) => codes::BIND_INVALID,
            BindError::InUse(_) => codes::ENDPOINT_IN_USE,
            BindError::ReservedElsewhere(_) => codes::RESERVED_ELSEWHERE,
            BindError::DomainNotServed(_) => codes::DOMAIN_NOT_SERVED,
            BindError::AddrUnavailable(_) => codes::TCP_ADDR_UNAVAILABLE,
            BindError::Unavailable(_) => codes::UNAVAILABLE,
        }
    }

    /// The `Error` field of the reply.
    pub(crate) fn text(&self) -> String {
        proto::error_text(&self.to_string(), self.code())
    }

    /// The registry's refusal of `url`.
    pub(crate) fn refused(r: BindRefused, url: &str) -> BindError {
        match r {
            BindRefused::InUse => BindError::InUse(url.to_owned()),
            BindRefused::DuplicateId => {
                BindError::Session("this session already has an endpoint with that Id")
            }
            BindRefused::TooMany => BindError::Session("this session has reached its endpoint limit"),
            BindRefused::SessionGone => BindError::Session("the session is closing"),
        }
    }
}

/// Random tcp ports tried before giving up (the range may be nearly full).
const RANDOM_TRIES: usize = 64;

pub(super) async fn handle_bind(shared: &Arc<Shared>, session: &Arc<AgentSession>, mut stream: Stream) {
    // Read as JSON first: the options are decoded per endpoint kind, and every key of the
    // message that matches no field is refused when set (bind_options.rs).
    let raw = match read_request::<serde_json::Value>(shared, &mut stream, "Bind").await {
        Ok(raw) => raw,
        Err(e) => {
            let error = BindError::Invalid(e).text();
            let _ = reply(&mut stream, &proto::BindResp { error, ..Default::default() }).await;
            return;
        }
    };
    let resp = match decide(shared, session, raw).await {
        Ok(bound) => proto::BindResp {
            client_id: bound.bind.client_id,
            url: bound.url,
            proto: bound.bind.proto,
            opts: bound.bind.opts,
            ..Default::default()
        },
        Err((client_id, e)) => {
            tracing::info!(session = %session.id, error = %e, "bind refused");
            proto::BindResp { client_id, error: e.text(), ..Default::default() }
        }
    };
    let _ = reply(&mut stream, &resp).await;
}

/// What a successful Bind decided.
#[derive(Debug)]
pub(super) struct Bound {
    /// The request, with the Id the edge chose when the client left it empty.
    pub(super) bind: proto::Bind,
    /// The public URL.
    pub(super) url: String,
}

/// Decides a Bind from the message as it arrived and binds the endpoint. The error comes with
/// the endpoint Id to echo.
pub(super) async fn decide(
    shared: &Arc<Shared>,
    session: &Arc<AgentSession>,
    raw: serde_json::Value,
) -> Result<Bound, (String, BindError)> {
    let (mut bind, unknown) = proto::fold::from_value::<proto::Bind>(raw.clone())
        .map_err(|e| (String::new(), BindError::Invalid(format!("invalid Bind message: {e}"))))?;
    // `Opts` is decoded per endpoint kind.
    let unknown: Vec<String> = unknown.into_iter().filter(|p| !p.eq_ignore_ascii_case("Opts")).collect();
    // ngrok SDKs leave the Id empty and use the one the edge answers with for proxy streams.
    if bind.client_id.is_empty() {
        bind.client_id = warren_store::generate_id("ep");
    }
    match bind_endpoint(shared, session, &bind, &raw, &unknown).await {
        Ok(url) => Ok(Bound { bind, url }),
        Err(e) => Err((bind.client_id, e)),
    }
}

async fn bind_endpoint(
    shared: &Arc<Shared>,
    session: &Arc<AgentSession>,
    bind: &proto::Bind,
    raw: &serde_json::Value,
    unknown: &[String],
) -> Result<String, BindError> {
    if bind.client_id.len() > 256 {
        return Err(BindError::Invalid("the bind request's Id is longer than 256 characters".into()));
    }
    match bind.proto.as_str() {
        "http" | "https" => bind_http(shared, session, bind, raw, unknown).await,
        "tcp" => bind_tcp(shared, session, bind, raw, unknown).await,
        "tls" => bind_tls(shared, session, bind, raw, unknown).await,
        other => Err(BindError::Invalid(format!(
            "unknown endpoint protocol {other:?}; use http, https, tcp or tls"
        ))),
    }
}

async fn bind_http(
    shared: &Arc<Shared>,
    session: &Arc<AgentSession>,
    bind: &proto::Bind,
    raw: &serde_json::Value,
    unknown: &[String],
) -> Result<String, BindError> {
    let proto = if bind.proto == "http" { Proto::Http } else { Proto::Https };
    let opts: proto::HttpOpts =
        crate::bind_options::decode_opts(raw, &bind.proto).map_err(BindError::Invalid)?;
    let extras = crate::bind_options::http(bind, &opts, raw, unknown).map_err(BindError::Invalid)?;
    let (mut host, random) =
        named_host(shared, session, proto, [&opts.url, &opts.domain, &opts.hostname], &opts.subdomain, bind)
            .await?;
    let internal = crate::registry::is_internal(&host);
    if internal && bind.extra.bindings.iter().any(|b| b == "public") {
        return Err(BindError::Invalid(format!(
            "{host} is an internal name; its binding is internal (leave bindings out)"
        )));
    }
    let url_of = |host: &str| match (proto, shared.listeners.https_port, shared.listeners.http_port) {
        _ if internal => Ok(format!("{}://{host}", proto.as_str())),
        (Proto::Https, 443, _) => Ok(format!("https://{host}")),
        (Proto::Https, p, _) => Ok(format!("https://{host}:{p}")),
        (_, _, Some(80)) => Ok(format!("http://{host}")),
        (_, _, Some(p)) => Ok(format!("http://{host}:{p}")),
        (_, _, None) => {
            Err(BindError::Invalid("this edge has no plain http listener; use an https:// URL".into()))
        }
    };
    url_of(&host)?;
    let mut tries = 0;
    let policy = crate::policy::compile_for_bind(
        shared,
        &session.account_id,
        proto.as_str(),
        extras.policy.as_ref(),
        opts.traffic_policy.as_ref(),
    )
    .await?;
    let tls = match crate::endpoint_tls::EdgeTls::for_bind(&opts, policy.account.as_ref())
        .map_err(BindError::Invalid)?
    {
        None => None,
        Some(_) if proto == Proto::Http => {
            return Err(BindError::Invalid(
                "TLS settings need an https endpoint; this one is plain http".into(),
            ));
        }
        Some(_) if internal => {
            return Err(BindError::Invalid(format!(
                "{host} is internal: no visitor's TLS reaches it, so it has no TLS settings of its own"
            )));
        }
        Some(t) => Some(
            t.server_config(crate::tls::provider(), shared.listeners.certs.clone())
                .map_err(BindError::Invalid)?,
        ),
    };
    loop {
        let url = url_of(&host)?;
        let key = match internal {
            true => EndpointKey::Host(proto, crate::registry::internal_host(&host, &session.account_id)),
            false => EndpointKey::Host(proto, host.clone()),
        };
        let ep = endpoint(session, bind, proto, &url, key.clone(), tls.clone(), policy.clone(), 0);
        match register(shared, ep).await {
            Ok(_) => return Ok(url),
            // A kept random name another session on this node took first (two agents of the
            // token starting at once): a new random name, as `kept_random_host` gives when
            // it finds the name taken. Held on another node, it may be this agent's own
            // dying session there: InUse, and the agent retries until that one lapses.
            Err(BindError::InUse(_)) if random && tries < 3 && shared.sessions.registry.is_taken(&key) => {
                tries += 1;
                host = random_host(shared, proto).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn bind_tls(
    shared: &Arc<Shared>,
    session: &Arc<AgentSession>,
    bind: &proto::Bind,
    raw: &serde_json::Value,
    unknown: &[String],
) -> Result<String, BindError> {
    let opts: proto::TlsOpts = crate::bind_options::decode_opts(raw, "tls").map_err(BindError::Invalid)?;
    let extras = crate::bind_options::tls(bind, &opts, raw, unknown).map_err(BindError::Invalid)?;
    if opts.tls_termination.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(BindError::Invalid(
            "TLS termination at the edge with the agent's key is not supported: the edge never holds \
             your key. Terminate at the agent (warren tls --crt/--key) or in the upstream"
                .into(),
        ));
    }
    let (mut host, random) = named_host(
        shared,
        session,
        Proto::Tls,
        [&opts.url, &opts.domain, &opts.hostname],
        &opts.subdomain,
        bind,
    )
    .await?;
    let internal = crate::registry::is_internal(&host);
    let mut tries = 0;
    let url_of = |host: &str| match shared.listeners.https_port {
        _ if internal => format!("tls://{host}"),
        443 => format!("tls://{host}"),
        p => format!("tls://{host}:{p}"),
    };
    let policy = crate::policy::compile_for_bind(
        shared,
        &session.account_id,
        "tls",
        extras.policy.as_ref(),
        opts.traffic_policy.as_ref(),
    )
    .await?;
    loop {
        let url = url_of(&host);
        let key = match internal {
            // Reached only through forward-internal: the SNI of no visitor names it.
            true => EndpointKey::Host(Proto::Tls, crate::registry::internal_host(&host, &session.account_id)),
            false => EndpointKey::Host(Proto::Tls, host.clone()),
        };
        let ep =
            endpoint(session, bind, Proto::Tls, &url, key.clone(), None, policy.clone(), extras.proxy_proto);
        match register(shared, ep).await {
            Ok(_) => return Ok(url),
            // As for http: a kept random name another session on this node took first.
            Err(BindError::InUse(_)) if random && tries < 3 && shared.sessions.registry.is_taken(&key) => {
                tries += 1;
                host = random_host(shared, Proto::Tls).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A tcp endpoint on the port asked for, or a random free one of the range; its listener
/// runs in `ingress_tcp`.
async fn bind_tcp(
    shared: &Arc<Shared>,
    session: &Arc<AgentSession>,
    bind: &proto::Bind,
    raw: &serde_json::Value,
    unknown: &[String],
) -> Result<String, BindError> {
    let opts: proto::TcpOpts = crate::bind_options::decode_opts(raw, "tcp").map_err(BindError::Invalid)?;
    let extras = crate::bind_options::tcp(bind, &opts, raw, unknown).map_err(BindError::Invalid)?;
    let addr =
        if opts.addr.is_empty() { opts.url.strip_prefix("tcp://").unwrap_or(&opts.url) } else { &opts.addr };
    if let Some((name, port)) = addr.rsplit_once(':').filter(|(n, _)| crate::registry::is_internal(n)) {
        // `tcp://NAME.internal:PORT`: no listener; reached only through forward-internal in
        // on_tcp_connect of an endpoint of the same account.
        let name = name.to_ascii_lowercase();
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| {
            BindError::Invalid(format!("invalid internal tcp address {addr:?}; expected NAME.internal:PORT"))
        })?;
        if !crate::config::is_valid_hostname(&name) {
            return Err(BindError::Invalid(format!("{name:?} is not a valid host name")));
        }
        if bind.extra.bindings.iter().any(|b| b == "public") {
            return Err(BindError::Invalid(format!("{name} is an internal name; its binding is internal")));
        }
        if !session.may_bind(&name) {
            return Err(not_allowed(session, &name));
        }
        let policy = crate::policy::compile_for_bind(
            shared,
            &session.account_id,
            "tcp",
            extras.policy.as_ref(),
            opts.traffic_policy.as_ref(),
        )
        .await?;
        let hostport = format!("{name}:{port}");
        let url = format!("tcp://{hostport}");
        let key =
            EndpointKey::Host(Proto::Tcp, crate::registry::internal_host(&hostport, &session.account_id));
        register(shared, endpoint(session, bind, Proto::Tcp, &url, key, None, policy, extras.proxy_proto))
            .await?;
        return Ok(url);
    }
    if addr.contains(".internal") || bind.extra.bindings.iter().any(|b| b == "internal") {
        return Err(BindError::Invalid(format!(
            "an internal tcp endpoint is tcp://NAME.internal:PORT, not {addr:?}"
        )));
    }
    let wanted = requested_port(&opts).map_err(BindError::Invalid)?;
    let tcp_host = &shared.config.tcp_host;
    match wanted {
        Some(p) if !session.may_bind(&format!("{tcp_host}:{p}")) => {
            return Err(not_allowed(session, &format!("{tcp_host}:{p}")));
        }
        None if !session.may_bind_any() => return Err(not_allowed(session, "a random tcp address")),
        _ => {}
    }
    let policy = crate::policy::compile_for_bind(
        shared,
        &session.account_id,
        "tcp",
        extras.policy.as_ref(),
        opts.traffic_policy.as_ref(),
    )
    .await?;
    // A pooled bind of a port this node already serves joins that port's pool (the store
    // and the registry check it is a pool of this account); its listener is the pool's.
    let joining = wanted
        .filter(|p| bind.extra.pooling_enabled && shared.sessions.registry.is_taken(&EndpointKey::Port(*p)));
    let (listener, port) = match joining {
        Some(p) => (None, p),
        None => {
            let l = tcp_listener(shared, session, wanted).await?;
            let port = l.local_addr().map_err(|e| BindError::AddrUnavailable(e.to_string()))?.port();
            (Some(l), port)
        }
    };
    let url = format!("tcp://{tcp_host}:{port}");
    let key = EndpointKey::Port(port);
    let ep = endpoint(session, bind, Proto::Tcp, &url, key.clone(), None, policy, extras.proxy_proto);
    register(shared, ep).await?;
    if let Some(listener) = listener {
        let task = crate::ingress_tcp::serve(shared.clone(), listener, port);
        shared.sessions.registry.add_listener(&key, task);
    }
    Ok(url)
}

/// The listener of a tcp endpoint: the port asked for (within the range, not reserved by
/// another account, free), or a random free one that nobody reserved.
async fn tcp_listener(
    shared: &Shared,
    session: &AgentSession,
    wanted: Option<u16>,
) -> Result<TcpListener, BindError> {
    let range = shared.config.tcp_ports.clone();
    let store_failed = |e: warren_store::StoreError| {
        shared.metrics.store_errors.inc();
        tracing::error!(error = %e, "store failed while checking reserved addresses");
        BindError::Unavailable("check reserved addresses")
    };
    let bind_ip = shared.config.tcp_bind_ip;
    match wanted {
        Some(p) if !range.contains(&p) => Err(BindError::AddrUnavailable(format!(
            "port {p} is outside this edge's tcp range {}-{}",
            range.start(),
            range.end()
        ))),
        Some(p) => {
            let addr = format!("tcp://{}:{p}", shared.config.tcp_host);
            match shared.store.port_reservation(p).await.map_err(store_failed)? {
                Some(r) if r.account_id != session.account_id => {
                    return Err(BindError::ReservedElsewhere(format!(
                        "{addr} is reserved by another account"
                    )));
                }
                _ => {}
            }
            if shared.sessions.registry.is_taken(&EndpointKey::Port(p)) {
                return Err(BindError::InUse(addr));
            }
            crate::conn_limit::listen(SocketAddr::new(bind_ip, p))
                .map_err(|e| BindError::AddrUnavailable(format!("port {p} is not available: {e}")))
        }
        None => {
            for _ in 0..RANDOM_TRIES {
                let p = rand::rng().random_range(range.clone());
                if shared.sessions.registry.is_taken(&EndpointKey::Port(p)) {
                    continue;
                }
                // Reserved ports are only ever bound by name, by their owner.
                if shared.store.port_reservation(p).await.map_err(store_failed)?.is_some() {
                    continue;
                }
                if let Ok(l) = crate::conn_limit::listen(SocketAddr::new(bind_ip, p)) {
                    return Ok(l);
                }
            }
            Err(BindError::AddrUnavailable("no free port left in this edge's tcp range".into()))
        }
    }
}

/// The host a named bind gets: the one asked for (any of `names`, or `subdomain` under the
/// base domain) or a random one, allowed by the token, not another account's, and (for a
/// custom domain) reserved and proven; and whether it was chosen at random.
async fn named_host(
    shared: &Shared,
    session: &AgentSession,
    proto: Proto,
    names: [&str; 3],
    subdomain: &str,
    bind: &proto::Bind,
) -> Result<(String, bool), BindError> {
    let [url, domain, hostname] = names;
    let (host, random) = match requested_host(shared, url, domain, hostname, subdomain)? {
        Some(h) => (h, false),
        None if session.may_bind_any() => (kept_random_host(shared, session, proto, bind).await?, true),
        None => return Err(not_allowed(session, "a random name")),
    };
    if !session.may_bind(&host) {
        return Err(not_allowed(session, &host));
    }
    if crate::registry::is_internal(&host) {
        // Internal: the account's own name, reached only through forward-internal.
        return match proto {
            Proto::Http | Proto::Https | Proto::Tls => Ok((host, random)),
            Proto::Tcp => Err(BindError::Invalid(format!(
                "{host}: an internal tcp endpoint is tcp://NAME.internal:PORT"
            ))),
        };
    }
    if bind.extra.bindings.iter().any(|b| b == "internal") {
        return Err(BindError::Invalid(format!(
            "binding internal needs a URL ending in .internal (like https://api.internal), not {host}"
        )));
    }
    check_domain_reservation(shared, &session.account_id, &host).await?;
    let wildcard = crate::registry::is_wildcard(&host);
    if wildcard {
        // Every name below it is the account's: only a wildcard reservation of its own says
        // so (other accounts can then reserve or bind none of them).
        let reserved = shared.store.domain_reservation(&host).await.map_err(|e| {
            shared.metrics.store_errors.inc();
            tracing::error!(error = %e, "store failed while checking domain reservations");
            BindError::Unavailable("check domain reservations")
        })?;
        if !reserved
            .as_ref()
            .is_some_and(|r| r.account_id == session.account_id && r.domain.starts_with("*."))
        {
            return Err(BindError::DomainNotServed(format!(
                "{host} is a wildcard endpoint: reserve {host} first (warren api reserved-domains create --domain '{host}')"
            )));
        }
    }
    // The edge terminates https: a name its certificates do not cover would only ever give
    // visitors a certificate error. (tls endpoints bring their own certificate; a wildcard
    // reservation gets its certificate through DNS-01 when the edge has it.)
    let base = &shared.config.base_domain;
    let dns01 = shared.config.acme.as_ref().is_some_and(|a| a.dns01.is_some());
    if proto == Proto::Https
        && under_domain(&host, base)
        && !shared.listeners.certs.covers(&host)
        && !(wildcard && dns01)
    {
        let sub = &host[..host.len() - base.len() - 1];
        return Err(BindError::DomainNotServed(format!(
            "{host} is not covered by this edge's certificate, whose *.{base} covers one level below {base}: \
             use {}.{base}, or upload a certificate for {host} and reserve the name with it",
            sub.replace('.', "-")
        )));
    }
    Ok((host, random))
}

/// A decided endpoint, before it is registered.
#[allow(clippy::too_many_arguments)]
fn endpoint(
    session: &Arc<AgentSession>,
    bind: &proto::Bind,
    proto: Proto,
    url: &str,
    key: EndpointKey,
    tls: Option<Arc<rustls::ServerConfig>>,
    policy: crate::policy::ForBind,
    proxy_proto: u8,
) -> Endpoint {
    let id = warren_store::generate_id("ep");
    Endpoint {
        info: crate::policy::endpoint_info(&id, url, proto.as_str()),
        event_text: crate::events::EndpointText::new(&id, url, &session.id),
        id,
        session: session.clone(),
        client_id: bind.client_id.clone(),
        proto,
        url: url.to_owned(),
        key,
        tls,
        policy: policy.chain,
        ip_policies: policy.ip_policies,
        proxy_proto,
        metrics: crate::metrics::EndpointMetrics::default(),
        details: warren_store::EndpointDetails {
            name: bind.extra.name.clone(),
            metadata: bind.extra.metadata.clone(),
            description: bind.extra.description.clone(),
            upstream_url: bind.forwards_to.clone(),
        },
        pooled: bind.extra.pooling_enabled,
        upstream_h2: bind.forwards_proto == "http2",
    }
}

/// Puts a decided endpoint in the node's registry and the store.
async fn register(shared: &Shared, mut ep: Endpoint) -> Result<Arc<Endpoint>, BindError> {
    let url = ep.url.clone();
    ep.metrics = shared.metrics.endpoint(&url);
    let ep = shared
        .sessions
        .registry
        .bind(ep, shared.config.limits.max_endpoints_per_session)
        .map_err(|r| BindError::refused(r, &url))?;
    record_endpoint(shared, &ep).await?;
    tracing::info!(session = %ep.session.id, %url, "endpoint bound");
    Ok(ep)
}

/// Records a newly bound endpoint in the store, where its URL is unique across every edge
/// node. If another node holds the URL, or the store fails, the bind is undone.
async fn record_endpoint(shared: &Shared, ep: &Endpoint) -> Result<(), BindError> {
    let row = warren_store::LiveEndpoint {
        id: ep.id.clone(),
        account_id: ep.session.account_id.clone(),
        session_id: ep.session.id.clone(),
        client_id: ep.client_id.clone(),
        proto: ep.proto.as_str().into(),
        url: ep.url.clone(),
        route_key: match &ep.key {
            EndpointKey::Host(proto, host) => format!("{}://{host}", proto.as_str()),
            EndpointKey::Port(_) => ep.url.clone(),
        },
        host: match &ep.key {
            EndpointKey::Host(_, host) => host.clone(),
            EndpointKey::Port(_) => String::new(),
        },
        created_at: warren_store::now_rfc3339(),
        details: ep.details.clone(),
        pooled: ep.pooled,
    };
    let mut result = shared.store.insert_endpoint(&row).await;
    if matches!(result, Err(warren_store::StoreError::Conflict(_)))
        && holder_is_stale(shared, &row.route_key).await
    {
        result = shared.store.insert_endpoint(&row).await;
    }
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            shared.sessions.registry.unbind(&ep.session.id, &ep.client_id);
            match e {
                warren_store::StoreError::Conflict(_) => Err(BindError::InUse(ep.url.clone())),
                e => {
                    shared.metrics.store_errors.inc();
                    tracing::error!(error = %e, "store failed while recording an endpoint");
                    Err(BindError::Unavailable("record the endpoint"))
                }
            }
        }
    }
}

/// Whether the row holding `route_key` belongs to a session of this node that has already
/// ended (its rows are being removed as the new bind arrives). If so the rows are removed now
/// and the bind may retry; a live holder, or one on another node, is a real conflict.
async fn holder_is_stale(shared: &Shared, route_key: &str) -> bool {
    let Ok(Some(holder)) = shared.store.endpoint_holder(route_key).await else { return false };
    if shared.sessions.registry.session(&holder).is_some() {
        return false;
    }
    match shared.store.tunnel_session_node(&holder).await {
        Ok(Some(node)) if node == shared.node_id => shared.store.delete_tunnel_session(&holder).await.is_ok(),
        _ => false,
    }
}

/// The authtoken's ACL does not cover `what`.
fn not_allowed(session: &AgentSession, what: &str) -> BindError {
    let cred = &session.credential;
    BindError::NotAllowed(match &session.owner_acl {
        Some(ceiling) if cred.acl.is_empty() || warren_store::acl_allows(&cred.acl, what) => format!(
            "the authtoken {} may not bind {what}: its owner's authtokens may bind only: {} (an administrator sets this)",
            cred.id,
            ceiling.join(", ")
        ),
        _ => format!(
            "the authtoken {} may not bind {what}; its ACL allows only: {}",
            cred.id,
            cred.acl.join(", ")
        ),
    })
}

/// The host an http(s) or tls bind asks for, checked against the domains the edge serves.
pub(super) fn requested_host(
    shared: &Shared,
    url: &str,
    domain: &str,
    hostname: &str,
    subdomain: &str,
) -> Result<Option<String>, BindError> {
    let base = &shared.config.base_domain;
    let from_url = url.split_once("://").map_or(url, |(_, rest)| rest).split(['/', ':']).next().unwrap_or("");
    let host = [from_url, domain, hostname].into_iter().find(|s| !s.is_empty()).map(str::to_ascii_lowercase);
    let host = match (host, subdomain.is_empty()) {
        (Some(h), _) => h,
        (None, false) => format!("{}.{base}", subdomain.to_ascii_lowercase()),
        (None, true) => return Ok(None),
    };
    let host = host.trim_end_matches('.').to_owned();
    // A wildcard name (`*.example.com`) serves every name below it that no endpoint has
    // exactly; `*` only as the whole leftmost label, never straight under a TLD.
    let named = host.strip_prefix("*.").unwrap_or(&host);
    if !crate::config::is_valid_hostname(named) || (named.len() < host.len() && !named.contains('.')) {
        return Err(BindError::Invalid(format!(
            "{host:?} is not a valid host name (a wildcard is `*.` before a domain, like *.example.com)"
        )));
    }
    if shared.config.connect_hostnames.contains(&host) {
        return Err(BindError::Invalid(format!(
            "{host} is this edge's connect hostname and cannot be an endpoint"
        )));
    }
    Ok(Some(host))
}

/// Whether `host` is a name strictly under `domain`.
pub(crate) fn under_domain(host: &str, domain: &str) -> bool {
    host.len() > domain.len() + 1
        && host.ends_with(domain)
        && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
}

/// A name reserved by another account is refused; a name outside the base domain (a custom
/// domain) must be reserved by the session's own account first, and its control proven.
pub(crate) async fn check_domain_reservation(
    shared: &Shared,
    account_id: &str,
    host: &str,
) -> Result<(), BindError> {
    let base = &shared.config.base_domain;
    let reservation = shared.store.domain_reservation(host).await.map_err(|e| {
        shared.metrics.store_errors.inc();
        tracing::error!(error = %e, "store failed while checking domain reservations");
        BindError::Unavailable("check domain reservations")
    })?;
    match reservation {
        Some(r) if r.account_id != account_id => Err(BindError::ReservedElsewhere(format!(
            "{host} is reserved by another account (reservation {})",
            r.domain
        ))),
        // The DNS record may have been created since: look once more now.
        Some(r) if r.verified_at.is_none() => {
            verify_domain(shared, &shared.store, r).await.map(|_| ()).map_err(BindError::DomainNotServed)
        }
        Some(_) => Ok(()),
        None if under_domain(host, base) => Ok(()),
        None => Err(BindError::DomainNotServed(format!(
            "{host} is not a domain this edge serves; use a name under {base} (for example myapp.{base}), \
             or reserve {host} first (warren api reserved-domains create --domain {host})"
        ))),
    }
}

/// Proves control of a reserved custom domain: its TXT record `_warren-challenge.<domain>`
/// must hold the reservation's token. Returns the reservation, now verified, or what to do.
pub(crate) async fn verify_domain(
    shared: &Shared,
    by: &warren_store::Store,
    d: warren_store::ReservedDomain,
) -> Result<warren_store::ReservedDomain, String> {
    if d.verified_at.is_some() {
        return Ok(d);
    }
    let name = d.challenge_name();
    let how = format!(
        "{} is reserved but its control is not proven yet: create a DNS TXT record {name} with the value {} (then bind again, or POST /reserved_domains/{}/verify)",
        d.domain, d.verify_token, d.id
    );
    let Some(resolver) = shared.config.dns_resolver.or_else(crate::dns::system_resolver) else {
        return Err(format!("{how}; this edge has no DNS resolver configured (--dns-resolver)"));
    };
    match crate::dns::txt(resolver, &name).await {
        Ok(values) if values.iter().any(|v| v.trim() == d.verify_token) => {
            by.mark_domain_verified(&d.account_id, &d.id).await.map_err(|e| {
                shared.metrics.store_errors.inc();
                tracing::error!(error = %e, "store failed while recording a verified domain");
                "the edge could not record the verification; try again".to_string()
            })
        }
        Ok(values) if values.is_empty() => Err(format!("{how}; no TXT record was found")),
        Ok(values) => Err(format!("{how}; the TXT records found hold other values ({})", values.len())),
        Err(e) => {
            tracing::warn!(domain = %d.domain, %resolver, error = %e, "TXT lookup failed");
            Err(format!("{how}; the lookup failed: {e}"))
        }
    }
}

/// A random name that survives reconnects: the one this authtoken's endpoint (same protocol,
/// name and upstream) was given before, if it is free and unreserved, else a new one, which
/// is then kept. A store failure costs only the keeping, never the bind.
async fn kept_random_host(
    shared: &Shared,
    session: &AgentSession,
    proto: Proto,
    bind: &proto::Bind,
) -> Result<String, BindError> {
    if bind.forwards_to.is_empty() && bind.extra.name.is_empty() {
        // Nothing tells this endpoint from the token's others.
        return random_host(shared, proto).await;
    }
    let key = format!("{}|{}|{}", proto.as_str(), bind.extra.name, bind.forwards_to);
    let credential = &session.credential.id;
    match shared.store.assigned_name(credential, &key).await {
        Ok(Some(host))
            if host.ends_with(&format!(".{}", shared.config.base_domain))
                && !shared.sessions.registry.is_taken(&EndpointKey::Host(proto, host.clone()))
                && !shared.sessions.cloud.has_host(&host)
                && matches!(shared.store.domain_reservation(&host).await, Ok(None)) =>
        {
            if let Err(e) = shared.store.assign_name(credential, &key, &host).await {
                tracing::warn!(error = %e, "store failed while refreshing a kept name");
            }
            return Ok(host);
        }
        Ok(_) => {}
        Err(e) => {
            shared.metrics.store_errors.inc();
            tracing::warn!(error = %e, "store failed while looking up a kept name; choosing a new one");
        }
    }
    let host = random_host(shared, proto).await?;
    if let Err(e) = shared.store.assign_name(credential, &key, &host).await {
        shared.metrics.store_errors.inc();
        tracing::warn!(error = %e, "store failed while keeping a random name");
    }
    Ok(host)
}

/// A random free name under the base domain that no account has reserved.
async fn random_host(shared: &Shared, proto: Proto) -> Result<String, BindError> {
    for _ in 0..16 {
        let label: String = (0..10).map(|_| (b'a' + rand::rng().random_range(0..26)) as char).collect();
        let host = format!("{label}.{}", shared.config.base_domain);
        if shared.sessions.registry.is_taken(&EndpointKey::Host(proto, host.clone()))
            || shared.sessions.cloud.has_host(&host)
        {
            continue;
        }
        match shared.store.domain_reservation(&host).await {
            Ok(None) => return Ok(host),
            Ok(Some(_)) => continue,
            Err(e) => {
                shared.metrics.store_errors.inc();
                tracing::error!(error = %e, "store failed while checking domain reservations");
                return Err(BindError::Unavailable("check domain reservations"));
            }
        }
    }
    Err(BindError::Unavailable("choose a free random name"))
}

/// The port a tcp bind asks for (`Addr`, `URL` or protocol 2's `RemotePort`), if any.
pub(super) fn requested_port(opts: &proto::TcpOpts) -> Result<Option<u16>, String> {
    let addr = if !opts.addr.is_empty() {
        opts.addr.as_str()
    } else {
        opts.url.strip_prefix("tcp://").unwrap_or(&opts.url)
    };
    if addr.is_empty() {
        return Ok((opts.remote_port != 0).then_some(opts.remote_port));
    }
    let port = addr.rsplit_once(':').map_or(addr, |(_, p)| p);
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .map(Some)
        .ok_or_else(|| format!("invalid tcp address {addr:?}; expected host:port"))
}

pub(super) async fn handle_unbind(shared: &Arc<Shared>, session: &Arc<AgentSession>, mut stream: Stream) {
    let resp = match read_request::<proto::Unbind>(shared, &mut stream, "Unbind").await {
        Ok(u) if shared.sessions.registry.unbind(&session.id, &u.client_id) => {
            if let Err(e) = shared.store.delete_endpoint(&session.id, &u.client_id).await {
                shared.metrics.store_errors.inc();
                tracing::warn!(error = %e, "store failed while forgetting an endpoint; it goes with its session");
            }
            proto::UnbindResp::default()
        }
        Ok(u) => proto::UnbindResp {
            error: BindError::Invalid(format!("no endpoint with Id {:?}", u.client_id)).text(),
        },
        Err(e) => proto::UnbindResp { error: BindError::Invalid(e).text() },
    };
    let _ = reply(&mut stream, &resp).await;
}
