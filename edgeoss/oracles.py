"""The original model, run as an oracle in fp32 on CPU (torch is a validation extra, imported lazily).

- transformers' GptOssForCausalLM on the HF layout (MXFP4 experts dequantized at load, eager attention);
- OpenAI's own reference, gpt_oss.torch.model.Transformer, on the original/ layout (cast to fp32 inside
  inference mode: it hard-codes bf16 parameters).

Both return float32 logits [T, vocab] for a 1-D token sequence. bf16 is not an oracle precision: two correct
implementations differ by ~0.1 there, while in fp32 they agree to ~1e-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import EdgeossError


class OracleUnavailable(EdgeossError):
    """An oracle package is not installed (install the test extra: pip install 'edgeoss[test]')."""


def _torch():
    try:
        import torch
    except ImportError:
        raise OracleUnavailable("torch is not installed (install the test extra: pip install 'edgeoss[test]')") \
            from None
    return torch


def transformers_logits(hf_folder: str | Path, tokens: np.ndarray) -> np.ndarray:
    torch = _torch()
    try:
        from transformers import GptOssForCausalLM, Mxfp4Config
    except ImportError:
        raise OracleUnavailable("transformers is not installed") from None
    model = GptOssForCausalLM.from_pretrained(str(hf_folder), dtype=torch.float32, attn_implementation="eager",
                                              quantization_config=Mxfp4Config(dequantize=True)).eval()
    with torch.inference_mode():
        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))[None]
        return model(ids).logits[0].float().numpy()


def gpt_oss_logits(original_folder: str | Path, tokens: np.ndarray) -> np.ndarray:
    torch = _torch()
    try:
        from gpt_oss.torch.model import Transformer
    except ImportError:
        raise OracleUnavailable("gpt-oss is not installed (make install adds it with --no-deps)") from None
    with torch.inference_mode():
        model = Transformer.from_checkpoint(str(original_folder), device="cpu").to(torch.float32)
        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int32))
        return model(ids).float().numpy()
