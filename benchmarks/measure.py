"""Measure a command as a whole process: wall time, peak RSS, bytes read/written, and the machine's load."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Measured:
    wall_s: float
    peak_rss_bytes: int
    read_bytes: int
    write_bytes: int
    returncode: int
    stdout: str
    stderr: str


def run_measured(cmd: list[str], env: dict | None = None) -> Measured:
    """Run cmd to completion; peak RSS comes from the kernel's accounting of the child (ru_maxrss)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    io_last = None
    try:
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                io_last = p.io_counters()
            except (psutil.Error, AttributeError):
                pass
            time.sleep(0.05)
    except psutil.NoSuchProcess:
        pass
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = max(after.ru_maxrss, before.ru_maxrss) * 1024  # KiB on Linux
    return Measured(wall, peak, getattr(io_last, "read_bytes", 0), getattr(io_last, "write_bytes", 0),
                    proc.returncode, stdout, stderr)


def machine() -> str:
    load = os.getloadavg()
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM, load {load[0]:.2f}/{load[1]:.2f}, "
            f"python {sys.version.split()[0]}")


def drop_caches() -> bool:
    """Drop the page cache (root only) so a read is measured cold; False where not allowed."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False
