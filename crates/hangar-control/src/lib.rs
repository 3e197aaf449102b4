//! The control plane: the HTTP API and the machine supervisor.
//!
//! - [`api`]: axum routes of the Fly-compatible Machines API and Hangar's own resources,
//!   token auth, and the one place where errors become status codes ([`error`]).
//! - [`supervisor`]: the machine state machine. It drives the runtime and the host
//!   network, records every transition in the store before answering, watches running
//!   machines for exits, applies restart policies, and reconciles the host with the store
//!   when the server starts.
//!
//! **API boundary:** the control plane never runs `runc`, mounts or netlink itself; it
//! calls `hangar-runtime` and `hangar-net`.

pub mod api;
pub mod auth;
pub mod build;
pub mod checks;
pub mod deploy;
pub mod error;
pub mod registry;
pub mod retention;
pub mod routing;
pub mod secrets;
pub mod supervisor;

pub use error::ApiError;
pub use supervisor::{Control, ControlOptions, Drainer};
