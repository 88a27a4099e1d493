//! The conversation engine: business scripts, understanding caller turns, in-call memory,
//! handoff and disclosure decisions, and the call summary. It works on text events only, so it is
//! tested without audio; the call session feeds it from speech and phone lines.
pub mod extract;
pub mod script;
