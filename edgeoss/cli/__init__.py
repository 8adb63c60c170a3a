"""The `edgeoss` command line: parse, call, print. No model logic lives here.

One module per command group; each lists its click commands in COMMANDS. To add a group, write
`edgeoss/cli/<name>.py` and add its name to MODULES.
"""

from __future__ import annotations

import importlib
import sys

import click

from ..errors import EdgeossError
from ._common import err

MODULES = ["checkpoint", "demo", "validate", "package", "export", "run", "profiles", "plan"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeoss")
def cli() -> None:
    """Put gpt-oss (MXFP4 MoE) on 16 GB phones, laptops and PCs: inspect, plan, export, validate, package."""


for _name in MODULES:
    for _command in importlib.import_module(f"{__name__}.{_name}").COMMANDS:
        cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line on stderr and exit code 2, never a traceback."""
    try:
        cli.main(args=argv, prog_name="edgeoss", standalone_mode=False)
    except EdgeossError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (click.Abort, KeyboardInterrupt):
        err.print("interrupted")
        sys.exit(130)
