//! The agent's configuration file: ngrok's agent config v3, so an existing `ngrok.yml` works
//! with `--config` (pointing `connect_url` and `connect_cas` at the edge). Several files merge
//! in order (later `agent` keys win, endpoints add up); `WARREN_AUTHTOKEN`,
//! `WARREN_CONNECT_URL` and `WARREN_CONNECT_CAS` override the files. Unknown keys and wrong
//! types are errors that name the file, the line and the key. Version 2 files are refused
//! with what to change.
//!
//! Keys ngrok documents that warren does not act on yet (`update_check`, `console_ui`,
//! ...) are accepted and listed in [`AgentFile::ignored`], so a copied `ngrok.yml` loads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{AgentConfig, ConnectCas, EndpointConfig};
use crate::locate::Seg;

/// A config file problem, with the file it is in.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {msg}")]
pub struct ConfigFileError {
    /// The file.
    pub file: String,
    /// What is wrong (for parse errors: line, column and key, with the offending line).
    pub msg: String,
}

/// The `agent:` block.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentBlock {
    authtoken: Option<String>,
    api_key: Option<String>,
    connect_url: Option<String>,
    connect_cas: Option<String>,
    heartbeat_interval: Option<String>,
    heartbeat_tolerance: Option<String>,
    connect_timeout: Option<String>,
    metadata: Option<String>,
    // Read by ngrok's agent; accepted here so existing files load (see `ignored`).
    log: Option<serde_json::Value>,
    log_level: Option<String>,
    log_format: Option<String>,
    web_addr: Option<serde_json::Value>,
    web_allow_hosts: Option<Vec<String>>,
    inspect_db_size: Option<i64>,
    update_check: Option<bool>,
    update_channel: Option<String>,
    console_ui: Option<serde_json::Value>,
    console_ui_color: Option<String>,
    crl_noverify: Option<bool>,
    remote_management: Option<bool>,
    dns_resolver_ips: Option<Vec<String>>,
    connect_interface: Option<String>,
    proxy_url: Option<String>,
}

/// `upstream:` of an endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamBlock {
    url: serde_json::Value,
    protocol: Option<String>,
    proxy_protocol: Option<u8>,
}

/// `agent_tls_termination:` of a tls endpoint (paths or inline PEM).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentTlsBlock {
    server_certificate: String,
    server_private_key: String,
    mutual_tls_certificate_authorities: Option<Vec<String>>,
}

/// One `endpoints:` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointBlock {
    name: String,
    #[serde(default)]
    url: String,
    upstream: UpstreamBlock,
    #[serde(default)]
    description: String,
    #[serde(default)]
    metadata: String,
    bindings: Option<Vec<String>>,
    traffic_policy: Option<serde_json::Value>,
    agent_tls_termination: Option<AgentTlsBlock>,
    pooling_enabled: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV3 {
    /// Checked by [`VersionOnly`] first.
    #[serde(rename = "version")]
    _version: serde_json::Value,
    #[serde(default)]
    agent: AgentBlock,
    #[serde(default)]
    endpoints: Vec<EndpointBlock>,
    /// ngrok's older `tunnels:` map, still read by its v3 agent.
    #[serde(default)]
    tunnels: std::collections::BTreeMap<String, crate::tunnels::TunnelBlock>,
}

/// Just enough to read the version first (v2 files have keys v3 does not know).
#[derive(Deserialize)]
struct VersionOnly {
    version: Option<serde_json::Value>,
}

/// One or more config files, merged.
#[derive(Debug, Default)]
pub struct AgentFile {
    agent: AgentBlock,
    endpoints: Vec<(EndpointBlock, String)>,
    /// `tunnels:` entries: name, entry, file.
    tunnels: Vec<(String, crate::tunnels::TunnelBlock, String)>,
    /// Keys that were accepted but have no effect in warren, as `file: key`.
    pub ignored: Vec<String>,
}

/// Where the config lives when no `--config` is given: `$XDG_CONFIG_HOME/warren/warren.yml`
/// (`~/.config/warren/warren.yml`), or `~/Library/Application Support/warren/warren.yml` on macOS.
pub fn default_path() -> PathBuf {
    if cfg!(target_os = "macos")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join("Library/Application Support/warren/warren.yml");
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("warren/warren.yml")
}

impl AgentFile {
    /// Reads and merges `files` in order.
    pub fn load(files: &[PathBuf]) -> Result<AgentFile, ConfigFileError> {
        let mut merged = AgentFile::default();
        for f in files {
            let text = std::fs::read_to_string(f)
                .map_err(|e| ConfigFileError { file: f.display().to_string(), msg: e.to_string() })?;
            merged.merge(&f.display().to_string(), &text)?;
        }
        Ok(merged)
    }

    /// Merges one file's text (`name` is used in errors).
    pub fn merge(&mut self, name: &str, text: &str) -> Result<(), ConfigFileError> {
        let err = |msg: String| ConfigFileError { file: name.to_owned(), msg };
        let v: VersionOnly = serde_saphyr::from_str(text).map_err(|e| err(e.to_string()))?;
        let version = v.version.as_ref().map(value_text).unwrap_or_default();
        match version.as_str() {
            "3" => {}
            "2" | "" => {
                return Err(err(
                    "this is a version 2 config (or has no version). warren reads version 3: set `version: 3`, \
                     move `authtoken`, `server_addr` (now `connect_url`) and `root_cas` (now `connect_cas`) under \
                     `agent:`, and turn `tunnels:` into `endpoints:` (ngrok's `ngrok config upgrade` does this)"
                        .into(),
                ));
            }
            other => {
                return Err(err(format!("unsupported config version {other:?}; warren reads version 3")));
            }
        }
        let file: FileV3 = serde_saphyr::from_str(text).map_err(|e| err(e.to_string()))?;
        let a = file.agent;
        for (key, set) in [
            ("log_format", a.log_format.is_some()),
            ("update_check", a.update_check.is_some()),
            ("update_channel", a.update_channel.is_some()),
            ("console_ui", a.console_ui.is_some()),
            ("console_ui_color", a.console_ui_color.is_some()),
            ("crl_noverify", a.crl_noverify.is_some()),
            ("remote_management", a.remote_management.is_some()),
            ("connect_interface", a.connect_interface.is_some()),
            ("proxy_url", a.proxy_url.is_some()),
        ] {
            if set {
                self.ignored.push(format!("{name}: agent.{key}"));
            }
        }
        let m = &mut self.agent;
        macro_rules! later_wins {
            ($($f:ident),*) => { $( if a.$f.is_some() { m.$f = a.$f.clone(); } )* };
        }
        later_wins!(
            authtoken,
            api_key,
            connect_url,
            connect_cas,
            heartbeat_interval,
            heartbeat_tolerance,
            connect_timeout,
            metadata,
            log_level,
            log,
            web_addr,
            web_allow_hosts,
            inspect_db_size,
            dns_resolver_ips
        );
        for r in a.dns_resolver_ips.iter().flatten() {
            crate::dns::parse_resolver(r).map_err(err)?;
        }
        if let Some(w) = &a.web_addr {
            web_addr(w).map_err(err)?;
        }
        for d in [&a.heartbeat_interval, &a.heartbeat_tolerance, &a.connect_timeout].into_iter().flatten() {
            parse_duration(d).map_err(err)?;
        }
        // A policy problem is shown at its line in this file (checked now, before `start`
        // binds anything; `endpoint` checks the policy with the flags' rules added too).
        let located = |base: [Seg; 3], policy: &serde_json::Value, proto: &str, what: String| {
            crate::config::check_policy_at(policy, proto).map_err(|p| ConfigFileError {
                file: match p.position(text, &base) {
                    Some((line, col)) => format!("{name}:{line}:{col}"),
                    None => name.to_owned(),
                },
                msg: format!("{what}: {}", p.msg),
            })
        };
        for (i, ep) in file.endpoints.into_iter().enumerate() {
            if self.endpoints.iter().any(|(e, _)| e.name == ep.name) {
                return Err(err(format!("endpoint name {:?} is defined twice", ep.name)));
            }
            if let (Some(p @ serde_json::Value::Object(_)), Ok(kind)) =
                (&ep.traffic_policy, endpoint_kind(&ep))
            {
                let base = [Seg::Key("endpoints".into()), Seg::Index(i), Seg::Key("traffic_policy".into())];
                located(base, p, kind.proto.as_str(), format!("endpoints[{}]", ep.name))?;
            }
            self.endpoints.push((ep, name.to_owned()));
        }
        for (tunnel, t) in file.tunnels {
            if self.endpoints.iter().any(|(e, _)| e.name == tunnel)
                || self.tunnels.iter().any(|(n, _, _)| *n == tunnel)
            {
                return Err(err(format!("endpoint name {tunnel:?} is defined twice")));
            }
            if let Some((p, proto)) = t.own_policy() {
                let base =
                    [Seg::Key("tunnels".into()), Seg::Key(tunnel.clone()), Seg::Key("traffic_policy".into())];
                located(base, p, proto, format!("tunnels.{tunnel}"))?;
            }
            // Checked now, so `config check` reports what `start` would refuse.
            t.endpoint(&tunnel).map_err(|m| err(format!("tunnels.{tunnel}: {m}")))?;
            self.tunnels.push((tunnel, t, name.to_owned()));
        }
        Ok(())
    }

    /// `agent.log` (`stdout`, `stderr`, `false` or a file) and `agent.log_level`, which
    /// the binary applies before it starts the agent.
    pub fn log(&self) -> (Option<String>, Option<String>) {
        let log = self.agent.log.as_ref().map(|v| match v {
            serde_json::Value::Bool(false) => "false".to_owned(),
            other => value_text(other),
        });
        // ngrok's levels; `crit` has no tracing equivalent and maps to error.
        let level = self.agent.log_level.as_ref().map(|l| match l.as_str() {
            "crit" => "error".to_owned(),
            other => other.to_owned(),
        });
        (log, level)
    }

    /// Endpoint names, in file order.
    pub fn endpoint_names(&self) -> Vec<&str> {
        let tunnels = self.tunnels.iter().map(|(n, _, _)| n.as_str());
        self.endpoints.iter().map(|(e, _)| e.name.as_str()).chain(tunnels).collect()
    }

    /// A copy to check endpoints with (see [`AgentFile::fill_missing_agent_settings`]).
    pub fn clone_for_check(&self) -> AgentFile {
        AgentFile {
            agent: self.agent.clone(),
            endpoints: self.endpoints.clone(),
            tunnels: self.tunnels.clone(),
            ignored: vec![],
        }
    }

    /// Sets a placeholder `connect_url` when none is given, so the endpoints can be checked
    /// without one (`config check` of a file that relies on `WARREN_CONNECT_URL`).
    pub fn fill_missing_agent_settings(&mut self) {
        if self.agent.connect_url.is_none() {
            self.agent.connect_url = Some("localhost:4443".into());
        }
    }

    /// An `agent:` setting as the files give it: `authtoken`, `connect_url`, `connect_cas` or
    /// `api_key` (`None`: not set, or another key).
    pub fn agent_setting(&self, key: &str) -> Option<&str> {
        let a = &self.agent;
        match key {
            "authtoken" => a.authtoken.as_deref(),
            "connect_url" => a.connect_url.as_deref(),
            "connect_cas" => a.connect_cas.as_deref(),
            "api_key" => a.api_key.as_deref(),
            _ => None,
        }
        .filter(|v| !v.is_empty())
    }

    /// The agent configuration for the endpoints `names` (all when `names` is empty), with
    /// the environment's overrides applied.
    pub fn agent_config(&self, names: &[String]) -> Result<AgentConfig, ConfigFileError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let a = &self.agent;
        let no_file = |msg: &str| ConfigFileError { file: "config".into(), msg: msg.to_owned() };
        let authtoken = env("WARREN_AUTHTOKEN").or_else(|| a.authtoken.clone()).unwrap_or_default();
        let connect_url = env("WARREN_CONNECT_URL")
            .or_else(|| a.connect_url.clone())
            .ok_or_else(|| no_file("no agent.connect_url: warren needs the edge's address (host:port)"))?;
        let cas =
            env("WARREN_CONNECT_CAS").or_else(|| a.connect_cas.clone()).unwrap_or_else(|| "trusted".into());
        let mut cfg = AgentConfig::new(authtoken, connect_url, ConnectCas::parse(&cas));
        if let Some(d) = &a.heartbeat_interval {
            cfg.heartbeat_interval = parse_duration(d).map_err(|m| no_file(&m))?;
        }
        if let Some(d) = &a.heartbeat_tolerance {
            cfg.heartbeat_tolerance = parse_duration(d).map_err(|m| no_file(&m))?;
        }
        if let Some(d) = &a.connect_timeout {
            cfg.connect_timeout = parse_duration(d).map_err(|m| no_file(&m))?;
        }
        cfg.metadata = a.metadata.clone().unwrap_or_default();
        match &a.web_addr {
            None => {
                cfg.web_addr = Some(DEFAULT_WEB_ADDR);
                cfg.web_addr_fallback = true;
            }
            Some(w) => cfg.web_addr = web_addr(w).map_err(|m| no_file(&m))?,
        }
        cfg.web_allow_hosts = a.web_allow_hosts.clone().unwrap_or_default();
        cfg.inspect_db_size = a.inspect_db_size.unwrap_or(0);
        for r in a.dns_resolver_ips.iter().flatten() {
            cfg.dns_resolvers.push(crate::dns::parse_resolver(r).map_err(|m| no_file(&m))?);
        }
        for n in names {
            if !self.endpoints.iter().any(|(e, _)| &e.name == n)
                && !self.tunnels.iter().any(|(t, _, _)| t == n)
            {
                return Err(no_file(&format!(
                    "no endpoint named {n:?}; the config defines: {}",
                    self.endpoint_names().join(", ")
                )));
            }
        }
        for (ep, file) in &self.endpoints {
            if names.is_empty() || names.contains(&ep.name) {
                cfg.endpoints.push(endpoint(ep).map_err(|msg| ConfigFileError {
                    file: file.clone(),
                    msg: format!("endpoints[{}]: {msg}", ep.name),
                })?);
            }
        }
        for (tunnel, t, file) in &self.tunnels {
            if names.is_empty() || names.contains(tunnel) {
                cfg.endpoints.push(t.endpoint(tunnel).map_err(|msg| ConfigFileError {
                    file: file.clone(),
                    msg: format!("tunnels.{tunnel}: {msg}"),
                })?);
            }
        }
        if cfg.endpoints.is_empty() {
            return Err(no_file("no endpoints to start"));
        }
        Ok(cfg)
    }
}

/// Where the inspector listens unless `agent.web_addr` says otherwise.
pub const DEFAULT_WEB_ADDR: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4040);

/// `agent.web_addr`: `host:port` (`localhost` means 127.0.0.1), or `false` for none.
pub fn web_addr(v: &serde_json::Value) -> Result<Option<std::net::SocketAddr>, String> {
    let text = match v {
        serde_json::Value::Bool(false) => return Ok(None),
        serde_json::Value::String(s) if s == "false" => return Ok(None),
        serde_json::Value::String(s) => s.trim(),
        other => return Err(format!("agent.web_addr: expected host:port or false, found {other}")),
    };
    let text = text.strip_prefix("localhost:").map_or_else(|| text.to_owned(), |p| format!("127.0.0.1:{p}"));
    text.parse()
        .map(Some)
        .map_err(|_| format!("agent.web_addr {text:?}: expected an IP address and port, like 127.0.0.1:4040"))
}

/// An endpoint from the local API's `POST /api/endpoints`: the same fields as a config
/// file's `endpoints:` entry, as JSON.
pub fn endpoint_from_json(v: serde_json::Value) -> Result<EndpointConfig, String> {
    let ep: EndpointBlock = serde_json::from_value(v).map_err(|e| format!("invalid endpoint: {e}"))?;
    if ep.name.trim().is_empty() {
        return Err("invalid endpoint: name is empty".into());
    }
    endpoint(&ep)
}

/// A tunnel from the local API's `POST /api/tunnels` (ngrok's deprecated but still used
/// form): `name` plus the keys of a config file's `tunnels:` entry, as JSON.
pub fn tunnel_from_json(v: serde_json::Value) -> Result<EndpointConfig, String> {
    let serde_json::Value::Object(mut m) = v else { return Err("invalid tunnel: expected an object".into()) };
    let name = match m.remove("name") {
        Some(serde_json::Value::String(n)) if !n.trim().is_empty() => n,
        _ => return Err("invalid tunnel: name is missing or empty".into()),
    };
    let t: crate::tunnels::TunnelBlock =
        serde_json::from_value(serde_json::Value::Object(m)).map_err(|e| format!("invalid tunnel: {e}"))?;
    t.endpoint(&name).map_err(|e| format!("invalid tunnel {name:?}: {e}"))
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.trim().to_owned(),
        serde_json::Value::Number(n) => n.to_string(),
        other => format!("{other:?}"),
    }
}

fn endpoint(ep: &EndpointBlock) -> Result<EndpointConfig, String> {
    let mut config = endpoint_kind(ep)?;
    // The URL says which: NAME.internal is internal, anything else public.
    let internal =
        config.url.split("://").nth(1).is_some_and(|h| h.trim_end_matches('/').ends_with(".internal"));
    match ep.bindings.as_deref() {
        None | Some([]) => {}
        Some([b]) if b == "internal" && internal => {}
        Some([b]) if b == "public" && !internal => {}
        Some([b]) if b == "internal" => {
            return Err(format!("bindings [internal] needs a url ending in .internal, not {:?}", config.url));
        }
        Some([b]) if b == "public" => {
            return Err(format!("{:?} is an internal name: its binding is internal", config.url));
        }
        Some(other) => return Err(format!("bindings {other:?}: one of public or internal")),
    }
    config.name = ep.name.clone();
    config.description = ep.description.clone();
    config.metadata = ep.metadata.clone();
    config.pooling = ep.pooling_enabled.unwrap_or(false);
    config.traffic_policy = match &ep.traffic_policy {
        None | Some(serde_json::Value::Null) => None,
        Some(v @ serde_json::Value::Object(_)) => Some(v.clone()),
        // A document given as text (YAML or JSON) inside the config.
        Some(serde_json::Value::String(text)) => Some(crate::config::policy_from_text(text)?),
        Some(other) => return Err(format!("traffic_policy must be a mapping, not {other}")),
    };
    if let Some(p) = &config.traffic_policy {
        crate::config::check_policy(p, config.proto.as_str())?;
    }
    Ok(config)
}

fn endpoint_kind(ep: &EndpointBlock) -> Result<EndpointConfig, String> {
    let upstream = value_text(&ep.upstream.url);
    let http2 = match ep.upstream.protocol.as_deref() {
        None | Some("http1") => false,
        Some("http2") => true,
        Some(other) => return Err(format!("upstream.protocol {other:?}: one of http1 or http2")),
    };
    if ep.upstream.proxy_protocol.is_some_and(|p| p != 0) {
        return Err("upstream.proxy_protocol is not supported by warren so far".into());
    }
    let url = ep.url.trim();
    let scheme = url.split_once("://").map(|(s, _)| s);
    if http2 && matches!(scheme, Some("tcp" | "tls")) {
        return Err(format!("upstream.protocol http2 is for http and https endpoints, not {url}"));
    }
    match scheme {
        Some("tcp") => EndpointConfig::tcp(&upstream, Some(url)),
        Some("tls") => {
            let termination = match &ep.agent_tls_termination {
                None => None,
                Some(t) => {
                    let pem = |v: &str| -> Result<Vec<u8>, String> {
                        if v.contains("-----BEGIN") {
                            Ok(v.as_bytes().to_vec())
                        } else {
                            std::fs::read(v).map_err(|e| format!("cannot read {v}: {e}"))
                        }
                    };
                    let mut cas = Vec::new();
                    for ca in t.mutual_tls_certificate_authorities.iter().flatten() {
                        cas.extend(pem(ca)?);
                    }
                    let cfg = crate::tls::agent_termination(
                        &pem(&t.server_certificate)?,
                        &pem(&t.server_private_key)?,
                        (!cas.is_empty()).then_some(cas.as_slice()),
                    )?;
                    Some(cfg)
                }
            };
            EndpointConfig::tls(&upstream, Some(url), termination)
        }
        Some("http" | "https") | None => {
            if ep.agent_tls_termination.is_some() {
                return Err("agent_tls_termination is for tls:// endpoints".into());
            }
            let url = match scheme {
                None if !url.is_empty() => format!("https://{url}"),
                _ => url.to_owned(),
            };
            let mut config = EndpointConfig::http(&upstream, (!url.is_empty()).then_some(url.as_str()))?;
            config.upstream_http2 = http2;
            Ok(config)
        }
        Some(other) => Err(format!("url scheme {other:?}: use https, http, tcp or tls")),
    }
}

/// Go-style durations as ngrok writes them: `500ms`, `10s`, `1m`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}; use forms like 500ms, 10s, 1m");
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => return Err(bad()),
        };
        total += unit;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Writes `authtoken` or `connect_url` into the `agent:` block of `file`, creating a
/// version 3 file when it does not exist (`warren config add-authtoken`).
pub fn set_agent_key(file: &Path, key: &str, value: &str) -> Result<(), ConfigFileError> {
    let err = |msg: String| ConfigFileError { file: file.display().to_string(), msg };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "version: 3\nagent:\n".into(),
        Err(e) => return Err(err(e.to_string())),
    };
    let line = format!("  {key}: {}", serde_json::to_string(value).expect("a string serializes"));
    let mut out = Vec::new();
    let (mut in_agent, mut done) = (false, false);
    for l in text.lines() {
        if l.starts_with("agent:") {
            in_agent = true;
            out.push(l.to_owned());
            continue;
        }
        if in_agent && !l.starts_with(' ') && !l.trim().is_empty() {
            if !done {
                out.push(line.clone());
                done = true;
            }
            in_agent = false;
        }
        if in_agent && l.trim_start().starts_with(&format!("{key}:")) {
            if !done {
                out.push(line.clone());
                done = true;
            }
            continue;
        }
        out.push(l.to_owned());
    }
    if !done {
        if !text.lines().any(|l| l.starts_with("agent:")) {
            out.push("agent:".into());
        }
        out.push(line);
    }
    // Parse before writing: never leave a broken file behind.
    let new = out.join("\n") + "\n";
    AgentFile::default().merge(&file.display().to_string(), &new)?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    crate::config::write_private_file(file, new.as_bytes()).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ngrok's documentation example (agent/config/v3), with connect_url and connect_cas
    /// pointed at an edge.
    const NGROK_EXAMPLE: &str = r#"
version: 3
agent:
  authtoken: 4nq9771bPxe8ctg7LKr_2ClH7Y15Zqe4bWLWF9p
  connect_url: connect.corp.example:443
  connect_cas: /etc/warren/ca.pem
  api_key: 24yRd5U3DestCQapJrrVHLOqiAC_7RviwRqpd3wc9dKLujQZN
  log: stdout
  log_level: info
  log_format: logfmt
  heartbeat_interval: 1m
  heartbeat_tolerance: 5s
  metadata: '{"serial": "00012xa-33rUtz9", "comment": "For customer alan@example.com"}'
  web_addr: localhost:4040
  update_check: false
endpoints:
  - name: basic
    url: https://basic.example.com
    upstream:
      url: 8080
  - name: ssh
    url: tcp://1.tcp.corp.example:21000
    upstream:
      url: 22
  - name: description
    description: "my app"
    metadata: "team=web"
    url: demo.corp.example
    upstream:
      url: http://localhost:3000
      protocol: http1
"#;

    #[test]
    fn ngroks_example_loads_and_maps_to_endpoints() {
        let mut f = AgentFile::default();
        f.merge("ngrok.yml", NGROK_EXAMPLE).unwrap();
        assert_eq!(f.endpoint_names(), ["basic", "ssh", "description"]);
        assert!(f.ignored.iter().any(|k| k.ends_with("agent.update_check")), "{:?}", f.ignored);
        assert_eq!(f.log(), (Some("stdout".into()), Some("info".into())));
        assert!(!f.ignored.iter().any(|k| k.ends_with("agent.web_addr")), "{:?}", f.ignored);
        let cfg = f.agent_config(&[]).unwrap();
        assert_eq!(cfg.web_addr, Some("127.0.0.1:4040".parse().unwrap()));
        assert_eq!(cfg.endpoints[0].name, "basic");
        assert_eq!(cfg.connect_url, "connect.corp.example:443");
        assert_eq!(cfg.heartbeat_interval, Duration::from_secs(60));
        assert_eq!(cfg.heartbeat_tolerance, Duration::from_secs(5));
        assert_eq!(cfg.endpoints.len(), 3);
        assert_eq!(cfg.endpoints[0].url, "https://basic.example.com");
        assert_eq!(cfg.endpoints[0].upstream.port, 8080);
        assert_eq!(cfg.endpoints[1].url, "tcp://1.tcp.corp.example:21000");
        assert_eq!(cfg.endpoints[2].url, "https://demo.corp.example");
        let only = f.agent_config(&["ssh".into()]).unwrap();
        assert_eq!(only.endpoints.len(), 1);
        assert!(f.agent_config(&["nope".into()]).unwrap_err().msg.contains("basic, ssh, description"));
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let bad_key = "version: 3\nagent:\n  authtoken: x\n  authtokn: y\n";
        let e = AgentFile::default().merge("a.yml", bad_key).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("a.yml: ")
                && text.contains("line 4")
                && text.contains("unknown field `authtokn`"),
            "{text}"
        );
        let bad_type =
            "version: 3\nendpoints:\n  - name: x\n    upstream:\n      url: 80\n    description: [1, 2]\n";
        let text = AgentFile::default().merge("b.yml", bad_type).unwrap_err().to_string();
        // The offending line is shown with its key.
        assert!(
            text.starts_with("b.yml: ") && text.contains("line 6") && text.contains("description: [1, 2]"),
            "{text}"
        );
        let bad_duration = "version: 3\nagent:\n  heartbeat_interval: soon\n";
        assert!(AgentFile::default().merge("c.yml", bad_duration).unwrap_err().to_string().contains("soon"));
    }

    #[test]
    fn upstream_protocol_http2_is_taken_for_http_endpoints_and_refused_elsewhere() {
        let file = |url: &str, protocol: &str| {
            format!(
                "version: 3\nagent:\n  authtoken: x\n  connect_url: localhost:4443\nendpoints:\n  - name: api\n    url: {url}\n    upstream:\n      url: 8080\n      protocol: {protocol}\n"
            )
        };
        let load = |text: String| {
            let mut f = AgentFile::default();
            f.merge("ngrok.yml", &text).map_err(|e| e.to_string())?;
            f.agent_config(&[]).map_err(|e| e.to_string())
        };
        let cfg = load(file("https://grpc.example.com", "http2")).unwrap();
        assert!(cfg.endpoints[0].upstream_http2);
        assert!(!load(file("https://web.example.com", "http1")).unwrap().endpoints[0].upstream_http2);
        let e = load(file("https://grpc.example.com", "http3")).unwrap_err();
        assert!(e.contains("http3") && e.contains("http2"), "{e}");
        let e = load(file("tcp://1.tcp.example.com:20000", "http2")).unwrap_err();
        assert!(e.contains("http and https"), "{e}");
    }

    #[test]
    fn version_2_files_are_refused_with_how_to_upgrade() {
        let v2 = "version: \"2\"\nauthtoken: x\ntunnels:\n  web:\n    proto: http\n    addr: 80\n";
        let text = AgentFile::default().merge("old.yml", v2).unwrap_err().to_string();
        assert!(
            text.contains("version 2") && text.contains("connect_url") && text.contains("endpoints"),
            "{text}"
        );
    }

    /// ngrok's documentation example of `tunnels:` in a version 3 file: each entry becomes an
    /// endpoint, the older options their Traffic Policy rules; what warren does not do is
    /// refused by key, with the file and line.
    #[test]
    fn v3_tunnels_run_as_endpoints_and_unknown_keys_are_refused_by_name() {
        let text = "version: 3\nagent:\n  authtoken: x\n  connect_url: localhost:4443\ntunnels:\n  website:\n    addr: 8888\n    basic_auth:\n      - \"bob:bobpassword\"\n    schemes:\n      - https\n    host_header: \"myapp.dev\"\n    inspect: false\n    proto: http\n    domain: myapp.example.com\n    ip_restriction:\n      allow_cidrs: [10.0.0.0/8]\n  ssh-access:\n    addr: 22\n    proto: tcp\n    remote_addr: 1.tcp.example.com:12345\n  plain:\n    addr: 3000\n    proto: http\n    schemes: [http]\n    subdomain: Plain\nendpoints:\n  - name: api\n    upstream:\n      url: 8080\n";
        let mut f = AgentFile::default();
        f.merge("ngrok.yml", text).unwrap();
        assert_eq!(f.endpoint_names(), ["api", "plain", "ssh-access", "website"]);
        let cfg = f.agent_config(&[]).unwrap();
        let by = |n: &str| cfg.endpoints.iter().find(|e| e.name == n).unwrap();
        let web = by("website");
        assert_eq!(
            (web.proto, web.url.as_str()),
            (crate::config::EndpointProto::Https, "https://myapp.example.com")
        );
        assert_eq!(web.upstream.port, 8888);
        assert_eq!(web.host_header.as_deref(), Some("myapp.dev"));
        assert!(!web.inspect);
        let policy = web.traffic_policy.as_ref().expect("basic auth and the IP rule as policy").to_string();
        assert!(
            policy.contains("basic-auth") && policy.contains("restrict-ips") && policy.contains("10.0.0.0/8"),
            "{policy}"
        );
        let ssh = by("ssh-access");
        assert_eq!(
            (ssh.proto, ssh.url.as_str()),
            (crate::config::EndpointProto::Tcp, "tcp://1.tcp.example.com:12345")
        );
        let plain = by("plain");
        assert_eq!((plain.proto, plain.subdomain.as_str()), (crate::config::EndpointProto::Http, "plain"));

        for (bad, says) in [
            ("    labels: [edge=x]\n", "labels"),
            ("    schemes: [http, https]\n", "one of the two"),
            ("    remote_addr: x:1\n", "remote_addr is for tcp"),
            ("    crt: /nonexistent.pem\n", "crt and key are for tls"),
        ] {
            let text = format!("version: 3\ntunnels:\n  web:\n    proto: http\n    addr: 80\n{bad}");
            let e = AgentFile::default().merge("ngrok.yml", &text).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("ngrok.yml"), "{bad}: {e}");
        }
        let twice = "version: 3\ntunnels:\n  api:\n    proto: tcp\n    addr: 22\nendpoints:\n  - name: api\n    upstream:\n      url: 80\n";
        assert!(
            AgentFile::default().merge("x.yml", twice).unwrap_err().to_string().contains("defined twice")
        );
    }

    #[test]
    fn several_files_merge_later_agent_keys_win_and_endpoints_add_up() {
        let mut f = AgentFile::default();
        f.merge("base.yml", "version: 3\nagent:\n  connect_url: a:443\n  authtoken: one\nendpoints:\n  - name: web\n    upstream:\n      url: 80\n").unwrap();
        f.merge("local.yml", "version: 3\nagent:\n  authtoken: two\nendpoints:\n  - name: db\n    url: tcp://h:5432\n    upstream:\n      url: 5432\n").unwrap();
        let cfg = f.agent_config(&[]).unwrap();
        assert_eq!((cfg.connect_url.as_str(), cfg.authtoken.as_str()), ("a:443", "two"));
        assert_eq!(cfg.endpoints.len(), 2);
        let dup =
            f.merge("again.yml", "version: 3\nendpoints:\n  - name: web\n    upstream:\n      url: 81\n");
        assert!(dup.unwrap_err().to_string().contains("defined twice"));
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(
            parse_duration("10").is_err() && parse_duration("").is_err() && parse_duration("5d").is_err()
        );
    }

    #[test]
    fn add_authtoken_writes_a_valid_private_file() {
        let dir = std::env::temp_dir().join(format!("warren-cfg-{}", std::process::id()));
        let file = dir.join("warren.yml");
        let _ = std::fs::remove_file(&file);
        set_agent_key(&file, "authtoken", "tok_1").unwrap();
        set_agent_key(&file, "connect_url", "connect.corp.example:443").unwrap();
        set_agent_key(&file, "authtoken", "tok_2").unwrap();
        let f = AgentFile::load(std::slice::from_ref(&file)).unwrap();
        assert_eq!(f.agent.authtoken.as_deref(), Some("tok_2"));
        assert_eq!(f.agent.connect_url.as_deref(), Some("connect.corp.example:443"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
