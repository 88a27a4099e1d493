//! Text-to-speech: the text front end (normalization, chunking for streaming), the phonemes the
//! Piper voice expects (espeak-ng run as a separate process, mapped to the voice's ids), the
//! voice's weight import from its ONNX file, the VITS network on candle, the espeak-ng fallback
//! voice, and the speaker a call uses (streaming by chunk, barge-in, fallback, cache).
pub mod cache;
pub mod espeak;
pub mod import;
/// The ONNX reader, shared with the other importers; kept here under its old path too.
pub use super::onnx;
pub mod phonemes;
pub mod resampler;
pub mod speaker;
pub mod text;
pub mod vits;
