"""Shared fixtures: synthesized checkpoints (written once per test session) and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeoss.formats.spec import preset
from edgeoss.formats.synth import synthesize

REPO = Path(__file__).resolve().parents[1]


def _synth(factory: pytest.TempPathFactory, name: str, layout: str) -> Path:
    out = factory.mktemp(f"{name}_{layout}") / "ckpt"
    return synthesize(out, preset(name), layout, seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory) -> Path:
    return _synth(tmp_path_factory, "tiny", "hf")


@pytest.fixture(scope="session")
def tiny_original(tmp_path_factory) -> Path:
    return _synth(tmp_path_factory, "tiny", "original")


@pytest.fixture(scope="session")
def odd_hf(tmp_path_factory) -> Path:
    return _synth(tmp_path_factory, "odd", "hf")


@pytest.fixture(scope="session")
def odd_original(tmp_path_factory) -> Path:
    return _synth(tmp_path_factory, "odd", "original")


def run_cli(*args: str, check: bool = False, env: dict | None = None, timeout: float = 600) \
        -> subprocess.CompletedProcess:
    """Run `edgeoss ARGS...` as a user would, in a fresh process."""
    proc = subprocess.run([sys.executable, "-m", "edgeoss", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "160", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"edgeoss {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    return run_cli


def rewrite_header(path: Path, edit) -> None:
    """Rewrite a safetensors file's JSON header with edit(header), keeping the data section as it is (offsets are
    relative to it)."""
    import json
    import struct

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def run_main(argv: list[str], with_stdout: bool = False) -> tuple:
    """(exit code, stderr) of `edgeoss ARGV` run in this process through `edgeoss.cli.main`, the function the
    console script calls (its top-level error rule included); with_stdout: (exit code, stdout, stderr)."""
    import contextlib
    import io

    from edgeoss.cli import main

    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        try:
            main([str(a) for a in argv])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return (code, stdout.getvalue(), stderr.getvalue()) if with_stdout else (code, stderr.getvalue())


@pytest.fixture(scope="session")
def trained():
    """trained(name) -> {"hf": folder, "original": folder}: the preset trained on real text (edgeoss.validate.trained;
    trained once per machine, kept in the edgeoss cache)."""
    pytest.importorskip("torch")
    from edgeoss.validate.trained import trained_checkpoint

    return lambda name: trained_checkpoint(preset(name))
