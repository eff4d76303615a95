"""Key rotation (ops/rotate.py): a new KEK under a signed commit, every DEK re-wrapped, no
content uploaded again; the other devices follow on their own. Re-encryption
(``--reencrypt``) is in test_rekey.py."""

from __future__ import annotations

from pathlib import Path

from helpers import cg, cg_json, setup_two, stored, tree


def test_rotation_reaches_other_device_and_old_kit_still_opens(local_remote: str,
                                                                tmp_path: Path) -> None:
    a, b, kit = setup_two(local_remote, tmp_path)
    before = stored(Path(local_remote))
    rotated = cg_json("key", "rotate", "--folder", str(a))
    assert rotated["epoch"] == 2
    after = stored(Path(local_remote))
    changed = {n for n in after if before.get(n) != after[n]}
    assert changed and all(n.startswith(("m/", "keys/")) for n in changed), changed
    assert not any(n.startswith("data/") for n in changed)
    (a / "after.txt").write_text("written under epoch 2")
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))  # no manual step on b
    assert (b / "after.txt").read_text() == "written under epoch 2"
    epochs = cg_json("key", "list", "--folder", str(b))
    assert [g["epoch"] for g in epochs if g["current"]] == [2]
    c = tmp_path / "c"
    cg("clone", local_remote, str(c), "--key-file", str(kit))
    assert tree(c) == tree(a)
