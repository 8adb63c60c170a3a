"""The Android demo's Android-free core (android_demo/core) passes its JVM unit tests."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "android_demo" / "core" / "run-tests.sh"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("javac") is None,
                    reason="javac not found: the Android demo's JVM tests need a JDK 17+ and junit4")
def test_android_demo_core_jvm_tests_pass():
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=600)
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    last = proc.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"(\d+) passed, 0 failed", last)
    assert match and int(match.group(1)) > 0, report
