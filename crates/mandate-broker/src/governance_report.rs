//! The governance report: the inventory by owner and tier, what was denied or needed approval,
//! what was revoked and why, and how Mandate's controls map to the OWASP Agentic AI Top 10, the
//! OWASP NHI Top 10 and the NIST AI RMF functions, each row naming the policy, test or feature
//! that implements it (and whether each named policy is in force now).

use std::collections::BTreeMap;

use mandate_core::Timestamp;
use mandate_core::audit::{AuditEvent, EventKind};
use serde::Serialize;
use serde_json::{Value, json};

use crate::Broker;
use crate::admin::{AgentView, Principal};
use crate::error::AdminError;

const DAY_MS: i64 = 86_400_000;
/// Most entries listed per section; totals count them all.
pub const MAX_LISTED: usize = 500;
const PAGE: i64 = 5000;

/// One row of the controls table.
#[derive(Clone, Debug, Serialize)]
pub struct Control {
    /// `OWASP Agentic AI Top 10`, `OWASP NHI Top 10` or `NIST AI RMF`.
    pub framework: &'static str,
    /// The risk's or function's id in that framework.
    pub id: &'static str,
    /// Its name.
    pub name: &'static str,
    /// What Mandate does about it.
    pub control: &'static str,
    /// Policies of the shipped pack that implement it.
    pub policies: Vec<PolicyRef>,
    /// Tests that prove it (`file::test`).
    pub tests: &'static [&'static str],
}

/// A policy named by the controls table, and whether the running policy set has it.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyRef {
    /// Policy id.
    pub id: &'static str,
    /// Whether it is loaded now.
    pub in_force: bool,
}

type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

const AGENTIC: &str = "OWASP Top 10 for Agentic Applications 2026";
const MAESTRO: &str = "CSA MAESTRO";
const ATLAS: &str = "MITRE ATLAS";
const NHI: &str = "OWASP NHI Top 10";
const RMF: &str = "NIST AI RMF";

/// The controls table. Policy ids starting with `mandate:` are Mandate's built-in checks.
const CONTROLS: &[Row] = &[
    (
        AGENTIC,
        "ASI01",
        "Agent Goal Hijack",
        "argument provenance: a call whose destination only third-party content named, or that passes on a third-party link, waits for the owner's approval; after a sensitive read it is denied (or held, for low-tier agents)",
        &[
            "third-party-destination-needs-approval",
            "third-party-link-needs-approval",
            "sensitive-data-to-third-party-destination",
        ],
        &[
            "gateway.rs::the_python_sdk_works_through_the_gateway_with_real_servers",
            "runtime_policy.rs::s9_a_large_refund_needs_one_exact_approval",
        ],
    ),
    (
        AGENTIC,
        "ASI02",
        "Tool Misuse and Exploitation",
        "every call decided at request time against the task's scope, argument rules, catalog labels and flow labels",
        &[
            "act-within-task-scope",
            "mandate:task-scope",
            "mandate:task-arguments",
            "no-egress-after-sensitive-read",
            "support-tasks-never-export",
        ],
        &[
            "runtime_policy.rs::s3_what_a_task_read_decides_where_it_may_send",
            "runtime_policy.rs::argument_rules_pin_what_a_task_may_pass",
            "scope_property.rs::nothing_outside_the_granted_scope_is_ever_allowed",
        ],
    ),
    (
        AGENTIC,
        "ASI03",
        "Identity and Privilege Abuse",
        "workload identity per agent, task-scoped short-lived credentials bound to the agent's key, delegation that never widens",
        &[
            "task-within-envelope",
            "tier-high-needs-dpop",
            "mandate:envelope",
            "mandate:delegation",
        ],
        &[
            "scenarios.rs::s4_a_copied_credential_is_useless_without_the_agents_key",
            "delegation.rs::s6_a_sub_task_gets_at_most_what_its_parent_holds",
            "delegation_property.rs::delegation_never_amplifies_and_revocation_reaches_every_descendant",
        ],
    ),
    (
        AGENTIC,
        "ASI04",
        "Agentic Supply Chain Vulnerabilities",
        "partly: upstream MCP servers run supervised with a cleared environment and only the secrets configured for them, and what they return is scrubbed and classified; Mandate does not vet the packages, models or tool descriptions themselves",
        &[],
        &["gateway.rs::the_python_sdk_works_through_the_gateway_with_real_servers"],
    ),
    (
        AGENTIC,
        "ASI05",
        "Unexpected Code Execution (RCE)",
        "no specific control: Mandate decides which tools an agent may call and with which arguments, but does not sandbox code a tool or the agent runs; a code-execution tool should be catalogued high-risk so its calls need approval",
        &["high-risk-write-needs-approval"],
        &["runtime_policy.rs::s9_a_large_refund_needs_one_exact_approval"],
    ),
    (
        AGENTIC,
        "ASI06",
        "Memory & Context Poisoning",
        "within a task: values from third-party content are remembered by origin and calls they steer are held; Mandate sees no agent memory across tasks, so poisoning that persists there is out of its reach",
        &["third-party-destination-needs-approval"],
        &["efficacy.rs::injected_actions_are_stopped_and_legitimate_tasks_go_through"],
    ),
    (
        AGENTIC,
        "ASI07",
        "Insecure Inter-Agent Communication",
        "agent-to-agent hand-off only through RFC 8693 token exchange: the child proves its own identity, the chain travels in `act` claims and the audit",
        &[
            "delegation-depth-limit",
            "delegated-high-risk-write-one-hop",
        ],
        &[
            "delegation.rs::bound_parents_must_prove_their_key_and_children_are_bound_to_theirs",
            "interop.rs::rfc8693_exchange_from_requests_and_pyjwt",
        ],
    ),
    (
        AGENTIC,
        "ASI08",
        "Cascading Failures",
        "ending a task ends everything delegated from it; budgets and velocity limits stop runaway loops",
        &["mandate:delegation", "mandate:velocity"],
        &[
            "delegation.rs::s7_ending_anything_up_a_three_agent_chain_ends_everything_below",
            "runtime_policy.rs::s12_a_tight_loop_of_denied_retries_suspends_the_task",
        ],
    ),
    (
        AGENTIC,
        "ASI09",
        "Human-Agent Trust Exploitation",
        "approvals show the exact call (action, target, arguments) and why it needs a person, and cover that call once; an agent cannot approve for itself",
        &["owner-approves-own-agents"],
        &["runtime_policy.rs::s9_a_large_refund_needs_one_exact_approval"],
    ),
    (
        AGENTIC,
        "ASI10",
        "Rogue Agents",
        "kill switch per agent, policy drift revokes tasks at once, tamper-evident audit of every action",
        &["mandate:velocity"],
        &[
            "scenarios.rs::s7_kill_switch_ends_every_task_at_once",
            "runtime_policy.rs::s8_a_policy_change_revokes_tasks_it_no_longer_admits",
            "audit_chain.rs::verify_names_an_edited_record",
        ],
    ),
    (
        NHI,
        "NHI1",
        "Improper Offboarding",
        "an agent without owner opens nothing and is flagged; owners re-confirm agents; dormant agents are flagged",
        &["orphaned-agent-opens-nothing", "mandate:reconfirmation"],
        &[
            "scenarios.rs::s10_an_agent_without_owner_opens_nothing_and_is_flagged",
            "governance.rs::owners_reconfirm_their_agents_or_they_open_nothing",
        ],
    ),
    (
        NHI,
        "NHI2",
        "Secret Leakage",
        "brokered secrets sealed at rest and injected by the gateway; never in the agent's hands, tokens, logs or audit",
        &[],
        &[
            "gateway.rs::the_python_sdk_works_through_the_gateway_with_real_servers",
            "negative.rs::no_secret_reaches_the_audit_or_the_logs",
        ],
    ),
    (
        NHI,
        "NHI4",
        "Insecure Authentication",
        "agents authenticate with private_key_jwt, an external issuer's JWT, or an X.509-SVID over mutual TLS; single-use assertions, DPoP proofs and certificate-bound credentials; no shared secrets",
        &["tier-high-needs-dpop"],
        &[
            "negative.rs::replayed_assertion_is_refused",
            "negative.rs::alg_none_is_refused",
            "external_issuer.rs::rs256_es256_and_eddsa_issuers_identify_agents",
            "mtls.rs::an_svid_agent_opens_and_uses_a_certificate_bound_task",
            "mtls.rs::bad_certificates_fail_the_handshake_and_plain_clients_still_connect",
        ],
    ),
    (
        NHI,
        "NHI5",
        "Overprivileged NHI",
        "the envelope bounds every task; tasks hold only what they asked for; wide envelopes are flagged",
        &["task-within-envelope", "mandate:envelope"],
        &[
            "negative.rs::tasks_outside_the_envelope_or_malformed_are_refused",
            "governance.rs::the_governance_view_counts_flags_and_reports",
        ],
    ),
    (
        NHI,
        "NHI7",
        "Long-Lived Secrets",
        "no standing privilege: credentials live minutes to hours by tier and die with their task; downstream credentials (PostgreSQL roles, SSH certificates, API tokens) are made per task and revoked downstream when it ends",
        &[
            "tier-high-max-ttl",
            "tier-medium-max-ttl",
            "tier-low-max-ttl",
        ],
        &[
            "scenarios.rs::s5_credentials_die_with_completion_and_with_their_ttl",
            "governance.rs::the_governance_view_counts_flags_and_reports",
            "credentials.rs::a_task_reading_orders_gets_its_own_role_which_ends_with_it",
            "ssh_certificates.rs::a_task_certificate_logs_in_to_real_sshd_until_the_task_ends",
            "credentials.rs::a_restart_revokes_leases_whose_task_ended_meanwhile_and_half_made_ones",
        ],
    ),
    (
        NHI,
        "NHI9",
        "NHI Reuse",
        "one credential per task; two tasks of one agent stay apart, each in its own scope and audit trail",
        &["act-within-task-scope"],
        &["scenarios.rs::s11_two_tasks_of_one_agent_stay_apart"],
    ),
    (
        MAESTRO,
        "L3",
        "Agent Frameworks",
        "every tool call is decided outside the agent's framework, at the gateway or by the SDK's adapters, against the task's scope and policies",
        &["act-within-task-scope", "mandate:task-scope"],
        &["gateway.rs::the_python_sdk_works_through_the_gateway_with_real_servers"],
    ),
    (
        MAESTRO,
        "L4",
        "Deployment and Infrastructure",
        "brokered secrets sealed at rest and injected into upstreams; the HTTP proxy forwards only routed, decided requests; replicas share one state over TLS",
        &[],
        &[
            "proxy.rs::hostile_targets_are_refused_or_reach_only_the_routed_path",
            "replicas.rs::replicas_reach_postgresql_over_verified_tls",
        ],
    ),
    (
        MAESTRO,
        "L5",
        "Evaluation and Observability",
        "a hash-chained audit record of every step, verifiable, exportable, rebuilt as a workflow tree; Prometheus metrics",
        &[],
        &[
            "audit_chain.rs::verify_names_an_edited_record",
            "delegation.rs::s13_trace_rebuilds_a_multi_agent_workflow_as_a_tree",
        ],
    ),
    (
        MAESTRO,
        "L6",
        "Security and Compliance",
        "policy-as-code with tests, drift revocation, owner re-confirmation, and this report",
        &["task-within-envelope", "mandate:reconfirmation"],
        &[
            "policy_cli.rs::the_shipped_pack_passes_its_own_tables",
            "governance.rs::the_governance_view_counts_flags_and_reports",
        ],
    ),
    (
        MAESTRO,
        "L7",
        "Agent Ecosystem",
        "agents hand work to agents only by token exchange, bounded by the parent's scope and lifetime, with the chain on record",
        &["delegation-depth-limit", "mandate:delegation"],
        &["delegation.rs::s6_a_sub_task_gets_at_most_what_its_parent_holds"],
    ),
    (
        ATLAS,
        "AML.T0051.001",
        "LLM Prompt Injection: Indirect",
        "values from third-party content are tracked by origin; a call they steer waits for a person, or is denied after a sensitive read",
        &[
            "third-party-destination-needs-approval",
            "third-party-link-needs-approval",
        ],
        &["efficacy.rs::injected_actions_are_stopped_and_legitimate_tasks_go_through"],
    ),
    (
        ATLAS,
        "AML.T0053",
        "AI Agent Tool Invocation",
        "a tool outside the task's scope, or with arguments outside its rules, is never called",
        &["mandate:task-scope", "mandate:task-arguments"],
        &["runtime_policy.rs::argument_rules_pin_what_a_task_may_pass"],
    ),
    (
        ATLAS,
        "AML.T0086",
        "Exfiltration via AI Agent Tool Invocation",
        "after a sensitive read, data goes out only to destinations the task's request named or a trusted output supplied",
        &[
            "no-egress-after-sensitive-read",
            "sensitive-data-to-third-party-destination",
        ],
        &["runtime_policy.rs::s3_what_a_task_read_decides_where_it_may_send"],
    ),
    (
        ATLAS,
        "AML.T0055",
        "Unsecured Credentials",
        "agents hold only short-lived, key-bound task credentials; upstream secrets stay with the gateway",
        &["tier-high-needs-dpop"],
        &["scenarios.rs::s4_a_copied_credential_is_useless_without_the_agents_key"],
    ),
    (
        RMF,
        "GOVERN",
        "Govern",
        "every agent has an accountable owner and a tier; policies are code with tests; owners re-confirm their agents",
        &["owner-approves-own-agents", "mandate:ownership"],
        &[
            "scenarios.rs::owners_manage_only_their_own_agents",
            "policy_cli.rs::the_shipped_pack_passes_its_own_tables",
        ],
    ),
    (
        RMF,
        "MAP",
        "Map",
        "a catalog labels tools and resources with side effect, data classes, egress and risk; tasks declare their intent",
        &["high-risk-write-needs-approval"],
        &["runtime_policy.rs::s2_a_read_only_support_task_cannot_export"],
    ),
    (
        RMF,
        "MEASURE",
        "Measure",
        "every decision audited in a hash chain and counted per agent; Prometheus metrics; this report",
        &[],
        &[
            "scenarios.rs::s13_trace_rebuilds_a_single_agent_workflow_and_the_chain_verifies",
            "delegation.rs::s13_trace_rebuilds_a_multi_agent_workflow_as_a_tree",
        ],
    ),
    (
        RMF,
        "MANAGE",
        "Manage",
        "runtime decisions, single-use human approvals, revocation on completion, timeout, suspension and policy change",
        &[
            "large-amount-needs-approval",
            "high-risk-write-needs-approval",
        ],
        &[
            "runtime_policy.rs::s9_a_large_refund_needs_one_exact_approval",
            "runtime_policy.rs::s8_a_policy_change_revokes_tasks_it_no_longer_admits",
        ],
    ),
];

/// Why a task was revoked, in a few words, from its audit record.
fn revocation_cause(e: &AuditEvent) -> &'static str {
    let actor = e.actor.as_deref().unwrap_or("");
    let reason = e.reason.as_deref().unwrap_or("");
    if actor == "mandate:delegation" {
        "ancestor task ended"
    } else if actor == "mandate:velocity" {
        "denied-retry loop"
    } else if actor == "policy-reload" || reason.starts_with("policy change") {
        "policy change"
    } else if reason.contains("owner") && reason.contains("removed") {
        "owner removed"
    } else if e.policies.is_empty() && !actor.is_empty() {
        "revoked by a person"
    } else {
        "other"
    }
}

fn entry(e: &AuditEvent) -> Value {
    json!({
        "time": e.time,
        "kind": e.kind,
        "agent": e.agent,
        "owner": e.owner,
        "task": e.task,
        "intent": e.intent,
        "action": e.action,
        "resource": e.resource,
        "decision": e.decision,
        "policies": e.policies,
        "reason": e.reason,
        "actor": e.actor,
    })
}

#[derive(Default)]
struct Section {
    total: u64,
    listed: Vec<Value>,
}

impl Section {
    fn push(&mut self, e: &AuditEvent) {
        self.total += 1;
        if self.listed.len() < MAX_LISTED {
            self.listed.push(entry(e));
        }
    }

    fn json(self) -> Value {
        json!({"total": self.total, "listed": self.listed})
    }
}

impl Broker {
    /// The governance report over the last `window_days`, limited to what `p` may see.
    pub async fn governance_report(
        &self,
        p: &Principal,
        window_days: Option<i64>,
    ) -> Result<Value, AdminError> {
        let agents: Vec<AgentView> = self.agents(p, window_days).await?;
        let days = agents
            .first()
            .and_then(|a| a.activity.as_ref())
            .map_or(window_days.unwrap_or(self.cfg.activity_window_days), |a| {
                a.window_days
            });
        let now = self.now();
        let since = Timestamp(now.0 - days * DAY_MS);
        let visible: std::collections::BTreeSet<String> =
            agents.iter().map(|a| a.agent.id.to_string()).collect();
        let admin = matches!(p, Principal::Admin { .. });

        let mut by_owner: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut flagged: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut standing = 0u64;
        let mut live_leases = 0usize;
        for a in &agents {
            live_leases += a.leases.len();
            let owner = a
                .agent
                .owner
                .as_ref()
                .map_or_else(|| "(no owner)".to_string(), ToString::to_string);
            *by_owner
                .entry(owner)
                .or_default()
                .entry(a.agent.tier.to_string())
                .or_default() += 1;
            for f in &a.flags {
                flagged
                    .entry(f.clone())
                    .or_default()
                    .push(a.agent.id.to_string());
            }
            standing += a.standing_privilege;
        }

        let (mut denied, mut approvals, mut revoked, mut refused_tasks) = (
            Section::default(),
            Section::default(),
            Section::default(),
            Section::default(),
        );
        let mut causes: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut from = 1;
        loop {
            let page = self.store.audit_range(from, PAGE).await?;
            let Some(last) = page.last() else { break };
            from = last.seq + 1;
            for r in &page {
                let Ok(e) = r.event() else { continue };
                if e.time < since {
                    continue;
                }
                let mine = admin || e.agent.as_ref().is_some_and(|a| visible.contains(a));
                if !mine {
                    continue;
                }
                match e.kind {
                    EventKind::Decision | EventKind::GatewayCall => match e.decision.as_deref() {
                        Some("deny") => denied.push(&e),
                        Some("needs_approval") => approvals.push(&e),
                        _ => {}
                    },
                    EventKind::ApprovalGranted | EventKind::ApprovalDenied => approvals.push(&e),
                    EventKind::TaskDenied => refused_tasks.push(&e),
                    EventKind::TaskRevoked => {
                        *causes.entry(revocation_cause(&e)).or_default() += 1;
                        revoked.push(&e);
                    }
                    _ => {}
                }
            }
        }

        let bundle = self.policy.current();
        let loaded: std::collections::BTreeSet<String> = bundle.policy_ids().into_iter().collect();
        let controls: Vec<Control> = CONTROLS
            .iter()
            .map(|(framework, id, name, control, policies, tests)| Control {
                framework,
                id,
                name,
                control,
                policies: policies
                    .iter()
                    .map(|p| PolicyRef {
                        id: p,
                        in_force: p.starts_with("mandate:") || loaded.contains(*p),
                    })
                    .collect(),
                tests,
            })
            .collect();

        Ok(json!({
            "generated_at": now,
            "window_days": days,
            "since": since,
            "policy_digest": bundle.digest(),
            "inventory": {
                "agents": agents.len(),
                "by_owner": by_owner,
                "flags": flagged,
                "standing_privilege": standing,
                "live_leases": live_leases,
            },
            "agents": agents,
            "denied_decisions": denied.json(),
            "refused_tasks": refused_tasks.json(),
            "approvals": approvals.json(),
            "revocations": revoked.json(),
            "revocation_causes": causes,
            "controls": controls,
        }))
    }
}
