//! Tones for the models-free SIP tests: a phone's microphone WAV of a tone, and how much of
//! a recording is a given tone (Goertzel), frame by frame. Each test file uses part of it.
#![allow(dead_code)]

use std::path::Path;

use callbox::line::sip::baresip::Baresip;
use callbox::line::to_f32;
use callbox::speech::audio::{read_wav, write_wav};

/// `seconds` of a sine at `hz`, sampled at `rate`.
pub fn tone(hz: f64, rate: u32, seconds: f64, amplitude: f64) -> Vec<i16> {
    (0..(f64::from(rate) * seconds) as usize)
        .map(|i| {
            (amplitude * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin())
                as i16
        })
        .collect()
}

/// Power of `hz` in `samples` relative to their whole power (Goertzel).
pub fn share_at(samples: &[i16], rate: u32, hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    let total: f64 = samples.iter().map(|&x| f64::from(x).powi(2)).sum();
    2.0 * power / (samples.len() as f64 * total.max(1e-9))
}

pub fn write_source(path: &Path, samples: &[i16], rate: u32) {
    write_wav(path, &to_f32(samples), rate).expect("write the phone's microphone WAV");
}

/// Seconds of 20 ms frames of `samples` (at `rate`) that are mostly a tone at `hz`.
pub fn tone_seconds(samples: &[f32], rate: u32, hz: f64) -> f64 {
    let frame = rate as usize / 50;
    let frames = samples
        .chunks_exact(frame)
        .filter(|chunk| {
            let pcm: Vec<i16> = chunk.iter().map(|&x| (x * 32767.0) as i16).collect();
            let loud = pcm.iter().any(|s| s.unsigned_abs() > 300);
            loud && share_at(&pcm, rate, hz) > 0.5
        })
        .count();
    frames as f64 * 0.02
}

/// What a phone recorded (the audio it received), at its own rate.
pub fn recording_of(phone: &Baresip) -> (Vec<f32>, u32) {
    let path = phone.recordings().last().cloned().expect("a recording");
    read_wav(&path).expect("the phone's recording")
}
