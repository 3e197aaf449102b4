//! Machines: see the crate docs.
