"""A server that stops answering mid-transfer ends the command (issue 9, item 6): exit 1 with
one line naming the remote, after the stall time, instead of a silent hang. Real rclone
servers on 127.0.0.1, frozen with SIGSTOP."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import cg, cg_proc
from servers import _port_open, free_port, rclone_binary, rclone_env

from cloudguard import transport
from cloudguard.errors import UsageError


@contextmanager
def webdav(root: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = subprocess.Popen([rclone_binary(), "serve", "webdav", str(root), "--addr",
                             f"127.0.0.1:{port}", "--dir-cache-time", "0s"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=rclone_env())
    try:
        deadline = time.monotonic() + 20
        while not _port_open(port):
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield f":webdav,url='http://127.0.0.1:{port}':vault", proc
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()


@pytest.mark.slow
@pytest.mark.server
def test_a_server_frozen_mid_upload_ends_the_push(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "small.txt").write_text("x")
    (tmp_path / "served").mkdir()
    with webdav(tmp_path / "served") as (remote, server):
        cg("init", str(folder), "--remote", remote)
        cg("push", "--folder", str(folder))
        (folder / "big.bin").write_bytes(os.urandom(24 * 1024 * 1024))
        monkeypatch.setenv("CLOUDGUARD_STALL_SECONDS", "3")
        monkeypatch.setenv("RCLONE_BWLIMIT", "2M")  # still uploading when the server freezes
        child = subprocess.Popen(
            [*__import__("helpers").CLOUDGUARD, "push", "--folder", str(folder)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(4)
        assert child.poll() is None, child.communicate()
        server.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        try:
            _out, err = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
        assert time.monotonic() - started < 30
        assert child.returncode == 1, err
        assert "moved nothing for 3 s" in err and "127.0.0.1" in err, err
        assert len(err.strip().splitlines()) == 1, err
        server.send_signal(signal.SIGCONT)
        monkeypatch.delenv("RCLONE_BWLIMIT")
        cg("push", "--folder", str(folder))  # and the next push finishes the job
        cg("verify", "--folder", str(folder))


def test_a_server_down_from_the_start_fails_fast(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    started = time.monotonic()
    got = cg_proc("init", str(folder), "--remote", f":webdav,url='http://127.0.0.1:{free_port()}'"
                  ":vault")
    assert got.returncode == 1 and "127.0.0.1" in got.stderr, got.stderr
    assert time.monotonic() - started < 15


def test_a_bad_stall_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDGUARD_STALL_SECONDS", "soon")
    with pytest.raises(UsageError, match="CLOUDGUARD_STALL_SECONDS='soon'"):
        transport.stall_seconds()


@pytest.mark.server
def test_upload_progress_is_what_reached_the_remote(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9, item 7: the bar follows rclone's own count of bytes sent, so it cannot run
    ahead of a slow uplink; a push's bar adds up to the bytes pushed."""
    (tmp_path / "served").mkdir()
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "obj").write_bytes(os.urandom(5 * 1024 * 1024))
    monkeypatch.setenv("RCLONE_BWLIMIT", "2M")
    with webdav(tmp_path / "served") as (remote, _server):
        steps: list[tuple[float, int]] = []
        started = time.monotonic()
        transport.RcloneTransport(remote).put_files(
            spool, ["obj"], "data/", lambda n: steps.append((time.monotonic() - started, n)))
    assert sum(n for _t, n in steps) == 5 * 1024 * 1024
    assert len(steps) >= 2, steps  # it moved while the upload ran, not all at the end
    assert steps[0][1] < 5 * 1024 * 1024
