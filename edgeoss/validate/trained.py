"""A small gpt-oss that has learned real text, so top-1 agreement means what it means on a real model.

Random-weight checkpoints are right for bytes, shapes and exact-arithmetic parity, but their next-token logits
are Gaussian over 201,088 tokens: the top-1/top-2 gap is ~0.1 of the logit spread, so any engine's legitimate
activation rounding (llama.cpp's Q8_0) flips a few percent of top-1s. A trained model puts its mass on a few
tokens, as the published gpt-oss does. This module trains one with transformers' own GptOssForCausalLM (fp32,
CPU, about two minutes on 2 cores), then writes it as a published checkpoint: dense tensors in BF16, experts quantized
to MXFP4 (the OCP rule in `mxfp4.quantize`), so every engine and oracle reads the same stored bytes.

Text: the Python standard library's own modules (its tests excluded), the source that ships with every Python,
tokenized with o200k_harmony: ~4 MB of code and docstrings train (about 1.1M tokens, under half an epoch at the
default steps, so the model does not memorize); every tenth file is held out for `held_out_tokens`.

Init: the synthesized random checkpoint of the same spec and seed, except the unembedding (std 0.02, the usual
LM init), so tokens the text never uses stay low as in a trained vocabulary. Training updates only the embedding
and unembedding rows of the tokens the text uses (~19k of 201,088), which keeps a step near half a second on 2 cores.
"""

from __future__ import annotations

import hashlib
import sysconfig
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

from ..formats import mxfp4
from ..formats.layouts import HF, stored_name
from ..formats.safetensors_io import f32_to_bf16
from ..formats.spec import ModelSpec, TensorInfo, tensor_table
from ..formats.synth import synthesize, write_checkpoint

SEQ_LEN = 256  # the context the model learns: evaluate it on windows of at most this many positions
BATCH = 8
LEARNING_RATE = 3e-3
UNEMBED_INIT_STD = 0.02
WEIGHT_DECAY = 0.1
STEPS = 250  # measured: llama.cpp's top-1 against the original 99.22 % (tiny), 99.51 % (odd); benchmarks/README.md
CORPUS_BYTES = 4_000_000  # of training text; held-out text is every tenth file, up to a tenth of that


def _corpus_files() -> list[Path]:
    """The standard library's own modules (not its tests), in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "__pycache__"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


@lru_cache(maxsize=1)
def corpus_tokens() -> tuple[np.ndarray, np.ndarray]:
    """o200k_harmony ids of the training text and of the held-out text (disjoint files)."""
    from ..formats.tokenizer import encode

    parts: dict[bool, list[str]] = {False: [], True: []}
    budget = {False: CORPUS_BYTES, True: CORPUS_BYTES // 10}
    for i, path in enumerate(_corpus_files()):
        held_out = i % 10 == 9
        if budget[held_out] > 0:
            text = path.read_text(encoding="utf-8", errors="replace")
            parts[held_out].append(text)
            budget[held_out] -= len(text)
    train_ids, held_ids = (np.asarray(encode("\n\n".join(parts[k]), allowed_special=()), dtype=np.int64)
                           for k in (False, True))
    return train_ids, held_ids


def held_out_tokens(n: int) -> np.ndarray:
    """n tokens of text the training never saw."""
    tokens = corpus_tokens()[1]
    if len(tokens) < n:
        raise ValueError(f"only {len(tokens)} held-out tokens")
    return tokens[:n].copy()


def in_windows(logits_of, tokens: np.ndarray, window: int = SEQ_LEN) -> np.ndarray:
    """Logits of each `window` tokens run as its own sequence: the model is evaluated inside the context it
    learned (past it, a model trained on 256 positions extrapolates, and tiny rope differences grow)."""
    return np.concatenate([logits_of(tokens[i:i + window]) for i in range(0, len(tokens), window)])


def _expert_weight(model_state: dict, layer: int, projection: str) -> np.ndarray:
    """transformers keeps experts as [E, in, out]; the checkpoint stores rows = outputs: [E, out, in]."""
    name = {"gate_up": "gate_up_proj", "down": "down_proj"}[projection]
    return model_state[f"model.layers.{layer}.mlp.experts.{name}"].transpose(0, 2, 1)


def _canonical_values(spec: ModelSpec, model_state: dict) -> dict[str, np.ndarray]:
    """Stored bytes of every canonical tensor from transformers' state dict (BF16 bits, MXFP4 blocks/scales)."""
    out: dict[str, np.ndarray] = {}
    for info in tensor_table(spec):
        if info.name.endswith(".blocks"):  # layers.N.PROJECTION.blocks; its .scales come with it
            layer, projection = info.name.split(".")[1:3]
            out[info.name], out[info.name.replace(".blocks", ".scales")] = mxfp4.quantize(
                _expert_weight(model_state, int(layer), projection))
        elif not info.name.endswith(".scales"):
            values = model_state[stored_name(spec, HF, info.name).name]
            out[info.name] = f32_to_bf16(values.reshape(info.shape))
        assert out[info.name].shape == info.shape, (info.name, out[info.name].shape, info.shape)
    return out


def train(spec: ModelSpec, steps: int = STEPS, seed: int = 0, log=None) -> dict[str, np.ndarray]:
    """Train from the synthesized init; returns the stored bytes of every tensor (`log` gets the loss)."""
    from .oracles import require_torch

    if steps < 3:
        raise ValueError("train for at least 3 steps")
    torch = require_torch()
    torch.manual_seed(seed)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # same bytes from every run on a machine (scatter-adds in order)
    try:
        return _train(torch, spec, steps, seed, log)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _train(torch, spec: ModelSpec, steps: int, seed: int, log) -> dict[str, np.ndarray]:
    from .oracles import TransformersOracle

    train_tokens, held_tokens = corpus_tokens()
    train_ids = torch.as_tensor(train_tokens)
    used = torch.as_tensor(np.unique(np.concatenate([train_tokens, held_tokens])))  # the columns the loss sees
    column = torch.full((spec.vocab_size,), -1, dtype=torch.int64)
    column[used] = torch.arange(len(used))
    with tempfile.TemporaryDirectory() as tmp:
        init = synthesize(Path(tmp) / "init", spec, HF, seed=seed, progress=False)
        model = TransformersOracle(init).model
    model.train()
    # only the rows of the tokens the text uses are trained (a dense 201,088-row update per step is most of the
    # time otherwise); unused unembedding rows get the LM init too, so they stay below every trained row
    embed, unembed = model.model.embed_tokens.weight, model.lm_head.weight
    embed.requires_grad_(False)
    unembed.requires_grad_(False)
    with torch.no_grad():
        unembed.normal_(0.0, UNEMBED_INIT_STD)
    used_embed = torch.nn.Parameter(embed[used].clone())
    used_unembed = torch.nn.Parameter(unembed[used].clone())
    params = [p for p in model.parameters() if p.requires_grad] + [used_embed, used_unembed]
    opt = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LEARNING_RATE, total_steps=steps,
                                                pct_start=max(0.1, 2 / steps))  # >= 2 warm-up steps
    rng = np.random.default_rng(seed)
    losses = []
    for step in range(steps):
        starts = torch.as_tensor(rng.integers(0, len(train_ids) - SEQ_LEN - 1, BATCH))
        window = column[train_ids[starts[:, None] + torch.arange(SEQ_LEN + 1)]]
        hidden = model.model(inputs_embeds=used_embed[window[:, :-1]]).last_hidden_state
        logits = hidden @ used_unembed.T
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(used)), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (step % 50 == 0 or step == steps - 1):
            log(f"step {step}: loss {np.mean(losses[-50:]):.3f} (mean of the last 50 batches)")
    with torch.no_grad():
        embed[used] = used_embed
        unembed[used] = used_unembed
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    return _canonical_values(spec, state)


def write_trained(out: str | Path, spec: ModelSpec, layouts: tuple[str, ...] = (HF,), steps: int = STEPS,
                  seed: int = 0, log=None) -> dict[str, Path]:
    """Train once, write the checkpoint in each layout under out/<layout>."""
    values = train(spec, steps, seed, log)

    def chunks(info: TensorInfo) -> Iterator[np.ndarray]:
        yield values[info.name]

    return {layout: write_checkpoint(Path(out) / layout, spec, layout, chunks, progress=False) for layout in layouts}


def _cache_key(spec: ModelSpec, steps: int, seed: int) -> str:
    """Everything the trained bytes depend on: this code, the synthesized init, the text, the spec, the engines."""
    import torch
    import transformers

    from ..formats import synth

    h = hashlib.sha256()
    for part in (Path(__file__).read_bytes(), Path(synth.__file__).read_bytes(), repr(spec).encode(),
                 f"{steps} {seed} {torch.__version__} {transformers.__version__}".encode(),
                 *(t.tobytes() for t in corpus_tokens())):
        h.update(part)
    return h.hexdigest()[:16]


def trained_checkpoint(spec: ModelSpec, steps: int = STEPS, seed: int = 0, log=None) -> dict[str, Path]:
    """Both layouts of a trained checkpoint, trained once per machine and kept in the edgeoss cache."""
    from ..atomic import atomic_dir
    from ..formats.layouts import ORIGINAL
    from ..formats.tokenizer import cache_dir

    folder = cache_dir() / "trained" / f"{spec.name}-{_cache_key(spec, steps, seed)}"
    if not folder.is_dir():
        with atomic_dir(folder, overwrite=True) as tmp:
            write_trained(tmp, spec, (HF, ORIGINAL), steps, seed, log)
    return {layout: folder / layout for layout in (HF, ORIGINAL)}


__all__ = ["corpus_tokens", "held_out_tokens", "in_windows", "train", "write_trained", "trained_checkpoint"]
