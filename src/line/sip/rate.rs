//! The 2:1 rate change between the line's 8 kHz codecs and the box's 16 kHz frames. A fixed ratio
//! on 20 ms blocks needs nothing more than one windowed-sinc low-pass run as two polyphase halves,
//! with a delay of about 1 ms (a general resampler's block would add tens of milliseconds to every
//! turn of the conversation).

/// Filter length at 16 kHz; each polyphase half has half of it.
const TAPS: usize = 48;
/// Cut-off at 16 kHz: just under the 4 kHz Nyquist of the 8 kHz side.
const CUTOFF_HZ: f64 = 3_800.0;

fn low_pass() -> [f32; TAPS] {
    let mut taps = [0f32; TAPS];
    let fc = CUTOFF_HZ / 16_000.0;
    let centre = (TAPS - 1) as f64 / 2.0;
    for (i, tap) in taps.iter_mut().enumerate() {
        let t = i as f64 - centre;
        let sinc = if t == 0.0 {
            2.0 * fc
        } else {
            (2.0 * std::f64::consts::PI * fc * t).sin() / (std::f64::consts::PI * t)
        };
        let blackman = 0.42
            - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / (TAPS - 1) as f64).cos()
            + 0.08 * (4.0 * std::f64::consts::PI * i as f64 / (TAPS - 1) as f64).cos();
        *tap = (sinc * blackman) as f32;
    }
    let sum: f32 = taps.iter().sum();
    taps.iter_mut().for_each(|t| *t /= sum);
    taps
}

fn saturate(x: f32) -> i16 {
    x.round().clamp(-32768.0, 32767.0) as i16
}

/// 8 kHz → 16 kHz, block by block, keeping its state between blocks.
pub struct Upsampler {
    taps: [f32; TAPS],
    /// The last `TAPS / 2` input samples, newest last.
    history: Vec<f32>,
}

impl Default for Upsampler {
    fn default() -> Self {
        Upsampler {
            taps: low_pass(),
            history: vec![0.0; TAPS / 2],
        }
    }
}

impl Upsampler {
    pub fn process(&mut self, input: &[i16]) -> Vec<i16> {
        let half = TAPS / 2;
        let mut out = Vec::with_capacity(input.len() * 2);
        for &x in input {
            self.history.remove(0);
            self.history.push(f32::from(x));
            for phase in 0..2 {
                // Output sample 2n + phase sees the zero-stuffed input at taps of its parity.
                let acc: f32 = (0..half)
                    .map(|k| self.taps[2 * k + phase] * self.history[half - 1 - k])
                    .sum();
                out.push(saturate(2.0 * acc));
            }
        }
        out
    }
}

/// 16 kHz → 8 kHz, block by block (blocks of even length), keeping its state between blocks.
pub struct Downsampler {
    taps: [f32; TAPS],
    /// The last `TAPS` input samples, newest last.
    history: Vec<f32>,
}

impl Default for Downsampler {
    fn default() -> Self {
        Downsampler {
            taps: low_pass(),
            history: vec![0.0; TAPS],
        }
    }
}

impl Downsampler {
    pub fn process(&mut self, input: &[i16]) -> Vec<i16> {
        let mut out = Vec::with_capacity(input.len() / 2);
        for pair in input.chunks(2) {
            for &x in pair {
                self.history.remove(0);
                self.history.push(f32::from(x));
            }
            let acc: f32 = (0..TAPS)
                .map(|k| self.taps[k] * self.history[TAPS - 1 - k])
                .sum();
            out.push(saturate(acc));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: f64, hz: f64, samples: usize) -> Vec<i16> {
        (0..samples)
            .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / rate).sin()) as i16)
            .collect()
    }

    fn rms(samples: &[i16]) -> f64 {
        (samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
    }

    #[test]
    fn a_voice_band_tone_keeps_its_level_both_ways() {
        let at_8k = tone(8_000.0, 1_000.0, 1_600);
        let mut up = Upsampler::default();
        let at_16k: Vec<i16> = at_8k.chunks(160).flat_map(|b| up.process(b)).collect();
        assert_eq!(at_16k.len(), 3_200);
        let level = rms(&at_16k[200..]) / rms(&at_8k[100..]);
        assert!((level - 1.0).abs() < 0.05, "level ratio {level}");

        let mut down = Downsampler::default();
        let back: Vec<i16> = at_16k.chunks(320).flat_map(|b| down.process(b)).collect();
        assert_eq!(back.len(), 1_600);
        let level = rms(&back[200..]) / rms(&at_8k[200..]);
        assert!((level - 1.0).abs() < 0.05, "level ratio {level}");
    }

    #[test]
    fn content_above_the_8k_nyquist_is_removed_before_decimating() {
        let high = tone(16_000.0, 6_000.0, 3_200);
        let mut down = Downsampler::default();
        let out = down.process(&high);
        assert!(
            rms(&out[50..]) < rms(&high) * 0.05,
            "6 kHz leaked through as an alias: {} of {}",
            rms(&out[50..]),
            rms(&high)
        );
    }
}
