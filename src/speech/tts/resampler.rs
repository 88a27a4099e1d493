//! Resampling speech to the line's rate while it is being synthesized: samples go in piece by
//! piece as the voice makes them and come out at the line's rate as soon as the resampler has a
//! block, with its start-up delay dropped. Fed one whole clip, it gives what
//! `speech::audio::resample` gives for that clip.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

use crate::speech::audio::AudioError;

/// Input samples per resampler block (as `speech::audio::resample` uses): about 46 ms of a
/// Piper voice, less than the decoder's first window.
const BLOCK: usize = 1024;

pub struct StreamResampler {
    inner: Option<Fft<f32>>,
    from: u32,
    to: u32,
    pending: Vec<f32>,
    /// Output samples still to drop (the resampler's delay).
    to_trim: usize,
    consumed: usize,
    produced: usize,
}

impl StreamResampler {
    pub fn new(from: u32, to: u32) -> Result<StreamResampler, AudioError> {
        let inner = if from == to {
            None
        } else {
            let fft = Fft::<f32>::new(from as usize, to as usize, BLOCK, 1, FixedSync::Input)
                .map_err(|e| error(from, to, &e))?;
            Some(fft)
        };
        let to_trim = inner.as_ref().map_or(0, |r| r.output_delay());
        Ok(StreamResampler {
            inner,
            from,
            to,
            pending: Vec::new(),
            to_trim,
            consumed: 0,
            produced: 0,
        })
    }

    /// Takes the next samples at the source rate; returns what is ready at the line's rate.
    pub fn push(&mut self, samples: &[f32]) -> Result<Vec<f32>, AudioError> {
        self.consumed += samples.len();
        let Some(resampler) = self.inner.as_mut() else {
            self.produced += samples.len();
            return Ok(samples.to_vec());
        };
        self.pending.extend_from_slice(samples);
        let mut out = Vec::new();
        let mut offset = 0;
        while self.pending.len() - offset >= resampler.input_frames_next() {
            let need = resampler.input_frames_next();
            let block = &self.pending[offset..offset + need];
            out.extend(run(resampler, block, None, self.from, self.to)?);
            offset += need;
        }
        self.pending.drain(..offset);
        Ok(self.trim(out))
    }

    /// Flushes what is left: the output then has the clip's length at the line's rate.
    pub fn finish(&mut self) -> Result<Vec<f32>, AudioError> {
        let Some(resampler) = self.inner.as_mut() else {
            return Ok(Vec::new());
        };
        let expected =
            (self.consumed as f64 * f64::from(self.to) / f64::from(self.from)).ceil() as usize;
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.pending);
        let mut partial = Some(rest.len());
        while self.produced + out.len().saturating_sub(self.to_trim) < expected {
            let mut block = rest.clone();
            block.resize(resampler.input_frames_next(), 0.0);
            let indexing = Indexing::new().partial_len(partial.take().unwrap_or(0));
            out.extend(run(resampler, &block, Some(&indexing), self.from, self.to)?);
        }
        let mut out = self.trim(out);
        out.truncate(expected.saturating_sub(self.produced - out.len()));
        self.produced = expected;
        Ok(out)
    }

    fn trim(&mut self, mut out: Vec<f32>) -> Vec<f32> {
        let drop = self.to_trim.min(out.len());
        out.drain(..drop);
        self.to_trim -= drop;
        self.produced += out.len();
        out
    }
}

fn error(from: u32, to: u32, e: &dyn std::fmt::Display) -> AudioError {
    AudioError::Resample {
        from,
        to,
        message: e.to_string(),
    }
}

fn run(
    resampler: &mut Fft<f32>,
    block: &[f32],
    indexing: Option<&Indexing>,
    from: u32,
    to: u32,
) -> Result<Vec<f32>, AudioError> {
    let input = InterleavedSlice::new(block, 1, block.len()).map_err(|e| error(from, to, &e))?;
    let out = resampler
        .process(&input, indexing)
        .map_err(|e| error(from, to, &e))?;
    Ok(out.take_data())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::speech::audio;

    fn chirp(n: usize, rate: f32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = i as f32 / rate;
                (2.0 * std::f32::consts::PI * (200.0 + 300.0 * t) * t).sin() * 0.5
            })
            .collect()
    }

    #[test]
    fn pieces_give_what_the_whole_clip_gives() {
        let clip = chirp(22050, 22050.0);
        let mut whole = StreamResampler::new(22050, 16000).unwrap();
        let mut at_once = whole.push(&clip).unwrap();
        at_once.extend(whole.finish().unwrap());
        let mut stream = StreamResampler::new(22050, 16000).unwrap();
        let mut pieces = Vec::new();
        for piece in clip.chunks(2048) {
            pieces.extend(stream.push(piece).unwrap());
        }
        let first_ready = pieces.len();
        pieces.extend(stream.finish().unwrap());
        assert!(first_ready > 0, "audio comes out before the end");
        assert_eq!(pieces, at_once);
        // The same clip through the one-shot resampler: same length, same signal.
        let reference = audio::resample(&clip, 22050, 16000).unwrap();
        assert_eq!(pieces.len(), reference.len());
        let worst = pieces
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-5, "largest difference {worst}");
    }

    #[test]
    fn same_rate_passes_through_and_short_clips_keep_their_length() {
        let mut same = StreamResampler::new(16000, 16000).unwrap();
        assert_eq!(same.push(&[0.1, 0.2]).unwrap(), vec![0.1, 0.2]);
        assert!(same.finish().unwrap().is_empty());
        let mut down = StreamResampler::new(22050, 8000).unwrap();
        let mut out = down.push(&chirp(300, 22050.0)).unwrap();
        out.extend(down.finish().unwrap());
        assert_eq!(out.len(), (300.0f64 * 8000.0 / 22050.0).ceil() as usize);
    }
}
