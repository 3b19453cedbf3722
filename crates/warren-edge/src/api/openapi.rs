//! warren's OpenAPI 3.0.3 document, served without authentication at `GET /openapi.json` so
//! that API clients and code generators can be pointed at a running edge rather than at
//! ngrok's much larger specification, most of which warren does not implement.
//!
//! Every authenticated operation shares the same header, error responses and security, so the
//! document is built from a table ([`RESOURCES`]) of resources and the operations each one
//! supports; only the schemas are written out one by one. The schemas mirror the `Serialize`
//! and `Deserialize` structs of the sibling modules by hand, so [`operations`] exists for a test
//! that compares the documented routes with [`super::app`]'s.

use serde_json::{Map, Value, json};

/// The names one resource goes by in the document.
struct Resource {
    /// The collection; single items live at `{path}/{id}`.
    path: &'static str,
    /// Groups the operations in generated clients and UIs; also the plural in list summaries.
    tag: &'static str,
    /// The tag's description: the rules that apply to every operation of the resource.
    about: &'static str,
    /// PascalCase plural: operationIds are `{service}{Verb}` as in ngrok's client libraries,
    /// so generated method names look familiar; list schemas are `{service}List`.
    service: &'static str,
    /// Singular with its article, for summaries.
    noun: &'static str,
    /// The item schema; request bodies are `{schema}Create` and `{schema}Update`.
    schema: &'static str,
    /// ngrok names the array of a list response after the resource, not uniformly.
    list_key: &'static str,
    ops: &'static [Op],
}

/// The operations a resource supports; not every resource has the full set.
#[derive(Clone, Copy)]
enum Op {
    /// Newest first, paged by `limit` and `before_id`.
    List,
    Create,
    Get,
    /// PATCH answering with the updated item.
    Update,
    Delete,
    /// DELETE that is refused with 409 while something else still uses the item.
    DeleteInUse,
    /// POST `{path}/{id}/{segment}`, answering 204: (segment, operationId verb, summary).
    Action(&'static str, &'static str, &'static str),
    /// DELETE `{path}/{id}/{segment}`, answering 204: (segment, operationId verb, summary).
    SubDelete(&'static str, &'static str, &'static str),
    /// POST `{path}/{id}/{segment}` answering the item, 409 when it cannot be done:
    /// (segment, operationId verb, summary).
    ItemAction(&'static str, &'static str, &'static str),
}

const CRUD: &[Op] = &[Op::List, Op::Create, Op::Get, Op::Update, Op::Delete];

/// Every authenticated route of the API, in the order the document lists them.
const RESOURCES: &[Resource] = &[
    Resource {
        path: "/credentials",
        tag: "Credentials",
        about: "Authtokens agents authenticate with. The token itself is returned by create only. \
                `acl` limits what the token may bind; `ip_policy_ids` limit where agents may connect \
                from. Developers may change only their own.",
        service: "Credentials",
        noun: "a credential (authtoken)",
        schema: "Credential",
        list_key: "credentials",
        ops: CRUD,
    },
    Resource {
        path: "/api_keys",
        tag: "API keys",
        about: "Keys for this API. The key itself is returned by create only; a key acts with its \
                owner's role. Rotate by creating a new key, moving clients to it and deleting the old one.",
        service: "ApiKeys",
        noun: "an API key",
        schema: "ApiKey",
        list_key: "keys",
        ops: CRUD,
    },
    Resource {
        path: "/users",
        tag: "Users",
        about: "People in the account and their roles. Every role may read them; admins change them.",
        service: "Users",
        noun: "a user",
        schema: "User",
        list_key: "users",
        ops: CRUD,
    },
    Resource {
        path: "/ip_policies",
        tag: "IP policies",
        about: "Named sets of allow and deny rules, applied through IP restrictions and credentials. \
                Admins change them; one still applied somewhere cannot be deleted.",
        service: "IpPolicies",
        noun: "an IP policy",
        schema: "IpPolicy",
        list_key: "ip_policies",
        ops: &[Op::List, Op::Create, Op::Get, Op::Update, Op::DeleteInUse],
    },
    Resource {
        path: "/ip_policy_rules",
        tag: "IP policy rules",
        about: "One CIDR to allow or deny, in one IP policy. Admins change them.",
        service: "IpPolicyRules",
        noun: "an IP policy rule",
        schema: "IpPolicyRule",
        list_key: "ip_policy_rules",
        ops: CRUD,
    },
    Resource {
        path: "/ip_restrictions",
        tag: "IP restrictions",
        about: "Apply IP policies to agent, API, dashboard or endpoint access. A restriction that is \
                not enforced only logs what it would refuse. Admins change them.",
        service: "IpRestrictions",
        noun: "an IP restriction",
        schema: "IpRestriction",
        list_key: "ip_restrictions",
        ops: CRUD,
    },
    Resource {
        path: "/reserved_domains",
        tag: "Reserved domains",
        about: "Domains the account owns: no other account may bind them, on any edge node sharing \
                the store. `*.example.com` reserves every name under example.com.",
        service: "ReservedDomains",
        noun: "a reserved domain",
        schema: "ReservedDomain",
        list_key: "reserved_domains",
        ops: &[
            Op::List,
            Op::Create,
            Op::Get,
            Op::Update,
            Op::Delete,
            Op::SubDelete(
                "certificate",
                "DeleteCertificate",
                "Detach a reserved domain's uploaded certificate (ACME's or the default takes over)",
            ),
            Op::ItemAction(
                "verify",
                "Verify",
                "Check a custom domain's TXT record `_warren-challenge.<domain>` now (warren's addition); 409 says what was found",
            ),
        ],
    },
    Resource {
        path: "/tls_certificates",
        tag: "TLS certificates",
        about: "Certificates uploaded with their private key, served for the reserved domains they are \
                attached to (`certificate_id`). The key is sealed at rest and never returned.",
        service: "TlsCertificates",
        noun: "a TLS certificate",
        schema: "TlsCertificate",
        list_key: "tls_certificates",
        ops: &[Op::List, Op::Create, Op::Get, Op::Update, Op::DeleteInUse],
    },
    Resource {
        path: "/reserved_addrs",
        tag: "Reserved addresses",
        about: "TCP addresses (ports on the edge's tcp host) the account owns: no other account may \
                bind them.",
        service: "ReservedAddrs",
        noun: "a reserved TCP address",
        schema: "ReservedAddr",
        list_key: "reserved_addrs",
        ops: CRUD,
    },
    Resource {
        path: "/tunnel_sessions",
        tag: "Tunnel sessions",
        about: "Live agent sessions on every edge node sharing the database. Stop and restart reach \
                a session on another node through that node.",
        service: "TunnelSessions",
        noun: "a tunnel session",
        schema: "TunnelSession",
        list_key: "tunnel_sessions",
        ops: &[
            Op::List,
            Op::Get,
            Op::Action(
                "stop",
                "Stop",
                "Stop a tunnel session: the agent is told to stop and the session ends",
            ),
            Op::Action(
                "restart",
                "Restart",
                "Restart a tunnel session's agent; an agent that cannot restart has its session ended",
            ),
        ],
    },
    Resource {
        path: "/endpoints",
        tag: "Endpoints",
        about: "Every endpoint of the account: what agents have bound on every edge node sharing the \
                database (type `ephemeral`, read-only here), and cloud endpoints (type `cloud`), which \
                live on the edge without an agent and answer with their traffic policy alone. Admins \
                create, change and delete cloud endpoints (docs/ENDPOINTS.md).",
        service: "Endpoints",
        noun: "an endpoint",
        schema: "Endpoint",
        list_key: "endpoints",
        ops: CRUD,
    },
    Resource {
        path: "/tunnels",
        tag: "Tunnels",
        about: "The endpoints again, under ngrok's older name, for clients that still list tunnels.",
        service: "Tunnels",
        noun: "a tunnel",
        schema: "Endpoint",
        list_key: "tunnels",
        ops: &[Op::List],
    },
    Resource {
        path: "/event_destinations",
        tag: "Event destinations",
        about: "Where events go: a webhook (signed with HMAC-SHA256), a NATS subject (JetStream) or \
                a JSON-lines file in the edge's events directory (docs/EVENTS.md). A webhook's secret is in the response to \
                create only. `delivery` shows how delivery goes. Every role may read them; admins \
                change them.",
        service: "EventDestinations",
        noun: "an event destination",
        schema: "EventDestination",
        list_key: "event_destinations",
        ops: &[Op::List, Op::Create, Op::Get, Op::Update, Op::DeleteInUse],
    },
    Resource {
        path: "/event_subscriptions",
        tag: "Event subscriptions",
        about: "Which event types (sources, each with an optional CEL filter over `ev` and a field \
                selection) go to which destinations. Every role may read them; admins change them.",
        service: "EventSubscriptions",
        noun: "an event subscription",
        schema: "EventSubscription",
        list_key: "event_subscriptions",
        ops: CRUD,
    },
];

/// `/event_subscriptions/{id}/sources`: a subscription's sources one at a time, keyed by their
/// event type (not paged: a subscription has a few).
const EVENT_SOURCES: Resource = Resource {
    path: "/event_subscriptions/{id}/sources",
    tag: "Event sources",
    about: "A subscription's sources, one at a time, by event type. Admins change them.",
    service: "EventSources",
    noun: "an event source",
    schema: "EventSource",
    list_key: "sources",
    ops: &[],
};

/// `/traffic_policy`: a single document per account (GET, PUT, DELETE at the path itself).
const TRAFFIC_POLICY: Resource = Resource {
    path: "/traffic_policy",
    tag: "Traffic policy",
    about: "The account-wide traffic policy (a warren addition): ngrok's Traffic Policy format, \
            run before every endpoint's own policy so agents cannot undo it. Every role may read \
            it; admins set and remove it. A change restarts the account's agent sessions, which \
            bind again under it. A document that does not compile is refused with 400 and the reason.",
    service: "TrafficPolicy",
    noun: "the account's traffic policy",
    schema: "TrafficPolicy",
    list_key: "",
    ops: &[],
};

/// The error responses every authenticated operation can give: (status, component, description).
/// The version header, key and rate limit are checked before any handler, hence on every route.
const ERRORS: [(&str, &str, &str); 5] = [
    ("400", "BadRequest", "The body, the query or the Ngrok-Version header is invalid."),
    ("401", "Unauthorized", "The API key is missing, invalid, deleted or expired."),
    ("403", "Forbidden", "The key's role or an enforced `api` IP restriction does not allow this."),
    ("404", "NotFound", "No such resource in this account."),
    ("429", "TooManyRequests", "Too many requests with this API key; retry after Retry-After seconds."),
];

/// Creating something can collide with what exists (an email, a domain, a port), and deleting
/// an IP policy with what still applies it.
const CONFLICT: (&str, &str, &str) =
    ("409", "Conflict", "It already exists, or (deleting) something still uses it.");

/// The HTTP methods OpenAPI allows as keys of a path item, with the spelling routers use.
#[cfg(test)]
const METHODS: [(&str, &str); 8] = [
    ("get", "GET"),
    ("put", "PUT"),
    ("post", "POST"),
    ("delete", "DELETE"),
    ("options", "OPTIONS"),
    ("head", "HEAD"),
    ("patch", "PATCH"),
    ("trace", "TRACE"),
];

/// The whole OpenAPI document. Built on every call: it is small and rarely fetched, and a
/// value built once would need a lazy static for no gain.
pub(crate) fn document() -> Value {
    let mut schemas = schemas();
    let mut paths = Map::new();
    let mut tags = Vec::new();
    for r in RESOURCES {
        tags.push(json!({"name": r.tag, "description": r.about}));
        for &op in r.ops {
            let s = spec(r, op);
            let (method, path) = (s.method, s.path.clone());
            let built = operation(r, s, &schemas);
            paths.entry(path).or_insert_with(|| json!({}))[method] = built;
        }
        if r.ops.iter().any(|op| matches!(op, Op::List)) {
            schemas.insert(format!("{}List", r.service), list_schema(r));
        }
    }
    // The account's traffic policy is one document, not a collection.
    let r = &TRAFFIC_POLICY;
    tags.push(json!({"name": r.tag, "description": r.about}));
    let one = |method, verb, summary: &str, body: Option<&str>, status, reply: Option<&str>| Spec {
        method,
        path: r.path.to_owned(),
        verb,
        summary: summary.to_owned(),
        body: body.map(str::to_owned),
        status,
        reply: reply.map(str::to_owned),
        ..Spec::default()
    };
    let mut item = json!({});
    item["get"] = operation(
        r,
        one("get", "Get", "Get the account's traffic policy", None, "200", Some(r.schema)),
        &schemas,
    );
    item["put"] = operation(
        r,
        one(
            "put",
            "Replace",
            "Set the account's traffic policy",
            Some("TrafficPolicyUpdate"),
            "200",
            Some(r.schema),
        ),
        &schemas,
    );
    item["delete"] = operation(
        r,
        one("delete", "Delete", "Remove the account's traffic policy", None, "204", None),
        &schemas,
    );
    paths.insert(r.path.to_owned(), item);
    // A subscription's sources.
    let r = &EVENT_SOURCES;
    tags.push(json!({"name": r.tag, "description": r.about}));
    let one =
        |method, path: &str, verb, summary: &str, body: Option<&str>, status, reply: Option<&str>| Spec {
            method,
            path: path.to_owned(),
            verb,
            summary: summary.to_owned(),
            body: body.map(str::to_owned),
            status,
            reply: reply.map(str::to_owned),
            ..Spec::default()
        };
    let item_path = format!("{}/{{type}}", r.path);
    let mut list = json!({});
    list["get"] = operation(
        r,
        one("get", r.path, "List", "List a subscription's sources", None, "200", Some("EventSourceList")),
        &schemas,
    );
    let mut create = one(
        "post",
        r.path,
        "Create",
        "Add a source to a subscription",
        Some("EventSourceCreate"),
        "201",
        Some(r.schema),
    );
    create.conflict = true;
    list["post"] = operation(r, create, &schemas);
    paths.insert(r.path.to_owned(), list);
    let mut item = json!({});
    item["get"] = operation(
        r,
        one("get", &item_path, "Get", "Get a source by its type", None, "200", Some(r.schema)),
        &schemas,
    );
    item["patch"] = operation(
        r,
        one(
            "patch",
            &item_path,
            "Update",
            "Change a source's filter or fields",
            Some("EventSourceUpdate"),
            "200",
            Some(r.schema),
        ),
        &schemas,
    );
    item["delete"] =
        operation(r, one("delete", &item_path, "Delete", "Remove a source", None, "204", None), &schemas);
    paths.insert(item_path, item);
    tags.push(json!({"name": "OpenAPI", "description": "This document."}));
    paths.insert(
        "/openapi.json".to_owned(),
        json!({"get": {
            "tags": ["OpenAPI"],
            "operationId": "OpenApiGet",
            "summary": "This OpenAPI document",
            "description": "Needs neither an API key nor the Ngrok-Version header, so tools can fetch it.",
            "security": [],
            "responses": {"200": {
                "description": "The OpenAPI 3.0.3 document describing this API.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }},
        }}),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "warren API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The REST API of a warren edge, compatible with ngrok API v2: ngrok API \
                clients work by changing the base URL. Send `Authorization: Bearer <API key>` and \
                `Ngrok-Version: 2`. Lists are newest first, paged with `limit` and `before_id` and \
                `next_page_uri`; times are RFC 3339; errors are `{error_code, status_code, msg, details}`.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": tags,
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key, as created by `POST /api_keys` or written at bootstrap.",
            }},
            "parameters": parameters(),
            "responses": responses(),
            "schemas": schemas,
        },
    })
}

/// Every documented (method, path), e.g. `("GET", "/credentials/{id}")`, sorted. Read back from
/// [`document`] rather than from [`RESOURCES`] so that a test comparing it with the router
/// checks what clients actually see. Test-only: nothing at run time needs it.
#[cfg(test)]
pub(crate) fn operations() -> Vec<(&'static str, String)> {
    let doc = document();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (key, method) in METHODS {
            if item.get(key).is_some() {
                ops.push((method, path.clone()));
            }
        }
    }
    ops.sort();
    ops
}

/// The parts of an operation that differ between operations; [`operation`] adds the rest.
#[derive(Default)]
struct Spec {
    method: &'static str,
    path: String,
    verb: &'static str,
    summary: String,
    paged: bool,
    /// Request body schema.
    body: Option<String>,
    status: &'static str,
    /// Response body schema; `None` for 204.
    reply: Option<String>,
    conflict: bool,
}

fn spec(r: &Resource, op: Op) -> Spec {
    let item = format!("{}/{{id}}", r.path);
    match op {
        Op::List => Spec {
            method: "get",
            path: r.path.to_owned(),
            verb: "List",
            summary: format!("List {}", mid_sentence(r.tag)),
            paged: true,
            status: "200",
            reply: Some(format!("{}List", r.service)),
            ..Spec::default()
        },
        Op::Create => Spec {
            method: "post",
            path: r.path.to_owned(),
            verb: "Create",
            summary: format!("Create {}", r.noun),
            body: Some(format!("{}Create", r.schema)),
            status: "201",
            reply: Some(r.schema.to_owned()),
            conflict: true,
            ..Spec::default()
        },
        Op::Get => Spec {
            method: "get",
            path: item,
            verb: "Get",
            summary: format!("Get {}", r.noun),
            status: "200",
            reply: Some(r.schema.to_owned()),
            ..Spec::default()
        },
        Op::Update => Spec {
            method: "patch",
            path: item,
            verb: "Update",
            summary: format!("Update {}", r.noun),
            body: Some(format!("{}Update", r.schema)),
            status: if matches!(op, Op::Update) { "200" } else { "204" },
            reply: matches!(op, Op::Update).then(|| r.schema.to_owned()),
            ..Spec::default()
        },
        Op::Delete | Op::DeleteInUse => Spec {
            method: "delete",
            path: item,
            verb: "Delete",
            summary: format!("Delete {}", r.noun),
            status: "204",
            conflict: matches!(op, Op::DeleteInUse),
            ..Spec::default()
        },
        Op::Action(segment, verb, summary) => Spec {
            method: "post",
            path: format!("{item}/{segment}"),
            verb,
            summary: summary.to_owned(),
            status: "204",
            ..Spec::default()
        },
        Op::SubDelete(segment, verb, summary) => Spec {
            method: "delete",
            path: format!("{item}/{segment}"),
            verb,
            summary: summary.to_owned(),
            status: "204",
            ..Spec::default()
        },
        Op::ItemAction(segment, verb, summary) => Spec {
            method: "post",
            path: format!("{item}/{segment}"),
            verb,
            summary: summary.to_owned(),
            status: "200",
            reply: Some(r.schema.to_owned()),
            conflict: true,
            ..Spec::default()
        },
    }
}

/// One operation object. The `{id}` path parameter is declared whenever the path has one, so
/// the template and the parameters cannot disagree.
fn operation(r: &Resource, s: Spec, schemas: &Map<String, Value>) -> Value {
    let mut parameters = vec![parameter("NgrokVersion")];
    if s.path.contains("{id}") {
        parameters.push(parameter("Id"));
    }
    if s.path.contains("{type}") {
        parameters.push(parameter("EventType"));
    }
    if s.paged {
        parameters.extend([parameter("Limit"), parameter("BeforeId")]);
    }
    let mut responses = Map::new();
    let ok = match &s.reply {
        Some(schema) => json!({
            "description": if s.status == "201" { "Created." } else { "OK." },
            "content": {"application/json": {"schema": schema_ref(schema)}},
        }),
        None => json!({"description": "Done; no body."}),
    };
    responses.insert(s.status.to_owned(), ok);
    let conflict = s.conflict.then_some(CONFLICT);
    for (status, name, _) in ERRORS.into_iter().chain(conflict) {
        responses.insert(status.to_owned(), json!({"$ref": format!("#/components/responses/{name}")}));
    }
    let mut op = json!({
        "tags": [r.tag],
        "operationId": format!("{}{}", r.service, s.verb),
        "summary": s.summary,
        "parameters": parameters,
        "responses": responses,
    });
    if let Some(body) = &s.body {
        op["requestBody"] = request_body(body, schemas);
    }
    op
}

fn parameter(name: &str) -> Value {
    json!({"$ref": format!("#/components/parameters/{name}")})
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// An empty body is read as `{}` (see `parse_body`), so the body itself is required only when
/// its schema has required fields.
fn request_body(schema: &str, schemas: &Map<String, Value>) -> Value {
    let required = schemas
        .get(schema)
        .and_then(|s| s.get("required"))
        .and_then(Value::as_array)
        .is_some_and(|r| !r.is_empty());
    json!({"required": required, "content": {"application/json": {"schema": schema_ref(schema)}}})
}

/// Tags are capitalised for display; summaries use them mid-sentence, where an acronym ("API
/// keys", "IP policies") must keep its capitals.
fn mid_sentence(tag: &str) -> String {
    let mut chars = tag.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if second.is_lowercase() => {
            format!("{}{}", first.to_lowercase(), &tag[first.len_utf8()..])
        }
        _ => tag.to_owned(),
    }
}

fn parameters() -> Value {
    json!({
        "NgrokVersion": {
            "name": "Ngrok-Version",
            "in": "header",
            "required": true,
            "description": "The API version; only 2 is supported, and without it every call is a 400.",
            "schema": {"type": "string", "enum": ["2"]},
        },
        "Id": {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
        "EventType": {
            "name": "type",
            "in": "path",
            "required": true,
            "description": "The source's event type, e.g. `http_request_complete.v0`.",
            "schema": {"type": "string"},
        },
        "Limit": {
            "name": "limit",
            "in": "query",
            "required": false,
            "description": "Items per page; larger values are treated as 100.",
            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 100},
        },
        "BeforeId": {
            "name": "before_id",
            "in": "query",
            "required": false,
            "description": "Only items older than this id (ids sort by creation time); \
                `next_page_uri` carries it for the next page.",
            "schema": {"type": "string"},
        },
    })
}

fn responses() -> Value {
    let mut out = Map::new();
    for (_, name, description) in ERRORS.into_iter().chain([CONFLICT]) {
        let mut response = json!({
            "description": description,
            "content": {"application/json": {"schema": schema_ref("Error")}},
        });
        if name == "TooManyRequests" {
            response["headers"] = json!({"Retry-After": {
                "description": "Seconds until the key's rate-limit window ends.",
                "schema": {"type": "integer"},
            }});
        }
        out.insert(name.to_owned(), response);
    }
    Value::Object(out)
}

/// `{<list_key>: [items], uri, next_page_uri}`, as every list handler returns.
fn list_schema(r: &Resource) -> Value {
    let mut props = json!({
        "uri": string(),
        "next_page_uri": doc(nullable(), "The next (older) page, or null on the last page."),
    });
    props[r.list_key] = json!({"type": "array", "items": schema_ref(r.schema)});
    response(props)
}

fn string() -> Value {
    json!({"type": "string"})
}

/// `Option<String>` in a response, or a field that may be sent as null.
fn nullable() -> Value {
    json!({"type": "string", "nullable": true})
}

fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

fn boolean() -> Value {
    json!({"type": "boolean"})
}

fn one_of(values: &[&str]) -> Value {
    json!({"type": "string", "enum": values})
}

fn doc(mut schema: Value, description: &str) -> Value {
    schema["description"] = Value::from(description);
    schema
}

/// `Option<T>` for a `T` other than a plain string (see [`nullable`]).
fn or_null(mut schema: Value) -> Value {
    schema["nullable"] = Value::Bool(true);
    schema
}

/// A response body: every field is always serialized (`None` as null), so all are required.
/// Unknown properties stay allowed so fields added later do not break generated clients.
fn response(props: Value) -> Value {
    let required: Vec<String> = props.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    json!({"type": "object", "required": required, "properties": props})
}

/// A PATCH body: every field is an `Option`, so each may be left out or sent as null, and
/// either way stays as it is.
fn update(mut props: Value) -> Value {
    for field in props.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
        field["nullable"] = Value::Bool(true);
    }
    doc(request(&[], props), "Fields omitted or null are left as they are.")
}

/// A request body: the structs are `deny_unknown_fields`, so unknown properties are a 400.
/// OpenAPI 3.0 forbids an empty `required`, hence left out when nothing is.
fn request(required: &[&str], props: Value) -> Value {
    let mut schema = json!({"type": "object", "additionalProperties": false, "properties": props});
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

/// One schema per response item and per request body, mirroring the handlers' structs.
fn schemas() -> Map<String, Value> {
    let token_once = "The secret itself: in the response to create only, null afterwards.";
    let must_be_null = "Accepted for ngrok compatibility; must be null.";
    let reference = || response(json!({"id": string(), "uri": string()}));
    let body_id = || doc(string(), "ngrok's clients repeat the path's id here; it must match.");
    let mut s = Map::new();
    let mut add = |name: &str, schema: Value| {
        s.insert(name.to_owned(), schema);
    };

    add(
        "Error",
        response(json!({
            "error_code": doc(string(), "`ERR_NGROK_nnn` where ngrok has a code, else `ERR_WARREN_<status>`."),
            "status_code": {"type": "integer"},
            "msg": string(),
            "details": {"type": "object"},
        })),
    );
    add("Ref", reference());
    add(
        "TrafficPolicy",
        response(json!({
            "uri": string(),
            "traffic_policy": doc(nullable(), "The document as it was set (YAML or JSON text); null when none is set."),
            "updated_at": doc(nullable(), "When it was last set (RFC 3339); null when none is set."),
        })),
    );
    add(
        "TrafficPolicyUpdate",
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["traffic_policy"],
            "properties": {"traffic_policy": {
                "description": "The document: YAML or JSON text, or a JSON object. At most 256 KiB.",
                "oneOf": [{"type": "string"}, {"type": "object"}],
            }},
        }),
    );

    add(
        "Credential",
        response(json!({
            "id": string(),
            "uri": string(),
            "created_at": time(),
            "description": string(),
            "metadata": string(),
            "token": doc(nullable(), token_once),
            "acl": doc(strings(), "Bind rules, e.g. `bind:*.example.com`; empty allows every bind."),
            "owner_id": doc(nullable(), "The user who owns it; null for the account."),
            "ip_policy_ids": doc(strings(), "IP policies agents using this token must pass."),
        })),
    );
    add(
        "CredentialCreate",
        request(
            &[],
            json!({
                "description": string(),
                "metadata": string(),
                "acl": strings(),
                "owner_id": doc(nullable(), "Admins only, for another user; defaults to the caller's user."),
                "ip_policy_ids": strings(),
            }),
        ),
    );
    add(
        "CredentialUpdate",
        update(json!({
            "description": string(),
            "metadata": string(),
            "acl": strings(),
            "ip_policy_ids": strings(),
        })),
    );

    add(
        "ApiKey",
        response(json!({
            "id": string(),
            "uri": string(),
            "description": string(),
            "metadata": string(),
            "created_at": time(),
            "token": doc(nullable(), token_once),
            "owner_id": nullable(),
            "expires_at": doc(or_null(time()), "Null for a key that never expires."),
        })),
    );
    add(
        "ApiKeyCreate",
        request(
            &[],
            json!({
                "description": string(),
                "metadata": string(),
                "owner_id": doc(nullable(), "Admins only, for another user; defaults to the caller's user."),
                "expires_at": doc(or_null(time()), "`YYYY-MM-DDTHH:MM:SSZ`; null never expires."),
            }),
        ),
    );
    add(
        "ApiKeyUpdate",
        update(json!({
            "description": string(),
            "metadata": string(),
        })),
    );

    let role = || one_of(&["admin", "developer", "read-only"]);
    add(
        "User",
        response(json!({
            "id": string(),
            "uri": string(),
            "email": string(),
            "role": role(),
            "created_at": time(),
            "authtoken_acl": {"type": ["array", "null"], "items": string()},
            "authtoken_ip_policy_ids": strings(),
        })),
    );
    // `password` is warren's: the user's dashboard password (12 to 256 characters), stored
    // as an argon2id hash and never returned.
    let password = json!({"type": "string", "minLength": 12, "maxLength": 256, "writeOnly": true});
    add(
        "UserCreate",
        request(&["email", "role"], json!({"email": string(), "role": role(), "password": password.clone()})),
    );
    add(
        "UserUpdate",
        update(json!({
            "role": role(),
            "password": password,
            "authtoken_acl": {"type": ["array", "null"], "items": string()},
            "authtoken_ip_policy_ids": strings(),
        })),
    );

    let delivery = response(json!({
        "delivered": {"type": "integer"},
        "last_delivered_at": or_null(time()),
        "attempts": doc(json!({"type": "integer"}), "Failed tries of the oldest undelivered event; 0 when all is well."),
        "last_error": doc(string(), "Why the last try failed; empty after a success."),
        "last_error_at": or_null(time()),
        "parked_events": doc(
            or_null(json!({"type": "array", "items": response(json!({
                "event_id": string(), "event_type": string(), "error": string(),
                "attempts": {"type": "integer"}, "parked_at": time(),
            }))})),
            "Events the destination refused too often, newest first; on a single destination only.",
        ),
    }));
    let target = doc(
        json!({"type": "object", "properties": {
            "webhook": {"type": "object", "additionalProperties": false, "required": ["url"], "properties": {
                "url": doc(string(), "https (plain http and non-public addresses only where the operator allows)."),
                "secret": doc(nullable(), "The HMAC-SHA256 key, 16 to 256 characters; left out: generated. Shown once."),
                "headers": doc(
                    json!({"type": "object", "additionalProperties": {"type": "string"}}),
                    "Headers sent with every batch (a receiver's Authorization), at most 16, none of HTTP's own or Warren-*; kept sealed with the secret, shown with masked values.",
                ),
            }},
            "otlp": {"type": "object", "additionalProperties": false, "required": ["url"], "properties": {
                "url": doc(string(), "An OTLP/HTTP logs endpoint (…/v1/logs); the same address rules as webhooks."),
                "headers": doc(
                    json!({"type": "object", "additionalProperties": {"type": "string"}}),
                    "Headers sent with every batch (a collector's Authorization, a tenant id), at most 16; kept sealed, shown with masked values.",
                ),
            }},
            "nats": {"type": "object", "additionalProperties": false, "required": ["url", "subject"], "properties": {
                "url": doc(string(), "nats://host[:port], or tls://host[:port] for TLS; credentials go in `token`."),
                "subject": doc(string(), "Dot-separated tokens, no wildcards."),
                "jetstream": doc(json!({"type": "boolean", "default": true}), "Wait for a JetStream stream's acknowledgement of every event."),
                "token": doc(nullable(), "A NATS auth token; kept sealed, never shown."),
                "tls_ca": doc(nullable(), "PEM certificates to trust for a tls:// server (a private CA); left out: the public roots."),
            }},
            "file": {"type": "object", "additionalProperties": false, "required": ["name"], "properties": {
                "name": doc(string(), "A plain file name in the edge's events directory."),
                "max_bytes": {"type": "integer", "minimum": 4096, "maximum": 1_073_741_824, "default": 10_485_760},
                "max_files": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5},
            }},
        }}),
        "Exactly one of `webhook`, `otlp`, `nats` or `file`; ngrok's cloud targets are refused by name.",
    );
    add(
        "EventDestination",
        response(json!({
            "id": string(),
            "uri": string(),
            "created_at": time(),
            "description": string(),
            "metadata": string(),
            "format": one_of(&["json"]),
            "target": target.clone(),
            "delivery": delivery,
        })),
    );
    let test_event = doc(or_null(boolean()), "Not supported: true is refused.");
    add(
        "EventDestinationCreate",
        request(
            &["target"],
            json!({"description": string(), "metadata": string(), "format": one_of(&["", "json"]),
                   "target": target.clone(), "verify_with_test_event": test_event.clone()}),
        ),
    );
    add(
        "EventDestinationUpdate",
        update(
            json!({"id": body_id(), "description": string(), "metadata": string(), "format": one_of(&["", "json"]),
                      "target": target, "verify_with_test_event": test_event}),
        ),
    );
    let source = |with_uri: bool| {
        let mut props = json!({
            "type": doc(string(), "An event type warren emits (docs/EVENTS.md)."),
            "filter": doc(string(), "CEL over `ev`, the event's object; empty takes every event."),
            "fields": doc(strings(), "Dotted fields of the object to keep; empty keeps all."),
        });
        if with_uri {
            props["uri"] = string();
        }
        props
    };
    add("EventSource", response(source(true)));
    let mut create_source = source(false);
    create_source["subscription_id"] =
        doc(nullable(), "ngrok's clients repeat the path's id here; it must match.");
    add("EventSourceCreate", request(&["type"], create_source.clone()));
    add("EventSourceUpdate", update(create_source));
    add(
        "EventSourceList",
        response(json!({"uri": string(), "sources": {"type": "array", "items": schema_ref("EventSource")}})),
    );
    add(
        "EventSubscription",
        response(json!({
            "id": string(),
            "uri": string(),
            "created_at": time(),
            "description": string(),
            "metadata": string(),
            "sources": {"type": "array", "items": schema_ref("EventSource")},
            "destinations": {"type": "array", "items": schema_ref("Ref")},
        })),
    );
    let source_body = json!({"type": "array", "items": request(&["type"], source(false))});
    add(
        "EventSubscriptionCreate",
        request(
            &[],
            json!({"description": string(), "metadata": string(), "sources": source_body.clone(), "destination_ids": strings()}),
        ),
    );
    add(
        "EventSubscriptionUpdate",
        update(
            json!({"id": body_id(), "description": string(), "metadata": string(), "sources": source_body,
                      "destination_ids": strings()}),
        ),
    );
    add(
        "IpPolicy",
        response(json!({
            "id": string(),
            "uri": string(),
            "description": string(),
            "metadata": string(),
            "created_at": time(),
        })),
    );
    add("IpPolicyCreate", request(&[], json!({"description": string(), "metadata": string()})));
    add(
        "IpPolicyUpdate",
        request(&[], json!({"id": body_id(), "description": string(), "metadata": string()})),
    );

    let action = || one_of(&["allow", "deny"]);
    add(
        "IpPolicyRule",
        response(json!({
            "id": string(),
            "uri": string(),
            "cidr": string(),
            "action": action(),
            "description": string(),
            "metadata": string(),
            "created_at": time(),
            "ip_policy": schema_ref("Ref"),
        })),
    );
    add(
        "IpPolicyRuleUpdate",
        request(
            &[],
            json!({
                "id": body_id(),
                "cidr": string(),
                "action": action(),
                "description": string(),
                "metadata": string(),
            }),
        ),
    );
    add(
        "IpPolicyRuleCreate",
        request(
            &["ip_policy_id", "cidr", "action"],
            json!({
                "ip_policy_id": string(),
                "cidr": doc(string(), "An IPv4 or IPv6 network, e.g. `203.0.113.0/24`."),
                "action": action(),
                "description": string(),
                "metadata": string(),
            }),
        ),
    );

    let kind = || one_of(&["agent", "api", "dashboard", "endpoints"]);
    add(
        "IpRestriction",
        response(json!({
            "id": string(),
            "uri": string(),
            "type": kind(),
            "enforced": boolean(),
            "description": string(),
            "metadata": string(),
            "created_at": time(),
            "ip_policies": {"type": "array", "items": schema_ref("Ref")},
        })),
    );
    add(
        "IpRestrictionCreate",
        request(
            &["type", "ip_policy_ids"],
            json!({
                "type": kind(),
                "enforced": doc(json!({"type": "boolean", "default": true}), "False only logs refusals."),
                "ip_policy_ids": strings(),
                "description": string(),
                "metadata": string(),
            }),
        ),
    );
    add(
        "IpRestrictionUpdate",
        request(
            &[],
            json!({
                "id": body_id(),
                "enforced": boolean(),
                "ip_policy_ids": doc(strings(), "At least one policy."),
                "description": string(),
                "metadata": string(),
            }),
        ),
    );

    // One region per edge; ngrok clients may still send theirs, and an empty one means it.
    let region = || one_of(&["local"]);
    let region_in = || doc(one_of(&["", "local"]), "The edge's one region; empty means it.");
    add(
        "ReservedDomain",
        response(json!({
            "id": string(),
            "uri": string(),
            "created_at": time(),
            "description": string(),
            "metadata": string(),
            "domain": string(),
            "region": region(),
            "cname_target": doc(
                nullable(),
                "For a custom domain, the name its DNS CNAME must point at; null under the base domain.",
            ),
            "certificate": doc(json!({"allOf": [schema_ref("Ref")], "nullable": true}), "The uploaded certificate served for it."),
            "verification": doc(
                json!({"type": "object", "properties": {
                    "status": one_of(&["verified", "pending"]),
                    "txt_record_name": nullable(),
                    "txt_record_value": nullable(),
                    "verified_at": nullable(),
                }}),
                "Proof of control of a custom domain (warren's addition): until the TXT record holds the value, the name cannot be bound and gets no certificate.",
            ),
        })),
    );
    add(
        "ReservedDomainCreate",
        doc(
            request(
                &[],
                json!({
                    "domain": doc(nullable(), "A name; a wildcard only as the whole leftmost label."),
                    "name": doc(json!({"type": "string", "nullable": true, "deprecated": true}), "ngrok's older spelling of `domain`."),
                    "region": region_in(),
                "description": string(),
                "metadata": string(),
                    "certificate_id": doc(nullable(), "An uploaded certificate covering the domain."),
                    "certificate_management_policy": doc(json!({"type": "object", "nullable": true}), must_be_null),
                }),
            ),
            "`domain` (or `name`) is required.",
        ),
    );
    add(
        "ReservedDomainUpdate",
        update(json!({
            "id": body_id(),
            "description": string(),
            "metadata": string(),
            "certificate_id": doc(nullable(), "Attach an uploaded certificate covering the domain."),
            "certificate_management_policy": doc(json!({"type": "object", "nullable": true}), must_be_null),
        })),
    );
    add(
        "TlsCertificate",
        response(json!({
            "id": string(),
            "uri": string(),
            "created_at": time(),
            "description": string(),
            "metadata": string(),
            "certificate_pem": string(),
            "subject_common_name": string(),
            "subject_alternative_names": {"type": "object", "properties": {"dns_names": strings(), "ips": strings()}},
            "issuer_common_name": string(),
            "serial_number": string(),
            "not_before": time(),
            "not_after": time(),
            "private_key_type": string(),
        })),
    );
    add(
        "TlsCertificateCreate",
        request(
            &["certificate_pem", "private_key_pem"],
            json!({
                "certificate_pem": doc(string(), "The chain, leaf first."),
                "private_key_pem": doc(string(), "The leaf's key; sealed at rest, never returned."),
                "description": string(),
                "metadata": string(),
            }),
        ),
    );
    add(
        "TlsCertificateUpdate",
        update(json!({"id": body_id(), "description": string(), "metadata": string()})),
    );

    add(
        "ReservedAddr",
        response(json!({
            "id": string(),
            "uri": string(),
            "created_at": time(),
            "description": string(),
            "metadata": string(),
            "addr": doc(string(), "`host:port` on the edge's tcp host; the edge chooses the port."),
            "region": region(),
        })),
    );
    add(
        "ReservedAddrCreate",
        request(
            &[],
            json!({
                "description": string(),
                "metadata": string(),
                "region": region_in(),
                "endpoint_configuration_id": doc(nullable(), must_be_null),
            }),
        ),
    );
    add(
        "ReservedAddrUpdate",
        update(json!({
            "id": body_id(),
            "description": string(),
            "metadata": string(),
        })),
    );

    add(
        "TunnelSession",
        response(json!({
            "id": string(),
            "uri": string(),
            "agent_version": string(),
            "credential": schema_ref("Ref"),
            "ip": string(),
            "metadata": string(),
            "os": string(),
            "region": string(),
            "started_at": string(),
            "transport": string(),
        })),
    );
    add(
        "Endpoint",
        response(json!({
            "id": string(),
            "uri": string(),
            "created_at": time(),
            "updated_at": time(),
            "url": string(),
            "public_url": doc(string(), "ngrok's older name for `url`."),
            "proto": one_of(&["http", "https", "tcp", "tls"]),
            "host": string(),
            "port": json!({"type": "integer"}),
            "hostport": string(),
            "type": one_of(&["ephemeral", "cloud"]),
            "tunnel_session": doc(or_null(schema_ref("Ref")), "The agent session serving it; null for a cloud endpoint."),
            "name": doc(string(), "The endpoint's name in the agent's config."),
            "metadata": doc(string(), "Free-form metadata (at most 4 KiB)."),
            "description": doc(string(), "A description (at most 4 KiB)."),
            "upstream_url": doc(string(), "Where the agent says it forwards the endpoint's traffic."),
            "pooling_enabled": doc(boolean(), "A member of a pool: the endpoints listed with the same URL serve it together."),
            "bindings": doc(strings(), "`public`, or `internal` for an internal endpoint (`NAME.internal`)."),
            "traffic_policy": doc(nullable(), "A cloud endpoint's policy (secrets masked for roles other than admin); null for an agent's endpoint."),
        })),
    );
    add(
        "EndpointCreate",
        doc(
            request(
                &["url", "traffic_policy"],
                json!({
                    "url": doc(string(), "`https://NAME` or `http://NAME`: a name under the edge's base domain or a reserved domain of the account."),
                    "type": doc(one_of(&["cloud"]), "Only cloud endpoints are made through the API (the default)."),
                    "traffic_policy": doc(string(), "The policy document (YAML or JSON text, or an object); on_http_request must have a terminating action."),
                    "description": string(),
                    "metadata": string(),
                    "bindings": doc(strings(), "`[\"public\"]` (the default); internal cloud endpoints are refused."),
                    "pooling_enabled": doc(boolean(), "Must be false or left out: cloud endpoints do not join pools here."),
                }),
            ),
            "A cloud endpoint.",
        ),
    );
    add(
        "EndpointUpdate",
        update(json!({
            "id": body_id(),
            "url": string(),
            "traffic_policy": string(),
            "description": string(),
            "metadata": string(),
            "bindings": strings(),
            "pooling_enabled": boolean(),
        })),
    );
    s
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use super::*;

    fn collect_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|x| collect_refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
            _ => {}
        }
    }

    fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> &'a Value {
        &doc["paths"][path][method.to_ascii_lowercase().as_str()]
    }

    #[test]
    fn every_ref_resolves_under_components() {
        let doc = document();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(refs.len() > 50, "the document should be built from shared components");
        for r in refs {
            let Some(pointer) = r.strip_prefix("#/components/") else {
                panic!("{r} does not point under components");
            };
            assert!(doc["components"].pointer(&format!("/{pointer}")).is_some(), "{r} resolves to nothing");
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = document();
        let mut seen = HashSet::new();
        for (method, path) in operations() {
            let Some(id) = operation(&doc, method, &path)["operationId"].as_str() else {
                panic!("{method} {path} has no operationId");
            };
            assert!(seen.insert(id.to_owned()), "operationId {id} is used twice");
        }
    }

    #[test]
    fn path_templates_and_path_parameters_agree() {
        let doc = document();
        for (method, path) in operations() {
            let in_template: BTreeSet<&str> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .collect();
            let declared: BTreeSet<&str> = operation(&doc, method, &path)["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| match p["$ref"].as_str() {
                    Some(r) => doc.pointer(&r[1..]).unwrap_or(&Value::Null),
                    None => p,
                })
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert_eq!(in_template, declared, "{method} {path}");
        }
    }
}
