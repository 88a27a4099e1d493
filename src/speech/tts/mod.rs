//! Text-to-speech: the text front end (normalization, chunking for streaming) and the phonemes
//! the Piper voice expects (espeak-ng run as a separate process, mapped to the voice's ids).
pub mod espeak;
pub mod phonemes;
pub mod text;
pub mod vits;
