//! The REST API's authorization, as one table: for every route (method and path template) and
//! every kind of caller, [`RULES`] holds the status the edge must answer, and the tests check
//! all of them against a running edge.
//!
//! What it proves:
//! - the table and the edge's own `GET /openapi.json` name the same operations, both ways, with
//!   one rule each: a route added without a rule (or a rule left for a removed route) fails;
//!   and on every path of the table, a method without a rule is not routed (405);
//! - every caller gets exactly the status its column says: account A's admin, A's developer
//!   on something they own, A's developer on something someone else owns, A's read-only user,
//!   the admin of another account B, and a request without an API key;
//! - another account never sees A's objects: every id of A is 404 to B's admin, and B's lists
//!   do not show the object made in A just before (while A's own callers' lists do);
//! - a refused change changes nothing, and another account's change changes nothing in A:
//!   after such a call the object (for a create: A's collection) reads the same to A's admin.
//!
//! Every call gets fresh objects made just before it, and every rule a fresh pair of
//! accounts, so no call depends on what another did.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};
use warren_testkit::*;

/// Who calls. The status columns of [`RULES`] are in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    /// A's admin, on objects A's developer owns (or, without owners, that A's admin made).
    Admin,
    /// A's developer, on objects they own; for `/users`, their own user record.
    DevOwn,
    /// A's developer, on objects A's admin owns; for `/users`, another user.
    DevOther,
    /// A's read-only user, on objects A's admin owns.
    ReadOnly,
    /// B's admin, on A's objects (owned by A's admin).
    OtherAccount,
    /// No `Authorization` header (the `Ngrok-Version` header is sent).
    NoKey,
}

const CALLERS: [Caller; 6] =
    [Caller::Admin, Caller::DevOwn, Caller::DevOther, Caller::ReadOnly, Caller::OtherAccount, Caller::NoKey];

/// What exists in account A before the call: the object whose id fills `{id}`, and which a list
/// must show to A's callers and hide from B's. Objects that have an owner are made by the
/// caller's [`Ctx::owner`] with their own key; the others by A's admin.
#[derive(Clone, Copy, Debug)]
enum Target {
    Nothing,
    /// An authtoken (owned).
    Credential,
    /// An API key (owned).
    ApiKey,
    /// For `DevOwn` the developer's own user; for the others a new read-only user.
    User,
    IpPolicy,
    /// A rule in a new policy.
    IpRule,
    /// A `dashboard` restriction (it applies to nothing, so it cannot lock the test out).
    IpRestriction,
    /// A reserved domain (owned).
    Domain,
    /// A reserved domain with an uploaded certificate of the same owner attached.
    DomainWithCert,
    /// An uploaded TLS certificate (owned).
    Certificate,
    /// A reserved TCP address (owned).
    Addr,
    /// A live agent session on the owner's authtoken (owned through the authtoken).
    Session,
    /// An https endpoint bound by such a session.
    Endpoint,
    /// A cloud endpoint made by A's admin.
    CloudEndpoint,
    /// A's traffic policy is set; no id, and lists are checked for the name of its rule.
    AccountPolicy,
    /// An event destination (a file) made by A's admin.
    EventDestination,
    /// An event subscription of A's admin, with an `ip_policy_created.v0` source (which
    /// fills `{type}`) and no destination.
    EventSubscription,
}

/// The JSON body sent with the call.
#[derive(Clone, Copy, Debug)]
enum Payload {
    Nothing,
    /// `{"description": ...}`: every PATCH but the one of `/users`.
    Describe,
    /// `{"role": "admin"}`.
    PromoteToAdmin,
    /// A new authtoken for the caller's owner: the caller itself for `DevOwn`, someone else
    /// for `Admin` and `DevOther`, a user of A for `OtherAccount`.
    Credential,
    /// A new API key, with `owner_id` chosen as for `Credential`.
    ApiKey,
    /// A new user with the admin role.
    User,
    IpPolicy,
    /// A new rule in a policy of A's.
    IpRule,
    /// A new `dashboard` restriction applying a policy of A's.
    IpRestriction,
    /// A new domain with `certificate_id`: a certificate for it uploaded by the caller's owner.
    Domain,
    /// A new certificate and its key.
    Certificate,
    Addr,
    /// A traffic policy document that compiles.
    Policy,
    /// A new file destination.
    EventDestination,
    /// A new cloud endpoint on a fresh name.
    CloudEndpoint,
    /// A new subscription with one source.
    EventSubscription,
    /// A new source of another type.
    EventSource,
    /// A source's new filter.
    SourceFilter,
}

type T = Target;
type P = Payload;

/// method, path template, what exists before the call, the body, and the status for each caller
/// in [`CALLERS`] order.
type Rule = (&'static str, &'static str, Target, Payload, [u16; 6]);

/// Every route of the API and what each caller gets from it.
#[rustfmt::skip]
const RULES: &[Rule] = &[
    // (method, path, target, payload, [admin, dev-own, dev-other, read-only, other-account, no-key])
    // Authtokens: developers make their own and change only their own.
    ("GET",    "/credentials",                       T::Credential,     P::Nothing,        [200, 200, 200, 200, 200, 401]),
    ("POST",   "/credentials",                       T::Nothing,        P::Credential,     [201, 201, 403, 403, 404, 401]),
    ("GET",    "/credentials/{id}",                  T::Credential,     P::Nothing,        [200, 200, 200, 200, 404, 401]),
    ("PATCH",  "/credentials/{id}",                  T::Credential,     P::Describe,       [200, 200, 403, 403, 404, 401]),
    ("DELETE", "/credentials/{id}",                  T::Credential,     P::Nothing,        [204, 204, 403, 403, 404, 401]),
    // API keys: as authtokens.
    ("GET",    "/api_keys",                          T::ApiKey,         P::Nothing,        [200, 200, 200, 200, 200, 401]),
    ("POST",   "/api_keys",                          T::Nothing,        P::ApiKey,         [201, 201, 403, 403, 404, 401]),
    ("GET",    "/api_keys/{id}",                     T::ApiKey,         P::Nothing,        [200, 200, 200, 200, 404, 401]),
    ("PATCH",  "/api_keys/{id}",                     T::ApiKey,         P::Describe,       [200, 200, 403, 403, 404, 401]),
    ("DELETE", "/api_keys/{id}",                     T::ApiKey,         P::Nothing,        [204, 204, 403, 403, 404, 401]),
    // Users: every role reads; admins change (a developer cannot promote or remove even themselves).
    ("GET",    "/users",                             T::User,           P::Nothing,        [200, 200, 200, 200, 200, 401]),
    ("POST",   "/users",                             T::Nothing,        P::User,           [201, 403, 403, 403, 201, 401]),
    ("GET",    "/users/{id}",                        T::User,           P::Nothing,        [200, 200, 200, 200, 404, 401]),
    ("PATCH",  "/users/{id}",                        T::User,           P::PromoteToAdmin, [200, 403, 403, 403, 404, 401]),
    ("DELETE", "/users/{id}",                        T::User,           P::Nothing,        [204, 403, 403, 403, 404, 401]),
    // IP policies, rules and restrictions: every role reads; admins change.
    ("GET",    "/ip_policies",                       T::IpPolicy,       P::Nothing,        [200, 200, 200, 200, 200, 401]),
    ("POST",   "/ip_policies",                       T::Nothing,        P::IpPolicy,       [201, 403, 403, 403, 201, 401]),
    ("GET",    "/ip_policies/{id}",                  T::IpPolicy,       P::Nothing,        [200, 200, 200, 200, 404, 401]),
    ("PATCH",  "/ip_policies/{id}",                  T::IpPolicy,       P::Describe,       [200, 403, 403, 403, 404, 401]),
    ("DELETE", "/ip_policies/{id}",                  T::IpPolicy,       P::Nothing,        [204, 403, 403, 403, 404, 401]),
    ("GET",    "/ip_policy_rules",                   T::IpRule,         P::Nothing,        [200, 200, 200, 200, 200, 401]),
    ("POST",   "/ip_policy_rules",                   T::Nothing,        P::IpRule,         [201, 403, 403, 403, 404, 401]),
    ("GET",    "/ip_policy_rules/{id}",              T::IpRule,         P::Nothing,        [200, 200, 200, 200, 404, 401]),
    ("PATCH",  "/ip_policy_rules/{id}",              T::IpRule,         P::Describe,       [200, 403, 403, 403, 404, 401]),
    ("DELETE", "/ip_policy_rules/{id}",              T::IpRule,         P::Nothing,        [204, 403, 403, 403, 404, 401]),
    ("GET",    "/ip_restrictions",                   T::IpRestriction,  P::Nothing,        [200, 200, 200, 200, 200, 401]),
    ("POST",   "/ip_restrictions",                   T::Nothing,        P::IpRestriction,  [201, 403, 403, 403, 404, 401]),
    ("GET",    "/ip_restrictions/{id}",              T::IpRestriction,  P::Nothing,        [200, 200, 200, 200, 404, 401]),
    ("PATCH",  "/ip_restrictions/{id}",              T::IpRestriction,  P::Describe,       [200, 403, 403, 403, 404, 401]),
    ("DELETE", "/ip_restrictions/{id}",              T::IpRestriction,  P::Nothing,        [204, 403, 403, 403, 404, 401]),
    // Reserved domains: developers reserve; they change and release only their own.
    // POST as dev-other is 403: a developer may attach only a certificate they uploaded.
    ("GET",    "/reserved_domains",                  T::Domain,         P::Nothing,        [200, 200, 200, 200, 200, 401]),
    ("POST",   "/reserved_domains",                  T::Nothing,        P::Domain,         [201, 201, 403, 403, 404, 401]),
    ("GET",    "/reserved_domains/{id}",             T::Domain,         P::Nothing,        [200, 200, 200, 200, 404, 401]),
    ("PATCH",  "/reserved_domains/{id}",             T::Domain,         P::Describe,       [200, 200, 403, 403, 404, 401]),
    ("DELETE", "/reserved_domains/{id}",             T::Domain,         P::Nothing,        [204, 204, 403, 403, 404, 401]),
    ("DELETE", "/reserved_domains/{id}/certificate", T::DomainWithCert, P::Nothing,        [204, 204, 403, 403, 404, 401]),
    // Checking a custom domain's TXT record: owner or admin; 409 here, as no DNS server
    // publishes the record.
    ("POST",   "/reserved_domains/{id}/verify",      T::Domain,         P::Nothing,        [409, 409, 403, 403, 404, 401]),
    // Uploaded certificates: developers upload; they change and delete only their own.
    ("GET",    "/tls_certificates",                  T::Certificate,    P::Nothing,        [200, 200, 200, 200, 200, 401]),
    ("POST",   "/tls_certificates",                  T::Nothing,        P::Certificate,    [201, 201, 201, 403, 201, 401]),
    ("GET",    "/tls_certificates/{id}",             T::Certificate,    P::Nothing,        [200, 200, 200, 200, 404, 401]),
    ("PATCH",  "/tls_certificates/{id}",             T::Certificate,    P::Describe,       [200, 200, 403, 403, 404, 401]),
    ("DELETE", "/tls_certificates/{id}",             T::Certificate,    P::Nothing,        [204, 204, 403, 403, 404, 401]),
    // Reserved TCP addresses: as reserved domains.
    ("GET",    "/reserved_addrs",                    T::Addr,           P::Nothing,        [200, 200, 200, 200, 200, 401]),
    ("POST",   "/reserved_addrs",                    T::Nothing,        P::Addr,           [201, 201, 201, 403, 201, 401]),
    ("GET",    "/reserved_addrs/{id}",               T::Addr,           P::Nothing,        [200, 200, 200, 200, 404, 401]),
    ("PATCH",  "/reserved_addrs/{id}",               T::Addr,           P::Describe,       [200, 200, 403, 403, 404, 401]),
    ("DELETE", "/reserved_addrs/{id}",               T::Addr,           P::Nothing,        [204, 204, 403, 403, 404, 401]),
    // Live sessions: every role reads; the authtoken's owner and admins stop and restart.
    ("GET",    "/tunnel_sessions",                   T::Session,        P::Nothing,        [200, 200, 200, 200, 200, 401]),
    ("GET",    "/tunnel_sessions/{id}",              T::Session,        P::Nothing,        [200, 200, 200, 200, 404, 401]),
    ("POST",   "/tunnel_sessions/{id}/stop",         T::Session,        P::Nothing,        [204, 204, 403, 403, 404, 401]),
    ("POST",   "/tunnel_sessions/{id}/restart",      T::Session,        P::Nothing,        [204, 204, 403, 403, 404, 401]),
    ("GET",    "/endpoints",                         T::Endpoint,       P::Nothing,        [200, 200, 200, 200, 200, 401]),
    ("GET",    "/endpoints/{id}",                    T::Endpoint,       P::Nothing,        [200, 200, 200, 200, 404, 401]),
    // Cloud endpoints: admins make, change and delete them (every role reads them).
    ("POST",   "/endpoints",                         T::Nothing,        P::CloudEndpoint,  [201, 403, 403, 403, 201, 401]),
    ("PATCH",  "/endpoints/{id}",                    T::CloudEndpoint,  P::Describe,       [200, 403, 403, 403, 404, 401]),
    ("DELETE", "/endpoints/{id}",                    T::CloudEndpoint,  P::Nothing,        [204, 403, 403, 403, 404, 401]),
    ("GET",    "/tunnels",                           T::Endpoint,       P::Nothing,        [200, 200, 200, 200, 200, 401]),
    // The account's traffic policy: every role reads; admins set and remove. Another account's
    // admin acts on its own account's policy (which it has not set: DELETE is 404).
    ("GET",    "/traffic_policy",                    T::AccountPolicy,  P::Nothing,        [200, 200, 200, 200, 200, 401]),
    ("PUT",    "/traffic_policy",                    T::Nothing,        P::Policy,         [200, 403, 403, 403, 200, 401]),
    ("DELETE", "/traffic_policy",                    T::AccountPolicy,  P::Nothing,        [204, 403, 403, 403, 404, 401]),
    // Event destinations and subscriptions: every role reads; admins change.
    ("GET",    "/event_destinations",                T::EventDestination,  P::Nothing,          [200, 200, 200, 200, 200, 401]),
    ("POST",   "/event_destinations",                T::Nothing,           P::EventDestination, [201, 403, 403, 403, 201, 401]),
    ("GET",    "/event_destinations/{id}",           T::EventDestination,  P::Nothing,          [200, 200, 200, 200, 404, 401]),
    ("PATCH",  "/event_destinations/{id}",           T::EventDestination,  P::Describe,         [200, 403, 403, 403, 404, 401]),
    ("DELETE", "/event_destinations/{id}",           T::EventDestination,  P::Nothing,          [204, 403, 403, 403, 404, 401]),
    ("GET",    "/event_subscriptions",               T::EventSubscription, P::Nothing,          [200, 200, 200, 200, 200, 401]),
    ("POST",   "/event_subscriptions",               T::Nothing,           P::EventSubscription,[201, 403, 403, 403, 201, 401]),
    ("GET",    "/event_subscriptions/{id}",          T::EventSubscription, P::Nothing,          [200, 200, 200, 200, 404, 401]),
    ("PATCH",  "/event_subscriptions/{id}",          T::EventSubscription, P::Describe,         [200, 403, 403, 403, 404, 401]),
    ("DELETE", "/event_subscriptions/{id}",          T::EventSubscription, P::Nothing,          [204, 403, 403, 403, 404, 401]),
    ("GET",    "/event_subscriptions/{id}/sources",  T::EventSubscription, P::Nothing,          [200, 200, 200, 200, 404, 401]),
    ("POST",   "/event_subscriptions/{id}/sources",  T::EventSubscription, P::EventSource,      [201, 403, 403, 403, 404, 401]),
    ("GET",    "/event_subscriptions/{id}/sources/{type}", T::EventSubscription, P::Nothing,    [200, 200, 200, 200, 404, 401]),
    ("PATCH",  "/event_subscriptions/{id}/sources/{type}", T::EventSubscription, P::SourceFilter, [200, 403, 403, 403, 404, 401]),
    ("DELETE", "/event_subscriptions/{id}/sources/{type}", T::EventSubscription, P::Nothing,    [204, 403, 403, 403, 404, 401]),
    // The OpenAPI document is public.
    ("GET",    "/openapi.json",                      T::Nothing,        P::Nothing,        [200, 200, 200, 200, 200, 200]),
];

/// The keys of an OpenAPI path item that are operations.
const OPENAPI_METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Methods tried on every path of the table: each must have a rule or be refused with 405.
/// (HEAD is left out: the router answers it with the GET handler.)
const PROBED_METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// An edge whose per-key rate limit stays out of the way of a few hundred calls.
async fn start_edge() -> TestEdge {
    TestEdge::start_with(|c| c.api_rate_limit = (u32::MAX, Duration::from_secs(60))).await
}

#[tokio::test]
async fn every_route_answers_every_caller_as_the_table_says() {
    let edge = start_edge().await;
    let ca = TestCa::new("authorization test CA");
    let (_, _, doc) = edge.api_raw("GET", "/openapi.json", None, None, None).await;
    let mut failures = Vec::new();
    for (i, rule) in RULES.iter().enumerate() {
        let ctx = Ctx {
            edge: &edge,
            doc: &doc,
            ca: &ca,
            a: edge.tenant(&format!("a{i}")).await,
            b: edge.tenant(&format!("b{i}")).await,
        };
        for (caller, want) in CALLERS.into_iter().zip(rule.4) {
            if let Err(e) = check(&ctx, rule, caller, want).await {
                failures.push(e);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} calls disagree with RULES:\n{}",
        failures.len(),
        RULES.len() * CALLERS.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn the_table_has_one_rule_for_each_documented_operation_and_no_other() {
    let edge = TestEdge::start().await;
    let (status, _, doc) = edge.api_raw("GET", "/openapi.json", None, None, None).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("the document has paths") {
        for key in item.as_object().expect("a path item is an object").keys() {
            if OPENAPI_METHODS.contains(&key.as_str()) {
                documented.insert(format!("{} {path}", key.to_ascii_uppercase()));
            }
        }
    }
    let mut tabled = BTreeSet::new();
    for &(method, path, ..) in RULES {
        assert!(tabled.insert(format!("{method} {path}")), "{method} {path} has two rules in RULES");
    }
    let without_rule: Vec<&String> = documented.difference(&tabled).collect();
    assert!(
        without_rule.is_empty(),
        "operations the edge documents but RULES does not cover (add a rule with the status each \
         caller must get): {without_rule:?}"
    );
    let not_documented: Vec<&String> = tabled.difference(&documented).collect();
    assert!(
        not_documented.is_empty(),
        "rules in RULES for operations /openapi.json does not list (removed or undocumented \
         routes): {not_documented:?}"
    );
}

#[tokio::test]
async fn no_method_without_a_rule_is_routed_on_a_path_of_the_table() {
    let edge = start_edge().await;
    let t = edge.tenant("probe").await;
    let paths: BTreeSet<&str> = RULES.iter().map(|r| r.1).collect();
    let mut routed = Vec::new();
    for path in paths {
        for method in PROBED_METHODS {
            if RULES.iter().any(|r| r.0 == method && r.1 == path) {
                continue;
            }
            let concrete = path.replace("{id}", "xx_probe");
            let body = matches!(method, "POST" | "PUT" | "PATCH").then(|| json!({}));
            let (status, _, answer) = edge.api(method, &concrete, Some(&t.admin.api_key), body).await;
            if status != StatusCode::METHOD_NOT_ALLOWED {
                let why = format!("{method} {path}: expected 405 (no rule in RULES), got {status}: {answer}");
                routed.push(why);
            }
        }
    }
    assert!(routed.is_empty(), "routed without a rule in RULES:\n{}", routed.join("\n"));
}

/// One call of one rule by one caller, with fresh objects; `Err` says what disagreed.
async fn check(ctx: &Ctx<'_>, rule: &Rule, caller: Caller, want: u16) -> Result<(), String> {
    let &(method, path, target, payload, _) = rule;
    let fixture = ctx.prepare(target, caller).await;
    let concrete = match (&fixture.id, path.contains("{id}")) {
        // `{type}`: the source every subscription target has.
        (Some(id), true) => path.replace("{id}", id).replace("{type}", "ip_policy_created.v0"),
        (_, false) => path.to_owned(),
        (None, true) => panic!("the rule for {method} {path} needs a target with an id"),
    };
    let body = ctx.body(payload, caller).await;
    // A refused change, or any change by another account, must leave A's object (for a create:
    // A's collection) as it was.
    let witness = concrete.split('/').take(3).collect::<Vec<_>>().join("/");
    let guarded = method != "GET" && (want >= 400 || caller == Caller::OtherAccount);
    let before = if guarded { Some(ctx.read_as_admin(&witness).await) } else { None };

    let (status, _, answer) = ctx.edge.api(method, &concrete, ctx.key(caller), body).await;
    let who = format!("{method} {path} as {caller:?}");
    if status.as_u16() != want {
        return Err(format!("{who}: expected {want}, got {}: {answer}", status.as_u16()));
    }
    if status.is_success() && !answer.is_null() {
        matches_schema(ctx.doc, method, path, status.as_u16(), &answer).map_err(|e| format!("{who}: {e}"))?;
    }
    let listed = method == "GET" && !path.contains("{id}") && status == StatusCode::OK;
    if let Some(marker) = fixture.marker.as_deref().filter(|_| listed) {
        let shown = answer.to_string().contains(marker);
        match caller {
            Caller::OtherAccount if shown => {
                return Err(format!("{who}: shows account A's {marker}: {answer}"));
            }
            Caller::OtherAccount => {}
            _ if !shown => return Err(format!("{who}: does not show {marker}, made just before: {answer}")),
            _ => {}
        }
    }
    if let Some((before_status, before_body)) = before {
        let (after_status, after_body) = ctx.read_as_admin(&witness).await;
        if (after_status, &after_body) != (before_status, &before_body) {
            return Err(format!(
                "{who}: answered {want} but changed account A's {witness}: before {before_status} \
                 {before_body}, after {after_status} {after_body}"
            ));
        }
    }
    drop(fixture);
    Ok(())
}

/// The two accounts of one rule.
struct Ctx<'a> {
    edge: &'a TestEdge,
    /// The edge's `/openapi.json`, every answer's fields checked against it.
    doc: &'a Value,
    ca: &'a TestCa,
    /// The account whose objects are acted on.
    a: Tenant,
    /// Another account; only its admin calls.
    b: Tenant,
}

/// What [`Ctx::prepare`] made for one call.
#[derive(Default)]
struct Fixture {
    /// Fills `{id}`.
    id: Option<String>,
    /// Must appear in A's lists and never in B's.
    marker: Option<String>,
    /// Keeps a live session open until the call is checked.
    _session: Option<RawSession>,
}

impl Ctx<'_> {
    fn key(&self, caller: Caller) -> Option<&str> {
        match caller {
            Caller::Admin => Some(&self.a.admin.api_key),
            Caller::DevOwn | Caller::DevOther => Some(&self.a.developer.api_key),
            Caller::ReadOnly => Some(&self.a.read_only.api_key),
            Caller::OtherAccount => Some(&self.b.admin.api_key),
            Caller::NoKey => None,
        }
    }

    /// Who owns the objects `caller` acts on (see [`Caller`]).
    fn owner(&self, caller: Caller) -> &Member {
        match caller {
            Caller::Admin | Caller::DevOwn => &self.a.developer,
            Caller::DevOther | Caller::ReadOnly | Caller::OtherAccount | Caller::NoKey => &self.a.admin,
        }
    }

    async fn prepare(&self, target: Target, caller: Caller) -> Fixture {
        let (owner, admin) = (self.owner(caller), &self.a.admin);
        let mut session = None;
        let id = match target {
            Target::Nothing => return Fixture::default(),
            Target::AccountPolicy => {
                let marker = unique("authz-policy-");
                let body = json!({"traffic_policy": policy_doc(&marker)});
                let (status, _, answer) =
                    self.edge.api("PUT", "/traffic_policy", Some(&admin.api_key), Some(body)).await;
                assert_eq!(status, StatusCode::OK, "setup: PUT /traffic_policy as {}: {answer}", admin.email);
                return Fixture { id: None, marker: Some(marker), _session: None };
            }
            Target::EventDestination => {
                let body = json!({"target": {"file": {"name": format!("{}.jsonl", unique("authz"))}}});
                self.create(admin, "/event_destinations", body).await
            }
            Target::EventSubscription => {
                let body = json!({"description": "authz", "sources": [{"type": "ip_policy_created.v0"}]});
                self.create(admin, "/event_subscriptions", body).await
            }
            Target::CloudEndpoint => {
                let body = json!({
                    "url": format!("https://{}.warren.localhost", unique("cloud")),
                    "traffic_policy": "on_http_request:\n  - actions:\n      - type: deny\n",
                });
                self.create(admin, "/endpoints", body).await
            }
            Target::Credential => {
                let body = json!({"description": "authz", "owner_id": owner.user_id});
                self.create(owner, "/credentials", body).await
            }
            Target::ApiKey => self.create(owner, "/api_keys", json!({"description": "authz"})).await,
            Target::User if caller == Caller::DevOwn => owner.user_id.clone(),
            Target::User => {
                let email = format!("{}@authz.example", unique("user"));
                self.create(admin, "/users", json!({"email": email, "role": "read-only"})).await
            }
            Target::IpPolicy => self.policy().await,
            Target::IpRule => {
                let policy = self.policy().await;
                let body = json!({"ip_policy_id": policy, "cidr": "198.51.100.0/24", "action": "allow"});
                self.create(admin, "/ip_policy_rules", body).await
            }
            Target::IpRestriction => {
                let policy = self.policy().await;
                let body = json!({"type": "dashboard", "ip_policy_ids": [policy]});
                self.create(admin, "/ip_restrictions", body).await
            }
            Target::Domain => {
                self.create(owner, "/reserved_domains", json!({"domain": unique_domain()})).await
            }
            Target::DomainWithCert => {
                let domain = unique_domain();
                let certificate = self.certificate(owner, &domain).await;
                let body = json!({"domain": domain, "certificate_id": certificate});
                self.create(owner, "/reserved_domains", body).await
            }
            Target::Certificate => self.certificate(owner, &unique_domain()).await,
            Target::Addr => self.create(owner, "/reserved_addrs", json!({"description": "authz"})).await,
            Target::Session => {
                let (raw, ts, _) = self.live_session(owner).await;
                session = Some(raw);
                ts
            }
            Target::Endpoint => {
                let (raw, _, host) = self.live_session(owner).await;
                session = Some(raw);
                self.endpoint_id(&host).await
            }
        };
        Fixture { marker: Some(id.clone()), id: Some(id), _session: session }
    }

    async fn body(&self, payload: Payload, caller: Caller) -> Option<Value> {
        let owner = self.owner(caller);
        let body = match payload {
            Payload::Nothing => return None,
            Payload::Describe => json!({"description": "changed by the authorization test"}),
            Payload::PromoteToAdmin => json!({"role": "admin"}),
            Payload::Credential | Payload::ApiKey => {
                json!({"description": "authz", "owner_id": owner.user_id})
            }
            Payload::User => json!({"email": format!("{}@authz.example", unique("new")), "role": "admin"}),
            Payload::IpPolicy => json!({"description": "authz"}),
            Payload::IpRule => {
                let policy = self.policy().await;
                json!({"ip_policy_id": policy, "cidr": "198.51.100.0/24", "action": "deny"})
            }
            Payload::IpRestriction => {
                let policy = self.policy().await;
                json!({"type": "dashboard", "ip_policy_ids": [policy]})
            }
            Payload::Domain => {
                let domain = unique_domain();
                let certificate = self.certificate(owner, &domain).await;
                json!({"domain": domain, "certificate_id": certificate})
            }
            Payload::Certificate => {
                let (chain, key, _) = self.ca.leaf(&unique_domain());
                json!({"certificate_pem": chain, "private_key_pem": key, "description": "authz"})
            }
            Payload::Addr => json!({"description": "authz"}),
            Payload::Policy => json!({"traffic_policy": policy_doc(&unique("authz-policy-"))}),
            Payload::EventDestination => {
                json!({"target": {"file": {"name": format!("{}.jsonl", unique("new"))}}})
            }
            Payload::CloudEndpoint => json!({
                "url": format!("https://{}.warren.localhost", unique("cloud")),
                "traffic_policy": "on_http_request:\n  - actions:\n      - type: deny\n",
            }),
            Payload::EventSubscription => json!({"sources": [{"type": "api_key_created.v0"}]}),
            Payload::EventSource => json!({"type": "api_key_deleted.v0"}),
            Payload::SourceFilter => json!({"filter": "ev.id != ''"}),
        };
        Some(body)
    }

    /// `POST path` with `by`'s key, which must create; the new id.
    async fn create(&self, by: &Member, path: &str, body: Value) -> String {
        let (status, _, answer) = self.edge.api("POST", path, Some(&by.api_key), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "setup: POST {path} as {}: {answer}", by.email);
        id(&answer)
    }

    /// A new IP policy of A's.
    async fn policy(&self) -> String {
        self.create(&self.a.admin, "/ip_policies", json!({"description": "authz"})).await
    }

    /// A certificate for `domain` uploaded by `by`.
    async fn certificate(&self, by: &Member, domain: &str) -> String {
        let (chain, key, _) = self.ca.leaf(domain);
        self.create(by, "/tls_certificates", json!({"certificate_pem": chain, "private_key_pem": key})).await
    }

    /// A session on `by`'s authtoken that has bound an https endpoint: (session, its id, host).
    /// Bind is served only after the session is recorded and registered, so once it answers
    /// the API knows the session.
    async fn live_session(&self, by: &Member) -> (RawSession, String, String) {
        let host = format!("{}.warren.localhost", unique("ep"));
        let raw = RawSession::connect(self.edge, true).await;
        let auth = raw.auth(&by.authtoken).await;
        assert!(auth.error.is_empty(), "setup: Auth as {}: {}", by.email, auth.error);
        let bind = raw.bind_https("authz", &host).await;
        assert!(bind.error.is_empty(), "setup: bind https://{host} as {}: {}", by.email, bind.error);
        (raw, auth.client_id, host)
    }

    /// The id of A's endpoint for `host`.
    async fn endpoint_id(&self, host: &str) -> String {
        let needle = format!("//{host}:");
        within("the endpoint is listed", async {
            loop {
                let (_, list) = self.read_as_admin("/endpoints").await;
                let found = list["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|e| e["url"].as_str().is_some_and(|u| u.contains(&needle)));
                if let Some(e) = found {
                    return id(e);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// `GET path` as A's admin.
    async fn read_as_admin(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.edge.api("GET", path, Some(&self.a.admin.api_key), None).await;
        (status, body)
    }
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_owned()
}

/// `prefix` and a number no other call of this test binary uses.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A custom domain no account has reserved.
fn unique_domain() -> String {
    format!("{}.authz.example", unique("d"))
}

/// An account traffic policy that compiles and changes nothing the test does; `name` makes it
/// recognizable in answers.
fn policy_doc(name: &str) -> String {
    let deny = "actions: [{type: restrict-ips, config: {deny: [\"192.0.2.0/24\"]}}]";
    format!("on_http_request:\n  - name: {name}\n    {deny}\n")
}

/// The answer has exactly the fields the OpenAPI document gives the operation's response
/// (and, for lists, each item those of the item schema): the hand-written schemas and the
/// handlers' structs cannot drift apart.
fn matches_schema(doc: &Value, method: &str, path: &str, status: u16, answer: &Value) -> Result<(), String> {
    let op = &doc["paths"][path][method.to_ascii_lowercase()];
    let schema = &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
    let resolve = |s: &Value| -> Value {
        match s["$ref"].as_str() {
            Some(r) => doc["components"]["schemas"][r.trim_start_matches("#/components/schemas/")].clone(),
            None => s.clone(),
        }
    };
    let schema = resolve(schema);
    let Some(props) = schema["properties"].as_object() else { return Ok(()) };
    let fields = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        k.sort();
        k
    };
    let mut documented: Vec<String> = props.keys().cloned().collect();
    documented.sort();
    if fields(answer) != documented {
        return Err(format!("fields {:?} but the OpenAPI schema documents {documented:?}", fields(answer)));
    }
    for (name, prop) in props {
        let items = &prop["items"];
        if prop["type"] == "array" && items.get("$ref").is_some() {
            let item = resolve(items);
            let Some(item_props) = item["properties"].as_object() else { continue };
            let mut want: Vec<String> = item_props.keys().cloned().collect();
            want.sort();
            for element in answer[name].as_array().into_iter().flatten() {
                if fields(element) != want {
                    return Err(format!(
                        "{name}[]: fields {:?} but the OpenAPI schema documents {want:?}",
                        fields(element)
                    ));
                }
            }
        }
    }
    Ok(())
}
