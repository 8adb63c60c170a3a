"""The llama.cpp engine adapter: the Engine protocol over llama-cpp-python, its loader settings (repack, tensor
placement overrides), and refusing files that would make llama.cpp abort the process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

from edgeoss.formats.checkpoint import Checkpoint
from edgeoss.errors import EdgeossError, UsageError
from edgeoss.exporters.gguf import export_gguf
from edgeoss.runtimes.engine import Engine, all_logits, load_engine
from edgeoss.runtimes.llamacpp import LlamaCppEngine, LlamaCppError, cpu_moe_patterns

IDS = np.random.default_rng(5).integers(0, 200000, 40).tolist()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_hf) -> Path:
    return export_gguf(tiny_hf, tmp_path_factory.mktemp("llamacpp") / "tiny.gguf", progress=False)[0]


@pytest.fixture(scope="module")
def engine(tiny_gguf):
    e = load_engine("llamacpp", tiny_gguf, n_ctx=64, n_threads=2)
    yield e
    e.close()


def test_engine_protocol_and_spec(engine, tiny_hf):
    assert isinstance(engine, Engine) and engine.name == "llamacpp"
    assert engine.spec == Checkpoint.open(tiny_hf).spec.replace(rope_truncate=True)  # llama.cpp rounds YaRN


def test_prefill_in_chunks_and_step_by_step_agree(engine):
    whole = all_logits(engine, IDS)
    assert whole.shape == (len(IDS), engine.spec.vocab_size) and whole.dtype == np.float32
    chunked = all_logits(engine, IDS, chunk=7)
    engine.reset()
    stepped = np.stack([engine.step(t) for t in IDS])
    assert np.abs(chunked - whole).max() <= 1e-5
    # one token at a time takes ggml's vector kernels instead of its batched ones: equal until the first Q8_0
    # rounding tie that the two summation orders decide differently (these random models amplify it to ~1e-1)
    assert np.abs(stepped - whole)[:8].max() <= 1e-4
    assert (stepped.argmax(1) == whole.argmax(1)).mean() >= 0.75
    assert np.array_equal(all_logits(engine, IDS), whole)  # reset forgets the sequence
    stats = engine.stats()
    assert stats["position"] == len(IDS) and stats["load_s"] > 0 and stats["step_calls"] == len(IDS)
    assert stats["f32_kv"] is True and stats["flash_attn"] is False


def test_logits_command_runs_the_gguf_in_llamacpp(cli, engine, tiny_gguf, tmp_path):
    out = tmp_path / "logits.npy"
    cli("logits", tiny_gguf, "--engine", "llamacpp", "--tokens", ",".join(map(str, IDS[:12])), "--out", out,
        check=True)
    assert np.abs(np.load(out) - all_logits(engine, IDS[:12])).max() <= 1e-5


def test_context_overflow_is_an_error(engine):
    engine.reset()
    with pytest.raises(LlamaCppError, match="exceeds the context of 64"):
        engine.prefill(list(range(65)))


def test_no_repack_and_expert_overrides_keep_the_logits(engine, tiny_gguf):
    expected = all_logits(engine, IDS)
    other = LlamaCppEngine(tiny_gguf, n_ctx=64, n_threads=2, repack=False, cpu_moe_layers=2,
                           tensor_overrides={r"blk\.3\.ffn_down_exps": "CPU"})
    try:
        assert np.abs(all_logits(other, IDS) - expected).max() <= 1e-5
        assert other.stats()["repack"] is False and len(other.stats()["overrides"]) == 2
    finally:
        other.close()


def test_overrides_reach_the_loader(tiny_gguf):
    """llama.cpp logs every tensor an override places (run in a child: verbose logs go to its stderr)."""
    code = (f"from edgeoss.runtimes.llamacpp import LlamaCppEngine; "
            f"LlamaCppEngine(__import__('pathlib').Path({str(tiny_gguf)!r}), n_ctx=32, cpu_moe_layers=[1], "
            f"verbose=True).close()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    placed = {line.split("tensor ")[1].split(" ")[0] for line in proc.stderr.splitlines()
              if "buffer type overridden" in line}
    assert placed == {f"blk.1.ffn_{p}_exps.{s}" for p in ("gate", "up", "down") for s in ("weight", "bias")}


def test_cpu_moe_patterns():
    assert cpu_moe_patterns(None, 24) == {}
    assert cpu_moe_patterns(2, 24) == {r"blk\.(0|1)\.ffn_(up|down|gate|gate_up)_(ch|)exps": "CPU"}
    assert cpu_moe_patterns([5, 3], 24) == {r"blk\.(3|5)\.ffn_(up|down|gate|gate_up)_(ch|)exps": "CPU"}
    with pytest.raises(UsageError):
        cpu_moe_patterns([30], 24)


def test_unknown_buffer_type_is_a_usage_error(tiny_gguf):
    with pytest.raises(UsageError, match="NOPE"):
        LlamaCppEngine(tiny_gguf, n_ctx=32, tensor_overrides={"exps": "NOPE"})


def test_files_llamacpp_would_abort_on_are_refused(tmp_path):
    """A gpt-oss GGUF without expert_count makes llama.cpp abort (SIGABRT); the adapter refuses it first.
    Run in a child process so that a regression cannot take the test run down with it."""
    bad = tmp_path / "no_experts.gguf"
    w = gguf.GGUFWriter(bad, "gpt-oss")
    w.add_block_count(1)
    w.add_embedding_length(64)
    w.add_expert_used_count(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("hello")
    code = ("import sys; from pathlib import Path; from edgeoss.runtimes.llamacpp import LlamaCppEngine\n"
            "try:\n    LlamaCppEngine(Path(sys.argv[1]))\nexcept Exception as e:\n"
            "    print(type(e).__name__, e); sys.exit(3)")
    for path, message in ((bad, "lacks gpt-oss.expert_count"), (not_gguf, "not a readable GGUF")):
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 3 and message in proc.stdout, (proc.returncode, proc.stdout, proc.stderr[-500:])


def test_missing_file_is_a_usage_error(tmp_path):
    with pytest.raises(EdgeossError, match="no such GGUF file"):
        LlamaCppEngine(tmp_path / "absent.gguf")
