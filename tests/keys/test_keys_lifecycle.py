"""Devices, recovery kits and revocation across several devices; rotation is in
tests/ops/test_rotate.py, re-encryption in test_rekey.py, enrolment in test_enrol.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import keyring
import pytest
from helpers import cg, cg_json, cg_proc, setup_two

from cloudguard import keys
from cloudguard.errors import KeyStoreError


def test_device_list_json_shape(local_remote: str, tmp_path: Path) -> None:
    a, _b, _kit = setup_two(local_remote, tmp_path)
    listed = cg_json("device", "list", "--folder", str(a))
    rows = listed["members"]
    kinds = sorted(r["kind"] for r in rows)
    assert kinds == ["device", "device", "kit"]
    for row in rows:
        assert {"id", "kind", "name", "this_device"} <= set(row)
    assert {"laptop-a", "desk-b"} <= {r["name"] for r in rows}
    assert len(listed["vault_code"]) == 29 and listed["removed"] == []


def test_removed_device_cannot_read_new_pushes(local_remote: str, tmp_path: Path) -> None:
    a, b, _kit = setup_two(local_remote, tmp_path)
    b_id = [r["id"] for r in cg_json("device", "list", "--folder", str(b))["members"]
            if r["this_device"]][0]
    cg("device", "remove", b_id, "--folder", str(a))
    (a / "secret-after-removal.txt").write_text("b must not read this")
    cg("push", "--folder", str(a))
    proc = cg_proc("pull", "--folder", str(b))
    assert proc.returncode == 1 and "removed" in proc.stderr
    assert not (b / "secret-after-removal.txt").exists()


def test_slipped_in_key_slot_is_rejected(local_remote: str, tmp_path: Path) -> None:
    """Someone with write access to the remote adds a slot for their own key to the head's key
    object: the signed commit holds the key object's hash."""
    a, b, _kit = setup_two(local_remote, tmp_path)
    keys_dir = Path(local_remote) / "keys"
    slot_file = sorted(keys_dir.glob("*.k"))[-1]
    doc = json.loads(slot_file.read_text())
    doc["slots"]["a77ac4e7a77ac4e7"] = next(iter(doc["slots"].values()))
    slot_file.write_text(json.dumps(doc))
    proc = cg_proc("pull", "--folder", str(b))
    assert proc.returncode == 3 and slot_file.name in proc.stderr


def test_wrong_kit_passphrase(local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                              ) -> None:
    a = tmp_path / "a"
    a.mkdir()
    cg("init", str(a), "--remote", local_remote)
    cg("key", "export", str(tmp_path / "kit.json"), "--folder", str(a))
    monkeypatch.setenv("CLOUDGUARD_KIT_PASSPHRASE", "wrong but strong: oyster gravel tundra")
    proc = cg_proc("clone", local_remote, str(tmp_path / "b"), "--key-file",
                   str(tmp_path / "kit.json"))
    assert proc.returncode == 1 and "wrong passphrase" in proc.stderr


def test_kit_file_is_private_and_not_overwritten(local_remote: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    cg("init", str(a), "--remote", local_remote)
    kit = tmp_path / "kit.json"
    cg("key", "export", str(kit), "--folder", str(a))
    assert kit.stat().st_mode & 0o777 == 0o600
    assert json.loads(kit.read_text())["kdf"]["alg"] == "scrypt"
    assert cg_proc("key", "export", str(kit), "--folder", str(a)).returncode == 2


class _FakePlaintext(keyring.backend.KeyringBackend):
    # never chosen on its own, not even over keyring's fail backend (priority 0): a tie goes by
    # set order, and then the doctor tests that ran later saw an "insecure keyring"
    priority = -1  # type: ignore[assignment]

    def get_password(self, service: str, username: str) -> str | None:
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        raise AssertionError("must not be used")

    def delete_password(self, service: str, username: str) -> None:
        return None


_FakePlaintext.__module__ = "keyrings.alt.file"
_FakePlaintext.__name__ = "PlaintextKeyring"


def test_insecure_keyring_backend_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(_FakePlaintext())
    try:
        monkeypatch.delenv("CLOUDGUARD_KEYSTORE")
        with pytest.raises(KeyStoreError, match="uninstall keyrings.alt"):
            keys.choose_keystore()
        monkeypatch.setenv("CLOUDGUARD_KEYSTORE", "keyring")
        with pytest.raises(KeyStoreError, match="unencrypted"):
            keys.choose_keystore()
    finally:
        keyring.set_keyring(previous)


def test_fail_backend_falls_back_to_passphrase_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from keyring.backends import fail

    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        monkeypatch.delenv("CLOUDGUARD_KEYSTORE")
        assert keys.choose_keystore() == "file"
        monkeypatch.setenv("CLOUDGUARD_KEYSTORE", "keyring")
        with pytest.raises(KeyStoreError, match="CLOUDGUARD_KEYSTORE=file"):
            keys.choose_keystore()
    finally:
        keyring.set_keyring(previous)


@pytest.mark.keyring
def test_device_key_in_real_secret_service(local_remote: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDGUARD_KEYSTORE", "keyring")
    monkeypatch.delenv("CLOUDGUARD_PASSPHRASE")
    status, desc = keys.keyring_status()
    assert status == "secure" and "SecretService" in desc
    a = tmp_path / "a"
    a.mkdir()
    (a / "doc.txt").write_text("kept by the keyring")
    info = cg_json("init", str(a), "--remote", local_remote)
    assert info["keystore"] == "keyring"
    account = f"{info['vault']}/{info['device']}"
    stored_key = keyring.get_password("cloudguard", account)
    assert stored_key is not None and len(stored_key) == 88  # 64-byte member secret
    home = Path(os.environ["CLOUDGUARD_HOME"])
    assert not list(home.rglob("device.key"))
    keys.drop_cached_keys()
    proc = cg_proc("push", "--folder", str(a))  # a fresh process reads the keyring
    assert proc.returncode == 0, proc.stderr
    code = cg_json("device", "list", "--folder", str(a))["vault_code"]
    request = cg_json("clone", local_remote, str(tmp_path / "b"), "--vault-code", code)
    cg("device", "approve", request["fingerprint"], "--folder", str(a), "--yes")
    cg("pull", "--folder", str(tmp_path / "b"))
    assert (tmp_path / "b" / "doc.txt").read_text() == "kept by the keyring"
