"""Devices, recovery kits, rotation and revocation across several devices."""

from __future__ import annotations

import json
import os
from pathlib import Path

import keyring
import pytest
from helpers import cg, cg_json, cg_proc, share, stored, tree

from cloudguard import keys
from cloudguard.errors import KeyStoreError


def setup_two(remote: str, tmp_path: Path) -> tuple[Path, Path, Path]:
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "doc.txt").write_text("first")
    share(remote, a, b, kit, ("laptop-a", "desk-b"))
    return a, b, kit


def test_rotation_reaches_other_device_and_old_kit_still_opens(local_remote: str,
                                                                tmp_path: Path) -> None:
    a, b, kit = setup_two(local_remote, tmp_path)
    before = stored(Path(local_remote))
    rotated = cg_json("key", "rotate", "--folder", str(a))
    assert rotated["epoch"] == 2
    after = stored(Path(local_remote))
    changed = {n for n in after if before.get(n) != after[n]}
    assert changed and all(n.startswith(("m/", "keys/")) for n in changed), changed
    assert not any(n.startswith("data/") for n in changed)
    (a / "after.txt").write_text("written under epoch 2")
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))  # no manual step on b
    assert (b / "after.txt").read_text() == "written under epoch 2"
    epochs = cg_json("key", "list", "--folder", str(b))
    assert [g["epoch"] for g in epochs if g["current"]] == [2]
    c = tmp_path / "c"
    cg("clone", local_remote, str(c), "--key-file", str(kit))
    assert tree(c) == tree(a)


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


def test_remove_kit_with_reencrypt_revokes_it(local_remote: str, tmp_path: Path) -> None:
    a, b, kit = setup_two(local_remote, tmp_path)
    (a / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    cg("push", "--folder", str(a))
    old = set(stored(Path(local_remote)))
    kit_id = json.loads(kit.read_text())["rid"]
    cg("device", "remove", kit_id, "--reencrypt", "--folder", str(a))
    now = set(stored(Path(local_remote)))
    commits = {n for n in now if n.startswith("keys/") and not n.endswith(".k")}
    # signed commits are never deleted; every secret (key objects, data, manifests) is new
    assert not (old & now) - {"cloudguard.json"} - commits, "an old object survived --reencrypt"
    assert not any(n.endswith(".k") for n in old & now)
    proc = cg_proc("clone", local_remote, str(tmp_path / "thief"), "--key-file", str(kit))
    assert proc.returncode != 0 and "removed" in proc.stderr
    assert not (tmp_path / "thief").exists()
    cg("pull", "--folder", str(b))
    assert tree(a) == tree(b)
    cg("verify", "--read-data", "--folder", str(b))
    listed = cg_json("device", "list", "--folder", str(b))
    assert kit_id not in {r["id"] for r in listed["members"]}
    assert kit_id in {r["id"] for r in listed["removed"]}


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


def test_enrolment_by_approval(local_remote: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "doc.txt").write_text("hello")
    cg("init", str(a), "--remote", local_remote)
    cg("push", "--folder", str(a))
    code = cg_json("device", "list", "--folder", str(a))["vault_code"]
    refused = cg_proc("clone", local_remote, str(tmp_path / "x"))
    assert refused.returncode == 2 and "vault code" in refused.stderr
    wrong = cg_proc("clone", local_remote, str(tmp_path / "x"), "--vault-code",
                    "AAAA-BBBB-CCCC-DDDD-EEEE-FFFF")
    assert wrong.returncode == 3 and "fake vault" in wrong.stderr
    request = cg_json("clone", local_remote, str(tmp_path / "b"), "--vault-code",
                      code.lower().replace("-", " "))
    assert request["enrolled"] is False
    fp = request["fingerprint"]
    waiting = cg_proc("pull", "--folder", str(tmp_path / "b"))
    assert waiting.returncode == 1 and fp in waiting.stderr
    assert cg_proc("device", "approve", "AAAA-BBBB-CCCC-DDDD-EEEE-FFFF", "--folder",
                   str(a)).returncode == 2
    cg("device", "approve", fp, "--folder", str(a), "--yes")
    cg("pull", "--folder", str(tmp_path / "b"))
    assert (tmp_path / "b" / "doc.txt").read_text() == "hello"


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
