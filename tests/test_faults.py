"""Faults while writing (issue 18): a full disk and SIGINT leave nothing at the output path and no partial file
beside it, with one line (exit 2) or "interrupted" (exit 130); kill -9 during packaging leaves no bundle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_main as _run

TMPFS_BYTES = 20 << 20  # smaller than every artifact of the tiny model (~57 MB)


@pytest.fixture
def full_disk(tmp_path):
    """A 20 MiB tmpfs: every tiny-model output overflows it. Skipped where tmpfs cannot be mounted (not root,
    no mount namespace)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("command", [
    ["export", "gguf", "{ckpt}", "-o", "{out}/model.gguf"],
    ["export", "onnx", "{ckpt}", "-o", "{out}/onnx"],
    ["convert", "{ckpt}", "{out}/original", "--layout", "original"],
    ["synth", "{out}/synth"],
    ["package", "android", "{ckpt}", "--device", "pixel-9-pro", "-o", "{out}/bundle"],
    ["package", "windows", "{ckpt}", "--context", "64", "-o", "{out}/bundle"],
])
def test_a_full_disk_is_one_line_and_leaves_nothing(full_disk, tiny_hf, command):
    args = [a.format(ckpt=tiny_hf, out=full_disk) for a in command]
    code, stderr = _run(args)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in stderr, stderr
    assert "No space left on device" in lines[-1] and str(full_disk) in lines[-1], stderr
    assert list(full_disk.iterdir()) == []  # neither the output nor a partial file


@pytest.mark.parametrize("command", [
    ["plan", "--preset", "20b", "--device", "pixel-9-pro", "-o", "{out}/plan.json"],
    ["profile", "{gguf}", "--engine", "llamacpp", "--prompt-tokens", "8", "--gen-tokens", "2", "--runs", "1",
     "-o", "{out}/profile.json"],
])
def test_small_outputs_on_a_disk_already_full(full_disk, gguf_file, command):
    """Plan and profile outputs are small: the disk is filled first, then they must fail as cleanly."""
    filler = full_disk / "filler"
    with open(filler, "wb") as f, pytest.raises(OSError):
        while True:
            f.write(b"\0" * (1 << 20))
            f.flush()
    args = [a.format(gguf=gguf_file, out=full_disk) for a in command]
    code, stderr = _run(args)
    assert code == 2 and "No space left on device" in stderr and "Traceback" not in stderr, stderr
    assert [p.name for p in full_disk.iterdir()] == ["filler"]


@pytest.fixture(scope="module")
def gguf_file(tiny_hf, tmp_path_factory) -> Path:
    from edgeoss.exporters.gguf import export_gguf

    return export_gguf(tiny_hf, tmp_path_factory.mktemp("faults") / "tiny.gguf", progress=False)[0]


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgeoss", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_partial(proc: subprocess.Popen, folder: Path) -> bool:
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(".partial-" in p.name for p in folder.iterdir()):
            return True
        time.sleep(0.002)
    return False


def _default_sigint() -> None:
    """In the child: SIGINT as a terminal delivers it (a shell's background job, CI under `nohup ... &`, starts
    everything with SIGINT ignored, which Python then keeps ignoring)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_during_an_export_exits_130_and_leaves_nothing(tiny_hf, tmp_path):
    out = tmp_path / "model.gguf"
    proc = subprocess.Popen([sys.executable, "-m", "edgeoss", "export", "gguf", str(tiny_hf), "-o", str(out),
                             "--dense-type", "f32"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    assert _wait_for_partial(proc, tmp_path), "the export never started writing"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert list(tmp_path.iterdir()) == []


def test_kill_9_during_packaging_leaves_no_bundle_and_the_next_run_works(tiny_hf, tmp_path):
    out = tmp_path / "bundle"
    proc = _start(["package", "android", tiny_hf, "--device", "pixel-9-pro", "-o", out])
    assert _wait_for_partial(proc, tmp_path), "packaging never started writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    code, stderr = _run(["package", "android", str(tiny_hf), "--device", "pixel-9-pro", "-o", str(out)])
    assert code == 0, stderr
    assert _run(["package", "verify", str(out)])[0] == 0
