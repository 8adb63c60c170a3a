"""Device bundles: everything one device needs to run the model, with a manifest of sizes and checksums.

- Android (llama.cpp): GGUF shards no larger than the device's largest accepted file, plan.json and the engine
  settings from the planner, the tokenizer vocabulary, the harmony chat template, README.md (adb push + run).
  A checkpoint is exported straight into the bundle; a GGUF that already fits is hard-linked (copied once only
  across filesystems), one that does not is re-split by streaming its tensors into new shards.
- Windows (onnxruntime-genai, CPU): the ONNX model folder (genai_config.json, model.onnx and its external data,
  tokenizer files), exported straight into the bundle from a checkpoint or hard-linked from an ONNX folder;
  optionally also zipped.

Every bundle appears whole or not at all (edgeoss.atomic) and ends with manifest.json (edgeoss.package.bundle), written
last, once every file is in place: each file is hashed exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gguf

from edgeoss.package import bundle
from edgeoss.formats import tokenizer
from edgeoss.formats.tools import load_tools
from edgeoss.atomic import atomic_dir
from edgeoss.package.bundle import BundleError, link_or_copy
from edgeoss.errors import UsageError
from edgeoss.planner.memory import ENGINES, kv_cache
from edgeoss.planner.plan import write_plan
from edgeoss.planner.profiles import DeviceProfile, load_profile
from edgeoss.formats.ggml_gguf import GGUFMetadata
from edgeoss.progress import byte_progress
from edgeoss.formats.spec import ModelSpec, sizes
from edgeoss.units import human

ANDROID_DIRS = ("/data/local/tmp/edgeoss-bundle", "/sdcard/Android/data/org.edgeoss.demo/files/edgeoss-bundle")
MODEL_GGUF = "model.gguf"  # split: model-00001-of-0000N.gguf (llama.cpp's shard names)
PLAN_FILE, CHAT_TEMPLATE, README = "plan.json", "chat_template.jinja", "README.md"
DEFAULT_CONTEXT = 8192  # gpt-oss's own chat default (openai/gpt-oss README: terminal chat context 8192)
HEADER_SLACK = 1 << 20  # room for a shard's tensor-info table and alignment, beyond its metadata
CHUNK = bundle.CHUNK


@dataclass
class PackageReport:
    """What a packaging run wrote, and how the input's bytes got there."""

    path: Path
    target: str
    files: int = 0
    nbytes: int = 0
    linked: list[str] = field(default_factory=list)  # bundle files that are hard links to the input
    copied: list[str] = field(default_factory=list)  # input files copied once (input on another filesystem)
    zip: Path | None = None
    chat_template: str = ""  # how the bundle's chat template compares with openai-harmony (chat_check.summary)

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "target": self.target, "files": self.files, "bytes": self.nbytes,
                "linked": self.linked, "copied": self.copied, "zip": str(self.zip) if self.zip else None,
                "chat_template": self.chat_template}


# ---- shared pieces of both targets ----------------------------------------------------------------------------
def model_fields(spec: ModelSpec) -> dict[str, Any]:
    """The manifest's "model" object."""
    counts = sizes(spec)
    return {"name": spec.name, "num_hidden_layers": spec.num_hidden_layers,
            "num_local_experts": spec.num_local_experts, "num_experts_per_tok": spec.num_experts_per_tok,
            "hidden_size": spec.hidden_size, "vocab_size": spec.vocab_size,
            "params_total": counts.params_total, "params_active": counts.params_active}


def add_tokenizer(folder: Path, report: PackageReport, template: str | None = None) -> dict[str, Any]:
    """Write the verified o200k vocabulary and the chat template: `template` (the model's own, e.g. what its GGUF
    carries), else what the input brought, else edgeoss's harmony template; return the manifest's "tokenizer",
    "chat_template" and "chat_template_check" fields (how the template compares with openai-harmony, which the
    Android app renders with, on edgeoss.formats.chat_check's conversations; also in the report)."""
    from edgeoss.formats import chat_check

    if not (folder / tokenizer.VOCAB_FILENAME).exists():
        tokenizer.write_vocab(folder)  # checked against O200K_BASE_SHA256 on the way
    if template is not None:
        (folder / CHAT_TEMPLATE).write_text(template, encoding="utf-8")
    elif not (folder / CHAT_TEMPLATE).exists():
        (folder / CHAT_TEMPLATE).write_text(tokenizer.chat_template(), encoding="utf-8")
    report.chat_template = chat_check.summary((folder / CHAT_TEMPLATE).read_text(encoding="utf-8"))
    return {"tokenizer": {"vocab_file": tokenizer.VOCAB_FILENAME, "sha256": tokenizer.O200K_BASE_SHA256},
            "chat_template": CHAT_TEMPLATE, "chat_template_check": report.chat_template}


TOOLS_FILE, TOOLS_SECTION_FILE = "tools.json", "tools_developer.txt"


def add_tools(folder: Path, tools: list) -> dict[str, Any]:
    """Write the app's tools (JSON, as validated) and their developer-message section as openai-harmony renders it
    (the app appends it to the developer message and adds the system note; HarmonyPrompt.java); return the
    manifest's "tools" field."""
    from dataclasses import asdict

    from edgeoss.formats.tools import SYSTEM_NOTE, developer_tools_text

    (folder / TOOLS_FILE).write_text(json.dumps([asdict(t) for t in tools], indent=2) + "\n", encoding="utf-8")
    (folder / TOOLS_SECTION_FILE).write_text(developer_tools_text(tools), encoding="utf-8")
    return {"file": TOOLS_FILE, "developer_section": TOOLS_SECTION_FILE, "system_note": SYSTEM_NOTE,
            "names": [t.name for t in tools]}


def device_profile(name: str, platform: str) -> DeviceProfile:
    profile = load_profile(name)
    if profile.platform != platform:
        raise UsageError(f"device {profile.name!r} is a {profile.platform} profile; a {platform} bundle needs a "
                         f"{platform} device")
    return profile


def _link_in(source: Path, dest: Path, report: PackageReport, progress: bool | None) -> None:
    (report.linked if link_or_copy(source, dest, progress) else report.copied).append(dest.name)


def _finish(folder: Path, report: PackageReport, fields: dict[str, Any], readme: Callable[[], str],
            progress: bool | None) -> None:
    """README (it describes the other files, so it comes after them), then the manifest over everything."""
    (folder / README).write_text(readme(), encoding="utf-8")
    manifest = bundle.write_manifest(folder, report.target, fields, progress)
    report.files = len(manifest["files"])
    report.nbytes = sum(f["size"] for f in manifest["files"])


# ---- GGUF inputs ----------------------------------------------------------------------------------------------
def gguf_metadata(path: Path) -> GGUFMetadata:
    """A GGUF's keys and tensor types read with ggml's own parser (milliseconds; gguf-py's GGUFReader spends
    10-20 s and ~700 MB parsing the vocabulary into Python objects)."""
    from edgeoss.formats.ggml_gguf import read_metadata

    try:
        return read_metadata(path)
    except ImportError:
        raise UsageError(f"{path}: reading GGUF metadata needs llama-cpp-python, the engine Android bundles run "
                         "on (pip install llama-cpp-python)") from None


def gguf_files(first: Path) -> tuple[list[Path], GGUFMetadata]:
    """Every file of a GGUF (itself, or each shard of a split set named llama.cpp's way from its first shard)
    and the metadata of the first."""
    meta = gguf_metadata(first)
    count = int(meta.get(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, 1))
    if count == 1:
        return [first], meta
    suffix = f"-00001-of-{count:05d}.gguf"
    if not first.name.endswith(suffix):
        raise UsageError(f"{first}: one shard of a {count}-file split GGUF; give its first shard (NAME{suffix})")
    prefix = first.name[:-len(suffix)]
    shards = [first.with_name(gguf.gguf_writer.SHARD_NAME_FORMAT.format(prefix, i, count))
              for i in range(1, count + 1)]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise UsageError(f"{first}: split GGUF is missing {', '.join(missing)}")
    return shards, meta


class _Pread:
    """One tensor of an input GGUF as GGUFWriter.write_tensor_data sees it (nbytes, tofile): its bytes read with
    pread in chunks, so that neither the input nor a tensor is ever held whole (nor mapped pages piling up)."""

    def __init__(self, fd: int, offset: int, nbytes: int, advance: Callable[[int], None]):
        self.fd, self.offset, self.nbytes, self.advance = fd, offset, nbytes, advance

    def tofile(self, fout) -> None:
        done = 0
        while done < self.nbytes:
            piece = os.pread(self.fd, min(CHUNK, self.nbytes - done), self.offset + done)
            if not piece:
                raise BundleError(f"unexpected end of file at byte {self.offset + done} of an input GGUF")
            fout.write(piece)
            done += len(piece)
            self.advance(len(piece))


def resplit_gguf(readers: list[gguf.GGUFReader], out: Path, max_file_size: int, progress: bool | None = None) \
        -> list[Path]:
    """Rewrite a GGUF (one file or a split set) as shards of at most `max_file_size` bytes at `out`
    (NAME-0000i-of-0000N.gguf), streaming each tensor's bytes from the input: the model is never loaded whole.
    Metadata is copied unchanged except the split keys, which the writer sets afresh."""
    header = sum(r.data_offset for r in readers)  # every input header, an upper bound on the first shard's
    writer = gguf.GGUFWriter(None, "", split_max_size=_split_size(max_file_size, header))
    writer.kv_data[0].clear()  # architecture comes from the input with every other key
    writer.data_alignment = readers[0].alignment
    for key, found in readers[0].fields.items():
        if key.startswith("GGUF.") or key.startswith("split."):
            continue
        sub_type = found.types[-1] if found.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, found.contents(), found.types[0], sub_type=sub_type)
    tensors = [(r, t) for r in readers for t in r.tensors]
    for _, t in tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.n_bytes, raw_dtype=t.tensor_type)
    files = writer.format_shard_names(out)
    name = Path(readers[0].data.filename).name
    with contextlib.ExitStack() as stack:
        fds = {id(r): os.open(r.data.filename, os.O_RDONLY) for r in readers}
        stack.callback(lambda: [os.close(fd) for fd in fds.values()])
        advance = stack.enter_context(byte_progress(sum(t.n_bytes for _, t in tensors), f"splitting {name}",
                                                    progress))
        writer.write_header_to_file(out)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for r, t in tensors:
            writer.write_tensor_data(_Pread(fds[id(r)], t.data_offset, t.n_bytes, advance),
                                     tensor_endianess=gguf.GGUFEndian.LITTLE)
        writer.close()
    return files


def _gguf_header_bytes(spec: ModelSpec, scratch: Path) -> int:
    """Bytes of metadata the exporter puts before the tensors (tokenizer included), measured by writing it."""
    from edgeoss.exporters.gguf import add_metadata
    from edgeoss.formats.gguf_names import ARCH

    writer = gguf.GGUFWriter(scratch, ARCH)
    add_metadata(writer, spec, spec.name)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    nbytes = scratch.stat().st_size
    scratch.unlink()
    return nbytes


def _split_size(max_file_size: int, header: int) -> int:
    """Tensor bytes per shard so that a shard, its header included, stays within `max_file_size`."""
    split = max_file_size - header - HEADER_SLACK
    if split <= 0:
        raise UsageError(f"a file limit of {human(max_file_size)} cannot hold even the GGUF metadata "
                         f"({human(header)}, the tokenizer included)")
    return split


def _export_split_size(spec: ModelSpec, dense_type: str, max_file_size: int, scratch: Path) -> int | None:
    """The exporter's split size for a file limit, or None when the whole model fits in one file."""
    from edgeoss.planner.memory import weight_bytes

    header = _gguf_header_bytes(spec, scratch)
    weights = weight_bytes(spec, dense_type, "llamacpp")
    if header + weights.dense + weights.experts_total + HEADER_SLACK <= max_file_size:
        return None
    return _split_size(max_file_size, header)


def _check_file_sizes(files: list[Path], max_file_size: int) -> None:
    for f in files:
        if f.stat().st_size > max_file_size:
            raise BundleError(f"{f.name}: {human(f.stat().st_size)} exceeds the device's largest file "
                              f"({human(max_file_size)}): one tensor is larger than that (use a larger limit)")


def android_model(source: Path, folder: Path, max_file_size: int | None, dense_type: str, report: PackageReport,
                  progress: bool | None) -> tuple[ModelSpec, list[Path], str]:
    """Put the model into the bundle as GGUF files of at most `max_file_size` bytes (None: one file); a checkpoint
    is exported with `dense_type`, a GGUF keeps its own. Returns (spec, files in order, dense type)."""
    if source.is_dir():
        from edgeoss.formats.checkpoint import Checkpoint
        from edgeoss.exporters.gguf import export_gguf

        with Checkpoint.open(source, bf16_experts=True) as ckpt:  # BF16 experts are quantized on the way
            spec = ckpt.spec
            split = None if max_file_size is None else \
                _export_split_size(spec, dense_type, max_file_size, folder / ".header.gguf")
            files = export_gguf(ckpt, folder / MODEL_GGUF, dense_type=dense_type, split_max_size=split,
                                progress=progress)
    else:
        from edgeoss.formats.gguf_meta import check_tensors, gguf_dense_type, spec_from_metadata

        shards, meta = gguf_files(source)
        spec = spec_from_metadata(meta)
        check_tensors(shards, meta, spec)
        dense_type = gguf_dense_type(meta, source)
        if max_file_size is None or all(s.stat().st_size <= max_file_size for s in shards):
            files = [folder / MODEL_GGUF] if len(shards) == 1 else \
                [folder / gguf.gguf_writer.SHARD_NAME_FORMAT.format(Path(MODEL_GGUF).stem, i, len(shards))
                 for i in range(1, len(shards) + 1)]
            for shard, dest in zip(shards, files):
                _link_in(shard, dest, report, progress)
        else:
            files = resplit_gguf([gguf.GGUFReader(s) for s in shards], folder / MODEL_GGUF, max_file_size, progress)
    if max_file_size is not None:
        _check_file_sizes(files, max_file_size)
    return spec, files, dense_type


def gguf_chat_template(path: Path) -> str | None:
    """The chat template a GGUF carries (tokenizer.chat_template: the checkpoint's own when it had one)."""
    from edgeoss.formats.ggml_gguf import read_metadata

    template = read_metadata(path).get("tokenizer.chat_template")
    return template if isinstance(template, str) else None


# ---- Android ------------------------------------------------------------------------------------------------------
ANDROID_ENGINES = ("auto", "llamacpp", "llamacpp-stream")


def android_plan(spec: ModelSpec, device: DeviceProfile, context: int, dense_type: str, source_name: str,
                 engine: str = "auto") -> tuple[dict, dict]:
    """(plan.json content, llama.cpp settings) for the device. auto: llama.cpp with every expert resident when that
    fits, else llama.cpp with edgeoss's expert store (experts stream from the GGUF within the plan's budget) when
    that fits, else the plain plan, which says why nothing fits; or the engine asked for. Settings are given
    even when the plan does not fit, so that the bundle still says how to run."""
    from edgeoss.planner.plan import PlanRequest, llamacpp_settings, make_plan

    if engine not in ANDROID_ENGINES:
        raise UsageError(f"engine {engine!r}: choose from {', '.join(ANDROID_ENGINES)}")
    request = PlanRequest(spec, device, context, model_source=source_name, engine="llamacpp",
                          dense_type=dense_type)
    plan = make_plan(request) if engine != "llamacpp-stream" else None
    if engine != "llamacpp" and (plan is None or not plan["fits"]):
        streaming = make_plan(request.replace(engine="llamacpp-stream"))
        if streaming["fits"] or engine == "llamacpp-stream":
            return streaming, streaming["engines"]["llamacpp_stream"] or llamacpp_settings(request)
    return plan, llamacpp_settings(request)


def android_engine(settings: dict, plan: dict, model_file: str, first_gguf: Path, spec: ModelSpec) -> dict:
    """The manifest's "engine" object: llama.cpp's load and context settings, and for a streaming plan the expert
    store's (budget, the pinned experts as the GGUF stores them, cache slots, ubatch)."""
    stream = plan["engine"] == "llamacpp-stream" and plan["fits"]
    fields = {"name": "llama.cpp", "model_file": model_file,
              "settings": {"n_ctx": settings["n_ctx"], "n_threads": settings["n_threads"],
                           "n_gpu_layers": 0 if stream else settings["n_gpu_layers"], "use_mmap": settings["use_mmap"],
                           "use_mlock": False if stream else settings["use_mlock"],
                           "n_batch": 512 if stream else settings["n_ubatch"],
                           "flash_attn": settings["flash_attn"]},
              "expert_store": None, "flags": ["-m", model_file]}
    if not stream:
        fields["flags"] += settings["flags"]
        return fields
    from edgeoss.formats.ggml_gguf import read_metadata
    from edgeoss.formats.gguf_meta import stored_expert_ids

    pinned = {int(layer): ids for layer, ids in plan["experts"]["pinned"].items()}
    stored = stored_expert_ids(read_metadata(first_gguf), pinned, spec)
    fields["expert_store"] = {"budget_bytes": settings["memory_budget"], "cache_slots": settings["cache_slots"],
                              "n_ubatch": settings["n_ubatch"],
                              "pinned": {str(layer): list(ids) for layer, ids in sorted(stored.items())}}
    fields["flags"] += ["-c", str(settings["n_ctx"]), "-t", str(settings["n_threads"]), "-fa", "on", "-ctk",
                        settings["type_k"], "-ctv", settings["type_v"], "--no-repack"]
    return fields


def package_android(source: str | Path, out: str | Path, *, device: str, context: int = DEFAULT_CONTEXT,
                    max_file_size: int | None = None, dense_type: str = "bf16", engine: str = "auto",
                    force: bool = False, progress: bool | None = None, tools: str | Path | None = None) \
        -> tuple[PackageReport, dict]:
    """Bundle a checkpoint folder (exported here) or a GGUF (hard-linked, or re-split when a file is larger than
    the device accepts) for llama.cpp on an Android device. `max_file_size` lowers the device's file limit;
    `tools`: a tools file the app declares to the model (carried with its developer-message section pre-rendered
    by openai-harmony). Returns the report and the plan (which may say the model does not fit the device)."""
    source, out = Path(source), Path(out)
    declared = load_tools(tools) if tools is not None else None
    if not source.exists():
        raise UsageError(f"{source}: no such checkpoint folder or GGUF file")
    profile = device_profile(device, "android")
    limit = profile.max_file_bytes
    if max_file_size is not None:
        if limit is not None and max_file_size > limit:
            raise UsageError(f"--max-file-size {human(max_file_size)} exceeds what {profile.name} accepts "
                             f"({human(limit)})")
        limit = max_file_size
    report = PackageReport(out, "android")
    with atomic_dir(out, overwrite=force) as folder:
        spec, files, dense_type = android_model(source, folder, limit, dense_type, report, progress)
        plan, settings = android_plan(spec, profile, context, dense_type, source.name, engine)
        write_plan(folder / PLAN_FILE, plan)
        model_file = files[0].name
        fields = {
            "model": model_fields(spec), "context": context, "plan": PLAN_FILE,
            "memory": {"min_free_ram_bytes": plan["memory"]["ram_bytes"] + plan["memory"]["reserve_bytes"],
                       "app_budget_bytes": profile.app_budget_bytes},
            "engine": android_engine(settings, plan, model_file, files[0], spec),
            **add_tokenizer(folder, report, gguf_chat_template(files[0]))}
        if declared is not None:
            fields["tools"] = add_tools(folder, declared)
        _finish(folder, report, fields, lambda: android_readme(folder, fields, profile.name, limit), progress)
    return report, plan


# ---- Windows ----------------------------------------------------------------------------------------------------
def windows_model(source: Path, folder: Path, experts: str | None, context: int | None, report: PackageReport,
                  progress: bool | None) -> tuple[ModelSpec, int, str]:
    """Put the onnxruntime-genai model folder into the bundle; (spec, max_length, expert encoding)."""
    from edgeoss.exporters import onnx as onnx_export
    from edgeoss.runtimes.onnxrt import read_export

    if not (source / onnx_export.GENAI_CONFIG).is_file():  # a checkpoint: export straight into the bundle
        onnx_export.export_onnx(source, folder, experts=experts or onnx_export.DEFAULT_ENCODING, progress=progress,
                                max_length=context)
    else:
        for option, value in (("--context", context), ("--experts", experts)):
            if value is not None:
                raise UsageError(f"{source}: an ONNX folder was exported with its own {option}; give it for a "
                                 "checkpoint only")
        read_export(source)  # validated before anything is linked in
        for path in sorted(source.iterdir()):
            if path.name in (bundle.MANIFEST, README):  # written afresh for this bundle
                continue
            if path.is_symlink() or not path.is_file():
                raise UsageError(f"{path}: an ONNX folder for a bundle holds regular files only")
            _link_in(path, folder / path.name, report, progress)
    _, export_manifest, spec = read_export(folder)
    max_length = json.loads((folder / onnx_export.GENAI_CONFIG).read_text())["search"]["max_length"]
    return spec, int(max_length), export_manifest.get("experts", "int8")


# The CPU vector ISAs each expert encoding runs fast on in ONNX Runtime 1.32 (edgeoss/planner/kernels.py)
FAST_ON = {"mxfp4": ["avx512"], "int4": ["avx512", "avx2", "arm64"], "int8": ["avx512", "avx2", "arm64"]}


def _installed(package: str) -> str:
    """The version of an engine package this bundle is made (and checked) with."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def windows_memory(spec: ModelSpec, folder: Path, max_length: int) -> int:
    """RAM the folder needs in onnxruntime-genai on CPU: the weights it loads (the external data file), plus the
    widening to float32 of every bf16 matrix but the embedding when ONNX Runtime folds their Casts at load (the
    unembedding; with --dense exact the attention too), the float32 KV cache it preallocates for max_length
    tokens in every layer, and the runtime (the planner's onnxruntime-genai model, edgeoss/planner/memory.py)."""
    import onnx

    from edgeoss.exporters.onnx import DATA, MODEL

    weights = (folder / DATA).stat().st_size + (folder / MODEL).stat().st_size
    graph = onnx.load(folder / MODEL, load_external_data=False).graph
    widened = sum(2 * math.prod(t.dims) for t in graph.initializer
                  if t.data_type == onnx.TensorProto.BFLOAT16 and t.name != "embed")
    kv = kv_cache(spec, max_length, "f32", "ortgenai").total_bytes
    return weights + widened + kv + ENGINES["ortgenai"].runtime_bytes


# ---- READMEs ------------------------------------------------------------------------------------------------------
def _file_table(folder: Path) -> str:
    rows = [f"| `{p}` | {human((folder / p).stat().st_size)} |" for p in bundle.bundle_files(folder)]
    return "\n".join(["| file | size |", "|---|---|", *rows])


def android_readme(folder: Path, manifest: dict[str, Any], device: str, max_file_size: int | None) -> str:
    """adb push and run steps for an Android bundle, from the manifest fields it will carry."""
    model, engine, memory = manifest["model"], manifest["engine"], manifest["memory"]
    names = [*bundle.bundle_files(folder), README, bundle.MANIFEST]
    push = " ".join(names)
    limit = f"no file larger than {human(max_file_size)}, the file-size limit it was packaged for" \
        if max_file_size else "one file: the device's storage has no file-size limit"
    flags = " ".join(engine["flags"])
    sections = [
        f"# {model['name']} for Android ({device}, context {manifest['context']})",
        f"An edgeoss bundle for llama.cpp: the model as GGUF ({limit}), the o200k_harmony vocabulary, the harmony "
        f"chat template, the memory plan (`{PLAN_FILE}`) and `{bundle.MANIFEST}` (size and sha256 of every other "
        f"file). It needs {human(memory['min_free_ram_bytes'])} of free RAM; the device lets one app hold "
        f"{human(memory['app_budget_bytes'])}." + _prediction_line(folder),
        "## 1. Check it on the computer",
        "    edgeoss package verify <this folder>",
        "## 2. Push it to the phone",
        "From inside this folder, either to the shell's folder (any app that can read it, or llama.cpp's tools):",
        f"    adb shell mkdir -p {ANDROID_DIRS[0]}\n    adb push {push} {ANDROID_DIRS[0]}/",
        "or into the edgeoss demo app's own folder (no storage permission needed):",
        f"    adb shell mkdir -p {ANDROID_DIRS[1]}\n    adb push {push} {ANDROID_DIRS[1]}/",
        "The app reads the files where they are (llama.cpp loads the model from this folder) and never copies "
        "them into its own storage: the phone needs room for the bundle once.",
        "## 3. Run",
        "With the demo app (android_demo/): enter the folder above, Verify (it checks the manifest's sizes and "
        "sha256 on the phone), then Run.",
        f"With llama.cpp's own tools built for arm64-v8a and pushed to /data/local/tmp, using the manifest's "
        f"engine flags (`{engine['model_file']}` is the first shard; llama.cpp opens the others itself):",
        f"    adb shell 'cd {ANDROID_DIRS[0]} && /data/local/tmp/llama-cli {flags} --jinja'",
        *([f"This plan streams experts from the GGUF: the demo app's expert store keeps "
           f"{human(engine['expert_store']['budget_bytes'])} of them in RAM (the plan's pinned experts and "
           f"{engine['expert_store']['cache_slots']} cache slots) and reads the rest as they are routed. llama.cpp's "
           "own tools have no such store: they map every expert and need the whole model's RAM."]
          if engine.get("expert_store") else []),
        "## Files",
        _file_table(folder),
    ]
    return "\n\n".join(sections) + "\n"


def _prediction_line(folder: Path) -> str:
    """What the bundle's plan says of fit and speed, as one sentence (empty without a plan)."""
    if not (folder / PLAN_FILE).is_file():
        return ""
    plan = json.loads((folder / PLAN_FILE).read_text())
    if not plan.get("fits"):
        return f" The plan says it does not fit {plan['device']['name']}: {'; '.join(plan.get('advice', [])[:1])}"
    how = "streaming experts from flash" if plan["engine"] == "llamacpp-stream" else "with every expert in RAM"
    p = plan["prediction"]
    return (f" The plan fits {plan['device']['name']} {how}: {p['decode_tok_s']:.2f} tok/s decode and "
            f"{p['ttft_s']:.1f} s to the first token of a {p['prompt_tokens']}-token prompt, predicted.")


def windows_readme(folder: Path, manifest: dict[str, Any], experts: str) -> str:
    """Check and run steps for a Windows bundle (onnxruntime-genai on CPU)."""
    model, memory = manifest["model"], manifest["memory"]
    max_length = manifest["engine"]["settings"]["max_length"]
    ort, genai = manifest["engine"]["onnxruntime"], _installed("onnxruntime-genai")
    run = "\n".join(f"    {line}" for line in (
        "import json, onnxruntime_genai as og",
        "model = og.Model(r\"<this folder>\")",
        "tokenizer = og.Tokenizer(model)",
        "prompt = tokenizer.apply_chat_template(json.dumps([{\"role\": \"user\", \"content\": \"Hi\"}]),",
        "                                       add_generation_prompt=True)",
        "params = og.GeneratorParams(model)",
        f"params.set_search_options(max_length={max_length})",
        "generator = og.Generator(model, params)",
        "generator.append_tokens(tokenizer.encode(prompt))",
        "stream = tokenizer.create_stream()",
        "while not generator.is_done():",
        "    generator.generate_next_token()",
        "    print(stream.decode(generator.get_next_tokens()[0]), end=\"\", flush=True)"))
    sections = [
        f"# {model['name']} for Windows (onnxruntime-genai, CPU, max_length {max_length})",
        f"An edgeoss bundle: an onnxruntime-genai model folder (`genai_config.json`, `model.onnx` and its external "
        f"data, tokenizer files; experts encoded {experts}), the o200k_harmony vocabulary, the harmony chat template "
        f"and `{bundle.MANIFEST}` (size and sha256 of every other file). It needs about "
        f"{human(memory['min_free_ram_bytes'])} of free RAM.",
        "## 1. Check it",
        "    edgeoss package verify <this folder>",
        "From the zip: `Expand-Archive <bundle>.zip -DestinationPath <folder>` (PowerShell), then verify the folder.",
        "## 2. Run (Python, CPU)",
        f"    pip install onnxruntime=={ort} onnxruntime-genai=={genai}",
        f"Packaged with onnxruntime {ort} and onnxruntime-genai {genai}.",
        *(["The experts are MXFP4 as gpt-oss stores them (QMoE fp4), exact with no setting. They need onnxruntime "
           "1.32 or newer, and **this bundle is fast only on x86-64 CPUs with AVX-512** (Intel Xeon and some Core "
           "generations, AMD Zen 4 and newer; the manifest's `engine.fast_on_cpu_isa`): without AVX-512 (most "
           "Intel laptop CPUs since the 12th generation, and Windows on Arm) ONNX Runtime's fp4 kernel was "
           "measured 42x slower end to end at 20b (0.12 against 4.95 tok/s). On such a CPU package with "
           "`--experts int4` (lossy) or run the GGUF in llama.cpp; `edgeoss plan --engine ortgenai --device ...` "
           "predicts both."]
          if experts == "mxfp4" else
          ["Optional, for int8 experts computed exactly (fp32 activations in the MoE, slower): "
           "`set ORT_QMOE_CPU_QNBIT_GEMM=fp32` before starting Python."] if experts == "int8" else []),
        run,
        "## Files",
        _file_table(folder),
    ]
    return "\n\n".join(sections) + "\n"


def package_windows(source: str | Path, out: str | Path, *, experts: str | None = None, context: int | None = None,
                    device: str | None = None, make_zip: bool = False, force: bool = False,
                    progress: bool | None = None) -> PackageReport:
    """Bundle a checkpoint (exported here) or an ONNX folder (hard-linked) for onnxruntime-genai on a CPU;
    `make_zip` also writes OUT.zip. `device` (a profile) only sets the manifest's app budget."""
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise UsageError(f"{source}: expected a checkpoint folder or an ONNX folder (genai_config.json)")
    budget = device_profile(device, "windows").app_budget_bytes if device else None
    report = PackageReport(out, "windows")
    with atomic_dir(out, overwrite=force) as folder:
        spec, max_length, encoding = windows_model(source, folder, experts, context, report, progress)
        needed = windows_memory(spec, folder, max_length)
        fields = {"model": model_fields(spec), "context": max_length,
                  "memory": {"min_free_ram_bytes": needed, "app_budget_bytes": budget or needed},
                  "engine": {"name": "onnxruntime-genai", "model_folder": ".", "onnxruntime": _installed("onnxruntime"),
                             "experts": encoding, "fast_on_cpu_isa": FAST_ON.get(encoding, []),
                             "settings": {"max_length": max_length, "provider": "cpu"}},
                  **add_tokenizer(folder, report)}
        _finish(folder, report, fields, lambda: windows_readme(folder, fields, encoding), progress)
    if make_zip:
        report.zip = bundle.zip_bundle(out, out.with_name(out.name + ".zip"), progress)
    return report
