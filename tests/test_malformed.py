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

from conftest import rewrite_header
from conftest import run_main as _run

REPO = Path(__file__).resolve().parents[1]


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
    bundle = folder / "bundle"
    assert _run(["package", "android", str(gguf), "--device", "pixel-9-pro", "--context", "256", "-o",
                 str(bundle)])[0] == 0
    profile = folder / "device.toml"
    profile.write_text((REPO / "profiles" / "pixel-9-pro.toml").read_text())
    return {"ckpt": tiny_hf, "gguf": gguf, "onnx": onnx, "plan20b": plan, "bundle": bundle, "profile": profile}


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


def _flip_byte(path: Path, at: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _toml_line(path: Path, key: str, value: str | None) -> None:
    """Set (or, with None, remove) `key = ...` in a profile TOML; a key it lacks is appended."""
    lines = [line for line in path.read_text().splitlines() if not line.startswith(f"{key} =")]
    path.write_text("\n".join(lines + ([f"{key} = {value}"] if value is not None else [])) + "\n")


def _plan_with(profile: Path) -> list[str]:
    return ["plan", "--preset", "20b", "--device", str(profile)]


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


def _poison(folder: Path, name: str, bits: int, index: int = 37) -> None:
    """Write one BF16 value (its bits) into a checkpoint tensor, in place."""
    from edgeoss.formats.checkpoint import Checkpoint

    with Checkpoint.open(folder) as ckpt:
        path, offset, _ = ckpt.byte_range(name)
    with open(path, "r+b") as f:
        f.seek(offset + 2 * index)
        f.write(struct.pack("<H", bits))


BF16_NAN, BF16_INF = 0x7FC0, 0x7F80


def _patch_gguf_tensor(path: Path, name: str, rename: str | None = None, ggml_type: int | None = None) -> None:
    """Edit one tensor's entry in a GGUF header in place: its name (same length) or its ggml type."""
    raw = bytearray(path.read_bytes()[:1 << 24])
    key = struct.pack("<Q", len(name)) + name.encode()
    at = raw.index(key) + len(key)
    if rename is not None:
        assert len(rename) == len(name)
        raw[at - len(name):at] = rename.encode()
    if ggml_type is not None:
        (n_dims,) = struct.unpack_from("<I", raw, at)
        struct.pack_into("<I", raw, at + 4 + 8 * n_dims, ggml_type)
    with open(path, "r+b") as f:
        f.write(raw)


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
    "shard __metadata__ not strings": ("ckpt", lambda c: rewrite_header(_shard(c), _metadata_not_strings),
                                       lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "__metadata__"),
    "shard data offsets past the end": ("ckpt", lambda c: rewrite_header(_shard(c), _offsets_past_the_end),
                                        lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "safetensors"),
    "shard dtype not as published": ("ckpt", lambda c: rewrite_header(_shard(c), _dtype_wrong),
                                     lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "F16"),
    "output parent is a file": ("ckpt", lambda c: _write(c.parent / "afile", b"x"),
                                lambda c, o: ["export", "gguf", str(c), "-o", str(c.parent / "afile" / "x.gguf")],
                                "is a file, not a folder"),
    "onnx output parent is a file": ("ckpt", lambda c: _write(c.parent / "afile", b"x"),
                                     lambda c, o: ["export", "onnx", str(c), "-o", str(c.parent / "afile" / "x")],
                                     "is a file, not a folder"),
    "NaN in an attention weight, gguf": ("ckpt", lambda c: _poison(c, "layers.1.q.weight", BF16_NAN),
                                          lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "non-finite"),
    "NaN in an attention weight, onnx": ("ckpt", lambda c: _poison(c, "layers.1.q.weight", BF16_NAN),
                                         lambda c, o: ["export", "onnx", str(c), "-o", str(o)], "non-finite"),
    "infinity in the embedding, gguf": ("ckpt", lambda c: _poison(c, "embed", BF16_INF, 1000),
                                        lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "non-finite"),
    "infinity in a norm, convert": ("ckpt", lambda c: _poison(c, "layers.0.attn_norm", BF16_INF, 3),
                                    lambda c, o: ["convert", str(c), str(o), "--layout", "original"], "non-finite"),
    "NaN in an expert bias, onnx": ("ckpt", lambda c: _poison(c, "layers.2.down.bias", BF16_NAN, 5),
                                    lambda c, o: ["export", "onnx", str(c), "-o", str(o)], "non-finite"),
    "NaN in the unembedding, gguf": ("ckpt", lambda c: _poison(c, "unembed", 0xFFC0, 77),
                                     lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "non-finite"),
    "config not a JSON object": ("ckpt", lambda c: _write(c / "config.json", b"[1, 2, 3]"),
                                 lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "JSON object"),
    "config too few experts for top-k": ("ckpt", lambda c: _edit_json(c / "config.json",
                                                                      lambda d: d.update(num_experts_per_tok=99)),
                                         lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "99"),
    "config layer_types of the wrong length": ("ckpt", lambda c: _edit_json(
        c / "config.json", lambda d: d.update(layer_types=["full_attention"])),
        lambda c, o: ["export", "onnx", str(c), "-o", str(o)], "layer_types"),
    "not a folder": ("gguf", lambda g: None, lambda g, o: ["export", "gguf", str(g), "-o", str(o)],
                     "expected a checkpoint folder"),
    "trace empty": ("plan20b", lambda p: _write(p.with_name("t.npz"), b""),
                    lambda p, o: ["plan", "--preset", "20b", "--device", "pixel-9-pro", "--trace",
                                  str(p.with_name("t.npz")), "-o", str(o)], "not a readable .npz"),
    "shard is a folder": ("ckpt", lambda c: (_shard(c).unlink(), _shard(c).mkdir()),
                          lambda c, o: ["export", "gguf", str(c), "-o", str(o)], "safetensors"),
    # options
    "split size not a size": ("ckpt", lambda c: None,
                              lambda c, o: ["export", "gguf", str(c), "-o", str(o), "--split-max-size", "big"],
                              "big"),
    "max length zero": ("ckpt", lambda c: None,
                        lambda c, o: ["export", "onnx", str(c), "-o", str(o), "--max-length", "0"], "max"),
    "context beyond the model": ("plan20b", lambda p: None,
                                 lambda p, o: ["plan", "--preset", "tiny", "--device", "pixel-9-pro", "--context",
                                               "999999999", "-o", str(o)], "--context"),
    "unknown preset": ("plan20b", lambda p: None,
                       lambda p, o: ["plan", "--preset", "7b", "--device", "pixel-9-pro", "-o", str(o)], "7b"),
    "calibration file garbage": ("plan20b", lambda p: _write(p.with_name("cal.json"), b"{\"memory_efficiency\": 7}"),
                                 lambda p, o: ["plan", "--preset", "20b", "--device", "pixel-9-pro", "--calibrate",
                                               str(p.with_name("cal.json")), "-o", str(o)], "memory_efficiency"),
    "trace not a trace": ("plan20b", lambda p: _write(p.with_name("t.npz"), b"PK\x03\x04 not a zip"),
                          lambda p, o: ["plan", "--preset", "20b", "--device", "pixel-9-pro", "--trace",
                                        str(p.with_name("t.npz")), "-o", str(o)], "t.npz"),
    "run plan not JSON": ("gguf", lambda g: _write(g.with_name("p.json"), b"{"),
                          lambda g, o: ["run", str(g), "--engine", "llamacpp", "--plan", str(g.with_name("p.json")),
                                        "--prompt", "hi"], "p.json"),
    "package for an unknown device": ("gguf", lambda g: None,
                                      lambda g, o: ["package", "android", str(g), "--device", "nokia-3310", "-o",
                                                    str(o)], "nokia-3310"),
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
    "gguf tensor missing, package": ("gguf", lambda g: _patch_gguf_tensor(g, "blk.1.attn_q.weight",
                                                                           rename="blk.1.attn_x.weight"),
                                     lambda g, o: ["package", "android", str(g), "--device", "pixel-9-pro", "-o",
                                                   str(o)], "blk.1.attn_q.weight is missing"),
    "gguf tensor missing, run": ("gguf", lambda g: _patch_gguf_tensor(g, "blk.0.ffn_down_exps.weight",
                                                                       rename="blk.0.ffn_down_exps.weighX"),
                                 lambda g, o: ["run", str(g), "--engine", "llamacpp", "--prompt", "hi"],
                                 "blk.0.ffn_down_exps.weight is missing"),
    "gguf bias stored as I32": ("gguf", lambda g: _patch_gguf_tensor(g, "blk.2.attn_k.bias", ggml_type=26),
                                lambda g, o: ["package", "android", str(g), "--device", "pixel-9-pro", "-o",
                                              str(o)], "expected one of F32"),
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
    # bundles
    "bundle file changed": ("bundle", lambda b: _flip_byte(b / "README.md"),
                            lambda b, o: ["package", "verify", str(b)], "README.md"),
    "bundle file missing": ("bundle", lambda b: (b / "README.md").unlink(),
                            lambda b, o: ["package", "verify", str(b)], "README.md"),
    "bundle file added": ("bundle", lambda b: _write(b / "extra.bin", b"x"),
                          lambda b, o: ["package", "verify", str(b)], "extra.bin"),
    "bundle manifest not JSON": ("bundle", lambda b: _write(b / "manifest.json", b"{"),
                                 lambda b, o: ["package", "verify", str(b)], "manifest.json"),
    "bundle manifest of another format": ("bundle", lambda b: _edit_json(b / "manifest.json",
                                                                         lambda d: d.update(format="zip")),
                                          lambda b, o: ["package", "verify", str(b)], "manifest.json"),
    "bundle file size wrong in manifest": ("bundle", lambda b: _edit_json(
        b / "manifest.json", lambda d: d["files"][0].update(size=d["files"][0]["size"] + 1)),
        lambda b, o: ["package", "verify", str(b)], "manifest.json says"),
    "bundle file replaced by a symlink": ("bundle", lambda b: ((b / "README.md").unlink(),
                                                              (b / "README.md").symlink_to(b / "manifest.json")),
                                          lambda b, o: ["package", "verify", str(b)], "README.md"),
    # device profiles
    "profile missing ram": ("profile", lambda p: _toml_line(p, "ram", None), lambda p, o: _plan_with(p),
                            "missing key 'ram'"),
    "profile negative bandwidth": ("profile", lambda p: _toml_line(p, "memory_bandwidth_gb_s", "-3"),
                                   lambda p, o: _plan_with(p), "memory_bandwidth_gb_s"),
    "profile budget above its RAM": ("profile", lambda p: _toml_line(p, "app_budget", '"64 GiB"'),
                                     lambda p, o: _plan_with(p), "exceeds ram"),
    "profile unknown key": ("profile", lambda p: _toml_line(p, "colour", '"red"'), lambda p, o: _plan_with(p),
                            "unknown key 'colour'"),
    "profile half a GPU": ("profile", lambda p: _toml_line(p, "gpu_memory", '"8 GiB"'), lambda p, o: _plan_with(p),
                           "a GPU needs all of"),
    "profile size in parsecs": ("profile", lambda p: _toml_line(p, "ram", '"16 parsecs"'),
                                lambda p, o: _plan_with(p), "parsecs"),
    # option values
    "option not among the choices": ("plan20b", lambda p: None, lambda p, o: [
        "plan", "--preset", "20b", "--device", "pixel-9-pro", "--kv-type", "f8"], "'f8' is not one of"),
    "required option missing": ("plan20b", lambda p: None, lambda p, o: ["plan", "--preset", "20b"],
                                "Missing option '--device'"),
    "unknown command": ("plan20b", lambda p: None, lambda p, o: ["frobnicate"], "No such command"),
    "unknown option": ("gguf", lambda g: None, lambda g, o: ["run", str(g), "--prompt", "hi", "--turbo"],
                       "No such option"),
    "integer option given text": ("gguf", lambda g: None,
                                  lambda g, o: ["run", str(g), "--prompt", "hi", "--max-new-tokens", "many"],
                                  "many"),
    "folder without a checkpoint": ("plan20b", lambda p: (p.parent / "empty").mkdir(),
                                    lambda p, o: ["inspect", str(p.parent / "empty")], "config.json"),
    "unknown engine": ("gguf", lambda g: None, lambda g, o: ["run", str(g), "--engine", "vulkan", "--prompt", "hi"],
                       "unknown engine 'vulkan'"),
    "synth of an unknown preset": ("plan20b", lambda p: None, lambda p, o: ["synth", str(o), "--preset", "7b"],
                                   "unknown preset '7b'"),
    "synth with a spec field not a number": ("plan20b", lambda p: None,
                                             lambda p, o: ["synth", str(o), "--set", "hidden_size=abc"], "hidden_size"),
    "memory limit not a size": ("gguf", lambda g: None, lambda g, o: [
        "profile", str(g), "--engine", "llamacpp", "--memory-limit", "lots"], "bad size 'lots'"),
    "logits of a missing file": ("gguf", lambda g: g.unlink(), lambda g, o: [
        "logits", str(g), "--engine", "llamacpp", "--text", "hi", "--out", str(o)], "no such GGUF file"),
    "package context zero": ("ckpt", lambda c: None,
                             lambda c, o: ["package", "windows", str(c), "--context", "0", "-o", str(o)], "--context"),
    # device profiles and options
    "profile ISA of another architecture": ("plan20b", lambda p: _write(p.with_suffix(".toml"), (
        Path(__file__).resolve().parents[1] / "profiles" / "pixel-9-pro.toml").read_text().replace(
        'cpu_isa = "arm64"', 'cpu_isa = "avx512"').encode()),
        lambda p, o: ["plan", "--preset", "20b", "--device", str(p.with_suffix(".toml"))], "cpu_isa"),
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


@pytest.mark.parametrize("bug", [ZeroDivisionError("a bug"), EOFError("a bug")])  # click turns EOFError into Abort
def test_an_unforeseen_error_is_one_line_with_a_saved_traceback(monkeypatch, tmp_path, bug):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr("edgeoss.planner.plan.make_plan", broken)
    code, stderr = _run(["plan", "--preset", "tiny", "--device", "pixel-9-pro"])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 1 and "Traceback" not in stderr and len(lines) == 1
    assert f"internal error: {type(bug).__name__}: a bug" in stderr
    saved = Path(stderr.split("traceback saved to ")[1].rstrip(")\n"))
    assert saved.is_file() and type(bug).__name__ in saved.read_text()


def test_engine_log_lines_only_with_verbose(good, monkeypatch):
    """llama.cpp's and ggml's own lines stay off stderr; `edgeoss --verbose` shows them."""
    monkeypatch.setenv("EDGEOSS_VERBOSE", "0")  # restored after the test; --verbose sets it to 1
    args = ["run", str(good["gguf"]), "--engine", "llamacpp", "--prompt", "hi", "--max-new-tokens", "1"]
    code, quiet = _run(args)
    assert code == 0 and "llama_" not in quiet and "ggml_" not in quiet, quiet
    code, verbose = _run(["--verbose", *args])
    assert code == 0 and "llama_model_loader" in verbose
