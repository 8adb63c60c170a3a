"""The trained-model writer: transformers' parameters map back onto the checkpoint's stored tensors exactly, and a
(very short) training run writes checkpoints both layouts' readers accept, with the same values in each."""

from __future__ import annotations

import numpy as np
import pytest

from edgeoss.formats import mxfp4
from edgeoss.formats.checkpoint import Checkpoint, open_checked
from edgeoss.formats.spec import preset, tensor_table


def test_transformers_state_maps_back_to_the_stored_tensors(tiny_hf):
    """Loaded by transformers and mapped back, every dense tensor keeps its bf16 bits and every expert its
    values (MXFP4 re-quantized by the OCP rule from exactly representable values)."""
    from edgeoss.validate.oracles import TransformersOracle
    from edgeoss.validate.trained import _canonical_values

    oracle = TransformersOracle(tiny_hf)
    state = {k: v.detach().float().numpy() for k, v in oracle.model.state_dict().items()}
    oracle.close()
    ckpt = Checkpoint.open(tiny_hf)
    values = _canonical_values(ckpt.spec, state)
    for info in tensor_table(ckpt.spec):
        if info.name.endswith(".scales"):
            continue
        if info.name.endswith(".blocks"):
            scales = info.name.replace(".blocks", ".scales")
            assert np.array_equal(mxfp4.dequantize(values[info.name], values[scales]),
                                  mxfp4.dequantize(ckpt.raw(info.name), ckpt.raw(scales))), info.name
        else:
            assert np.array_equal(values[info.name], ckpt.raw(info.name)), info.name


def test_a_short_training_run_writes_both_layouts(tmp_path):
    from edgeoss.validate.trained import held_out_tokens, write_trained

    losses: list[str] = []
    paths = write_trained(tmp_path / "t", preset("tiny"), ("hf", "original"), steps=4, log=losses.append)
    assert len(losses) == 2 and losses[-1].startswith("step 3: loss")
    hf, original = (open_checked(paths[k]) for k in ("hf", "original"))
    for info in tensor_table(hf.spec):
        assert np.array_equal(hf.raw(info.name), original.raw(info.name)), info.name
    assert len(held_out_tokens(300)) == 300
    with pytest.raises(ValueError):
        held_out_tokens(10**9)
