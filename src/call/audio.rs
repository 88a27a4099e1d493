//! One call in audio: the caller's frames from the [`Line`] go through the endpointer (speech
//! start for barge-in, end of turn), each finished turn is transcribed on a worker thread, the
//! agent answers, and the reply is spoken chunk by chunk onto the line as soon as each piece of
//! audio is ready. The session's own thread only moves frames and messages; inference never runs
//! on it, so a slow model never stalls the line.
//!
//! Per turn it records when the caller stopped talking, when the endpointer ended the turn, when
//! the transcript was ready, when the reply text was ready and when its first audio went out: the
//! latency the caller feels.
//!
//! A turn the endpointer holds at the caller's first short pause is transcribed at once,
//! speculatively, and its transcript held until the endpointer confirms the end (the pause lasted
//! long enough and the transcript answers what the agent asked or Smart Turn found the caller
//! done, see [`Endpointer::confirm`]): if the caller goes on first, the transcript is dropped
//! unseen (its job skipped, or stopped mid-way) and the turn continues; the agent only ever
//! hears final turns. After each reply the endpointer learns what the agent asked for.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use chrono::Duration;
use tracing::{debug, info, warn};

use super::endpoint::{
    detector, Decision, Endpoint, EndpointOptions, Endpointer, TurnEnd, TurnModel,
};
use super::{record_call, start_call, transcript, CallError, TextCall, Utterance};
use crate::agent::summary::{LineKind, Speaker as Who};
use crate::agent::understand::TurnScorer;
use crate::agent::{Agent, Event, Reply, Script, Summary, Then};
use crate::config::Config;
use crate::line::{
    to_f32, to_i16, Briefing, Line, LineError, LineInput, TransferOutcome, FRAME_MS,
};
use crate::speech::stt::SpeechToText;
use crate::speech::tts::speaker::{CancelToken, Speaker, SpeechStream};
use crate::speech::turn::EndOfTurn;
use crate::speech::vad::VadModel;
use crate::store::{EventRow, ReplyTiming, Store, TurnRow};

/// The models a call uses, loaded once and shared by every call.
#[derive(Clone)]
pub struct Voices {
    pub stt: Arc<SpeechToText>,
    pub speaker: Arc<Speaker>,
    /// Silero VAD's weights; without them the energy detector listens.
    pub vad: Option<VadModel>,
    /// Smart Turn; without it the silence window alone ends the caller's turns.
    pub end_of_turn: Option<Arc<EndOfTurn>>,
    /// The language model's intent scorer for turns the script's phrases cannot decide.
    pub scorer: Option<Arc<dyn TurnScorer>>,
}

/// When each step of a caller turn happened, in ms from the call's start.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TurnTiming {
    pub caller_speech_end_ms: u64,
    /// When the endpointer ended the turn (and the recognizer was asked).
    pub turn_end_ms: u64,
    /// What made it final.
    pub ended_by: TurnEnd,
    /// Whether it was transcribed while held, before it was final.
    pub transcribed_early: bool,
    pub stt_done_ms: u64,
    pub reply_ready_ms: u64,
    pub first_audio_ms: Option<u64>,
    /// Time the recognizer itself took.
    pub stt_compute_ms: u64,
    /// Time the agent took to answer the transcript.
    pub agent_compute_us: u64,
}

impl TurnTiming {
    /// End of the caller's speech → the endpointer ending the turn.
    pub fn endpointing_ms(&self) -> u64 {
        self.turn_end_ms.saturating_sub(self.caller_speech_end_ms)
    }

    /// End of the caller's speech to the first audio of the reply: what the caller waits.
    pub fn response_ms(&self) -> Option<u64> {
        self.first_audio_ms
            .map(|a| a.saturating_sub(self.caller_speech_end_ms))
    }
}

/// A barge-in: when the caller started talking over the box, and when the box's audio stopped.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BargeIn {
    pub caller_speech_ms: u64,
    pub detected_ms: u64,
    pub audio_stopped_ms: u64,
}

/// What a finished audio call reports beside its summary.
#[derive(Debug, Clone)]
pub struct AudioCallReport {
    pub summary: Summary,
    pub turns: Vec<TurnTiming>,
    /// Call answered → first audio of the greeting.
    pub greeting_first_audio_ms: Option<u64>,
    pub barge_ins: Vec<BargeIn>,
    /// Every question asked of the end-of-turn model, in order.
    pub end_of_turn: Vec<Decision>,
    /// Turns ended speculatively whose caller went on: their transcripts were dropped.
    pub speculations_dropped: usize,
}

/// A reply being spoken.
struct Speaking {
    stream: SpeechStream,
    cancel: CancelToken,
    /// Index of the agent's turn in `turns`.
    turn: usize,
    /// The caller turn's timing this reply answers.
    timing: Option<usize>,
    got_audio: bool,
    /// Audio held back until enough is ready to play without a gap.
    held: Vec<i16>,
    playing: bool,
    /// The line ran out of this reply's audio while more was still to come.
    starved: bool,
}

/// Audio a reply holds back before it starts playing, unless a whole chunk is ready sooner:
/// enough that a voice running near real time does not stutter.
const PLAYOUT_START_MS: usize = 200;

/// A caller turn for the recognizer.
struct SttJob {
    id: u64,
    /// Raised when the held turn resumed: the job is skipped, or stopped if it has started.
    dropped: CancelToken,
    speech_start_ms: u64,
    speech_end_ms: u64,
    turn_end_ms: u64,
    ended_by: TurnEnd,
    audio: Vec<i16>,
}

/// A transcript back from the worker.
struct Heard {
    speech_start_ms: u64,
    speech_end_ms: u64,
    turn_end_ms: u64,
    ended_by: TurnEnd,
    /// Transcribed while the turn was held.
    early: bool,
    text: String,
    compute_ms: u64,
    confidence: f32,
    /// Windows the recognizer decoded a second time, on a longer window, for want of confidence.
    retried_windows: usize,
}

/// A turn ended speculatively, waiting for its transcript and for the end to be confirmed.
struct Speculation {
    /// The recognizer job.
    id: u64,
    speech_start_ms: u64,
    /// Its transcript, once back, held until the endpointer confirms the end.
    heard: Option<Heard>,
    /// Raised when the caller goes on.
    dropped: CancelToken,
}

/// Runs one call on `line` to its end and records it. Returns the summary and the timings.
#[allow(clippy::too_many_arguments)]
pub fn run_audio_call(
    config: &Config,
    script: Arc<Script>,
    call: TextCall,
    line_kind: LineKind,
    line: &mut dyn Line,
    voices: &Voices,
    endpoint: EndpointOptions,
    store: &mut Store,
    watch: &mut dyn FnMut(Utterance),
) -> Result<AudioCallReport, CallError> {
    let (ctx, _in_call) = start_call(config, &call, line_kind, &script, store);
    let mut session = Session {
        agent: Agent::new(script, ctx, voices.scorer.clone()),
        voices: voices.clone(),
        endpointer: Endpointer::new(detector(voices.vad.as_ref()), endpoint)
            .with_end_of_turn(voices.end_of_turn.clone().map(|m| m as Arc<dyn TurnModel>)),
        turns: Vec::new(),
        timings: Vec::new(),
        barge_ins: Vec::new(),
        speaking: None,
        queue: std::collections::VecDeque::new(),
        then: None,
        greeting_first_audio_ms: None,
        caller_speech_start_ms: None,
        speculation: None,
        dropped: Vec::new(),
        finals: Vec::new(),
        speculations_dropped: 0,
        last_activity_ms: 0,
        reprompt_ms: u64::from(config.agent.silence_reprompt_s) * 1000,
        t_ms: 0,
    };
    let (to_stt, utterances) = mpsc::channel::<SttJob>();
    let (heard_tx, heard) = mpsc::channel::<(u64, Result<Heard, String>)>();
    let stt = Arc::clone(&voices.stt);
    let worker = std::thread::Builder::new()
        .name("call-stt".into())
        .spawn(move || {
            for u in utterances {
                let started = Instant::now();
                // A held turn whose caller goes on is dropped: its transcription is skipped,
                // or stops mid-way, rather than delaying the turn that follows.
                let result = stt
                    .transcribe_cancellable(&to_f32(&u.audio), &u.dropped)
                    .map(|t| Heard {
                        speech_start_ms: u.speech_start_ms,
                        speech_end_ms: u.speech_end_ms,
                        turn_end_ms: u.turn_end_ms,
                        ended_by: u.ended_by,
                        early: u.ended_by.is_speculative(),
                        text: t.text,
                        compute_ms: started.elapsed().as_millis() as u64,
                        confidence: t.confidence,
                        retried_windows: t.retried_windows,
                    })
                    .map_err(|e| e.to_string());
                if heard_tx.send((u.id, result)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| CallError::Line(LineError::Io(e.to_string())))?;

    let greeting = session.agent.start(0);
    session.reply(greeting, None, watch);
    let mut pending_stt = 0usize;
    let mut next_job = 0u64;
    let mut caller_hung_up = false;
    loop {
        let input = match line.next() {
            Ok(input) => input,
            Err(LineError::Closed) => break,
            Err(e) => return Err(CallError::Line(e)),
        };
        let t = session.t_ms;
        session.t_ms += FRAME_MS;
        match input {
            LineInput::Audio(frame) => {
                match session.endpointer.push(&frame, t, line.played_level()) {
                    Some(Endpoint::SpeechStarted { at_ms }) => {
                        debug!(
                            t_ms = t,
                            at_ms,
                            box_queued_ms = line.queued_ms(),
                            box_speaking = session.speaking.is_some(),
                            "caller speech started"
                        );
                        session.caller_speech_start_ms = Some(at_ms);
                        if session.box_talking(line) {
                            session.barge_in(line, at_ms, t);
                        }
                    }
                    Some(Endpoint::TurnEnded {
                        audio,
                        speech_end_ms,
                        ended_by,
                    }) => {
                        let start = session.caller_speech_start_ms.take().unwrap_or(t);
                        debug!(
                            t_ms = t,
                            start_ms = start,
                            speech_end_ms,
                            audio_ms = audio.len() as u64 / 16,
                            box_queued_ms = line.queued_ms(),
                            ended_by = ?ended_by,
                            "caller turn to the recognizer"
                        );
                        let id = next_job;
                        next_job += 1;
                        let dropped = CancelToken::new();
                        if let Some(old) = session.speculation.take() {
                            // The last held turn became final without its transcript yet.
                            let (final_ms, by) = session.endpointer.last_commit();
                            match old.heard {
                                Some(mut h) => {
                                    h.turn_end_ms = h.turn_end_ms.max(final_ms);
                                    h.ended_by = by;
                                    session.heard(h, watch);
                                }
                                None => session.finals.push((old.id, final_ms, by)),
                            }
                        }
                        if ended_by.is_speculative() {
                            session.speculation = Some(Speculation {
                                id,
                                speech_start_ms: start,
                                heard: None,
                                dropped: dropped.clone(),
                            });
                        }
                        pending_stt += 1;
                        let job = SttJob {
                            id,
                            dropped,
                            speech_start_ms: start,
                            speech_end_ms,
                            turn_end_ms: t + FRAME_MS,
                            ended_by,
                            audio,
                        };
                        if to_stt.send(job).is_err() {
                            warn!("the recognizer thread is gone");
                        }
                        session.last_activity_ms = t;
                    }
                    Some(Endpoint::TurnResumed { .. }) => {
                        // The caller went on: the speculative transcript will be dropped.
                        if let Some(s) = session.speculation.take() {
                            debug!("the caller went on after a held end of turn");
                            s.dropped.cancel();
                            if s.heard.is_none() {
                                session.dropped.push(s.id);
                            }
                            session.speculations_dropped += 1;
                            session.caller_speech_start_ms = Some(s.speech_start_ms);
                        }
                    }
                    None => {}
                }
            }
            LineInput::Dtmf(key) => {
                debug!(%key, "caller pressed a key");
                session.last_activity_ms = t;
                let reply = session.agent.handle(Event::Dtmf(key), t);
                session.reply(reply, None, watch);
            }
            LineInput::HungUp => {
                caller_hung_up = true;
                watch(Utterance::Hangup);
                session.stop_speaking(line);
                session.agent.handle(Event::HungUp, t);
                break;
            }
        }

        while let Ok((id, result)) = heard.try_recv() {
            pending_stt = pending_stt.saturating_sub(1);
            if let Some(i) = session.dropped.iter().position(|&d| d == id) {
                session.dropped.swap_remove(i);
                continue;
            }
            match (result, session.speculation.as_mut()) {
                (Ok(h), Some(s)) if s.id == id => s.heard = Some(h),
                (Ok(mut h), _) => {
                    if let Some(i) = session.finals.iter().position(|f| f.0 == id) {
                        let (_, final_ms, by) = session.finals.swap_remove(i);
                        h.turn_end_ms = h.turn_end_ms.max(final_ms);
                        h.ended_by = by;
                    }
                    session.heard(h, watch)
                }
                (Err(e), speculation) => {
                    session.finals.retain(|f| f.0 != id);
                    warn!(error = %e, "a caller turn could not be transcribed");
                    if speculation.is_some_and(|s| s.id == id) {
                        session.speculation = None;
                        session.endpointer.commit(TurnEnd::Silence);
                    }
                }
            }
        }
        session.confirm_speculation(watch);
        session.pump_audio(line)?;
        if session.box_talking(line) {
            // Silence is counted from when the box stops talking.
            session.last_activity_ms = t;
        }

        if session.idle(line) {
            match session.then.take() {
                Some(Then::Hangup) => {
                    watch(Utterance::Hangup);
                    line.hang_up().map_err(CallError::Line)?;
                    break;
                }
                Some(Then::Transfer {
                    target,
                    context,
                    mode,
                    number,
                }) => {
                    watch(Utterance::Transfer {
                        target: &target,
                        context: &context,
                    });
                    let warm = matches!(mode, crate::agent::script::HandoffMode::Warm);
                    let briefing_audio = if warm {
                        session.briefing(&context)
                    } else {
                        Vec::new()
                    };
                    let briefing = warm.then_some(Briefing {
                        text: &context,
                        audio: &briefing_audio,
                        answer_within: std::time::Duration::from_secs(u64::from(
                            config.handoff.warm_timeout_s,
                        )),
                    });
                    match line
                        .transfer(&number, briefing.as_ref())
                        .map_err(CallError::Line)?
                    {
                        TransferOutcome::Connected => break,
                        TransferOutcome::Failed => {
                            let reply = session.agent.handle(Event::TransferFailed, t);
                            session.reply(reply, None, watch);
                        }
                    }
                }
                Some(Then::Listen) | None => {
                    let silent_for = t.saturating_sub(session.last_activity_ms);
                    let transcribing = pending_stt > 0 || session.speculation.is_some();
                    if !transcribing
                        && !session.endpointer.in_turn()
                        && silent_for >= session.reprompt_ms
                    {
                        watch(Utterance::Silence);
                        session.last_activity_ms = t;
                        let reply = session.agent.handle(Event::Silence, t);
                        session.reply(reply, None, watch);
                    } else if session.agent.is_over() && !transcribing {
                        line.hang_up().map_err(CallError::Line)?;
                        break;
                    }
                }
            }
        }
    }
    session.stop_speaking(line);
    drop(to_stt);
    let _ = worker.join();

    let ended_at = call.started_at + Duration::milliseconds(session.t_ms as i64);
    let summary = session.agent.summary(ended_at, transcript(&session.turns));
    let mut events: Vec<EventRow> = Vec::new();
    for (i, timing) in session.timings.iter().enumerate() {
        events.push(EventRow {
            t_ms: timing.caller_speech_end_ms as i64,
            kind: "turn_timing".into(),
            detail: serde_json::json!({ "turn": i, "timing": timing }).to_string(),
        });
    }
    for b in &session.barge_ins {
        events.push(EventRow {
            t_ms: b.detected_ms as i64,
            kind: "barge_in".into(),
            detail: serde_json::to_string(b).unwrap_or_default(),
        });
    }
    let turns = std::mem::take(&mut session.turns);
    record_call(
        config,
        &session.agent,
        &summary,
        turns,
        line_kind,
        events,
        store,
    )?;
    debug!(caller_hung_up, "audio call over");
    Ok(AudioCallReport {
        summary,
        turns: session.timings,
        greeting_first_audio_ms: session.greeting_first_audio_ms,
        barge_ins: session.barge_ins,
        end_of_turn: session.endpointer.take_decisions(),
        speculations_dropped: session.speculations_dropped,
    })
}

/// A caller turn's timing as stored on the box turn that answers it.
fn reply_timing(t: &TurnTiming) -> ReplyTiming {
    ReplyTiming {
        caller_end_ms: t.caller_speech_end_ms as i64,
        transcript_ms: t.stt_done_ms as i64,
        reply_ready_ms: t.reply_ready_ms as i64,
        first_audio_ms: t.first_audio_ms.map(|ms| ms as i64),
    }
}

struct Session {
    agent: Agent,
    voices: Voices,
    endpointer: Endpointer,
    turns: Vec<TurnRow>,
    timings: Vec<TurnTiming>,
    barge_ins: Vec<BargeIn>,
    speaking: Option<Speaking>,
    /// Replies waiting for the one being spoken (text, agent turn, timing).
    queue: std::collections::VecDeque<(String, usize, Option<usize>)>,
    /// What to do once the box has finished speaking.
    then: Option<Then>,
    greeting_first_audio_ms: Option<u64>,
    caller_speech_start_ms: Option<u64>,
    /// The turn ended speculatively whose transcript is awaited.
    speculation: Option<Speculation>,
    /// Recognizer jobs whose turn resumed: their transcripts are dropped.
    dropped: Vec<u64>,
    /// Recognizer jobs of held turns that became final before their transcript came back: when
    /// and how they became final.
    finals: Vec<(u64, u64, TurnEnd)>,
    speculations_dropped: usize,
    /// Last time anybody spoke or pressed a key (for the silence re-prompt).
    last_activity_ms: u64,
    reprompt_ms: u64,
    t_ms: u64,
}

impl Session {
    /// Takes the agent's reply: records the agent's turn, starts speaking it and remembers what
    /// to do after.
    fn reply(&mut self, reply: Reply, timing: Option<usize>, watch: &mut dyn FnMut(Utterance)) {
        if !matches!(reply.then, Then::Listen) {
            self.then = Some(reply.then.clone());
        }
        self.endpointer.expect(self.agent.expectation());
        if reply.say.is_empty() {
            return;
        }
        watch(Utterance::Agent(&reply.say));
        debug!(text = %reply.say, "agent says");
        self.turns.push(TurnRow {
            speaker: Who::Agent.as_str().into(),
            text: reply.say.clone(),
            start_ms: self.t_ms as i64,
            end_ms: self.t_ms as i64,
            interrupted: false,
            timing: timing.map(|i| reply_timing(&self.timings[i])),
        });
        self.queue
            .push_back((reply.say, self.turns.len() - 1, timing));
        self.start_next();
    }

    fn start_next(&mut self) {
        if self.speaking.is_some() {
            return;
        }
        if let Some((text, turn, timing)) = self.queue.pop_front() {
            let cancel = CancelToken::new();
            let stream = self.voices.speaker.stream(text, cancel.clone());
            self.speaking = Some(Speaking {
                stream,
                cancel,
                turn,
                timing,
                got_audio: false,
                held: Vec::new(),
                playing: false,
                starved: false,
            });
        }
    }

    /// The held transcript of a speculatively ended turn goes to the agent once the endpointer
    /// confirms the end; the turn ended when it became final.
    fn confirm_speculation(&mut self, watch: &mut dyn FnMut(Utterance)) {
        let Some(text) = self
            .speculation
            .as_ref()
            .and_then(|s| s.heard.as_ref())
            .map(|h| h.text.clone())
        else {
            return;
        };
        let Some((final_ms, by)) = self.endpointer.confirm(&text) else {
            return;
        };
        if let Some(mut h) = self.speculation.take().and_then(|s| s.heard) {
            h.turn_end_ms = h.turn_end_ms.max(final_ms);
            h.ended_by = by;
            self.heard(h, watch);
        }
    }

    /// A transcript arrived: the caller's turn goes to the agent.
    fn heard(&mut self, h: Heard, watch: &mut dyn FnMut(Utterance)) {
        let text = h.text.trim().to_string();
        if text.is_empty() {
            debug!("a caller turn had no words");
            return;
        }
        debug!(
            t_ms = self.t_ms,
            speech_end_ms = h.speech_end_ms,
            compute_ms = h.compute_ms,
            confidence = h.confidence,
            retried = h.retried_windows,
            %text,
            "caller turn heard"
        );
        watch(Utterance::Caller(&text));
        self.turns.push(TurnRow {
            speaker: Who::Caller.as_str().into(),
            text: text.clone(),
            start_ms: h.speech_start_ms as i64,
            end_ms: h.speech_end_ms as i64,
            interrupted: false,
            timing: None,
        });
        self.timings.push(TurnTiming {
            caller_speech_end_ms: h.speech_end_ms,
            turn_end_ms: h.turn_end_ms,
            ended_by: h.ended_by,
            transcribed_early: h.early,
            stt_done_ms: self.t_ms,
            reply_ready_ms: self.t_ms,
            first_audio_ms: None,
            stt_compute_ms: h.compute_ms,
            agent_compute_us: 0,
        });
        let timing = self.timings.len() - 1;
        let started = Instant::now();
        let reply = self.agent.handle(Event::Said(text), self.t_ms);
        let took = started.elapsed();
        // The line's clock only moves by frames: the agent's own time is added to it.
        self.timings[timing].agent_compute_us = took.as_micros() as u64;
        self.timings[timing].reply_ready_ms = self.t_ms + took.as_millis() as u64;
        self.reply(reply, Some(timing), watch);
    }

    /// Moves synthesized audio onto the line; notes when each reply's first audio goes out.
    fn pump_audio(&mut self, line: &mut dyn Line) -> Result<(), CallError> {
        let Some(speaking) = self.speaking.as_mut() else {
            return Ok(());
        };
        loop {
            match speaking.stream.receiver.try_recv() {
                Ok(piece) => {
                    debug!(
                        t_ms = self.t_ms,
                        turn = speaking.turn,
                        chunk = piece.chunk,
                        chunks = piece.chunks,
                        piece_ms = piece.samples.len() as u64 * 1000 / u64::from(piece.sample_rate),
                        last = piece.last,
                        cached = piece.cached,
                        box_queued_ms = line.queued_ms(),
                        "reply audio ready"
                    );
                    speaking.held.extend(to_i16(&piece.samples));
                    let enough = speaking.held.len() >= PLAYOUT_START_MS * 16;
                    if !(speaking.playing || enough || piece.last) {
                        continue;
                    }
                    speaking.playing = true;
                    if !speaking.got_audio {
                        speaking.got_audio = true;
                        let out_at = self.t_ms + line.queued_ms();
                        match speaking.timing {
                            Some(i) => {
                                self.timings[i].first_audio_ms = Some(out_at);
                                if let Some(stored) = self.turns[speaking.turn].timing.as_mut() {
                                    stored.first_audio_ms = Some(out_at as i64);
                                }
                            }
                            None if self.greeting_first_audio_ms.is_none() => {
                                self.greeting_first_audio_ms = Some(out_at)
                            }
                            None => {}
                        }
                    }
                    line.play(&std::mem::take(&mut speaking.held))
                        .map_err(CallError::Line)?;
                }
                Err(mpsc::TryRecvError::Empty) => {
                    let dry = speaking.playing && line.queued_ms() == 0;
                    if dry && !speaking.starved {
                        debug!(
                            t_ms = self.t_ms,
                            turn = speaking.turn,
                            "the line ran out of reply audio mid-reply"
                        );
                    }
                    speaking.starved = dry;
                    return Ok(());
                }
                Err(mpsc::TryRecvError::Disconnected) => break,
            }
        }
        let done = self.speaking.take().expect("speaking checked above");
        if !done.held.is_empty() {
            line.play(&done.held).map_err(CallError::Line)?;
        }
        let turn = done.turn;
        if let Err(e) = done.stream.finish() {
            warn!(error = %e, "the reply could not be spoken");
        }
        self.turns[turn].end_ms = (self.t_ms + line.queued_ms()) as i64;
        self.start_next();
        Ok(())
    }

    /// A warm transfer's context in the call's voice, for the human. Synthesized on the
    /// speaker's own thread; the caller, told to hold, waits meanwhile. Empty when neither voice
    /// could speak it (the human is then connected without it).
    fn briefing(&self, context: &str) -> Vec<i16> {
        let stream = self
            .voices
            .speaker
            .stream(context.to_string(), CancelToken::new());
        let mut audio = Vec::new();
        for piece in stream.receiver.iter() {
            audio.extend(to_i16(&piece.samples));
        }
        match stream.finish() {
            Ok(_) => audio,
            Err(e) => {
                warn!(error = %e, "the warm transfer's briefing could not be spoken");
                Vec::new()
            }
        }
    }

    fn box_talking(&self, line: &dyn Line) -> bool {
        self.speaking.is_some() || line.queued_ms() > 0
    }

    /// Nothing being said or about to be.
    fn idle(&self, line: &dyn Line) -> bool {
        !self.box_talking(line) && self.queue.is_empty()
    }

    /// The caller talks over the box: its voice stops at once and the reply is marked
    /// interrupted; the agent carries on from what the caller says.
    fn barge_in(&mut self, line: &mut dyn Line, speech_ms: u64, detected_ms: u64) {
        let turn = self.speaking.as_ref().map(|s| s.turn);
        self.stop_speaking(line);
        self.queue.clear();
        if let Some(turn) = turn.or_else(|| self.turns.iter().rposition(|t| t.speaker == "agent")) {
            self.turns[turn].interrupted = true;
            self.turns[turn].end_ms = detected_ms as i64;
        }
        if matches!(self.then, Some(Then::Listen)) {
            self.then = None;
        }
        self.barge_ins.push(BargeIn {
            caller_speech_ms: speech_ms,
            detected_ms,
            audio_stopped_ms: detected_ms + FRAME_MS,
        });
        info!("caller barged in");
    }

    fn stop_speaking(&mut self, line: &mut dyn Line) {
        if let Some(speaking) = self.speaking.take() {
            speaking.cancel.cancel();
            // The stream's thread ends at its next check; its result no longer matters.
            drop(speaking.stream);
        }
        line.flush();
    }
}
