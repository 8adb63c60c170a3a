"""Malformed inputs and faults (issue 18): every case is one clear line on stderr, exit 2, no traceback, and
nothing at the output path. The CLI runs in-process through `edgeoss.cli.main`, the function the console script
calls, so its top-level rule is what is tested.

Each case is (name, how to break a copy of a good input, the command, what the error line must say). Inputs
are copied from session fixtures (the tiny checkpoint, its GGUF and ONNX exports) into the test's tmp folder.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Callable

import pytest

from edgeoss.cli import main


@pytest.fixture(scope="module")
def good(tiny_hf, tmp_path_factory) -> dict[str, Path]:
    """The good inputs every case breaks a copy of."""
    from edgeoss.exporters.gguf import export_gguf
    from edgeoss.exporters.onnx import export_onnx

    folder = tmp_path_factory.mktemp("good")
    gguf = export_gguf(tiny_hf, folder / "tiny.gguf", progress=False)[0]
    onnx = export_onnx(tiny_hf, folder / "tiny-onnx", max_length=64, progress=False).path
    plan = folder / "plan20b.json"
    assert _run(["plan", "--preset", "20b", "--device", "pixel-9-pro", "-o", str(plan)])[0] == 0
    return {"ckpt": tiny_hf, "gguf": gguf, "onnx": onnx, "plan20b": plan}


def _run(argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of `edgeoss ARGV` run in this process."""
    import contextlib
    import io

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, stderr.getvalue()


def _copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy(src, dst)
    return dst


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _truncate(path: Path, fraction: float = 0.5) -> None:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * fraction))


def _shard(folder: Path) -> Path:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    return folder / sorted(set(index["weight_map"].values()))[0]


def _set_header(path: Path, change: Callable[[dict], None]) -> None:
    """Rewrite a safetensors file's JSON header (the data stays where it was: offsets are relative to it)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def _metadata_not_strings(header: dict) -> None:
    header["__metadata__"] = {"format": 1}


def _offsets_past_the_end(header: dict) -> None:
    name = next(k for k in header if k != "__metadata__")
    begin, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [begin, end + 10**9]


def _dtype_wrong(header: dict) -> None:
    name = next(k for k in header if k != "__metadata__" and header[k]["dtype"] == "BF16")
    header[name]["dtype"] = "F16"


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


# ---- the corpus ------------------------------------------------------------------------------------------------
# name: (input, break(copy), argv(copy, out), expected text in the error line)
CASES: dict[str, tuple[str, Callable[[Path], None], Callable[[Path, Path], list[str]], str]] = {
    # checkpoint folders
    "config model_type llama": ("ckpt", lambda c: _edit_json(c / "config.json", lambda d: d.update(model_type="llama")),
                                lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "model_type 'llama'"),
    "config quant_method gptq": ("ckpt", lambda c: _edit_json(
        c / "config.json", lambda d: d["quantization_config"].update(quant_method="gptq")),
        lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "quant_method 'gptq'"),
    "config not JSON": ("ckpt", lambda c: _write(c / "config.json", b"{not json"),
                        lambda c, o: ["export", "onnx", str(c), "-o", str(o)], "not valid JSON"),
    "config missing": ("ckpt", lambda c: (c / "config.json").unlink(),
                       lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "config.json"),
    "config hidden_size a string": ("ckpt", lambda c: _edit_json(c / "config.json",
                                                                 lambda d: d.update(hidden_size="128")),
                                    lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "hidden_size"),
    "index not JSON": ("ckpt", lambda c: _write(c / "model.safetensors.index.json", b"[1, 2"),
                       lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "index"),
    "index names a missing shard": ("ckpt", lambda c: _shard(c).unlink(),
                                    lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "safetensors"),
    "shard truncated": ("ckpt", lambda c: _truncate(_shard(c)),
                        lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "safetensors"),
    "shard header length huge": ("ckpt", lambda c: _write(_shard(c), struct.pack("<Q", 1 << 60) + b"{}"),
                                 lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "safetensors"),
    "shard header not JSON": ("ckpt", lambda c: _write(_shard(c), struct.pack("<Q", 8) + b"{{{{{{{{"),
                              lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "safetensors"),
    "shard __metadata__ not strings": ("ckpt", lambda c: _set_header(_shard(c), _metadata_not_strings),
                                       lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "__metadata__"),
    "shard data offsets past the end": ("ckpt", lambda c: _set_header(_shard(c), _offsets_past_the_end),
                                        lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "safetensors"),
    "shard dtype not as published": ("ckpt", lambda c: _set_header(_shard(c), _dtype_wrong),
                                     lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "F16"),
    "output parent is a file": ("ckpt", lambda c: _write(c.parent / "afile", b"x"),
                                lambda c, o: ["export", "gguf", str(c), "-o", str(c.parent / "afile" / "x.gguf")],
                                "is a file, not a folder"),
    "onnx output parent is a file": ("ckpt", lambda c: _write(c.parent / "afile", b"x"),
                                     lambda c, o: ["export", "onnx", str(c), "-o", str(c.parent / "afile" / "x")],
                                     "is a file, not a folder"),
    # plan files given to an exporter
    "plan for another model": ("ckpt", lambda c: None,
                               lambda c, o: ["export", "gguf", str(c), "-o", str(o), "--plan", "{plan20b}"],
                               "made for gpt-oss-20b"),
    "plan version 99": ("plan20b", lambda p: _edit_json(p, lambda d: d.update(version=99)),
                        lambda p, o: ["export", "gguf", "{ckpt}", "-o", str(o), "--plan", str(p)], "version 99"),
    "plan of another program": ("plan20b", lambda p: _edit_json(p, lambda d: d.update(format="llama-plan")),
                                lambda p, o: ["export", "gguf", "{ckpt}", "-o", str(o), "--plan", str(p)],
                                "not an edgeoss plan"),
    "plan not JSON": ("plan20b", lambda p: _write(p, b"\x00\x01"),
                      lambda p, o: ["export", "gguf", "{ckpt}", "-o", str(o), "--plan", str(p)], "not valid JSON"),
    # GGUF files
    "gguf truncated, package": ("gguf", _truncate,
                                lambda g, o: ["package", "android", str(g), "--device", "pixel-9-pro", "-o", str(o)],
                                "truncated"),
    "gguf truncated, run": ("gguf", _truncate,
                            lambda g, o: ["run", str(g), "--engine", "llamacpp", "--prompt", "hi"], "truncated"),
    "gguf header garbage, package": ("gguf", lambda g: _write(g, b"GGUF" + b"\xff" * 64),
                                     lambda g, o: ["package", "android", str(g), "--device", "pixel-9-pro", "-o",
                                                   str(o)], "GGUF"),
    "gguf not a gguf, run": ("gguf", lambda g: _write(g, b"hello"),
                             lambda g, o: ["run", str(g), "--engine", "llamacpp", "--prompt", "hi"], "GGUF"),
    # ONNX folders
    "onnx data truncated, package": ("onnx", lambda f: _truncate(f / "model.onnx.data"),
                                     lambda f, o: ["package", "windows", str(f), "-o", str(o)], "truncated"),
    "onnx data truncated, run": ("onnx", lambda f: _truncate(f / "model.onnx.data"),
                                 lambda f, o: ["run", str(f), "--engine", "onnxruntime", "--prompt", "hi"],
                                 "truncated"),
    "onnx data missing, package": ("onnx", lambda f: (f / "model.onnx.data").unlink(),
                                   lambda f, o: ["package", "windows", str(f), "-o", str(o)], "missing"),
    "onnx model garbage, run": ("onnx", lambda f: _write(f / "model.onnx", b"\x08\x07garbage" * 10),
                                lambda f, o: ["run", str(f), "--engine", "ortgenai", "--prompt", "hi"],
                                "not a readable ONNX model"),
    "onnx model truncated, package": ("onnx", lambda f: _truncate(f / "model.onnx", 0.3),
                                      lambda f, o: ["package", "windows", str(f), "-o", str(o)], "model.onnx"),
    "genai config not JSON, package": ("onnx", lambda f: _write(f / "genai_config.json", b"{"),
                                       lambda f, o: ["package", "windows", str(f), "-o", str(o)], "not valid JSON"),
    "genai config not JSON, run": ("onnx", lambda f: _write(f / "genai_config.json", b"{"),
                                   lambda f, o: ["run", str(f), "--engine", "ortgenai", "--prompt", "hi"],
                                   "not valid JSON"),
    "genai config without a decoder": ("onnx", lambda f: _write(f / "genai_config.json", b"{\"model\": {}}"),
                                       lambda f, o: ["package", "windows", str(f), "-o", str(o)],
                                       "not an onnxruntime-genai config"),
    "edgeoss.json missing": ("onnx", lambda f: (f / "edgeoss.json").unlink(),
                             lambda f, o: ["run", str(f), "--engine", "onnxruntime", "--prompt", "hi"],
                             "not an ONNX export from edgeoss"),
    # device profiles and options
    "profile not TOML": ("plan20b", lambda p: _write(p.with_suffix(".toml"), b"ram = [\n"),
                         lambda p, o: ["plan", "--preset", "20b", "--device", str(p.with_suffix(".toml"))],
                         "not valid TOML"),
    "unknown device": ("plan20b", lambda p: None,
                       lambda p, o: ["plan", "--preset", "20b", "--device", "pixel-99"], "unknown device"),
    "memory budget not a size": ("gguf", lambda g: None,
                                 lambda g, o: ["run", str(g), "--engine", "llamacpp", "--memory-budget", "lots",
                                               "--prompt", "hi"], "lots"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_input_is_one_line_exit_2_and_writes_nothing(name, good, tmp_path):
    source, damage, argv, expected = CASES[name]
    copy = _copy(good[source], tmp_path / good[source].name)
    damage(copy)
    out = tmp_path / "out"
    args = [a.format(**{k: str(v) for k, v in good.items()}) for a in argv(copy, out)]
    code, stderr = _run(args)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, f"exit {code}: {stderr}"
    assert 1 <= len(lines) <= 2 and "Traceback" not in stderr, stderr
    assert expected in " ".join(stderr.split()), stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_an_unforeseen_error_is_one_line_with_a_saved_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("edgeoss.planner.plan.make_plan", broken)
    code, stderr = _run(["plan", "--preset", "tiny", "--device", "pixel-9-pro"])
    assert code == 1 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert "internal error: ZeroDivisionError: a bug" in stderr
    saved = Path(stderr.split("traceback saved to ")[1].rstrip(")\n"))
    assert saved.is_file() and "ZeroDivisionError" in saved.read_text()
