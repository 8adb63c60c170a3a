"""`edgeoss demo`: the whole pipeline on the built-in tiny model, one visible step at a time.

Each step is a function of the shared `Demo` state that returns one summary row. A failing step stops the
demo with its name and cause.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import EdgeossError

DEMO_PROMPT = "Explain in one sentence why mixture-of-experts models fit on phones."


@dataclass
class Demo:
    workdir: Path
    device: str
    preset: str = "tiny"
    paths: dict[str, Path] = field(default_factory=dict)
    facts: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    """One line of the final summary: what was produced, where, how big, and the figures that matter."""

    step: str
    output: str = ""
    size: int | None = None
    figures: str = ""


class StepFailed(EdgeossError):
    def __init__(self, step: str, cause: BaseException):
        super().__init__(f"demo step '{step}' failed: {cause}")


def _folder_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---- steps ---------------------------------------------------------------------------------------
def synthesize(d: Demo) -> Row:
    from .spec import preset
    from .synth import synthesize as write

    d.paths["checkpoint"] = write(d.workdir / "checkpoint", preset(d.preset), "hf", seed=0, force=True)
    return Row("synthesize", str(d.paths["checkpoint"]), _folder_bytes(d.paths["checkpoint"]),
               "HF layout, real o200k_harmony tokenizer files")


def inspect(d: Demo) -> Row:
    from .inspect import checkpoint_report

    report = checkpoint_report(d.paths["checkpoint"])
    d.facts["spec"] = report["spec"]
    p = report["params"]
    return Row("inspect", figures=f"{p['total']:,} params, {p['active_per_token']:,} active/token, "
                                  f"validation {report['validation']}")


def harmony(d: Demo) -> Row:
    from .harmony import render_prompt
    from .tokenizer import decode

    ids = render_prompt([("user", DEMO_PROMPT)], reasoning="low")
    d.facts["prompt_ids"] = ids
    text = decode(ids)
    return Row("harmony prompt", figures=f"{len(ids)} tokens, starts {text[:40]!r}")


STEPS: list[tuple[str, Callable[[Demo], Row]]] = [
    ("synthesize the tiny model", synthesize),
    ("inspect and validate it", inspect),
    ("render and tokenize a harmony prompt", harmony),
]


def run(d: Demo, on_step: Callable[[int, str], None] = lambda i, name: None,
        on_done: Callable[[Row, float], None] = lambda row, took: None) -> list[Row]:
    d.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (name, step) in enumerate(STEPS):
        on_step(i, name)
        start = time.perf_counter()
        try:
            row = step(d)
        except Exception as e:  # any failure names the step and the cause
            raise StepFailed(name, e) from e
        rows.append(row)
        on_done(row, time.perf_counter() - start)
    return rows


NEXT_COMMANDS = [
    "edgeoss inspect {checkpoint}",
    "edgeoss synth /tmp/gpt-oss-20b --preset 20b      # full-size, 13.8 GB",
    "edgeoss inspect --preset 120b",
]
