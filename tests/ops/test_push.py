"""End-to-end behaviour of the CLI against real rclone remotes."""

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


def test_conflicts_keep_both_versions(local_remote: str, tmp_path: Path) -> None:
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "doc.txt").write_text("base")
    share(local_remote, a, b, kit)
    (a / "doc.txt").write_text("edit from a")
    (b / "doc.txt").write_text("edit from b, longer")
    cg("push", "--folder", str(a))
    pulled = cg_json("pull", "--folder", str(b))
    assert len(pulled["conflicts"]) == 1
    assert (b / "doc.txt").read_text() == "edit from b, longer"
    copy = b / pulled["conflicts"][0]
    assert copy.read_text() == "edit from a" and "(conflict " in copy.name
    assert copy.name.endswith(".txt")
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(a))
    assert tree(a) == tree(b)


def test_concurrent_pushes_lose_nothing(local_remote: str, tmp_path: Path) -> None:
    """Both devices push without pulling: both versions survive, one as a conflict copy."""
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "doc.txt").write_text("base")
    share(local_remote, a, b, kit)
    (a / "doc.txt").write_text("version A")
    (b / "doc.txt").write_text("version B")
    (a / "only-a.txt").write_text("a")
    (b / "only-b.txt").write_text("b")
    cg("push", "--folder", str(a))
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(a))
    cg("pull", "--folder", str(b))
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))
    for side in (a, b):
        contents = sorted(p.read_text() for p in side.iterdir() if p.name != ".cloudguard")
        assert contents == ["a", "b", "version A", "version B"], side
    assert tree(a) == tree(b)


def test_deletions_propagate_and_local_edits_survive(local_remote: str, tmp_path: Path) -> None:
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    for name in ("gone.txt", "kept.txt", "edited.txt"):
        (a / name).write_text(name)
    share(local_remote, a, b, kit)
    os.unlink(a / "gone.txt")
    os.unlink(a / "edited.txt")
    cg("push", "--folder", str(a))
    (b / "edited.txt").write_text("edited on b before the pull")
    cg("pull", "--folder", str(b))
    assert not (b / "gone.txt").exists()
    assert (b / "edited.txt").read_text() == "edited on b before the pull"
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(a))
    assert (a / "edited.txt").read_text() == "edited on b before the pull"


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


def test_help_everywhere() -> None:
    for args in (["--help"], ["init", "--help"], ["clone", "--help"], ["push", "--help"],
                 ["pull", "--help"], ["status", "--help"], ["verify", "--help"],
                 ["key", "rotate", "--help"], ["key", "list", "--help"],
                 ["key", "export", "--help"], ["device", "list", "--help"],
                 ["device", "approve", "--help"], ["device", "reject", "--help"],
                 ["device", "remove", "--help"]):
        assert "Usage:" in cg(*args).stdout
    assert cg_proc("push", "--bogus").returncode == 2


def test_unknown_format_version_is_refused(local_remote: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    cg("init", str(a), "--remote", local_remote)
    descriptor = Path(local_remote) / "cloudguard.json"
    descriptor.write_text(descriptor.read_text().replace('"format": 2', '"format": 99'))
    proc = cg_proc("clone", local_remote, str(tmp_path / "b"))
    assert proc.returncode == 1 and "format 99 is unknown" in proc.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.rclone
def test_rclone_override(local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                         ) -> None:
    monkeypatch.setenv("CLOUDGUARD_RCLONE", str(tmp_path / "nope"))
    proc = cg_proc("init", str(tmp_path / "a"), "--remote", local_remote)
    assert proc.returncode == 2 and "CLOUDGUARD_RCLONE" in proc.stderr


def test_verify_uses_backend_hashes_without_download(remote: str, remote_dir: Path,
                                                     tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    cg("init", str(a), "--remote", remote)
    cg("push", "--folder", str(a))
    clean = cg_json("verify", "--folder", str(a))
    local = remote.startswith("/")
    has_md5 = "webdav" not in remote and not local
    assert clean["hash_checked"] == (1 if has_md5 else 0)
    # a local remote records no MD5 (hashing there means reading): verify authenticates
    assert clean["authenticated"] == (1 if local else 0) and clean["read_data"] == local
    (obj,) = (remote_dir / "data").iterdir()
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 1
    obj.write_bytes(bytes(data))
    proc = cg_proc("verify", "--folder", str(a))
    if has_md5:
        assert proc.returncode == 3 and "big.bin" in proc.stderr and "MD5" in proc.stderr
    elif local:
        assert proc.returncode == 3 and "big.bin" in proc.stderr
    else:
        assert proc.returncode == 0  # no backend hash: only --read-data can tell
    assert cg_proc("verify", "--read-data", "--folder", str(a)).returncode == 3


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


def test_local_manifest_state_follows_compaction_and_survives_damage(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each device keeps the merged manifest in CLOUDGUARD_HOME and applies only new segments.
    It must track another device's compactions (which delete segments it already applied),
    and a damaged or missing copy is rebuilt from the remote."""
    from cloudguard import manifest as mf
    from cloudguard.ops import maintain
    from cloudguard.state import find_binding

    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "base.txt").write_text("base")
    share(local_remote, a, b, kit)
    monkeypatch.setattr(maintain, "COMPACT_AFTER", 2)
    for i in range(5):
        (a / f"f{i}.txt").write_text(f"version {i}")
        if i % 2:
            (a / "base.txt").write_text(f"base {i}")
        cg("push", "--folder", str(a))
        if i in (1, 3):
            cg("pull", "--folder", str(b))
            assert tree(a) == tree(b)
    assert any(p.suffix == ".s" for p in (Path(local_remote) / "m").iterdir())  # compacted
    cg("pull", "--folder", str(b))
    assert tree(a) == tree(b)
    db = find_binding(str(b)).dir / "manifest.db"
    state = mf.State(db)
    recorded = dict(state.items())
    state.close()
    assert set(recorded) == {"base.txt", *(f"f{i}.txt" for i in range(5))}
    db.write_bytes(b"this is not a database" * 100)
    (a / "after.txt").write_text("after damage")
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))
    assert tree(a) == tree(b)
    db.unlink()
    (b / "from-b.txt").write_text("b again")
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(a))
    assert tree(a) == tree(b)
    cg("verify", "--folder", str(b))
    assert oct(db.stat().st_mode & 0o777) == "0o600"


def test_stray_partial_uploads_are_ignored_then_collected(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a killed upload leaves (rclone's ``NAME.<hex>.partial``) must not stop any device,
    and the garbage collector removes it after the grace period."""
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "doc.txt").write_text("one")
    share(local_remote, a, b, kit)
    root = Path(local_remote)
    segment = sorted((root / "m").iterdir())[-1]
    strays = [root / "m" / f"{segment.name}x.1a2b3c4d.partial",
              root / "keys" / "00000009.5e6f7a8b.partial"]
    for stray in strays:
        stray.write_bytes(segment.read_bytes()[:100])
    (a / "doc.txt").write_text("two")
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))
    assert tree(a) == tree(b)
    assert all(s.exists() for s in strays)  # within the grace period: left alone
    monkeypatch.setenv("CLOUDGUARD_GC_GRACE", "0")
    (a / "doc.txt").write_text("three")
    cg("push", "--folder", str(a))
    assert not any(s.exists() for s in strays)
    cg("verify", "--folder", str(b))


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
