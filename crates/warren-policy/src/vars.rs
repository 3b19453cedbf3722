//! What expressions see: the `conn`, `req`, `res`, `endpoint` and `time` variables, built
//! from the connection and the message only when a rule uses them, and the functions ngrok
//! documents (`inCidrRange`, `isPrivateIp`, `getReqHeader`, ...).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use cel::extractors::This;
use cel::objects::{Key, Map, Value};
use cel::{Context, ExecutionError};
use http::HeaderMap;

/// The connection a request or connection arrived on.
#[derive(Clone, Debug)]
pub struct Conn {
    /// The visitor's address.
    pub client_ip: IpAddr,
    /// The visitor's port.
    pub client_port: u16,
    /// The edge's address the visitor reached.
    pub server_ip: IpAddr,
    /// The edge's port the visitor reached.
    pub server_port: u16,
    /// TLS details, when the edge terminated TLS.
    pub tls: Option<TlsInfo>,
}

/// The TLS connection, as the edge saw it.
#[derive(Clone, Debug, Default)]
pub struct TlsInfo {
    /// `1.2` or `1.3`.
    pub version: String,
    /// The negotiated cipher suite.
    pub cipher_suite: String,
    /// The server name the visitor asked for.
    pub sni: String,
    /// The visitor's certificate, under mutual TLS.
    pub client: Option<ClientCertInfo>,
}

/// A visitor's certificate.
#[derive(Clone, Debug, Default)]
pub struct ClientCertInfo {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Subject alternative names.
    pub san: Vec<String>,
    /// Serial number (hex).
    pub serial_number: String,
}

/// The endpoint a policy belongs to.
#[derive(Clone, Debug, Default)]
pub struct EndpointInfo {
    /// Its id.
    pub id: String,
    /// Its public URL.
    pub url: String,
    /// `https`, `http`, `tcp` or `tls`.
    pub proto: String,
    /// Host name (or the tcp host).
    pub host: String,
    /// Public port.
    pub port: u16,
}

/// Which top-level variables an expression reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Needs {
    pub(crate) conn: bool,
    pub(crate) req: bool,
    pub(crate) res: bool,
    pub(crate) endpoint: bool,
    pub(crate) time: bool,
    /// `vars`, what `set-vars` actions set.
    pub(crate) vars: bool,
}

impl Needs {
    pub(crate) fn of(program: &cel::Program) -> Needs {
        let refs = program.references();
        let vars = refs.variables();
        let has = |n: &str| vars.contains(&n);
        Needs {
            conn: has("conn"),
            req: has("req"),
            res: has("res"),
            endpoint: has("endpoint"),
            time: has("time"),
            vars: has("vars"),
        }
    }

    pub(crate) fn union(self, o: Needs) -> Needs {
        Needs {
            conn: self.conn || o.conn,
            req: self.req || o.req,
            res: self.res || o.res,
            endpoint: self.endpoint || o.endpoint,
            time: self.time || o.time,
            vars: self.vars || o.vars,
        }
    }
}

/// The message being evaluated.
pub(crate) struct Message<'a> {
    pub(crate) conn: &'a Conn,
    pub(crate) endpoint: &'a EndpointInfo,
    pub(crate) now: SystemTime,
    pub(crate) req: Option<ReqView<'a>>,
    pub(crate) res: Option<(u16, &'a HeaderMap)>,
    /// The request body, when the edge buffered it for `verify-webhook`.
    pub(crate) body: Option<&'a [u8]>,
}

/// A request's parts as expressions see them.
pub(crate) struct ReqView<'a> {
    pub(crate) method: &'a str,
    pub(crate) uri: &'a http::Uri,
    pub(crate) version: http::Version,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) scheme: &'a str,
}

/// Variables built on first use and reused by every rule of one evaluation. Putting a value
/// into a CEL context converts it (maps deeply), so the context itself is kept and rebuilt
/// only when a rule needs a variable it lacks.
///
/// `vars` holds what `set-vars` actions set, in one phase of one policy: it outlives a
/// rebuild after a rule changed the message ([`Vars::keeping_user_vars`]), and setting one
/// updates the cached context in place (or, when an evaluation still holds that context,
/// drops it so the next one is made from the values already built).
#[derive(Default)]
pub(crate) struct Vars {
    conn: OnceLock<Value>,
    req: OnceLock<Value>,
    res: OnceLock<Value>,
    endpoint: OnceLock<Value>,
    time: OnceLock<Value>,
    /// `None` until a set-vars action sets one (so a phase without any allocates nothing).
    user: std::cell::RefCell<Option<Arc<HashMap<Key, Value>>>>,
    ctx: std::cell::RefCell<Option<(Needs, std::rc::Rc<Context<'static>>)>>,
}

impl Needs {
    fn covers(self, o: Needs) -> bool {
        self.union(o) == self
    }
}

impl Vars {
    /// A context holding (at least) the variables `needs` asks for.
    pub(crate) fn context(&self, msg: &Message<'_>, needs: Needs) -> std::rc::Rc<Context<'static>> {
        let mut cached = self.ctx.borrow_mut();
        if let Some((have, ctx)) = cached.as_ref()
            && have.covers(needs)
        {
            return ctx.clone();
        }
        let needs = cached.as_ref().map_or(needs, |(have, _)| have.union(needs));
        let ctx = std::rc::Rc::new(self.build(msg, needs));
        *cached = Some((needs, ctx.clone()));
        ctx
    }

    /// Sets (`Some`) or removes (`None`) the variable `vars.<name>`.
    pub(crate) fn set_user_var(&self, name: &Arc<String>, value: Option<Value>) {
        let mut user = self.user.borrow_mut();
        let mut cached = self.ctx.borrow_mut();
        // The cached context holds the map too. When nothing else holds that context, it is
        // kept and only its `vars` replaced (the map is then changed in place, not copied);
        // otherwise it is dropped, and the next one is made from the values already built.
        let ctx = match cached.take() {
            Some((have, ctx)) if have.vars => {
                let mut ctx = std::rc::Rc::try_unwrap(ctx).ok();
                if let Some(c) = &mut ctx {
                    c.add_variable_from_value("vars", Value::Null);
                }
                ctx.map(|c| (have, c))
            }
            other => {
                *cached = other;
                None
            }
        };
        let map = Arc::make_mut(user.get_or_insert_with(Arc::default));
        match value {
            Some(v) => map.insert(Key::String(name.clone()), v),
            None => map.remove(&Key::String(name.clone())),
        };
        if let Some((have, mut ctx)) = ctx {
            ctx.add_variable_from_value("vars", user_value(&user));
            *cached = Some((have, std::rc::Rc::new(ctx)));
        }
    }

    /// How many variables `set-vars` actions set.
    pub(crate) fn user_var_count(&self) -> usize {
        self.user.borrow().as_ref().map_or(0, |m| m.len())
    }

    /// Forgets every `vars.<name>` (a new policy of the chain starts).
    pub(crate) fn clear_user_vars(&self) {
        if self.user.borrow_mut().take().is_none() {
            return;
        }
        let mut cached = self.ctx.borrow_mut();
        if cached.as_ref().is_some_and(|(have, _)| have.vars) {
            *cached = None;
        }
    }

    /// New variables for a message a rule changed, with `vars` kept.
    pub(crate) fn keeping_user_vars(self) -> Vars {
        Vars { user: self.user, ..Vars::default() }
    }

    /// True once a CEL context was built.
    #[cfg(test)]
    pub(crate) fn is_built(&self) -> bool {
        self.ctx.borrow().is_some()
    }

    fn build(&self, msg: &Message<'_>, needs: Needs) -> Context<'static> {
        let mut ctx = root().new_inner_scope();
        if needs.conn {
            ctx.add_variable_from_value("conn", self.conn.get_or_init(|| conn_value(msg.conn)).clone());
        }
        if needs.req {
            ctx.add_variable_from_value("req", self.req.get_or_init(|| req_value(msg)).clone());
        }
        if needs.res {
            ctx.add_variable_from_value("res", self.res.get_or_init(|| res_value(msg)).clone());
        }
        if needs.endpoint {
            ctx.add_variable_from_value(
                "endpoint",
                self.endpoint.get_or_init(|| endpoint_value(msg.endpoint)).clone(),
            );
        }
        if needs.time {
            ctx.add_variable_from_value("time", self.time.get_or_init(|| time_value(msg.now)).clone());
        }
        if needs.vars {
            ctx.add_variable_from_value("vars", user_value(&self.user.borrow()));
        }
        ctx
    }
}

fn user_value(user: &Option<Arc<HashMap<Key, Value>>>) -> Value {
    Value::Map(Map { map: user.clone().unwrap_or_default() })
}

thread_local! {
    /// The standard library plus ngrok's functions, built once per thread: every evaluation
    /// adds its variables in a child scope of it.
    static ROOT: &'static Context<'static> = {
        let mut ctx = Context::default();
        register(&mut ctx);
        Box::leak(Box::new(ctx))
    };
}

pub(crate) fn root() -> &'static Context<'static> {
    ROOT.with(|r| *r)
}

fn s(v: impl Into<String>) -> Value {
    Value::String(Arc::new(v.into()))
}

fn map(entries: Vec<(&'static str, Value)>) -> Value {
    let m: HashMap<Key, Value> = entries.into_iter().map(|(k, v)| (Key::from(k), v)).collect();
    Value::Map(Map { map: Arc::new(m) })
}

fn headers_value(h: &HeaderMap) -> Value {
    let mut m: HashMap<Key, Vec<Value>> = HashMap::with_capacity(h.keys_len());
    for (k, v) in h {
        m.entry(Key::from(k.as_str())).or_default().push(s(header_text(v)));
    }
    let m: HashMap<Key, Value> = m.into_iter().map(|(k, v)| (k, Value::List(Arc::new(v)))).collect();
    Value::Map(Map { map: Arc::new(m) })
}

fn conn_value(c: &Conn) -> Value {
    let tls = match &c.tls {
        None => Value::Null,
        Some(t) => {
            let client = match &t.client {
                None => Value::Null,
                Some(cc) => map(vec![
                    ("subject", s(&cc.subject)),
                    ("issuer", s(&cc.issuer)),
                    ("san", Value::List(Arc::new(cc.san.iter().map(s).collect()))),
                    ("serial_number", s(&cc.serial_number)),
                ]),
            };
            map(vec![
                ("version", s(&t.version)),
                ("cipher_suite", s(&t.cipher_suite)),
                ("sni", s(&t.sni)),
                ("client", client),
            ])
        }
    };
    map(vec![
        ("client_ip", s(c.client_ip.to_string())),
        ("client_port", Value::Int(c.client_port.into())),
        ("server_ip", s(c.server_ip.to_string())),
        ("server_port", Value::Int(c.server_port.into())),
        ("tls", tls),
    ])
}

fn query_params(query: &str) -> Value {
    let mut m: HashMap<Key, Vec<Value>> = HashMap::new();
    for (k, v) in QueryPairs::new(query) {
        m.entry(Key::from(url_decode(k))).or_default().push(s(url_decode(v)));
    }
    let m: HashMap<Key, Value> = m.into_iter().map(|(k, v)| (k, Value::List(Arc::new(v)))).collect();
    Value::Map(Map { map: Arc::new(m) })
}

/// A query string's `key=value` pairs, still encoded, in order (empty pairs skipped).
pub(crate) struct QueryPairs<'a>(std::str::Split<'a, char>);

impl<'a> QueryPairs<'a> {
    pub(crate) fn new(query: &'a str) -> QueryPairs<'a> {
        QueryPairs(query.split('&'))
    }
}

impl<'a> Iterator for QueryPairs<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        loop {
            let pair = self.0.next()?;
            if !pair.is_empty() {
                return Some(pair.split_once('=').unwrap_or((pair, "")));
            }
        }
    }
}

fn cookies(h: &HeaderMap, name: http::HeaderName) -> Value {
    let mut m: HashMap<Key, Vec<Value>> = HashMap::new();
    for (k, v) in CookiePairs::new(h, &name) {
        m.entry(Key::from(k)).or_default().push(s(v));
    }
    let m: HashMap<Key, Value> = m.into_iter().map(|(k, v)| (k, Value::List(Arc::new(v)))).collect();
    Value::Map(Map { map: Arc::new(m) })
}

/// The `name=value` pairs of every `name` header (`cookie` or `set-cookie`), in order. Headers
/// that are not text are skipped; when the message has a `set-cookie` header only the first
/// pair of each value counts (the attributes, `Path` or `HttpOnly`, follow it).
pub(crate) struct CookiePairs<'a> {
    values: http::header::ValueIter<'a, http::HeaderValue>,
    parts: Option<std::str::Split<'a, char>>,
    first_only: bool,
}

impl<'a> CookiePairs<'a> {
    pub(crate) fn new(h: &'a HeaderMap, name: &http::HeaderName) -> CookiePairs<'a> {
        CookiePairs {
            values: h.get_all(name).into_iter(),
            parts: None,
            first_only: h.contains_key(http::header::SET_COOKIE),
        }
    }
}

impl<'a> Iterator for CookiePairs<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<(&'a str, &'a str)> {
        loop {
            if let Some(parts) = &mut self.parts {
                if let Some(part) = parts.next() {
                    if self.first_only {
                        self.parts = None;
                    }
                    let part = part.trim();
                    let (k, v) = part.split_once('=').unwrap_or((part, ""));
                    return Some((k, v.trim_matches('"')));
                }
                self.parts = None;
            }
            if let Ok(text) = self.values.next()?.to_str() {
                self.parts = Some(text.split(';'));
            }
        }
    }
}

/// A header value as expressions see it (bytes that are not UTF-8 replaced).
pub(crate) fn header_text(v: &http::HeaderValue) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(v.as_bytes())
}

/// The `Host` header (or the URI's authority), the host without the port, and the port.
pub(crate) fn host_parts<'a>(r: &ReqView<'a>) -> (&'a str, &'a str, i64) {
    let host_header = r
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| r.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    match host_header.rsplit_once(':') {
        Some((h, p))
            if p.parse::<u16>().is_ok() && !h.ends_with(']')
                || h.starts_with('[') && p.parse::<u16>().is_ok() =>
        {
            (host_header, h, p.parse::<i64>().unwrap_or(0))
        }
        _ => (host_header, host_header, if r.scheme == "https" { 443 } else { 80 }),
    }
}

/// `req.url.raw`.
pub(crate) fn raw_url(r: &ReqView<'_>, host_header: &str) -> String {
    format!("{}://{host_header}{}", r.scheme, r.uri.path_and_query().map_or("/", |p| p.as_str()))
}

/// `req.user_agent.raw`.
pub(crate) fn user_agent<'a>(r: &ReqView<'a>) -> &'a str {
    r.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// `req.content_length`.
pub(crate) fn content_length(r: &ReqView<'_>) -> i64 {
    r.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
        .unwrap_or(0)
}

/// `req.content_type`.
pub(crate) fn content_type<'a>(r: &ReqView<'a>) -> &'a str {
    r.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// `req.version`.
pub(crate) fn version_text(r: &ReqView<'_>) -> &'static str {
    match r.version {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    }
}

fn req_value(msg: &Message<'_>) -> Value {
    let Some(r) = &msg.req else { return Value::Null };
    let (host_header, host, port) = host_parts(r);
    let path = r.uri.path();
    let query = r.uri.query().unwrap_or("");
    let raw = raw_url(r, host_header);
    let ua = user_agent(r);
    let content_length = content_length(r);
    let content_type = content_type(r);
    let version = version_text(r);
    map(vec![
        ("method", s(r.method)),
        ("host", s(host)),
        ("version", s(version)),
        ("headers", headers_value(r.headers)),
        ("cookies", cookies(r.headers, http::header::COOKIE)),
        ("user_agent", map(vec![("raw", s(ua))])),
        ("content_length", Value::Int(content_length)),
        ("content_type", s(content_type)),
        (
            "url",
            map(vec![
                ("scheme", s(r.scheme)),
                ("host", s(host)),
                ("port", Value::Int(port)),
                ("path", s(path)),
                ("query", s(query)),
                ("query_params", query_params(query)),
                ("raw", s(raw)),
            ]),
        ),
    ])
}

fn res_value(msg: &Message<'_>) -> Value {
    let Some((status, headers)) = msg.res else { return Value::Null };
    map(vec![
        ("status_code", Value::Int(status.into())),
        ("headers", headers_value(headers)),
        ("cookies", cookies(headers, http::header::SET_COOKIE)),
    ])
}

fn endpoint_value(e: &EndpointInfo) -> Value {
    map(vec![
        ("id", s(&e.id)),
        ("url", s(&e.url)),
        ("proto", s(&e.proto)),
        ("host", s(&e.host)),
        ("port", Value::Int(e.port.into())),
    ])
}

fn time_value(now: SystemTime) -> Value {
    let d = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let ts = chrono::DateTime::from_timestamp(d.as_secs() as i64, d.subsec_nanos()).unwrap_or_default();
    map(vec![("now", Value::Timestamp(ts.fixed_offset()))])
}

/// ngrok's helpers that read the request take only the name; they are rewritten to calls
/// that get the map as their first argument, so the functions themselves stay pure. ngrok's
/// namespaced macros (`base64.encode(`, `hash.sha256(`, ...: [`crate::macros::NAMESPACED`])
/// become calls of the functions that implement them. Only a name not preceded by an
/// identifier character or `.` is rewritten, and never inside a string literal.
pub(crate) fn rewrite_helpers(source: &str) -> String {
    const HELPERS: [(&str, &str); 8] = [
        ("getReqHeader(", "__values(req.headers, "),
        ("hasReqHeader(", "__has(req.headers, "),
        ("getQueryParam(", "__values(req.url.query_params, "),
        ("hasQueryParam(", "__has_key(req.url.query_params, "),
        ("getReqCookie(", "__cookie(req.cookies, "),
        ("hasReqCookie(", "__has_key(req.cookies, "),
        ("getResHeader(", "__values(res.headers, "),
        ("hasResHeader(", "__has(res.headers, "),
    ];
    let mut out = String::with_capacity(source.len() + 32);
    let mut rest = source;
    'scan: while !rest.is_empty() {
        let at_name_start = !out.chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.');
        if at_name_start {
            for (from, to) in HELPERS {
                if rest.starts_with(from) {
                    out.push_str(to);
                    rest = &rest[from.len()..];
                    continue 'scan;
                }
            }
            if let Some((to, len)) = namespaced_call(rest) {
                out.push_str(to);
                out.push('(');
                rest = &rest[len..];
                continue 'scan;
            }
        }
        let c = rest.chars().next().expect("not empty");
        // Text inside string literals is copied as it is.
        if c == '"' || c == '\'' {
            let raw = out.ends_with(['r', 'R']);
            let mut end = rest.len();
            let mut chars = rest.char_indices().skip(1);
            while let Some((i, d)) = chars.next() {
                if d == '\\' && !raw {
                    chars.next();
                } else if d == c {
                    end = i + 1;
                    break;
                }
            }
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// `namespace.function(` (spaces allowed around the `.` and before the `(`) at the start of
/// `s`, when ngrok documents it: the function that implements it, and the length matched.
fn namespaced_call(s: &str) -> Option<(&'static str, usize)> {
    fn ident(s: &str) -> &str {
        let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
        &s[..end]
    }
    fn skip_space(s: &str, i: usize) -> usize {
        i + (s[i..].len() - s[i..].trim_start().len())
    }
    let ns = ident(s);
    if ns.is_empty() || !crate::macros::NAMESPACED.iter().any(|(n, _, _)| *n == ns) {
        return None;
    }
    let mut i = skip_space(s, ns.len());
    s[i..].starts_with('.').then_some(())?;
    i = skip_space(s, i + 1);
    let f = ident(&s[i..]);
    i = skip_space(s, i + f.len());
    s[i..].starts_with('(').then_some(())?;
    let (_, _, to) = crate::macros::NAMESPACED.iter().find(|(n, name, _)| *n == ns && *name == f)?;
    Some((to, i + 1))
}

fn register(ctx: &mut Context<'_>) {
    ctx.add_function(crate::cost::CHARGE, |v: Value| -> cel::ResolveResult { crate::cost::charge(v) });
    ctx.add_function(crate::cost::ITERABLE, |v: Value| -> cel::ResolveResult { crate::cost::iterable(v) });
    ctx.add_function("inCidrRange", |ip: Arc<String>, cidr: Arc<String>| -> Result<bool, ExecutionError> {
        in_cidr(&ip, &cidr).map_err(|e| ExecutionError::function_error("inCidrRange", e))
    });
    ctx.add_function(
        "inCidrRanges",
        |ip: Arc<String>, cidrs: Arc<Vec<Value>>| -> Result<bool, ExecutionError> {
            for c in cidrs.iter() {
                let Value::String(c) = c else {
                    return Err(ExecutionError::function_error(
                        "inCidrRanges",
                        "the list must hold CIDR strings",
                    ));
                };
                if in_cidr(&ip, c).map_err(|e| ExecutionError::function_error("inCidrRanges", e))? {
                    return Ok(true);
                }
            }
            Ok(false)
        },
    );
    ctx.add_function("isPrivateIp", |ip: Arc<String>| -> Result<bool, ExecutionError> {
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| ExecutionError::function_error("isPrivateIp", format!("{ip:?} is not an IP")))?;
        Ok(is_private(ip))
    });
    ctx.add_function("__values", |m: Value, name: Arc<String>| -> cel::ResolveResult {
        let Value::Map(m) = m else { return Ok(Value::List(Arc::new(Vec::new()))) };
        Ok(m.map
            .get(&Key::from(name.to_ascii_lowercase()))
            .or_else(|| m.map.get(&Key::from(name.as_str())))
            .cloned()
            .unwrap_or_else(|| Value::List(Arc::new(Vec::new()))))
    });
    ctx.add_function("__has", |m: Value, name: Arc<String>| -> bool {
        matches!(m, Value::Map(m) if m.map.contains_key(&Key::from(name.to_ascii_lowercase())))
    });
    // `hasQueryParam`, `hasReqCookie`: names as they are written.
    ctx.add_function("__has_key", |m: Value, name: Arc<String>| -> bool {
        matches!(m, Value::Map(m) if m.map.contains_key(&Key::String(name)))
    });
    // `getReqCookie(name)`: the first cookie of that name, `{name, value}`, or null.
    ctx.add_function("__cookie", |m: Value, name: Arc<String>| -> cel::ResolveResult {
        let Value::Map(m) = m else { return Ok(Value::Null) };
        let first = match m.map.get(&Key::String(name.clone())) {
            Some(Value::List(l)) => l.first().cloned(),
            _ => None,
        };
        Ok(match first {
            Some(value) => map(vec![("name", Value::String(name)), ("value", value)]),
            None => Value::Null,
        })
    });
    ctx.add_function("urlEncode", |v: Arc<String>| -> String { url_encode(&v) });
    ctx.add_function("urlDecode", |v: Arc<String>| -> String { url_decode(&v) });
    ctx.add_function("b64encode", |v: Arc<String>| -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(v.as_bytes())
    });
    ctx.add_function("b64decode", |v: Arc<String>| -> cel::ResolveResult {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.as_bytes())
            .map_err(|e| ExecutionError::function_error("b64decode", e))?;
        let text = String::from_utf8(bytes).map_err(|e| ExecutionError::function_error("b64decode", e))?;
        Ok(Value::String(Arc::new(text)))
    });
    // `lower(s)` or `s.lower()`.
    ctx.add_function("lower", |This(v): This<Arc<String>>| -> String { v.to_lowercase() });
    ctx.add_function("upper", |This(v): This<Arc<String>>| -> String { v.to_uppercase() });
    ctx.add_function("trim", |This(v): This<Arc<String>>| -> String { v.trim().to_owned() });
    // ngrok's macros, `sha256` among them.
    crate::macros::register(ctx);
}

/// True when `ip` is inside `cidr` (a bare IP is a /32 or /128).
pub(crate) fn in_cidr(ip: &str, cidr: &str) -> Result<bool, String> {
    let ip: IpAddr = ip.parse().map_err(|_| format!("{ip:?} is not an IP address"))?;
    Ok(Cidr::parse(cidr)?.contains(ip))
}

/// A CIDR block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `fd00::/8` or a bare address.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, bits) = match s.trim().split_once('/') {
            Some((ip, b)) => (ip, Some(b)),
            None => (s.trim(), None),
        };
        let net: IpAddr = ip.parse().map_err(|_| format!("{s:?} is not a CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
        };
        Ok(Cidr { net, bits })
    }

    /// True when `ip` is in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.bits)).unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }
}

pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private(IpAddr::V4(v4)),
            None => {
                v6.is_loopback()
                    || (v6.segments()[0] & 0xfe00) == 0xfc00
                    || (v6.segments()[0] & 0xffc0) == 0xfe80
            }
        },
    }
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_are_rewritten_outside_string_literals_only() {
        assert_eq!(
            rewrite_helpers("getReqHeader('X-A')[0] == 'b'"),
            "__values(req.headers, 'X-A')[0] == 'b'"
        );
        assert_eq!(rewrite_helpers("'getReqHeader(' == x"), "'getReqHeader(' == x");
        assert_eq!(
            rewrite_helpers("hasReqHeader(\"a\") && getQueryParam('q') == ['1']"),
            "__has(req.headers, \"a\") && __values(req.url.query_params, 'q') == ['1']"
        );
        assert_eq!(rewrite_helpers("xgetReqHeader(1)"), "xgetReqHeader(1)");
    }

    #[test]
    fn setting_a_variable_updates_the_cached_context_and_keeps_the_built_values() {
        let program = cel::Program::compile("vars.x").unwrap();
        let needs = Needs { vars: true, req: true, ..Needs::default() };
        crate::with_sample(crate::Phase::HttpRequest, |msg| {
            let vars = Vars::default();
            let x = Arc::new("x".to_owned());
            let held = vars.context(msg, needs);
            assert!(program.execute(&held).is_err(), "nothing set yet");
            // A context an evaluation still holds is left as it was; the next one sees the
            // new value, from the values already built.
            vars.set_user_var(&x, Some(Value::Int(1)));
            assert!(program.execute(&held).is_err());
            let req_before = vars.req.get().cloned();
            drop(held);
            assert_eq!(program.execute(&vars.context(msg, needs)).unwrap(), Value::Int(1));
            assert_eq!(vars.req.get().cloned(), req_before);
            // With no other holder the cached context is changed in place.
            vars.set_user_var(&x, Some(Value::Int(2)));
            assert_eq!(program.execute(&vars.context(msg, needs)).unwrap(), Value::Int(2));
            vars.set_user_var(&x, None);
            assert!(program.execute(&vars.context(msg, needs)).is_err());
            vars.set_user_var(&x, Some(Value::Int(3)));
            let kept = vars.keeping_user_vars();
            assert_eq!(program.execute(&kept.context(msg, needs)).unwrap(), Value::Int(3));
            kept.clear_user_vars();
            assert_eq!(kept.user_var_count(), 0);
            assert!(program.execute(&kept.context(msg, needs)).is_err());
        });
    }

    #[test]
    fn cidrs_match_v4_v6_and_mapped_addresses() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("fd00::/8").unwrap().contains("fd12::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("1.2.3.4").unwrap().contains("1.2.3.4".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nonsense/8").is_err());
        assert!(is_private("192.168.1.1".parse().unwrap()) && is_private("fd00::1".parse().unwrap()));
        assert!(!is_private("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn url_decoding_handles_escapes_and_plus() {
        assert_eq!(url_decode("a%20b+c%2F"), "a b c/");
        assert_eq!(url_decode("100%"), "100%");
        assert_eq!(url_encode("a b/é"), "a%20b%2F%C3%A9");
    }
}
