//! The pages: the overview, one page per API resource (a table, a create form, row actions),
//! and the account-wide traffic policy editor. Each page reads and changes through the API,
//! so what a role may see and do here is exactly what its API calls may.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Form;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::Value;

use super::html::{self, esc};
use super::{Dash, Session};

/// How a column's value is shown.
#[derive(Clone, Copy)]
enum Show {
    Text,
    Code,
    /// A list of strings, or of `{id}` references.
    List,
    Bool,
}

/// What a create form field becomes in the API's JSON body.
#[derive(Clone, Copy)]
enum Input {
    /// A string; omitted when empty unless required.
    Text,
    /// A string, one of these.
    Choice(&'static [&'static str]),
    /// A list of strings, one per line (or separated by commas).
    Lines,
    /// `true` when ticked.
    Check,
    /// A string in a password box; omitted when empty.
    Password,
}

struct Field {
    name: &'static str,
    label: &'static str,
    input: Input,
    required: bool,
}

const fn f(name: &'static str, label: &'static str, input: Input, required: bool) -> Field {
    Field { name, label, input, required }
}

/// One API collection as a page.
struct Resource {
    slug: &'static str,
    title: &'static str,
    /// The API collection, `/credentials`.
    api: &'static str,
    /// The list's key in the API's answer.
    key: &'static str,
    columns: &'static [(&'static str, &'static str, Show)],
    create: &'static [Field],
    /// Creating and deleting need the admin role (the API says so too; this only hides the
    /// forms from those who would be refused).
    admin_only: bool,
    /// The label of the delete button, if rows can be deleted.
    delete: Option<&'static str>,
    /// Row actions: (label, name). The name is the API path after `/{id}/` (a POST), except
    /// for users (a role: PATCH `role`) and API keys (`rotate`: a new key, then the old one
    /// deleted).
    actions: &'static [(&'static str, &'static str)],
    /// The field of a created object shown once (a token).
    secret: Option<&'static str>,
    intro: &'static str,
}

const ROLES: &[&str] = &["developer", "read-only", "admin"];

static RESOURCES: &[Resource] = &[
    Resource {
        slug: "sessions",
        title: "Agent sessions",
        api: "/tunnel_sessions",
        key: "tunnel_sessions",
        columns: &[
            ("ID", "id", Show::Code),
            ("Agent", "agent_version", Show::Text),
            ("OS", "os", Show::Text),
            ("Address", "ip", Show::Text),
            ("Authtoken", "credential.id", Show::Code),
            ("Started", "started_at", Show::Text),
        ],
        create: &[],
        admin_only: false,
        delete: None,
        actions: &[("Restart", "restart"), ("Stop", "stop")],
        secret: None,
        intro: "Agents connected now. Stop ends a session for good; restart makes the agent reconnect.",
    },
    Resource {
        slug: "endpoints",
        title: "Endpoints",
        api: "/endpoints",
        key: "endpoints",
        columns: &[
            ("URL", "public_url", Show::Code),
            ("Protocol", "proto", Show::Text),
            ("Session", "tunnel_session.id", Show::Code),
            ("Since", "created_at", Show::Text),
        ],
        create: &[],
        admin_only: false,
        delete: None,
        actions: &[],
        secret: None,
        intro: "Endpoints bound by agent sessions now.",
    },
    Resource {
        slug: "authtokens",
        title: "Authtokens",
        api: "/credentials",
        key: "credentials",
        columns: &[
            ("ID", "id", Show::Code),
            ("Description", "description", Show::Text),
            ("May bind", "acl", Show::List),
            ("IP policies", "ip_policy_ids", Show::List),
            ("Owner", "owner_id", Show::Code),
            ("Created", "created_at", Show::Text),
        ],
        create: &[
            f("description", "Description", Input::Text, false),
            f(
                "acl",
                "May bind (one rule per line, like bind:app.example.com; empty: anything)",
                Input::Lines,
                false,
            ),
            f("ip_policy_ids", "IP policies sessions must pass (ids, one per line)", Input::Lines, false),
        ],
        admin_only: false,
        delete: Some("Revoke"),
        actions: &[],
        secret: Some("token"),
        intro: "Agents authenticate with an authtoken. Revoking one ends the sessions it started.",
    },
    Resource {
        slug: "api-keys",
        title: "API keys",
        api: "/api_keys",
        key: "keys",
        columns: &[
            ("ID", "id", Show::Code),
            ("Description", "description", Show::Text),
            ("Owner", "owner_id", Show::Code),
            ("Expires", "expires_at", Show::Text),
            ("Created", "created_at", Show::Text),
        ],
        create: &[
            f("description", "Description", Input::Text, false),
            f("expires_at", "Expires (YYYY-MM-DDTHH:MM:SSZ, empty: never)", Input::Text, false),
        ],
        admin_only: false,
        delete: Some("Delete"),
        actions: &[("Rotate", "rotate")],
        secret: Some("token"),
        intro: "Keys for the REST API (Authorization: Bearer …). A key acts with its owner's role. Rotate makes a new key with the same description and owner, shows it once, and deletes the old one.",
    },
    Resource {
        slug: "reserved-domains",
        title: "Domains",
        api: "/reserved_domains",
        key: "reserved_domains",
        columns: &[
            ("Domain", "domain", Show::Code),
            ("Description", "description", Show::Text),
            ("Verification", "verification.status", Show::Text),
            ("Certificate", "certificate.id", Show::Code),
            ("ID", "id", Show::Code),
        ],
        create: &[
            f("domain", "Domain", Input::Text, true),
            f("description", "Description", Input::Text, false),
        ],
        admin_only: false,
        delete: Some("Delete"),
        actions: &[],
        secret: None,
        intro: "Reserved names only this account may bind.",
    },
    Resource {
        slug: "reserved-addrs",
        title: "TCP addresses",
        api: "/reserved_addrs",
        key: "reserved_addrs",
        columns: &[
            ("Address", "addr", Show::Code),
            ("Description", "description", Show::Text),
            ("ID", "id", Show::Code),
        ],
        create: &[f("description", "Description", Input::Text, false)],
        admin_only: false,
        delete: Some("Delete"),
        actions: &[],
        secret: None,
        intro: "Reserved tcp addresses (host:port) for tcp endpoints.",
    },
    Resource {
        slug: "certificates",
        title: "Certificates",
        api: "/tls_certificates",
        key: "tls_certificates",
        columns: &[
            ("Common name", "subject_common_name", Show::Code),
            ("Names", "subject_alternative_names.dns_names", Show::List),
            ("Issuer", "issuer_common_name", Show::Text),
            ("Expires", "not_after", Show::Text),
            ("ID", "id", Show::Code),
        ],
        create: &[],
        admin_only: false,
        delete: Some("Delete"),
        actions: &[],
        secret: None,
        intro: "Uploaded certificates (upload through the API: POST /tls_certificates). Automatic certificates of reserved domains are renewed by the edge.",
    },
    Resource {
        slug: "ip-policies",
        title: "IP policies",
        api: "/ip_policies",
        key: "ip_policies",
        columns: &[
            ("ID", "id", Show::Code),
            ("Description", "description", Show::Text),
            ("Created", "created_at", Show::Text),
        ],
        create: &[f("description", "Description", Input::Text, false)],
        admin_only: true,
        delete: Some("Delete"),
        actions: &[],
        secret: None,
        intro: "Named sets of allow and deny rules, used by IP restrictions, authtokens and restrict-ips.",
    },
    Resource {
        slug: "ip-policy-rules",
        title: "IP policy rules",
        api: "/ip_policy_rules",
        key: "ip_policy_rules",
        columns: &[
            ("CIDR", "cidr", Show::Code),
            ("Action", "action", Show::Text),
            ("Policy", "ip_policy.id", Show::Code),
            ("Description", "description", Show::Text),
            ("ID", "id", Show::Code),
        ],
        create: &[
            f("ip_policy_id", "IP policy (id)", Input::Text, true),
            f("cidr", "CIDR", Input::Text, true),
            f("action", "Action", Input::Choice(&["allow", "deny"]), true),
            f("description", "Description", Input::Text, false),
        ],
        admin_only: true,
        delete: Some("Delete"),
        actions: &[],
        secret: None,
        intro: "Each rule allows or denies one address range.",
    },
    Resource {
        slug: "ip-restrictions",
        title: "IP restrictions",
        api: "/ip_restrictions",
        key: "ip_restrictions",
        columns: &[
            ("Type", "type", Show::Text),
            ("Enforced", "enforced", Show::Bool),
            ("IP policies", "ip_policies", Show::List),
            ("Description", "description", Show::Text),
            ("ID", "id", Show::Code),
        ],
        create: &[
            f("type", "Applies to", Input::Choice(&["dashboard", "api", "agent", "endpoints"]), true),
            f("ip_policy_ids", "IP policies (ids, one per line)", Input::Lines, true),
            f("enforced", "Enforced (unticked: log only)", Input::Check, false),
            f("description", "Description", Input::Text, false),
        ],
        admin_only: true,
        delete: Some("Delete"),
        actions: &[],
        secret: None,
        intro: "Where the dashboard, the API, agents and endpoints may be used from.",
    },
    Resource {
        slug: "users",
        title: "Users",
        api: "/users",
        key: "users",
        columns: &[
            ("E-mail", "email", Show::Text),
            ("Role", "role", Show::Text),
            ("ID", "id", Show::Code),
            ("Created", "created_at", Show::Text),
        ],
        create: &[
            f("email", "E-mail", Input::Text, true),
            f("role", "Role", Input::Choice(ROLES), true),
            f("password", "Dashboard password (empty: sign in with a one-time link)", Input::Password, false),
        ],
        admin_only: true,
        delete: Some("Remove"),
        actions: &[("Make admin", "admin"), ("Make developer", "developer"), ("Make read-only", "read-only")],
        secret: None,
        intro: "Admins change everything; developers manage what they own; read-only users look.",
    },
    Resource {
        slug: "event-destinations",
        title: "Event destinations",
        api: "/event_destinations",
        key: "event_destinations",
        columns: &[
            ("ID", "id", Show::Code),
            ("Description", "description", Show::Text),
            ("Format", "format", Show::Text),
            ("Delivered", "delivery.delivered", Show::Text),
            ("Last error", "delivery.last_error", Show::Text),
        ],
        create: &[],
        admin_only: true,
        delete: Some("Delete"),
        actions: &[],
        secret: None,
        intro: "Where events go (webhook, file, NATS, OTLP); create them through the API (POST /event_destinations).",
    },
    Resource {
        slug: "event-subscriptions",
        title: "Event subscriptions",
        api: "/event_subscriptions",
        key: "event_subscriptions",
        columns: &[
            ("ID", "id", Show::Code),
            ("Description", "description", Show::Text),
            ("Sources", "sources", Show::List),
            ("Destinations", "destinations", Show::List),
        ],
        create: &[],
        admin_only: true,
        delete: Some("Delete"),
        actions: &[],
        secret: None,
        intro: "Which events go to which destinations; create them through the API (POST /event_subscriptions).",
    },
];

fn resource(slug: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.slug == slug)
}

/// An id from a path or a query: the characters ids are made of, nothing else (it goes
/// into an API path).
fn id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `a.b` of a JSON object.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| v.get(k).unwrap_or(&Value::Null))
}

fn show(v: &Value, how: Show) -> String {
    match (v, how) {
        (Value::Null, _) => "<span class=\"muted\">–</span>".into(),
        (Value::Bool(b), _) => if *b { "yes" } else { "no" }.into(),
        (Value::Array(a), _) => {
            let items: Vec<String> = a
                .iter()
                .map(|x| match x {
                    Value::String(s) => format!("<code>{}</code>", esc(s)),
                    Value::Object(_) if x.get("id").is_some() => {
                        format!("<code>{}</code>", esc(x["id"].as_str().unwrap_or("")))
                    }
                    Value::Object(_) if x.get("type").is_some() => esc(x["type"].as_str().unwrap_or("")),
                    other => esc(&other.to_string()),
                })
                .collect();
            if items.is_empty() { "<span class=\"muted\">–</span>".into() } else { items.join("<br>") }
        }
        (Value::String(s), Show::Code) if !s.is_empty() => format!("<code>{}</code>", esc(s)),
        (Value::String(s), _) if s.is_empty() => "<span class=\"muted\">–</span>".into(),
        (Value::String(s), _) => esc(s),
        (other, Show::Bool | Show::List | Show::Text | Show::Code) => esc(&other.to_string()),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct ListQuery {
    before_id: Option<String>,
}

/// The API's error message for a page: its `msg`, escaped, and the status.
fn api_error(status: StatusCode, body: &Value) -> String {
    let msg = body.get("msg").and_then(Value::as_str).unwrap_or("the request failed");
    html::notice("error", &format!("{} ({})", esc(msg), status.as_u16()))
}

/// Renders a resource page: `notice` on top (an error or a created secret), the create form
/// if the role may use it, the table.
async fn render(
    dash: &Dash,
    s: &Session,
    r: &Resource,
    before_id: Option<&str>,
    status: StatusCode,
    notice: &str,
    form: &[(String, String)],
) -> Response {
    let mut path = format!("{}?limit=50", r.api);
    if let Some(b) = before_id.filter(|b| id_ok(b)) {
        let _ = write!(path, "&before_id={b}");
    }
    let (st, list) = dash.call(s, Method::GET, &path, None).await;
    let mut body = format!("<p class=\"muted\">{}</p>{notice}", esc(r.intro));
    if !st.is_success() {
        body.push_str(&api_error(st, &list));
        return html::page(if status.is_success() { st } else { status }, r.title, Some(&s.viewer()), &body);
    }
    let may_change = html::may_change(s.user.role, r.admin_only);
    if may_change && !r.create.is_empty() {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/dashboard/{}\" class=\"create\" id=\"create\">{}",
            r.slug,
            html::csrf_field(&s.csrf)
        );
        for fl in r.create {
            let kept = form.iter().find(|(k, _)| k == fl.name).map_or("", |(_, v)| v.as_str());
            let req = if fl.required { " required" } else { "" };
            let input = match fl.input {
                Input::Text => format!(
                    "<input type=\"text\" name=\"{0}\" id=\"f-{0}\" value=\"{1}\"{req}>",
                    fl.name,
                    esc(kept)
                ),
                Input::Password => format!(
                    "<input type=\"password\" name=\"{0}\" id=\"f-{0}\" autocomplete=\"new-password\">",
                    fl.name
                ),
                Input::Lines => format!(
                    "<textarea name=\"{0}\" id=\"f-{0}\" rows=\"3\" style=\"min-height:3rem\"{req}>{1}</textarea>",
                    fl.name,
                    esc(kept)
                ),
                Input::Check => format!(
                    "<input type=\"checkbox\" name=\"{0}\" id=\"f-{0}\" value=\"on\" checked>",
                    fl.name
                ),
                Input::Choice(options) => {
                    let opts: String = options
                        .iter()
                        .map(|o| format!("<option{}>{o}</option>", if *o == kept { " selected" } else { "" }))
                        .collect();
                    format!("<select name=\"{0}\" id=\"f-{0}\">{opts}</select>", fl.name)
                }
            };
            let _ = write!(body, "<label>{} {input}</label>", esc(fl.label));
        }
        body.push_str("<button id=\"create-submit\">Create</button></form>");
    }
    let rows = list.get(r.key).and_then(Value::as_array).cloned().unwrap_or_default();
    body.push_str("<table id=\"items\"><thead><tr>");
    for (title, _, _) in r.columns {
        let _ = write!(body, "<th>{title}</th>");
    }
    let row_actions = may_change && (r.delete.is_some() || !r.actions.is_empty());
    if row_actions {
        body.push_str("<th></th>");
    }
    body.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ =
            write!(body, "<tr><td colspan=\"{}\" class=\"muted\">None yet.</td></tr>", r.columns.len() + 1);
    }
    for row in &rows {
        let id = row.get("id").and_then(Value::as_str).unwrap_or("");
        let _ = write!(body, "<tr data-id=\"{}\">", esc(id));
        for (_, path, how) in r.columns {
            let _ = write!(body, "<td>{}</td>", show(at(row, path), *how));
        }
        if row_actions {
            body.push_str("<td>");
            // A user's role buttons leave out the role they have.
            let role = row.get("role").and_then(Value::as_str);
            let mut buttons: Vec<(&str, &str)> =
                r.actions.iter().copied().filter(|(_, a)| Some(*a) != role).collect();
            if may_change && let Some(d) = r.delete {
                buttons.push((d, "delete"));
            }
            for (label, action) in buttons {
                let _ = write!(
                    body,
                    "<form method=\"post\" class=\"inline\" action=\"/dashboard/{}/{}/{action}\">{}<button class=\"act-{action}\">{label}</button></form> ",
                    r.slug,
                    esc(id),
                    html::csrf_field(&s.csrf)
                );
            }
            body.push_str("</td>");
        }
        body.push_str("</tr>");
    }
    body.push_str("</tbody></table>");
    if list.get("next_page_uri").is_some_and(|n| !n.is_null())
        && let Some(last) = rows.last().and_then(|r| r.get("id")).and_then(Value::as_str)
    {
        let _ = write!(
            body,
            "<p><a href=\"/dashboard/{}?before_id={}\" id=\"next\">Older</a></p>",
            r.slug,
            esc(last)
        );
    }
    html::page(status, r.title, Some(&s.viewer()), &body)
}

/// `GET /dashboard/{page}`.
pub(super) async fn list(
    State(dash): State<Arc<Dash>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(page): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let Some(r) = resource(&page) else { return super::not_found() };
    let s = match dash.signed_in(peer, &headers, &format!("/dashboard/{}", r.slug)).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    render(&dash, &s, r, q.before_id.as_deref(), StatusCode::OK, "", &[]).await
}

/// The API body a create form makes; a field the form should not have is an error.
fn create_body(r: &Resource, form: &[(String, String)]) -> Result<Value, String> {
    if let Some((k, _)) = form.iter().find(|(k, _)| k != "csrf" && !r.create.iter().any(|f| f.name == k)) {
        return Err(format!("unexpected field {k:?}"));
    }
    let mut body = serde_json::Map::new();
    for fl in r.create {
        let values: Vec<&str> = form.iter().filter(|(k, _)| k == fl.name).map(|(_, v)| v.as_str()).collect();
        if values.len() > 1 {
            return Err(format!("{} given twice", fl.name));
        }
        let v = values.first().copied().unwrap_or("").trim();
        let value = match fl.input {
            Input::Check => Value::Bool(v == "on"),
            Input::Lines => Value::Array(
                v.split(['\n', ','])
                    .map(str::trim)
                    .filter(|x| !x.is_empty())
                    .map(|x| Value::String(x.to_owned()))
                    .collect(),
            ),
            Input::Choice(options) => {
                if !options.contains(&v) {
                    return Err(format!("{}: choose one of {}", fl.name, options.join(", ")));
                }
                Value::String(v.to_owned())
            }
            Input::Text | Input::Password => {
                if v.is_empty() {
                    if fl.required {
                        return Err(format!("{} is required", fl.label));
                    }
                    continue;
                }
                Value::String(v.to_owned())
            }
        };
        if matches!(&value, Value::Array(a) if a.is_empty()) && !fl.required {
            continue;
        }
        body.insert(fl.name.to_owned(), value);
    }
    Ok(Value::Object(body))
}

/// `POST /dashboard/{page}`: create through the API; a token is shown once, with how to use it.
pub(super) async fn create(
    State(dash): State<Arc<Dash>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(page): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let Some(r) = resource(&page) else { return super::not_found() };
    let s = match dash.signed_in(peer, &headers, &format!("/dashboard/{}", r.slug)).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    if !Dash::csrf_ok(&s, &form) {
        return super::forged(&s);
    }
    if r.create.is_empty() {
        let msg = html::notice("error", "This page has nothing to create.");
        return render(&dash, &s, r, None, StatusCode::METHOD_NOT_ALLOWED, &msg, &[]).await;
    }
    let body = match create_body(r, &form) {
        Ok(b) => b,
        Err(e) => {
            let msg = html::notice("error", &esc(&e));
            return render(&dash, &s, r, None, StatusCode::BAD_REQUEST, &msg, &form).await;
        }
    };
    let (status, created) = dash.call(&s, Method::POST, r.api, Some(body)).await;
    if !status.is_success() {
        return render(&dash, &s, r, None, status, &api_error(status, &created), &form).await;
    }
    let Some(secret) = r.secret.and_then(|k| created.get(k)).and_then(Value::as_str) else {
        return Redirect::to(&format!("/dashboard/{}", r.slug)).into_response();
    };
    let id = created.get("id").and_then(Value::as_str).unwrap_or("");
    let mut shown = format!(
        "<p>Created <code>{}</code>. Copy it now: it is shown only this once.</p><pre id=\"secret\">{}</pre>",
        esc(id),
        esc(secret)
    );
    if r.slug == "authtokens" {
        let (connect, ca) = connect_url(&dash);
        let cas = ca.as_deref().map(|c| format!(" --connect-cas {}", esc(c))).unwrap_or_default();
        let root_cas = ca.as_deref().map(|c| format!("\n  root_cas: {}", esc(c))).unwrap_or_default();
        let _ = write!(
            shown,
            "<p>Expose a local web server on port 3000 with it:</p><pre id=\"command\">warren http 3000 --authtoken {0} --connect-url {1}{cas}</pre>\
             <p>or, in an ngrok agent config file (v3):</p><pre id=\"ngrok-config\">version: 3\nagent:\n  authtoken: {0}\n  connect_url: {1}{root_cas}</pre>",
            esc(secret),
            esc(&connect)
        );
    } else {
        let _ = write!(
            shown,
            "<p>Use it as <code>Authorization: Bearer &lt;key&gt;</code> with <code>Ngrok-Version: 2</code>, or <code>warren api … --api-key</code>.</p>"
        );
    }
    render(&dash, &s, r, None, StatusCode::CREATED, &html::notice("secret", &shown), &[]).await
}

/// Where agents connect, as `warren edge` prints it: the first public connect hostname (or
/// `localhost`: `*.localhost` names need not resolve on the agent's machine) and the
/// listener's port; and the CA file to trust when the edge's certificate is its local CA's.
fn connect_url(dash: &Dash) -> (String, Option<String>) {
    let config = &dash.shared.config;
    let host = config
        .connect_hostnames
        .iter()
        .find(|h| !h.ends_with(".localhost"))
        .map_or("localhost", String::as_str);
    let ca = config.tls_files.is_none().then(|| dash.shared.listeners.ca_cert_path.display().to_string());
    (format!("{host}:{}", config.connect_addr.port()), ca)
}

/// `POST /dashboard/{page}/{id}/{action}`: delete, stop, restart, through the API.
pub(super) async fn act(
    State(dash): State<Arc<Dash>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((page, id, action)): Path<(String, String, String)>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let Some(r) = resource(&page) else { return super::not_found() };
    let s = match dash.signed_in(peer, &headers, &format!("/dashboard/{}", r.slug)).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    if !Dash::csrf_ok(&s, &form) {
        return super::forged(&s);
    }
    if !id_ok(&id) {
        return super::not_found();
    }
    let (method, path, body) = if action == "delete" && r.delete.is_some() {
        (Method::DELETE, format!("{}/{id}", r.api), None)
    } else if let Some((_, a)) = r.actions.iter().find(|(_, a)| *a == action) {
        match r.slug {
            "users" => (Method::PATCH, format!("{}/{id}", r.api), Some(serde_json::json!({ "role": a }))),
            "api-keys" => return rotate(&dash, &s, r, &id).await,
            _ => (Method::POST, format!("{}/{id}/{a}", r.api), None),
        }
    } else {
        return super::not_found();
    };
    let (status, answer) = dash.call(&s, method, &path, body).await;
    if !status.is_success() {
        return render(&dash, &s, r, None, status, &api_error(status, &answer), &[]).await;
    }
    Redirect::to(&format!("/dashboard/{}", r.slug)).into_response()
}

/// Rotates an API key: its successor (same description, metadata and owner) is made first
/// and shown once, then the old key is deleted, each through the API as the signed-in user.
async fn rotate(dash: &Dash, s: &Session, r: &Resource, id: &str) -> Response {
    let (status, old) = dash.call(s, Method::GET, &format!("{}/{id}", r.api), None).await;
    if !status.is_success() {
        return render(dash, s, r, None, status, &api_error(status, &old), &[]).await;
    }
    let text = |k: &str| old.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let mut body = serde_json::json!({ "description": text("description"), "metadata": text("metadata") });
    // The successor never outlives the key it replaces, nor belongs to someone else.
    for k in ["owner_id", "expires_at"] {
        if let Some(v) = old.get(k).filter(|v| v.is_string()) {
            body[k] = v.clone();
        }
    }
    let (status, created) = dash.call(s, Method::POST, r.api, Some(body)).await;
    if !status.is_success() {
        return render(dash, s, r, None, status, &api_error(status, &created), &[]).await;
    }
    let (status, answer) = dash.call(s, Method::DELETE, &format!("{}/{id}", r.api), None).await;
    let token = created.get("token").and_then(Value::as_str).unwrap_or("");
    let new_id = created.get("id").and_then(Value::as_str).unwrap_or("");
    let mut shown = format!(
        "<p>Rotated <code>{}</code>: its successor is <code>{}</code>. Copy it now: it is shown only this once.</p><pre id=\"secret\">{}</pre>",
        esc(id),
        esc(new_id),
        esc(token)
    );
    if !status.is_success() {
        let _ = write!(shown, "{}", api_error(status, &answer));
        shown.push_str("<p>The old key could not be deleted; delete it by hand.</p>");
    }
    render(dash, s, r, None, StatusCode::CREATED, &html::notice("secret", &shown), &[]).await
}

/// `GET /dashboard/`: counts and what needs attention.
pub(super) async fn overview(
    State(dash): State<Arc<Dash>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let s = match dash.signed_in(peer, &headers, "/dashboard/").await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let count = |v: &Value, key: &str| {
        let n = v.get(key).and_then(Value::as_array).map_or(0, Vec::len);
        if v.get("next_page_uri").is_some_and(|n| !n.is_null()) { format!("{n}+") } else { n.to_string() }
    };
    let (_, sessions) = dash.call(&s, Method::GET, "/tunnel_sessions?limit=100", None).await;
    let (_, endpoints) = dash.call(&s, Method::GET, "/endpoints?limit=100", None).await;
    let (_, tokens) = dash.call(&s, Method::GET, "/credentials?limit=100", None).await;
    let (_, certs) = dash.call(&s, Method::GET, "/tls_certificates?limit=100", None).await;
    // Requests of the account's endpoints held by this node, and the rate since the last
    // overview of the account (the page reloads every 10 s).
    let (mut requests, mut errors) = (0u64, 0u64);
    for session in dash.shared.sessions.registry.sessions_of(&s.user.account_id) {
        for ep in dash.shared.sessions.registry.endpoints_of(&session.id) {
            let (n, e) = ep.metrics.request_totals();
            requests += n;
            errors += e;
        }
    }
    let rate = {
        let mut rates = dash.rates.lock().unwrap_or_else(|e| e.into_inner());
        if rates.len() > 10_000 {
            rates.clear();
        }
        let now = std::time::Instant::now();
        let before = rates.insert(s.user.account_id.clone(), (now, requests));
        match before {
            Some((t, n)) if requests >= n && now > t => {
                format!("{:.1}", (requests - n) as f64 / now.duration_since(t).as_secs_f64())
            }
            _ => "–".to_owned(),
        }
    };
    let mut body = format!(
        "<div class=\"cards\"><div class=\"card\" id=\"sessions-count\"><b>{}</b>agent sessions</div>\
         <div class=\"card\" id=\"endpoints-count\"><b>{}</b>endpoints</div>\
         <div class=\"card\"><b>{}</b>authtokens</div>\
         <div class=\"card\" id=\"requests\"><b>{requests}</b>requests</div>\
         <div class=\"card\" id=\"errors\"><b>{errors}</b>5xx answers</div>\
         <div class=\"card\" id=\"rate\"><b>{rate}</b>requests/s</div></div>\
         <p class=\"muted\">Requests and errors: those of the endpoints bound on this edge node now, since they were bound; \
         the rate is since this page last loaded. This page reloads every 10 seconds.</p>",
        count(&sessions, "tunnel_sessions"),
        count(&endpoints, "endpoints"),
        count(&tokens, "credentials"),
    );
    body.push_str("<h2>Endpoints</h2><table id=\"endpoints\"><thead><tr><th>URL</th><th>Protocol</th></tr></thead><tbody>");
    for e in endpoints.get("endpoints").and_then(Value::as_array).into_iter().flatten().take(20) {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td></tr>",
            show(at(e, "public_url"), Show::Code),
            show(at(e, "proto"), Show::Text)
        );
    }
    body.push_str("</tbody></table><h2>Certificates by expiry</h2><table><thead><tr><th>Name</th><th>Expires</th></tr></thead><tbody>");
    let mut certs: Vec<&Value> =
        certs.get("tls_certificates").and_then(Value::as_array).into_iter().flatten().collect();
    certs.sort_by_key(|c| c.get("not_after").and_then(Value::as_str).unwrap_or("").to_owned());
    for c in certs.iter().take(10) {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td></tr>",
            show(at(c, "subject_common_name"), Show::Code),
            show(at(c, "not_after"), Show::Text)
        );
    }
    body.push_str("</tbody></table>");
    let mut resp = html::page(StatusCode::OK, "Overview", Some(&s.viewer()), &body);
    resp.headers_mut().insert(axum::http::header::REFRESH, axum::http::HeaderValue::from_static("10"));
    resp
}

fn policy_page(s: &Session, status: StatusCode, text: &str, notice: &str, updated_at: &str) -> Response {
    let may = html::may_change(s.user.role, true);
    let mut body = format!(
        "<p class=\"muted\">The account-wide traffic policy (YAML or JSON, ngrok's format) runs before every endpoint's own. {}</p>{notice}",
        if updated_at.is_empty() { String::new() } else { format!("Last changed {}.", esc(updated_at)) }
    );
    if may {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/dashboard/traffic-policy\" id=\"policy-form\">{}\
             <textarea name=\"traffic_policy\" id=\"policy\">{}</textarea><p><button id=\"save-policy\">Save</button></p></form>",
            html::csrf_field(&s.csrf),
            esc(text)
        );
    } else {
        let _ = write!(body, "<pre id=\"policy\">{}</pre>", esc(text));
    }
    html::page(status, "Traffic policy", Some(&s.viewer()), &body)
}

/// `GET /dashboard/traffic-policy`.
pub(super) async fn policy(
    State(dash): State<Arc<Dash>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let s = match dash.signed_in(peer, &headers, "/dashboard/traffic-policy").await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let (status, v) = dash.call(&s, Method::GET, "/traffic_policy", None).await;
    if !status.is_success() {
        return policy_page(&s, status, "", &api_error(status, &v), "");
    }
    let text = v.get("traffic_policy").and_then(Value::as_str).unwrap_or("");
    let updated = v.get("updated_at").and_then(Value::as_str).unwrap_or("");
    policy_page(&s, StatusCode::OK, text, "", updated)
}

/// `POST /dashboard/traffic-policy`: saved through the API; a document the API refuses is
/// shown again as typed, with the reason above it. An empty document removes the policy.
pub(super) async fn policy_save(
    State(dash): State<Arc<Dash>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let s = match dash.signed_in(peer, &headers, "/dashboard/traffic-policy").await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    if !Dash::csrf_ok(&s, &form) {
        return super::forged(&s);
    }
    if let Some((k, _)) = form.iter().find(|(k, _)| k != "csrf" && k != "traffic_policy") {
        let msg = html::notice("error", &format!("Unexpected field {}.", esc(k)));
        return policy_page(&s, StatusCode::BAD_REQUEST, "", &msg, "");
    }
    let text = form.iter().find(|(k, _)| k == "traffic_policy").map_or("", |(_, v)| v.as_str());
    let (status, v) = if text.trim().is_empty() {
        dash.call(&s, Method::DELETE, "/traffic_policy", None).await
    } else {
        let body = serde_json::json!({ "traffic_policy": text });
        dash.call(&s, Method::PUT, "/traffic_policy", Some(body)).await
    };
    if !status.is_success() {
        return policy_page(&s, status, text, &api_error(status, &v), "");
    }
    let saved = html::notice("ok", "Saved. Agent sessions of the account reconnect to bind under it.");
    let updated = v.get("updated_at").and_then(Value::as_str).unwrap_or("");
    policy_page(&s, StatusCode::OK, text, &saved, updated)
}

/// `GET /dashboard/traffic`: the account's last requests, newest first, reloading every 5 s.
/// Opening it starts recording (for [`crate::recent::WATCH`]); until then the proxy path
/// records nothing.
pub(super) async fn traffic(
    State(dash): State<Arc<Dash>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let s = match dash.signed_in(peer, &headers, "/dashboard/traffic").await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let recent = &dash.shared.listeners.recent;
    recent.watch();
    let rows = recent.last(&s.user.account_id);
    let mut body = format!(
        "<p class=\"muted\">The last {} requests to this account's endpoints, newest first; the page reloads every 5 seconds. \
         Requests are recorded while this view is open (and {} minutes after), the fields are those of <code>http_request_complete</code> events.</p>\
         <table id=\"traffic\"><thead><tr><th>Time</th><th>Endpoint</th><th>Request</th><th>Status</th><th>Duration</th><th>Bytes</th><th>Client</th><th>User agent</th></tr></thead><tbody>",
        crate::recent::PER_ACCOUNT,
        crate::recent::WATCH.as_secs() / 60
    );
    if rows.is_empty() {
        body.push_str(
            "<tr><td colspan=\"8\" class=\"muted\">No requests since this view was opened.</td></tr>",
        );
    }
    for r in rows {
        let secs = r.at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let class = match r.status {
            0 => "closed",
            s if s >= 500 => "e5",
            s if s >= 400 => "e4",
            _ => "ok",
        };
        let _ = write!(
            body,
            "<tr class=\"{class}\"><td>{}</td><td><code>{}</code></td><td><code>{} {}</code></td><td>{}</td><td>{} ms</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&warren_store::rfc3339(secs)),
            esc(&r.endpoint_url),
            esc(&r.method),
            esc(&r.path),
            if r.status == 0 { "closed".to_owned() } else { r.status.to_string() },
            r.duration_ms,
            r.response_bytes,
            esc(&r.client_ip.to_string()),
            esc(&r.user_agent),
        );
    }
    body.push_str("</tbody></table>");
    let mut resp = html::page(StatusCode::OK, "Live traffic", Some(&s.viewer()), &body);
    resp.headers_mut().insert(axum::http::header::REFRESH, axum::http::HeaderValue::from_static("5"));
    resp
}
