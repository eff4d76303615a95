"""Making and joining a vault (ops/enrol.py): init, clone by kit or by approval, and init and
clone against the wrong place (issue 9 items 15 and 19).

Item 19: a remote path that holds no vault is a mistake (exit 1, "no vault at ..."), not
tampering; exit 3 stays for a vault that is there but fails verification.
Item 15: a local remote inside the folder, or the folder inside a local remote, is refused:
every push would encrypt the vault into itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import cg, cg_json, cg_proc


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def a_vault(remote: str, tmp_path: Path) -> Path:
    a = tmp_path / "a"
    a.mkdir()
    (a / "doc.txt").write_text("in the vault")
    cg("init", str(a), "--remote", remote)
    cg("push", "--folder", str(a))
    return a


# --- item 19: no vault there is exit 1 -------------------------------------------------


@pytest.mark.rclone
def test_clone_of_a_missing_local_path_is_exit_1(tmp_path: Path) -> None:
    nowhere, b = tmp_path / "no-such-folder", tmp_path / "b"
    for how in (["--key-file", str(tmp_path / "kit.json")], ["--vault-code", "AAAA-BBBB"]):
        proc = cg_proc("clone", str(nowhere), str(b), *how)
        assert proc.returncode == 1, proc.stderr
        assert one_line(proc.stderr).startswith(f"cloudguard: error: no vault at {nowhere}:")
        assert not b.exists()


@pytest.mark.rclone
def test_clone_of_a_folder_that_is_no_vault_is_exit_1(tmp_path: Path) -> None:
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a vault")
    proc = cg_proc("clone", str(folder), str(tmp_path / "b"), "--vault-code", "AAAA")
    assert proc.returncode == 1
    assert f"no vault at {folder}" in one_line(proc.stderr)


@pytest.mark.rclone
def test_clone_of_a_named_remote_with_a_wrong_path_is_exit_1(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's case, `clone mydav:nonexistent`: a configured remote (here defined through
    rclone's RCLONE_CONFIG_<NAME>_TYPE variable) and a path on it that holds nothing."""
    a = a_vault(local_remote, tmp_path)
    kit = tmp_path / "kit.json"
    cg("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    monkeypatch.setenv("RCLONE_CONFIG_MYDISK_TYPE", "local")
    wrong = f"mydisk:{Path(local_remote).parent / 'nonexistent'}"
    proc = cg_proc("clone", wrong, str(tmp_path / "b"), "--key-file", str(kit))
    assert proc.returncode == 1
    assert one_line(proc.stderr).startswith(f"cloudguard: error: no vault at {wrong}:")
    proc = cg_proc("clone", f"mydisk:{local_remote}", str(tmp_path / "b"), "--key-file",
                   str(kit))
    assert proc.returncode == 0, proc.stderr  # the right path on the same remote works


@pytest.mark.rclone
@pytest.mark.server
def test_clone_of_an_empty_webdav_path_is_exit_1(webdav_remote: str, tmp_path: Path) -> None:
    proc = cg_proc("clone", webdav_remote, str(tmp_path / "b"), "--vault-code", "AAAA")
    assert proc.returncode == 1
    assert f"no vault at {webdav_remote}" in one_line(proc.stderr)


@pytest.mark.rclone
def test_a_vault_that_fails_verification_is_still_exit_3(local_remote: str,
                                                         tmp_path: Path) -> None:
    a = a_vault(local_remote, tmp_path)
    kit = tmp_path / "kit.json"
    cg("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    descriptor = Path(local_remote) / "cloudguard.json"
    proc = cg_proc("clone", local_remote, str(tmp_path / "b"), "--vault-code", "AAAA-BBBB")
    assert proc.returncode == 3 and "holds no vault with code" in proc.stderr  # a fake vault?
    doc = json.loads(descriptor.read_text())
    doc["chunk_size"] = 1
    saved = descriptor.read_text()
    descriptor.write_text(json.dumps(doc))
    proc = cg_proc("clone", local_remote, str(tmp_path / "b"), "--key-file", str(kit))
    assert proc.returncode == 3, proc.stderr  # altered parameters
    descriptor.unlink()
    proc = cg_proc("clone", local_remote, str(tmp_path / "b"), "--key-file", str(kit))
    assert proc.returncode == 3 and "cloudguard.json is missing" in proc.stderr
    descriptor.write_text(saved)
    code = cg_json("device", "list", "--folder", str(a))["vault_code"]
    proc = cg_proc("clone", local_remote, str(tmp_path / "c"), "--vault-code", code)
    assert proc.returncode == 0, proc.stderr  # the same remote, intact again: a request


# --- item 15: a local remote and the folder must not nest --------------------------------


def refused(proc: subprocess.CompletedProcess[str], *names: Path | str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    line = one_line(proc.stderr)
    for name in names:
        assert str(name) in line, (name, line)
    return line


@pytest.mark.rclone
def test_init_refuses_a_local_remote_inside_the_folder(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "documents"
    (folder / "sub").mkdir(parents=True)
    (folder / "doc.txt").write_text("mine")
    before = sorted(p.name for p in folder.rglob("*"))
    monkeypatch.setenv("RCLONE_CONFIG_MYDISK_TYPE", "local")
    link = tmp_path / "link-into-documents"
    link.symlink_to(folder / "sub")
    for remote in (str(folder / "cloud"), str(folder), f":local:{folder}/sub/cloud",
                   f"mydisk:{folder}/vault", str(link / "vault")):
        line = refused(cg_proc("init", str(folder), "--remote", remote), remote, folder)
        assert "is inside the folder" in line and "encrypt the vault into itself" in line
    # a relative path, from inside the folder
    proc = cg_proc("init", ".", "--remote", "cloud", cwd=folder)
    assert "is inside the folder" in refused(proc, folder / "cloud")
    assert sorted(p.name for p in folder.rglob("*")) == before  # no remote folder was made
    assert cg_proc("status", "--folder", str(folder)).returncode != 0  # nothing was bound


@pytest.mark.rclone
def test_init_refuses_a_folder_inside_a_local_remote(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    remote = tmp_path / "cloud"
    remote.mkdir()
    monkeypatch.setenv("RCLONE_CONFIG_MYDISK_TYPE", "local")
    for spec in (str(remote), f":local:{remote}", f"mydisk:{remote}"):
        line = refused(cg_proc("init", str(remote / "documents"), "--remote", spec), spec,
                       remote / "documents")
        assert "is inside the local remote" in line
    assert list(remote.iterdir()) == []


@pytest.mark.rclone
def test_init_accepts_a_sibling_with_a_common_prefix(tmp_path: Path) -> None:
    folder = tmp_path / "documents"
    folder.mkdir()
    proc = cg_proc("init", str(folder), "--remote", str(tmp_path / "documents-cloud"))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.rclone
def test_clone_refuses_a_folder_inside_the_local_remote(local_remote: str,
                                                        tmp_path: Path) -> None:
    a = a_vault(local_remote, tmp_path)
    kit = tmp_path / "kit.json"
    cg("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    inside = Path(local_remote) / "plain"
    line = refused(cg_proc("clone", local_remote, str(inside), "--key-file", str(kit)),
                   inside, local_remote)
    assert "is inside the local remote" in line
    assert not inside.exists()
    outer = tmp_path / "outer"
    shutil.copytree(local_remote, outer / "cloud")  # the same vault, inside the new folder
    line = refused(cg_proc("clone", str(outer / "cloud"), str(outer), "--key-file", str(kit)),
                   outer / "cloud", outer)
    assert "is inside the folder" in line
    assert sorted(p.name for p in outer.iterdir()) == ["cloud"]


def test_init_refuses_existing_vault_and_nonempty_remote(local_remote: str,
                                                          tmp_path: Path) -> None:
    cg("init", str(tmp_path / "a"), "--remote", local_remote)
    proc = cg_proc("init", str(tmp_path / "b"), "--remote", local_remote)
    assert proc.returncode == 2 and "already holds a cloudguard vault" in proc.stderr
    other = tmp_path / "other"
    other.mkdir()
    (other / "stray").write_text("x")
    proc = cg_proc("init", str(tmp_path / "c"), "--remote", str(other))
    assert proc.returncode == 2 and "not empty" in proc.stderr


def test_failed_clone_leaves_nothing_behind(local_remote: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    cg("init", str(a), "--remote", local_remote)
    bogus = tmp_path / "bogus.json"
    bogus.write_text("{}")
    proc = cg_proc("clone", local_remote, str(tmp_path / "b"), "--key-file", str(bogus))
    assert proc.returncode == 2 and "not a cloudguard recovery kit" in proc.stderr
    assert not (tmp_path / "b").exists()
    home = Path(os.environ["CLOUDGUARD_HOME"]) / "folders"
    assert len(list(home.iterdir())) == 1


def test_unknown_format_version_is_refused(local_remote: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    cg("init", str(a), "--remote", local_remote)
    descriptor = Path(local_remote) / "cloudguard.json"
    descriptor.write_text(descriptor.read_text().replace('"format": 2', '"format": 99'))
    proc = cg_proc("clone", local_remote, str(tmp_path / "b"))
    assert proc.returncode == 1 and "format 99 is unknown" in proc.stderr
    assert not (tmp_path / "b").exists()


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
