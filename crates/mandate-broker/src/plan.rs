//! The task planner: turns the tools a request needs and the request itself (the prompt an
//! agent's planner saw) into the `authorization_details` of a task, so deployers do not write
//! scopes by hand.
//!
//! - **Scope**: `call` on each tool (`read` on a catalogued resource).
//! - **Intent**: the prompt, verbatim (free text, up to [`MAX_INTENT_TEXT`] bytes).
//! - **Named values**: every remarkable value the prompt holds (addresses, URLs, hosts,
//!   accounts, ids; see [`mandate_core::provenance`]) in `values`. Calls carrying them are the
//!   task's own doing; destination rules judge every other value by where it came from.
//! - **Pins** (`strict`): each declared destination argument of a tool pinned to the prompt's
//!   values (`{"in": [...]}`, every spelling found). Strict pins deny any other destination
//!   outright, including one a trusted output supplied (the organiser of an invitation the user
//!   asked to answer), so they are opt-in.

use mandate_core::model::MAX_INTENT_TEXT;
use mandate_core::provenance;
use mandate_policy::{Catalog, TargetKind};
use serde_json::{Value, json};

use crate::oauth::TASK_DETAILS_TYPE;

/// Most tools one plan may name.
pub const MAX_PLAN_TOOLS: usize = 256;

/// What to plan.
#[derive(Clone, Debug)]
pub struct PlanRequest {
    /// The tools (or catalogued resources) the request needs, as agents name them.
    pub tools: Vec<String>,
    /// The request, as the planner saw it.
    pub prompt: String,
    /// The intent class (default `default`).
    pub intent_class: Option<String>,
    /// The task's lifetime in seconds (default: the broker's).
    pub ttl: Option<i64>,
    /// Pin destination arguments to the prompt's values.
    pub strict: bool,
}

/// Plans a task; the result is an `authorization_details` array.
pub fn plan(catalog: &Catalog, req: &PlanRequest) -> Result<Value, String> {
    if req.tools.is_empty() || req.tools.len() > MAX_PLAN_TOOLS {
        return Err(format!("a plan needs 1 to {MAX_PLAN_TOOLS} tools"));
    }
    let prompt = req.prompt.trim();
    if prompt.is_empty() {
        return Err("the prompt is empty".into());
    }
    if prompt.len() > MAX_INTENT_TEXT {
        return Err(format!(
            "the prompt is longer than {MAX_INTENT_TEXT} bytes; shorten it to what the task is for"
        ));
    }
    let named = named_values(prompt);
    let mut access = Vec::new();
    for tool in &req.tools {
        mandate_core::scope::check_target(tool).map_err(|e| e.to_string())?;
        let entry = catalog.get(tool);
        let action = match entry {
            Some((TargetKind::Resource, l)) if l.side_effect.as_deref() == Some("write") => "write",
            Some((TargetKind::Resource, _)) => "read",
            _ => "call",
        };
        let mut grant = serde_json::Map::new();
        grant.insert("identifier".into(), json!(tool));
        grant.insert("actions".into(), json!([action]));
        if req.strict
            && let Some((_, labels)) = entry
            && !labels.destinations.is_empty()
            && !named.spelled.is_empty()
        {
            let pins: serde_json::Map<String, Value> = labels
                .destinations
                .iter()
                .map(|d| (d.clone(), json!({"in": named.spelled})))
                .collect();
            grant.insert("arguments".into(), Value::Object(pins));
        }
        access.push(Value::Object(grant));
    }
    let mut details = serde_json::Map::new();
    details.insert("type".into(), json!(TASK_DETAILS_TYPE));
    details.insert("intent".into(), json!(prompt));
    details.insert(
        "intent_class".into(),
        json!(req.intent_class.as_deref().unwrap_or("default")),
    );
    details.insert("access".into(), Value::Array(access));
    if !named.canon.is_empty() {
        details.insert("values".into(), json!(named.canon));
    }
    if let Some(ttl) = req.ttl {
        details.insert("ttl".into(), json!(ttl));
    }
    Ok(Value::Array(vec![Value::Object(details)]))
}

struct Named {
    /// Canonical forms, at most [`mandate_core::model::MAX_INTENT_VALUES`].
    canon: Vec<String>,
    /// Every spelling found (as written, and canonical), for strict pins.
    spelled: Vec<String>,
}

fn named_values(prompt: &str) -> Named {
    let max = mandate_core::model::MAX_INTENT_VALUES;
    let mut canon: Vec<String> = provenance::extract(prompt)
        .into_iter()
        .filter(|v| v.kind != provenance::Kind::Host || !prompt_has_url_on(prompt, &v.canon))
        .map(|v| v.canon)
        .filter(|c| c.len() <= mandate_core::model::MAX_INTENT_VALUE)
        .collect();
    canon.truncate(max);
    let mut spelled: Vec<String> = prompt
        .split(|c: char| c.is_whitespace() || matches!(c, '"' | '<' | '>' | '(' | ')' | ','))
        .map(|t| t.trim_matches(|c: char| matches!(c, '.' | ',' | ';' | ':' | '!' | '?' | '\'')))
        .filter(|t| !t.is_empty() && !provenance::extract(t).is_empty())
        .map(str::to_string)
        .collect();
    spelled.extend(canon.iter().cloned());
    spelled.sort();
    spelled.dedup();
    spelled.truncate(mandate_core::args::MAX_SET);
    Named { canon, spelled }
}

/// Whether the prompt names a URL on `host` (then the host alone adds nothing).
fn prompt_has_url_on(prompt: &str, host: &str) -> bool {
    provenance::extract(prompt)
        .iter()
        .any(|v| v.kind == provenance::Kind::Url && v.canon.starts_with(&format!("{host}/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::parse(
            "[tools.\"mail.send_email\"]\nside_effect = \"write\"\negress = \"external\"\ndestinations = [\"to\"]\n\
             [resources.customers]\nside_effect = \"read\"\ndata_classes = [\"pii\"]\n",
        )
        .unwrap()
    }

    #[test]
    fn a_prompt_becomes_a_scope_with_its_values() {
        let req = PlanRequest {
            tools: vec![
                "mail.send_email".into(),
                "customers".into(),
                "files.read".into(),
            ],
            prompt: "Read file Q4-report and email the summary\nto Bob@Example.com.".into(),
            intent_class: Some("support".into()),
            ttl: Some(600),
            strict: false,
        };
        let v = plan(&catalog(), &req).unwrap();
        let d = &v[0];
        assert_eq!(d["type"], "mandate_task");
        assert_eq!(
            d["intent"],
            "Read file Q4-report and email the summary\nto Bob@Example.com."
        );
        assert_eq!(
            d["access"],
            json!([
                {"identifier": "mail.send_email", "actions": ["call"]},
                {"identifier": "customers", "actions": ["read"]},
                {"identifier": "files.read", "actions": ["call"]},
            ])
        );
        assert_eq!(d["values"], json!(["bob@example.com", "q4-report"]));
        // The plan is a valid task request.
        let intent = mandate_core::Intent {
            text: d["intent"].as_str().unwrap().into(),
            class: "support".into(),
            values: serde_json::from_value(d["values"].clone()).unwrap(),
        };
        assert!(intent.check().is_ok());
        let strict = plan(
            &catalog(),
            &PlanRequest {
                strict: true,
                ..req
            },
        )
        .unwrap();
        assert_eq!(
            strict[0]["access"][0]["arguments"],
            json!({"to": {"in": ["Bob@Example.com", "Q4-report", "bob@example.com", "q4-report"]}})
        );
    }

    #[test]
    fn bad_plans_are_refused() {
        let req = |tools: Vec<String>, prompt: &str| PlanRequest {
            tools,
            prompt: prompt.into(),
            intent_class: None,
            ttl: None,
            strict: false,
        };
        assert!(plan(&catalog(), &req(vec![], "x")).is_err());
        assert!(plan(&catalog(), &req(vec!["a b".into()], "x")).is_err());
        assert!(plan(&catalog(), &req(vec!["a".into()], "  ")).is_err());
        assert!(plan(&catalog(), &req(vec!["a".into()], &"x".repeat(9000))).is_err());
    }
}
