"""Fresh child memory cgroups of this process's own: create with a limit, read the counters, remove.

The memory controller charges a cgroup for its processes' anonymous memory, kernel memory and the page cache
they bring in (a file page is charged to the cgroup of whoever first faults or reads it), which is what a
phone's app budget counts. Both interfaces are spoken:

- cgroup v2, when this process's cgroup already delegates `memory` to its children (`memory` listed in its
  `cgroup.subtree_control`): `memory.max`, `memory.swap.max` = 0, `memory.peak`, `memory.events`;
- cgroup v1 otherwise: `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes` (same value, so swap never
  stretches the budget), `memory.max_usage_in_bytes`, `memory.failcnt`, `memory.oom_control`.

Only the child directory edgeoss makes is ever written; the parent cgroup's own files are never changed.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeossError

_names = itertools.count()


class CgroupUnavailable(EdgeossError):
    """This process cannot make a memory cgroup (not root, no memory controller, not delegated, read-only)."""


@dataclass(frozen=True)
class MemoryController:
    """Where this process's memory cgroup lives and which interface it speaks."""

    version: int  # 1 or 2
    own_dir: Path  # the directory of this process's own memory cgroup

    @property
    def limit_file(self) -> str:
        return "memory.max" if self.version == 2 else "memory.limit_in_bytes"

    @property
    def swap_limit_file(self) -> str:
        return "memory.swap.max" if self.version == 2 else "memory.memsw.limit_in_bytes"

    @property
    def peak_file(self) -> str:
        return "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"

    @property
    def events_file(self) -> str:
        return "memory.events" if self.version == 2 else "memory.oom_control"


def _own_paths() -> dict[str, str]:
    """/proc/self/cgroup as {controller: path}; the v2 entry is under the key ''."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _mounts() -> list[tuple[str, Path, str, set[str]]]:
    """cgroup mounts from /proc/self/mountinfo: (root inside the hierarchy, mount point, fstype, options)."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, (fstype, _source, options) = left.split(), right.split()[:3]
        if fstype in ("cgroup", "cgroup2"):
            mounts.append((fields[3], Path(fields[4]), fstype, set(options.split(","))))
    return mounts


def _inside(mount_root: str, mount_point: Path, path: str) -> Path | None:
    """The directory of cgroup `path` under a mount of the hierarchy at `mount_root`; None if not visible."""
    rel = os.path.relpath(path, mount_root)
    return None if rel.startswith("..") else mount_point / rel


def find_memory_controller() -> MemoryController:
    """This process's memory cgroup, v2 where memory is delegated to children, else v1; or CgroupUnavailable."""
    try:
        own, mounts = _own_paths(), _mounts()
    except OSError as e:
        raise CgroupUnavailable(f"cannot read this process's cgroups: {e}") from None
    problems = []
    for root, point, fstype, options in mounts:
        if fstype == "cgroup2" and "" in own:
            where = _inside(root, point, own[""])
            if where is None or not where.is_dir():
                continue
            delegated = (where / "cgroup.subtree_control").read_text().split()
            if "memory" in delegated:
                return MemoryController(2, where)
            problems.append(f"cgroup v2 at {where} does not delegate the memory controller to child cgroups "
                            f"(edgeoss does not change its parent's cgroup.subtree_control)")
        elif fstype == "cgroup" and "memory" in options and "memory" in own:
            where = _inside(root, point, own["memory"])
            if where is not None and where.is_dir():
                return MemoryController(1, where)
    raise CgroupUnavailable("; ".join(problems) or "no memory cgroup controller is mounted for this process")


def own_peak_file() -> Path | None:
    """The peak-charge file of the memory cgroup this process runs in (a leaf edgeoss made, say), or None."""
    try:
        own, mounts = _own_paths(), _mounts()
    except OSError:
        return None
    for root, point, fstype, options in mounts:
        if fstype == "cgroup2" and "" in own:
            where = _inside(root, point, own[""])
            if where is not None and (where / "memory.peak").is_file():
                return where / "memory.peak"
        elif fstype == "cgroup" and "memory" in options and "memory" in own:
            where = _inside(root, point, own["memory"])
            if where is not None and (where / "memory.max_usage_in_bytes").is_file():
                return where / "memory.max_usage_in_bytes"
    return None


class PeakWindow:
    """The peak charge of this process's own memory cgroup, restartable: to measure a run's peak after its load
    (whose page-cache traffic, e.g. llama.cpp's MAP_POPULATE of the whole file, would otherwise set the peak).
    v1 resets memory.max_usage_in_bytes for everyone; v2 (Linux 6.12+) restarts memory.peak for this open file."""

    def __init__(self, path: Path):
        self.path = path
        self._fd = os.open(path, os.O_RDWR)

    @classmethod
    def of_this_process(cls) -> "PeakWindow | None":
        path = own_peak_file()
        try:
            return cls(path) if path is not None else None
        except OSError:
            return None

    def read(self) -> int:
        return int(os.pread(self._fd, 64, 0).split()[0])

    def restart(self) -> int:
        """The peak so far; then the window starts again at the current charge."""
        before = self.read()
        os.write(self._fd, b"0")
        return before

    def close(self) -> None:
        os.close(self._fd)


def _read_int(path: Path) -> int:
    text = path.read_text().strip()
    return 1 << 63 if text == "max" else int(text)


def read_keyed(path: Path) -> dict[str, int]:
    """A flat keyed file ('key value' lines: memory.stat, memory.events, memory.oom_control) as a dict."""
    pairs = (line.split() for line in path.read_text().splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].lstrip("-").isdigit()}


class MemoryCgroup:
    """A fresh child memory cgroup with a limit; `remove()` kills what is left in it and deletes it.

        with MemoryCgroup(4 << 30) as group:
            group.add(pid)
            ...
            group.peak_bytes(), group.oom_kills()
    """

    def __init__(self, limit_bytes: int, controller: MemoryController | None = None):
        self.controller = controller or find_memory_controller()
        self.requested_limit = int(limit_bytes)
        self.path: Path | None = None

    # --- life cycle -------------------------------------------------------------------------------------
    def create(self) -> "MemoryCgroup":
        parent = self.controller.own_dir
        while True:
            path = parent / f"edgeoss-{os.getpid()}-{next(_names)}"
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
            except OSError as e:
                raise CgroupUnavailable(f"cannot create a memory cgroup under {parent}: {e.strerror} "
                                        f"(edgeoss needs root and a writable cgroup filesystem)") from None
        self.path = path
        try:
            self._set_limit()
            self._check_counters()
        except BaseException:
            self.remove()
            raise
        return self

    def _set_limit(self) -> None:
        try:
            self._write(self.controller.limit_file, str(self.requested_limit))
            if (self.path / self.controller.swap_limit_file).exists():
                self._write(self.controller.swap_limit_file,
                            "0" if self.controller.version == 2 else str(self.requested_limit))
        except OSError as e:
            raise CgroupUnavailable(f"cannot set a memory limit in {self.path}: {e.strerror}") from None

    def _check_counters(self) -> None:
        for name in (self.controller.peak_file, self.controller.events_file):
            if not (self.path / name).exists():
                raise CgroupUnavailable(f"{self.path} has no {name} (edgeoss needs Linux 5.19+ for cgroup v2, "
                                        f"4.13+ for v1)")
        if "oom_kill" not in read_keyed(self.path / self.controller.events_file):
            raise CgroupUnavailable(f"{self.controller.events_file} has no oom_kill counter (needs Linux 4.13+)")

    def _write(self, name: str, value: str) -> None:
        with open(self.path / name, "w") as f:
            f.write(value)

    def __enter__(self) -> "MemoryCgroup":
        return self.create()

    def __exit__(self, *exc) -> None:
        self.remove(raise_errors=exc[0] is None)

    def add(self, pid: int) -> None:
        """Move a process into the cgroup; what it allocates from then on is charged here."""
        try:
            self._write("cgroup.procs", str(pid))
        except OSError as e:
            raise CgroupUnavailable(f"cannot move process {pid} into {self.path}: {e.strerror}") from None

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def kill_all(self, wait_s: float = 10.0) -> None:
        """SIGKILL every process in the cgroup and wait (up to wait_s) until none is left."""
        deadline = time.monotonic() + wait_s
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def remove(self, raise_errors: bool = True, wait_s: float = 10.0) -> None:
        """Kill what is left, then rmdir (retrying while exiting processes still pin it)."""
        if self.path is None:
            return
        self.kill_all(wait_s)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno == errno.EBUSY and time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                if raise_errors:
                    raise CgroupUnavailable(f"cannot remove cgroup {self.path}: {e.strerror}") from None
                return
        self.path = None

    # --- counters ---------------------------------------------------------------------------------------
    def limit_bytes(self) -> int:
        """The limit as the kernel applies it (v1 rounds down to whole pages)."""
        return _read_int(self.path / self.controller.limit_file)

    def peak_bytes(self) -> int:
        """Highest charge since creation: anonymous + page cache + kernel memory of the processes in it."""
        return _read_int(self.path / self.controller.peak_file)

    def oom_kills(self) -> int:
        """Processes in this cgroup killed by the OOM killer."""
        return read_keyed(self.path / self.controller.events_file)["oom_kill"]

    def failcnt(self) -> int | None:
        """v1: times a charge hit the limit (stays 0 on some kernels, see memlimit's notes); v2: 'max' events."""
        if self.controller.version == 2:
            return read_keyed(self.path / "memory.events").get("max")
        return _read_int(self.path / "memory.failcnt")

    def stat(self) -> dict[str, int]:
        return read_keyed(self.path / "memory.stat")

    def page_cache_bytes(self) -> int:
        """File-backed (page cache) bytes charged to the cgroup now."""
        stat = self.stat()
        return stat["file"] if self.controller.version == 2 else stat["cache"]

    def major_faults(self) -> int:
        """Major page faults of all processes that ran in the cgroup."""
        return self.stat()["pgmajfault"]


def cgroups_available() -> tuple[bool, str]:
    """(True, 'cgroup v1 memory controller at DIR') if a limited child cgroup can be made here, else (False, why).

    Tries for real: creates, limits and removes one child cgroup.
    """
    try:
        with MemoryCgroup(64 << 20) as group:
            controller = group.controller
    except CgroupUnavailable as e:
        return False, str(e)
    return True, f"cgroup v{controller.version} memory controller at {controller.own_dir}"
