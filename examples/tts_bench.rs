//! Times the Piper voice on candle: `cargo run --release --example tts_bench [weights]`.
//! Prints wall time, audio duration and real-time factor for a short clause and three sentences.
use std::path::PathBuf;
use std::time::Instant;

use callbox::speech::tts::phonemes::{Phonemizer, VoiceConfig};
use callbox::speech::tts::vits::{Scales, Vits};

fn main() -> anyhow::Result<()> {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let dir = home.join(".cache/callbox/models/piper-joe");
    let weights = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("candle/model.safetensors"));
    let config = VoiceConfig::load(&dir.join("en_US-joe-medium.onnx.json"))?;
    let started = Instant::now();
    let vits = Vits::load(&weights, &config)?;
    println!("load: {:.2} s", started.elapsed().as_secs_f64());
    let phonemizer = Phonemizer::new(&config.espeak_voice);
    let scales = Scales::of_voice(&config);
    let cases = [
        ("short clause", "Thanks for calling."),
        (
            "three sentences",
            "Hello, this is the front desk of the clinic. Your appointment is confirmed for \
             Tuesday at ten in the morning. Please arrive fifteen minutes early.",
        ),
    ];
    // One warm-up so allocations and lazy initialization are not timed.
    let warm = config.ids(&phonemizer.phonemize("Hello.")?.concat()).0;
    vits.synthesize(&warm, scales, 0)?;
    for (label, text) in cases {
        let sentences = phonemizer.phonemize(text)?;
        let started = Instant::now();
        let mut samples = 0usize;
        for (i, phonemes) in sentences.iter().enumerate() {
            let ids = config.ids(phonemes).0;
            samples += vits.synthesize(&ids, scales, i as u64)?.len();
        }
        let wall = started.elapsed().as_secs_f64();
        let audio = samples as f64 / vits.sample_rate() as f64;
        println!(
            "{label}: {} sentence(s), {audio:.2} s of audio in {wall:.3} s, RTF {:.3}",
            sentences.len(),
            wall / audio
        );
    }
    Ok(())
}
