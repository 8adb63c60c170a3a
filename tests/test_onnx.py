"""The ONNX exporter: MXFP4 experts as stored (the default), exact int8 experts, least-squares int4 experts, the graph
and its folder, determinism, atomicity, and int4 accuracy against onnxruntime-genai's own builder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeoss.formats import mxfp4
from edgeoss.exporters.onnx import export_onnx, export_info
from edgeoss.exporters.onnx_experts import ENCODINGS, MoeShape, QuantError, int4_values, to_int4, write_moe
from edgeoss.exporters.onnx_graph import ExternalData, Graph, value_info
from edgeoss.runtimes.onnxrt import qmoe_precision
from edgeoss.formats.spec import preset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_onnx(tiny_hf, tmp_path_factory) -> Path:
    return export_onnx(tiny_hf, tmp_path_factory.mktemp("onnx") / "tiny_mxfp4", progress=False).path


# ---- the encodings -------------------------------------------------------------------------------------------
def test_int8_mapping_reproduces_every_mxfp4_value_exactly():
    codes = np.tile(np.arange(16, dtype=np.uint8), 2)  # every code, in one 32-block
    scales = np.arange(0, 255, dtype=np.uint8)[:, None]  # every scale byte but NaN
    blocks = np.broadcast_to(mxfp4.pack_codes(codes), (255, 1, 16))
    q, s = mxfp4.to_int8(blocks, scales)
    assert q.dtype == np.uint8 and s.dtype == np.float32 and q.shape == (255, 32)
    decoded = (q.astype(np.float64) - 128).reshape(255, 32) * s.astype(np.float64)
    exact = mxfp4.FP4_VALUES[codes].astype(np.float64)[None, :] * np.ldexp(1.0, scales.astype(np.int64) - 127)
    assert np.array_equal(decoded, exact)  # as real numbers, for every scale byte (fp32 holds every scale)


def test_int4_scale_per_block_beats_max_scaling_and_reports_its_error():
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (256, 4, 16), dtype=np.uint8)
    scales = rng.integers(118, 136, (256, 4), dtype=np.uint8)
    error = QuantError()
    packed, s = to_int4(blocks, scales, error)
    assert packed.shape == (256, 64) and packed.dtype == np.uint8 and s.shape == (256, 4) and s.dtype == np.float32
    truth = mxfp4.dequantize(blocks, scales).astype(np.float64)
    ours = (int4_values(blocks, scales).astype(np.float64) - truth).reshape(256, 4, 32)
    # the usual recipe (the genai builder's): scale = the block's largest-magnitude value / -8
    grouped = truth.reshape(256, 4, 32)
    peak = np.take_along_axis(grouped, np.abs(grouped).argmax(-1)[..., None], -1)
    naive_scale = peak / -8
    naive = np.clip(np.rint(grouped / naive_scale), -8, 7) * naive_scale - grouped
    assert ((ours ** 2).sum(-1) <= (naive ** 2).sum(-1) * (1 + 1e-9) + 1e-30).all()  # block by block
    assert (ours ** 2).sum() < 0.9 * (naive ** 2).sum()
    measured = error.as_dict()
    assert measured["weights"] == truth.size
    assert measured["rms_error"] == pytest.approx(np.sqrt((ours ** 2).mean()), rel=1e-6)
    assert measured["max_abs_error"] == pytest.approx(np.abs(ours).max(), rel=1e-6)


@pytest.mark.parametrize("encoding", ["mxfp4", "int8", "int4"])
def test_qmoe_layer_computes_gpt_oss_moe_of_the_encoded_weights(encoding, tmp_path):
    """One QMoE node (ONNX Runtime CPU) against numpy: top-k softmax routing, clamped SwiGLU with (up + 1)."""
    import onnxruntime as ort

    e, h, i, k, limit = 4, 64, 32, 2, 7.0
    rng = np.random.default_rng(1)
    mx = lambda rows, cols: (rng.integers(0, 256, (e, rows, cols // 32, 16), dtype=np.uint8),  # noqa: E731
                             rng.integers(123, 127, (e, rows, cols // 32), dtype=np.uint8),
                             rng.normal(size=(e, rows)).astype(np.float32))
    experts = {"gate_up": mx(2 * i, h), "down": mx(h, i)}
    g = Graph()
    with open(tmp_path / "m.data", "wb") as f:
        y = write_moe(g, ExternalData(f, "m.data"), "l0", MoeShape(e, k, h, i, limit), ENCODINGS[encoding],
                      lambda proj, n: tuple(t[n] for t in experts[proj]), "x", "r", QuantError())
    g.op("Identity", y, outputs=["y"])
    g.save(tmp_path / "m.onnx", [value_info("x", 1, ["n", h]), value_info("r", 1, ["n", e])],
           [value_info("y", 1, ["n", h])], {"": 23, "com.microsoft": 1})
    with qmoe_precision(exact=encoding == "int8"):  # fp4 and int4 need no setting
        session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = rng.normal(size=(5, h)).astype(np.float32)
    r = rng.normal(size=(5, e)).astype(np.float32)
    got = session.run(None, {"x": x, "r": r})[0]

    def weights(proj: str, n: int) -> np.ndarray:
        blocks, scales, _ = experts[proj]
        q, s = ENCODINGS[encoding].encode(blocks[n], scales[n], QuantError())
        if encoding == "mxfp4":
            assert q is not None and np.array_equal(s, scales[n])  # the bytes as stored
            return mxfp4.dequantize(blocks[n], scales[n]).astype(np.float64)
        if encoding == "int8":
            return ((q.astype(np.float64) - 128).reshape(*s.shape, 32) * s[..., None]).reshape(q.shape)
        return int4_values(blocks[n], scales[n])

    want, clamped = np.zeros((5, h)), False
    for t in range(5):
        top = np.argsort(-r[t])[:k]
        w = np.exp(r[t, top] - r[t, top].max())
        for n, weight in zip(top, w / w.sum()):
            a = weights("gate_up", n) @ x[t] + experts["gate_up"][2][n]
            gate, up = np.minimum(a[0::2], limit), np.clip(a[1::2], -limit, limit)
            clamped |= bool((np.abs(a) > limit).any())
            act = gate * np.exp(-np.logaddexp(0, -1.702 * gate)) * (up + 1)  # gate * sigmoid(1.702 gate)
            want[t] += weight * (weights("down", n) @ act + experts["down"][2][n])
    assert clamped  # the SwiGLU limit was exercised
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


# ---- the folder and the graph --------------------------------------------------------------------------------
def test_folder_is_a_valid_genai_model(tiny_onnx):
    spec = preset("tiny")
    names = {p.name for p in tiny_onnx.iterdir()}
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json", "tokenizer_config.json",
            "edgeoss.json"} <= names
    onnx.checker.check_model(str(tiny_onnx / "model.onnx"))  # path form: works past 2 GB
    model = onnx.load(str(tiny_onnx / "model.onnx"), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.EXTERNAL or len(t.raw_data) < 64
               for t in model.graph.initializer)  # the proto holds references, not weights
    assert (tiny_onnx / "model.onnx").stat().st_size < 100_000
    ops = {n.op_type for n in model.graph.node}
    assert {"GroupQueryAttention", "QMoE", "RMSNormalization", "Gemm"} <= ops
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    for layer, node in enumerate(gqa):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["local_window_size"] == (spec.sliding_window if spec.is_sliding(layer) else -1)
        assert attrs.get("sliding_window_cache", 0) == int(spec.is_sliding(layer))
        assert attrs["do_rotary"] == 1 and node.input[11] == f"layers.{layer}.sinks"
    qmoe = [n for n in model.graph.node if n.op_type == "QMoE"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in qmoe[0].attribute}
    assert attrs["k"] == spec.num_experts_per_tok and attrs["normalize_routing_weights"] == 1
    assert attrs["swiglu_fusion"] == 1 and attrs["expert_weight_bits"] == 4 and attrs["block_size"] == 32
    assert attrs["quant_type"] == b"fp4" and attrs["weights_prepacked"] == 1
    scales = {t.name: t for t in model.graph.initializer}[qmoe[0].input[3]]
    assert scales.data_type == onnx.TensorProto.FLOAT8E8M0 and list(scales.dims) == [8, 128, 2]
    assert attrs["activation_alpha"] == pytest.approx(1.702) and attrs["swiglu_limit"] == spec.swiglu_limit

    config = json.loads((tiny_onnx / "genai_config.json").read_text())
    assert config["model"]["type"] == "gptoss"
    assert config["search"]["max_length"] == 4096
    assert config["model"]["decoder"]["sliding_window"]["window_size"] == spec.sliding_window
    assert config["model"]["decoder"]["sliding_window"]["layers"] == list(spec.sliding_layers)
    assert config["model"]["eos_token_id"] == [200002, 199999, 200012]  # from generation_config.json
    info = export_info(tiny_onnx)
    assert info["experts"] == "mxfp4" and info["exact"] is True


def test_genai_tokenizer_of_the_folder_is_o200k_harmony(tiny_onnx):
    import onnxruntime_genai as og

    from edgeoss.formats import tokenizer

    text = "<|start|>user<|message|>Hello, wörld! 1234 — naïve 日本語<|end|>"
    genai = og.Tokenizer(og.Model(str(tiny_onnx)))
    assert list(map(int, genai.encode(text))) == tokenizer.encode(text)
    assert genai.decode(genai.encode(text)) == text


def test_reexport_is_byte_identical(tiny_hf, tiny_onnx, tmp_path):
    again = export_onnx(tiny_hf, tmp_path / "again", progress=False).path
    files = sorted(p.name for p in tiny_onnx.iterdir())
    assert files == sorted(p.name for p in again.iterdir())
    for name in files:
        assert (tiny_onnx / name).read_bytes() == (again / name).read_bytes(), name


def test_both_checkpoint_layouts_export_the_same_model(tiny_original, tiny_onnx, tmp_path):
    other = export_onnx(tiny_original, tmp_path / "from_original", progress=False).path
    for name in ("model.onnx", "model.onnx.data", "tokenizer.json"):
        assert (tiny_onnx / name).read_bytes() == (other / name).read_bytes(), name


def test_cli_export_options_and_errors(tiny_hf, tmp_path, cli):
    out = tmp_path / "cli"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "edgeoss-plan", "context": 2048,
                                "engines": {"ortgenai": {"max_length": 1024}}}))
    done = cli("export", "onnx", tiny_hf, "-o", out, "--plan", plan, check=True)
    assert "exact" in done.stderr
    assert json.loads((out / "genai_config.json").read_text())["search"]["max_length"] == 1024
    again = cli("export", "onnx", tiny_hf, "-o", out)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    bad = cli("export", "onnx", tmp_path / "missing", "-o", tmp_path / "x")
    assert bad.returncode == 2 and "no such checkpoint" in bad.stderr
    too_long = cli("export", "onnx", tiny_hf, "-o", tmp_path / "y", "--max-length", "999999")
    assert too_long.returncode == 2 and "max-length" in too_long.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_killed_export_leaves_no_output(odd_hf, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "edgeoss", "export", "onnx", str(odd_hf), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".killed.partial") and (p / "model.onnx.data").exists()
                  for p in tmp_path.iterdir()):
        assert proc.poll() is None, "the export ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()


# ---- int4 accuracy: ours against onnxruntime-genai's builder ------------------------------------------------
def _errors(logits: np.ndarray, truth: np.ndarray) -> dict:
    def log_softmax(x):
        x = x.astype(np.float64)
        m = x.max(-1, keepdims=True)
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))

    p, q = log_softmax(truth), log_softmax(logits)
    return {"max_abs": float(np.abs(logits - truth).max()), "mean_kl": float((np.exp(p) * (p - q)).sum(-1).mean()),
            "top1": float((logits.argmax(-1) == truth.argmax(-1)).mean())}


@pytest.mark.slow
def test_int4_export_is_more_accurate_than_the_genai_builder(tiny_hf, tmp_path):
    from edgeoss.validate.oracles import transformers_logits
    from edgeoss.runtimes.onnxrt import OrtGenaiEngine

    ours = export_onnx(tiny_hf, tmp_path / "ours_int4", experts="int4", progress=False)
    builder = tmp_path / "builder_int4"
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(tiny_hf), "-o", str(builder),
                    "-p", "int4", "-e", "cpu", "-c", str(tmp_path / "cache")], check=True, capture_output=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    # the builder's folder has no edgeoss.json: lend it ours (same model, same I/O contract)
    (builder / "edgeoss.json").write_text((ours.path / "edgeoss.json").read_text())
    tokens = np.random.default_rng(3).integers(0, 199998, 96)
    truth = transformers_logits(tiny_hf, tokens)
    measured = {}
    for name, folder in (("edgeoss int4", ours.path), ("genai builder int4", builder)):
        engine = OrtGenaiEngine(folder, max_length=128)
        measured[name] = _errors(engine.prefill(tokens.tolist()), truth)
        engine.close()
    print("\nint4 vs fp32 original (tiny, 96 positions):", json.dumps(measured), "weights:",
          json.dumps(ours.weight_error))
    mine, theirs = measured["edgeoss int4"], measured["genai builder int4"]
    assert mine["mean_kl"] < theirs["mean_kl"] and mine["top1"] >= theirs["top1"]
    assert 0 < ours.weight_error["relative_rms_error"] < 0.1


# ---- compact: the checkpoint's own bytes --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", "odd"])
@pytest.mark.parametrize("dense", ["compact", "exact"])
def test_mxfp4_folder_holds_about_the_checkpoints_bytes(name, dense, request, tmp_path):
    """MXFP4 experts as stored; the attention as 4-bit digits (compact, the default) or the checkpoint's bf16
    (exact, widened by a Cast ONNX Runtime folds at load); the unembedding and embedding bf16; rope tables for
    max_length positions: model.onnx + its data within 1.1x the checkpoint's tensors."""
    from edgeoss.formats.checkpoint import Checkpoint

    source = request.getfixturevalue(f"{name}_hf")
    folder = export_onnx(source, tmp_path / name, progress=False, dense=dense).path
    model_files = sum(p.stat().st_size for p in folder.glob("model.onnx*"))
    with Checkpoint.open(source) as ckpt:
        assert model_files <= 1.1 * ckpt.nbytes
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types["unembed"] == types["embed"] == onnx.TensorProto.BFLOAT16 and types["norm"] == onnx.TensorProto.FLOAT
    assert types["layers.0.router.weight"] == onnx.TensorProto.BFLOAT16  # widened at load, like the unembedding
    nbits = {n.name for n in model.graph.node if n.op_type == "MatMulNBits"}
    if dense == "exact":
        assert types["layers.0.q.weight"] == types["layers.0.o.weight"] == onnx.TensorProto.BFLOAT16 and not nbits
    else:
        assert types["layers.0.q.digits"] == types["layers.0.o.digits"] == onnx.TensorProto.UINT8
        assert nbits == {f"layers.{i}.{m}" for i in range(preset(name).num_hidden_layers) for m in "qo"}
    assert export_info(folder)["dense"] == dense


def test_default_max_length_is_capped_at_the_models_limit(tmp_path):
    """A checkpoint with fewer positions than the default 4096 exports with its own limit, not an error."""
    from edgeoss.formats.synth import synthesize
    from edgeoss.runtimes.engine import load_engine

    spec = preset("tiny").replace(max_position_embeddings=1024)
    source = synthesize(tmp_path / "short", spec, "hf", seed=0, progress=False)
    folder = export_onnx(source, tmp_path / "onnx", progress=False).path
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["search"]["max_length"] == config["model"]["context_length"] == 1024
    assert export_info(folder)["max_length"] == 1024
    engine = load_engine("onnxruntime", folder)
    engine.position = 1024
    with pytest.raises(Exception, match="exported for \\(1024"):
        engine.step(1)


def test_a_matrix_too_large_for_one_folded_cast_is_split_in_row_blocks(tiny_hf, tmp_path, monkeypatch):
    """ONNX Runtime folds no Cast whose output exceeds 1 GiB (20b's unembedding is 2.3 GB as fp32): such a matrix
    is written as row blocks, each folded, their logits concatenated; same logits."""
    import edgeoss.exporters.onnx as exporter
    from edgeoss.runtimes.engine import all_logits, load_engine
    from edgeoss.validate.oracles import transformers_logits

    monkeypatch.setattr(exporter, "FOLD_LIMIT", 12 << 20)  # tiny's unembedding is 51 MB as fp32: 5 blocks
    folder = export_onnx(tiny_hf, tmp_path / "split", progress=False).path
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    blocks = [t for t in model.graph.initializer if t.name.startswith("unembed.")]
    assert len(blocks) == 5 and sum(t.dims[0] for t in blocks) == preset("tiny").vocab_size
    assert any(n.op_type == "Concat" and n.name.startswith("unembed") for n in model.graph.node)
    ids = np.random.default_rng(3).integers(0, 199998, 24).tolist()
    got = all_logits(load_engine("onnxruntime", folder), ids)
    assert np.abs(got - transformers_logits(tiny_hf, np.array(ids))).max() <= 1e-4
