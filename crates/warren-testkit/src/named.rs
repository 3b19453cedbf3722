//! BIND 9 (`named`, Debian's `bind9`) as the authoritative server of one zone that takes RFC
//! 2136 updates signed with a TSIG key: the real DNS server an edge publishes DNS-01 answers
//! to, and pebble validates against.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::{free_port, within};

/// A running `named` serving one zone on loopback (UDP and TCP on [`TestNamed::addr`]).
pub struct TestNamed {
    /// Where it answers.
    pub addr: SocketAddr,
    /// The zone it is authoritative for.
    pub zone: String,
    /// The TSIG key allowed to update the zone: its name.
    pub key_name: String,
    /// The key's secret (raw bytes; `named.conf` holds them base64-encoded).
    pub secret: Vec<u8>,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl TestNamed {
    /// Starts `named` for `zone` with a fresh hmac-sha256 key; returns once it accepts TCP.
    pub async fn start(zone: &str) -> TestNamed {
        use base64::Engine;
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        // A test key: unique per run is enough.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let secret = format!("{nanos:032}{port:05}").into_bytes();
        let key_name = "warren-dns01".to_owned();
        let d = dir.path().display();
        let conf = format!(
            r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ any; }};
    dnssec-validation no;
}};
controls {{ }};
key "{key_name}" {{
    algorithm hmac-sha256;
    secret "{b64}";
}};
zone "{zone}" {{
    type primary;
    file "{d}/zone.db";
    allow-update {{ key "{key_name}"; }};
}};
"#,
            b64 = base64::engine::general_purpose::STANDARD.encode(&secret),
        );
        let zone_file = format!(
            "$TTL 60\n@ IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 600 60\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
        );
        std::fs::write(dir.path().join("named.conf"), conf).unwrap();
        std::fs::write(dir.path().join("zone.db"), zone_file).unwrap();
        let named =
            if std::path::Path::new("/usr/sbin/named").exists() { "/usr/sbin/named" } else { "named" };
        let child = std::process::Command::new(named)
            .args(["-g", "-c"])
            .arg(dir.path().join("named.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("named is installed (Debian package bind9; .ci/run installs it)");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        within("named listening", async {
            while TcpStream::connect(addr).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        TestNamed { addr, zone: zone.to_owned(), key_name, secret, child, _dir: dir }
    }
}

impl Drop for TestNamed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
