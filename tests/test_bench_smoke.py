"""The benchmark script runs end to end on scaled-down data (the full run is scripts/bench.py).

Timings are not asserted here: speed is measured by the benchmark, never in tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_quick_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick",
                           "--only", "a,b,c,d,f", "--code", "live",
                           "--workdir", str(tmp_path / "w"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = out.read_text()
    assert "## Summary" in report
    for scenario in ("(a)", "(b)", "(c)", "(d)", "(f)"):
        assert scenario in report
    assert "rclone copy" in report and "cloudguard push" in report
    assert "Vault.push([one path])" in report and "ranged read" in report


@pytest.mark.slow
def test_daemon_bench_quick_runs_and_reports(tmp_path: Path) -> None:
    """scripts/bench_daemon.py (issue 11's daemon figures) end to end, scaled down."""
    out = tmp_path / "daemon.md"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_daemon.py"), "--quick",
                           "--remotes", "local", "--workdir", str(tmp_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = out.read_text()
    for row in ("save to segment, local", "on B's disk", "idle CPU", "daemon RSS",
                "first sync of"):
        assert row in report, report


@pytest.mark.slow
@pytest.mark.fuse
@pytest.mark.skipif(not Path("/dev/fuse").exists(), reason="needs /dev/fuse")
def test_mount_bench_quick_runs_and_reports(tmp_path: Path) -> None:
    """scripts/bench_mount.py (issue 12's mount figures, beside rclone mount over crypt and
    gocryptfs where installed) end to end, scaled down."""
    out = tmp_path / "mount.md"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_mount.py"), "--quick",
                           "--workdir", str(tmp_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = out.read_text()
    assert "| cloudguard | rclone mount crypt |" in report
    for row in ("sequential write", "sequential read", "x 4 KiB created", "`ls -lR`",
                "peak RSS"):
        assert row in report, report
