"""The reference runtime at full size: prefill and decode tok/s and peak RSS, all experts allowed in RAM vs an
expert budget, plus the raw speed of its matmul kernels on 20b-shaped weights.

    python benchmarks/reference_20b.py /path/with/15GB/free [--preset 20b] [--budget 4GiB]
                                       [--prompt-tokens 64] [--decode-tokens 16] [--keep]

Reuses WORKDIR/<preset>-hf when it exists (benchmarks/synth_20b.py --keep writes it), else synthesizes it.
Each mode runs in its own process and reports its own peak RSS (which counts the mapped checkpoint pages it
touched). Tokens are random ids; decode feeds back the argmax. Kernel figures use random weights built in
memory with 20b's shapes: one layer's 32 experts (each token picks 4 at random) and the unembedding.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from measure import machine  # noqa: E402

import numpy as np  # noqa: E402

from edgeoss.formats.spec import preset, sizes  # noqa: E402
from edgeoss.units import human, parse_size  # noqa: E402


# ---- children ------------------------------------------------------------------------------------------
def child_run(checkpoint: Path, budget: int | None, prompt_tokens: int, decode_tokens: int) -> dict:
    from edgeoss.runtimes.reference import ReferenceEngine

    engine = ReferenceEngine(checkpoint, memory_budget=budget)
    prompt = np.random.default_rng(0).integers(0, engine.spec.vocab_size, size=prompt_tokens)
    start = time.perf_counter()
    logits = engine.prefill(prompt)[-1]
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(decode_tokens):
        logits = engine.step(int(logits.argmax()))
    decode_s = time.perf_counter() - start
    stats = engine.stats()
    return {"prefill_tok_s": prompt_tokens / prefill_s, "decode_tok_s": decode_tokens / decode_s,
            "decode_bytes_per_token": stats["decode_bytes_read_per_token"],
            "hit_rate": stats["experts"]["hit_rate"], "expert_peak_bytes": stats["experts"]["peak_bytes"]}


def _best_seconds(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def child_kernels(tokens: int = 8) -> dict:
    """MXFP4 matvec/matmul over one 20b layer's experts, bf16 matvec over the 20b unembedding."""
    from edgeoss.runtimes import kernels

    spec = preset("20b")
    rng = np.random.default_rng(0)
    e, h, i = spec.num_local_experts, spec.hidden_size, spec.intermediate_size
    layer = {"gate_up": (rng.integers(0, 256, (e, 2 * i, h // 32, 16), np.uint8),
                         rng.integers(119, 124, (e, 2 * i, h // 32), np.uint8)),
             "down": (rng.integers(0, 256, (e, h, i // 32, 16), np.uint8),
                      rng.integers(119, 124, (e, h, i // 32), np.uint8))}
    for blocks, scales in layer.values():
        blocks.setflags(write=False), scales.setflags(write=False)
    kernels.warm_up()
    picks = [rng.choice(e, spec.num_experts_per_tok, replace=False) for _ in range(tokens)]
    expert_bytes = sum(b[0].nbytes + s[0].nbytes for b, s in layer.values())
    macs_per_expert = (2 * i * h + h * i)

    def experts(batch: int):
        x = rng.standard_normal((batch, h), dtype=np.float32)
        y = rng.standard_normal((batch, i), dtype=np.float32)

        def go():
            for chosen in picks:
                for expert in chosen:
                    kernels.mxfp4_matmul(x, *(a[expert] for a in layer["gate_up"]))
                    kernels.mxfp4_matmul(y, *(a[expert] for a in layer["down"]))
        return go

    matvec_s = _best_seconds(experts(1))
    touched = tokens * spec.num_experts_per_tok
    batch = 16
    matmul_s = _best_seconds(experts(batch), repeats=1)
    unembed = rng.integers(0, 1 << 16, (spec.vocab_size, h), np.uint16) & 0xBFFF  # finite bf16 patterns
    unembed.setflags(write=False)
    x = rng.standard_normal((1, h), dtype=np.float32)
    unembed_s = _best_seconds(lambda: kernels.bf16_matmul(x, unembed))
    return {"mxfp4_matvec_gb_s": touched * expert_bytes / matvec_s / 1e9,
            "mxfp4_matvec_gmac_s": touched * macs_per_expert / matvec_s / 1e9,
            "mxfp4_matmul16_gmac_s": touched * macs_per_expert * batch / matmul_s / 1e9,
            "expert_ms_per_token_20b": matvec_s / tokens * spec.num_hidden_layers * 1e3,
            "bf16_matvec_gb_s": unembed.nbytes / unembed_s / 1e9,
            "unembed_ms": unembed_s * 1e3}


# ---- parent --------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--preset", default="20b")
    ap.add_argument("--budget", default="4GiB", help="the expert budget of the second run")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--keep", action="store_true", help="keep a checkpoint this script synthesized")
    ap.add_argument("--child", choices=["run", "kernels"], help=argparse.SUPPRESS)
    ap.add_argument("--child-budget", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    checkpoint = args.workdir / f"{args.preset}-hf"
    if args.child:
        result = child_kernels() if args.child == "kernels" else \
            child_run(checkpoint, args.child_budget, args.prompt_tokens, args.decode_tokens)
        result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        print(json.dumps(result))
        return

    synthesized = not checkpoint.exists()
    if synthesized:
        print(f"synthesizing {checkpoint} ...", flush=True)
        subprocess.run([sys.executable, "-m", "edgeoss", "synth", str(checkpoint), "--preset", args.preset],
                       check=True)
    spec = preset(args.preset)
    budget = parse_size(args.budget)
    me = [sys.executable, __file__, str(args.workdir), "--preset", args.preset,
          "--prompt-tokens", str(args.prompt_tokens), "--decode-tokens", str(args.decode_tokens)]

    def child(*extra: str) -> dict:
        proc = subprocess.run(me + list(extra), capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    rows = []
    for label, extra in (("all experts allowed in RAM (mmap)", []),
                         (f"expert budget {human(budget)}", ["--child-budget", str(budget)])):
        print(f"running: {label} ...", flush=True)
        rows.append((label, child("--child", "run", *extra)))
    print("running: kernels on 20b-shaped weights ...", flush=True)
    k = child("--child", "kernels")

    s = sizes(spec)
    print(f"\nmachine: {machine()}")
    print(f"model: {spec.name}, {human(s.tensor_bytes)} of tensors, {human(s.bytes_by_kind['experts'])} of experts; "
          f"prompt {args.prompt_tokens} random tokens, {args.decode_tokens} decode steps\n")
    print("| mode | prefill tok/s | decode tok/s | peak RSS | expert cache peak | decode expert bytes/token | "
          "hit rate |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['prefill_tok_s']:.2f} | {r['decode_tok_s']:.2f} | {human(r['peak_rss_bytes'])} | "
              f"{human(r['expert_peak_bytes'])} | {human(r['decode_bytes_per_token'])} | "
              f"{100 * r['hit_rate']:.1f} % |")
    print("\nkernels (20b shapes, random weights in memory):")
    print(f"- MXFP4 matvec (decode): {k['mxfp4_matvec_gb_s']:.2f} GB/s of packed experts, "
          f"{k['mxfp4_matvec_gmac_s']:.2f} GMAC/s; 4 experts x 24 layers = {k['expert_ms_per_token_20b']:.0f} ms/token")
    print(f"- MXFP4 matmul, 16 tokens per expert (prefill): {k['mxfp4_matmul16_gmac_s']:.2f} GMAC/s")
    print(f"- bf16 matvec over the 201088 x 2880 unembedding: {k['bf16_matvec_gb_s']:.2f} GB/s, "
          f"{k['unembed_ms']:.0f} ms/token")
    if synthesized and not args.keep:
        shutil.rmtree(checkpoint)


if __name__ == "__main__":
    main()
