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
    code, stderr = run_main(["export", "gguf", str(tiny_bf16), "-o", str(tmp_path / "x.gguf")])
    assert code == 2 and "BF16 experts" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.gguf").exists()
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
