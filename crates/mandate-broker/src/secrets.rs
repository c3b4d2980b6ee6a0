//! Brokered secrets: values agents never see. People set them (admin API, `mandate secret set`,
//! from stdin or a file, never as an argument); the store keeps them sealed under the
//! key-encryption key; the gateway asks for a value when it injects it upstream. Rotation takes
//! effect without restart: readers see the new version at once, and the `changes` signal tells
//! the gateway to restart upstream processes that hold the old one in their environment.

use std::collections::HashMap;
use std::sync::Mutex;

use mandate_core::audit::EventKind;
use mandate_crypto::SecretString;
use mandate_crypto::seal::{Kek, Sealed};
use mandate_store::{Op, SecretRecord, StoreError};

use crate::Broker;
use crate::admin::Principal;
use crate::error::AdminError;

/// Checks a secret's name: 1 to 64 of letters, digits, `_`, `-`, `.`.
pub fn check_secret_name(name: &str) -> Result<(), AdminError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(AdminError::BadRequest(
            "a secret's name is 1 to 64 letters, digits, `_`, `-` or `.`".into(),
        ))
    }
}

/// Opened secrets by name and version, so the gateway's hot path does not decrypt per call.
#[derive(Default)]
pub(crate) struct SecretCache {
    opened: Mutex<HashMap<String, (i64, SecretString)>>,
    /// When each cached value was last checked against the store.
    checked: Mutex<HashMap<String, std::time::Instant>>,
}

/// How long a cached secret is used before its version is checked against the store again
/// (a rotation made by another replica is seen within this time; one made here at once).
const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretCache")
    }
}

impl Broker {
    fn kek(&self) -> Result<&Kek, AdminError> {
        self.kek.as_ref().ok_or_else(|| {
            AdminError::Unavailable(
                "no key-encryption key is configured, so secrets are off".into(),
            )
        })
    }

    /// Sets (or rotates) a secret. Admins only. The value never reaches the audit or the logs.
    pub async fn set_secret(
        &self,
        p: &Principal,
        name: &str,
        value: &SecretString,
    ) -> Result<SecretRecord, AdminError> {
        p.require_admin_for("secrets")?;
        check_secret_name(name)?;
        if value.expose().is_empty() {
            return Err(AdminError::BadRequest("a secret's value is empty".into()));
        }
        let kek = self.kek()?;
        let now = self.now();
        let previous = self.store.secret(name).await?;
        let version = previous.as_ref().map_or(1, |r| r.version + 1);
        let sealed = kek
            .seal(name, version, value.expose().as_bytes())
            .map_err(|e| AdminError::BadRequest(e.to_string()))?;
        let rec = SecretRecord {
            name: name.to_string(),
            version,
            nonce: sealed.nonce,
            ciphertext: sealed.ciphertext,
            created_at: previous.as_ref().map_or(now, |r| r.created_at),
            updated_at: now,
        };
        let mut e = self.event(EventKind::SecretSet);
        e.actor = Some(p.name());
        e.resource = Some(format!("secret:{name}"));
        e.detail = serde_json::json!({ "version": version });
        match self
            .store
            .commit(vec![Op::PutSecret(rec.clone()), Op::Audit(e)])
            .await
        {
            Ok(_) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(AdminError::Conflict(format!(
                    "secret `{name}` was changed meanwhile; try again"
                )));
            }
            Err(e) => return Err(AdminError::Unavailable(e.to_string())),
        }
        self.secret_cache
            .opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), (version, value.clone()));
        self.secret_cache
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), std::time::Instant::now());
        self.secret_changes.send_modify(|n| *n += 1);
        Ok(rec)
    }

    /// Deletes a secret. Admins only.
    pub async fn delete_secret(&self, p: &Principal, name: &str) -> Result<(), AdminError> {
        p.require_admin_for("secrets")?;
        check_secret_name(name)?;
        let mut e = self.event(EventKind::SecretDeleted);
        e.actor = Some(p.name());
        e.resource = Some(format!("secret:{name}"));
        self.store
            .commit(vec![
                Op::DeleteSecret {
                    name: name.to_string(),
                },
                Op::Audit(e),
            ])
            .await?;
        self.secret_cache
            .opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        self.secret_cache
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        self.secret_changes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The secrets' names, versions and times (never their values). Admins only.
    pub async fn secrets(&self, p: &Principal) -> Result<Vec<SecretRecord>, AdminError> {
        p.require_admin_for("secrets")?;
        Ok(self.store.secrets().await?)
    }

    /// A secret's current value, for injection upstream. Only the gateway calls this.
    pub async fn secret_value(&self, name: &str) -> Result<SecretString, String> {
        let fresh = self
            .secret_cache
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .is_some_and(|t| t.elapsed() < RECHECK);
        if fresh
            && let Some((_, value)) = self
                .secret_cache
                .opened
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(name)
        {
            return Ok(value.clone());
        }
        let rec = self
            .store
            .secret(name)
            .await
            .map_err(|e| format!("secret `{name}` could not be read: {e}"))?
            .ok_or_else(|| format!("secret `{name}` is not set"))?;
        if let Some((v, value)) = self
            .secret_cache
            .opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            && *v == rec.version
        {
            self.secret_cache
                .checked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(name.to_string(), std::time::Instant::now());
            return Ok(value.clone());
        }
        let kek = self.kek().map_err(|e| e.to_string())?;
        let value = kek
            .open(
                name,
                rec.version,
                &Sealed {
                    nonce: rec.nonce.clone(),
                    ciphertext: rec.ciphertext.clone(),
                },
            )
            .map_err(|e| format!("secret `{name}`: {e}"))?;
        self.secret_cache
            .opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), (rec.version, value.clone()));
        self.secret_cache
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_string(), std::time::Instant::now());
        Ok(value)
    }

    /// A signal that ticks whenever a secret is set or deleted here or on another replica.
    pub fn secret_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.secret_changes.subscribe()
    }

    /// Drops a cached secret that another replica changed; the next use reads the store.
    pub(crate) fn forget_secret(&self, name: &str) {
        self.secret_cache
            .opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        self.secret_cache
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
        self.secret_changes.send_modify(|n| *n += 1);
    }
}
