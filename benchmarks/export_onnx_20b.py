"""Export a full-size checkpoint (default: a synthesized 20b) to ONNX; print wall time, MB/s and peak RSS.

    python benchmarks/export_onnx_20b.py /path/with/60GB/free [--checkpoint DIR] [--experts int8|int4]
                                          [--preset 20b] [--set KEY=VALUE ...] [--keep] [--dense exact]
    --experts mxfp4 (the default) | int8 | int4;  --dense compact (the default) | exact

Without --checkpoint it reuses WORKDIR/<preset>-hf (e.g. left by `synth_20b.py --keep`) or synthesizes it.
Goal (issue 5): peak RSS <= 1.5 GiB whatever the model size (the exporter streams one expert at a time).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).parent))
from measure import machine, run_measured  # noqa: E402

RSS_GOAL = 1.5 * 2**30


def folder_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.glob(pattern) if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--checkpoint", type=Path, help="an existing checkpoint folder (default: synthesize one)")
    ap.add_argument("--preset", default="20b")
    ap.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="spec overrides for the synthesized checkpoint (small runs of this script)")
    ap.add_argument("--experts", default="mxfp4", choices=["mxfp4", "int8", "int4"])
    ap.add_argument("--dense", default="compact", choices=["compact", "exact"])
    ap.add_argument("--keep", action="store_true", help="leave the ONNX folder")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = args.workdir / (f"{args.preset}-hf" + ("-custom" if args.settings else ""))
        if not (checkpoint / "config.json").exists():
            sets = [a for s in args.settings for a in ("--set", s)]
            subprocess.run([sys.executable, "-m", "edgeoss", "synth", str(checkpoint), "--preset", args.preset,
                            *sets, "--force"], check=True)
    out = args.workdir / f"onnx-{args.experts}"
    shutil.rmtree(out, ignore_errors=True)
    source = folder_bytes(checkpoint, "*.safetensors") or folder_bytes(checkpoint / "original", "*.safetensors")
    m = run_measured([sys.executable, "-m", "edgeoss", "export", "onnx", str(checkpoint), "-o", str(out),
                      "--experts", args.experts, "--dense", args.dense], env={"COLUMNS": "200"})
    if m.returncode:
        sys.exit(m.stderr)
    written = folder_bytes(out)
    start = time.perf_counter()
    onnx.checker.check_model(str(out / "model.onnx"))  # the path form: models past 2 GB
    checked = time.perf_counter() - start
    print(f"machine: {machine()}")
    print(m.stderr.strip().splitlines()[-1])
    print(f"onnx.checker.check_model: passed in {checked:.1f} s")
    model_files = folder_bytes(out, "model.onnx*")  # model.onnx + its external data
    print("| checkpoint | experts | dense | checkpoint bytes | ONNX folder bytes | model files / checkpoint | wall s | "
          "MB/s read | peak RSS MiB | RSS goal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {checkpoint.name} | {args.experts} | {args.dense} | {source:,} | {written:,} | {model_files / source:.2f} | "
          f"{m.wall_s:.1f} | {source / m.wall_s / 1e6:.0f} | {m.peak_rss_bytes / 2**20:.0f} | "
          f"{'met' if m.peak_rss_bytes <= RSS_GOAL else 'MISSED'} (<= {RSS_GOAL / 2**20:.0f}) |")
    if not args.keep:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
