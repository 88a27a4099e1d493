//! Callers who pause in the middle of their turn, for measuring end-of-turn decisions: a line
//! is spoken whole (so the voice keeps its mid-sentence intonation at the commas) and the longest
//! gaps inside it are stretched into pauses, the way a caller dictating a number or looking for a
//! word stops between groups. The result knows where its pauses and its true end are.

/// Lines with mid-turn pauses: each `,` marks where the caller stops (the line is spoken with the
/// commas; that many of its longest inner gaps are stretched).
pub const PAUSED_LINES: &[&str] = &[
    "My number is five five five, two three four, nine eight seven six.",
    "You can reach me at six one seven, five five five, zero one four two.",
    "I'd like to, um, book an appointment for next Tuesday.",
    "I need to, uh, cancel my appointment for tomorrow.",
    "My date of birth is March fourth, nineteen eighty two.",
    "I was in a car accident last month, and I think I need a lawyer.",
    "It's pretty urgent, the insurance company keeps calling me.",
    "The pharmacy is the CVS, on Main Street.",
];

/// Complete turns said without a pause.
pub const COMPLETE_LINES: &[&str] = &[
    "This is Dana Lee.",
    "It can wait a few days.",
    "What are your hours?",
    "Thursday afternoon works.",
    "I need to speak with someone about my bill.",
    "My name is John Smith.",
    "Around two thousand dollars.",
    "The other driver was Steven Miller.",
    "Hi, I ran out of my blood pressure medication and need a refill.",
    "Yes, that's right.",
];

/// How many pauses the caller makes in `line` of [`PAUSED_LINES`] (its commas).
pub fn pauses_in(line: &str) -> usize {
    line.matches(',').count()
}

/// Analysis frames of 10 ms at 16 kHz.
const FRAME: usize = 160;
/// A 10 ms frame below this RMS (−40 dBFS) is a gap.
const QUIET_RMS: f32 = 0.01;
/// Inner gaps shorter than this are not pauses a caller makes.
const MIN_GAP_FRAMES: usize = 3;

/// A line with its pauses stretched.
#[derive(Debug, Clone)]
pub struct Paused {
    /// 16 kHz, in [-1, 1].
    pub samples: Vec<f32>,
    /// Sample spans of the stretched pauses, in order.
    pub pauses: Vec<(usize, usize)>,
    /// The sample where the caller's last speech ends.
    pub speech_end: usize,
}

/// Stretches the `pauses` longest gaps inside the speech of `samples` (16 kHz) to `pause_ms`
/// each, by adding silence in their middle. Fewer pauses come out when the speech has fewer
/// gaps.
pub fn stretch_pauses(samples: &[f32], pauses: usize, pause_ms: usize) -> Paused {
    let quiet: Vec<bool> = samples
        .chunks(FRAME)
        .map(|f| (f.iter().map(|v| v * v).sum::<f32>() / f.len() as f32).sqrt() < QUIET_RMS)
        .collect();
    let first = quiet.iter().position(|q| !q).unwrap_or(0);
    let last = quiet.iter().rposition(|q| !q).unwrap_or(0);
    // Runs of quiet frames strictly inside the speech: (start frame, length).
    let mut gaps = Vec::new();
    let mut run_start = None;
    for (i, &q) in quiet.iter().enumerate().take(last + 1).skip(first) {
        match (q, run_start) {
            (true, None) => run_start = Some(i),
            (false, Some(s)) => {
                if i - s >= MIN_GAP_FRAMES {
                    gaps.push((s, i - s));
                }
                run_start = None;
            }
            _ => {}
        }
    }
    gaps.sort_by_key(|&(_, len)| std::cmp::Reverse(len));
    gaps.truncate(pauses);
    gaps.sort_by_key(|&(start, _)| start);

    let pause = pause_ms * 16;
    let mut out = Vec::with_capacity(samples.len() + gaps.len() * pause);
    let mut spans = Vec::new();
    let mut from = 0;
    for &(start, len) in &gaps {
        let (gap_start, gap_end) = (start * FRAME, (start + len) * FRAME);
        let middle = (gap_start + gap_end) / 2;
        out.extend_from_slice(&samples[from..middle]);
        let added = pause.saturating_sub(gap_end - gap_start);
        let span_start = out.len() - (middle - gap_start);
        out.extend(std::iter::repeat_n(0.0, added));
        spans.push((span_start, out.len() + (gap_end - middle)));
        from = middle;
    }
    out.extend_from_slice(&samples[from..]);
    let speech_end_in = ((last + 1) * FRAME).min(samples.len());
    let speech_end = speech_end_in + (out.len() - samples.len());
    Paused {
        samples: out,
        pauses: spans,
        speech_end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ms` of a 200 Hz tone at 0.3.
    fn tone(ms: usize) -> Vec<f32> {
        (0..ms * 16)
            .map(|i| 0.3 * (i as f32 * 200.0 * std::f32::consts::TAU / 16_000.0).sin())
            .collect()
    }

    #[test]
    fn the_longest_inner_gaps_become_pauses_and_the_end_is_known() {
        // 100 ms quiet, 500 ms speech, 80 ms gap, 300 ms speech, 200 ms gap, 400 ms speech,
        // 40 ms gap, 200 ms speech, 300 ms quiet.
        let audio = [
            vec![0.0; 1_600],
            tone(500),
            vec![0.0; 1_280],
            tone(300),
            vec![0.0; 3_200],
            tone(400),
            vec![0.0; 640],
            tone(200),
            vec![0.0; 4_800],
        ]
        .concat();
        let p = stretch_pauses(&audio, 2, 600);
        assert_eq!(p.pauses.len(), 2);
        assert_eq!(
            p.samples.len(),
            audio.len() + (600 - 80) * 16 + (600 - 200) * 16
        );
        for &(s, e) in &p.pauses {
            assert_eq!(e - s, 600 * 16);
            assert!(p.samples[s..e].iter().all(|v| v.abs() < 0.01));
        }
        // The first pause follows the first 600 ms (100 quiet + 500 speech).
        assert_eq!(p.pauses[0].0, 600 * 16);
        assert_eq!(p.samples.len() - p.speech_end, 300 * 16);
        assert!(p.samples[p.speech_end - 16] != 0.0);
    }

    #[test]
    fn speech_without_gaps_is_left_as_it_is() {
        let audio = [vec![0.0; 1_600], tone(800), vec![0.0; 1_600]].concat();
        let p = stretch_pauses(&audio, 2, 600);
        assert!(p.pauses.is_empty());
        assert_eq!(p.samples, audio);
        assert_eq!(p.speech_end, 900 * 16);
        assert_eq!(pauses_in(PAUSED_LINES[0]), 2);
    }
}
