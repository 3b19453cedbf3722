//! Which session holds which endpoint. One mutex guards the maps; it is held only for map
//! operations, never across I/O.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::task::AbortHandle;
use warren_mux::{ErrorCode, Mux};
use warren_proto::ProxyHeader;

/// An authenticated agent session.
pub(crate) struct AgentSession {
    /// `ts_...`, also the resume id the agent presents on reconnect.
    pub(crate) id: String,
    pub(crate) mux: Mux,
    pub(crate) account_id: String,
    pub(crate) remote: SocketAddr,
    /// The authtoken it authenticated with (id and bind ACL; never the secret).
    pub(crate) credential: warren_store::Credential,
    /// What the agent said about itself in Auth, for the API.
    pub(crate) info: SessionInfo,
    /// SHA-256 of the resume cookie the edge gave the agent: only its holder may take the
    /// session over on reconnect.
    pub(crate) resume_hash: [u8; 32],
    /// The bind rules the token's owner's authtokens stay within, as an admin set them.
    pub(crate) owner_acl: Option<Vec<String>>,
    /// The IP policies the token's owner's sessions must pass, as an admin set them.
    pub(crate) owner_ip_policy_ids: Vec<String>,
}

impl AgentSession {
    /// Whether this session may bind `host` (a name or `host:port`): its token's ACL and its
    /// owner's ceiling both allow it.
    pub(crate) fn may_bind(&self, host: &str) -> bool {
        self.credential.allows_bind(host)
            && self.owner_acl.as_ref().is_none_or(|ceiling| warren_store::acl_allows(ceiling, host))
    }

    /// Whether it may bind a name or port the edge chooses.
    pub(crate) fn may_bind_any(&self) -> bool {
        let unlimited = |acl: &[String]| acl.is_empty() || warren_store::acl_allows(acl, "*");
        unlimited(&self.credential.acl) && self.owner_acl.as_deref().is_none_or(unlimited)
    }
}

/// Agent details shown by `/tunnel_sessions`.
#[derive(Clone, Debug, Default)]
pub(crate) struct SessionInfo {
    pub(crate) started_at: String,
    pub(crate) agent_version: String,
    pub(crate) os: String,
    pub(crate) metadata: String,
}

/// The protocol of a bound endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Proto {
    Http,
    Https,
    Tcp,
    /// TLS passed through by SNI; the agent or its upstream terminates it.
    Tls,
}

impl Proto {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Proto::Http => "http",
            Proto::Https => "https",
            Proto::Tcp => "tcp",
            Proto::Tls => "tls",
        }
    }
}

/// One bound endpoint.
pub(crate) struct Endpoint {
    /// `ep_...`, the edge's id for it (the API's).
    pub(crate) id: String,
    pub(crate) session: Arc<AgentSession>,
    /// The agent's id for it, sent back in every proxy header.
    pub(crate) client_id: String,
    pub(crate) proto: Proto,
    pub(crate) url: String,
    pub(crate) key: EndpointKey,
    /// An https endpoint's own TLS settings; `None` uses the edge's default.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// Its traffic policies, run on every connection, request and response.
    pub(crate) policy: warren_policy::Chain,
    /// What policy expressions see as `endpoint.*`.
    pub(crate) info: warren_policy::EndpointInfo,
    /// The IP policies its traffic policies (the account's and its own) name: a change to
    /// their rules rebinds it.
    pub(crate) ip_policies: Vec<String>,
    /// PROXY protocol version put before each visitor connection's bytes (tcp and tls
    /// endpoints whose agent asked for it; 0: none).
    pub(crate) proxy_proto: u8,
    /// Its counters and latency histogram.
    pub(crate) metrics: crate::metrics::EndpointMetrics,
    /// What the agent said about it (name, metadata, description, upstream), for the API.
    pub(crate) details: warren_store::EndpointDetails,
    /// A member of a pool: other pooled endpoints of the account may serve the same key.
    pub(crate) pooled: bool,
    /// Its agent asked for HTTP/2 to the upstream (`ForwardsProto: http2`): requests go on
    /// its proxy streams as HTTP/2 with prior knowledge.
    pub(crate) upstream_h2: bool,
    /// What its traffic events say of it.
    pub(crate) event_text: crate::events::EndpointText,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum EndpointKey {
    Host(Proto, String),
    Port(u16),
}

impl Endpoint {
    /// Opens a proxy stream to the agent for one visitor connection: the stream type and the
    /// header go out in one write.
    pub(crate) async fn open_proxy_stream(&self, visitor: SocketAddr) -> std::io::Result<warren_mux::Stream> {
        use tokio::io::AsyncWriteExt;
        let header = ProxyHeader {
            id: self.client_id.clone(),
            client_addr: visitor.to_string(),
            proto: self.proto.as_str().into(),
            edge_type: match self.proto {
                Proto::Tcp => "1".into(),
                Proto::Tls => "2".into(),
                Proto::Https => "3".into(),
                Proto::Http => "0".into(),
            },
            passthrough_tls: self.proto == Proto::Tls,
        };
        let mut buf = warren_proto::StreamType::Proxy.to_u32().to_be_bytes().to_vec();
        buf.extend_from_slice(&header.encode());
        let mut s = self.session.mux.open()?;
        s.write_all(&buf).await?;
        Ok(s)
    }
}

/// The registry's (and the store's) name for internal endpoint `host` (`NAME.internal`) of
/// `account`: internal names belong to their account, so two accounts may each have
/// `api.internal`, and no visitor's Host or SNI can name one (`@` is refused in both).
pub(crate) fn internal_host(host: &str, account: &str) -> String {
    format!("{host}@{account}")
}

/// Whether `host` names an internal endpoint (`NAME.internal`).
pub(crate) fn is_internal(host: &str) -> bool {
    host.ends_with(".internal")
}

/// Whether `cookie` is the resume cookie whose hash is `hash` (constant time).
pub(crate) fn cookie_matches(cookie: &str, hash: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    !cookie.is_empty() && hash.len() == 32 && bool::from(warren_store::hash_secret(cookie).ct_eq(hash))
}

/// The schemes whose endpoints are named by host.
const HOST_PROTOS: [Proto; 3] = [Proto::Http, Proto::Https, Proto::Tls];

/// Whether binding `host` for `proto` in `account` clashes with what is bound: a host belongs
/// to one account across every scheme, and https and tls share the TLS port, so they never
/// share a host.
fn host_clash(endpoints: &HashMap<EndpointKey, Pool>, proto: Proto, host: &str, account: &str) -> bool {
    HOST_PROTOS.iter().any(|other| {
        endpoints.get(&EndpointKey::Host(*other, host.to_owned())).is_some_and(|held| {
            held.account() != account
                || matches!((proto, *other), (Proto::Https, Proto::Tls) | (Proto::Tls, Proto::Https))
        })
    })
}

/// The endpoints serving one key: one, or the members of a pool (every one bound with
/// pooling, all of one account). Visitors are spread across members in turn.
struct Pool {
    members: Vec<Arc<Endpoint>>,
    next: usize,
    /// A tcp endpoint's listener, shared by the pool; stopped with its last member.
    listener: Option<AbortHandle>,
}

impl Pool {
    fn account(&self) -> &str {
        self.members.first().map_or("", |m| m.session.account_id.as_str())
    }

    fn pick(&mut self) -> Option<Arc<Endpoint>> {
        match self.members.len() {
            0 => None,
            1 => Some(self.members[0].clone()),
            n => {
                self.next = self.next.wrapping_add(1);
                Some(self.members[self.next % n].clone())
            }
        }
    }

    /// Removes `session`'s member `client_id`; true when the pool is now empty (its listener
    /// stopped).
    fn remove(&mut self, session: &str, client_id: &str) -> bool {
        self.members.retain(|m| !(m.session.id == session && m.client_id == client_id));
        if self.members.is_empty() {
            if let Some(l) = self.listener.take() {
                l.abort();
            }
            return true;
        }
        false
    }
}

#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    /// How many keys are wildcard names (`*.example.com`), so that visitors' hosts are
    /// matched against wildcards only when there are some.
    wildcards: std::sync::atomic::AtomicUsize,
}

/// The wildcard names that could serve `host`, most specific first: `a.b.example.com` →
/// `*.b.example.com`, `*.example.com` (a wildcard matches names any number of labels below
/// it, as ngrok's do; never a bare TLD).
pub(crate) fn wildcards_for(host: &str) -> impl Iterator<Item = String> + '_ {
    let mut rest = host;
    std::iter::from_fn(move || {
        let (_, parent) = rest.split_once('.')?;
        rest = parent;
        parent.contains('.').then(|| format!("*.{parent}"))
    })
}

/// Whether `host` is a wildcard name.
pub(crate) fn is_wildcard(host: &str) -> bool {
    host.starts_with("*.")
}

#[derive(Default)]
struct Inner {
    endpoints: HashMap<EndpointKey, Pool>,
    sessions: HashMap<String, SessionEntry>,
    /// Counts changes to the rules sessions are admitted under (authtokens, IP policies,
    /// restrictions). An Auth decided under one count and registered under another is
    /// decided again: the change's sweep of live sessions may have run before it was here.
    rules_epoch: u64,
}

struct SessionEntry {
    session: Arc<AgentSession>,
    endpoints: HashMap<String, EndpointKey>,
}

/// Why a bind was refused.
#[derive(Debug)]
pub(crate) enum BindRefused {
    /// Another session holds it (and it is not a pool this bind may join).
    InUse,
    /// The session already has an endpoint with this id.
    DuplicateId,
    /// The session hit its endpoint limit.
    TooMany,
    /// The session is gone.
    SessionGone,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("registry poisoned")
    }

    #[cfg(test)]
    pub(crate) fn add_session(&self, session: Arc<AgentSession>) {
        self.add_session_decided_at(session, None);
    }

    /// Adds a session whose Auth was decided when the rules epoch was `decided_at`; returns
    /// whether the rules changed since (then the caller decides again: a change's sweep of
    /// live sessions may have missed it).
    pub(crate) fn add_session_decided_at(&self, session: Arc<AgentSession>, decided_at: Option<u64>) -> bool {
        let mut inner = self.lock();
        inner.sessions.insert(session.id.clone(), SessionEntry { session, endpoints: HashMap::new() });
        decided_at.is_some_and(|e| e != inner.rules_epoch)
    }

    /// The rules epoch (see [`Registry::rules_changed`]).
    pub(crate) fn rules_epoch(&self) -> u64 {
        self.lock().rules_epoch
    }

    /// Marks that the rules sessions are admitted under changed. Call it after the change is
    /// in the store and cached copies are dropped, and before sweeping live sessions.
    pub(crate) fn rules_changed(&self) {
        self.lock().rules_epoch += 1;
    }

    pub(crate) fn session_count(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Every bound endpoint's URL and protocol (a pool's once).
    pub(crate) fn endpoint_urls(&self) -> Vec<(String, &'static str)> {
        self.lock()
            .endpoints
            .values()
            .filter_map(|p| p.members.first())
            .map(|e| (e.url.clone(), e.proto.as_str()))
            .collect()
    }

    /// Live sessions of an account.
    pub(crate) fn sessions_of(&self, account_id: &str) -> Vec<Arc<AgentSession>> {
        let inner = self.lock();
        inner
            .sessions
            .values()
            .filter(|e| e.session.account_id == account_id)
            .map(|e| e.session.clone())
            .collect()
    }

    /// Live sessions that authenticated with the authtoken `credential_id`.
    pub(crate) fn sessions_using(&self, credential_id: &str) -> Vec<Arc<AgentSession>> {
        let inner = self.lock();
        inner
            .sessions
            .values()
            .filter(|e| e.session.credential.id == credential_id)
            .map(|e| e.session.clone())
            .collect()
    }

    /// The live session with this id, if the same authtoken started it and `cookie` is the
    /// one the edge gave it (resume takes it over).
    pub(crate) fn session_for_resume(
        &self,
        id: &str,
        credential_id: &str,
        cookie: &str,
    ) -> Option<Arc<AgentSession>> {
        let inner = self.lock();
        inner
            .sessions
            .get(id)
            .filter(|e| {
                e.session.credential.id == credential_id && cookie_matches(cookie, &e.session.resume_hash)
            })
            .map(|e| e.session.clone())
    }

    /// The endpoints a session of this node holds.
    pub(crate) fn endpoints_of(&self, session_id: &str) -> Vec<Arc<Endpoint>> {
        let inner = self.lock();
        let Some(entry) = inner.sessions.get(session_id) else { return Vec::new() };
        entry
            .endpoints
            .iter()
            .filter_map(|(client_id, k)| {
                inner
                    .endpoints
                    .get(k)?
                    .members
                    .iter()
                    .find(|m| m.session.id == session_id && &m.client_id == client_id)
                    .cloned()
            })
            .collect()
    }

    /// A session of this node by id.
    pub(crate) fn session(&self, id: &str) -> Option<Arc<AgentSession>> {
        self.lock().sessions.get(id).map(|e| e.session.clone())
    }

    /// A key no endpoint serves any more.
    fn forget_key(&self, key: &EndpointKey) {
        if matches!(key, EndpointKey::Host(_, h) if is_wildcard(h)) {
            self.wildcards.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether any endpoint here has a wildcard name.
    pub(crate) fn has_wildcards(&self) -> bool {
        self.wildcards.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// Whether an endpoint here is named `host` in one of `protos`.
    pub(crate) fn has_host_in(&self, host: &str, protos: &[Proto]) -> bool {
        let inner = self.lock();
        protos.iter().any(|p| inner.endpoints.contains_key(&EndpointKey::Host(*p, host.to_owned())))
    }

    /// The endpoint serving `key`; for a pool, its members in turn.
    pub(crate) fn lookup(&self, key: &EndpointKey) -> Option<Arc<Endpoint>> {
        self.lock().endpoints.get_mut(key)?.pick()
    }

    /// The member of `key`'s endpoints with id `id` (a relayed visitor names it).
    pub(crate) fn lookup_id(&self, key: &EndpointKey, id: &str) -> Option<Arc<Endpoint>> {
        self.lock().endpoints.get(key)?.members.iter().find(|m| m.id == id).cloned()
    }

    /// The members serving `key` (one unless it is a pool).
    pub(crate) fn members(&self, key: &EndpointKey) -> Vec<Arc<Endpoint>> {
        self.lock().endpoints.get(key).map(|p| p.members.clone()).unwrap_or_default()
    }

    /// Binds atomically: either the endpoint is now ours or nothing changed.
    pub(crate) fn bind(&self, ep: Endpoint, max: usize) -> Result<Arc<Endpoint>, BindRefused> {
        let mut inner = self.lock();
        let Inner { endpoints, sessions, .. } = &mut *inner;
        let entry = sessions.get_mut(&ep.session.id).ok_or(BindRefused::SessionGone)?;
        if let Some(pool) = endpoints.get(&ep.key) {
            let joinable = ep.pooled
                && pool.members.iter().all(|m| m.pooled && m.session.account_id == ep.session.account_id);
            if !joinable {
                return Err(BindRefused::InUse);
            }
        }
        if let EndpointKey::Host(proto, host) = &ep.key
            && host_clash(endpoints, *proto, host, &ep.session.account_id)
        {
            return Err(BindRefused::InUse);
        }
        if entry.endpoints.contains_key(&ep.client_id) {
            return Err(BindRefused::DuplicateId);
        }
        if entry.endpoints.len() >= max {
            return Err(BindRefused::TooMany);
        }
        let ep = Arc::new(ep);
        entry.endpoints.insert(ep.client_id.clone(), ep.key.clone());
        if !endpoints.contains_key(&ep.key) && matches!(&ep.key, EndpointKey::Host(_, h) if is_wildcard(h)) {
            self.wildcards.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        endpoints
            .entry(ep.key.clone())
            .or_insert_with(|| Pool { members: Vec::new(), next: 0, listener: None })
            .members
            .push(ep.clone());
        Ok(ep)
    }

    /// Whether anything holds this key now (for choosing free names and ports); a host
    /// counts as taken when any scheme holds it.
    pub(crate) fn is_taken(&self, key: &EndpointKey) -> bool {
        let inner = self.lock();
        match key {
            EndpointKey::Host(_, host) => {
                HOST_PROTOS.iter().any(|p| inner.endpoints.contains_key(&EndpointKey::Host(*p, host.clone())))
            }
            EndpointKey::Port(_) => inner.endpoints.contains_key(key),
        }
    }

    /// Remembers a tcp endpoint's listener task so it stops with the last endpoint on its
    /// port.
    pub(crate) fn add_listener(&self, key: &EndpointKey, h: AbortHandle) {
        match self.lock().endpoints.get_mut(key) {
            Some(pool) if pool.listener.is_none() => pool.listener = Some(h),
            _ => h.abort(),
        }
    }

    /// Releases one endpoint of a session. Returns whether it existed.
    pub(crate) fn unbind(&self, session_id: &str, client_id: &str) -> bool {
        let mut inner = self.lock();
        let Inner { endpoints, sessions, .. } = &mut *inner;
        let Some(entry) = sessions.get_mut(session_id) else { return false };
        let Some(key) = entry.endpoints.remove(client_id) else { return false };
        if endpoints.get_mut(&key).is_some_and(|p| p.remove(session_id, client_id)) {
            endpoints.remove(&key);
            self.forget_key(&key);
        }
        true
    }

    /// Removes a session and everything it held.
    pub(crate) fn remove_session(&self, session_id: &str) {
        let mut inner = self.lock();
        let Inner { endpoints, sessions, .. } = &mut *inner;
        if let Some(entry) = sessions.remove(session_id) {
            for (client_id, key) in &entry.endpoints {
                if endpoints.get_mut(key).is_some_and(|p| p.remove(session_id, client_id)) {
                    endpoints.remove(key);
                    self.forget_key(key);
                }
            }
        }
    }

    /// Forgets every session and what it held (the node fenced itself).
    pub(crate) fn remove_all(&self) {
        let ids: Vec<String> = self.lock().sessions.keys().cloned().collect();
        for id in ids {
            self.remove_session(&id);
        }
    }

    /// Sends GOAWAY to every session (edge shutdown).
    pub(crate) fn close_all(&self, why: &str) {
        let sessions: Vec<Arc<AgentSession>> =
            self.lock().sessions.values().map(|e| e.session.clone()).collect();
        for s in sessions {
            s.mux.close(ErrorCode::None, why);
        }
    }
}
