//! Audit commands. They read the store directly, so an investigator needs the data (or store
//! URL), not a running broker.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use mandate_core::TaskId;
use mandate_core::audit::{AuditEvent, AuditRecord, ChainVerifier};
use mandate_store::{Store, StoreOptions, WorkflowNode};
use serde_json::json;

use crate::Global;
use crate::config::Settings;
use crate::output;

/// Records read per page.
const PAGE: i64 = 5000;

/// Audit commands.
#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Check the hash chain: report every edited, deleted or reordered record. Exits non-zero
    /// if the chain does not verify.
    Verify,
    /// Print a task's workflow as a tree: the task that started it and every task delegated
    /// from it, each with its agent, intent and steps: what was asked, what was decided, by
    /// which policy.
    Trace {
        /// Task id.
        task: String,
    },
    /// Write every record, one JSON object per line, with its chain hashes.
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Write to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Start at this sequence number.
        #[arg(long, default_value_t = 1)]
        from: i64,
    },
}

/// Export formats.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ExportFormat {
    /// JSON lines.
    Jsonl,
}

async fn open(settings: &Settings) -> anyhow::Result<Store> {
    let url = &settings.store_url;
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"));
    if let Some(p) = path
        && !std::path::Path::new(p).exists()
    {
        bail!("no store at `{p}`: point --data-dir (or MANDATE_STORE) at the broker's data");
    }
    Store::open(&StoreOptions {
        url: url.clone(),
        durability: settings.durability,
        max_batch: 1,
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot open store: {e}"))
}

pub async fn run(global: &Global, settings: &Settings, cmd: AuditCmd) -> anyhow::Result<()> {
    let store = open(settings).await?;
    match cmd {
        AuditCmd::Verify => verify(global, &store).await,
        AuditCmd::Trace { task } => trace(global, &store, &task).await,
        AuditCmd::Export {
            format: ExportFormat::Jsonl,
            output,
            from,
        } => export(&store, output, from).await,
    }
}

async fn verify(global: &Global, store: &Store) -> anyhow::Result<()> {
    let head = store
        .audit_head()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut v = ChainVerifier::new();
    let mut from = 1;
    loop {
        let page = store
            .audit_range(from, PAGE)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        for r in &page {
            v.push(r);
        }
    }
    let report = v.finish(head.as_ref().map(|(s, h)| (*s, h.as_str())));
    if global.json {
        output::json(&json!({
            "ok": report.ok(), "records": report.records, "last_seq": report.last_seq,
            "last_hash": report.last_hash, "problems": report.problems,
        }));
    } else if report.ok() {
        println!(
            "ok: {} records, chain intact (head {} {})",
            report.records, report.last_seq, report.last_hash
        );
    } else {
        for p in &report.problems {
            println!("{}", p.message);
        }
    }
    if report.ok() {
        Ok(())
    } else {
        bail!(
            "audit chain does not verify: {} problems in {} records",
            report.problems.len(),
            report.records
        )
    }
}

fn event_line(r: &AuditRecord, e: &AuditEvent) -> Vec<String> {
    let dash = |o: &Option<String>| {
        o.as_deref()
            .map(crate::output::safe)
            .unwrap_or_else(|| "-".into())
    };
    vec![
        r.seq.to_string(),
        e.time.rfc3339(),
        e.kind.as_str().to_string(),
        dash(&e.action),
        dash(&e.resource),
        dash(&e.decision),
        if e.policies.is_empty() {
            "-".into()
        } else {
            e.policies.join(", ")
        },
        dash(&e.reason),
    ]
}

async fn trace(global: &Global, store: &Store, task: &str) -> anyhow::Result<()> {
    let id = TaskId::parse(task).map_err(|e| anyhow::anyhow!("{e}"))?;
    let w = mandate_store::workflow(store, &id, |_| true)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_context(|| format!("task `{id}` does not exist"))?;
    if global.json {
        let asked: Vec<_> = w
            .nodes()
            .into_iter()
            .filter(|n| n.task.id == w.task.id)
            .flat_map(|n| n.steps.iter())
            .map(|(r, e)| json!({"seq": r.seq, "hash": r.hash, "event": e}))
            .collect();
        let tree: Vec<_> = w.tops.iter().map(node_json).collect();
        output::json(&json!({
            "task": w.task,
            "steps": asked,
            "root": w.root,
            "tasks": w.tasks,
            "tree": tree,
        }));
        return Ok(());
    }
    println!(
        "workflow of task {} (root {}): {} task{}, {} agent{}",
        w.task.id,
        w.root,
        w.tasks,
        if w.tasks == 1 { "" } else { "s" },
        w.agents,
        if w.agents == 1 { "" } else { "s" },
    );
    for x in &w.tops {
        print_node(x, 0);
    }
    Ok(())
}

fn node_json(n: &WorkflowNode) -> serde_json::Value {
    let t = &n.task;
    let own: Vec<_> = n
        .steps
        .iter()
        .map(|(r, e)| json!({"seq": r.seq, "hash": r.hash, "event": e}))
        .collect();
    let kids: Vec<_> = n.children.iter().map(node_json).collect();
    json!({
        "task_id": t.id,
        "agent": t.agent,
        "owner": t.owner,
        "intent": t.intent.text,
        "intent_class": t.intent.class,
        "state": t.state,
        "scope": t.scope.to_string(),
        "depth": t.depth(),
        "steps": own,
        "children": kids,
    })
}

fn print_node(n: &WorkflowNode, depth: usize) {
    let t = &n.task;
    let pad = "    ".repeat(depth);
    println!(
        "{pad}task {} · agent {} · owner {} · {}",
        t.id,
        t.agent,
        t.owner
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "-".into()),
        t.state
    );
    println!(
        "{pad}  intent: {} [{}]",
        crate::output::safe(&t.intent.text),
        t.intent.class
    );
    println!("{pad}  scope:  {}", t.scope);
    for (r, e) in &n.steps {
        let line = event_line(r, e);
        println!("{pad}  {}", line.join("  "));
    }
    for c in &n.children {
        print_node(c, depth + 1);
    }
}

async fn export(store: &Store, output: Option<PathBuf>, from: i64) -> anyhow::Result<()> {
    let mut out: Box<dyn Write> = match &output {
        Some(p) => Box::new(std::io::BufWriter::new(crate::datadir::create_private(p)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut from = from.max(1);
    let mut n = 0u64;
    loop {
        let page = store
            .audit_range(from, PAGE)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        for r in &page {
            let event: serde_json::Value =
                serde_json::from_str(&r.event_json).unwrap_or(serde_json::Value::Null);
            let line =
                json!({"seq": r.seq, "prev_hash": r.prev_hash, "hash": r.hash, "event": event});
            writeln!(out, "{line}").context("cannot write export")?;
            n += 1;
        }
    }
    out.flush().context("cannot write export")?;
    if let Some(p) = output {
        eprintln!("exported {n} records to {}", p.display());
    }
    Ok(())
}
