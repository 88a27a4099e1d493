//! `callbox simulate --audio`: one whole call in audio on the audio-file line, in real time. The
//! caller is either recorded speech (`--caller-audio`, a WAV or a directory of WAVs, one per turn)
//! or the caller's text lines spoken by the box's own neural voice, slower, through a telephone
//! channel. The box hears it through the endpointer and Whisper and answers with its voice; the
//! call can be written to a stereo WAV (left: what the box heard, right: what it said).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::agent::summary::LineKind;
use crate::agent::Script;
use crate::call::audio::{run_audio_call, AudioCallReport, Voices};
use crate::call::endpoint::EndpointOptions;
use crate::call::{TextCall, Utterance};
use crate::config::Config;
use crate::line::audio_file::{AudioFileLine, AudioFileOptions, CallerAction};
use crate::line::{to_i16, CallerTurn};
use crate::models::Manifest;
use crate::speech::scheduler::{Scheduler, SchedulerOptions};
use crate::speech::stt::{SpeechToText, SttOptions};
use crate::speech::testset::Condition;
use crate::speech::tts::speaker::{CancelToken, Speaker, SpeakerOptions};
use crate::speech::turn::{self, EndOfTurn};
use crate::speech::vad::VadModel;
use crate::store::Store;

/// How the audio call is set up.
pub struct AudioCallSetup<'a> {
    /// The caller's text lines (spoken by the neural voice) when there is no recorded audio.
    pub lines: &'a [String],
    pub caller_audio: Option<&'a Path>,
    pub echo: bool,
    pub record: Option<&'a Path>,
}

/// Pause a caller leaves after the box stops before answering.
pub const CALLER_PAUSE_MS: u64 = 600;

/// The inference scheduler of this process's calls, sized by `[inference]`.
pub fn inference_scheduler(config: &Config) -> anyhow::Result<Arc<Scheduler>> {
    let options = SchedulerOptions::with_threads(config.inference.threads);
    let scheduler = Scheduler::new(options).context("cannot start the inference threads")?;
    Ok(Arc::new(scheduler))
}

/// Loads the speech models of the configuration, once, for the calls of this process; all their
/// work runs on one inference scheduler.
pub fn load_voices(config: &Config, script: &Script) -> anyhow::Result<Voices> {
    let manifest = Manifest::embedded();
    let started = std::time::Instant::now();
    let scheduler = inference_scheduler(config)?;
    let stt = load_stt(config, scheduler.threads())?.with_scheduler(Arc::clone(&scheduler));
    let speaker = Speaker::installed(
        &config.models.dir,
        &config.models.tts,
        SpeakerOptions::default(),
    )
    .with_scheduler(Arc::clone(&scheduler));
    if let Some(problem) = speaker.neural_problem() {
        eprintln!("the neural voice is unavailable ({problem}); espeak-ng speaks");
    }
    let speaker = Arc::new(speaker);
    let prewarmed = speaker.prewarm_background(script)?;
    eprintln!(
        "models loaded and {} fixed lines of the script prewarmed in {:.1} s",
        prewarmed.lines,
        started.elapsed().as_secs_f64()
    );
    let vad = load_vad(config, &manifest)?;
    let end_of_turn = load_end_of_turn(config, &manifest)?
        .map(|model| Arc::new(model.with_scheduler(Arc::clone(&scheduler))));
    Ok(Voices {
        stt: Arc::new(stt),
        speaker,
        vad,
        end_of_turn,
        scorer: super::llm::live_scorer(config, script, &scheduler)?,
    })
}

/// The configuration's speech-to-text model, set up for calls with `workers` decoders.
pub fn load_stt(config: &Config, workers: usize) -> anyhow::Result<SpeechToText> {
    let manifest = Manifest::embedded();
    let Some(stt_entry) = manifest.get(&config.models.stt) else {
        bail!(
            "no speech-to-text model `{}` in the manifest",
            config.models.stt
        );
    };
    let options = SttOptions {
        workers,
        ..SttOptions::for_calls()
    };
    SpeechToText::load_with(&stt_entry.dir(&config.models.dir), options)
        .context("cannot load the speech-to-text model (run `callbox models import`)")
}

/// Silero VAD, when it is installed; without it the energy detector listens.
pub fn load_vad(config: &Config, manifest: &Manifest) -> anyhow::Result<Option<VadModel>> {
    let vad = manifest
        .get("silero-vad")
        .map(|entry| entry.dir(&config.models.dir).join("silero_vad.onnx"))
        .filter(|path| path.exists())
        .map(|path| VadModel::load(&path))
        .transpose()
        .context("cannot load Silero VAD")?;
    if vad.is_none() {
        eprintln!("Silero VAD is not installed (models/fetch); the energy detector listens");
    }
    Ok(vad)
}

/// Smart Turn, when it is installed and imported; without it the silence window ends turns.
pub fn load_end_of_turn(config: &Config, manifest: &Manifest) -> anyhow::Result<Option<EndOfTurn>> {
    let Some(dir) = manifest
        .get("smart-turn-v3")
        .map(|entry| entry.dir(&config.models.dir))
        .filter(|dir| {
            dir.join(turn::CANDLE_DIR)
                .join(turn::import::WEIGHTS_FILE)
                .exists()
        })
    else {
        eprintln!(
            "Smart Turn is not imported (models/fetch, then `callbox models import smart-turn-v3`); \
             the {} ms silence window ends the caller's turns",
            config.endpoint.silence_window_ms
        );
        return Ok(None);
    };
    EndOfTurn::load_with(&dir, true)
        .map(Some)
        .context("cannot load Smart Turn")
}

/// The caller's turns: recorded WAVs, or the text lines spoken through a telephone channel.
pub fn caller_turns(
    config: &Config,
    setup: &AudioCallSetup,
    speaker: &Speaker,
) -> anyhow::Result<Vec<CallerTurn>> {
    if let Some(path) = setup.caller_audio {
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("wav")))
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        if files.is_empty() {
            bail!("{} has no WAV files", path.display());
        }
        return files
            .iter()
            .map(|f| Ok(CallerTurn::Speech(to_i16(&super::speech::read_16k(f)?))))
            .collect();
    }
    let silence_ms = u64::from(config.agent.silence_reprompt_s) * 1000 + 500;
    setup
        .lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            if line.trim().is_empty() {
                return Ok(CallerTurn::Silence { ms: silence_ms });
            }
            let mut samples = Vec::new();
            speaker.speak(line, &CancelToken::new(), &mut |piece| {
                samples.extend_from_slice(&piece.samples)
            })?;
            let heard = Condition::Telephone.apply(&samples, i as u64)?;
            Ok(CallerTurn::Speech(to_i16(&heard)))
        })
        .collect()
}

fn caller_actions(turns: Vec<CallerTurn>) -> Vec<CallerAction> {
    turns
        .into_iter()
        .map(|turn| match turn {
            CallerTurn::Speech(audio) => CallerAction::Say {
                audio,
                pause_ms: CALLER_PAUSE_MS,
            },
            CallerTurn::Silence { ms } => CallerAction::Silent { ms },
            CallerTurn::Press(key) => CallerAction::Press {
                key,
                pause_ms: CALLER_PAUSE_MS,
            },
        })
        .collect()
}

/// Runs the call and prints how long the caller waited at each turn.
pub fn simulate_audio(
    config: &Config,
    script: Arc<Script>,
    call: TextCall,
    setup: AudioCallSetup,
    store: &mut Store,
    watch: &mut dyn FnMut(Utterance),
) -> anyhow::Result<AudioCallReport> {
    let voices = load_voices(config, &script)?;
    let actions = caller_actions(caller_turns(config, &setup, &voices.speaker)?);
    let mut line = AudioFileLine::new(
        actions,
        AudioFileOptions {
            echo_gain: setup.echo.then_some(0.25),
            hang_up_after_ms: 10_000,
            ..AudioFileOptions::default()
        },
    );
    let report = run_audio_call(
        config,
        script,
        call,
        LineKind::AudioFile,
        &mut line,
        &voices,
        EndpointOptions::configured(&config.endpoint),
        store,
        watch,
    )?;
    if let Some(path) = setup.record {
        line.write_recording(path)?;
        eprintln!(
            "call recorded to {} (left: caller, right: box)",
            path.display()
        );
    }
    Ok(report)
}

/// The latency figures of a call, for people.
pub fn print_timings(report: &AudioCallReport) {
    println!();
    if let Some(ms) = report.greeting_first_audio_ms {
        println!("greeting: first audio {ms} ms after the call was answered");
    }
    for (i, t) in report.turns.iter().enumerate() {
        println!(
            "turn {}: caller stopped at {:>6} ms; transcript +{} ms (recognizer {} ms); first audio {}",
            i + 1,
            t.caller_speech_end_ms,
            t.stt_done_ms.saturating_sub(t.caller_speech_end_ms),
            t.stt_compute_ms,
            t.response_ms()
                .map_or("none".into(), |ms| format!("+{ms} ms after the caller stopped")),
        );
    }
    for b in &report.barge_ins {
        println!(
            "barge-in: caller started at {} ms, box silent at {} ms",
            b.caller_speech_ms, b.audio_stopped_ms
        );
    }
}
