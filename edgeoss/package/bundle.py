"""Bundles: a folder of files plus `manifest.json` listing every other file with its size and sha256.

The manifest is the contract with the apps that read bundles (android_demo parses exactly these keys):

    {"format": "edgeoss-bundle", "format_version": 1, "target": "android" | "windows",
     "files": [{"path": "a/b.bin", "size": 123, "sha256": "<hex>"}, ...],   # every file but manifest.json, sorted
     ... target fields (model, context, memory, engine, tokenizer, chat_template, plan) ...}

This module knows the format, not the engines: it hashes, writes and verifies manifests, links or copies files in,
and zips a bundle. Manifests are deterministic (sorted keys and paths, no timestamps). Paths are relative,
"/"-separated, and never leave the bundle; a bundle holds regular files only (no symlinks).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

from ..atomic import atomic_file
from ..errors import EdgeossError
from ..progress import byte_progress

MANIFEST = "manifest.json"
FORMAT = "edgeoss-bundle"
FORMAT_VERSION = 1
CHUNK = 8 << 20  # bytes per read when hashing or copying
_SHA256 = re.compile(r"[0-9a-f]{64}")
# manifest fields that name a file of the bundle; each must be listed in "files"
FILE_REFERENCES = (("engine", "model_file"), ("tokenizer", "vocab_file"), ("chat_template",), ("plan",))
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # zip entries carry no real timestamps: the same bundle zips to the same bytes


class BundleError(EdgeossError):
    """A bundle that cannot be written or read as asked."""


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, "/"-separated
    size: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


# ---- hashing and manifests --------------------------------------------------------------------------------------
def sha256_file(path: Path, advance: Callable[[int], None] = lambda n: None) -> str:
    """sha256 of a file read in chunks (never whole), reporting each chunk's size to `advance`."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            advance(len(chunk))
    return digest.hexdigest()


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def bundle_files(folder: Path) -> list[str]:
    """Every regular file under `folder` except the top-level manifest, as sorted relative paths. Raises on a
    symlink or any other non-regular entry: a bundle is written from regular files only."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise BundleError(f"{path}: not a regular file or folder (bundles hold regular files only)")
            if stat.S_ISREG(mode):
                found.append(_relative(folder, path))
    return sorted(p for p in found if p != MANIFEST)


def hash_files(folder: Path, progress: bool | None = None) -> list[FileEntry]:
    """Size and sha256 of every file of the bundle (each read once, one progress bar over all bytes)."""
    paths = bundle_files(folder)
    sizes = [(folder / p).stat().st_size for p in paths]
    with byte_progress(sum(sizes), "hashing", enabled=progress) as advance:
        return [FileEntry(p, size, sha256_file(folder / p, advance)) for p, size in zip(paths, sizes)]


def manifest_text(manifest: dict[str, Any]) -> str:
    """The one serialization: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_manifest(folder: Path, target: str, fields: dict[str, Any], progress: bool | None = None) -> dict[str, Any]:
    """Hash every file of `folder` and write `manifest.json` with the format header, `fields` and the file list.
    Call it last, once every other file is in place. Returns the manifest."""
    manifest = {**fields, "format": FORMAT, "format_version": FORMAT_VERSION, "target": target,
                "files": [entry.as_dict() for entry in hash_files(folder, progress)]}
    problems: list[str] = []
    listed = {entry["path"]: entry for entry in manifest["files"]}
    _check_references(manifest, listed, listed, problems)
    if problems:
        raise BundleError(f"{folder}: {problems[0]}")
    (folder / MANIFEST).write_text(manifest_text(manifest), encoding="utf-8")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """The parsed manifest.json of a bundle, with its format header checked."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (not a bundle?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not an {FORMAT} manifest (\"format\" must be {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {manifest.get('format_version')!r} is not supported "
                          f"(this edgeoss reads version {FORMAT_VERSION})")
    if not isinstance(manifest.get("files"), list):
        raise BundleError(f"{path}: \"files\" must be a list")
    return manifest


# ---- verification -----------------------------------------------------------------------------------------------
@dataclass
class Verification:
    """What `verify` found: every problem, one line each (empty when the bundle is intact)."""

    files: int = 0
    nbytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def path_problem(path: object) -> str | None:
    """Why a manifest path is unsafe or non-canonical, or None when it is a plain relative path in the bundle."""
    if not isinstance(path, str) or not path:
        return "path must be a non-empty string"
    if path.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", path):
        return "absolute path (must be relative to the bundle)"
    parts = path.split("/")
    if ".." in parts or ".." in re.split(r"[\\/]", path):
        return "path escapes the bundle (..)"
    if "\\" in path or any(part in ("", ".") for part in parts) or "\0" in path:
        return "not a canonical relative path (use plain names joined by /)"
    if path == MANIFEST:
        return f"{MANIFEST} cannot list itself"
    return None


def _entry_problem(entry: dict) -> str | None:
    if set(entry) != {"path", "size", "sha256"}:
        return "must have exactly path, size and sha256"
    if not isinstance(entry["size"], int) or isinstance(entry["size"], bool) or entry["size"] < 0:
        return "size must be a non-negative integer"
    if not isinstance(entry["sha256"], str) or not _SHA256.fullmatch(entry["sha256"]):
        return "sha256 must be 64 lowercase hex digits"
    return None


def _check_references(manifest: dict[str, Any], named: Collection[str], listed: dict[str, dict],
                      problems: list[str]) -> None:
    """Fields that name a bundle file must name one in the file list; the tokenizer's sha256 must be the file's."""
    for keys in FILE_REFERENCES:
        value: Any = manifest
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None and value not in named:
            problems.append(f"{MANIFEST}: {'.'.join(keys)} names {value!r}, which is not in the file list")
    tokenizer = manifest.get("tokenizer")
    if isinstance(tokenizer, dict) and tokenizer.get("vocab_file") in listed:
        if tokenizer.get("sha256") != listed[tokenizer["vocab_file"]]["sha256"]:
            problems.append(f"{MANIFEST}: tokenizer.sha256 differs from the sha256 listed for "
                            f"{tokenizer['vocab_file']}")
    folder = manifest.get("engine", {}).get("model_folder") if isinstance(manifest.get("engine"), dict) else None
    if folder is not None and folder != "." and path_problem(folder):
        problems.append(f"{MANIFEST}: engine.model_folder {folder!r}: {path_problem(folder)}")


def _scan(root: Path, problems: list[str]) -> set[str]:
    """Regular files on disk (relative paths); symlinks and special files become problems, never followed."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                problems.append(f"{path}: symbolic link (bundles hold regular files only)")
            elif stat.S_ISREG(mode):
                found.add(_relative(root, path))
            elif not stat.S_ISDIR(mode):
                problems.append(f"{path}: not a regular file")
    return found


def _through_symlink(root: Path, path: str) -> bool:
    parts = path.split("/")
    return any((root.joinpath(*parts[:n])).is_symlink() for n in range(1, len(parts) + 1))


def verify(folder: str | Path, progress: bool | None = None) -> Verification:
    """Check a bundle against its manifest: every listed file present with its size and sha256, nothing extra,
    no symlink, no path that leaves the bundle. Finds every problem (does not stop at the first)."""
    root = Path(folder)
    result = Verification()
    if not root.is_dir():
        result.problems.append(f"{root}: not a folder")
        return result
    if (root / MANIFEST).is_symlink():
        result.problems.append(f"{root / MANIFEST}: symbolic link (bundles hold regular files only)")
        return result
    try:
        manifest = read_manifest(root)
    except BundleError as e:
        result.problems.append(str(e))
        return result
    problems = result.problems
    on_disk = _scan(root, problems) - {MANIFEST}
    resolved_root = root.resolve()

    named: dict[str, dict] = {}  # entries with a safe path: never "extra", whatever else is wrong with them
    listed: dict[str, dict] = {}  # entries that are well-formed too: checked against the disk
    for i, entry in enumerate(manifest["files"]):
        where = f"{root / MANIFEST}: files[{i}]"
        path = entry.get("path") if isinstance(entry, dict) else None
        shown = f"{where} {path!r}" if isinstance(path, str) else where
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be an object with path, size and sha256")
        elif problem := path_problem(path):
            problems.append(f"{shown}: {problem}")
        elif path in named:
            problems.append(f"{shown}: listed twice")
        elif not (root / path).resolve().is_relative_to(resolved_root):
            named[path] = entry
            problems.append(f"{shown}: resolves outside the bundle")
        elif problem := _entry_problem(entry):
            named[path] = entry
            problems.append(f"{shown}: {problem}")
        else:
            named[path] = listed[path] = entry
    _check_references(manifest, named, listed, problems)

    to_hash = []
    for path, entry in listed.items():
        full = root / path
        if path not in on_disk:
            if not _through_symlink(root, path):  # a symlink is already reported as such
                problems.append(f"{full}: missing (listed in {MANIFEST})")
        elif (size := full.stat().st_size) != entry["size"]:
            problems.append(f"{full}: {size} bytes, {MANIFEST} says {entry['size']}")
        else:
            to_hash.append(entry)
    problems.extend(f"{root / path}: extra file, not listed in {MANIFEST}" for path in sorted(on_disk - set(named)))

    with byte_progress(sum(e["size"] for e in to_hash), "verifying", enabled=progress) as advance:
        for entry in to_hash:
            digest = sha256_file(root / entry["path"], advance)
            if digest != entry["sha256"]:
                problems.append(f"{root / entry['path']}: sha256 {digest[:12]}... does not match "
                                f"{MANIFEST} ({entry['sha256'][:12]}...)")
    result.files, result.nbytes = len(listed), sum(e["size"] for e in listed.values())
    return result


# ---- putting files in and taking bundles out --------------------------------------------------------------------
def link_or_copy(source: Path, dest: Path, progress: bool | None = None) -> bool:
    """Hard-link `source` as `dest` (no bytes copied); across filesystems, copy it once in chunks.
    Returns True when linked, False when copied."""
    try:
        os.link(source, dest)
        return True
    except OSError:
        pass
    size = source.stat().st_size
    with open(source, "rb") as src, open(dest, "wb") as dst, byte_progress(size, f"copying {source.name}",
                                                                            enabled=progress) as advance:
        while chunk := src.read(CHUNK):
            dst.write(chunk)
            advance(len(chunk))
    shutil.copymode(source, dest)
    return False


def zip_bundle(folder: Path, target: Path, progress: bool | None = None) -> Path:
    """Write `target` (.zip, zip64, stored: model weights do not compress) with every file of the bundle at its
    root, manifest first then the listed files in manifest order, streamed in chunks, with fixed timestamps."""
    manifest = read_manifest(folder)
    names = [MANIFEST] + [entry["path"] for entry in manifest["files"]]
    total = sum((folder / name).stat().st_size for name in names)
    with atomic_file(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as archive, \
            byte_progress(total, f"zipping {target.name}", enabled=progress) as advance:
        for name in names:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.file_size = (folder / name).stat().st_size
            with open(folder / name, "rb") as src, archive.open(info, "w", force_zip64=True) as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    advance(len(chunk))
    return target
