"""llama.cpp's side of `callbox bench llm --reference`: the same GGUF, the same token ids and the
same thread count as the candle bench, measured the same way. Reads a JSON request on stdin:
{"model", "threads", "prefix": [ids], "turn": [ids], "max_tokens", "runs"} and prints one JSON
object: prompt and generation tokens/s, time to first token with and without the cached prefix
(medians of `runs`), and the generated ids (greedy, for a look at agreement with candle).

Greedy decoding is an argmax over the last logits, as the candle bench does (no sampler chain).
"""
import json
import statistics
import sys
import time

import numpy as np
from llama_cpp import Llama


def main() -> None:
    req = json.load(sys.stdin)
    prefix, turn = req["prefix"], req["turn"]
    threads = req["threads"]
    started = time.perf_counter()
    llm = Llama(
        model_path=req["model"],
        n_ctx=max(1024, len(prefix) + len(turn) + req["max_tokens"] + 8),
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=False,
        verbose=False,
    )
    load_ms = (time.perf_counter() - started) * 1e3
    n_vocab = llm.n_vocab()

    def next_token() -> int:
        logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
        return int(np.argmax(logits))

    prompt_rates, gen_rates, ttft_uncached, ttft_cached = [], [], [], []
    generated = []
    for _ in range(req["runs"]):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prefix + turn)
        t1 = time.perf_counter()
        token = next_token()
        t_first = time.perf_counter()
        prompt_rates.append(len(prefix + turn) / (t1 - t0))
        ttft_uncached.append((t_first - t0) * 1e3)
        generated = [token]
        for _ in range(req["max_tokens"] - 1):
            llm.eval([token])
            token = next_token()
            generated.append(token)
        t_end = time.perf_counter()
        if len(generated) > 1:
            gen_rates.append((len(generated) - 1) / (t_end - t_first))
        # The prefix stays in the KV cache: drop everything after it, then the turn alone.
        llm.n_tokens = len(prefix)
        t2 = time.perf_counter()
        llm.eval(turn)
        next_token()
        ttft_cached.append((time.perf_counter() - t2) * 1e3)
    print(
        json.dumps(
            {
                "implementation": "llama.cpp (llama-cpp-python)",
                "threads": threads,
                "load_ms": load_ms,
                "prompt_tokens_per_s": statistics.median(prompt_rates),
                "generation_tokens_per_s": statistics.median(gen_rates) if gen_rates else 0.0,
                "ttft_uncached_ms": statistics.median(ttft_uncached),
                "ttft_cached_ms": statistics.median(ttft_cached),
                "generated": generated,
            }
        )
    )


if __name__ == "__main__":
    main()
