//! Callbox: firmware for an on-prem AI phone agent appliance. See ARCHITECTURE in the README for
//! how a call flows through these modules.
pub mod agent;
pub mod call;
pub mod cli;
pub mod config;
pub mod fleet;
pub mod line;
pub mod models;
pub mod speech;
pub mod store;
pub mod sync;
pub mod system;
