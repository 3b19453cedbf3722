//! ngrok's Traffic Policy: documents with `on_tcp_connect`, `on_http_request` and
//! `on_http_response` rules whose CEL expressions are compiled once, when the endpoint is
//! bound, and whose actions decide what happens to each connection, request and response.
//!
//! Like the multiplexer, this crate does no I/O and reads no clock: the edge passes the
//! connection, the message and the time in, and gets back a [`Verdict`] plus the changes
//! made to the message. Rate-limit windows are the only state, kept inside the policy.
//!
//! # Layout
//! - [`document`]: the document as written (YAML or JSON).
//! - `vars`: the variables and functions expressions see.
//! - `fast`: expressions translated to read the message directly, so CEL's variables are
//!   built only for expressions it cannot translate.
//! - `actions`: each action's configuration, checked at compile time, and what it does.
//! - `ratelimit`: sliding-window counters for `rate-limit`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

mod actions;
mod breaker;
pub mod cost;
pub mod document;
mod event_filter;
mod fast;
mod fields;
#[doc(hidden)]
pub mod fuzzing;
mod jwt;
pub mod legacy;
pub(crate) mod macros;
pub mod oidc;
mod ratelimit;
mod vars;
pub mod webhook;

pub use event_filter::EventFilter;

pub use breaker::{CircuitTicket, CircuitTickets};
pub use document::Document;
pub use jwt::Jwks;
pub use vars::{Cidr, ClientCertInfo, Conn, EndpointInfo, TlsInfo};

use actions::Action;
use cost::{Compiled, Failure};
use vars::{Message, Needs, ReqView, Vars};

/// Why a document cannot be used; the text names the rule and the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The document does not parse.
    #[error("{0}")]
    Syntax(String),
    /// A rule is wrong: a bad expression, an unknown action, a bad action config.
    #[error("{phase} rule {rule}: {msg}")]
    Rule {
        /// The phase it is in.
        phase: &'static str,
        /// The rule's name, or its position.
        rule: String,
        /// The rule's index in its phase (from 0), so callers can point into their own file.
        index: usize,
        /// The expression or action at fault, when it is one of them.
        item: Option<RuleItem>,
        /// What is wrong.
        msg: String,
    },
}

/// The part of a rule an error is about, by index (from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleItem {
    /// `expressions[i]`.
    Expression(usize),
    /// `actions[i]`.
    Action(usize),
}

/// Where a policy runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// A connection arrived.
    TcpConnect,
    /// An HTTP request arrived.
    HttpRequest,
    /// The upstream answered.
    HttpResponse,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::TcpConnect => "on_tcp_connect",
            Phase::HttpRequest => "on_http_request",
            Phase::HttpResponse => "on_http_response",
        }
    }
}

/// What the caller must do after a phase ran.
#[derive(Debug)]
pub enum Verdict {
    /// Go on (the message may have been changed).
    Continue,
    /// Answer with this response instead of going on.
    Respond(http::Response<Bytes>),
    /// Close the connection without an answer.
    Close,
    /// `openid-connect` needs the authorization code exchanged: the caller POSTs the request
    /// and answers with what [`oidc::TokenRequest::finish`] makes of the reply.
    Exchange(Box<oidc::TokenRequest>),
    /// `forward-internal`: the request goes to an internal endpoint of the same account.
    ForwardInternal(ForwardInternal),
}

/// Where `forward-internal` sends a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardInternal {
    /// `http`, `https` (from `on_http_request`), `tcp` or `tls` (from `on_tcp_connect`):
    /// which of the internal endpoints named `host`.
    pub scheme: &'static str,
    /// The internal endpoint's host, ending in `.internal`; for `tcp`, `host:port`.
    pub host: String,
    /// `on_error: continue`: when no such endpoint is online, the request goes on to this
    /// endpoint's own upstream instead of failing.
    pub continue_on_error: bool,
}

/// A content coding `compress-response` may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `gzip`.
    Gzip,
    /// `deflate` (the zlib format, as HTTP means it).
    Deflate,
    /// `br` (Brotli).
    Br,
}

impl Encoding {
    /// Its `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
            Encoding::Br => "br",
        }
    }
}

/// What `compress-response` asks of the caller, in the response's extensions after
/// `on_http_response`: compress the body with the one of these the visitor prefers, when the
/// visitor accepts one and the upstream did not encode the body already.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompressResponse(pub Vec<Encoding>);

/// Compares secrets in constant time.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// One `log` action's output.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    /// The rule it came from.
    pub rule: String,
    /// Its metadata, with `${...}` interpolated.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// What the caller knows before compiling: the stored IP policies `restrict-ips` names, as
/// `(allow, deny)` CIDR lists.
#[derive(Clone, Debug, Default)]
pub struct CompileEnv {
    /// IP policy id → (allow, deny).
    pub ip_policies: HashMap<String, (Vec<Cidr>, Vec<Cidr>)>,
    /// JWKS URL → its keys, fetched by the caller (see [`Document::jwks_urls`]).
    pub jwks: HashMap<String, Arc<Jwks>>,
    /// Issuer URL → the provider, discovered by the caller (see [`Document::oidc_issuers`]).
    pub oidc: HashMap<String, Arc<oidc::Provider>>,
    /// What `openid-connect` seals its cookies under.
    pub cookie_secret: Option<oidc::CookieSecret>,
}

/// A compiled policy.
pub struct Policy {
    tcp: Vec<Rule>,
    req: Vec<Rule>,
    res: Vec<Rule>,
    /// Some request rule reads the body (`verify-webhook`).
    needs_body: bool,
    /// Some request rule is `openid-connect`: identity headers a visitor sends are removed
    /// before any rule runs.
    signs_in: bool,
}

/// The most of a request body buffered for `verify-webhook` (webhooks are small; a larger
/// body is refused with 413).
pub const BODY_LIMIT: usize = 1024 * 1024;

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("on_tcp_connect", &self.tcp.len())
            .field("on_http_request", &self.req.len())
            .field("on_http_response", &self.res.len())
            .finish()
    }
}

struct Rule {
    name: String,
    exprs: Vec<Expression>,
    actions: Vec<Action>,
    needs: Needs,
    /// It has an `openid-connect` action, which answers its callback and logout paths
    /// whatever the rule's expressions say (a rule guarding `/private` must still finish the
    /// sign-in it started).
    signs_in: bool,
}

/// One of a rule's expressions: the CEL program, and its translation for the fast path when
/// it has one (see `fast`).
struct Expression {
    program: Compiled,
    fast: Option<fast::Fast>,
}

/// Policies run one after the other: the account's first, so an endpoint's own policy can
/// never undo it.
#[derive(Clone, Debug, Default)]
pub struct Chain(pub Vec<Arc<Policy>>);

impl Policy {
    /// Compiles a document for an endpoint of protocol `proto` (`http`, `https`, `tcp`,
    /// `tls`): every expression is parsed and checked against a sample message, every action's
    /// config is validated.
    pub fn compile(doc: &Document, proto: &str, env: &CompileEnv) -> Result<Policy, PolicyError> {
        let http = matches!(proto, "http" | "https");
        let mut tcp_rules = doc.on_tcp_connect.clone();
        let mut req_rules = doc.on_http_request.clone();
        let mut res_rules = doc.on_http_response.clone();
        if http {
            req_rules.extend(doc.inbound.iter().cloned());
            res_rules.extend(doc.outbound.iter().cloned());
        } else {
            tcp_rules.extend(doc.inbound.iter().cloned());
            if !req_rules.is_empty() || !res_rules.is_empty() || !doc.outbound.is_empty() {
                return Err(PolicyError::Syntax(format!(
                    "a {proto} endpoint has only on_tcp_connect rules; on_http_request and on_http_response need an http or https endpoint"
                )));
            }
        }
        let req = compile_rules(&req_rules, Phase::HttpRequest, env)?;
        let needs_body =
            req.iter().any(|r| r.actions.iter().any(|a| matches!(a, Action::VerifyWebhook { .. })));
        let signs_in = req.iter().any(|r| r.signs_in);
        let tcp = compile_rules(&tcp_rules, Phase::TcpConnect, env)?;
        if http && tcp.iter().any(|r| r.actions.iter().any(|a| matches!(a, Action::ForwardInternal(_)))) {
            // The edge terminates an http(s) endpoint's connections itself: requests, not
            // connections, are forwarded (from on_http_request).
            return Err(PolicyError::Syntax(format!(
                "forward-internal in on_tcp_connect needs a tcp or tls endpoint; a {proto} endpoint forwards requests from on_http_request"
            )));
        }
        Ok(Policy {
            tcp,
            req,
            res: compile_rules(&res_rules, Phase::HttpResponse, env)?,
            needs_body,
            signs_in,
        })
    }

    /// Compiles an account-wide document for one endpoint: it applies to every kind of
    /// endpoint, so phases the endpoint does not have (http phases on a tcp endpoint) are left
    /// out instead of being an error.
    pub fn compile_for_account(doc: &Document, proto: &str, env: &CompileEnv) -> Result<Policy, PolicyError> {
        if matches!(proto, "http" | "https") {
            return Policy::compile(doc, proto, env);
        }
        let tcp_only = Document { on_tcp_connect: doc.on_tcp_connect.clone(), ..Document::default() };
        Policy::compile(&tcp_only, proto, env)
    }

    /// Parses and compiles in one step.
    pub fn from_text(text: &str, proto: &str, env: &CompileEnv) -> Result<Policy, PolicyError> {
        Policy::compile(&Document::parse(text)?, proto, env)
    }

    /// True when the policy has no rules at all.
    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.req.is_empty() && self.res.is_empty()
    }

    /// True when it has `on_http_response` rules (the caller may skip the phase otherwise).
    pub fn has_response_rules(&self) -> bool {
        !self.res.is_empty()
    }
}

fn compile_rules(
    rules: &[document::RuleDoc],
    phase: Phase,
    env: &CompileEnv,
) -> Result<Vec<Rule>, PolicyError> {
    let mut out = Vec::with_capacity(rules.len());
    // The names set-vars actions set in this phase: at most MAX_VARS; and the assignments
    // (a name may be set again): at most MAX_ASSIGNMENTS.
    let mut var_names = std::collections::HashSet::new();
    let mut assignments = 0usize;
    for (i, r) in rules.iter().enumerate() {
        let label = if r.name.is_empty() { format!("#{}", i + 1) } else { format!("{:?}", r.name) };
        let err = |item: Option<RuleItem>| {
            let rule = label.clone();
            move |msg: String| PolicyError::Rule { phase: phase.name(), rule, index: i, item, msg }
        };
        let mut needs = Needs::default();
        let mut exprs = Vec::with_capacity(r.expressions.len());
        for (j, source) in r.expressions.iter().enumerate() {
            let program = compile_expr(source, phase).map_err(err(Some(RuleItem::Expression(j))))?;
            check_bool(&program, source, phase).map_err(err(Some(RuleItem::Expression(j))))?;
            let fast = fast_form(&program, phase);
            needs = needs.union(Needs::of(&program));
            exprs.push(Expression { program, fast });
        }
        if r.actions.is_empty() {
            return Err(err(None)("a rule needs at least one action".into()));
        }
        let mut actions = Vec::with_capacity(r.actions.len());
        for (j, a) in r.actions.iter().enumerate() {
            let action = Action::compile(a, phase, env)
                .map_err(|m| err(Some(RuleItem::Action(j)))(format!("action {}: {m}", a.kind)))?;
            needs = needs.union(action.needs());
            let names = action.var_names();
            assignments += names.len();
            if assignments > actions::MAX_ASSIGNMENTS {
                return Err(err(Some(RuleItem::Action(j)))(format!(
                    "action {}: the {} phase's set-vars actions make more than {} assignments",
                    a.kind,
                    phase.name(),
                    actions::MAX_ASSIGNMENTS
                )));
            }
            var_names.extend(names);
            if var_names.len() > actions::MAX_VARS {
                return Err(err(Some(RuleItem::Action(j)))(format!(
                    "action {}: the {} phase's set-vars actions set more than {} variables",
                    a.kind,
                    phase.name(),
                    actions::MAX_VARS
                )));
            }
            actions.push(action);
        }
        let signs_in = actions.iter().any(|a| matches!(a, Action::OpenidConnect(_)));
        out.push(Rule { name: label, exprs, actions, needs, signs_in });
    }
    Ok(out)
}

/// Compiles one expression (after rewriting ngrok's request helpers).
pub(crate) fn compile_expr(source: &str, phase: Phase) -> Result<Compiled, String> {
    let rewritten = vars::rewrite_helpers(source);
    let program = cel::Program::compile(&rewritten)
        .map_err(|e| format!("expression {source:?} does not parse: {e}"))?;
    macros::check_calls(program.expression()).map_err(|e| format!("expression {source:?} {e}"))?;
    let refs = program.references();
    let bound = macro_variables(&rewritten);
    for v in refs.variables() {
        if bound.iter().any(|b| b == v) {
            continue;
        }
        let known = match v {
            // `vars` is what set-vars actions set (an empty map before any did).
            "conn" | "endpoint" | "time" | "vars" => true,
            "req" => phase != Phase::TcpConnect,
            "res" => phase == Phase::HttpResponse,
            _ => false,
        };
        if !known {
            let hint = match v {
                "req" | "res" => format!(" ({v} is not available in {})", phase.name()),
                _ => String::new(),
            };
            return Err(format!("expression {source:?} uses the unknown variable {v:?}{hint}"));
        }
    }
    fields::check(program.expression()).map_err(|e| format!("expression {source:?}: {e}"))?;
    Compiled::new(program, source)
}

/// Names bound by comprehension macros (`list.exists(x, ...)`), which are not variables.
fn macro_variables(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for m in ["exists(", "all(", "map(", "filter(", "exists_one("] {
        let mut rest = source;
        while let Some(i) = rest.find(m) {
            let after = &rest[i + m.len()..];
            let preceded_by_dot = rest[..i].ends_with('.');
            if preceded_by_dot && let Some((name, _)) = after.split_once(',') {
                let name = name.trim();
                if !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                    names.push(name.to_owned());
                }
            }
            rest = after;
        }
    }
    names
}

/// A sample message, to find type errors before the first visitor does.
fn sample<'a>(
    conn: &'a Conn,
    ep: &'a EndpointInfo,
    uri: &'a http::Uri,
    headers: &'a http::HeaderMap,
    phase: Phase,
) -> Message<'a> {
    Message {
        conn,
        endpoint: ep,
        now: SystemTime::UNIX_EPOCH,
        req: (phase != Phase::TcpConnect).then_some(ReqView {
            method: "GET",
            uri,
            version: http::Version::HTTP_11,
            headers,
            scheme: "https",
        }),
        res: (phase == Phase::HttpResponse).then_some((200, headers)),
        body: None,
    }
}

pub(crate) fn with_sample<T>(phase: Phase, f: impl FnOnce(&Message<'_>) -> T) -> T {
    let conn = Conn {
        client_ip: "203.0.113.7".parse().expect("literal"),
        client_port: 50000,
        server_ip: "127.0.0.1".parse().expect("literal"),
        server_port: 443,
        tls: Some(TlsInfo {
            version: "1.3".into(),
            cipher_suite: "TLS13_AES_128_GCM_SHA256".into(),
            sni: "app.example.com".into(),
            client: Some(ClientCertInfo {
                subject: "CN=sample".into(),
                issuer: "CN=sample CA".into(),
                san: vec!["sample.example.com".into()],
                serial_number: "01".into(),
            }),
        }),
    };
    let ep = EndpointInfo {
        id: "ep_sample".into(),
        url: "https://app.example.com".into(),
        proto: "https".into(),
        host: "app.example.com".into(),
        port: 443,
    };
    let uri: http::Uri = "/sample?q=1".parse().expect("literal");
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::HOST, http::HeaderValue::from_static("app.example.com"));
    headers.insert(http::header::USER_AGENT, http::HeaderValue::from_static("sample/1.0"));
    f(&sample(&conn, &ep, &uri, &headers, phase))
}

/// Runs a compiled expression within its step budget (see [`cost`]).
pub(crate) fn execute(program: &Compiled, ctx: &cel::Context<'_>) -> Result<cel::objects::Value, Failure> {
    program.execute(ctx)
}

/// Evaluates the expression on a sample message: a wrong type or a missing function is an
/// error now; a missing map key is not (it depends on the message).
fn check_bool(program: &Compiled, source: &str, phase: Phase) -> Result<(), String> {
    with_sample(phase, |msg| {
        let vars = Vars::default();
        let ctx = vars.context(msg, Needs::of(program));
        match execute(program, &ctx) {
            Ok(cel::objects::Value::Bool(_)) => Ok(()),
            Ok(other) => {
                Err(format!("expression {source:?} must be true or false, but gives {:?}", other.type_of()))
            }
            Err(Failure::Cel(e)) if is_data_dependent(&e) => Ok(()),
            Err(Failure::Cel(e)) => Err(format!("expression {source:?} cannot be evaluated: {e}")),
            Err(Failure::Panic) => Err(format!(
                "expression {source:?} cannot be evaluated (the CEL library failed on it; iterating a value that is not a list or map does this)"
            )),
            Err(Failure::Budget) => Err(format!(
                "expression {source:?} takes more than {} steps on a small sample request",
                cost::MAX_STEPS
            )),
        }
    })
}

/// The expression's translation for the fast path, kept only when it gives CEL's answer on
/// the sample message too.
fn fast_form(program: &Compiled, phase: Phase) -> Option<fast::Fast> {
    let fast = fast::Fast::compile(program.expression())?;
    let agrees = with_sample(phase, |msg| {
        let vars = Vars::default();
        let cel = matches!(
            execute(program, &vars.context(msg, Needs::of(program))),
            Ok(cel::objects::Value::Bool(true))
        );
        fast.eval(msg).is_none_or(|f| f == cel)
    });
    agrees.then_some(fast)
}

#[cfg(test)]
thread_local! {
    /// Tests set it to evaluate every expression with CEL.
    static FORCE_CEL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the fast path off on this thread (tests compare both paths with it).
#[cfg(test)]
pub(crate) fn with_cel_only<T>(f: impl FnOnce() -> T) -> T {
    FORCE_CEL.with(|c| c.set(true));
    let out = f();
    FORCE_CEL.with(|c| c.set(false));
    out
}

fn fast_path_on() -> bool {
    #[cfg(test)]
    if FORCE_CEL.with(|c| c.get()) {
        return false;
    }
    true
}

fn is_data_dependent(e: &cel::ExecutionError) -> bool {
    use cel::objects::Value::Null;
    // A missing map key reads as null; what is then done with it depends on the message.
    matches!(
        e,
        cel::ExecutionError::UnsupportedIndex(Null, _)
            | cel::ExecutionError::UnsupportedBinaryOperator(_, Null, _)
            | cel::ExecutionError::UnsupportedBinaryOperator(_, _, Null)
            | cel::ExecutionError::ValuesNotComparable(Null, _)
            | cel::ExecutionError::ValuesNotComparable(_, Null)
            | cel::ExecutionError::UnsupportedTargetType { target: Null }
            | cel::ExecutionError::NoSuchKey(_)
            | cel::ExecutionError::IndexOutOfBounds(_)
            | cel::ExecutionError::FunctionError { .. }
            | cel::ExecutionError::DivisionByZero(_)
            | cel::ExecutionError::RemainderByZero(_)
    )
}

/// One evaluation of a chain: the variables are built once and shared by every rule.
struct Run<'m> {
    msg: Message<'m>,
    vars: &'m Vars,
    logs: Vec<LogEntry>,
    /// An expression ran out of steps: the message is refused, whatever the rule was for.
    over_budget: std::cell::Cell<bool>,
}

impl<'m> Run<'m> {
    fn new(msg: Message<'m>, vars: &'m Vars) -> Run<'m> {
        Run { msg, vars, logs: Vec::new(), over_budget: std::cell::Cell::new(false) }
    }
}

/// What a message gets when an expression ran out of steps: a rule that could not be
/// evaluated might have been the one denying it, so it never passes.
fn over_budget(phase: Phase) -> Verdict {
    match phase {
        Phase::TcpConnect => Verdict::Close,
        Phase::HttpRequest | Phase::HttpResponse => {
            let body = format!(
                "This endpoint's traffic policy needed more than {} steps for this request, so the request was refused.\n\nERR_WARREN_POLICY_BUDGET\n",
                cost::MAX_STEPS
            );
            let r = http::Response::builder()
                .status(http::StatusCode::INTERNAL_SERVER_ERROR)
                .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Bytes::from(body))
                .expect("valid response");
            Verdict::Respond(r)
        }
    }
}

impl Run<'_> {
    /// True when every expression of the rule is true. Expressions with a fast form read the
    /// message directly; CEL's variables are built only when CEL evaluates one of the others.
    fn matches(&self, rule: &Rule) -> bool {
        rule.exprs.iter().all(|e| {
            if fast_path_on()
                && let Some(fast) = &e.fast
            {
                match fast.eval_metered(&self.msg) {
                    Ok(Some(result)) => return result,
                    Ok(None) => {}
                    Err(_) => {
                        self.over_budget.set(true);
                        return false;
                    }
                }
            }
            // Built once for the rule (its actions use it too), on the first expression CEL
            // evaluates.
            let ctx = self.vars.context(&self.msg, rule.needs);
            match execute(&e.program, &ctx) {
                Ok(cel::objects::Value::Bool(b)) => b,
                Err(Failure::Budget) => {
                    self.over_budget.set(true);
                    false
                }
                _ => false,
            }
        })
    }
}

impl Chain {
    /// True when no policy has any rule.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|p| p.is_empty())
    }

    /// True when some policy has `on_http_response` rules.
    pub fn has_response_rules(&self) -> bool {
        self.0.iter().any(|p| p.has_response_rules())
    }

    /// `on_tcp_connect`.
    pub fn on_tcp_connect(
        &self,
        conn: &Conn,
        ep: &EndpointInfo,
        now: SystemTime,
        mono: Instant,
    ) -> (Verdict, Vec<LogEntry>) {
        let msg = Message { conn, endpoint: ep, now, req: None, res: None, body: None };
        let vars = Vars::default();
        let _budget = cost::Budget::start(cost::MAX_STEPS);
        let mut run = Run::new(msg, &vars);
        for policy in &self.0 {
            // set-vars variables are the policy's own.
            vars.clear_user_vars();
            for rule in &policy.tcp {
                if !run.matches(rule) {
                    if run.over_budget.get() {
                        return (over_budget(Phase::TcpConnect), run.logs);
                    }
                    continue;
                }
                for a in &rule.actions {
                    let mut none = None;
                    if let Some(v) = a.run(&mut run, &rule.name, &mut none, None, mono) {
                        return (v, run.logs);
                    }
                }
            }
        }
        (Verdict::Continue, run.logs)
    }

    /// `on_http_request`: may change the request's headers and URI.
    pub fn on_http_request(
        &self,
        conn: &Conn,
        ep: &EndpointInfo,
        scheme: &str,
        req: &mut http::request::Parts,
        now: SystemTime,
        mono: Instant,
    ) -> (Verdict, Vec<LogEntry>) {
        self.on_http_request_with_body(conn, ep, scheme, req, None, now, mono)
    }

    /// The most of a request body the caller must buffer before `on_http_request` (for
    /// `verify-webhook`); `None` when no rule reads the body, so it streams.
    pub fn body_limit(&self) -> Option<usize> {
        self.0.iter().any(|p| p.needs_body).then_some(BODY_LIMIT)
    }

    /// `on_http_request` with the buffered body (see [`Chain::body_limit`]).
    #[allow(clippy::too_many_arguments)]
    pub fn on_http_request_with_body(
        &self,
        conn: &Conn,
        ep: &EndpointInfo,
        scheme: &str,
        req: &mut http::request::Parts,
        body: Option<&[u8]>,
        now: SystemTime,
        mono: Instant,
    ) -> (Verdict, Vec<LogEntry>) {
        let mut logs = Vec::new();
        // The upstream trusts these headers only because no visitor can send them: remove
        // them before any rule (or a rule's other actions) can read them.
        if self.0.iter().any(|p| p.signs_in) {
            for name in oidc::forged_identity(&req.headers) {
                req.headers.remove(name);
            }
        }
        // Variables are built once and rebuilt only after a rule changed the request.
        let mut vars = Vars::default();
        let _budget = cost::Budget::start(cost::MAX_STEPS);
        for policy in &self.0 {
            vars.clear_user_vars();
            for rule in &policy.req {
                // The request may change between rules, so each rule sees it as it is now.
                let (verdict, changes, mut l) = {
                    let view = ReqView {
                        method: req.method.as_str(),
                        uri: &req.uri,
                        version: req.version,
                        headers: &req.headers,
                        scheme,
                    };
                    let msg = Message { conn, endpoint: ep, now, req: Some(view), res: None, body };
                    let mut run = Run::new(msg, &vars);
                    let sign_in_path = rule.signs_in && oidc::is_reserved_path(req.uri.path());
                    if !sign_in_path && !run.matches(rule) {
                        if run.over_budget.get() {
                            logs.append(&mut run.logs);
                            return (over_budget(Phase::HttpRequest), logs);
                        }
                        continue;
                    }
                    let mut changes = Some(actions::Changes::default());
                    let mut verdict = None;
                    for a in &rule.actions {
                        if let Some(v) = a.run(&mut run, &rule.name, &mut changes, None, mono) {
                            verdict = Some(v);
                            break;
                        }
                    }
                    (verdict, changes.unwrap_or_default(), run.logs)
                };
                if !changes.is_empty() {
                    let rebuild = changes.changes_message();
                    changes.apply_request(req);
                    if rebuild {
                        vars = std::mem::take(&mut vars).keeping_user_vars();
                    }
                }
                logs.append(&mut l);
                if let Some(v) = verdict {
                    return (v, logs);
                }
            }
        }
        (Verdict::Continue, logs)
    }

    /// `on_http_response`: may change the response's headers, or replace it.
    #[allow(clippy::too_many_arguments)]
    pub fn on_http_response(
        &self,
        conn: &Conn,
        ep: &EndpointInfo,
        scheme: &str,
        req: &http::request::Parts,
        res: &mut http::response::Parts,
        now: SystemTime,
        mono: Instant,
    ) -> (Verdict, Vec<LogEntry>) {
        let mut logs = Vec::new();
        let mut vars = Vars::default();
        let _budget = cost::Budget::start(cost::MAX_STEPS);
        for policy in &self.0 {
            vars.clear_user_vars();
            for rule in &policy.res {
                let (verdict, changes, mut l) = {
                    let view = ReqView {
                        method: req.method.as_str(),
                        uri: &req.uri,
                        version: req.version,
                        headers: &req.headers,
                        scheme,
                    };
                    let msg = Message {
                        conn,
                        endpoint: ep,
                        now,
                        req: Some(view),
                        res: Some((res.status.as_u16(), &res.headers)),
                        body: None,
                    };
                    let mut run = Run::new(msg, &vars);
                    if !run.matches(rule) {
                        if run.over_budget.get() {
                            logs.append(&mut run.logs);
                            return (over_budget(Phase::HttpResponse), logs);
                        }
                        continue;
                    }
                    let mut changes = Some(actions::Changes::default());
                    let mut verdict = None;
                    for a in &rule.actions {
                        if let Some(v) =
                            a.run(&mut run, &rule.name, &mut changes, Some(res.status.as_u16()), mono)
                        {
                            verdict = Some(v);
                            break;
                        }
                    }
                    (verdict, changes.unwrap_or_default(), run.logs)
                };
                if !changes.is_empty() {
                    let rebuild = changes.changes_message();
                    changes.apply_response(res);
                    if rebuild {
                        vars = std::mem::take(&mut vars).keeping_user_vars();
                    }
                }
                logs.append(&mut l);
                if let Some(v) = verdict {
                    return (v, logs);
                }
            }
        }
        (Verdict::Continue, logs)
    }
}
