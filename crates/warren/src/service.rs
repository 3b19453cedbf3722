//! `warren service install|start|stop|uninstall`: run the agent, or with `--edge` an edge,
//! under systemd as an unprivileged dynamic user. The config files (owner-only: they hold the
//! authtoken, or the edge's database URL and secrets) are read by systemd as root and handed
//! to the service as credentials (`LoadCredential=`), so the service never needs to be able
//! to read them itself. `warren config edit` is here too.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

/// The first line of every unit warren writes; `uninstall` only removes units that have it.
const MARKER: &str = "# Written by `warren service install`";

#[derive(Subcommand)]
pub(crate) enum ServiceAction {
    /// Write a systemd unit that runs `warren start --all` with these config files (with
    /// --edge: `warren edge --config FILE`) as an unprivileged dynamic user, and enable it
    /// (needs root).
    Install {
        /// Config file (repeat to merge several). systemd reads them as root and hands
        /// them to the service, so they can stay readable only by their owner.
        #[arg(long = "config", value_name = "FILE", required = true)]
        config: Vec<PathBuf>,
        /// Install an edge: its data in /var/lib/NAME (StateDirectory), ports below 1024 with
        /// CAP_NET_BIND_SERVICE and nothing else, SIGTERM to stop (the edge tells its agents
        /// and finishes what it serves). Default name: warren-edge.
        #[arg(long)]
        edge: bool,
        /// Replace an existing unit file.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        unit: UnitArgs,
    },
    /// Start the service (`systemctl start`).
    Start {
        #[command(flatten)]
        unit: UnitArgs,
    },
    /// Stop the service (`systemctl stop`).
    Stop {
        #[command(flatten)]
        unit: UnitArgs,
    },
    /// Stop and disable the service and remove its unit file.
    Uninstall {
        #[command(flatten)]
        unit: UnitArgs,
    },
}

#[derive(Args)]
pub(crate) struct UnitArgs {
    /// Service name: the unit is NAME.service and the dynamic user is NAME.
    #[arg(long, default_value = "warren-agent")]
    name: String,
    /// Where the unit file goes.
    #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
    unit_dir: PathBuf,
}

impl UnitArgs {
    /// The validated service name (a `.service` suffix is accepted and dropped).
    fn name(&self) -> anyhow::Result<&str> {
        let name = self.name.strip_suffix(".service").unwrap_or(&self.name);
        let mut chars = name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && name.len() <= 31;
        if !valid {
            bail!(
                "--name {:?}: use letters, digits, '-' and '_' (starting with a letter, at most 31 characters); it names the unit and its user",
                self.name
            );
        }
        Ok(name)
    }

    fn unit_path(&self) -> anyhow::Result<PathBuf> {
        Ok(self.unit_dir.join(format!("{}.service", self.name()?)))
    }
}

/// Runs a `warren service` subcommand.
pub(crate) fn run(action: ServiceAction) -> anyhow::Result<()> {
    if !cfg!(target_os = "linux") {
        bail!("warren service needs systemd (Linux)");
    }
    let ctl = Systemctl::from_env();
    match action {
        ServiceAction::Install { config, force, unit, edge: false } => install(&ctl, &config, force, &unit),
        ServiceAction::Install { config, force, mut unit, edge: true } => {
            if unit.name == "warren-agent" {
                unit.name = "warren-edge".into();
            }
            install_edge(&ctl, &config, force, &unit)
        }
        ServiceAction::Start { unit } => start_stop(&ctl, "start", &unit),
        ServiceAction::Stop { unit } => start_stop(&ctl, "stop", &unit),
        ServiceAction::Uninstall { unit } => uninstall(&ctl, &unit),
    }
}

fn install(ctl: &Systemctl, configs: &[PathBuf], force: bool, unit: &UnitArgs) -> anyhow::Result<()> {
    let name = unit.name()?;
    let path = unit.unit_path()?;
    let mut files = Vec::new();
    for c in configs {
        let abs = std::fs::canonicalize(c).with_context(|| format!("config file {}", c.display()))?;
        if !abs.is_file() {
            bail!("config file {}: not a file", c.display());
        }
        files.push(abs);
    }
    // The service sees exactly these files: check them as `warren start --all` will.
    let loaded = warren_agent::config_file::AgentFile::load(&files)?;
    let agent = loaded.agent_config(&[])?;
    if agent.authtoken.is_empty() {
        bail!(
            "no authtoken in the config: set agent.authtoken (warren config add-authtoken TOKEN --config FILE)"
        );
    }
    for var in ["WARREN_AUTHTOKEN", "WARREN_CONNECT_URL", "WARREN_CONNECT_CAS"] {
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            eprintln!(
                "warning: {var} is set here, but the service does not see it; it reads only the config files"
            );
        }
    }
    if let warren_agent::ConnectCas::Pem(ca) = &agent.connect_cas {
        warn_if_hidden(ca, "connect_cas");
    }

    let exe = std::env::current_exe().context("finding this executable's path")?;
    warn_if_hidden(&exe, "the warren executable");
    let files: Vec<String> = files.iter().map(|f| unit_path_text(f)).collect::<anyhow::Result<_>>()?;
    let text = unit_text(name, &unit_path_text(&exe)?, &files);
    write_and_enable(ctl, &path, name, &text, force)
}

fn install_edge(ctl: &Systemctl, configs: &[PathBuf], force: bool, unit: &UnitArgs) -> anyhow::Result<()> {
    let name = unit.name()?;
    let path = unit.unit_path()?;
    let [config] = configs else {
        bail!("an edge takes one config file (--config /etc/warren/edge.yml)");
    };
    let abs = std::fs::canonicalize(config).with_context(|| format!("config file {}", config.display()))?;
    // The service sees exactly this file: check it as `warren edge --config` will.
    let text = std::fs::read_to_string(&abs).with_context(|| format!("reading {}", abs.display()))?;
    let entries =
        warren_agent::locate::top_level(&text).map_err(|e| anyhow::anyhow!("{}: {e}", abs.display()))?;
    {
        use clap::CommandFactory;
        let mut cmd = crate::Cli::command();
        cmd.build();
        let argv: Vec<std::ffi::OsString> = ["warren", "edge"].iter().map(Into::into).collect();
        let matches = cmd.clone().get_matches_from(&argv);
        let edge = cmd.find_subcommand("edge").expect("edge command");
        let edge_matches = matches.subcommand_matches("edge").expect("edge command");
        crate::edge_config::merged_args(&argv, edge, edge_matches, &abs)?;
    }
    let state = format!("/var/lib/{name}");
    if let Some((_, _, v)) = entries.iter().find(|(k, _, _)| k.replace('-', "_") == "data_dir")
        && v.as_str() != Some(state.as_str())
    {
        {
            eprintln!(
                "warning: the file's data_dir {v} is not used by the service: its data directory is {state} (systemd's StateDirectory, the only place it may write)"
            );
        }
    }
    let exe = std::env::current_exe().context("finding this executable's path")?;
    warn_if_hidden(&exe, "the warren executable");
    let text = edge_unit_text(name, &unit_path_text(&exe)?, &unit_path_text(&abs)?);
    write_and_enable(ctl, &path, name, &text, force)?;
    println!("(data: {state})");
    Ok(())
}

/// A path as a unit file may hold it: UTF-8 without control characters.
fn unit_path_text(p: &Path) -> anyhow::Result<String> {
    match p.to_str() {
        Some(s) if !s.chars().any(char::is_control) => Ok(s.to_owned()),
        _ => bail!("{}: systemd units need paths in UTF-8 without control characters", p.display()),
    }
}

/// Writes the unit (refusing to replace one without `force`), reloads systemd and enables it.
fn write_and_enable(ctl: &Systemctl, path: &Path, name: &str, text: &str, force: bool) -> anyhow::Result<()> {
    if !force && std::fs::symlink_metadata(path).is_ok() {
        bail!("{} already exists; pass --force to replace it", path.display());
    }
    write_unit(path, text).with_context(|| {
        format!("writing {} (installing a system service needs root: try sudo)", path.display())
    })?;
    println!("wrote {}", path.display());
    let service = format!("{name}.service");
    ctl.run_all(
        &[&["daemon-reload"], &["enable", &service]],
        &format!("The unit file {} is written but not enabled", path.display()),
    )?;
    println!("enabled {service}; start it with: warren service start --name {name}");
    println!("(logs: journalctl -u {service})");
    Ok(())
}

/// The restart policy and sandbox every unit warren writes has (agent and edge alike).
const SANDBOX: &str = "Restart=on-failure
RestartSec=5s
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
LockPersonality=yes
SystemCallArchitectures=native
";

/// Open files the edge may need: every visitor and agent connection is one (see
/// docs/LIMITS.md for the connection limits), with room for the store and listeners.
const EDGE_NOFILE: u32 = 1_048_576;

/// The unit file for an edge service `name` running `exe` with the config file `config`.
pub(crate) fn edge_unit_text(name: &str, exe: &str, config: &str) -> String {
    let exec = format!("{} edge --config %d/edge.yml", exec_word(exe));
    let description = format!("warren edge ({config})").replace('%', "%%");
    let config = config.replace('%', "%%");
    format!(
        "{MARKER}; `warren service uninstall --name {name}` removes it.
# The edge runs as an unprivileged dynamic user whose only writable place is its state
# directory (the store, certificates and master key). systemd reads the config file as root
# and hands it over as a credential in $CREDENTIALS_DIRECTORY (%d in ExecStart). The one
# capability it keeps is binding ports below 1024 (80, 443).

[Unit]
Description={description}
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
ExecStart={exec}
ExecReload=/bin/kill -HUP $MAINPID
LoadCredential=edge.yml:{config}
Environment=WARREN_DATA_DIR=%S/{name}
StateDirectory={name}
StateDirectoryMode=0700
DynamicUser=yes
User={name}
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
LimitNOFILE={EDGE_NOFILE}
KillSignal=SIGTERM
# The edge exits by itself after shutdown_delay + drain_timeout; systemd waits that long.
TimeoutStopSec=300s
{SANDBOX}
[Install]
WantedBy=multi-user.target
"
    )
}

fn start_stop(ctl: &Systemctl, verb: &str, unit: &UnitArgs) -> anyhow::Result<()> {
    let name = unit.name()?;
    let path = unit.unit_path()?;
    if !path.exists() {
        bail!("{} does not exist: install it first (warren service install --config FILE)", path.display());
    }
    let service = format!("{name}.service");
    ctl.run_all(&[&[verb, &service]], &format!("Could not {verb} {service}"))?;
    match verb {
        "start" => println!("started {service} (logs: journalctl -u {service} -f)"),
        _ => println!("stopped {service}"),
    }
    Ok(())
}

fn uninstall(ctl: &Systemctl, unit: &UnitArgs) -> anyhow::Result<()> {
    let name = unit.name()?;
    let path = unit.unit_path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{} does not exist: nothing to uninstall", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if !text.starts_with(MARKER) {
        bail!("{} was not written by warren service install; not touching it", path.display());
    }
    let service = format!("{name}.service");
    ctl.run_all(
        &[&["disable", "--now", &service]],
        &format!(
            "{service} is still installed ({} kept); after fixing that, run warren service uninstall again, or by hand also rm {} and {} daemon-reload",
            path.display(),
            path.display(),
            ctl.program
        ),
    )?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    println!("removed {}", path.display());
    ctl.run_all(
        &[&["daemon-reload"]],
        &format!("{} is removed but systemd was not reloaded", path.display()),
    )?;
    println!("uninstalled {service}");
    Ok(())
}

/// systemd hides /home, /root and /run/user from the service (`ProtectHome=yes`), and a
/// relative path would be relative to `/`: say so when a file the service needs is there.
fn warn_if_hidden(path: &Path, what: &str) {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    if path.is_relative() {
        eprintln!(
            "warning: {what} {} is a relative path; the service resolves it from / (use an absolute path)",
            path.display()
        );
    } else if ["/home", "/root", "/run/user"].iter().any(|d| abs.starts_with(d)) {
        eprintln!(
            "warning: {what} {} is under a home directory, which the service cannot see (ProtectHome=yes); put it under /usr/local or /etc instead",
            path.display()
        );
    }
}

/// The unit file for service `name` running `exe` with `configs` (absolute paths).
pub(crate) fn unit_text(name: &str, exe: &str, configs: &[String]) -> String {
    let mut exec = format!("{} start --all", exec_word(exe));
    let mut creds = String::new();
    for (i, c) in configs.iter().enumerate() {
        exec.push_str(&format!(" --config %d/config-{i}"));
        creds.push_str(&format!("LoadCredential=config-{i}:{}\n", c.replace('%', "%%")));
    }
    exec.push_str(" --log stdout");
    let description = format!("warren agent ({})", configs.join(", ")).replace('%', "%%");
    format!(
        "{MARKER}; `warren service uninstall` removes it.
# The agent runs as an unprivileged dynamic user. systemd reads the config files as root
# (they hold the authtoken and can stay readable only by their owner) and hands them to
# the service as credentials in $CREDENTIALS_DIRECTORY (%d in ExecStart).

[Unit]
Description={description}
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
ExecStart={exec}
{creds}DynamicUser=yes
User={name}
{SANDBOX}CapabilityBoundingSet=

[Install]
WantedBy=multi-user.target
"
    )
}

/// One word of an `ExecStart=` command line: specifiers (`%`) and variables (`$`) escaped,
/// quoted when it holds whitespace, quotes or backslashes.
fn exec_word(s: &str) -> String {
    let s = s.replace('%', "%%").replace('$', "$$");
    if s.chars().any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';')) {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s
    }
}

/// Writes the unit with mode 0644 through a temporary file in the same directory, renamed
/// into place, so systemd never reads half a file.
fn write_unit(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("unit");
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Explicitly, whatever the umask.
            f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The systemctl program: `WARREN_SYSTEMCTL` or `systemctl`.
struct Systemctl {
    program: String,
}

impl Systemctl {
    fn from_env() -> Systemctl {
        let program = std::env::var("WARREN_SYSTEMCTL")
            .ok()
            .filter(|p| !p.trim().is_empty())
            .unwrap_or_else(|| "systemctl".into());
        Systemctl { program }
    }

    /// Runs each command in turn. On the first failure: an error saying what failed,
    /// `context`, and the commands that are left to run by hand.
    fn run_all(&self, commands: &[&[&str]], context: &str) -> anyhow::Result<()> {
        for (i, args) in commands.iter().enumerate() {
            let shown = format!("{} {}", self.program, args.join(" "));
            let failure = match Command::new(&self.program).args(*args).status() {
                Ok(s) if s.success() => continue,
                Ok(s) => format!("`{shown}` failed ({s})"),
                Err(e) => format!(
                    "could not run `{shown}`: {e} (is systemd installed? WARREN_SYSTEMCTL names another program)"
                ),
            };
            let by_hand: Vec<String> =
                commands[i..].iter().map(|a| format!("  {} {}", self.program, a.join(" "))).collect();
            bail!("{failure}.\n{context}. Run by hand:\n{}", by_hand.join("\n"));
        }
        Ok(())
    }
}

/// `warren config edit`: opens `file` in `$VISUAL`, `$EDITOR` or `vi` (creating a minimal
/// owner-only file first), then checks it.
pub(crate) fn edit_config(file: PathBuf) -> anyhow::Result<()> {
    use warren_agent::config_file::AgentFile;
    if std::fs::symlink_metadata(&file).is_err() {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        create_private(&file, b"version: 3\nagent: {}\n")
            .with_context(|| format!("creating {}", file.display()))?;
        eprintln!("created {}", file.display());
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let editor = env("VISUAL").or_else(|| env("EDITOR")).unwrap_or_else(|| "vi".into());
    let mut words = editor.split_whitespace();
    let program = words.next().unwrap_or("vi");
    let status = Command::new(program)
        .args(words)
        .arg(&file)
        .status()
        .with_context(|| format!("could not run the editor {editor:?} (set VISUAL or EDITOR)"))?;
    if !status.success() {
        bail!("the editor {editor:?} exited with {status}; {} was not checked", file.display());
    }
    let loaded = AgentFile::load(std::slice::from_ref(&file)).map_err(|e| {
        anyhow::anyhow!("{e}\n(the file is saved as it is; run warren config edit again to fix it)")
    })?;
    for key in &loaded.ignored {
        println!("note: {key} is accepted but has no effect in warren yet");
    }
    let names = loaded.endpoint_names().join(", ");
    println!(
        "valid configuration: {} (endpoints: {})",
        file.display(),
        if names.is_empty() { "none" } else { &names }
    );
    Ok(())
}

/// Creates `path` readable only by its owner (never briefly readable by others).
fn create_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn the_unit_runs_start_all_with_credentials_as_a_dynamic_user() {
        let text = unit_text(
            "warren-agent",
            "/usr/local/bin/warren",
            &["/etc/warren/base.yml".into(), "/etc/warren/endpoints.yml".into()],
        );
        let l = lines(&text);
        assert!(l[0].starts_with(MARKER));
        for expected in [
            "ExecStart=/usr/local/bin/warren start --all --config %d/config-0 --config %d/config-1 --log stdout",
            "LoadCredential=config-0:/etc/warren/base.yml",
            "LoadCredential=config-1:/etc/warren/endpoints.yml",
            "Description=warren agent (/etc/warren/base.yml, /etc/warren/endpoints.yml)",
            "DynamicUser=yes",
            "User=warren-agent",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "ProtectKernelTunables=yes",
            "ProtectControlGroups=yes",
            "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
            "CapabilityBoundingSet=",
            "Restart=on-failure",
            "RestartSec=5s",
            "After=network-online.target",
            "Wants=network-online.target",
            "WantedBy=multi-user.target",
        ] {
            assert!(l.contains(&expected), "{expected:?} missing from:\n{text}");
        }
        // Sections in order, every setting under one.
        let sections: Vec<&str> = l.iter().copied().filter(|s| s.starts_with('[')).collect();
        assert_eq!(sections, ["[Unit]", "[Service]", "[Install]"]);
        let exec = l.iter().position(|s| s.starts_with("ExecStart=")).unwrap();
        let service = l.iter().position(|s| *s == "[Service]").unwrap();
        let install = l.iter().position(|s| *s == "[Install]").unwrap();
        assert!(service < exec && exec < install);
        // No root-only setting sneaks in.
        assert!(!text.contains("User=root") && !text.contains("CAP_"));
    }

    #[test]
    fn paths_are_escaped_for_systemd() {
        let text = unit_text("a", "/opt/my tools/war%ren$", &["/etc/50%/w.yml".into()]);
        assert!(text.contains(
            "ExecStart=\"/opt/my tools/war%%ren$$\" start --all --config %d/config-0 --log stdout"
        ));
        assert!(text.contains("LoadCredential=config-0:/etc/50%%/w.yml\n"));
        assert!(text.contains("Description=warren agent (/etc/50%%/w.yml)\n"));
        assert_eq!(exec_word("/usr/bin/warren"), "/usr/bin/warren");
        assert_eq!(exec_word(r#"/a "b"\c"#), r#""/a \"b\"\\c""#);
    }

    #[test]
    fn names_must_be_usable_as_unit_and_user_names() {
        let unit = |name: &str| UnitArgs { name: name.into(), unit_dir: "/u".into() };
        assert_eq!(unit("warren-agent").name().unwrap(), "warren-agent");
        assert_eq!(unit("web_1.service").name().unwrap(), "web_1");
        assert_eq!(unit("web").unit_path().unwrap(), Path::new("/u/web.service"));
        for bad in ["", "-x", "1x", "a/b", "a b", "../x", "a@b", &"x".repeat(32)] {
            assert!(unit(bad).name().is_err(), "{bad:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn the_unit_is_written_0644_and_replaced_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.service");
        write_unit(&p, "one").unwrap();
        write_unit(&p, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o644);
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
