//! Audio plumbing for speech: WAV files (`hound`), mono mixdown, resampling (`rubato`) and G.711
//! µ-law, the telephone line's codec.

use std::path::Path;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("{path}: {source}")]
    Wav {
        path: String,
        #[source]
        source: hound::Error,
    },
    #[error("{path}: unsupported WAV format ({0})", path = .1)]
    Format(String, String),
    #[error("cannot resample {from} Hz to {to} Hz: {message}")]
    Resample { from: u32, to: u32, message: String },
}

/// Reads a WAV file as mono f32 in [-1, 1] (channels averaged) and its sample rate.
pub fn read_wav(path: &Path) -> Result<(Vec<f32>, u32), AudioError> {
    let wav_err = |source| AudioError::Wav {
        path: path.display().to_string(),
        source,
    };
    let mut reader = hound::WavReader::open(path).map_err(wav_err)?;
    let spec = reader.spec();
    let channels = spec.channels.max(1) as usize;
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => {
            if spec.bits_per_sample != 32 {
                return Err(AudioError::Format(
                    format!("{}-bit float", spec.bits_per_sample),
                    path.display().to_string(),
                ));
            }
            reader
                .samples::<f32>()
                .collect::<Result<_, _>>()
                .map_err(wav_err)?
        }
        hound::SampleFormat::Int => {
            let bits = spec.bits_per_sample;
            if bits == 0 || bits > 32 {
                return Err(AudioError::Format(
                    format!("{bits}-bit integer"),
                    path.display().to_string(),
                ));
            }
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(wav_err)?
        }
    };
    let mono = if channels == 1 {
        interleaved
    } else {
        interleaved
            .chunks_exact(channels)
            .map(|f| f.iter().sum::<f32>() / channels as f32)
            .collect()
    };
    Ok((mono, spec.sample_rate))
}

/// Resamples mono `samples` from `from` Hz to `to` Hz (FFT resampler, delay trimmed).
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, AudioError> {
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let err = |e: &dyn std::fmt::Display| AudioError::Resample {
        from,
        to,
        message: e.to_string(),
    };
    let mut resampler = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input)
        .map_err(|e| err(&e))?;
    let input = InterleavedSlice::new(samples, 1, samples.len()).map_err(|e| err(&e))?;
    let out = resampler
        .process_all(&input, samples.len(), None)
        .map_err(|e| err(&e))?;
    Ok(out.take_data())
}

/// Encodes one sample in [-1, 1] as G.711 µ-law.
pub fn mulaw_encode(x: f32) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = (x.clamp(-1.0, 1.0) * 32767.0) as i32;
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let exponent = (7 - (s.leading_zeros() as i32 - 17)).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// Decodes one G.711 µ-law byte to a sample in [-1, 1].
pub fn mulaw_decode(b: u8) -> f32 {
    let b = !b;
    let sign = b & 0x80;
    let exponent = ((b >> 4) & 0x07) as i32;
    let mantissa = (b & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    let v = if sign != 0 { -magnitude } else { magnitude };
    v as f32 / 32768.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mulaw_round_trip_is_close() {
        for i in -100..=100 {
            let x = i as f32 / 100.0;
            let y = mulaw_decode(mulaw_encode(x));
            assert!((x - y).abs() <= 0.03 * x.abs() + 0.001, "{x} -> {y}");
        }
        assert_eq!(mulaw_encode(0.0), 0xFF);
    }

    #[test]
    fn resampling_keeps_length_and_tone() {
        let tone: Vec<f32> = (0..8000)
            .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 8000.0).sin())
            .collect();
        let up = resample(&tone, 8000, 16000).unwrap();
        assert!((up.len() as i64 - 16000).abs() <= 2, "{}", up.len());
        let expected = |i: usize| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16000.0).sin();
        let err: f32 = (2000..14000)
            .map(|i| (up[i] - expected(i)).abs())
            .sum::<f32>()
            / 12000.0;
        assert!(err < 0.02, "mean error {err}");
    }
}
