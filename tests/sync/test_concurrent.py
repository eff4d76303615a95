"""Two devices push conflicting edits and renames at the same moment: no update is ever lost.

Each round both devices change the same document, rename a file and add a file, then push
simultaneously (two real processes racing on the remote). After both pull, every version
written in that round must exist on both devices, as the file or as a conflict copy. Enough
rounds run to cross the compaction threshold, so concurrent snapshots are exercised too.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import CLOUDGUARD, cg, share, tree

ROUNDS = int(os.environ.get("CLOUDGUARD_CONCURRENT_ROUNDS", "20"))


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLOUDGUARD, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> None:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (proc.args, out, err)


def contents(folder: Path) -> set[str]:
    return {p.read_text() for p in folder.rglob("*")
            if p.is_file() and ".cloudguard" not in p.relative_to(folder).parts}


@pytest.mark.slow
def test_concurrent_devices_never_lose_an_update(local_remote: str, tmp_path: Path) -> None:
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "shared.txt").write_text("base")
    (a / "a-file-0.txt").write_text("a rename chain 0")
    (a / "b-file-0.txt").write_text("b rename chain 0")
    share(local_remote, a, b, kit)
    kept: set[str] = set()  # new files and conflict copies: must survive to the end
    for rnd in range(1, ROUNDS + 1):
        written: set[str] = set()
        for side, tag in ((a, "a"), (b, "b")):
            text = f"round {rnd} edit by {tag}"
            (side / "shared.txt").write_text(text)
            old = side / f"{tag}-file-{rnd - 1}.txt"
            if old.exists():
                old.rename(side / f"{tag}-file-{rnd}.txt")  # a rename
            (side / f"new-{tag}-{rnd}.txt").write_text(f"new {tag} {rnd}")
            written |= {text, f"new {tag} {rnd}"}
        pushes = [start("push", "--folder", str(a)), start("push", "--folder", str(b))]
        for proc in pushes:
            finish(proc)
        for side in (a, b):  # the first pull resolves the conflict, the second receives it
            cg("pull", "--folder", str(side))
        for side in (a, b):
            missing = (kept | written) - contents(side)
            assert not missing, (rnd, side.name, missing)
            assert (side / f"a-file-{rnd}.txt").exists() and not (
                side / f"a-file-{rnd - 1}.txt").exists()
        assert tree(a) == tree(b), rnd
        # shared.txt itself is overwritten on purpose next round; everything else must stay
        kept |= {p.read_text() for p in a.rglob("*") if p.is_file() and p.name != "shared.txt"
                 and ".cloudguard" not in p.relative_to(a).parts}
    cg("verify", "--read-data", "--folder", str(a))
