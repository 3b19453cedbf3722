//! HTML: escaping, the page frame, tables and forms. Pages carry no script at all, and the
//! Content-Security-Policy forbids any, so an escaping mistake cannot run code.

use std::fmt::Write;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use warren_store::{Role, User};

/// Escapes text for HTML content and double-quoted attributes.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The navigation: (path under /dashboard/, title).
const NAV: &[(&str, &str)] = &[
    ("", "Overview"),
    ("sessions", "Agent sessions"),
    ("endpoints", "Endpoints"),
    ("traffic", "Live traffic"),
    ("authtokens", "Authtokens"),
    ("api-keys", "API keys"),
    ("reserved-domains", "Domains"),
    ("reserved-addrs", "TCP addresses"),
    ("certificates", "Certificates"),
    ("ip-policies", "IP policies"),
    ("ip-policy-rules", "IP policy rules"),
    ("ip-restrictions", "IP restrictions"),
    ("users", "Users"),
    ("traffic-policy", "Traffic policy"),
    ("event-destinations", "Event destinations"),
    ("event-subscriptions", "Event subscriptions"),
];

/// Who is looking, for the frame: their e-mail, role and the CSRF token of sign-out.
pub(crate) struct Viewer<'a> {
    pub(crate) user: &'a User,
    pub(crate) csrf: &'a str,
}

/// A whole page: the frame around `body`, with `status`.
pub(crate) fn page(status: StatusCode, title: &str, viewer: Option<&Viewer<'_>>, body: &str) -> Response {
    let mut h = String::with_capacity(body.len() + 2048);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · warren</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><link rel=\"stylesheet\" href=\"/dashboard/style.css\"></head><body>",
        esc(title)
    );
    if let Some(v) = viewer {
        h.push_str("<nav><span class=\"brand\">warren</span>");
        for (path, name) in NAV {
            let _ = write!(h, "<a href=\"/dashboard/{path}\">{name}</a>");
        }
        let _ = write!(
            h,
            "<span class=\"who\"><a href=\"/dashboard/account\" id=\"who\">{}</a> <span class=\"role\">{}</span>\
             <form method=\"post\" action=\"/dashboard/sign-out\">{}<button id=\"sign-out\">Sign out</button></form></span></nav>",
            esc(&v.user.email),
            v.user.role.as_str(),
            csrf_field(v.csrf)
        );
    }
    let _ = write!(h, "<main><h1>{}</h1>{body}</main></body></html>", esc(title));
    let mut resp = (status, h).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    resp
}

/// The hidden field every form carries.
pub(crate) fn csrf_field(token: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(token))
}

/// A message box: `kind` is `error`, `ok` or `secret`.
pub(crate) fn notice(kind: &str, html: &str) -> String {
    format!("<div class=\"notice {kind}\" id=\"notice\">{html}</div>")
}

/// Whether a role may use forms that change things (the API decides each one again).
pub(crate) fn may_change(role: Role, admin_only: bool) -> bool {
    match role {
        Role::Admin => true,
        Role::Developer => !admin_only,
        Role::ReadOnly => false,
    }
}

pub(crate) const STYLE: &str = r#"
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
nav{display:flex;flex-wrap:wrap;gap:.2rem .9rem;align-items:center;padding:.6rem 1rem;background:#1d2330}
nav a{color:#cfd6e4;text-decoration:none}nav a:hover{color:#fff}
.brand{color:#fff;font-weight:700;margin-right:.6rem}.who{margin-left:auto;color:#cfd6e4;display:flex;gap:.5rem;align-items:center}
.role{font-size:.8em;border:1px solid #56607a;border-radius:3px;padding:0 .3rem}
main{padding:1rem 1.5rem;max-width:1200px}h1{font-size:1.4rem}
table{border-collapse:collapse;width:100%;background:#fff;margin:.5rem 0 1rem}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid #e3e6ec;vertical-align:top}
th{background:#eef0f4;font-weight:600}td code{font-size:.9em}
form.inline{display:inline}form.create{background:#fff;padding:.8rem;border:1px solid #e3e6ec;margin:.5rem 0 1rem}
label{display:block;margin:.5rem 0}label>input:not([type=checkbox]),label>select,label>textarea{display:block;margin-top:.2rem}input[type=text],input[type=password],input[type=email],select,textarea{width:100%;max-width:36rem;padding:.3rem;font:inherit}
textarea{font-family:ui-monospace,monospace;min-height:16rem}
button{padding:.3rem .8rem;font:inherit;cursor:pointer}
.notice{padding:.6rem .8rem;margin:.5rem 0 1rem;border-radius:4px}.error{background:#fde8e8;border:1px solid #f3b4b4}
.ok{background:#e6f6ea;border:1px solid #a8dcb5}.secret{background:#fff8e1;border:1px solid #f0d58c}
.secret pre{white-space:pre-wrap;word-break:break-all}.muted{color:#69708a}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{background:#fff;border:1px solid #e3e6ec;padding:.8rem 1.2rem;min-width:9rem}
.card b{display:block;font-size:1.6rem}
tr.e4 td{background:#fff6e5}tr.e5 td,tr.closed td{background:#fdecec}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_every_character_that_ends_text_or_an_attribute() {
        assert_eq!(
            esc("<a href=\"x\" onclick='y'>&</a>"),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(esc("plain ünïcode"), "plain ünïcode");
    }
}
