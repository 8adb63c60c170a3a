"""Checkpoints with BF16 experts (issue 19): fine-tunes and dequantized copies, written here by transformers itself
from the tiny MXFP4 checkpoint. edgeoss reads and validates them, quantizes the experts to MXFP4 on export
(GGUF, ONNX) and in `convert`, carries a checkpoint's own chat template, and reports parity against the BF16 model
with the quantization attributed; the reference runtime refuses them in one line (it needs MXFP4)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import rewrite_header, run_main
from edgeoss.errors import CheckpointError
from edgeoss.formats.checkpoint import Checkpoint
from edgeoss.formats import mxfp4


@pytest.fixture(scope="module")
def tiny_bf16(tiny_hf, tmp_path_factory) -> Path:
    """transformers' own BF16 copy: load with Mxfp4Config(dequantize=True), copy the state into an unquantized
    GptOssForCausalLM, save_pretrained."""
    pytest.importorskip("torch")
    from edgeoss.validate.fine_tunes import transformers_bf16_copy

    return transformers_bf16_copy(tiny_hf, tmp_path_factory.mktemp("bf16") / "tiny-bf16")


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def test_bf16_experts_are_read_validated_and_equal_the_mxfp4_values(tiny_bf16, tiny_hf):
    code, stderr = run_main(["inspect", str(tiny_bf16)])
    assert code == 0, stderr
    with Checkpoint.open(tiny_bf16, bf16_experts=True) as bf16, Checkpoint.open(tiny_hf) as original:
        assert bf16.experts == "bf16" and original.experts == "mxfp4"
        bf16.check_values()
        for layer in range(original.spec.num_hidden_layers):
            for proj in ("gate_up", "down"):
                p = f"layers.{layer}.{proj}"
                values = mxfp4.dequantize(original.raw(f"{p}.blocks"), original.raw(f"{p}.scales"))  # [E, out, in]
                assert np.array_equal(bf16.f32(f"{p}.weight"), values.transpose(0, 2, 1))  # stored [E, in, out]
                assert np.array_equal(bf16.raw(f"{p}.bias"), original.raw(f"{p}.bias"))
        assert np.array_equal(bf16.raw("layers.2.q.weight"), original.raw("layers.2.q.weight"))


def test_the_reference_runtime_refuses_bf16_in_one_line_and_points_to_convert(tiny_bf16, tmp_path):
    code, stderr = run_main(["run", str(tiny_bf16), "--prompt", "hi", "--max-new-tokens", "1"])
    lines = stderr.strip().splitlines()  # a progress line, then the error in one line
    assert code == 2 and lines[-1].startswith("error: ") and "BF16 experts" in lines[-1]
    assert "edgeoss convert" in lines[-1] and "Traceback" not in stderr
    code, stderr = run_main(["plan", str(tiny_bf16), "--device", "pixel-9-pro"])  # a plan needs the spec only
    assert code == 0, stderr


def _expert_entry(header: dict, field: str, value) -> None:
    header["model.layers.1.mlp.experts.down_proj"][field] = value


@pytest.mark.parametrize("damage, message", [
    (lambda h: _expert_entry(h, "shape", [8, 32, 128]), "model.layers.1.mlp.experts.down_proj: is BF16[8, 32, 128]"),
    (lambda h: _expert_entry(h, "dtype", "F16"), "model.layers.1.mlp.experts.down_proj: is F16"),
])
def test_a_bf16_expert_of_the_wrong_shape_or_dtype_is_named(tiny_bf16, tmp_path, damage, message):
    broken = _copy(tiny_bf16, tmp_path)
    rewrite_header(broken / "model.safetensors", damage)
    code, stderr = run_main(["inspect", str(broken)])
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_nan_in_a_bf16_expert_and_a_config_that_says_mxfp4_are_refused(tiny_bf16, tmp_path):
    broken = _copy(tiny_bf16, tmp_path)
    with Checkpoint.open(broken, bf16_experts=True) as ckpt:
        path, offset, _ = ckpt.byte_range("layers.3.gate_up.weight")
    with open(path, "r+b") as f:
        f.seek(offset + 2 * 99)
        f.write(struct.pack("<H", 0x7FC0))
    code, stderr = run_main(["inspect", str(broken)])
    assert code == 2 and "gate_up_proj: non-finite value" in stderr, stderr
    mislabeled = _copy(tiny_bf16, tmp_path / "second")
    config = json.loads((mislabeled / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4"}
    (mislabeled / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="quantization_config says MXFP4 experts, but the shards hold BF16"):
        Checkpoint.open(mislabeled, bf16_experts=True)


def _experts(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(blocks, scales) of every MXFP4 expert tensor of a GGUF, in the checkpoint's form."""
    from edgeoss.formats.ggml_gguf import read_metadata

    meta, data = read_metadata(path), path.read_bytes()
    return {name: mxfp4.from_ggml(np.frombuffer(data[offset:offset + n], np.uint8).reshape(1, -1))
            for name, (offset, n) in meta.tensor_bytes.items() if name.endswith("_exps.weight")}


def _assert_same_experts(ours: dict, theirs: dict) -> None:
    """The round trip of the issue, on {name: (blocks, scales)} in the checkpoint's form: values equal everywhere;
    bytes equal in every block the OCP rule writes the way the checkpoint stores it (the others hold a -0 code, or
    have a largest magnitude below 4 units and get a smaller exponent)."""
    assert ours.keys() == theirs.keys() and ours
    canonical_blocks = different = 0
    for name, (blocks, scales) in theirs.items():
        values = mxfp4.dequantize(blocks, scales)
        assert np.array_equal(mxfp4.dequantize(*ours[name]), values), name
        requantized = mxfp4.quantize(values)
        canonical = (requantized[0] == blocks).all(axis=-1) & (requantized[1] == scales)
        assert (ours[name][0] == blocks)[canonical].all() and (ours[name][1] == scales)[canonical].all(), name
        codes = mxfp4.unpack_codes(blocks)
        why = (codes == 8).any(axis=-1) | ((codes & 7).max(axis=-1) < 6)  # a -0 code, or a smaller exponent
        assert why[~canonical].all(), name
        canonical_blocks += int(canonical.sum())
        different += int((~canonical).sum())
    assert canonical_blocks > 0 and different > 0  # random synthetic codes hold -0 in most blocks


def test_a_bf16_checkpoint_exports_the_same_mxfp4_experts(tiny_bf16, tiny_hf, tmp_path):
    """GGUF: the experts round-trip (`_assert_same_experts`); every other tensor is byte-identical."""
    from edgeoss.exporters.gguf import export_gguf
    from edgeoss.formats.ggml_gguf import read_metadata

    original = export_gguf(tiny_hf, tmp_path / "mxfp4.gguf", progress=False)[0]
    code, stderr = run_main(["export", "gguf", str(tiny_bf16), "-o", str(tmp_path / "bf16.gguf")])
    assert code == 0, stderr
    ours, theirs = _experts(tmp_path / "bf16.gguf"), _experts(original)
    assert len(ours) == 12
    _assert_same_experts(ours, theirs)
    a, b = read_metadata(original), read_metadata(tmp_path / "bf16.gguf")
    data_a, data_b = original.read_bytes(), (tmp_path / "bf16.gguf").read_bytes()
    for name, (offset, n) in a.tensor_bytes.items():
        if not name.endswith("_exps.weight"):
            other, m = b.tensor_bytes[name]
            assert data_a[offset:offset + n] == data_b[other:other + m], name


def test_convert_writes_the_published_mxfp4_layout_that_transformers_loads(tiny_bf16, tiny_hf, tmp_path):
    """`edgeoss convert BF16 OUT --layout hf`: the published MXFP4 layout; experts round-trip against the original's
    blocks and scales, every other tensor is byte-identical, and transformers (its MXFP4 path) computes the same
    logits from it as from the original."""
    from edgeoss.validate.oracles import transformers_logits

    code, stderr = run_main(["convert", str(tiny_bf16), str(tmp_path / "mxfp4"), "--layout", "hf"])
    assert code == 0, stderr
    with Checkpoint.open(tmp_path / "mxfp4") as ours, Checkpoint.open(tiny_hf) as theirs:
        assert ours.experts == "mxfp4"
        names = [f"layers.{i}.{p}" for i in range(theirs.spec.num_hidden_layers) for p in ("gate_up", "down")]
        _assert_same_experts({n: (ours.raw(f"{n}.blocks"), ours.raw(f"{n}.scales")) for n in names},
                             {n: (theirs.raw(f"{n}.blocks"), theirs.raw(f"{n}.scales")) for n in names})
        for info in theirs._table.values():
            if not info.name.endswith((".blocks", ".scales")):
                assert np.array_equal(ours.raw(info.name), theirs.raw(info.name)), info.name
    config = json.loads((tmp_path / "mxfp4" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "mxfp4"
    ids = np.random.default_rng(2).integers(0, 199998, 24)
    assert np.abs(transformers_logits(tmp_path / "mxfp4", ids) - transformers_logits(tiny_hf, ids)).max() <= 1e-6


def test_onnx_export_of_bf16_runs_the_same_model(tiny_bf16, tiny_hf, tmp_path):
    """export onnx quantizes the BF16 experts on the way (QMoE fp4): ONNX Runtime computes what it computes on
    the MXFP4 original's export, and the folder says the experts were quantized, and how."""
    from edgeoss.exporters.onnx import export_info, export_onnx
    from edgeoss.runtimes.engine import all_logits, load_engine

    code, stderr = run_main(["export", "onnx", str(tiny_bf16), "-o", str(tmp_path / "bf16")])
    assert code == 0, stderr
    original = export_onnx(tiny_hf, tmp_path / "mxfp4", progress=False).path
    assert export_info(tmp_path / "bf16")["quantized_from_bf16"] == "ocp"
    assert export_info(original)["quantized_from_bf16"] is None
    ids = np.random.default_rng(4).integers(0, 199998, 20).tolist()
    logits = [all_logits(load_engine("onnxruntime", folder), ids) for folder in (tmp_path / "bf16", original)]
    assert np.abs(logits[0] - logits[1]).max() <= 1e-6


@pytest.fixture(scope="module")
def fine_tuned(tiny_bf16, tmp_path_factory) -> Path:
    """A fine-tune-like model: tiny's BF16 experts times (1 + 5 % noise), no longer exact MXFP4 values."""
    pytest.importorskip("torch")
    from edgeoss.validate.fine_tunes import perturb_experts

    return perturb_experts(shutil.copytree(tiny_bf16, tmp_path_factory.mktemp("fine-tuned") / "tiny-ft"), 0.05)


def test_a_fine_tune_exports_and_its_parity_attributes_the_quantization(fine_tuned, tmp_path):
    """The perturbed model exports to GGUF; parity against transformers fp32 on the BF16 model itself reports
    llama.cpp's top-1, and both the reference runtime on the re-quantized experts (the quantization alone) and
    llama.cpp are explained: llama.cpp is as far from that emulation as its own numerics make it."""
    code, stderr = run_main(["export", "gguf", str(fine_tuned), "-o", str(tmp_path / "ft.gguf")])
    assert code == 0, stderr
    code, stdout, stderr = run_main(["parity", str(fine_tuned), "--gguf", str(tmp_path / "ft.gguf"),
                                     "--positions", "128", "--greedy", "8", "--json"], with_stdout=True)
    assert code == 0, stderr
    entries = {e["engine"]: e for e in json.loads(stdout)["entries"]}
    assert "gpt_oss (torch fp32)" not in entries  # OpenAI's gpt_oss reads MXFP4 only: no second witness
    quantized, llama = entries["reference"], entries["llamacpp"]
    assert quantized["vs_original"]["max_abs"] > 1e-3  # 5 % noise is not MXFP4-representable
    assert quantized["verdict"] == "the quantization: the BF16 experts quantized to MXFP4"
    assert llama["verdict"].startswith("engine difference, expected: the BF16 experts quantized to MXFP4 and "
                                       "llama.cpp's Q8_0 activations")
    assert 0.5 < llama["vs_original"]["top1"] <= 1.0


def test_a_checkpoints_own_chat_template_is_carried(tiny_bf16, tmp_path):
    """A fine-tune may change its template: export gguf and onnx carry the checkpoint's own (chat_template.jinja
    or tokenizer_config's), the Android bundle keeps the GGUF's, and --chat-template chooses another."""
    from edgeoss.formats import tokenizer
    from edgeoss.formats.ggml_gguf import read_metadata

    own = "{% for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{% endfor %}FT\n"
    tuned = _copy(tiny_bf16, tmp_path)
    (tuned / "chat_template.jinja").write_text(own)
    assert run_main(["export", "gguf", str(tuned), "-o", str(tmp_path / "own.gguf")])[0] == 0
    assert read_metadata(tmp_path / "own.gguf")["tokenizer.chat_template"] == own
    assert run_main(["export", "onnx", str(tuned), "-o", str(tmp_path / "onnx")])[0] == 0
    assert (tmp_path / "onnx" / "chat_template.jinja").read_text() == own
    assert json.loads((tmp_path / "onnx" / "tokenizer_config.json").read_text())["chat_template"] == own
    code, stderr = run_main(["package", "android", str(tmp_path / "own.gguf"), "-o", str(tmp_path / "bundle"),
                             "--device", "pixel-9-pro"])
    assert code == 0, stderr
    assert (tmp_path / "bundle" / "chat_template.jinja").read_text() == own
    check = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["chat_template_check"]
    assert check.startswith("differs from openai-harmony on 3 of 3 test conversations")  # named, not refused
    assert run_main(["export", "gguf", str(tuned), "-o", str(tmp_path / "harmony.gguf"), "--chat-template",
                     "harmony"])[0] == 0
    assert read_metadata(tmp_path / "harmony.gguf")["tokenizer.chat_template"] == tokenizer.chat_template()
    (tuned / "chat_template.jinja").unlink()  # tokenizer_config's list form, as some fine-tunes ship it
    config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    config["chat_template"] = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": own + "2"}]
    (tuned / "tokenizer_config.json").write_text(json.dumps(config))
    assert tokenizer.resolve_chat_template("checkpoint", tuned) == (own + "2", "the checkpoint's")
    (tmp_path / "mine.jinja").write_text("mine")
    assert tokenizer.resolve_chat_template(str(tmp_path / "mine.jinja"), tuned) == ("mine", str(tmp_path / "mine.jinja"))
    (tmp_path / "bad.jinja").write_bytes(b"\xff\xfe")
    for choice, message in ((str(tmp_path / "bad.jinja"), "must be UTF-8"), ("nowhere.jinja", "not checkpoint")):
        code, stderr = run_main(["export", "gguf", str(tuned), "-o", str(tmp_path / "x.gguf"), "--chat-template",
                                 choice])
        assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
        assert not (tmp_path / "x.gguf").exists()


def test_the_triton_rule_gives_back_the_stored_codes_signed_zeros_included(tiny_bf16, tiny_hf, tmp_path):
    """BF16 keeps -0, and the triton rule keeps a sign that rounds to zero: every block whose largest magnitude is
    4 or 6 units comes back byte for byte, -0 codes included; the values come back everywhere."""
    from edgeoss.exporters.gguf import export_gguf

    original = _experts(export_gguf(tiny_hf, tmp_path / "mxfp4.gguf", progress=False)[0])
    code, stderr = run_main(["export", "gguf", str(tiny_bf16), "-o", str(tmp_path / "triton.gguf"),
                             "--mxfp4-rule", "triton"])
    assert code == 0, stderr
    triton = _experts(tmp_path / "triton.gguf")
    for name, (blocks, scales) in original.items():
        assert np.array_equal(mxfp4.dequantize(*triton[name]), mxfp4.dequantize(blocks, scales)), name
        full = (mxfp4.unpack_codes(blocks) & 7).max(axis=-1) >= 6
        assert full.any() and (triton[name][0] == blocks)[full].all() and (triton[name][1] == scales)[full].all()


def test_synth_writes_a_bf16_fine_tune_layout(tmp_path):
    """`edgeoss synth --experts bf16`: transformers' unquantized layout (no quantization_config), which edgeoss
    reads as BF16 experts and transformers loads as it is; the original layout has no BF16 form."""
    from edgeoss.validate.oracles import transformers_logits

    code, stderr = run_main(["synth", str(tmp_path / "ft"), "--experts", "bf16"])
    assert code == 0, stderr
    assert "quantization_config" not in json.loads((tmp_path / "ft" / "config.json").read_text())
    with Checkpoint.open(tmp_path / "ft", bf16_experts=True) as ckpt:
        assert ckpt.experts == "bf16"
        ckpt.check_values()
    assert np.isfinite(transformers_logits(tmp_path / "ft", np.arange(4))).all()
    code, stderr = run_main(["synth", str(tmp_path / "orig"), "--experts", "bf16", "--layout", "original"])
    assert code == 2 and "Hugging Face layout" in stderr and not (tmp_path / "orig").exists()


@pytest.mark.parametrize("platform", ["android", "windows"])
def test_a_fine_tune_packages_and_verifies(fine_tuned, tmp_path, platform):
    """package android / windows straight from a BF16 folder: the experts quantized on the way, the bundle
    verified (sizes and sha256 of every file)."""
    device = ["--device", "pixel-9-pro", "--context", "256"] if platform == "android" else []
    code, stderr = run_main(["package", platform, str(fine_tuned), "-o", str(tmp_path / "bundle"), *device])
    assert code == 0, stderr
    code, stderr = run_main(["package", "verify", str(tmp_path / "bundle")])
    assert code == 0, stderr
