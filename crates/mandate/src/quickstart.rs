//! `mandate quickstart`: a throwaway broker on a temporary data directory, and one demo task
//! walked through allow, deny, completion, refusal after completion, and audit verification, all
//! over the real HTTP API.

use anyhow::{Context, bail};
use mandate_core::audit::ChainVerifier;
use mandate_crypto::client::AgentKey;
use serde_json::{Value, json};

use crate::client::AdminClient;
use crate::config::{Overrides, Settings};
use crate::output::at;
use crate::serve;

const OWNER: &str = "demo@example.com";
const AGENT: &str = "support-bot";

fn step(n: u32, text: &str) {
    println!("\n{n}. {text}");
}

fn detail(text: &str) {
    println!("   {text}");
}

async fn decide(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    action: &str,
    target: &str,
) -> anyhow::Result<(u16, Value)> {
    let resp = http
        .post(format!("{base}/v1/decide"))
        .bearer_auth(token)
        .json(&json!({"action": action, "resource": {"type": "resource", "id": target}}))
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

pub async fn run(keep: bool) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("mandate-quickstart-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let over = Overrides {
        data_dir: Some(dir.path().to_path_buf()),
        listen: Some("127.0.0.1:0".into()),
        ..Overrides::default()
    };
    let settings = Settings::load(None, &|_| None, &over)?;
    let running = serve::start(&settings).await?;
    let base = running.issuer.clone();
    println!("Mandate quickstart");
    println!("   broker    {base}");
    println!("   data dir  {}", dir.path().display());
    println!(
        "   policies  {} (the shipped pack)",
        settings.policy_dir.display()
    );

    let token_file = running
        .admin_token_file
        .clone()
        .context("the bootstrap admin token was not created")?;
    let admin_token = std::fs::read_to_string(&token_file)?;
    let admin = AdminClient::new(&base, admin_token.trim().to_string())?;
    let http = reqwest::Client::new();

    step(1, "An owner is accountable for every agent.");
    admin
        .post(
            "/admin/v1/owners",
            &json!({"id": OWNER, "name": "Demo Owner"}),
        )
        .await?;
    detail(&format!("owner `{OWNER}` added"));

    step(
        2,
        "The agent is registered with its own key, a tier and an envelope.",
    );
    let key = AgentKey::generate();
    let envelope = "read:tickets write:tickets call:search_kb";
    admin
        .post(
            "/admin/v1/agents",
            &json!({
                "id": AGENT, "owner": OWNER, "tier": "low", "envelope": envelope,
                "attestations": [{"type": "private_key_jwt", "public_key": key.public_key()}],
            }),
        )
        .await?;
    detail(&format!("agent `{AGENT}` (tier low), envelope: {envelope}"));
    detail("the envelope is what its tasks may ever ask for; by itself it grants nothing");

    step(
        3,
        "The agent opens a task: it proves its identity and states its intent and scope.",
    );
    let details = json!([{
        "type": "mandate_task",
        "intent": "summarise ticket 42 for the customer",
        "intent_class": "support",
        "ttl": 300,
        "access": [{"identifier": "tickets", "actions": ["read"]}, {"identifier": "search_kb", "actions": ["call"]}],
    }]);
    let assertion = key
        .assertion(AGENT, &format!("{base}/oauth/token"), 60)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let resp = http
        .post(format!("{base}/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", mandate_broker::JWT_BEARER),
            ("client_assertion", assertion.as_str()),
            ("authorization_details", details.to_string().as_str()),
        ])
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    if !status.is_success() {
        bail!("task was not opened: {body}");
    }
    let token = at(&body, "access_token")
        .as_str()
        .unwrap_or_default()
        .to_string();
    let task_id = at(&body, "task_id")
        .as_str()
        .unwrap_or_default()
        .to_string();
    detail(&format!(
        "task {task_id} opened, scope `{}`",
        at(&body, "scope").as_str().unwrap_or("")
    ));
    detail(&format!(
        "its credential is a {}-second JWT naming the task (never the agent's standing rights)",
        at(&body, "expires_in")
    ));

    step(4, "Inside its scope: the agent reads the ticket.");
    let (_, v) = decide(&http, &base, &token, "read", "tickets").await?;
    detail(&format!(
        "read tickets -> {} ({})",
        at(&v, "decision").as_str().unwrap_or("?").to_uppercase(),
        at(&v, "reason").as_str().unwrap_or("")
    ));

    step(
        5,
        "Outside its scope: the agent tries to change the ticket.",
    );
    let (_, v) = decide(&http, &base, &token, "write", "tickets").await?;
    detail(&format!(
        "write tickets -> {} ({})",
        at(&v, "decision").as_str().unwrap_or("?").to_uppercase(),
        at(&v, "reason").as_str().unwrap_or("")
    ));
    detail("its envelope would allow writing tickets, but this task did not ask for it");

    step(
        6,
        "The agent completes its task by revoking its credential (RFC 7009).",
    );
    let assertion = key
        .assertion(AGENT, &format!("{base}/oauth/token"), 60)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let resp = http
        .post(format!("{base}/oauth/revoke"))
        .form(&[
            ("client_assertion_type", mandate_broker::JWT_BEARER),
            ("client_assertion", assertion.as_str()),
            ("token", token.as_str()),
        ])
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!(
            "revocation failed: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    detail(&format!(
        "task {task_id} completed; its privilege ended with it"
    ));

    step(7, "The old credential is used again after completion.");
    let (status, v) = decide(&http, &base, &token, "read", "tickets").await?;
    detail(&format!(
        "read tickets -> REFUSED, HTTP {status} ({})",
        at(&v, "error_description").as_str().unwrap_or("")
    ));

    step(8, "Every step is in the hash-chained audit trail.");
    let store = running.broker.store().clone();
    let head = store
        .audit_head()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let records = store
        .audit_range(1, 100_000)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut verifier = ChainVerifier::new();
    for r in &records {
        verifier.push(r);
    }
    let report = verifier.finish(head.as_ref().map(|(s, h)| (*s, h.as_str())));
    if !report.ok() {
        bail!("audit chain does not verify: {:?}", report.problems);
    }
    detail(&format!(
        "audit verify: ok, {} records, chain intact",
        report.records
    ));
    let tid = mandate_core::TaskId::parse(task_id.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let steps = store
        .audit_for_tasks(std::slice::from_ref(&tid))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    detail(&format!("audit trace {task_id}:"));
    for r in &steps {
        if let Ok(e) = r.event() {
            let what = match (&e.action, &e.resource) {
                (Some(a), Some(r)) => format!("{a} {r}"),
                (Some(a), None) => a.clone(),
                _ => String::new(),
            };
            println!(
                "     #{:<3} {:<18} {:<22} {:<6} {}",
                r.seq,
                e.kind.as_str(),
                what,
                e.decision.clone().unwrap_or_default(),
                e.policies.join(", ")
            );
        }
    }

    running.stop().await?;
    if keep {
        let path = dir.keep();
        println!("\nkept the data directory: {}", path.display());
        println!(
            "try: mandate --data-dir {} audit trace {task_id}",
            path.display()
        );
        println!(
            "or serve it (mandate serve --data-dir {0}) and open http://127.0.0.1:8080/console, signing in with the token in {0}/admin.token",
            path.display()
        );
    }
    println!("\ndone.");
    Ok(())
}
