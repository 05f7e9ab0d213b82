//! What every canotify process shares: the domain types that travel from the
//! producer through the worker to the writer, the broker topology, the
//! warehouse interface and its PostgreSQL implementation, and the plumbing
//! (configuration, logging, shutdown) that keeps the three binaries thin.

pub mod broker;
pub mod case;
pub mod config;
pub mod http;
pub mod metrics;
pub mod phone;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
pub mod timezone;
pub mod verification_uuid;
pub mod warehouse;

pub use case::{CaseId, CaseResult, CheckRequest, Status, TestType};
pub use phone::E164;
pub use secret::Secret;
pub use shutdown::Shutdown;
