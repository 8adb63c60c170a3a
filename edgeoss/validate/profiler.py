"""Measure an engine on an artifact: load time, TTFT, prefill and decode speed, memory, disk reads.

One profile = load the engine, warm up, then `runs` times: a fresh sequence of `prompt_tokens` random tokens
(prefill; TTFT is the time to the first generated token) followed by `gen_tokens` greedy decode steps.
Medians and spread (min, max) are reported. Peak RSS is sampled every 5 ms by a thread; bytes read from storage come from /proc/self/io (real device reads, not page-cache
hits). Engine counters (expert cache hits and misses, bytes per token, time per layer and per op kind in the
reference runtime) come from `engine.stats()`.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from ..formats.spec import ModelSpec


@dataclass(frozen=True)
class Spread:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        return cls(statistics.median(values), min(values), max(values))


@dataclass(frozen=True)
class ProfileResult:
    engine: str
    artifact: str
    model: str
    prompt_tokens: int
    gen_tokens: int
    runs: int
    load_s: float
    ttft_s: Spread
    prefill_tok_s: Spread
    decode_tok_s: Spread
    peak_rss_bytes: int
    rss_before_load_bytes: int
    rss_after_load_bytes: int
    disk_read_bytes: int  # during load and all runs
    disk_read_bytes_per_decode_token: float
    engine_stats: dict[str, Any] = field(default_factory=dict)
    # inside a memory cgroup with split_peak: its peak charge up to the end of the warm-up (the load), and after
    load_peak_bytes: int | None = None
    run_peak_bytes: int | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    projection: dict[str, Any] = field(default_factory=dict)  # onto a device profile, when one was named

    def as_dict(self) -> dict:
        return asdict(self)


def machine_description() -> dict[str, Any]:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    vm = psutil.virtual_memory()
    return {"cpu": model, "cores": os.cpu_count(), "ram_bytes": vm.total, "os": platform.platform(),
            "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]}


def disk_read_bytes() -> int:
    """Bytes this process has caused to be read from storage (page-cache hits excluded)."""
    try:
        for line in open("/proc/self/io"):
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples this process's RSS on a thread; `peak` is the largest value seen."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._proc = psutil.Process()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def random_prompt(spec: ModelSpec, n: int, seed: int = 0) -> list[int]:
    """Ordinary (non-special) token ids."""
    upper = min(spec.vocab_size, 199998)
    return np.random.default_rng(seed).integers(0, upper, size=n).tolist()


def project(spec: ModelSpec, device_name: str, engine_name: str, stats: dict, flash_bytes_per_token: float,
            context: int) -> dict[str, Any]:
    """The measured work of one decode token on a device: the bytes the engine touched in RAM (dense weights
    and the experts it found resident), the bytes it read from storage and the FLOPs, through the device's
    memory bandwidth, flash and compute with the planner's efficiency factors; next to the planner's own
    prediction for the same model, device, engine and context."""
    from ..planner.plan import PlanRequest, make_plan
    from ..planner.predict import Calibration, _tier_s, dense_params_per_token, flash_read_s
    from ..planner.profiles import load_profile
    from ..formats.spec import sizes

    device, cal, s = load_profile(device_name), Calibration(), sizes(spec)
    experts = stats.get("experts") or {}
    per_token = spec.num_hidden_layers * spec.num_experts_per_tok
    misses = min(per_token, flash_bytes_per_token / s.bytes_per_expert) if experts else 0.0
    ram_bytes = 2 * dense_params_per_token(spec) + (per_token - misses) * s.bytes_per_expert
    flops = 2 * s.params_active
    step = _tier_s(ram_bytes, flops, device.memory_bandwidth_gb_s, device.cpu_gflops, cal) + \
        flash_read_s(flash_bytes_per_token, misses, device, cal)
    engine = engine_name if engine_name in ("llamacpp", "llamacpp-stream") else "reference"
    plan = make_plan(PlanRequest(spec=spec, device=device, context=min(context, spec.max_position_embeddings),
                                 engine=engine))
    planned = (plan.get("prediction") or {}).get("decode_tok_s")
    return {"device": device.name, "decode_tok_s": 1.0 / step, "ram_bytes_per_token": ram_bytes,
            "flash_bytes_per_token": flash_bytes_per_token, "flops_per_token": flops,
            "planner_decode_tok_s": planned or 0.0, "planner_fits": plan["fits"]}


def profile(engine_name: str, artifact: str | Path, prompt_tokens: int = 512, gen_tokens: int = 128, runs: int = 3,
            options: dict[str, Any] | None = None, warmup: bool = True, device: str | None = None,
            split_peak: bool = False) -> ProfileResult:
    """split_peak: inside a memory cgroup, report its peak charge up to the end of the load and warm-up and the
    peak of the measured runs after it apart (`load_peak_bytes`, `run_peak_bytes`)."""
    from ..runtimes.engine import load_engine
    from .cgroups import PeakWindow

    options = dict(options or {})
    if engine_name == "llamacpp":
        options.setdefault("n_ctx", prompt_tokens + gen_tokens + 8)
        options.setdefault("logits_all", False)  # generation reads the last row only, as an app does
    rss_before = psutil.Process().memory_info().rss
    read_before = disk_read_bytes()
    with RssSampler() as rss:
        start = time.perf_counter()
        engine = load_engine(engine_name, artifact, **options)
        load_s = time.perf_counter() - start
        rss_after_load = psutil.Process().memory_info().rss
        try:
            prompt = random_prompt(engine.spec, prompt_tokens)
            if warmup:
                engine.reset()
                row = engine.prefill(prompt[:16])[-1]
                for _ in range(2):
                    row = engine.step(int(row.argmax()))
            window = PeakWindow.of_this_process() if split_peak else None
            load_peak = window.restart() if window else None
            ttft, prefill, decode = [], [], []
            read_decode = 0
            for _ in range(runs):
                engine.reset()
                t0 = time.perf_counter()
                row = engine.prefill(prompt)[-1]
                token = int(row.argmax())
                t1 = time.perf_counter()
                ttft.append(t1 - t0)
                prefill.append(prompt_tokens / (t1 - t0))
                r0 = disk_read_bytes()
                t2 = time.perf_counter()
                for _ in range(gen_tokens):
                    token = int(engine.step(token).argmax())
                decode.append(gen_tokens / (time.perf_counter() - t2))
                read_decode += disk_read_bytes() - r0
            stats = engine.stats()
            run_peak = window.read() if window else None
            if window:
                window.close()
        finally:
            engine.close()
    return ProfileResult(
        engine=getattr(engine, "name", engine_name), artifact=str(artifact), model=engine.spec.name,
        prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, runs=runs, load_s=load_s, ttft_s=Spread.of(ttft),
        prefill_tok_s=Spread.of(prefill), decode_tok_s=Spread.of(decode), peak_rss_bytes=rss.peak,
        rss_before_load_bytes=rss_before, rss_after_load_bytes=rss_after_load,
        disk_read_bytes=disk_read_bytes() - read_before,
        disk_read_bytes_per_decode_token=read_decode / max(1, runs * gen_tokens),
        engine_stats=stats, load_peak_bytes=load_peak, run_peak_bytes=run_peak, machine=machine_description(),
        projection=project(engine.spec, device, getattr(engine, "name", engine_name), stats,
                           _flash_per_token(stats, read_decode, runs, gen_tokens),
                           prompt_tokens + gen_tokens) if device else {})


def _flash_per_token(stats: dict, read_decode: int, runs: int, gen_tokens: int) -> float:
    """Expert bytes an engine fetched per decode token (the reference counts them), else what it read."""
    if "decode_bytes_read_per_token" in stats:
        return float(stats["decode_bytes_read_per_token"])
    return read_decode / max(1, runs * gen_tokens)
