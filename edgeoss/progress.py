"""Progress bars for long work (rich), silent when output is not a terminal or when asked."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Protocol

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)


class Advance(Protocol):
    def __call__(self, nbytes: int) -> None: ...


@contextlib.contextmanager
def byte_progress(total: int, description: str, enabled: bool | None = None) -> Iterator[Advance]:
    """A bar over `total` bytes; yields a function to call with each chunk's size."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
