"""The parity report: does every artifact still compute what the original model computes?

For one token sequence (random or from a text, long enough to pass the sliding window), run:
- the original model: transformers' GptOssForCausalLM in fp32 (the baseline), and OpenAI's gpt_oss torch
  reference in fp32 as a second witness when its layout is at hand;
- the reference runtime (edgeoss's numpy forward pass);
- every given artifact in its engine (GGUF in llama.cpp, ONNX in ONNX Runtime).

Every engine runs the sequence the same way, in lockstep with the original: a prefill in chunks of 512, and
decode steps over the last positions (twice the sliding window) and across initial_context_length when the
sequence passes it (`segments`). Only one segment of logits per engine is held, so `--positions 8192` (6.6 GB
of logits per engine at gpt-oss's vocabulary) runs in bounded memory.

Per engine: max abs logit difference, mean KL(original || engine), top-1 agreement, and the greedy-match
length (tokens generated greedily from the first `prompt` tokens before the first disagreement). A deviation
is attributed by re-running the reference runtime with the engine's known numerics emulated (llama.cpp's Q8_0
activations, rounded YaRN range and float32 rope angles; an int4 export's re-quantized experts; an ONNX export's
attention digits; a BF16 fine-tune's MXFP4 quantization): if the artifact matches that
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
        return Comparison().add(reference, other).metrics()


class Comparison:
    """Metrics of two logit sequences given chunk by chunk (positions in order): nothing but per-position
    figures is kept, so a comparison over 8,192 positions of a 201,088-token vocabulary holds one chunk."""

    def __init__(self) -> None:
        self.max_abs: list[np.ndarray] = []
        self.kl_sum, self.top1_count, self.positions = 0.0, 0, 0

    def add(self, reference: np.ndarray, other: np.ndarray) -> "Comparison":
        if reference.shape != other.shape:
            raise UsageError(f"logits shapes differ: {reference.shape} vs {other.shape}")
        self.max_abs.append(np.abs(reference - other).max(axis=-1))
        self.kl_sum += mean_kl(reference, other) * len(reference)
        self.top1_count += int((reference.argmax(-1) == other.argmax(-1)).sum())
        self.positions += len(reference)
        return self

    def metrics(self) -> Metrics:
        per_position = np.concatenate(self.max_abs)
        return Metrics(max_abs=float(per_position.max()), median_abs=float(np.median(per_position)),
                       mean_kl=self.kl_sum / self.positions, top1=self.top1_count / self.positions,
                       positions=self.positions)


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
    chat_template: str = ""  # how the artifact's chat template compares with openai-harmony (chat_check.summary)


def gguf_artifact(path: Path) -> Artifact:
    """A GGUF checked in llama.cpp, explained by the reference runtime emulating llama.cpp's numerics."""
    from ..formats import chat_check
    from ..formats.gguf_meta import gguf_dense_type
    from ..formats.ggml_gguf import read_metadata

    meta = read_metadata(path)
    dense = gguf_dense_type(meta, path)
    emulation = {"ggml_yarn_rounding": True, "ggml_rope_angles": True, "q8_activations": True,
                 "bf16_activations": dense == "bf16"}
    template = meta.get("tokenizer.chat_template")
    check = chat_check.summary(template) if isinstance(template, str) else "none (the GGUF carries no template)"
    note = "llama.cpp's Q8_0 activations" + (", bf16 activations" if dense == "bf16" else "") + \
        ", rounded YaRN range and float32 rope angles" + \
        ("" if dense in ("bf16", "f32") else f" ({dense} dense weights not emulated)")
    return Artifact(path.name, "llamacpp", path, options={"f32_kv": True}, emulation=emulation, emulation_note=note,
                    chat_template=check)


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
    from ..formats import chat_check

    dense = f", {info['dense']} dense" if "dense" in info else ""
    template = Path(path) / "chat_template.jinja"
    check = chat_check.summary(template.read_text(encoding="utf-8")) if template.is_file() else \
        "none (the folder carries no chat_template.jinja)"
    return Artifact(f"{path.name} ({info.get('experts', '?')}{dense})", "onnxruntime", path, options={"exact": True},
                    emulation=switches, emulation_note=" and ".join(notes), chat_template=check)


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
        from ..formats.dense_digits import attention_values

        fields["attention_transform"] = attention_values
    return Emulation(**switches, **fields)


WITNESS_POSITIONS = 1024  # OpenAI's gpt_oss runs the whole sequence at once (logits [T, vocab], scores [T, T])
PREFILL_CHUNK = 512  # positions per prefill call in every engine and in the original


def segments(n: int, spec, chunk: int = PREFILL_CHUNK) -> list[tuple[int, int]]:
    """(start, length) covering n positions as every engine runs them in the report: prefill in chunks of `chunk`,
    and single-token decode steps over the last `span` positions and across `initial_context_length` (where
    YaRN's scaling matters) when the sequence passes it; span = twice the sliding window (16..256), so decode
    runs past the window."""
    span = min(256, max(16, 2 * spec.sliding_window))
    steps = set(range(max(1, n - span), n))
    middle = spec.rope_original_context
    if middle + span // 2 < n - span:
        steps |= set(range(middle - span // 2, middle + span // 2))
    out, start = [], 0
    while start < n:
        if start in steps:
            out.append((start, 1))
            start += 1
            continue
        end = min(start + chunk, n)
        end = next((p for p in range(start + 1, end) if p in steps), end)
        out.append((start, end - start))
        start = end
    return out


class _Running:
    """An engine over the report's sequence, segment by segment, then its greedy continuation."""

    def __init__(self, engine_name: str, path: Path, options: dict, n_ctx: int):
        from ..runtimes.engine import load_engine

        self.engine = load_engine(engine_name, path, n_ctx=n_ctx, **options) if engine_name == "llamacpp" \
            else load_engine(engine_name, path, **options)
        self.engine.reset()

    def segment(self, tokens: np.ndarray, start: int, length: int) -> np.ndarray:
        part = tokens[start:start + length]
        if length == 1 and start > 0:
            return self.engine.step(int(part[0]))[None]
        return self.engine.prefill(part.tolist())

    def greedy(self, prompt: np.ndarray, n: int) -> list[int]:
        self.engine.reset()
        row, out = self.engine.prefill(prompt.tolist())[-1], []
        for _ in range(n):
            out.append(int(row.argmax()))
            row = self.engine.step(out[-1])
        return out

    def close(self) -> None:
        self.engine.close()


def run(checkpoint: Path, artifacts: list[Artifact], tokens: np.ndarray, prompt: int = 16, greedy: int = 32,
        witness: Path | None = None, on_progress: Callable[[str], None] = lambda s: None,
        requantized: Path | None = None) -> dict:
    """Compute the report; returns a JSON-ready dict (see `to_markdown`). Every engine runs the sequence in the
    same segments as the original (`segments`: chunked prefill, decode steps), in lockstep, so that only one
    segment of logits is held at a time whatever the length. requantized: for a checkpoint with BF16 experts (a
    fine-tune), its MXFP4 copy (`edgeoss.formats.convert`): the reference runtime runs on it, so its own row
    measures the MXFP4 quantization, and every artifact's emulation includes it."""
    from ..formats.spec import from_config, load_config
    from .oracles import TransformersOracle, gpt_oss_logits

    spec = from_config(load_config(Path(checkpoint) / "config.json"))
    tokens = np.asarray(tokens, dtype=np.int64)
    parts = segments(len(tokens), spec)
    reference = requantized or checkpoint
    witness_logits = None
    if witness is not None:
        on_progress(f"second witness (OpenAI gpt_oss fp32), first {min(len(tokens), WITNESS_POSITIONS)} positions")
        witness_logits = gpt_oss_logits(witness, tokens[:WITNESS_POSITIONS])
    notes = [" and ".join(([QUANTIZED_NOTE] if requantized else []) + ([a.emulation_note] if a.emulation_note else []))
             for a in artifacts]
    n_ctx = len(tokens) + greedy
    on_progress(f"original model (transformers fp32) and every engine, {len(tokens)} positions in {len(parts)} "
                "segments")
    runs = [_Running("reference", reference, {}, n_ctx)] + [_Running(a.engine, a.path, a.options, n_ctx)
                                                          for a in artifacts]
    emulated = {i: _Running("reference", reference, {"emulation": emulation(a.emulation)}, n_ctx)
                for i, a in enumerate(artifacts) if a.emulation or requantized}
    oracle = TransformersOracle(checkpoint)
    try:
        vs_original = [Comparison() for _ in runs]
        vs_emulation = {i: Comparison() for i in emulated}
        vs_witness, largest = Comparison(), 0.0
        for (start, length), original in zip(parts, oracle.segment_logits(tokens, parts)):
            largest = max(largest, float(np.abs(original).max()))
            if witness_logits is not None and start < len(witness_logits):
                end = min(start + length, len(witness_logits))
                vs_witness.add(original[:end - start], witness_logits[start:end])
            logits = [r.segment(tokens, start, length) for r in runs]
            for comparison, got in zip(vs_original, logits):
                comparison.add(original, got)
            for i, r in emulated.items():
                vs_emulation[i].add(r.segment(tokens, start, length), logits[i + 1])
        on_progress(f"greedy continuations, {greedy} tokens")
        original_greedy = oracle.greedy(tokens[:prompt], greedy)
        greedy_out = [r.greedy(tokens[:prompt], greedy) for r in runs]
    finally:
        oracle.close()
        for r in [*runs, *emulated.values()]:
            r.close()
    entries: list[Entry] = []
    if witness_logits is not None:
        w = vs_witness.metrics()
        entries.append(Entry("OpenAI gpt_oss reference", "gpt_oss (torch fp32)", w, -1, greedy,
                             verdict=verdict(w, None, "")))
    m = vs_original[0].metrics()
    match = greedy_match(original_greedy, greedy_out[0])
    if requantized:  # this row is the emulation of the quantization: what every artifact inherits from it
        entries.append(Entry("checkpoint, experts re-quantized to MXFP4", "reference", m, match, greedy, None,
                             QUANTIZED_NOTE,
                             verdict(m, None, "") if m.max_abs <= EXACT else f"the quantization: {QUANTIZED_NOTE}"))
    else:
        entries.append(Entry("checkpoint", "reference", m, match, greedy, verdict=verdict(m, None, "")))
    for i, art in enumerate(artifacts):
        m = vs_original[i + 1].metrics()
        emu = vs_emulation[i].metrics() if i in vs_emulation and m.max_abs > EXACT else None
        entries.append(Entry(art.label, art.engine, m, greedy_match(original_greedy, greedy_out[i + 1]), greedy, emu,
                             notes[i], verdict(m, emu, notes[i])))
    return {"checkpoint": str(checkpoint), "positions": int(len(tokens)), "prompt_tokens": prompt,
            "greedy_tokens": greedy, "original": "transformers GptOssForCausalLM, fp32, eager, CPU",
            "segments": f"prefill in chunks of {PREFILL_CHUNK}, "
                        f"{sum(1 for _, n in parts if n == 1 and _ > 0)} decode steps",
            "max_abs_logit_original": largest,
            "chat_templates": {a.label: a.chat_template for a in artifacts if a.chat_template},
            "entries": [asdict(e) for e in entries]}


def to_markdown(report: dict) -> str:
    lines = [f"# Parity report: {report['checkpoint']}", "",
             f"{report['positions']} positions against {report['original']} (max |logit| "
             f"{report['max_abs_logit_original']:.2f}), run by every engine as {report.get('segments', 'one batch')}; "
             f"greedy match over {report['greedy_tokens']} tokens from a {report['prompt_tokens']}-token prompt.", "",
             "| artifact | engine | max abs diff (median) | mean KL | top-1 | greedy match | vs emulation: max (median) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for e in report["entries"]:
        o = e["vs_original"]
        emu = (f"{e['vs_emulation']['max_abs']:.2e} ({e['vs_emulation']['median_abs']:.1e}); {e['emulation']}"
               if e["vs_emulation"] else "—")
        match = f"{e['greedy_match']}/{e['greedy_tokens']}" if e["greedy_match"] >= 0 else "—"
        lines.append(f"| {e['label']} | {e['engine']} | {o['max_abs']:.2e} ({o['median_abs']:.1e}) | {o['mean_kl']:.2e} | "
                     f"{100 * o['top1']:.1f} % | {match} | {emu} | {e['verdict']} |")
    templates = report.get("chat_templates") or {}
    if templates:
        lines += ["", "Chat templates (rendered with jinja2 against openai-harmony):", ""]
        lines += [f"- {label}: {check}" for label, check in templates.items()]
    return "\n".join(lines) + "\n"


def save(report: dict, json_path: Path | None, markdown_path: Path | None) -> None:
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))
    if markdown_path:
        markdown_path.write_text(to_markdown(report))
