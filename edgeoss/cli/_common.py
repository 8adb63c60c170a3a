"""What every command module shares: the consoles and JSON printing."""

from __future__ import annotations

import json

import click
from rich.console import Console

out = Console()
err = Console(stderr=True)


def print_json(obj: object) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))
