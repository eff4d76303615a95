"""POSIX semantics of the mount (issue 12), in the spirit of pjdfstest (which Debian 12 does not
package, nor xfstests or fsstress): a table of small cases, each run on the mount and on a
plain folder under tmp, their observations (data, sizes, modes, listings, the errno of a
failure) compared. tests/mount/mount_expected_failures.txt lists the cases where the mount differs
on purpose, each with its reason: a case that differs and is not listed fails, and so does a
listed case that now matches (the list stays true). Then what only the mount promises
(statfs fields, st_blksize) and a read-only mount refusing every change with EROFS."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import fuse_available
from helpers import cg
from test_mount import mounted

pytestmark = [pytest.mark.fuse,
              pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse")]

EXPECTED = Path(__file__).with_name("mount_expected_failures.txt")
Case = Callable[[Path], object]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


def attempt(fn: Callable[..., object], *args: object) -> object:
    """("ok", what fn returned) or the errno's name: what a program sees."""
    try:
        return ("ok", fn(*args))
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def touch(path: Path, data: bytes = b"") -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def opened(path: Path, flags: int, mode: int = 0o644) -> str:
    os.close(os.open(path, flags, mode))
    return "opened"


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


# --- open, create, write ------------------------------------------------------------------


@case
def open_excl_on_existing(d: Path) -> object:
    touch(d / "f", b"x")
    return attempt(opened, d / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY)


@case
def open_excl_on_new(d: Path) -> object:
    return attempt(opened, d / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY), \
        (d / "f").read_bytes(), listing(d)


@case
def open_missing_without_creat(d: Path) -> object:
    return attempt(opened, d / "nope", os.O_RDONLY)


@case
def open_dir_for_writing(d: Path) -> object:
    os.mkdir(d / "sub")
    return attempt(opened, d / "sub", os.O_WRONLY)


@case
def open_through_a_file(d: Path) -> object:
    touch(d / "f", b"x")
    return attempt(opened, d / "f" / "x", os.O_RDONLY), \
        attempt(opened, d / "f" / "x", os.O_CREAT | os.O_WRONLY)


@case
def create_mode_is_kept(d: Path) -> object:
    old = os.umask(0o022)
    try:
        opened(d / "f", os.O_CREAT | os.O_WRONLY, 0o640)
    finally:
        os.umask(old)
    return stat.S_IMODE(os.stat(d / "f").st_mode)


@case
def append_writes_at_end(d: Path) -> object:
    touch(d / "f", b"abc")
    fd = os.open(d / "f", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"def")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, b"gh")
        os.pwrite(fd, b"ij", 0)  # Linux: pwrite on O_APPEND appends too
    finally:
        os.close(fd)
    return (d / "f").read_bytes()


@case
def append_from_two_handles(d: Path) -> object:
    touch(d / "f", b"0")
    one = os.open(d / "f", os.O_WRONLY | os.O_APPEND)
    two = os.open(d / "f", os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(3):
            os.write(one, b"a%d" % i)
            os.write(two, b"b%d" % i)
    finally:
        os.close(one)
        os.close(two)
    return (d / "f").read_bytes()


@case
def trunc_on_open(d: Path) -> object:
    touch(d / "f", b"x" * 100_000)
    fd = os.open(d / "f", os.O_RDWR | os.O_TRUNC)
    try:
        size_open = os.fstat(fd).st_size
        os.write(fd, b"new")
    finally:
        os.close(fd)
    return size_open, (d / "f").read_bytes()


@case
def sparse_write_reads_zeros(d: Path) -> object:
    fd = os.open(d / "f", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"end", 200_000)
        got = os.pread(fd, 10, 199_995), os.fstat(fd).st_size
    finally:
        os.close(fd)
    data = (d / "f").read_bytes()
    return got, len(data), data[:199_999].count(0)


@case
def read_at_and_past_eof(d: Path) -> object:
    touch(d / "f", b"12345")
    fd = os.open(d / "f", os.O_RDONLY)
    try:
        return os.pread(fd, 10, 5), os.pread(fd, 10, 1000), os.pread(fd, 10, 3)
    finally:
        os.close(fd)


@case
def write_seen_by_another_handle_before_close(d: Path) -> object:
    touch(d / "f", b"old old old")
    writer = os.open(d / "f", os.O_WRONLY)
    try:
        os.pwrite(writer, b"NEW", 4)
        size = os.stat(d / "f").st_size
        reader = os.open(d / "f", os.O_RDONLY)
        try:
            seen = os.read(reader, 100)
        finally:
            os.close(reader)
    finally:
        os.close(writer)
    return size, seen, (d / "f").read_bytes()


@case
def write_on_a_read_only_handle(d: Path) -> object:
    touch(d / "f", b"x")
    fd = os.open(d / "f", os.O_RDONLY)
    try:
        return attempt(os.write, fd, b"y"), attempt(os.ftruncate, fd, 0)
    finally:
        os.close(fd)


@case
def truncate_shrink_and_extend(d: Path) -> object:
    touch(d / "f", bytes(range(256)) * 1000)
    os.truncate(d / "f", 70_000)
    a = (d / "f").read_bytes()
    os.truncate(d / "f", 140_000)
    b = (d / "f").read_bytes()
    return len(a), a[-3:], len(b), b[69_998:70_002], b[-5:]


@case
def ftruncate_then_write(d: Path) -> object:
    touch(d / "f", b"y" * 150_000)
    fd = os.open(d / "f", os.O_RDWR)
    try:
        os.ftruncate(fd, 10)
        os.pwrite(fd, b"Z", 20)
        got = os.pread(fd, 100, 0)
    finally:
        os.close(fd)
    return got, (d / "f").read_bytes()


@case
def fsync_file_and_folder(d: Path) -> object:
    fd = os.open(d / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"synced")
        a = attempt(os.fsync, fd)
        b = attempt(os.fdatasync, fd)
    finally:
        os.close(fd)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        c = attempt(os.fsync, dfd)
    finally:
        os.close(dfd)
    return a, b, c, (d / "f").read_bytes()


# --- unlink, rmdir, mkdir -----------------------------------------------------------------


@case
def unlink_a_folder(d: Path) -> object:
    os.mkdir(d / "sub")
    return attempt(os.unlink, d / "sub"), listing(d)


@case
def unlink_missing(d: Path) -> object:
    return attempt(os.unlink, d / "nope")


@case
def unlink_an_open_file(d: Path) -> object:
    touch(d / "f", b"still here")
    fd = os.open(d / "f", os.O_RDONLY)
    try:
        os.unlink(d / "f")
        return os.read(fd, 100), listing(d)
    finally:
        os.close(fd)


@case
def unlink_a_file_open_for_writing(d: Path) -> object:
    touch(d / "f", b"base")
    fd = os.open(d / "f", os.O_RDWR)
    try:
        os.unlink(d / "f")
        os.pwrite(fd, b"more", 4)
        got = os.pread(fd, 100, 0)
        listed = listing(d)
    finally:
        os.close(fd)
    return got, listed, listing(d)


@case
def ftruncate_an_unlinked_open_file(d: Path) -> object:
    touch(d / "f", b"0123456789")
    fd = os.open(d / "f", os.O_RDWR)
    try:
        os.unlink(d / "f")
        result = attempt(os.ftruncate, fd, 4), os.fstat(fd).st_size, os.pread(fd, 100, 0)
    finally:
        os.close(fd)
    return result, listing(d)


@case
def unlink_a_new_open_file(d: Path) -> object:
    fd = os.open(d / "f", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"short-lived")
        os.unlink(d / "f")
        listed = listing(d)
    finally:
        os.close(fd)
    return listed, listing(d)


@case
def rmdir_not_empty(d: Path) -> object:
    os.mkdir(d / "sub")
    touch(d / "sub" / "f")
    return attempt(os.rmdir, d / "sub"), listing(d / "sub")


@case
def rmdir_with_a_new_file_still_open(d: Path) -> object:
    os.mkdir(d / "sub")
    fd = os.open(d / "sub" / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"open")
        result = attempt(os.rmdir, d / "sub")
    finally:
        os.close(fd)
    return result, listing(d), listing(d / "sub") if (d / "sub").is_dir() else None


@case
def rmdir_a_file(d: Path) -> object:
    touch(d / "f")
    return attempt(os.rmdir, d / "f")


@case
def rmdir_empty(d: Path) -> object:
    os.mkdir(d / "sub")
    return attempt(os.rmdir, d / "sub"), listing(d)


@case
def mkdir_existing(d: Path) -> object:
    os.mkdir(d / "sub")
    touch(d / "f")
    return attempt(os.mkdir, d / "sub"), attempt(os.mkdir, d / "f")


@case
def mkdir_through_a_file(d: Path) -> object:
    touch(d / "f")
    return attempt(os.mkdir, d / "f" / "sub")


@case
def mkdir_mode_is_kept(d: Path) -> object:
    old = os.umask(0o022)
    try:
        os.mkdir(d / "sub", 0o750)
    finally:
        os.umask(old)
    return stat.S_IMODE(os.stat(d / "sub").st_mode)


@case
def listing_of_a_busy_folder(d: Path) -> object:
    for i in range(25):
        touch(d / f"n{i:02}", b"x" * i)
    os.mkdir(d / "sub")
    with os.scandir(d) as it:
        kinds = sorted((e.name, e.is_dir(), e.is_file()) for e in it)
    return kinds, [os.stat(d / f"n{i:02}").st_size for i in range(25)]


# --- rename -------------------------------------------------------------------------------


@case
def rename_file_over_file(d: Path) -> object:
    touch(d / "a", b"from a")
    touch(d / "b", b"from b")
    os.rename(d / "a", d / "b")
    return listing(d), (d / "b").read_bytes()


@case
def rename_file_over_folder(d: Path) -> object:
    touch(d / "f")
    os.mkdir(d / "sub")
    return attempt(os.rename, d / "f", d / "sub"), listing(d)


@case
def rename_folder_over_file(d: Path) -> object:
    touch(d / "f")
    os.mkdir(d / "sub")
    return attempt(os.rename, d / "sub", d / "f"), listing(d)


@case
def rename_folder_over_non_empty_folder(d: Path) -> object:
    os.mkdir(d / "a")
    touch(d / "a" / "in_a", b"a")
    os.mkdir(d / "b")
    touch(d / "b" / "in_b", b"b")
    return attempt(os.rename, d / "a", d / "b"), listing(d / "a"), listing(d / "b")


@case
def rename_folder_over_empty_folder(d: Path) -> object:
    os.mkdir(d / "a")
    touch(d / "a" / "in_a", b"a")
    os.mkdir(d / "b")
    return attempt(os.rename, d / "a", d / "b"), listing(d), listing(d / "b")


@case
def rename_folder_into_itself(d: Path) -> object:
    os.mkdir(d / "a")
    os.mkdir(d / "a" / "b")
    return attempt(os.rename, d / "a", d / "a" / "b" / "c")


@case
def rename_missing(d: Path) -> object:
    return attempt(os.rename, d / "nope", d / "other")


@case
def rename_to_itself(d: Path) -> object:
    touch(d / "f", b"same")
    return attempt(os.rename, d / "f", d / "f"), listing(d), (d / "f").read_bytes()


@case
def rename_a_folder_with_content(d: Path) -> object:
    os.makedirs(d / "a" / "deep")
    touch(d / "a" / "deep" / "f", b"deep")
    os.rename(d / "a", d / "z")
    return listing(d), (d / "z" / "deep" / "f").read_bytes()


@case
def rename_a_new_file_while_open(d: Path) -> object:
    fd = os.open(d / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"first ")
        os.rename(d / "f", d / "g")
        os.write(fd, b"second")
    finally:
        os.close(fd)
    return listing(d), (d / "g").read_bytes()


@case
def rename_over_an_open_file(d: Path) -> object:
    touch(d / "held", b"old held")
    with open(d / "held", "rb") as held:
        touch(d / "incoming", b"new held")
        os.rename(d / "incoming", d / "held")
        old = held.read()
    return old, (d / "held").read_bytes(), listing(d)


# --- links, modes, times, inodes ----------------------------------------------------------


@case
def hard_link(d: Path) -> object:
    touch(d / "f", b"x")
    return attempt(os.link, d / "f", d / "g"), listing(d)


@case
def symlink_over_existing(d: Path) -> object:
    touch(d / "f")
    return attempt(os.symlink, "elsewhere", d / "f")


@case
def chmod_file_reads_back(d: Path) -> object:
    touch(d / "f", b"x")
    out = []
    for mode in (0o600, 0o755, 0o640, 0o444):
        os.chmod(d / "f", mode)
        out.append(stat.S_IMODE(os.stat(d / "f").st_mode))
    return out, (d / "f").read_bytes()


@case
def chmod_folder_reads_back(d: Path) -> object:
    os.mkdir(d / "sub")
    os.chmod(d / "sub", 0o700)
    return stat.S_IMODE(os.stat(d / "sub").st_mode)


@case
def chmod_an_open_new_file(d: Path) -> object:
    fd = os.open(d / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"cp -a sets the mode before close")
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return stat.S_IMODE(os.stat(d / "f").st_mode), (d / "f").read_bytes()


@case
def utimens_reads_back(d: Path) -> object:
    touch(d / "f", b"x")
    when = 1_600_000_000_123_456_789
    os.utime(d / "f", ns=(when, when))
    return os.stat(d / "f").st_mtime_ns


@case
def inode_stable_across_stat(d: Path) -> object:
    touch(d / "a")
    touch(d / "b")
    os.mkdir(d / "sub")
    first = [os.stat(d / n).st_ino for n in ("a", "b", "sub")]
    again = [os.stat(d / n).st_ino for n in ("a", "b", "sub")]
    with os.scandir(d) as it:
        listed = {e.name: e.inode() for e in it}
    return first == again, len(set(first)) == 3, [listed[n] for n in ("a", "b", "sub")] == first


@case
def inode_kept_across_rename(d: Path) -> object:
    touch(d / "a", b"x")
    before = os.stat(d / "a").st_ino
    os.rename(d / "a", d / "b")
    return os.stat(d / "b").st_ino == before


def _expected() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in EXPECTED.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, reason = line.partition(":")
            assert reason.strip(), f"{name}: an expected difference needs its reason"
            out[name.strip()] = reason.strip()
    return out


def test_posix_cases_match_a_plain_folder(local_remote: str, tmp_path: Path) -> None:
    expected = _expected()
    assert set(expected) <= set(CASES), set(expected) - set(CASES)
    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    ref = tmp_path / "ref"
    ref.mkdir()
    mnt = tmp_path / "mnt"
    unlisted, stale, results = [], [], {}
    with mounted(folder, mnt, tmp_path / "mount.log") as proc:
        for name, fn in CASES.items():
            (ref / name).mkdir()
            (mnt / name).mkdir()
            want, got = fn(ref / name), fn(mnt / name)
            results[name] = (want, got)
            if want != got and name not in expected:
                unlisted.append(f"{name}: plain folder {want!r}, mount {got!r}")
            elif want == got and name in expected:
                stale.append(f"{name}: now matches ({got!r}); drop it from {EXPECTED.name}")
        assert proc.poll() is None
    assert not unlisted, "\n".join(unlisted)
    assert not stale, "\n".join(stale)


def test_what_only_the_mount_promises(local_remote: str, tmp_path: Path) -> None:
    """statfs fields sane, st_blksize of 128 KiB or more (readers ask in big pieces), and a
    read-only mount refuses every change with EROFS, before it reaches the vault."""
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "f.txt").write_bytes(b"x" * 5000)
    cg("init", str(folder), "--remote", local_remote)
    cg("push", "--folder", str(folder))
    mnt = tmp_path / "mnt"
    with mounted(folder, mnt, tmp_path / "mount.log"):
        sv = os.statvfs(mnt)
        assert sv.f_bsize >= 4096 and sv.f_frsize >= 4096
        assert sv.f_blocks >= 1 and 0 <= sv.f_bavail <= sv.f_bfree <= sv.f_blocks
        assert sv.f_files >= 2 and 0 <= sv.f_ffree <= sv.f_files
        assert sv.f_namemax >= 255
        for path in (mnt, mnt / "sub", mnt / "f.txt"):
            assert os.stat(path).st_blksize >= 128 * 1024, path
        assert os.stat(mnt / "f.txt").st_blocks * 512 >= 5000
    mnt.rmdir()
    with mounted(folder, mnt, tmp_path / "mount-ro.log", "--read-only"):
        changes: dict[str, Callable[[], object]] = {
            "create": lambda: opened(mnt / "new", os.O_CREAT | os.O_WRONLY),
            "open for writing": lambda: opened(mnt / "f.txt", os.O_WRONLY),
            "O_TRUNC": lambda: opened(mnt / "f.txt", os.O_RDONLY | os.O_TRUNC),
            "truncate": lambda: os.truncate(mnt / "f.txt", 0),
            "mkdir": lambda: os.mkdir(mnt / "d"),
            "rmdir": lambda: os.rmdir(mnt / "sub"),
            "unlink": lambda: os.unlink(mnt / "f.txt"),
            "rename": lambda: os.rename(mnt / "f.txt", mnt / "g.txt"),
            "chmod": lambda: os.chmod(mnt / "f.txt", 0o600),
            "utime": lambda: os.utime(mnt / "f.txt", ns=(1, 1)),
            "symlink": lambda: os.symlink("f.txt", mnt / "l"),
            "link": lambda: os.link(mnt / "f.txt", mnt / "h"),
            "chown": lambda: os.chown(mnt / "f.txt", os.getuid(), os.getgid()),
            "setxattr": lambda: os.setxattr(mnt / "f.txt", "user.x", b"1"),
        }
        refused = {what: attempt(fn) for what, fn in changes.items()}
        assert refused == {what: "EROFS" for what in changes}
        assert (mnt / "f.txt").read_bytes() == b"x" * 5000
        assert sorted(os.listdir(mnt)) == ["f.txt", "sub"]
