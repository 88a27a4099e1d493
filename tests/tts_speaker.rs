//! The speaker a call uses, on the real Piper voice and espeak-ng: audio handed out chunk by chunk
//! (and the first chunk window by window) in order, barge-in cancellation, the espeak-ng fallback
//! when the voice's weights are missing or broken or the voice fails, and the cache of the
//! script's fixed lines.

#[path = "support/voice.rs"]
mod voice;

use std::sync::Arc;

use callbox::agent::summary::{Direction, LineKind};
use callbox::agent::{Agent, CallContext, Script};
use callbox::config::Market;
use callbox::speech::tts::speaker::{
    CancelToken, NeuralVoice, Speaker, SpeakerError, SpeakerOptions, SpeechPiece, Spoken, VoiceUsed,
};
use callbox::speech::tts::vits::Scales;

const LINE_RATE: u32 = 16_000;

fn options() -> SpeakerOptions {
    SpeakerOptions {
        line_rate: LINE_RATE,
        ..SpeakerOptions::default()
    }
}

fn neural_voice() -> NeuralVoice {
    NeuralVoice::load(voice::VOICE, &voice::config_path(), &voice::weights())
        .unwrap_or_else(|e| panic!("the Piper voice loads: {e}"))
}

fn neural_speaker() -> Arc<Speaker> {
    Arc::new(Speaker::new(Ok(neural_voice()), options()))
}

fn is_neural(v: &VoiceUsed) -> bool {
    matches!(v, VoiceUsed::Neural(id) if id == voice::VOICE)
}

/// Speaks a whole reply (no cancel): how it went and its pieces.
fn speak_all(speaker: &Speaker, reply: &str) -> (Spoken, Vec<SpeechPiece>) {
    let mut pieces = Vec::new();
    let spoken = speaker
        .speak(reply, &CancelToken::new(), &mut |p| pieces.push(p))
        .unwrap_or_else(|e| panic!("speaking {reply:?}: {e}"));
    (spoken, pieces)
}

/// espeak-ng said every chunk of the reply, and every piece says so.
fn assert_all_espeak(spoken: &Spoken, pieces: &[SpeechPiece]) {
    assert!(spoken
        .voices
        .iter()
        .all(|v| matches!(v, VoiceUsed::Espeak(_))));
    assert!(pieces
        .iter()
        .all(|p| matches!(p.voice, VoiceUsed::Espeak(_))));
}

/// Pieces are in chunk order, each chunk ends with one `last` piece, the rate is the line's.
fn assert_well_ordered(pieces: &[SpeechPiece]) {
    let mut chunk = 0;
    let mut open = false;
    for p in pieces {
        assert_eq!(p.sample_rate, LINE_RATE);
        if open {
            assert_eq!(p.chunk, chunk, "a chunk's pieces stay together");
        } else {
            assert_eq!(p.chunk, chunk, "chunks come in order");
        }
        open = !p.last;
        if p.last {
            chunk += 1;
        }
    }
}

#[test]
fn windowed_decoding_gives_the_samples_of_the_whole_decoding() {
    let voice = neural_voice();
    let vits = voice.vits();
    let ids = voice
        .ids("Your appointment is on Tuesday at half past three in the afternoon.")
        .unwrap();
    let noiseless = Scales {
        noise_scale: 0.0,
        length_scale: 1.0,
        noise_w: 0.0,
    };
    let whole = vits.synthesize(&ids, noiseless, 0).unwrap();
    for first in [1, 8, 20] {
        let mut windows = Vec::new();
        vits.synthesize_streaming(&ids, noiseless, 0, first, &|| false, &mut |s| {
            windows.push(s)
        })
        .unwrap();
        assert!(windows.len() >= 3, "{} windows", windows.len());
        assert_eq!(windows[0].len(), first * vits.hop_length());
        let joined = windows.concat();
        assert_eq!(joined.len(), whole.len());
        let worst = joined
            .iter()
            .zip(&whole)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-4,
            "first window {first}: largest difference {worst}"
        );
    }
}

#[test]
fn pieces_arrive_in_order_and_the_first_before_the_reply_is_made() {
    let speaker = neural_speaker();
    let reply = "Thank you for calling, this is Ava. Your visit is confirmed. Goodbye.";
    let chunks = speaker.chunks(reply);
    assert_eq!(
        chunks,
        [
            "Thank you for calling,",
            "this is Ava.",
            "Your visit is confirmed.",
            "Goodbye."
        ]
    );
    let mut pieces: Vec<SpeechPiece> = Vec::new();
    let mut cached_at_first_piece = None;
    let spoken = speaker
        .speak(reply, &CancelToken::new(), &mut |piece| {
            if pieces.is_empty() {
                cached_at_first_piece = Some(speaker.cache_stats().entries);
            }
            pieces.push(piece);
        })
        .unwrap();
    // When the first piece came, not even the first chunk was finished (nothing was cached).
    assert_eq!(cached_at_first_piece, Some(0));
    assert_eq!(speaker.cache_stats().entries, chunks.len());
    assert_well_ordered(&pieces);
    assert_eq!(spoken.completed, chunks.len());
    assert!(!spoken.cancelled);
    assert!(spoken.voices.iter().all(is_neural), "{:?}", spoken.voices);
    assert!(pieces.iter().all(|p| is_neural(&p.voice) && !p.cached));
    // The first chunk came in several pieces: its start before the rest of it was decoded.
    let first_chunk: Vec<_> = pieces.iter().filter(|p| p.chunk == 0).collect();
    assert!(first_chunk.len() >= 3, "{} pieces", first_chunk.len());
    let first_len = first_chunk[0].samples.len();
    let chunk_len: usize = first_chunk.iter().map(|p| p.samples.len()).sum();
    assert!(
        first_len > 0 && first_len * 2 < chunk_len,
        "{first_len} of {chunk_len}"
    );
    let seconds = pieces.iter().map(|p| p.samples.len()).sum::<usize>() as f64 / 16_000.0;
    assert!((2.5..8.0).contains(&seconds), "{seconds} s of speech");
}

#[test]
fn a_cancelled_reply_stops_within_the_chunk_being_said() {
    let speaker = neural_speaker();
    let reply = "Thanks, I have that. The doctor is in on Monday. The office opens at nine. \
                 Parking is behind the building. Goodbye.";
    let chunks = speaker.chunks(reply);
    assert!(chunks.len() >= 5, "{chunks:?}");

    // From another thread: the caller barges in while the second chunk is heard.
    let cancel = CancelToken::new();
    let stream = speaker.stream(reply.to_string(), cancel.clone());
    let mut pieces = Vec::new();
    for piece in stream.receiver.iter() {
        if piece.chunk == 1 {
            cancel.cancel();
        }
        pieces.push(piece);
    }
    let spoken = stream.finish().unwrap();
    assert!(spoken.cancelled);
    assert!(
        spoken.completed <= 2,
        "{} chunks completed",
        spoken.completed
    );
    assert!(
        pieces.iter().all(|p| p.chunk <= 2),
        "no piece after the next chunk"
    );
    assert_well_ordered(&pieces);

    // Cancelled on its very first piece, the reply ends inside its first chunk.
    let cancel = CancelToken::new();
    let mut heard = 0;
    let spoken = speaker
        .speak(
            "Please hold while I look that up for you.",
            &cancel,
            &mut |p| {
                assert_eq!(p.chunk, 0);
                heard += 1;
                cancel.cancel();
            },
        )
        .unwrap();
    assert_eq!((heard, spoken.completed, spoken.cancelled), (1, 0, true));

    // Cancelled before it starts, nothing is said.
    let cancel = CancelToken::new();
    cancel.cancel();
    let spoken = speaker
        .speak("Goodbye.", &cancel, &mut |_| panic!("nothing is said"))
        .unwrap();
    assert_eq!((spoken.completed, spoken.cancelled), (0, true));
}

#[test]
fn missing_or_corrupt_weights_fall_back_to_espeak() {
    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("model.safetensors");
    std::fs::write(&corrupt, b"this is not a safetensors file").unwrap();
    let missing = dir.path().join("absent.safetensors");
    for weights in [&missing, &corrupt] {
        let loaded = NeuralVoice::load(voice::VOICE, &voice::config_path(), weights);
        let err = loaded.as_ref().err().expect("the voice does not load");
        assert!(
            matches!(err, SpeakerError::Weights { .. })
                && err.to_string().contains(&weights.display().to_string())
                && err.to_string().contains("callbox models import piper-joe"),
            "{err}"
        );
        let speaker = Speaker::new(loaded, options());
        assert!(matches!(speaker.voice(), VoiceUsed::Espeak(_)));
        assert!(speaker.neural_problem().is_some());
        let (spoken, pieces) = speak_all(&speaker, "Thank you. Goodbye.");
        assert_eq!(spoken.completed, 2);
        assert_all_espeak(&spoken, &pieces);
        assert_well_ordered(&pieces);
        let samples: usize = pieces.iter().map(|p| p.samples.len()).sum();
        assert!(
            samples > LINE_RATE as usize / 2,
            "{samples} samples of speech"
        );
    }
    // A voice the manifest does not know is an error naming it.
    let err = NeuralVoice::installed(dir.path(), "no-such-voice")
        .err()
        .unwrap();
    assert!(err.to_string().contains("no-such-voice"), "{err}");
}

#[test]
fn a_voice_failing_while_speaking_is_replaced_by_espeak_and_the_call_goes_on() {
    // The weights load, but the voice's phonemizer asks espeak-ng for a voice it does not have:
    // every chunk fails in the neural voice and espeak-ng (its own en-us voice) says it.
    let dir = tempfile::tempdir().unwrap();
    let json = std::fs::read_to_string(voice::config_path()).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
    value["espeak"]["voice"] = "xx-no-such-voice".into();
    let config = dir.path().join("voice.onnx.json");
    std::fs::write(&config, value.to_string()).unwrap();
    let neural = NeuralVoice::load(voice::VOICE, &config, &voice::weights()).unwrap();
    let speaker = Speaker::new(Ok(neural), options());
    assert!(is_neural(&speaker.voice()));
    let (spoken, pieces) = speak_all(&speaker, "Thank you for calling. Goodbye.");
    assert_eq!(spoken.completed, 2);
    assert_all_espeak(&spoken, &pieces);
    assert!(pieces.iter().map(|p| p.samples.len()).sum::<usize>() > 8_000);
}

fn greeting(script: Script) -> String {
    let ctx = CallContext {
        call_id: "test".into(),
        unit: "test".into(),
        direction: Direction::Inbound,
        line: LineKind::Text,
        remote_number: None,
        started_at: "2026-11-23T15:00:00Z".parse().unwrap(),
        market: Market::Us,
        timezone: chrono_tz::America::New_York,
        max_turns: 40,
    };
    Agent::new(Arc::new(script), ctx, None).start(0).say
}

#[test]
fn a_scripts_fixed_lines_are_cache_hits_once_prewarmed() {
    // espeak-ng keeps this quick over the whole script; the neural voice follows below.
    let speaker = Speaker::espeak_only(options());
    let clinic = Script::builtin("clinic").unwrap();
    let opening = greeting(clinic.clone());
    let done = speaker.prewarm(&clinic).unwrap();
    assert_eq!(done.lines, clinic.lines_said_as_is().len());
    assert!(done.synthesized > 0 && done.synthesized <= done.chunks);
    assert_eq!(done.not_kept, 0);
    let (_, pieces) = speak_all(&speaker, &opening);
    assert!(pieces.len() >= 3, "{opening:?}");
    assert!(
        pieces.iter().all(|p| p.cached),
        "the greeting and disclosure were prewarmed"
    );
    // A second prewarm of the same script synthesizes nothing.
    assert_eq!(speaker.prewarm(&clinic).unwrap().synthesized, 0);
    // A reply the script does not contain is synthesized.
    let (_, fresh) = speak_all(&speaker, "Your total is forty dollars.");
    assert!(fresh.iter().all(|p| !p.cached));

    // The neural voice: a prewarmed line is said from the cache, with the audio it made.
    let speaker = neural_speaker();
    let line = "Thank you for calling.".to_string();
    let done = speaker.prewarm_lines(std::slice::from_ref(&line)).unwrap();
    assert_eq!((done.chunks, done.synthesized, done.not_kept), (1, 1, 0));
    let (_, pieces) = speak_all(&speaker, &format!("{line} How are you?"));
    assert!(pieces
        .iter()
        .filter(|p| p.chunk == 0)
        .all(|p| p.cached && is_neural(&p.voice)));
    assert!(pieces.iter().filter(|p| p.chunk == 1).all(|p| !p.cached));
    let (_, again) = speak_all(&speaker, &line);
    let cached_audio: Vec<f32> = pieces
        .iter()
        .filter(|p| p.chunk == 0)
        .flat_map(|p| p.samples.clone())
        .collect();
    assert_eq!(
        again
            .into_iter()
            .flat_map(|p| p.samples)
            .collect::<Vec<_>>(),
        cached_audio
    );
    assert!(cached_audio.len() > 8_000);
}
