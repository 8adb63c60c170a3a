"""Checkpoints: both layouts hold the same tensors; every kind of bad input is one clear line and exit 2."""

import json
import shutil

import numpy as np
import pytest

from conftest import rewrite_header
from edgeoss.formats.checkpoint import Checkpoint
from edgeoss.errors import CheckpointError
from edgeoss.formats.safetensors_io import SafetensorsFile, bf16_to_f32
from edgeoss.formats.spec import tensor_table


def test_layouts_hold_identical_tensors(tiny_hf, tiny_original):
    with Checkpoint.open(tiny_hf) as a, Checkpoint.open(tiny_original) as b:
        assert (a.layout, b.layout) == ("hf", "original")
        assert a.spec.replace(name="x") == b.spec.replace(name="x", max_position_embeddings=a.spec.max_position_embeddings)
        for info in tensor_table(a.spec):
            assert np.array_equal(a.raw(info.name), b.raw(info.name)), info.name


def test_safetensors_package_reads_our_files_and_we_read_its(tiny_original, tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tiny_original / "model.safetensors"
    ours = SafetensorsFile(path)
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == set(ours.entries)
        for name in ["block.0.attn.qkv.weight", "block.1.mlp.mlp1_weight.blocks", "norm.scale"]:
            theirs = f.get_tensor(name)
            mine = ours.array(name)
            if theirs.dtype == torch.bfloat16:
                assert np.array_equal(bf16_to_f32(mine), theirs.float().numpy())
            else:
                assert np.array_equal(mine, theirs.numpy())
    x = torch.randn(3, 5).to(torch.bfloat16)
    save_file({"x": x, "y": torch.arange(7, dtype=torch.uint8)}, str(tmp_path / "t.safetensors"))
    back = SafetensorsFile(tmp_path / "t.safetensors")
    assert np.array_equal(bf16_to_f32(back.array("x")), x.float().numpy())
    assert back.array("y").tolist() == list(range(7))


def test_lazy_expert_access_and_byte_ranges(tiny_hf, tiny_original):
    for folder in (tiny_hf, tiny_original):
        with Checkpoint.open(folder) as ckpt:
            blocks, scales, bias = ckpt.expert(2, "down", 5)
            path, offset, nbytes = ckpt.byte_range("layers.2.down.blocks", expert=5)
            assert nbytes == blocks.nbytes
            with open(path, "rb") as f:
                f.seek(offset)
                assert f.read(nbytes) == blocks.tobytes()
            path, offset, nbytes = ckpt.byte_range("layers.1.k.weight")  # a row slice of qkv in original/
            with open(path, "rb") as f:
                f.seek(offset)
                assert f.read(nbytes) == ckpt.raw("layers.1.k.weight").tobytes()


# ---- bad input ------------------------------------------------------------------------------------
def _shard_of(folder, tensor):
    return folder / json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"][tensor]


def _poke_byte(path, tensor, value):
    f = SafetensorsFile(path)
    offset = f.entries[tensor].begin
    f.close()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes([value]))


Q = "model.layers.1.self_attn.q_proj.weight"
SCALES = "model.layers.2.mlp.experts.down_proj_scales"


def _truncate(d):
    p = _shard_of(d, "lm_head.weight")
    p.write_bytes(p.read_bytes()[:-100])
    return [p.name, "truncated"]


def _lying_offsets(d):
    def edit(h):
        b, e = h[Q]["data_offsets"]
        h[Q]["data_offsets"] = [b - 64, e - 64]
    rewrite_header(_shard_of(d, Q), edit)
    return [Q, "data_offsets lie"]


def _wrong_shape(d):
    def edit(h):
        h[Q]["shape"] = h[Q]["shape"][::-1]
    rewrite_header(_shard_of(d, Q), edit)
    return [Q, "expected BF16[256, 64]"]


def _wrong_dtype(d):
    name = "model.layers.0.mlp.router.bias"

    def edit(h):
        h[name]["dtype"] = "F16"
    rewrite_header(_shard_of(d, name), edit)
    return [name, "is F16[8], expected BF16[8]"]


def _nan_scale(d):
    _poke_byte(_shard_of(d, SCALES), SCALES, 0xFF)
    return [SCALES, "NaN"]


def _missing_shard(d):
    p = _shard_of(d, "lm_head.weight")
    p.unlink()
    return [p.name, "listed in the index is missing"]


def _index_escapes(d):
    index = d / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"][Q] = "../" + data["weight_map"][Q]
    index.write_text(json.dumps(data))
    return ["model.safetensors.index.json", "outside the folder"]


def _too_many_experts_per_token(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_experts_per_tok"] = 99
    (d / "config.json").write_text(json.dumps(cfg))
    return ["config", "experts_per_token (99) > num_experts (8)"]


def _non_json_config(d):
    (d / "config.json").write_text("{this is not json")
    return ["config.json", "not valid JSON"]


@pytest.mark.parametrize("corrupt", [_truncate, _lying_offsets, _wrong_shape, _wrong_dtype, _nan_scale,
                                     _missing_shard, _index_escapes, _too_many_experts_per_token,
                                     _non_json_config], ids=lambda f: f.__name__.strip("_"))
def test_bad_input_is_one_line_and_exit_2(corrupt, tiny_hf, tmp_path, cli):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_hf, folder)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    expected = corrupt(folder)
    proc = cli("inspect", folder)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert proc.stdout == ""
    after = sorted(p.name for p in tmp_path.rglob("*"))
    assert after == sorted(set(before) - {"model-00001-of-00001.safetensors"}) or after == before


def test_original_layout_rejects_extra_keys_too(tiny_original, tmp_path):
    folder = tmp_path / "orig"
    shutil.copytree(tiny_original, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["experts_per_token"] = cfg["num_experts"] + 1
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="experts_per_token"):
        Checkpoint.open(folder)


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        Checkpoint.open(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="expected a checkpoint folder"):
        Checkpoint.open(tmp_path / "f")
