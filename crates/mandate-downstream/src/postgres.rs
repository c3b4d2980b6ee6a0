//! A PostgreSQL role per task: `CREATE ROLE … LOGIN VALID UNTIL …` with table privileges, and at
//! the task's end `NOLOGIN`, its sessions terminated, its privileges dropped and the role gone.
//!
//! Every name that reaches SQL is checked against a strict form and then quoted; the password is
//! Mandate's own random text. Nothing from an agent reaches these statements.

use sqlx::{AssertSqlSafe, Connection, Executor};

use crate::DownstreamError;

/// Privileges a grant may name.
pub const PRIVILEGES: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
];

/// Privileges on one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableGrant {
    /// Upper-case privilege names, each one of [`PRIVILEGES`].
    pub privileges: Vec<String>,
    /// `table` or `schema.table`.
    pub table: String,
}

impl TableGrant {
    /// The grant in words, e.g. `SELECT ON orders`.
    pub fn describe(&self) -> String {
        format!("{} ON {}", self.privileges.join(", "), self.table)
    }
}

/// Checks an unquoted PostgreSQL identifier: a letter or `_`, then letters, digits or `_`, at most
/// 63 bytes.
pub fn check_identifier(s: &str) -> Result<(), DownstreamError> {
    let mut chars = s.chars();
    let ok = s.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(DownstreamError::Config(format!(
            "`{}` is not a plain PostgreSQL identifier (a letter or `_`, then letters, digits or `_`, at most 63)",
            s.chars().take(80).collect::<String>()
        )))
    }
}

/// Checks `table` or `schema.table`.
pub fn check_table(s: &str) -> Result<(), DownstreamError> {
    match s.split_once('.') {
        Some((schema, table)) => {
            check_identifier(schema)?;
            check_identifier(table)
        }
        None => check_identifier(s),
    }
}

/// The canonical name of a privilege, if it is one a grant may name.
pub fn check_privilege(s: &str) -> Result<String, DownstreamError> {
    let up = s.trim().to_ascii_uppercase();
    if PRIVILEGES.contains(&up.as_str()) {
        Ok(up)
    } else {
        Err(DownstreamError::Config(format!(
            "`{}` is not a table privilege; use {}",
            s.chars().take(40).collect::<String>(),
            PRIVILEGES.join(", ")
        )))
    }
}

/// PBKDF2 iterations of the verifier (PostgreSQL's default, `scram_iterations`).
const SCRAM_ITERATIONS: u32 = 4096;

/// The SCRAM-SHA-256 verifier of `password` (RFC 5802 section 3, RFC 7677), in the form
/// PostgreSQL stores and accepts in `PASSWORD '…'`: the server keeps only this, and the
/// password itself never reaches SQL, the server's logs or `pg_stat_statements`.
pub fn scram_verifier(password: &str) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use rand::RngCore;
    use sha2::{Digest, Sha256};
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salted: [u8; 32] =
        pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), &salt, SCRAM_ITERATIONS);
    let hmac = |key: &[u8], msg: &[u8]| -> Vec<u8> {
        // HMAC takes a key of any length, so this never fails.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new(&Default::default()));
        m.update(msg);
        m.finalize().into_bytes().to_vec()
    };
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(&client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key),
        b64.encode(server_key)
    )
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn quote_table(s: &str) -> String {
    s.split('.').map(quote_ident).collect::<Vec<_>>().join(".")
}

fn pg(e: impl std::fmt::Display) -> DownstreamError {
    DownstreamError::Downstream(format!("PostgreSQL: {e}"))
}

/// A role to create.
#[derive(Debug)]
pub struct RoleSpec<'a> {
    /// Its name (checked with [`check_identifier`]).
    pub name: &'a str,
    /// Its password.
    pub password: &'a str,
    /// When its password stops working, seconds since the epoch.
    pub valid_until: i64,
    /// What it may do.
    pub grants: &'a [TableGrant],
    /// Most sessions it may hold at once.
    pub connection_limit: u32,
}

/// Creates the role with its privileges, in one transaction: either all of it exists or none.
pub async fn create_role(admin_url: &str, spec: &RoleSpec<'_>) -> Result<(), DownstreamError> {
    check_identifier(spec.name)?;
    for g in spec.grants {
        check_table(&g.table)?;
        for p in &g.privileges {
            check_privilege(p)?;
        }
    }
    let until = time::OffsetDateTime::from_unix_timestamp(spec.valid_until)
        .map_err(|e| DownstreamError::Config(e.to_string()))?
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| DownstreamError::Config(e.to_string()))?;
    let role = quote_ident(spec.name);
    let mut conn = sqlx::PgConnection::connect(admin_url).await.map_err(pg)?;
    let mut tx = conn.begin().await.map_err(pg)?;
    let create = format!(
        "CREATE ROLE {role} LOGIN NOINHERIT NOCREATEDB NOCREATEROLE CONNECTION LIMIT {} PASSWORD {} VALID UNTIL {}",
        spec.connection_limit,
        quote_literal(&scram_verifier(spec.password)),
        quote_literal(&until)
    );
    (&mut *tx)
        .execute(sqlx::raw_sql(AssertSqlSafe(create)))
        .await
        .map_err(pg)?;
    for g in spec.grants {
        if let Some((schema, _)) = g.table.split_once('.') {
            let usage = format!("GRANT USAGE ON SCHEMA {} TO {role}", quote_ident(schema));
            (&mut *tx)
                .execute(sqlx::raw_sql(AssertSqlSafe(usage)))
                .await
                .map_err(pg)?;
        }
        let grant = format!(
            "GRANT {} ON TABLE {} TO {role}",
            g.privileges.join(", "),
            quote_table(&g.table)
        );
        (&mut *tx)
            .execute(sqlx::raw_sql(AssertSqlSafe(grant)))
            .await
            .map_err(pg)?;
    }
    tx.commit().await.map_err(pg)?;
    let _ = conn.close().await;
    Ok(())
}

async fn exists(conn: &mut sqlx::PgConnection, name: &str) -> Result<bool, DownstreamError> {
    Ok(sqlx::query("SELECT 1 FROM pg_roles WHERE rolname = $1")
        .bind(name)
        .fetch_optional(conn)
        .await
        .map_err(pg)?
        .is_some())
}

/// Whether the role exists.
pub async fn role_exists(admin_url: &str, name: &str) -> Result<bool, DownstreamError> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await.map_err(pg)?;
    let found = exists(&mut conn, name).await?;
    let _ = conn.close().await;
    Ok(found)
}

/// Ends the role: no new logins, its sessions terminated, its privileges and objects in this
/// database dropped, the role removed. Returns whether it existed. Safe to repeat.
pub async fn drop_role(admin_url: &str, name: &str) -> Result<bool, DownstreamError> {
    check_identifier(name)?;
    let role = quote_ident(name);
    let mut conn = sqlx::PgConnection::connect(admin_url).await.map_err(pg)?;
    if !exists(&mut conn, name).await? {
        let _ = conn.close().await;
        return Ok(false);
    }
    (&mut conn)
        .execute(sqlx::raw_sql(AssertSqlSafe(format!(
            "ALTER ROLE {role} NOLOGIN"
        ))))
        .await
        .map_err(pg)?;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(&mut conn)
    .await
    .map_err(pg)?;
    let mut tx = conn.begin().await.map_err(pg)?;
    (&mut *tx)
        .execute(sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP OWNED BY {role}"
        ))))
        .await
        .map_err(pg)?;
    (&mut *tx)
        .execute(sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP ROLE IF EXISTS {role}"
        ))))
        .await
        .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    let _ = conn.close().await;
    Ok(true)
}

/// `admin_url` with its user and password replaced: where the task's role connects.
pub fn login_url(admin_url: &str, user: &str, password: &str) -> Result<String, DownstreamError> {
    let mut u = url::Url::parse(admin_url)
        .map_err(|e| DownstreamError::Config(format!("the admin URL does not parse: {e}")))?;
    u.set_username(user)
        .and_then(|()| u.set_password(Some(password)))
        .map_err(|()| DownstreamError::Config("the admin URL has no host".into()))?;
    Ok(u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_quoted() {
        assert!(check_identifier("orders").is_ok());
        assert!(check_identifier("_x9").is_ok());
        for bad in ["", "9x", "a-b", "a\"b", "a b", "o;drop", &"x".repeat(64)] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
        assert!(check_table("sales.orders").is_ok());
        assert!(check_table("a.b.c").is_err());
        assert_eq!(check_privilege(" select ").unwrap(), "SELECT");
        assert!(check_privilege("ALL").is_err());
        assert!(check_privilege("SELECT; DROP").is_err());
        assert_eq!(quote_table("s.t"), "\"s\".\"t\"");
        assert_eq!(quote_literal("a'b"), "'a''b'");
    }

    #[test]
    fn verifiers_have_postgresql_s_form_and_a_fresh_salt() {
        let v = scram_verifier("pencil");
        let (head, keys) = v
            .split_once('$')
            .and_then(|(_, r)| r.split_once('$'))
            .unwrap();
        let (iterations, salt) = head.split_once(':').unwrap();
        assert!(v.starts_with("SCRAM-SHA-256$4096:"));
        assert_eq!(iterations, "4096");
        assert_eq!(salt.len(), 24);
        let (stored, server) = keys.split_once(':').unwrap();
        assert_eq!((stored.len(), server.len()), (44, 44));
        assert!(!v.contains("pencil"));
        assert_ne!(scram_verifier("pencil"), v);
    }

    #[test]
    fn login_url_replaces_the_user() {
        let u = login_url(
            "postgres://admin:pw@127.0.0.1:5432/shop?sslmode=disable",
            "r1",
            "p@ss",
        )
        .unwrap();
        assert_eq!(
            u,
            "postgres://r1:p%40ss@127.0.0.1:5432/shop?sslmode=disable"
        );
    }
}
