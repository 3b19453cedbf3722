//! The fields expressions may read: `req.url.path` exists, `req.urlpath` does not. CEL
//! itself would accept the latter and fail on every message (which a rule reads as "no
//! match"), so a typo would quietly switch a rule off; the document is refused instead, with
//! the field named and the fields that exist listed.

use cel::common::ast::{EntryExpr, Expr, IdedExpr};

/// What a variable's field holds, as far as checking goes.
enum Shape {
    /// A record with these fields.
    Fields(&'static [(&'static str, Shape)]),
    /// A map with keys of the message's (headers, cookies, query parameters), or a list or
    /// scalar: what lies beneath is not checked here.
    Open,
}

use Shape::{Fields, Open};

const REQ: Shape = Fields(&[
    ("method", Open),
    ("host", Open),
    ("version", Open),
    ("headers", Open),
    ("cookies", Open),
    ("user_agent", Fields(&[("raw", Open)])),
    ("content_length", Open),
    ("content_type", Open),
    (
        "url",
        Fields(&[
            ("scheme", Open),
            ("host", Open),
            ("port", Open),
            ("path", Open),
            ("query", Open),
            ("query_params", Open),
            ("raw", Open),
        ]),
    ),
]);

const RES: Shape = Fields(&[("status_code", Open), ("headers", Open), ("cookies", Open)]);

const CONN: Shape = Fields(&[
    ("client_ip", Open),
    ("client_port", Open),
    ("server_ip", Open),
    ("server_port", Open),
    (
        "tls",
        Fields(&[
            ("version", Open),
            ("cipher_suite", Open),
            ("sni", Open),
            (
                "client",
                Fields(&[("subject", Open), ("issuer", Open), ("san", Open), ("serial_number", Open)]),
            ),
        ]),
    ),
]);

const ENDPOINT: Shape =
    Fields(&[("id", Open), ("url", Open), ("proto", Open), ("host", Open), ("port", Open)]);

const TIME: Shape = Fields(&[("now", Open)]);

fn variable(name: &str) -> Option<&'static Shape> {
    match name {
        "req" => Some(&REQ),
        "res" => Some(&RES),
        "conn" => Some(&CONN),
        "endpoint" => Some(&ENDPOINT),
        "time" => Some(&TIME),
        _ => None,
    }
}

/// Checks every field selection on the known variables in `expr`. Names that comprehension
/// macros bind (`x` in `list.exists(x, ...)`) are not among them, so they are not checked.
pub(crate) fn check(expr: &IdedExpr) -> Result<(), String> {
    walk(expr)
}

/// The chain `var.a.b` of a selection, if it starts at an identifier.
fn chain(expr: &IdedExpr) -> Option<Vec<&str>> {
    match &expr.expr {
        Expr::Ident(name) => Some(vec![name.as_str()]),
        Expr::Select(s) => {
            let mut c = chain(&s.operand)?;
            c.push(s.field.as_str());
            Some(c)
        }
        _ => None,
    }
}

fn check_chain(c: &[&str]) -> Result<(), String> {
    let Some((first, rest)) = c.split_first() else { return Ok(()) };
    let Some(mut shape) = variable(first) else { return Ok(()) };
    let mut path = (*first).to_owned();
    for field in rest {
        let Fields(fields) = shape else { return Ok(()) };
        match fields.iter().find(|(n, _)| n == field) {
            Some((_, s)) => shape = s,
            None => {
                let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
                return Err(format!(
                    "{path} has no field {field:?}; it has {}",
                    names.iter().map(|n| format!("{path}.{n}")).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        path.push('.');
        path.push_str(field);
    }
    Ok(())
}

fn walk(expr: &IdedExpr) -> Result<(), String> {
    match &expr.expr {
        Expr::Select(s) => match chain(expr) {
            Some(c) => check_chain(&c),
            None => walk(&s.operand),
        },
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                walk(t)?;
            }
            c.args.iter().try_for_each(walk)
        }
        Expr::Comprehension(c) => {
            for e in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                walk(e)?;
            }
            Ok(())
        }
        Expr::List(l) => l.elements.iter().try_for_each(walk),
        Expr::Map(m) => m.entries.iter().try_for_each(|e| match &e.expr {
            EntryExpr::MapEntry(me) => walk(&me.key).and(walk(&me.value)),
            EntryExpr::StructField(f) => walk(&f.value),
        }),
        Expr::Struct(s) => s.entries.iter().try_for_each(|e| match &e.expr {
            EntryExpr::MapEntry(me) => walk(&me.key).and(walk(&me.value)),
            EntryExpr::StructField(f) => walk(&f.value),
        }),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    fn check(src: &str) -> Result<(), String> {
        super::check(cel::Program::compile(src).unwrap().expression())
    }

    #[test]
    fn known_fields_pass_and_typos_are_named_with_what_exists() {
        for ok in [
            "req.url.path == '/'",
            "req.headers['x-a'][0] == 'b' && req.headers.host.size() > 0",
            "size(req.url.query_params) > 0 && has(req.url.path)",
            "conn.tls.client.subject != '' && conn.tls.client.san.exists(s, s.endsWith('.x'))",
            "res.status_code >= 500 && endpoint.host != '' && time.now > timestamp('2020-01-01T00:00:00Z')",
            "[1, 2].exists(x, x.foo == 1)",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        let e = check("req.urlpath == '/'").unwrap_err();
        assert!(e.contains("req has no field \"urlpath\"") && e.contains("req.url"), "{e}");
        let e = check("size(req.url.pth) > 0").unwrap_err();
        assert!(e.contains("req.url has no field \"pth\"") && e.contains("req.url.path"), "{e}");
        assert!(check("conn.tls.clientt.subject == ''").is_err());
        assert!(check("res.status == 200").is_err());
        assert!(check("has(req.nope)").is_err());
    }
}
