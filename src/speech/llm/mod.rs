//! The language model: quantized GGUF chat models on candle (llama-architecture SmolLM2 through
//! candle's `quantized_llama`; Gemma 3 through our own [`gemma3`] module), with the tokenizer built from the GGUF's own metadata
//! (byte-level BPE or SentencePiece-style). It helps the agent understand turns its rules cannot decide ([`LlmScorer`], a
//! [`crate::agent::understand::TurnScorer`]) and writes text on request; it never decides what the
//! business's script decides. It also answers callers' questions from the script's knowledge
//! only, checked against those facts ([`GroundedAnswerer`]), and writes the call's summary text
//! ([`summary_text`], with the agent's template as fallback).
//!
//! Inference is synchronous and CPU-bound: callers run it on their own threads, never on an
//! async runtime thread; live calls reach the scorer through [`LiveScorer`], which runs it as a
//! live job of the inference scheduler and waits a bounded time. One [`LanguageModel`] is loaded once and shared through an `Arc`; the
//! weights sit behind a mutex so one inference runs at a time. A fixed prompt start (system prompt
//! and script context) is evaluated once into a [`Prefix`] whose KV cache later prompts reuse.

mod answer;
mod chat;
mod gemma3;
mod llama;
mod model;
mod scorer;
mod sentencepiece;
mod summarize;
pub mod tokenizer;
mod worker;

use std::path::PathBuf;

pub use answer::{GroundedAnswer, GroundedAnswerer};
pub use chat::{grounded_system, ChatTemplate, Prompt};
pub use model::{
    probe_weights, GenerateOptions, Generation, LanguageModel, LlamaBackend, ModelInfo, Prefix,
    StopReason,
};
pub use scorer::LlmScorer;
pub use summarize::{summary_text, summary_text_in_background, SummarySource};
pub use tokenizer::Tokenizer;
pub use worker::LiveScorer;

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable GGUF model file: {reason}")]
    NotGguf { path: PathBuf, reason: String },
    #[error("{path} is truncated: it has {size} bytes but tensor {tensor} ends at byte {needed}")]
    Truncated {
        path: PathBuf,
        size: u64,
        tensor: String,
        needed: u64,
    },
    #[error("unsupported model architecture {0:?} (supported: llama, gemma3)")]
    UnsupportedArchitecture(String),
    #[error("the GGUF metadata lacks {0}")]
    MissingMetadata(String),
    #[error(
        "unsupported tokenizer {0:?}: byte-level BPE (gpt2) and SentencePiece (llama) are built in"
    )]
    UnsupportedTokenizer(String),
    #[error("bad tokenizer data: {0}")]
    Tokenizer(String),
    #[error("cannot build the {architecture} model from {path}: {source}")]
    Load {
        path: PathBuf,
        architecture: String,
        source: Box<candle_core::Error>,
    },
    #[error("bad weights in the model file: {0}")]
    BadWeights(String),
    #[error("inference failed: {0}")]
    Inference(Box<candle_core::Error>),
    #[error("the prompt needs {needed} tokens, more than the model's context of {max}")]
    ContextFull { needed: usize, max: usize },
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl From<candle_core::Error> for LlmError {
    fn from(e: candle_core::Error) -> Self {
        LlmError::Inference(Box::new(e))
    }
}
