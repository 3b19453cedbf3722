//! The Auth and Bind decisions without sockets: a store in a temporary SQLite file, the
//! edge's shared state built around it, and a session whose mux runs over an in-memory pipe.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;
use tokio::sync::watch;
use warren_proto::{self as proto, error_codes as codes};
use warren_store::{Account, NewCredential};

use super::auth::{self, AuthError};
use super::bind::{self, BindError};
use crate::registry::{AgentSession, SessionInfo};
use crate::{EdgeConfig, Shared};

struct Fixture {
    shared: Arc<Shared>,
    account: Account,
    token: String,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = EdgeConfig::local_default(dir.path().to_owned());
    let store = warren_store::Store::open_sqlite(&dir.path().join("warren.db")).await.unwrap();
    let tls = crate::tls::ensure_local_ca(&dir.path().join("tls"), &config.certificate_names()).unwrap();
    let (shared, stop) = Shared::new(config, store, &tls, 443, Some(80), None).await.unwrap();
    let (account, _) = shared.store.ensure_account("default").await.unwrap();
    let (_, token) = shared.store.create_credential(&account.id, &NewCredential::default()).await.unwrap();
    Fixture { shared, account, token: token.0, _stop: stop, _dir: dir }
}

fn auth(token: &str, versions: &[&str]) -> proto::Auth {
    proto::Auth {
        version: versions.iter().map(|v| v.to_string()).collect(),
        extra: proto::AuthExtra { authtoken: proto::Secret(token.into()), ..Default::default() },
        ..Default::default()
    }
}

fn remote() -> SocketAddr {
    "198.51.100.7:40000".parse().unwrap()
}

/// A session of `token`'s account, registered as `accept.rs` registers one, its mux over an
/// in-memory pipe (the other end is returned to keep it open).
async fn session(f: &Fixture, token: &str) -> (Arc<AgentSession>, tokio::io::DuplexStream) {
    let admitted = auth::decide(&f.shared, &auth(token, &["3"]), remote()).await.unwrap();
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let mux = warren_mux::start(ours, warren_mux::Role::Server, warren_mux::Config::default());
    let s = Arc::new(AgentSession {
        id: warren_store::generate_id("ts"),
        mux,
        account_id: admitted.credential.account_id.clone(),
        remote: remote(),
        credential: admitted.credential,
        info: SessionInfo {
            started_at: String::new(),
            agent_version: String::new(),
            os: String::new(),
            metadata: String::new(),
        },
        resume_hash: [0; 32],
        owner_acl: admitted.owner_acl,
        owner_ip_policy_ids: admitted.owner_ip_policy_ids,
    });
    let row = warren_store::TunnelSession {
        id: s.id.clone(),
        account_id: s.account_id.clone(),
        node_id: f.shared.node_id.clone(),
        credential_id: s.credential.id.clone(),
        ip: remote().ip().to_string(),
        agent_version: String::new(),
        os: String::new(),
        metadata: String::new(),
        started_at: warren_store::now_rfc3339(),
        resume_hash: vec![0; 32],
    };
    f.shared.store.insert_tunnel_session(&row).await.unwrap();
    f.shared.sessions.registry.add_session(s.clone());
    (s, theirs)
}

async fn decide_bind(
    f: &Fixture,
    s: &Arc<AgentSession>,
    msg: serde_json::Value,
) -> Result<String, BindError> {
    bind::decide(&f.shared, s, msg).await.map(|b| b.url).map_err(|(_, e)| e)
}

fn https(domain: &str) -> serde_json::Value {
    json!({ "Id": "", "Proto": "https", "Opts": { "Domain": domain }, "Extra": {} })
}

#[tokio::test]
async fn auth_picks_the_clients_preferred_version_and_the_credential() {
    let f = fixture().await;
    let a = auth::decide(&f.shared, &auth(&f.token, &["2", "3"]), remote()).await.unwrap();
    assert_eq!(a.version, "2", "the client's first choice that the edge speaks");
    assert_eq!(a.credential.account_id, f.account.id);
    assert_eq!(a.account_name, "default", "the credential's own account, told to the agent");
    let (other, _) = f.shared.store.ensure_account("other-team").await.unwrap();
    let (_, token) = f.shared.store.create_credential(&other.id, &NewCredential::default()).await.unwrap();
    let b = auth::decide(&f.shared, &auth(&token.0, &["3"]), remote()).await.unwrap();
    assert_eq!((b.credential.account_id, b.account_name), (other.id, "other-team".to_owned()));
    let e = auth::decide(&f.shared, &auth(&f.token, &["1"]), remote()).await.unwrap_err();
    assert_eq!(e, AuthError::UnsupportedVersion(vec!["1".into()]));
    assert_eq!(e.code(), codes::UNSUPPORTED_VERSION);
    let e = auth::decide(&f.shared, &auth("  ", &["3"]), remote()).await.unwrap_err();
    assert_eq!((e.code(), e.text().starts_with("no authtoken")), (codes::AUTHTOKEN_MALFORMED, true));
}

#[tokio::test]
async fn wrong_authtokens_are_refused_then_throttled_even_with_the_right_one() {
    let f = fixture().await;
    let limit = f.shared.config.limits.max_auth_failures_per_ip;
    for _ in 0..limit {
        let e = auth::decide(&f.shared, &auth("cr_nope_nope", &["3"]), remote()).await.unwrap_err();
        assert_eq!(e, AuthError::InvalidAuthtoken);
    }
    let e = auth::decide(&f.shared, &auth(&f.token, &["3"]), remote()).await.unwrap_err();
    assert!(matches!(e, AuthError::Throttled { .. }), "{e}");
    assert_eq!(e.code(), codes::AUTHTOKEN_INVALID);
    // Another address is not held to it.
    let other: SocketAddr = "203.0.113.1:1".parse().unwrap();
    assert!(auth::decide(&f.shared, &auth(&f.token, &["3"]), other).await.is_ok());
}

#[tokio::test]
async fn ip_restrictions_and_the_authtokens_own_ip_policies_refuse_other_addresses() {
    let f = fixture().await;
    let store = &f.shared.store;
    let policy = store.create_ip_policy(&f.account.id, "office", "").await.unwrap();
    store.create_ip_policy_rule(&f.account.id, &policy.id, "10.0.0.0/8", "allow", "", "").await.unwrap();
    let new = NewCredential { ip_policy_ids: vec![policy.id.clone()], ..Default::default() };
    let (cred, office_token) = store.create_credential(&f.account.id, &new).await.unwrap();
    let e = auth::decide(&f.shared, &auth(&office_token.0, &["3"]), remote()).await.unwrap_err();
    assert_eq!(e, AuthError::TokenIpPolicy { credential: cred.id, ip: remote().ip() });
    assert_eq!(e.code(), codes::IP_RESTRICTED);
    let office: SocketAddr = "10.1.2.3:5".parse().unwrap();
    assert!(auth::decide(&f.shared, &auth(&office_token.0, &["3"]), office).await.is_ok());

    // An enforced `agent` restriction holds every token of the account to the policy.
    let r = store.create_ip_restriction(&f.account.id, "agent", true, &[policy.id], "", "").await.unwrap();
    f.shared.accounts.ip_rules.invalidate(&f.account.id);
    let e = auth::decide(&f.shared, &auth(&f.token, &["3"]), remote()).await.unwrap_err();
    assert_eq!(e, AuthError::IpRestriction { ip: remote().ip(), restriction: r.id });
}

#[tokio::test]
async fn a_failing_store_asks_the_agent_to_try_again_instead_of_refusing_it() {
    let f = fixture().await;
    f.shared.store.close().await;
    let e = auth::decide(&f.shared, &auth(&f.token, &["3"]), remote()).await.unwrap_err();
    assert_eq!(e, AuthError::Unavailable("the authtoken"));
    assert_eq!(e.code(), codes::UNAVAILABLE);
}

#[tokio::test]
async fn bind_gives_the_url_or_a_refusal_with_its_code() {
    let f = fixture().await;
    let (s, _pipe) = session(&f, &f.token).await;
    let bound = bind::decide(&f.shared, &s, https("app.warren.localhost")).await.unwrap();
    assert_eq!(bound.url, "https://app.warren.localhost");
    assert!(bound.bind.client_id.starts_with("ep_"), "an empty Id gets one from the edge");
    let http = json!({ "Id": "h", "Proto": "http", "Opts": { "URL": "http://plain.warren.localhost" } });
    assert_eq!(decide_bind(&f, &s, http).await.unwrap(), "http://plain.warren.localhost");

    // Another account's session: the live name, and names it reserved, are not its to take.
    let (other, _) = f.shared.store.ensure_account("other").await.unwrap();
    let (_, other_token) =
        f.shared.store.create_credential(&other.id, &NewCredential::default()).await.unwrap();
    let (o, _pipe2) = session(&f, &other_token.0).await;
    let e = decide_bind(&f, &o, https("app.warren.localhost")).await.unwrap_err();
    assert_eq!(e, BindError::InUse("https://app.warren.localhost".into()));
    assert_eq!(e.code(), codes::ENDPOINT_IN_USE);
    let tls = json!({ "Id": "t", "Proto": "tls", "Opts": { "Hostname": "app.warren.localhost" } });
    assert_eq!(
        decide_bind(&f, &o, tls).await.unwrap_err().code(),
        codes::ENDPOINT_IN_USE,
        "another scheme too"
    );
    f.shared
        .store
        .create_reserved_domain(&f.account.id, "kept.warren.localhost", "", "", None, true)
        .await
        .unwrap();
    let e = decide_bind(&f, &o, https("kept.warren.localhost")).await.unwrap_err();
    assert_eq!(e.code(), codes::RESERVED_ELSEWHERE, "{e}");

    let e = decide_bind(&f, &s, https("shop.example.com")).await.unwrap_err();
    assert_eq!(e.code(), codes::DOMAIN_NOT_SERVED);
    assert!(e.to_string().contains("reserve shop.example.com first"), "{e}");
    let e = decide_bind(&f, &s, https("Connect.Warren.Localhost")).await.unwrap_err();
    assert_eq!(
        e,
        BindError::Invalid(
            "connect.warren.localhost is this edge's connect hostname and cannot be an endpoint".into()
        )
    );
}

#[tokio::test]
async fn bind_refuses_what_it_would_not_honour_and_what_the_token_may_not_bind() {
    let f = fixture().await;
    let (s, _pipe) = session(&f, &f.token).await;
    let teleport = json!({ "Proto": "https", "Opts": { "Domain": "t.warren.localhost", "Teleport": true } });
    let e = decide_bind(&f, &s, teleport).await.unwrap_err();
    assert!(matches!(&e, BindError::Invalid(m) if m.contains("Opts.Teleport")), "{e}");
    let e = decide_bind(&f, &s, json!({ "Proto": "quic" })).await.unwrap_err();
    assert!(e.to_string().contains("unknown endpoint protocol \"quic\""), "{e}");
    let e = decide_bind(&f, &s, json!({ "Proto": "https", "Id": "x".repeat(300) })).await.unwrap_err();
    assert!(e.to_string().contains("longer than 256"), "{e}");
    let policy = json!({ "Proto": "https", "Opts": { "Domain": "p.warren.localhost", "TrafficPolicy": "on_http_request: [{actions: [{type: teleport}]}]" } });
    let e = decide_bind(&f, &s, policy).await.unwrap_err();
    assert!(matches!(&e, BindError::Invalid(m) if m.starts_with("invalid traffic policy")), "{e}");

    let new = NewCredential { acl: vec!["bind:only.warren.localhost".into()], ..Default::default() };
    let (cred, narrow) = f.shared.store.create_credential(&f.account.id, &new).await.unwrap();
    let (n, _pipe2) = session(&f, &narrow.0).await;
    let e = decide_bind(&f, &n, https("else.warren.localhost")).await.unwrap_err();
    assert_eq!(
        e,
        BindError::NotAllowed(format!(
            "the authtoken {} may not bind else.warren.localhost; its ACL allows only: bind:only.warren.localhost",
            cred.id
        ))
    );
    let e = decide_bind(&f, &n, json!({ "Proto": "https", "Opts": {} })).await.unwrap_err();
    assert!(e.to_string().contains("may not bind a random name"), "{e}");
    assert_eq!(
        decide_bind(&f, &n, https("only.warren.localhost")).await.unwrap(),
        "https://only.warren.localhost"
    );
}

#[tokio::test]
async fn a_failing_store_makes_bind_ask_for_a_retry() {
    let f = fixture().await;
    let (s, _pipe) = session(&f, &f.token).await;
    f.shared.store.close().await;
    let e = decide_bind(&f, &s, https("late.warren.localhost")).await.unwrap_err();
    assert_eq!(e.code(), codes::UNAVAILABLE, "{e}");
    assert!(e.to_string().ends_with("try again"), "{e}");
}

#[test]
fn every_refusal_has_its_code_and_the_reply_shape_ngrok_clients_parse() {
    let cases = [
        (BindError::Invalid("x".into()), codes::BIND_INVALID),
        (BindError::NotAllowed("x".into()), codes::BIND_INVALID),
        (BindError::Session("x"), codes::BIND_INVALID),
        (BindError::InUse("u".into()), codes::ENDPOINT_IN_USE),
        (BindError::ReservedElsewhere("x".into()), codes::RESERVED_ELSEWHERE),
        (BindError::DomainNotServed("x".into()), codes::DOMAIN_NOT_SERVED),
        (BindError::AddrUnavailable("x".into()), codes::TCP_ADDR_UNAVAILABLE),
        (BindError::Unavailable("x"), codes::UNAVAILABLE),
    ];
    for (e, code) in cases {
        assert_eq!(e.code(), code, "{e:?}");
        assert_eq!(e.text(), format!("{e}\n\n{code}\n"));
    }
    assert_eq!(
        BindError::refused(crate::registry::BindRefused::TooMany, "u").to_string(),
        "this session has reached its endpoint limit"
    );
    let ip = remote().ip();
    for (e, code) in [
        (AuthError::Unreadable("x".into()), codes::BIND_INVALID),
        (AuthError::UnsupportedVersion(vec![]), codes::UNSUPPORTED_VERSION),
        (AuthError::NoAuthtoken, codes::AUTHTOKEN_MALFORMED),
        (AuthError::Throttled { ip, wait: 1 }, codes::AUTHTOKEN_INVALID),
        (AuthError::InvalidAuthtoken, codes::AUTHTOKEN_INVALID),
        (AuthError::IpRestriction { ip, restriction: "r".into() }, codes::IP_RESTRICTED),
        (AuthError::TokenIpPolicy { credential: "c".into(), ip }, codes::IP_RESTRICTED),
        (AuthError::OwnerIpPolicy { ip }, codes::IP_RESTRICTED),
        (AuthError::Unavailable("x"), codes::UNAVAILABLE),
    ] {
        assert_eq!(e.code(), code, "{e:?}");
        assert_eq!(e.text(), format!("{e}\n\n{code}\n"));
    }
}

#[test]
fn a_tcp_bind_reads_the_port_from_any_of_its_spellings() {
    let opts = |v: serde_json::Value| proto::fold::from_value::<proto::TcpOpts>(v).unwrap().0;
    assert_eq!(bind::requested_port(&opts(json!({ "Addr": "x:2200" }))), Ok(Some(2200)));
    assert_eq!(bind::requested_port(&opts(json!({ "URL": "tcp://x:2201" }))), Ok(Some(2201)));
    assert_eq!(bind::requested_port(&opts(json!({ "RemotePort": 2202 }))), Ok(Some(2202)));
    assert_eq!(bind::requested_port(&opts(json!({}))), Ok(None));
    assert!(bind::requested_port(&opts(json!({ "Addr": "x:0" }))).is_err());
    assert!(bind::requested_port(&opts(json!({ "Addr": "x:http" }))).is_err());
}

/// An Auth decided before an authtoken was revoked, and registered after the revocation swept
/// the live sessions, is decided again before the agent is welcomed: the sweep could not see
/// it, so the registry tells `accept.rs` the rules moved.
#[tokio::test]
async fn an_auth_registered_after_a_concurrent_revocation_is_decided_again() {
    let f = fixture().await;
    let decided_at = f.shared.sessions.registry.rules_epoch();
    let (quiet, _pipe) = session(&f, &f.token).await;
    assert!(
        !f.shared.sessions.registry.add_session_decided_at(quiet, Some(decided_at)),
        "nothing changed: answered as decided"
    );

    let decided_at = f.shared.sessions.registry.rules_epoch();
    let (raced, _pipe2) = session(&f, &f.token).await;
    f.shared.sessions.registry.remove_session(&raced.id);
    let credential = raced.credential.id.clone();
    // The revocation ends the sessions it finds; `raced` is between its decision and its
    // registration, so it is not among them.
    let store = f.shared.store.clone();
    f.shared.revoke_credential(&store, &f.account.id, &credential).await.unwrap();
    assert!(
        f.shared.sessions.registry.add_session_decided_at(raced, Some(decided_at)),
        "the rules moved meanwhile"
    );
    let again = auth::decide(&f.shared, &auth(&f.token, &["3"]), remote()).await;
    assert_eq!(again.unwrap_err(), AuthError::InvalidAuthtoken);
}
