"""Names that are not valid UTF-8 (issue 9, item 4): synced as the bytes they are, never
skipped, and restored exactly by a second device and by the stand-alone decrypt script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cg, cg_json, share, tree
from hypothesis import given
from hypothesis import strategies as st

from cloudguard.errors import IntegrityError
from cloudguard.names import ESC, from_disk, to_disk
from cloudguard.sync import check_rel_path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cloudguard-decrypt.py"


@given(st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b))
def test_every_name_has_one_manifest_form_and_back(raw: bytes) -> None:
    name = os.fsdecode(raw)
    manifest = from_disk(name)
    manifest.encode("utf-8")  # strict: the manifest, the index and JSON hold it
    assert os.fsencode(to_disk(manifest)) == raw


@pytest.mark.parametrize("bad", [ESC, f"a{ESC}", f"{ESC}7f", f"{ESC}zz", f"{ESC}{ESC}{ESC}",
                                 f"{ESC}FF"])
def test_a_malformed_escape_in_the_manifest_is_an_integrity_error(bad: str) -> None:
    with pytest.raises(IntegrityError, match="malformed name escape"):
        check_rel_path(f"dir/{bad}.txt")


def raw_tree(root: Path) -> dict[bytes, tuple[object, ...]]:
    """tree(), keyed by the raw bytes of each path."""
    return {os.fsencode(p): v for p, v in tree(root).items()}


def test_names_that_are_not_utf8_sync_exactly(local_remote: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    names = [b"latin1-caf\xe9.txt", b"bad\xff\xfe", "escape \u241b sign.txt".encode(),
             b"tail\xe2\x90", "ok-\u241bff.txt".encode()]  # the last spells an escape
    for raw in names:
        (a / os.fsdecode(raw)).write_bytes(b"content of " + raw)
    sub = a / os.fsdecode(b"dir-\x80\x81")
    sub.mkdir()
    (sub / os.fsdecode(b"inner\xc0.bin")).write_bytes(b"\x00\x01")
    os.symlink(os.fsdecode(b"target-\xfe"), a / "link")
    share(local_remote, a, b, tmp_path / "kit.json")
    assert raw_tree(b) == raw_tree(a)
    assert cg_json("status", "--folder", str(a))["to_push"] == []
    # an edit and a rename of such a name travel too, and b's copy comes back exactly
    (a / os.fsdecode(b"bad\xff\xfe")).write_bytes(b"edited")
    os.rename(a / os.fsdecode(b"tail\xe2\x90"), a / os.fsdecode(b"renamed\xe2"))
    pushed = cg_json("push", "--folder", str(a))
    assert pushed["unreadable"] == [] and pushed["skipped"] == []
    cg("pull", "--folder", str(b))
    assert raw_tree(b) == raw_tree(a)
    out = tmp_path / "restored"
    got = subprocess.run([sys.executable, str(SCRIPT), "--remote-dir", local_remote, "--kit",
                          str(tmp_path / "kit.json"), "--out", str(out)],
                         capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL)
    assert got.returncode == 0, got.stderr
    assert raw_tree(out) == {k: v for k, v in raw_tree(a).items()}
