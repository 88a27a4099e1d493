//! The conversation engine: business scripts, understanding caller turns, in-call memory,
//! handoff and disclosure decisions, and the call summary. It works on text events only, so it is
//! tested without audio; the call session feeds it from speech and phone lines.
pub mod engine;
pub mod expectation;
pub mod extract;
pub mod script;
pub mod summary;
pub mod understand;

pub use engine::{Agent, CallContext, Event, Reply, Then};
pub use expectation::TurnExpectation;
pub use script::Script;
pub use summary::Summary;
