"""Text generation over any Engine: prefill the prompt, then sample and step one token at a time.

Sampling: temperature 0 is greedy (argmax); otherwise softmax(logits / temperature), cut to the smallest set
of most likely tokens whose probability reaches top_p (nucleus), drawn with a generator seeded by `seed`.
`forced` tokens are taken first, whatever the logits (the engine still computes every step): a scripted
completion, to exercise an app's loop (tool calls) on random weights.
Written against the Engine protocol only, so every engine (reference, llama.cpp, ONNX Runtime) shares it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from edgeoss.errors import UsageError
from edgeoss.runtimes.engine import Engine


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = 0
    forced: tuple[int, ...] = ()  # tokens chosen first, in order, whatever the logits

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise UsageError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top-p must be in (0, 1], got {self.top_p}")


class Sampler:
    """Picks the next token from a logits row, reproducibly for a given seed."""

    def __init__(self, sampling: Sampling):
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)
        self.forced = list(sampling.forced)

    def __call__(self, logits: np.ndarray) -> int:
        s = self.sampling
        if self.forced:
            return self.forced.pop(0)
        if s.temperature == 0:
            return int(np.argmax(logits))
        z = np.asarray(logits, dtype=np.float64) / s.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        if s.top_p < 1:
            order = np.argsort(-p, kind="stable")
            keep = order[:int(np.searchsorted(np.cumsum(p[order]), s.top_p)) + 1]  # first prefix reaching top_p
            return int(keep[self.rng.choice(len(keep), p=p[keep] / p[keep].sum())])
        return int(self.rng.choice(len(p), p=p))


@dataclass
class Generation:
    """What a generation produced, and how fast."""

    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    stop_token: int | None = None  # the stop token that ended it (None: max_new_tokens reached)
    prefill_seconds: float = 0.0
    decode_steps: int = 0
    decode_seconds: float = 0.0

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.decode_steps / self.decode_seconds if self.decode_seconds else 0.0


def generate(engine: Engine, prompt: Sequence[int], max_new_tokens: int, sampling: Sampling = Sampling(),
             stop_tokens: Iterable[int] = (), on_token: Callable[[int], None] | None = None) -> Generation:
    """Continue `prompt` from a fresh sequence; `on_token` sees each new token as soon as it is chosen."""
    if not prompt:
        raise UsageError("the prompt has no tokens")
    if max_new_tokens < 0:
        raise UsageError(f"max new tokens must be >= 0, got {max_new_tokens}")
    stops = set(stop_tokens)
    sample = Sampler(sampling)
    result = Generation(prompt_tokens=len(prompt))
    engine.reset()
    start = time.perf_counter()
    logits = engine.prefill(list(prompt))[-1]
    result.prefill_seconds = time.perf_counter() - start
    while len(result.tokens) < max_new_tokens:
        token = sample(logits)
        result.tokens.append(token)
        if on_token:
            on_token(token)
        if token in stops:
            result.stop_token = token
            break
        if len(result.tokens) == max_new_tokens:
            break
        start = time.perf_counter()
        logits = engine.step(token)
        result.decode_seconds += time.perf_counter() - start
        result.decode_steps += 1
    return result
