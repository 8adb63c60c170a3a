"""Open a gpt-oss checkpoint folder in either published layout, validate it, and read it lazily.

    ckpt = Checkpoint.open("gpt-oss-20b/")        # HF layout, or "gpt-oss-20b/original/"
    ckpt.spec                                      # ModelSpec from config.json
    ckpt.f32("layers.0.q.weight")                  # canonical names, float32 (BF16 upcast exactly)
    ckpt.raw("layers.0.gate_up.blocks")            # zero-copy view of the mmapped bytes
    ckpt.expert(0, "gate_up", 5)                   # (blocks, scales, bias) of one expert, nothing else read
    ckpt.byte_range("layers.0.down.blocks", expert=5)   # (file, offset, nbytes) for pread

Every stored tensor's name, shape and dtype is checked against the spec before any work; `check_values()`
also scans every MXFP4 scale byte for NaN (0xFF). Problems are `CheckpointError`s naming file and tensor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import mxfp4
from ..errors import CheckpointError, EdgeossError
from .layouts import HF, ORIGINAL, stored_name, stored_table
from .safetensors_io import Entry, SafetensorsFile, bf16_to_f32
from .spec import (BF16, BF16_EXPERTS, MXFP4_EXPERTS, ModelSpec, TensorInfo, from_config, is_original_config,
                   load_config, tensor_table)

BF16_EXPONENT = np.uint16(0x7F80)  # a bfloat16 whose exponent bits are all set is NaN or infinite

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
EXPERT_PROJECTIONS = ("gate_up", "down")


@dataclass(frozen=True)
class Located:
    """A stored tensor found in a file."""

    file: SafetensorsFile
    entry: Entry


class Checkpoint:
    def __init__(self, folder: Path, layout: str, spec: ModelSpec, files: list[SafetensorsFile],
                 where: dict[str, Located], experts: str = MXFP4_EXPERTS):
        self.folder, self.layout, self.spec, self.files, self._where = folder, layout, spec, files, where
        self.experts = experts  # "mxfp4" as published, or "bf16" (fine-tunes, dequantized copies)
        self._table = {t.name: t for t in tensor_table(spec, experts)}

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, bf16_experts: bool = False) -> "Checkpoint":
        """Open and validate a checkpoint folder. A checkpoint with BF16 experts is read only by callers that say
        they handle them (`bf16_experts=True`); the others get a one-line CheckpointError."""
        folder = Path(path)
        if not folder.exists():
            raise CheckpointError(str(folder), "no such checkpoint folder")
        if not folder.is_dir():
            raise CheckpointError(str(folder), "expected a checkpoint folder (config.json + *.safetensors)")
        if not (folder / "config.json").exists() and (folder / "original" / "config.json").exists():
            folder = folder / "original"
        cfg = load_config(folder / "config.json")
        spec = from_config(cfg, str(folder / "config.json"))
        layout = ORIGINAL if is_original_config(cfg) else HF
        files = _original_files(folder) if layout == ORIGINAL else _hf_files(folder)
        where = _locate(files)
        experts = _expert_encoding(cfg, spec, layout, where, folder)
        if experts == BF16_EXPERTS and not bf16_experts:
            raise CheckpointError(str(folder), "BF16 experts (a fine-tuned or dequantized checkpoint): this command "
                                               "needs MXFP4 experts; `edgeoss convert SRC OUT --layout hf` writes "
                                               "them (export, plan, parity and package take BF16 as it is)")
        ckpt = cls(folder, layout, spec, files, where, experts)
        ckpt._validate_names()
        return ckpt

    def _validate_names(self) -> None:
        expected = {t.name: t for t in stored_table(self.spec, self.layout, self.experts)}
        for name, info in expected.items():
            if name not in self._where:
                raise CheckpointError(str(self.folder), f"missing tensor (expected {info.dtype}{list(info.shape)})",
                                      name)
            loc = self._where[name]
            if loc.entry.dtype != info.dtype or loc.entry.shape != info.shape:
                raise CheckpointError(str(loc.file.path), f"is {loc.entry.dtype}{list(loc.entry.shape)}, "
                                                          f"expected {info.dtype}{list(info.shape)}", name)
        extra = sorted(set(self._where) - set(expected))
        if extra:
            raise CheckpointError(str(self._where[extra[0]].file.path), "unexpected tensor for this config",
                                  extra[0])

    def check_values(self) -> None:
        """Scan what can be wrong inside valid-looking bytes: NaN (0xFF) MXFP4 scale bytes; NaN or infinite BF16
        expert weights."""
        if self.experts == BF16_EXPERTS:
            for info in self._table.values():
                if info.kind == "experts":
                    self.check_finite(info.name, self.raw(info.name))
            return
        for layer in range(self.spec.num_hidden_layers):
            for proj in EXPERT_PROJECTIONS:
                name = f"layers.{layer}.{proj}.scales"
                if mxfp4.has_nan_scale(self.raw(name)):
                    loc = self._locate(name)
                    raise CheckpointError(str(loc.file.path), "MXFP4 scale byte 0xFF (NaN)", loc.entry.name)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- access --------------------------------------------------------------------------------
    def info(self, name: str) -> TensorInfo:
        return self._table[name]

    def _locate(self, name: str) -> Located:
        return self._where[stored_name(self.spec, self.layout, name).name]

    def raw(self, name: str) -> np.ndarray:
        """A canonical tensor as stored (BF16 as uint16 bits), zero-copy from the mapping."""
        s = stored_name(self.spec, self.layout, name)
        arr = self._where[s.name].file.array(s.name)
        return arr[s.rows[0]:s.rows[1]] if s.rows else arr

    def f32(self, name: str) -> np.ndarray:
        """A canonical BF16 tensor as float32 (exact); a NaN or an infinity in it is a CheckpointError."""
        if self._table[name].dtype != BF16:
            raise TypeError(f"{name} is {self._table[name].dtype}, not BF16")
        return bf16_to_f32(self.check_finite(name, self.raw(name)))

    def check_finite(self, name: str, bits: np.ndarray) -> np.ndarray:
        """`bits` (BF16 bits of tensor `name`, or a part of it) unchanged; a NaN or an infinity among them is a
        CheckpointError naming the file and tensor. Every reader of dense values calls this as it streams."""
        bad = np.flatnonzero((bits & BF16_EXPONENT) == BF16_EXPONENT)  # all exponent bits set: NaN or Inf
        if bad.size:
            loc = self._locate(name)
            raise CheckpointError(str(loc.file.path), "non-finite value (NaN or Inf)", loc.entry.name)
        return bits

    def expert(self, layer: int, proj: str, expert: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(blocks [rows, G, 16], scales [rows, G], bias bf16 bits [rows]) of one expert."""
        p = f"layers.{layer}.{proj}"
        return self.raw(f"{p}.blocks")[expert], self.raw(f"{p}.scales")[expert], self.raw(f"{p}.bias")[expert]

    def byte_range(self, name: str, expert: int | None = None) -> tuple[Path, int, int]:
        """(file, absolute offset, length) of a canonical tensor, or of one expert's slice of it."""
        loc, s = self._locate(name), stored_name(self.spec, self.layout, name)
        begin, nbytes = loc.entry.begin, loc.entry.nbytes
        if s.rows is not None:
            row = nbytes // loc.entry.shape[0]
            begin, nbytes = begin + s.rows[0] * row, (s.rows[1] - s.rows[0]) * row
        if expert is not None:
            per = nbytes // loc.entry.shape[0]
            begin, nbytes = begin + expert * per, per
        return loc.file.path, begin, nbytes

    def stored_file(self, name: str) -> Path:
        return self._locate(name).file.path

    @property
    def nbytes(self) -> int:
        return sum(loc.entry.nbytes for loc in self._where.values())


# ---- finding the files ---------------------------------------------------------------------------
def _hf_files(folder: Path) -> list[SafetensorsFile]:
    index_path = folder / INDEX
    if not index_path.exists():
        if (folder / SINGLE).exists():
            return [SafetensorsFile(folder / SINGLE)]
        raise CheckpointError(str(folder), f"no {INDEX} and no {SINGLE}")
    try:
        index = json.loads(index_path.read_text())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise CheckpointError(str(index_path), "not a safetensors index (JSON with a weight_map object)") from None
    shards: dict[str, SafetensorsFile] = {}
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).is_absolute() or Path(shard).name != shard or \
                shard in ("", ".", ".."):
            raise CheckpointError(str(index_path), f"entry points outside the folder: {shard!r}", tensor)
        if shard not in shards:
            if not (folder / shard).is_file():
                raise CheckpointError(str(index_path), f"shard {shard} listed in the index is missing", tensor)
            shards[shard] = SafetensorsFile(folder / shard)
        if tensor not in shards[shard].entries:
            raise CheckpointError(str(folder / shard), "listed in the index but not in this shard", tensor)
    return [shards[k] for k in sorted(shards)]


def _original_files(folder: Path) -> list[SafetensorsFile]:
    # gpt_oss's Checkpoint reads every *.safetensors file in the folder
    paths = sorted(folder.glob("*.safetensors"))
    if not paths:
        raise CheckpointError(str(folder), "no *.safetensors file")
    return [SafetensorsFile(p) for p in paths]


def _expert_encoding(cfg: dict, spec: ModelSpec, layout: str, where: dict[str, Located], folder: Path) -> str:
    """MXFP4 or BF16 experts, from the stored names (layer 0's gate/up), checked against config.json: a
    quantization_config says MXFP4, its absence BF16."""
    bf16_name = stored_name(spec, layout, "layers.0.gate_up.weight").name if layout == HF else None
    experts = BF16_EXPERTS if bf16_name in where else MXFP4_EXPERTS
    quantized = cfg.get("quantization_config") is not None
    if experts == BF16_EXPERTS and quantized:
        raise CheckpointError(str(folder / "config.json"), "quantization_config says MXFP4 experts, but the "
                                                           "shards hold BF16 ones", bf16_name)
    return experts


def _locate(files: list[SafetensorsFile]) -> dict[str, Located]:
    where: dict[str, Located] = {}
    for f in files:
        for name, entry in f.entries.items():
            if name in where:
                raise CheckpointError(str(f.path), f"tensor also stored in {where[name].file.path.name}", name)
            where[name] = Located(f, entry)
    return where


def open_checked(path: str | Path, deep: bool = True, bf16_experts: bool = False) -> Checkpoint:
    """Open and, with deep=True, scan values too; any failure is an EdgeossError."""
    ckpt = Checkpoint.open(path, bf16_experts)
    if deep:
        ckpt.check_values()
    return ckpt


__all__ = ["Checkpoint", "open_checked", "EdgeossError", "EXPERT_PROJECTIONS"]
