//! What a running agent shows: the status console on a terminal, plain line logs otherwise
//! (or with `--log`), and failures explained with what to do next.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use warren_agent::console::{self, Console, terminal_safe};
use warren_agent::{Agent, AgentConfig, AgentError, Status};
use warren_proto::error_codes as codes;

/// True when stdout is an interactive terminal that can show the console.
pub(crate) fn is_terminal() -> bool {
    std::io::stdout().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// Sets up logging: `log` is `stdout`, `stderr`, `false` or a file; with none given, logs go
/// to stderr, except under the console (which owns the screen), where they are off. Colour
/// only on a terminal; `json` writes one JSON object per line.
pub(crate) fn init_logs(log: Option<&str>, console: bool, level: &str, json: bool) -> anyhow::Result<()> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let (writer, ansi) = match log {
        Some("false") => return Ok(()),
        None if console => return Ok(()),
        Some("stdout") => (BoxMakeWriter::new(std::io::stdout), std::io::stdout().is_terminal()),
        None | Some("stderr") => (BoxMakeWriter::new(std::io::stderr), std::io::stderr().is_terminal()),
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the log file {path}"))?;
            (BoxMakeWriter::new(std::sync::Mutex::new(file)), false)
        }
    };
    let filter = tracing_subscriber::EnvFilter::new(level);
    let builder = tracing_subscriber::fmt().with_writer(writer);
    macro_rules! reloadable {
        ($builder:expr) => {{
            let builder = $builder.with_env_filter(filter).with_filter_reloading();
            let handle = builder.reload_handle();
            let _ = LOG_LEVEL.set(Box::new(move |level: &str| {
                let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
                handle.reload(filter).map_err(|e| e.to_string())
            }));
            builder.init();
        }};
    }
    if json {
        reloadable!(builder.json());
    } else {
        reloadable!(builder.with_ansi(ansi));
    }
    Ok(())
}

/// Changes the log filter of the running process (the edge's SIGHUP).
type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
static LOG_LEVEL: std::sync::OnceLock<SetLevel> = std::sync::OnceLock::new();

/// Sets the log filter (`info`, `debug`, a directive) from now on.
pub(crate) fn set_log_level(level: &str) -> Result<(), String> {
    match LOG_LEVEL.get() {
        Some(set) => set(level),
        None => Err("logging is off".into()),
    }
}

/// Runs the agent until it stops or a signal arrives.
pub(crate) async fn run_agent(config: AgentConfig, console: bool) -> anyhow::Result<()> {
    let shutdown = crate::shutdown_signal();
    let agent = Agent::start(config);
    if let Err(e) = agent.web_addr() {
        eprintln!("warning: the inspector is off: {e} (set --web-addr or agent.web_addr to another address)");
    }
    if console { with_console(agent, shutdown).await } else { with_lines(agent, shutdown).await }
}

async fn with_lines(mut agent: Agent, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let urls = tokio::select! {
        r = agent.wait_online() => r.map_err(explain)?,
        _ = &mut shutdown => return agent.stop().await.map_err(explain),
    };
    let upstreams: Vec<String> =
        agent.shared().endpoints().iter().map(|e| e.config.upstream.to_string()).collect();
    for (u, up) in urls.iter().zip(&upstreams) {
        println!("Forwarding {} -> {}", terminal_safe(u), terminal_safe(up));
    }
    for (name, why) in agent.shared().refused() {
        println!(
            "Refused    {}: {} (the others keep running: --keep-going)",
            terminal_safe(&name),
            terminal_safe(&why)
        );
    }
    if let Ok(Some(web)) = agent.web_addr() {
        println!("Inspector  http://{web}");
    }
    let mut status = agent.status();
    let watch_status = async {
        loop {
            if status.changed().await.is_err() {
                return;
            }
            let s = status.borrow_and_update().clone();
            match s {
                Status::Reconnecting { error, delay } => {
                    eprintln!("reconnecting in {delay:.1?}: {}", terminal_safe(&error))
                }
                Status::Online { urls, .. } => eprintln!("online: {}", terminal_safe(&urls.join(", "))),
                Status::Stopped(_) => return,
                Status::Connecting => {}
            }
        }
    };
    tokio::select! {
        _ = &mut shutdown => agent.stop().await.map_err(explain)?,
        _ = watch_status => agent.join().await.map_err(explain)?,
    }
    Ok(())
}

async fn with_console(agent: Agent, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let color = std::env::var_os("NO_COLOR").is_none();
    let mut screen = Console::new(std::io::stdout(), color);
    let mut size = terminal_size();
    #[cfg(unix)]
    let mut resized = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .context("watching the terminal size")?;
    let mut status = agent.status();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let stopped = loop {
        let (w, h) = size;
        let _ = screen.draw(&agent.snapshot(h), w, h);
        #[cfg(unix)]
        let resize = resized.recv();
        #[cfg(not(unix))]
        let resize = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = &mut shutdown => break false,
            _ = tick.tick() => {}
            _ = resize => size = terminal_size(),
            r = status.changed() => {
                if r.is_err() || matches!(*status.borrow_and_update(), Status::Stopped(_)) {
                    break true;
                }
            }
        }
    };
    screen.finish();
    if stopped { agent.join().await.map_err(explain) } else { agent.stop().await.map_err(explain) }
}

/// Columns and rows: `COLUMNS`/`LINES`, else `stty size` on the terminal, else 80×24.
fn terminal_size() -> (usize, usize) {
    if let Some(s) = console::terminal_size() {
        return s;
    }
    let tty = std::fs::File::open("/dev/tty");
    let out =
        tty.ok().and_then(|tty| std::process::Command::new("stty").arg("size").stdin(tty).output().ok());
    let parsed = out.and_then(|o| {
        let text = String::from_utf8(o.stdout).ok()?;
        let (rows, cols) = text.trim().split_once(' ')?;
        Some((cols.parse().ok()?, rows.parse().ok()?))
    });
    parsed.unwrap_or((80, 24))
}

/// A fatal agent error with what to do about it.
pub(crate) fn explain(e: AgentError) -> anyhow::Error {
    let hint = match &e {
        AgentError::Auth(m)
            if m.contains(codes::AUTHTOKEN_INVALID) || m.contains(codes::AUTHTOKEN_MALFORMED) =>
        {
            "Check the authtoken (warren config add-authtoken TOKEN, --authtoken or WARREN_AUTHTOKEN); the edge's administrator can create one with `warren api credentials create`."
        }
        AgentError::Auth(m) if m.contains(codes::IP_RESTRICTED) => {
            "This authtoken may not be used from this network; ask the edge's administrator about its IP policies."
        }
        AgentError::Auth(_) => "Check the authtoken and the edge's address.",
        AgentError::Bind(m) if m.contains(codes::ENDPOINT_IN_USE) => {
            "Another agent holds this URL. Stop it, or choose another with --url (or the endpoint's url in the config)."
        }
        AgentError::Bind(m)
            if m.contains(codes::DOMAIN_NOT_SERVED) || m.contains(codes::RESERVED_ELSEWHERE) =>
        {
            "This domain is not yours to bind: reserve it first (warren api reserved_domains create --domain NAME), or use a name under the edge's base domain."
        }
        AgentError::Bind(_) => "Check the endpoint's url and the authtoken's permissions (its bind ACL).",
        AgentError::Config(_) => {
            "Fix the configuration (warren config check shows problems in config files)."
        }
        AgentError::StoppedByEdge => "The edge's administrator stopped this agent's session.",
    };
    // The error's text comes from the edge: no escape sequence of its reaches the terminal.
    anyhow::anyhow!("{}\n{hint}", terminal_safe(&e.to_string()))
}
