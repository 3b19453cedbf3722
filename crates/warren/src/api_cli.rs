//! `warren api <resource> <op> [ID] [--field value ...]`, like `ngrok api`: one HTTP call to
//! the edge's REST API, the JSON answer printed as is.

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};

/// Fields that are lists even when given once.
const LIST_FIELDS: [&str; 2] = ["acl", "ip_policy_ids"];

/// Builds the method, path and body for `resource op [id] [--k v]...`.
pub(crate) fn plan(
    resource: &str,
    op: &str,
    rest: &[String],
) -> anyhow::Result<(&'static str, String, Option<Value>)> {
    // ngrok spells resources with hyphens (`ngrok api reserved-domains`); the paths use `_`.
    let resource = resource.replace('-', "_");
    let resource = resource.as_str();
    if resource.is_empty() || !resource.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        bail!(
            "unknown resource {resource:?}; for example: credentials, api_keys, users, ip_policies, tunnel_sessions"
        );
    }
    let (id, flags) = match rest.first() {
        Some(first) if !first.starts_with("--") => (Some(first.as_str()), &rest[1..]),
        _ => (None, rest),
    };
    let mut body = Map::new();
    let mut it = flags.iter();
    let mut data = None;
    while let Some(flag) = it.next() {
        let Some(key) = flag.strip_prefix("--") else {
            bail!("unexpected argument {flag:?}; fields go as --name value")
        };
        let value = it.next().with_context(|| format!("--{key} needs a value"))?;
        if key == "data" {
            data = Some(serde_json::from_str::<Value>(value).context("--data must be a JSON object")?);
            continue;
        }
        let key = key.replace('-', "_");
        let v = match value.as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            s => Value::String(s.to_owned()),
        };
        match body.get_mut(&key) {
            Some(Value::Array(a)) => a.push(v),
            Some(old) => *old = Value::Array(vec![old.take(), v]),
            None if LIST_FIELDS.contains(&key.as_str()) => {
                body.insert(key, Value::Array(vec![v]));
            }
            None => {
                body.insert(key, v);
            }
        }
    }
    let body = match data {
        Some(d) if body.is_empty() => Some(d),
        Some(_) => bail!("give fields either as --data JSON or as --name value, not both"),
        None => (!body.is_empty()).then_some(Value::Object(body)),
    };
    let need_id = || id.with_context(|| format!("`{resource} {op}` needs an id"));
    Ok(match op {
        "list" => ("GET", format!("/{resource}"), None),
        "get" => ("GET", format!("/{resource}/{}", need_id()?), None),
        "create" => ("POST", format!("/{resource}"), Some(body.unwrap_or_else(|| Value::Object(Map::new())))),
        "update" => (
            "PATCH",
            format!("/{resource}/{}", need_id()?),
            Some(body.unwrap_or_else(|| Value::Object(Map::new()))),
        ),
        "delete" => ("DELETE", format!("/{resource}/{}", need_id()?), None),
        "stop" | "restart" => ("POST", format!("/{resource}/{}/{op}", need_id()?), None),
        other => bail!("unknown operation {other:?}; use list, get, create, update, delete, stop or restart"),
    })
}

/// Removes `flag value` from `args`, returning the value.
pub(crate) fn take_flag(args: &mut Vec<String>, flag: &str) -> Option<String> {
    let i = args.iter().position(|a| a == flag)?;
    if i + 1 >= args.len() {
        return None;
    }
    let v = args.remove(i + 1);
    args.remove(i);
    Some(v)
}

/// Runs one call and prints the answer; an error answer becomes an error with its message.
pub(crate) async fn run(
    api_url: &str,
    key: &str,
    resource: &str,
    op: &str,
    rest: &[String],
) -> anyhow::Result<()> {
    let (method, path, body) = plan(resource, op, rest)?;
    let hostport = api_url
        .strip_prefix("http://")
        .with_context(|| format!("--api-url {api_url:?} must start with http://"))?
        .trim_end_matches('/');
    let tcp = tokio::net::TcpStream::connect(hostport).await.with_context(|| {
        format!("cannot reach the API at {api_url} (is the edge running with its API enabled?)")
    })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(&path)
        .header("host", hostport)
        .header("authorization", format!("Bearer {key}"))
        .header("ngrok-version", "2")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))?;
    let res = send.send_request(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    let json: Value =
        if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
    if !status.is_success() {
        let msg = json["msg"].as_str().unwrap_or("no message");
        let code = json["error_code"].as_str().unwrap_or("");
        bail!("{method} {path}: {status}: {msg} [{code}]");
    }
    if !json.is_null() {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plans_map_operations_to_calls() {
        assert_eq!(plan("credentials", "list", &[]).unwrap(), ("GET", "/credentials".into(), None));
        let (m, p, b) =
            plan("credentials", "create", &args(&["--description", "ci", "--acl", "bind:a.example.com"]))
                .unwrap();
        assert_eq!((m, p.as_str()), ("POST", "/credentials"));
        assert_eq!(b.unwrap(), serde_json::json!({"description": "ci", "acl": ["bind:a.example.com"]}));
        let (_, p, b) = plan("reserved-domains", "create", &args(&["--domain", "app.example.com"])).unwrap();
        assert_eq!(p, "/reserved_domains", "ngrok's hyphenated spelling works");
        assert_eq!(b.unwrap(), serde_json::json!({"domain": "app.example.com"}));
        let (_, p, b) = plan("ip_restrictions", "update", &args(&["ipx_1", "--enforced", "false"])).unwrap();
        assert_eq!(p, "/ip_restrictions/ipx_1");
        assert_eq!(b.unwrap(), serde_json::json!({"enforced": false}));
        assert_eq!(
            plan("tunnel_sessions", "stop", &args(&["ts_1"])).unwrap().1,
            "/tunnel_sessions/ts_1/stop"
        );
        assert!(plan("credentials", "get", &[]).unwrap_err().to_string().contains("needs an id"));
        assert!(plan("credentials", "explode", &[]).is_err());
        assert!(plan("../etc", "list", &[]).is_err());
        assert!(plan("credentials", "create", &args(&["--description"])).is_err());
    }
}
