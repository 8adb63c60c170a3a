"""A plan against a measurement, and a measured device turned into a device profile.

A measurement is the JSON that `edgeoss profile --json` writes, or that the Android app writes on the phone
(`profile.json`, android_demo's DeviceBenchmark: the same protocol and fields): the engine, N prompt tokens,
M generated, decode and TTFT spreads, the peak memory, the expert store's reads, and the machine.

- `against(req, measurement)`: the plan's predictions at the measurement's context and prompt, before and
  after calibration, next to what was measured (`edgeoss plan --calibrate FILE` adds it as "measured").
- `imported_profile(base, measurement)`: `edgeoss profiles import`: the base profile (the same phone's published
  one) with the measured RAM and cores, and its bandwidth, compute and flash figures scaled by the efficiencies
  fitted to the measurement, so that a plan made from it predicts what was measured without --calibrate.
"""

from __future__ import annotations

import dataclasses

from ..errors import UsageError
from ..formats.spec import PRESETS, ModelSpec
from .predict import Calibration
from .profiles import RATE_KEYS, DeviceProfile

MEASUREMENT_KEYS = ("engine", "prompt_tokens", "gen_tokens", "decode_tok_s")


def load_measurement(path) -> dict | None:
    """The measurement in a `--calibrate` file, or None when it holds efficiencies."""
    from ..jsonfile import read_json

    data = read_json(path, "calibration file")
    if isinstance(data, dict) and isinstance(data.get("profile"), dict):
        data = data["profile"]
    return check_measurement(data, str(path)) if isinstance(data, dict) and "decode_tok_s" in data else None


def check_measurement(data: object, where: str) -> dict:
    if isinstance(data, dict) and isinstance(data.get("profile"), dict):  # `profile --memory-limit --json`
        data = data["profile"]
    missing = [k for k in MEASUREMENT_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise UsageError(f"{where}: not an `edgeoss profile --json` result or an app's profile.json "
                         f"(missing {', '.join(missing)})")
    return data


def measured_spec(measurement: dict, where: str) -> ModelSpec:
    """The preset the measurement ran (by its model name)."""
    for spec in PRESETS.values():
        if spec.name == measurement.get("model"):
            return spec
    raise UsageError(f"{where}: model {measurement.get('model')!r} is none of the presets "
                     f"({', '.join(s.name for s in PRESETS.values())})")


def measured_context(measurement: dict, spec: ModelSpec) -> int:
    """The context the measured engine was loaded with (its KV cache, and the plan it ran: the expert budget
    depends on it): the protocol's or the engine's n_ctx, else the prompt and the generated tokens."""
    for where in (measurement.get("protocol") or {}, measurement.get("engine_stats") or {}):
        for key in ("context", "n_ctx"):
            if isinstance(where.get(key), int) and where[key] > 0:
                return min(where[key], spec.max_position_embeddings)
    return min(max(1, int(measurement["prompt_tokens"]) + int(measurement["gen_tokens"])),
               spec.max_position_embeddings)


def peak_bytes(measurement: dict) -> int | None:
    """The measured peak: a memory cgroup's charge after the load when it was split, else the process's RSS."""
    for key in ("run_peak_bytes", "peak_rss_bytes"):
        if isinstance(measurement.get(key), int) and measurement[key] > 0:
            return measurement[key]
    return None


def _versus(measured: float | None, uncalibrated: float, calibrated: float) -> dict:
    out = {"measured": measured, "uncalibrated": uncalibrated, "calibrated": calibrated}
    if measured:
        out |= {"uncalibrated_error": uncalibrated / measured - 1, "calibrated_error": calibrated / measured - 1}
    return out


def against(req, measurement: dict) -> dict:
    """The plan for `req` (calibrated or not) at the measurement's context and prompt, against the measurement."""
    from .plan import make_plan

    at = req.replace(context=measured_context(measurement, req.spec), prompt_tokens=int(measurement["prompt_tokens"]),
                     decode_positions=int(measurement["prompt_tokens"]) + int(measurement["gen_tokens"]))
    uncalibrated, calibrated = make_plan(at.replace(calibration=Calibration())), make_plan(at)
    if not calibrated["fits"]:
        raise UsageError(f"the measured run does not fit {req.device.name} by the plan at context {at.context}: "
                         "nothing to compare")
    u, c = uncalibrated["prediction"], calibrated["prediction"]
    return {"engine": measurement["engine"], "device": (measurement.get("machine") or {}).get("device", ""),
            "context": at.context, "prompt_tokens": at.prompt_tokens,
            "decode_tok_s": _versus(measurement["decode_tok_s"]["median"], u["decode_tok_s"], c["decode_tok_s"]),
            "ttft_s": _versus((measurement.get("ttft_s") or {}).get("median"), u["ttft_s"], c["ttft_s"]),
            "peak_bytes": {"measured": peak_bytes(measurement), "planned": calibrated["memory"]["ram_bytes"]}}


def imported_profile(base: DeviceProfile, measurement: dict, calibration: Calibration, name: str) -> DeviceProfile:
    """`base` with the measured machine's RAM and cores, and its figures scaled by `calibration` (fitted to the
    measurement on `base`) relative to the default efficiencies, so the default calibration predicts the same."""
    default, machine = Calibration(), measurement.get("machine") or {}
    ram = machine.get("ram_bytes")
    ram = ram if isinstance(ram, int) and ram > 0 else base.ram_bytes
    cores = machine.get("cores")
    seq = base.flash_seq_read_mb_s * calibration.flash_efficiency / default.flash_efficiency
    # the random-read figure moves with it so that the read latency (4 KiB random less sequential) stays
    return dataclasses.replace(
        base, name=name,
        description=f"{machine.get('device') or 'a measured device'}: {base.name}'s profile calibrated by an "
                    f"{measurement['engine']} run of {measurement['model']}",
        ram_bytes=ram, app_budget_bytes=min(ram, round(base.app_budget_bytes * ram / base.ram_bytes)),
        cpu_threads=cores if isinstance(cores, int) and cores > 0 else base.cpu_threads,
        memory_bandwidth_gb_s=base.memory_bandwidth_gb_s * calibration.memory_efficiency / default.memory_efficiency,
        cpu_gflops=base.cpu_gflops * calibration.compute_efficiency / default.compute_efficiency,
        **{key: getattr(base, key) * calibration.rate_scale for key in RATE_KEYS},
        flash_seq_read_mb_s=seq, flash_random_read_mb_s=1 / (1 / base.flash_random_read_mb_s
                                                             - 1 / base.flash_seq_read_mb_s + 1 / seq))
