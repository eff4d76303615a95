"""A short crash-consistency campaign: about a dozen SIGKILLs across push, pull, both kinds
of key rotation, restore and the daemon, each followed by a completion run and the full
invariant checks (verify, a second device's tree, a fresh clone at the end, temp files,
plaintext markers).

The full campaign is ``python scripts/crash_campaign.py`` (200 kills by default).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import crash_campaign as cc  # noqa: E402


@pytest.mark.slow
def test_short_crash_campaign(tmp_path: Path) -> None:
    config = cc.Config(
        kills=12,
        seed=20240611,
        ops=cc.OPS,
        workdir=tmp_path / "campaign",
        small_files=16,
        large_files=1,
        clone_every=1000,  # a fresh clone in the last round only
        mutate_before=("push", "pull", "daemon"),
        lean_calibration=True,
        final_gc_check=False,
        audit_every=1000,  # the audit log check in the last round only
        lanes=2,  # two vaults side by side: one per core
        quiet=True,
    )
    report = cc.Campaign(config).run()
    summary = report.render()
    assert not report.failures, summary
    assert report.total_kills >= 12, summary
    for op in cc.OPS:
        assert sum(report.kills.get(op, {}).values()) >= 1, summary


@pytest.mark.slow
def test_short_crash_campaign_over_sftp_with_streamed_files(tmp_path: Path) -> None:
    """The same over a real SFTP server, with a file over the 32 MiB streaming threshold
    written in most rounds, so pushes are killed while early streams upload (the full run:
    ``crash_campaign.py --backend sftp --stream-files 2``)."""
    config = cc.Config(
        kills=4,
        seed=20261204,
        ops=("push", "pull"),
        workdir=tmp_path / "campaign",
        small_files=12,
        large_files=1,
        clone_every=1000,
        mutate_before=("push", "pull"),
        lean_calibration=True,
        final_gc_check=True,
        audit_every=1000,
        quiet=True,
        backend="sftp",
        stream_files=1,
    )
    report = cc.Campaign(config).run()
    summary = report.render()
    assert not report.failures, summary
    assert report.total_kills >= 4, summary
    assert sum(report.kills.get("push", {}).values()) >= 1, summary


KILLED_PUT = """
import sys
from cloudguard.transport import RcloneTransport
RcloneTransport(sys.argv[1]).put_bytes("m/0123456789abcdef-000000000007.d", b"x" * 8_000_000)
"""


def test_killed_small_object_upload_never_shows_half_an_object(tmp_path: Path) -> None:
    """Segments and key slots go up under a temp name and are renamed: a kill mid-upload leaves
    nothing (or rclone's ``.partial``) under the real name, never a torn segment that would
    stop other devices. The ``.partial`` is collected like any other garbage."""
    import os
    import signal
    import subprocess
    import time

    remote = tmp_path / "remote"
    (remote / "m").mkdir(parents=True)
    env = {**os.environ, "RCLONE_BWLIMIT": "1M"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PUT, str(remote)], env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while not any((remote / "m").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)  # the upload has started once anything appears in m/
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    names = [p.name for p in (remote / "m").iterdir()]
    assert names, "the upload never started"
    assert "0123456789abcdef-000000000007.d" not in names, names
    assert all(n.endswith(".partial") for n in names), names
