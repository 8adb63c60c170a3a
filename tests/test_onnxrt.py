"""The ONNX engines (plain ONNX Runtime and onnxruntime-genai) on exported folders, against the original model
(transformers, fp32) and the reference runtime: prefill, then step by step with the KV cache, well past the
sliding window."""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgeoss.formats.checkpoint import Checkpoint
from edgeoss.errors import UsageError
from edgeoss.exporters.onnx import export_onnx
from edgeoss.validate.oracles import transformers_logits
from edgeoss.runtimes.engine import Engine, all_logits, load_engine
from edgeoss.runtimes.onnxrt import QMOE_PRECISION_ENV
from edgeoss.formats.spec import preset

TOLERANCE = 1e-4
PREFILL = 16


@pytest.fixture(scope="module")
def exports(tiny_hf, odd_hf, odd_original, tmp_path_factory) -> dict:
    """The default export (MXFP4 experts as stored): tiny from the HF layout, odd from both layouts."""
    root = tmp_path_factory.mktemp("onnxrt")
    return {name: (hf, export_onnx(source, root / name, progress=False).path)
            for name, hf, source in (("tiny", tiny_hf, tiny_hf), ("odd", odd_hf, odd_hf),
                                     ("odd-original", odd_hf, odd_original))}


@pytest.fixture(scope="module")
def int8_export(tiny_hf, tmp_path_factory) -> tuple:
    return tiny_hf, export_onnx(tiny_hf, tmp_path_factory.mktemp("onnxrt-int8") / "tiny", experts="int8",
                                progress=False).path


def _tokens(name: str, past_window: int = 256) -> list[int]:
    spec = preset(name)
    n = spec.sliding_window + past_window + PREFILL
    return np.random.default_rng(7).integers(0, 199998, n).tolist()


def _prefill_then_steps(engine: Engine, tokens: list[int]) -> np.ndarray:
    engine.reset()
    first = engine.prefill(tokens[:PREFILL])
    return np.concatenate([first, np.stack([engine.step(t) for t in tokens[PREFILL:]])])


@pytest.mark.parametrize("name", ["tiny", "odd", "odd-original"])
def test_mxfp4_onnxruntime_matches_original_and_reference_with_no_setting(exports, name, monkeypatch):
    """QMoE fp4 over the checkpoint's own bytes: within 1e-4 of transformers fp32, and the session is created
    without ORT_QMOE_CPU_QNBIT_GEMM (that setting is for int8 experts only)."""
    import edgeoss.runtimes.onnxrt as onnxrt

    hf, folder = exports[name]
    asked = []
    real = onnxrt.qmoe_precision
    monkeypatch.setattr(onnxrt, "qmoe_precision", lambda exact: asked.append(exact) or real(exact))
    engine = load_engine("onnxruntime", folder)
    assert asked == [False] and engine.manifest["experts"] == "mxfp4"
    tokens = _tokens(name.split("-")[0])
    got = _prefill_then_steps(engine, tokens)
    assert np.abs(got - transformers_logits(hf, np.array(tokens))).max() <= TOLERANCE
    engine.close()


def test_int8_onnxruntime_matches_original_and_reference(int8_export):
    hf, folder = int8_export
    name = "tiny"
    tokens = _tokens(name)
    engine = load_engine("onnxruntime", folder)
    assert isinstance(engine, Engine) and engine.spec == Checkpoint.open(hf).spec
    got = _prefill_then_steps(engine, tokens)
    assert got.shape == (len(tokens), preset(name).vocab_size)
    assert np.abs(got - transformers_logits(hf, np.array(tokens))).max() <= TOLERANCE
    assert np.abs(got - all_logits(load_engine("reference", hf), tokens)).max() <= TOLERANCE
    assert engine.stats()["position"] == len(tokens)
    # one batch from a fresh sequence = the same logits
    assert np.abs(all_logits(engine, tokens[:40]) - got[:40]).max() <= TOLERANCE
    engine.close()


def test_ortgenai_greedy_generation_matches_reference(exports):
    """onnxruntime-genai's own greedy search over the folder = the reference runtime's argmax, step by step, and
    transformers' argmax at every position of the generated sequence."""
    import onnxruntime_genai as og

    hf, folder = exports["odd"]
    prompt, new_tokens = _tokens("odd")[:24], 48  # past the window of 5 many times
    reference = load_engine("reference", hf)
    expected, logits = [], reference.prefill(prompt)[-1]
    for _ in range(new_tokens):
        expected.append(int(logits.argmax()))
        logits = reference.step(expected[-1])

    engine = load_engine("ortgenai", folder)  # og.Model created with exact QMoE activations
    params = og.GeneratorParams(engine.model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + new_tokens, batch_size=1)
    generator = og.Generator(engine.model, params)
    generator.append_tokens(np.array(prompt, np.int32))
    generated = []
    while not generator.is_done():
        generator.generate_next_token()
        generated.append(int(generator.get_next_tokens()[0]))
    assert generated == expected
    original = transformers_logits(hf, np.array(prompt + generated[:-1]))[len(prompt) - 1:]
    assert original.argmax(axis=-1).tolist() == generated
    engine.close()


def test_ortgenai_engine_chunked_prefill_and_steps(exports):
    hf, folder = exports["tiny"]
    tokens = _tokens("tiny", past_window=24)
    engine = load_engine("ortgenai", folder, max_length=64)
    engine.reset()
    parts = [engine.prefill(tokens[:7]), engine.step(tokens[7])[None], engine.prefill(tokens[8:20])]
    parts += [engine.step(t)[None] for t in tokens[20:]]
    got = np.concatenate(parts)
    assert np.abs(got - transformers_logits(hf, np.array(tokens))).max() <= TOLERANCE
    with pytest.raises(UsageError, match="max_length"):
        engine.prefill([0] * (64 - len(tokens) + 1))  # one token more than the KV cache was sized for
    engine.close()


def test_fast_int8_activations_are_a_stated_trade_off(int8_export):
    """exact=False leaves ONNX Runtime's int8-activation QMoE: different logits; the environment is restored."""
    hf, folder = int8_export
    tokens = _tokens("tiny", past_window=8)
    os.environ.pop(QMOE_PRECISION_ENV, None)
    exact = load_engine("onnxruntime", folder, exact=True)
    fast = load_engine("onnxruntime", folder, exact=False)
    assert QMOE_PRECISION_ENV not in os.environ
    truth = transformers_logits(hf, np.array(tokens))
    assert np.abs(exact.prefill(tokens) - truth).max() <= TOLERANCE
    assert np.abs(fast.prefill(tokens) - truth).max() > 10 * TOLERANCE
    assert fast.stats()["exact"] is False


def test_engines_refuse_what_they_cannot_run(tiny_hf, exports):
    with pytest.raises(UsageError, match="edgeoss.json"):
        load_engine("onnxruntime", tiny_hf)  # a checkpoint folder, not an export
    engine = load_engine("onnxruntime", exports["tiny"][1])
    engine.position = preset("tiny").max_position_embeddings
    with pytest.raises(UsageError, match="context"):
        engine.step(1)
