//! Hangar's domain: identifiers, names, machine configuration and state, events.
//!
//! This crate does no I/O. Everything here is plain data plus the rules that
//! decide whether a value is acceptable, so the API, the store, the runtime and
//! the config resolver all agree on one definition.
//!
//! The machine types follow the shape of Fly.io's Machines API (`MachineConfig`,
//! `Machine`, `MachineEvent`) so that existing Fly clients work unchanged.

pub mod config;
pub mod ids;
pub mod machine;
pub mod names;

pub use ids::{InstanceId, MachineId};
pub use machine::{
    Guest, Init, Machine, MachineCheck, MachineConfig, MachineEvent, MachineService, MachineState,
    RestartConfig, RestartPolicy, StopConfig,
};
