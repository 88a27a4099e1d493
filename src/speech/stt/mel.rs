//! Whisper's log-mel front end, shared by the recognizer and the end-of-turn model: the
//! Slaney-scale mel filter bank (computed here, as librosa's `mel(sr=16000, n_fft=400, n_mels=80)`
//! does, not shipped with the model) and the spectrogram as Whisper computes it: a centered STFT
//! (periodic Hann window 400, hop 160) as one matrix product with a windowed-DFT matrix (the
//! frames read in place from the padded signal, hop by hop), power |X|², mel filters (a second
//! product), log10, clamped to max − 8, scaled (x + 4) / 4.

use candle_transformers::models::whisper as w;

use crate::speech::kernels::{self, View};

pub const SAMPLE_RATE: usize = w::SAMPLE_RATE;
pub const N_FFT: usize = w::N_FFT;
pub const HOP_LENGTH: usize = w::HOP_LENGTH;
/// Frames in Whisper's 30 s window.
pub const N_FRAMES: usize = w::N_FRAMES;

fn hz_to_mel(f: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if f >= MIN_LOG_HZ {
        min_log_mel + (f / MIN_LOG_HZ).ln() / logstep
    } else {
        f / F_SP
    }
}

fn mel_to_hz(m: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if m >= min_log_mel {
        MIN_LOG_HZ * (logstep * (m - min_log_mel)).exp()
    } else {
        F_SP * m
    }
}

/// Slaney-normalized mel filters, `[n_mels, n_fft / 2 + 1]` row-major.
pub fn mel_filters(sample_rate: usize, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let n_bins = n_fft / 2 + 1;
    let fft_freqs: Vec<f64> = (0..n_bins)
        .map(|k| k as f64 * sample_rate as f64 / n_fft as f64)
        .collect();
    let min_mel = hz_to_mel(0.0);
    let max_mel = hz_to_mel(sample_rate as f64 / 2.0);
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(min_mel + (max_mel - min_mel) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut out = vec![0f32; n_mels * n_bins];
    for i in 0..n_mels {
        let (lo, mid, hi) = (mel_f[i], mel_f[i + 1], mel_f[i + 2]);
        let enorm = 2.0 / (hi - lo);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = (f - lo) / (mid - lo);
            let upper = (hi - f) / (hi - mid);
            out[i * n_bins + k] = (lower.min(upper).max(0.0) * enorm) as f32;
        }
    }
    out
}

/// The spectrogram's fixed matrices, made once per model.
pub struct LogMel {
    n_mels: usize,
    /// `[n_fft, 2 · bins]` row-major: column k is `w[n]·cos(2πkn/N)`, column bins + k is
    /// `−w[n]·sin(…)`.
    dft: Vec<f32>,
    /// `[n_mels, bins]` row-major.
    filters: Vec<f32>,
}

impl LogMel {
    pub fn new(n_mels: usize) -> candle_core::Result<LogMel> {
        let n = N_FFT;
        let bins = n / 2 + 1;
        let mut m = vec![0f32; n * 2 * bins];
        for t in 0..n {
            let phase = 2.0 * std::f64::consts::PI * t as f64 / n as f64;
            let window = 0.5 - 0.5 * phase.cos();
            for k in 0..bins {
                // k·t mod n keeps the angle small and exact.
                let angle = 2.0 * std::f64::consts::PI * ((k * t) % n) as f64 / n as f64;
                m[t * 2 * bins + k] = (window * angle.cos()) as f32;
                m[t * 2 * bins + bins + k] = (-window * angle.sin()) as f32;
            }
        }
        Ok(LogMel {
            n_mels,
            dft: m,
            filters: mel_filters(SAMPLE_RATE, n, n_mels),
        })
    }

    /// The scaled log-mel features `[n_mels, frames]` (row-major) of frames centered on
    /// `i · hop` of `signal`, which is reflect-padded by half a window at the start and padded
    /// after its end with `end` (Whisper pads audio with zeros; the end-of-turn model reflects).
    pub fn features(
        &self,
        signal: &[f32],
        frames: usize,
        end: EndPadding,
    ) -> candle_core::Result<Vec<f32>> {
        let half = N_FFT / 2;
        let needed = frames * HOP_LENGTH + N_FFT;
        let mut padded = Vec::with_capacity(needed.max(signal.len() + 2 * half));
        let reflect = half.min(signal.len().saturating_sub(1));
        padded.resize(half - reflect, 0.0);
        padded.extend((1..=reflect).rev().map(|i| signal[i]));
        padded.extend_from_slice(signal);
        if end == EndPadding::Reflect {
            let last = signal.len().saturating_sub(1);
            padded.extend((1..=half.min(last)).map(|i| signal[last - i]));
        }
        padded.resize(padded.len().max(needed), 0.0);
        let bins = N_FFT / 2 + 1;
        // Frame i is the N_FFT samples from i · hop: rows of the padded signal, hop apart.
        let mut spectrum = vec![0f32; frames * 2 * bins];
        kernels::matmul(
            &mut spectrum,
            2 * bins,
            View::rows(&padded, HOP_LENGTH),
            View::rows(&self.dft, 2 * bins),
            (frames, 2 * bins, N_FFT),
            false,
        );
        let mut power = vec![0f32; frames * bins];
        for (p, x) in power
            .chunks_exact_mut(bins)
            .zip(spectrum.chunks_exact(2 * bins))
        {
            let (re, im) = x.split_at(bins);
            for ((p, &re), &im) in p.iter_mut().zip(re).zip(im) {
                *p = re * re + im * im;
            }
        }
        let mut log_mel = vec![0f32; self.n_mels * frames];
        kernels::matmul(
            &mut log_mel,
            frames,
            View::rows(&self.filters, bins),
            View::transposed(&power, bins),
            (self.n_mels, frames, bins),
            false,
        );
        let mut max = f32::NEG_INFINITY;
        for v in log_mel.iter_mut() {
            *v = v.max(1e-10).log10();
            max = max.max(*v);
        }
        for v in log_mel.iter_mut() {
            *v = (v.max(max - 8.0) + 4.0) / 4.0;
        }
        Ok(log_mel)
    }
}

/// What follows the signal in the last frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndPadding {
    Zeros,
    Reflect,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_bank_matches_librosa_slaney() {
        let f = mel_filters(16000, 400, 80);
        assert_eq!(f.len(), 80 * 201);
        // Reference values of librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) (Whisper's
        // mel_filters.npz): filter 0 peaks at bin 1, filter 79 covers the top bins.
        assert!((f[1] - 0.024_862_694).abs() < 1e-6, "{}", f[1]);
        assert_eq!(f[0], 0.0);
        let last = &f[79 * 201..];
        let peak = last.iter().cloned().fold(0f32, f32::max);
        assert!(peak > 0.0 && last[..150].iter().all(|&v| v == 0.0));
        // Every filter has some weight.
        for i in 0..80 {
            assert!(
                f[i * 201..(i + 1) * 201].iter().any(|&v| v > 0.0),
                "filter {i}"
            );
        }
    }

    #[test]
    fn log_mel_has_requested_frames_and_puts_a_tone_in_its_band() {
        let mel = LogMel::new(80).unwrap();
        // A 1 kHz tone: bin 25 of the DFT, in the mel filters around 1 kHz.
        let samples: Vec<f32> = (0..16000)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16000.0).sin() * 0.1)
            .collect();
        let m = mel.features(&samples, 100, EndPadding::Zeros).unwrap();
        assert_eq!(m.len(), 80 * 100);
        assert!(m.iter().all(|v| v.is_finite()));
        let frame = 50;
        let column: Vec<f32> = (0..80).map(|b| m[b * 100 + frame]).collect();
        let loudest = (0..80)
            .max_by(|&a, &b| column[a].total_cmp(&column[b]))
            .unwrap();
        let f = mel_filters(16000, 400, 80);
        assert!(f[loudest * 201 + 25] > 0.0, "mel bin {loudest} holds 1 kHz");
        // The scaling: at most 1.5 above (x + 4) / 4 of the max, 2 below it.
        let max = m.iter().cloned().fold(f32::MIN, f32::max);
        assert!(m.iter().all(|&v| v >= max - 2.0 - 1e-5));
    }
}
