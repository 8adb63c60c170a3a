"""The parity report: does every artifact still compute what the original model computes?

For one token sequence (random or from a text, long enough to pass the sliding window), run:
- the original model: transformers' GptOssForCausalLM in fp32 (the baseline), and OpenAI's gpt_oss torch
  reference in fp32 as a second witness when its layout is at hand;
- the reference runtime (edgeoss's numpy forward pass);
- every given artifact in its engine (GGUF in llama.cpp, ONNX in ONNX Runtime).

Per engine: max abs logit difference, mean KL(original || engine), top-1 agreement, and the greedy-match
length (tokens generated greedily from the first `prompt` tokens before the first disagreement). A deviation
is attributed by re-running the reference runtime with the engine's known numerics emulated (llama.cpp's Q8_0
activations and rounded YaRN range; an int4 export's re-quantized experts): if the artifact matches that
emulation, the difference is the engine's, expected; if not, it is unexplained (a possible export bug).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UsageError

EXACT = 1e-4  # fp32 implementations of the same math agree to ~1e-5 here
# An engine is explained by the emulation of its known numerics when its typical (median per-position)
# deviation from that emulation is at least EXPLAINED_RATIO times smaller than its deviation from the original
# (an export bug leaves the engine as far from the emulation as from the original). The median, not the max:
# a single rounding tie decided differently by float32 summation order moves later logits by 1e-2 on these
# random models, while the emulation matches the engine bit for bit up to that tie.
EXPLAINED_RATIO = 10


@dataclass(frozen=True)
class Metrics:
    max_abs: float
    median_abs: float  # median over positions of the per-position max abs difference
    mean_kl: float
    top1: float
    positions: int

    @classmethod
    def between(cls, reference: np.ndarray, other: np.ndarray) -> "Metrics":
        if reference.shape != other.shape:
            raise UsageError(f"logits shapes differ: {reference.shape} vs {other.shape}")
        per_position = np.abs(reference - other).max(axis=-1)
        return cls(max_abs=float(per_position.max()), median_abs=float(np.median(per_position)),
                   mean_kl=mean_kl(reference, other), top1=float((reference.argmax(-1) == other.argmax(-1)).mean()),
                   positions=len(reference))


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def mean_kl(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean over positions of KL(P_reference || P_other), in nats."""
    lp, lq = log_softmax(reference), log_softmax(other)
    return float((np.exp(lp) * (lp - lq)).sum(axis=-1).mean())


def top2_gap(logits: np.ndarray) -> np.ndarray:
    """Per position, how far the top logit is above the second: where it is tiny, any rounding may flip top-1."""
    top2 = np.partition(logits, -2, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def greedy_match(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass(frozen=True)
class Entry:
    """One row of the report."""

    label: str
    engine: str
    vs_original: Metrics
    greedy_match: int
    greedy_tokens: int
    vs_emulation: Metrics | None = None
    emulation: str = ""
    verdict: str = ""


@dataclass(frozen=True)
class Artifact:
    """Something to check: an engine over an artifact, and the reference emulation that explains it."""

    label: str
    engine: str
    path: Path
    options: dict[str, Any] = field(default_factory=dict)
    emulation: dict[str, Any] = field(default_factory=dict)  # Emulation(...) fields for the reference runtime
    emulation_note: str = ""


def gguf_artifact(path: Path) -> Artifact:
    """A GGUF checked in llama.cpp, explained by the reference runtime emulating llama.cpp's numerics."""
    from ..formats.gguf_meta import gguf_dense_type
    from ..formats.ggml_gguf import read_metadata

    dense = gguf_dense_type(read_metadata(path), path)
    emulation = {"ggml_yarn_rounding": True, "q8_activations": True, "bf16_activations": dense == "bf16"}
    note = "llama.cpp's Q8_0 activations" + (", bf16 activations" if dense == "bf16" else "") + \
        " and rounded YaRN range" + ("" if dense in ("bf16", "f32") else f" ({dense} dense weights not emulated)")
    return Artifact(path.name, "llamacpp", path, options={"f32_kv": True}, emulation=emulation, emulation_note=note)


QUANTIZED_NOTE = "the BF16 experts quantized to MXFP4"


def onnx_artifact(path: Path) -> Artifact:
    """An ONNX folder checked in ONNX Runtime, explained by the reference runtime emulating what its export
    changed (edgeoss.json): int4 re-quantized experts, attention as 4-bit digits."""
    from ..exporters.onnx import export_info

    info = export_info(path)
    switches, notes = {}, []
    if info.get("experts") == "int4":
        switches["int4_experts"], notes = str(path), ["int4 re-quantized experts"]
    if info.get("dense") == "compact":
        switches["dense_digits"] = True
        notes.append("attention as 4-bit digits")
    dense = f", {info['dense']} dense" if "dense" in info else ""
    return Artifact(f"{path.name} ({info.get('experts', '?')}{dense})", "onnxruntime", path, options={"exact": True},
                    emulation=switches, emulation_note=" and ".join(notes))


def verdict(vs_original: Metrics, vs_emulation: Metrics | None, note: str) -> str:
    if vs_original.max_abs <= EXACT:
        return "matches the original (fp32 parity)"
    if vs_emulation is not None and vs_emulation.median_abs * EXPLAINED_RATIO <= vs_original.median_abs:
        return f"engine difference, expected: {note}"
    return "UNEXPLAINED deviation: possible export bug"


def emulation(switches: dict[str, Any]):
    """The reference runtime's Emulation for an artifact's known numerics. "int4_experts" re-quantizes every
    expert exactly as the ONNX int4 export stores it (the exporter's own encoder, applied as the expert loads);
    "dense_digits" replaces the attention matrices by the ONNX compact export's 4-bit digits (its own encoder)."""
    from ..runtimes.reference import Emulation

    switches = dict(switches)
    fields = {}
    if switches.pop("int4_experts", None):
        from ..exporters.onnx_experts import int4_values
        from ..runtimes.experts import DenseMatrix, Expert

        def requantized(e: Expert) -> Expert:
            as_int4 = lambda m: DenseMatrix(int4_values(m.blocks, m.scales))  # noqa: E731
            return Expert(e.layer, e.index, as_int4(e.gate_up), e.gate_up_bias, as_int4(e.down), e.down_bias)

        fields["expert_transform"] = requantized
    if switches.pop("dense_digits", None):
        from ..exporters.onnx_dense import attention_values

        fields["attention_transform"] = attention_values
    return Emulation(**switches, **fields)


def _engine_logits_and_greedy(engine_name: str, path: Path, tokens: np.ndarray, prompt: int, greedy: int,
                              options: dict) -> tuple[np.ndarray, list[int]]:
    from ..runtimes.engine import all_logits, load_engine

    engine = load_engine(engine_name, path, n_ctx=len(tokens) + greedy, **options) \
        if engine_name == "llamacpp" else load_engine(engine_name, path, **options)
    try:
        logits = all_logits(engine, tokens.tolist())
        engine.reset()
        row = engine.prefill(tokens[:prompt].tolist())[-1]
        out = []
        for _ in range(greedy):
            out.append(int(row.argmax()))
            row = engine.step(out[-1])
        return logits, out
    finally:
        engine.close()


def run(checkpoint: Path, artifacts: list[Artifact], tokens: np.ndarray, prompt: int = 16, greedy: int = 32,
        witness: Path | None = None, on_progress: Callable[[str], None] = lambda s: None,
        requantized: Path | None = None) -> dict:
    """Compute the report; returns a JSON-ready dict (see `to_markdown`). requantized: for a checkpoint with BF16
    experts (a fine-tune), its MXFP4 copy (`edgeoss.formats.convert`): the reference runtime runs on it, so its
    own row measures the MXFP4 quantization, and every artifact's emulation includes it."""
    from .oracles import TransformersOracle, gpt_oss_logits

    on_progress("original model (transformers fp32)")
    oracle = TransformersOracle(checkpoint)
    original = oracle.logits(tokens)
    original_greedy = oracle.greedy(tokens[:prompt], greedy)
    oracle.close()
    entries: list[Entry] = []
    if witness is not None:
        on_progress("second witness (OpenAI gpt_oss fp32)")
        w = Metrics.between(original, gpt_oss_logits(witness, tokens))
        entries.append(Entry("OpenAI gpt_oss reference", "gpt_oss (torch fp32)", w, -1, greedy,
                             verdict=verdict(w, None, "")))
    reference = requantized or checkpoint
    on_progress("reference runtime" + (" on the experts re-quantized to MXFP4" if requantized else ""))
    ref_logits, ref_greedy = _engine_logits_and_greedy("reference", reference, tokens, prompt, greedy, {})
    m = Metrics.between(original, ref_logits)
    if requantized:  # this row is the emulation of the quantization: what every artifact inherits from it
        entries.append(Entry("checkpoint, experts re-quantized to MXFP4", "reference", m,
                             greedy_match(original_greedy, ref_greedy), greedy, None, QUANTIZED_NOTE,
                             verdict(m, None, "") if m.max_abs <= EXACT else f"the quantization: {QUANTIZED_NOTE}"))
    else:
        entries.append(Entry("checkpoint", "reference", m, greedy_match(original_greedy, ref_greedy), greedy,
                             verdict=verdict(m, None, "")))
    for art in artifacts:
        on_progress(f"{art.label} in {art.engine}")
        logits, out = _engine_logits_and_greedy(art.engine, art.path, tokens, prompt, greedy, art.options)
        m = Metrics.between(original, logits)
        emulated = None
        note = " and ".join(([QUANTIZED_NOTE] if requantized else []) + ([art.emulation_note] if art.emulation_note
                                                                         else []))
        if (art.emulation or requantized) and m.max_abs > EXACT:
            on_progress(f"reference runtime emulating {note}")
            emu_logits, _ = _engine_logits_and_greedy("reference", reference, tokens, prompt, 0,
                                                      {"emulation": emulation(art.emulation)})
            emulated = Metrics.between(emu_logits, logits)
        entries.append(Entry(art.label, art.engine, m, greedy_match(original_greedy, out), greedy, emulated,
                             note, verdict(m, emulated, note)))
    return {"checkpoint": str(checkpoint), "positions": int(len(tokens)), "prompt_tokens": prompt,
            "greedy_tokens": greedy, "original": "transformers GptOssForCausalLM, fp32, eager, CPU",
            "max_abs_logit_original": float(np.abs(original).max()),
            "entries": [asdict(e) for e in entries]}


def to_markdown(report: dict) -> str:
    lines = [f"# Parity report: {report['checkpoint']}", "",
             f"{report['positions']} positions against {report['original']} (max |logit| "
             f"{report['max_abs_logit_original']:.2f}); greedy match over {report['greedy_tokens']} tokens "
             f"from a {report['prompt_tokens']}-token prompt.", "",
             "| artifact | engine | max abs diff (median) | mean KL | top-1 | greedy match | vs emulation: max (median) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for e in report["entries"]:
        o = e["vs_original"]
        emu = (f"{e['vs_emulation']['max_abs']:.2e} ({e['vs_emulation']['median_abs']:.1e}); {e['emulation']}"
               if e["vs_emulation"] else "—")
        match = f"{e['greedy_match']}/{e['greedy_tokens']}" if e["greedy_match"] >= 0 else "—"
        lines.append(f"| {e['label']} | {e['engine']} | {o['max_abs']:.2e} ({o['median_abs']:.1e}) | {o['mean_kl']:.2e} | "
                     f"{100 * o['top1']:.1f} % | {match} | {emu} | {e['verdict']} |")
    return "\n".join(lines) + "\n"


def save(report: dict, json_path: Path | None, markdown_path: Path | None) -> None:
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))
    if markdown_path:
        markdown_path.write_text(to_markdown(report))
