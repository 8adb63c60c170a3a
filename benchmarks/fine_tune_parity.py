"""A fine-tune-like model through edgeoss: BF16 experts that are no longer MXFP4 values, exported to GGUF and ONNX,
checked against the BF16 model itself (issue 19).

    python benchmarks/fine_tune_parity.py WORKDIR [--preset tiny] [--noise 0.05] [--positions 512]

The model: the preset synthesized in MXFP4, copied to BF16 by transformers itself (Mxfp4Config(dequantize=True),
the state copied into an unquantized GptOssForCausalLM, save_pretrained), then every expert weight times
(1 + noise * N(0, 1)) in BF16. `edgeoss export gguf` and `export onnx` quantize its experts to MXFP4 (llama.cpp's
OCP rule); `edgeoss parity` compares both against transformers fp32 on the BF16 model and attributes the
difference: the reference runtime on the re-quantized experts is the quantization alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from edgeoss.validate.fine_tunes import perturb_experts, transformers_bf16_copy


def edgeoss(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "edgeoss", *map(str, args)], check=True, capture_output=True,
                          text=True).stdout


def fine_tune(mxfp4: Path, out: Path, noise: float) -> Path:
    return perturb_experts(transformers_bf16_copy(mxfp4, out), noise)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--positions", type=int, default=512)
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    edgeoss("synth", work / "mxfp4", "--preset", args.preset, "--force")
    tuned = fine_tune(work / "mxfp4", work / "fine-tuned", args.noise)
    edgeoss("export", "gguf", tuned, "-o", work / "fine-tuned.gguf")
    edgeoss("export", "onnx", tuned, "-o", work / "fine-tuned-onnx", "--force")
    report = json.loads(edgeoss("parity", tuned, "--gguf", work / "fine-tuned.gguf", "--onnx", work / "fine-tuned-onnx",
                                "--positions", args.positions, "--json"))
    print(f"{args.preset}, experts x (1 + {args.noise} N(0,1)), {report['positions']} positions "
          f"({report['segments']}), against transformers fp32 on the BF16 model:")
    print("| artifact | engine | max abs diff (median) | mean KL | top-1 | greedy | vs emulation (median) | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for e in report["entries"]:
        o = e["vs_original"]
        emu = f"{e['vs_emulation']['median_abs']:.1e}" if e["vs_emulation"] else "-"
        print(f"| {e['label']} | {e['engine']} | {o['max_abs']:.2e} ({o['median_abs']:.1e}) | {o['mean_kl']:.2e} | "
              f"{100 * o['top1']:.1f} % | {e['greedy_match']}/{e['greedy_tokens']} | {emu} | {e['verdict']} |")


if __name__ == "__main__":
    main()
