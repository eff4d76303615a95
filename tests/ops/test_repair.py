"""Issue 9 item 10: ``cloudguard repair`` and ``repair --republish``, against a real local
remote that the provider (the test) edits between commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import cg, cg_json, cg_proc, share, stored, tree

from cloudguard import audit, cli, sync, vault


def blob_of(folder: Path, path: str) -> tuple[str, int, int]:
    """(object id, offset, length) of the current version of ``path``."""
    with vault.session(str(folder)) as s:
        _dot, entry = sync.view(s.state)[path]
        return str(entry["o"]), int(entry["a"]), int(entry["n"])


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_repair_gives_damaged_objects_new_homes(local_remote: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync.uploader, "PACK_THRESHOLD", 10_000)  # solo.bin: an object of its own
    root = Path(local_remote)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    contents = {f"small{n}.txt": os.urandom(900 + n) for n in range(1, 5)}
    contents["solo.bin"] = os.urandom(20_000)
    for name, data in contents.items():
        (a / name).write_bytes(data)
    share(local_remote, a, b, tmp_path / "kit.json")
    (a / "small3.txt").write_bytes(b"small3 v2")  # v1 stays in the pack as history
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))

    pack, offset, length = blob_of(b, "small1.txt")
    solo = blob_of(b, "solo.bin")[0]
    assert blob_of(b, "small2.txt")[0] == pack and solo != pack
    flip(root / "data" / pack, offset + length // 2)  # the provider damages small1's blob
    (root / "data" / solo).unlink()  # ... and loses solo.bin's object
    (b / "small1.txt").write_bytes(b"edited on b, never pushed")  # no copy of small1 is left
    (b / "small4.txt").unlink()  # small4: no local copy, but its blob is intact
    verify = cg_proc("verify", "--read-data", "--folder", str(b))
    assert verify.returncode == 3 and "cloudguard repair" in verify.stderr, verify.stderr

    before = stored(root)
    proc = cg_proc("repair", "--json", "--folder", str(b))
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert "small1.txt" in proc.stderr and "cannot be repaired" in proc.stderr, proc.stderr
    first = json.loads(proc.stdout)
    assert first["damaged_objects"] == 2 and not first["ok"], first
    assert first["repaired"] == ["small2.txt", "solo.bin"], first  # from b's matching files
    assert first["moved"] == ["small3.txt", "small4.txt"], first  # intact blobs copied out
    after = stored(root)
    for name, data in after.items():  # nothing was rewritten in place
        assert before.get(name, data) == data, name
    report = cg_json("repair", "--folder", str(b), code=3)
    assert [r["path"] for r in report["unrepairable"]] == ["small1.txt"], report
    assert report["unrepairable"][0]["reason"].startswith("the local file has other content")

    with vault.session(str(b)) as s:  # only what has no good copy is left in the pack
        assert {p for p, _d, _e in s.state.in_objects([pack])} == {"small1.txt"}
    assert blob_of(b, "solo.bin")[0] != solo
    assert f"data/{solo}" not in after

    (b / "small1.txt").write_bytes(contents["small1.txt"])  # a backup comes back
    fixed = cg_json("repair", "--folder", str(b))
    assert fixed["ok"] and fixed["repaired"] == ["small1.txt"], fixed
    assert f"data/{pack}" not in stored(root), "the damaged pack was left behind"
    assert cg_json("verify", "--read-data", "--folder", str(a))["ok"]
    assert cg_json("repair", "--folder", str(a))["damaged_objects"] == 0
    cg("pull", "--folder", str(a))
    assert (a / "solo.bin").read_bytes() == contents["solo.bin"]
    history = cg_json("history", "small3.txt", "--folder", str(a))
    kept = [v["version"] for v in history["versions"] if not v["current"]]
    assert len(kept) == 1, history
    cg("restore", "small3.txt", "--version", kept[0], "--folder", str(a))
    assert (a / "small3.txt").read_bytes() == contents["small3.txt"]
    records = [r for r in audit.read() if r.get("event") == "repair"]
    assert [r["repaired"] for r in records] == [2, 0, 1, 0], records


def test_republish_after_rollback_is_confirmed_audited_and_unblocks(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(local_remote)
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "doc.txt").write_text("v1")
    (a / "big.bin").write_bytes(os.urandom(300_000))
    share(local_remote, a, b, kit)
    assert cg_json("repair", "--republish", "--yes", "--folder", str(b))["republished"] is False
    saved = tmp_path / "saved-remote"
    shutil.copytree(root, saved)
    (a / "doc.txt").write_text("v2")
    (a / "big.bin").write_bytes(os.urandom(300_000))
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))  # b has seen version 2
    shutil.rmtree(root)
    shutil.copytree(saved, root)  # the provider serves the old copy

    blocked = cg_proc("pull", "--folder", str(b))
    assert blocked.returncode == 3 and "repair --republish" in blocked.stderr, blocked.stderr
    untouched = stored(root)
    refused = cg_proc("repair", "--republish", "--folder", str(b))  # no terminal, no --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr, refused.stderr
    assert stored(root) == untouched
    assert not [r for r in audit.read() if r.get("event") == "republish"]
    assert cg_proc("push", "--folder", str(b)).returncode == 3  # never automatic
    monkeypatch.setattr(cli.files, "_interactive", lambda: True)  # a person at a terminal says no
    declined = CliRunner().invoke(cli.main, ["repair", "--republish", "--folder", str(b)],
                                  input="n\n")
    assert declined.exit_code == 2 and "Republish?" in declined.output, declined.output
    assert stored(root) == untouched
    assert [r.get("declined") for r in audit.read() if r.get("event") == "republish"] == [True]

    done = cg_json("repair", "--republish", "--yes", "--folder", str(b))
    assert done["republished"] and "older" in done["reason"], done
    record = [r for r in audit.read() if r.get("event") == "republish"][-1]
    assert record["confirmed"] == "--yes" and record["snapshot"] == done["snapshot"]
    # the rolled-back remote lacks version 2's objects: repair puts them back from b's files
    fixed = cg_json("repair", "--folder", str(b))
    assert fixed["ok"] and sorted(fixed["repaired"]) == ["big.bin", "doc.txt"], fixed
    assert cg_json("verify", "--read-data", "--folder", str(b))["ok"]
    cg("pull", "--folder", str(a))  # a's own view is covered by b's snapshot
    assert tree(a) == tree(b) and (a / "doc.txt").read_text() == "v2"
    c = tmp_path / "c"
    cg("clone", local_remote, str(c), "--key-file", str(kit))
    assert (c / "doc.txt").read_text() == "v2"


def test_republish_refuses_what_it_cannot_answer(local_remote: str, tmp_path: Path) -> None:
    """An altered descriptor is no manifest rollback: republish says so and changes nothing."""
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "doc.txt").write_text("v1")
    share(local_remote, a, b, kit)
    desc = Path(local_remote) / "cloudguard.json"
    desc.write_bytes(desc.read_bytes().replace(b'"padme"', b'"none"'))
    before = stored(Path(local_remote))
    proc = cg_proc("repair", "--republish", "--yes", "--folder", str(b))
    assert proc.returncode == 3, proc.stderr
    assert "answers only a rolled-back" in proc.stderr, proc.stderr
    assert stored(Path(local_remote)) == before


SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cloudguard-decrypt.py"


def recovered(remote: str, kit: Path, out: Path) -> dict[str, object]:
    """What the stand-alone recovery script restores with the kit alone."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "--remote-dir", remote, "--kit",
                           str(kit), "--out", str(out)], capture_output=True, text=True,
                          check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return tree(out)


def test_recovery_script_reads_repaired_and_half_reencrypted_vaults(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Repair and an interrupted re-encryption leave ``reloc`` ops with new key fields in
    delta segments: the recovery script follows them."""
    monkeypatch.setattr(sync.uploader, "PACK_THRESHOLD", 1)  # one object per file
    a, kit = tmp_path / "a", tmp_path / "kit.json"
    a.mkdir()
    for n in range(4):
        (a / f"f{n}.bin").write_bytes(os.urandom(2000 + n))
    cg("init", str(a), "--remote", local_remote)
    cg("push", "--folder", str(a))
    cg("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    (Path(local_remote) / "data" / blob_of(a, "f1.bin")[0]).unlink()
    assert cg_json("repair", "--folder", str(a))["repaired"] == ["f1.bin"]
    assert recovered(local_remote, kit, tmp_path / "out1") == tree(a)
    from test_rekey import interrupted_reencrypt

    interrupted_reencrypt(a, monkeypatch)
    assert cg_json("status", "--folder", str(a))["reencryption"]["files_left"] == 2
    assert recovered(local_remote, kit, tmp_path / "out2") == tree(a)


def test_republish_after_a_deleted_segment(local_remote: str, tmp_path: Path) -> None:
    """The provider deletes one of a's segments that b applied: b is stuck on a gap (the
    manifest was truncated) until it republishes; then a and b both work again."""
    root = Path(local_remote)
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "doc.txt").write_text("v1")
    share(local_remote, a, b, kit)
    for version in ("v2", "v3"):
        (a / "doc.txt").write_text(version)
        cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))
    device = cg_json("status", "--folder", str(a))["device"]
    mine = sorted(p for p in (root / "m").iterdir() if p.name.startswith(device))
    mine[-2].unlink()  # v2's delta
    stuck = cg_proc("pull", "--folder", str(b))
    assert stuck.returncode == 3 and "missing" in stuck.stderr, stuck.stderr
    assert "repair --republish" in stuck.stderr
    done = cg_json("repair", "--republish", "--yes", "--folder", str(b))
    assert done["republished"] and "missing" in done["reason"], done
    (a / "doc.txt").write_text("v4")
    cg("push", "--folder", str(a))
    cg("pull", "--folder", str(b))
    assert (b / "doc.txt").read_text() == "v4"
    assert cg_json("verify", "--read-data", "--folder", str(b))["ok"]


def test_reloc_with_new_key_fields_is_all_or_nothing() -> None:
    """A reloc moves a blob as it is, or carries all five key fields of a blob encrypted
    anew; a reloc that swaps only the wrapped key (or only the file id) is malformed."""
    from cloudguard import manifest as mf
    from cloudguard.errors import IntegrityError

    moved = {"o": "ab" * 16, "a": 16, "r": 1, "om": ""}
    rekeyed = {**moved, "n": 100, "i": "cd" * 16, "k": "AAAA", "g": "ef" * 32, "w": "ef" * 32}
    assert mf.check_ops([{"p": "x", "reloc": {"0123456789abcdef:3": moved}}])
    assert mf.check_ops([{"p": "x", "reloc": {"0123456789abcdef:3": rekeyed}}])
    for drop in ("n", "i", "k", "g", "w"):
        partial = {k: v for k, v in rekeyed.items() if k != drop}
        with pytest.raises(IntegrityError):
            mf.check_ops([{"p": "x", "reloc": {"0123456789abcdef:3": partial}}])
    for bad in ({**rekeyed, "n": -1}, {**rekeyed, "k": 5}, {**moved, "h": "00"},
                {**rekeyed, "n": True}):
        with pytest.raises(IntegrityError):
            mf.check_ops([{"p": "x", "reloc": {"0123456789abcdef:3": bad}}])
    state = mf.State()
    entry = {"t": "f", "s": 5, "h": "11" * 32, "o": "22" * 16, "a": 0, "n": 50,
             "i": "33" * 16, "k": "old", "g": "44" * 32, "w": "44" * 32}
    state.apply_delta("0123456789abcdef", 3, [{"p": "x", "e": entry}])
    state.apply_delta("0123456789abcdef", 4, [{"p": "x", "reloc": {
        "0123456789abcdef:3": rekeyed}}])
    now = state.entry("x", "0123456789abcdef:3")
    # same version (dot, h, s), new blob and key; where it was is kept, to undo the move
    previous = {k: entry[k] for k in ("o", "a", "n", "i", "k", "g", "w")}
    assert now["rt"] >= int(time.time()) - 60  # when this device applied the move
    assert now == {**entry, **rekeyed, "rd": ["0123456789abcdef:4"], "rt": now["rt"],
                   "pl": previous}
    assert mf.unmoved(now) == entry
