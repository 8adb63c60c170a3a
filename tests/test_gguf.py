"""GGUF export: llama.cpp loads it and computes the model; bytes are exact, deterministic, layout-independent;
writes are atomic; splits and expert reordering keep the logits. Real llama.cpp, real files, no mocks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest

from edgeoss.formats import mxfp4
from edgeoss.formats.checkpoint import Checkpoint
from edgeoss.exporters.gguf import export_gguf
from edgeoss.formats.gguf_meta import missing_keys, spec_from_metadata
from edgeoss.formats.gguf_names import ARCH, REQUIRED_KEYS, expert_name, tensor_name
from edgeoss.runtimes.engine import all_logits
from edgeoss.formats.ggml_gguf import read_metadata
from edgeoss.runtimes.llamacpp import LlamaCppEngine, split_files
from edgeoss.formats.spec import tensor_table

POSITIONS = 260  # > 256, and past every sliding window
# A fixed sequence. These random-weight models are chaotic: wherever a value feeding a Q8_0 block lands within
# an ulp of a rounding tie, float32 summation order decides the rounding, and that one step moves later logits
# by 1e-3..1e-1. This sequence has no such tie on either preset: of seeds 0-11, seeds 4, 5 and 10 have none
# (max 3e-6 everywhere); each of the others kept a median of ~2e-6 but jumped at one position between 20 and
# 254 on one preset. So the exactness test can hold the 1e-3 bound at every position.
IDS = np.random.default_rng(4).integers(0, 200000, POSITIONS)
PRESETS = ["tiny", "odd"]


class Exports:
    """Each (checkpoint, options) exported once per module."""

    def __init__(self, root: Path, request):
        self.root, self.request, self.done = root, request, {}

    def get(self, preset: str, layout: str = "hf", **options) -> Path:
        key = (preset, layout, tuple(sorted((k, json.dumps(v)) for k, v in options.items())))
        if key not in self.done:
            out = self.root / f"{preset}-{layout}-{len(self.done)}.gguf"
            ckpt = self.request.getfixturevalue(f"{preset}_{layout}")
            self.done[key] = export_gguf(ckpt, out, progress=False, **options)[0]
        return self.done[key]


@pytest.fixture(scope="module")
def exports(tmp_path_factory, request) -> Exports:
    return Exports(tmp_path_factory.mktemp("gguf"), request)


def llama_logits(path: Path, tokens=IDS, **options) -> np.ndarray:
    engine = LlamaCppEngine(path, n_ctx=POSITIONS + 16, n_threads=2, **options)
    try:
        return all_logits(engine, list(tokens))
    finally:
        engine.close()


# ---- bytes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
def test_both_layouts_export_byte_identical_files(exports, preset):
    assert exports.get(preset, "hf").read_bytes() == exports.get(preset, "original").read_bytes()


def test_reexport_is_byte_identical(exports, tiny_hf, tmp_path):
    again = export_gguf(tiny_hf, tmp_path / "again.gguf", progress=False)[0]
    assert again.read_bytes() == exports.get("tiny").read_bytes()


@pytest.mark.parametrize("preset", PRESETS)
def test_metadata_is_complete_and_describes_the_model(exports, preset, request):
    spec = Checkpoint.open(request.getfixturevalue(f"{preset}_hf")).spec
    meta = read_metadata(exports.get(preset))
    assert missing_keys(meta.all_keys) == []
    assert meta["general.architecture"] == ARCH and meta["general.file_type"] == 38
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-4o"
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"],
            meta["tokenizer.ggml.padding_token_id"]) == (199998, 200002, 199999)
    assert meta.array_lengths["tokenizer.ggml.tokens"] == spec.vocab_size
    assert "<|start|>" in meta["tokenizer.chat_template"] and "<|channel|>" in meta["tokenizer.chat_template"]
    # everything the exporter knows comes back, except what llama.cpp cannot hold (it always rounds YaRN)
    assert spec_from_metadata(meta) == spec.replace(rope_truncate=True)


@pytest.mark.parametrize("preset", PRESETS)
def test_tensors_read_back_exactly(exports, preset, request):
    """gguf-py's reader: MXFP4 experts are the checkpoint's bytes repacked (gate/up de-interleaved), decode to the
    checkpoint's values; dense weights carry the bf16 bits; norms, sinks, biases and router are F32."""
    ckpt = Checkpoint.open(request.getfixturevalue(f"{preset}_hf"))
    tensors = {t.name: t for t in gguf.GGUFReader(exports.get(preset)).tensors}
    layer = ckpt.spec.num_hidden_layers - 1
    for projection, source, rows in (("gate", "gate_up", slice(0, None, 2)), ("up", "gate_up", slice(1, None, 2)),
                                     ("down", "down", slice(None))):
        t = tensors[expert_name(layer, projection, "weight")]
        blocks = ckpt.raw(f"layers.{layer}.{source}.blocks")[:, rows]
        scales = ckpt.raw(f"layers.{layer}.{source}.scales")[:, rows]
        assert t.tensor_type == gguf.GGMLQuantizationType.MXFP4
        assert np.array_equal(np.asarray(t.data), mxfp4.to_ggml(blocks, scales))
        assert np.array_equal(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type),
                              mxfp4.dequantize(blocks, scales))
        bias = tensors[expert_name(layer, projection, "bias")]
        assert np.array_equal(bias.data, ckpt.f32(f"layers.{layer}.{source}.bias")[:, rows])
    for info in tensor_table(ckpt.spec):
        if info.kind == "experts":
            continue
        name, storage = tensor_name(info.name)
        t = tensors[name]
        if storage == "f32":
            assert t.tensor_type == gguf.GGMLQuantizationType.F32 and np.array_equal(t.data, ckpt.f32(info.name))
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.BF16
            assert np.array_equal(np.asarray(t.data).view(np.uint16).reshape(info.shape), ckpt.raw(info.name))


# ---- what llama.cpp computes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("layout", ["hf", "original"])
def test_llamacpp_matches_the_reference_with_its_numerics_emulated(exports, preset, layout, request):
    """Exactness: with llama.cpp's own numerics reproduced (Q8_0 activations into MXFP4 matmuls, rounded YaRN
    range) and none added (F32 KV cache, flash attention off, dense weights in F32: bf16 weights make ggml
    round activations to bf16 too), llama.cpp on the GGUF equals the model to float32 noise."""
    reference = pytest.importorskip("edgeoss.runtimes.reference")
    ckpt = request.getfixturevalue(f"{preset}_{layout}")
    emulated = all_logits(reference.ReferenceEngine(ckpt, emulation=reference.Emulation(
        ggml_yarn_rounding=True, q8_activations=True)), list(IDS))
    logits = llama_logits(exports.get(preset, layout, dense_type="f32"))
    diff = float(np.abs(logits - emulated).max())
    print(f"{preset}/{layout}: max |llama.cpp - emulated reference| = {diff:.2e} over {POSITIONS} positions")
    assert diff <= 1e-3


def test_layer_pattern_other_than_the_default_reaches_llamacpp(tmp_path):
    """llama.cpp's default for gpt-oss is "even layers slide"; a model whose odd layers slide must say so in
    sliding_window_pattern, or positions past the window silently attend to the wrong keys."""
    from edgeoss.runtimes.reference import Emulation, ReferenceEngine
    from edgeoss.formats.spec import FULL, SLIDING, preset
    from edgeoss.formats.synth import synthesize

    spec = preset("tiny").replace(layer_types=(FULL, SLIDING, FULL, SLIDING))
    ckpt = synthesize(tmp_path / "flipped", spec, "hf", seed=0, progress=False)
    path = export_gguf(ckpt, tmp_path / "flipped.gguf", dense_type="f32", progress=False)[0]
    assert read_metadata(path)[f"{ARCH}.attention.sliding_window_pattern"] == [False, True, False, True]
    tokens = IDS[:40]  # five windows
    emulated = all_logits(ReferenceEngine(ckpt, emulation=Emulation(ggml_yarn_rounding=True, q8_activations=True)),
                          list(tokens))
    assert np.abs(llama_logits(path, tokens) - emulated).max() <= 1e-3


@pytest.mark.parametrize("preset", PRESETS)
def test_llamacpp_against_transformers(exports, preset, request):
    """Against the original model in fp32, on random weights. With a 201,088-token vocabulary the top-1/top-2
    logit gap of these random models is ~0.3 (median), so llama.cpp's Q8_0 activations and rounded YaRN range
    flip a few near-tied top-1s: measured 96.9 % on tiny here. Exactness is the
    emulated-reference test above; top-1 on a model that has learned text is the next test."""
    from edgeoss.validate.oracles import transformers_logits

    oracle = transformers_logits(request.getfixturevalue(f"{preset}_hf"), IDS)
    logits = llama_logits(exports.get(preset))
    diff = np.abs(logits - oracle).max(axis=1)
    top1 = float((logits.argmax(1) == oracle.argmax(1)).mean())
    print(f"{preset}: top-1 {top1:.3f}, max abs diff {diff.max():.3f} (median {np.median(diff):.3f}, "
          f"position 0 {diff[0]:.3f}), |logits| <= {np.abs(oracle).max():.1f}")
    assert diff[0] < 0.5  # position 0: no rotation, only activation rounding
    assert top1 >= 0.95


@pytest.mark.parametrize(("preset", "layout"), [("tiny", "hf"), ("odd", "original")])
def test_llamacpp_against_transformers_on_a_trained_model(trained, preset, layout, tmp_path):
    """Top-1 where it means what it means on a real model: the preset trained on the standard library's source
    (edgeoss.validate.trained), 1024 held-out positions in four windows of its 256-position training context, exported
    with the defaults (BF16 dense) from one layout; the llama.cpp-emulating reference reads the other. The
    deviation from the original is llama.cpp's own numerics: with them emulated the reference picks llama.cpp's
    token wherever its top two logits are not tied to within 0.01. Measured: top-1 99.22 % (tiny) and 99.51 %
    (odd), mean KL 6.8e-6 and 2.6e-6, emulated = llama.cpp at 100 % of positions on both."""
    from edgeoss.validate.oracles import TransformersOracle
    from edgeoss.validate.parity import Metrics, top2_gap
    from edgeoss.runtimes.reference import Emulation, ReferenceEngine
    from edgeoss.validate.trained import held_out_tokens, in_windows

    folders = trained(preset)
    other = "hf" if layout == "original" else "original"
    tokens = held_out_tokens(1024)
    path = export_gguf(folders[layout], tmp_path / "trained.gguf", progress=False)[0]
    engine = LlamaCppEngine(path, n_ctx=272, n_threads=2)
    try:
        logits = in_windows(lambda t: all_logits(engine, list(t)), tokens)
    finally:
        engine.close()
    oracle = TransformersOracle(folders["hf"])
    original = in_windows(oracle.logits, tokens)
    oracle.close()
    reference = ReferenceEngine(folders[other], emulation=Emulation.named(["llamacpp"]))
    emulated = in_windows(lambda t: all_logits(reference, list(t)), tokens)
    m = Metrics.between(original, logits)
    print(f"trained {preset}: top-1 {m.top1:.4f}, mean KL {m.mean_kl:.2e}, max abs diff {m.max_abs:.3f}")
    assert m.top1 >= 0.99
    assert m.mean_kl < 1e-3
    differ = emulated.argmax(1) != logits.argmax(1)
    assert (top2_gap(emulated[differ]) < 0.01).all()
    assert differ.mean() <= 0.005


def tensor_bytes(path: Path, names: list[str], experts: int) -> dict[str, np.ndarray]:
    """Tensors' bytes as [experts, -1] (offsets from ggml's own GGUF reader)."""
    where = read_metadata(path).tensor_bytes
    return {name: np.fromfile(path, dtype=np.uint8, count=where[name][1], offset=where[name][0]).reshape(experts, -1)
            for name in names}


def test_expert_permutation_keeps_the_logits(exports, tiny_hf):
    spec = Checkpoint.open(tiny_hf).spec
    rng = np.random.default_rng(3)
    order = {layer: rng.permutation(spec.num_local_experts).tolist() for layer in range(spec.num_hidden_layers)}
    plain, permuted = exports.get("tiny"), exports.get("tiny", expert_order=order)
    names = {layer: [expert_name(layer, p, s) for p in ("gate", "up", "down") for s in ("weight", "bias")] +
             [f"blk.{layer}.ffn_gate_inp.weight", f"blk.{layer}.ffn_gate_inp.bias"] for layer in order}
    every = [name for layer in order for name in names[layer]]
    before = tensor_bytes(plain, every, spec.num_local_experts)
    after = tensor_bytes(permuted, every, spec.num_local_experts)
    for layer, perm in order.items():
        for name in names[layer]:
            assert np.array_equal(after[name], before[name][perm]), name
    assert np.abs(llama_logits(permuted, IDS[:64]) - llama_logits(plain, IDS[:64])).max() <= 1e-5


def test_split_shards_load_and_give_the_same_logits(exports, tmp_path, odd_original):
    files = export_gguf(odd_original, tmp_path / "odd.gguf", split_max_size=2_000_000, progress=False)
    assert [f.name for f in files] == [f"odd-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    assert not (tmp_path / "odd.gguf").exists()
    first = read_metadata(files[0])
    assert (first["split.no"], first["split.count"], first["split.tensors.count"]) == (0, 3, len(
        read_metadata(exports.get("odd")).tensor_types))
    assert missing_keys(first.all_keys) == [] and read_metadata(files[2])["split.no"] == 2
    assert split_files(files[0], first["split.count"]) == files
    assert np.array_equal(llama_logits(files[0], IDS[:64]), llama_logits(exports.get("odd"), IDS[:64]))


# ---- the command and its failure modes -----------------------------------------------------------------------
def test_cli_export_with_plan_and_q8_dense(cli, tiny_original, tmp_path, exports):
    spec = Checkpoint.open(tiny_original).spec
    order = list(range(spec.num_local_experts))[::-1]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(_tiny_plan(spec, {"1": order})))
    out = tmp_path / "q8.gguf"
    proc = cli("export", "gguf", tiny_original, "-o", out, "--plan", plan, "--dense-type", "q8_0", check=True)
    assert proc.stdout.strip() == str(out)
    meta = read_metadata(out)
    assert meta.tensor_types["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert meta.tensor_types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    q8, bf16 = llama_logits(out, IDS[:64]), llama_logits(exports.get("tiny"), IDS[:64])
    assert (q8.argmax(1) == bf16.argmax(1)).mean() >= 0.6 and np.abs(q8 - bf16)[0].max() < 0.5


def _tiny_plan(spec, order: dict[str, list[int]]) -> dict:
    """A real plan for the tiny model whose experts.order is replaced by `order`."""
    from edgeoss.planner.plan import PlanRequest, make_plan
    from edgeoss.planner.profiles import load_profile

    plan = make_plan(PlanRequest(spec, load_profile("pixel-9-pro"), 64))
    plan["experts"]["order"] = order
    return plan


@pytest.mark.parametrize("plan, message", [
    ({"0": [0, 0, 1, 2, 3, 4, 5, 6]}, "not a permutation"),
    ({"9": list(range(8))}, "layer 9 is outside"),
    ("not json", "not valid JSON"),
])
def test_bad_plans_are_one_line_errors(cli, tiny_hf, tmp_path, plan, message):
    path = tmp_path / "plan.json"
    spec = Checkpoint.open(tiny_hf).spec
    path.write_text(plan if isinstance(plan, str) else json.dumps(_tiny_plan(spec, plan)))
    proc = cli("export", "gguf", tiny_hf, "-o", tmp_path / "x.gguf", "--plan", path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_nan_scale_byte_is_refused(cli, tiny_hf, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_hf, broken)
    path, offset, _ = Checkpoint.open(broken).byte_range("layers.2.down.scales", expert=5)
    with open(path, "r+b") as f:
        f.seek(offset + 7)
        f.write(b"\xff")
    proc = cli("export", "gguf", broken, "-o", tmp_path / "x.gguf")
    assert proc.returncode == 2 and "0xFF (NaN) in expert 5" in proc.stderr and "layers.2.down.scales" in proc.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_killed_export_leaves_the_previous_file_untouched(exports, tiny_hf, tmp_path):
    """SIGKILL while the file is being written: nothing (or the old file) at the output path, never half a file."""
    out = tmp_path / "model.gguf"
    out.write_bytes(exports.get("tiny").read_bytes())
    before = out.read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "edgeoss", "export", "gguf", str(tiny_hf), "-o", str(out),
                             "--dense-type", "f32"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(f".{out.name}.partial-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    partial = list(tmp_path.glob(f".{out.name}.partial-*"))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert partial, "the export never started writing"
    assert out.read_bytes() == before
    (tmp_path / "fresh").mkdir()
    fresh = tmp_path / "fresh" / "model.gguf"
    proc = subprocess.Popen([sys.executable, "-m", "edgeoss", "export", "gguf", str(tiny_hf), "-o", str(fresh)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not list(fresh.parent.glob(".model.gguf.partial-*")) and proc.poll() is None:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not fresh.exists()


def test_metadata_check_lists_every_required_key():
    assert missing_keys([]) == list(REQUIRED_KEYS)
    assert f"{ARCH}.expert_count" in REQUIRED_KEYS and "tokenizer.ggml.pre" in REQUIRED_KEYS
