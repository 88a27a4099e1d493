"""Runs faster-whisper (CTranslate2), the reference speech-to-text runtime, on WAV files for
`callbox bench stt`, with the same model package the box uses. Never used by the box.

usage: faster_whisper_run.py MODEL_DIR COMPUTE_TYPE THREADS RUNS TIMED.wav... -- TRANSCRIBED.wav...
Prints one JSON object: load time, peak RSS, and per timed file the median and minimum latency
(after one warm-up) and text; per transcribed file the text (one run each).
"""
import json
import resource
import statistics
import sys
import time
import wave

import numpy as np
from faster_whisper import WhisperModel


def read_16k(path):
    with wave.open(path, "rb") as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2, path
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def transcribe(model, audio):
    segments, _ = model.transcribe(
        audio,
        language="en",
        beam_size=1,
        temperature=0.0,
        without_timestamps=True,
        condition_on_previous_text=False,
        vad_filter=False,
    )
    return "".join(s.text for s in segments).strip()


def main():
    model_dir, compute_type, threads, runs = sys.argv[1:5]
    rest = sys.argv[5:]
    split = rest.index("--") if "--" in rest else len(rest)
    timed, transcribed = rest[:split], rest[split + 1 :]
    started = time.perf_counter()
    model = WhisperModel(
        model_dir, device="cpu", compute_type=compute_type, cpu_threads=int(threads)
    )
    load_s = time.perf_counter() - started
    out = {"load_s": load_s, "timed": [], "transcribed": []}
    for path in timed:
        audio = read_16k(path)
        transcribe(model, audio)
        times, text = [], ""
        for _ in range(int(runs)):
            t = time.perf_counter()
            text = transcribe(model, audio)
            times.append((time.perf_counter() - t) * 1e3)
        out["timed"].append(
            {"file": path, "median_ms": statistics.median(times), "min_ms": min(times), "text": text}
        )
    for path in transcribed:
        out["transcribed"].append({"file": path, "text": transcribe(model, read_16k(path))})
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(out))


if __name__ == "__main__":
    main()
