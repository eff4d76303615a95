"""tests/ci_skips.py: with CI=true a skip fails the run; without, it stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_skipping.py"
    test.write_text("import pytest\n\n"
                    "@pytest.mark.skipif(True, reason='needs /dev/fuse')\n"
                    "def test_needs_fuse():\n    pass\n\n"
                    "def test_plain():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(HERE)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "ci_skips", "--rootdir", str(tmp_path), str(test)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, check=False)


def test_a_skip_fails_in_ci_and_stays_a_skip_elsewhere(tmp_path: Path) -> None:
    local = _run(tmp_path, None)
    assert local.returncode == 0, local.stdout
    assert "1 passed, 1 skipped" in local.stdout
    ci = _run(tmp_path, "true")
    assert ci.returncode == 1, ci.stdout
    assert "1 passed, 1 error" in ci.stdout  # a skipif skips at setup: a setup error
    assert "skipped in CI (CI=true), which counts as a failure" in ci.stdout
    assert "needs /dev/fuse" in ci.stdout
