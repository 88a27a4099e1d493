//! Speech on the box: the caller's audio into text for the agent, the language model that helps
//! the agent understand and summarize, and the agent's text into audio. Everything runs on the
//! box through candle, from weights installed by `models/fetch` (and converted once by
//! `callbox models import` where needed); nothing is downloaded at run time. Model inference
//! lives only here; the agent and the call session see text and audio.
//!
//! - [`audio`]: WAV files, resampling, G.711 µ-law.
//! - [`onnx`]: the ONNX file reader the importers take weights from.
//! - [`stt`]: Whisper speech to text.
//! - [`llm`]: GGUF chat models, their tokenizer, generation and the intent scorer.
//! - [`tts`]: text preparation, phonemes and voices.
//! - [`vad`]: voice activity on 20 ms frames (Silero VAD on candle).
//! - [`turn`]: end of the caller's turn (Smart Turn v3 on candle).
//! - [`wer`]: word error rate, the measure of recognition and intelligibility.
//! - [`testset`]: the spoken utterances and line conditions that measure recognition.
//! - [`scheduler`]: the inference workers every model's work runs on, live calls first.
//! - `kernels`: the f32 kernels of the Whisper-style audio encoders (speech to text, end of turn).
//! - `quant`: products of GGUF block-quantized weights (Q4_1, Q8_0) for the language model.
pub(crate) mod amx;
pub mod audio;
pub(crate) mod kernels;
pub mod llm;
pub mod onnx;
pub(crate) mod quant;
pub mod scheduler;
pub mod stt;
pub mod testset;
pub mod tts;
pub mod turn;
pub mod vad;
pub mod wer;
