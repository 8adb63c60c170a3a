"""Bundle manifests and verification on small hand-made bundles (no model, no engine)."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from edgeoss.package import bundle
from edgeoss.package.bundle import MANIFEST, BundleError, path_problem, read_manifest, verify, write_manifest

FILES = {"model-00001-of-00002.gguf": b"first shard" * 1000, "model-00002-of-00002.gguf": b"second",
         "o200k_base.tiktoken": b"vocab", "sub/chat_template.jinja": b"{{ messages }}"}
FIELDS = {"context": 64, "engine": {"name": "llama.cpp", "model_file": "model-00001-of-00002.gguf"},
          "tokenizer": {"vocab_file": "o200k_base.tiktoken", "sha256": hashlib.sha256(b"vocab").hexdigest()},
          "chat_template": "sub/chat_template.jinja"}


def make_bundle(folder: Path) -> dict:
    for name, data in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return write_manifest(folder, "android", FIELDS, progress=False)


@pytest.fixture
def good(tmp_path) -> Path:
    folder = tmp_path / "b"
    folder.mkdir()
    make_bundle(folder)
    return folder


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_manifest_lists_every_file_sorted_with_sizes_and_hashes(good):
    manifest = read_manifest(good)
    assert manifest["format"] == "edgeoss-bundle" and manifest["format_version"] == 1
    assert manifest["target"] == "android" and manifest["context"] == 64
    assert [f["path"] for f in manifest["files"]] == sorted(FILES)
    for f in manifest["files"]:
        assert f["size"] == len(FILES[f["path"]]) and f["sha256"] == hashlib.sha256(FILES[f["path"]]).hexdigest()
    text = (good / MANIFEST).read_text()
    assert text == bundle.manifest_text(json.loads(text)), "manifest must be written in its one canonical form"


def test_manifest_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    make_bundle(a), make_bundle(b)
    assert (a / MANIFEST).read_bytes() == (b / MANIFEST).read_bytes()


def test_hashing_streams_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle, "CHUNK", 1000)
    path = tmp_path / "big"
    data = os.urandom(10_500)
    path.write_bytes(data)
    chunks = []
    assert bundle.sha256_file(path, chunks.append) == hashlib.sha256(data).hexdigest()
    assert chunks == [1000] * 10 + [500]


def test_clean_bundle_verifies(good):
    result = verify(good, progress=False)
    assert result.ok, result.problems
    assert result.files == len(FILES) and result.nbytes == sum(map(len, FILES.values()))


def test_every_problem_is_reported_once(good):
    (good / "o200k_base.tiktoken").write_bytes(b"VOCAB")                   # changed bytes, same size
    (good / "model-00002-of-00002.gguf").unlink()                          # missing
    (good / "notes.txt").write_text("hi")                                  # extra
    (good / "sub" / "link").symlink_to(good / "o200k_base.tiktoken")       # symlink
    problems = verify(good, progress=False).problems
    assert len(problems) == 4, problems
    assert any("o200k_base.tiktoken: sha256" in p for p in problems)
    assert any("model-00002-of-00002.gguf: missing" in p for p in problems)
    assert any("notes.txt: extra file" in p for p in problems)
    assert any("sub/link: symbolic link" in p for p in problems)
    assert all("\n" not in p for p in problems)


def test_size_change_is_caught_without_hashing(good):
    (good / "model-00002-of-00002.gguf").write_bytes(b"second!")
    assert verify(good, progress=False).problems == [f"{good}/model-00002-of-00002.gguf: 7 bytes, {MANIFEST} says 6"]


@pytest.mark.parametrize("path, why", [("../x", "escapes the bundle"), ("/etc/passwd", "absolute path"),
                                       ("C:/x", "absolute path"), ("a/../../x", "escapes the bundle"),
                                       ("a\\..\\x", "escapes the bundle"), ("./x", "not a canonical"),
                                       ("a//x", "not a canonical"), (MANIFEST, "cannot list itself")])
def test_unsafe_paths(path, why):
    assert why in path_problem(path)


def test_escaping_entries_are_refused_and_never_read(good, tmp_path):
    secret = tmp_path / "x"
    secret.write_bytes(b"outside")
    entry = {"path": "../x", "size": 7, "sha256": hashlib.sha256(b"outside").hexdigest()}
    absolute = {"path": str(secret), "size": 7, "sha256": entry["sha256"]}
    edit_manifest(good, lambda m: m["files"].extend([entry, absolute]))
    problems = verify(good, progress=False).problems
    assert len(problems) == 2, problems
    assert "'../x': path escapes the bundle" in problems[0] and f"{secret}': absolute path" in problems[1]


def test_symlinked_folder_resolving_outside(good, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_bytes(b"data")
    (good / "d").symlink_to(outside, target_is_directory=True)
    edit_manifest(good, lambda m: m["files"].append({"path": "d/f", "size": 4,
                                                     "sha256": hashlib.sha256(b"data").hexdigest()}))
    problems = verify(good, progress=False).problems
    assert len(problems) == 2, problems
    assert any(p.endswith("d: symbolic link (bundles hold regular files only)") for p in problems)
    assert any("'d/f': resolves outside the bundle" in p for p in problems)


def test_manifest_references_must_be_listed(good):
    edit_manifest(good, lambda m: m["engine"].update(model_file="gone.gguf"))
    edit_manifest(good, lambda m: m["tokenizer"].update(sha256="0" * 64))
    problems = verify(good, progress=False).problems
    assert len(problems) == 2, problems
    assert "engine.model_file names 'gone.gguf'" in problems[0] and "tokenizer.sha256 differs" in problems[1]


@pytest.mark.parametrize("change, expected", [
    (lambda m: m.update(format="other"), "not an edgeoss-bundle manifest"),
    (lambda m: m.update(format_version=2), "format_version 2 is not supported"),
    (lambda m: m["files"][0].update(sha256="xyz"), "sha256 must be 64 lowercase hex digits"),
    (lambda m: m["files"][0].update(size=-1), "size must be a non-negative integer"),
    (lambda m: m["files"].append(dict(m["files"][1])), "listed twice"),
])
def test_malformed_manifests(good, change, expected):
    edit_manifest(good, change)
    problems = verify(good, progress=False).problems
    assert len(problems) == 1 and expected in problems[0], problems


def test_missing_manifest(tmp_path):
    assert verify(tmp_path, progress=False).problems == [f"{tmp_path}/{MANIFEST}: missing (not a bundle?)"]


def test_writing_refuses_symlinks_and_dangling_references(tmp_path):
    folder = tmp_path / "b"
    folder.mkdir()
    (folder / "a").write_bytes(b"a")
    (folder / "l").symlink_to(folder / "a")
    with pytest.raises(BundleError, match="regular files only"):
        write_manifest(folder, "android", {}, progress=False)
    (folder / "l").unlink()
    with pytest.raises(BundleError, match="engine.model_file names 'model.gguf'"):
        write_manifest(folder, "android", {"engine": {"model_file": "model.gguf"}}, progress=False)


def test_link_or_copy_links_on_one_filesystem(tmp_path):
    (tmp_path / "src").write_bytes(b"payload")
    assert bundle.link_or_copy(tmp_path / "src", tmp_path / "dst", progress=False) is True
    assert (tmp_path / "dst").stat().st_ino == (tmp_path / "src").stat().st_ino


def test_link_or_copy_copies_once_across_filesystems(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", no_link)
    (tmp_path / "src").write_bytes(b"payload")
    assert bundle.link_or_copy(tmp_path / "src", tmp_path / "dst", progress=False) is False
    assert (tmp_path / "dst").read_bytes() == b"payload"
    assert (tmp_path / "dst").stat().st_ino != (tmp_path / "src").stat().st_ino


def test_zip_holds_the_bundle_and_is_reproducible(good, tmp_path):
    first = bundle.zip_bundle(good, tmp_path / "one.zip", progress=False)
    second = bundle.zip_bundle(good, tmp_path / "two.zip", progress=False)
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        assert archive.testzip() is None
        assert archive.namelist() == [MANIFEST, *sorted(FILES)]
        assert archive.read("sub/chat_template.jinja") == FILES["sub/chat_template.jinja"]
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(first).extractall(unpacked)
    assert verify(unpacked, progress=False).ok


# ---- the CLI: one line per problem, exit 2 -----------------------------------------------------------------------
def test_cli_verify_ok(good, cli):
    proc = cli("package", "verify", good)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"ok: {len(FILES)} files, 0.00 GiB verified"


def test_cli_verify_prints_each_problem_on_one_line(good, cli):
    (good / "o200k_base.tiktoken").write_bytes(b"VOCAB")
    (good / "notes.txt").write_text("hi")
    proc = cli("package", "verify", good)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert all(line.startswith("error: ") for line in lines) and "Traceback" not in proc.stderr
