//! How the box lives on its host: logging to journald or stderr (with personal data kept out of
//! anything above debug level), host checks used by `callbox doctor`, and the process's own
//! resource use for benchmarks.
pub mod logging;
pub mod resources;
