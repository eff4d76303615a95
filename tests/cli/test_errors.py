"""The error tree (issue 10): each failure has its kind, exit code and one line; an integrity
failure lists the files it concerns in --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cg, cg_proc

from cloudguard import layout
from cloudguard.errors import IntegrityError, UnsupportedFormat
from cloudguard.state import find_binding


def _folder(tmp_path: Path, remote: str) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("a" * 1000)
    (folder / "b.txt").write_text("b" * 1000)
    cg("init", str(folder), "--remote", remote)
    cg("push", "--folder", str(folder))
    return folder


def _json_error(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    doc = json.loads(result.stdout)["error"]
    assert isinstance(doc, dict)
    return doc


def test_integrity_failures_name_their_files(local_remote: str, tmp_path: Path) -> None:
    folder = _folder(tmp_path, local_remote)
    (folder / "c.txt").write_text("c" * 100_000)  # an object of its own, easy to damage
    cg("push", "--folder", str(folder))
    objects = sorted((Path(local_remote) / "data").iterdir(), key=lambda p: p.stat().st_mtime)
    damaged = objects[-1]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 1
    damaged.write_bytes(bytes(data))
    result = cg_proc("verify", "--read-data", "--json", "--folder", str(folder))
    error = _json_error(result)
    assert result.returncode == 3 and error["kind"] == "integrity"
    assert error["paths"] == ["c.txt"], error


def test_a_newer_vault_format_is_its_own_kind(local_remote: str, tmp_path: Path) -> None:
    folder = _folder(tmp_path, local_remote)
    descriptor = Path(local_remote) / "cloudguard.json"
    doc = json.loads(descriptor.read_text())
    doc["format"] = 99
    descriptor.write_text(json.dumps(doc))
    result = cg_proc("status", "--json", "--folder", str(folder))
    error = _json_error(result)
    assert result.returncode == 1 and error["kind"] == "unsupported-format", error
    assert "upgrade cloudguard" in str(error["message"])


def test_a_busy_folder_is_its_own_kind(local_remote: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path, local_remote)
    lock = find_binding(str(folder)).dir / "lock"
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE,
                              env={**os.environ})
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        holder.stdout.close()
        monkeypatch.setenv("CLOUDGUARD_LOCK_WAIT", "0")
        result = cg_proc("push", "--json", "--folder", str(folder))
        assert result.returncode == 1 and _json_error(result)["kind"] == "folder-busy"
    finally:
        holder.kill()
        holder.wait()


def test_the_descriptor_is_typed_every_key_present_none_extra() -> None:
    """Issue 10: the descriptor decodes through a msgspec Struct; a newer format says
    'upgrade', anything else malformed is an integrity failure naming the object."""
    good = json.loads(layout.make_descriptor("padme"))
    assert layout.parse_descriptor(json.dumps(good).encode(), "r:").padding == "padme"
    bad = [{**good, "extra": 1}, {k: v for k, v in good.items() if k != "salt"},
           {**good, "salt": "zz"}, {**good, "padding": "other"}, {**good, "chunk_size": 4096},
           {**good, "created": 5}]
    for doc in bad:
        with pytest.raises(IntegrityError, match="r:: the vault descriptor"):
            layout.parse_descriptor(json.dumps(doc).encode(), "r:")
    with pytest.raises(UnsupportedFormat, match="upgrade"):
        layout.parse_descriptor(json.dumps({**good, "format": 99}).encode(), "r:")
