//! Admin commands: owners, agents, tasks, policies. They call the running broker's admin API.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::Global;
use crate::client::{AdminClient, seg};
use crate::config::Settings;
use crate::datadir::ADMIN_TOKEN_FILE;
use crate::output::{self, at, field, time};

pub(crate) fn admin(global: &Global, settings: &Settings) -> anyhow::Result<AdminClient> {
    let server = global
        .server
        .clone()
        .or_else(|| crate::env("MANDATE_SERVER"))
        .or_else(|| settings.public_url.clone())
        .unwrap_or_else(|| format!("http://{}", settings.listen));
    let token = if let Some(f) = &global.token_file {
        std::fs::read_to_string(f)
            .with_context(|| format!("cannot read token file `{}`", f.display()))?
    } else if let Some(t) = crate::env("MANDATE_TOKEN") {
        t
    } else {
        let f = settings.data_dir.join(ADMIN_TOKEN_FILE);
        std::fs::read_to_string(&f).map_err(|_| {
            anyhow::anyhow!(
                "no API token: pass --token-file, set MANDATE_TOKEN, or point --data-dir at the broker's data directory (which holds `{ADMIN_TOKEN_FILE}`)"
            )
        })?
    };
    AdminClient::new(&server, token.trim().to_string())
}

/// Owner commands.
#[derive(Subcommand, Debug)]
pub enum OwnerCmd {
    /// Add an owner (admin).
    Add {
        /// Owner id, e.g. `alice@example.com` or `payments-team`.
        id: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
    },
    /// List owners.
    List,
    /// Show one owner.
    Show {
        /// Owner id.
        id: String,
    },
    /// Remove an owner: its agents become orphaned and their tasks are revoked (admin).
    Remove {
        /// Owner id.
        id: String,
    },
    /// Personal API tokens of an owner.
    #[command(subcommand)]
    Token(TokenCmd),
}

/// API token commands.
#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Issue a token to an owner (admin). The token is printed once.
    Issue {
        /// Owner id.
        owner: String,
        /// Lifetime in days (1 to 366; default 90).
        #[arg(long)]
        days: Option<i64>,
        /// Label.
        #[arg(long)]
        name: Option<String>,
    },
    /// List an owner's tokens (never their values).
    List {
        /// Owner id.
        owner: String,
    },
    /// Revoke a token.
    Revoke {
        /// Owner id.
        owner: String,
        /// Token id (`tok_…`).
        token_id: String,
    },
}

pub async fn owner(global: &Global, settings: &Settings, cmd: OwnerCmd) -> anyhow::Result<()> {
    let c = admin(global, settings)?;
    match cmd {
        OwnerCmd::Add { id, name } => {
            let v = c
                .post("/admin/v1/owners", &json!({"id": id, "name": name}))
                .await?;
            show_owner(global, &v);
        }
        OwnerCmd::List => {
            let v = c.get("/admin/v1/owners").await?;
            if global.json {
                output::json(&v);
            } else {
                let rows = list(&v)
                    .map(|o| vec![field(o, "id"), field(o, "name"), time(o, "created_at")])
                    .collect();
                output::table(&["OWNER", "NAME", "ADDED"], rows);
            }
        }
        OwnerCmd::Show { id } => {
            let v = c.get(&format!("/admin/v1/owners/{}", seg(&id))).await?;
            show_owner(global, &v);
        }
        OwnerCmd::Remove { id } => {
            let v = c.delete(&format!("/admin/v1/owners/{}", seg(&id))).await?;
            if global.json {
                output::json(&v);
            } else {
                let orphans: Vec<String> = list(at(&v, "orphaned_agents"))
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect();
                println!(
                    "removed owner {id}; orphaned agents: {}",
                    if orphans.is_empty() {
                        "none".into()
                    } else {
                        orphans.join(", ")
                    }
                );
            }
        }
        OwnerCmd::Token(t) => match t {
            TokenCmd::Issue { owner, days, name } => {
                let v = c
                    .post(
                        &format!("/admin/v1/owners/{}/tokens", seg(&owner)),
                        &json!({"days": days, "name": name}),
                    )
                    .await?;
                if global.json {
                    output::json(&v);
                } else {
                    println!("{}", field(&v, "token"));
                    eprintln!(
                        "token {} for {owner}, expires {}; it is shown only this once",
                        field(&v, "id"),
                        time(&v, "expires_at")
                    );
                }
            }
            TokenCmd::List { owner } => {
                let v = c
                    .get(&format!("/admin/v1/owners/{}/tokens", seg(&owner)))
                    .await?;
                if global.json {
                    output::json(&v);
                } else {
                    let rows = list(&v)
                        .map(|t| {
                            vec![
                                field(t, "id"),
                                field(t, "name"),
                                time(t, "created_at"),
                                time(t, "expires_at"),
                                time(t, "revoked_at"),
                            ]
                        })
                        .collect();
                    output::table(&["TOKEN", "NAME", "ISSUED", "EXPIRES", "REVOKED"], rows);
                }
            }
            TokenCmd::Revoke { owner, token_id } => {
                c.delete(&format!(
                    "/admin/v1/owners/{}/tokens/{}",
                    seg(&owner),
                    seg(&token_id)
                ))
                .await?;
                println!("revoked {token_id}");
            }
        },
    }
    Ok(())
}

fn list(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn show_owner(global: &Global, v: &Value) {
    if global.json {
        output::json(v);
    } else {
        output::pairs(&[
            ("owner", field(v, "id")),
            ("name", field(v, "name")),
            ("added", time(v, "created_at")),
        ]);
    }
}

/// Agent commands.
#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Register an agent.
    Add(Box<AgentAdd>),
    /// List agents: owner, tier, active tasks, decisions in the window, last activity, and the
    /// flags that need a look (`orphaned`, `dormant`, `wide-envelope`, `unconfirmed`,
    /// `standing-privilege`, `suspended`).
    List {
        /// Days of decisions to count (default: the server's `governance.activity_window_days`).
        #[arg(long, value_name = "DAYS")]
        window_days: Option<i64>,
    },
    /// Show one agent: registration, envelope, active tasks, activity and flags.
    Show {
        /// Agent id.
        id: String,
        /// Days of decisions to count.
        #[arg(long, value_name = "DAYS")]
        window_days: Option<i64>,
    },
    /// Confirm, as its owner, that an agent is still needed (owner re-confirmation).
    Confirm {
        /// Agent id.
        id: String,
    },
    /// Kill switch: suspend an agent and revoke all its active tasks at once.
    Suspend {
        /// Agent id.
        id: String,
        /// Why (recorded in the audit).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Allow a suspended agent to open tasks again.
    Resume {
        /// Agent id.
        id: String,
    },
    /// Generate an Ed25519 key pair for an agent: writes the private key (PKCS#8 PEM, mode
    /// 0600) and prints the public key to register with `agent add --public-key`.
    Keygen {
        /// Where to write the private key.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// `agent add` arguments.
#[derive(Args, Debug)]
pub struct AgentAdd {
    /// Agent id (its OAuth client id), e.g. `support-bot` or a SPIFFE ID.
    id: String,
    /// Owner id (admins must give it; owners register for themselves).
    #[arg(long)]
    owner: Option<String>,
    /// Risk tier: `low`, `medium` or `high`.
    #[arg(long)]
    tier: String,
    /// What its tasks may ever ask for: `action:target` tokens, e.g. "read:cases call:search".
    #[arg(long)]
    envelope: String,
    /// Argument rules on envelope targets, as JSON: `{"send_money": {"amount": {"max": 500}}}`.
    #[arg(long, value_name = "JSON")]
    envelope_arguments: Option<String>,
    /// Ed25519 public key (base64url, 32 bytes) for private_key_jwt client assertions.
    /// Base64url keys may begin with `-`; such values are taken as the key.
    #[arg(long, value_name = "B64", allow_hyphen_values = true)]
    public_key: Option<String>,
    /// External JWT issuer (OIDC or SPIFFE) whose tokens identify the agent.
    #[arg(long, value_name = "URL")]
    jwt_issuer: Option<String>,
    /// JWKS of the external issuer: an http(s) URL or an absolute file path.
    #[arg(long, value_name = "URL|PATH", requires = "jwt_issuer")]
    jwks: Option<String>,
    /// Expected `sub` of external tokens (for SPIFFE, the SPIFFE ID).
    #[arg(long, requires = "jwt_issuer")]
    subject: Option<String>,
    /// Expected `aud` of external tokens (default: the broker's issuer URL).
    #[arg(long, requires = "jwt_issuer")]
    audience: Option<String>,
    /// Further claim external tokens must carry, as `name=value`; repeatable.
    #[arg(long = "claim", value_name = "NAME=VALUE", requires = "jwt_issuer")]
    claims: Vec<String>,
    /// SPIFFE ID of the X.509-SVID the agent presents over mutual TLS (RFC 8705
    /// `tls_client_auth`; needs `[server.tls]` with its trust domain).
    #[arg(long, value_name = "SPIFFE_ID")]
    spiffe_id: Option<String>,
    /// Intent used when the agent asks with a plain `scope`.
    #[arg(long)]
    intent: Option<String>,
    /// Intent class used with `--intent`.
    #[arg(long, default_value = "default")]
    intent_class: String,
    /// Free-form description.
    #[arg(long)]
    description: Option<String>,
}

pub async fn agent(global: &Global, settings: &Settings, cmd: AgentCmd) -> anyhow::Result<()> {
    if let AgentCmd::Keygen { out } = &cmd {
        return keygen(out);
    }
    let c = admin(global, settings)?;
    match cmd {
        AgentCmd::Add(a) => {
            let mut attestations = Vec::new();
            if let Some(k) = a.public_key {
                attestations.push(json!({"type": "private_key_jwt", "public_key": k.trim()}));
            }
            if let Some(iss) = a.jwt_issuer {
                let (Some(jwks), Some(subject)) = (a.jwks, a.subject) else {
                    bail!("--jwt-issuer needs --jwks and --subject");
                };
                let mut claims = BTreeMap::new();
                for kv in a.claims {
                    let Some((k, v)) = kv.split_once('=') else {
                        bail!("--claim `{kv}` is not NAME=VALUE");
                    };
                    claims.insert(k.to_string(), v.to_string());
                }
                attestations.push(json!({
                    "type": "external_jwt", "issuer": iss, "jwks": jwks, "subject": subject,
                    "audience": a.audience, "claims": claims,
                }));
            }
            if let Some(id) = a.spiffe_id {
                attestations.push(json!({"type": "x509_svid", "spiffe_id": id.trim()}));
            }
            if attestations.is_empty() {
                bail!(
                    "give the agent a way to prove its identity: --public-key, --jwt-issuer or --spiffe-id"
                );
            }
            let intent = a
                .intent
                .map(|text| json!({"text": text, "class": a.intent_class}));
            let envelope_arguments: Value = match &a.envelope_arguments {
                Some(j) => serde_json::from_str(j)
                    .map_err(|e| anyhow::anyhow!("--envelope-arguments is not JSON: {e}"))?,
                None => json!({}),
            };
            let body = json!({
                "id": a.id, "owner": a.owner, "tier": a.tier, "envelope": a.envelope,
                "envelope_arguments": envelope_arguments,
                "attestations": attestations, "default_intent": intent,
                "description": a.description,
            });
            let v = c.post("/admin/v1/agents", &body).await?;
            show_agent(global, &v);
        }
        AgentCmd::List { window_days } => {
            let v = c
                .get(&format!("/admin/v1/agents{}", window_query(window_days)))
                .await?;
            if global.json {
                output::json(&v);
            } else {
                let rows = list(&v)
                    .map(|a| {
                        let flags: Vec<String> = list(at(a, "flags"))
                            .filter_map(|f| f.as_str().map(str::to_string))
                            .collect();
                        vec![
                            field(a, "id"),
                            match a.get("owner") {
                                Some(Value::String(o)) => o.clone(),
                                _ => format!("(none; was {})", field(a, "former_owner")),
                            },
                            field(a, "tier"),
                            field(a, "status"),
                            list(at(a, "active_tasks")).count().to_string(),
                            decisions(a),
                            time(at(a, "activity"), "last_activity"),
                            if flags.is_empty() {
                                "-".into()
                            } else {
                                flags.join(",")
                            },
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "AGENT",
                        "OWNER",
                        "TIER",
                        "STATUS",
                        "ACTIVE",
                        "ALLOW/DENY/APPROVAL",
                        "LAST ACTIVITY",
                        "FLAGS",
                    ],
                    rows,
                );
            }
        }
        AgentCmd::Show { id, window_days } => {
            let v = c
                .get(&format!(
                    "/admin/v1/agents/{}{}",
                    seg(&id),
                    window_query(window_days)
                ))
                .await?;
            show_agent(global, &v);
        }
        AgentCmd::Confirm { id } => {
            let v = c
                .post(
                    &format!("/admin/v1/agents/{}/confirm", seg(&id)),
                    &json!({}),
                )
                .await?;
            show_agent(global, &v);
        }
        AgentCmd::Suspend { id, reason } => {
            let v = c
                .post(
                    &format!("/admin/v1/agents/{}/suspend", seg(&id)),
                    &json!({"reason": reason}),
                )
                .await?;
            show_agent(global, &v);
        }
        AgentCmd::Resume { id } => {
            let v = c
                .post(&format!("/admin/v1/agents/{}/resume", seg(&id)), &json!({}))
                .await?;
            show_agent(global, &v);
        }
        AgentCmd::Keygen { .. } => {}
    }
    Ok(())
}

fn window_query(days: Option<i64>) -> String {
    days.map(|d| format!("?window_days={d}"))
        .unwrap_or_default()
}

/// `allowed/denied/approval` counts of an agent view's activity.
fn decisions(a: &Value) -> String {
    match a.get("activity") {
        Some(x) => format!(
            "{}/{}/{}",
            field(x, "allowed"),
            field(x, "denied"),
            field(x, "needs_approval")
        ),
        None => "-".into(),
    }
}

fn keygen(out: &std::path::Path) -> anyhow::Result<()> {
    use base64::Engine;
    let key = mandate_crypto::client::AgentKey::generate();
    let der = key
        .signing_key()
        .to_pkcs8_der()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_slice());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    crate::datadir::write_private(out, pem.as_bytes())?;
    println!("{}", key.public_key());
    eprintln!(
        "private key written to {}; register the public key above with `mandate agent add --public-key`",
        out.display()
    );
    Ok(())
}

fn show_agent(global: &Global, v: &Value) {
    if global.json {
        output::json(v);
        return;
    }
    let envelope: Vec<String> = list(at(v, "envelope"))
        .flat_map(|g| {
            let id = field(g, "identifier");
            list(at(g, "actions"))
                .filter_map(|a| a.as_str().map(|a| format!("{a}:{id}")))
                .collect::<Vec<_>>()
        })
        .collect();
    let attest: Vec<String> = list(at(v, "attestations"))
        .map(|a| field(a, "type"))
        .collect();
    let flags: Vec<String> = list(at(v, "flags"))
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    output::pairs(&[
        ("agent", field(v, "id")),
        ("owner", field(v, "owner")),
        ("tier", field(v, "tier")),
        ("status", field(v, "status")),
        ("envelope", envelope.join(" ")),
        ("attestation", attest.join(", ")),
        (
            "flags",
            if flags.is_empty() {
                "-".into()
            } else {
                flags.join(", ")
            },
        ),
        ("registered", time(v, "created_at")),
        ("confirmation due", time(v, "confirmation_due")),
        ("standing privilege", field(v, "standing_privilege")),
        (
            "live leases",
            list(at(v, "leases"))
                .map(|l| {
                    format!(
                        "{} ({}, task {}, until {})",
                        field(l, "credential"),
                        field(l, "kind"),
                        field(l, "task"),
                        time(l, "expires_at")
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        (
            "high-risk writes",
            list(at(v, "high_risk_writes"))
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "decisions",
            match v.get("activity") {
                Some(a) => format!(
                    "{} allowed, {} denied, {} needed approval in {} days",
                    field(a, "allowed"),
                    field(a, "denied"),
                    field(a, "needs_approval"),
                    field(a, "window_days")
                ),
                None => "-".into(),
            },
        ),
        ("last activity", time(at(v, "activity"), "last_activity")),
        ("last task", time(at(v, "activity"), "last_task")),
    ]);
    let tasks: Vec<Vec<String>> = list(at(v, "active_tasks"))
        .map(|t| {
            vec![
                field(t, "id"),
                field(t, "intent_class"),
                field(t, "intent"),
                field(t, "scope"),
                time(t, "expires_at"),
            ]
        })
        .collect();
    if !tasks.is_empty() {
        println!();
        output::table(
            &["ACTIVE TASK", "CLASS", "INTENT", "SCOPE", "EXPIRES"],
            tasks,
        );
    }
}

/// Task commands.
#[derive(Subcommand, Debug)]
pub enum TaskCmd {
    /// List tasks, newest first.
    List {
        /// Only this agent's.
        #[arg(long)]
        agent: Option<String>,
        /// Only in this state: active, completed, expired, revoked, denied.
        #[arg(long)]
        state: Option<String>,
        /// At most this many (default 100).
        #[arg(long)]
        limit: Option<i64>,
    },
    /// Show one task.
    Show {
        /// Task id.
        id: String,
    },
    /// Propose a task for a request: the scope for the tools it needs, the prompt as its
    /// intent, and the values the prompt names (addresses, URLs, accounts, ids), as the
    /// `authorization_details` to open it with. Needs no broker: tools are looked up in the
    /// policy directory's catalog (or `--catalog`).
    Plan {
        /// The tools (or catalogued resources) the request needs, comma-separated, as agents
        /// name them (`mail.send_email,files.read`).
        #[arg(long, value_delimiter = ',', required = true)]
        tools: Vec<String>,
        /// The request, as the agent's planner saw it; `-` reads it from standard input.
        #[arg(long)]
        prompt: String,
        /// Intent class (default `default`).
        #[arg(long)]
        intent_class: Option<String>,
        /// Lifetime in seconds (default: the broker's).
        #[arg(long)]
        ttl: Option<i64>,
        /// Also pin each tool's destination arguments to the prompt's values: any other
        /// destination is then denied outright.
        #[arg(long)]
        strict: bool,
        /// Catalog file (default: `catalog.toml` in the policy directory).
        #[arg(long, value_name = "FILE")]
        catalog: Option<PathBuf>,
    },
    /// Revoke an active task at once.
    Revoke {
        /// Task id.
        id: String,
        /// Why (recorded in the audit).
        #[arg(long)]
        reason: Option<String>,
    },
}

pub async fn task(global: &Global, settings: &Settings, cmd: TaskCmd) -> anyhow::Result<()> {
    if let TaskCmd::Plan {
        tools,
        prompt,
        intent_class,
        ttl,
        strict,
        catalog,
    } = cmd
    {
        return plan_task(tools, prompt, intent_class, ttl, strict, catalog, settings);
    }
    let c = admin(global, settings)?;
    match cmd {
        TaskCmd::Plan { .. } => {}
        TaskCmd::List {
            agent,
            state,
            limit,
        } => {
            let mut q = Vec::new();
            if let Some(a) = agent {
                q.push(format!("agent={}", seg(&a)));
            }
            if let Some(s) = state {
                q.push(format!("state={}", seg(&s)));
            }
            if let Some(l) = limit {
                q.push(format!("limit={l}"));
            }
            let path = if q.is_empty() {
                "/admin/v1/tasks".to_string()
            } else {
                format!("/admin/v1/tasks?{}", q.join("&"))
            };
            let v = c.get(&path).await?;
            if global.json {
                output::json(&v);
            } else {
                let rows = list(&v)
                    .map(|t| {
                        vec![
                            field(t, "id"),
                            field(t, "agent"),
                            field(t, "state"),
                            field(at(t, "intent"), "class"),
                            time(t, "created_at"),
                            time(t, "expires_at"),
                        ]
                    })
                    .collect();
                output::table(
                    &["TASK", "AGENT", "STATE", "INTENT", "OPENED", "EXPIRES"],
                    rows,
                );
            }
        }
        TaskCmd::Show { id } => {
            let v = c.get(&format!("/admin/v1/tasks/{}", seg(&id))).await?;
            show_task(global, &v);
        }
        TaskCmd::Revoke { id, reason } => {
            let v = c
                .post(
                    &format!("/admin/v1/tasks/{}/revoke", seg(&id)),
                    &json!({"reason": reason}),
                )
                .await?;
            show_task(global, &v);
        }
    }
    Ok(())
}

fn plan_task(
    tools: Vec<String>,
    prompt: String,
    intent_class: Option<String>,
    ttl: Option<i64>,
    strict: bool,
    catalog: Option<PathBuf>,
    settings: &Settings,
) -> anyhow::Result<()> {
    use std::io::Read;
    let prompt = if prompt == "-" {
        let mut text = String::new();
        std::io::stdin()
            .take(mandate_core::model::MAX_INTENT_TEXT as u64 + 1)
            .read_to_string(&mut text)
            .context("cannot read the prompt from standard input")?;
        text
    } else {
        prompt
    };
    let path = catalog.unwrap_or_else(|| settings.policy_dir.join("catalog.toml"));
    let catalog = match std::fs::read_to_string(&path) {
        Ok(text) => mandate_policy::Catalog::parse(&text)
            .map_err(|e| anyhow::anyhow!("`{}`: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => mandate_policy::Catalog::default(),
        Err(e) => bail!("cannot read `{}`: {e}", path.display()),
    };
    let req = mandate_broker::plan::PlanRequest {
        tools,
        prompt,
        intent_class,
        ttl,
        strict,
    };
    let details = mandate_broker::plan::plan(&catalog, &req).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The plan is what an agent sends; it prints as JSON either way.
    output::json(&details);
    Ok(())
}

fn show_task(global: &Global, v: &Value) {
    if global.json {
        output::json(v);
        return;
    }
    let scope: Vec<String> = list(at(v, "scope"))
        .flat_map(|g| {
            let id = field(g, "identifier");
            list(at(g, "actions"))
                .filter_map(|a| a.as_str().map(|a| format!("{a}:{id}")))
                .collect::<Vec<_>>()
        })
        .collect();
    output::pairs(&[
        ("task", field(v, "id")),
        ("agent", field(v, "agent")),
        ("owner", field(v, "owner")),
        ("state", field(v, "state")),
        ("intent", field(at(v, "intent"), "text")),
        ("intent class", field(at(v, "intent"), "class")),
        ("scope", scope.join(" ")),
        ("opened", time(v, "created_at")),
        ("expires", time(v, "expires_at")),
        ("ended", time(v, "ended_at")),
        ("end reason", field(v, "end_reason")),
        (
            "key-bound",
            if v.get("jkt").is_some() {
                "yes (DPoP)".into()
            } else {
                "no".into()
            },
        ),
    ]);
}

/// Policy commands.
#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Validate a policy directory (one `.cedarschema`, `.cedar` files) without a broker.
    Check {
        /// Directory to check.
        dir: PathBuf,
    },
    /// Ask the running broker to reload its policy directory (admin). Same as SIGHUP. Active
    /// tasks the new policies no longer admit are revoked.
    Reload,
    /// Run a table of example requests with expected decisions against a policy directory:
    /// every `*.toml` in `DIR/tests` (or `--cases`). Exits non-zero if any case fails.
    Test {
        /// Policy directory.
        dir: PathBuf,
        /// Directory of test tables (default `DIR/tests`).
        #[arg(long, value_name = "DIR")]
        cases: Option<PathBuf>,
    },
}

pub async fn policy(global: &Global, settings: &Settings, cmd: PolicyCmd) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Check { dir } => match mandate_policy::PolicyBundle::load_dir(&dir) {
            Ok(b) => {
                if global.json {
                    output::json(
                        &json!({"ok": true, "policies": b.policy_ids(), "digest": b.digest()}),
                    );
                } else {
                    println!(
                        "ok: {} policies valid against the schema ({})",
                        b.len(),
                        b.digest()
                    );
                }
                Ok(())
            }
            Err(e) => {
                if global.json {
                    output::json(&json!({"ok": false, "problems": e.problems}));
                } else {
                    for p in &e.problems {
                        eprintln!("{p}");
                    }
                }
                bail!("policy set is invalid ({} problems)", e.problems.len())
            }
        },
        PolicyCmd::Test { dir, cases } => {
            let bundle = mandate_policy::PolicyBundle::load_dir(&dir).map_err(|e| {
                for p in &e.problems {
                    eprintln!("{p}");
                }
                anyhow::anyhow!("policy set is invalid ({} problems)", e.problems.len())
            })?;
            let cases = cases.unwrap_or_else(|| dir.join("tests"));
            let results = mandate_policy::testing::run_tests(&bundle, &cases)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let failed = results.iter().filter(|r| !r.passed).count();
            if global.json {
                output::json(&serde_json::to_value(&results)?);
            } else {
                for r in &results {
                    let mark = if r.passed { "ok  " } else { "FAIL" };
                    println!("{mark} {}", r.name);
                    if !r.passed {
                        println!(
                            "       expected {}{}, got {} by [{}]: {}",
                            r.expected.as_str(),
                            r.expected_policies
                                .as_ref()
                                .map(|p| format!(" by [{}]", p.join(", ")))
                                .unwrap_or_default(),
                            r.got.outcome.as_str(),
                            r.got.policies.join(", "),
                            r.got.reason
                        );
                    }
                }
                println!(
                    "\n{} cases, {} passed, {failed} failed",
                    results.len(),
                    results.len() - failed
                );
            }
            if failed > 0 {
                bail!("{failed} policy test cases failed");
            }
            Ok(())
        }
        PolicyCmd::Reload => {
            let v = admin(global, settings)?
                .post("/admin/v1/policies/reload", &json!({}))
                .await?;
            if global.json {
                output::json(&v);
            } else {
                println!("{}", field(&v, "result"));
            }
            Ok(())
        }
    }
}

/// Approval commands.
#[derive(Subcommand, Debug)]
pub enum ApprovalCmd {
    /// List approval requests, newest first.
    List {
        /// Only in this state: pending, granted, denied, used.
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one approval request, with the exact call it covers.
    Show {
        /// Approval id (`apr_…`).
        id: String,
    },
    /// Grant a request: the exact call it covers may go through once, before it expires.
    Grant {
        /// Approval id.
        id: String,
        /// A note for the record.
        #[arg(long)]
        note: Option<String>,
    },
    /// Refuse a request.
    Deny {
        /// Approval id.
        id: String,
        /// A note for the record (the agent's denial names it).
        #[arg(long)]
        note: Option<String>,
    },
}

pub async fn approval(
    global: &Global,
    settings: &Settings,
    cmd: ApprovalCmd,
) -> anyhow::Result<()> {
    let c = admin(global, settings)?;
    match cmd {
        ApprovalCmd::List { state } => {
            let path = match state {
                Some(s) => format!("/admin/v1/approvals?state={}", seg(&s)),
                None => "/admin/v1/approvals".into(),
            };
            let v = c.get(&path).await?;
            if global.json {
                output::json(&v);
            } else {
                let rows = list(&v)
                    .map(|a| {
                        vec![
                            field(a, "id"),
                            field(a, "state"),
                            field(a, "agent"),
                            format!("{} {}", field(a, "action"), field(a, "target")),
                            at(a, "arguments").to_string().chars().take(60).collect(),
                            time(a, "expires_at"),
                        ]
                    })
                    .collect();
                output::table(
                    &["APPROVAL", "STATE", "AGENT", "CALL", "ARGUMENTS", "EXPIRES"],
                    rows,
                );
            }
        }
        ApprovalCmd::Show { id } => {
            let v = c.get(&format!("/admin/v1/approvals/{}", seg(&id))).await?;
            show_approval(global, &v);
        }
        ApprovalCmd::Grant { id, note } => {
            let v = c
                .post(
                    &format!("/admin/v1/approvals/{}/grant", seg(&id)),
                    &json!({"note": note}),
                )
                .await?;
            show_approval(global, &v);
        }
        ApprovalCmd::Deny { id, note } => {
            let v = c
                .post(
                    &format!("/admin/v1/approvals/{}/deny", seg(&id)),
                    &json!({"note": note}),
                )
                .await?;
            show_approval(global, &v);
        }
    }
    Ok(())
}

fn show_approval(global: &Global, v: &Value) {
    if global.json {
        output::json(v);
        return;
    }
    output::pairs(&[
        ("approval", field(v, "id")),
        ("state", field(v, "state")),
        ("agent", field(v, "agent")),
        ("owner", field(v, "owner")),
        ("task", field(v, "task")),
        (
            "call",
            format!(
                "{} {}:{}",
                field(v, "action"),
                field(v, "target_kind"),
                field(v, "target")
            ),
        ),
        ("arguments", at(v, "arguments").to_string()),
        ("why", field(v, "reason")),
        ("requested", time(v, "created_at")),
        ("expires", time(v, "expires_at")),
        ("decided by", field(v, "decided_by")),
        ("note", field(v, "note")),
        ("used", time(v, "used_at")),
    ]);
}

/// Secret commands.
#[derive(Subcommand, Debug)]
pub enum SecretCmd {
    /// Set or rotate a brokered secret. The value is read from standard input (or `--file`),
    /// never from the command line. Upstreams that use it pick up the new value without a
    /// restart of the broker.
    Set {
        /// Name, e.g. `github_token`; referenced in the gateway config as `${secret:NAME}`.
        name: String,
        /// Read the value from this file instead of standard input.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// List secrets: names, versions, times (never values).
    List,
    /// Delete a secret.
    Delete {
        /// Name.
        name: String,
    },
}

pub async fn secret(global: &Global, settings: &Settings, cmd: SecretCmd) -> anyhow::Result<()> {
    let c = admin(global, settings)?;
    match cmd {
        SecretCmd::Set { name, file } => {
            use std::io::Read;
            let mut value = String::new();
            match &file {
                Some(f) => {
                    value = std::fs::read_to_string(f)
                        .with_context(|| format!("cannot read `{}`", f.display()))?;
                }
                None => {
                    std::io::stdin()
                        .take(64 * 1024 + 1)
                        .read_to_string(&mut value)
                        .context("cannot read the value from standard input")?;
                }
            }
            // One trailing newline is an artefact of `echo` and files, not part of the secret.
            let value = value.strip_suffix('\n').unwrap_or(&value);
            let value = value.strip_suffix('\r').unwrap_or(value);
            if value.is_empty() {
                bail!("the secret's value is empty");
            }
            let v = c
                .put(
                    &format!("/admin/v1/secrets/{}", seg(&name)),
                    &json!({"value": value}),
                )
                .await?;
            if global.json {
                output::json(&v);
            } else {
                println!("secret {name} set (version {})", field(&v, "version"));
            }
        }
        SecretCmd::List => {
            let v = c.get("/admin/v1/secrets").await?;
            if global.json {
                output::json(&v);
            } else {
                let rows = list(&v)
                    .map(|s| {
                        vec![
                            field(s, "name"),
                            field(s, "version"),
                            time(s, "created_at"),
                            time(s, "updated_at"),
                        ]
                    })
                    .collect();
                output::table(&["SECRET", "VERSION", "CREATED", "ROTATED"], rows);
            }
        }
        SecretCmd::Delete { name } => {
            c.delete(&format!("/admin/v1/secrets/{}", seg(&name)))
                .await?;
            println!("deleted secret {name}");
        }
    }
    Ok(())
}

/// Dynamic credential commands.
#[derive(Subcommand, Debug)]
pub enum CredentialCmd {
    /// List leases: which task holds which downstream credential, until when, and why it was
    /// revoked. Owners see their agents' leases.
    Leases {
        /// Only of this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only of this task.
        #[arg(long)]
        task: Option<String>,
        /// Only pending or live ones.
        #[arg(long)]
        open: bool,
        /// At most this many (1 to 1000).
        #[arg(long)]
        limit: Option<i64>,
    },
    /// Print the CA public key of an `ssh` credential, for sshd's `TrustedUserCAKeys`.
    SshCa {
        /// The credential's name.
        name: String,
    },
}

pub async fn credential(
    global: &Global,
    settings: &Settings,
    cmd: CredentialCmd,
) -> anyhow::Result<()> {
    let c = admin(global, settings)?;
    match cmd {
        CredentialCmd::Leases {
            agent,
            task,
            open,
            limit,
        } => {
            let mut q = vec![format!("open={open}")];
            if let Some(a) = agent {
                q.push(format!("agent={}", seg(&a)));
            }
            if let Some(t) = task {
                q.push(format!("task={}", seg(&t)));
            }
            if let Some(l) = limit {
                q.push(format!("limit={l}"));
            }
            let v = c.get(&format!("/admin/v1/leases?{}", q.join("&"))).await?;
            if global.json {
                output::json(&v);
            } else {
                let rows = list(&v)
                    .map(|l| {
                        vec![
                            field(l, "id"),
                            field(l, "credential"),
                            field(l, "kind"),
                            field(l, "agent"),
                            field(l, "task"),
                            field(l, "state"),
                            time(l, "expires_at"),
                            field(l, "end_reason"),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "LEASE",
                        "CREDENTIAL",
                        "KIND",
                        "AGENT",
                        "TASK",
                        "STATE",
                        "EXPIRES",
                        "ENDED BECAUSE",
                    ],
                    rows,
                );
            }
        }
        CredentialCmd::SshCa { name } => {
            let v = c
                .get(&format!("/v1/credentials/{}/ssh-ca", seg(&name)))
                .await?;
            match v.as_str() {
                Some(line) => println!("{}", line.trim()),
                None => bail!("the server did not answer with a public key"),
            }
        }
    }
    Ok(())
}

/// Signing key commands.
#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Start signing task credentials with a new key. The previous keys keep verifying (and
    /// stay in the JWKS) until every credential they signed has expired. Every replica on the
    /// store picks the new key up.
    Rotate,
}

/// Runs a signing key command.
pub async fn keys(global: &Global, settings: &Settings, cmd: KeysCmd) -> anyhow::Result<()> {
    let c = admin(global, settings)?;
    match cmd {
        KeysCmd::Rotate => {
            let v = c.post("/admin/v1/keys/rotate", &json!({})).await?;
            if global.json {
                output::json(&v);
            } else {
                output::pairs(&[
                    ("signing key", field(&v, "kid")),
                    (
                        "verifying",
                        list(at(&v, "verifying"))
                            .filter_map(|k| k.as_str().map(str::to_string))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                ]);
            }
        }
    }
    Ok(())
}
