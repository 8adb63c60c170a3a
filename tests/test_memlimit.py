"""Runs inside a memory cgroup: peaks, OOM kills as results, page-cache charging, cleanup on every exit path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgeoss.validate.cgroups import find_memory_controller
from edgeoss.errors import UsageError
from edgeoss.validate.memlimit import (cgroups_available, drop_page_cache, resident_bytes, run_limited,
                              run_profile_limited, run_python_limited)

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[1]

AVAILABLE, WHY = cgroups_available()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"memory cgroups unavailable: {WHY}")


def leftover_cgroups(pid: int = os.getpid()) -> list[Path]:
    return sorted(find_memory_controller().own_dir.glob(f"edgeoss-{pid}-*"))


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def read_mapped(path: Path, passes: int = 1, allocate_mib: int = 0) -> list[str]:
    """A child that allocates (and touches) some anonymous memory, then reads a file through mmap."""
    return python(f"""
        import mmap
        hold = bytearray({allocate_mib} * 2**20)
        hold[::4096] = b"x" * len(hold[::4096])
        with open({str(path)!r}, "rb") as f:
            view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        total = 0
        for _ in range({passes}):
            total += sum(view[i] for i in range(0, len(view), 4096))
        print(total)
    """)


def _data_file(folder: Path, mib: int) -> Path:
    path = folder / f"data{mib}.bin"
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(b"\x01" * MiB)
    if drop_page_cache([path]) > 0:
        pytest.skip(f"{folder} cannot be evicted from the page cache (a RAM file system?)")
    return path


@pytest.fixture(scope="module")
def file100(tmp_path_factory) -> Path:
    return _data_file(tmp_path_factory.mktemp("memlimit"), 100)


@pytest.fixture(scope="module")
def file200(tmp_path_factory) -> Path:
    return _data_file(tmp_path_factory.mktemp("memlimit"), 200)


def test_small_process_fits_and_page_cache_counts(file100):
    run = run_limited(read_mapped(file100, allocate_mib=50), 300 * MiB, cold=[file100])
    assert run.ok and not run.killed and run.cgroup_version in (1, 2)
    assert run.stdout.strip() == str(100 * 256)  # one byte of value 1 per page
    assert run.limit_bytes == 300 * MiB
    assert run.cold_resident_bytes == 0
    # 50 MiB anonymous + the 100 MiB file's page cache, both charged, within the limit
    assert 150 * MiB <= run.peak_bytes <= run.limit_bytes
    assert run.page_cache_bytes >= 100 * MiB
    assert 100 * MiB <= run.read_bytes < 130 * MiB  # read once: nothing was evicted
    assert leftover_cgroups() == []


def test_too_small_limit_is_a_reported_kill():
    run = run_limited(python("""
        b = bytearray(400 * 2**20)
        b[::4096] = b"x" * len(b[::4096])
        print("survived")
    """), 100 * MiB)
    assert run.killed and run.oom_kills >= 1 and not run.ok
    assert run.returncode == -signal.SIGKILL and not run.timed_out
    assert "survived" not in run.stdout
    assert run.peak_bytes <= run.limit_bytes
    assert leftover_cgroups() == []


def test_page_cache_is_charged_and_evicted_pages_are_read_again(file200):
    """A file twice the limit, read twice through mmap: page cache is reclaimed, so the run completes within
    the limit but every pass reads the file from disk again. With room for the file, the second pass is free."""
    tight = run_limited(read_mapped(file200, passes=2), 100 * MiB, cold=[file200])
    assert tight.ok, tight.stderr
    assert tight.stdout.strip() == str(2 * 200 * 256)
    assert tight.peak_bytes <= tight.limit_bytes
    assert tight.read_bytes >= 1.8 * 200 * MiB  # both passes came from disk

    roomy = run_limited(read_mapped(file200, passes=2), 400 * MiB, cold=[file200])
    assert roomy.ok
    assert 200 * MiB <= roomy.peak_bytes <= roomy.limit_bytes
    assert roomy.read_bytes < 1.3 * 200 * MiB  # the second pass hit the page cache
    print(f"\n200 MiB file read twice via mmap: limit 100 MiB -> peak {tight.peak_bytes / MiB:.0f} MiB, "
          f"read {tight.read_bytes / MiB:.0f} MiB, {tight.major_faults} major faults; limit 400 MiB -> peak "
          f"{roomy.peak_bytes / MiB:.0f} MiB, read {roomy.read_bytes / MiB:.0f} MiB, {roomy.major_faults} major")


def test_a_file_cached_by_someone_else_is_not_charged(file100):
    """Page cache is charged to whoever brought it in: why limited runs evict their files first (`cold`)."""
    with open(file100, "rb") as f:
        while f.read(8 * MiB):
            pass
    assert resident_bytes(file100) >= 99 * MiB
    warm = run_limited(read_mapped(file100), 300 * MiB)
    assert warm.ok and warm.read_bytes < 5 * MiB and warm.peak_bytes < 50 * MiB
    assert drop_page_cache([file100]) == 0 and resident_bytes(file100) == 0


def test_timeout_kills_the_run():
    run = run_limited(["sleep", "30"], 64 * MiB, timeout=0.5)
    assert run.timed_out and not run.killed and run.returncode == -signal.SIGKILL
    assert run.wall_s < 10
    assert leftover_cgroups() == []


def test_what_the_command_leaves_running_is_killed():
    start = time.monotonic()
    run = run_limited(["sh", "-c", "sleep 60 & echo started"], 64 * MiB)
    assert run.ok and run.stdout.strip() == "started"
    assert time.monotonic() - start < 15
    assert leftover_cgroups() == []


def test_unknown_command_is_a_usage_error():
    with pytest.raises(UsageError, match="no-such-command-xyz: command not found"):
        run_limited(["no-such-command-xyz"], 64 * MiB)
    with pytest.raises(UsageError, match="no such file or folder"):
        run_limited(["true"], 64 * MiB, cold=["/no/such/model.gguf"])
    assert leftover_cgroups() == []


def test_python_function_result_comes_back():
    run = run_python_limited("edgeoss.units:parse_size", {"text": "6GiB"}, 200 * MiB)
    assert run.ok and run.result == 6 << 30
    assert 0 < run.peak_bytes <= run.limit_bytes


def test_python_function_killed_or_failing_gives_no_result():
    killed = run_python_limited("numpy:ones", json.dumps({"shape": 50_000_000}), 100 * MiB)
    assert killed.killed and killed.result is None
    failed = run_python_limited("edgeoss.units:parse_size", {"text": "lots"}, 200 * MiB)
    assert failed.returncode == 1 and failed.result is None and not failed.killed
    assert "UsageError" in failed.stderr
    assert leftover_cgroups() == []


@pytest.mark.parametrize("signum, returncode", [(signal.SIGINT, -signal.SIGINT), (signal.SIGTERM, 143)])
def test_interrupting_edgeoss_removes_the_cgroup(signum, returncode):
    runner = subprocess.Popen(python("""
        import signal
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when pytest runs as a
        from edgeoss.validate.memlimit import run_limited                  # background job (which ignores SIGINT)
        run_limited(["sleep", "60"], 64 * 2**20)
    """), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (groups := leftover_cgroups(runner.pid)) or not (groups[0] / "cgroup.procs").read_text().split():
        assert time.monotonic() < deadline and runner.poll() is None, "the limited child never started"
        time.sleep(0.02)
    sleeper = int((groups[0] / "cgroup.procs").read_text().split()[0])
    runner.send_signal(signum)
    _, stderr = runner.communicate(timeout=90)  # cleanup may wait out a busy cgroup on a loaded machine
    assert runner.returncode == returncode, stderr
    assert not groups[0].exists()
    with pytest.raises(ProcessLookupError):
        os.kill(sleeper, 0)


def test_without_root_the_error_is_one_line():
    proc = subprocess.run(python("""
        import os
        from edgeoss.validate.memlimit import cgroups_available, run_limited
        from edgeoss.errors import EdgeossError
        os.setgid(65534)
        os.setuid(65534)  # everything is imported: from here on, an ordinary user
        print(cgroups_available())
        try:
            run_limited(["true"], 2**26)
        except EdgeossError as e:
            print(type(e).__name__, "|", e)
    """), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    available, error = proc.stdout.strip().splitlines()
    assert available.startswith("(False, ") and "root" in available
    assert error.startswith("CgroupUnavailable | cannot create a memory cgroup") and "\n" not in error


# --- engines inside a limit ----------------------------------------------------------------------------------

def engine_available(module: str) -> bool:
    return (REPO / "runtimes" / f"{module}.py").exists()


@pytest.mark.skipif(not engine_available("reference"), reason="edgeoss/runtimes/reference.py not written yet")
def test_reference_engine_runs_inside_a_limit(tiny_hf):
    limit = 1 << 30
    run = run_profile_limited("reference", tiny_hf, limit, options={"memory_budget": limit}, prompt_tokens=16,
                              gen_tokens=4, runs=1, warmup=False, timeout=300)
    assert run.ok, run.stderr[-2000:]
    assert 0 < run.peak_bytes <= run.limit_bytes
    assert run.result["engine"] == "reference" and run.result["decode_tok_s"]["median"] > 0
    assert run.read_bytes > 0  # started cold: the checkpoint came from disk


@pytest.mark.skipif(not engine_available("llamacpp"), reason="edgeoss/runtimes/llamacpp.py not written yet")
def test_llamacpp_runs_inside_a_limit(tiny_hf, tmp_path):
    pytest.importorskip("llama_cpp")
    from edgeoss.exporters.gguf import export_gguf

    gguf = export_gguf(tiny_hf, tmp_path / "tiny.gguf", progress=False)[0]
    limit = 1 << 30
    run = run_profile_limited("llamacpp", gguf, limit, prompt_tokens=16, gen_tokens=4, runs=1, warmup=False,
                              timeout=300)
    assert run.ok, run.stderr[-2000:]
    assert 0 < run.peak_bytes <= run.limit_bytes
    assert run.peak_bytes >= gguf.stat().st_size  # llama.cpp maps and prefetches the whole file: charged here
    assert run.result["engine"] == "llamacpp" and run.result["decode_tok_s"]["median"] > 0
