"""A provider that tampers: every attack ends in exit 3 and nothing corrupt on disk."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import _BACKING
from helpers import cg, cg_proc, data_objects, share, tree

from cloudguard import format as fmt

BIG = 3 * fmt.CHUNK_SIZE * 40  # ~7.5 MiB: a stand-alone object, many chunks


@pytest.fixture(params=["local", "webdav"])
def tremote(request: pytest.FixtureRequest) -> tuple[str, Path]:
    """A remote and the folder behind it, where the attacker edits objects directly."""
    spec: str = request.getfixturevalue(f"{request.param}_remote")
    return spec, _BACKING[spec]


def scenario(remote: str, tmp_path: Path) -> tuple[Path, Path]:
    """a and b in sync on version 1; a then pushes version 2 of everything."""
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "big.bin").write_bytes(os.urandom(BIG))
    (a / "big2.bin").write_bytes(os.urandom(BIG))
    (a / "small.txt").write_text("small v1")
    share(remote, a, b, kit)
    return a, b


def assert_untouched(b: Path, before: dict[str, object]) -> None:
    assert tree(b) == before
    assert not list((b / ".cloudguard" / "staging").glob("*")), "temp file left behind"


def expect_exit_3(b: Path, before: dict[str, object], *args: str) -> str:
    proc = cg_proc(*(args or ("pull",)), "--folder", str(b))
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert_untouched(b, before)
    return proc.stderr


def new_version(a: Path) -> None:
    (a / "big.bin").write_bytes(os.urandom(BIG))
    (a / "big2.bin").write_bytes(os.urandom(BIG))
    (a / "small.txt").write_text("small v2")
    cg("push", "--folder", str(a))


def biggest_new(root: Path, old: set[str]) -> list[Path]:
    return [p for p in data_objects(root)[::-1] if p.name not in old]


def after_new_version(tremote: tuple[str, Path], tmp_path: Path
                      ) -> tuple[Path, dict[str, object], list[Path]]:
    """b in sync on version 1, a pushed version 2: b's tree, and the new objects, largest
    first (the ones an attacker tampers with)."""
    a, b = scenario(tremote[0], tmp_path)
    old = {p.name for p in data_objects(tremote[1])}
    new_version(a)
    return b, tree(b), biggest_new(tremote[1], old)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["header", "length", "first-chunk", "middle", "last-byte"])
def test_flipped_byte_in_content(tremote: tuple[str, Path], tmp_path: Path, where: str) -> None:
    b, before, fresh = after_new_version(tremote, tmp_path)
    target = fresh[0]
    offset = {"header": 10, "length": 60, "first-chunk": fmt.BLOB_HEADER_SIZE + 5,
              "middle": target.stat().st_size // 2, "last-byte": target.stat().st_size - 1}
    flip(target, offset[where])
    err = expect_exit_3(b, before)
    assert "big" in err  # the message names the file
    assert expect_exit_3(b, before, "verify", "--read-data")


def test_truncation_at_chunk_boundary(tremote: tuple[str, Path], tmp_path: Path) -> None:
    b, before, fresh = after_new_version(tremote, tmp_path)
    target = fresh[0]
    keep = fmt.BLOB_HEADER_SIZE + 2 * (fmt.CHUNK_SIZE + fmt.TAG_SIZE)
    with open(target, "r+b") as fh:
        fh.truncate(keep)
    expect_exit_3(b, before)
    expect_exit_3(b, before, "verify")  # caught from sizes alone, without downloading


def test_extension_is_detected(tremote: tuple[str, Path], tmp_path: Path) -> None:
    b, before, fresh = after_new_version(tremote, tmp_path)
    target = fresh[0]
    with open(target, "ab") as fh:
        fh.write(os.urandom(fmt.CHUNK_SIZE + fmt.TAG_SIZE))
    expect_exit_3(b, before, "verify")


def test_swapped_objects(tremote: tuple[str, Path], tmp_path: Path) -> None:
    b, before, fresh = after_new_version(tremote, tmp_path)
    one, two = fresh[:2]
    assert one.stat().st_size == two.stat().st_size
    tmp = one.with_name("swap")
    one.rename(tmp)
    two.rename(one)
    tmp.rename(two)
    expect_exit_3(b, before)


def test_deleted_object(tremote: tuple[str, Path], tmp_path: Path) -> None:
    b, before, fresh = after_new_version(tremote, tmp_path)
    fresh[0].unlink()
    err = expect_exit_3(b, before)
    assert "missing" in err
    expect_exit_3(b, before, "verify")


def test_rollback_of_whole_remote(tremote: tuple[str, Path], tmp_path: Path) -> None:
    a, b = scenario(tremote[0], tmp_path)
    root = tremote[1]
    saved = tmp_path / "saved-remote"
    shutil.copytree(root, saved)
    new_version(a)
    cg("pull", "--folder", str(b))  # b has now seen version 2
    before = tree(b)
    shutil.rmtree(root)
    shutil.copytree(saved, root)  # the provider serves the old copy
    err = expect_exit_3(b, before)
    assert "rollback" in err or "older" in err
    expect_exit_3(b, before, "push")


def _segments(root: Path) -> list[Path]:
    return sorted((root / "m").iterdir())


@pytest.mark.parametrize("attack", ["delete", "flip", "flip-generation", "flip-nonce",
                                    "flip-tag", "truncate", "extend", "rename"])
def test_manifest_tampering(tremote: tuple[str, Path], tmp_path: Path, attack: str) -> None:
    a, b = scenario(tremote[0], tmp_path)
    root = tremote[1]
    new_version(a)
    cg("pull", "--folder", str(b))
    seen = set(_segments(root))
    (a / "small.txt").write_text("small v3")
    cg("push", "--folder", str(a))
    if attack == "delete":  # deleting what b never saw is undetectable (docs/threat-model.md)
        cg("pull", "--folder", str(b))
    before = tree(b)
    # the segment that push wrote (not by mtime: WebDAV keeps whole seconds only)
    (newest,) = set(_segments(root)) - seen
    actions: dict[str, Callable[[], None]] = {
        "delete": newest.unlink,
        "flip": lambda: flip(newest, newest.stat().st_size // 2),
        "flip-generation": lambda: flip(newest, 7),
        "flip-nonce": lambda: flip(newest, 12),
        "flip-tag": lambda: flip(newest, newest.stat().st_size - 1),
        "extend": lambda: newest.write_bytes(newest.read_bytes() + b"\0"),
        "truncate": lambda: os.truncate(newest, newest.stat().st_size - 1),
        "rename": lambda: newest.rename(newest.with_name(newest.name.replace("0", "9", 1))),
    }
    actions[attack]()
    expect_exit_3(b, before)


def test_replayed_older_segment_under_new_name(tremote: tuple[str, Path], tmp_path: Path) -> None:
    a, b = scenario(tremote[0], tmp_path)
    root = tremote[1]
    first = _segments(root)[0]
    (a / "small.txt").write_text("small v2")
    cg("push", "--folder", str(a))
    newest = max(_segments(root), key=lambda p: p.name)
    before = tree(b)
    newest.write_bytes(first.read_bytes())
    expect_exit_3(b, before)


def test_altered_descriptor(tremote: tuple[str, Path], tmp_path: Path) -> None:
    _a, b = scenario(tremote[0], tmp_path)
    before = tree(b)
    descriptor = tremote[1] / "cloudguard.json"
    descriptor.write_text(descriptor.read_text().replace('"padme"', '"none"'))
    expect_exit_3(b, before)
    descriptor.write_text(descriptor.read_text().replace("65536", "4096"))
    expect_exit_3(b, before)


def test_verify_reauthenticates_segments_seen_before(tremote: tuple[str, Path],
                                                     tmp_path: Path) -> None:
    """Pull trusts its cache of segments it already authenticated; verify does not."""
    _a, b = scenario(tremote[0], tmp_path)
    before = tree(b)
    segment = _segments(tremote[1])[0]
    flip(segment, segment.stat().st_size - 3)
    expect_exit_3(b, before, "verify")


def test_deleted_manifest_on_fresh_listing(tremote: tuple[str, Path], tmp_path: Path) -> None:
    _a, b = scenario(tremote[0], tmp_path)
    before = tree(b)
    shutil.rmtree(tremote[1] / "m")
    expect_exit_3(b, before)


def test_tampered_pull_writes_nothing_and_names_the_bad_file(tremote: tuple[str, Path],
                                                           tmp_path: Path) -> None:
    a, b = scenario(tremote[0], tmp_path)
    root = tremote[1]
    old = {p.name for p in data_objects(root)}
    (a / "big.bin").write_bytes(os.urandom(BIG))
    cg("push", "--folder", str(a))
    (a / "small.txt").write_text("small v2")
    cg("push", "--folder", str(a))
    bad = biggest_new(root, old)[0]
    flip(bad, bad.stat().st_size // 2)
    before = tree(b)
    err = expect_exit_3(b, before)
    assert "big.bin" in err and "nothing was written" in err
    assert "small.txt" not in err
