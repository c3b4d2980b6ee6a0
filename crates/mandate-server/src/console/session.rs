//! Console sessions: a person's API token, exchanged at sign-in for a random session id held in
//! a cookie. The token stays on the server and is checked again on every request, so revoking
//! it (or removing its owner) ends the session at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mandate_crypto::SecretString;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

/// A session ends this long after its last request.
pub(crate) const IDLE: Duration = Duration::from_secs(30 * 60);
/// And this long after sign-in, whatever happens.
pub(crate) const ABSOLUTE: Duration = Duration::from_secs(12 * 60 * 60);
/// Most sessions held at once; sign-in beyond this is refused until some end.
pub(crate) const MAX_SESSIONS: usize = 10_000;
/// Longest session id or CSRF token accepted (both are 43 characters).
pub(crate) const MAX_ID: usize = 64;

/// How a person signed in.
pub(crate) enum Credential {
    /// With an API token, checked again on every request.
    Token(SecretString),
    /// Through the OpenID provider: the person it named (an owner must still exist).
    Person(mandate_broker::Principal),
}

impl Credential {
    fn copy(&self) -> Credential {
        match self {
            Credential::Token(t) => Credential::Token(SecretString::new(t.expose().to_string())),
            Credential::Person(p) => Credential::Person(p.clone()),
        }
    }
}

/// One signed-in person.
pub(crate) struct Session {
    /// How they signed in.
    pub cred: Credential,
    /// The token every form of this session must carry.
    pub csrf: String,
    created: Instant,
    seen: Instant,
}

/// The server's sessions, keyed by the SHA-256 of the id (the id itself is never stored).
#[derive(Default)]
pub(crate) struct Sessions {
    inner: Mutex<HashMap<[u8; 32], Session>>,
}

/// 32 random bytes, base64url: session ids, CSRF tokens.
pub(crate) fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Starts a session for `token`; returns its id, or `None` when the server holds too many.
    pub(crate) fn create(&self, cred: Credential) -> Option<String> {
        let now = Instant::now();
        let mut m = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= MAX_SESSIONS {
            m.retain(|_, s| live(s, now));
            if m.len() >= MAX_SESSIONS {
                return None;
            }
        }
        let id = random_token();
        m.insert(
            key(&id),
            Session {
                cred,
                csrf: random_token(),
                created: now,
                seen: now,
            },
        );
        Some(id)
    }

    /// The session's credential and CSRF token, when `id` names a live session (and marks it
    /// used).
    pub(crate) fn get(&self, id: &str) -> Option<(Credential, String)> {
        if id.len() > MAX_ID {
            return None;
        }
        let now = Instant::now();
        let mut m = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let k = key(id);
        match m.get_mut(&k) {
            Some(s) if live(s, now) => {
                s.seen = now;
                Some((s.cred.copy(), s.csrf.clone()))
            }
            Some(_) => {
                m.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Ends a session.
    pub(crate) fn remove(&self, id: &str) {
        let mut m = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.remove(&key(id));
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.seen) < IDLE && now.duration_since(s.created) < ABSOLUTE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_only() {
        let s = Sessions::default();
        let id = s
            .create(Credential::Token(SecretString::new("tok".into())))
            .unwrap_or_default();
        assert_eq!(id.len(), 43);
        let Some((Credential::Token(tok), csrf)) = s.get(&id) else {
            panic!("the session was not found");
        };
        assert_eq!(tok.expose(), "tok");
        assert_eq!(csrf.len(), 43);
        assert!(s.get("not-a-session").is_none());
        assert!(s.get(&"x".repeat(100)).is_none());
        s.remove(&id);
        assert!(s.get(&id).is_none());
    }
}
