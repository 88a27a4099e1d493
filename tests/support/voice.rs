//! The Piper voice installed by `models/fetch` (`.ci/setup` runs it), imported for candle once
//! per test binary (the import is skipped when it is already current).

use std::path::PathBuf;
use std::sync::OnceLock;

use callbox::models::default_models_dir;
use callbox::speech::tts::phonemes::VoiceConfig;

/// The voice's model id in the manifest.
pub const VOICE: &str = "piper-joe";

pub fn voice_dir() -> PathBuf {
    default_models_dir().join(VOICE)
}

pub fn onnx_path() -> PathBuf {
    voice_dir().join("en_US-joe-medium.onnx")
}

pub fn config_path() -> PathBuf {
    voice_dir().join("en_US-joe-medium.onnx.json")
}

/// The imported safetensors weights (`CALLBOX_VITS_WEIGHTS` names other ones).
pub fn weights() -> PathBuf {
    static WEIGHTS: OnceLock<PathBuf> = OnceLock::new();
    WEIGHTS
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("CALLBOX_VITS_WEIGHTS") {
                return PathBuf::from(path);
            }
            callbox::speech::tts::import::import_piper(
                &onnx_path(),
                &config_path(),
                &voice_dir().join("candle"),
            )
            .unwrap_or_else(|e| panic!("importing the voice (run models/fetch first): {e}"));
            voice_dir()
                .join("candle")
                .join(callbox::speech::tts::import::WEIGHTS_FILE)
        })
        .clone()
}

#[allow(dead_code)]
pub fn config() -> &'static VoiceConfig {
    static CONFIG: OnceLock<VoiceConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        VoiceConfig::load(&config_path())
            .unwrap_or_else(|e| panic!("the voice config (models/fetch): {e}"))
    })
}
