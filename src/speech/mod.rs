//! Speech: what turns the caller's audio into text for the agent (and, later, the agent's text
//! into audio). Everything runs on the box through candle, from weights installed by
//! `models/fetch` and converted once by `callbox models import`; nothing is downloaded at run time.
//!
//! - [`audio`]: WAV files, resampling to 16 kHz, G.711 µ-law.
//! - [`stt`]: Whisper speech to text.
pub mod audio;
pub mod stt;
