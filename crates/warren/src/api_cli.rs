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
    let resource = known_resource(resource)?;
    let resource = resource.as_str();
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
    // Operations without a body take no fields, except a list's paging: a field they would
    // not send is refused, not dropped.
    let no_fields = |allowed: &[&str]| -> anyhow::Result<()> {
        let given = body.as_ref().and_then(Value::as_object);
        if let Some(k) = given.and_then(|m| m.keys().find(|k| !allowed.contains(&k.as_str()))) {
            bail!("`{resource} {op}` takes no --{}", k.replace('_', "-"));
        }
        Ok(())
    };
    Ok(match op {
        "list" => {
            no_fields(&["limit", "before_id"])?;
            let mut path = format!("/{resource}");
            let query: Vec<String> = ["limit", "before_id"]
                .iter()
                .filter_map(|k| body.as_ref()?.get(*k)?.as_str().map(|v| format!("{k}={v}")))
                .collect();
            if !query.is_empty() {
                path = format!("{path}?{}", query.join("&"));
            }
            ("GET", path, None)
        }
        "get" => {
            no_fields(&[])?;
            ("GET", format!("/{resource}/{}", need_id()?), None)
        }
        "create" => ("POST", format!("/{resource}"), Some(body.unwrap_or_else(|| Value::Object(Map::new())))),
        "update" => (
            "PATCH",
            format!("/{resource}/{}", need_id()?),
            Some(body.unwrap_or_else(|| Value::Object(Map::new()))),
        ),
        "delete" | "stop" | "restart" | "verify" => {
            no_fields(&[])?;
            let id = need_id()?;
            if op == "delete" {
                ("DELETE", format!("/{resource}/{id}"), None)
            } else {
                ("POST", format!("/{resource}/{id}/{op}"), None)
            }
        }
        other => {
            bail!(
                "unknown operation {other:?}; use list, get, create, update, delete, stop, restart or verify"
            )
        }
    })
}

/// The resources the API has (the first segment of each path of its OpenAPI document).
fn resources(doc: &Value) -> Vec<String> {
    let mut names: Vec<String> = doc["paths"]
        .as_object()
        .map(|p| p.keys().filter_map(|k| k.split('/').nth(1)).map(str::to_owned).collect())
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

/// `resource` in the API's spelling (ngrok's hyphens become `_`), or an error naming the
/// nearest resource there is.
fn known_resource(resource: &str) -> anyhow::Result<String> {
    let wanted = resource.to_ascii_lowercase().replace('-', "_");
    let all = resources(&warren_edge::api::openapi_document());
    if all.contains(&wanted) {
        return Ok(wanted);
    }
    let nearest = all
        .iter()
        .map(|r| (edit_distance(&wanted, r), r))
        .filter(|(d, r)| *d <= 3.max(r.len() / 3))
        .min_by_key(|(d, _)| *d);
    match nearest {
        Some((_, r)) => bail!("unknown resource {resource:?}; did you mean {r}?"),
        None => bail!("unknown resource {resource:?}; the resources are: {}", all.join(", ")),
    }
}

/// Levenshtein distance, for suggestions.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// `warren api RESOURCE OP --help`: the call it makes and the fields it takes, from the API's
/// own OpenAPI document, so the help and the API cannot disagree.
pub(crate) fn help(resource: &str, op: &str) -> anyhow::Result<String> {
    let resource = known_resource(resource)?;
    let doc = warren_edge::api::openapi_document();
    let ops = available_ops(&doc, &resource);
    let Some((method, path)) = op_route(&resource, op) else {
        bail!("unknown operation {op:?} for {resource}; it has: {}", ops.join(", "));
    };
    let Some(operation) = doc["paths"][&path][method.to_ascii_lowercase()].as_object() else {
        bail!("{resource} has no {op}; it has: {}", ops.join(", "));
    };
    let id = if path.contains("{id}") { " ID" } else { "" };
    let mut out = format!(
        "{}\n\nUsage: warren api {resource} {op}{id}{}\n  ({method} {})\n",
        operation.get("summary").and_then(Value::as_str).unwrap_or_default(),
        if operation.contains_key("requestBody") { " [--FIELD VALUE]... | --data JSON" } else { "" },
        path.replace("{id}", "ID"),
    );
    let body = operation
        .get("requestBody")
        .and_then(|b| b["content"]["application/json"]["schema"]["$ref"].as_str())
        .and_then(|r| r.rsplit('/').next())
        .map(|name| &doc["components"]["schemas"][name]);
    if let Some(schema) = body {
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str("\nFields:\n");
        if let Some(props) = schema["properties"].as_object() {
            for (name, p) in props {
                let kind = match p["type"].as_str() {
                    Some("array") => "list: repeat the flag",
                    Some("boolean") => "true or false",
                    Some("integer") => "a number",
                    Some("object") => "an object: use --data",
                    _ => "text",
                };
                // ngrok's spelling; `_` works as well.
                let flag = name.replace('_', "-");
                let mut line = format!("  --{flag:<28} {kind}");
                if required.contains(&name.as_str()) {
                    line.push_str("; required");
                }
                if let Some(values) = p["enum"].as_array() {
                    let v: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
                    line.push_str(&format!("; one of {}", v.join(", ")));
                }
                if let Some(d) = p["description"].as_str() {
                    line.push_str(&format!(". {d}"));
                }
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    if op == "list" {
        out.push_str("\nPaging (newest first): --limit N, --before-id ID (the last id of the page before)\n");
    }
    out.push_str(&format!("\nOperations on {resource}: {}\n", ops.join(", ")));
    Ok(out)
}

/// The operations `warren api` can call on a resource.
fn available_ops(doc: &Value, resource: &str) -> Vec<&'static str> {
    ["list", "get", "create", "update", "delete", "stop", "restart", "verify"]
        .into_iter()
        .filter(|op| {
            op_route(resource, op).is_some_and(|(m, p)| doc["paths"][&p][m.to_ascii_lowercase()].is_object())
        })
        .collect()
}

/// The method and path template (`{id}` for the id) an operation calls.
fn op_route(resource: &str, op: &str) -> Option<(&'static str, String)> {
    Some(match op {
        "list" => ("GET", format!("/{resource}")),
        "get" => ("GET", format!("/{resource}/{{id}}")),
        "create" => ("POST", format!("/{resource}")),
        "update" => ("PATCH", format!("/{resource}/{{id}}")),
        "delete" => ("DELETE", format!("/{resource}/{{id}}")),
        "stop" | "restart" | "verify" => ("POST", format!("/{resource}/{{id}}/{op}")),
        _ => return None,
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
        let typo = plan("credentails", "list", &[]).unwrap_err().to_string();
        assert!(typo.contains("did you mean credentials?"), "{typo}");
        let typo = plan("reserved-domain", "list", &[]).unwrap_err().to_string();
        assert!(typo.contains("did you mean reserved_domains?"), "{typo}");
        let (_, p, _) = plan("credentials", "list", &args(&["--limit", "5", "--before-id", "cr_9"])).unwrap();
        assert_eq!(p, "/credentials?limit=5&before_id=cr_9");
        let dropped = plan("credentials", "list", &args(&["--description", "x"])).unwrap_err().to_string();
        assert!(dropped.contains("takes no --description"), "{dropped}");
        assert!(plan("api_keys", "delete", &args(&["ak_1", "--force", "true"])).is_err());
        assert_eq!(
            plan("reserved-domains", "verify", &args(&["rd_1"])).unwrap().1,
            "/reserved_domains/rd_1/verify"
        );
        let h = help("reserved_domains", "verify").unwrap();
        assert!(h.contains("POST /reserved_domains/ID/verify"), "{h}");
        let far = plan("zzzz", "list", &[]).unwrap_err().to_string();
        assert!(far.contains("the resources are:") && far.contains("ip_policies"), "{far}");
    }

    #[test]
    fn help_lists_the_fields_of_the_operation_from_the_openapi_document() {
        let h = help("credentials", "create").unwrap();
        assert!(h.contains("Usage: warren api credentials create"), "{h}");
        assert!(h.contains("(POST /credentials)"), "{h}");
        assert!(h.contains("--acl") && h.contains("list: repeat the flag"), "{h}");
        assert!(h.contains("--description"), "{h}");
        let h = help("ip-policy-rules", "create").unwrap();
        assert!(h.contains("--cidr") && h.contains("required"), "{h}");
        let h = help("tunnel_sessions", "stop").unwrap();
        assert!(h.contains("POST /tunnel_sessions/ID/stop") && !h.contains("Fields:"), "{h}");
        // What a resource does not have is said, with what it has.
        let e = help("tunnels", "create").unwrap_err().to_string();
        assert!(e.contains("tunnels has no create; it has: list"), "{e}");
        // Cloud endpoints are made from the command line like any resource.
        let h = help("endpoints", "create").unwrap();
        assert!(h.contains("--url") && h.contains("--traffic-policy") && h.contains("required"), "{h}");
        assert!(help("credentails", "create").unwrap_err().to_string().contains("did you mean credentials?"));
    }
}
