"""cloudguard doctor and the hash-chained audit log."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import cg, cg_json, cg_proc

from cloudguard import audit
from cloudguard.ops import doctor as ops_doctor


def bound(remote: str, root: Path, name: str = "vault", exposed: bool = False) -> Path:
    """``exposed``: the folder is inside another sync client's; init refuses it without
    --allow-exposed."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "doc.txt").write_text("secret")
    cg("init", str(folder), "--remote", remote, *(["--allow-exposed"] if exposed else []))
    cg("push", "--folder", str(folder))
    return folder


def checks(result: dict[str, object], level: str) -> set[str]:
    return {f["check"] for f in result["findings"] if f["level"] == level}  # type: ignore[attr-defined]


@pytest.mark.parametrize("marker", [".dropbox", ".stfolder", ".sync_abc123.db", ".megaignore",
                                    ".owncloudsync.log"])
def test_folder_inside_another_sync_client_is_an_error(local_remote: str, tmp_path: Path,
                                                        marker: str) -> None:
    sync_root = tmp_path / "SyncClient"
    sync_root.mkdir()
    (sync_root / marker).mkdir() if not marker.endswith((".db", ".log")) else (
        sync_root / marker).write_text("")
    folder = bound(local_remote, sync_root, exposed=True)
    proc = cg_proc("doctor", "--json", "--folder", str(folder))
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert "plaintext-exposure" in checks(result, "error")
    finding = [f for f in result["findings"] if f["check"] == "plaintext-exposure"][0]
    assert str(sync_root) in finding["message"] and finding["fix"]


def test_folder_containing_a_sync_client_is_an_error(local_remote: str, tmp_path: Path) -> None:
    folder = bound(local_remote, tmp_path)
    (folder / "inner" / ".stfolder").mkdir(parents=True)
    result = json.loads(cg_proc("doctor", "--json", "--folder", str(folder)).stdout)
    assert "plaintext-exposure" in checks(result, "error")


def test_configured_sync_root_is_found(local_remote: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder = bound(local_remote, tmp_path / "Nextcloud")
    fake_home = tmp_path / "home"
    (fake_home / ".config" / "Nextcloud").mkdir(parents=True)
    (fake_home / ".config" / "Nextcloud" / "nextcloud.cfg").write_text(
        f"[Accounts]\n0\\Folders\\1\\localPath={tmp_path / 'Nextcloud'}/\n")
    monkeypatch.setenv("HOME", str(fake_home))
    result = json.loads(cg_proc("doctor", "--json", "--folder", str(folder)).stdout)
    messages = [f["message"] for f in result["findings"] if f["level"] == "error"]
    assert any("Nextcloud's configuration" in m for m in messages)


def test_clean_setup_passes_with_warnings(local_remote: str, tmp_path: Path) -> None:
    folder = bound(local_remote, tmp_path)
    result = cg_json("doctor", "--folder", str(folder))
    assert result["ok"] and result["errors"] == 0
    assert "recovery-kit" in checks(result, "warning")
    cg("key", "export", str(tmp_path / "kit.json"), "--folder", str(folder))
    assert "recovery-kit" not in checks(cg_json("doctor", "--folder", str(folder)), "warning")


def test_public_acl_is_a_warning(tmp_path: Path) -> None:
    remote = f":local,acl=public-read:{tmp_path / 'remote'}"
    folder = bound(remote, tmp_path)
    result = cg_json("doctor", "--folder", str(folder))
    assert "sharing" in checks(result, "warning")


def test_old_key_is_a_warning(local_remote: str, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A key two days old under a one-day policy: doctor's clock is moved, not the policy."""
    folder = bound(local_remote, tmp_path)
    monkeypatch.setenv("CLOUDGUARD_ROTATE_DAYS", "1")
    assert "key-age" in checks(cg_json("doctor", "--folder", str(folder)), "ok")
    later = time.time() + 2 * 86400
    monkeypatch.setattr(ops_doctor, "time", SimpleNamespace(time=lambda: later,
                                                          strptime=time.strptime))
    assert "key-age" in checks(cg_json("doctor", "--folder", str(folder)), "warning")


def test_loose_permissions_are_errors(local_remote: str, tmp_path: Path) -> None:
    folder = bound(local_remote, tmp_path)
    home = Path(os.environ["CLOUDGUARD_HOME"])
    os.chmod(home, 0o755)
    key_file = next(home.rglob("device.key"))
    os.chmod(key_file, 0o644)
    proc = cg_proc("doctor", "--json", "--folder", str(folder))
    assert proc.returncode == 1
    messages = " ".join(f["message"] for f in json.loads(proc.stdout)["findings"])
    assert str(key_file) in messages and str(home) in messages


def test_doctor_remote_lists_stray_and_unreferenced_objects(local_remote: str,
                                                            tmp_path: Path) -> None:
    folder = bound(local_remote, tmp_path)
    (Path(local_remote) / "notes.txt").write_text("plaintext uploaded by another tool")
    (Path(local_remote) / "data" / ("ab" * 16)).write_bytes(b"not ciphertext at all")
    proc = cg_proc("doctor", "--remote", "--json", "--folder", str(folder))
    assert proc.returncode == 1
    found = json.loads(proc.stdout)["findings"]
    stray = " ".join(f["message"] for f in found if f["check"] == "remote-stray")
    assert "notes.txt" in stray and "ab" * 16 in stray


def test_audit_log_records_and_verifies(local_remote: str, tmp_path: Path) -> None:
    folder = bound(local_remote, tmp_path)
    cg("key", "rotate", "--folder", str(folder))
    cg("verify", "--folder", str(folder))
    records = cg_json("log")
    events = [r["event"] for r in records]
    assert events[:4] == ["init", "push", "rotate", "verify"]
    push = records[1]
    assert push["files"] == 1 and push["objects"] and push["epoch"] == 1
    text = audit.log_path().read_text()
    assert "doc.txt" not in text and "secret" not in text
    assert cg_json("log", "--verify")["records"] == len(records)


@pytest.mark.parametrize("attack", ["edit", "remove", "reorder", "truncate"])
def test_audit_log_tampering_is_detected(local_remote: str, tmp_path: Path, attack: str) -> None:
    folder = bound(local_remote, tmp_path)
    cg("push", "--folder", str(folder))
    cg("verify", "--folder", str(folder))
    path = audit.log_path()
    lines = path.read_text().splitlines()
    if attack == "edit":
        lines[1] = lines[1].replace('"files": 1', '"files": 7')
    elif attack == "remove":
        del lines[1]
    elif attack == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        lines = lines[:-1]
    path.write_text("\n".join(lines) + "\n")
    proc = cg_proc("log", "--verify")
    assert proc.returncode == 3 and "audit.log" in proc.stderr


def test_integrity_failures_are_logged(local_remote: str, tmp_path: Path) -> None:
    folder = bound(local_remote, tmp_path)
    for obj in (Path(local_remote) / "data").iterdir():
        obj.write_bytes(b"\0" * obj.stat().st_size)
    assert cg_proc("verify", "--read-data", "--folder", str(folder)).returncode == 3
    last = cg_json("log")[-1]
    assert last["event"] == "verify" and last["ok"] is False and last["exit_code"] == 3


def test_audit_log_survives_a_kill_between_record_and_head(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    audit.record("push")

    def killed(*_args: object) -> None:
        raise KeyboardInterrupt  # stands in for kill -9 after the line hit the disk

    with monkeypatch.context() as patched:
        patched.setattr(audit, "_write_head", killed)
        with pytest.raises(KeyboardInterrupt):
            audit.record("pull")
    assert audit.verify() == 2
    audit.record("verify")
    assert audit.verify() == 3


def test_dropbox_configuration_in_home_is_not_a_synced_folder(local_remote: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """~/.dropbox (info.json) is Dropbox's configuration, not a marker of a synced folder:
    a folder elsewhere under home is fine; the folder info.json names is not."""
    fake_home = tmp_path / "home"
    (fake_home / ".dropbox").mkdir(parents=True)
    dropbox = fake_home / "Dropbox"
    (dropbox / ".dropbox.cache").mkdir(parents=True)
    (fake_home / ".dropbox" / "info.json").write_text(
        json.dumps({"personal": {"path": str(dropbox)}}))
    monkeypatch.setenv("HOME", str(fake_home))
    outside = bound(local_remote, fake_home / "work")
    result = json.loads(cg_proc("doctor", "--json", "--folder", str(outside)).stdout)
    assert "plaintext-exposure" not in checks(result, "error"), result
    inside = bound(str(tmp_path / "remote2"), dropbox / "secret", exposed=True)
    proc = cg_proc("doctor", "--json", "--folder", str(inside))
    assert proc.returncode == 1
    assert "plaintext-exposure" in checks(json.loads(proc.stdout), "error")
