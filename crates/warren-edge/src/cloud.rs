//! Cloud endpoints at the edge: endpoints without an agent (ngrok's type `cloud`), made
//! through the API and answered by their traffic policy alone (`custom-response`, `redirect`,
//! `deny`, `forward-internal` to an agent's internal endpoint). Every node serves every cloud
//! endpoint from its own compiled copy, loaded from the store at start and reloaded for an
//! account when its cloud endpoints, its traffic policy or its IP policies change (on this
//! node directly, on the others through the rules announcement).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use warren_policy::{Chain, Document, EndpointInfo};

use crate::Shared;
use crate::registry::{EndpointKey, Proto};

/// The actions that answer a request: a cloud endpoint's policy needs one to do anything.
pub(crate) const TERMINATING: [&str; 5] =
    ["custom-response", "deny", "redirect", "forward-internal", "close-connection"];

/// One cloud endpoint, compiled.
pub(crate) struct CloudEndpoint {
    /// `ep_...`
    pub(crate) id: String,
    pub(crate) account_id: String,
    pub(crate) url: String,
    /// The account's policy, then the endpoint's own.
    pub(crate) policy: Chain,
    /// What expressions see as `endpoint.*`.
    pub(crate) info: EndpointInfo,
    pub(crate) metrics: crate::metrics::EndpointMetrics,
    /// What its traffic events say of it.
    pub(crate) event_text: crate::events::EndpointText,
}

/// Every account's cloud endpoints, by scheme and host.
#[derive(Default)]
pub(crate) struct CloudEndpoints {
    by_key: RwLock<HashMap<EndpointKey, Arc<CloudEndpoint>>>,
    /// Reloads run one at a time: one that read the store earlier never replaces what a
    /// later one read.
    reloading: tokio::sync::Mutex<()>,
}

impl CloudEndpoints {
    /// The cloud endpoint serving `key`, if any.
    pub(crate) fn lookup(&self, key: &EndpointKey) -> Option<Arc<CloudEndpoint>> {
        self.by_key.read().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Whether any cloud endpoint has `host` (in any scheme).
    pub(crate) fn has_host(&self, host: &str) -> bool {
        self.has_host_in(host, &[Proto::Http, Proto::Https])
    }

    /// Whether a cloud endpoint has `host` in one of `protos`.
    pub(crate) fn has_host_in(&self, host: &str, protos: &[Proto]) -> bool {
        protos.iter().any(|p| self.lookup(&EndpointKey::Host(*p, host.to_owned())).is_some())
    }

    /// Replaces what `account` (every account: `None`) serves with `now`.
    fn replace(&self, account: Option<&str>, now: Vec<Arc<CloudEndpoint>>) {
        let mut map = self.by_key.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, e| account.is_some_and(|a| e.account_id != a));
        for e in now {
            let proto = if e.info.proto == "http" { Proto::Http } else { Proto::Https };
            map.insert(EndpointKey::Host(proto, e.info.host.clone()), e);
        }
    }
}

/// A cloud endpoint's URL, checked: `https://host` or `http://host` (ngrok's `:443`/`:80`
/// dropped), a host name and nothing more. Returns (url, proto, host) as stored.
pub(crate) fn parse_url(shared: &Shared, url: &str) -> Result<(String, Proto, String), String> {
    let (scheme, rest) =
        url.split_once("://").ok_or_else(|| format!("url {url:?}: expected https://NAME or http://NAME"))?;
    let proto = match scheme.to_ascii_lowercase().as_str() {
        "https" => Proto::Https,
        "http" => Proto::Http,
        "tcp" | "tls" => {
            return Err(format!(
                "url {url:?}: cloud endpoints here are http or https (tcp and tls cloud endpoints are not supported)"
            ));
        }
        other => return Err(format!("url {url:?}: unknown scheme {other:?}; use https:// or http://")),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "url {url:?}: a cloud endpoint's URL is a scheme and a host name, without a path"
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let public_port = match proto {
        Proto::Https => Some(shared.listeners.https_port),
        _ => shared.listeners.http_port,
    };
    let Some(public_port) = public_port else {
        return Err("this edge has no plain http listener; use an https:// URL".into());
    };
    if let Some(p) = port {
        let default = if proto == Proto::Https { "443" } else { "80" };
        if p != default && p != public_port.to_string() {
            return Err(format!(
                "url {url:?}: the port must be this edge's {} port, {public_port}",
                proto.as_str()
            ));
        }
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.contains('*') {
        return Err(format!("url {url:?}: wildcard cloud endpoints are not supported"));
    }
    if !crate::config::is_valid_hostname(&host) {
        return Err(format!("url {url:?}: {host:?} is not a valid host name"));
    }
    if crate::registry::is_internal(&host) {
        return Err(format!(
            "url {url:?}: internal cloud endpoints are not supported; internal endpoints are an agent's (https://NAME.internal)"
        ));
    }
    if shared.config.connect_hostnames.contains(&host) || host == shared.config.base_domain {
        return Err(format!("url {url:?}: {host} is this edge's own name"));
    }
    let url = match (proto, public_port) {
        (Proto::Https, 443) | (Proto::Http, 80) => format!("{}://{host}", proto.as_str()),
        (_, p) => format!("{}://{host}:{p}", proto.as_str()),
    };
    Ok((url, proto, host))
}

/// Checks a cloud endpoint's document: it parses, compiles for its scheme, and has a
/// terminating action in `on_http_request` (ngrok refuses a cloud endpoint whose policy
/// cannot answer anything). `terminate-tls` is refused: a cloud endpoint is served with the
/// edge's TLS settings.
pub(crate) async fn check_policy(
    shared: &Shared,
    account_id: &str,
    proto: Proto,
    text: &str,
) -> Result<(), String> {
    let doc = Document::parse(text).map_err(|e| e.to_string())?;
    if crate::endpoint_tls::has_terminate_tls(&doc) {
        return Err(
            "terminate-tls is not supported on cloud endpoints: they are served with the edge's TLS settings"
                .into(),
        );
    }
    if !doc.on_tcp_connect.is_empty() {
        return Err(
            "on_tcp_connect: cloud endpoints here are http or https; put the rules in on_http_request".into(),
        );
    }
    let answers = doc
        .on_http_request
        .iter()
        .chain(&doc.inbound)
        .flat_map(|r| &r.actions)
        .any(|a| TERMINATING.contains(&a.kind.as_str()));
    if !answers {
        return Err(format!(
            "a cloud endpoint's policy must answer requests: on_http_request needs a terminating action ({})",
            TERMINATING.join(", ")
        ));
    }
    compile(shared, account_id, proto, text).await.map(|_| ())
}

async fn compile(
    shared: &Shared,
    account_id: &str,
    proto: Proto,
    text: &str,
) -> Result<crate::policy::ForBind, String> {
    let doc = serde_json::Value::String(text.to_owned());
    let for_bind = crate::policy::compile_for_bind(shared, account_id, proto.as_str(), None, Some(&doc))
        .await
        .map_err(|e| e.to_string())?;
    if for_bind.account.as_ref().is_some_and(crate::endpoint_tls::has_terminate_tls) {
        return Err("the account's policy has terminate-tls, which cloud endpoints cannot honour (they are served with the edge's TLS settings)".into());
    }
    Ok(for_bind)
}

/// Loads `account`'s cloud endpoints (every account's: `None`) from the store and serves
/// them in place of what this node had. One that no longer compiles (the account's policy
/// changed under it) is left out and logged; the others are served.
pub(crate) async fn reload(shared: &Shared, account: Option<&str>) {
    let _one_at_a_time = shared.sessions.cloud.reloading.lock().await;
    let rows = match shared.store.all_cloud_endpoints(account).await {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.store_errors.inc();
            tracing::warn!(error = %e, "could not read cloud endpoints; keeping the ones served");
            return;
        }
    };
    let mut now = Vec::with_capacity(rows.len());
    for row in rows {
        let proto = if row.proto == "http" { Proto::Http } else { Proto::Https };
        match compile(shared, &row.account_id, proto, &row.traffic_policy).await {
            Ok(p) => now.push(Arc::new(CloudEndpoint {
                info: crate::policy::endpoint_info(&row.id, &row.url, &row.proto),
                metrics: shared.metrics.endpoint(&row.url),
                event_text: crate::events::EndpointText::new(&row.id, &row.url, ""),
                policy: p.chain,
                id: row.id,
                account_id: row.account_id,
                url: row.url,
            })),
            Err(e) => {
                tracing::warn!(endpoint = %row.id, url = %row.url, error = %e, "a cloud endpoint's policy no longer compiles; not serving it");
            }
        }
    }
    shared.sessions.cloud.replace(account, now);
}
