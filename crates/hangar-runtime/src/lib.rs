//! The local runtime: everything Hangar does on the host to run a machine.
//!
//! - [`image`]: the content-addressed blob store, image import and pull, layers unpacked
//!   once and shared read-only, garbage collection.
//! - [`machine`]: runc bundles (`config.json` from the image config and the machine config),
//!   the overlay rootfs whose upper layer is reset on every start, the per-machine shim that
//!   owns the container's stdio and records its exit, and the log files.
//!
//! **API boundary:** the control plane reaches the host only through this crate and
//! `hangar-net`. Only this crate runs `runc` or mounts filesystems.
#![doc(html_no_source)]

pub mod image;
pub mod machine;
pub mod types;

pub use types::{ImageConfig, ResolvedImage};
