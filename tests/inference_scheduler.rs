//! The inference scheduler with the real models: several calls transcribing at once share one
//! loaded tiny.en through it, a speculative transcript dropped before a worker reaches it never
//! runs, and a reply streamed by the Piper voice as one reply job per chunk arrives in order and
//! stops at a barge-in. (Queue order, refusal and shutdown are unit tests of the module.)

#[path = "support/busy_workers.rs"]
mod busy_workers;
#[path = "support/voice.rs"]
mod voice;

use std::sync::Arc;

use callbox::models::{default_models_dir, Manifest};
use callbox::speech::scheduler::{
    CancelToken, Priority, ScheduleError, Scheduler, SchedulerOptions,
};
use callbox::speech::stt::import::{import_model, ImportOptions};
use callbox::speech::stt::{SpeechToText, SttError, SttOptions};
use callbox::speech::tts::speaker::{NeuralVoice, Speaker, SpeakerOptions};

fn scheduler(threads: usize) -> Arc<Scheduler> {
    Arc::new(Scheduler::new(SchedulerOptions::with_threads(threads)).unwrap())
}

fn recognizer(scheduler: &Arc<Scheduler>) -> SpeechToText {
    let models = default_models_dir();
    let manifest = Manifest::embedded();
    let entry = manifest.get("whisper-tiny-en").expect("tiny.en");
    import_model(&models, entry, ImportOptions::default()).expect("import (run models/fetch)");
    let options = SttOptions {
        workers: scheduler.threads(),
        ..SttOptions::for_calls()
    };
    SpeechToText::load_with(&entry.dir(&models), options)
        .expect("load tiny.en")
        .with_scheduler(Arc::clone(scheduler))
}

/// A caller's line at 16 kHz, said by espeak-ng (no model needed to make it).
fn caller_line(text: &str) -> Vec<f32> {
    let espeak = Speaker::espeak_only(SpeakerOptions::default());
    let mut samples = Vec::new();
    espeak
        .speak(text, &CancelToken::new(), &mut |p| {
            samples.extend_from_slice(&p.samples)
        })
        .unwrap();
    samples
}

#[test]
fn calls_share_one_recognizer_and_a_dropped_speculation_never_runs() {
    let scheduler = scheduler(2);
    let stt = Arc::new(recognizer(&scheduler));
    let audio = Arc::new(caller_line("I need my prescription."));
    let alone = stt.transcribe(&audio).unwrap().text;
    assert!(alone.to_lowercase().contains("prescription"), "{alone:?}");
    let before = scheduler.stats();
    assert_eq!(before.ran, 1, "the transcription ran as a scheduler job");

    // Four calls at once, one model: each gets the same words.
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let (stt, audio) = (Arc::clone(&stt), Arc::clone(&audio));
            std::thread::spawn(move || stt.transcribe(&audio).map(|t| t.text))
        })
        .collect();
    for call in calls {
        assert_eq!(call.join().unwrap().unwrap(), alone);
    }
    assert_eq!(scheduler.stats().ran, before.ran + 4);

    // Both workers busy: a speculative transcript queued behind them is dropped (the caller
    // went on talking) and is never run; the turn's real transcript still comes.
    let busy = busy_workers::occupy(&scheduler, 2);
    let speculation = CancelToken::new();
    let guess = stt
        .submit(Priority::Live, &speculation, audio.to_vec())
        .unwrap();
    let turn = stt
        .submit(Priority::Live, &CancelToken::new(), audio.to_vec())
        .unwrap();
    speculation.cancel();
    busy.release();
    assert!(matches!(guess.wait(), Err(ScheduleError::Cancelled)));
    assert_eq!(turn.wait().unwrap().unwrap().text, alone);
    assert_eq!(scheduler.stats().cancelled, 1);

    // Once the scheduler has stopped, a transcription is a clear error, not a hang.
    scheduler.shutdown();
    let err = stt.transcribe(&audio).unwrap_err();
    assert!(
        matches!(err, SttError::Scheduler(ScheduleError::ShutDown)),
        "{err}"
    );
}

#[test]
fn a_reply_streams_one_job_per_chunk_ahead_of_transcriptions_and_stops_at_a_barge_in() {
    // One worker, so the order the jobs are taken in is the order they run in.
    let scheduler = scheduler(1);
    let voice = NeuralVoice::load(voice::VOICE, &voice::config_path(), &voice::weights())
        .expect("the Piper voice loads");
    let speaker = Arc::new(
        Speaker::new(Ok(voice), SpeakerOptions::default()).with_scheduler(Arc::clone(&scheduler)),
    );
    let reply = "Thanks, I have that. The doctor is in on Monday. The office opens at nine. \
                 Parking is behind the building. Goodbye.";
    let chunks = speaker.chunks(reply);
    assert!(chunks.len() >= 5, "{chunks:?}");

    // The worker is busy and another call's transcription is already waiting when the reply
    // starts: every chunk of the reply is still taken before it (the voice keeps up with the
    // line). That job notes how many jobs had started when its own turn came.
    let busy = busy_workers::occupy(&scheduler, 1);
    let counts = Arc::clone(&scheduler);
    let other_call = scheduler
        .submit(Priority::Live, &CancelToken::new(), move || {
            counts.stats().ran
        })
        .unwrap();
    let stream = speaker.stream(reply.to_string(), CancelToken::new());
    busy.release();
    // Said to the end: every chunk in order, each ending with its last piece.
    let pieces: Vec<_> = stream.receiver.iter().collect();
    let spoken = stream.finish().unwrap();
    assert!(spoken.chunks.len() >= 2, "{:?}", spoken.chunks);
    assert_eq!(
        other_call.wait().unwrap(),
        1 + spoken.chunks.len() as u64 + 1,
        "the holding job, then every chunk of the reply, then the transcription"
    );
    assert_eq!(
        (spoken.completed, spoken.cancelled),
        (spoken.chunks.len(), false)
    );
    let order: Vec<usize> = pieces.iter().map(|p| p.chunk).collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
    assert_eq!(
        pieces.iter().filter(|p| p.last).count(),
        spoken.chunks.len()
    );
    let ran = scheduler.stats().ran;
    assert!(ran >= spoken.chunks.len() as u64, "{ran} jobs");

    // The caller barges in while the second chunk of another reply is heard: the chunks after
    // the next are never synthesized. (Another reply, since the speaker caches the chunks it
    // made: said again, the first reply would come whole from the cache, without a job.)
    let reply = "We have a slot on Tuesday. Bring your insurance card. The clinic is on Main \
                 Street. Please come ten minutes early. See you then.";
    assert!(speaker.chunks(reply).len() >= 5);
    let cancel = CancelToken::new();
    let stream = speaker.stream(reply.to_string(), cancel.clone());
    let mut last_chunk = 0;
    for piece in stream.receiver.iter() {
        if piece.chunk == 1 {
            cancel.cancel();
        }
        last_chunk = piece.chunk;
    }
    let spoken = stream.finish().unwrap();
    assert!(
        spoken.cancelled && spoken.completed <= 2 && last_chunk <= 2,
        "{spoken:?}, last piece of chunk {last_chunk}"
    );
    assert!(
        scheduler.stats().ran - ran <= 3,
        "no job for the chunks after the barge-in"
    );
}
