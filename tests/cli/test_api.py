"""The library API (issue 10): the public names are pinned, and the long-lived Vault serves
a push of a few paths without scanning the folder, polls the remote without listing data, and
reads byte ranges."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import cg, cg_json, share

import cloudguard
from cloudguard import api, sync, vault
from cloudguard.api import Vault
from cloudguard.errors import UsageError

PUBLIC = ["Confirm", "Session", "UI", "Vault", "clone_vault", "device_approve", "device_list",
          "device_reject", "device_remove", "doctor", "init_vault", "key_export", "key_list",
          "key_rotate", "mark", "open_reader", "pull", "push", "session", "settings", "status",
          "verify"]


def test_the_public_api_is_pinned() -> None:
    assert sorted(vault.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(vault, name) is not None
    assert api.__all__ == ["Vault"] and vault.Vault is api.Vault
    assert cloudguard.__version__


def _folder(tmp_path: Path, remote: str) -> Path:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a1")
    (folder / "c.txt").write_text("c1")
    (folder / "sub" / "b.txt").write_text("b1")
    cg("init", str(folder), "--remote", remote)
    cg("push", "--folder", str(folder))
    return folder


def test_push_of_given_paths_scans_nothing_else(local_remote: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path, local_remote)
    v = Vault(str(folder))

    full_scans: list[object] = []

    def no_full_scan(*args: object, **_k: object) -> dict[str, sync.LocalItem]:
        full_scans.append(args)  # a background scan's errors would be swallowed: count them
        return {}

    (folder / "a.txt").write_text("a2 edited")
    (folder / "c.txt").write_text("c2 edited, not pushed yet")
    with monkeypatch.context() as m:  # what a whole-folder push calls (not a sub-walk)
        m.setattr(sync, "scan", no_full_scan)
        got = v.push(["a.txt"])
        assert got.updated == [] and got.uploaded == ["a.txt"], got
        # absolute paths inside the folder, a new folder with its parents, a deletion
        (folder / "new" / "deep").mkdir(parents=True)
        (folder / "new" / "deep" / "x.txt").write_text("x")
        (folder / "sub" / "b.txt").unlink()
        got = v.push([str(folder / "new" / "deep" / "x.txt"), "sub/b.txt"])
        assert got.uploaded == ["new/deep/x.txt"] and got.deleted == ["sub/b.txt"], got
        assert sorted(got.updated) == ["new", "new/deep"], got
        with pytest.raises(UsageError, match="not inside the folder"):
            v.push([str(tmp_path / "elsewhere.txt")])
    assert full_scans == []
    status = cg_json("status", "--folder", str(folder))
    assert status["to_push"] == ["c.txt"], status  # left alone: not among the paths
    v.close()


def test_push_of_a_folder_takes_what_it_holds(local_remote: str, tmp_path: Path) -> None:
    folder = _folder(tmp_path, local_remote)
    with Vault(str(folder)) as v:
        (folder / "sub" / "b.txt").write_text("b2")
        (folder / "sub" / "inner").mkdir()
        (folder / "sub" / "inner" / "y.txt").write_text("y")
        (folder / "a.txt").write_text("a2 not pushed")
        got = v.push(["sub"])
        assert sorted(got.uploaded) == ["sub/b.txt", "sub/inner/y.txt"], got
        os.mkfifo(folder / "sub" / "pipe")
        got = v.push(["sub/pipe"])  # skipped with a line, never uploaded
        assert got.uploaded == [] and got.deleted == [], got
        assert v.status().to_push == ["a.txt"]


def test_poll_sees_another_devices_push_and_no_more(local_remote: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "one.txt").write_text("1")
    share(local_remote, a, b, tmp_path / "kit.json")
    with Vault(str(b)) as vb:
        vb.refresh()
        assert vb.poll() is False
        (a / "two.txt").write_text("2")
        cg("push", "--folder", str(a))
        assert vb.poll() is True
        assert vb.poll() is False
        vb.pull()
        assert (b / "two.txt").read_text() == "2"
        reader = vb.open_reader("two.txt")
        assert reader.read(0, 10) == b"2"


def test_pull_of_given_paths_brings_only_those(local_remote: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Vault.pull(paths) and `cloudguard pull PATHS` (relative to the current folder): only
    those paths, what is under them and the folders above them; no whole-folder scan."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "one.txt").write_text("1")
    share(local_remote, a, b, tmp_path / "kit.json")
    (a / "deep" / "er").mkdir(parents=True)
    (a / "deep" / "er" / "x.txt").write_text("x")
    (a / "deep" / "y.txt").write_text("y")
    (a / "one.txt").write_text("1 edited")
    (a / "other.txt").write_text("other")
    cg("push", "--folder", str(a))
    full_scans: list[object] = []
    with Vault(str(b)) as vb, monkeypatch.context() as m:
        m.setattr(sync, "scan", lambda *args, **_k: full_scans.append(args) or {})
        got = vb.pull(["deep/er/x.txt"])
        assert sorted(got.downloaded) == ["deep/er/x.txt"], got
    assert full_scans == []
    assert (b / "deep" / "er" / "x.txt").read_text() == "x"
    assert not (b / "deep" / "y.txt").exists() and not (b / "other.txt").exists()
    assert (b / "one.txt").read_text() == "1"
    monkeypatch.chdir(b / "deep")
    got = cg_json("pull", "--folder", str(b), "y.txt")
    assert got["downloaded"] == ["deep/y.txt"], got
    assert (b / "deep" / "y.txt").read_text() == "y" and not (b / "other.txt").exists()
    refused = cg("pull", "--folder", str(b), str(tmp_path), code=2)
    assert "not inside the folder" in refused.output
    cg("pull", "--folder", str(b))
    assert (b / "other.txt").read_text() == "other" and (b / "one.txt").read_text() == "1 edited"


def test_a_long_lived_vault_maintains_now_and_then(local_remote: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Garbage collection reads every entry: a daemon pushing every few seconds must not pay
    it on every push (a CLI push still does)."""
    from cloudguard.manifest import State

    folder = _folder(tmp_path, local_remote)
    passes: list[int] = []
    real = State.live_objects

    def counted(self: State) -> set[str]:
        passes.append(1)
        return real(self)

    monkeypatch.setattr(State, "live_objects", counted)
    with Vault(str(folder)) as v:
        for i in range(3):
            (folder / "a.txt").write_text(f"a{i + 2}")
            v.push(["a.txt"])
    assert len(passes) == 1
    (folder / "a.txt").write_text("from the CLI")
    cg("push", "--folder", str(folder))
    assert len(passes) == 2


def test_write_rename_delete_without_a_folder(local_remote: str, tmp_path: Path) -> None:
    """The mount's calls: versions from streams, committed together; moves and deletes that
    move no content. Another device sees exactly that."""
    import io

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "keep.txt").write_text("keep")
    (a / "dir").mkdir()
    (a / "dir" / "in.txt").write_text("inside")
    share(local_remote, a, b, tmp_path / "kit.json")
    big = os.urandom(3 * 1024 * 1024 + 17)
    with Vault(str(a)) as v:
        got = v.write_version("new/big.bin", io.BytesIO(big), len(big), 0o600, 17 * 10**17)
        assert got["size"] == len(big)
        v.stage_version("one.txt", io.BytesIO(b"one"), 3)
        v.stage_version("two.txt", io.BytesIO(b"two v1"), 6)
        v.stage_version("two.txt", io.BytesIO(b"two v2"), 6)  # the last staged one wins
        before = set(os.listdir(local_remote + "/m")) if os.path.isdir(local_remote + "/m") \
            else set()
        assert sorted(v.commit()) == ["one.txt", "two.txt"]
        assert len(set(os.listdir(local_remote + "/m")) - before) == 1  # one delta for both
        assert v.commit() == []
        mib3 = 3 * 1024 * 1024
        assert v.open_reader("new/big.bin").read(mib3, 100) == big[mib3:mib3 + 100]
        data_before = set(os.listdir(local_remote + "/data"))
        v.rename("dir", "moved")
        v.rename("keep.txt", "moved/keep.txt")
        assert set(os.listdir(local_remote + "/data")) == data_before  # no content moved
        v.delete("one.txt")
        with pytest.raises(UsageError, match="not in the vault"):
            v.delete("one.txt")
        with pytest.raises(UsageError, match="into itself"):
            v.rename("moved", "moved/sub")
    cg("pull", "--folder", str(b))
    files = {str(p.relative_to(b)): p.read_bytes() for p in b.rglob("*")
             if p.is_file() and ".cloudguard" not in p.parts}
    assert files == {"new/big.bin": big, "two.txt": b"two v2", "moved/in.txt": b"inside",
                     "moved/keep.txt": b"keep"}
    assert (b / "new" / "big.bin").stat().st_mode & 0o777 == 0o600


def test_a_staged_version_survives_a_kill_before_its_commit(local_remote: str,
                                                           tmp_path: Path) -> None:
    import subprocess
    import sys

    folder = _folder(tmp_path, local_remote)
    code = ("import io, os; from cloudguard.api import Vault; "
            f"v = Vault({str(folder)!r}); "
            "v.stage_version('staged.txt', io.BytesIO(b'durable'), 7); os._exit(9)")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ}, check=False)
    assert proc.returncode == 9
    with Vault(str(folder)) as v:
        assert v.commit() == ["staged.txt"]
        assert v.open_reader("staged.txt").read(0, 100) == b"durable"
