//! `mandate report`: the governance report, as Markdown for people and JSON for tools.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use crate::Global;
use crate::config::Settings;
use crate::output::{at, field, time};

/// Options of `mandate report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Where to write: `PREFIX.md` and `PREFIX.json`.
    #[arg(long, value_name = "PREFIX", default_value = "mandate-report")]
    output: PathBuf,
    /// Days of activity to cover (default: the server's `governance.activity_window_days`).
    #[arg(long, value_name = "DAYS")]
    window_days: Option<i64>,
}

/// Fetches the report from the broker and writes both files.
pub async fn run(global: &Global, settings: &Settings, args: ReportArgs) -> anyhow::Result<()> {
    let c = crate::commands::admin(global, settings)?;
    let path = match args.window_days {
        Some(d) => format!("/admin/v1/report?window_days={d}"),
        None => "/admin/v1/report".to_string(),
    };
    let report = c.get(&path).await?;
    let json_path = args.output.with_extension("json");
    let md_path = args.output.with_extension("md");
    let pretty = serde_json::to_string_pretty(&report).context("cannot render the report")?;
    for (path, text) in [(&json_path, pretty + "\n"), (&md_path, markdown(&report))] {
        use std::io::Write;
        crate::datadir::create_private(path)?
            .write_all(text.as_bytes())
            .with_context(|| format!("cannot write `{}`", path.display()))?;
    }
    if global.json {
        crate::output::json(&serde_json::json!({
            "markdown": md_path, "json": json_path,
            "standing_privilege": at(at(&report, "inventory"), "standing_privilege"),
        }));
    } else {
        println!(
            "governance report written to {} and {}",
            md_path.display(),
            json_path.display()
        );
    }
    Ok(())
}

fn list(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn cell(s: &str) -> String {
    let s = s.replace('|', "\\|").replace('\n', " ");
    if s.is_empty() { "-".into() } else { s }
}

fn strings(v: &Value) -> String {
    let items: Vec<String> = list(v)
        .filter_map(|x| x.as_str().map(|s| format!("`{s}`")))
        .collect();
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// Renders the report as Markdown.
pub fn markdown(r: &Value) -> String {
    let mut m = String::new();
    let inv = at(r, "inventory");
    let _ = writeln!(m, "# Mandate governance report\n");
    let _ = writeln!(
        m,
        "Generated {} over the last {} days (since {}). Policy set `{}`.\n",
        time(r, "generated_at"),
        field(r, "window_days"),
        time(r, "since"),
        field(r, "policy_digest")
    );
    let _ = writeln!(m, "## Inventory\n");
    let _ = writeln!(
        m,
        "{} agents. Live credentials or downstream leases outliving policy or their task (standing privilege): **{}**. Live per-task downstream leases: {}.\n",
        field(inv, "agents"),
        field(inv, "standing_privilege"),
        field(inv, "live_leases")
    );
    let _ = writeln!(m, "| Owner | low | medium | high |\n|---|---|---|---|");
    if let Some(owners) = at(inv, "by_owner").as_object() {
        for (owner, tiers) in owners {
            let n = |t: &str| tiers.get(t).and_then(Value::as_u64).unwrap_or(0);
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} |",
                cell(owner),
                n("low"),
                n("medium"),
                n("high")
            );
        }
    }
    let _ = writeln!(m, "\n### Flags\n");
    match at(inv, "flags").as_object() {
        Some(flags) if !flags.is_empty() => {
            for (flag, agents) in flags {
                let _ = writeln!(m, "- **{flag}**: {}", strings(agents));
            }
        }
        _ => {
            let _ = writeln!(m, "None.");
        }
    }
    let _ = writeln!(m, "\n### Agents\n");
    let _ = writeln!(
        m,
        "| Agent | Owner | Tier | Status | Active tasks | Allowed | Denied | Approval | Last activity | Flags |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for a in list(at(r, "agents")) {
        let act = at(a, "activity");
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell(&field(a, "id")),
            cell(&field(a, "owner")),
            field(a, "tier"),
            field(a, "status"),
            list(at(a, "active_tasks")).count(),
            field(act, "allowed"),
            field(act, "denied"),
            field(act, "needs_approval"),
            time(act, "last_activity"),
            strings(at(a, "flags"))
        );
    }
    section(
        &mut m,
        "Denied decisions",
        at(r, "denied_decisions"),
        &[
            "Time", "Agent", "Task", "Action", "Target", "Policies", "Reason",
        ],
        |e| {
            vec![
                time(e, "time"),
                field(e, "agent"),
                field(e, "task"),
                field(e, "action"),
                field(e, "resource"),
                strings(at(e, "policies")),
                field(e, "reason"),
            ]
        },
    );
    section(
        &mut m,
        "Refused tasks",
        at(r, "refused_tasks"),
        &["Time", "Agent", "Intent", "Policies", "Reason"],
        |e| {
            vec![
                time(e, "time"),
                field(e, "agent"),
                field(e, "intent"),
                strings(at(e, "policies")),
                field(e, "reason"),
            ]
        },
    );
    section(
        &mut m,
        "Approvals",
        at(r, "approvals"),
        &[
            "Time", "Event", "Agent", "Action", "Target", "Actor", "Reason",
        ],
        |e| {
            vec![
                time(e, "time"),
                field(e, "kind"),
                field(e, "agent"),
                field(e, "action"),
                field(e, "resource"),
                field(e, "actor"),
                field(e, "reason"),
            ]
        },
    );
    let _ = writeln!(m, "\n## Revocations by cause\n");
    match at(r, "revocation_causes").as_object() {
        Some(c) if !c.is_empty() => {
            for (cause, n) in c {
                let _ = writeln!(m, "- {cause}: {n}");
            }
        }
        _ => {
            let _ = writeln!(m, "None.");
        }
    }
    section(
        &mut m,
        "Revocations",
        at(r, "revocations"),
        &["Time", "Agent", "Task", "By", "Policies", "Reason"],
        |e| {
            vec![
                time(e, "time"),
                field(e, "agent"),
                field(e, "task"),
                field(e, "actor"),
                strings(at(e, "policies")),
                field(e, "reason"),
            ]
        },
    );
    let _ = writeln!(m, "\n## Controls\n");
    let _ = writeln!(
        m,
        "Policies marked ✗ are not in the policy set now in force.\n\n| Framework | Id | Risk or function | Mandate's control | Policies | Tests |\n|---|---|---|---|---|---|"
    );
    for c in list(at(r, "controls")) {
        let policies: Vec<String> = list(at(c, "policies"))
            .map(|p| {
                format!(
                    "`{}`{}",
                    field(p, "id"),
                    if p["in_force"] == true { "" } else { " ✗" }
                )
            })
            .collect();
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} |",
            field(c, "framework"),
            field(c, "id"),
            cell(&field(c, "name")),
            cell(&field(c, "control")),
            if policies.is_empty() {
                "(feature)".into()
            } else {
                policies.join(", ")
            },
            strings(at(c, "tests"))
        );
    }
    m
}

fn section(
    m: &mut String,
    title: &str,
    s: &Value,
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) {
    let total = s["total"].as_u64().unwrap_or(0);
    let listed: Vec<&Value> = list(at(s, "listed")).collect();
    let _ = writeln!(m, "\n## {title}\n");
    if total == 0 {
        let _ = writeln!(m, "None.");
        return;
    }
    if listed.len() as u64 != total {
        let _ = writeln!(
            m,
            "{total} in all; the first {} are listed.\n",
            listed.len()
        );
    }
    let _ = writeln!(m, "| {} |", headers.join(" | "));
    let _ = writeln!(m, "|{}", "---|".repeat(headers.len()));
    for e in listed {
        let cells: Vec<String> = row(e).iter().map(|c| cell(c)).collect();
        let _ = writeln!(m, "| {} |", cells.join(" | "));
    }
}
