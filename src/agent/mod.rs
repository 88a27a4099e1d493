//! The conversation engine.
pub mod extract;
