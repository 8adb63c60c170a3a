"""The tree's layers hold: every import in edgeoss, exporters and runtimes, parsed, points down or sideways.

formats -> helpers; planner -> formats; exporters and runtimes -> planner, never each other; validate and
package -> everything below them, never each other; only the CLI and the demo see every layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"edgeoss": ROOT / "edgeoss", "edgeoss.exporters": ROOT / "exporters",
           "edgeoss.runtimes": ROOT / "runtimes"}
HELPERS = {"errors", "units", "atomic", "jsonfile", "progress", "plots"}
BELOW = {
    "helpers": set(),
    "formats": {"helpers"},
    "planner": {"helpers", "formats"},
    "exporters": {"helpers", "formats", "planner"},
    "runtimes": {"helpers", "formats", "planner"},
    "validate": {"helpers", "formats", "planner", "exporters", "runtimes"},
    "package": {"helpers", "formats", "planner", "exporters", "runtimes"},
    "top": {"helpers", "formats", "planner", "exporters", "runtimes", "validate", "package"},
}


def layer_of(module: str) -> str:
    """The layer of an edgeoss module name (edgeoss.formats.spec -> formats; edgeoss.cli.run -> top)."""
    parts = module.split(".")[1:]
    if not parts or parts[0] in ("cli", "demo", "__main__", "device_profiles"):
        return "top"
    if parts[0] in HELPERS:
        return "helpers"
    if parts[0] in BELOW:
        return parts[0]
    raise AssertionError(f"{module}: in no layer (add it to a layer package or to the helpers)")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "edgeoss" and parts and parts[0] in ("exporters", "runtimes"):
                continue
            found[".".join([package, *parts])] = path
    return found


def imports(module: str, path: Path) -> set[str]:
    """Absolute names of every edgeoss module `module` imports, lazily inside functions too."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[:len(up) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            # `from pkg import mod` imports a module; `from mod import name` a name of a module
            names |= {f"{base}.{a.name}" for a in node.names} | {base}
    return {n for n in names if n == "edgeoss" or n.startswith("edgeoss.")}


def resolve(name: str, known: set[str]) -> str | None:
    """The module an imported dotted name belongs to (the longest known prefix)."""
    parts = name.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


def test_every_import_points_down_or_sideways():
    table = modules()
    known = set(table)
    wrong = []
    for module, path in sorted(table.items()):
        mine = layer_of(module)
        for name in sorted(imports(module, path)):
            target = resolve(name, known)
            if target is None or target == module:
                continue
            theirs = layer_of(target)
            if theirs != mine and theirs not in BELOW[mine]:
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_every_module_is_in_a_layer():
    table = modules()
    assert len(table) > 60
    for module in table:
        layer_of(module)
    assert layer_of("edgeoss.formats.spec") == "formats" and layer_of("edgeoss.runtimes.llamacpp") == "runtimes"


@pytest.mark.parametrize("source, target", [
    ("edgeoss.formats.spec", "edgeoss.planner.plan"),
    ("edgeoss.planner.plan", "edgeoss.runtimes.trace"),
    ("edgeoss.runtimes.llamacpp", "edgeoss.exporters.gguf"),
    ("edgeoss.exporters.onnx", "edgeoss.runtimes.reference"),
    ("edgeoss.validate.parity", "edgeoss.package.build"),
])
def test_the_rule_catches_an_upward_import(source, target, tmp_path):
    """The checker itself: an injected upward or sideways import is reported."""
    layer, theirs = layer_of(source), layer_of(target)
    assert theirs != layer and theirs not in BELOW[layer]
    path = tmp_path / "m.py"
    path.write_text(f"def f():\n    from {target.rsplit('.', 1)[0]} import {target.rsplit('.', 1)[1]}\n")
    assert resolve(f"{target}", set(modules())) == target
    assert target in {resolve(n, set(modules())) for n in imports(source, path)}
