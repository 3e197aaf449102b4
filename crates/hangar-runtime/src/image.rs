//! Image store: see the crate docs.
