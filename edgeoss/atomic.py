"""Outputs that appear whole or not at all: write beside the target, rename at the end."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator

from .errors import UsageError


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}  # what only writing the output raises


class WriteError(UsageError):
    """The output could not be written (a full disk, a quota, a read-only file system)."""

    def __init__(self, target: Path, why: str):
        self.why = why
        super().__init__(f"{target}: cannot write it: {why} (nothing was left behind)")


def _raise_write_error(e: BaseException, target: Path) -> None:
    """A full disk (or a quota, a read-only file system) while writing `target`, or a file inside it: one line
    naming `target`; the partial output is already gone."""
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        raise WriteError(target, e.strerror or str(e)) from None
    if isinstance(e, WriteError):
        raise WriteError(target, e.why) from None


def make_parent(target: Path) -> None:
    """Create the folder `target` goes in, or say in one line why it cannot be."""
    for folder in (target.parent, *target.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UsageError(f"{target}: cannot write there: {folder} is a file, not a folder")
            break
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{target}: cannot create its folder: {e.strerror or e}") from None


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
            return
        raise UsageError(f"{target}: already exists (choose another path or pass --force)")


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; it becomes `target` only if the block completes."""
    target = Path(target)
    _check_target(target, overwrite)
    make_parent(target)
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.rename(tmp, target)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_write_error(e, target)
        raise


@contextlib.contextmanager
def atomic_file(target: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `target`; it is renamed onto `target` only if the block completes."""
    target = Path(target)
    if target.is_dir():
        raise UsageError(f"{target}: is a directory, expected a file path")
    if target.exists() and not overwrite:
        raise UsageError(f"{target}: already exists")
    make_parent(target)
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        _raise_write_error(e, target)
        raise
