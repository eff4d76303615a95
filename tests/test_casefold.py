"""Case-insensitive, normalising folders (issue 8, item 10): macOS, Windows and SMB shares
treat names that differ only by case or Unicode normalisation as one. Served here by a
case-folding FUSE layer (tests/casefold_fs.py) over a real folder, with real pulls and
pushes between it and a case-sensitive device."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import fuse_available
from helpers import cg, cg_json, share

pytestmark = pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")

LAYER = Path(__file__).with_name("casefold_fs.py")


@contextmanager
def casefold_folder(root: Path) -> Iterator[Path]:
    """A fresh case-insensitive mount; everything in it lands in ``root/backing``."""
    backing, mount = root / "backing", root / "mount"
    backing.mkdir(parents=True)
    mount.mkdir()
    log = root / "layer.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, str(LAYER), str(backing), str(mount)],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mount):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"casefold layer did not mount: {log.read_text()}")
            time.sleep(0.05)
        yield mount
    finally:
        subprocess.run(["fusermount3", "-u", str(mount)], check=False, capture_output=True)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def names(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name != ".cloudguard" and ".cloudguard" not in p.relative_to(folder).parts)


def test_the_layer_folds_case_and_normalisation(tmp_path: Path) -> None:
    with casefold_folder(tmp_path) as mount:
        (mount / "Doc.txt").write_text("one")
        assert (mount / "doc.TXT").read_text() == "one"
        nfd = unicodedata.normalize("NFD", "café.txt")
        (mount / nfd).write_text("two")
        assert (mount / unicodedata.normalize("NFC", "café.txt")).read_text() == "two"


def test_names_that_differ_by_case_or_normalisation_become_case_conflicts(
        local_remote: str, tmp_path: Path) -> None:
    """The case-sensitive device has Report.txt and report.txt, café (NFC) and café (NFD);
    the case-insensitive one gets every content under a name of its own, every device ends
    with the same names, and nothing loops."""
    linux = tmp_path / "linux"
    linux.mkdir()
    (linux / "Report.txt").write_text("upper")
    (linux / "report.txt").write_text("lower")
    (linux / unicodedata.normalize("NFC", "café.txt")).write_text("composed")
    (linux / unicodedata.normalize("NFD", "café.txt")).write_text("decomposed")
    (linux / "Docs").mkdir()
    (linux / "Docs" / "a.txt").write_text("in Docs")
    (linux / "docs").mkdir()
    (linux / "docs" / "b.txt").write_text("in docs")
    with casefold_folder(tmp_path / "mac") as mac:
        share(local_remote, linux, mac, tmp_path / "kit.json")
        contents = sorted(p.read_text() for p in mac.rglob("*.txt"))
        assert contents == ["composed", "decomposed", "in Docs", "in docs", "lower", "upper"]
        assert sum("Case Conflict" in n for n in names(mac) if "/" not in n) == 3, names(mac)
        cg("push", "--folder", str(mac))
        cg("pull", "--folder", str(linux))
        assert names(linux) == names(mac)
        for folder in (mac, linux):
            got = cg_json("status", "--folder", str(folder))
            assert (got["to_push"], got["to_pull"]) == ([], []), (folder, got)
        cg("pull", "--folder", str(mac))
        assert sorted(p.read_text() for p in mac.rglob("*.txt")) == contents


@pytest.mark.parametrize("layer", ["casefold", "fat"])
def test_a_case_only_rename_never_deletes_the_file(layer: str, local_remote: str,
                                                   tmp_path: Path) -> None:
    """Renamed on the case-sensitive device (notes.txt -> Notes.txt), the file must survive on
    the case-insensitive one (the folding layer, and a real FAT file system), where both names
    are the same file."""
    from test_casefold_vfat import pytestmark as fat_needs
    from test_casefold_vfat import vfat_folder

    if layer == "fat" and fat_needs.args[0]:
        pytest.skip(fat_needs.kwargs["reason"])
    linux = tmp_path / "linux"
    linux.mkdir()
    (linux / "notes.txt").write_text("keep me")
    folder = casefold_folder(tmp_path / "mac") if layer == "casefold" else vfat_folder(
        tmp_path / "fat")
    with folder as mac:
        share(local_remote, linux, mac, tmp_path / "kit.json")
        (linux / "notes.txt").rename(linux / "Notes.txt")
        cg("push", "--folder", str(linux))
        cg("pull", "--folder", str(mac))
        assert [p.read_text() for p in mac.iterdir() if p.suffix == ".txt"] == ["keep me"]
        cg("push", "--folder", str(mac))
        cg("pull", "--folder", str(linux))
        assert (linux / "Notes.txt").read_text() == "keep me"
        assert not (linux / "notes.txt").exists()
        # and renamed on the case-insensitive device itself
        next(p for p in mac.iterdir() if p.suffix == ".txt").rename(mac / "NOTES.txt")
        cg("push", "--folder", str(mac))
        cg("pull", "--folder", str(linux))
        assert [p.read_text() for p in linux.iterdir() if p.suffix == ".txt"] == ["keep me"]


def test_resolve_is_deterministic_and_moves_folders_with_their_contents() -> None:
    from cloudguard import folding
    from cloudguard import manifest as mf

    state = mf.State()
    for seq, path in enumerate(["Docs", "docs", "Docs/a.txt", "docs/b.txt", "docs/A.TXT",
                                "Report.txt", "report.txt", "REPORT (Case Conflict).txt"], 1):
        kind = "d" if "." not in path else "l"
        state.apply_delta("a" * 16, seq, [{"p": path, "e": {"t": kind, "l": path, "m": 1}
                                           if kind == "l" else {"t": "d"}, "rm": []}])
    ops = folding.resolve(state)
    moved = {op["p"]: op["e"]["l"] if op["e"].get("t") == "l" else "dir"
             for op in ops if op["e"] is not None}
    assert moved == {"docs (Case Conflict)": "dir",
                     "docs (Case Conflict)/b.txt": "docs/b.txt",
                     "docs (Case Conflict)/A.TXT": "docs/A.TXT",
                     "report (Case Conflict 2).txt": "report.txt"}
    assert folding.resolve(state) == ops  # every device computes the same
    state.apply_delta("b" * 16, 1, ops)
    assert folding.resolve(state) == []
    folded = [folding.fold(p) for p, _d in state.dots()]
    assert len(folded) == len(set(folded))


def test_alias_takes_the_manifest_spelling() -> None:
    from cloudguard import folding
    from cloudguard.sync import LocalItem

    local = {"notes.txt": LocalItem("notes.txt", "f", 1, 1, 0o644),
             "new.txt": LocalItem("new.txt", "f", 1, 1, 0o644)}
    got = folding.alias(local, ["Notes.txt", "other.txt"])
    assert sorted(got) == ["Notes.txt", "new.txt"] and got["Notes.txt"].path == "Notes.txt"
