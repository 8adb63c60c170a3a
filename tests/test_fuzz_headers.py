"""Random damage to safetensors and GGUF headers (issue 18): whatever the bytes, the command either works or says
what is wrong in one line with exit 2; never a traceback, an internal error or a crash of the process."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_main

# (region, offset within it, new byte): regions are the header's start, its end, and anywhere in it
MUTATIONS = st.lists(st.tuples(st.sampled_from(["start", "end", "any"]), st.integers(0, 1 << 30), st.integers(0, 255)),
                     min_size=1, max_size=6)
FUZZ = settings(max_examples=int(os.environ.get("EDGEOSS_FUZZ_EXAMPLES", 30)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _mutate(path: Path, header_end: int, mutations) -> None:
    span = {"start": min(header_end, 4096), "end": min(header_end, 65536), "any": header_end}
    with open(path, "r+b") as f:
        for region, at, value in mutations:
            offset = at % span[region]
            if region == "end":
                offset = header_end - 1 - offset
            f.seek(offset)
            f.write(bytes([value]))


def _check(code: int, stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code in (0, 2), stderr
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    if code == 2:
        assert lines and lines[-1].startswith("error: ") and len(lines) <= 2, stderr


@pytest.fixture(scope="module")
def gguf_file(tiny_hf, tmp_path_factory) -> Path:
    from edgeoss.exporters.gguf import export_gguf

    return export_gguf(tiny_hf, tmp_path_factory.mktemp("fuzz") / "tiny.gguf", progress=False)[0]


@FUZZ
@given(mutations=MUTATIONS)
def test_a_damaged_safetensors_header_is_refused_or_read(tiny_hf, tmp_path_factory, mutations):
    work = tmp_path_factory.mktemp("st")
    folder = work / "ckpt"
    shutil.copytree(tiny_hf, folder, copy_function=os.link)  # hard links: only the damaged shard is copied
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = folder / sorted(set(index["weight_map"].values()))[0]
    shard.unlink()
    shutil.copy(tiny_hf / shard.name, shard)
    with open(shard, "rb") as f:
        header_end = 8 + struct.unpack("<Q", f.read(8))[0]
    _mutate(shard, header_end, mutations)
    _check(*run_main(["inspect", str(folder)]))
    shutil.rmtree(work)


@FUZZ
@given(mutations=MUTATIONS)
def test_a_damaged_gguf_header_is_refused_or_packaged(gguf_file, tmp_path_factory, mutations):
    from edgeoss.formats.ggml_gguf import read_metadata

    header_end = min(offset for offset, _ in read_metadata(gguf_file).tensor_bytes.values())
    work = tmp_path_factory.mktemp("gguf")
    damaged = work / "tiny.gguf"
    shutil.copy(gguf_file, damaged)
    _mutate(damaged, header_end, mutations)
    code, stderr = run_main(["package", "android", str(damaged), "--device", "pixel-9-pro", "-o", str(work / "b")])
    _check(code, stderr)
    assert (work / "b").exists() == (code == 0)
    shutil.rmtree(work)
