"""`edgeoss run` and `edgeoss logits` as a user runs them, and the generation loop they share."""

import json
import re

import numpy as np
import pytest

from edgeoss.errors import UsageError
from edgeoss.formats.harmony import STOP_TOKENS, CompletionParser, render_prompt
from edgeoss.runtimes.engine import all_logits
from edgeoss.runtimes.generate import Sampler, Sampling, generate
from edgeoss.runtimes.reference import ReferenceEngine
from edgeoss.formats.routing_trace import read_trace
from edgeoss.formats.tokenizer import encode, get_encoding

PROMPT = "What is the capital of France?"


def test_run_streams_and_reports_speed_and_cache(tiny_hf, tmp_path, cli):
    trace = tmp_path / "trace.npz"
    proc = cli("run", tiny_hf, "--prompt", PROMPT, "--max-new-tokens", "12", "--trace", trace, check=True)
    text = proc.stdout
    assert re.search(r"prefill\s+│ \d+ tokens in [\d.]+ s = [\d.]+ tok/s", text), text
    steps = int(re.search(r"decode\s+│ (\d+) steps in [\d.]+ s = [\d.]+ tok/s", text)[1])
    assert "harmony messages" in text and "expert cache" in text and "hit rate" in text
    prompt = render_prompt([("user", PROMPT)], reasoning="medium")
    assert f"prompt: {len(prompt)} tokens" in proc.stderr
    back = read_trace(trace)
    assert back.num_tokens == len(prompt) + steps and back.num_layers == 4 and back.top_k == 2
    np.testing.assert_array_equal(back.tokens[:len(prompt)], prompt)
    assert back.meta["prompt_tokens"] == len(prompt) and back.meta["sampling"]["seed"] == 0


def test_run_with_budget_and_plan(tiny_hf, tmp_path, cli):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"pinned": {"0": [0, 1]}}))
    proc = cli("run", tiny_hf, "--prompt", "hi", "--max-new-tokens", "4", "--temperature", "0",
               "--memory-budget", "40KiB", "--plan", plan, check=True)
    assert "budget 40.00 KiB" in proc.stdout and "pinned 2 (13.50 KiB)" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--memory-budget", "lots"], "error: bad size 'lots'"),
    (["--memory-budget", "1KiB"], "error: expert budget 1.00 KiB leaves less than one expert"),
    (["--temperature", "-1"], "error: temperature must be >= 0"),
    (["--engine", "warp"], "error: unknown engine 'warp'"),
    (["--engine", "llamacpp", "--trace", "t.npz"], "error: --trace: only the reference engine supports this"),
])
def test_run_errors_are_one_line(tiny_hf, cli, args, message):
    proc = cli("run", tiny_hf, "--prompt", "hi", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2


def test_logits_command_writes_engine_logits(tiny_hf, tmp_path, cli):
    out = tmp_path / "logits.npy"
    cli("logits", tiny_hf, "--engine", "reference", "--tokens", "1,2,3,200006", "--out", out, check=True)
    written = np.load(out)
    assert written.dtype == np.float32 and written.shape == (4, 201088)
    engine = ReferenceEngine(tiny_hf)
    assert np.array_equal(written, all_logits(engine, [1, 2, 3, 200006]))
    cli("logits", tiny_hf, "--text", "Hello, world!", "--out", out, "--chunk", "2", "--emulate", "llamacpp",
        check=True)
    assert np.load(out).shape == (len(encode("Hello, world!")), 201088)
    engine.close()


@pytest.mark.parametrize("args, message", [
    ([], "give exactly one of --tokens or --text"),
    (["--tokens", "1,x"], "expected comma-separated integers"),
    (["--tokens", "1,999999"], "token ids must lie in 0..201087"),
    (["--tokens", "1", "--emulate", "turbo"], "unknown emulation 'turbo'"),
])
def test_logits_errors(tiny_hf, tmp_path, cli, args, message):
    proc = cli("logits", tiny_hf, "--out", tmp_path / "x.npy", *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.npy").exists()


def test_stream_shows_channels_apart():
    from edgeoss.cli import _common
    from edgeoss.cli.run import _Stream

    completion = encode("<|channel|>analysis<|message|>Think it over.<|end|><|start|>assistant"
                        "<|channel|>final<|message|>Paris.<|return|>")
    stream = _Stream(CompletionParser(), get_encoding())
    with _common.out.capture() as captured:
        for token in completion:
            stream.token(token)
        stream.finish()
    shown = captured.get()
    assert shown.index("── analysis ──") < shown.index("Think it over.") < shown.index("── final ──") \
        < shown.index("Paris.")
    assert [m.channel for m in stream.parser.messages] == ["analysis", "final"]


# ---- generation over the Engine protocol -------------------------------------------------------------
def test_sampling_rules():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    assert Sampler(Sampling(temperature=0))(logits) == 0
    nucleus = Sampler(Sampling(top_p=0.7, seed=1))
    assert set(nucleus(logits) for _ in range(200)) == {0, 1}
    draws = [Sampler(Sampling(seed=s))(logits) for s in range(400)]
    assert 0.4 < draws.count(0) / 400 < 0.6 and 3 in draws
    assert [Sampler(Sampling(seed=7))(logits) for _ in range(3)] == [Sampler(Sampling(seed=7))(logits)] * 3
    with pytest.raises(UsageError):
        Sampling(top_p=0)


def test_greedy_generation_equals_argmax_of_full_forward(tiny_hf):
    engine = ReferenceEngine(tiny_hf)
    prompt = render_prompt([("user", PROMPT)], reasoning="low")
    seen = []
    result = generate(engine, prompt, 8, Sampling(temperature=0), STOP_TOKENS, on_token=seen.append)
    assert seen == result.tokens and result.decode_steps == len(result.tokens) - 1
    assert result.prefill_tokens_per_second > 0
    full = all_logits(engine, prompt + result.tokens[:-1])
    assert full[len(prompt) - 1:].argmax(-1).tolist() == result.tokens
    engine.close()
