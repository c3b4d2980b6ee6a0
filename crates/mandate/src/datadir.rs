//! The data directory: signing key, bootstrap admin token, and the default policy pack.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use mandate_broker::Broker;
use mandate_crypto::{ApiToken, SigningKey};

/// The shipped policy pack, embedded so a fresh data directory gets it.
pub const DEFAULT_PACK: &[(&str, &str)] = &[
    (
        "mandate.cedarschema",
        include_str!("../../../policies/mandate.cedarschema"),
    ),
    (
        "00-admission.cedar",
        include_str!("../../../policies/00-admission.cedar"),
    ),
    (
        "10-runtime.cedar",
        include_str!("../../../policies/10-runtime.cedar"),
    ),
    (
        "20-flow.cedar",
        include_str!("../../../policies/20-flow.cedar"),
    ),
    (
        "30-budgets.cedar",
        include_str!("../../../policies/30-budgets.cedar"),
    ),
    (
        "40-approval.cedar",
        include_str!("../../../policies/40-approval.cedar"),
    ),
    (
        "50-delegation.cedar",
        include_str!("../../../policies/50-delegation.cedar"),
    ),
    (
        "catalog.toml",
        include_str!("../../../policies/catalog.toml"),
    ),
    (
        "tests/pack.toml",
        include_str!("../../../policies/tests/pack.toml"),
    ),
];

/// File holding the bootstrap admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Creates `dir` (mode 0700) if needed.
pub fn ensure(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() {
        fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory `{}`", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot set permissions of `{}`", dir.display()))?;
    }
    Ok(())
}

/// Writes `bytes` to a new file with mode 0600; fails if the file exists.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write `{}`", path.display()))
}

/// Creates (or truncates) a file readable by its owner only, for exports and reports that hold
/// audit data.
pub fn create_private(path: &Path) -> anyhow::Result<fs::File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    // An existing file keeps its mode when opened: narrow it.
    f.set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set permissions of `{}`", path.display()))?;
    Ok(f)
}

/// Loads the signing key, generating it on first start.
pub fn signing_key(data_dir: &Path) -> anyhow::Result<SigningKey> {
    let dir = data_dir.join("keys");
    ensure(&dir)?;
    let path = dir.join("signing.key");
    if path.exists() {
        let der = fs::read(&path).with_context(|| format!("cannot read `{}`", path.display()))?;
        return SigningKey::from_pkcs8_der(&der)
            .map_err(|_| anyhow::anyhow!("`{}` is not a PKCS#8 Ed25519 key", path.display()));
    }
    let key = SigningKey::generate();
    let der = key
        .to_pkcs8_der()
        .map_err(|e| anyhow::anyhow!("cannot encode signing key: {e}"))?;
    write_private(&path, &der)?;
    tracing::info!(kid = key.kid(), path = %path.display(), "generated signing key");
    Ok(key)
}

/// The key-encryption key for brokered secrets: `MANDATE_KEK` (base64) when set, else
/// `keys/secrets.kek` in the data directory, generated (mode 0600) on first start.
pub fn kek(data_dir: &Path, from_env: Option<&str>) -> anyhow::Result<mandate_crypto::seal::Kek> {
    use mandate_crypto::seal::Kek;
    if let Some(text) = from_env {
        return Kek::from_base64(text).map_err(|e| anyhow::anyhow!("MANDATE_KEK: {e}"));
    }
    let dir = data_dir.join("keys");
    ensure(&dir)?;
    let path = dir.join("secrets.kek");
    if path.exists() {
        let text = fs::read_to_string(&path)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        return Kek::from_base64(&text).map_err(|e| anyhow::anyhow!("`{}`: {e}", path.display()));
    }
    let kek = Kek::generate();
    write_private(&path, kek.to_base64().expose().as_bytes())?;
    Ok(kek)
}

/// Writes the shipped policy pack into `dir` if it does not exist yet.
pub fn seed_policies(dir: &Path) -> anyhow::Result<bool> {
    if dir.exists() {
        return Ok(false);
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    for (name, text) in DEFAULT_PACK {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create `{}`", parent.display()))?;
        }
        fs::write(&path, text).with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    Ok(true)
}

/// Creates the bootstrap admin credential on first start: the token is written once to a 0600
/// file in the data directory, only its hash is stored, and it is never logged.
pub async fn bootstrap_admin(broker: &Broker, data_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    if !broker
        .needs_bootstrap()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        return Ok(None);
    }
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        bail!(
            "`{}` exists but the store has no bootstrap admin record; move the file away and start again",
            path.display()
        );
    }
    let token = ApiToken::generate();
    write_private(&path, format!("{}\n", token.plaintext.expose()).as_bytes())?;
    if let Err(e) = broker.record_bootstrap(token.hash.clone()).await {
        let _ = fs::remove_file(&path);
        bail!("cannot record the bootstrap admin credential: {e}");
    }
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_pack_is_the_whole_policies_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies");
        let mut on_disk: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cedar") || n.ends_with(".cedarschema") || n == "catalog.toml")
            .chain(
                fs::read_dir(dir.join("tests"))
                    .unwrap()
                    .map(|e| format!("tests/{}", e.unwrap().file_name().to_string_lossy())),
            )
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = DEFAULT_PACK.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
        for (name, text) in DEFAULT_PACK {
            assert_eq!(fs::read_to_string(dir.join(name)).unwrap(), *text, "{name}");
        }
    }
}
