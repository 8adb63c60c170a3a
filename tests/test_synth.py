"""The synthesizer writes folders like the published repos, deterministically, and they run in the oracles."""

import hashlib
import json

import numpy as np
import pytest

from edgeoss.validate.oracles import gpt_oss_logits, transformers_logits
from edgeoss.formats.spec import preset
from edgeoss.formats.synth import shard_plan, synthesize


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_hf_folder_looks_like_the_published_repo(tiny_hf):
    names = {p.name for p in tiny_hf.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    index = json.loads((tiny_hf / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"model-{i:05d}-of-{len(shards) - 1:05d}.safetensors" for i in range(len(shards))]
    assert index["metadata"]["total_size"] == sum((tiny_hf / s).stat().st_size for s in shards) - \
        sum(8 + int.from_bytes((tiny_hf / s).read_bytes()[:8], "little") for s in shards)
    cfg = json.loads((tiny_hf / "config.json").read_text())
    assert cfg["model_type"] == "gpt_oss" and cfg["quantization_config"]["quant_method"] == "mxfp4"


def test_published_shard_counts():
    assert len(shard_plan(preset("20b"), "hf")) == 3  # model-00000-of-00002 .. 00002
    assert len(shard_plan(preset("120b"), "hf")) == 15


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path, tiny_original):
    again = synthesize(tmp_path / "again", preset("tiny"), "original", seed=0, progress=False)
    assert _digest(again) == _digest(tiny_original)
    other = synthesize(tmp_path / "other", preset("tiny"), "original", seed=1, progress=False)
    assert _digest(other)["model.safetensors"] != _digest(tiny_original)["model.safetensors"]


@pytest.mark.parametrize("name", ["tiny", "odd"])
def test_oracles_agree_on_synthesized_checkpoints(name, request):
    """transformers (HF layout) and OpenAI's gpt_oss (original layout) compute the same model."""
    hf, original = request.getfixturevalue(f"{name}_hf"), request.getfixturevalue(f"{name}_original")
    window = preset(name).sliding_window
    tokens = np.random.default_rng(1).integers(0, 199998, size=window + 72)
    a, b = transformers_logits(hf, tokens), gpt_oss_logits(original, tokens)
    assert np.isfinite(a).all()
    assert np.abs(a - b).max() <= 1e-4
    assert np.abs(a[window:] - b[window:]).max() <= 1e-4  # >= 64 positions past the window


def test_activations_stay_finite_over_1000_tokens(tiny_original):
    tokens = np.random.default_rng(2).integers(0, 199998, size=1000)
    logits = gpt_oss_logits(tiny_original, tokens)
    assert np.isfinite(logits).all() and np.abs(logits).max() < 100


def test_convert_hf_to_original_is_byte_identical(tiny_hf, tiny_original, tmp_path, cli):
    cli("convert", tiny_hf, tmp_path / "orig", "--layout", "original", check=True)
    assert _digest(tmp_path / "orig") == _digest(tiny_original)
