"""GGUF export speed and memory next to `cp` and next to llama.cpp's own converter, on a checkpoint folder.

    python benchmarks/export_gguf_20b.py CKPT [--work DIR] [--repeat 3] [--no-converter] [--read-not-cp]

CKPT is a Hugging Face layout folder (the converter reads only that layout), e.g. from
`edgeoss synth gpt-oss-20b --preset 20b`, or a BF16 fine-tune's (`--experts bf16`: 42 GB at 20b; edgeoss
quantizes its experts on the way, where llama.cpp needs its converter to bf16 and then llama-quantize
MXFP4_MOE). `--read-not-cp` times reading the folder (`cat > /dev/null`, what a copy must at least do) where
the disk has no room for a copy. Each tool runs as its own process tree, output + `sync` timed
together; peak RSS is sampled (psutil, every 20 ms) over the whole tree. Order per round: cp, edgeoss,
converter; medians over rounds. The converter is `convert_hf_to_gguf.py` from the llama-cpp-python 0.3.36
source distribution (fetched once with pip into --converter-cache), run with this Python and `--outtype bf16`
(the dense type edgeoss writes by default). In the first round the two GGUFs are compared tensor by tensor.
Goals at 20b: edgeoss <= 1.25x cp time, <= 1 GiB peak RSS, >= 2x faster than the converter.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

from edgeoss.formats import mxfp4
from edgeoss.formats.checkpoint import Checkpoint
from edgeoss.formats.ggml_gguf import read_metadata
from edgeoss.units import human

SDIST = "llama-cpp-python==0.3.36"
CONVERTER = "vendor/llama.cpp/convert_hf_to_gguf.py"
console = Console(stderr=True)


@dataclass
class Run:
    wall_s: float
    peak_rss: int
    out_bytes: int
    load: float  # 1-minute load average when it started


def measure(command: list[str], outputs: list[Path]) -> Run:
    """Run `command` then `sync`; wall time of both, peak RSS of the command's process tree."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{proc.stderr.read().decode()[-3000:]}")
    os.sync()
    wall = time.perf_counter() - start
    files = [f for p in outputs for f in ([p] if p.is_file() else p.rglob("*") if p.is_dir() else []) if f.is_file()]
    return Run(wall, peak, sum(f.stat().st_size for f in files), load)


def converter_script(cache: Path) -> Path:
    """convert_hf_to_gguf.py (+ its conversion/ package and gguf-py) from the sdist, fetched once."""
    found = sorted(cache.glob(f"llama_cpp_python-*/{CONVERTER}"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    console.print(f"fetching the {SDIST} source distribution into {cache} (pip)")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", SDIST,
                    "-d", str(cache)], check=True)
    archive = next(cache.glob("llama_cpp_python-*.tar.gz"))
    wanted = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/conversion/", "vendor/llama.cpp/gguf-py/")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.split("/", 1)[-1].startswith(wanted)]
        tar.extractall(cache, members=members, filter="data")
    return next(cache.glob(f"llama_cpp_python-*/{CONVERTER}"))


def same_tensors(a: Path, b: Path, chunk: int = 64 << 20) -> list[str]:
    """Names of tensors whose type or bytes differ between two GGUF files (empty: identical tensors)."""
    ma, mb = read_metadata(a), read_metadata(b)
    differ = sorted(set(ma.tensor_types) ^ set(mb.tensor_types))
    for name in sorted(set(ma.tensor_types) & set(mb.tensor_types)):
        (oa, na), (ob, nb) = ma.tensor_bytes[name], mb.tensor_bytes[name]
        if ma.tensor_types[name] != mb.tensor_types[name] or na != nb:
            differ.append(name)
            continue
        for start in range(0, na, chunk):
            n = min(chunk, na - start)
            if not np.array_equal(np.fromfile(a, np.uint8, n, offset=oa + start),
                                  np.fromfile(b, np.uint8, n, offset=ob + start)):
                differ.append(name)
                break
    return differ


def experts_match_checkpoint(ckpt: Checkpoint, path: Path, names: list[str]) -> bool:
    """Whether these MXFP4 expert tensors of `path` are exactly edgeoss.mxfp4.to_ggml of the checkpoint's bytes
    (to tell, when the two GGUFs differ, which one holds the checkpoint)."""
    meta, experts = read_metadata(path), ckpt.spec.num_local_experts
    rows = {"gate": ("gate_up", slice(0, None, 2)), "up": ("gate_up", slice(1, None, 2)), "down": ("down", slice(None))}
    for name in names:
        _, layer, kind, _ = name.split(".")
        source, picked = rows[kind.split("_")[1]]
        offset, nbytes = meta.tensor_bytes[name]
        for e in range(experts):
            per = nbytes // experts
            expected = mxfp4.to_ggml(ckpt.raw(f"layers.{layer}.{source}.blocks")[e, picked],
                                     ckpt.raw(f"layers.{layer}.{source}.scales")[e, picked]).ravel()
            if not np.array_equal(np.fromfile(path, np.uint8, per, offset=offset + e * per), expected):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="HF-layout checkpoint folder")
    parser.add_argument("--work", type=Path, help="scratch folder for outputs (default: beside the checkpoint)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-converter", action="store_true", help="skip llama.cpp's converter")
    parser.add_argument("--read-not-cp", action="store_true",
                        help="time reading the folder instead of copying it (no room for a copy)")
    parser.add_argument("--converter-cache", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeoss" / "sdist")
    args = parser.parse_args()

    ckpt = Checkpoint.open(args.checkpoint, bf16_experts=True)
    if ckpt.layout != "hf":
        raise SystemExit(f"{args.checkpoint}: llama.cpp's converter needs the HF layout, this is {ckpt.layout}")
    folder, tensor_bytes = ckpt.folder, ckpt.nbytes
    work = args.work or folder.parent / f".{folder.name}-bench"
    work.mkdir(parents=True, exist_ok=True)
    converter = None if args.no_converter else converter_script(args.converter_cache)

    if tensor_bytes < psutil.virtual_memory().available // 2:
        start = time.perf_counter()
        for f in sorted(folder.glob("*.safetensors")):  # warm the page cache the same way for every tool
            with open(f, "rb") as fh:
                while fh.read(64 << 20):
                    pass
        console.print(f"{folder.name}: {human(tensor_bytes)} of tensors, read once in "
                      f"{time.perf_counter() - start:.1f} s")
    else:
        console.print(f"{folder.name}: {human(tensor_bytes)} of tensors, more than the page cache holds: every "
                      "tool reads it from disk")

    ours, theirs = work / "edgeoss.gguf", work / "converter.gguf"
    shards = " ".join(f"'{f}'" for f in sorted(folder.glob("*.safetensors")))
    copy = (["sh", "-c", f"cat {shards} > /dev/null"], []) if args.read_not_cp else \
        (["cp", "-r", str(folder), str(work / "copy")], [work / "copy"])
    tools: dict[str, tuple[list[str], list[Path]]] = {
        "cp -r": copy,
        "edgeoss export gguf": ([sys.executable, "-m", "edgeoss", "export", "gguf", str(folder), "-o", str(ours)],
                                [ours]),
    }
    if converter is not None:
        tools["llama.cpp converter"] = ([sys.executable, str(converter), str(folder), "--outfile",
                                                     str(theirs), "--outtype", "bf16"], [theirs])
    runs: dict[str, list[Run]] = {name: [] for name in tools}
    identical, ours_right = None, None
    for round_ in range(args.repeat):
        for name, (command, outputs) in tools.items():
            runs[name].append(measure(command, outputs))
            console.print(f"round {round_ + 1}: {name}: {runs[name][-1].wall_s:.1f} s")
        if round_ == 0 and converter is not None:
            identical = same_tensors(ours, theirs)
            experts = [n for n in identical if "_exps.weight" in n]
            ours_right = experts_match_checkpoint(ckpt, ours, experts) if experts else None
        for _, outputs in tools.values():
            for p in outputs:
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)

    with contextlib.suppress(OSError):
        work.rmdir()  # only if nothing else is in it
    if args.read_not_cp:
        runs["read (cat > /dev/null)"] = runs.pop("cp -r")
    cp_name = "read (cat > /dev/null)" if args.read_not_cp else "cp -r"
    cp_wall = statistics.median(r.wall_s for r in runs[cp_name])
    table = Table(title=f"GGUF export of {folder.name} ({human(tensor_bytes)} of tensors, "
                        f"median of {args.repeat}, {os.cpu_count()} cores; load avg per round)")
    for column in ("tool", "wall s", "MB/s", "x read" if args.read_not_cp else "x cp", "peak RSS", "output",
                   "load avg"):
        table.add_column(column, justify="left" if column == "tool" else "right")
    for name, rs in runs.items():
        wall = statistics.median(r.wall_s for r in rs)
        table.add_row(name, f"{wall:.1f}", f"{tensor_bytes / wall / 1e6:.0f}", f"{wall / cp_wall:.2f}",
                      human(max(r.peak_rss for r in rs)), human(rs[0].out_bytes),
                      " ".join(f"{r.load:.1f}" for r in rs))
    Console(width=120).print(table)
    if converter is not None:
        ratio = (statistics.median(r.wall_s for r in runs["llama.cpp converter"]) /
                 statistics.median(r.wall_s for r in runs["edgeoss export gguf"]))
        print(f"edgeoss is {ratio:.2f}x faster than the converter; tensors "
              + ("byte-identical to the converter's" if not identical else f"DIFFER: {', '.join(identical[:5])}"))
        if ours_right is not None:
            print("edgeoss's differing expert tensors " + ("equal" if ours_right else "do NOT equal") +
                  " edgeoss.mxfp4.to_ggml of the checkpoint (the converter pairs each _scales with the last "
                  "_blocks it read, so a layer whose blocks and scales sit in different shards comes out wrong)")


if __name__ == "__main__":
    main()
