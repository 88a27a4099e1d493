"""Speaks lines of text with a Piper voice through Piper's own runtime (piper-tts, onnxruntime),
one WAV per line, to make speech fixtures for tests. Never used by the box.

usage: piper_say.py VOICE.onnx LINES.txt OUT_DIR [TAKE]
Writes OUT_DIR/000.wav, 001.wav … for the non-empty, non-# lines, in order, at the voice's rate,
with the voice's published noise and length scales. The voice's noise is drawn from
onnxruntime's random generator, seeded here so that the same lines always give the same audio
(unseeded, every run speaks a little differently and a test's result could depend on the run).
TAKE (default 0) speaks the lines again as another caller would: another seed, and takes 1, 2, …
in turn faster and slower than the voice's own pace (TAKE_PACES).
"""
import sys
import wave
from pathlib import Path

import onnxruntime
from piper import PiperVoice, SynthesisConfig

SEED = 20261123
# Length scale of each take relative to the voice's own: take 0 is the voice as published.
TAKE_PACES = [1.0, 0.88, 1.15, 0.95, 1.08]


def main() -> None:
    voice_path, lines_path, out_dir = sys.argv[1:4]
    take = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    # Before the session exists: its random kernels take their seed when they are created.
    onnxruntime.set_seed(SEED + take)
    voice = PiperVoice.load(voice_path)
    pace = TAKE_PACES[take % len(TAKE_PACES)]
    config = SynthesisConfig(length_scale=voice.config.length_scale * pace)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        line.strip()
        for line in Path(lines_path).read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for i, line in enumerate(lines):
        partial = out / f"{i:03}.wav.partial"
        with wave.open(str(partial), "wb") as wav:
            voice.synthesize_wav(line, wav, syn_config=config)
        partial.rename(out / f"{i:03}.wav")
    print(len(lines))


if __name__ == "__main__":
    main()
