"""The original model, run as an oracle in fp32 on CPU (torch is a validation extra, imported lazily).

- transformers' GptOssForCausalLM on the HF layout (MXFP4 experts dequantized at load, eager attention);
- OpenAI's own reference, gpt_oss.torch.model.Transformer, on the original/ layout (cast to fp32 inside
  inference mode: it hard-codes bf16 parameters).

Both return float32 logits [T, vocab] for a 1-D token sequence. bf16 is not an oracle precision: two correct
implementations differ by ~0.1 there, while in fp32 they agree to ~1e-5.
"""

from __future__ import annotations

import json

from pathlib import Path

import numpy as np

from ..errors import EdgeossError


class OracleUnavailable(EdgeossError):
    """An oracle package is not installed (install the test extra: pip install 'edgeoss[test]')."""


def require_torch():
    try:
        import torch
    except ImportError:
        raise OracleUnavailable("torch is not installed (install the test extra: pip install 'edgeoss[test]')") \
            from None
    return torch


class TransformersOracle:
    """transformers' GptOssForCausalLM loaded once in fp32: logits for a sequence, greedy continuations."""

    def __init__(self, hf_folder: str | Path):
        self.torch = require_torch()
        try:
            from transformers import GptOssForCausalLM, Mxfp4Config
        except ImportError:
            raise OracleUnavailable("transformers is not installed") from None
        config = json.loads((Path(hf_folder) / "config.json").read_text())
        quantized = {"quantization_config": Mxfp4Config(dequantize=True)} if "quantization_config" in config else {}
        self.model = GptOssForCausalLM.from_pretrained(  # a BF16 (fine-tuned) checkpoint loads as it is
            str(hf_folder), dtype=self.torch.float32, attn_implementation="eager", **quantized).eval()

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            ids = self.torch.as_tensor(np.asarray(tokens, dtype=np.int64))[None]
            return self.model(ids).logits[0].float().numpy()

    def segment_logits(self, tokens: np.ndarray, segments: list[tuple[int, int]]):
        """Logits segment by segment ((start, length) covering `tokens` in order) with the model's KV cache: a
        chunked prefill, and single-token segments run as decode steps. Yields float32 [length, vocab]."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        with self.torch.inference_mode():
            for start, length in segments:
                ids = self.torch.as_tensor(np.asarray(tokens[start:start + length], dtype=np.int64))[None]
                positions = self.torch.arange(start, start + length)
                out = self.model(ids, past_key_values=cache, use_cache=True, cache_position=positions)
                cache = out.past_key_values
                yield out.logits[0].float().numpy()

    def greedy(self, prompt: np.ndarray, n: int) -> list[int]:
        """n tokens generated greedily after `prompt` (argmax each step, with the model's KV cache)."""
        with self.torch.inference_mode():
            ids = self.torch.as_tensor(np.asarray(prompt, dtype=np.int64))[None]
            out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids), max_new_tokens=n,
                                      min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    def close(self) -> None:
        del self.model


def transformers_logits(hf_folder: str | Path, tokens: np.ndarray) -> np.ndarray:
    oracle = TransformersOracle(hf_folder)
    try:
        return oracle.logits(tokens)
    finally:
        oracle.close()


def gpt_oss_logits(original_folder: str | Path, tokens: np.ndarray) -> np.ndarray:
    torch = require_torch()
    try:
        from gpt_oss.torch.model import Transformer
    except ImportError:
        raise OracleUnavailable("gpt-oss is not installed (make install adds it with --no-deps)") from None
    with torch.inference_mode():
        model = Transformer.from_checkpoint(str(original_folder), device="cpu").to(torch.float32)
        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int32))
        return model(ids).float().numpy()
