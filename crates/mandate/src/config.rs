//! Configuration: a TOML file (optional) with environment overrides, read into raw types that
//! refuse unknown keys and then checked into [`Settings`]. The environment is read through a
//! function, so tests never touch the process environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use mandate_core::Tier;
use serde::Deserialize;

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 256 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    tokens: RawTokens,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    attestation: RawAttestation,
    #[serde(default)]
    budgets: RawBudgets,
    #[serde(default)]
    approvals: RawApprovals,
    #[serde(default)]
    governance: RawGovernance,
    #[serde(default)]
    gateway: Option<mandate_gateway::GatewayConfig>,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    console: RawConsole,
    /// Dynamic credentials: `[[credentials]]`.
    #[serde(default)]
    credentials: Vec<mandate_broker::CredentialSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    oidc: Option<RawOidc>,
}

/// `[console.oidc]`: the OpenID provider people may sign in to the console with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    issuer: String,
    client_id: String,
    client_secret_file: Option<PathBuf>,
    #[serde(default)]
    admins: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGovernance {
    reconfirm_days: Option<i64>,
    dormant_days: Option<i64>,
    activity_window_days: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    public_url: Option<String>,
    tls: Option<RawTls>,
}

/// `[server.tls]`: serve HTTPS, and attest agents by X.509-SVID over mutual TLS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    trust_domains: Vec<RawTrustDomain>,
}

/// `[[server.tls.trust_domains]]`: a SPIFFE trust domain and its bundle of CAs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrustDomain {
    name: String,
    bundle: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    url: Option<String>,
    durability: Option<mandate_store::Durability>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    default_ttl: Option<i64>,
    max_ttl: Option<i64>,
    assertion_max_lifetime: Option<i64>,
    leeway: Option<i64>,
    dpop_required_tiers: Option<Vec<Tier>>,
    dpop_registered_key_tiers: Option<Vec<Tier>>,
    dpop_max_age: Option<i64>,
    api_token_days: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudgets {
    suspend_after_denied: Option<std::collections::BTreeMap<Tier, u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    ttl_seconds: Option<i64>,
    max_wait_seconds: Option<i64>,
    max_open_per_task: Option<i64>,
    webhook_url: Option<String>,
    webhook_secret_file: Option<PathBuf>,
    webhook_attempts: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttestation {
    jwks_cache_seconds: Option<i64>,
    jwks_min_refresh_seconds: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    sync_decisions: Option<bool>,
    arguments: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<LogFormat>,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// JSON lines.
    Json,
}

/// Command-line values that override the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub store: Option<String>,
    pub policy_dir: Option<PathBuf>,
}

/// Checked settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Public URL, or `None` to derive it from the bound address.
    pub public_url: Option<String>,
    pub store_url: String,
    pub durability: mandate_store::Durability,
    pub policy_dir: PathBuf,
    /// Whether the policy dir is the data dir's default one (seeded with the shipped pack).
    pub policy_dir_is_default: bool,
    pub default_ttl: i64,
    pub max_ttl: i64,
    pub assertion_max_lifetime: i64,
    pub leeway: i64,
    pub dpop_required: Vec<Tier>,
    pub dpop_registered_key: Vec<Tier>,
    pub dpop_max_age: i64,
    pub api_token_days: i64,
    pub sync_decisions: bool,
    pub jwks_cache_seconds: i64,
    pub jwks_min_refresh_seconds: i64,
    pub audit_arguments: bool,
    pub suspend_after_denied: std::collections::BTreeMap<Tier, u64>,
    pub approval_ttl: i64,
    pub approval_max_wait: i64,
    pub approval_max_open_per_task: usize,
    pub webhook: Option<mandate_broker::Webhook>,
    /// Days an owner's confirmation of an agent lasts (`None`: not required).
    pub reconfirm_days: Option<i64>,
    pub dormant_days: i64,
    pub activity_window_days: i64,
    pub gateway: Option<mandate_gateway::GatewayConfig>,
    /// The key-encryption key for brokered secrets, from `MANDATE_KEK` (else the data dir's).
    pub kek_env: Option<String>,
    pub log_level: String,
    pub log_format: LogFormat,
    /// The OpenID provider for console sign-in, if any.
    pub oidc: Option<mandate_broker::OidcProvider>,
    /// Dynamic credentials (`[[credentials]]`).
    pub credentials: Vec<mandate_broker::Credential>,
    /// TLS for the listener (`[server.tls]`), with the SPIFFE trust domains of agents.
    pub tls: Option<mandate_server::tls::TlsSettings>,
}

fn positive(name: &str, v: i64, max: i64) -> anyhow::Result<i64> {
    if v < 1 || v > max {
        bail!("`{name}` must be between 1 and {max}, got {v}");
    }
    Ok(v)
}

impl Settings {
    /// Reads `file` (if given), then the environment (`env`), then `over`.
    pub fn load(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        over: &Overrides,
    ) -> anyhow::Result<Self> {
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| env("MANDATE_CONFIG").map(PathBuf::from));
        let raw: RawConfig = match &file {
            Some(path) => {
                let meta = std::fs::metadata(path)
                    .with_context(|| format!("cannot read config `{}`", path.display()))?;
                if meta.len() > MAX_CONFIG_BYTES {
                    bail!(
                        "config `{}` is larger than {MAX_CONFIG_BYTES} bytes",
                        path.display()
                    );
                }
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config `{}`", path.display()))?;
                toml::from_str(&text).map_err(|e| {
                    anyhow::anyhow!("config `{}`: {}", path.display(), e.to_string().trim())
                })?
            }
            None => RawConfig::default(),
        };
        let data_dir = over
            .data_dir
            .clone()
            .or_else(|| env("MANDATE_DATA_DIR").map(PathBuf::from))
            .or(raw.data_dir)
            .unwrap_or_else(|| PathBuf::from("mandate-data"));
        let listen = over
            .listen
            .clone()
            .or_else(|| env("MANDATE_LISTEN"))
            .or(raw.server.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen
            .parse()
            .map_err(|_| anyhow::anyhow!("listen address `{listen}` is not host:port"))?;
        let public_url = over
            .public_url
            .clone()
            .or_else(|| env("MANDATE_PUBLIC_URL"))
            .or(raw.server.public_url);
        if let Some(u) = &public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            bail!("public URL `{u}` must start with http:// or https://");
        }
        let store_url = over
            .store
            .clone()
            .or_else(|| env("MANDATE_STORE"))
            .or(raw.store.url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("mandate.db").display()));
        let explicit_policy = over
            .policy_dir
            .clone()
            .or_else(|| env("MANDATE_POLICY_DIR").map(PathBuf::from))
            .or(raw.policy.dir);
        let policy_dir_is_default = explicit_policy.is_none();
        let policy_dir = explicit_policy.unwrap_or_else(|| data_dir.join("policies"));
        let t = raw.tokens;
        let max_ttl = positive("tokens.max_ttl", t.max_ttl.unwrap_or(8 * 3600), 7 * 86_400)?;
        let default_ttl = positive("tokens.default_ttl", t.default_ttl.unwrap_or(600), max_ttl)?;
        let mut suspend = std::collections::BTreeMap::from([
            (Tier::Low, 20),
            (Tier::Medium, 10),
            (Tier::High, 5),
        ]);
        for (tier, n) in raw.budgets.suspend_after_denied.unwrap_or_default() {
            if n == 0 {
                bail!("`budgets.suspend_after_denied.{tier}` must be at least 1");
            }
            suspend.insert(tier, n);
        }
        let oidc = match raw.console.oidc {
            None => None,
            Some(o) => {
                let issuer = o.issuer.trim_end_matches('/').to_string();
                let u = url::Url::parse(&issuer)
                    .with_context(|| format!("`console.oidc.issuer` `{issuer}` is not a URL"))?;
                let loopback = matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
                if u.scheme() != "https" && !(u.scheme() == "http" && loopback) {
                    bail!("`console.oidc.issuer` must be https (http only on loopback)");
                }
                if o.client_id.is_empty() || o.client_id.len() > 256 {
                    bail!("`console.oidc.client_id` must be 1 to 256 characters");
                }
                let secret = match (env("MANDATE_OIDC_CLIENT_SECRET"), o.client_secret_file) {
                    (Some(s), _) => Some(s),
                    (None, Some(f)) => Some(
                        std::fs::read_to_string(&f)
                            .with_context(|| {
                                format!("cannot read OIDC client secret `{}`", f.display())
                            })?
                            .trim()
                            .to_string(),
                    ),
                    (None, None) => None,
                };
                Some(mandate_broker::OidcProvider {
                    issuer,
                    client_id: o.client_id,
                    client_secret: secret.map(mandate_crypto::SecretString::new),
                    admins: o.admins,
                })
            }
        };
        let a = raw.approvals;
        let webhook = match a.webhook_url {
            None => None,
            Some(url) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    bail!("`approvals.webhook_url` must be an http(s) URL");
                }
                let secret = match (env("MANDATE_WEBHOOK_SECRET"), a.webhook_secret_file) {
                    (Some(s), _) => s,
                    (None, Some(f)) => std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read webhook secret `{}`", f.display()))?
                        .trim()
                        .to_string(),
                    (None, None) => bail!(
                        "`approvals.webhook_url` needs a secret: `approvals.webhook_secret_file` or MANDATE_WEBHOOK_SECRET"
                    ),
                };
                if secret.len() < 16 {
                    bail!("the webhook secret must be at least 16 characters");
                }
                Some(mandate_broker::Webhook {
                    url,
                    secret: mandate_crypto::SecretString::new(secret),
                    attempts: a.webhook_attempts.unwrap_or(5).clamp(1, 20),
                })
            }
        };
        let log_level = env("MANDATE_LOG")
            .or(raw.log.level)
            .unwrap_or_else(|| "info".into());
        Ok(Settings {
            listen,
            public_url,
            store_url,
            durability: raw.store.durability.unwrap_or_default(),
            policy_dir,
            policy_dir_is_default,
            default_ttl,
            max_ttl,
            assertion_max_lifetime: positive(
                "tokens.assertion_max_lifetime",
                t.assertion_max_lifetime.unwrap_or(3600),
                86_400,
            )?,
            leeway: positive("tokens.leeway", t.leeway.unwrap_or(30), 300)?,
            dpop_required: t.dpop_required_tiers.unwrap_or_else(|| vec![Tier::High]),
            dpop_registered_key: t
                .dpop_registered_key_tiers
                .unwrap_or_else(|| vec![Tier::High]),
            dpop_max_age: positive("tokens.dpop_max_age", t.dpop_max_age.unwrap_or(60), 600)?,
            api_token_days: positive("tokens.api_token_days", t.api_token_days.unwrap_or(90), 366)?,
            sync_decisions: raw.audit.sync_decisions.unwrap_or(true),
            audit_arguments: raw.audit.arguments.unwrap_or(false),
            suspend_after_denied: suspend,
            approval_ttl: positive(
                "approvals.ttl_seconds",
                a.ttl_seconds.unwrap_or(900),
                7 * 86_400,
            )?,
            approval_max_wait: a.max_wait_seconds.unwrap_or(60).clamp(0, 600),
            approval_max_open_per_task: usize::try_from(positive(
                "approvals.max_open_per_task",
                a.max_open_per_task.unwrap_or(10),
                1000,
            )?)
            .unwrap_or(10),
            webhook,
            reconfirm_days: raw
                .governance
                .reconfirm_days
                .map(|d| positive("governance.reconfirm_days", d, 3660))
                .transpose()?,
            dormant_days: positive(
                "governance.dormant_days",
                raw.governance.dormant_days.unwrap_or(30),
                3660,
            )?,
            activity_window_days: positive(
                "governance.activity_window_days",
                raw.governance.activity_window_days.unwrap_or(7),
                mandate_broker::MAX_WINDOW_DAYS,
            )?,
            gateway: match raw.gateway {
                Some(g) => {
                    mandate_gateway::config::check(&g).map_err(|e| anyhow::anyhow!("{e}"))?;
                    Some(g)
                }
                None => None,
            },
            kek_env: env("MANDATE_KEK"),
            jwks_cache_seconds: positive(
                "attestation.jwks_cache_seconds",
                raw.attestation.jwks_cache_seconds.unwrap_or(300),
                86_400,
            )?,
            jwks_min_refresh_seconds: raw
                .attestation
                .jwks_min_refresh_seconds
                .unwrap_or(30)
                .clamp(0, 3600),
            log_level,
            log_format: raw.log.format.unwrap_or_default(),
            oidc,
            credentials: mandate_broker::check_credentials(&raw.credentials)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            tls: raw.server.tls.map(|t| mandate_server::tls::TlsSettings {
                cert_file: t.cert_file,
                key_file: t.key_file,
                trust_domains: t
                    .trust_domains
                    .into_iter()
                    .map(|d| (d.name, d.bundle))
                    .collect(),
            }),
            data_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_need_no_file() {
        let s = Settings::load(None, &no_env, &Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.policy_dir, PathBuf::from("mandate-data/policies"));
        assert!(s.store_url.ends_with("mandate-data/mandate.db"));
        assert_eq!(s.dpop_required, vec![Tier::High]);
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.toml");
        std::fs::write(
            &f,
            "data_dir = \"/srv/m\"\n[server]\nlisten = \"0.0.0.0:9000\"\n",
        )
        .unwrap();
        let env = |k: &str| (k == "MANDATE_LISTEN").then(|| "127.0.0.1:7000".to_string());
        let s = Settings::load(Some(&f), &env, &Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(s.data_dir, PathBuf::from("/srv/m"));
        let over = Overrides {
            listen: Some("127.0.0.1:6000".into()),
            ..Overrides::default()
        };
        let s = Settings::load(Some(&f), &env, &over).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:6000");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.toml");
        std::fs::write(&f, "[server]\nlisen = \"x\"\n").unwrap();
        let e = Settings::load(Some(&f), &no_env, &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("unknown field `lisen`"), "{e}");
        std::fs::write(&f, "[tokens]\ndefault_ttl = 0\n").unwrap();
        let e = Settings::load(Some(&f), &no_env, &Overrides::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("`tokens.default_ttl` must be between 1"),
            "{e}"
        );
    }

    #[test]
    fn credentials_and_tls_sections_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.toml");
        let refused = |text: &str| {
            std::fs::write(&f, text).unwrap();
            format!(
                "{:#}",
                Settings::load(Some(&f), &no_env, &Overrides::default()).unwrap_err()
            )
        };
        let e = refused(
            "[[credentials]]\nname = \"db\"\nkind = \"ftp\"\n[[credentials.grants]]\nscope = \"read:x\"\n",
        );
        assert!(e.contains("kind `ftp` is not one of"), "{e}");
        let e = refused(
            "[[credentials]]\nname = \"db\"\nkind = \"postgres\"\nadmin_secret = \"a\"\nlimit = 3\n",
        );
        assert!(e.contains("unknown field `limit`"), "{e}");
        let e = refused(
            "[[credentials]]\nname = \"db\"\nkind = \"postgres\"\nadmin_secret = \"a\"\n\
             [[credentials.grants]]\nscope = \"read:x\"\nprivileges = [\"SELECT\"]\ntables = [\"x; DROP TABLE y\"]\n",
        );
        assert!(e.contains("not a plain PostgreSQL identifier"), "{e}");
        let e = refused("[server.tls]\ncert_file = \"/c\"\n");
        assert!(e.contains("missing field `key_file`"), "{e}");
        let e = refused("[server.tls]\ncert_file = \"/c\"\nkey_file = \"/k\"\nca = \"/x\"\n");
        assert!(e.contains("unknown field `ca`"), "{e}");
        // A valid set loads.
        std::fs::write(
            &f,
            "[[credentials]]\nname = \"api\"\nkind = \"jwt\"\naudience = \"https://api.example\"\n\
             [[credentials.grants]]\nscope = \"read:tickets\"\n",
        )
        .unwrap();
        let s = Settings::load(Some(&f), &no_env, &Overrides::default()).unwrap();
        assert_eq!(s.credentials.len(), 1);
    }
}
