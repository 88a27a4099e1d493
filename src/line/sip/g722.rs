//! G.722 (ITU-T, 64 kbit/s sub-band ADPCM): wideband audio, 16 kHz samples up to 7 kHz, so the
//! call's 16 kHz frames go out and come in without the 8↔16 kHz rate change. The codec itself is
//! the `audio-codec` crate's pure-Rust one (MIT, from the authors of rsipstack); this module
//! fixes the mode (64 kbit/s, 16 kHz, one byte per two samples) and the 20 ms framing.

use audio_codec::{Decoder as _, Encoder as _};

/// 16 kHz samples in one 20 ms packet.
pub const FRAME_SAMPLES: usize = 320;
/// Bytes of one 20 ms packet at 64 kbit/s.
pub const FRAME_BYTES: usize = 160;

/// Encodes 16 kHz audio, keeping the ADPCM state from packet to packet.
pub struct G722Encoder(audio_codec::g722::G722Encoder);

impl G722Encoder {
    pub fn new() -> G722Encoder {
        G722Encoder(audio_codec::g722::G722Encoder::new())
    }

    /// One byte for every two samples (an odd last sample is dropped).
    pub fn encode(&mut self, samples: &[i16]) -> Vec<u8> {
        self.0.encode(&samples[..samples.len() & !1])
    }
}

impl Default for G722Encoder {
    fn default() -> Self {
        G722Encoder::new()
    }
}

/// Decodes a G.722 stream to 16 kHz audio, keeping the ADPCM state from packet to packet.
pub struct G722Decoder(audio_codec::g722::G722Decoder);

impl G722Decoder {
    pub fn new() -> G722Decoder {
        G722Decoder(audio_codec::g722::G722Decoder::new())
    }

    /// Two samples for every byte; any byte is a valid code, so any payload decodes.
    pub fn decode(&mut self, payload: &[u8]) -> Vec<i16> {
        self.0.decode(payload)
    }
}

impl Default for G722Decoder {
    fn default() -> Self {
        G722Decoder::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `input` through the codec 20 ms at a time, as a call does.
    fn round_trip(input: &[i16]) -> Vec<i16> {
        let mut encoder = G722Encoder::new();
        let mut decoder = G722Decoder::new();
        let mut output = Vec::with_capacity(input.len());
        for frame in input.chunks(FRAME_SAMPLES) {
            let packet = encoder.encode(frame);
            assert_eq!(packet.len(), frame.len() / 2);
            output.extend(decoder.decode(&packet));
        }
        output
    }

    /// The codec's delay (its two QMF banks) found by correlation, then the correlation and
    /// the signal-to-noise ratio in dB at that delay.
    fn compare(input: &[i16], output: &[i16]) -> (usize, f64, f64) {
        let n = input.len().min(output.len()) - 64;
        let x: Vec<f64> = input[..n].iter().map(|&s| f64::from(s)).collect();
        (0..64)
            .map(|lag| {
                let y: Vec<f64> = output[lag..lag + n].iter().map(|&s| f64::from(s)).collect();
                let xy: f64 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
                let xx: f64 = x.iter().map(|a| a * a).sum();
                let yy: f64 = y.iter().map(|b| b * b).sum();
                let noise: f64 = x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum();
                let correlation = xy / (xx.sqrt() * yy.sqrt()).max(1e-9);
                (lag, correlation, 10.0 * (xx / noise.max(1e-9)).log10())
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0, 0.0))
    }

    /// Real speech: espeak-ng's voice (a Debian package the project installs), at 16 kHz.
    fn speech() -> Vec<i16> {
        let dir = tempfile::tempdir().unwrap();
        let wav = dir.path().join("speech.wav");
        let status = std::process::Command::new("espeak-ng")
            .args(["-w"])
            .arg(&wav)
            .arg("Good morning, I would like to book an appointment for next Tuesday, please.")
            .status()
            .expect("espeak-ng (apt-get install espeak-ng)");
        assert!(status.success());
        let (samples, rate) = crate::speech::audio::read_wav(&wav).unwrap();
        let at_16k = crate::speech::audio::resample(&samples, rate, 16_000).unwrap();
        crate::line::to_i16(&at_16k)
    }

    #[test]
    fn speech_survives_the_round_trip() {
        let input = speech();
        assert!(input.len() > 16_000, "{} samples", input.len());
        let output = round_trip(&input);
        assert_eq!(output.len(), input.len() & !1);
        let (delay, correlation, snr) = compare(&input, &output);
        assert!(
            correlation > 0.98,
            "correlation {correlation:.4} at delay {delay}"
        );
        assert!(snr > 15.0, "SNR {snr:.1} dB at delay {delay}");
    }

    #[test]
    fn wideband_audio_above_4_khz_gets_through() {
        // A 6 kHz tone: G.711 at 8 kHz cannot carry it at all; G.722 does.
        let tone: Vec<i16> = (0..16_000)
            .map(|i| {
                (8_000.0 * (2.0 * std::f64::consts::PI * 6_000.0 * i as f64 / 16_000.0).sin())
                    as i16
            })
            .collect();
        let output = round_trip(&tone);
        let (delay, correlation, _) = compare(&tone, &output);
        assert!(
            correlation > 0.9,
            "correlation {correlation:.4} at delay {delay}"
        );
    }

    #[test]
    fn silence_stays_quiet_and_any_bytes_decode() {
        let output = round_trip(&[0; 3_200]);
        assert!(output.iter().all(|s| s.unsigned_abs() < 64));
        let mut decoder = G722Decoder::new();
        let noise: Vec<u8> = (0..=255).collect();
        assert_eq!(decoder.decode(&noise).len(), 512);
        assert_eq!(G722Encoder::new().encode(&[1, 2, 3]).len(), 1);
    }
}
