"""How often llama.cpp's top-1 token on our GGUF equals the original model's, on random and on trained weights.

    python benchmarks/gguf_top1.py WORKDIR [--positions 1024] [--steps STEPS] [--presets tiny,odd,odd-hd16]

For each preset: the random-weight checkpoint the tests use, and the same spec trained on the Python standard
library's source (`edgeoss.validate.trained`, transformers' GptOssForCausalLM in fp32, experts then quantized to MXFP4).
Each is exported with the default options (`edgeoss export gguf`: BF16 dense, MXFP4 experts) and run on held-out
text, in windows of the trained context (256 positions, each window its own sequence), by llama.cpp (F32 KV
cache), by transformers in fp32 (the original model), and by the reference runtime with llama.cpp's numerics
emulated (Q8_0 inputs to the MXFP4 matmuls, bf16 inputs to the bf16 matmuls, rounded
YaRN range). Printed: top-1 agreement with the original, the same for the emulated reference, whether
llama.cpp and the emulation pick the same token everywhere, mean KL(original || llama.cpp), the original's
median top-1/top-2 logit gap, the widest gap at which llama.cpp's top-1 differed, and the top-1 agreement of
the reference with each of llama.cpp's three effects emulated alone (which one costs the agreement).

`odd-hd16` is the odd preset with a rope geometry no gpt-oss has (head_dim 16, YaRN from an original context of
256), where llama.cpp's rounding of the YaRN range to whole dimensions changes the rotary frequencies a lot.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeoss.validate import trained
from edgeoss.exporters.gguf import export_gguf
from edgeoss.validate.oracles import TransformersOracle
from edgeoss.validate.parity import Metrics, top2_gap
from edgeoss.runtimes.engine import all_logits
from edgeoss.runtimes.llamacpp import LlamaCppEngine
from edgeoss.runtimes.reference import Emulation, ReferenceEngine
from edgeoss.formats.spec import ModelSpec, preset
from edgeoss.formats.synth import synthesize

console = Console(stderr=True)
EFFECTS = ("q8_activations", "bf16_activations", "ggml_yarn_rounding")  # llama.cpp's, for a bf16-dense GGUF


def spec(name: str) -> ModelSpec:
    if name == "odd-hd16":
        return dataclasses.replace(preset("odd"), head_dim=16, rope_original_context=256, name="gpt-oss-odd-hd16")
    return preset(name)


def checkpoint(work: Path, name: str, kind: str, steps: int) -> Path:
    if kind == "trained":  # kept in the edgeoss cache, shared with the tests
        return trained.trained_checkpoint(spec(name), steps=steps,
                                          log=lambda m: console.print(f"  {name}: {m}"))["hf"]
    return synthesize(work / f"{name}-random", spec(name), "hf", seed=0, force=True, progress=False)  # seconds


def measure(ckpt: Path, gguf: Path, tokens: np.ndarray, window: int) -> dict:
    export_gguf(ckpt, gguf, progress=False)  # always from this checkpoint: a second or two
    engine = LlamaCppEngine(gguf, n_ctx=window + 16, n_threads=2)
    try:
        llama = trained.in_windows(lambda t: all_logits(engine, list(t)), tokens, window)
    finally:
        engine.close()
    oracle = TransformersOracle(ckpt)
    original = trained.in_windows(oracle.logits, tokens, window)
    oracle.close()

    def emulating(*names: str) -> np.ndarray:
        reference = ReferenceEngine(ckpt, emulation=Emulation(**{n: True for n in names}))
        return trained.in_windows(lambda t: all_logits(reference, list(t)), tokens, window)

    emulated = emulating(*EFFECTS)
    alone = {n: Metrics.between(original, emulating(n)).top1 for n in EFFECTS}
    gap = top2_gap(original)
    agree = llama.argmax(1) == original.argmax(1)
    vs_original = Metrics.between(original, llama)
    return {"top1": vs_original.top1, "emulated_top1": Metrics.between(original, emulated).top1,
            "same_as_emulated": Metrics.between(emulated, llama).top1, "kl": vs_original.mean_kl,
            "median_gap": float(np.median(gap)), "widest_flip": float(gap[~agree].max()) if (~agree).any() else 0.0,
            "alone": alone, "accuracy": float((original[:-1].argmax(1) == tokens[1:]).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--positions", type=int, default=1024)
    ap.add_argument("--window", type=int, default=trained.SEQ_LEN, help="positions per sequence")
    ap.add_argument("--steps", type=int, default=trained.STEPS)
    ap.add_argument("--presets", default="tiny,odd,odd-hd16")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tokens = trained.held_out_tokens(args.positions)
    table = Table(title=f"llama.cpp vs the original (transformers fp32), {args.positions} held-out positions "
                  f"in windows of {args.window}")
    for col in ("model", "next-token acc", "top-1 llama.cpp", "top-1 emulated ref", "llama.cpp = emulated",
                "mean KL", "median gap", "widest flip gap", "top-1 emulating Q8_0 / bf16 / YaRN alone"):
        table.add_column(col)
    for name in args.presets.split(","):
        for kind in ("random", "trained"):
            console.print(f"{name} {kind} ...")
            r = measure(checkpoint(args.work, name, kind, args.steps), args.work / f"{name}-{kind}.gguf", tokens,
                        args.window)
            table.add_row(f"{name} {kind}", f"{r['accuracy']:.1%}", f"{r['top1']:.2%}", f"{r['emulated_top1']:.2%}",
                          f"{r['same_as_emulated']:.2%}", f"{r['kl']:.1e}", f"{r['median_gap']:.3f}",
                          f"{r['widest_flip']:.3f}", " / ".join(f"{r['alone'][n]:.2%}" for n in EFFECTS))
    Console(width=220).print(table)


if __name__ == "__main__":
    main()
