//! `warren service` and `warren config edit`, through the real binary. Containers have no
//! systemd, so `WARREN_SYSTEMCTL` points at a script that records what warren asks of
//! systemctl; the unit file itself is real and checked line by line.

use std::path::Path;
use std::process::{Command, Output};

fn warren(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warren"));
    c.args(args).env_remove("WARREN_AUTHTOKEN").env_remove("VISUAL").env_remove("EDITOR");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run warren")
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const CONFIG: &str = "version: 3\nagent:\n  authtoken: cr_test\n  connect_url: edge.example.com:443\nendpoints:\n  - name: web\n    url: https://web.example.com\n    upstream:\n      url: 8080\n";

#[test]
fn install_writes_a_hardened_unit_for_a_dynamic_user_and_drives_systemctl() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.yml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let units = dir.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let log = dir.path().join("systemctl.log");
    let ctl = dir.path().join("systemctl");
    script(&ctl, &format!("echo \"$@\" >> {}", log.display()));
    let env = [("WARREN_SYSTEMCTL", ctl.to_str().unwrap())];
    let unit_dir = units.to_str().unwrap();

    let out =
        warren(&["service", "install", "--config", cfg.to_str().unwrap(), "--unit-dir", unit_dir], &env);
    assert!(out.status.success(), "{}", text(&out));
    let unit_path = units.join("warren-agent.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let abs = std::fs::canonicalize(&cfg).unwrap();
    for line in [
        "DynamicUser=yes".to_owned(),
        format!("LoadCredential=config-0:{}", abs.display()),
        "NoNewPrivileges=yes".into(),
        "ProtectSystem=strict".into(),
        "CapabilityBoundingSet=".into(),
        "WantedBy=multi-user.target".into(),
    ] {
        assert!(unit.lines().any(|l| l == line), "{line:?} missing from:\n{unit}");
    }
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert!(
        exec.contains(env!("CARGO_BIN_EXE_warren")) && exec.contains("start --all --config %d/config-0"),
        "{exec}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&unit_path).unwrap().permissions().mode() & 0o777, 0o644);
    }
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls.lines().collect::<Vec<_>>(), ["daemon-reload", "enable warren-agent.service"]);

    // A second install does not overwrite without --force.
    let again =
        warren(&["service", "install", "--config", cfg.to_str().unwrap(), "--unit-dir", unit_dir], &env);
    assert!(!again.status.success());
    assert!(text(&again).contains("--force"), "{}", text(&again));

    for verb in ["start", "stop"] {
        let out = warren(&["service", verb, "--unit-dir", unit_dir], &env);
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = warren(&["service", "uninstall", "--unit-dir", unit_dir], &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!unit_path.exists(), "the unit file is removed");
    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert!(calls.iter().any(|c| c.starts_with("start warren-agent")), "{calls:?}");
    assert!(calls.iter().any(|c| c.starts_with("stop warren-agent")), "{calls:?}");
    assert!(calls.iter().any(|c| c.starts_with("disable --now warren-agent")), "{calls:?}");
}

#[test]
fn install_refuses_a_broken_config_and_explains_a_missing_systemctl() {
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "version: 3\nagent:\n  authtokn: x\n").unwrap();
    let out = warren(
        &["service", "install", "--config", bad.to_str().unwrap(), "--unit-dir", units.to_str().unwrap()],
        &[("WARREN_SYSTEMCTL", "/bin/true")],
    );
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("line 3") && t.contains("authtokn"), "{t}");
    assert_eq!(std::fs::read_dir(&units).unwrap().count(), 0, "no unit is written for a broken config");

    let good = dir.path().join("good.yml");
    std::fs::write(&good, CONFIG).unwrap();
    let out = warren(
        &["service", "install", "--config", good.to_str().unwrap(), "--unit-dir", units.to_str().unwrap()],
        &[("WARREN_SYSTEMCTL", "/nonexistent/systemctl")],
    );
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("daemon-reload") && t.contains("by hand"), "{t}");
    assert!(units.join("warren-agent.service").exists(), "the unit is kept for the user to enable by hand");
}

#[test]
fn config_edit_opens_the_editor_then_checks_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("conf/warren.yml");
    let add = dir.path().join("add-endpoint");
    script(&add, "printf 'endpoints:\\n  - name: api\\n    upstream:\\n      url: 3000\\n' >> \"$1\"");
    let out =
        warren(&["config", "edit", "--config", cfg.to_str().unwrap()], &[("EDITOR", add.to_str().unwrap())]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("valid configuration") && text(&out).contains("api"), "{}", text(&out));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o077, 0, "created owner-only");
    }

    let typo = dir.path().join("typo");
    script(&typo, "printf 'colour: blue\\n' >> \"$1\"");
    let out =
        warren(&["config", "edit", "--config", cfg.to_str().unwrap()], &[("VISUAL", typo.to_str().unwrap())]);
    assert!(!out.status.success());
    assert!(text(&out).contains("colour"), "{}", text(&out));
}

/// `warren service install --edge`: a unit for `warren edge --config` as a dynamic user whose
/// data lives in its StateDirectory, with only CAP_NET_BIND_SERVICE; the config file is
/// checked first (an unknown key writes nothing).
#[test]
fn install_edge_writes_a_unit_that_binds_low_ports_with_one_capability() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("edge.yml");
    std::fs::write(&cfg, "base_domain: tunnels.example.com\nhttps_addr: 0.0.0.0:443\nhttp_addr: 0.0.0.0:80\ndata_dir: /srv/elsewhere\n").unwrap();
    let units = dir.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let log = dir.path().join("systemctl.log");
    let ctl = dir.path().join("systemctl");
    script(&ctl, &format!("echo \"$@\" >> {}", log.display()));
    let env = [("WARREN_SYSTEMCTL", ctl.to_str().unwrap())];
    let unit_dir = units.to_str().unwrap();

    let out = warren(
        &["service", "install", "--edge", "--config", cfg.to_str().unwrap(), "--unit-dir", unit_dir],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("data_dir \"/srv/elsewhere\" is not used"), "{}", text(&out));
    let unit = std::fs::read_to_string(units.join("warren-edge.service")).unwrap();
    let abs = std::fs::canonicalize(&cfg).unwrap();
    for line in [
        format!("LoadCredential=edge.yml:{}", abs.display()),
        "DynamicUser=yes".into(),
        "StateDirectory=warren-edge".into(),
        "Environment=WARREN_DATA_DIR=%S/warren-edge".into(),
        "AmbientCapabilities=CAP_NET_BIND_SERVICE".into(),
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE".into(),
        "LimitNOFILE=1048576".into(),
        "KillSignal=SIGTERM".into(),
        "ExecReload=/bin/kill -HUP $MAINPID".into(),
        "NoNewPrivileges=yes".into(),
        "ProtectSystem=strict".into(),
    ] {
        assert!(unit.lines().any(|l| l == line), "{line:?} missing from:\n{unit}");
    }
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert!(exec.ends_with(" edge --config %d/edge.yml"), "{exec}");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(calls, "daemon-reload\nenable warren-edge.service\n");

    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "base_domian: x.example.com\n").unwrap();
    let out = warren(
        &[
            "service",
            "install",
            "--edge",
            "--config",
            bad.to_str().unwrap(),
            "--unit-dir",
            unit_dir,
            "--name",
            "other",
        ],
        &env,
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("bad.yml:1:1: unknown key \"base_domian\"; did you mean base_domain?"),
        "{}",
        text(&out)
    );
    assert!(!units.join("other.service").exists());
    let out = warren(
        &[
            "service",
            "install",
            "--edge",
            "--config",
            cfg.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--unit-dir",
            unit_dir,
            "--name",
            "two",
        ],
        &env,
    );
    assert!(!out.status.success() && text(&out).contains("one config file"), "{}", text(&out));
}
