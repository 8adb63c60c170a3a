"""Checkpoints with BF16 experts (issue 19): fine-tunes and dequantized copies, written here by transformers itself
from the tiny MXFP4 checkpoint. edgeoss reads and validates them; commands that need MXFP4 experts refuse them in
one line until quantizing on export is built."""

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
    torch = pytest.importorskip("torch")
    from transformers import GptOssConfig, GptOssForCausalLM, Mxfp4Config

    quantized = GptOssForCausalLM.from_pretrained(tiny_hf, dtype=torch.bfloat16,
                                                  quantization_config=Mxfp4Config(dequantize=True))
    config = GptOssConfig.from_pretrained(tiny_hf)
    del config.quantization_config
    plain = GptOssForCausalLM(config).to(torch.bfloat16)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    out = tmp_path_factory.mktemp("bf16") / "tiny-bf16"
    plain.save_pretrained(out)
    return out


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


def test_commands_that_need_mxfp4_experts_refuse_bf16_in_one_line(tiny_bf16, tmp_path):
    code, stderr = run_main(["export", "onnx", str(tiny_bf16), "-o", str(tmp_path / "onnx")])
    assert code == 2 and "BF16 experts" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "onnx").exists()
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


def test_a_bf16_checkpoint_exports_the_same_mxfp4_experts(tiny_bf16, tiny_hf, tmp_path):
    """The round trip of the issue: values equal everywhere; bytes equal in every block the OCP rule writes
    the way the checkpoint stores it (the others hold a -0 code, or have a largest magnitude below 4 units and
    get a smaller exponent); every other tensor byte-identical."""
    from edgeoss.exporters.gguf import export_gguf
    from edgeoss.formats.ggml_gguf import read_metadata

    original = export_gguf(tiny_hf, tmp_path / "mxfp4.gguf", progress=False)[0]
    code, stderr = run_main(["export", "gguf", str(tiny_bf16), "-o", str(tmp_path / "bf16.gguf")])
    assert code == 0, stderr
    ours, theirs = _experts(tmp_path / "bf16.gguf"), _experts(original)
    assert ours.keys() == theirs.keys() and len(ours) == 12
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
    a, b = read_metadata(original), read_metadata(tmp_path / "bf16.gguf")
    data_a, data_b = original.read_bytes(), (tmp_path / "bf16.gguf").read_bytes()
    for name, (offset, n) in a.tensor_bytes.items():
        if not name.endswith("_exps.weight"):
            other, m = b.tensor_bytes[name]
            assert data_a[offset:offset + n] == data_b[other:other + m], name


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
