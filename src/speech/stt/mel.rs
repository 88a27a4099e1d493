//! Whisper's log-mel front end: the Slaney-scale mel filter bank (computed here, as librosa's
//! `mel(sr=16000, n_fft=400, n_mels=80)` does, not shipped with the model) and the spectrogram
//! (candle-transformers' `pcm_to_mel`: Hann window 400, hop 160, log10, clamp to max − 8,
//! scaled (x + 4) / 4).

use candle_transformers::models::whisper::{self as w, audio};

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

/// The log-mel spectrogram of 16 kHz mono `samples`, `[n_mels, frames]` row-major, with
/// `frames` the first frames of the (padded) spectrogram: 3000 for Whisper's 30 s window, or fewer
/// to encode only the audio there is.
pub fn log_mel(samples: &[f32], filters: &[f32], n_mels: usize, frames: usize) -> Vec<f32> {
    // Whisper's STFT is centered: frame i covers samples around i·hop, the start reflect-padded
    // by n_fft / 2 (candle's frames start at i·hop).
    let half = N_FFT / 2;
    let mut padded = Vec::with_capacity(samples.len() + half);
    let reflect = half.min(samples.len().saturating_sub(1));
    padded.resize(half - reflect, 0.0);
    padded.extend((1..=reflect).rev().map(|i| samples[i]));
    padded.extend_from_slice(samples);
    let mel = audio::log_mel_spectrogram_(&padded, filters, N_FFT, HOP_LENGTH, n_mels, false);
    let n_len = mel.len() / n_mels;
    let frames = frames.min(n_len);
    let mut out = Vec::with_capacity(n_mels * frames);
    for row in mel.chunks_exact(n_len) {
        out.extend_from_slice(&row[..frames]);
    }
    out
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
    fn log_mel_has_requested_frames() {
        let filters = mel_filters(16000, 400, 80);
        let samples: Vec<f32> = (0..16000).map(|i| (i as f32 * 0.05).sin() * 0.1).collect();
        let m = log_mel(&samples, &filters, 80, 100);
        assert_eq!(m.len(), 80 * 100);
        assert!(m.iter().all(|v| v.is_finite()));
    }
}
