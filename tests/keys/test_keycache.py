"""The session cache of unlocked key files in the kernel keyring (issue 9, item 20): each
command runs as its own process, as a user's would, so the cache is crossed for real."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import PASSPHRASE, cg, cg_proc

from cloudguard import keycache, keys

pytestmark = pytest.mark.skipif(keycache._ring(create=True) is None,
                                reason="no kernel keyring here")


@pytest.fixture
def folder(local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CLOUDGUARD_KEY_CACHE_SECONDS", "300")
    keys.drop_cached_keys()
    path = tmp_path / "docs"
    path.mkdir()
    cg("init", str(path), "--remote", local_remote)
    return path


def needs_passphrase(folder: Path) -> bool:
    got = cg_proc("status", "--folder", str(folder))
    if got.returncode == 0:
        return False
    assert got.returncode == 1 and "a passphrase is needed" in got.stderr, got.stderr
    return True


def test_an_unlocked_key_file_is_not_asked_for_again_until_lock(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys.drop_cached_keys()
    assert cg_proc("status", "--folder", str(folder)).returncode == 0  # unlocks with the env
    monkeypatch.delenv("CLOUDGUARD_PASSPHRASE")
    assert not needs_passphrase(folder)  # a new process, no passphrase: the cache answers
    assert cg_proc("lock").returncode == 0
    assert needs_passphrase(folder)


def test_the_cache_expires_and_can_be_turned_off(folder: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    keys.drop_cached_keys()
    monkeypatch.setenv("CLOUDGUARD_KEY_CACHE_SECONDS", "1")
    assert cg_proc("status", "--folder", str(folder)).returncode == 0
    monkeypatch.delenv("CLOUDGUARD_PASSPHRASE")
    time.sleep(2.5)
    assert needs_passphrase(folder)
    monkeypatch.setenv("CLOUDGUARD_KEY_CACHE_SECONDS", "0")
    keys.drop_cached_keys()
    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE", PASSPHRASE)
    assert cg_proc("status", "--folder", str(folder)).returncode == 0
    monkeypatch.delenv("CLOUDGUARD_PASSPHRASE")
    assert needs_passphrase(folder)  # 0: nothing was cached


def test_a_replaced_key_file_never_reuses_the_cached_key(
        folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry is named by the file's path and bytes: a key file swapped for another (a
    restored backup, another device's) is opened with its own passphrase."""
    keys.drop_cached_keys()
    assert cg_proc("status", "--folder", str(folder)).returncode == 0
    (key_file,) = Path(os.environ["CLOUDGUARD_HOME"]).rglob("device.key")
    key_file.write_bytes(key_file.read_bytes().replace(b'"', b'" ', 1))
    monkeypatch.delenv("CLOUDGUARD_PASSPHRASE")
    assert needs_passphrase(folder)


def test_a_bad_cache_setting_is_refused_naming_it(folder: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDGUARD_KEY_CACHE_SECONDS", "forever")
    got = cg_proc("status", "--folder", str(folder))
    assert got.returncode == 2 and "CLOUDGUARD_KEY_CACHE_SECONDS" in got.stderr
