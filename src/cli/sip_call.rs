//! `callbox simulate --sip`: one real SIP call on loopback (see [`crate::line::sip::loopback`]):
//! baresip dials the box and speaks the caller's turns; the box answers over RTP and runs the
//! call through the whole pipeline; the summary is stored and queued for the CRM. What baresip's
//! phone heard is transcribed back, so the run shows the box's voice crossed the network.

use std::sync::Arc;

use anyhow::Context;

use super::audio_call::{caller_turns, load_voices, AudioCallSetup};
use crate::agent::summary::LineKind;
use crate::agent::Script;
use crate::call::audio::{run_audio_call, AudioCallReport};
use crate::call::endpoint::EndpointOptions;
use crate::call::{TextCall, Utterance};
use crate::config::Config;
use crate::line::sip::loopback::{call_over_loopback, speech_parts, CallerTiming};
use crate::line::sip::media::MediaStats;
use crate::line::sip::SipOptions;
use crate::store::Store;

/// How a SIP call went, beyond the summary.
pub struct SipCallReport {
    pub audio: AudioCallReport,
    pub media: MediaStats,
    /// What the caller's phone heard, transcribed.
    pub heard_by_caller: String,
}

/// Runs the call and returns its report.
pub fn simulate_sip(
    config: &Config,
    script: Arc<Script>,
    call: TextCall,
    setup: AudioCallSetup,
    caller_number: Option<&str>,
    store: &mut Store,
    watch: &mut dyn FnMut(Utterance),
) -> anyhow::Result<SipCallReport> {
    let voices = load_voices(config, &script)?;
    let turns = caller_turns(config, &setup, &voices.speaker)?;
    let mut options = SipOptions::from_config(&config.sip)?;
    options.listen.set_port(0);
    let number: String = caller_number
        .map(|n| {
            n.chars()
                .filter(|c| c.is_ascii_digit() || *c == '+')
                .collect()
        })
        .unwrap_or_else(|| "caller".into());
    let report = call_over_loopback(
        &turns,
        &number,
        options,
        CallerTiming::default(),
        |line, caller_id| {
            let call = TextCall {
                remote_number: crate::agent::extract::phone_number(caller_id)
                    .or(call.remote_number),
                ..call
            };
            run_audio_call(
                config,
                script,
                call,
                LineKind::Sip,
                line,
                &voices,
                EndpointOptions::configured(&config.endpoint),
                store,
                watch,
            )
        },
    )?;
    let audio = report.session?;
    let mut heard = Vec::new();
    for part in speech_parts(&report.heard) {
        let text = voices
            .stt
            .transcribe(part)
            .context("cannot transcribe what the caller heard")?
            .text;
        heard.push(text);
    }
    Ok(SipCallReport {
        audio,
        media: report.media,
        heard_by_caller: heard.join(" "),
    })
}
