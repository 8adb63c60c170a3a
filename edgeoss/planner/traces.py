"""Router traces for planning: expert popularity, calibration/evaluation splits, and parametric traces.

Traces are the reference runtime's routing traces (`edgeoss.runtimes.trace`: npz with `experts` int16
[tokens, layers, k], `weights` float32 [tokens, layers, k], `positions`, `tokens`, `num_experts`, `meta`);
this module reads and writes them only through that module.

Parametric traces stand in for recorded ones when no model has run. Two knobs, per layer:
- popularity skew: the expert of popularity rank r (a random permutation per layer) is chosen with weight
  1 / (r + 1) ** zipf; zipf = 0 is a uniform router, zipf = 1 is Zipf's law;
- reuse: each expert of the previous token is chosen again, independently, with probability `reuse`;
  the remaining slots are drawn without replacement from the popularity weights (Gumbel top-k).
`seed` picks the router (which expert has which rank), `sample` the token stream: two samples of one seed
are two prompts through the same model. A parametric trace is one sequence (positions 0..N-1) with token
ids -1 and `meta.parametric = {zipf, reuse, seed, sample}`.
gpt-oss's measured routing has weak token-to-token locality (anchors §1b: consecutive-token Jaccard 0.98x a
shuffle control) and moderate skew (12.9 % of 20b's experts "cold"), so reuse near 0 and zipf 0.5-1 are
the realistic range; larger values show what a planner gains on a more cacheable model.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from ..formats.routing_trace import FORMAT, VERSION, Trace


def popularity(trace: Trace) -> np.ndarray:
    """float64 [layers, experts]: how often each expert is chosen per token (each layer sums to k)."""
    return trace.counts() / max(1, trace.num_tokens)


def locality(trace: Trace, seed: int = 0) -> tuple[float, float]:
    """(consecutive, shuffled): the mean Jaccard overlap of the expert sets of consecutive tokens (per layer), and
    the same over the tokens in a random order, the control: equal figures mean no token-to-token reuse."""
    chosen = np.zeros((trace.num_tokens, trace.num_layers, trace.num_experts), dtype=bool)
    np.put_along_axis(chosen, trace.experts.astype(np.int64), True, axis=-1)

    def mean_jaccard(m: np.ndarray) -> float:
        both = (m[:-1] & m[1:]).sum(-1)
        return float(np.mean(both / (m[:-1] | m[1:]).sum(-1)))

    return mean_jaccard(chosen), mean_jaccard(chosen[np.random.default_rng(seed).permutation(trace.num_tokens)])


def split_trace(trace: Trace, fraction: float) -> tuple[Trace, Trace]:
    """(first part, rest) at a token boundary: calibrate on one, evaluate on the other."""
    if trace.num_tokens < 2:
        raise UsageError(f"a trace of {trace.num_tokens} token(s) cannot be split")
    cut = min(max(1, int(trace.num_tokens * fraction)), trace.num_tokens - 1)
    return tuple(Trace(trace.experts[part], trace.weights[part], trace.positions[part], trace.tokens[part],
                       trace.num_experts, trace.meta) for part in (slice(None, cut), slice(cut, None)))


def parametric_trace(tokens: int, layers: int, num_experts: int, k: int, zipf: float = 1.0,
                     reuse: float = 0.0, seed: int = 0, sample: int = 0) -> Trace:
    """A synthetic trace with Zipf popularity skew and previous-token reuse (see the module docstring)."""
    if not (0 < k <= num_experts and tokens > 0 and layers > 0 and zipf >= 0 and 0 <= reuse <= 1):
        raise UsageError(f"parametric trace: need 0 < k <= experts, tokens, layers > 0, zipf >= 0, "
                         f"0 <= reuse <= 1 (got k={k}, experts={num_experts}, zipf={zipf}, reuse={reuse})")
    router = np.random.default_rng(seed)
    rng = np.random.default_rng([seed, sample])
    rank_weight = 1.0 / np.arange(1, num_experts + 1, dtype=np.float64) ** zipf
    log_p = np.empty((layers, num_experts))
    for layer in range(layers):
        log_p[layer, router.permutation(num_experts)] = np.log(rank_weight / rank_weight.sum())
    experts = np.empty((tokens, layers, k), dtype=np.int16)
    rows = np.broadcast_to(np.arange(layers)[:, None], (layers, k))
    previous = None
    for t in range(tokens):
        keys = log_p - np.log(-np.log(rng.random((layers, num_experts))))  # Gumbel top-k: draws w/o replacement
        if previous is not None:
            kept = rng.random((layers, k)) < reuse
            keys[rows[kept], previous[kept]] = np.inf
        previous = np.argsort(-keys, axis=1, kind="stable")[:, :k]
        experts[t] = previous
    logits = np.sort(rng.standard_normal((tokens, layers, k)), axis=-1)[..., ::-1]
    weights = np.exp(logits - logits[..., :1])
    meta = {"format": FORMAT, "version": VERSION, "model": "parametric",
            "parametric": {"zipf": zipf, "reuse": reuse, "seed": seed, "sample": sample}}
    return Trace(experts, (weights / weights.sum(-1, keepdims=True)).astype(np.float32),
                 np.arange(tokens, dtype=np.int32), np.full(tokens, -1, dtype=np.int32), num_experts, meta)
