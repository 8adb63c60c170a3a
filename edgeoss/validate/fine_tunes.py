"""BF16 checkpoints as fine-tunes publish them, made from an MXFP4 one for tests and benchmarks (torch and
transformers, the validation extra, imported lazily).

- `transformers_bf16_copy`: transformers' own route: load with Mxfp4Config(dequantize=True), copy the state into
  an unquantized GptOssForCausalLM, save_pretrained. Its expert values equal the MXFP4 original's.
- `perturb_experts`: every expert weight times (1 + noise * N(0, 1)) in BF16, in place: values MXFP4 cannot hold,
  as after fine-tuning.
"""

from __future__ import annotations

from pathlib import Path


def transformers_bf16_copy(mxfp4_folder: str | Path, out: str | Path) -> Path:
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM, Mxfp4Config

    quantized = GptOssForCausalLM.from_pretrained(mxfp4_folder, dtype=torch.bfloat16,
                                                  quantization_config=Mxfp4Config(dequantize=True))
    config = GptOssConfig.from_pretrained(mxfp4_folder)
    del config.quantization_config
    plain = GptOssForCausalLM(config).to(torch.bfloat16)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.save_pretrained(out)
    return Path(out)


def perturb_experts(folder: str | Path, noise: float, seed: int = 0) -> Path:
    import torch
    from safetensors.torch import load_file, save_file

    generator = torch.Generator().manual_seed(seed)
    for shard in sorted(Path(folder).glob("*.safetensors")):
        tensors = load_file(shard)
        for name, t in tensors.items():
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
                factor = 1 + noise * torch.randn(t.shape, generator=generator)
                tensors[name] = (t.float() * factor).to(torch.bfloat16)
        save_file(tensors, shard, metadata={"format": "pt"})
    return Path(folder)
