//! OpenSSH user certificates signed by a Mandate-held CA (PROTOCOL.certkeys), one fresh key pair
//! per lease, and revocation through an `sshd` `RevokedKeys` file.

use std::io::Write;
use std::path::Path;

use ssh_key::certificate::{Builder, CertType};
use ssh_key::{Algorithm, LineEnding, PrivateKey};
use zeroize::Zeroizing;

use crate::DownstreamError;

fn ssh(e: impl std::fmt::Display) -> DownstreamError {
    DownstreamError::Downstream(format!("ssh: {e}"))
}

/// The certificate authority: an Ed25519 key.
pub struct Ca(PrivateKey);

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca")
    }
}

impl Ca {
    /// A new CA key.
    pub fn generate() -> Result<Self, DownstreamError> {
        PrivateKey::random(&mut rand::rngs::OsRng, Algorithm::Ed25519)
            .map(Ca)
            .map_err(ssh)
    }

    /// Reads a CA key in OpenSSH's private key format.
    pub fn from_openssh(pem: &str) -> Result<Self, DownstreamError> {
        PrivateKey::from_openssh(pem).map(Ca).map_err(ssh)
    }

    /// The CA key in OpenSSH's private key format.
    pub fn to_openssh(&self) -> Result<Zeroizing<String>, DownstreamError> {
        self.0.to_openssh(LineEnding::LF).map_err(ssh)
    }

    /// The public key line for `TrustedUserCAKeys`.
    pub fn public_line(&self) -> Result<String, DownstreamError> {
        self.0.public_key().to_openssh().map_err(ssh)
    }
}

/// Checks a principal (a login name): 1 to 64 of letters, digits, `_`, `-`, `.`.
pub fn check_principal(s: &str) -> Result<(), DownstreamError> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(DownstreamError::Config(format!(
            "principal `{}` must be 1 to 64 letters, digits, `_`, `-` or `.`",
            s.chars().take(80).collect::<String>()
        )))
    }
}

/// What a certificate says.
#[derive(Debug)]
pub struct CertSpec<'a> {
    /// The key id sshd logs (the lease id).
    pub key_id: &'a str,
    /// Serial number.
    pub serial: u64,
    /// Login names it is valid for.
    pub principals: &'a [String],
    /// Valid from, seconds since the epoch.
    pub valid_after: u64,
    /// Valid until (exclusive), seconds since the epoch.
    pub valid_before: u64,
    /// The only command it may run (`force-command`).
    pub force_command: Option<&'a str>,
    /// Comma-separated CIDR list it may connect from (`source-address`).
    pub source_address: Option<&'a str>,
    /// Whether it may ask for a terminal (`permit-pty`).
    pub pty: bool,
}

/// A fresh key pair and its certificate.
pub struct Issued {
    /// The private key, OpenSSH format (keep it 0600).
    pub private_key: Zeroizing<String>,
    /// The public key line (what revocation lists).
    pub public_key: String,
    /// The certificate line (`ssh-ed25519-cert-v01@openssh.com …`).
    pub certificate: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

/// Makes a key pair and signs a user certificate for it.
pub fn issue(ca: &Ca, spec: &CertSpec<'_>) -> Result<Issued, DownstreamError> {
    if spec.principals.is_empty() {
        return Err(DownstreamError::Config(
            "a certificate needs at least one principal".into(),
        ));
    }
    for p in spec.principals {
        check_principal(p)?;
    }
    if spec.valid_before <= spec.valid_after {
        return Err(DownstreamError::Config(
            "a certificate's validity window is empty".into(),
        ));
    }
    let mut rng = rand::rngs::OsRng;
    let subject = PrivateKey::random(&mut rng, Algorithm::Ed25519).map_err(ssh)?;
    let mut b = Builder::new_with_random_nonce(
        &mut rng,
        subject.public_key(),
        spec.valid_after,
        spec.valid_before,
    )
    .map_err(ssh)?;
    b.serial(spec.serial)
        .and_then(|b| b.key_id(spec.key_id))
        .and_then(|b| b.cert_type(CertType::User))
        .map_err(ssh)?;
    for p in spec.principals {
        b.valid_principal(p.as_str()).map_err(ssh)?;
    }
    if let Some(c) = spec.force_command {
        b.critical_option("force-command", c).map_err(ssh)?;
    }
    if let Some(a) = spec.source_address {
        b.critical_option("source-address", a).map_err(ssh)?;
    }
    if spec.pty {
        b.extension("permit-pty", "").map_err(ssh)?;
    }
    let cert = b.sign(&ca.0).map_err(ssh)?;
    Ok(Issued {
        private_key: subject.to_openssh(LineEnding::LF).map_err(ssh)?,
        public_key: subject.public_key().to_openssh().map_err(ssh)?,
        certificate: cert.to_openssh().map_err(ssh)?,
    })
}

/// Creates an empty revocation file if there is none (sshd refuses every key while the file it
/// is told to read is missing).
pub fn ensure_revoked_keys(path: &Path) -> Result<(), DownstreamError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(|_| ())
        .map_err(|e| ssh(format!("cannot open {}: {e}", path.display())))
}

/// One writer of revocation files at a time in this process, so no revocation is lost.
static REVOKING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The comment that marks a line of the revocation file as Mandate's, with the time (seconds
/// since the epoch) after which the certificate it revokes has expired anyway.
const UNTIL: &str = "mandate-until=";

/// Adds a public key to the revocation file sshd reads at every authentication, so the key and
/// every certificate for it are refused from the next login on. `until` is when the key's
/// certificate expires by itself: lines of Mandate's whose time has passed (by `now`) are
/// dropped, so the file does not grow without end; other lines are kept as they are. The file
/// is replaced atomically (written beside it, then renamed), as sshd asks, since it may read it
/// at any moment.
pub fn revoke(path: &Path, public_key: &str, until: u64, now: u64) -> Result<(), DownstreamError> {
    let mut fields = public_key.split_whitespace();
    let (Some(kind), Some(key)) = (fields.next(), fields.next()) else {
        return Err(DownstreamError::Config("not a public key line".into()));
    };
    if public_key.contains('\n') {
        return Err(DownstreamError::Config("not a public key line".into()));
    }
    let _one = REVOKING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let io = |e: std::io::Error| ssh(format!("cannot update {}: {e}", path.display()));
    let old = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    let lapsed = |line: &str| {
        line.split_whitespace()
            .nth(2)
            .and_then(|c| c.strip_prefix(UNTIL))
            .and_then(|t| t.parse::<u64>().ok())
            .is_some_and(|t| t <= now)
    };
    let same = |line: &str| {
        let mut f = line.split_whitespace();
        f.next() == Some(kind) && f.next() == Some(key)
    };
    let mut text = String::new();
    for line in old.lines().filter(|l| !lapsed(l) && !same(l)) {
        text.push_str(line);
        text.push('\n');
    }
    text.push_str(&format!("{kind} {key} {UNTIL}{until}\n"));
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_carries_what_was_asked() {
        let ca = Ca::generate().unwrap();
        let principals = vec!["deploy".to_string()];
        let issued = issue(
            &ca,
            &CertSpec {
                key_id: "lease-1",
                serial: 7,
                principals: &principals,
                valid_after: 1_000,
                valid_before: 2_000,
                force_command: Some("/usr/bin/true"),
                source_address: Some("127.0.0.1/32"),
                pty: false,
            },
        )
        .unwrap();
        let cert = ssh_key::Certificate::from_openssh(&issued.certificate).unwrap();
        assert_eq!(cert.valid_principals(), principals.as_slice());
        assert_eq!(cert.key_id(), "lease-1");
        assert_eq!(cert.serial(), 7);
        assert_eq!(cert.valid_before(), 2_000);
        assert_eq!(
            cert.critical_options()
                .get("force-command")
                .map(String::as_str),
            Some("/usr/bin/true")
        );
        let ca_fp = ca.0.public_key().fingerprint(Default::default());
        assert!(cert.validate_at(1_500, [&ca_fp]).is_ok());
        assert!(cert.validate_at(2_000, [&ca_fp]).is_err());
        let other = Ca::generate().unwrap();
        let other_fp = other.0.public_key().fingerprint(Default::default());
        assert!(cert.validate_at(1_500, [&other_fp]).is_err());
        // Round trip of the CA key.
        let again = Ca::from_openssh(&ca.to_openssh().unwrap()).unwrap();
        assert_eq!(again.public_line().unwrap(), ca.public_line().unwrap());
    }

    #[test]
    fn revocation_adds_each_key_once_and_keeps_the_others() {
        let dir = std::env::temp_dir().join(format!("mandate-krl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("revoked_keys");
        ensure_revoked_keys(&file).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "");
        std::fs::write(&file, "# the operator's own\nssh-ed25519 OPERATOR kept\n").unwrap();
        revoke(&file, "ssh-ed25519 AAAA1", 100, 10).unwrap();
        revoke(&file, "ssh-ed25519 AAAA2", 200, 10).unwrap();
        revoke(&file, "ssh-ed25519 AAAA1", 100, 10).unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "# the operator's own\nssh-ed25519 OPERATOR kept\nssh-ed25519 AAAA2 mandate-until=200\nssh-ed25519 AAAA1 mandate-until=100\n"
        );
        // Past a certificate's own expiry its line goes; the operator's lines stay.
        revoke(&file, "ssh-ed25519 AAAA3", 300, 150).unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "# the operator's own\nssh-ed25519 OPERATOR kept\nssh-ed25519 AAAA2 mandate-until=200\nssh-ed25519 AAAA3 mandate-until=300\n"
        );
        assert!(revoke(&file, "a\nb", 1, 0).is_err());
        assert!(revoke(&file, "lonely", 1, 0).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_requests_are_refused() {
        let ca = Ca::generate().unwrap();
        let bad = vec!["root; rm".to_string()];
        let spec = |p: &'static [String], a, b| CertSpec {
            key_id: "x",
            serial: 1,
            principals: p,
            valid_after: a,
            valid_before: b,
            force_command: None,
            source_address: None,
            pty: false,
        };
        assert!(issue(&ca, &spec(&[], 1, 2)).is_err());
        let leaked: &'static [String] = Box::leak(bad.into_boxed_slice());
        assert!(issue(&ca, &spec(leaked, 1, 2)).is_err());
    }
}
