"""Device profiles: the shipped files, strict validation, lookup order, the CLI, and measuring this machine."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import numpy as np
import psutil
import pytest

from edgeoss.planner import profiles
from edgeoss.errors import UsageError
from edgeoss.planner.profiles import (DeviceProfile, list_profiles, load_profile, profile_from_dict, profile_toml,
                              read_profile)

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("pixel-9-pro", "galaxy-s25-ultra", "oneplus-13", "oneplus-12", "snapdragon-x-elite-16gb",
           "rtx-4060-laptop", "macbook-air-m2", "mac-mini-m4", "raspberry-pi-5", "jetson-orin-nano", "h100-80gb")
FIGURES = ("ram", "app_budget", "memory_bandwidth_gb_s", "flash_seq_read_mb_s", "flash_random_read_mb_s",
           "cpu_threads", "cpu_gflops", "max_file", "gpu_memory", "gpu_gflops", "npu_tops")
GIB = 1 << 30


def test_every_target_ships_and_loads():
    assert set(TARGETS) <= set(list_profiles())
    for name in TARGETS:
        p = load_profile(name)
        assert p.name == name and p.app_budget_bytes < p.ram_bytes
        assert p.platform in ("android", "windows", "macos", "linux")
    assert load_profile("pixel-9-pro").max_file_bytes == 4 * GIB - 1  # Android: 4 GiB - 1
    assert load_profile("mac-mini-m4").gpu_unified and load_profile("rtx-4060-laptop").gpu_memory_bytes == 8 * GIB
    assert not load_profile("raspberry-pi-5").has_gpu


@pytest.mark.parametrize("name", TARGETS)
def test_every_figure_has_a_source_comment(name):
    """Each figure line sits in a block (lines up to the previous blank line) that has a comment."""
    block: list[str] = []
    for line in (REPO / "profiles" / f"{name}.toml").read_text().splitlines():
        if not line.strip():
            block = []
            continue
        key = re.match(r"(\w+)\s*=", line)
        if key and key[1] in FIGURES:
            assert any(b.startswith("#") for b in block), f"{name}: {key[1]} has no source comment"
        block.append(line)


@pytest.mark.parametrize("name", TARGETS)
def test_toml_round_trip(name):
    p = load_profile(name)
    assert profile_from_dict(tomllib.loads(profile_toml(p, {"ram": "a source"}, "header")), "x") == p


def base() -> dict:
    return tomllib.loads((REPO / "profiles" / "raspberry-pi-5.toml").read_text())


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"ram": None}, "missing key 'ram'"),
    ({"cpu_threads": "four"}, "cpu_threads = 'four': expected a positive integer"),
    ({"memory_bandwidth_gb_s": -1}, "expected a positive number"),
    ({"ram": "16 parsecs"}, "bad size"),
    ({"app_budget": "32 GiB"}, "exceeds ram"),
    ({"platform": "beos"}, "platform = 'beos'"),
    ({"gpu_memory": "4 GiB"}, "a GPU needs all of"),
    ({"flash_random_read_mb_s": 5000}, "exceeds flash_seq_read_mb_s"),
    ({"max_file": True}, "expected a size"),
    ({"cpu_isa": "avx512"}, "cpu_isa = 'avx512': expected arm64 for cpu_arch arm64"),
    ({"cpu_arch": "x86_64"}, "cpu_isa = 'arm64': expected avx512 or avx2 for cpu_arch x86_64"),
    ({"cpu_isa": None}, "missing key 'cpu_isa'"),
])
def test_validation_is_one_line(change, message):
    data = base()
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    with pytest.raises(UsageError, match=re.escape(message)) as e:
        profile_from_dict(data, "bad.toml")
    assert "\n" not in str(e.value) and str(e.value).startswith("bad.toml: ")


def test_unknown_device_and_broken_file(tmp_path):
    with pytest.raises(UsageError, match="unknown device 'pixel-99'.*pixel-9-pro"):
        load_profile("pixel-99")
    broken = tmp_path / "broken.toml"
    broken.write_text("ram = [\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_profile(broken)


def test_installed_profiles_come_before_the_source_tree(tmp_path, monkeypatch):
    installed = tmp_path / "device_profiles"
    installed.mkdir()
    data = (REPO / "profiles" / "pixel-9-pro.toml").read_text().replace(
        'description = "Google Pixel 9 Pro', 'description = "INSTALLED Google Pixel 9 Pro')
    (installed / "pixel-9-pro.toml").write_text(data)
    monkeypatch.setattr(profiles, "PROFILE_DIRS", (installed, REPO / "profiles"))
    assert load_profile("pixel-9-pro").description.startswith("INSTALLED")
    assert "h100-80gb" in list_profiles()


def test_cli_list_and_show(cli):
    listed = cli("profiles", "list", check=True).stdout
    assert all(name in listed for name in TARGETS)
    shown = json.loads(cli("profiles", "show", "rtx-4060-laptop", "--json", check=True).stdout)
    assert shown["gpu_memory_bytes"] == 8 * GIB and shown["max_file_bytes"] is None
    text = cli("profiles", "show", "pixel-9-pro", check=True).stdout
    assert "app_budget_bytes" in text and "10.00 GiB" in text
    bad = cli("profiles", "show", "no-such-phone")
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown device") and "Traceback" not in bad.stderr


def test_measure_writes_a_profile_the_planner_accepts(cli, tmp_path):
    out = tmp_path / "here.toml"
    cli("profiles", "measure", "-o", out, "--name", "here", "--dir", tmp_path, "--disk-mib", "16", "--quick",
        check=True)
    p = read_profile(out)
    assert isinstance(p, DeviceProfile) and p.name == "here"
    assert p.ram_bytes == psutil.virtual_memory().total and 0 < p.app_budget_bytes <= p.ram_bytes
    assert p.memory_bandwidth_gb_s > 0.1 and p.flash_seq_read_mb_s > 1 and p.cpu_gflops > 0
    assert "# measured:" in out.read_text()
    # each engine's own decode kernels, timed (llama.cpp's through ggml's C API): the plans use these rates
    for engine in ("reference", "llamacpp-stream"):
        rates = p.decode_rates(engine)
        assert rates is not None and rates.expert_gb_s > 0.05 and rates.dense_gb_s > 0.05
    assert p.reference_attention_gflops > 0.01 and "llama.cpp's ggml mul_mat" in out.read_text()
    planned = json.loads(cli("plan", "--preset", "tiny", "--device", out, "--json", check=True).stdout)
    assert planned["device"]["name"] == "here" and planned["fits"]


@pytest.mark.parametrize("flags, isa", [("fpu sse avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni", "avx512"),
                                        ("fpu sse avx2 avx512f avx512bw avx512vl", "avx2"), ("fpu sse avx2", "avx2")])
def test_measure_reads_the_vector_isa_from_cpuinfo(tmp_path, flags, isa):
    from edgeoss.validate.device_measure import this_cpu_arch, this_cpu_isa

    if this_cpu_arch() != "x86_64":
        pytest.skip("reads x86 flags")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    found, how = this_cpu_isa(cpuinfo)
    assert found == isa and str(cpuinfo) in how
    assert this_cpu_isa(tmp_path / "missing")[0] == "avx2"


def test_ggml_computes_the_products_it_times():
    """The timer drives llama.cpp's own ggml through its C API: the product it computes is numpy's."""
    from edgeoss.runtimes.ggml_compute import matvec_seconds, mul_mat_f32

    rng = np.random.default_rng(0)
    weight, x = rng.standard_normal((37, 96)).astype(np.float32), rng.standard_normal((3, 96)).astype(np.float32)
    np.testing.assert_allclose(mul_mat_f32(weight, x, threads=2), x @ weight.T, rtol=1e-5, atol=1e-5)
    assert 0 < matvec_seconds("mxfp4", 64, 2880, threads=1, matrices=2) < 1


def test_kernel_rates_are_the_median_of_fresh_processes():
    """Kernel rates move more between processes than between repeats: each fresh process measures until stable, and
    the rate is the median of theirs, with the spread of all their repeats."""
    from edgeoss.validate.device_measure import kernel_rates

    rates = kernel_rates(quick=True, processes=2)
    assert {"reference_expert_gb_s", "reference_dense_gb_s", "reference_attention_gflops", "llamacpp_expert_gb_s",
            "llamacpp_dense_gb_s"} == set(rates)
    for rate in rates.values():
        assert 0 < rate.low <= rate.median <= rate.high and rate.repeats >= 2 * 3


def test_measured_figures_repeat_until_stable_and_keep_their_spread():
    from edgeoss.validate.device_measure import stable

    values = iter([10.0, 20.0, 10.2, 10.1, 10.0, 99.0])
    s = stable(lambda: next(values))
    assert (s.repeats, s.median, s.low, s.high) == (5, 10.1, 10.0, 20.0)  # the last three agree within 5 %
    assert s.spread == pytest.approx(10 / 2 / 10.1) and s.note() == "median of 5 repeats, spread +/-50 %"
    noisy = iter([1.0, 2.0, 3.0] * 10)
    assert stable(lambda: next(noisy), most=6).repeats == 6  # never stable: at most `most` repeats
