//! Per-task downstream credentials, made where they are used and revoked there: a PostgreSQL
//! role ([`postgres`]) and an OpenSSH user certificate ([`ssh`]). The broker decides what each
//! grants and when it ends; this crate only speaks the downstream's language.

pub mod postgres;
pub mod ssh;

/// Why a downstream credential could not be made or revoked.
#[derive(Debug, thiserror::Error)]
pub enum DownstreamError {
    /// The configuration cannot be used (a bad identifier, privilege or principal).
    #[error("{0}")]
    Config(String),
    /// The downstream refused or could not be reached.
    #[error("{0}")]
    Downstream(String),
}
