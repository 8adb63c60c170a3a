"""Reading a user's JSON file (a plan, a calibration): any way it can be broken is one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import EdgeossError, UsageError


def read_json(path: str | Path, what: str = "file", error: type[EdgeossError] = UsageError) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
