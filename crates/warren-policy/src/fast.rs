//! A fast path for expressions: the CEL syntax tree of an expression is translated, when it
//! is compiled, into a tree that reads the message directly, without building CEL's maps
//! (a request's headers, cookies and query parameters as hash maps of strings cost more than
//! the rest of an evaluation).
//!
//! The translation covers what policies use (field reads, `==`, `!=`, comparisons, `in`,
//! `&&`, `||`, `!`, `? :`, `startsWith`, `endsWith`, `contains`, `matches`, `size`,
//! `has()`, `exists`/`all`/`exists_one` over lists, ngrok's IP and header helpers); anything
//! else is left to CEL, for the whole expression. Results equal cel 0.11's, errors included:
//! values are dynamically typed as in CEL; an error (a missing header indexed, a field read on
//! null, a non-boolean operand) makes the expression not match; `&&` and `||` evaluate their
//! left operand first and stop there when it decides (`false && error` is false, `error &&
//! false` is an error, as cel 0.11 does it). A value the fast path cannot handle at run time
//! (comparing two maps, iterating a map) sends the expression to CEL.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt::Write as _;
use std::net::IpAddr;

use cel::IdedExpr;
use cel::common::ast::Expr;
use cel::common::value::CelVal;
use http::HeaderMap;

use crate::vars::{
    Cidr, ClientCertInfo, Conn, CookiePairs, EndpointInfo, Message, QueryPairs, ReqView, TlsInfo,
    content_length, content_type, header_text, host_parts, is_private, raw_url, url_decode, user_agent,
    version_text,
};

/// An expression translated for the fast path.
#[derive(Debug)]
pub(crate) struct Fast(Node);

impl Fast {
    /// The translation of `expr`, or `None` when it uses something only CEL evaluates.
    pub(crate) fn compile(expr: &IdedExpr) -> Option<Fast> {
        compile(expr, &mut Vec::new()).map(Fast)
    }

    /// True or false (an error is false), or `None` when CEL must evaluate the expression.
    pub(crate) fn eval(&self, msg: &Message<'_>) -> Option<bool> {
        self.eval_metered(msg).unwrap_or(Some(false))
    }

    /// [`Fast::eval`], or `Err` when the message's step budget ran out: each comprehension
    /// iteration costs a step, as in CEL.
    pub(crate) fn eval_metered(&self, msg: &Message<'_>) -> Result<Option<bool>, crate::cost::Failure> {
        match eval(&self.0, msg, None) {
            Ok(Val::Bool(b)) => Ok(Some(b)),
            Ok(_) | Err(Fail::Error) => Ok(Some(false)),
            Err(Fail::Unsupported) => Ok(None),
            Err(Fail::Budget) => Err(crate::cost::Failure::Budget),
        }
    }
}

/// A literal.
#[derive(Debug)]
enum Const {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
}

/// A top-level variable.
#[derive(Clone, Copy, Debug)]
enum Root {
    Conn,
    Req,
    Res,
    Endpoint,
}

#[derive(Clone, Copy, Debug)]
enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug)]
enum StrOp {
    StartsWith,
    EndsWith,
}

#[derive(Clone, Copy, Debug)]
enum CaseOp {
    Lower,
    Upper,
    Trim,
}

#[derive(Debug)]
enum Node {
    /// A constant error (an invalid literal CIDR or regular expression).
    Error,
    Const(Const),
    ConstList(Vec<Const>),
    Root(Root),
    /// A comprehension's variable: `up` comprehensions out, its element (or accumulator).
    Local {
        up: usize,
        iter: bool,
    },
    Select(Box<Node>, String),
    /// `has(x.field)`.
    Has(Box<Node>, String),
    Index(Box<Node>, Box<Node>),
    /// `==` (or `!=` when the flag is set).
    Eq(Box<Node>, Box<Node>, bool),
    Cmp(Box<Node>, Box<Node>, CmpOp),
    In(Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    NotStrictlyFalse(Box<Node>),
    Cond(Box<(Node, Node, Node)>),
    Add(Box<Node>, Box<Node>),
    Str(StrOp, Box<Node>, Box<Node>),
    Contains(Box<Node>, Box<Node>),
    Size(Box<Node>),
    Matches(Box<Node>, regex::Regex),
    Case(CaseOp, Box<Node>),
    /// `inCidrRange` (one block, `list` false) or `inCidrRanges` with literal blocks, parsed
    /// here; `None` is an element that is not a valid block.
    InCidr {
        ip: Box<Node>,
        cidrs: Vec<Option<Cidr>>,
        list: bool,
    },
    IsPrivate(Box<Node>),
    /// `__values(map, name)` (`getReqHeader`, `getQueryParam`, `getResHeader`).
    Values(Box<Node>, Box<Node>),
    /// `__has(map, name)` (`hasReqHeader`, `hasResHeader`).
    HasKey(Box<Node>, Box<Node>),
    Comprehension(Box<Comprehension>),
}

#[derive(Debug)]
struct Comprehension {
    range: Node,
    accu_init: Node,
    cond: Node,
    step: Node,
    result: Node,
}

/// Comprehension variables in scope, innermost last: (element, accumulator).
type Scopes = Vec<(String, String)>;

fn boxed(e: &IdedExpr, scopes: &mut Scopes) -> Option<Box<Node>> {
    compile(e, scopes).map(Box::new)
}

fn literal(v: &CelVal) -> Option<Const> {
    Some(match v {
        CelVal::Null => Const::Null,
        CelVal::Boolean(b) => Const::Bool(*b),
        CelVal::Int(i) => Const::Int(*i),
        CelVal::String(s) => Const::Str(s.clone()),
        _ => return None,
    })
}

fn literal_str(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(CelVal::String(s)) => Some(s),
        _ => None,
    }
}

fn compile(e: &IdedExpr, scopes: &mut Scopes) -> Option<Node> {
    match &e.expr {
        Expr::Literal(v) => literal(v).map(Node::Const),
        Expr::List(l) => {
            let mut items = Vec::with_capacity(l.elements.len());
            for el in &l.elements {
                match &el.expr {
                    Expr::Literal(v) => items.push(literal(v)?),
                    _ => return None,
                }
            }
            Some(Node::ConstList(items))
        }
        Expr::Ident(name) => {
            for (up, (iter, accu)) in scopes.iter().rev().enumerate() {
                if iter == name {
                    return Some(Node::Local { up, iter: true });
                }
                if accu == name {
                    return Some(Node::Local { up, iter: false });
                }
            }
            let root = match name.as_str() {
                "conn" => Root::Conn,
                "req" => Root::Req,
                "res" => Root::Res,
                "endpoint" => Root::Endpoint,
                _ => return None,
            };
            Some(Node::Root(root))
        }
        Expr::Select(s) => {
            let operand = boxed(&s.operand, scopes)?;
            Some(if s.test {
                Node::Has(operand, s.field.clone())
            } else {
                Node::Select(operand, s.field.clone())
            })
        }
        Expr::Comprehension(c) => {
            if c.iter_var2.is_some() {
                return None;
            }
            let range = compile(&c.iter_range, scopes)?;
            let accu_init = compile(&c.accu_init, scopes)?;
            scopes.push((c.iter_var.clone(), c.accu_var.clone()));
            let inner = (|| {
                Some((
                    compile(&c.loop_cond, scopes)?,
                    compile(&c.loop_step, scopes)?,
                    compile(&c.result, scopes)?,
                ))
            })();
            scopes.pop();
            let (cond, step, result) = inner?;
            Some(Node::Comprehension(Box::new(Comprehension { range, accu_init, cond, step, result })))
        }
        Expr::Call(call) => {
            let args = &call.args;
            let name = call.func_name.as_str();
            // Operators, which CEL evaluates inline (whatever the target).
            match (name, args.len()) {
                ("_==_", 2) => {
                    return Some(Node::Eq(boxed(&args[0], scopes)?, boxed(&args[1], scopes)?, false));
                }
                ("_!=_", 2) => {
                    return Some(Node::Eq(boxed(&args[0], scopes)?, boxed(&args[1], scopes)?, true));
                }
                ("_<_" | "_<=_" | "_>_" | "_>=_", 2) => {
                    let op = match name {
                        "_<_" => CmpOp::Lt,
                        "_<=_" => CmpOp::Le,
                        "_>_" => CmpOp::Gt,
                        _ => CmpOp::Ge,
                    };
                    return Some(Node::Cmp(boxed(&args[0], scopes)?, boxed(&args[1], scopes)?, op));
                }
                ("@in", 2) => return Some(Node::In(boxed(&args[0], scopes)?, boxed(&args[1], scopes)?)),
                ("_&&_", 2) => return Some(Node::And(boxed(&args[0], scopes)?, boxed(&args[1], scopes)?)),
                ("_||_", 2) => return Some(Node::Or(boxed(&args[0], scopes)?, boxed(&args[1], scopes)?)),
                ("_[_]", 2) => return Some(Node::Index(boxed(&args[0], scopes)?, boxed(&args[1], scopes)?)),
                ("_+_", 2) => return Some(Node::Add(boxed(&args[0], scopes)?, boxed(&args[1], scopes)?)),
                ("!_", 1) => return Some(Node::Not(boxed(&args[0], scopes)?)),
                ("@not_strictly_false", 1) => return Some(Node::NotStrictlyFalse(boxed(&args[0], scopes)?)),
                ("_?_:_", 3) => {
                    let c = compile(&args[0], scopes)?;
                    let a = compile(&args[1], scopes)?;
                    let b = compile(&args[2], scopes)?;
                    return Some(Node::Cond(Box::new((c, a, b))));
                }
                _ => {}
            }
            // CEL's own functions take their first operand from the target, or else from the
            // first argument; extra arguments are ignored there, so only the exact count is
            // translated.
            let (this, rest): (&IdedExpr, &[IdedExpr]) = match &call.target {
                Some(t) => (t, args),
                None if !args.is_empty() => (&args[0], &args[1..]),
                None => return None,
            };
            match (name, rest.len()) {
                ("startsWith", 1) => {
                    return Some(Node::Str(
                        StrOp::StartsWith,
                        boxed(this, scopes)?,
                        boxed(&rest[0], scopes)?,
                    ));
                }
                ("endsWith", 1) => {
                    return Some(Node::Str(StrOp::EndsWith, boxed(this, scopes)?, boxed(&rest[0], scopes)?));
                }
                ("contains", 1) => {
                    return Some(Node::Contains(boxed(this, scopes)?, boxed(&rest[0], scopes)?));
                }
                ("size", 0) => return Some(Node::Size(boxed(this, scopes)?)),
                ("matches", 1) => {
                    let target = boxed(this, scopes)?;
                    return Some(match regex::Regex::new(literal_str(&rest[0])?) {
                        Ok(re) => Node::Matches(target, re),
                        Err(_) => Node::Error,
                    });
                }
                _ => {}
            }
            // ngrok's functions take plain arguments (a target is not one of them).
            if call.target.is_some() {
                return None;
            }
            match (name, args.len()) {
                ("inCidrRange", 2) => {
                    let ip = boxed(&args[0], scopes)?;
                    let cidr = Cidr::parse(literal_str(&args[1])?).ok();
                    Some(Node::InCidr { ip, cidrs: vec![cidr], list: false })
                }
                ("inCidrRanges", 2) => {
                    let ip = boxed(&args[0], scopes)?;
                    let Expr::List(l) = &args[1].expr else { return None };
                    let mut cidrs = Vec::with_capacity(l.elements.len());
                    for el in &l.elements {
                        let Expr::Literal(v) = &el.expr else { return None };
                        cidrs.push(match v {
                            CelVal::String(s) => Cidr::parse(s).ok(),
                            _ => None,
                        });
                    }
                    Some(Node::InCidr { ip, cidrs, list: true })
                }
                ("isPrivateIp", 1) => Some(Node::IsPrivate(boxed(&args[0], scopes)?)),
                ("__values", 2) => Some(Node::Values(boxed(&args[0], scopes)?, boxed(&args[1], scopes)?)),
                ("__has", 2) => Some(Node::HasKey(boxed(&args[0], scopes)?, boxed(&args[1], scopes)?)),
                ("lower", 1) => Some(Node::Case(CaseOp::Lower, boxed(&args[0], scopes)?)),
                ("upper", 1) => Some(Node::Case(CaseOp::Upper, boxed(&args[0], scopes)?)),
                ("trim", 1) => Some(Node::Case(CaseOp::Trim, boxed(&args[0], scopes)?)),
                _ => None,
            }
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Values

/// Why an evaluation has no value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    /// CEL gives an error.
    Error,
    /// The fast path does not know: CEL must evaluate the expression.
    Unsupported,
    /// The message's step budget ran out (see `cost.rs`).
    Budget,
}

type R<T> = Result<T, Fail>;

/// A string: borrowed from the message or the expression, an IP address (written out only
/// when read as text), or made during the evaluation (rare: decoded or lower-cased text).
#[derive(Clone, Debug)]
enum Text<'a> {
    B(&'a str),
    Ip(&'a IpAddr),
    Own(String),
}

/// Room for an IP address written out.
struct IpBuf {
    b: [u8; 64],
    n: usize,
}

impl std::fmt::Write for IpBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.n + s.len();
        if end > self.b.len() {
            return Err(std::fmt::Error);
        }
        self.b[self.n..end].copy_from_slice(s.as_bytes());
        self.n = end;
        Ok(())
    }
}

impl<'a> Text<'a> {
    fn of_cow(c: Cow<'a, str>) -> Text<'a> {
        match c {
            Cow::Borrowed(s) => Text::B(s),
            Cow::Owned(s) => Text::Own(s),
        }
    }

    /// Calls `f` with the text.
    fn with<T>(&self, f: impl FnOnce(&str) -> T) -> T {
        match self {
            Text::B(s) => f(s),
            Text::Own(s) => f(s),
            Text::Ip(ip) => {
                let mut buf = IpBuf { b: [0; 64], n: 0 };
                let _ = write!(buf, "{ip}");
                f(std::str::from_utf8(&buf.b[..buf.n]).unwrap_or_default())
            }
        }
    }

    /// The text without the address form, to be kept as a map key.
    fn plain(self) -> Text<'a> {
        match self {
            Text::Ip(ip) => Text::Own(ip.to_string()),
            t => t,
        }
    }

    fn as_plain(&self) -> &str {
        match self {
            Text::B(s) => s,
            Text::Own(s) => s,
            Text::Ip(_) => "",
        }
    }

    fn ip(&self) -> R<IpAddr> {
        match self {
            Text::Ip(ip) => Ok(**ip),
            t => t.with(|s| s.parse::<IpAddr>().map_err(|_| Fail::Error)),
        }
    }

    fn eq(&self, o: &Text<'_>) -> bool {
        match (self, o) {
            (Text::Ip(a), Text::Ip(b)) => a == b,
            _ => self.with(|a| o.with(|b| a == b)),
        }
    }
}

/// A map of the message: the fixed ones (`conn`, `req`, `req.url`, ...) and the ones keyed
/// by what the message holds (headers, query parameters, cookies).
#[derive(Clone, Copy)]
enum MapRef<'a> {
    Conn(&'a Conn),
    Tls(&'a TlsInfo),
    Cert(&'a ClientCertInfo),
    Req(&'a ReqView<'a>),
    UserAgent(&'a ReqView<'a>),
    Url(&'a ReqView<'a>),
    Headers(&'a HeaderMap),
    Query(&'a str),
    /// Cookies from `cookie` (false) or `set-cookie` (true) headers.
    Cookies(&'a HeaderMap, bool),
    Res(u16, &'a HeaderMap),
    Endpoint(&'a EndpointInfo),
}

/// A list: a literal, or the values of one key of a message's map.
#[derive(Clone)]
enum List<'a> {
    Empty,
    Consts(&'a [Const]),
    Strs(&'a [String]),
    /// The values of a header, by its (lower-case) name.
    Header(&'a HeaderMap, Text<'a>),
    /// The (decoded) values of a query parameter, by its decoded name.
    Query(&'a str, Text<'a>),
    Cookie(&'a HeaderMap, bool, Text<'a>),
}

#[derive(Clone)]
enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Str(Text<'a>),
    List(List<'a>),
    Map(MapRef<'a>),
}

fn cookie_header(set: bool) -> http::HeaderName {
    if set { http::header::SET_COOKIE } else { http::header::COOKIE }
}

/// A query string's key or value, decoded.
fn decoded(raw: &str) -> Text<'_> {
    if raw.bytes().any(|b| b == b'%' || b == b'+') { Text::Own(url_decode(raw)) } else { Text::B(raw) }
}

/// Header names are lower case: another spelling is not a key.
fn header_key(name: &str) -> bool {
    !name.bytes().any(|b| b.is_ascii_uppercase())
}

enum ListIter<'a, 'l> {
    Empty,
    Consts(std::slice::Iter<'a, Const>),
    Strs(std::slice::Iter<'a, String>),
    Header(http::header::ValueIter<'a, http::HeaderValue>),
    Query(QueryPairs<'a>, &'l Text<'a>),
    Cookie(CookiePairs<'a>, &'l Text<'a>),
}

impl<'a> Iterator for ListIter<'a, '_> {
    type Item = Val<'a>;

    fn next(&mut self) -> Option<Val<'a>> {
        match self {
            ListIter::Empty => None,
            ListIter::Consts(it) => it.next().map(const_val),
            ListIter::Strs(it) => it.next().map(|s| Val::Str(Text::B(s))),
            ListIter::Header(it) => it.next().map(|v| Val::Str(Text::of_cow(header_text(v)))),
            ListIter::Query(it, key) => loop {
                let (k, v) = it.next()?;
                if decoded(k).eq(key) {
                    return Some(Val::Str(decoded(v)));
                }
            },
            ListIter::Cookie(it, key) => loop {
                let (k, v) = it.next()?;
                if key.as_plain() == k {
                    return Some(Val::Str(Text::B(v)));
                }
            },
        }
    }
}

impl<'a> List<'a> {
    fn iter(&self) -> ListIter<'a, '_> {
        match self {
            List::Empty => ListIter::Empty,
            List::Consts(c) => ListIter::Consts(c.iter()),
            List::Strs(s) => ListIter::Strs(s.iter()),
            List::Header(h, name) => ListIter::Header(h.get_all(name.as_plain()).into_iter()),
            List::Query(q, key) => ListIter::Query(QueryPairs::new(q), key),
            List::Cookie(h, set, key) => ListIter::Cookie(CookiePairs::new(h, &cookie_header(*set)), key),
        }
    }

    fn len(&self) -> usize {
        match self {
            List::Empty => 0,
            List::Consts(c) => c.len(),
            List::Strs(s) => s.len(),
            _ => self.iter().count(),
        }
    }
}

fn const_val(c: &Const) -> Val<'_> {
    match c {
        Const::Null => Val::Null,
        Const::Bool(b) => Val::Bool(*b),
        Const::Int(i) => Val::Int(*i),
        Const::Str(s) => Val::Str(Text::B(s)),
    }
}

fn opt_str(s: &str) -> Val<'_> {
    Val::Str(Text::B(s))
}

const CONN_KEYS: &[&str] = &["client_ip", "client_port", "server_ip", "server_port", "tls"];
const TLS_KEYS: &[&str] = &["version", "cipher_suite", "sni", "client"];
const CERT_KEYS: &[&str] = &["subject", "issuer", "san", "serial_number"];
const REQ_KEYS: &[&str] = &[
    "method",
    "host",
    "version",
    "headers",
    "cookies",
    "user_agent",
    "content_length",
    "content_type",
    "url",
];
const UA_KEYS: &[&str] = &["raw"];
const URL_KEYS: &[&str] = &["scheme", "host", "port", "path", "query", "query_params", "raw"];
const RES_KEYS: &[&str] = &["status_code", "headers", "cookies"];
const ENDPOINT_KEYS: &[&str] = &["id", "url", "proto", "host", "port"];

impl<'a> MapRef<'a> {
    /// The fixed keys, for the maps that have them.
    fn fixed_keys(self) -> Option<&'static [&'static str]> {
        Some(match self {
            MapRef::Conn(_) => CONN_KEYS,
            MapRef::Tls(_) => TLS_KEYS,
            MapRef::Cert(_) => CERT_KEYS,
            MapRef::Req(_) => REQ_KEYS,
            MapRef::UserAgent(_) => UA_KEYS,
            MapRef::Url(_) => URL_KEYS,
            MapRef::Res(..) => RES_KEYS,
            MapRef::Endpoint(_) => ENDPOINT_KEYS,
            MapRef::Headers(_) | MapRef::Query(_) | MapRef::Cookies(..) => return None,
        })
    }

    /// The value at a string key.
    fn get(self, key: &Text<'a>) -> Option<Val<'a>> {
        if let Text::Ip(_) = key {
            return self.get(&key.clone().plain());
        }
        let k = key.as_plain();
        Some(match self {
            MapRef::Conn(c) => match k {
                "client_ip" => Val::Str(Text::Ip(&c.client_ip)),
                "client_port" => Val::Int(c.client_port.into()),
                "server_ip" => Val::Str(Text::Ip(&c.server_ip)),
                "server_port" => Val::Int(c.server_port.into()),
                "tls" => c.tls.as_ref().map_or(Val::Null, |t| Val::Map(MapRef::Tls(t))),
                _ => return None,
            },
            MapRef::Tls(t) => match k {
                "version" => opt_str(&t.version),
                "cipher_suite" => opt_str(&t.cipher_suite),
                "sni" => opt_str(&t.sni),
                "client" => t.client.as_ref().map_or(Val::Null, |c| Val::Map(MapRef::Cert(c))),
                _ => return None,
            },
            MapRef::Cert(c) => match k {
                "subject" => opt_str(&c.subject),
                "issuer" => opt_str(&c.issuer),
                "san" => Val::List(List::Strs(&c.san)),
                "serial_number" => opt_str(&c.serial_number),
                _ => return None,
            },
            MapRef::Req(r) => match k {
                "method" => opt_str(r.method),
                "host" => opt_str(host_parts(r).1),
                "version" => opt_str(version_text(r)),
                "headers" => Val::Map(MapRef::Headers(r.headers)),
                "cookies" => Val::Map(MapRef::Cookies(r.headers, false)),
                "user_agent" => Val::Map(MapRef::UserAgent(r)),
                "content_length" => Val::Int(content_length(r)),
                "content_type" => opt_str(content_type(r)),
                "url" => Val::Map(MapRef::Url(r)),
                _ => return None,
            },
            MapRef::UserAgent(r) => match k {
                "raw" => opt_str(user_agent(r)),
                _ => return None,
            },
            MapRef::Url(r) => match k {
                "scheme" => opt_str(r.scheme),
                "host" => opt_str(host_parts(r).1),
                "port" => Val::Int(host_parts(r).2),
                "path" => opt_str(r.uri.path()),
                "query" => opt_str(r.uri.query().unwrap_or("")),
                "query_params" => Val::Map(MapRef::Query(r.uri.query().unwrap_or(""))),
                "raw" => Val::Str(Text::Own(raw_url(r, host_parts(r).0))),
                _ => return None,
            },
            MapRef::Res(status, h) => match k {
                "status_code" => Val::Int(status.into()),
                "headers" => Val::Map(MapRef::Headers(h)),
                "cookies" => Val::Map(MapRef::Cookies(h, true)),
                _ => return None,
            },
            MapRef::Endpoint(e) => match k {
                "id" => opt_str(&e.id),
                "url" => opt_str(&e.url),
                "proto" => opt_str(&e.proto),
                "host" => opt_str(&e.host),
                "port" => Val::Int(e.port.into()),
                _ => return None,
            },
            MapRef::Headers(h) => {
                if !header_key(k) || !h.contains_key(k) {
                    return None;
                }
                Val::List(List::Header(h, key.clone()))
            }
            MapRef::Query(q) => {
                if !QueryPairs::new(q).any(|(rk, _)| decoded(rk).eq(key)) {
                    return None;
                }
                Val::List(List::Query(q, key.clone()))
            }
            MapRef::Cookies(h, set) => {
                if !CookiePairs::new(h, &cookie_header(set)).any(|(ck, _)| ck == k) {
                    return None;
                }
                Val::List(List::Cookie(h, set, key.clone()))
            }
        })
    }

    fn has(self, key: &str) -> bool {
        match self.fixed_keys() {
            Some(keys) => keys.contains(&key),
            None => self.get(&Text::B(key)).is_some(),
        }
    }

    fn len(self) -> R<usize> {
        match self {
            MapRef::Headers(h) => Ok(h.keys_len()),
            MapRef::Query(_) | MapRef::Cookies(..) => Err(Fail::Unsupported),
            m => Ok(m.fixed_keys().map_or(0, <[_]>::len)),
        }
    }
}

/// CEL's `==`.
fn val_eq(a: &Val<'_>, b: &Val<'_>) -> R<bool> {
    Ok(match (a, b) {
        (Val::Null, Val::Null) => true,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Int(x), Val::Int(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x.eq(y),
        (Val::List(x), Val::List(y)) => {
            let mut xs = x.iter();
            let mut ys = y.iter();
            loop {
                match (xs.next(), ys.next()) {
                    (None, None) => break true,
                    (Some(p), Some(q)) => {
                        if !val_eq(&p, &q)? {
                            break false;
                        }
                    }
                    _ => break false,
                }
            }
        }
        (Val::Map(_), Val::Map(_)) => return Err(Fail::Unsupported),
        _ => false,
    })
}

fn list_contains(l: &List<'_>, v: &Val<'_>) -> R<bool> {
    for item in l.iter() {
        if val_eq(&item, v)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn truth(v: &Val<'_>) -> R<bool> {
    match v {
        Val::Bool(b) => Ok(*b),
        _ => Err(Fail::Error),
    }
}

fn text(v: Val<'_>) -> R<Text<'_>> {
    match v {
        Val::Str(t) => Ok(t),
        _ => Err(Fail::Error),
    }
}

/// A comprehension's variables.
struct Frame<'p, 'a> {
    parent: Option<&'p Frame<'p, 'a>>,
    accu: Val<'a>,
    iter: Option<Val<'a>>,
}

fn eval<'a>(n: &'a Node, m: &'a Message<'a>, f: Option<&Frame<'_, 'a>>) -> R<Val<'a>> {
    Ok(match n {
        Node::Error => return Err(Fail::Error),
        Node::Const(c) => const_val(c),
        Node::ConstList(c) => Val::List(List::Consts(c)),
        Node::Root(Root::Conn) => Val::Map(MapRef::Conn(m.conn)),
        Node::Root(Root::Endpoint) => Val::Map(MapRef::Endpoint(m.endpoint)),
        Node::Root(Root::Req) => m.req.as_ref().map_or(Val::Null, |r| Val::Map(MapRef::Req(r))),
        Node::Root(Root::Res) => m.res.map_or(Val::Null, |(s, h)| Val::Map(MapRef::Res(s, h))),
        Node::Local { up, iter } => {
            let mut frame = f.ok_or(Fail::Unsupported)?;
            for _ in 0..*up {
                frame = frame.parent.ok_or(Fail::Unsupported)?;
            }
            if *iter { frame.iter.clone().ok_or(Fail::Unsupported)? } else { frame.accu.clone() }
        }
        Node::Select(x, field) => match eval(x, m, f)? {
            Val::Map(map) => map.get(&Text::B(field)).ok_or(Fail::Error)?,
            _ => return Err(Fail::Error),
        },
        Node::Has(x, field) => match eval(x, m, f)? {
            Val::Map(map) => Val::Bool(map.has(field)),
            _ => Val::Bool(false),
        },
        Node::Index(x, i) => {
            let x = eval(x, m, f)?;
            let i = eval(i, m, f)?;
            match (x, i) {
                (Val::List(l), Val::Int(i)) => {
                    let item = usize::try_from(i).ok().and_then(|i| l.iter().nth(i));
                    item.ok_or(Fail::Error)?
                }
                (Val::Map(map), Val::Str(k)) => map.get(&k).unwrap_or(Val::Null),
                (Val::Map(_), Val::Bool(_) | Val::Int(_)) => Val::Null,
                _ => return Err(Fail::Error),
            }
        }
        Node::Eq(a, b, negate) => {
            let a = eval(a, m, f)?;
            let b = eval(b, m, f)?;
            Val::Bool(val_eq(&a, &b)? != *negate)
        }
        Node::Cmp(a, b, op) => {
            let a = eval(a, m, f)?;
            let b = eval(b, m, f)?;
            let ord = match (&a, &b) {
                (Val::Int(x), Val::Int(y)) => x.cmp(y),
                (Val::Bool(x), Val::Bool(y)) => x.cmp(y),
                (Val::Null, Val::Null) => Ordering::Equal,
                (Val::Str(x), Val::Str(y)) => x.with(|x| y.with(|y| x.cmp(y))),
                _ => return Err(Fail::Error),
            };
            Val::Bool(match op {
                CmpOp::Lt => ord == Ordering::Less,
                CmpOp::Le => ord != Ordering::Greater,
                CmpOp::Gt => ord == Ordering::Greater,
                CmpOp::Ge => ord != Ordering::Less,
            })
        }
        Node::In(a, b) => {
            let a = eval(a, m, f)?;
            let b = eval(b, m, f)?;
            Val::Bool(match (&a, &b) {
                (Val::Str(x), Val::Str(y)) => x.with(|x| y.with(|y| y.contains(x))),
                (_, Val::List(l)) => list_contains(l, &a)?,
                (Val::Str(k), Val::Map(map)) => map.get(k).is_some(),
                (_, Val::Map(_)) => false,
                _ => return Err(Fail::Error),
            })
        }
        Node::And(a, b) => {
            if !truth(&eval(a, m, f)?)? {
                Val::Bool(false)
            } else {
                Val::Bool(truth(&eval(b, m, f)?)?)
            }
        }
        Node::Or(a, b) => {
            if truth(&eval(a, m, f)?)? {
                Val::Bool(true)
            } else {
                eval(b, m, f)?
            }
        }
        Node::Not(a) => Val::Bool(!truth(&eval(a, m, f)?)?),
        Node::NotStrictlyFalse(a) => match eval(a, m, f)? {
            Val::Bool(b) => Val::Bool(b),
            _ => Val::Bool(true),
        },
        Node::Cond(c) => {
            if truth(&eval(&c.0, m, f)?)? {
                eval(&c.1, m, f)?
            } else {
                eval(&c.2, m, f)?
            }
        }
        Node::Add(a, b) => {
            let a = eval(a, m, f)?;
            let b = eval(b, m, f)?;
            match (a, b) {
                (Val::Int(x), Val::Int(y)) => Val::Int(x.checked_add(y).ok_or(Fail::Error)?),
                (Val::Str(x), Val::Str(y)) => {
                    let mut s = x.with(str::to_owned);
                    y.with(|y| s.push_str(y));
                    Val::Str(Text::Own(s))
                }
                (Val::List(_), Val::List(_)) => return Err(Fail::Unsupported),
                _ => return Err(Fail::Error),
            }
        }
        Node::Str(op, a, b) => {
            let a = text(eval(a, m, f)?)?;
            let b = text(eval(b, m, f)?)?;
            Val::Bool(a.with(|a| {
                b.with(|b| match op {
                    StrOp::StartsWith => a.starts_with(b),
                    StrOp::EndsWith => a.ends_with(b),
                })
            }))
        }
        Node::Contains(a, b) => {
            let a = eval(a, m, f)?;
            let b = eval(b, m, f)?;
            Val::Bool(match (&a, &b) {
                (Val::List(l), _) => list_contains(l, &b)?,
                (Val::Map(map), Val::Str(k)) => map.get(k).is_some(),
                (Val::Map(_), Val::Int(_) | Val::Bool(_)) => false,
                (Val::Map(_), _) => return Err(Fail::Error),
                (Val::Str(x), Val::Str(y)) => x.with(|x| y.with(|y| x.contains(y))),
                _ => false,
            })
        }
        Node::Size(a) => {
            let n = match eval(a, m, f)? {
                Val::List(l) => l.len(),
                Val::Map(map) => map.len()?,
                Val::Str(t) => t.with(str::len),
                _ => return Err(Fail::Error),
            };
            Val::Int(i64::try_from(n).map_err(|_| Fail::Unsupported)?)
        }
        Node::Matches(a, re) => {
            let a = text(eval(a, m, f)?)?;
            Val::Bool(a.with(|a| re.is_match(a)))
        }
        Node::Case(op, a) => {
            let a = text(eval(a, m, f)?)?;
            Val::Str(Text::Own(a.with(|a| match op {
                CaseOp::Lower => a.to_lowercase(),
                CaseOp::Upper => a.to_uppercase(),
                CaseOp::Trim => a.trim().to_owned(),
            })))
        }
        Node::InCidr { ip, cidrs, list } => {
            let ip = text(eval(ip, m, f)?)?;
            if !*list {
                let ip = ip.ip()?;
                return Ok(Val::Bool(cidrs[0].ok_or(Fail::Error)?.contains(ip)));
            }
            for c in cidrs {
                let ip = ip.ip()?;
                if c.ok_or(Fail::Error)?.contains(ip) {
                    return Ok(Val::Bool(true));
                }
            }
            Val::Bool(false)
        }
        Node::IsPrivate(ip) => Val::Bool(is_private(text(eval(ip, m, f)?)?.ip()?)),
        Node::Values(map, name) => {
            let map = eval(map, m, f)?;
            let name = text(eval(name, m, f)?)?.plain();
            let Val::Map(map) = map else { return Ok(Val::List(List::Empty)) };
            let lower = lower_key(&name);
            map.get(&lower).or_else(|| map.get(&name)).unwrap_or(Val::List(List::Empty))
        }
        Node::HasKey(map, name) => {
            let map = eval(map, m, f)?;
            let name = text(eval(name, m, f)?)?.plain();
            match map {
                Val::Map(map) => Val::Bool(map.get(&lower_key(&name)).is_some()),
                _ => Val::Bool(false),
            }
        }
        Node::Comprehension(c) => {
            let accu = eval(&c.accu_init, m, f)?;
            let range = match eval(&c.range, m, f)? {
                Val::List(l) => l,
                // CEL iterates a map's keys in its hash order; anything else makes cel 0.11
                // panic. Neither is something to imitate.
                Val::Map(_) => return Err(Fail::Unsupported),
                _ => return Err(Fail::Error),
            };
            let mut frame = Frame { parent: f, accu, iter: None };
            for item in range.iter() {
                if !crate::cost::spend(1) {
                    return Err(Fail::Budget);
                }
                if !truth(&eval(&c.cond, m, Some(&frame))?)? {
                    break;
                }
                frame.iter = Some(item);
                frame.accu = eval(&c.step, m, Some(&frame))?;
            }
            eval(&c.result, m, Some(&frame))?
        }
    })
}

/// `name` in ASCII lower case (borrowed when it already is).
fn lower_key<'a>(name: &Text<'a>) -> Text<'a> {
    match name {
        Text::B(s) if !s.bytes().any(|b| b.is_ascii_uppercase()) => Text::B(s),
        t => Text::Own(t.as_plain().to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Instant, SystemTime};

    use super::*;
    use crate::vars::{Needs, Vars};
    use crate::{Chain, CompileEnv, Phase, Policy, Verdict, compile_expr};

    /// A message's parts, owned.
    struct Case {
        conn: Conn,
        ep: EndpointInfo,
        method: &'static str,
        uri: http::Uri,
        headers: HeaderMap,
        res: Option<(u16, HeaderMap)>,
    }

    impl Case {
        fn new(ip: &str, method: &'static str, uri: &str, headers: &[(&str, &[u8])]) -> Case {
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_bytes(v).unwrap(),
                );
            }
            Case {
                conn: Conn {
                    client_ip: ip.parse().unwrap(),
                    client_port: 40000,
                    server_ip: "127.0.0.1".parse().unwrap(),
                    server_port: 443,
                    tls: None,
                },
                ep: EndpointInfo {
                    id: "ep_1".into(),
                    url: "https://app.example.com".into(),
                    proto: "https".into(),
                    host: "app.example.com".into(),
                    port: 443,
                },
                method,
                uri: uri.parse().unwrap(),
                headers: h,
                res: None,
            }
        }

        fn with_tls(mut self) -> Case {
            self.conn.tls = Some(TlsInfo {
                version: "1.3".into(),
                cipher_suite: "TLS13_AES_128_GCM_SHA256".into(),
                sni: "app.example.com".into(),
                client: Some(ClientCertInfo {
                    subject: "CN=alice".into(),
                    issuer: "CN=ca".into(),
                    san: vec!["alice.example.com".into(), "alice@example.com".into()],
                    serial_number: "0a".into(),
                }),
            });
            self
        }

        fn with_response(mut self, status: u16, headers: &[(&str, &str)]) -> Case {
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                );
            }
            self.res = Some((status, h));
            self
        }

        fn message(&self) -> Message<'_> {
            Message {
                conn: &self.conn,
                endpoint: &self.ep,
                now: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
                req: Some(ReqView {
                    method: self.method,
                    uri: &self.uri,
                    version: http::Version::HTTP_11,
                    headers: &self.headers,
                    scheme: "https",
                }),
                res: self.res.as_ref().map(|(s, h)| (*s, h)),
                body: None,
            }
        }
    }

    fn cases() -> Vec<Case> {
        vec![
            Case::new(
                "198.51.100.23",
                "GET",
                "/products/42?ref=home",
                &[
                    ("host", b"app.example.com"),
                    ("user-agent", b"Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0"),
                    ("cookie", b"session=abc123; theme=dark"),
                ],
            ),
            Case::new(
                "10.1.2.3",
                "DELETE",
                "/admin/users?debug=1&q=a+b&q=c%20d&Mixed=1",
                &[
                    ("host", b"internal.example.com:8080"),
                    ("user-agent", b"BadBot/1.0"),
                    ("user-agent", b"curl/8"),
                    ("x-api-version", b"1"),
                    ("x-debug", b"yes"),
                    ("x-multi", b"a1"),
                    ("x-multi", b"b2"),
                    ("content-length", b"250"),
                    ("x-bin", b"\xff\xfe"),
                ],
            ),
            Case::new(
                "203.0.113.9",
                "POST",
                "/admin/login.php?debug=0&debug=1",
                &[
                    ("host", b"app.example.com"),
                    ("x-api-version", b"2"),
                    ("x-multi", b"a1"),
                    ("x-blocked", b""),
                ],
            )
            .with_tls(),
            Case::new("::1", "HEAD", "/", &[("host", b"[::1]:443"), ("cookie", b"session=\"q\"; a")]),
            Case::new(
                "fd12::7",
                "GET",
                "/api/v2/items?debug=1",
                &[("host", b"app.example.com"), ("x-debug", b"1"), ("user-agent", b"Mozilla BadBot")],
            ),
            Case::new("::ffff:192.168.1.5", "PUT", "/a%20b/c", &[("x-multi", b"a1"), ("x-multi", b"a2")]),
            Case::new("172.16.0.1", "OPTIONS", "/?=&&k", &[("host", b"app.example.com")]).with_response(
                503,
                &[
                    ("content-type", "text/html"),
                    ("server", "nginx"),
                    ("set-cookie", "id=1; Path=/"),
                    ("set-cookie", "b=2; HttpOnly"),
                ],
            ),
            Case::new("8.8.8.8", "GET", "/x", &[("host", b"app.example.com")])
                .with_response(200, &[("content-type", "application/json")]),
        ]
    }

    /// Expressions the fast path translates (and evaluates without CEL on every case).
    const FAST: &[&str] = &[
        "conn.client_port == 1",
        "conn.client_port > 1024 && conn.server_port == 443",
        "req.method == 'DELETE'",
        "req.method != 'GET'",
        "req.method in ['GET', 'HEAD']",
        "req.method < 'H'",
        "inCidrRange(conn.client_ip, '10.0.0.0/8')",
        "inCidrRange(conn.client_ip, '192.168.0.0/16')",
        "inCidrRanges(conn.client_ip, ['192.168.0.0/16', '172.16.0.0/12', 'fd00::/8'])",
        "inCidrRanges(conn.client_ip, ['10.0.0.0/8', 'not-a-cidr'])",
        "inCidrRanges(conn.client_ip, [])",
        "inCidrRange(conn.client_ip, 'bogus')",
        "!inCidrRange(conn.client_ip, 'bogus')",
        "inCidrRange(req.method, '10.0.0.0/8') || true",
        "isPrivateIp(conn.client_ip)",
        "conn.client_ip == '10.1.2.3' || conn.client_ip == '::1'",
        "conn.client_ip.startsWith('10.') || conn.client_ip.contains(':')",
        "conn.client_ip == '::ffff:192.168.1.5'",
        "hasReqHeader('x-blocked')",
        "hasReqHeader('X-Blocked')",
        "getReqHeader('user-agent').exists(u, u.contains('BadBot'))",
        "getReqHeader('X-Multi').all(v, v.startsWith('a'))",
        "getReqHeader('x-multi').exists_one(v, v.startsWith('a'))",
        "getReqHeader('x-multi').size() == 2",
        "req.headers['x-api-version'][0] == '1'",
        "!(req.headers['x-api-version'][0] == '1')",
        "req.headers['x-api-version'][0] == '1' || req.method == 'GET'",
        "req.method == 'GET' || req.headers['x-api-version'][0] == '1'",
        "req.method == 'POST' && req.headers['x-api-version'][0] == '1'",
        "req.headers['x-api-version'][0] == '1' && false",
        "!(req.headers['x-api-version'][0] == '2' || req.method == 'PUT')",
        "!(req.method == 'PUT' || req.headers['x-api-version'][0] == '2')",
        "!(req.headers['x-api-version'][0] == '1' && false)",
        "!(req.headers['nope'][0] == 'x' && req.method == 'NOPE')",
        "!(false && req.headers['nope'][0] == 'x')",
        "!(req.headers['x-api-version'][0] == '1') || req.method == 'GET'",
        "req.method == 'GET' || !(req.headers['x-api-version'][0] == '1')",
        "req.headers['x-api-version'][0] == 1",
        "req.headers['x-multi'] == ['a1', 'b2']",
        "req.headers['x-multi'] != ['a1']",
        "req.headers['x-multi'][1] == 'b2'",
        "req.headers['x-multi'][5] == 'b2'",
        "req.headers['X-Multi'] == null",
        "size(req.headers['x-multi']) == 2",
        "size(req.headers['x-bin'][0]) == 6",
        "req.headers['x-bin'][0].startsWith('\u{fffd}')",
        "'x-debug' in req.headers",
        "has(req.headers.accept) || has(req.headers.host)",
        "req.headers.host[0] == 'app.example.com'",
        "'BadBot' in req.headers['user-agent'][0]",
        "req.url.path.startsWith('/admin') && !inCidrRange(conn.client_ip, '203.0.113.0/24')",
        "req.url.path.endsWith('.php')",
        "req.url.path.matches('^/api/v[0-9]+/')",
        "req.url.path.matches('(')",
        "req.url.path == '/a%20b/c'",
        "size(req.url.path) > 5",
        "req.host == 'internal.example.com'",
        "req.url.host == '[::1]' && req.url.port == 443",
        "req.url.port == 8080",
        "req.url.query == '' || req.url.query.contains('debug')",
        "req.url.query_params['debug'] == ['1']",
        "req.url.query_params['debug'][0] == '1'",
        "hasReqHeader('x-debug') && req.url.query_params['debug'] == ['1']",
        "getQueryParam('q') == ['a b', 'c d']",
        "getQueryParam('MIXED') == ['1'] || getQueryParam('') == ['']",
        "'debug' in req.url.query_params",
        "req.cookies['session'][0] == 'abc123' || req.cookies['session'] == ['q']",
        "'a' in req.cookies",
        "req.url.raw.contains('?debug') || req.url.raw == 'https://[::1]:443/'",
        "req.version == 'HTTP/1.1' && req.user_agent.raw.contains('curl') == false",
        "req.content_length > 100",
        "req.content_type == ''",
        "lower(req.method) == 'delete' || upper(trim(' get ')) == req.method",
        "req.method == 'GET' ? req.url.path == '/x' : req.headers['x-api-version'][0] == '2'",
        "conn.tls.sni == 'app.example.com'",
        "!(conn.tls.sni == 'x')",
        "has(conn.tls) && has(conn.tls.client)",
        "conn.tls.client.san.exists(s, s.endsWith('@example.com'))",
        "'alice.example.com' in conn.tls.client.san",
        "endpoint.host == 'app.example.com' && endpoint.port == 443 && endpoint.proto == 'https'",
        "req.method == 'GET' || 'not a bool'",
        "!(req.method == 'POST' || 'not a bool')",
        "req.method == 'HEAD' && 'not a bool'",
        "[1, 2].exists(x, x == 2) && [1, 2].all(x, x > 0)",
        "getReqHeader('x-multi').exists(v, v == 'a2' || req.headers['nope'][0] == 'x')",
        "req.method + req.url.path == 'GET/x'",
        "size(req.headers) > 2",
        "req.headers.size() == 1 || size(conn) == 5",
        "req.headers.contains('host') && !conn.contains('nope')",
        "req.headers.contains(1)",
        "req.headers.contains(null)",
    ];

    /// Response-phase expressions the fast path translates.
    const FAST_RES: &[&str] = &[
        "res.status_code >= 500",
        "res.headers['content-type'][0].startsWith('text/')",
        "hasResHeader('server') && !hasResHeader('x-nope')",
        "getResHeader('set-cookie').size() == 2",
        "res.cookies['id'][0] == '1' && res.cookies['b'] == ['2']",
        "req.method == 'OPTIONS' && res.status_code != 200",
    ];

    /// Expressions left to CEL (at compile time, or by the fast path at run time).
    const CEL: &[&str] = &[
        "time.now > timestamp('2020-01-01T00:00:00Z')",
        "req.headers.exists(k, k.startsWith('x-'))",
        "req.url.path.matches(req.method)",
        "inCidrRange(conn.client_ip, req.method)",
        "conn.client_port == 1u",
        "size(req.url.query_params) > 0",
        "req.headers == req.headers",
        "getReqHeader('x-multi') + ['c'] == ['a1', 'c']",
    ];

    fn cel(source: &str, phase: Phase, msg: &Message<'_>) -> bool {
        let program = compile_expr(source, phase).unwrap_or_else(|e| panic!("{e}"));
        let vars = Vars::default();
        let ctx = vars.context(msg, Needs::of(&program));
        matches!(program.execute(&ctx), Ok(cel::objects::Value::Bool(true)))
    }

    fn fast(source: &str, phase: Phase) -> Option<Fast> {
        Fast::compile(compile_expr(source, phase).unwrap_or_else(|e| panic!("{e}")).expression())
    }

    #[test]
    fn the_fast_path_gives_cels_answers_errors_included() {
        let cases = cases();
        let mut seen = (0, 0);
        for (list, phase) in [(FAST, Phase::HttpRequest), (FAST_RES, Phase::HttpResponse)] {
            for source in list {
                let f = fast(source, phase).unwrap_or_else(|| panic!("{source:?} has no fast form"));
                for (i, case) in cases.iter().enumerate() {
                    if phase == Phase::HttpResponse && case.res.is_none() {
                        continue;
                    }
                    let msg = case.message();
                    let got =
                        f.eval(&msg).unwrap_or_else(|| panic!("{source:?} fell back to CEL on case {i}"));
                    let want = cel(source, phase, &msg);
                    assert_eq!(got, want, "{source:?} on case {i}");
                    if want {
                        seen.0 += 1;
                    } else {
                        seen.1 += 1;
                    }
                }
            }
        }
        // Both answers occur often enough for the comparison to mean something.
        assert!(seen.0 > 100 && seen.1 > 100, "{seen:?}");
    }

    #[test]
    fn what_the_fast_path_does_not_know_is_left_to_cel() {
        let cases = cases();
        for source in CEL {
            let f = fast(source, Phase::HttpRequest);
            for case in &cases {
                let msg = case.message();
                assert_eq!(f.as_ref().and_then(|f| f.eval(&msg)), None, "{source:?}");
            }
        }
        // Through a policy, they give CEL's answers.
        let doc = CEL.iter().enumerate().map(|(i, e)| {
            format!(
                "  - expressions: [{e:?}]\n    actions: [{{type: deny, config: {{status_code: {}}}}}]\n",
                400 + i
            )
        });
        let chain = chain(&format!("on_http_request:\n{}", doc.collect::<String>()));
        for case in &cases {
            assert_eq!(outcome(&chain, case), crate::with_cel_only(|| outcome(&chain, case)));
        }
    }

    fn chain(text: &str) -> Chain {
        Chain(vec![Arc::new(Policy::from_text(text, "https", &CompileEnv::default()).unwrap())])
    }

    /// The status a chain answers with (0: go on) and the `x-seen` header it adds.
    fn outcome(chain: &Chain, case: &Case) -> (u16, Option<http::HeaderValue>) {
        let mut b = http::Request::builder().method(case.method).uri(case.uri.clone());
        for (k, v) in &case.headers {
            b = b.header(k, v);
        }
        let mut req = b.body(()).unwrap().into_parts().0;
        let (v, _) =
            chain.on_http_request(&case.conn, &case.ep, "https", &mut req, SystemTime::now(), Instant::now());
        let v = match v {
            Verdict::Respond(r) => r.status().as_u16(),
            Verdict::Close => 1,
            Verdict::Exchange(_) => 2,
            Verdict::ForwardInternal(_) => 3,
            Verdict::Continue => 0,
        };
        (v, req.headers.get("x-seen").cloned())
    }

    const BENCH_POLICY: &str = r#"
on_http_request:
  - expressions: ["inCidrRange(conn.client_ip, '10.0.0.0/8')"]
    actions: [{type: deny}]
  - expressions: ["inCidrRanges(conn.client_ip, ['192.168.0.0/16', '172.16.0.0/12'])"]
    actions: [{type: deny}]
  - expressions: ["hasReqHeader('x-blocked')"]
    actions: [{type: deny}]
  - expressions: ["getReqHeader('user-agent').exists(u, u.contains('BadBot'))"]
    actions: [{type: deny, config: {status_code: 401}}]
  - expressions: ["req.method == 'DELETE'"]
    actions: [{type: deny, config: {status_code: 405}}]
  - expressions: ["req.url.path.startsWith('/admin')", "!inCidrRange(conn.client_ip, '203.0.113.0/24')"]
    actions: [{type: deny, config: {status_code: 402}}]
  - expressions: ["req.headers['x-api-version'][0] == '1'"]
    actions: [{type: deny, config: {status_code: 410}}]
  - expressions: ["req.host == 'internal.example.com'"]
    actions: [{type: deny, config: {status_code: 409}}]
  - expressions: ["conn.client_port == 1"]
    actions: [{type: deny}]
  - expressions: ["hasReqHeader('x-debug') && req.url.query_params['debug'] == ['1']"]
    actions: [{type: deny, config: {status_code: 418}}]
  - actions: [{type: add-headers, config: {headers: {x-seen: "${req.method} ${conn.client_ip}"}}}]
"#;

    #[test]
    fn rules_with_fast_expressions_do_not_build_cel_variables() {
        let policy = Policy::from_text(BENCH_POLICY, "https", &CompileEnv::default()).unwrap();
        assert!(policy.req.iter().all(|r| r.exprs.iter().all(|e| e.fast.is_some())));
        let case = Case::new(
            "198.51.100.23",
            "GET",
            "/products/42?ref=home",
            &[("host", b"app.example.com"), ("user-agent", b"Mozilla/5.0")],
        );
        let vars = Vars::default();
        let run = crate::Run::new(case.message(), &vars);
        for rule in &policy.req[..10] {
            assert!(!run.matches(rule));
        }
        assert!(!vars.is_built(), "no rule evaluated with CEL");
        // The last rule has no expression; its action reads variables, and builds them.
        assert!(run.matches(&policy.req[10]));
        assert!(!vars.is_built());
    }

    #[test]
    fn a_policy_gives_the_same_verdicts_with_and_without_the_fast_path() {
        let chain = chain(BENCH_POLICY);
        let mut cases = cases();
        for (ip, method, uri, headers) in [
            ("8.8.8.8", "DELETE", "/", &[][..]),
            ("8.8.8.8", "GET", "/admin", &[]),
            ("203.0.113.1", "GET", "/admin", &[]),
            ("8.8.8.8", "GET", "/", &[("x-api-version", &b"1"[..])]),
            ("8.8.8.8", "GET", "/", &[("host", b"internal.example.com")]),
            ("8.8.8.8", "GET", "/?debug=1", &[("x-debug", b"")]),
            ("8.8.8.8", "GET", "/?debug=2", &[("x-debug", b"")]),
        ] {
            cases.push(Case::new(ip, method, uri, headers));
        }
        let mut statuses = Vec::new();
        for case in &cases {
            let fast = outcome(&chain, case);
            let cel = crate::with_cel_only(|| outcome(&chain, case));
            assert_eq!(fast, cel, "{} {}", case.method, case.uri);
            statuses.push(fast.0);
        }
        statuses.sort_unstable();
        statuses.dedup();
        assert_eq!(statuses, [0, 401, 402, 403, 405, 409, 410, 418]);
    }
}
