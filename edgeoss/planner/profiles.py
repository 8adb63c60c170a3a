"""Device profiles: what a target device offers a model (RAM an app may hold, bandwidths, threads, storage).

A profile is a TOML file (`profiles/<name>.toml`, every figure with its source in a comment; the fields are
documented in `profiles/README.md`) loaded into a frozen `DeviceProfile`. Loading is strict: an unknown key,
a missing key, a value of the wrong type or an impossible combination (an app budget above the RAM) is one
`UsageError` line naming the file and the key.

Where profiles are found, in order:
1. `edgeoss/device_profiles/` inside an installed package (setuptools maps `profiles/` there);
2. `profiles/` next to the package folder (a source checkout or an editable install).
A path to a .toml file is loaded directly.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..units import human, parse_size

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # edgeoss/ (installed: device_profiles/ inside it)
PROFILE_DIRS = (PACKAGE_DIR / "device_profiles", PACKAGE_DIR.parent / "profiles")

PLATFORMS = ("android", "windows", "macos", "linux")
CPU_ARCHS = ("arm64", "x86_64")
# the widest vector ISA the CPU offers, as engines dispatch on it (ONNX Runtime 1.32's fp4 MoE kernel is fast
# only with AVX-512): x86_64 is "avx512" or "avx2", arm64 is "arm64" (NEON)
CPU_ISAS = {"avx512": "x86_64", "avx2": "x86_64", "arm64": "arm64"}
UNLIMITED = "unlimited"


@dataclass(frozen=True)
class DeviceProfile:
    """One target device. Bytes are bytes; bandwidths are decimal GB/s and MB/s as vendors write them."""

    name: str
    description: str
    platform: str
    cpu_arch: str
    cpu_isa: str  # avx512, avx2 or arm64 (CPU_ISAS)
    ram_bytes: int
    app_budget_bytes: int  # what one app can hold before the OS takes it away
    memory_bandwidth_gb_s: float
    flash_seq_read_mb_s: float
    flash_random_read_mb_s: float  # 4 KiB random reads
    cpu_threads: int
    cpu_gflops: float  # sustained quantized-matmul throughput, all cores
    max_file_bytes: int | None  # None: no limit
    gpu_memory_bytes: int = 0  # 0: no GPU the engines use
    gpu_unified: bool = False  # GPU memory is part of ram_bytes
    gpu_memory_bandwidth_gb_s: float = 0.0
    gpu_gflops: float = 0.0
    npu_tops: float = 0.0
    npu_memory_bytes: int = 0
    # decode rates of the engines' own kernels at gpt-oss shapes, timed by `edgeoss profiles measure` on the machine
    # itself (0: not measured; predictions then use the roofline of memory_bandwidth_gb_s and cpu_gflops)
    reference_expert_gb_s: float = 0.0  # MXFP4 expert matvec, GB/s of MXFP4 weights
    reference_dense_gb_s: float = 0.0  # bf16 matvec, GB/s of bf16 weights
    reference_attention_gflops: float = 0.0  # one decode query over 4,096 float32 positions
    llamacpp_expert_gb_s: float = 0.0  # ggml mul_mat of MXFP4 weights and one column, no repack
    llamacpp_dense_gb_s: float = 0.0  # ggml mul_mat of bf16 weights and one column

    @property
    def has_gpu(self) -> bool:
        return self.gpu_memory_bytes > 0

    def decode_rates(self, engine: str) -> "DecodeRates | None":
        """The measured decode rates of `engine`'s kernels on this device, or None where they were not measured."""
        if engine == "reference" and self.reference_expert_gb_s and self.reference_dense_gb_s:
            return DecodeRates(self.reference_expert_gb_s, self.reference_dense_gb_s,
                               self.reference_attention_gflops or None)
        if engine in ("llamacpp", "llamacpp-stream") and self.llamacpp_expert_gb_s and self.llamacpp_dense_gb_s:
            return DecodeRates(self.llamacpp_expert_gb_s, self.llamacpp_dense_gb_s, None)
        return None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DecodeRates:
    """How fast one engine's decode kernels run on a device, measured: weights streamed through the expert and the
    dense matvec, and attention (None: attention is counted as reading the KV cache at the dense rate)."""

    expert_gb_s: float
    dense_gb_s: float
    attention_gflops: float | None


RATE_KEYS = ("reference_expert_gb_s", "reference_dense_gb_s", "reference_attention_gflops", "llamacpp_expert_gb_s",
             "llamacpp_dense_gb_s")

# TOML key -> (field, kind); kinds: str, int, float, bool, size, file_limit
_KEYS = {
    "name": ("name", "str"), "description": ("description", "str"), "platform": ("platform", "str"),
    "cpu_arch": ("cpu_arch", "str"), "cpu_isa": ("cpu_isa", "str"),
    "ram": ("ram_bytes", "size"), "app_budget": ("app_budget_bytes", "size"),
    "memory_bandwidth_gb_s": ("memory_bandwidth_gb_s", "float"),
    "flash_seq_read_mb_s": ("flash_seq_read_mb_s", "float"),
    "flash_random_read_mb_s": ("flash_random_read_mb_s", "float"),
    "cpu_threads": ("cpu_threads", "int"), "cpu_gflops": ("cpu_gflops", "float"),
    "max_file": ("max_file_bytes", "file_limit"),
    "gpu_memory": ("gpu_memory_bytes", "size"), "gpu_unified": ("gpu_unified", "bool"),
    "gpu_memory_bandwidth_gb_s": ("gpu_memory_bandwidth_gb_s", "float"), "gpu_gflops": ("gpu_gflops", "float"),
    "npu_tops": ("npu_tops", "float"), "npu_memory": ("npu_memory_bytes", "size"),
} | {key: (key, "float") for key in RATE_KEYS}
_REQUIRED = ("name", "description", "platform", "cpu_arch", "cpu_isa", "ram", "app_budget", "memory_bandwidth_gb_s",
             "flash_seq_read_mb_s", "flash_random_read_mb_s", "cpu_threads", "cpu_gflops", "max_file")
_GPU_KEYS = ("gpu_memory", "gpu_unified", "gpu_memory_bandwidth_gb_s", "gpu_gflops")


def _value(where: str, key: str, kind: str, raw: object) -> object:
    bad = f"{where}: {key} = {raw!r}:"
    if kind == "str":
        if not isinstance(raw, str) or not raw.strip():
            raise UsageError(f"{bad} expected a non-empty string")
        return raw
    if kind == "bool":
        if not isinstance(raw, bool):
            raise UsageError(f"{bad} expected true or false")
        return raw
    if kind == "int":
        if not isinstance(raw, int) or isinstance(raw, bool) or raw <= 0:
            raise UsageError(f"{bad} expected a positive integer")
        return raw
    if kind == "float":
        if not isinstance(raw, (int, float)) or isinstance(raw, bool) or not math.isfinite(raw) or raw <= 0:
            raise UsageError(f"{bad} expected a positive number")
        return float(raw)
    if kind == "file_limit" and raw == UNLIMITED:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise UsageError(f"{bad} expected a size such as \"16 GiB\" or a number of bytes"
                         + (f" or \"{UNLIMITED}\"" if kind == "file_limit" else ""))
    try:
        return parse_size(raw)
    except UsageError as e:
        raise UsageError(f"{where}: {key}: {e}") from None


def profile_from_dict(data: dict, where: str) -> DeviceProfile:
    """Validate a parsed TOML table into a DeviceProfile (one UsageError line on the first problem)."""
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise UsageError(f"{where}: missing key {missing[0]!r}")
    fields = {_KEYS[k][0]: _value(where, k, _KEYS[k][1], v) for k, v in data.items()}
    gpu_given = [k for k in _GPU_KEYS if k in data]
    if gpu_given and len(gpu_given) != len(_GPU_KEYS):
        absent = next(k for k in _GPU_KEYS if k not in data)
        raise UsageError(f"{where}: a GPU needs all of {', '.join(_GPU_KEYS)}; {absent!r} is missing")
    profile = DeviceProfile(**fields)
    _check(profile, where)
    return profile


def _check(p: DeviceProfile, where: str) -> None:
    if p.platform not in PLATFORMS:
        raise UsageError(f"{where}: platform = {p.platform!r}: expected one of {', '.join(PLATFORMS)}")
    if p.cpu_arch not in CPU_ARCHS:
        raise UsageError(f"{where}: cpu_arch = {p.cpu_arch!r}: expected one of {', '.join(CPU_ARCHS)}")
    if CPU_ISAS.get(p.cpu_isa) != p.cpu_arch:
        isas = [isa for isa, arch in CPU_ISAS.items() if arch == p.cpu_arch]
        raise UsageError(f"{where}: cpu_isa = {p.cpu_isa!r}: expected {' or '.join(isas)} for cpu_arch {p.cpu_arch}")
    if p.app_budget_bytes > p.ram_bytes:
        raise UsageError(f"{where}: app_budget ({human(p.app_budget_bytes)}) exceeds ram ({human(p.ram_bytes)})")
    if p.flash_random_read_mb_s > p.flash_seq_read_mb_s:
        raise UsageError(f"{where}: flash_random_read_mb_s ({p.flash_random_read_mb_s:g}) exceeds "
                         f"flash_seq_read_mb_s ({p.flash_seq_read_mb_s:g})")
    if p.gpu_unified and p.gpu_memory_bytes > p.ram_bytes:
        raise UsageError(f"{where}: unified gpu_memory ({human(p.gpu_memory_bytes)}) exceeds ram "
                         f"({human(p.ram_bytes)})")


def _profile_paths() -> dict[str, Path]:
    """Profile name (file stem) -> file; the first directory that has a name wins."""
    found: dict[str, Path] = {}
    for folder in PROFILE_DIRS:
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                found.setdefault(path.stem, path)
    return found


def list_profiles() -> list[str]:
    """Names of the shipped profiles, sorted."""
    return sorted(_profile_paths())


def read_profile(path: str | Path) -> DeviceProfile:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such profile file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid TOML ({e})") from None
    return profile_from_dict(data, str(path))


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A shipped profile by name (`pixel-9-pro`) or any profile file by path."""
    text = str(name_or_path)
    if text.endswith(".toml") or Path(text).is_file():
        return read_profile(text)
    paths = _profile_paths()
    if text not in paths:
        raise UsageError(f"unknown device {text!r} (shipped profiles: {', '.join(sorted(paths))}; "
                         "or give a path to a .toml profile)")
    return read_profile(paths[text])


def _toml_value(key: str, value: object) -> str:
    kind = _KEYS[key][1]
    if kind == "file_limit" and value is None:
        return f'"{UNLIMITED}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def profile_toml(profile: DeviceProfile, comments: dict[str, str] | None = None, header: str = "") -> str:
    """The TOML text of a profile; `comments` maps a key to the source line written above it."""
    comments = comments or {}
    fields = profile.as_dict()
    lines = [f"# {line}" for line in header.splitlines()]
    for key, (field, _) in _KEYS.items():
        value = fields[field]
        if key in _GPU_KEYS and not profile.has_gpu:
            continue
        if (key.startswith("npu_") or key in RATE_KEYS) and not value:
            continue
        if key in comments:
            lines.append(f"# {comments[key]}")
        lines.append(f"{key} = {_toml_value(key, value)}")
    return "\n".join(lines) + "\n"
