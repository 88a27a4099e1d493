# The reference side of tests/vad_turn.rs: Silero VAD and Smart Turn v3 run by onnxruntime on
# the clips the test wrote (16 kHz mono float32 little-endian, one `N.f32` per clip), with the
# input preparation of their reference pipeline written out here in numpy.
# Smart Turn runs three ways: as its reference pipeline runs it (all graph optimizations, which
# fuse the quantize/dequantize pairs into int8 kernels); node by node as the graph is written; and
# with the activations' quantize/dequantize pairs taken out (weights still dequantized from
# int8), which is what the candle port computes.
# Usage: python vad_turn_reference.py silero_vad.onnx smart-turn.onnx CLIP_DIR COUNT > result.json
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort

silero_path, turn_path, clip_dir, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
options = ort.SessionOptions()
options.intra_op_num_threads = 1
silero = ort.InferenceSession(silero_path, options, providers=["CPUExecutionProvider"])
turn = ort.InferenceSession(turn_path, options, providers=["CPUExecutionProvider"])
literal = ort.SessionOptions()
literal.intra_op_num_threads = 1
literal.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
turn_literal = ort.InferenceSession(turn_path, literal, providers=["CPUExecutionProvider"])


def without_activation_quantization(path):
    """The graph with every QuantizeLinear -> DequantizeLinear pair on an activation removed:
    the consumers of the dequantized value read the value before quantization."""
    model = onnx.load(path)
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    quantized = {n.output[0]: n for n in graph.node if n.op_type == "QuantizeLinear"}
    rename, dropped = {}, set()
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] not in weights:
            q = quantized.get(node.input[0])
            if q is not None and q.input[0] not in weights:
                rename[node.output[0]] = q.input[0]
                dropped.update([node.output[0], q.output[0]])
    kept = []
    for node in graph.node:
        if node.output[0] in dropped:
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.input):
            copy.input[i] = rename.get(name, name)
        kept.append(copy)
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in kept for name in node.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)
    return model.SerializeToString()


turn_f32 = ort.InferenceSession(
    without_activation_quantization(turn_path), options, providers=["CPUExecutionProvider"]
)


def vad(samples):
    """Speech probability of each 512-sample window, with 64 samples of context and the
    recurrent state carried from window to window."""
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros((1, 64), np.float32)
    out = []
    for start in range(0, len(samples) - 511, 512):
        x = np.concatenate([context, samples[None, start : start + 512]], axis=1)
        p, state = silero.run(
            None, {"input": x, "state": state, "sr": np.array(16000, dtype=np.int64)}
        )
        context = x[:, -64:]
        out.append(float(p[0, 0]))
    return out


def slaney_mel(hz):
    hz = np.asarray(hz, np.float64)
    linear = hz / (200.0 / 3.0)
    log = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, linear)


def slaney_hz(mel):
    mel = np.asarray(mel, np.float64)
    linear = mel * (200.0 / 3.0)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log, linear)


def mel_filters(n_mels=80, n_fft=400, rate=16000):
    bins = np.arange(n_fft // 2 + 1) * rate / n_fft
    edges = slaney_hz(np.linspace(slaney_mel(0.0), slaney_mel(rate / 2), n_mels + 2))
    filters = np.zeros((n_mels, len(bins)))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        rise = (bins - lo) / (mid - lo)
        fall = (hi - bins) / (hi - mid)
        filters[m] = np.maximum(0.0, np.minimum(rise, fall)) * 2.0 / (hi - lo)
    return filters


FILTERS = mel_filters()


def features(samples):
    """Whisper-style log-mel of the last 8 s (zero-padded at the start), the waveform first
    normalized to zero mean and unit variance; 800 centered frames."""
    n = 8 * 16000
    x = samples[-n:]
    x = np.concatenate([np.zeros(n - len(x), np.float32), x]).astype(np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), 200, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    frames = np.stack([padded[i * 160 : i * 160 + 400] for i in range(800)]) * window
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    log_mel = np.log10(np.maximum(FILTERS @ power.T, 1e-10))
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    return ((log_mel + 4.0) / 4.0).astype(np.float32)


results = []
for i in range(count):
    samples = np.fromfile(f"{clip_dir}/{i}.f32", dtype="<f4")
    f = features(samples)
    p = turn.run(None, {"input_features": f[None]})[0]
    p_literal = turn_literal.run(None, {"input_features": f[None]})[0]
    p_f32 = turn_f32.run(None, {"input_features": f[None]})[0]
    results.append(
        {
            "vad": vad(samples),
            "turn": float(np.asarray(p).ravel()[0]),
            "turn_literal": float(np.asarray(p_literal).ravel()[0]),
            "turn_f32": float(np.asarray(p_f32).ravel()[0]),
            "features": f.ravel().tolist(),
        }
    )
json.dump(results, sys.stdout)
