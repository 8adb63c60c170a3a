"""Engines over an `edgeoss export onnx` folder: plain ONNX Runtime, and onnxruntime-genai.

- `OnnxRuntimeEngine` (--engine onnxruntime): an InferenceSession fed by hand. Full-attention layers carry a
  growing KV cache; sliding layers a window-sized one that the GroupQueryAttention op evicts itself.
- `OrtGenaiEngine` (--engine ortgenai): onnxruntime-genai's Generator, as an app would run the folder; it
  preallocates the KV cache for `max_length` tokens (genai_config.json's search.max_length by default).

Precision: MXFP4 exports (QMoE fp4, onnxruntime >= 1.32, the default) are exact with no setting. ONNX Runtime's
CPU QMoE kernel quantizes activations to int8 for 8-bit experts unless ORT_QMOE_CPU_QNBIT_GEMM=fp32 is in the
environment when the session is created. `exact=True` (the default, for parity) sets it for int8 exports only:
they then match the original model to ~1e-5 (max logit error), at about 5x the MoE time on CPU. `exact=False` keeps ONNX Runtime's fast default, measured on the synthetic models over 280
positions: tiny max logit error 11.6, mean KL 0.034, top-1 agreement 90 %; odd 3.4, 0.0046, 93 %.
int4 exports use fp32 activations either way (accuracy_level 0); their error is the re-quantization's.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from edgeoss.errors import UsageError
from edgeoss.formats.spec import ModelSpec

MANIFEST, MODEL, GENAI_CONFIG = "edgeoss.json", "model.onnx", "genai_config.json"
QMOE_PRECISION_ENV = "ORT_QMOE_CPU_QNBIT_GEMM"


def needs_fp32_gemm(manifest: dict) -> bool:
    """Whether exactness needs ORT_QMOE_CPU_QNBIT_GEMM=fp32: int8 experts only (ONNX Runtime quantizes their
    activations to int8 by default); MXFP4 (fp4) and int4 experts run with float activations as they are."""
    return manifest.get("experts") == "int8"


def read_export(path: str | Path) -> tuple[Path, dict, ModelSpec]:
    """(folder, edgeoss.json, spec) of an exported folder (or of its model.onnx)."""
    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        spec = ModelSpec(**dict(manifest["spec"], layer_types=tuple(manifest["spec"]["layer_types"])))
    except FileNotFoundError:
        raise UsageError(f"{folder}: not an ONNX export from edgeoss (no {MANIFEST}; run `edgeoss export onnx`)") \
            from None
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{manifest_path}: unreadable ({e})") from None
    check_folder(folder)
    return folder, manifest, spec


def check_folder(folder: Path) -> None:
    """What an engine will read of an ONNX folder, checked before it loads (one UsageError line): genai_config.json
    is JSON naming model.onnx and a max_length; model.onnx parses; every external initializer lies inside its
    data file in this folder."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    from edgeoss.jsonfile import read_json

    config = read_json(folder / GENAI_CONFIG, "onnxruntime-genai config")
    try:
        named = config["model"]["decoder"]["filename"]
        max_length = config["search"]["max_length"]
    except (KeyError, TypeError):
        raise UsageError(f"{folder / GENAI_CONFIG}: not an onnxruntime-genai config (no model.decoder.filename or "
                         "search.max_length)") from None
    if named != MODEL or not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise UsageError(f"{folder / GENAI_CONFIG}: expected decoder.filename {MODEL!r} and a positive "
                         f"search.max_length, found {named!r} and {max_length!r}")
    try:
        model = onnx.load(str(folder / MODEL), load_external_data=False)
    except FileNotFoundError:
        raise UsageError(f"{folder / MODEL}: missing") from None
    except Exception as e:  # noqa: BLE001 - protobuf and onnx raise several types for a damaged file
        raise UsageError(f"{folder / MODEL}: not a readable ONNX model ({type(e).__name__})") from None
    sizes: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        data = folder / info.location
        if data.parent.resolve() != folder.resolve():
            raise UsageError(f"{folder / MODEL}: initializer {tensor.name} points outside the folder "
                             f"({info.location!r})")
        if info.location not in sizes:
            try:
                sizes[info.location] = data.stat().st_size
            except FileNotFoundError:
                raise UsageError(f"{data}: missing (model.onnx keeps its weights there)") from None
        end = (info.offset or 0) + (info.length or 0)
        if end > sizes[info.location]:
            raise UsageError(f"{data}: truncated: initializer {tensor.name} ends at byte {end:,}, the file has "
                             f"{sizes[info.location]:,} bytes")


@contextlib.contextmanager
def qmoe_precision(exact: bool) -> Iterator[None]:
    """Around session creation: fp32 activations in the QMoE kernel (exact) or ONNX Runtime's default."""
    before = os.environ.get(QMOE_PRECISION_ENV)
    if exact:
        os.environ[QMOE_PRECISION_ENV] = "fp32"
    else:
        os.environ.pop(QMOE_PRECISION_ENV, None)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(QMOE_PRECISION_ENV, None)
        else:
            os.environ[QMOE_PRECISION_ENV] = before


def _stats(engine: Any) -> dict[str, Any]:
    import psutil

    return {"engine": engine.name, "load_s": engine.load_s, "position": engine.position, "exact": engine.exact,
            "expert_encoding": engine.manifest.get("experts"), "rss_bytes": psutil.Process().memory_info().rss}


class OnnxRuntimeEngine:
    name = "onnxruntime"

    def __init__(self, path: Path, exact: bool = True, threads: int | None = None):
        import onnxruntime as ort

        self.folder, self.manifest, self.spec = read_export(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        start = time.perf_counter()
        with qmoe_precision(exact and needs_fp32_gemm(self.manifest)):
            self.session = ort.InferenceSession(str(self.folder / MODEL), options,
                                                providers=["CPUExecutionProvider"])
        self.load_s = time.perf_counter() - start
        self.exact = exact
        self.max_positions = int(self.manifest.get("max_length", self.spec.max_position_embeddings))
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.reset()

    def reset(self) -> None:
        s = self.spec
        self.position = 0
        self.past = {}
        for layer in range(s.num_hidden_layers):
            rows = s.sliding_window if s.is_sliding(layer) else 0  # the window cache's capacity, or empty
            for kv in ("key", "value"):
                self.past[f"past_key_values.{layer}.{kv}"] = \
                    np.zeros((1, s.num_key_value_heads, rows, s.head_dim), np.float32)

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        n = len(tokens)
        if n == 0:
            return np.zeros((0, self.spec.vocab_size), np.float32)
        total = self.position + n
        if total > self.max_positions:
            raise UsageError(f"sequence of {total} tokens exceeds the context this ONNX folder was exported for "
                             f"({self.max_positions}; export with --max-length N for more)")
        feed = {"input_ids": np.asarray(tokens, np.int64)[None], "attention_mask": np.ones((1, total), np.int64),
                **self.past}
        results = dict(zip(self.output_names, self.session.run(None, feed)))
        self.past = {name.replace("present.", "past_key_values."): value for name, value in results.items()
                     if name.startswith("present.")}
        self.position = total
        return results["logits"][0]

    def step(self, token: int) -> np.ndarray:
        return self.prefill([token])[0]

    def stats(self) -> dict[str, Any]:
        return _stats(self)

    def close(self) -> None:
        self.session = None
        self.past = {}


class OrtGenaiEngine:
    name = "ortgenai"

    def __init__(self, path: Path, exact: bool = True, threads: int | None = None, max_length: int | None = None):
        import onnxruntime_genai as og

        self.folder, self.manifest, self.spec = read_export(path)
        config = og.Config(str(self.folder))
        config.clear_providers()  # CPU
        if threads:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        start = time.perf_counter()
        with qmoe_precision(exact and needs_fp32_gemm(self.manifest)):
            self.model = og.Model(config)
        self.load_s = time.perf_counter() - start
        self.og, self.exact = og, exact
        self.max_length = max_length or json.loads((self.folder / GENAI_CONFIG).read_text())["search"]["max_length"]
        self.reset()

    def reset(self) -> None:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, max_length=self.max_length, batch_size=1)
        self.generator = self.og.Generator(self.model, params)
        self.position = 0

    def append(self, tokens: Sequence[int]) -> None:
        """Feed tokens without copying their logits out (a long prompt's earlier chunks)."""
        if self.position + len(tokens) > self.max_length:
            raise UsageError(f"sequence of {self.position + len(tokens)} tokens exceeds max_length "
                             f"{self.max_length} (pass max_length=..., or export with --max-length)")
        self.generator.append_tokens(np.asarray(tokens, np.int32))
        self.position += len(tokens)

    def prefill(self, tokens: Sequence[int]) -> np.ndarray:
        if len(tokens) == 0:
            return np.zeros((0, self.spec.vocab_size), np.float32)
        self.append(tokens)
        return np.array(self.generator.get_output("logits")[0], np.float32)  # every position of this batch

    def step(self, token: int) -> np.ndarray:
        self.append([token])
        return np.array(self.generator.get_logits()[0, -1], np.float32)  # get_output stays stale after steps

    def stats(self) -> dict[str, Any]:
        return {**_stats(self), "max_length": self.max_length}

    def close(self) -> None:
        self.generator = None
        self.model = None
