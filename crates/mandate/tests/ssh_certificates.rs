//! Per-task OpenSSH certificates against a real `sshd` (Debian's openssh-server, installed by
//! `scripts/setup-test-deps`) on loopback, trusting Mandate's CA through `TrustedUserCAKeys` and
//! reading Mandate's revocations through `RevokedKeys`; the real `ssh` client logs in.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly on any surprise"
)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Broker;
use serde_json::Value;

const BOUND: Duration = Duration::from_secs(10);
const USER: &str = "mandate-ssh";

struct Sshd {
    child: std::process::Child,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// Starts sshd in the foreground with a config of its own in `dir`.
fn sshd(dir: &Path, ca_line: &str, revoked: &Path) -> Sshd {
    std::fs::create_dir_all("/run/sshd").unwrap();
    let host_key = dir.join("host_ed25519");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
        .arg(&host_key)
        .status()
        .unwrap();
    assert!(st.success());
    let ca = dir.join("trusted_user_ca.pub");
    std::fs::write(&ca, format!("{}\n", ca_line.trim())).unwrap();
    let port = free_port();
    let cfg = dir.join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "ListenAddress 127.0.0.1:{port}\nAddressFamily inet\nHostKey {}\nPidFile none\n\
             LogLevel VERBOSE\nUsePAM no\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nAuthenticationMethods publickey\n\
             AuthorizedKeysFile none\nAuthorizedPrincipalsFile none\nTrustedUserCAKeys {}\n\
             RevokedKeys {}\nPermitRootLogin no\nAllowUsers {USER}\nStrictModes no\nPrintMotd no\n\
             PrintLastLog no\nX11Forwarding no\nAllowTcpForwarding no\nAllowAgentForwarding no\n\
             PermitTunnel no\n",
            host_key.display(),
            ca.display(),
            revoked.display()
        ),
    )
    .unwrap();
    let check = std::process::Command::new("/usr/sbin/sshd")
        .arg("-t")
        .arg("-f")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "sshd -t: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
    let child = std::process::Command::new("/usr/sbin/sshd")
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&cfg)
        .stderr(log)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < BOUND, "sshd did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Sshd { child, port }
}

/// Runs `ssh … true` with the key and certificate; returns (exit code, stdout, stderr).
fn ssh(port: u16, key: &Path, cert: &Path) -> (i32, String, String) {
    let out = std::process::Command::new("ssh")
        .args(["-F", "/dev/null", "-i"])
        .arg(key)
        .arg("-o")
        .arg(format!("CertificateFile={}", cert.display()))
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "PreferredAuthentications=publickey",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            "-p",
        ])
        .arg(port.to_string())
        .arg(format!("{USER}@127.0.0.1"))
        .arg("true")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn write_credential(dir: &Path, c: &Value) -> (PathBuf, PathBuf) {
    let key = dir.join("id_task");
    std::fs::write(&key, c["private_key"].as_str().unwrap()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cert = dir.join("id_task-cert.pub");
    std::fs::write(&cert, format!("{}\n", c["certificate"].as_str().unwrap())).unwrap();
    (key, cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_certificate_logs_in_to_real_sshd_until_the_task_ends() {
    let dir = tempfile::tempdir().unwrap();
    let revoked = dir.path().join("revoked_keys");
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[[credentials]]
name = "build_host"
kind = "ssh"
revoked_keys_file = "{}"
source_address = ["127.0.0.1/32"]
[[credentials.grants]]
scope = "call:deploy.run"
principals = ["{USER}"]
force_command = "echo forced:$SSH_ORIGINAL_COMMAND"
"#,
            revoked.display()
        ),
    )
    .unwrap();
    let b = Broker::start_with(&["--config", cfg.to_str().unwrap()]).await;
    // Mandate made the revocation file (sshd refuses every key while it is missing) and the CA.
    assert!(revoked.exists());
    // What an operator runs to configure sshd.
    let out = b.cli(&["credential", "ssh-ca", "build_host"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = String::from_utf8(out.stdout).unwrap();
    // The same key is published without authentication (it is public).
    let published = reqwest::get(format!("{}/v1/credentials/build_host/ssh-ca", b.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(published.trim(), ca.trim());
    assert!(ca.starts_with("ssh-ed25519 "), "{ca}");
    let server = sshd(dir.path(), &ca, &revoked);

    b.add_owner("ops").await;
    let key = b
        .add_agent("deployer", "ops", "low", "call:deploy.run read:logs")
        .await;
    // A task without the mapped scope earns no certificate.
    let (_, other) = b.open_scope(&key, "deployer", "read:logs").await;
    let (st, _) = b
        .fetch_credential(Some(other["access_token"].as_str().unwrap()), "build_host")
        .await;
    assert_eq!(st, 403);

    let (_, t) = b.open_scope(&key, "deployer", "call:deploy.run").await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let (st, c) = b.fetch_credential(Some(&token), "build_host").await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["principals"], serde_json::json!([USER]));
    let (key_file, cert_file) = write_credential(dir.path(), &c);

    // The certificate logs in, and sshd runs the forced command instead of the one asked for.
    let (code, out, err) = ssh(server.port, &key_file, &cert_file);
    assert_eq!(code, 0, "{err}\n{}", sshd_log(dir.path()));
    assert_eq!(out.trim(), "forced:true");
    let log = sshd_log(dir.path());
    assert!(
        log.contains("Accepted certificate ID \"mandate lease"),
        "{log}"
    );

    // The task completes: sshd refuses the certificate from the next login on.
    let (st, _) = b.revoke_as_agent(&key, "deployer", &token).await;
    assert_eq!(st, 200);
    let start = Instant::now();
    loop {
        let (code, _, err) = ssh(server.port, &key_file, &cert_file);
        if code == 255 && err.contains("Permission denied") {
            break;
        }
        assert!(
            start.elapsed() < BOUND,
            "still logs in after completion: {err}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "certificate refused after completion: {} ms",
        start.elapsed().as_millis()
    );
    assert!(sshd_log(dir.path()).contains("revoked by file"));
    // The key is revoked first, then the lease is recorded so.
    let start = Instant::now();
    while b.admin_get("/admin/v1/leases?open=true").await.1 != serde_json::json!([]) {
        assert!(start.elapsed() < BOUND, "lease still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, leases) = b.admin_get("/admin/v1/leases").await;
    let lease = leases
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["task"] == t["task_id"])
        .unwrap();
    assert_eq!(lease["state"], "revoked", "{lease}");
    assert_eq!(lease["handle"], c["public_key"]);
}

fn sshd_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
}
