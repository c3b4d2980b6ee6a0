//! Cedar, behind a thin facade.
//!
//! A policy directory holds one `.cedarschema` file and any number of `.cedar` files. Loading
//! parses and validates them all against the schema (strict mode) and either yields a complete
//! [`PolicyBundle`] or a [`LoadError`] naming every file and line at fault; the engine swaps bundles
//! atomically, so a bad reload leaves the previous set in force.
//!
//! Requests are mapped onto Cedar in one fixed way (see `ARCHITECTURE.md`): the principal is
//! `Mandate::Agent::"<agent>"` (a member of `Mandate::Owner::"<owner>"`), the action is
//! `Mandate::Action::"<action>"`, the resource is `Mandate::Tool::"<name>"` or
//! `Mandate::Resource::"<name>"` (`Mandate::Task::"<id>"` for admission), and the context carries
//! the task (`context.task`), the asked-for pair (`context.asked`, `"action:target"`) and what the
//! enforcement point reported (`context.request`). A policy that fails to evaluate makes the
//! decision a deny: an unevaluable `forbid` must never let a request through.

mod catalog;
mod decide;
mod facts;
mod load;
pub mod testing;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use catalog::{Catalog, Labels};
pub use decide::{AdmissionQuery, ApprovalQuery, Approver, Outcome, Query, Verdict};
pub use facts::{
    AgentFacts, EntityIndex, FactsError, TargetFacts, TargetKind, TaskFacts, args_to_cedar,
    flow_to_cedar, json_to_cedar, provenance_to_cedar,
};
pub use load::{LoadError, PolicyBundle, Problem, SourceFile};

/// The Cedar namespace every Mandate entity type and action lives in.
pub const NAMESPACE: &str = "Mandate";
/// The action name of task admission.
pub const OPEN_TASK: &str = "open_task";

/// The policy set in force, replaceable atomically while decisions read it without locks.
#[derive(Debug)]
pub struct PolicyEngine {
    current: ArcSwap<PolicyBundle>,
}

impl PolicyEngine {
    /// An engine starting with `bundle`.
    pub fn new(bundle: PolicyBundle) -> Self {
        PolicyEngine {
            current: ArcSwap::from_pointee(bundle),
        }
    }

    /// The bundle in force now.
    pub fn current(&self) -> Arc<PolicyBundle> {
        self.current.load_full()
    }

    /// Puts `bundle` in force; returns the previous one.
    pub fn replace(&self, bundle: PolicyBundle) -> Arc<PolicyBundle> {
        self.current.swap(Arc::new(bundle))
    }
}
