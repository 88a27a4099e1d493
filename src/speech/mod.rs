//! Speech and language models, run on the box through candle.
pub mod llm;
