//! How the box lives on its host: logging to journald or stderr (with personal data kept out of
//! anything above debug level), and host checks used by `callbox doctor`.
pub mod logging;
