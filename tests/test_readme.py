"""Every command the README shows in a bash block runs, in order, on the tiny model standing in for the real one."""

import re
import shutil
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_readme_shows_the_workflow():
    commands = readme_commands()
    assert all(c.startswith("edgeoss ") for c in commands), [c for c in commands if not c.startswith("edgeoss ")]
    for step in ("inspect", "plan", "export gguf", "export onnx", "parity", "profile", "package android",
                 "package windows", "package verify", "run"):
        assert any(c.startswith(f"edgeoss {step}") for c in commands), step
    assert "make demo" in README.read_text() and "make test" in README.read_text()


@pytest.mark.slow
def test_every_readme_command_runs(tiny_hf, tmp_path, cli, monkeypatch):
    shutil.copytree(tiny_hf, tmp_path / "gpt-oss-20b")  # the downloaded folder, in miniature
    monkeypatch.chdir(tmp_path)
    for command in readme_commands():
        args = [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', command)[1:]]
        proc = cli(*args)
        assert proc.returncode == 0, f"README command failed: {command}\n{proc.stderr[-2000:]}"
