//! Audio plumbing for speech: WAV files (`hound`), mono mixdown, resampling (`rubato`), G.711
//! µ-law (the telephone line's codec), and a simulated telephone channel (300–3400 Hz band, 8 kHz
//! µ-law round trip, background noise at a given SNR) so tests and benchmarks hear what a caller's
//! voice becomes on a real line.

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

/// Writes mono samples in [-1, 1] as a 16-bit PCM WAV file; the file appears whole or not at all.
pub fn write_wav(path: &Path, samples: &[f32], rate: u32) -> Result<(), AudioError> {
    let err = |source| AudioError::Wav {
        path: path.display().to_string(),
        source,
    };
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let mut writer = hound::WavWriter::create(&partial, spec).map_err(err)?;
    for s in samples {
        writer
            .write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16)
            .map_err(err)?;
    }
    writer.finalize().map_err(err)?;
    std::fs::rename(&partial, path).map_err(|e| err(hound::Error::IoError(e)))
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
    crate::line::sip::g711::mulaw_encode((x.clamp(-1.0, 1.0) * 32767.0) as i16)
}

/// Decodes one G.711 µ-law byte to a sample in [-1, 1].
pub fn mulaw_decode(b: u8) -> f32 {
    f32::from(crate::line::sip::g711::mulaw_decode(b)) / 32768.0
}

/// Lower and upper edge of the telephone voice band, Hz.
pub const PHONE_BAND_HZ: (f32, f32) = (300.0, 3400.0);

/// A second-order IIR section (direct form I) with the coefficients of the RBJ audio-EQ cookbook.
struct Biquad {
    b: [f32; 3],
    a: [f32; 2],
    x: [f32; 2],
    y: [f32; 2],
}

impl Biquad {
    fn new(high_pass: bool, cutoff_hz: f32, rate: f32) -> Biquad {
        let w0 = 2.0 * std::f32::consts::PI * cutoff_hz / rate;
        let alpha = w0.sin() / (2.0 * std::f32::consts::FRAC_1_SQRT_2);
        let cos = w0.cos();
        let a0 = 1.0 + alpha;
        let (b0, b1) = if high_pass {
            ((1.0 + cos) / 2.0, -(1.0 + cos))
        } else {
            ((1.0 - cos) / 2.0, 1.0 - cos)
        };
        Biquad {
            b: [b0 / a0, b1 / a0, b0 / a0],
            a: [-2.0 * cos / a0, (1.0 - alpha) / a0],
            x: [0.0; 2],
            y: [0.0; 2],
        }
    }

    fn run(&mut self, samples: &mut [f32]) {
        for s in samples {
            let x = *s;
            let y = self.b[0] * x + self.b[1] * self.x[0] + self.b[2] * self.x[1]
                - self.a[0] * self.y[0]
                - self.a[1] * self.y[1];
            self.x = [x, self.x[0]];
            self.y = [y, self.y[0]];
            *s = y;
        }
    }
}

/// What a caller's 16 kHz voice becomes on a phone line and back: band-limited to 300–3400 Hz
/// (4th-order Butterworth edges), narrowed to 8 kHz, coded and decoded as G.711 µ-law, and
/// widened to 16 kHz again for the recognizer.
pub fn telephone_channel(samples_16k: &[f32]) -> Result<Vec<f32>, AudioError> {
    let mut band = samples_16k.to_vec();
    for _ in 0..2 {
        Biquad::new(true, PHONE_BAND_HZ.0, 16_000.0).run(&mut band);
        Biquad::new(false, PHONE_BAND_HZ.1, 16_000.0).run(&mut band);
    }
    let narrow = resample(&band, 16_000, 8_000)?;
    let coded: Vec<f32> = narrow
        .iter()
        .map(|&s| mulaw_decode(mulaw_encode(s)))
        .collect();
    resample(&coded, 8_000, 16_000)
}

/// Power of the speech in `samples`: the mean square over the 20 ms frames within 40 dB of the
/// loudest one, so pauses do not dilute it (in the spirit of ITU-T P.56's active speech level).
pub fn active_power(samples: &[f32], rate: u32) -> f32 {
    let frame = (rate as usize / 50).max(1);
    let powers: Vec<f32> = samples
        .chunks(frame)
        .map(|f| f.iter().map(|s| s * s).sum::<f32>() / f.len() as f32)
        .collect();
    let loudest = powers.iter().cloned().fold(0.0, f32::max);
    let active: Vec<f32> = powers
        .into_iter()
        .filter(|&p| p > 0.0 && p >= loudest * 1e-4)
        .collect();
    if active.is_empty() {
        0.0
    } else {
        active.iter().sum::<f32>() / active.len() as f32
    }
}

/// `samples` with white Gaussian noise added at `snr_db` below the speech's active power; the
/// noise is the same for the same `seed`.
pub fn add_noise(samples: &[f32], rate: u32, snr_db: f32, seed: u64) -> Vec<f32> {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let noise_power = active_power(samples, rate) / 10f32.powf(snr_db / 10.0);
    let Ok(normal) = rand_distr::Normal::new(0.0, noise_power.sqrt()) else {
        return samples.to_vec();
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    samples
        .iter()
        .map(|&s| (s + normal.sample(&mut rng)).clamp(-1.0, 1.0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, rate: u32, seconds: f32) -> Vec<f32> {
        let n = (rate as f32 * seconds) as usize;
        (0..n)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin())
            .collect()
    }

    fn rms(s: &[f32]) -> f32 {
        (s.iter().map(|x| x * x).sum::<f32>() / s.len() as f32).sqrt()
    }

    #[test]
    fn telephone_channel_keeps_the_voice_band_only() {
        let through = |hz| {
            let out = telephone_channel(&tone(hz, 16_000, 1.0)).unwrap();
            rms(&out[4000..12000]) / rms(&tone(hz, 16_000, 1.0))
        };
        assert!(through(1000.0) > 0.85, "1 kHz passes: {}", through(1000.0));
        assert!(through(100.0) < 0.15, "100 Hz is cut: {}", through(100.0));
        assert!(through(6000.0) < 0.05, "6 kHz is cut: {}", through(6000.0));
    }

    #[test]
    fn noise_is_added_at_the_asked_snr_and_repeatable() {
        let mut speech = vec![0.0; 16_000];
        speech.extend(tone(500.0, 16_000, 1.0));
        let noisy = add_noise(&speech, 16_000, 15.0, 7);
        assert_eq!(noisy, add_noise(&speech, 16_000, 15.0, 7));
        assert_ne!(noisy, add_noise(&speech, 16_000, 15.0, 8));
        let noise: Vec<f32> = noisy.iter().zip(&speech).map(|(n, s)| n - s).collect();
        let snr = 10.0 * (active_power(&speech, 16_000) / (rms(&noise).powi(2))).log10();
        assert!((snr - 15.0).abs() < 0.3, "measured SNR {snr}");
    }

    #[test]
    fn wav_written_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wav");
        let samples = tone(440.0, 8000, 0.1);
        write_wav(&path, &samples, 8000).unwrap();
        let (back, rate) = read_wav(&path).unwrap();
        assert_eq!(rate, 8000);
        assert_eq!(back.len(), samples.len());
        assert!(back.iter().zip(&samples).all(|(a, b)| (a - b).abs() < 1e-4));
    }

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
