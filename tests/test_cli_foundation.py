"""The foundation's commands as a user runs them."""

import json

import pytest


def test_synth_then_inspect_json(tmp_path, cli):
    out = tmp_path / "t"
    cli("synth", out, "--preset", "tiny", check=True)
    report = json.loads(cli("inspect", out, "--json", check=True).stdout)
    assert report["layout"] == "hf" and report["validation"] == "ok"
    assert report["spec"]["num_local_experts"] == 8


def test_synth_original_layout(tmp_path, cli):
    out = tmp_path / "o"
    cli("synth", out, "--preset", "odd", "--layout", "original", "--seed", "3", check=True)
    report = json.loads(cli("inspect", out, "--json", check=True).stdout)
    assert report["layout"] == "original" and report["spec"]["num_hidden_layers"] == 3


@pytest.mark.parametrize("name, params, nbytes", [("20b", 20_914_757_184, 13_761_264_768),
                                                  ("120b", 116_829_156_672, 65_248_815_744)])
def test_inspect_presets_print_published_totals(name, params, nbytes, cli):
    report = json.loads(cli("inspect", "--preset", name, "--json", check=True).stdout)
    assert report["params"]["total"] == params and report["bytes"]["total"] == nbytes
    text = cli("inspect", "--preset", name, check=True).stdout
    assert f"{params:,}" in text and f"{nbytes:,}" in text


def test_bad_override_writes_nothing(tmp_path, cli):
    proc = cli("synth", tmp_path / "x", "--set", "num_experts_per_tok=99")
    assert proc.returncode == 2 and "experts_per_token (99) > num_experts (8)" in proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


def test_synth_refuses_to_overwrite(tmp_path, cli):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    proc = cli("synth", tmp_path / "x")
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_demo_runs_and_summarizes(tmp_path, cli):
    proc = cli("demo", "--workdir", tmp_path / "demo", check=True)
    assert "what was produced" in proc.stdout and "Next commands" in proc.stdout
    for step in ("plan", "export GGUF", "export ONNX", "parity vs original", "profile", "package + verify"):
        assert step in proc.stdout, step
    assert "UNEXPLAINED" not in proc.stdout
    work = tmp_path / "demo"
    assert (work / "checkpoint" / "config.json").exists() and (work / "model.gguf").exists()
    assert (work / "bundle-android" / "manifest.json").exists() and (work / "bundle-windows" / "manifest.json").exists()
    assert "[1/9]" in proc.stderr and "[9/9]" in proc.stderr  # progress at every step
