"""Guards that keep a push from losing files (issue 8, items 1, 2 and 4): the folder marker,
the mass-delete guard, unreadable paths, and temp files that cannot clash with a user's.

Every scenario runs the real CLI against a real rclone remote, with two devices.
"""

from __future__ import annotations

import errno
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import CLOUDGUARD, cg, cg_json, cg_proc, share, tree

from cloudguard import sync
from cloudguard.errors import CloudguardError

MARKER = Path(".cloudguard") / "folder.json"


def files(root: Path, count: int, sub: str = "") -> None:
    (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / sub / f"f{i:03d}.txt").write_text(f"file {sub} {i}\n")


def synced_pair(remote: str, tmp_path: Path, count: int = 3) -> tuple[Path, Path]:
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    files(a, count)
    share(remote, a, b, kit)
    assert tree(a) == tree(b)
    return a, b


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cloudguard: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --- 1. the folder marker -------------------------------------------------------------------


def test_marker_is_written_at_init_and_clone_and_never_synced(local_remote: str,
                                                               tmp_path: Path) -> None:
    a, b = synced_pair(local_remote, tmp_path)
    doc_a = json.loads((a / MARKER).read_text())
    doc_b = json.loads((b / MARKER).read_text())
    assert doc_a["binding"] != doc_b["binding"]  # each folder names its own binding
    raw = (a / MARKER).read_text()
    vault = cg_json("status", "--folder", str(a))["vault"]
    assert vault not in raw and local_remote not in raw  # nothing about the vault leaks
    assert set(doc_a) == {"cloudguard", "binding"}
    status = cg_json("status", "--folder", str(a))
    assert status["files"] == 3 and status["to_push"] == [] and status["to_pull"] == []
    pushed = cg_json("push", "--folder", str(a))
    assert not [p for p in pushed["uploaded"] + pushed["updated"] if ".cloudguard" in p]
    # a fresh clone gets the files, and its own marker only
    c = tmp_path / "c"
    cg("key", "export", str(tmp_path / "kit2.json"), "--folder", str(a), "--choose-passphrase")
    cg("clone", local_remote, str(c), "--key-file", str(tmp_path / "kit2.json"))
    assert json.loads((c / MARKER).read_text())["binding"] not in (doc_a["binding"],
                                                                   doc_b["binding"])
    assert tree(c) == tree(a)


def test_push_and_pull_refuse_a_replaced_folder(local_remote: str, tmp_path: Path) -> None:
    """``mv A A.old; mkdir A`` (or a disk not mounted) must not delete everything."""
    a, b = synced_pair(local_remote, tmp_path)
    a.rename(tmp_path / "a.old")
    a.mkdir()
    proc = cg_proc("push", "--folder", str(a))
    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc)
    assert str(a) in line and "cloudguard mark" in line
    refusal = json.loads(cg_proc("push", "--json", "--folder", str(a)).stdout)["error"]
    assert refusal["kind"] == "marker-missing" and refusal["folder"] == str(a)
    assert refusal["code"] == 1 and "cloudguard mark" in refusal["message"]
    doctor = cg_json("doctor", "--folder", str(a), code=1)
    assert [f["level"] for f in doctor["findings"] if f["check"] == "folder-marker"] == ["error"]
    # pull refuses too, rather than filling an unmounted mount point
    proc = cg_proc("pull", "--folder", str(a))
    assert proc.returncode == 1 and str(a) in one_line_error(proc)
    assert list(a.iterdir()) == []
    # the other device still has every file
    cg("pull", "--folder", str(b))
    assert sorted(p.name for p in b.iterdir() if p.name != ".cloudguard") == [
        "f000.txt", "f001.txt", "f002.txt"]
    # a mount point removed on unmount: the same refusal
    a.rmdir()
    proc = cg_proc("push", "--folder", str(a))
    assert proc.returncode == 1 and "is its disk mounted" in one_line_error(proc)
    assert not a.exists()
    # moving the folder back makes it work again
    (tmp_path / "a.old").rename(a)
    assert cg_json("push", "--folder", str(a))["deleted"] == []


def test_mark_accepts_the_folder_as_it_is(local_remote: str, tmp_path: Path) -> None:
    a, b = synced_pair(local_remote, tmp_path)
    shutil.rmtree(a / ".cloudguard")
    (a / "f000.txt").unlink()
    cg("push", "--folder", str(a), code=1)
    cg("mark", "--folder", str(a))
    assert cg_json("push", "--folder", str(a))["deleted"] == ["f000.txt"]
    cg("pull", "--folder", str(b))
    assert not (b / "f000.txt").exists()


def test_a_marker_copied_from_another_folder_is_refused(local_remote: str,
                                                        tmp_path: Path) -> None:
    a, _b = synced_pair(local_remote, tmp_path)
    other = tmp_path / "other"
    files(other, 2)
    cg("init", str(other), "--remote", str(tmp_path / "remote2"))
    cg("push", "--folder", str(other))
    shutil.rmtree(a / ".cloudguard")
    shutil.copytree(other / ".cloudguard", a / ".cloudguard")
    proc = cg_proc("push", "--folder", str(a))
    assert proc.returncode == 1
    assert "copied from another cloudguard folder" in one_line_error(proc)
    assert json.loads(cg_proc("push", "--json", "--folder", str(a)).stdout)["error"][
        "kind"] == "marker-mismatch"


def test_a_remote_entry_named_like_the_marker_is_never_written(local_remote: str,
                                                               tmp_path: Path) -> None:
    """Another (older or hostile) device's ``.cloudguard`` entries never land in the folder."""
    from cloudguard import vault

    a, b = synced_pair(local_remote, tmp_path)
    with vault.session(str(a)) as s:
        s.commit([{"p": ".cloudguard", "e": {"t": "d", "x": 0o700}, "rm": []},
                  {"p": ".cloudguard/staging/x", "e": {"t": "l", "l": "/etc", "m": 1},
                   "rm": []}])
    before = (b / MARKER).read_bytes()
    cg("pull", "--folder", str(b))
    assert (b / MARKER).read_bytes() == before
    assert not (b / ".cloudguard" / "staging" / "x").exists()


# --- 1. the mass-delete guard ------------------------------------------------------------


def test_mass_delete_thresholds() -> None:
    assert not sync.mass_delete(1, 1)  # deleting the only file of a small folder is fine
    assert not sync.mass_delete(9, 9)  # under the floor of 10
    assert sync.mass_delete(10, 10)
    assert not sync.mass_delete(10, 20)  # exactly half is not more than half
    assert sync.mass_delete(11, 20)
    assert not sync.mass_delete(1000, 100_000)
    assert sync.mass_delete(1001, 100_000)  # more than 1,000 whatever the share
    assert sync.mass_delete(15, 100, share=0.1) and not sync.mass_delete(5, 100, share=0.01)
    assert sync.mass_delete(3, 100_000, most=2)


def test_mass_delete_is_refused_without_a_terminal(local_remote: str, tmp_path: Path) -> None:
    a, b = synced_pair(local_remote, tmp_path, count=30)
    for i in range(20):
        (a / f"f{i:03d}.txt").unlink()
    proc = cg_proc("push", "--folder", str(a))
    assert proc.returncode == 1, proc.stderr
    line = one_line_error(proc)
    assert "20 of the 30 files" in line and "--allow-mass-delete" in line
    proc = cg_proc("push", "--json", "--folder", str(a))
    assert proc.returncode == 1
    refusal = json.loads(proc.stdout)["error"]
    assert (refusal["kind"], refusal["deleting"], refusal["files"]) == ("mass-delete", 20, 30)
    dry = cg_json("push", "--dry-run", "--folder", str(a))  # a dry run says so, and passes
    assert len(dry["deleted"]) == 20 and dry["mass_delete"] is True
    cg("pull", "--folder", str(b))
    assert len([p for p in b.iterdir() if p.suffix == ".txt"]) == 30  # nothing was deleted
    pushed = cg_json("push", "--allow-mass-delete", "--folder", str(a))
    assert len(pushed["deleted"]) == 20
    cg("pull", "--folder", str(b))
    assert tree(a) == tree(b)


def test_small_deletions_need_no_confirmation(local_remote: str, tmp_path: Path) -> None:
    a, b = synced_pair(local_remote, tmp_path, count=1)
    (a / "f000.txt").unlink()
    assert cg_json("push", "--dry-run", "--folder", str(a))["mass_delete"] is False
    assert cg_json("push", "--folder", str(a))["deleted"] == ["f000.txt"]
    cg("pull", "--folder", str(b))
    assert tree(a) == tree(b)


def test_mass_delete_thresholds_from_the_environment(local_remote: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    a, _b = synced_pair(local_remote, tmp_path, count=40)
    for i in range(15):
        (a / f"f{i:03d}.txt").unlink()
    monkeypatch.setenv("CLOUDGUARD_MASS_DELETE_PERCENT", "30")
    proc = cg_proc("push", "--folder", str(a))
    assert proc.returncode == 1 and "more than 30%" in one_line_error(proc)
    monkeypatch.setenv("CLOUDGUARD_MASS_DELETE_PERCENT", "lots")
    proc = cg_proc("push", "--folder", str(a))
    assert proc.returncode == 2 and "CLOUDGUARD_MASS_DELETE_PERCENT" in one_line_error(proc)
    monkeypatch.delenv("CLOUDGUARD_MASS_DELETE_PERCENT")
    assert len(cg_json("push", "--folder", str(a))["deleted"]) == 15  # 15 of 40: fine


def _push_on_a_terminal(a: Path, answer: bytes) -> tuple[int, str]:
    """The real CLI with stdin and stdout on a pseudo-terminal, answering its question."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([*CLOUDGUARD, "push", "--folder", str(a)], stdin=slave,
                                stdout=slave, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(slave)
    try:
        os.write(master, answer)
        _out, err = proc.communicate(timeout=120)
    finally:
        os.close(master)
    return proc.returncode, err


def test_mass_delete_asks_on_a_terminal(local_remote: str, tmp_path: Path) -> None:
    a, b = synced_pair(local_remote, tmp_path, count=12)
    for i in range(12):
        (a / f"f{i:03d}.txt").unlink()
    code, err = _push_on_a_terminal(a, b"n\n")
    assert code == 1 and "12 of the 12 files" in err and "Delete them everywhere?" in err, err
    cg("pull", "--folder", str(b))
    assert len([p for p in b.iterdir() if p.suffix == ".txt"]) == 12
    code, err = _push_on_a_terminal(a, b"y\n")
    assert code == 0, err
    cg("pull", "--folder", str(b))
    assert tree(a) == tree(b) == {}


# --- 2. unreadable paths ------------------------------------------------------------------


def _without_dac() -> list[str]:
    """A prefix that runs a command unable to read a chmod 000 path, even as root: root keeps
    its uid (so every 0700 test folder stays its own) but loses the capabilities that bypass
    file permissions."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a path unreadable")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]


def test_unreadable_subfolder_and_file_are_never_deleted(local_remote: str,
                                                         tmp_path: Path) -> None:
    a, b = synced_pair(local_remote, tmp_path, count=2)
    files(a, 3, "sub")
    files(a, 2, "sub/deep")
    (a / "secret.txt").write_text("secret v1")
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))
    before_b = tree(b)
    (a / "secret.txt").write_text("secret v2, unreadable")
    (a / "f000.txt").write_text("edited: the rest still goes up")
    os.chmod(a / "sub", 0)
    os.chmod(a / "secret.txt", 0)
    try:
        proc = subprocess.run([*_without_dac(), *CLOUDGUARD, "push", "--json", "--folder",
                               str(a)], capture_output=True, text=True, check=False)
    finally:
        os.chmod(a / "sub", 0o755)
        os.chmod(a / "secret.txt", 0o644)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    result = json.loads(proc.stdout)
    assert result["deleted"] == []
    assert result["unreadable"] == ["secret.txt", "sub"]
    assert "f000.txt" in result["uploaded"]
    line = one_line_error(proc)
    assert "secret.txt" in line and "sub" in line
    cg("pull", "--folder", str(b))
    after_b = tree(b)
    assert after_b["f000.txt"][1] == b"edited: the rest still goes up"
    assert {k: v for k, v in after_b.items() if k != "f000.txt"} == {
        k: v for k, v in before_b.items() if k != "f000.txt"}
    # readable again: the file's new version goes up, nothing under sub was ever deleted
    again = cg_json("push", "--folder", str(a))
    assert again["deleted"] == [] and again["uploaded"] == ["secret.txt"]
    cg("pull", "--folder", str(b))
    assert tree(a) == tree(b)


def test_scan_keeps_unreadable_folders_out_of_the_result(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """A read error part-way through a folder (EIO) and a refused folder (EACCES) both make
    that folder unreadable: none of its entries are returned, so none can look deleted."""
    files(tmp_path, 2)
    files(tmp_path, 3, "bad")
    files(tmp_path, 3, "denied")
    files(tmp_path, 1, "ok")
    real = os.scandir

    class Failing:
        def __init__(self, path: Any) -> None:
            self.inner = real(path)

        def __enter__(self) -> Iterator[os.DirEntry[str]]:
            def entries() -> Iterator[os.DirEntry[str]]:
                yield next(self.inner)
                raise OSError(errno.EIO, "Input/output error")
            return entries()

        def __exit__(self, *exc: object) -> None:
            self.inner.close()

    def fake(path: Any) -> Any:
        name = Path(path).name if isinstance(path, (str, os.PathLike)) else ""
        if name == "denied":
            raise PermissionError(errno.EACCES, "Permission denied")
        return Failing(path) if name == "bad" else real(path)

    monkeypatch.setattr(sync.scanning.os, "scandir", fake)
    warnings: list[str] = []
    unreadable: list[str] = []
    items = sync.scan(tmp_path, warnings.append, unreadable)
    assert sorted(unreadable) == ["bad", "denied"]
    assert sorted(items) == ["f000.txt", "f001.txt", "ok", "ok/f000.txt"]
    assert len(warnings) == 2 and all("kept its last synced state" in w for w in warnings)
    assert sync.under("bad/f000.txt", unreadable) and not sync.under("badly", unreadable)
    monkeypatch.setattr(sync.scanning.os, "scandir", lambda _p: (_ for _ in ()).throw(
        PermissionError(errno.EACCES, "Permission denied")))
    with pytest.raises(CloudguardError, match="cannot read the folder"):
        sync.scan(tmp_path, warnings.append, [])


def test_a_read_error_in_a_subfolder_is_not_a_delete(local_remote: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The same with a faked disk error (EIO) under a push run in-process."""
    a, b = synced_pair(local_remote, tmp_path, count=1)
    files(a, 4, "disk")
    cg("push", "--folder", str(a))
    real = os.scandir

    def failing(path: Any) -> Any:
        if isinstance(path, (str, os.PathLike)) and str(path) == str(a / "disk"):
            raise OSError(errno.EIO, "Input/output error")
        return real(path)

    monkeypatch.setattr(sync.scanning.os, "scandir", failing)
    result = cg_json("push", "--folder", str(a), code=1)
    assert result["deleted"] == [] and result["unreadable"] == ["disk"]
    status = cg_json("status", "--folder", str(a))
    assert status["to_push"] == [] and status["unreadable"] == ["disk"]
    cg("pull", "--folder", str(b))
    assert sorted(p.name for p in (b / "disk").iterdir()) == [f"f{i:03d}.txt" for i in range(4)]
    # a pull leaves what is under the unreadable folder for later, and exits 1
    (b / "disk" / "f000.txt").unlink()
    (b / "disk" / "f001.txt").write_text("changed on b")
    cg("push", "--folder", str(b))
    pulled = cg_json("pull", "--folder", str(a), code=1)
    assert pulled["unreadable"] == ["disk"] and pulled["deleted"] == []
    assert pulled["downloaded"] == []
    monkeypatch.setattr(sync.scanning.os, "scandir", real)
    pulled = cg_json("pull", "--folder", str(a))
    assert pulled["deleted"] == ["disk/f000.txt"] and pulled["downloaded"] == ["disk/f001.txt"]
    assert tree(a) == tree(b)


# --- 4. temp files ------------------------------------------------------------------------

OLD_TEMP = ".cg-0123456789abcdef.tmp"  # what a pull's temp file used to be called

# A real pull, killed by SIGKILL right after its files are staged, before any rename.
KILLED_PULL = """
import os, signal, sys
from cloudguard import keys, sync
keys.TEST_KDF_LOG_N = 10
sync.commit_staged = lambda *_args: os.kill(os.getpid(), signal.SIGKILL)
from cloudguard.cli import main
sys.argv = ["cloudguard", "pull", "--folder", sys.argv[1]]
main()
"""


def test_user_files_named_like_temp_files_survive(local_remote: str, tmp_path: Path) -> None:
    a, b = synced_pair(local_remote, tmp_path)
    (a / OLD_TEMP).write_text("mine, not a leftover")
    (a / "sub").mkdir()
    (a / "sub" / OLD_TEMP).write_text("mine too")
    (a / "sub" / "0123456789abcdef.tmp").write_text("and this")
    pushed = cg_json("push", "--folder", str(a))
    assert {OLD_TEMP, f"sub/{OLD_TEMP}", "sub/0123456789abcdef.tmp"} <= set(pushed["uploaded"])
    cg("pull", "--folder", str(b))
    assert (b / OLD_TEMP).read_text() == "mine, not a leftover"
    assert tree(a) == tree(b)
    # a pull killed (SIGKILL) between staging and renaming leaves a temp file: only that goes
    staging = b / ".cloudguard" / "staging"
    assert staging.is_dir() and list(staging.iterdir()) == []  # pull staged there, then renamed
    (a / "f000.txt").write_text("v2")
    cg("push", "--folder", str(a))
    killed = subprocess.run([sys.executable, "-c", KILLED_PULL, str(b)], capture_output=True,
                            text=True, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [p.name for p in staging.iterdir()] != []  # the staged file, never renamed
    assert (b / "f000.txt").read_text() != "v2" and (b / OLD_TEMP).exists()
    cg("pull", "--folder", str(b))
    assert list(staging.iterdir()) == []
    assert (b / "f000.txt").read_text() == "v2"
    cg("push", "--folder", str(b))
    assert (b / OLD_TEMP).exists() and (b / "sub" / OLD_TEMP).exists()
    assert tree(a) == tree(b)


def test_staging_never_follows_a_planted_link(local_remote: str, tmp_path: Path) -> None:
    a, b = synced_pair(local_remote, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    staging = b / ".cloudguard" / "staging"
    if staging.exists():
        staging.rmdir()
    staging.symlink_to(elsewhere)
    (a / "f000.txt").write_text("v2")
    cg("push", "--folder", str(a))
    proc = cg_proc("pull", "--folder", str(b))
    assert proc.returncode == 1 and "staging is not a folder" in one_line_error(proc)
    assert list(elsewhere.iterdir()) == []


def test_only_our_own_temp_names_are_cleared(tmp_path: Path) -> None:
    """The staging folder is ours, yet only names of our pattern are ever removed from it."""
    (tmp_path / "sub").mkdir()
    ours = sync.temp_path(tmp_path)
    ours.write_text("leftover")
    stranger = ours.parent / "notes.txt"
    stranger.write_text("not ours")
    (tmp_path / OLD_TEMP).write_text("user file")
    (tmp_path / "sub" / OLD_TEMP).write_text("user file")
    assert sync.clear_staging(tmp_path) == [ours]
    assert stranger.exists() and (tmp_path / OLD_TEMP).exists()
    assert (tmp_path / "sub" / OLD_TEMP).exists()
    assert sorted(sync.scan(tmp_path, lambda _m: None)) == [OLD_TEMP, "sub", f"sub/{OLD_TEMP}"]
