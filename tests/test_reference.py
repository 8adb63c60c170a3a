"""The reference runtime: parity with the original model (transformers and OpenAI's gpt_oss, fp32), its KV
cache, its rope, its kernels, its emulation switches and its routing traces."""

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest

from edgeoss.formats import mxfp4
from edgeoss.errors import UsageError
from edgeoss.validate.oracles import gpt_oss_logits, transformers_logits
from edgeoss.runtimes import kernels
from edgeoss.runtimes.engine import Engine, all_logits, load_engine
from edgeoss.runtimes.experts import dense_experts
from edgeoss.runtimes.reference import Emulation, ReferenceEngine
from edgeoss.formats.spec import correction_range
from edgeoss.formats.rope import yarn_rope
from edgeoss.formats.routing_trace import read_trace, write_trace
from edgeoss.formats.spec import preset

PARITY_POSITIONS = 320  # > 300, and far past both presets' sliding windows (8 and 5)


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 201088, size=PARITY_POSITIONS)


@pytest.fixture(scope="module")
def tiny_engine(tiny_hf):
    engine = ReferenceEngine(tiny_hf)
    yield engine
    engine.close()


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


# ---- parity with the original model -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_matches_transformers_and_gpt_oss_in_fp32(request, name, tokens):
    hf, original = request.getfixturevalue(f"{name}_hf"), request.getfixturevalue(f"{name}_original")
    with_hf, with_original = load_engine("reference", hf), load_engine("reference", original)
    ours = all_logits(with_hf, tokens)
    assert np.array_equal(ours, all_logits(with_original, tokens)), "both layouts must give the same logits"
    with_hf.close(), with_original.close()
    assert ours.shape == (PARITY_POSITIONS, 201088) and ours.dtype == np.float32
    assert _max_diff(ours, transformers_logits(hf, tokens)) <= 1e-4
    assert _max_diff(ours, gpt_oss_logits(original, tokens)) <= 1e-4


@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_decode_and_chunked_prefill_equal_one_full_forward(request, name, tokens):
    engine = ReferenceEngine(request.getfixturevalue(f"{name}_hf"))
    assert isinstance(engine, Engine)
    seq = tokens[:160]
    full = all_logits(engine, seq)
    engine.reset()
    stepped = np.concatenate([engine.prefill(seq[:100])] + [engine.step(int(t))[None] for t in seq[100:]])
    assert _max_diff(stepped, full) <= 1e-5
    # stronger than required: the kernels make a token's arithmetic independent of its batch
    assert np.array_equal(stepped, full)
    engine.reset()
    cuts = np.cumsum([1, 7, 3, 30, 2, 50, 20])
    chunked = np.concatenate([engine.prefill(part) for part in np.split(seq, cuts)])
    assert np.array_equal(chunked, full)
    engine.close()


def test_sliding_window_really_masks(tiny_hf, tokens):
    """Positions before the window see every key; later ones must not, so a wider window changes them."""
    engine = ReferenceEngine(tiny_hf)
    base = all_logits(engine, tokens[:20])
    window = engine.spec.sliding_window
    engine.layers = [dataclasses.replace(layer, window=layer.window and 1000) for layer in engine.layers]
    wide = all_logits(engine, tokens[:20])
    assert np.array_equal(base[:window], wide[:window])
    assert _max_diff(base[window:], wide[window:]) > 1e-3
    engine.close()


def test_bad_tokens_are_one_line_errors(tiny_engine):
    tiny_engine.reset()
    with pytest.raises(UsageError, match="token ids must lie in 0..201087"):
        tiny_engine.prefill([5, 201088])


# ---- rope -------------------------------------------------------------------------------------------------
def test_yarn_range_on_20b_and_ggml_rounding():
    spec = preset("20b")
    low, high = correction_range(spec, truncate=False)
    assert low == pytest.approx(8.0928, abs=1e-4) and high == pytest.approx(17.3980, abs=1e-4)
    assert correction_range(spec, truncate=True) == (8, 18)
    exact, ggml = yarn_rope(spec), yarn_rope(spec, ggml_rounding=True)
    # pairs below low extrapolate and above high interpolate in both; in between they differ
    freq = 150000.0 ** (np.arange(32) * 2 / 64)
    ramp = np.clip((np.arange(32) - 8) / (18 - 8), 0, 1)
    expected = 1 / (32 * freq) * ramp + 1 / freq * (1 - ramp)
    np.testing.assert_allclose(ggml.inv_freq, expected, rtol=1e-6)
    np.testing.assert_array_equal(exact.inv_freq[:9], ggml.inv_freq[:9])
    np.testing.assert_array_equal(exact.inv_freq[18:], ggml.inv_freq[18:])
    assert np.all(exact.inv_freq[9:18] != ggml.inv_freq[9:18])
    # a config that asks for truncation gets it without the switch
    np.testing.assert_array_equal(yarn_rope(spec.replace(rope_truncate=True)).inv_freq, ggml.inv_freq)
    assert exact.concentration == ggml.concentration == pytest.approx(0.1 * math.log(32) + 1)


@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_rope_matches_transformers(name):
    import torch
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding

    from edgeoss.formats.spec import to_hf_config

    spec = preset(name)
    theirs = GptOssRotaryEmbedding(GptOssConfig(**to_hf_config(spec)))
    ours = yarn_rope(spec)
    # torch's float32 pow is off by an ulp for a few frequencies; ours is correctly rounded
    np.testing.assert_allclose(ours.inv_freq, theirs.inv_freq.numpy(), rtol=1.2e-7, atol=0)
    assert ours.concentration == theirs.attention_scaling
    cos, sin = theirs(torch.zeros(1), torch.arange(64)[None])
    our_cos, our_sin = ours.cos_sin(np.arange(64))
    np.testing.assert_allclose(our_cos, cos[0].numpy(), atol=2e-6)
    np.testing.assert_allclose(our_sin, sin[0].numpy(), atol=2e-6)


# ---- kernels ----------------------------------------------------------------------------------------------
def _random_mxfp4(rng, rows, width):
    blocks = rng.integers(0, 256, size=(rows, width // 32, 16), dtype=np.uint8)
    scales = rng.integers(118, 126, size=(rows, width // 32), dtype=np.uint8)
    scales[0, 0], scales[1, 0] = 0, 1  # subnormal and smallest scales
    blocks[2] = np.arange(256, dtype=np.uint8).reshape(-1, 16)[: width // 32]  # every byte value
    return blocks, scales


@pytest.mark.parametrize("rows, width", [(40, 64), (4100, 288)])  # 4100 x 288 runs threaded
def test_mxfp4_matmul_is_dequantize_then_matmul(rows, width):
    rng = np.random.default_rng(0)
    blocks, scales = _random_mxfp4(rng, rows, width)
    x = rng.standard_normal((5, width), dtype=np.float32)
    exact = x.astype(np.float64) @ mxfp4.dequantize(blocks, scales).astype(np.float64).T
    y = kernels.mxfp4_matmul(x, blocks, scales)
    np.testing.assert_allclose(y, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())
    # a token's result does not depend on its batch, nor on threading
    singles = np.concatenate([kernels.mxfp4_matmul(x[i:i + 1], blocks, scales) for i in range(5)])
    assert np.array_equal(y, singles)
    xe, xo = np.ascontiguousarray(x[:, 0::2]), np.ascontiguousarray(x[:, 1::2])
    serial, parallel = np.empty_like(y), np.empty_like(y)
    kernels._MXFP4_MATMUL[0](xe, xo, blocks, scales, serial)
    kernels._MXFP4_MATMUL[1](xe, xo, blocks, scales, parallel)
    assert np.array_equal(serial, parallel)


def test_portable_mxfp4_row_dot_on_any_cpu():
    """The loop used where AVX-512 is missing (this machine may use the vpermps one in mxfp4_matmul)."""
    import numba

    @numba.njit
    def matvec(x_even, x_odd, blocks, scales):
        lanes = np.empty(16, dtype=np.float32)
        return np.array([kernels._mxfp4_row_dot_portable(blocks[r], scales[r], x_even, x_odd, lanes)
                         for r in range(len(blocks))])

    rng = np.random.default_rng(1)
    blocks, scales = _random_mxfp4(rng, 64, 96)
    x = rng.standard_normal(96, dtype=np.float32)
    exact = mxfp4.dequantize(blocks, scales).astype(np.float64) @ x.astype(np.float64)
    y = matvec(np.ascontiguousarray(x[0::2]), np.ascontiguousarray(x[1::2]), blocks, scales)
    np.testing.assert_allclose(y, exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())


def test_bf16_matmul_reads_bits_exactly():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((300, 96), dtype=np.float32)
    bits = (weight.view(np.uint32) >> 16).astype(np.uint16)
    x = rng.standard_normal((4, 96), dtype=np.float32)
    exact = x.astype(np.float64) @ (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64).T
    y = kernels.bf16_matmul(x, bits)
    np.testing.assert_allclose(y, exact, rtol=1e-5, atol=1e-5)
    assert np.array_equal(y, np.concatenate([kernels.bf16_matmul(x[i:i + 1], bits) for i in range(4)]))
    serial, parallel = np.empty_like(y), np.empty_like(y)
    kernels._BF16_MATMUL[0](x, bits, serial), kernels._BF16_MATMUL[1](x, bits, parallel)
    assert np.array_equal(serial, parallel)


def test_q8_0_roundtrip_matches_ggml_rules():
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    x = np.random.default_rng(0).standard_normal((64, 128), dtype=np.float32) * 3
    x[0, :32] = 0  # an all-zero block
    ours = kernels.q8_0_roundtrip(x)
    theirs = dequantize(quantize(x, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
    assert np.all(ours[0, :32] == 0)
    # gguf-py divides and rounds half away from zero; ggml's SIMD path (ours) multiplies by 127/amax and
    # rounds half to even: the two may differ by one step on rare elements
    step = np.abs(x).reshape(64, 4, 32).max(axis=-1, keepdims=True) / 127
    differ = ours != theirs
    assert differ.mean() < 1e-3
    assert np.all(np.abs(ours - theirs).reshape(64, 4, 32) <= 1.01 * step)
    # every value lies on its block's grid q * d with |q| <= 127, d = f16(amax / 127)
    d = step.astype(np.float16).astype(np.float32)
    q = ours.reshape(64, 4, 32) / np.where(d > 0, d, 1)
    assert np.all(np.abs(q - np.rint(q)) < 1e-3) and np.abs(q).max() <= 127


def test_threaded_kernels_really_run_threads_when_loaded_from_numba_cache():
    """numba keys its on-disk cache by qualified name, not by options: a parallel variant sharing the serial
    one's name once loaded the serial machine code and ran on one thread. A fresh process (cache warm from
    this one) must start numba's thread pool when it calls a threaded kernel."""
    kernels.warm_up()  # writes the cache
    code = ("import numpy as np, numba; from edgeoss.runtimes import kernels; kernels.warm_up(); "
            "x = np.zeros((1, 32), np.float32); b = np.zeros((64, 32), np.uint16); b.setflags(write=False); "
            "kernels._BF16_MATMUL[1](x, b, np.empty((1, 64), np.float32)); print(numba.threading_layer())")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-500:]
    assert kernels._MXFP4_MATMUL[0].py_func.__qualname__ != kernels._MXFP4_MATMUL[1].py_func.__qualname__


# ---- emulation switches --------------------------------------------------------------------------------
def test_emulations_change_what_they_should(tiny_hf, tiny_engine, tokens):
    seq = tokens[:40]
    exact = all_logits(tiny_engine, seq)
    rounding = ReferenceEngine(tiny_hf, emulation=Emulation(ggml_yarn_rounding=True))
    rounded = all_logits(rounding, seq)
    assert np.array_equal(rounding.rope.inv_freq, yarn_rope(rounding.spec, ggml_rounding=True).inv_freq)
    assert np.array_equal(rounded[0], exact[0])  # position 0 does not rotate
    assert _max_diff(rounded[1:], exact[1:]) > 1e-5
    q8 = ReferenceEngine(tiny_hf, emulation={"q8_activations": True})  # fields as a dict work too
    assert q8.emulation == Emulation(q8_activations=True)
    quantized = all_logits(q8, seq)
    assert 1e-5 < _max_diff(quantized, exact) < 0.5
    assert (quantized.argmax(-1) == exact.argmax(-1)).mean() >= 0.9
    dense = ReferenceEngine(tiny_hf, emulation=Emulation(expert_transform=dense_experts))
    assert _max_diff(all_logits(dense, seq), exact) <= 1e-5
    for engine in (rounding, q8, dense):
        engine.close()


def test_bf16_activation_emulation_rounds_dense_inputs_only(tiny_hf, tokens):
    plain = load_engine("reference", tiny_hf)
    rounded = load_engine("reference", tiny_hf, emulation={"bf16_activations": True})
    a, b = all_logits(plain, tokens[:40]), all_logits(rounded, tokens[:40])
    assert 0 < np.abs(a - b).max() < 0.5
    assert not rounded.layers[0].router.bf16_input and rounded.layers[0].q.bf16_input


def test_emulation_names():
    assert Emulation.named(["llamacpp"]) == Emulation(ggml_yarn_rounding=True, ggml_rope_angles=True,
                                                      q8_activations=True, bf16_activations=True)
    assert Emulation.named(["q8_activations"]) == Emulation(q8_activations=True)
    with pytest.raises(UsageError, match="unknown emulation 'fast'"):
        Emulation.named(["fast"])


# ---- routing traces ------------------------------------------------------------------------------------
def test_trace_records_every_token_and_round_trips(tiny_hf, tokens, tmp_path):
    engine = ReferenceEngine(tiny_hf, trace=True)
    engine.prefill(tokens[:12])
    for t in tokens[12:15]:
        engine.step(int(t))
    engine.reset()
    engine.prefill(tokens[:4])
    trace = engine.routing_trace()
    spec = engine.spec
    assert trace.experts.shape == (19, spec.num_hidden_layers, spec.num_experts_per_tok)
    assert trace.experts.dtype == np.int16 and trace.weights.dtype == np.float32
    np.testing.assert_array_equal(trace.positions, [*range(15), *range(4)])
    np.testing.assert_array_equal(trace.tokens, [*tokens[:15], *tokens[:4]])
    np.testing.assert_allclose(trace.weights.sum(-1), 1, rtol=1e-6)
    assert np.all(np.diff(trace.weights, axis=-1) <= 0), "highest router logit first"
    # the same prompt routes the same way in both sequences
    np.testing.assert_array_equal(trace.experts[:4], trace.experts[15:])
    assert trace.counts().sum(axis=1).tolist() == [19 * spec.num_experts_per_tok] * spec.num_hidden_layers
    back = read_trace(write_trace(tmp_path / "trace.npz", trace))
    for name in ("experts", "weights", "positions", "tokens"):
        assert np.array_equal(getattr(back, name), getattr(trace, name))
        assert getattr(back, name).dtype == getattr(trace, name).dtype
    assert back.num_experts == spec.num_local_experts
    assert back.meta["model"] == spec.name and back.meta["spec"]["hidden_size"] == spec.hidden_size
    engine.close()


def test_read_trace_rejects_other_files(tmp_path):
    np.savez(tmp_path / "other.npz", experts=np.zeros((1, 1, 1)))
    with pytest.raises(UsageError, match="not an edgeoss routing trace"):
        read_trace(tmp_path / "other.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(UsageError, match="not a readable .npz"):
        read_trace(tmp_path / "text.npz")


def test_the_kv_cache_holds_only_the_cells_written():
    """A full layer's cache is allocated for the model's 131,072 positions up front (no doubling copies), lazily:
    only written cells become resident (np.zeros maps zero pages; np.zeros_like would write every one, 3 GiB at
    20b's shapes)."""
    from runtimes.reference import LayerCache

    def anonymous() -> int:
        text = open("/proc/self/smaps_rollup").read()
        return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("Anonymous:")) * 1024

    before = anonymous()
    caches = [LayerCache(8, 64, None, 131072) for _ in range(12)]  # 20b's full layers: 6 GiB if written
    for c in caches:
        c.attend_over(np.ones((4, 8, 64), np.float32), np.ones((4, 8, 64), np.float32), np.arange(4))
    assert anonymous() - before < 256 << 20
    assert caches[0].length == 4 and np.array_equal(caches[0].attend_over(
        np.zeros((1, 8, 64), np.float32), np.zeros((1, 8, 64), np.float32), np.arange(4, 5))[2], np.arange(5))
