//! Traffic policies at the edge: compiled when an endpoint is bound (a document that does not
//! compile refuses the Bind with the rule and the problem), then run on every connection,
//! request and response of the endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::Shared;
use crate::session::BindError;
use warren_policy::{Chain, Cidr, CompileEnv, Document, EndpointInfo, LogEntry, Policy};

/// Compiles the account's policy and the one a Bind carries for an endpoint of `proto`
/// (`https`, `http`, `tcp`, `tls`), the account's first.
pub(crate) async fn compile_for_bind(
    shared: &Shared,
    account_id: &str,
    proto: &str,
    options: Option<&serde_json::Value>,
    raw: Option<&serde_json::Value>,
) -> Result<ForBind, BindError> {
    let invalid = |msg: String| BindError::Invalid(format!("invalid traffic policy: {msg}"));
    let mut chain = Vec::new();
    let account_doc = match shared.store.account_traffic_policy(account_id).await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "store failed while reading the account's traffic policy");
            return Err(BindError::Unavailable("read the account's traffic policy"));
        }
    };
    let mut account = None;
    let mut endpoint_ip_policies = Vec::new();
    if let Some((text, _)) = account_doc {
        let doc = Document::parse(&text).map_err(|e| invalid(format!("the account's policy: {e}")))?;
        if proto != "https" && crate::endpoint_tls::has_terminate_tls(&doc) {
            // The account asks for TLS settings the edge can hold only where it terminates
            // TLS; an endpoint that would escape them is refused, never bound without them.
            return Err(invalid(format!(
                "the account's policy has terminate-tls (TLS versions or mutual TLS at the edge), which a {proto} endpoint cannot honour: the edge terminates TLS for https endpoints only. Use an https endpoint, or ask an administrator"
            )));
        }
        let env = compile_env(shared, account_id, &doc).await.map_err(&invalid)?;
        let policy = Policy::compile_for_account(&doc, proto, &env)
            .map_err(|e| invalid(format!("the account's policy: {e}")))?;
        if !policy.is_empty() {
            chain.push(Arc::new(policy));
        }
        account = Some(doc);
    }
    // The SDK's middleware options, as rules (bind_options.rs): after the account's policy,
    // before the endpoint's own.
    if let Some(options) = options {
        let doc =
            Document::from_value(options).map_err(|e| invalid(format!("the endpoint's options: {e}")))?;
        let env = compile_env(shared, account_id, &doc).await.map_err(&invalid)?;
        let policy = Policy::compile(&doc, proto, &env)
            .map_err(|e| invalid(format!("the endpoint's options: {e}")))?;
        if !policy.is_empty() {
            chain.push(Arc::new(policy));
        }
        endpoint_ip_policies.extend(doc.ip_policy_ids());
    }
    if let Some(raw) = raw.filter(|v| !v.is_null()) {
        let doc = Document::from_value(raw).map_err(|e| invalid(e.to_string()))?;
        if proto != "https" && crate::endpoint_tls::has_terminate_tls(&doc) {
            return Err(invalid(format!(
                "terminate-tls needs an https endpoint: the edge does not terminate TLS for {proto} endpoints (tls:// is passed through to the agent; terminate there with --crt/--key)"
            )));
        }
        let env = compile_env(shared, account_id, &doc).await.map_err(&invalid)?;
        let policy = Policy::compile(&doc, proto, &env).map_err(|e| invalid(e.to_string()))?;
        if !policy.is_empty() {
            chain.push(Arc::new(policy));
        }
        endpoint_ip_policies.extend(doc.ip_policy_ids());
    }
    let mut ip_policies = account.as_ref().map(|d| d.ip_policy_ids()).unwrap_or_default();
    ip_policies.extend(endpoint_ip_policies);
    Ok(ForBind { chain: Chain(chain), account, ip_policies })
}

/// What a Bind gets from the traffic policies.
#[derive(Clone)]
pub(crate) struct ForBind {
    /// The account's and the endpoint's compiled policies, in that order.
    pub(crate) chain: Chain,
    /// The account's document, whose `terminate-tls` also applies to https endpoints.
    pub(crate) account: Option<Document>,
    /// The IP policies both documents name.
    pub(crate) ip_policies: Vec<String>,
}

/// Checks an account-wide document for every kind of endpoint.
pub(crate) async fn check_account_policy(
    shared: &Shared,
    account_id: &str,
    text: &str,
) -> Result<(), String> {
    let doc = Document::parse(text).map_err(|e| e.to_string())?;
    let env = compile_env(shared, account_id, &doc).await?;
    for proto in ["https", "tcp"] {
        Policy::compile_for_account(&doc, proto, &env).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The agent learns that a fetch failed, not why: the reason (connection refused, timed out,
/// a private address) would let an authtoken holder map what the edge can reach. The edge's
/// log has it.
fn fetch_failed(account_id: &str, what: &str, url: &str, detail: &str) -> String {
    tracing::warn!(account = %account_id, %url, error = %detail, "identity provider fetch failed");
    format!("{what} {url} could not be fetched (the edge's log says why)")
}

/// What compiling a document needs from outside: the stored IP policies its `restrict-ips`
/// actions name, the keys its `jwt-validation` actions name, the providers its
/// `openid-connect` actions name, and the key session cookies are sealed under.
async fn compile_env(shared: &Shared, account_id: &str, doc: &Document) -> Result<CompileEnv, String> {
    let mut env =
        CompileEnv { cookie_secret: Some(shared.master_key.cookie_secret()), ..CompileEnv::default() };
    for url in doc.jwks_urls() {
        shared.listeners.idp.check(&url).map_err(|e| format!("jwt-validation: {e}"))?;
        let set = shared
            .listeners
            .idp
            .get(&url)
            .await
            .map_err(|e| fetch_failed(account_id, "jwt-validation: the keys at", &url, &e))?;
        env.jwks.insert(url, set);
    }
    for issuer in doc.oidc_issuers() {
        shared.listeners.idp.check(&issuer).map_err(|e| format!("openid-connect: {e}"))?;
        let provider = shared
            .listeners
            .idp
            .provider(&issuer)
            .await
            .map_err(|e| fetch_failed(account_id, "openid-connect: the provider", &issuer, &e))?;
        env.oidc.insert(issuer, provider);
    }
    for id in doc.ip_policy_ids() {
        let rows = match shared.store.ip_policy_cidrs(account_id, &id).await {
            Ok(r) => r,
            Err(warren_store::StoreError::NotFound(_)) => {
                return Err(format!(
                    "restrict-ips names the IP policy {id:?}, which this account does not have"
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "store failed while reading IP policies for a traffic policy");
                return Err("the edge could not read the IP policies; try again".into());
            }
        };
        let (mut allow, mut deny) = (Vec::new(), Vec::new());
        for (cidr, action) in rows {
            let Ok(c) = Cidr::parse(&cidr) else { continue };
            if action == "allow" { allow.push(c) } else { deny.push(c) }
        }
        env.ip_policies.insert(id, (allow, deny));
    }
    Ok(env)
}

/// Builds what expressions see of the endpoint.
pub(crate) fn endpoint_info(id: &str, url: &str, proto: &str) -> EndpointInfo {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_owned(), p.parse().unwrap_or(0)),
        _ => (rest.to_owned(), if proto == "http" { 80 } else { 443 }),
    };
    EndpointInfo { id: id.to_owned(), url: url.to_owned(), proto: proto.to_owned(), host, port }
}

/// The connection as expressions see it.
pub(crate) fn conn(
    client: SocketAddr,
    server: SocketAddr,
    tls: Option<warren_policy::TlsInfo>,
) -> warren_policy::Conn {
    warren_policy::Conn {
        client_ip: client.ip(),
        client_port: client.port(),
        server_ip: server.ip(),
        server_port: server.port(),
        tls,
    }
}

/// Writes the `log` actions' output.
pub(crate) fn write_logs(url: &str, logs: Vec<LogEntry>) {
    for l in logs {
        let metadata = serde_json::Value::Object(l.metadata);
        tracing::info!(target: "warren::traffic_policy", endpoint = %url, rule = %l.rule, %metadata, "traffic policy log");
    }
}

/// The wall clock and the monotonic clock, read once per phase.
pub(crate) fn now() -> (SystemTime, Instant) {
    (SystemTime::now(), Instant::now())
}
