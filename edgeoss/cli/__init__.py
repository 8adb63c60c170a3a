"""The `edgeoss` command line: parse, call, print. No model logic lives here.

One module per command group; each lists its click commands in COMMANDS. To add a group, write
`edgeoss/cli/<name>.py` and add its name to MODULES.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import click
from rich.markup import escape

from ..errors import EdgeossError
from ._common import err

MODULES = ["checkpoint", "demo", "validate", "package", "export", "run", "profiles", "plan"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeoss")
@click.option("--verbose", is_flag=True, help="also show the engines' own log lines (llama.cpp's, ggml's) on stderr")
def cli(verbose: bool) -> None:
    """Put gpt-oss (MXFP4 MoE) on 16 GB phones, laptops and PCs: inspect, plan, export, validate, package."""
    if verbose:
        os.environ["EDGEOSS_VERBOSE"] = "1"


for _name in MODULES:
    for _command in importlib.import_module(f"{__name__}.{_name}").COMMANDS:
        cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI under one rule: a user's mistake (an EdgeossError, or an OSError such as a full disk or an
    output path that cannot be written) is one line on stderr and exit 2; SIGINT exits 130; anything unforeseen
    is one line, `internal error: ...` with the path of the saved traceback, and exit 1. No traceback reaches the
    terminal."""
    try:
        cli.main(args=argv, prog_name="edgeoss", standalone_mode=False)
    except EdgeossError as e:
        _fail(str(e), e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:  # `edgeoss` or a group alone: its help
        e.show()
        sys.exit(e.exit_code)
    except click.ClickException as e:  # a bad option or argument: one line too, with where to read more
        where = getattr(e, "ctx", None)
        _fail(e.format_message() + (f" (see `{where.command_path} --help`)" if where else ""), e.exit_code)
    except (click.Abort, KeyboardInterrupt) as e:
        if isinstance(e.__cause__, EOFError):  # click turns an EOFError raised anywhere into Abort
            _internal_error(e.__cause__)
        err.print("interrupted")
        sys.exit(130)
    except OSError as e:
        _fail(os_error_line(e), 2)
    except Exception as e:  # noqa: BLE001 - the one place every unforeseen error is turned into one line
        _internal_error(e)


def _internal_error(e: BaseException) -> None:
    saved = save_traceback(e)
    line = " ".join(f"{type(e).__name__}: {e}".split())[:300]
    err.print(f"[red]internal error:[/red] {escape(line)} (traceback saved to {escape(str(saved))})",
              highlight=False, soft_wrap=True)
    sys.exit(1)


def _fail(line: str, code: int) -> None:
    err.print(f"[red]error:[/red] {escape(' '.join(line.split()))}", highlight=False, soft_wrap=True)
    sys.exit(code)


def os_error_line(e: OSError) -> str:
    """`PATH: why` for an OSError (`/data/x.gguf: Permission denied`); `why` alone when it names no path."""
    why = e.strerror or str(e) or type(e).__name__
    paths = [str(p) for p in (e.filename, e.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {why}" if paths else why


def save_traceback(e: BaseException) -> Path:
    """Write `e`'s traceback to a file under the temp folder; its path (or a note)."""
    import tempfile
    import time
    import traceback

    folder = Path(tempfile.gettempdir()) / "edgeoss-errors"
    path = folder / f"internal-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(f"edgeoss {' '.join(sys.argv[1:])}\n\n{''.join(traceback.format_exception(e))}")
    except OSError as problem:
        return Path(f"<not saved: {os_error_line(problem)}>")
    return path
