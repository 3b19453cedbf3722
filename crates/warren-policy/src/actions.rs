//! Actions: each one's configuration, checked when the policy is compiled, and what it does
//! to a connection, request or response. Terminating actions return a [`Verdict`].

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::breaker::{Breaker, CircuitTicket};
use crate::ratelimit::SlidingWindow;
use crate::vars::{Cidr, Needs};
use crate::{CompileEnv, LogEntry, Phase, Run, Verdict, compile_expr};

/// A compiled action.
pub(crate) enum Action {
    RestrictIps {
        allow: Vec<Cidr>,
        deny: Vec<Cidr>,
        enforce: bool,
    },
    BasicAuth {
        credentials: Vec<[u8; 32]>,
        realm: String,
        enforce: bool,
    },
    RateLimit {
        window: SlidingWindow,
        bucket: Vec<crate::cost::Compiled>,
        needs: Needs,
    },
    AddHeaders(Vec<(HeaderName, Template)>),
    RemoveHeaders(Vec<HeaderName>),
    UrlRewrite {
        from: regex::Regex,
        to: Template,
    },
    Redirect {
        from: Option<regex::Regex>,
        to: Template,
        status: u16,
        headers: Vec<(HeaderName, Template)>,
    },
    CustomResponse {
        status: u16,
        body: Template,
        headers: Vec<(HeaderName, Template)>,
    },
    Deny {
        status: u16,
    },
    CloseConnection,
    Log {
        metadata: Vec<(String, Template)>,
    },
    /// Applied by the edge's TLS front; accepted here so the document compiles.
    TerminateTls,
    VerifyWebhook {
        provider: crate::webhook::Provider,
        secret: String,
        enforce: bool,
    },
    JwtValidation(Box<crate::jwt::Validator>),
    OpenidConnect(std::sync::Arc<crate::oidc::Oidc>),
    CircuitBreaker {
        breaker: std::sync::Arc<Breaker>,
        enforce: bool,
    },
    CompressResponse(Vec<crate::Encoding>),
    ForwardInternal(crate::ForwardInternal),
    /// `set-vars`: each `(name, value)` in order.
    SetVars(Vec<(std::sync::Arc<String>, VarValue)>),
}

/// The most variables the set-vars actions of one phase of one policy may set (checked at
/// compile time: the names are in the document).
pub(crate) const MAX_VARS: usize = 64;
/// Assignments the set-vars actions of one phase of a policy may make (a name set again
/// counts again).
pub(crate) const MAX_ASSIGNMENTS: usize = 256;
/// The longest string (or bytes) a variable may hold. A literal longer than this is refused at
/// compile time; a value that renders longer at run time refuses the message (see
/// [`too_big`]), since leaving the variable unset or cut could change what later rules decide.
pub(crate) const MAX_VAR_BYTES: usize = 16 * 1024;

/// A set-vars value as written: constants are built once, at compile time.
pub(crate) enum VarValue {
    Const(cel::objects::Value),
    /// Exactly `${expr}`: the expression's value, of its own type.
    Expr(crate::cost::Compiled, Needs),
    /// A string with `${...}` in it: always a string.
    Text(Template),
    List(Vec<VarValue>),
    Map(Vec<(cel::objects::Key, VarValue)>),
}

/// Why a set-vars value could not be made.
enum VarFailure {
    /// An expression failed: the variable is left unset.
    Error,
    /// The message's step budget ran out.
    Budget,
    /// A string over [`MAX_VAR_BYTES`].
    TooBig,
}

impl VarValue {
    fn compile(v: &Json, phase: Phase, at: &str) -> Result<VarValue, String> {
        use cel::objects::Value;
        let too_long = |len: usize| {
            format!("{at}: a string of {len} bytes; a variable's value is at most {MAX_VAR_BYTES} bytes")
        };
        Ok(match v {
            Json::Null => VarValue::Const(Value::Null),
            Json::Bool(b) => VarValue::Const(Value::Bool(*b)),
            Json::Number(n) => VarValue::Const(match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Value::Int(i),
                (None, Some(u), _) => Value::UInt(u),
                (_, _, Some(f)) => Value::Float(f),
                _ => return Err(format!("{at}: {n} is not a number CEL has")),
            }),
            Json::String(s) if !s.contains("${") => {
                if s.len() > MAX_VAR_BYTES {
                    return Err(too_long(s.len()));
                }
                VarValue::Const(Value::String(std::sync::Arc::new(s.clone())))
            }
            Json::String(s) => {
                let whole = s
                    .strip_prefix("${")
                    .filter(|inner| inner.ends_with('}') && closing_brace(inner) == Some(inner.len() - 1))
                    .map(|inner| &inner[..inner.len() - 1]);
                match whole {
                    Some(expr) => {
                        let program = compile_expr(expr, phase).map_err(|e| format!("{at}: {e}"))?;
                        let needs = Needs::of(&program);
                        VarValue::Expr(program, needs)
                    }
                    None => {
                        let t = Template::compile(s, phase).map_err(|e| format!("{at}: {e}"))?;
                        if t.literal_len() > MAX_VAR_BYTES {
                            return Err(too_long(t.literal_len()));
                        }
                        VarValue::Text(t)
                    }
                }
            }
            Json::Array(items) => {
                let items = items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| VarValue::compile(x, phase, &format!("{at}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                if items.iter().all(|x| matches!(x, VarValue::Const(_))) {
                    let values = items
                        .into_iter()
                        .map(|x| match x {
                            VarValue::Const(v) => v,
                            _ => unreachable!("all constants"),
                        })
                        .collect();
                    VarValue::Const(Value::List(std::sync::Arc::new(values)))
                } else {
                    VarValue::List(items)
                }
            }
            Json::Object(entries) => {
                let entries = entries
                    .iter()
                    .map(|(k, x)| {
                        let key = cel::objects::Key::from(k.as_str());
                        Ok((key, VarValue::compile(x, phase, &format!("{at}.{k}"))?))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                if entries.iter().all(|(_, x)| matches!(x, VarValue::Const(_))) {
                    let map = entries
                        .into_iter()
                        .map(|(k, x)| match x {
                            VarValue::Const(v) => (k, v),
                            _ => unreachable!("all constants"),
                        })
                        .collect();
                    VarValue::Const(Value::Map(cel::objects::Map { map: std::sync::Arc::new(map) }))
                } else {
                    VarValue::Map(entries)
                }
            }
        })
    }

    fn needs(&self) -> Needs {
        match self {
            VarValue::Const(_) => Needs::default(),
            VarValue::Expr(_, n) => *n,
            VarValue::Text(t) => t.needs,
            VarValue::List(items) => items.iter().fold(Needs::default(), |n, x| n.union(x.needs())),
            VarValue::Map(entries) => entries.iter().fold(Needs::default(), |n, (_, x)| n.union(x.needs())),
        }
    }

    fn eval(&self, run: &Run<'_>) -> Result<cel::objects::Value, VarFailure> {
        use cel::objects::Value;
        // Every value is measured whole (a list holding one variable twice counts it twice),
        // so no variable built from others can grow past the limit, however they nest.
        let checked = |v: Value| match deep_size(&v, 0) {
            Some(n) if n <= MAX_VAR_BYTES => Ok(v),
            _ => Err(VarFailure::TooBig),
        };
        match self {
            VarValue::Const(v) => Ok(v.clone()),
            VarValue::Expr(program, needs) => {
                let ctx = run.vars.context(&run.msg, *needs);
                match crate::execute(program, &ctx) {
                    Ok(v) => checked(v),
                    Err(crate::cost::Failure::Budget) => Err(VarFailure::Budget),
                    Err(_) => Err(VarFailure::Error),
                }
            }
            VarValue::Text(t) => {
                let (text, budget) = t.render_metered(run);
                if budget {
                    return Err(VarFailure::Budget);
                }
                checked(Value::String(std::sync::Arc::new(text)))
            }
            VarValue::List(items) => {
                let values = items.iter().map(|x| x.eval(run)).collect::<Result<Vec<_>, _>>()?;
                Ok(Value::List(std::sync::Arc::new(values)))
            }
            VarValue::Map(entries) => {
                let map = entries
                    .iter()
                    .map(|(k, x)| Ok((k.clone(), x.eval(run)?)))
                    .collect::<Result<std::collections::HashMap<_, _>, VarFailure>>()?;
                Ok(Value::Map(cel::objects::Map { map: std::sync::Arc::new(map) }))
            }
        }
    }
}

/// Deepest nesting of lists and maps a variable may hold.
const MAX_VAR_DEPTH: usize = 16;

/// A value's size as a variable counts it: the bytes of its strings and keys, 8 per other
/// scalar and per element; `None` past [`MAX_VAR_BYTES`] or [`MAX_VAR_DEPTH`] (the walk stops
/// there, so a value shared many times over is never walked whole).
fn deep_size(v: &cel::objects::Value, depth: usize) -> Option<usize> {
    use cel::objects::{Key, Value};
    if depth > MAX_VAR_DEPTH {
        return None;
    }
    let n = match v {
        Value::String(s) => s.len(),
        Value::Bytes(b) => b.len(),
        Value::List(l) => {
            let mut n = 8usize;
            for x in l.iter() {
                n = n.checked_add(8 + deep_size(x, depth + 1)?)?;
                if n > MAX_VAR_BYTES {
                    return None;
                }
            }
            n
        }
        Value::Map(m) => {
            let mut n = 8usize;
            for (k, x) in m.map.iter() {
                let key = match k {
                    Key::String(s) => s.len(),
                    _ => 8,
                };
                n = n.checked_add(8 + key + deep_size(x, depth + 1)?)?;
                if n > MAX_VAR_BYTES {
                    return None;
                }
            }
            n
        }
        _ => 8,
    };
    (n <= MAX_VAR_BYTES).then_some(n)
}

/// `set-vars`' config: `vars`, a list of maps of exactly one key each, `- name: value`.
fn set_vars(config: &Json, phase: Phase) -> Result<Vec<(std::sync::Arc<String>, VarValue)>, String> {
    let shape = "a list of maps of one key each, `- name: value`";
    let obj = match config {
        Json::Object(o) => o,
        Json::Null => return Err(format!("vars is required: {shape}")),
        other => return Err(format!("invalid config: expected a map with vars, not {}", brief(other))),
    };
    if let Some(k) = obj.keys().find(|k| *k != "vars") {
        return Err(format!("invalid config: unknown field `{k}`, expected `vars`"));
    }
    let items = match obj.get("vars") {
        None => return Err(format!("vars is required: {shape}")),
        Some(Json::Array(items)) => items,
        Some(other) => return Err(format!("vars must be {shape}, not {}", brief(other))),
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let (name, value) = match item {
            Json::Object(m) if m.len() == 1 => m.iter().next().expect("one entry"),
            other => {
                return Err(format!(
                    "vars[{i}] must be a map of exactly one key (the variable's name) to its value, not {}",
                    brief(other)
                ));
            }
        };
        let ident = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident {
            return Err(format!(
                "vars[{i}]: {name:?} is not a variable name (a letter or _, then letters, digits or _)"
            ));
        }
        let value = VarValue::compile(value, phase, &format!("vars[{i}].{name}"))?;
        out.push((std::sync::Arc::new(name.clone()), value));
    }
    Ok(out)
}

/// A config value in an error message, cut short.
fn brief(v: &Json) -> String {
    let text = v.to_string();
    match text.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

/// What a message gets when a set-vars value is over [`MAX_VAR_BYTES`]: refused, as when the
/// step budget runs out.
fn too_big(phase: Phase, name: &str) -> Verdict {
    match phase {
        Phase::TcpConnect => Verdict::Close,
        Phase::HttpRequest | Phase::HttpResponse => response(
            500,
            "text/plain; charset=utf-8",
            format!(
                "This endpoint's traffic policy set the variable {name} to a value over {MAX_VAR_BYTES} bytes for this request, so the request was refused.\n\nERR_WARREN_POLICY_VARS\n"
            ),
        ),
    }
}

/// Header and URI changes a rule made, applied after it ran.
#[derive(Default)]
pub(crate) struct Changes {
    pub(crate) remove: Vec<HeaderName>,
    pub(crate) add: Vec<(HeaderName, HeaderValue)>,
    uri: Option<http::Uri>,
    /// Circuit breakers the request passed: their outcome is reported by the caller.
    tickets: Vec<CircuitTicket>,
    compress: Option<Vec<crate::Encoding>>,
}

impl Changes {
    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty()
            && self.add.is_empty()
            && self.uri.is_none()
            && self.tickets.is_empty()
            && self.compress.is_none()
    }

    /// True when the message the rules see changed (not only what the caller is told).
    pub(crate) fn changes_message(&self) -> bool {
        !self.remove.is_empty() || !self.add.is_empty() || self.uri.is_some()
    }

    pub(crate) fn apply_request(self, req: &mut http::request::Parts) {
        for n in &self.remove {
            req.headers.remove(n);
        }
        for (n, v) in self.add {
            req.headers.append(n, v);
        }
        if let Some(u) = self.uri {
            req.uri = u;
        }
        if !self.tickets.is_empty() {
            match req.extensions.get_mut::<crate::CircuitTickets>() {
                Some(t) => t.0.extend(self.tickets),
                None => {
                    req.extensions.insert(crate::CircuitTickets(self.tickets));
                }
            }
        }
    }

    pub(crate) fn apply_response(self, res: &mut http::response::Parts) {
        for n in &self.remove {
            res.headers.remove(n);
        }
        for (n, v) in self.add {
            res.headers.append(n, v);
        }
        // A later compress-response replaces an earlier one.
        if let Some(c) = self.compress {
            res.extensions.insert(crate::CompressResponse(c));
        }
    }
}

/// A config string with `${expression}` parts.
pub(crate) struct Template {
    parts: Vec<Part>,
    needs: Needs,
}

enum Part {
    Text(String),
    Expr(crate::cost::Compiled),
}

impl Template {
    pub(crate) fn compile(s: &str, phase: Phase) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut needs = Needs::default();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = closing_brace(after).ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
            let program = compile_expr(&after[..end], phase)?;
            needs = needs.union(Needs::of(&program));
            parts.push(Part::Expr(program));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts, needs })
    }

    /// The bytes of its text outside `${...}`.
    fn literal_len(&self) -> usize {
        self.parts.iter().map(|p| if let Part::Text(t) = p { t.len() } else { 0 }).sum()
    }

    fn render(&self, run: &Run<'_>) -> String {
        self.render_metered(run).0
    }

    /// The text, and whether an expression ran out of the message's step budget.
    fn render_metered(&self, run: &Run<'_>) -> (String, bool) {
        let mut out = String::new();
        let mut over_budget = false;
        let ctx = (!self.parts.iter().all(|p| matches!(p, Part::Text(_))))
            .then(|| run.vars.context(&run.msg, self.needs));
        for p in &self.parts {
            match (p, &ctx) {
                (Part::Text(t), _) => out.push_str(t),
                // An expression that fails at run time (a missing header) renders as empty.
                (Part::Expr(e), Some(ctx)) => match crate::execute(e, ctx) {
                    Ok(v) => out.push_str(&value_text(&v)),
                    Err(crate::cost::Failure::Budget) => over_budget = true,
                    Err(_) => {}
                },
                (Part::Expr(_), None) => {}
            }
        }
        (out, over_budget)
    }
}

/// The `}` that closes an interpolation, skipping braces inside string literals and maps.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0;
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '{') => depth += 1,
            (None, '}') if depth == 0 => return Some(i),
            (None, '}') => depth -= 1,
            _ => {}
        }
    }
    None
}

/// Longest text one interpolated expression renders to; the rest is cut (a list can hold one
/// variable many times over, and rendering must not follow it whole).
pub(crate) const MAX_RENDERED: usize = 64 * 1024;

fn value_text(v: &cel::objects::Value) -> String {
    let mut out = String::new();
    push_text(&mut out, v, 0);
    out
}

/// Appends `v`'s text to `out`, stopping at [`MAX_RENDERED`] bytes of it.
fn push_text(out: &mut String, v: &cel::objects::Value, depth: usize) {
    use cel::objects::Value;
    let room = MAX_RENDERED.saturating_sub(out.len());
    if room == 0 || depth > MAX_VAR_DEPTH {
        return;
    }
    let mut push = |t: &str| {
        let mut end = t.len().min(room);
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        out.push_str(&t[..end]);
    };
    match v {
        Value::String(s) => push(s),
        Value::Int(i) => push(&i.to_string()),
        Value::UInt(u) => push(&u.to_string()),
        Value::Float(f) => push(&f.to_string()),
        Value::Bool(b) => push(&b.to_string()),
        Value::Null => {}
        Value::List(l) => {
            for (i, x) in l.iter().enumerate() {
                if out.len() >= MAX_RENDERED {
                    return;
                }
                if i > 0 {
                    out.push(',');
                }
                push_text(out, x, depth + 1);
            }
        }
        Value::Timestamp(t) => push(&t.to_rfc3339()),
        other => {
            let t = format!("{other:?}");
            push(&t)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestrictIpsConfig {
    #[serde(default = "yes")]
    enforce: bool,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    ip_policies: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicAuthConfig {
    credentials: Vec<String>,
    #[serde(default)]
    realm: Option<String>,
    #[serde(default = "yes")]
    enforce: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitConfig {
    #[serde(default)]
    name: String,
    #[serde(default)]
    algorithm: Option<String>,
    capacity: u64,
    rate: String,
    #[serde(default)]
    bucket_key: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadersConfig {
    headers: serde_json::Map<String, Json>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveHeadersConfig {
    headers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RewriteConfig {
    from: String,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedirectConfig {
    #[serde(default)]
    from: Option<String>,
    to: String,
    #[serde(default)]
    status_code: Option<u16>,
    #[serde(default)]
    headers: serde_json::Map<String, Json>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForwardInternalConfig {
    url: String,
    #[serde(default)]
    binding: Option<String>,
    #[serde(default)]
    on_error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CustomResponseConfig {
    #[serde(default)]
    status_code: Option<u16>,
    #[serde(default, alias = "content")]
    body: Option<String>,
    #[serde(default)]
    headers: serde_json::Map<String, Json>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyConfig {
    #[serde(default)]
    status_code: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyWebhookConfig {
    provider: String,
    secret: String,
    #[serde(default = "yes")]
    enforce: bool,
    /// For the generic `hmac` provider: the header carrying the signature.
    #[serde(default)]
    header: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogConfig {
    #[serde(default)]
    metadata: serde_json::Map<String, Json>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CircuitBreakerConfig {
    #[serde(default)]
    error_threshold: Option<f64>,
    #[serde(default)]
    volume_threshold: Option<u64>,
    #[serde(default)]
    window_duration: Option<String>,
    #[serde(default)]
    tripped_duration: Option<String>,
    #[serde(default)]
    num_buckets: Option<u64>,
    #[serde(default = "yes")]
    enforce: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompressResponseConfig {
    #[serde(default)]
    algorithms: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

/// A duration setting of 1 s to 2 min (the circuit breaker's).
fn breaker_duration(name: &str, given: Option<&str>) -> Result<Duration, String> {
    let d = given.map(parse_duration).transpose()?.unwrap_or(Duration::from_secs(10));
    if !(Duration::from_secs(1)..=Duration::from_secs(120)).contains(&d) {
        return Err(format!("{name} must be between 1s and 2m"));
    }
    Ok(d)
}

fn config<T: serde::de::DeserializeOwned>(v: &Json) -> Result<T, String> {
    let v = if v.is_null() { Json::Object(Default::default()) } else { v.clone() };
    serde_json::from_value(v).map_err(|e| format!("invalid config: {e}"))
}

fn status(code: Option<u16>, default: u16) -> Result<u16, String> {
    let c = code.unwrap_or(default);
    if (100..=599).contains(&c) { Ok(c) } else { Err(format!("status_code {c} is not an HTTP status")) }
}

fn header_templates(
    m: &serde_json::Map<String, Json>,
    phase: Phase,
) -> Result<Vec<(HeaderName, Template)>, String> {
    m.iter()
        .map(|(k, v)| {
            let name =
                HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("{k:?} is not a header name"))?;
            let text = match v {
                Json::String(s) => s.clone(),
                Json::Number(n) => n.to_string(),
                Json::Bool(b) => b.to_string(),
                other => return Err(format!("header {k}: the value must be a string, not {other}")),
            };
            Ok((name, Template::compile(&text, phase)?))
        })
        .collect()
}

/// `forward-internal`'s target: `http(s)://NAME.internal` from `on_http_request`,
/// `tcp://NAME.internal:PORT` or `tls://NAME.internal[:443]` from `on_tcp_connect` (a path is
/// refused: the internal endpoint is named by its URL), binding `internal`, `on_error` `halt`
/// or `continue`.
fn forward_internal(c: &ForwardInternalConfig, phase: Phase) -> Result<crate::ForwardInternal, String> {
    let (scheme, rest) =
        c.url.split_once("://").ok_or_else(|| format!("url {:?}: http(s)://NAME.internal", c.url))?;
    let scheme = match (scheme, phase) {
        ("http", Phase::HttpRequest) => "http",
        ("https", Phase::HttpRequest) => "https",
        ("tcp", Phase::TcpConnect) => "tcp",
        ("tls", Phase::TcpConnect) => "tls",
        (s @ ("http" | "https"), _) => {
            return Err(format!("url {:?}: an {s} internal endpoint is reached from on_http_request", c.url));
        }
        (s @ ("tcp" | "tls"), _) => {
            return Err(format!("url {:?}: a {s} internal endpoint is reached from on_tcp_connect", c.url));
        }
        (other, _) => {
            return Err(format!(
                "url {:?}: scheme {other} (internal endpoints here are http, https, tcp or tls)",
                c.url
            ));
        }
    };
    let rest = rest.trim_end_matches('/').to_ascii_lowercase();
    // tcp names a port; tls defaults to 443 (the only port tls endpoints have here).
    let (name, port) = match (scheme, rest.rsplit_once(':')) {
        ("tcp", Some((n, p))) => (n.to_owned(), p.parse::<u16>().ok().filter(|p| *p != 0)),
        ("tcp", None) => (rest.clone(), None),
        ("tls", Some((n, "443"))) => (n.to_owned(), Some(443)),
        ("tls", None) => (rest.clone(), Some(443)),
        (_, _) => (rest.clone(), None),
    };
    let label_ok =
        |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !name.ends_with(".internal") || !name.split('.').all(label_ok) {
        return Err(format!("url {:?}: an internal endpoint's URL, {scheme}://NAME.internal", c.url));
    }
    let host = match scheme {
        "tcp" => {
            let port = port.ok_or_else(|| format!("url {:?}: tcp://NAME.internal:PORT", c.url))?;
            format!("{name}:{port}")
        }
        "tls" if port.is_none() => return Err(format!("url {:?}: tls://NAME.internal (port 443)", c.url)),
        _ => name,
    };
    match c.binding.as_deref() {
        None | Some("internal") => {}
        Some(b) => return Err(format!("binding {b:?}: forward-internal reaches internal endpoints only")),
    }
    let continue_on_error = match c.on_error.as_deref() {
        None | Some("halt") => false,
        Some("continue") => true,
        Some(o) => return Err(format!("on_error {o:?}: halt or continue")),
    };
    Ok(crate::ForwardInternal { scheme, host, continue_on_error })
}

fn only_in(kind: &str, phase: Phase, allowed: &[Phase]) -> Result<(), String> {
    if allowed.contains(&phase) {
        return Ok(());
    }
    let names: Vec<&str> = allowed.iter().map(|p| p.name()).collect();
    Err(format!("{kind} can be used in {} only", names.join(" and ")))
}

impl Action {
    pub(crate) fn compile(
        doc: &crate::document::ActionDoc,
        phase: Phase,
        env: &CompileEnv,
    ) -> Result<Action, String> {
        use Phase::*;
        let kind = doc.kind.as_str();
        Ok(match kind {
            "restrict-ips" => {
                let c: RestrictIpsConfig = config(&doc.config)?;
                let parse =
                    |list: &[String]| list.iter().map(|s| Cidr::parse(s)).collect::<Result<Vec<_>, _>>();
                let mut allow = parse(&c.allow)?;
                let mut deny = parse(&c.deny)?;
                for id in &c.ip_policies {
                    let (a, d) = env
                        .ip_policies
                        .get(id)
                        .ok_or_else(|| format!("no IP policy {id:?} in this account"))?;
                    allow.extend(a);
                    deny.extend(d);
                }
                if allow.is_empty() && deny.is_empty() {
                    return Err("give allow, deny or ip_policies".into());
                }
                Action::RestrictIps { allow, deny, enforce: c.enforce }
            }
            "basic-auth" => {
                only_in(kind, phase, &[HttpRequest])?;
                let c: BasicAuthConfig = config(&doc.config)?;
                if c.credentials.is_empty() {
                    return Err("credentials must list at least one \"user:password\"".into());
                }
                let mut credentials = Vec::new();
                for cred in &c.credentials {
                    let Some((user, pass)) = cred.split_once(':') else {
                        return Err("each credential is \"user:password\"".into());
                    };
                    if user.is_empty() || pass.len() < 8 || pass.len() > 128 {
                        return Err(format!(
                            "credential for {user:?}: the password must be 8 to 128 characters"
                        ));
                    }
                    credentials.push(digest(cred.as_bytes()));
                }
                Action::BasicAuth {
                    credentials,
                    realm: c.realm.unwrap_or_else(|| "warren".into()),
                    enforce: c.enforce,
                }
            }
            "rate-limit" => {
                only_in(kind, phase, &[HttpRequest])?;
                let c: RateLimitConfig = config(&doc.config)?;
                if c.algorithm.as_deref().is_some_and(|a| a != "sliding_window") {
                    return Err("algorithm must be sliding_window".into());
                }
                let rate = parse_duration(&c.rate)?;
                if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&rate) {
                    return Err("rate must be between 1s and 24h".into());
                }
                if c.capacity == 0 {
                    return Err("capacity must be at least 1".into());
                }
                let mut needs = Needs::default();
                let mut bucket = Vec::new();
                for key in &c.bucket_key {
                    let p = compile_expr(key, phase)?;
                    needs = needs.union(Needs::of(&p));
                    bucket.push(p);
                }
                let _ = c.name;
                Action::RateLimit { window: SlidingWindow::new(c.capacity, rate), bucket, needs }
            }
            "add-headers" => {
                only_in(kind, phase, &[HttpRequest, HttpResponse])?;
                let c: HeadersConfig = config(&doc.config)?;
                Action::AddHeaders(header_templates(&c.headers, phase)?)
            }
            "remove-headers" => {
                only_in(kind, phase, &[HttpRequest, HttpResponse])?;
                let c: RemoveHeadersConfig = config(&doc.config)?;
                let names = c
                    .headers
                    .iter()
                    .map(|h| {
                        HeaderName::from_bytes(h.as_bytes())
                            .map_err(|_| format!("{h:?} is not a header name"))
                    })
                    .collect::<Result<_, _>>()?;
                Action::RemoveHeaders(names)
            }
            "url-rewrite" => {
                only_in(kind, phase, &[HttpRequest])?;
                let c: RewriteConfig = config(&doc.config)?;
                let from = regex::Regex::new(&c.from)
                    .map_err(|e| format!("from is not a regular expression: {e}"))?;
                Action::UrlRewrite { from, to: Template::compile(&c.to, phase)? }
            }
            "redirect" => {
                only_in(kind, phase, &[HttpRequest, HttpResponse])?;
                let c: RedirectConfig = config(&doc.config)?;
                let from = c
                    .from
                    .as_deref()
                    .map(regex::Regex::new)
                    .transpose()
                    .map_err(|e| format!("from is not a regular expression: {e}"))?;
                let status = status(c.status_code, 302)?;
                if !(300..=399).contains(&status) {
                    return Err(format!("status_code {status} is not a redirect (3xx)"));
                }
                Action::Redirect {
                    from,
                    to: Template::compile(&c.to, phase)?,
                    status,
                    headers: header_templates(&c.headers, phase)?,
                }
            }
            "forward-internal" => {
                only_in(kind, phase, &[HttpRequest, TcpConnect])?;
                let c: ForwardInternalConfig = config(&doc.config)?;
                Action::ForwardInternal(forward_internal(&c, phase)?)
            }
            "custom-response" => {
                only_in(kind, phase, &[HttpRequest, HttpResponse])?;
                let c: CustomResponseConfig = config(&doc.config)?;
                Action::CustomResponse {
                    status: status(c.status_code, 200)?,
                    body: Template::compile(c.body.as_deref().unwrap_or(""), phase)?,
                    headers: header_templates(&c.headers, phase)?,
                }
            }
            "deny" => {
                let c: DenyConfig = config(&doc.config)?;
                Action::Deny { status: status(c.status_code, 403)? }
            }
            "close-connection" => {
                let _: DenyConfig = config(&Json::Null)?;
                Action::CloseConnection
            }
            "log" => {
                let c: LogConfig = config(&doc.config)?;
                let metadata = c
                    .metadata
                    .iter()
                    .map(|(k, v)| {
                        let text = match v {
                            Json::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        Ok((k.clone(), Template::compile(&text, phase)?))
                    })
                    .collect::<Result<_, String>>()?;
                Action::Log { metadata }
            }
            "terminate-tls" => {
                only_in(kind, phase, &[TcpConnect])?;
                Action::TerminateTls
            }
            "verify-webhook" => {
                only_in(kind, phase, &[HttpRequest])?;
                let c: VerifyWebhookConfig = config(&doc.config)?;
                if c.secret.is_empty() {
                    return Err("secret is empty".into());
                }
                let provider = crate::webhook::Provider::parse(&c.provider, c.header.as_deref())?;
                Action::VerifyWebhook { provider, secret: c.secret, enforce: c.enforce }
            }
            "jwt-validation" => {
                only_in(kind, phase, &[HttpRequest])?;
                let c: crate::jwt::Config = config(&doc.config)?;
                Action::JwtValidation(Box::new(crate::jwt::Validator::compile(c, &env.jwks)?))
            }
            "openid-connect" | "oidc" => {
                only_in(kind, phase, &[HttpRequest])?;
                let c: crate::oidc::Config = config(&doc.config)?;
                let o = crate::oidc::Oidc::compile(c, &env.oidc, env.cookie_secret.as_ref())?;
                Action::OpenidConnect(std::sync::Arc::new(o))
            }
            "circuit-breaker" => {
                only_in(kind, phase, &[HttpRequest])?;
                let c: CircuitBreakerConfig = config(&doc.config)?;
                let error_threshold = c.error_threshold.unwrap_or(0.5);
                if !(0.0..=1.0).contains(&error_threshold) {
                    return Err(format!(
                        "error_threshold must be between 0.0 and 1.0, not {error_threshold}"
                    ));
                }
                let volume_threshold = c.volume_threshold.unwrap_or(10);
                if !(1..=2_000_000_000).contains(&volume_threshold) {
                    return Err("volume_threshold must be between 1 and 2000000000".into());
                }
                if c.num_buckets.is_some_and(|n| n != u64::from(crate::breaker::BUCKETS)) {
                    return Err(format!("num_buckets is fixed at {}", crate::breaker::BUCKETS));
                }
                let settings = crate::breaker::Settings {
                    error_threshold,
                    volume_threshold,
                    window: breaker_duration("window_duration", c.window_duration.as_deref())?,
                    tripped: breaker_duration("tripped_duration", c.tripped_duration.as_deref())?,
                };
                Action::CircuitBreaker {
                    breaker: std::sync::Arc::new(Breaker::new(settings)),
                    enforce: c.enforce,
                }
            }
            "compress-response" => {
                only_in(kind, phase, &[HttpResponse])?;
                let c: CompressResponseConfig = config(&doc.config)?;
                let names =
                    c.algorithms.unwrap_or_else(|| vec!["gzip".into(), "deflate".into(), "br".into()]);
                if names.is_empty() {
                    return Err("algorithms is empty; leave it out for gzip, deflate and br".into());
                }
                let mut list = Vec::new();
                for n in &names {
                    let e = match n.as_str() {
                        "gzip" => crate::Encoding::Gzip,
                        "deflate" => crate::Encoding::Deflate,
                        "br" => crate::Encoding::Br,
                        "compress" => {
                            return Err("algorithm \"compress\" (LZW) is not supported by warren, and no current browser asks for it; list gzip, deflate or br".into());
                        }
                        other => return Err(format!("unknown algorithm {other:?}; use gzip, deflate or br")),
                    };
                    if list.contains(&e) {
                        return Err(format!("algorithm {n:?} is listed twice"));
                    }
                    list.push(e);
                }
                Action::CompressResponse(list)
            }
            "set-vars" => Action::SetVars(set_vars(&doc.config, phase)?),
            "oauth" | "saml" => {
                return Err(format!(
                    "{kind} is not supported by warren yet; the endpoint is refused rather than left unprotected"
                ));
            }
            other => return Err(format!("unknown action type {other:?}")),
        })
    }

    pub(crate) fn needs(&self) -> Needs {
        let mut n = Needs::default();
        let mut add = |t: &Template| n = n.union(t.needs);
        match self {
            Action::RateLimit { needs, .. } => return *needs,
            Action::AddHeaders(h) => h.iter().for_each(|(_, t)| add(t)),
            Action::UrlRewrite { to, .. } => add(to),
            Action::Redirect { to, headers, .. } => {
                add(to);
                headers.iter().for_each(|(_, t)| add(t));
            }
            Action::CustomResponse { body, headers, .. } => {
                add(body);
                headers.iter().for_each(|(_, t)| add(t));
            }
            Action::Log { metadata } => metadata.iter().for_each(|(_, t)| add(t)),
            Action::SetVars(items) => {
                return items.iter().fold(Needs::default(), |n, (_, v)| n.union(v.needs()));
            }
            _ => {}
        }
        // The URL-matching actions read the request's URL.
        if matches!(
            self,
            Action::UrlRewrite { .. }
                | Action::Redirect { .. }
                | Action::BasicAuth { .. }
                | Action::OpenidConnect(_)
        ) {
            n.req = true;
        }
        n
    }

    /// The variables a set-vars action sets.
    pub(crate) fn var_names(&self) -> Vec<std::sync::Arc<String>> {
        match self {
            Action::SetVars(items) => items.iter().map(|(n, _)| n.clone()).collect(),
            _ => Vec::new(),
        }
    }

    /// Runs the action; `Some` ends the chain. `changes` is `None` in `on_tcp_connect`.
    pub(crate) fn run(
        &self,
        run: &mut Run<'_>,
        rule: &str,
        changes: &mut Option<Changes>,
        res_status: Option<u16>,
        mono: Instant,
    ) -> Option<Verdict> {
        let http = changes.is_some();
        let phase = match (http, res_status) {
            (false, _) => Phase::TcpConnect,
            (true, None) => Phase::HttpRequest,
            (true, Some(_)) => Phase::HttpResponse,
        };
        match self {
            Action::RestrictIps { allow, deny, enforce } => {
                let ip = run.msg.conn.client_ip;
                if ip_allowed(ip, allow, deny) {
                    return None;
                }
                run.logs.push(LogEntry {
                    rule: rule.to_owned(),
                    metadata: note("restrict-ips", &format!("{ip} refused")),
                });
                if !*enforce {
                    return None;
                }
                Some(if http {
                    response(403, "text/plain", format!("Access from {ip} is not allowed.\n"))
                } else {
                    Verdict::Close
                })
            }
            Action::BasicAuth { credentials, realm, enforce } => {
                let req = run.msg.req.as_ref()?;
                let given = req
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
                    .and_then(|b| {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD.decode(b.trim()).ok()
                    });
                if let Some(given) = given {
                    let d = digest(&given);
                    // Every credential is compared, in constant time, so timing tells nothing.
                    let mut ok = subtle::Choice::from(0u8);
                    for c in credentials {
                        ok |= subtle::ConstantTimeEq::ct_eq(&c[..], &d[..]);
                    }
                    if bool::from(ok) {
                        return None;
                    }
                }
                if !*enforce {
                    return None;
                }
                let mut r = http::Response::new(Bytes::from_static(b"Authentication required.\n"));
                *r.status_mut() = http::StatusCode::UNAUTHORIZED;
                let challenge = format!("Basic realm=\"{}\", charset=\"UTF-8\"", realm.replace('"', ""));
                if let Ok(v) = HeaderValue::from_str(&challenge) {
                    r.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
                }
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                Some(Verdict::Respond(r))
            }
            Action::RateLimit { window, bucket, needs } => {
                let key = if bucket.is_empty() {
                    String::new()
                } else {
                    let ctx = run.vars.context(&run.msg, *needs);
                    bucket
                        .iter()
                        .map(|p| crate::execute(p, &ctx).map(|v| value_text(&v)).unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join("\u{1f}")
                };
                match window.hit(&key, mono) {
                    Ok(()) => None,
                    Err(retry) => {
                        let mut r =
                            http::Response::new(Bytes::from_static(b"Too many requests; slow down.\n"));
                        *r.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
                        r.headers_mut()
                            .insert(http::header::RETRY_AFTER, HeaderValue::from(retry.as_secs().max(1)));
                        Some(Verdict::Respond(r))
                    }
                }
            }
            Action::AddHeaders(headers) => {
                let ch = changes.as_mut()?;
                for (name, t) in headers {
                    if let Ok(v) = HeaderValue::from_str(&t.render(run)) {
                        ch.remove.push(name.clone());
                        ch.add.push((name.clone(), v));
                    }
                }
                None
            }
            Action::RemoveHeaders(names) => {
                changes.as_mut()?.remove.extend(names.iter().cloned());
                None
            }
            Action::CircuitBreaker { breaker, enforce } => {
                let ch = changes.as_mut()?;
                if !*enforce {
                    return None;
                }
                match breaker.admit(mono) {
                    Ok(ticket) => {
                        ch.tickets.push(ticket);
                        None
                    }
                    Err(crate::breaker::Refused(wait)) => {
                        run.logs.push(LogEntry {
                            rule: rule.to_owned(),
                            metadata: note("circuit-breaker", "open: request refused"),
                        });
                        let mut r = http::Response::new(Bytes::from_static(
                            b"The upstream of this endpoint failed too often recently, so its circuit breaker is refusing requests for a while.\n\nERR_NGROK_3202\n",
                        ));
                        *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        r.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            HeaderValue::from_static("text/plain; charset=utf-8"),
                        );
                        r.headers_mut()
                            .insert(http::header::RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
                        Some(Verdict::Respond(r))
                    }
                }
            }
            Action::CompressResponse(list) => {
                changes.as_mut()?.compress = Some(list.clone());
                None
            }
            Action::UrlRewrite { from, to } => {
                let req = run.msg.req.as_ref()?;
                let full = full_url(req);
                let path = req.uri.path_and_query().map_or("/", |p| p.as_str());
                let target = to.render(run);
                let rewritten = if from.is_match(&full) {
                    from.replace(&full, target.as_str()).into_owned()
                } else if from.is_match(path) {
                    from.replace(path, target.as_str()).into_owned()
                } else {
                    return None;
                };
                let origin = match rewritten.split_once("://") {
                    Some((_, rest)) => rest.find('/').map_or("/".to_owned(), |i| rest[i..].to_owned()),
                    None => rewritten,
                };
                if let Ok(u) = origin.parse::<http::Uri>() {
                    changes.as_mut()?.uri = Some(u);
                }
                None
            }
            Action::Redirect { from, to, status, headers } => {
                let target = to.render(run);
                let location = match (from, run.msg.req.as_ref()) {
                    (Some(from), Some(req)) => {
                        let full = full_url(req);
                        if !from.is_match(&full) {
                            return None;
                        }
                        from.replace(&full, target.as_str()).into_owned()
                    }
                    _ => target,
                };
                let mut r = http::Response::new(Bytes::new());
                *r.status_mut() = http::StatusCode::from_u16(*status).unwrap_or(http::StatusCode::FOUND);
                if let Ok(v) = HeaderValue::from_str(&location) {
                    r.headers_mut().insert(http::header::LOCATION, v);
                }
                for (name, t) in headers {
                    if let Ok(v) = HeaderValue::from_str(&t.render(run)) {
                        r.headers_mut().append(name.clone(), v);
                    }
                }
                Some(Verdict::Respond(r))
            }
            Action::ForwardInternal(f) => Some(Verdict::ForwardInternal(f.clone())),
            Action::CustomResponse { status, body, headers } => {
                let mut r = http::Response::new(Bytes::from(body.render(run)));
                *r.status_mut() = http::StatusCode::from_u16(*status).unwrap_or(http::StatusCode::OK);
                for (name, t) in headers {
                    if let Ok(v) = HeaderValue::from_str(&t.render(run)) {
                        r.headers_mut().append(name.clone(), v);
                    }
                }
                Some(Verdict::Respond(r))
            }
            Action::Deny { status } => Some(if http {
                let reason = http::StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Denied");
                response(*status, "text/plain; charset=utf-8", format!("{reason}\n"))
            } else {
                Verdict::Close
            }),
            Action::CloseConnection => Some(Verdict::Close),
            Action::Log { metadata } => {
                let m = metadata.iter().map(|(k, t)| (k.clone(), Json::String(t.render(run)))).collect();
                run.logs.push(LogEntry { rule: rule.to_owned(), metadata: m });
                None
            }
            Action::TerminateTls => None,
            Action::SetVars(items) => {
                for (name, value) in items {
                    // Each assignment costs a step, whatever its value.
                    if !crate::cost::spend(1) {
                        return Some(crate::over_budget(phase));
                    }
                    match value.eval(run) {
                        Ok(v) => {
                            run.vars.set_user_var(name, Some(v));
                            // The names are counted at compile time.
                            debug_assert!(run.vars.user_var_count() <= MAX_VARS);
                        }
                        // An expression that fails at run time (a missing header) leaves the
                        // variable unset: reading it fails as a missing key does.
                        Err(VarFailure::Error) => run.vars.set_user_var(name, None),
                        Err(VarFailure::Budget) => return Some(crate::over_budget(phase)),
                        Err(VarFailure::TooBig) => return Some(too_big(phase, name)),
                    }
                }
                None
            }
            Action::JwtValidation(v) => {
                let req = run.msg.req.as_ref()?;
                let Err(why) = v.check(req.headers, run.msg.now) else { return None };
                run.logs.push(LogEntry { rule: rule.to_owned(), metadata: note("jwt-validation", &why) });
                let mut r = http::Response::new(Bytes::from(format!("A valid token is required: {why}.\n")));
                *r.status_mut() = http::StatusCode::UNAUTHORIZED;
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                Some(Verdict::Respond(r))
            }
            Action::OpenidConnect(o) => {
                let req = run.msg.req.as_ref()?;
                let changes = changes.as_mut()?;
                o.run(req, run.msg.endpoint, run.msg.now, changes)
            }
            Action::VerifyWebhook { provider, secret, enforce } => {
                let req = run.msg.req.as_ref()?;
                let url = full_url(req);
                let signed = crate::webhook::Signed {
                    headers: req.headers,
                    url: &url,
                    body: run.msg.body.unwrap_or_default(),
                    now: run.msg.now,
                };
                let result = match run.msg.body {
                    None => Err("the request body was not available".to_owned()),
                    Some(_) => crate::webhook::verify(provider, secret, &signed),
                };
                let Err(why) = result else { return None };
                run.logs.push(LogEntry { rule: rule.to_owned(), metadata: note("verify-webhook", &why) });
                if !*enforce {
                    return None;
                }
                Some(response(
                    403,
                    "text/plain; charset=utf-8",
                    format!("Webhook verification failed: {why}.\n"),
                ))
            }
        }
    }
}

fn full_url(req: &crate::vars::ReqView<'_>) -> String {
    let host = req.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    format!("{}://{host}{}", req.scheme, req.uri.path_and_query().map_or("/", |p| p.as_str()))
}

fn note(action: &str, msg: &str) -> serde_json::Map<String, Json> {
    let mut m = serde_json::Map::new();
    m.insert("action".into(), Json::String(action.into()));
    m.insert("message".into(), Json::String(msg.into()));
    m
}

fn response(status: u16, content_type: &'static str, body: String) -> Verdict {
    let mut r = http::Response::new(Bytes::from(body));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::FORBIDDEN);
    r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Verdict::Respond(r)
}

/// Denied if a deny block matches; otherwise allowed when there is no allow list or an
/// allow block matches.
pub(crate) fn ip_allowed(ip: IpAddr, allow: &[Cidr], deny: &[Cidr]) -> bool {
    if deny.iter().any(|c| c.contains(ip)) {
        return false;
    }
    allow.is_empty() || allow.iter().any(|c| c.contains(ip))
}

fn digest(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// `60s`, `1m`, `1h`, `1h30m`, `500ms`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = s.trim().chars().peekable();
    if s.trim().is_empty() {
        return Err("empty duration".into());
    }
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 60s or 1m"))?;
        num.clear();
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                Duration::from_millis(n)
            }
            ('s', _) => Duration::from_secs(n),
            ('m', _) => Duration::from_secs(n * 60),
            ('h', _) => Duration::from_secs(n * 3600),
            _ => return Err(format!("{s:?} is not a duration like 60s or 1m")),
        };
        total += unit;
    }
    if !num.is_empty() {
        return Err(format!("{s:?} needs a unit (s, m, h)"));
    }
    Ok(total)
}
