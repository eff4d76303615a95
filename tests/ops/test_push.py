"""push end to end against real rclone remotes, and the round trip through clone and pull on
every kind of remote (the rest of the former test_vault.py is in test_pull, test_verify,
test_maintain, test_enrol, transport/test_transport and cli/test_cli_output)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import cg, cg_json, cg_proc, share, stored, tree

from cloudguard.layout import _KNOWN

HOSTILE = [
    "$(touch INJECTED).docx",
    "`touch INJECTED2`.txt",
    "it's \"quoted\".txt",
    "line\nbreak.txt",
    "spaces  in  name .txt",
    "ünïcødé 文件 📄.txt",
    "-rf",
    "x" * 251 + ".txt",  # 255 bytes
]


def populate(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(HOSTILE):
        (root / name).write_bytes(f"content {i}\n".encode() * (i + 1))
    (root / "empty.txt").write_bytes(b"")
    (root / "one-chunk.bin").write_bytes(os.urandom(65536))
    (root / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024 + 17))
    (root / "empty-folder" / "nested-empty").mkdir(parents=True)
    deep = root.joinpath(*[f"d{i}" for i in range(30)])
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_text("thirty deep")
    os.symlink("one-chunk.bin", root / "rel-link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("does/not/exist", root / "dangling-link")
    (root / "script.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "script.sh", 0o750)


def test_round_trip_every_remote(remote: str, tmp_path: Path) -> None:
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    populate(a)
    cg("init", str(a), "--remote", remote)
    pushed = cg_json("push", "--folder", str(a))
    assert "big.bin" in pushed["uploaded"]
    cg("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    cg("clone", remote, str(b), "--key-file", str(kit))
    assert tree(a) == tree(b)
    assert not list(tmp_path.rglob("INJECTED*")) and not Path("INJECTED").exists()
    cg("verify", "--read-data", "--folder", str(b))
    # a second round: change, delete and add on b, then pull on a
    (b / "empty.txt").write_text("now has content")
    os.unlink(b / "big.bin")
    (b / "new folder").mkdir()
    (b / "new folder" / "new.txt").write_text("new")
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(a))
    assert tree(a) == tree(b)


def test_remote_sees_only_random_names(local_remote: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    populate(a)
    secret = b"TOP SECRET PLAINTEXT MARKER"
    (a / "secret-name.txt").write_bytes(secret * 100)
    cg("init", str(a), "--remote", local_remote)
    cg("push", "--folder", str(a))
    objects = stored(Path(local_remote))
    for name, data in objects.items():
        assert _KNOWN.match(name), name  # fixed prefixes and random or numeric ids only
        assert secret not in data and b"secret-name" not in data
    names = {n.split("/")[0] for n in objects}
    assert names <= {"cloudguard.json", "keys", "m", "data"}
    # small files are packed: far fewer objects than files
    assert len([n for n in objects if n.startswith("data/")]) <= 3


def test_padding_hides_exact_sizes(local_remote: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "f.bin").write_bytes(os.urandom(10_000_001))
    cg("init", str(a), "--remote", local_remote)
    cg("push", "--folder", str(a))
    (obj,) = (Path(local_remote) / "data").iterdir()
    size = obj.stat().st_size
    assert size > 10_000_001 * 1.001 and size <= 10_000_001 * 1.12 + 4096


def test_folder_inferred_from_cwd_like_git(local_remote: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    cg("init", str(a), "--remote", local_remote)
    (a / "sub" / "x.txt").write_text("x")
    proc = cg_proc("push", "--json", cwd=a / "sub")
    assert proc.returncode == 0, proc.stderr
    assert '"sub/x.txt"' in proc.stdout
    outside = cg_proc("push", cwd=tmp_path)
    assert outside.returncode == 2 and "not a cloudguard folder" in outside.stderr


def test_nothing_written_in_plaintext_folder_by_push(local_remote: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    populate(a)
    before = tree(a)
    cg("init", str(a), "--remote", local_remote)
    cg("push", "--folder", str(a))
    assert tree(a) == before
    assert os.listdir(a / ".cloudguard") == ["folder.json"]  # init's marker, nothing else


def test_special_files_are_skipped_with_a_warning(local_remote: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    os.mkfifo(a / "my-fifo")
    (a / "ok.txt").write_text("ok")
    cg("init", str(a), "--remote", local_remote)
    result = cg("push", "--folder", str(a), code=1)  # issue 9 item 4: never a silent skip
    assert "my-fifo" in result.stderr and "skipped" in result.stderr
    assert "could not read or sync 1 path(s)" in result.stderr
    status = cg_json("status", "--folder", str(a))
    assert not status["in_sync"] and status["unreadable"] == ["my-fifo"]
    assert status["to_push"] == []
    os.unlink(a / "my-fifo")
    cg("push", "--folder", str(a))
    assert cg_json("status", "--folder", str(a))["in_sync"]


def test_metadata_only_change_reuses_ciphertext(local_remote: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "f.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    cg("init", str(a), "--remote", local_remote)
    cg("push", "--folder", str(a))
    os.utime(a / "f.bin", (1_000_000_000, 1_000_000_000))
    result = cg_json("push", "--folder", str(a))
    assert result["uploaded"] == [] and result["updated"] == ["f.bin"]


def test_same_size_change_is_detected(local_remote: str, tmp_path: Path) -> None:
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "f.txt").write_text("AAAA")
    share(local_remote, a, b, kit)
    st = os.stat(a / "f.txt")
    (a / "f.txt").write_text("BBBB")
    os.utime(a / "f.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))
    assert (b / "f.txt").read_text() == "BBBB"


def test_status_and_dry_run(local_remote: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "x.txt").write_text("x")
    cg("init", str(a), "--remote", local_remote)
    assert cg_json("status", "--folder", str(a))["to_push"] == ["x.txt"]
    dry = cg_json("push", "--dry-run", "--folder", str(a))
    assert dry["dry_run"] and dry["uploaded"] == ["x.txt"]
    assert not (Path(local_remote) / "data").exists()
    cg("push", "--folder", str(a))
    assert cg_json("status", "--folder", str(a))["to_push"] == []


def test_files_from_before_1970_and_odd_extensions(local_remote: str, tmp_path: Path) -> None:
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    old = a / "ancient.txt"
    old.write_text("from 1969")
    os.utime(old, ns=(-86_400_000_000_000, -86_400_000_000_000))
    long_ext = a / ("x." + "e" * 250)
    long_ext.write_text("v1")
    share(local_remote, a, b, kit)
    assert tree(a) == tree(b)
    long_ext.write_text("edit on a")
    (b / long_ext.name).write_text("edit on b")
    cg("push", "--folder", str(a))
    pulled = cg_json("pull", "--folder", str(b))
    assert len(pulled["conflicts"]) == 1
    assert len(pulled["conflicts"][0].encode()) <= 255


def test_no_temp_files_outside_cloudguard_home(local_remote: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """File lists, fetched metadata and upload spools stay in CLOUDGUARD_HOME/tmp (0700) and
    are gone afterwards; the system temp dir is never used."""
    import tempfile

    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "doc.txt").write_text("one")
    share(local_remote, a, b, kit)
    (b / "doc.txt").write_text("two")
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(a))
    cg("key", "rotate", "--folder", str(a))
    cg("verify", "--folder", str(b))
    assert list(system_tmp.iterdir()) == []
    scratch = Path(os.environ["CLOUDGUARD_HOME"]) / "tmp"
    assert oct(scratch.stat().st_mode & 0o777) == "0o700"
    assert list(scratch.iterdir()) == []


def test_big_push_commits_batch_by_batch_and_resumes(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each spool batch is committed once it is on the remote: a push that dies half-way keeps
    what it finished, and the next push uploads only the rest."""
    from faults import inject, nth

    from cloudguard import sync
    from cloudguard.errors import TransportError

    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "first.txt").write_text("first")
    share(local_remote, a, b, kit)
    for i in range(12):
        (a / f"f{i:02d}.bin").write_bytes(os.urandom(5 * 1024 * 1024))  # stand-alone objects
    monkeypatch.setattr(sync.uploader, "SPOOL_FLUSH_FILES", 4)
    before = len(list((Path(local_remote) / "m").iterdir()))
    with pytest.MonkeyPatch.context() as m:
        made = inject(m, nth("put_files", 3, TransportError("the network went away")))
        cg("push", "--folder", str(a), code=1)
    assert [len(args[1]) for t in made for n, args in t.calls if n == "put_files"] == [4, 4, 4]
    assert len(list((Path(local_remote) / "m").iterdir())) == before + 2  # two batches landed
    cg("pull", "--folder", str(b))
    assert sorted(p.name for p in b.iterdir() if p.suffix == ".bin") == [
        f"f{i:02d}.bin" for i in range(8)]
    resumed = cg_json("push", "--folder", str(a))
    assert resumed["uploaded"] == [f"f{i:02d}.bin" for i in range(8, 12)]
    cg("pull", "--folder", str(b))
    assert tree(a) == tree(b)
    cg("verify", "--read-data", "--folder", str(b))


def test_staged_versions_are_rows_and_a_commit_drops_only_what_it_read(tmp_path: Path) -> None:
    """A version staged while a commit runs must stay staged for the next one."""
    from cloudguard.state import Index

    index = Index(tmp_path / "index.db")
    index.add_staged("a.txt", {"o": "1"})
    index.add_staged("b.txt", {"o": "2"})
    read = index.staged()  # what a commit reads
    other = Index(tmp_path / "index.db")  # a stage from another thread, meanwhile
    other.add_staged("c.txt", {"o": "3"})
    other.close()
    index.drop_staged([i for i, _p, _e in read])
    assert [(p, e) for _i, p, e in index.staged()] == [("c.txt", {"o": "3"})]
    index.close()
