"""Piper's own runtime (piper-tts on onnxruntime) on the replies `callbox bench tts` times, for a
side-by-side reference. Run by the bench with the python of tests/tools/pyenv:

    python piper_bench.py VOICE.onnx VOICE.onnx.json RUNS < replies.json

replies.json is a list of [label, text]. Prints one JSON object: import and load times, per
reply the median time to the first audio (Piper hands out audio a sentence at a time), the
median total time, the audio length and the real-time factor, and the process's peak RSS.
"""

import json
import resource
import statistics
import sys
import time


def main() -> None:
    model, config, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    replies = json.load(sys.stdin)

    started = time.perf_counter()
    from piper import PiperVoice

    imported = time.perf_counter()
    voice = PiperVoice.load(model, config_path=config)
    loaded = time.perf_counter()

    # One warm-up, as the candle side gets.
    for _ in voice.synthesize("Hello."):
        pass

    results = []
    for label, text in replies:
        firsts, totals, audio_s = [], [], 0.0
        for _ in range(runs):
            begin = time.perf_counter()
            first = None
            samples, rate = 0, 1
            for chunk in voice.synthesize(text):
                if first is None:
                    first = time.perf_counter() - begin
                samples += len(chunk.audio_float_array)
                rate = chunk.sample_rate
            totals.append(time.perf_counter() - begin)
            firsts.append(first if first is not None else totals[-1])
            audio_s = samples / rate
        total = statistics.median(totals)
        results.append(
            {
                "label": label,
                "first_audio_s": statistics.median(firsts),
                "total_s": total,
                "audio_s": audio_s,
                "rtf": total / audio_s if audio_s else None,
            }
        )

    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "runtime": "piper-tts (onnxruntime)",
                "import_s": imported - started,
                "load_s": loaded - imported,
                "peak_rss_bytes": peak_kib * 1024,
                "replies": results,
            }
        )
    )


if __name__ == "__main__":
    main()
