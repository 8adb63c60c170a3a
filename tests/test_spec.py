"""The spec: presets reproduce the published totals; both config files map onto one spec."""

import pytest

from edgeoss.errors import SpecError
from edgeoss.formats.spec import (apply_overrides, from_hf_config, from_original_config, kv_cache_bytes, preset, sizes,
                          to_hf_config, to_original_config)


@pytest.mark.parametrize("name, params, nbytes, active", [
    ("20b", 20_914_757_184, 13_761_264_768, 3_608_307_264),
    ("120b", 116_829_156_672, 65_248_815_744, 5_132_849_472),
])
def test_published_totals(name, params, nbytes, active):
    s = sizes(preset(name))
    assert s.params_total == params
    assert s.tensor_bytes == nbytes
    assert s.params_active == active


def test_20b_components_by_independent_arithmetic():
    s, h, e = sizes(preset("20b")), 2880, 32
    per_expert_weights = (2 * 2880) * h + h * 2880
    assert s.params_per_expert == per_expert_weights + 2 * 2880 + h  # + gate_up and down biases
    assert s.bytes_by_kind["experts"] == 24 * e * (per_expert_weights // 2 + per_expert_weights // 32 + 2 * 8640)
    assert s.bytes_by_kind["embedding"] == 201088 * h * 2


def test_kv_cache_bytes_20b():
    spec = preset("20b")
    assert sizes(spec).kv_bytes_per_token_per_layer == 2048
    kv = kv_cache_bytes(spec, 8192)
    assert kv["full"] == 12 * 2048 * 8192  # 24 KiB per token over the 12 full layers
    assert kv["sliding"] == 12 * 2048 * 128  # capped at the window
    assert kv_cache_bytes(spec, 100)["sliding"] == 12 * 2048 * 100


@pytest.mark.parametrize("name", ["20b", "120b", "tiny", "odd"])
def test_configs_round_trip(name):
    spec = preset(name)
    assert from_hf_config(to_hf_config(spec)).replace(name=spec.name) == spec
    back = from_original_config(to_original_config(spec))
    assert back.replace(name=spec.name, bos_token_id=spec.bos_token_id, eos_token_id=spec.eos_token_id,
                        pad_token_id=spec.pad_token_id, max_position_embeddings=spec.max_position_embeddings) == spec


def test_original_config_has_exactly_the_model_config_keys():
    assert len(to_original_config(preset("20b"))) == 16


def test_published_hf_config_reads_as_the_20b_preset():
    # the 20b config.json as published (the keys edgeoss reads)
    cfg = {"num_hidden_layers": 24, "num_local_experts": 32, "experts_per_token": 4, "num_experts_per_tok": 4,
           "hidden_size": 2880, "intermediate_size": 2880, "num_attention_heads": 64, "num_key_value_heads": 8,
           "head_dim": 64, "vocab_size": 201088, "sliding_window": 128, "swiglu_limit": 7.0, "rms_norm_eps": 1e-05,
           "layer_types": ["sliding_attention", "full_attention"] * 12, "rope_theta": 150000,
           "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                            "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": False},
           "max_position_embeddings": 131072, "eos_token_id": 200002, "pad_token_id": 199999}
    assert from_hf_config(cfg).replace(name="gpt-oss-20b") == preset("20b")


@pytest.mark.parametrize("change, message", [
    ({"experts_per_token": 64}, "experts_per_token (64) > num_experts (32)"),
    ({"hidden_size": 100}, "multiple of 32"),
    ({"num_key_value_heads": 7}, "not a multiple"),
    ({"num_hidden_layers": 0}, "positive integer"),
])
def test_bad_original_configs(change, message):
    cfg = to_original_config(preset("20b")) | change
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_original_config(cfg)


def test_overrides():
    spec = apply_overrides(preset("tiny"), ["num_hidden_layers=3", "sliding_window=5"])
    assert spec.num_hidden_layers == 3 and len(spec.layer_types) == 3 and spec.sliding_window == 5
    with pytest.raises(SpecError, match="expected key=value"):
        apply_overrides(preset("tiny"), ["nonsense=1"])
