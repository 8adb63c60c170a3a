"""`edgeoss package android|windows|verify` on the tiny model: bundles that verify, load and compute what the
model computes; every kind of damage caught in one line with exit 2."""

from __future__ import annotations

import contextlib
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeoss.formats.spec import preset
from edgeoss.package.bundle import MANIFEST, read_manifest, verify
from edgeoss.package.build import package_android, package_windows

PROMPT = [200006, 1428, 200008, 13225, 2375, 200007, 200006]  # <|start|>user<|message|>Hello world<|end|><|start|>
SHARD_LIMIT = 40_000_000  # tiny model: ~60 MB of GGUF (two 25.7 MB embedding tables), so >= 2 shards
ANDROID_KEYS = {"format", "format_version", "target", "model", "context", "files", "memory", "engine", "tokenizer",
                "chat_template", "chat_template_check", "plan"}
MODEL_KEYS = {"name", "num_hidden_layers", "num_local_experts", "num_experts_per_tok", "hidden_size", "vocab_size",
              "params_total", "params_active"}


# ---- fixtures: each bundle built once ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def windows_bundle(tiny_hf, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("win") / "bundle"
    package_windows(tiny_hf, out, context=64, make_zip=True, progress=False)
    return out


@pytest.fixture(scope="module")
def full_gguf(tiny_hf, tmp_path_factory) -> Path:
    from edgeoss.exporters.gguf import export_gguf

    return export_gguf(tiny_hf, tmp_path_factory.mktemp("gguf") / "tiny.gguf", progress=False)[0]


def llama_logits(model_path: Path, tokens: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[:len(tokens)], dtype=np.float32)
    finally:
        llm.close()


# ---- Windows ----------------------------------------------------------------------------------------------------
def test_windows_bundle_verifies_and_follows_the_contract(windows_bundle, cli):
    proc = cli("package", "verify", windows_bundle)
    assert proc.returncode == 0 and proc.stdout.startswith("ok: "), proc.stderr
    m = read_manifest(windows_bundle)
    assert m["target"] == "windows" and m["context"] == 64 and set(m["model"]) == MODEL_KEYS
    assert m["engine"] == {"name": "onnxruntime-genai", "model_folder": ".", "onnxruntime": "1.32.0",
                           "experts": "mxfp4", "fast_on_cpu_isa": ["avx512"],
                           "settings": {"max_length": 64, "provider": "cpu"}}
    paths = [f["path"] for f in m["files"]]
    assert paths == sorted(paths) and MANIFEST not in paths
    assert {"genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json", "o200k_base.tiktoken",
            "chat_template.jinja", "README.md"} <= set(paths)
    # the file, and its bf16 matrices (all but the embedding) widened to float32 by ONNX Runtime at load
    spec = preset("tiny")
    widened = 2 * spec.hidden_size * (spec.vocab_size + spec.num_hidden_layers * 2 * (spec.q_dim + spec.kv_dim))
    assert m["memory"]["min_free_ram_bytes"] > (windows_bundle / "model.onnx.data").stat().st_size + widened
    readme = (windows_bundle / "README.md").read_text()  # a checkpoint exports MXFP4 experts by default
    assert "experts encoded mxfp4" in readme and "onnxruntime==1.32.0" in readme
    assert "fast only on x86-64 CPUs with AVX-512" in readme


def test_windows_zip_unpacks_to_the_same_bundle(windows_bundle, tmp_path):
    archive = windows_bundle.with_name(windows_bundle.name + ".zip")
    with zipfile.ZipFile(archive) as z:
        assert z.testzip() is None
        z.extractall(tmp_path / "unzipped")
    assert verify(tmp_path / "unzipped", progress=False).ok
    assert (tmp_path / "unzipped" / MANIFEST).read_bytes() == (windows_bundle / MANIFEST).read_bytes()


def test_windows_bundle_greedy_generates_the_reference_tokens(windows_bundle, tiny_hf):
    import onnxruntime_genai as og

    from edgeoss.runtimes.engine import load_engine
    from edgeoss.runtimes.generate import Sampling, generate
    from edgeoss.runtimes.onnxrt import qmoe_precision

    steps = 8
    with qmoe_precision(exact=True):
        model = og.Model(str(windows_bundle))  # exactly as an app opens the bundle folder
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(PROMPT) + steps)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array(PROMPT, dtype=np.int32))
    generated = []
    while not generator.is_done():
        generator.generate_next_token()
        generated.append(int(generator.get_next_tokens()[0]))
    reference = load_engine("reference", tiny_hf)
    try:
        expected = generate(reference, PROMPT, steps, Sampling(temperature=0)).tokens
    finally:
        reference.close()
    assert generated == expected


def test_windows_from_onnx_folder_hard_links_every_file(tiny_hf, tmp_path, cli):
    from edgeoss.exporters.onnx import export_onnx

    onnx_dir = tmp_path / "onnx"
    export_onnx(tiny_hf, onnx_dir, max_length=32, progress=False)
    report = package_windows(onnx_dir, tmp_path / "bundle", progress=False)
    data = "model.onnx.data"
    assert (tmp_path / "bundle" / data).stat().st_ino == (onnx_dir / data).stat().st_ino
    assert data in report.linked and not report.copied
    assert read_manifest(tmp_path / "bundle")["engine"]["settings"]["max_length"] == 32
    assert cli("package", "verify", tmp_path / "bundle").returncode == 0
    proc = cli("package", "windows", onnx_dir, "-o", tmp_path / "again", "--experts", "int4")
    assert proc.returncode == 2 and "--experts" in proc.stderr and not (tmp_path / "again").exists()


# ---- verify: each kind of damage, alone, is one line and exit 2 ----------------------------------------------------
@contextlib.contextmanager
def changed_byte(bundle: Path, name: str):
    path = bundle / name
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        old = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([old[0] ^ 1]))
    try:
        yield f"{name}: sha256"
    finally:
        with open(path, "r+b") as f:
            f.seek(path.stat().st_size // 2)
            f.write(old)


@contextlib.contextmanager
def missing_file(bundle: Path, name: str):
    (bundle / name).rename(bundle.parent / "aside")
    try:
        yield f"{name}: missing"
    finally:
        (bundle.parent / "aside").rename(bundle / name)


@contextlib.contextmanager
def extra_file(bundle: Path, name: str):
    (bundle / "stray.bin").write_bytes(b"x")
    try:
        yield "stray.bin: extra file"
    finally:
        (bundle / "stray.bin").unlink()


@contextlib.contextmanager
def symlink(bundle: Path, name: str):
    (bundle / "link.gguf").symlink_to(bundle / name)
    try:
        yield "link.gguf: symbolic link"
    finally:
        (bundle / "link.gguf").unlink()


@contextlib.contextmanager
def manifest_entry(bundle: Path, path: str, expected: str):
    original = (bundle / MANIFEST).read_bytes()
    manifest = json.loads(original)
    manifest["files"].append({"path": path, "size": 1, "sha256": hashlib.sha256(b"x").hexdigest()})
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    try:
        yield expected
    finally:
        (bundle / MANIFEST).write_bytes(original)


DAMAGES = {
    "changed byte": changed_byte,
    "missing file": missing_file,
    "extra file": extra_file,
    "symlink": symlink,
    "escaping path": lambda bundle, name: manifest_entry(bundle, "../x", "'../x': path escapes the bundle"),
    "absolute path": lambda bundle, name: manifest_entry(bundle, "/etc/hostname",
                                                         "'/etc/hostname': absolute path"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_verify_catches_each_damage_in_one_line(windows_bundle, damage, cli):
    with DAMAGES[damage](windows_bundle, "model.onnx.data") as expected:
        proc = cli("package", "verify", windows_bundle)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and expected in lines[0] and "Traceback" not in proc.stderr
    assert cli("package", "verify", windows_bundle).returncode == 0  # the damage was undone


def test_verify_reports_all_damages_at_once(windows_bundle, cli):
    with contextlib.ExitStack() as stack:
        expected = [stack.enter_context(DAMAGES[d](windows_bundle, n))
                    for d, n in (("changed byte", "model.onnx"), ("missing file", "tokenizer.json"),
                                 ("extra file", ""), ("symlink", "model.onnx.data"), ("escaping path", ""))]
        proc = cli("package", "verify", windows_bundle)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == len(expected), proc.stderr
    for text in expected:
        assert sum(text in line for line in lines) == 1, (text, lines)


# ---- Android ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def android_bundle(tiny_hf, tmp_path_factory) -> Path:
    from conftest import run_cli

    out = tmp_path_factory.mktemp("android") / "bundle"
    run_cli("package", "android", tiny_hf, "--device", "pixel-9-pro", "-o", out, "--context", "256",
            "--max-file-size", str(SHARD_LIMIT), check=True)
    return out


def shards_of(bundle: Path) -> list[Path]:
    return sorted(bundle.glob("model*.gguf"))


def test_checkpoint_that_fits_one_file_is_exported_unsplit(tiny_hf, tmp_path, cli):
    proc = cli("package", "android", tiny_hf, "--device", "pixel-9-pro", "-o", tmp_path / "b", "--context", "256")
    assert proc.returncode == 0, proc.stderr
    assert "split" not in proc.stderr and [p.name for p in shards_of(tmp_path / "b")] == ["model.gguf"]


def test_android_bundle_verifies_and_follows_the_contract(android_bundle, cli):
    from edgeoss.planner.plan import read_plan
    from edgeoss.formats.spec import preset, sizes
    from edgeoss.formats.tokenizer import O200K_BASE_SHA256

    proc = cli("package", "verify", android_bundle)
    assert proc.returncode == 0 and proc.stdout.startswith("ok: 6 files"), proc.stderr
    m = read_manifest(android_bundle)
    assert set(m) == ANDROID_KEYS and m["target"] == "android" and m["context"] == 256
    tiny = preset("tiny")
    assert m["model"] == {"name": "gpt-oss-tiny", "num_hidden_layers": 4, "num_local_experts": 8, "num_experts_per_tok": 2,
                          "hidden_size": 64, "vocab_size": 201088, "params_total": sizes(tiny).params_total,
                          "params_active": sizes(tiny).params_active}
    shards = shards_of(android_bundle)
    assert [s.name for s in shards] == [f"model-0000{i}-of-0000{len(shards)}.gguf" for i in range(1, len(shards) + 1)]
    assert len(shards) >= 2 and all(s.stat().st_size <= SHARD_LIMIT for s in shards)
    assert [f["path"] for f in m["files"]] == sorted(["README.md", "chat_template.jinja", "o200k_base.tiktoken",
                                                      "plan.json", *(s.name for s in shards)])
    engine = m["engine"]
    assert engine["name"] == "llama.cpp" and engine["model_file"] == shards[0].name
    assert set(engine["settings"]) == {"n_ctx", "n_threads", "n_gpu_layers", "use_mmap", "use_mlock", "n_batch",
                                       "flash_attn"}
    assert engine["expert_store"] is None  # tiny fits in RAM on a phone: no store
    assert engine["settings"]["n_ctx"] == 256 and engine["settings"]["n_threads"] == 8  # pixel-9-pro: 8 threads
    assert engine["flags"][:2] == ["-m", shards[0].name] and engine["flags"][2:4] == ["-c", "256"]
    assert m["tokenizer"] == {"vocab_file": "o200k_base.tiktoken", "sha256": O200K_BASE_SHA256}
    plan = read_plan(android_bundle / m["plan"])
    assert plan["device"]["name"] == "pixel-9-pro" and plan["context"] == 256 and plan["fits"]
    assert m["memory"] == {"min_free_ram_bytes": plan["memory"]["ram_bytes"] + plan["memory"]["reserve_bytes"],
                           "app_budget_bytes": 10 << 30}
    readme = (android_bundle / "README.md").read_text()
    assert "adb push" in readme and "/data/local/tmp/edgeoss-bundle" in readme and " ".join(engine["flags"]) in readme
    assert f"The plan fits pixel-9-pro with every expert in RAM: {plan['prediction']['decode_tok_s']:.2f} tok/s" in readme


def test_android_shards_give_the_unsplit_logits(android_bundle, full_gguf):
    assert np.array_equal(llama_logits(shards_of(android_bundle)[0], PROMPT), llama_logits(full_gguf, PROMPT))


def test_gguf_that_fits_is_hard_linked_not_copied(full_gguf, tmp_path, cli):
    report, _ = package_android(full_gguf, tmp_path / "bundle", device="pixel-9-pro", context=256, progress=False)
    inside = tmp_path / "bundle" / "model.gguf"
    assert inside.stat().st_ino == full_gguf.stat().st_ino and full_gguf.stat().st_nlink >= 2
    assert report.linked == ["model.gguf"] and not report.copied
    assert read_manifest(tmp_path / "bundle")["engine"]["model_file"] == "model.gguf"
    assert cli("package", "verify", tmp_path / "bundle").returncode == 0


def test_split_gguf_that_fits_keeps_its_shards_linked(android_bundle, tmp_path):
    shards = shards_of(android_bundle)
    report, _ = package_android(shards[0], tmp_path / "bundle", device="pixel-9-pro", context=256, progress=False)
    assert report.linked == [s.name for s in shards]
    for shard in shards:
        assert (tmp_path / "bundle" / shard.name).stat().st_ino == shard.stat().st_ino


def test_gguf_too_large_for_the_device_is_resplit(full_gguf, tmp_path):
    limit = 36_000_000
    report, _ = package_android(full_gguf, tmp_path / "bundle", device="pixel-9-pro", context=256,
                                max_file_size=limit, progress=False)
    shards = shards_of(tmp_path / "bundle")
    assert len(shards) >= 2 and all(s.stat().st_size <= limit for s in shards) and not report.linked
    assert full_gguf.stat().st_ino not in {s.stat().st_ino for s in shards}
    assert verify(tmp_path / "bundle", progress=False).ok
    assert np.array_equal(llama_logits(shards[0], PROMPT), llama_logits(full_gguf, PROMPT))


def test_a_tensor_larger_than_the_limit_is_refused_and_nothing_written(tiny_hf, tmp_path, cli):
    proc = cli("package", "android", tiny_hf, "--device", "pixel-9-pro", "-o", tmp_path / "b",
               "--max-file-size", "20MB")
    assert proc.returncode == 2 and "exceeds the device's largest file" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--device", "pixel-9-pro", "--max-file-size", "5GiB"], "exceeds what pixel-9-pro accepts"),
    (["--device", "no-such-phone"], "unknown device 'no-such-phone'"),
    (["--device", "rtx-4060-laptop"], "is a windows profile"),
    (["--device", "pixel-9-pro", "--max-file-size", "1MB"], "cannot hold even the GGUF metadata"),
])
def test_android_usage_errors(tiny_hf, tmp_path, cli, args, message):
    proc = cli("package", "android", tiny_hf, "-o", tmp_path / "b", *args)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_manifests_are_deterministic(tiny_hf, windows_bundle, android_bundle, tmp_path):
    package_windows(tiny_hf, tmp_path / "w", context=64, progress=False)
    package_android(tiny_hf, tmp_path / "a", device="pixel-9-pro", context=256, max_file_size=SHARD_LIMIT,
                    progress=False)
    assert (tmp_path / "w" / MANIFEST).read_bytes() == (windows_bundle / MANIFEST).read_bytes()
    assert (tmp_path / "a" / MANIFEST).read_bytes() == (android_bundle / MANIFEST).read_bytes()
