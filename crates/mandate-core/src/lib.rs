//! Domain types of Mandate.
//!
//! Everything here is plain data and pure functions: identities, tasks and their scopes,
//! decisions, audit events and the hash chain that links them, and the clock. No I/O lives here,
//! so every other crate can depend on it and every rule in it can be tested in isolation.

pub mod approval;
pub mod args;
pub mod audit;
pub mod clock;
pub mod flow;
pub mod ids;
pub mod json;
pub mod model;
pub mod provenance;
pub mod scope;
pub mod spiffe;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use ids::{AgentId, IdError, OwnerId, TaskId};
pub use model::{
    Agent, AgentStatus, Attestation, Budget, Delegation, EndReason, Intent, Owner, Task, TaskState,
    Tier,
};
pub use scope::{Grant, Scope, ScopeError};
