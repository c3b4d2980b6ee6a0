//! Token signing keys, kept in the store sealed under the key-encryption key, so that every
//! replica signs with the same key and verifies every other replica's credentials. Rotation adds
//! a new signing key; the previous ones keep verifying (and stay in the JWKS) until every
//! credential they signed has expired.

use mandate_core::Timestamp;
use mandate_core::audit::EventKind;
use mandate_crypto::seal::{Kek, Sealed};
use mandate_crypto::{KeyRing, SigningKey};
use mandate_store::{Op, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::Broker;
use crate::admin::Principal;
use crate::error::AdminError;

/// The store's key-value entry holding the sealed keys.
const META_KEY: &str = "signing_keys";
/// Single-use marker that lets exactly one replica write the first key.
const INIT_MARKER: &str = "signing_keys:init";

/// One signing key as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired_at: Option<i64>,
    nonce: String,
    ciphertext: String,
}

fn seal_key(kek: &Kek, key: &SigningKey, now: Timestamp) -> Result<StoredKey, String> {
    use base64::Engine;
    let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
    let text = base64::engine::general_purpose::STANDARD.encode(der.as_slice());
    let sealed = kek
        .seal(
            &format!("signing-key:{}", key.kid()),
            now.0,
            text.as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    Ok(StoredKey {
        kid: key.kid().to_string(),
        created_at: now.0,
        retired_at: None,
        nonce: sealed.nonce,
        ciphertext: sealed.ciphertext,
    })
}

fn open_key(kek: &Kek, k: &StoredKey) -> Result<SigningKey, String> {
    use base64::Engine;
    let text = kek
        .open(
            &format!("signing-key:{}", k.kid),
            k.created_at,
            &Sealed {
                nonce: k.nonce.clone(),
                ciphertext: k.ciphertext.clone(),
            },
        )
        .map_err(|_| {
            format!(
                "signing key `{}` cannot be opened: is this replica using the same key-encryption key (MANDATE_KEK) as the others?",
                k.kid
            )
        })?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(text.expose())
        .map_err(|e| e.to_string())?;
    SigningKey::from_pkcs8_der(&der).map_err(|e| e.to_string())
}

/// The ring from the stored keys: the newest unretired key signs, all of them verify.
fn ring_from(kek: &Kek, keys: &[StoredKey]) -> Result<KeyRing, String> {
    let signer = keys
        .iter()
        .filter(|k| k.retired_at.is_none())
        .max_by_key(|k| k.created_at)
        .ok_or("no usable signing key in the store")?;
    let mut ring = KeyRing::new(open_key(kek, signer)?);
    for k in keys.iter().filter(|k| k.kid != signer.kid) {
        ring.add_verifier(open_key(kek, k)?.public_jwk().clone());
    }
    Ok(ring)
}

async fn stored(store: &Store) -> Result<Option<Vec<StoredKey>>, String> {
    match store.meta(META_KEY).await.map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("stored signing keys are unreadable: {e}")),
    }
}

/// The key ring every replica shares. On the first start against a store, `local` (the data
/// directory's key) becomes the shared signing key; afterwards the store's keys are used.
pub async fn shared_key_ring(
    store: &Store,
    kek: &Kek,
    local: SigningKey,
    now: Timestamp,
) -> Result<KeyRing, String> {
    if let Some(keys) = stored(store).await? {
        return ring_from(kek, &keys);
    }
    let first = vec![seal_key(kek, &local, now)?];
    let ops = vec![
        Op::ConsumeOnce {
            key: INIT_MARKER.into(),
            expires_at: Timestamp(i64::MAX),
        },
        Op::SetMeta {
            key: META_KEY.into(),
            value: serde_json::to_string(&first).map_err(|e| e.to_string())?,
        },
    ];
    match store.commit(ops).await {
        Ok(_) => Ok(KeyRing::new(local)),
        // Another replica wrote the first key meanwhile: use that one.
        Err(StoreError::Conflict(_)) => {
            let keys = stored(store)
                .await?
                .ok_or("signing keys vanished from the store")?;
            ring_from(kek, &keys)
        }
        Err(e) => Err(format!("cannot store the signing key: {e}")),
    }
}

impl Broker {
    /// Starts signing with a new key. The previous keys keep verifying until every credential
    /// they signed has expired, then they are dropped at the next rotation. Admins only.
    pub async fn rotate_signing_key(&self, p: &Principal) -> Result<serde_json::Value, AdminError> {
        p.require_admin()?;
        let kek = self
            .kek
            .as_ref()
            .ok_or_else(|| AdminError::Unavailable("no key-encryption key is configured".into()))?;
        let now = self.now();
        let mut keys = stored(&self.store)
            .await
            .map_err(AdminError::Unavailable)?
            .unwrap_or_default();
        // A retired key is needed as long as a credential it signed can still be presented.
        let keep_ms = (self.cfg.max_task_ttl + self.cfg.leeway).saturating_mul(1000);
        keys.retain(|k| k.retired_at.is_none_or(|r| now.0 - r <= keep_ms));
        let retired: Vec<String> = keys
            .iter_mut()
            .filter(|k| k.retired_at.is_none())
            .map(|k| {
                k.retired_at = Some(now.0);
                k.kid.clone()
            })
            .collect();
        let key = SigningKey::generate();
        keys.push(seal_key(kek, &key, now).map_err(AdminError::Unavailable)?);
        let ring = ring_from(kek, &keys).map_err(AdminError::Unavailable)?;
        let mut e = self.event(EventKind::KeyRotated);
        e.actor = Some(p.name());
        e.detail = serde_json::json!({
            "kid": key.kid(),
            "retired": retired,
            "verifying": keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>(),
        });
        let value =
            serde_json::to_string(&keys).map_err(|e| AdminError::Unavailable(e.to_string()))?;
        self.store
            .commit(vec![
                Op::SetMeta {
                    key: META_KEY.into(),
                    value,
                },
                Op::Audit(e),
            ])
            .await?;
        self.keys.store(std::sync::Arc::new(ring));
        Ok(serde_json::json!({
            "kid": key.kid(),
            "retired": retired,
            "verifying": keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>(),
        }))
    }

    /// Re-reads the shared keys (another replica rotated them).
    pub(crate) async fn reload_keys(&self) {
        let Some(kek) = self.kek.as_ref() else {
            return;
        };
        match stored(&self.store).await {
            Ok(Some(keys)) => match ring_from(kek, &keys) {
                Ok(ring) => self.keys.store(std::sync::Arc::new(ring)),
                Err(e) => tracing::error!(error = %e, "cannot use the rotated signing keys"),
            },
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot read the rotated signing keys"),
        }
    }
}
