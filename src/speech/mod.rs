//! Speech on the box: text-to-speech (and, as they land, speech-to-text and the language model).
//! Model inference lives only here; the agent and the call session see text and audio frames.
pub mod tts;
