//! Drives the real `warren` binary the way the README tells a new user to: start an edge on
//! the embedded default, expose a local web server and a TCP service with the printed
//! command, and visit them with curl.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// A child process whose stdout lines arrive on a channel; killed on drop.
/// The binary, with the developer's own agent settings out of the way: no WARREN_* agent
/// variables, and a per-user config directory that does not exist (a test that wants one
/// sets `XDG_CONFIG_HOME`).
fn warren() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    for v in ["WARREN_AUTHTOKEN", "WARREN_CONNECT_URL", "WARREN_CONNECT_CAS", "WARREN_API_KEY"] {
        cmd.env_remove(v);
    }
    cmd.env("XDG_CONFIG_HOME", "/nonexistent/warren-tests");
    cmd
}

struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        Proc::spawn_with(args, false)
    }

    /// Like [`Proc::spawn`], with the lines of stderr instead of stdout.
    fn spawn_reading_stderr(args: &[&str]) -> Proc {
        Proc::spawn_with(args, true)
    }

    fn spawn_with(args: &[&str], stderr: bool) -> Proc {
        Proc::spawn_full(args, stderr, &[])
    }

    /// Like [`Proc::spawn`], with extra environment variables.
    fn spawn_env(args: &[&str], env: &[(&str, &std::path::Path)]) -> Proc {
        Proc::spawn_full(args, false, env)
    }

    fn spawn_full(args: &[&str], stderr: bool, env: &[(&str, &std::path::Path)]) -> Proc {
        let mut cmd = warren();
        cmd.args(args).stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if stderr {
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        }
        let mut child = cmd.spawn().expect("spawn warren");
        let out: Box<dyn Read + Send> = if stderr {
            Box::new(child.stderr.take().unwrap())
        } else {
            Box::new(child.stdout.take().unwrap())
        };
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("  warren> {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc { child, lines }
    }

    /// The first line containing `needle`.
    fn line_with(&self, needle: &str) -> String {
        // One deadline for the whole wait: a process that keeps printing other lines must not
        // keep the test waiting for ever.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(e) => panic!("warren never printed {needle:?}: {e}"),
            }
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        for _ in 0..600 {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("warren did not exit after SIGTERM");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny HTTP/1.1 upstream answering every request with a fixed body.
fn http_upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let body = b"hello from the binary test upstream";
                let head =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = c.write_all(head.as_bytes());
                let _ = c.write_all(body);
            });
        }
    });
    port
}

fn tcp_echo() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(c) = conn else { return };
            std::thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let mut w = c;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    port
}

fn after<'a>(line: &'a str, marker: &str) -> &'a str {
    line.split_once(marker).unwrap_or_else(|| panic!("{marker:?} in {line:?}")).1.trim()
}

/// `warren edge` on `data` with every listener on a free port.
fn edge_on_port_zero(data: &str) -> Vec<&str> {
    let mut args = vec!["edge", "--data-dir", data];
    for flag in ["--connect-addr", "--https-addr", "--http-addr", "--api-addr"] {
        args.extend([flag, "127.0.0.1:0"]);
    }
    args
}

#[test]
fn edge_and_agent_binaries_serve_curl_over_https_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let mut edge_args = edge_on_port_zero(data_s);
    edge_args.extend(["--tcp-ports", "43000-43999"]);
    let mut edge = Proc::spawn(&edge_args);
    // "  agents connect:  localhost:PORT (CA certificate: PATH)"
    let line = edge.line_with("agents connect:");
    let connect = after(&line, "agents connect:").split_whitespace().next().unwrap().to_owned();
    let ca = after(&line, "(CA certificate:").trim_end_matches(')').to_owned();
    let https_port = edge.line_with("https endpoints:").rsplit(':').next().unwrap().to_owned();
    let api_line = edge.line_with("REST API:");
    let api_url = after(&api_line, "REST API:").split_whitespace().next().unwrap().to_owned();
    let token = after(&edge.line_with("authtoken:"), "authtoken:").to_owned();
    let api_key = after(&edge.line_with("API key:"), "API key:").to_owned();
    let agent_cmd = edge.line_with("warren http 3000");
    assert!(
        agent_cmd.contains(&token) && agent_cmd.contains(&connect) && agent_cmd.contains(&ca),
        "{agent_cmd}"
    );

    // The token is also in an owner-only file.
    let creds = data.join("credentials.txt");
    assert!(std::fs::read_to_string(&creds).unwrap().contains(&token));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&creds).unwrap().permissions().mode() & 0o077, 0);
    }

    let up = http_upstream().to_string();
    let agent = Proc::spawn(&[
        "http",
        &up,
        "--url",
        "https://bin.warren.localhost",
        "--authtoken",
        &token,
        "--connect-url",
        &connect,
        "--connect-cas",
        &ca,
    ]);
    let fwd = agent.line_with("Forwarding");
    let url = format!("https://bin.warren.localhost:{https_port}");
    assert!(fwd.contains(&url), "{fwd}");
    // Not a terminal: plain lines, no escape sequences, and where the inspector is.
    assert!(!fwd.contains('\x1b'), "{fwd:?}");
    assert!(agent.line_with("Inspector").contains("http://127.0.0.1:"));

    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", flag, "--cacert", &ca, "-w", "\n%{http_version}"])
            .arg("--resolve")
            .arg(format!("bin.warren.localhost:{https_port}:127.0.0.1"))
            .arg(format!("{url}/"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(text, format!("hello from the binary test upstream\n{version}"));
    }

    let echo = tcp_echo().to_string();
    let tcp_agent =
        Proc::spawn(&["tcp", &echo, "--authtoken", &token, "--connect-url", &connect, "--connect-cas", &ca]);
    let fwd = tcp_agent.line_with("Forwarding tcp://");
    let port: u16 =
        fwd.split("tcp://localhost:").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"ping through the binary").unwrap();
    let mut buf = [0u8; 23];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping through the binary");

    // `warren api`, like `ngrok api`: make an ACL-limited token, list, delete.
    let api = |args: &[&str]| {
        let out = warren()
            .arg("api")
            .args(args)
            .args(["--api-url", &api_url, "--api-key", &api_key])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = api(&[
        "credentials",
        "create",
        "--description",
        "from the CLI",
        "--acl",
        "bind:cli.warren.localhost",
    ]);
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(created["token"].as_str().unwrap().starts_with("cr_"));
    assert_eq!(created["acl"], serde_json::json!(["bind:cli.warren.localhost"]));
    let id = created["id"].as_str().unwrap();
    let (ok, out, _) = api(&["credentials", "list"]);
    assert!(ok && out.contains(id) && out.contains("from the CLI"), "{out}");
    let (ok, _, err) = api(&["credentials", "delete", id]);
    assert!(ok, "{err}");
    let (ok, _, err) = api(&["credentials", "get", id]);
    assert!(!ok && err.contains("404") && err.contains("not found"), "{err}");

    drop(agent);
    drop(tcp_agent);

    // On a terminal the agent shows the status console instead of log lines: run it under
    // `script`, which gives it a pseudo-terminal, and read the screen it draws.
    let agent_line = format!(
        "{} http {up} --url https://tty.warren.localhost --authtoken {token} --connect-url {connect} --connect-cas {ca} --web-addr 127.0.0.1:0",
        env!("CARGO_BIN_EXE_warren")
    );
    let mut tty = Command::new("script")
        .args(["-qfec", &agent_line, "/dev/null"])
        .env("COLUMNS", "120")
        .env("LINES", "30")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script (util-linux) runs the agent on a pseudo-terminal");
    let mut out = tty.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let tty_url = format!("https://tty.warren.localhost:{https_port} -> http://localhost:{up}");
    let mut screen = Vec::new();
    while !String::from_utf8_lossy(&screen).contains(&tty_url) {
        match rx.recv_timeout(WAIT) {
            Ok(chunk) => screen.extend(chunk),
            Err(_) => panic!("the console never showed the endpoint: {}", String::from_utf8_lossy(&screen)),
        }
    }
    let text = String::from_utf8_lossy(&screen);
    assert!(text.contains("\x1b[?1049h"), "the console takes the alternate screen: {text:?}");
    for row in
        ["Session Status", "online", "Web Interface", "http://127.0.0.1:", "Connections", "HTTP Requests"]
    {
        assert!(text.contains(row), "{row:?} missing from the console: {text}");
    }
    assert!(!text.contains("Forwarding https://tty"), "no log lines under the console");
    let _ = tty.kill();
    let _ = tty.wait();

    // The same through an ngrok-style config file: written with `warren config`, checked,
    // then started by name.
    let cfg = data.join("agent.yml");
    let cfg_s = cfg.to_str().unwrap();
    let run = |args: &[&str]| warren().args(args).output().unwrap();
    assert!(run(&["config", "add-authtoken", &token, "--config", cfg_s]).status.success());
    assert!(run(&["config", "add-connect-url", &connect, "--config", cfg_s]).status.success());
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text = text.replace("agent:\n", &format!("agent:\n  connect_cas: {ca}\n"));
    text.push_str(&format!(
        "endpoints:\n  - name: site\n    url: https://cfg.warren.localhost\n    upstream:\n      url: {up}\n"
    ));
    std::fs::write(&cfg, &text).unwrap();
    let check = run(&["config", "check", "--config", cfg_s]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(String::from_utf8_lossy(&check.stdout).contains("endpoints: site"));
    let started = Proc::spawn(&["start", "site", "--config", cfg_s]);
    let fwd = started.line_with("Forwarding");
    let cfg_url = format!("https://cfg.warren.localhost:{https_port}");
    assert!(fwd.contains(&cfg_url), "{fwd}");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--cacert", &ca, "--resolve"])
        .arg(format!("cfg.warren.localhost:{https_port}:127.0.0.1"))
        .arg(format!("{cfg_url}/"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from the binary test upstream");
    drop(started);
    std::fs::write(&cfg, "version: 3\nagent:\n  authtokn: x\n").unwrap();
    let bad = run(&["config", "check", "--config", cfg_s]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains(cfg_s) && err.contains("line 3") && err.contains("authtokn"),
        "{err}"
    );

    assert!(edge.terminate().success(), "the edge exits cleanly on SIGTERM");

    // A second start reuses the data directory and does not print a new token.
    let mut again = Proc::spawn(&edge_args);
    let line = again.line_with("Expose a local web server");
    assert!(line.contains("credentials.txt"), "{line}");
    assert!(again.terminate().success());
}

#[test]
fn a_wrong_token_or_an_untrusted_edge_is_explained_with_what_to_do() {
    // A real edge, so the refusal and the certificate are the edge's own.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut edge = Proc::spawn(&[
        "edge",
        "--data-dir",
        data.to_str().unwrap(),
        "--connect-addr",
        "127.0.0.1:0",
        "--https-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--no-api",
    ]);
    let line = edge.line_with("agents connect:");
    let connect = after(&line, "agents connect:").split_whitespace().next().unwrap().to_owned();
    let ca = after(&line, "(CA certificate:").trim_end_matches(')').to_owned();
    let out = warren()
        .args([
            "http",
            "8080",
            "--authtoken",
            "cr_not_a_real_token",
            "--connect-url",
            &connect,
            "--connect-cas",
            &ca,
        ])
        .args(["--web-addr", "false"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ERR_NGROK_107") && err.contains("warren config add-authtoken"), "{err}");

    // The public trust store does not know the edge's local CA: the agent retries, saying why
    // and what to set.
    let mut agent = Proc::spawn_reading_stderr(&[
        "http",
        "8080",
        "--authtoken",
        "cr_x",
        "--connect-url",
        &connect,
        "--connect-cas",
        "trusted",
        "--web-addr",
        "false",
        "--log",
        "stderr",
    ]);
    // Before any session it says it cannot connect yet (not that a session was lost).
    let line = agent.line_with("not trusted");
    assert!(line.contains("cannot connect to the edge yet") && line.contains("connect_cas"), "{line}");
    let _ = agent.terminate();
    assert!(edge.terminate().success());
}

#[test]
fn the_agent_without_a_token_says_what_to_do() {
    let out = warren()
        .args(["http", "8080", "--connect-cas", "trusted"])
        .env_remove("WARREN_AUTHTOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--authtoken") && err.contains("WARREN_AUTHTOKEN"), "{err}");
    // The agent needs no privileges and says so when it has them.
    let uid = Command::new("id").arg("-u").output().unwrap();
    let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    assert_eq!(err.contains("running as root"), root, "{err}");
}

#[test]
fn an_operator_creates_a_second_account_that_sees_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let warren = |args: &[&str]| {
        let out = warren().args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let create =
        ["admin", "accounts", "create", "acme", "--admin-email", "ops@acme.example", "--data-dir", data_s];
    let (ok, out, err) = warren(&create);
    assert!(ok, "{err}");
    let acme_key = after(out.lines().find(|l| l.contains("API key:")).unwrap(), "API key:").to_owned();
    assert!(acme_key.starts_with("ak_"), "{out}");
    assert!(out.contains("authtoken:") && out.contains("shown only now"), "{out}");
    // The same name twice is refused, and nothing new is printed.
    let (ok, out, err) = warren(&create);
    assert!(!ok && err.contains("already exists") && !out.contains("API key"), "{out} {err}");

    let mut edge = Proc::spawn(&edge_on_port_zero(data_s));
    let api_line = edge.line_with("REST API:");
    let api_url = after(&api_line, "REST API:").split_whitespace().next().unwrap().to_owned();
    let default_key = after(&edge.line_with("API key:"), "API key:").to_owned();
    let emails = |key: &str| -> Vec<String> {
        let (ok, out, err) = warren(&["api", "users", "list", "--api-url", &api_url, "--api-key", key]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["users"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(emails(&acme_key), ["ops@acme.example"], "acme sees only its own users");
    assert_eq!(emails(&default_key), ["admin"], "the default account does not see acme's");

    let (ok, out, err) = warren(&["admin", "accounts", "list", "--data-dir", data_s]);
    assert!(ok, "{err}");
    let names: Vec<&str> = out.lines().filter_map(|l| l.split('\t').nth(1)).collect();
    assert_eq!(names, ["acme", "default"], "{out}");
    assert!(edge.terminate().success());
}

/// A webhook receiver on a thread: answers 503 until `up` is set, then 204; every body it
/// accepted is kept. Signatures are checked by the in-process tests; this one is about
/// durability.
struct Hook {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    accepted: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Hook {
    fn start() -> Hook {
        use std::sync::atomic::Ordering;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let hook =
            Hook { port, up: Default::default(), tries: Default::default(), accepted: Default::default() };
        let (up, tries, accepted) = (hook.up.clone(), hook.tries.clone(), hook.accepted.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                // Head, then Content-Length bytes of body.
                let (head_end, len) = loop {
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => break (0, None),
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok());
                        break (i + 4, len);
                    }
                };
                let Some(len) = len else { continue };
                while buf.len() < head_end + len {
                    match c.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                tries.fetch_add(1, Ordering::SeqCst);
                let status = if up.load(Ordering::SeqCst) {
                    let batch: Vec<serde_json::Value> = serde_json::from_slice(&buf[head_end..]).unwrap();
                    accepted.lock().unwrap().extend(batch);
                    "204 No Content"
                } else {
                    "503 Service Unavailable"
                };
                let _ = c.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
                );
            }
        });
        hook
    }
}

/// Events committed while their destination was down survive `kill -9` of the edge: after a
/// restart every one arrives, in order, none lost (at-least-once may repeat one).
#[test]
fn events_written_before_a_kill_9_are_delivered_after_the_restart() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let hook = Hook::start();
    let mut args = edge_on_port_zero(data_s);
    args.push("--events-allow-loopback");
    let mut edge = Proc::spawn(&args);
    let api_url =
        after(&edge.line_with("REST API:"), "REST API:").split_whitespace().next().unwrap().to_owned();
    let key = after(&edge.line_with("API key:"), "API key:").to_owned();
    let api = |api_url: &str, args: &[&str]| -> serde_json::Value {
        let mut all = vec!["api"];
        all.extend(args);
        all.extend(["--api-url", api_url, "--api-key", &key]);
        let out = warren().args(&all).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };
    let target = format!(r#"{{"target": {{"webhook": {{"url": "http://127.0.0.1:{}/hook"}}}}}}"#, hook.port);
    let dest = api(&api_url, &["event-destinations", "create", "--data", &target]);
    let sub = format!(
        r#"{{"sources": [{{"type": "ip_policy_created.v0"}}], "destination_ids": ["{}"]}}"#,
        dest["id"].as_str().unwrap()
    );
    api(&api_url, &["event-subscriptions", "create", "--data", &sub]);
    let mut ids = Vec::new();
    for i in 0..5 {
        let p = api(&api_url, &["ip-policies", "create", "--description", &format!("p{i}")]);
        ids.push(p["id"].as_str().unwrap().to_owned());
    }
    // Delivery was tried (and refused) at least once: the events are committed, not delivered.
    let deadline = std::time::Instant::now() + WAIT;
    while hook.tries.load(Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "delivery was never tried");
        std::thread::sleep(Duration::from_millis(50));
    }
    edge.child.kill().unwrap(); // SIGKILL: no shutdown, no flush.
    edge.child.wait().unwrap();

    hook.up.store(true, Ordering::SeqCst);
    let edge = Proc::spawn(&args);
    edge.line_with("REST API:");
    // The dead node's lease on the destination runs out (30 s), then the new node delivers.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let got: Vec<String> = hook
            .accepted
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["event_type"] == "ip_policy_created.v0")
            .map(|e| e["object"]["id"].as_str().unwrap().to_owned())
            .collect();
        let mut seen = got.clone();
        seen.dedup();
        if seen.len() >= ids.len() {
            assert_eq!(seen, ids, "every event, in order (repeats only adjacent)");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "only {got:?} of {ids:?} arrived after the restart");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(edge);
}

/// `--log-format json`: one JSON object per line, addresses printed plainly; ngrok's
/// `logfmt`, which warren does not write, is refused by name.
#[test]
fn the_edge_logs_json_lines_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut args = vec!["--log-format", "json"];
    args.extend(edge_on_port_zero(data.to_str().unwrap()));
    let edge = Proc::spawn_reading_stderr(&args);
    let line = edge.line_with("edge listening");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO", "{v}");
    assert_eq!(v["fields"]["message"], "edge listening");
    let http = v["fields"]["http_addr"].as_str().unwrap();
    assert!(http.parse::<std::net::SocketAddr>().is_ok(), "a plain address: {http}");
    drop(edge);
    let out = warren().args(["--log-format", "logfmt", "edge"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'logfmt'"));
}

/// Uses a one-time sign-in link with curl as a browser would (GET shows a button; POST with
/// the form's token and its cookie signs in); returns the status and where it sends the browser.
fn use_sign_in_link(link: &str, jar: &std::path::Path) -> (String, String) {
    let page = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-c"])
        .arg(jar)
        .args(["-b"])
        .arg(jar)
        .arg(link)
        .output()
        .expect("curl");
    let page = String::from_utf8_lossy(&page.stdout).into_owned();
    let csrf = after(&page, "name=\"csrf\" value=\"").split('"').next().unwrap().to_owned();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "-c"])
        .arg(jar)
        .args(["-b"])
        .arg(jar)
        .args(["--data", &format!("csrf={csrf}")])
        .arg(link)
        .output()
        .expect("curl");
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, to) = out.split_once(' ').unwrap_or((&out, ""));
    (status.to_owned(), to.to_owned())
}

#[test]
fn the_first_start_prints_the_dashboard_and_a_sign_in_link_that_works_once_and_admin_makes_more() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let edge = Proc::spawn(&edge_on_port_zero(data_s));
    let dashboard = after(&edge.line_with("dashboard:"), "dashboard:").to_owned();
    assert!(dashboard.starts_with("http://127.0.0.1:") && dashboard.ends_with("/dashboard/"), "{dashboard}");
    let link = edge.line_with("/dashboard/sign-in/link/").trim().to_owned();
    assert!(link.starts_with(&dashboard), "{link}");
    let (status, to) = use_sign_in_link(&link, &dir.path().join("jar1"));
    assert_eq!((status.as_str(), to.ends_with("/dashboard/account")), ("303", true), "{to}");
    let jar = std::fs::read_to_string(dir.path().join("jar1")).unwrap();
    assert!(jar.contains("#HttpOnly_127.0.0.1") && jar.contains("warren_session"), "{jar}");
    let (status, _) = use_sign_in_link(&link, &dir.path().join("jar2"));
    assert_eq!(status, "401", "used once");

    // Signed in: an authtoken made on the authtokens page, and the exact command the page
    // shows, run as printed, brings an endpoint up.
    let jar = dir.path().join("jar1");
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-c"])
            .arg(&jar)
            .arg("-b")
            .arg(&jar)
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let page = curl(&[&format!("{dashboard}authtokens")]);
    let csrf = after(&page, "name=\"csrf\" value=\"").split('"').next().unwrap().to_owned();
    let created = curl(&[
        "--data",
        &format!("csrf={csrf}&description=from-the-dashboard"),
        &format!("{dashboard}authtokens"),
    ]);
    let command = after(&created, "<pre id=\"command\">").split('<').next().unwrap().to_owned();
    let args: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(&args[..3], ["warren", "http", "3000"], "{command}");
    let up = http_upstream().to_string();
    let mut agent_args = vec!["http", up.as_str(), "--url", "https://dash-bin.warren.localhost"];
    agent_args.extend(&args[3..]);
    let agent = Proc::spawn(&agent_args);
    let fwd = agent.line_with("Forwarding");
    assert!(fwd.contains("https://dash-bin.warren.localhost:"), "{fwd}");
    drop(agent);

    // The operator's way in later on.
    let base = dashboard.trim_end_matches("/dashboard/");
    let out = warren()
        .args([
            "admin",
            "users",
            "sign-in-link",
            "--email",
            "admin",
            "--data-dir",
            data_s,
            "--dashboard-url",
            base,
        ])
        .output()
        .expect("warren admin");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let link =
        text.lines().find(|l| l.contains("/dashboard/sign-in/link/")).expect("a link").trim().to_owned();
    let (status, _) = use_sign_in_link(&link, &dir.path().join("jar3"));
    assert_eq!(status, "303", "{text}");
    let out = warren()
        .args(["admin", "users", "sign-in-link", "--email", "nobody", "--data-dir", data_s])
        .output()
        .expect("warren admin");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("user"), "says what was not found");
    drop(edge);
}

/// An ngrok user's first day: the settings saved once with `warren config add-*`, then
/// `warren http PORT` and `warren api` with no flags; mistakes are refused where typed, in one
/// line, without a backtrace.
#[test]
fn saved_settings_serve_http_and_api_with_no_flags_and_typos_are_refused_where_typed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let edge = Proc::spawn(&edge_on_port_zero(data.to_str().unwrap()));
    let line = edge.line_with("agents connect:");
    let connect = after(&line, "agents connect:").split_whitespace().next().unwrap().to_owned();
    let ca = after(&line, "(CA certificate:").trim_end_matches(')').to_owned();
    let api_line = edge.line_with("REST API:");
    let api_url = after(&api_line, "REST API:").split_whitespace().next().unwrap().to_owned();
    let token = after(&edge.line_with("authtoken:"), "authtoken:").to_owned();
    let api_key = after(&edge.line_with("API key:"), "API key:").to_owned();

    let xdg = dir.path().join("config");
    let run = |args: &[&str]| {
        let out =
            warren().args(args).env("XDG_CONFIG_HOME", &xdg).env("RUST_BACKTRACE", "1").output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for args in [
        vec!["config", "add-authtoken", token.as_str()],
        vec!["config", "add-connect-url", connect.as_str()],
        vec!["config", "add-connect-cas", ca.as_str()],
        vec!["config", "add-api-key", api_key.as_str()],
    ] {
        let (ok, out, err) = run(&args);
        assert!(ok, "{args:?}: {out}{err}");
    }
    let saved = std::fs::read_to_string(xdg.join("warren/warren.yml")).unwrap();
    assert!(saved.contains("connect_cas:") && saved.contains("api_key:"), "{saved}");

    let up = http_upstream().to_string();
    let agent = Proc::spawn_env(
        &["http", &up, "--url", "https://flow.warren.localhost"],
        &[("XDG_CONFIG_HOME", &xdg)],
    );
    let fwd = agent.line_with("Forwarding");
    assert!(fwd.contains("https://flow.warren.localhost:"), "{fwd}");
    drop(agent);
    let (ok, out, err) = run(&["api", "credentials", "list", "--api-url", &api_url]);
    assert!(ok && out.contains("initial authtoken"), "{out}{err}");

    // ngrok's spellings: --domain, --subdomain (completed by the edge), --name, --metadata.
    for (flags, url) in [
        (vec!["--domain", "dom.warren.localhost"], "https://dom.warren.localhost:"),
        (
            vec!["--subdomain", "Sub", "--name", "web", "--metadata", "m", "--description", "d"],
            "https://sub.warren.localhost:",
        ),
    ] {
        let mut args = vec!["http", up.as_str()];
        args.extend(flags.iter().copied());
        let agent = Proc::spawn_env(&args, &[("XDG_CONFIG_HOME", &xdg)]);
        let fwd = agent.line_with("Forwarding");
        assert!(fwd.contains(url), "{flags:?}: {fwd}");
        if flags.contains(&"--metadata") {
            // The edge shows what the agent said about the endpoint, as ngrok's API does.
            let (ok, out, err) = run(&["api", "endpoints", "list", "--api-url", &api_url]);
            let list: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}{err}"));
            let ep =
                list["endpoints"].as_array().unwrap().iter().find(|e| e["name"] == "web").unwrap().clone();
            assert!(ok, "{err}");
            assert_eq!((ep["metadata"].as_str(), ep["description"].as_str()), (Some("m"), Some("d")), "{ep}");
            assert_eq!(ep["upstream_url"], format!("http://localhost:{up}"), "{ep}");
        }
    }

    // An ngrok v3 file with `tunnels:` (as most existing files are) starts as it is.
    let ngrok_yml = dir.path().join("ngrok.yml");
    std::fs::write(
        &ngrok_yml,
        format!(
            "version: 3\nagent:\n  authtoken: {token}\n  connect_url: {connect}\n  connect_cas: {ca}\n  web_addr: false\ntunnels:\n  website:\n    proto: http\n    addr: {up}\n    domain: tunnels.warren.localhost\n    basic_auth: [\"bob:bobpassword\"]\n"
        ),
    )
    .unwrap();
    let started = Proc::spawn(&["start", "--all", "--config", ngrok_yml.to_str().unwrap()]);
    let fwd = started.line_with("Forwarding");
    assert!(fwd.contains("https://tunnels.warren.localhost:"), "{fwd}");
    drop(started);

    // `start` with an endpoint the edge refuses: the whole start fails, or with --keep-going
    // the refusal is reported and the others stay up.
    let two = dir.path().join("two.yml");
    std::fs::write(
        &two,
        format!(
            "version: 3\nagent:\n  authtoken: {token}\n  connect_url: {connect}\n  connect_cas: {ca}\n  web_addr: false\nendpoints:\n  - name: shop\n    url: https://shop.example.com\n    upstream:\n      url: {up}\n  - name: web\n    url: https://kept.warren.localhost\n    upstream:\n      url: {up}\n"
        ),
    )
    .unwrap();
    let failed = warren()
        .args(["start", "--all", "--config"])
        .arg(&two)
        .env("XDG_CONFIG_HOME", &xdg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success() && err.contains("shop.example.com"), "{err}");
    let kept = Proc::spawn_env(
        &["start", "--all", "--keep-going", "--config", two.to_str().unwrap()],
        &[("XDG_CONFIG_HOME", &xdg)],
    );
    let fwd = kept.line_with("Forwarding");
    assert!(fwd.contains("https://kept.warren.localhost:"), "{fwd}");
    let refused = kept.line_with("Refused");
    assert!(refused.contains("shop:") && refused.contains("shop.example.com"), "{refused}");
    drop(kept);

    // Refused where typed: one clear line, no backtrace, nothing started.
    for (args, says) in [
        (vec!["http", "99999"], "out of range"),
        (vec!["http", "3000", "--url", "https://x.warren.localhost/api"], "has a path or query"),
        (vec!["config", "add-connect-cas", "/etc/hostname"], "no PEM certificate"),
        (vec!["tcp", "22", "--domain", "x.example.com"], "a tcp endpoint takes --url"),
        (vec!["http", "80", "--domain", "https://x.example.com"], "host name only"),
        (vec!["http", "80", "--subdomain", "a.b"], "one label"),
    ] {
        let (ok, out, err) = run(&args);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert!(err.contains(says), "{args:?}: {err}");
        let lower = err.to_lowercase();
        assert!(!lower.contains("backtrace") && !lower.contains("panicked"), "{args:?}: {err}");
        assert!(err.trim().lines().count() <= 2, "one or two lines: {err}");
    }
    drop(edge);
}

/// `warren config check` and `warren start` agree: what check calls valid, start takes; what
/// check refuses, start refuses before binding anything, with the same words.
#[test]
fn config_check_and_start_agree_on_good_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let head = "version: 3\nagent:\n  authtoken: x\n  connect_url: 127.0.0.1:1\n  connect_cas: trusted\n  web_addr: false\n";
    let policy = |t: &str| {
        format!(
            "endpoints:\n  - name: web\n    upstream:\n      url: 80\n    traffic_policy:\n      on_http_request:\n        - actions:\n            - type: {t}\n"
        )
    };
    let urlpath = "endpoints:\n  - name: web\n    upstream:\n      url: 80\n    traffic_policy:\n      on_http_request:\n        - expressions: [\"req.urlpath == '/'\"]\n          actions:\n            - type: deny\n".to_owned();
    let table = [
        (
            "endpoints:\n  - name: web\n    url: htps://x.example.com\n    upstream:\n      url: 80\n"
                .to_owned(),
            Some("htps"),
        ),
        (
            "endpoints:\n  - name: db\n    url: tcp://localhost:99999\n    upstream:\n      url: 5432\n"
                .to_owned(),
            Some("1 to 65535"),
        ),
        ("endpoints:\n  - name: web\n    upstream:\n      url: 99999\n".to_owned(), Some("out of range")),
        (policy("denny"), Some("denny")),
        (urlpath.clone(), Some("req has no field \"urlpath\"")),
        ("tunnels:\n  web:\n    proto: http\n    addr: 80\n    labels: [x]\n".to_owned(), Some("labels")),
        (policy("deny"), None),
        (
            "tunnels:\n  web:\n    proto: http\n    addr: 80\n    basic_auth: [\"a:bcdefghi\"]\n".to_owned(),
            None,
        ),
    ];
    for (body, refused) in table {
        let file = dir.path().join("c.yml");
        std::fs::write(&file, format!("{head}{body}")).unwrap();
        let check = warren().args(["config", "check", "--config"]).arg(&file).output().unwrap();
        let check_err = String::from_utf8_lossy(&check.stderr).into_owned();
        match refused {
            None => assert!(check.status.success(), "{body}: {check_err}"),
            Some(says) => {
                assert!(!check.status.success() && check_err.contains(says), "{body}: {check_err}");
                let start = warren()
                    .args(["start", "--all", "--config"])
                    .arg(&file)
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                let start_err = String::from_utf8_lossy(&start.stderr).into_owned();
                assert!(!start.status.success(), "{body}");
                // (Less the warning a root user gets from every agent command.)
                let start_err: Vec<&str> = start_err
                    .trim()
                    .lines()
                    .filter(|l| !l.starts_with("warning: warren is running as root"))
                    .collect();
                assert_eq!(start_err.join("\n"), check_err.trim(), "{body}");
            }
        }
    }
    // Policy problems point at the line of the user's own file, inline or in a policy file.
    for (body, at) in [(policy("denny"), "c.yml:14:"), (urlpath, "c.yml:13:")] {
        let file = dir.path().join("c.yml");
        std::fs::write(&file, format!("{head}{body}")).unwrap();
        let check = warren().args(["config", "check", "--config"]).arg(&file).output().unwrap();
        let err = String::from_utf8_lossy(&check.stderr);
        assert!(err.contains(at), "{at}: {err}");
    }
    let policy_file = dir.path().join("policy.yml");
    std::fs::write(&policy_file, "on_http_request:\n  - name: ok\n    actions:\n      - type: deny\n  - actions:\n      - type: denny\n").unwrap();
    let out = warren()
        .args(["http", "80", "--authtoken", "x", "--traffic-policy-file"])
        .arg(&policy_file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("policy.yml:6:") && err.contains("denny"), "{err}");
}

/// Each agent command's help lists only the flags it takes (tcp has no HTTP flags and no
/// host names), a flag of another command is refused by name, and `warren api RESOURCE OP
/// --help` lists the operation's fields from the API's own description; a mistyped resource
/// gets the nearest one.
#[test]
fn help_shows_each_commands_own_flags_and_api_help_lists_fields() {
    let help = |args: &[&str]| {
        let out = warren().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let http_only =
        ["--basic-auth", "--oidc", "--request-header-add", "--compression", "--host-header", "--inspect"];
    let http = help(&["http", "--help"]);
    for flag in http_only.iter().chain(&["--domain", "--subdomain", "--url", "--cidr-allow"]) {
        assert!(http.contains(flag), "http lacks {flag}: {http}");
    }
    let tcp = help(&["tcp", "--help"]);
    for flag in http_only.iter().chain(&["--domain", "--subdomain"]) {
        assert!(!tcp.contains(flag), "tcp offers {flag}: {tcp}");
    }
    assert!(tcp.contains("--url") && tcp.contains("--cidr-allow"), "{tcp}");
    let tls = help(&["tls", "--help"]);
    for flag in http_only {
        assert!(!tls.contains(flag), "tls offers {flag}: {tls}");
    }
    assert!(tls.contains("--domain") && tls.contains("--crt"), "{tls}");
    let out = warren().args(["tcp", "22", "--basic-auth", "a:bcdefghi"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("'--basic-auth'"), "{err}");

    let api = help(&["api", "credentials", "create", "--help"]);
    assert!(api.contains("Usage: warren api credentials create"), "{api}");
    assert!(api.contains("--acl") && api.contains("--description"), "{api}");
    let out = warren().args(["api", "credentails", "list", "--api-key", "x"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("did you mean credentials?"), "{err}");
}

/// `warren edge --config FILE`: the file's keys are the flags; a flag on the command line
/// wins over the file; a file with mistakes is refused with every problem, each at its file,
/// line and column, and nothing starts.
#[test]
fn the_edge_runs_from_a_config_file_and_flags_win_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("edge.yml");
    std::fs::write(
        &file,
        format!(
            "data_dir: {}\nbase_domain: from-file.localhost\nconnect_addr: 127.0.0.1:0\nhttps-addr: 127.0.0.1:0\nhttp_addr: 127.0.0.1:0\napi_addr: 127.0.0.1:0\ntrusted_proxy: [10.0.0.0/8, 192.168.0.0/16]\nhsts: always\n",
            data.display()
        ),
    )
    .unwrap();
    let edge = Proc::spawn(&["edge", "--config", file.to_str().unwrap(), "--base-domain", "flag.localhost"]);
    let https = edge.line_with("https endpoints:");
    assert!(https.contains("https://<name>.flag.localhost:"), "the flag wins: {https}");
    assert!(data.join("warren.db").exists(), "data_dir from the file");
    drop(edge);
    let edge = Proc::spawn(&["edge", "--config", file.to_str().unwrap()]);
    let https = edge.line_with("https endpoints:");
    assert!(https.contains("https://<name>.from-file.localhost:"), "{https}");
    drop(edge);

    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "conect_addr: 127.0.0.1:4443\nno_http: 3\nhttps_addr: nowhere\ntrusted_proxy: [{a: 1}]\n",
    )
    .unwrap();
    let out = warren().args(["edge", "--config"]).arg(&bad).stdin(Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    for says in [
        "bad.yml:1:1: unknown key \"conect_addr\"; did you mean connect_addr?",
        "bad.yml:2:1: no_http: expected true or false, found number",
        "bad.yml:3:1: https_addr: ",
        "bad.yml:4:1: trusted_proxy: expected a list of values",
    ] {
        assert!(err.contains(says), "{says:?} in {err}");
    }
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
}

/// `warren edge --check` reports every problem at once (a listener that cannot bind, a
/// certificate that does not match its key) and starts nothing; a good config passes.
#[test]
fn edge_check_reports_every_problem_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let pem = |name: &str| {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    };
    let (cert_a, _) = pem("a.example");
    let (_, key_b) = pem("b.example");
    let (cert_f, key_f) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_f, cert_a).unwrap();
    std::fs::write(&key_f, key_b).unwrap();
    let mut args = edge_on_port_zero(data.to_str().unwrap());
    args.extend([
        "--api-addr",
        &taken_addr,
        "--tls-cert",
        cert_f.to_str().unwrap(),
        "--tls-key",
        key_f.to_str().unwrap(),
        "--check",
    ]);
    let out = warren().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("2 problem(s)"), "{err}");
    assert!(err.contains(&format!("--api-addr {taken_addr}: cannot listen")), "{err}");
    assert!(err.contains("--tls-cert"), "{err}");

    let mut args = edge_on_port_zero(data.to_str().unwrap());
    args.push("--check");
    let out = warren().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
}

/// `warren admin backup` copies the store of a busy edge (an agent binding, API writes going
/// on) consistently; `warren admin restore` puts it in a new data directory, where an edge
/// (with the old master key) serves the same API key, authtokens and reservations: everything
/// written before the backup, nothing that was never written. A second restore over it is
/// refused.
#[test]
fn a_backup_of_a_running_edge_restores_elsewhere_with_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let run = |args: &[&str]| {
        let out = warren().args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let edge = Proc::spawn(&edge_on_port_zero(a.to_str().unwrap()));
    let line = edge.line_with("agents connect:");
    let connect = after(&line, "agents connect:").split_whitespace().next().unwrap().to_owned();
    let ca = after(&line, "(CA certificate:").trim_end_matches(')').to_owned();
    let api_url =
        after(&edge.line_with("REST API:"), "REST API:").split_whitespace().next().unwrap().to_owned();
    let token = after(&edge.line_with("authtoken:"), "authtoken:").to_owned();
    let key = after(&edge.line_with("API key:"), "API key:").to_owned();
    let api = |url: &str, args: &[&str]| {
        let mut all = vec!["api"];
        all.extend_from_slice(args);
        all.extend(["--api-url", url, "--api-key", &key]);
        run(&all)
    };
    let ids = |text: &str| -> std::collections::BTreeSet<String> {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["credentials"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
    };
    for i in 0..5 {
        let (ok, _, err) = api(&api_url, &["credentials", "create", "--description", &format!("laptop-{i}")]);
        assert!(ok, "{err}");
    }
    let (ok, _, err) = api(&api_url, &["reserved-domains", "create", "--domain", "kept.warren.localhost"]);
    assert!(ok, "{err}");
    let before = ids(&api(&api_url, &["credentials", "list"]).1);

    // Busy: an agent binding and API writes while the backup is taken.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, api_url, key) = (stop.clone(), api_url.clone(), key.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = warren()
                    .args(["api", "credentials", "create", "--description", &format!("busy-{n}")])
                    .args(["--api-url", &api_url, "--api-key", &key])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                n += 1;
            }
            n
        })
    };
    let up = http_upstream().to_string();
    let agent = Proc::spawn(&[
        "http",
        &up,
        "--authtoken",
        &token,
        "--connect-url",
        &connect,
        "--connect-cas",
        &ca,
        "--web-addr",
        "false",
    ]);
    let backup = dir.path().join("store.backup");
    let (ok, out, err) =
        run(&["admin", "backup", backup.to_str().unwrap(), "--data-dir", a.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("master key is not in it"), "{out}");
    agent.line_with("Forwarding");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    let all = ids(&api(&api_url, &["credentials", "list", "--limit", "1000"]).1);
    assert!(all.len() >= before.len() + written, "every busy write is there on the running edge");
    drop((agent, edge));

    let (ok, out, err) =
        run(&["admin", "restore", backup.to_str().unwrap(), "--data-dir", b.to_str().unwrap()]);
    assert!(ok && out.contains("restored"), "{out}{err}");
    let (ok, _, err) =
        run(&["admin", "restore", backup.to_str().unwrap(), "--data-dir", b.to_str().unwrap()]);
    assert!(!ok && err.contains("already has a store"), "{err}");
    std::fs::copy(a.join("master.key"), b.join("master.key")).unwrap();
    let edge = Proc::spawn(&edge_on_port_zero(b.to_str().unwrap()));
    let api_url =
        after(&edge.line_with("REST API:"), "REST API:").split_whitespace().next().unwrap().to_owned();
    let (ok, restored, err) = api(&api_url, &["credentials", "list", "--limit", "1000"]);
    assert!(ok, "the old API key works: {err}");
    let restored = ids(&restored);
    assert!(before.is_subset(&restored), "everything written before the backup");
    assert!(restored.is_subset(&all), "nothing that was never written");
    let (_, domains, _) = api(&api_url, &["reserved_domains", "list"]);
    assert!(domains.contains("kept.warren.localhost"), "{domains}");
    let (ok, _, err) = run(&["admin", "backup", backup.to_str().unwrap(), "--data-dir", b.to_str().unwrap()]);
    assert!(!ok && err.contains("exists"), "{err}");
}

/// SIGTERM drains: the edge stops accepting, a request in flight (its upstream answers after
/// a second) still gets its whole answer, then the edge tells its agents and exits 0.
#[test]
fn sigterm_lets_a_request_in_flight_finish_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut edge = Proc::spawn(&edge_on_port_zero(data.to_str().unwrap()));
    let line = edge.line_with("agents connect:");
    let connect = after(&line, "agents connect:").split_whitespace().next().unwrap().to_owned();
    let ca = after(&line, "(CA certificate:").trim_end_matches(')').to_owned();
    let https_port = edge.line_with("https endpoints:").rsplit(':').next().unwrap().to_owned();
    let token = after(&edge.line_with("authtoken:"), "authtoken:").to_owned();
    // An upstream that says when a request arrived, then answers a second later.
    let (arrived_tx, arrived) = mpsc::channel();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let up = l.local_addr().unwrap().port().to_string();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let arrived_tx = arrived_tx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = arrived_tx.send(());
                std::thread::sleep(Duration::from_secs(1));
                let body = b"the slow answer";
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = c.write_all(head.as_bytes());
                let _ = c.write_all(body);
            });
        }
    });
    let agent = Proc::spawn(&[
        "http",
        &up,
        "--url",
        "https://slow.warren.localhost",
        "--authtoken",
        &token,
        "--connect-url",
        &connect,
        "--connect-cas",
        &ca,
        "--web-addr",
        "false",
    ]);
    agent.line_with("Forwarding");
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "30", "--cacert", &ca])
        .arg("--resolve")
        .arg(format!("slow.warren.localhost:{https_port}:127.0.0.1"))
        .arg(format!("https://slow.warren.localhost:{https_port}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    arrived.recv_timeout(WAIT).expect("the request reached the upstream");
    let status = edge.terminate();
    let out = curl.wait_with_output().unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "the slow answer");
    assert!(status.success(), "the edge exits 0 after draining: {status:?}");
}

/// SIGHUP reloads without a restart: IP restrictions, and the config file's log level.
#[test]
fn sighup_reloads_the_log_level_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("edge.yml");
    let write = |level: &str| {
        std::fs::write(
            &file,
            format!(
                "data_dir: {}\nconnect_addr: 127.0.0.1:0\nhttps_addr: 127.0.0.1:0\nhttp_addr: 127.0.0.1:0\napi_addr: 127.0.0.1:0\nlog_level: {level}\n",
                data.display()
            ),
        )
        .unwrap()
    };
    write("info");
    let edge = Proc::spawn_reading_stderr(&["edge", "--config", file.to_str().unwrap()]);
    edge.line_with("edge listening");
    write("debug");
    let hup = |p: &Proc| Command::new("kill").args(["-HUP", &p.child.id().to_string()]).status().unwrap();
    assert!(hup(&edge).success());
    let reloaded = edge.line_with("reloaded:");
    assert!(reloaded.contains("IP restrictions") && reloaded.contains("log level debug"), "{reloaded}");
    // Still serving after the reload.
    let mut edge = edge;
    assert!(edge.child.try_wait().unwrap().is_none(), "the edge is still running");
}

/// Under systemd (stdout to the journal, as `JOURNAL_STREAM` says by device and inode) the
/// first start keeps its secrets out of the output and says where they are.
#[test]
fn a_first_start_under_systemd_prints_no_secret() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let journal = dir.path().join("journal");
    let file = std::fs::File::create(&journal).unwrap();
    let meta = file.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut child = warren()
        .args(edge_on_port_zero(data.to_str().unwrap()))
        .env("JOURNAL_STREAM", &stream)
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let out = loop {
        let text = std::fs::read_to_string(&journal).unwrap_or_default();
        if text.contains("Then visit it") {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "the edge never finished starting: {text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let creds = std::fs::read_to_string(data.join("credentials.txt")).unwrap();
    let token = creds.lines().find_map(|l| l.strip_prefix("authtoken: ")).unwrap();
    let key = creds.lines().find_map(|l| l.strip_prefix("api_key: ")).unwrap();
    assert!(!out.contains(token) && !out.contains(key) && !out.contains("sign-in/link/"), "{out}");
    assert!(out.contains("not printed here") && out.contains("credentials.txt"), "{out}");
}

/// A store written at schema 16 (tests/fixtures/store-schema-16, made by `warren admin
/// backup` of a real edge) opens with today's code, migrations run forward, and every row and
/// secret still works: the same API key lists the same authtokens, reservations, IP rules,
/// users, addresses and certificates, and the same authtokens bind.
#[test]
fn a_store_from_schema_16_opens_with_every_row_and_secret() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-schema-16");
    let secrets: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("secrets.json")).unwrap()).unwrap();
    let s = |k: &str| secrets[k].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for f in ["warren.db", "master.key"] {
        std::fs::copy(fixture.join(f), data.join(f)).unwrap();
    }
    let edge = Proc::spawn(&edge_on_port_zero(data.to_str().unwrap()));
    let line = edge.line_with("agents connect:");
    let connect = after(&line, "agents connect:").split_whitespace().next().unwrap().to_owned();
    let ca = after(&line, "(CA certificate:").trim_end_matches(')').to_owned();
    let api_url =
        after(&edge.line_with("REST API:"), "REST API:").split_whitespace().next().unwrap().to_owned();
    let key = s("api_key");
    let get = |resource: &str| -> serde_json::Value {
        let out = warren()
            .args(["api", resource, "list", "--api-url", &api_url, "--api-key", &key])
            .output()
            .unwrap();
        assert!(out.status.success(), "{resource}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let ids = |v: &serde_json::Value, list: &str| -> Vec<String> {
        v[list].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap().to_owned()).collect()
    };
    let laptop = secrets["laptop_credential"]["id"].as_str().unwrap();
    let credentials = get("credentials");
    assert!(ids(&credentials, "credentials").contains(&laptop.to_owned()), "{credentials}");
    let c = credentials["credentials"].as_array().unwrap().iter().find(|c| c["id"] == laptop).unwrap();
    assert_eq!(c["acl"], serde_json::json!(["bind:*.fixture.warren.localhost"]));
    assert_eq!(c["description"], "fixture-laptop");
    let domains = get("reserved_domains");
    assert_eq!(ids(&domains, "reserved_domains"), [s("reserved_domain")]);
    assert_eq!(domains["reserved_domains"][0]["domain"], "fixture.warren.localhost");
    assert_eq!(ids(&get("ip_policies"), "ip_policies"), [s("ip_policy")]);
    let rules = get("ip_policy_rules");
    assert_eq!(ids(&rules, "ip_policy_rules"), [s("ip_policy_rule")]);
    assert_eq!(rules["ip_policy_rules"][0]["cidr"], "203.0.113.0/24");
    assert!(ids(&get("users"), "users").contains(&s("user")));
    let addrs = get("reserved_addrs");
    assert_eq!(ids(&addrs, "reserved_addrs"), [s("reserved_addr")]);
    assert_eq!(addrs["reserved_addrs"][0]["addr"], s("reserved_addr_addr"));
    let certs = get("tls_certificates");
    assert_eq!(ids(&certs, "tls_certificates"), [s("tls_certificate")]);
    assert_eq!(certs["tls_certificates"][0]["subject_common_name"], "shop.fixture.example");

    // Both authtokens still authenticate, each within its own rules.
    let up = http_upstream().to_string();
    let agent = |token: &str, url: &str| {
        Proc::spawn(&[
            "http",
            &up,
            "--url",
            url,
            "--authtoken",
            token,
            "--connect-url",
            &connect,
            "--connect-cas",
            &ca,
            "--web-addr",
            "false",
        ])
    };
    let first = agent(&s("authtoken"), "https://fixture.warren.localhost");
    assert!(first.line_with("Forwarding").contains("https://fixture.warren.localhost:"));
    let laptop_token = secrets["laptop_credential"]["token"].as_str().unwrap();
    let second = agent(laptop_token, "http://a.fixture.warren.localhost");
    assert!(second.line_with("Forwarding").contains("http://a.fixture.warren.localhost:"));
}

/// docs/DEPLOY.md's recipe, on loopback: the edge runs from a config file with a public-style
/// base domain (`tunnels.example.com`, names resolved by pebble-challtestsrv), an operator's
/// wildcard certificate and ACME against pebble; `--check` passes; a user's ngrok-style agent
/// config reaches it through its connect name on the shared TLS port (`dns_resolver_ips`); a
/// visitor gets the app over https; a custom domain, once its TXT record proves control, gets
/// a certificate from pebble and is served with it.
#[test]
fn the_deploy_recipe_runs_on_loopback_against_pebble() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (http, https) = (warren_testkit::free_port(), warren_testkit::free_port());
    let pebble = rt.block_on(warren_testkit::Pebble::start(http, https));
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    let operator = warren_testkit::TestCa::new("operator CA");
    let (chain, key, _) = operator.leaf_for(&["tunnels.example.com", "*.tunnels.example.com"]);
    std::fs::write(path("fullchain.pem"), chain).unwrap();
    std::fs::write(path("privkey.pem"), key).unwrap();
    std::fs::write(path("operator-ca.pem"), &operator.pem).unwrap();
    let txt_dns = warren_testkit::free_port();
    let ports = warren_testkit::free_port_range(4);
    let config = format!(
        "data_dir: {data}\nbase_domain: tunnels.example.com\nconnect_hostname: [connect.tunnels.example.com]\n\
         https_addr: 127.0.0.1:{https}\nhttp_addr: 127.0.0.1:{http}\nconnect_addr: 127.0.0.1:0\napi_addr: 127.0.0.1:0\n\
         tcp_bind_ip: 127.0.0.1\ntcp_host: tunnels.example.com\ntcp_ports: {first}-{last}\n\
         tls_cert: {cert}\ntls_key: {key}\nacme_directory: {dir}\nacme_directory_ca: {dir_ca}\nacme_email: ops@example.com\n\
         dns_resolver: 127.0.0.1:{txt_dns}\nhsts: auto\ndrain_timeout: 5\nlog_level: info\nlog_format: json\n",
        data = path("data").display(),
        first = ports.start(),
        last = ports.end(),
        cert = path("fullchain.pem").display(),
        key = path("privkey.pem").display(),
        dir = pebble.directory,
        dir_ca = pebble.server_ca.display(),
    );
    std::fs::write(path("edge.yml"), config).unwrap();
    let edge_yml = path("edge.yml").to_str().unwrap().to_owned();
    let check = warren().args(["edge", "--config", &edge_yml, "--check"]).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    let edge = Proc::spawn(&["edge", "--config", &edge_yml]);
    let api_url =
        after(&edge.line_with("REST API:"), "REST API:").split_whitespace().next().unwrap().to_owned();
    let token = after(&edge.line_with("authtoken:"), "authtoken:").to_owned();
    let key = after(&edge.line_with("API key:"), "API key:").to_owned();

    // The user's agent config, as the recipe gives it (the operator's CA stands in for a
    // public one; challtestsrv for the public DNS).
    let up = http_upstream().to_string();
    let agent_yml = path("ngrok.yml");
    let agent_config = |endpoint: &str| {
        format!(
            "version: 3\nagent:\n  authtoken: {token}\n  connect_url: connect.tunnels.example.com:{https}\n  connect_cas: {ca}\n  dns_resolver_ips: [\"{dns}\"]\n  web_addr: false\nendpoints:\n  - name: app\n    url: https://{endpoint}\n    upstream:\n      url: {up}\n",
            ca = path("operator-ca.pem").display(),
            dns = pebble.dns,
        )
    };
    std::fs::write(&agent_yml, agent_config("app.tunnels.example.com")).unwrap();
    let app = Proc::spawn(&["start", "--all", "--config", agent_yml.to_str().unwrap()]);
    assert!(app.line_with("Forwarding").contains(&format!("https://app.tunnels.example.com:{https}")));
    let curl = |host: &str, ca: &std::path::Path| {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(ca)
            .arg("--resolve")
            .arg(format!("{host}:{https}:127.0.0.1"))
            .arg(format!("https://{host}:{https}/"))
            .output()
            .unwrap()
    };
    let out = curl("app.tunnels.example.com", &path("operator-ca.pem"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from the binary test upstream");

    // A custom domain: reserved, proven with its TXT record, then ACME from pebble.
    let api = |args: &[&str]| {
        let out = warren().args(args).args(["--api-url", &api_url, "--api-key", &key]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let rd = api(&["api", "reserved-domains", "create", "--domain", "shop.example.org"]);
    let v = &rd["verification"];
    let _txt = warren_testkit::Dnsmasq::start(
        txt_dns,
        vec![(v["txt_record_name"].as_str().unwrap().into(), v["txt_record_value"].as_str().unwrap().into())],
    );
    // Verified as soon as dnsmasq answers (it may still be starting).
    let rd_id = rd["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let out = warren()
            .args(["api", "reserved-domains", "verify", &rd_id, "--api-url", &api_url, "--api-key", &key])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("\"verified\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never verified: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let shop_yml = path("shop.yml");
    std::fs::write(&shop_yml, agent_config("shop.example.org")).unwrap();
    let shop = Proc::spawn(&["start", "--all", "--config", shop_yml.to_str().unwrap()]);
    shop.line_with("Forwarding");
    let root = path("pebble-root.pem");
    std::fs::write(&root, rt.block_on(pebble.issuing_root())).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let out = curl("shop.example.org", &root);
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from the binary test upstream");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no certificate from pebble: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop((app, shop, edge));
}

/// What stops an edge at start, each with one clear message naming what is wrong and no
/// half-started edge: a port in use, a certificate that does not match its key, a database
/// that does not answer, a master key that cannot open the store's sealed keys.
#[test]
fn bad_settings_stop_the_edge_at_start_with_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let fails = |args: &[&str], env: &[(&str, &str)]| -> String {
        let mut child = warren()
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                assert!(!status.success(), "{args:?} started: {err}");
                assert!(!err.contains("panicked") && !err.to_lowercase().contains("backtrace"), "{err}");
                return err;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{args:?} did not stop");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let data = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let d = data("a");
    let mut args = edge_on_port_zero(&d);
    args.extend(["--api-addr", &taken_addr]);
    let err = fails(&args, &[]);
    assert!(err.contains(&taken_addr), "{err}");

    let pem = |name: &str| {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    };
    let ((cert, _), (_, other_key)) = (pem("a.example"), pem("b.example"));
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), other_key).unwrap();
    let (c, k) = (data("cert.pem"), data("key.pem"));
    let d = data("b");
    let mut args = edge_on_port_zero(&d);
    args.extend(["--tls-cert", &c, "--tls-key", &k]);
    let err = fails(&args, &[]);
    assert!(err.to_lowercase().contains("key") && err.trim().lines().count() <= 3, "{err}");

    let d = data("c");
    let mut args = edge_on_port_zero(&d);
    args.extend(["--database-url", "postgres://postgres@127.0.0.1:1/nowhere"]);
    let err = fails(&args, &[]);
    assert!(err.contains("127.0.0.1:1") || err.to_lowercase().contains("connect"), "{err}");
    assert!(!err.contains("postgres://postgres@"), "no database URL (it may hold a password): {err}");

    // The schema-16 fixture holds a certificate sealed with its own master key; another key
    // cannot open it.
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-schema-16");
    let d = data("d");
    std::fs::create_dir(&d).unwrap();
    std::fs::copy(fixture.join("warren.db"), dir.path().join("d/warren.db")).unwrap();
    let other = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let err = fails(&edge_on_port_zero(&d), &[("WARREN_MASTER_KEY", other)]);
    assert!(err.contains("cannot open the keys in the store"), "{err}");
}

/// One https request over a new connection to `addr` for `host`, trusting `ca_pem`: whether
/// it got a 200, within two seconds.
async fn served(addr: std::net::SocketAddr, host: &str, ca_pem: &[u8]) -> bool {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).ok()?;
        let tls = tokio_rustls::TlsConnector::from(warren_testkit::client_tls(ca_pem, &[b"http/1.1"]))
            .connect(name, tcp)
            .await
            .ok()?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.ok()?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/").header("host", host).body(warren_testkit::empty()).ok()?;
        let res = send.send_request(req).await.ok()?;
        Some(res.status() == hyper::StatusCode::OK)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt).await.ok().flatten().unwrap_or(false)
}

/// Two real edge nodes on one PostgreSQL database behind a TCP load balancer, an agent
/// connected through it, visitors on the other node: `kill -9` of the agent's node, and the
/// agent is back on the surviving node (it resumes its endpoint there) within seconds; the
/// window in which requests failed is measured and printed.
#[test]
fn kill_9_of_a_node_costs_its_agent_a_reconnect_to_the_other_node() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let Some(db) = rt.block_on(warren_testkit::TestPostgres::create()) else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    let operator = warren_testkit::TestCa::new("operator CA");
    let (chain, key, _) = operator.leaf_for(&["connect.warren.localhost", "*.warren.localhost", "localhost"]);
    std::fs::write(path("chain.pem"), chain).unwrap();
    std::fs::write(path("key.pem"), key).unwrap();
    std::fs::write(path("operator-ca.pem"), &operator.pem).unwrap();
    let node = |name: &str, extra: &[&str]| -> Proc {
        let data = path(name).display().to_string();
        let mut args: Vec<String> = edge_on_port_zero(&data).iter().map(|s| s.to_string()).collect();
        for a in [
            "--database-url",
            &db.url,
            "--cluster-addr",
            "127.0.0.1:0",
            "--tls-cert",
            path("chain.pem").to_str().unwrap(),
            "--tls-key",
            path("key.pem").to_str().unwrap(),
        ] {
            args.push(a.to_owned());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Proc::spawn(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let addr_in = |p: &Proc, marker: &str| -> std::net::SocketAddr {
        let line = p.line_with(marker);
        let port: u16 = after(&line, marker)
            .split_whitespace()
            .next()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    };
    let mut a = node("a", &["--tcp-ports", "41000-41099"]);
    let a_connect = addr_in(&a, "agents connect:");
    let token = after(&a.line_with("authtoken:"), "authtoken:").to_owned();
    let master = path("a/master.key").display().to_string();
    let b = node("b", &["--tcp-ports", "41100-41199", "--master-key-file", &master]);
    let b_connect = addr_in(&b, "agents connect:");
    let b_https = addr_in(&b, "https endpoints:");

    let lb = rt.block_on(warren_testkit::TcpProxy::start(vec![a_connect, b_connect]));
    let up = http_upstream().to_string();
    let lb_url = format!("localhost:{}", lb.addr.port());
    let agent = Proc::spawn(&[
        "http",
        &up,
        "--url",
        "https://app.warren.localhost",
        "--authtoken",
        &token,
        "--connect-url",
        &lb_url,
        "--connect-cas",
        path("operator-ca.pem").to_str().unwrap(),
        "--web-addr",
        "false",
        "--log",
        "stdout",
    ]);
    agent.line_with("app.warren.localhost");
    let ca = operator.pem.as_bytes();
    rt.block_on(async {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !served(b_https, "app.warren.localhost", ca).await {
            assert!(std::time::Instant::now() < deadline, "never served through node b");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    // Visitors keep coming through node b while node a dies.
    let killed = std::time::Instant::now();
    let _ = a.child.kill();
    let _ = a.child.wait();
    let (first_failure, back) = rt.block_on(async {
        let mut first_failure = None;
        loop {
            let ok = served(b_https, "app.warren.localhost", ca).await;
            if !ok && first_failure.is_none() {
                first_failure = Some(killed.elapsed());
            }
            if ok && killed.elapsed() > Duration::from_millis(200) {
                return (first_failure, killed.elapsed());
            }
            assert!(killed.elapsed() < Duration::from_secs(30), "the endpoint never came back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    eprintln!("kill -9: first failed request at {first_failure:?}; served again from node b at {back:?}");
    assert!(back < Duration::from_secs(10), "back after {back:?}");
    drop((agent, b, lb));
    rt.block_on(db.drop_db());
}

/// The connection limits are flags: with `--max-agent-connections-per-ip 1`, a second agent
/// connection from the same address is closed at once while the first (which has not even
/// started its TLS handshake) holds the slot, where the default would let it wait for its
/// handshake; the slot is free again once the first closes. A 0 for a node-wide limit is
/// refused at start, by name (per address, 0 means no per-address limit).
#[test]
fn connection_limits_are_flags_and_a_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut args = edge_on_port_zero(data.to_str().unwrap());
    args.extend(["--max-agent-connections-per-ip", "1"]);
    let edge = Proc::spawn(&args);
    let line = edge.line_with("agents connect:");
    let addr = after(&line, "agents connect:").split_whitespace().next().unwrap().to_owned();
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    // Whether the edge closes a new connection at once (rather than waiting for its handshake).
    let closed_at_once = || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        match s.read(&mut [0u8; 1]) {
            Ok(0) => true,
            Ok(_) => panic!("the edge wrote before the client's TLS hello"),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                false
            }
            Err(e) => panic!("{e}"),
        }
    };
    let first = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // The edge counts the first once it accepted it; until then a second may still get in.
    let deadline = std::time::Instant::now() + WAIT;
    while !closed_at_once() {
        assert!(std::time::Instant::now() < deadline, "a second connection was never refused");
    }
    drop(first);
    let deadline = std::time::Instant::now() + WAIT;
    while closed_at_once() {
        assert!(std::time::Instant::now() < deadline, "the first connection's slot was never freed");
    }
    drop(edge);

    for flag in ["--max-sessions", "--max-visitor-connections"] {
        let mut args = edge_on_port_zero(data.to_str().unwrap());
        args.extend([flag, "0"]);
        let out = warren().args(&args).stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(&format!("{flag} 0 would refuse every connection")), "{err}");
    }
}
