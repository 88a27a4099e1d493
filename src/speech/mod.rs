//! Speech: the voice side of a call (speech to text, text to speech).
pub mod tts;
