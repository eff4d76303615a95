"""The test infrastructure itself: every remote kind really works through rclone.

These talk to rclone with argument lists only and check each result, so a
broken server or a wrong spec fails here first, before any cloudguard test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import CHEAP_KDF_LOG_N, PASSPHRASE
from servers import ServerError, _serve, rclone_binary, rclone_env, webdav_server

from cloudguard import keys

HOSTILE = "$(touch INJECTED)"
# Kinds whose listings carry an MD5 (rclone serve webdav offers no hashes).
MD5_KINDS = ("local", "sftp", "s3")


def rclone(
    *args: str, stdin: bytes | None = None, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(
        [rclone_binary(), *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        env=rclone_env(),
        cwd=cwd,
        timeout=120,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"rclone {' '.join(args)} exited {proc.returncode}:\n"
            f"{proc.stderr.decode(errors='replace')}"
        )
    return proc


def lsjson(spec: str, *flags: str) -> list[dict[str, Any]]:
    out = rclone("lsjson", *flags, spec).stdout
    entries: list[dict[str, Any]] = json.loads(out)
    return entries


def kind_of(request: pytest.FixtureRequest) -> str:
    kind: str = request.node.callspec.params["remote"]
    return kind


def test_rclone_roundtrip(remote: str, remote_dir: Path, request: pytest.FixtureRequest) -> None:
    data = os.urandom(200_000)  # above rclone's 100 KiB streaming-upload cutoff
    rclone("rcat", f"{remote}/obj", stdin=data)

    entries = lsjson(remote, "--hash")
    assert [(e["Name"], e["Size"], e["IsDir"]) for e in entries] == [("obj", len(data), False)]
    if kind_of(request) in MD5_KINDS:
        assert entries[0]["Hashes"]["md5"] == hashlib.md5(data).hexdigest()  # noqa: S324

    assert rclone("cat", f"{remote}/obj").stdout == data
    assert rclone("cat", f"{remote}/obj", "--offset", "3", "--count", "5").stdout == data[3:8]
    # The spec really points at the folder the fixtures say it does.
    assert (remote_dir / "obj").read_bytes() == data

    rclone("deletefile", f"{remote}/obj")
    assert lsjson(remote) == []
    assert not (remote_dir / "obj").exists()
    # Gotcha: `rclone cat` of a missing object exits 0 with no output on S3
    # (the name is taken as an empty prefix); elsewhere it fails.
    gone = rclone("cat", f"{remote}/obj", check=False)
    assert gone.stdout == b""
    if kind_of(request) != "s3":
        assert gone.returncode != 0


def test_changes_on_disk_are_seen(remote: str, remote_dir: Path) -> None:
    """Servers run without a directory cache, so tampering tests see their changes."""
    rclone("rcat", f"{remote}/obj", stdin=b"hello")
    assert lsjson(remote)[0]["Size"] == 5
    (remote_dir / "obj").write_bytes(b"hello, tampered")
    (remote_dir / "extra").write_bytes(b"x")
    assert sorted((e["Name"], e["Size"]) for e in lsjson(remote)) == [("extra", 1), ("obj", 15)]
    assert rclone("cat", f"{remote}/obj").stdout == b"hello, tampered"


def test_hostile_name_is_passed_safely(remote: str, remote_dir: Path, tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    obj = f"{remote}/{HOSTILE}"
    rclone("rcat", obj, stdin=b"evil", cwd=cwd)
    # --hash makes the sftp client run md5sum/sha1sum "commands" on the server.
    names = [e["Name"] for e in lsjson(remote, "--hash")]
    assert names == [HOSTILE]
    assert rclone("cat", obj, cwd=cwd).stdout == b"evil"
    assert (remote_dir / HOSTILE).read_bytes() == b"evil"
    rclone("deletefile", obj, cwd=cwd)
    assert lsjson(remote) == []

    for where in (cwd, remote_dir, Path.cwd()):
        if where.exists():
            assert not (where / "INJECTED").exists(), f"command ran in {where}"
    assert list(cwd.iterdir()) == []


@pytest.mark.server
def test_stopped_server_fails(tmp_path: Path) -> None:
    """A spec whose server is gone must fail, not look like an empty remote."""
    with webdav_server(tmp_path / "root") as spec:
        rclone("rcat", f"{spec}/obj", stdin=b"x")
        assert [e["Name"] for e in lsjson(spec)] == ["obj"]
    proc = rclone("lsjson", "--retries", "1", "--low-level-retries", "1", spec, check=False)
    assert proc.returncode != 0


def test_server_start_failure_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="exited with code"):
        with _serve(["serve", "webdav", str(tmp_path), "--no-such-flag"], "bad server", 5):
            pass


def test_environment_is_isolated(tmp_path: Path) -> None:
    assert os.environ["RCLONE_CONFIG"] == "/dev/null"
    assert os.environ["CLOUDGUARD_KEYSTORE"] == "file"
    assert os.environ["CLOUDGUARD_PASSPHRASE"] == PASSPHRASE
    assert os.environ["CLOUDGUARD_KIT_PASSPHRASE"] == PASSPHRASE
    assert os.environ["CLOUDGUARD_KEY_CACHE_SECONDS"] == "0"
    assert keys.TEST_KDF_LOG_N == CHEAP_KDF_LOG_N
    for var in (
        "CLOUDGUARD_HOME",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "XDG_CACHE_HOME",
        "XDG_STATE_HOME",
    ):
        path = Path(os.environ[var])
        assert path.is_dir() and list(path.iterdir()) == [], var
        assert not path.is_relative_to(Path.home()), var
    extra = {k for k in os.environ if k.startswith("CLOUDGUARD_")} - {
        "CLOUDGUARD_HOME",
        "CLOUDGUARD_KEYSTORE",
        "CLOUDGUARD_PASSPHRASE",
        "CLOUDGUARD_KIT_PASSPHRASE",
        "CLOUDGUARD_KEY_CACHE_SECONDS",
        "CLOUDGUARD_TEST_KEYRING",
        "CLOUDGUARD_RCLONE",
    }
    assert extra == set()


@pytest.mark.keyring
def test_secret_service_works_inside_isolation() -> None:
    """The gnome-keyring started by scripts/test.sh still answers although the
    test's XDG_DATA_HOME now points elsewhere."""
    import keyring
    from keyring.backends import SecretService

    backend = keyring.get_keyring()
    assert isinstance(backend, SecretService.Keyring), backend
    service = f"cloudguard-test-{uuid.uuid4().hex}"
    keyring.set_password(service, "user", "value")
    try:
        assert keyring.get_password(service, "user") == "value"
    finally:
        keyring.delete_password(service, "user")
    assert keyring.get_password(service, "user") is None


def _server_pid(spec: str) -> int:
    match = re.search(r"127\.0\.0\.1:(\d+)|port=(\d+)", spec)
    assert match, spec
    addr = f"127.0.0.1:{match.group(1) or match.group(2)}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and addr in argv:
            return int(proc.name)
    raise AssertionError(f"no server process for {spec}")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.server
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("kind", ["webdav", "sftp", "s3"])
def test_idle_server_does_not_spin(kind: str, request: pytest.FixtureRequest) -> None:
    """rclone serve with --dir-cache-time 0s burns a core once nested folders
    exist; the servers must sit idle between requests."""
    spec: str = request.getfixturevalue(f"{kind}_remote")
    rclone("rcat", f"{spec}/a/b/obj", stdin=b"x" * 1000)
    rclone("lsjson", "-R", spec)
    pid = _server_pid(spec)
    before = _cpu_seconds(pid)
    time.sleep(1.0)
    assert _cpu_seconds(pid) - before < 0.3
