"""Case-insensitive folders on a real FAT file system (issue 8, item 10): the FAT driver of
fusefat over an image made by mkfs.vfat, the file system of USB sticks and SD cards, which
folds case the way Windows does (it keeps Unicode normalisation apart, unlike macOS; the
case-folding layer in test_casefold.py covers that). Real pulls and pushes between it and a
case-sensitive device."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import fuse_available
from helpers import cg, cg_json, share

pytestmark = pytest.mark.skipif(
    not fuse_available() or not shutil.which("fusefat") or not shutil.which("mkfs.vfat"),
    reason="needs /dev/fuse, fusefat and mkfs.vfat (Debian fusefat, dosfstools)")


@contextmanager
def vfat_folder(root: Path, size_mib: int = 64) -> Iterator[Path]:
    """A fresh FAT file system, mounted read-write."""
    root.mkdir(parents=True)
    image, mount = root / "fat.img", root / "mount"
    mount.mkdir()
    with image.open("wb") as fh:
        fh.truncate(size_mib << 20)
    subprocess.run(["mkfs.vfat", str(image)], check=True, capture_output=True)
    subprocess.run(["fusefat", "-o", "rw+", str(image), str(mount)], check=True,
                   capture_output=True)
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(mount):
            if time.monotonic() > deadline:
                raise RuntimeError("fusefat did not mount")
            time.sleep(0.05)
        yield mount
    finally:
        subprocess.run(["fusermount3", "-u", str(mount)], check=False, capture_output=True)


def names(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if ".cloudguard" not in p.relative_to(folder).parts)


def test_fat_folds_case(tmp_path: Path) -> None:
    with vfat_folder(tmp_path / "fat") as fat:
        (fat / "Doc.txt").write_text("one")
        assert (fat / "doc.TXT").read_text() == "one"


def test_names_that_differ_by_case_become_case_conflicts_on_fat(
        local_remote: str, tmp_path: Path) -> None:
    linux = tmp_path / "linux"
    linux.mkdir()
    (linux / "Report.txt").write_text("upper")
    (linux / "report.txt").write_text("lower")
    (linux / "Docs").mkdir()
    (linux / "Docs" / "a.txt").write_text("in Docs")
    (linux / "docs").mkdir()
    (linux / "docs" / "b.txt").write_text("in docs")
    with vfat_folder(tmp_path / "fat") as fat:
        share(local_remote, linux, fat, tmp_path / "kit.json")
        contents = sorted(p.read_text() for p in fat.rglob("*.txt"))
        assert contents == ["in Docs", "in docs", "lower", "upper"]
        assert sum("Case Conflict" in n for n in names(fat) if "/" not in n) == 2, names(fat)
        cg("push", "--folder", str(fat))
        cg("pull", "--folder", str(linux))
        assert names(linux) == names(fat)
        for folder in (fat, linux):
            got = cg_json("status", "--folder", str(folder))
            assert (got["to_push"], got["to_pull"]) == ([], []), (folder, got)
        cg("pull", "--folder", str(fat))
        assert sorted(p.read_text() for p in fat.rglob("*.txt")) == contents
