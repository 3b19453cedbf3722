//! ngrok's macros under ngrok's names (<https://ngrok.com/docs/traffic-policy/macros/>), so a
//! policy copied from ngrok's documentation compiles and gives the documented results:
//! `base64.*`, `hash.*`, `json.*`, `url.*`, `queryString.*`, `basic_auth.encode`, their
//! method forms (`'hello'.sha256('base64')`, `s.decodeJson()`, ...) and the request cookie and
//! query helpers.
//!
//! A namespaced call such as `base64.encode(x)` parses in CEL as a method call on a variable
//! named `base64`; [`crate::vars::rewrite_helpers`] turns each one ngrok documents into a call
//! of the function registered here ([`NAMESPACED`]) before the expression is parsed. Whatever
//! is left (`hash.foo(x)`, `rand.int()`) and any function warren does not have is refused when
//! the policy is compiled, by name ([`check_calls`]): an unknown function fails on every
//! message, which a rule would read as "no match", so it must never reach a visitor.
//!
//! Every function here charges the message's step budget for the size of its input (one step
//! per 64 bytes), as the metering of calls charges for the size of their output.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::objects::{Key, Map, Value};
use cel::{Context, ExecutionError, FunctionContext, ResolveResult};

/// `namespace.function(` as ngrok writes it, and the function it becomes.
pub(crate) const NAMESPACED: &[(&str, &str, &str)] = &[
    ("base64", "encode", "encodeBase64"),
    ("base64", "decode", "__base64_decode"),
    ("basic_auth", "encode", "__basic_auth"),
    ("hash", "crc32", "crc32"),
    ("hash", "crc64", "crc64"),
    ("hash", "md5", "md5"),
    ("hash", "sha1", "sha1"),
    ("hash", "sha256", "sha256"),
    ("hash", "sha512", "sha512"),
    ("hash", "xxhash64", "xxhash64"),
    ("json", "encode", "encodeJson"),
    ("json", "decode", "decodeJson"),
    ("url", "escape", "escapeUrl"),
    ("url", "unescape", "unescapeUrl"),
    ("queryString", "encode", "encodeQueryString"),
    ("queryString", "decode", "decodeQueryString"),
];

/// Every function an expression may call (CEL's standard library as cel 0.11 has it, and
/// warren's), operators apart. A call of anything else is refused at compile time.
const KNOWN: &[&str] = &[
    // cel 0.11's.
    "contains",
    "size",
    "max",
    "min",
    "startsWith",
    "endsWith",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "matches",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    // warren's (vars.rs, cost.rs).
    crate::cost::CHARGE,
    crate::cost::ITERABLE,
    "inCidrRange",
    "inCidrRanges",
    "isPrivateIp",
    "__values",
    "__has",
    "__has_key",
    "__cookie",
    "urlEncode",
    "urlDecode",
    "b64encode",
    "b64decode",
    "lower",
    "upper",
    "trim",
    // ngrok's macros (this file).
    "encodeBase64",
    "decodeBase64",
    "__base64_decode",
    "__basic_auth",
    "crc32",
    "crc64",
    "md5",
    "sha1",
    "sha256",
    "sha512",
    "xxhash64",
    "encodeJson",
    "decodeJson",
    "isJson",
    "escapeUrl",
    "unescapeUrl",
    "encodeQueryString",
    "decodeQueryString",
    "isQueryString",
];

/// Functions ngrok documents that warren refuses, and why.
const REFUSED: &[(&str, &str)] = &[
    (
        "url.parse",
        "ngrok documents only the host and scheme fields of the URL map it returns, so warren does not guess the rest; req.url has scheme, host, port, path, query and query_params",
    ),
    (
        "parseUrl",
        "ngrok documents only the host and scheme fields of the URL map it returns, so warren does not guess the rest; req.url has scheme, host, port, path, query and query_params",
    ),
];

/// The top-level variables (whatever the phase: the phase is checked apart).
const VARIABLES: &[&str] = &["conn", "req", "res", "endpoint", "time", "vars"];

/// CEL's operators (`_==_`, `_[_]`, `!_`, `@in`, ...), which are not functions.
fn is_operator(name: &str) -> bool {
    name.starts_with('@')
        || name == "!_"
        || name == "-_"
        || name.starts_with('_') && (name.ends_with('_') || name.ends_with(']')) && !name.starts_with("__")
}

/// Refuses a call of a function warren does not have, naming it: `hash.foo(x)`, `rand.int()`
/// (a method call on something that is not a variable) or `foo(x)`.
pub(crate) fn check_calls(expr: &IdedExpr) -> Result<(), String> {
    walk(expr, &mut Vec::new())
}

fn unknown(name: &str) -> String {
    match REFUSED.iter().find(|(n, _)| *n == name) {
        Some((_, why)) => format!("calls {name}(), which warren does not support: {why}"),
        None => {
            let ns = name.split_once('.').map(|(ns, _)| ns);
            let same: Vec<String> = NAMESPACED
                .iter()
                .filter(|(n, _, _)| Some(*n) == ns)
                .map(|(n, f, _)| format!("{n}.{f}"))
                .collect();
            if same.is_empty() {
                format!("uses the unknown function {name}()")
            } else {
                format!("uses the unknown function {name}() (warren has {})", same.join(", "))
            }
        }
    }
}

/// The hash functions, which take a string and optionally a format.
const HASHES: &[&str] = &["crc32", "crc64", "md5", "sha1", "sha256", "sha512", "xxhash64"];

/// A hash function's operands, when they are wrong whatever the message: more than two, or a
/// literal format other than `hex` and `base64`.
fn check_hash_format(name: &str, method: bool, args: &[IdedExpr]) -> Result<(), String> {
    let operands = args.len() + usize::from(method);
    if operands > 2 {
        return Err(format!(
            "calls {name}() with {operands} operands; it takes a string and optionally \"hex\" or \"base64\""
        ));
    }
    if operands == 2
        && let Some(Expr::Literal(cel::common::value::CelVal::String(format))) = args.last().map(|a| &a.expr)
        && format != "hex"
        && format != "base64"
    {
        return Err(format!(
            "calls {name}() with the format {format:?}; the formats are \"hex\" and \"base64\""
        ));
    }
    Ok(())
}

fn walk(e: &IdedExpr, bound: &mut Vec<String>) -> Result<(), String> {
    match &e.expr {
        Expr::Call(c) => {
            match c.target.as_deref().map(|t| &t.expr) {
                Some(Expr::Ident(ns)) if !VARIABLES.contains(&ns.as_str()) && !bound.contains(ns) => {
                    return Err(unknown(&format!("{ns}.{}", c.func_name)));
                }
                _ => {}
            }
            if !is_operator(&c.func_name) && !KNOWN.contains(&c.func_name.as_str()) {
                return Err(unknown(&c.func_name));
            }
            if HASHES.contains(&c.func_name.as_str()) {
                check_hash_format(&c.func_name, c.target.is_some(), &c.args)?;
            }
            if let Some(t) = &c.target {
                walk(t, bound)?;
            }
            c.args.iter().try_for_each(|a| walk(a, bound))
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, bound)?;
            walk(&c.accu_init, bound)?;
            let before = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.iter().cloned());
            bound.push(c.accu_var.clone());
            let r = [&c.loop_cond, &c.loop_step, &c.result].into_iter().try_for_each(|x| walk(x, bound));
            bound.truncate(before);
            r
        }
        Expr::Select(s) => walk(&s.operand, bound),
        Expr::List(l) => l.elements.iter().try_for_each(|x| walk(x, bound)),
        Expr::Map(m) => m.entries.iter().try_for_each(|en| match &en.expr {
            EntryExpr::MapEntry(me) => walk(&me.key, bound).and(walk(&me.value, bound)),
            EntryExpr::StructField(f) => walk(&f.value, bound),
        }),
        Expr::Struct(s) => s.entries.iter().try_for_each(|en| match &en.expr {
            EntryExpr::MapEntry(me) => walk(&me.key, bound).and(walk(&me.value, bound)),
            EntryExpr::StructField(f) => walk(&f.value, bound),
        }),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Ok(()),
    }
}

/// Registers the functions of this file.
pub(crate) fn register(ctx: &mut Context<'_>) {
    ctx.add_function("encodeBase64", |f: &FunctionContext| -> ResolveResult {
        use base64::Engine;
        let [v] = operands::<1>(f)?;
        Ok(s(base64::engine::general_purpose::STANDARD.encode(bytes_of(f, &v)?)))
    });
    ctx.add_function("__base64_decode", |f: &FunctionContext| -> ResolveResult {
        Ok(Value::Bytes(Arc::new(base64_decode(f)?)))
    });
    ctx.add_function("decodeBase64", |f: &FunctionContext| -> ResolveResult {
        let b = base64_decode(f)?;
        Ok(s(String::from_utf8(b).map_err(|_| f.error("the decoded bytes are not UTF-8 text"))?))
    });
    ctx.add_function("__basic_auth", |f: &FunctionContext| -> ResolveResult {
        use base64::Engine;
        let [user, pass] = operands::<2>(f)?;
        let pair = format!("{}:{}", text_of(f, &user)?, text_of(f, &pass)?);
        Ok(s(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))))
    });
    for (name, algorithm) in [
        ("crc32", Hash::Crc32),
        ("crc64", Hash::Crc64),
        ("md5", Hash::Md5),
        ("sha1", Hash::Sha1),
        ("sha256", Hash::Sha256),
        ("sha512", Hash::Sha512),
        ("xxhash64", Hash::Xxhash64),
    ] {
        ctx.add_function(name, move |f: &FunctionContext| -> ResolveResult { hash(f, algorithm) });
    }
    ctx.add_function("encodeJson", |f: &FunctionContext| -> ResolveResult {
        let [v] = operands::<1>(f)?;
        let mut out = String::new();
        json_encode(&v, &mut out, 0).map_err(|e| f.error(e))?;
        charge(f, out.len())?;
        Ok(s(out))
    });
    ctx.add_function("decodeJson", |f: &FunctionContext| -> ResolveResult {
        let [v] = operands::<1>(f)?;
        let text = text_of(f, &v)?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| f.error(format!("not JSON: {e}")))?;
        Ok(json_value(json))
    });
    ctx.add_function("isJson", |f: &FunctionContext| -> ResolveResult {
        let [v] = operands::<1>(f)?;
        let text = text_of(f, &v)?;
        Ok(Value::Bool(serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok()))
    });
    ctx.add_function("escapeUrl", |f: &FunctionContext| -> ResolveResult {
        let [v] = operands::<1>(f)?;
        Ok(s(escape(&text_of(f, &v)?, false)))
    });
    ctx.add_function("unescapeUrl", |f: &FunctionContext| -> ResolveResult {
        let [v] = operands::<1>(f)?;
        Ok(s(unescape(&text_of(f, &v)?, false).map_err(|e| f.error(e))?))
    });
    ctx.add_function("encodeQueryString", |f: &FunctionContext| -> ResolveResult {
        let [v] = operands::<1>(f)?;
        let out = query_encode(&v).map_err(|e| f.error(e))?;
        charge(f, out.len())?;
        Ok(s(out))
    });
    ctx.add_function("decodeQueryString", |f: &FunctionContext| -> ResolveResult {
        let [v] = operands::<1>(f)?;
        query_decode(&text_of(f, &v)?).map_err(|e| f.error(e))
    });
    ctx.add_function("isQueryString", |f: &FunctionContext| -> ResolveResult {
        let [v] = operands::<1>(f)?;
        Ok(Value::Bool(is_query_string(&text_of(f, &v)?)))
    });
}

fn s(v: impl Into<String>) -> Value {
    Value::String(Arc::new(v.into()))
}

/// The function's operands: the target (called as a method) then the arguments, exactly `N`.
fn operands<const N: usize>(f: &FunctionContext) -> Result<[Value; N], ExecutionError> {
    let v = all_operands(f)?;
    let n = v.len();
    v.try_into().map_err(|_| f.error(format!("takes {N} operand(s), not {n}")))
}

fn all_operands(f: &FunctionContext) -> Result<Vec<Value>, ExecutionError> {
    let mut v = Vec::with_capacity(f.args.len() + 1);
    if let Some(t) = &f.this {
        v.push(t.clone());
    }
    for a in &f.args {
        v.push(Value::resolve(a, f.ptx)?);
    }
    Ok(v)
}

/// Charges the message's step budget for `len` bytes of input.
fn charge(f: &FunctionContext, len: usize) -> Result<(), ExecutionError> {
    if crate::cost::spend((len / 64) as u64) {
        Ok(())
    } else {
        Err(f.error("the expression took too many steps"))
    }
}

fn text_of(f: &FunctionContext, v: &Value) -> Result<Arc<String>, ExecutionError> {
    match v {
        Value::String(t) => {
            charge(f, t.len())?;
            Ok(t.clone())
        }
        other => Err(f.error(format!("expects a string, not {:?}", other.type_of()))),
    }
}

fn bytes_of<'v>(f: &FunctionContext, v: &'v Value) -> Result<&'v [u8], ExecutionError> {
    let b = match v {
        Value::String(t) => t.as_bytes(),
        Value::Bytes(b) => b.as_slice(),
        other => return Err(f.error(format!("expects a string or bytes, not {:?}", other.type_of()))),
    };
    charge(f, b.len())?;
    Ok(b)
}

/// Standard alphabet, padding required (`base64.decode('aGVsbG8')` is an error, as in ngrok).
fn base64_decode(f: &FunctionContext) -> Result<Vec<u8>, ExecutionError> {
    use base64::Engine;
    let [v] = operands::<1>(f)?;
    let text = text_of(f, &v)?;
    base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(|e| f.error(format!("not base64: {e}")))
}

#[derive(Clone, Copy)]
enum Hash {
    Crc32,
    Crc64,
    Md5,
    Sha1,
    Sha256,
    Sha512,
    Xxhash64,
}

/// `hash.X(s[, 'hex' | 'base64'])` and `s.X([format])`: the digest in hex (the default) or
/// standard base64; checksums are big-endian.
fn hash(f: &FunctionContext, algorithm: Hash) -> ResolveResult {
    let ops = all_operands(f)?;
    let (input, format) = match ops.as_slice() {
        [input] => (input, "hex"),
        [input, Value::String(format)] => (input, format.as_str()),
        _ => return Err(f.error("takes a string and optionally \"hex\" or \"base64\"")),
    };
    let data = bytes_of(f, input)?;
    let digest: Vec<u8> = match algorithm {
        Hash::Crc32 => crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(data).to_be_bytes().to_vec(),
        Hash::Crc64 => crc::Crc::<u64>::new(&crc::CRC_64_GO_ISO).checksum(data).to_be_bytes().to_vec(),
        Hash::Md5 => {
            use md5::Digest;
            md5::Md5::digest(data).to_vec()
        }
        Hash::Sha1 => {
            use sha1::Digest;
            sha1::Sha1::digest(data).to_vec()
        }
        Hash::Sha256 => {
            use sha2::Digest;
            sha2::Sha256::digest(data).to_vec()
        }
        Hash::Sha512 => {
            use sha2::Digest;
            sha2::Sha512::digest(data).to_vec()
        }
        Hash::Xxhash64 => xxh64(data, 0).to_be_bytes().to_vec(),
    };
    match format {
        "hex" => Ok(s(digest.iter().fold(String::with_capacity(digest.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        }))),
        "base64" => {
            use base64::Engine;
            Ok(s(base64::engine::general_purpose::STANDARD.encode(digest)))
        }
        other => Err(f.error(format!("format {other:?}: \"hex\" or \"base64\""))),
    }
}

/// XXH64 (<https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md>).
pub(crate) fn xxh64(data: &[u8], seed: u64) -> u64 {
    const P1: u64 = 0x9E37_79B1_85EB_CA87;
    const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    const P3: u64 = 0x1656_67B1_9E37_79F9;
    const P4: u64 = 0x85EB_CA77_C2B2_AE63;
    const P5: u64 = 0x27D4_EB2F_1656_67C5;
    fn round(acc: u64, lane: u64) -> u64 {
        acc.wrapping_add(lane.wrapping_mul(P2)).rotate_left(31).wrapping_mul(P1)
    }
    fn merge(acc: u64, v: u64) -> u64 {
        (acc ^ round(0, v)).wrapping_mul(P1).wrapping_add(P4)
    }
    fn u64_at(b: &[u8]) -> u64 {
        u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
    }
    let mut rest = data;
    let mut h = if data.len() >= 32 {
        let mut v =
            [seed.wrapping_add(P1).wrapping_add(P2), seed.wrapping_add(P2), seed, seed.wrapping_sub(P1)];
        while rest.len() >= 32 {
            for (i, acc) in v.iter_mut().enumerate() {
                *acc = round(*acc, u64_at(&rest[i * 8..]));
            }
            rest = &rest[32..];
        }
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for lane in v {
            h = merge(h, lane);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(data.len() as u64);
    while rest.len() >= 8 {
        h ^= round(0, u64_at(rest));
        h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        let w = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        h ^= u64::from(w).wrapping_mul(P1);
        h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &b in rest {
        h ^= u64::from(b).wrapping_mul(P5);
        h = h.rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// How deeply `json.encode` follows lists and maps.
const JSON_DEPTH: usize = 64;

/// Compact JSON with map keys sorted (as Go's encoding/json writes maps); bytes as base64
/// (as Go writes `[]byte`), timestamps as RFC 3339.
fn json_encode(v: &Value, out: &mut String, depth: usize) -> Result<(), String> {
    if depth > JSON_DEPTH {
        return Err(format!("nested more than {JSON_DEPTH} deep"));
    }
    // A value may hold one variable many times over: the text is bounded as it is written.
    if out.len() > crate::actions::MAX_RENDERED {
        return Err(format!("the JSON text is longer than {} bytes", crate::actions::MAX_RENDERED));
    }
    let quote = |out: &mut String, t: &str| out.push_str(&serde_json::Value::from(t).to_string());
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::UInt(u) => out.push_str(&u.to_string()),
        Value::Float(x) => match serde_json::Number::from_f64(*x) {
            Some(n) => out.push_str(&n.to_string()),
            None => return Err(format!("{x} cannot be written in JSON")),
        },
        Value::String(t) => quote(out, t),
        Value::Bytes(b) => {
            use base64::Engine;
            quote(out, &base64::engine::general_purpose::STANDARD.encode(b.as_slice()))
        }
        Value::Timestamp(t) => quote(out, &t.to_rfc3339()),
        Value::List(l) => {
            out.push('[');
            for (i, x) in l.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_encode(x, out, depth + 1)?;
            }
            out.push(']');
        }
        Value::Map(m) => {
            let mut entries: Vec<(String, &Value)> = m.map.iter().map(|(k, v)| (key_text(k), v)).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            out.push('{');
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                quote(out, &k);
                out.push(':');
                json_encode(x, out, depth + 1)?;
            }
            out.push('}');
        }
        other => return Err(format!("a {:?} cannot be written in JSON", other.type_of())),
    }
    Ok(())
}

fn key_text(k: &Key) -> String {
    match k {
        Key::String(t) => t.to_string(),
        Key::Int(i) => i.to_string(),
        Key::Uint(u) => u.to_string(),
        Key::Bool(b) => b.to_string(),
    }
}

/// JSON as CEL values: integers that fit as `int` (then `uint`), other numbers as `double`.
pub(crate) fn json_value(j: serde_json::Value) -> Value {
    use serde_json::Value as J;
    match j {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(t) => s(t),
        J::Array(a) => Value::List(Arc::new(a.into_iter().map(json_value).collect())),
        J::Object(o) => {
            let m: HashMap<Key, Value> = o.into_iter().map(|(k, v)| (Key::from(k), json_value(v))).collect();
            Value::Map(Map { map: Arc::new(m) })
        }
    }
}

/// Percent-encodes every byte but `A-Z a-z 0-9 - _ . ~`; a space is `%20`, or `+` in a query
/// string (`plus`).
fn escape(t: &str, plus: bool) -> String {
    let mut out = String::with_capacity(t.len());
    for b in t.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else if plus && b == b' ' {
            out.push('+');
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decodes `%XX` (an invalid escape is an error, as in Go's `url.PathUnescape`); `+` is a space
/// only in a query string (`plus`).
fn unescape(t: &str, plus: bool) -> Result<String, String> {
    let b = t.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex
                    .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        format!("invalid escape {:?}", String::from_utf8_lossy(&b[i..(i + 3).min(b.len())]))
                    })?;
                out.push(byte);
                i += 3;
                continue;
            }
            b'+' if plus => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "the decoded text is not UTF-8".to_owned())
}

/// `{a: "b", c: ["d", "e"]}` → `a=b&c=d&c=e`: keys sorted (as Go's `url.Values.Encode`), a
/// list gives one pair per element, numbers and booleans their text.
fn query_encode(v: &Value) -> Result<String, String> {
    let Value::Map(m) = v else {
        return Err(format!("expects a map, not {:?}", v.type_of()));
    };
    let mut entries: Vec<(String, &Value)> = m.map.iter().map(|(k, v)| (key_text(k), v)).collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let scalar = |k: &str, x: &Value| -> Result<String, String> {
        Ok(match x {
            Value::String(t) => t.to_string(),
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            other => return Err(format!("{k}: a {:?} is not a query parameter value", other.type_of())),
        })
    };
    let mut pairs = Vec::with_capacity(entries.len());
    for (k, x) in entries {
        let values = match x {
            Value::List(l) => l.iter().map(|x| scalar(&k, x)).collect::<Result<Vec<_>, _>>()?,
            x => vec![scalar(&k, x)?],
        };
        for val in values {
            pairs.push(format!("{}={}", escape(&k, true), escape(&val, true)));
        }
    }
    Ok(pairs.join("&"))
}

/// `a=b&c=d` → `{a: "b", c: "d"}`: each key's first value (as Go's `url.Values.Get`), `+` and
/// `%XX` decoded; an invalid escape or a `;` is an error (as in Go's `url.ParseQuery`).
fn query_decode(t: &str) -> ResolveResult {
    let mut m: HashMap<Key, Value> = HashMap::new();
    for pair in t.split('&').filter(|p| !p.is_empty()) {
        if pair.contains(';') {
            return Err(ExecutionError::function_error("decodeQueryString", "invalid semicolon separator"));
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = unescape(k, true).map_err(|e| ExecutionError::function_error("decodeQueryString", e))?;
        let v = unescape(v, true).map_err(|e| ExecutionError::function_error("decodeQueryString", e))?;
        m.entry(Key::from(k)).or_insert_with(|| s(v));
    }
    Ok(Value::Map(Map { map: Arc::new(m) }))
}

/// A non-empty query string that [`query_decode`] accepts, of characters a URL's query may
/// hold unescaped (RFC 3986: no spaces, quotes or controls): `'a=b&c=d'` is one, `'not a query
/// string'` is not.
fn is_query_string(t: &str) -> bool {
    !t.is_empty()
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@/?%".contains(&b))
        && query_decode(t).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh64_matches_the_reference_implementation() {
        // Values from libxxhash 0.8 (XXH64 with seed 0).
        assert_eq!(format!("{:016x}", xxh64(b"hello", 0)), "26c7827d889f6da3");
        assert_eq!(format!("{:016x}", xxh64(b"", 0)), "ef46db3751d8e999");
        assert_eq!(
            format!("{:016x}", xxh64(b"Nobody inspects the spammish repetition", 0)),
            "fbcea83c8a378bf1"
        );
        let hundred: Vec<u8> = (0..100).collect();
        assert_eq!(format!("{:016x}", xxh64(&hundred, 0)), "6ac1e58032166597");
    }

    #[test]
    fn every_known_function_is_registered() {
        let root = crate::vars::root();
        for name in KNOWN {
            let p = cel::Program::compile(&format!("{name}()")).unwrap();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.execute(root)));
            if let Ok(Err(ExecutionError::UndeclaredReference(n))) = r {
                panic!("{name} is listed but not registered ({n})");
            }
        }
    }

    #[test]
    fn escaping_and_query_strings() {
        assert_eq!(escape("i;md/r/$y", false), "i%3Bmd%2Fr%2F%24y");
        assert_eq!(escape("a b", false), "a%20b");
        assert_eq!(escape("a b", true), "a+b");
        assert_eq!(unescape("i%3Bmd%2Fr%2F%24y", false).unwrap(), "i;md/r/$y");
        assert_eq!(unescape("a+b%20c", false).unwrap(), "a+b c");
        assert!(unescape("%zz", false).is_err() && unescape("%4", false).is_err());
        assert!(is_query_string("a=b&c=d") && !is_query_string("not a query string"));
        assert!(!is_query_string("") && !is_query_string("a=%zz"));
    }
}
