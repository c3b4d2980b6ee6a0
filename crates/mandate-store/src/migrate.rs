//! Versioned migrations, embedded in the binary and applied in order, each in its own
//! transaction. A migration that was changed after it was applied is refused, and so is a
//! database written by a newer binary.

use sha2::{Digest, Sha256};

use crate::StoreError;

/// One migration.
pub(crate) struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

impl Migration {
    pub fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The SQLite migrations.
pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        description: "initial",
        sql: include_str!("../migrations/sqlite/0001_initial.sql"),
    },
    Migration {
        version: 2,
        description: "approvals",
        sql: include_str!("../migrations/sqlite/0002_approvals.sql"),
    },
    Migration {
        version: 3,
        description: "secrets",
        sql: include_str!("../migrations/sqlite/0003_secrets.sql"),
    },
    Migration {
        version: 4,
        description: "leases",
        sql: include_str!("../migrations/sqlite/0004_leases.sql"),
    },
];

/// The PostgreSQL migrations: the same versions and tables as [`SQLITE`].
pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        description: "initial",
        sql: include_str!("../migrations/postgres/0001_initial.sql"),
    },
    Migration {
        version: 2,
        description: "approvals",
        sql: include_str!("../migrations/postgres/0002_approvals.sql"),
    },
    Migration {
        version: 3,
        description: "secrets",
        sql: include_str!("../migrations/postgres/0003_secrets.sql"),
    },
    Migration {
        version: 4,
        description: "leases",
        sql: include_str!("../migrations/postgres/0004_leases.sql"),
    },
];

pub(crate) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at INTEGER NOT NULL
)";

pub(crate) const PG_CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)";

/// Decides which migrations to run, given what the database says was applied.
pub(crate) fn plan<'a>(
    known: &'a [Migration],
    applied: &[(i64, String)],
) -> Result<Vec<&'a Migration>, StoreError> {
    for (version, checksum) in applied {
        match known.iter().find(|m| m.version == *version) {
            None => {
                return Err(StoreError::Migration(format!(
                    "database schema version {version} is newer than this binary knows; upgrade mandate"
                )));
            }
            Some(m) if m.checksum() != *checksum => {
                return Err(StoreError::Migration(format!(
                    "migration {version} ({}) was changed after it was applied",
                    m.description
                )));
            }
            Some(_) => {}
        }
    }
    Ok(known
        .iter()
        .filter(|m| !applied.iter().any(|(v, _)| *v == m.version))
        .collect())
}
