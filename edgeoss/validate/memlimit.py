"""Run a command, or a Python function, inside a memory budget that charges page cache too, and measure it.

On a phone the app's budget covers its anonymous memory and the page cache of the files it maps; past it the
app re-reads weights from flash or is killed. Here a fresh child memory cgroup (`edgeoss.validate.cgroups`) plays that
budget: the child process joins it before it runs a single instruction of the command, so every page it
allocates or faults in from a file counts. Going over the limit is a result, not an error: the kernel first
reclaims page cache (the run slows down and re-reads), and when only unreclaimable memory is left its OOM
killer ends the run (`LimitedRun.killed`).

    run = run_limited(["llama-cli", "-m", "m.gguf", ...], parse_size("6GiB"), cold=["m.gguf"])
    run = run_python_limited("pkg.module:function", {"arg": 1}, 6 << 30)       # run.result: its JSON result
    run = run_profile_limited("llamacpp", "m.gguf", 6 << 30, prompt_tokens=64)  # run.result: ProfileResult

Where each figure comes from (exact kernel counters, nothing sampled):
- peak_bytes: the cgroup's peak charge (v1 memory.max_usage_in_bytes, v2 memory.peak): anonymous memory,
  page cache and kernel memory of everything that ran in it.
- killed / oom_kills: the cgroup's oom_kill counter (v1 memory.oom_control, v2 memory.events). The child's
  SIGKILL alone would not tell an OOM kill from any other.
- failcnt: reported as the kernel gives it; on this project's machines (Linux 6.18, cgroup v1) it stays 0
  even when the limit is hit and the OOM killer acts, so nothing here relies on it.
- read_bytes: /proc/<pid>/io read_bytes of the child, read after it exits and before it is reaped (waitid
  with WNOWAIT): bytes its threads (and the children it reaped) caused to be read from storage, including
  mmap faults and readahead; page-cache hits excluded. Reads that page cache evicted under the limit had to
  repeat show up here as read_bytes larger than the files.
- major_faults, minor_faults: the child's rusage from wait4. Sequential mmap reads fault
  mostly through readahead and count few major faults; read_bytes is the better measure of re-reading.
  ru_maxrss is left out: it carries the parent's RSS from before the exec (30 MB for `sleep`, observed).
- page_cache_bytes: page cache charged to the cgroup when the run ended.

A page-cache page is charged to whoever first brings it in: a file already cached by another process costs a
limited run nothing. `cold=` files are therefore evicted (`drop_page_cache`) before the run starts, and what
could not be evicted (pages that other processes keep mapped) is reported as cold_resident_bytes.

SIGINT and SIGTERM (in the main thread) end a run cleanly: the child and anything it started are killed and
the cgroup is removed before the KeyboardInterrupt / SystemExit(143) propagates. Only a SIGKILL of this process
can leave an `edgeoss-<pid>-<n>` cgroup behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import mmap
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .cgroups import MemoryCgroup, cgroups_available
from ..errors import UsageError
from ..units import parse_size

__all__ = ["LimitedRun", "run_limited", "run_python_limited", "run_profile_limited", "drop_page_cache",
           "resident_bytes", "cgroups_available"]


@dataclass(frozen=True)
class LimitedRun:
    """What happened to one process run inside a memory limit."""

    argv: tuple[str, ...]
    limit_bytes: int  # as the kernel applies it
    cgroup_version: int
    returncode: int  # negative: ended by that signal (subprocess's convention)
    killed: bool  # the OOM killer ended a process of the run
    timed_out: bool  # edgeoss killed it at `timeout`
    wall_s: float
    peak_bytes: int
    oom_kills: int
    failcnt: int | None
    page_cache_bytes: int
    read_bytes: int
    major_faults: int
    minor_faults: int
    cold_resident_bytes: int  # bytes of the `cold` files still cached when the run started
    stdout: str
    stderr: str
    result: Any = None  # run_python_limited: the function's JSON result; None when it did not finish

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.killed and not self.timed_out

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- page cache --------------------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


def _files(paths: Iterable[str | Path]) -> Iterator[Path]:
    for path in map(Path, paths):
        if not path.exists():
            raise UsageError(f"{path}: no such file or folder")
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def resident_bytes(path: str | Path) -> int:
    """Bytes of a file (or of every file under a folder) now in the page cache (mincore)."""
    total = 0
    for file in _files([path]):
        size = file.stat().st_size
        if size == 0:
            continue
        fd = os.open(file, os.O_RDONLY)
        try:
            addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr == _MAP_FAILED:
                raise OSError(ctypes.get_errno(), f"mmap of {file} failed")
            try:
                pages = np.zeros((size + _PAGE - 1) // _PAGE, dtype=np.uint8)
                if _libc.mincore(addr, size, pages.ctypes.data) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore of {file} failed")
            finally:
                _libc.munmap(addr, size)
        finally:
            os.close(fd)
        total += min(int((pages & 1).sum()) * _PAGE, size)
    return total


def drop_page_cache(paths: Iterable[str | Path]) -> int:
    """Evict files (folders: every file under them) from the page cache so the next reader starts cold.

    Dirty pages are written back first (they cannot be dropped). Returns the bytes still cached afterwards:
    pages that another process keeps mapped stay.
    """
    left = 0
    for file in _files(paths):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        left += resident_bytes(file)
    return left


# --- signals -----------------------------------------------------------------------------------------------

def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While a run is on, SIGTERM unwinds the stack (so cleanup runs) instead of ending the process at once."""
    if not _in_main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while cleanup runs, then deliver them to the handlers that were in place."""
    if not _in_main_thread():
        yield
        return
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in pending:
            signal.raise_signal(s)


# --- the child process -------------------------------------------------------------------------------------

# The child reads its stdin (a pipe) until the parent has moved it into the cgroup, then becomes the command
# with /dev/null as stdin.
_JOIN_THEN_EXEC = 'read -r go || exit 125; exec "$@" </dev/null'


class _Child:
    """The limited process: started held, released once in the cgroup, reaped by us (not by Popen)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None, cwd: str | Path | None):
        hold_read, self._release = os.pipe()
        try:
            self.proc = subprocess.Popen(["/bin/sh", "-c", _JOIN_THEN_EXEC, "edgeoss-limited", *argv],
                                         stdin=hold_read, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         cwd=cwd, env=None if env is None else dict(env))
        except BaseException:
            os.close(self._release)
            raise
        finally:
            os.close(hold_read)
        self.pid = self.proc.pid
        self.reaped = False
        self._output: dict[str, bytes] = {}
        self._readers = [threading.Thread(target=self._drain, args=(name, stream), daemon=True)
                         for name, stream in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr))]
        for reader in self._readers:
            reader.start()

    def _drain(self, name: str, stream) -> None:
        with stream:
            self._output[name] = stream.read()

    def release(self) -> None:
        os.write(self._release, b"go\n")
        os.close(self._release)
        self._release = None

    def wait_exit(self, timeout: float | None) -> bool:
        """Block until the child exits (left unreaped) or `timeout` passes; True if it exited."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pidfd = os.pidfd_open(self.pid)
        try:
            while True:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                select.select([pidfd], [], [], remaining)
                if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                    return True
                if deadline is not None and time.monotonic() >= deadline:
                    return False
        finally:
            os.close(pidfd)

    def read_bytes(self) -> int:
        """Storage bytes read by the exited (zombie) child, its threads and the children it reaped."""
        for line in Path(f"/proc/{self.pid}/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
        raise AssertionError("/proc/<pid>/io has no read_bytes")

    def reap(self) -> tuple[int, Any]:
        """(returncode, rusage) of the exited child."""
        _, status, rusage = os.wait4(self.pid, 0)
        self.reaped = True
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return self.proc.returncode, rusage

    def output(self) -> tuple[str, str]:
        for reader in self._readers:
            reader.join(timeout=10)
        return tuple(self._output.get(name, b"").decode(errors="replace") for name in ("stdout", "stderr"))

    def close(self) -> None:
        """Kill and reap the child if that has not happened (an error or interrupt cut the run short)."""
        if self._release is not None:
            os.close(self._release)
            self._release = None
        if not self.reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):  # reaped just before an interrupt
                self.reap()


def run_limited(argv: Sequence[str | Path], limit_bytes: int | str, env: Mapping[str, str] | None = None,
                timeout: float | None = None, cold: Iterable[str | Path] = (),
                cwd: str | Path | None = None) -> LimitedRun:
    """Run a command to its end inside a fresh memory cgroup limited to `limit_bytes`; stdout/stderr captured.

    env: the child's whole environment (None: this process's). timeout: seconds, then the run is killed and
    reported with timed_out=True. cold: files or folders evicted from the page cache first.
    Raises CgroupUnavailable where no memory cgroup can be made, UsageError for a command that is not found
    (both one line); an OOM kill, a crash or a timeout is a result.
    """
    argv = tuple(str(a) for a in argv)
    if not argv or shutil.which(argv[0], path=(env or os.environ).get("PATH")) is None:
        raise UsageError(f"{argv[0] if argv else '(empty command)'}: command not found")
    limit = parse_size(limit_bytes)
    cold_resident = drop_page_cache(cold)
    group = MemoryCgroup(limit)
    child = None
    with _sigterm_unwinds():
        try:
            group.create()
            start = time.perf_counter()
            child = _Child(argv, env, cwd)
            group.add(child.pid)
            child.release()
            timed_out = not child.wait_exit(timeout)
            if timed_out:
                os.kill(child.pid, signal.SIGKILL)
                child.wait_exit(None)
            read_bytes = child.read_bytes()
            returncode, usage = child.reap()
            wall = time.perf_counter() - start
            group.kill_all()  # what the command started and left running
            oom_kills = group.oom_kills()
            stdout, stderr = child.output()
            return LimitedRun(
                argv=argv, limit_bytes=group.limit_bytes(), cgroup_version=group.controller.version,
                returncode=returncode, killed=oom_kills > 0, timed_out=timed_out, wall_s=wall,
                peak_bytes=group.peak_bytes(), oom_kills=oom_kills, failcnt=group.failcnt(),
                page_cache_bytes=group.page_cache_bytes(), read_bytes=read_bytes,
                major_faults=usage.ru_majflt, minor_faults=usage.ru_minflt,
                cold_resident_bytes=cold_resident, stdout=stdout, stderr=stderr)
        finally:
            with _signals_deferred():
                if child is not None:
                    child.close()
                group.remove(raise_errors=sys.exc_info()[0] is None)


# --- Python functions in the limit -------------------------------------------------------------------------

# argv: function path, kwargs JSON, result file, the parent's sys.path as JSON
_CALL_FUNCTION = """\
import importlib, json, os, sys
sys.path[:0] = json.loads(sys.argv[4])
module, _, name = sys.argv[1].partition(":")
result = getattr(importlib.import_module(module), name)(**json.loads(sys.argv[2]))
with open(sys.argv[3] + ".part", "w") as f:
    json.dump(result, f, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
os.replace(sys.argv[3] + ".part", sys.argv[3])
"""


def run_python_limited(func_path: str, kwargs_json: str | Mapping[str, Any] = "{}",
                       limit_bytes: int | str = "4GiB", env: Mapping[str, str] | None = None,
                       timeout: float | None = None, cold: Iterable[str | Path] = ()) -> LimitedRun:
    """Call `module:function(**kwargs)` in a fresh interpreter inside the limit; its JSON result in `.result`.

    The function must return something JSON can write (numpy values are converted). `.result` is None when
    the child did not finish (killed, timed out, raised: see `.stderr`). The child imports with this process's
    sys.path, so any module importable here is importable there.
    """
    kwargs = kwargs_json if isinstance(kwargs_json, str) else json.dumps(dict(kwargs_json))
    with tempfile.TemporaryDirectory(prefix="edgeoss-result-") as tmp:
        result_file = Path(tmp) / "result.json"
        run = run_limited([sys.executable, "-c", _CALL_FUNCTION, func_path, kwargs, str(result_file),
                           json.dumps(sys.path)], limit_bytes, env=env, timeout=timeout, cold=cold)
        result = json.loads(result_file.read_text()) if result_file.exists() else None
    return dataclasses.replace(run, result=result)


def profile_as_dict(**kwargs: Any) -> dict[str, Any]:
    """`edgeoss.validate.profiler.profile(**kwargs)` as a dict: what run_profile_limited calls in the limited child."""
    from .profiler import profile

    return profile(**kwargs).as_dict()


def run_profile_limited(engine: str, artifact: str | Path, limit_bytes: int | str, *,
                        options: Mapping[str, Any] | None = None, cold: bool = True,
                        timeout: float | None = None, **profile_kwargs: Any) -> LimitedRun:
    """Profile an engine on an artifact inside the limit; `.result` is the ProfileResult as a dict (or None).

    cold: evict the artifact from the page cache first, so the run pays for (and is charged) every read.
    profile_kwargs: prompt_tokens, gen_tokens, runs, warmup (see edgeoss.validate.profiler.profile).
    """
    kwargs = {"engine_name": engine, "artifact": str(artifact), "options": dict(options or {}), **profile_kwargs}
    return run_python_limited("edgeoss.validate.memlimit:profile_as_dict", kwargs, limit_bytes, timeout=timeout,
                              cold=[artifact] if cold else ())
