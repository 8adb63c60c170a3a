"""Decode time of one MoE layer on ONNX Runtime CPU, for each way edgeoss stores experts (default: 20b size).

    python benchmarks/onnx_moe_layer.py WORKDIR [--hidden 2880 --intermediate 2880 --experts 32 --top-k 4]
                                        [--threads 2] [--runs 30]

Variants: int8 exact (ORT_QMOE_CPU_QNBIT_GEMM=fp32: fp32 activations), int8 fast (ONNX Runtime's default
int8 activations), int4 (least-squares per-block scale). Random MXFP4 experts (uniform codes); the QMoE node
is the one the exporter writes (edgeoss.exporters.onnx_experts.write_moe). Prints per variant: bytes of the
layer's expert tensors, session load time, mean latency at T=1 and T=16 tokens, and the output's error
against the exact MXFP4 MoE computed in float64 numpy.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from measure import machine  # noqa: E402

from edgeoss.formats import mxfp4  # noqa: E402
from edgeoss.exporters.onnx_experts import ENCODINGS, SWIGLU_ALPHA, MoeShape, QuantError, write_moe  # noqa: E402
from edgeoss.exporters.onnx_graph import MS, ExternalData, Graph, value_info  # noqa: E402
from edgeoss.runtimes.onnxrt import qmoe_precision  # noqa: E402

PROJECTIONS = ("gate_up", "down")


def random_experts(shape: MoeShape, seed: int = 0):
    """An ExpertSource of uniform MXFP4 codes, scale bytes chosen for roughly unit gain."""
    def source(proj: str, e: int):
        rng = np.random.default_rng([seed, PROJECTIONS.index(proj), e])
        rows, k = (2 * shape.intermediate, shape.hidden) if proj == "gate_up" else (shape.hidden, shape.intermediate)
        centre = 127 - round(np.log2(np.sqrt(k)) + 1.5)  # 2^(s-127) * rms(fp4) * sqrt(k) ~ 1
        blocks = rng.integers(0, 256, (rows, k // 32, 16), dtype=np.uint8)
        scales = rng.integers(centre - 1, centre + 2, (rows, k // 32), dtype=np.uint8)
        return blocks, scales, rng.normal(0, 0.1, rows).astype(np.float32)
    return source


def write_layer(folder: Path, shape: MoeShape, encoding: str, source) -> tuple[Path, int, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    g, error = Graph(), QuantError()
    with open(folder / "layer.onnx.data", "wb") as f:
        data = ExternalData(f, "layer.onnx.data")
        y = write_moe(g, data, "layer", shape, ENCODINGS[encoding], source, "x", "router_logits", error)
        nbytes = data.offset
    g.op("Identity", y, outputs=["y"])
    g.save(folder / "layer.onnx", [value_info("x", 1, ["tokens", shape.hidden]),
                                   value_info("router_logits", 1, ["tokens", shape.experts])],
           [value_info("y", 1, ["tokens", shape.hidden])], {"": 23, MS: 1})
    return folder / "layer.onnx", nbytes, error.as_dict()


def numpy_moe(shape: MoeShape, source, x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """The exact MXFP4 MoE in float64: top-k, softmax over the k, clamped SwiGLU with (up + 1)."""
    top = np.argsort(-logits, axis=1)[:, :shape.top_k]
    picked = np.take_along_axis(logits, top, 1).astype(np.float64)
    weights = np.exp(picked - picked.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    out = np.zeros(x.shape, np.float64)
    for e in np.unique(top):
        tokens, slot = np.nonzero(top == e)
        (b1, s1, bias1), (b2, s2, bias2) = source("gate_up", e), source("down", e)
        h = x[tokens].astype(np.float64) @ mxfp4.dequantize(b1, s1, np.float64).T + bias1
        gate, up = np.minimum(h[:, 0::2], shape.swiglu_limit), np.clip(h[:, 1::2], -shape.swiglu_limit,
                                                                         shape.swiglu_limit)
        act = gate * np.exp(-np.logaddexp(0, -SWIGLU_ALPHA * gate)) * (up + 1)
        out[tokens] += weights[tokens, slot][:, None] * (act @ mxfp4.dequantize(b2, s2, np.float64).T + bias2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--hidden", type=int, default=2880)
    ap.add_argument("--intermediate", type=int, default=2880)
    ap.add_argument("--experts", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30, help="timed runs at T=1 (T=16 gets a third of them)")
    args = ap.parse_args()
    import onnxruntime as ort

    shape = MoeShape(args.experts, args.top_k, args.hidden, args.intermediate, 7.0)
    source = random_experts(shape)
    rng = np.random.default_rng(1)
    inputs = {t: (rng.normal(size=(t, shape.hidden)).astype(np.float32),
                  rng.normal(size=(t, shape.experts)).astype(np.float32)) for t in (1, 16)}
    truth = {t: numpy_moe(shape, source, *inputs[t]) for t in inputs}
    print(f"machine: {machine()}, ORT {ort.__version__}, {args.threads} threads")
    print(f"layer: {shape.experts} experts, top-{shape.top_k}, hidden {shape.hidden}, intermediate "
          f"{shape.intermediate}")
    print("| variant | expert bytes / layer | load s | T=1 ms | T=16 ms | max rel error | weight rel rms error |")
    print("|---|---|---|---|---|---|---|")
    for encoding, variants in (("int8", (("int8 exact (fp32 act.)", True), ("int8 fast (int8 act.)", False))),
                               ("int4", (("int4 (fp32 act.)", False),))):
        folder = args.workdir / f"moe-{encoding}"
        path, nbytes, werr = write_layer(folder, shape, encoding, source)
        for label, exact in variants:
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            start = time.perf_counter()
            with qmoe_precision(exact):
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            load = time.perf_counter() - start
            timings, worst = {}, 0.0
            for t, runs in ((1, args.runs), (16, max(3, args.runs // 3))):
                feed = {"x": inputs[t][0], "router_logits": inputs[t][1]}
                y = session.run(None, feed)[0]  # warm-up
                worst = max(worst, float(np.abs(y - truth[t]).max() / np.abs(truth[t]).max()))
                start = time.perf_counter()
                for _ in range(runs):
                    session.run(None, feed)
                timings[t] = (time.perf_counter() - start) / runs * 1e3
            rel = werr.get("relative_rms_error", 0.0) if not ENCODINGS[encoding].exact else 0.0
            print(f"| {label} | {nbytes / 2**20:.1f} MiB | {load:.1f} | {timings[1]:.2f} | {timings[16]:.1f} | "
                  f"{worst:.2e} | {rel:.2%} |")
            del session
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
