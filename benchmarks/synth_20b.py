"""Synthesize a full-size preset (default 20b) and print wall time, MB/s and peak RSS.

    python benchmarks/synth_20b.py /path/with/15GB/free [--preset 20b] [--layout hf] [--keep]

Goal (issue 2): peak RSS <= 1 GiB, throughput close to the disk's write speed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from measure import machine, run_measured  # noqa: E402

from edgeoss.formats.spec import preset, sizes  # noqa: E402


def disk_write_mb_s(folder: Path, nbytes: int = 2 << 30) -> float:
    """Sequential write with dd and fsync, for comparison."""
    target = folder / "dd.tmp"
    start = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=16M", f"count={nbytes >> 24}", "conv=fsync"],
                   capture_output=True, check=True)
    took = time.perf_counter() - start
    target.unlink()
    return nbytes / took / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--preset", default="20b")
    ap.add_argument("--layout", default="hf")
    ap.add_argument("--keep", action="store_true", help="leave the checkpoint (other benchmarks reuse it)")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    out = args.workdir / f"{args.preset}-{args.layout}"
    shutil.rmtree(out, ignore_errors=True)
    nbytes = sizes(preset(args.preset)).tensor_bytes
    m = run_measured([sys.executable, "-m", "edgeoss", "synth", str(out), "--preset", args.preset,
                      "--layout", args.layout])
    if m.returncode:
        sys.exit(m.stderr)
    dd = disk_write_mb_s(args.workdir)
    print(f"machine: {machine()}")
    print("| preset | layout | tensor bytes | wall s | MB/s | peak RSS MiB | dd write MB/s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.preset} | {args.layout} | {nbytes:,} | {m.wall_s:.1f} | {nbytes / m.wall_s / 1e6:.0f} | "
          f"{m.peak_rss_bytes / 2**20:.0f} | {dd:.0f} |")
    if not args.keep:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
