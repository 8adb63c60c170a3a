"""`edgeoss profiles list|show|measure`: the device profiles the planner plans for."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from ._common import err, out, print_json


@click.group()
def profiles() -> None:
    """Device profiles: RAM an app can hold, bandwidths, storage limits (profiles/*.toml)."""


@profiles.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_cmd(as_json: bool) -> None:
    """The shipped profiles, one line each."""
    from ..planner.profiles import list_profiles, load_profile
    from ..units import human

    loaded = [load_profile(name) for name in list_profiles()]
    if as_json:
        print_json([p.as_dict() for p in loaded])
        return
    t = Table(title="device profiles")
    for column in ("name", "platform", "RAM", "app budget", "GB/s", "flash MB/s", "GPU", "description"):
        t.add_column(column)
    for p in loaded:
        gpu = f"{human(p.gpu_memory_bytes)}{' unified' if p.gpu_unified else ''}" if p.has_gpu else "-"
        t.add_row(p.name, p.platform, human(p.ram_bytes), human(p.app_budget_bytes), f"{p.memory_bandwidth_gb_s:g}",
                  f"{p.flash_seq_read_mb_s:g}", gpu, p.description)
    out.print(t)


@profiles.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def show(name: str, as_json: bool) -> None:
    """One profile (a shipped NAME or a path to a .toml file)."""
    from ..planner.profiles import load_profile
    from ..units import human

    p = load_profile(name)
    if as_json:
        print_json(p.as_dict())
        return
    t = Table(title=f"{p.name}: {p.description}", show_header=False)
    for key, value in p.as_dict().items():
        shown = human(value) if key.endswith("_bytes") and isinstance(value, int) and value else value
        t.add_row(key, "unlimited" if key == "max_file_bytes" and value is None else str(shown))
    out.print(t)


@profiles.command()
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="profile file to write")
@click.option("--name", default="this-machine", show_default=True, help="the profile's name")
@click.option("--dir", "folder", type=click.Path(path_type=Path, file_okay=False, exists=True), default=".",
              show_default=True, help="folder whose disk is measured (where the model would live)")
@click.option("--disk-mib", type=click.IntRange(4, 1 << 16), default=256, show_default=True,
              help="size of the temporary file read back")
@click.option("--quick", is_flag=True, help="smaller, noisier measurements (seconds instead of ~15 s)")
def measure(output: Path, name: str, folder: Path, disk_mib: int, quick: bool) -> None:
    """Measure this machine (RAM, memory and disk bandwidth, each engine's decode kernels) and write a profile."""
    from ..atomic import atomic_file
    from ..validate.device_measure import measure as run
    from ..planner.profiles import profile_toml, read_profile

    measured = run(name, folder, disk_mib << 20, quick=quick)
    header = f"{measured.profile.description}.\nWritten by `edgeoss profiles measure`; GPU not measured (add gpu_* keys)."
    with atomic_file(output) as tmp:
        tmp.write_text(profile_toml(measured.profile, measured.comments, header))
    read_profile(output)  # what we wrote must load
    p = measured.profile
    err.print(f"wrote {output}: {p.ram_bytes / 2**30:.1f} GiB RAM, {p.memory_bandwidth_gb_s:g} GB/s memory, "
              f"disk {p.flash_seq_read_mb_s:g} MB/s sequential / {p.flash_random_read_mb_s:g} MB/s 4 KiB random, "
              f"{p.cpu_gflops:g} GFLOP/s batched; decode kernels: reference MXFP4 {p.reference_expert_gb_s:g} GB/s, "
              f"bf16 {p.reference_dense_gb_s:g} GB/s, attention {p.reference_attention_gflops:g} GFLOP/s"
              + (f"; llama.cpp MXFP4 {p.llamacpp_expert_gb_s:g} GB/s, bf16 {p.llamacpp_dense_gb_s:g} GB/s"
                 if p.llamacpp_expert_gb_s else "; llama.cpp not installed, not timed")
              + " (spread: " + ", ".join(f"{k} +/-{100 * v:.0f} %" for k, v in measured.spreads.items()) + ")")


@profiles.command("import")
@click.argument("measurement", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--like", "base", required=True,
              help="the published profile of the same device (a shipped name or a .toml file): its figures are "
                   "scaled by the efficiencies fitted to the measurement")
@click.option("--name", help="the new profile's name (default: the output file's stem)")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="profile file to write")
def import_cmd(measurement: Path, base: str, name: str | None, output: Path) -> None:
    """A device profile from a measured run: the app's profile.json (adb pull) or `edgeoss profile --json`.

    Plans made from it predict the measured decode speed without --calibrate."""
    from ..atomic import atomic_file
    from ..errors import UsageError
    from ..planner.measured import imported_profile, load_measurement, measured_spec
    from ..planner.plan import PlanRequest, calibration_from_profile
    from ..planner.profiles import load_profile, profile_toml, read_profile

    data = load_measurement(measurement)
    if data is None:
        raise UsageError(f"{measurement}: holds efficiencies, not a measured run: nothing to import")
    spec, like = measured_spec(data, str(measurement)), load_profile(base)
    context = min(spec.max_position_embeddings, int(data["prompt_tokens"]) + int(data["gen_tokens"]))
    request = PlanRequest(spec, like, context, engine=data["engine"])
    calibration = calibration_from_profile(request, data, str(measurement))
    profile = imported_profile(like, data, calibration, name or output.stem)
    efficiencies = ", ".join(f"{k} {v:.3f}" for k, v in calibration.__dict__.items())
    header = (f"{profile.description}.\nWritten by `edgeoss profiles import {measurement.name} --like {like.name}`: "
              f"fitted efficiencies {efficiencies},\nfolded into memory_bandwidth_gb_s, cpu_gflops and the flash "
              "figures; the rest is the base profile's.")
    with atomic_file(output) as tmp:
        tmp.write_text(profile_toml(profile, header=header))
    read_profile(output)  # what we wrote must load
    err.print(f"wrote {output}: {like.name} calibrated by {data['engine']} at {data['decode_tok_s']['median']:.2f} "
              f"tok/s decode ({efficiencies})")


COMMANDS = [profiles]
