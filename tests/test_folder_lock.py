"""The folder lock policy shared by the CLI, the daemon and the mount (issue 10): an operation
waits for another process's operation on the same folder instead of failing, up to
CLOUDGUARD_LOCK_WAIT; threads of one process take turns."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import cg, cg_proc

from cloudguard import vault
from cloudguard.state import find_binding


def _folder(tmp_path: Path, remote: str) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    cg("init", str(folder), "--remote", remote)
    return folder


def _hold(folder: Path, seconds: float) -> subprocess.Popen[bytes]:
    """Another process holding the folder's lock, as a running push would."""
    lock = find_binding(str(folder)).dir / "lock"
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
            "time.sleep(float(sys.argv[2]))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock), str(seconds)],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
    proc.stdout.close()
    return proc


def test_an_operation_waits_for_another_process(local_remote: str, tmp_path: Path) -> None:
    folder = _folder(tmp_path, local_remote)
    holder = _hold(folder, 1.5)
    started = time.monotonic()
    result = cg_proc("push", "--folder", str(folder))
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 1.0  # it waited, then pushed
    holder.wait()


def test_the_wait_ends_in_one_line(local_remote: str, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path, local_remote)
    holder = _hold(folder, 30)
    try:
        monkeypatch.setenv("CLOUDGUARD_LOCK_WAIT", "0.5")
        result = cg_proc("push", "--folder", str(folder))
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "another cloudguard process is working on" in lines[0] \
            and "CLOUDGUARD_LOCK_WAIT" in lines[0], lines
        monkeypatch.setenv("CLOUDGUARD_LOCK_WAIT", "soon")
        result = cg_proc("push", "--folder", str(folder))
        assert result.returncode == 2 and "CLOUDGUARD_LOCK_WAIT='soon'" in result.stderr
    finally:
        holder.kill()
        holder.wait()


def test_threads_of_one_process_take_turns(local_remote: str, tmp_path: Path) -> None:
    folder = _folder(tmp_path, local_remote)
    errors: list[BaseException] = []

    def status() -> None:
        try:
            vault.status(str(folder))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=status) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
