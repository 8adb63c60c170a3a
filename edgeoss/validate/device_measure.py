"""Measure the machine edgeoss runs on and describe it as a device profile (`edgeoss profiles measure`).

- RAM and the app budget: psutil; the budget is 90 % of the memory available right now.
- Memory bandwidth: a parallel sum over a 256 MiB array (numba, all threads), repeated until stable.
- Flash: a temporary file in the chosen folder, written and synced, then dropped from the page cache
  (posix_fadvise DONTNEED) and read back sequentially in 4 MiB blocks and randomly in 4 KiB blocks, both
  with O_DIRECT where the file system allows it.
- CPU throughput: the reference runtime's MXFP4 matmul kernel (edgeoss.runtimes.kernels) on gpt-oss-sized
  expert matrices: one token (a decode matvec, reported as GB/s of MXFP4 weights) and a batch of 64 tokens
  (reported as GFLOP/s, the profile's cpu_gflops).
- Decode rates of each engine's own kernels at gpt-oss-20b's shapes, which plans for this machine use instead of
  the roofline: the reference runtime's MXFP4 and bf16 matvecs and attention, and llama.cpp's (ggml's CPU
  mul_mat, MXFP4 and bf16, as the expert store runs them), each repeated until stable in each of three fresh
  processes (they move more between processes than between repeats), the median of those, with the spread.
- Vector ISA: arm64, or avx512 when /proc/cpuinfo lists AVX-512 F, DQ, BW and VL, else avx2.
- Largest file: 4 GiB - 1 on FAT file systems, otherwise unlimited.
GPUs are not measured; add the gpu_* keys by hand (profiles/README.md).
"""

from __future__ import annotations

import mmap
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import psutil
from numba import prange

from ..errors import UsageError
from ..planner.profiles import DeviceProfile

MIB = 1 << 20
FAT_LIMIT = (1 << 32) - 1
FAT_TYPES = ("vfat", "msdos", "fat", "fat32", "exfat_fat32")
SEQ_BLOCK, RANDOM_BLOCK = 4 * MIB, 4096


@dataclass(frozen=True)
class Stable:
    """A figure measured until its last three repeats agree: their median, and the spread of all repeats."""

    median: float
    low: float
    high: float
    repeats: int

    @property
    def spread(self) -> float:
        """Half the range over the median (0.05: +/-5 %)."""
        return (self.high - self.low) / 2 / self.median if self.median else 0.0

    def note(self) -> str:
        return f"median of {self.repeats} repeats, spread +/-{100 * self.spread:.0f} %"


def stable(measure_once, tolerance: float = 0.05, least: int = 3, most: int = 10) -> Stable:
    """Repeat `measure_once()` (a positive figure) until the last three lie within +/-tolerance of their median,
    at most `most` times."""
    values: list[float] = []
    while len(values) < most:
        values.append(float(measure_once()))
        last = sorted(values[-3:])
        if len(values) >= least and (last[-1] - last[0]) / 2 <= tolerance * last[1]:
            break
    last = sorted(values[-3:])
    return Stable(last[1], min(values), max(values), len(values))


@dataclass(frozen=True)
class Measured:
    profile: DeviceProfile
    comments: dict[str, str]  # profile key -> how it was measured
    spreads: dict[str, float]  # profile key -> its repeats' spread (0.05: +/-5 %)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _parallel_sum(values):
    total = np.float32(0.0)
    for i in prange(values.shape[0]):
        total += values[i]
    return total


def memory_bandwidth_gb_s(nbytes: int = 256 * MIB) -> Stable:
    """A parallel sum over an nbytes float32 array (all threads), repeated until stable."""
    values = np.ones(nbytes // 4, dtype=np.float32)
    _parallel_sum(values[:1024])  # compile outside the timing

    def once() -> float:
        start = time.perf_counter()
        _parallel_sum(values)
        return nbytes / (time.perf_counter() - start) / 1e9

    return stable(once)


def _aligned_buffer(nbytes: int) -> mmap.mmap:
    return mmap.mmap(-1, nbytes)  # page-aligned, as O_DIRECT requires


def _open_uncached(path: Path) -> tuple[int, bool]:
    """A read descriptor that bypasses the page cache if the file system allows O_DIRECT."""
    direct = getattr(os, "O_DIRECT", 0)
    if direct:
        try:
            return os.open(path, os.O_RDONLY | direct), True
        except OSError:
            pass
    fd = os.open(path, os.O_RDONLY)
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return fd, False


def flash_read_mb_s(folder: Path, nbytes: int, random_seconds: float = 1.0) -> tuple[float, float, bool]:
    """(sequential MB/s, 4 KiB random MB/s, whether O_DIRECT was used) for a temporary file in `folder`."""
    nbytes = max(SEQ_BLOCK, nbytes // SEQ_BLOCK * SEQ_BLOCK)
    path = Path(folder) / f".edgeoss-measure-{os.getpid()}.tmp"
    chunk = np.random.default_rng(0).integers(0, 256, SEQ_BLOCK, dtype=np.uint8).tobytes()
    try:
        with open(path, "wb") as f:
            for _ in range(nbytes // SEQ_BLOCK):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        fd, direct = _open_uncached(path)
        try:
            buffer = _aligned_buffer(SEQ_BLOCK)
            start = time.perf_counter()
            while os.readv(fd, [buffer]) > 0:
                pass
            seq = nbytes / (time.perf_counter() - start) / 1e6
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            small = _aligned_buffer(RANDOM_BLOCK)
            offsets = np.random.default_rng(1).integers(0, nbytes // RANDOM_BLOCK, 1 << 16) * RANDOM_BLOCK
            reads, start = 0, time.perf_counter()
            while reads < len(offsets) and time.perf_counter() - start < random_seconds:
                os.preadv(fd, [small], int(offsets[reads]))
                reads += 1
            rnd = reads * RANDOM_BLOCK / (time.perf_counter() - start) / 1e6
        finally:
            os.close(fd)
    except OSError as e:
        raise UsageError(f"{folder}: cannot measure disk reads there ({e.strerror})") from None
    finally:
        path.unlink(missing_ok=True)
    return seq, min(rnd, seq), direct


def _mxfp4_experts(experts: int, rows: int = 5760, hidden: int = 2880):
    """Random MXFP4 experts of gpt-oss-20b's gate_up shape (blocks, scales), and the reference runtime's kernel,
    compiled."""
    from edgeoss.runtimes.kernels import mxfp4_matmul

    rng = np.random.default_rng(0)
    groups = hidden // 32
    blocks = rng.integers(0, 256, (experts, rows, groups, 16), dtype=np.uint8)
    scales = rng.integers(118, 123, (experts, rows, groups), dtype=np.uint8)
    mxfp4_matmul(np.zeros((1, hidden), dtype=np.float32), blocks[0], scales[0])  # compile
    return blocks, scales, mxfp4_matmul


def mxfp4_matvec_gb_s(experts: int = 8) -> Stable:
    """The reference runtime's decode matvec over `experts` MXFP4 experts, GB/s of MXFP4 weights, until stable."""
    blocks, scales, mxfp4_matmul = _mxfp4_experts(experts)
    x = np.random.default_rng(1).standard_normal((1, blocks.shape[2] * 32)).astype(np.float32)

    def once() -> float:
        start = time.perf_counter()
        for e in range(experts):
            mxfp4_matmul(x, blocks[e], scales[e])
        return (blocks.nbytes + scales.nbytes) / (time.perf_counter() - start) / 1e9

    return stable(once)


def mxfp4_batched_gflops(batch: int = 64) -> Stable:
    """The reference runtime's MXFP4 kernel on a batch of tokens (one expert), GFLOP/s, until stable."""
    blocks, scales, mxfp4_matmul = _mxfp4_experts(1)
    rows, hidden = blocks.shape[1], blocks.shape[2] * 32
    x = np.random.default_rng(1).standard_normal((batch, hidden)).astype(np.float32)

    def once() -> float:
        start = time.perf_counter()
        mxfp4_matmul(x, blocks[0], scales[0])
        return 2 * rows * hidden * batch / (time.perf_counter() - start) / 1e9

    return stable(once)


# gpt-oss-20b's decode shapes: an expert's gate_up [5760, 2880]; the attention projections q+k+v [5120, 2880]
HIDDEN, EXPERT_ROWS, QKV_ROWS, HEADS, KV_HEADS, HEAD_DIM = 2880, 5760, 5120, 64, 8, 64
RATE_CONTEXT = 4096  # positions one decode query attends over when attention is timed


def reference_rates(quick: bool = False) -> dict[str, Stable]:
    """The reference runtime's dense decode kernels at gpt-oss shapes (edgeoss.runtimes.kernels), repeated until
    stable: the bf16 matvec (GB/s of bf16 weights) over more matrices than any cache holds, and attention of one
    query over RATE_CONTEXT float32 positions (GFLOP/s). Its expert matvec is `mxfp4_matvec_gb_s`."""
    from edgeoss.runtimes import kernels

    kernels.warm_up()
    rng = np.random.default_rng(0)
    matrices = 2 if quick else 16
    dense = rng.integers(0, 0x3F80, (matrices, QKV_ROWS, HIDDEN), dtype=np.uint16)  # bf16 bits of values < 1
    x = rng.standard_normal((1, HIDDEN)).astype(np.float32)

    def dense_gb_s() -> float:
        start = time.perf_counter()
        for m in range(matrices):
            kernels.bf16_matmul(x, dense[m])
        return dense.nbytes / (time.perf_counter() - start) / 1e9

    positions = 512 if quick else RATE_CONTEXT
    keys = rng.standard_normal((positions, KV_HEADS, HEAD_DIM)).astype(np.float32)
    values = rng.standard_normal((positions, KV_HEADS, HEAD_DIM)).astype(np.float32)
    q = rng.standard_normal((1, HEADS, HEAD_DIM)).astype(np.float32)
    k_pos, q_pos, sinks = np.arange(positions), np.array([positions - 1]), np.zeros(HEADS, dtype=np.float32)

    def attention_gflops() -> float:
        start = time.perf_counter()
        for _ in range(4):
            kernels.attention(q, keys, values, q_pos, k_pos, sinks, None)
        return 4 * 4 * HEADS * HEAD_DIM * positions / (time.perf_counter() - start) / 1e9

    return {"reference_dense_gb_s": stable(dense_gb_s),
            "reference_attention_gflops": stable(attention_gflops)}


def llamacpp_rates(quick: bool = False) -> dict[str, Stable]:
    """llama.cpp's own CPU kernels (ggml mul_mat, no repack, all threads) at gpt-oss shapes, repeated until stable:
    MXFP4 experts and bf16 dense weights with one activation column, GB/s of weights. Empty where llama-cpp-python
    is not installed."""
    try:
        from edgeoss.runtimes.ggml_compute import matvec_graph
    except ImportError:
        return {}
    threads, matrices = os.cpu_count() or 1, 2 if quick else 8

    def rate(kind: str, rows: int, bytes_per_value: float) -> Stable:
        nbytes = matrices * rows * HIDDEN * bytes_per_value
        with matvec_graph(kind, rows, HIDDEN, threads, matrices) as compute:  # built once, computed per repeat
            return stable(lambda: nbytes / compute() / 1e9)

    return {"llamacpp_expert_gb_s": rate("mxfp4", EXPERT_ROWS, 17 / 32), "llamacpp_dense_gb_s": rate("bf16", QKV_ROWS, 2)}


RATE_SOURCES = {
    "reference_expert_gb_s": "reference runtime MXFP4 matvec, 8 experts' gate_up [5760, 2880]",
    "reference_dense_gb_s": "reference runtime bf16 matvec, 16 matrices [5120, 2880]",
    "reference_attention_gflops": f"reference runtime attention, one query of 64 heads over {RATE_CONTEXT} positions",
    "llamacpp_expert_gb_s": "llama.cpp's ggml mul_mat (CPU backend, no repack), MXFP4 [5760, 2880] x 8, one column",
    "llamacpp_dense_gb_s": "llama.cpp's ggml mul_mat (CPU backend), bf16 [5120, 2880] x 8, one column",
}


RATE_PROCESSES = 3  # kernel rates move 20-40 % from one process to the next on a shared VM (benchmarks/README.md)


def _rates_of_one_process(quick: bool) -> dict[str, Stable]:
    return {"reference_expert_gb_s": mxfp4_matvec_gb_s(experts=2 if quick else 8)} | reference_rates(quick) | llamacpp_rates(quick)


def kernel_rates(quick: bool = False, processes: int = RATE_PROCESSES) -> dict[str, Stable]:
    """Each engine's decode kernel rates, measured until stable in each of `processes` fresh processes (a process's
    placement moves them more than repeating does): the median of the processes' medians, and the spread of every
    repeat of all of them."""
    if processes <= 1:
        return _rates_of_one_process(quick)
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:  # one at a time, each fresh
        runs = [pool.apply(_rates_of_one_process, (quick,)) for _ in range(processes)]
    return {key: Stable(float(np.median([r[key].median for r in runs])), min(r[key].low for r in runs),
                        max(r[key].high for r in runs), sum(r[key].repeats for r in runs)) for key in runs[0]}


def this_platform() -> str:
    if "ANDROID_ROOT" in os.environ or hasattr(sys, "getandroidapilevel"):
        return "android"
    return {"linux": "linux", "darwin": "macos", "win32": "windows"}.get(sys.platform, "linux")


def this_cpu_arch() -> str:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("arm64", "aarch64"):
        return "arm64"
    raise UsageError(f"cannot describe a {machine!r} CPU: profiles know arm64 and x86_64")


AVX512_FLAGS = ("avx512f", "avx512dq", "avx512bw", "avx512vl")  # what ONNX Runtime's AVX-512 fp4 path checks


def this_cpu_isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, str]:
    """(cpu_isa, how it was found): arm64, or avx512 when the CPU reports AVX-512 F, DQ, BW and VL, else avx2."""
    if this_cpu_arch() == "arm64":
        return "arm64", "measured: platform.machine()"
    try:
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return "avx2", f"assumed: {cpuinfo} unreadable, so AVX-512 could not be confirmed"
    isa = "avx512" if all(f in flags for f in AVX512_FLAGS) else "avx2"
    return isa, f"measured: {cpuinfo} flags ({', '.join(AVX512_FLAGS)}: {'all' if isa == 'avx512' else 'not all'})"


def max_file_bytes(folder: Path) -> int | None:
    folder = Path(folder).resolve()
    best, fstype = -1, ""
    for part in psutil.disk_partitions(all=True):
        mount = Path(part.mountpoint)
        if (folder == mount or mount in folder.parents) and len(str(mount)) > best:
            best, fstype = len(str(mount)), part.fstype.lower()
    return FAT_LIMIT if fstype in FAT_TYPES else None


def measure(name: str, folder: Path, disk_bytes: int = 256 * MIB, quick: bool = False) -> Measured:
    """Measure this machine. `quick` shrinks every measurement (for tests); figures get noisier."""
    vm = psutil.virtual_memory()
    bandwidth = memory_bandwidth_gb_s(32 * MIB if quick else 256 * MIB)
    seq, rnd, direct = flash_read_mb_s(folder, disk_bytes, 0.2 if quick else 1.0)
    gflops = mxfp4_batched_gflops(batch=8 if quick else 64)
    processes = 1 if quick else RATE_PROCESSES
    rates = kernel_rates(quick, processes)
    limit = max_file_bytes(folder)
    isa, isa_how = this_cpu_isa()
    how = "O_DIRECT" if direct else "after posix_fadvise(DONTNEED)"
    profile = DeviceProfile(
        name=name, description=f"{platform.system()} {platform.machine()} with {psutil.cpu_count()} threads, "
                               f"measured by edgeoss on {time.strftime('%Y-%m-%d')}", platform=this_platform(), cpu_arch=this_cpu_arch(),
        cpu_isa=isa,
        ram_bytes=vm.total, app_budget_bytes=min(vm.total, int(0.9 * vm.available)),
        memory_bandwidth_gb_s=round(bandwidth.median, 1), flash_seq_read_mb_s=round(seq),
        flash_random_read_mb_s=round(rnd, 1), cpu_threads=os.cpu_count() or 1, cpu_gflops=round(gflops.median, 1),
        max_file_bytes=limit, **{key: round(rate.median, 2) for key, rate in rates.items()})
    comments = {
        "cpu_isa": isa_how,
        "ram": "measured: psutil.virtual_memory().total",
        "app_budget": f"measured: 90 % of the memory available at measurement time "
                      f"({vm.available / 2**30:.1f} GiB available)",
        "memory_bandwidth_gb_s": f"measured: parallel sum over a float32 array (numba, all threads), "
                                 f"{bandwidth.note()}",
        "flash_seq_read_mb_s": f"measured: {disk_bytes // MIB} MiB temporary file in {folder}, 4 MiB reads, {how}",
        "flash_random_read_mb_s": f"measured: 4 KiB reads at random offsets of the same file, {how}",
        "cpu_threads": "measured: os.cpu_count()",
        "cpu_gflops": f"measured: reference runtime MXFP4 kernel, batched matmul, {gflops.note()}",
        "max_file": "measured: file system type of the measured folder (FAT: 4 GiB - 1)",
    } | {key: f"measured: {RATE_SOURCES[key]} at gpt-oss-20b's shapes, {rate.note()} in {processes} process"
              + ("es (the median of theirs)" if processes > 1 else "") for key, rate in rates.items()}
    spreads = {"memory_bandwidth_gb_s": bandwidth.spread, "cpu_gflops": gflops.spread} | {
        key: rate.spread for key, rate in rates.items()}
    return Measured(profile, comments, spreads)
