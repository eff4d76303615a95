"""Shared fixtures: an isolated environment for every test, and rclone remotes.

Remotes are rclone specs usable as ``<spec>`` or ``<spec>/<object>`` with
``RCLONE_CONFIG=/dev/null``:

* ``local_remote``  - a fresh temporary folder (a plain path);
* ``webdav_remote``, ``sftp_remote``, ``s3_remote`` - a fresh sub-path on a
  loopback ``rclone serve`` started once per session (see ``servers.py``);
* ``remote`` - parametrized over all four;
* ``remote_dir`` - the local folder that holds what ``remote`` stores, for
  tests that inspect or tamper with the stored objects directly (the servers
  run without directory caching, so such changes are seen at once).

Tests marked ``keyring`` are skipped unless ``CLOUDGUARD_TEST_KEYRING=1``
(set by scripts/test.sh, which runs pytest inside a real Secret Service).
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CHEAP_KDF_LOG_N, PASSPHRASE
from servers import ServerError, rclone_binary, s3_server, sftp_server, webdav_server

from cloudguard import keys

# CLOUDGUARD_* variables that describe the test machine, not the program's
# configuration; the isolation fixture keeps them.
KEEP_VARS = {"CLOUDGUARD_TEST_KEYRING", "CLOUDGUARD_RCLONE"}

_counter = itertools.count(1)
# spec -> local folder behind it, filled by the *_remote fixtures.
_BACKING: dict[str, Path] = {}


def secret_service_available() -> bool:
    return os.environ.get("CLOUDGUARD_TEST_KEYRING") == "1"


def fuse_available() -> bool:
    return os.path.exists("/dev/fuse") and os.access("/dev/fuse", os.R_OK | os.W_OK)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    """Under CI=true a skipped test marked ``fuse`` (a real mount) is a failure: CI must have
    /dev/fuse, and a mount test that quietly skips there tests nothing."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and in_ci() and item.get_closest_marker("fuse") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"a FUSE test was skipped under CI=true (skips fail there): {reason}"


def _rclone_version() -> str:
    try:
        out = subprocess.run(
            [rclone_binary(), "version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env={**os.environ, "RCLONE_CONFIG": "/dev/null"},
        )
    except (ServerError, OSError, subprocess.SubprocessError) as exc:
        return f"not available ({exc})"
    first = out.stdout.splitlines()[0] if out.stdout else "?"
    return f"{first} ({rclone_binary()})"


def pytest_report_header(config: pytest.Config) -> list[str]:
    yes_no = {True: "yes", False: "no"}
    return [
        f"rclone: {_rclone_version()}",
        f"Secret Service (CLOUDGUARD_TEST_KEYRING): {yes_no[secret_service_available()]}",
        f"/dev/fuse: {yes_no[fuse_available()]}",
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if secret_service_available():
        return
    skip = pytest.mark.skip(reason="no Secret Service (run via scripts/test.sh)")
    for item in items:
        if "keyring" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Point every per-user location at fresh temp folders, use a file keystore,
    a fixed (strong) passphrase for key files and kits, and the cheapest KDF cost, and drop
    stray settings.

    An already running gnome-keyring-daemon keeps working: it found its
    storage through XDG_DATA_HOME when it started, and clients reach it
    through DBUS_SESSION_BUS_ADDRESS, which is left alone.
    """
    for name in list(os.environ):
        if name.startswith("CLOUDGUARD_") and name not in KEEP_VARS:
            monkeypatch.delenv(name)
        elif name.startswith("RCLONE_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)

    base = tmp_path_factory.mktemp("env")
    for var, sub in [
        ("CLOUDGUARD_HOME", "cloudguard-home"),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_STATE_HOME", "state"),
    ]:
        path = base / sub
        path.mkdir(mode=0o700)
        monkeypatch.setenv(var, str(path))
    monkeypatch.setenv("RCLONE_CONFIG", "/dev/null")
    monkeypatch.setenv("CLOUDGUARD_KEYSTORE", "file")
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("CLOUDGUARD_KIT_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("CLOUDGUARD_KEY_CACHE_SECONDS", "0")  # keys/test_keycache.py turns it on
    monkeypatch.setattr(keys, "TEST_KDF_LOG_N", CHEAP_KDF_LOG_N)
    yield


def _fresh_name(request: pytest.FixtureRequest) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name).strip("-")[:40]
    return f"t{next(_counter):04d}-{safe}"


# --- servers: one per session, a fresh sub-path per test -------------------


@pytest.fixture(scope="session")
def _webdav_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("webdav-root")
    with webdav_server(root, sub="data") as spec:
        yield spec, root / "data"


@pytest.fixture(scope="session")
def _sftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("sftp-root")
    with sftp_server(root, sub="data") as spec:
        yield spec, root / "data"


@pytest.fixture(scope="session")
def _s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("s3-root")
    with s3_server(root, sub="data") as spec:
        yield spec, root / "bucket" / "data"


def _sub_remote(server: tuple[str, Path], request: pytest.FixtureRequest) -> str:
    base_spec, base_dir = server
    name = _fresh_name(request)
    spec = f"{base_spec}/{name}"
    _BACKING[spec] = base_dir / name
    return spec


@pytest.fixture
def local_remote(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("local-remote")
    _BACKING[str(path)] = path
    return str(path)


@pytest.fixture
def webdav_remote(_webdav_server: tuple[str, Path], request: pytest.FixtureRequest) -> str:
    return _sub_remote(_webdav_server, request)


@pytest.fixture
def sftp_remote(_sftp_server: tuple[str, Path], request: pytest.FixtureRequest) -> str:
    return _sub_remote(_sftp_server, request)


@pytest.fixture
def s3_remote(_s3_server: tuple[str, Path], request: pytest.FixtureRequest) -> str:
    return _sub_remote(_s3_server, request)


@pytest.fixture(
    params=[
        pytest.param("local", marks=pytest.mark.rclone),
        pytest.param("webdav", marks=[pytest.mark.rclone, pytest.mark.server]),
        pytest.param("sftp", marks=[pytest.mark.rclone, pytest.mark.server]),
        pytest.param("s3", marks=[pytest.mark.rclone, pytest.mark.server]),
    ]
)
def remote(request: pytest.FixtureRequest) -> str:
    """An rclone remote spec of each kind; the folder behind it is fresh and may
    not exist yet on the server side (S3 has no empty folders)."""
    spec: str = request.getfixturevalue(f"{request.param}_remote")
    return spec


@pytest.fixture
def remote_dir(remote: str) -> Path:
    """The local folder where ``remote`` keeps its objects (may not exist yet)."""
    return _BACKING[remote]


@pytest.fixture
def socket_paths_too_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CLOUDGUARD_HOME and TMPDIR both too long for a unix socket (108 bytes), no runtime
    folder: the crash campaign's setting, where sockets must go to /tmp. Returns the home."""
    import tempfile

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.setenv("CLOUDGUARD_HOME", str(deep))
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    return deep
