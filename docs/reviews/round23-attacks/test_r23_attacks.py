"""Review round 23: throwaway attack runs against 4f846eb (LL2: attic.fresher keeps the copy
held when it cannot tell; the script's State.unwraps reads the blob header at (o, a)) and
2bd400e/8cd5c84 (LL3: procs.ours(pid, None) by _runs_cloudguard).
test_MM<n> fails where finding MM<n> holds (the assert states the safe outcome).
Run: PYTHONPATH=. python -m pytest -q -p no:cacheprovider docs/reviews/round23-attacks/
(needs tests/trust and tests/format on sys.path; the conftest adds them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_trust_attacks import (  # noqa: F401
    compact,
    make_vault,
    provider,
    run_script,
)
from test_trust_conflicts import _texts

from cloudguard import vault

__all__ = ["provider"]


def test_MM1_a_late_copy_at_a_packmates_blob_stops_every_device_and_the_script(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch):
    """4f846eb's script check reads the header at the copy's *own* (o, a) with its *own* i,
    and State.fresher compares only (r, o): the script has no "one place, one blob" rule
    (devices have it: crdt._same_version refuses a copy whose a, n or i differ at one
    (r, o), review round 4, S5). Small files share a pack, so X (removed) copies the
    packmate's a, n, i, k into paper.txt's version (none of them is signed): the wrap
    unwraps under a kit KEK and the DEK opens the header at that a, so both copies pass
    State.unwraps. Lagging B never held paper.txt: it takes X's copy as a new dot from X's
    late snapshot (no fresher, no header check) and compacts, as in LL2. The script's
    (r, o) tie keeps the copy it merged first: B's snapshot, whose name sorts first, over
    the remover's. Safe outcome: the script restores paper.txt as written (and every
    device still pulls)."""
    devs = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "c", "x")
    b, x, c, a = sorted(devs, key=lambda d: d.rid)  # B's snapshot merges first in the script
    for dev in devs:
        assert dev.run("pull").exit_code == 0
    a.write("paper.txt", "the real paper")
    a.write("zz-other.txt", "a packmate, another file")
    got = a.run("push")
    assert got.exit_code == 0, got.output
    for dev in (c, x):
        assert dev.run("pull").exit_code == 0
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    kit = tmp_path / "kit.json"  # A's kit, taken before anything breaks
    a.cg("key", "export", str(kit), "--choose-passphrase")
    with provider.showing(old) as by_x:
        x.use()
        with vault.session(str(x.folder)) as s:
            ((dot, real),) = s.state.siblings("paper.txt").items()
            ((_odot, mate),) = s.state.siblings("zz-other.txt").items()
            print("paper", {k: real.get(k) for k in ("o", "a", "n", "r", "g")},
                  "mate", {k: mate.get(k) for k in ("o", "a", "n", "r", "g")})
            assert (real["o"], real.get("r", 0)) == (mate["o"], mate.get("r", 0))  # one pack
            junk = {**real, **{k: mate[k] for k in ("a", "n", "i", "k", "g")}}
            with s.state.transaction():
                s.state.put_entry("paper.txt", dot, junk)
                s.state.ctx[x.rid] = s.state.ctx.get(x.rid, 0) + 1  # past the cutoff
            s.snapshot()
    with provider.showing({**old, **by_x}):  # B: the data and X's snapshot, not the removal
        got = b.run("pull")
        print("B pull", got.exit_code, got.output[-600:])
        b.use()
        with vault.session(str(b.folder)) as s:
            held = s.state.siblings("paper.txt").get(dot)
            print("B holds X's copy:", held is not None and held.get("a") == mate["a"])
        compact(b)
    devices = {}
    for dev in (a, c, b):
        got = dev.run("pull")
        devices[dev.name] = (got.exit_code, _texts(dev.folder).get("paper.txt"))
        print(dev.name, "pull", got.exit_code, got.output[-400:])
    got = a.run("key", "export", str(tmp_path / "kit2.json"), "--choose-passphrase")
    print("A key export", got.exit_code, got.output[-300:])
    devices["a-key-export"] = (got.exit_code, None)
    for cmd in (("pull",), ("doctor",), ("repair",), ("repair", "--republish", "--yes"),
                ("pull",)):  # anything that heals?
        got = a.run(*cmd)
        print("A", *cmd, got.exit_code, got.output[-200:])
    out = tmp_path / "script-out"
    got = run_script(kit, local_remote, out)
    print("script", got.returncode, got.stderr[-600:])
    print("devices", devices)
    assert got.returncode == 0, got.stderr[-600:]
    assert (out / "paper.txt").read_text() == "the real paper"
    assert all(v == (0, "the real paper") for k, v in devices.items()
               if k != "a-key-export"), devices


def _old_record(pid: int) -> Path:
    """A run record as cloudguard wrote it before 58b2b90 (no ``start``), left behind by a
    hard kill; the pid is now whatever runs under it."""
    from cloudguard import lock
    record = lock.run_dir() / f"daemon-{pid}.json"
    record.write_text(json.dumps({"pid": pid, "kind": "daemon", "mountpoint": None,
                                  "folder": None}))
    return record


def test_MM2_a_startless_record_signals_a_program_whose_first_argument_is_named_cloudguard(
        tmp_path: Path) -> None:
    """2bd400e: for a record without start, _runs_cloudguard takes basename(argv[1]) ==
    "cloudguard" as "python /usr/bin/cloudguard". Any program whose first argument is a
    path ending in cloudguard passes: `cp ~/cloudguard /media/backup/`, `vim ~/cloudguard`,
    `du ~/cloudguard`, `nautilus ~/cloudguard` (the vault folder's natural name). A copy of
    the vault folder stands in, kept running by reading a FIFO. Safe outcome: lock does not
    signal it."""
    from cloudguard import lock

    src = tmp_path / "home" / "cloudguard"
    src.parent.mkdir()
    os.mkfifo(src)
    other = subprocess.Popen(["cp", str(src), str(tmp_path / "backup")])
    try:
        time.sleep(0.3)
        _old_record(other.pid)
        got = lock.lock()
        time.sleep(0.3)
        print("lock", got, "cp exit", other.poll())
        assert other.poll() is None, f"lock signalled an unrelated cp: {got}"
    finally:
        other.kill()
        other.wait()


def test_MM2_a_startless_record_of_an_entry_point_run_with_interpreter_flags_is_dropped(
        tmp_path: Path) -> None:
    """The other way: an entry point whose shebang carries interpreter flags (Fedora's
    RPM macros write `#!/usr/bin/python3 -sP`; `python3 -I /usr/bin/cloudguard ...`) has
    argv = [python3, -sP, /usr/bin/cloudguard, daemon, run]: neither argv[0] nor argv[1]
    is named cloudguard and there is no "-m cloudguard". lock deletes its record and
    leaves it running with its keys, silently (LL3's outcome). Safe outcome: lock stops
    it, or says it could not."""
    from cloudguard import lock

    bindir = tmp_path / "bin"
    bindir.mkdir()
    entry = bindir / "cloudguard"
    entry.write_text("import time\ntime.sleep(120)\n")
    old = subprocess.Popen([sys.executable, "-sP", str(entry), "daemon", "run"])
    try:
        time.sleep(0.3)
        record = _old_record(old.pid)
        got = lock.lock()
        time.sleep(0.3)
        print("lock", got, "record left", record.exists(), "running", old.poll() is None)
        assert old.poll() is not None or got.problems, "lock left the daemon running, silently"
    finally:
        old.kill()
        old.wait()


@pytest.mark.parametrize("hide", [True, False], ids=["blob-hidden", "control-blob-served"])
def test_MM3_a_junk_key_a_lagging_device_rewraps_under_the_head_is_kept_for_good(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch, hide):
    """4f846eb keeps the copy held when the device cannot tell. Lagging B never held
    paper.txt: it takes the version as a new dot from X's late snapshot, with W7's junk
    wrap (a random DEK under the old KEK X held; no fresher, no header check). B then sees
    the removal, but the provider hides A's rotation snapshot and data/<o>: _rewrap_stale
    rewraps the junk DEK under the head and writes it in a snapshot, so _under_head can no
    longer tell the two copies apart. When B then merges A's rotation snapshot (real key,
    head KEK) the blob is withheld once more: "cannot tell", B keeps its junk, and nothing
    makes it judge again once the blob is served. Safe outcome: B ends with the real key
    and its pull restores paper.txt."""
    from cloudguard import format as fmt

    devs = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "c", "x")
    a, b, c, x = devs
    for dev in devs:
        assert dev.run("pull").exit_code == 0
    a.write("paper.txt", "the real paper")
    assert a.run("push").exit_code == 0
    for dev in (c, x):
        assert dev.run("pull").exit_code == 0
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    rotation = [n for n, d in provider.objects().items()
                if n.startswith(f"m/{a.rid}-") and n.endswith(".s") and old.get(n) != d]
    print("A's rotation snapshot", rotation)
    with provider.showing(old) as by_x:
        x.use()
        with vault.session(str(x.folder)) as s:
            ((dot, real),) = s.state.siblings("paper.txt").items()
            k = fmt.wrap_dek(s.ring.kek(str(real["g"])), os.urandom(32), bytes.fromhex(real["i"]))
            junk = {**real, "k": fmt.b64(k)}
            with s.state.transaction():
                s.state.put_entry("paper.txt", dot, junk)
                s.state.ctx[x.rid] = s.state.ctx.get(x.rid, 0) + 1  # past the cutoff
            s.snapshot()
    blob = f"data/{real['o']}"
    a.use()
    with vault.session(str(a.folder)) as s:
        head = s.state.siblings("paper.txt")[dot]  # the real key under the head's KEK

    def held() -> dict:  # type: ignore[type-arg]
        b.use()  # (a session loads the remote as shown now)
        with vault.session(str(b.folder)) as s:
            e = s.state.siblings("paper.txt")[dot]
            return {"g": "old" if e["g"] == real["g"] else "head" if e["g"] == head["g"]
                    else e["g"][:8], "k": "junk" if e["k"] == junk["k"] else "real-old"
                    if e["k"] == real["k"] else "real-head" if e["k"] == head["k"] else "other",
                    "b's head is old": s.ring.head.kek == real["g"]}
    with provider.showing({**old, **by_x}):
        got = b.run("pull")
        print("B pull 1 (lagging)", got.exit_code, got.output[-300:])
        print("B holds", held())
    shown = {n: d for n, d in provider.objects().items() if n not in rotation}
    with provider.showing(shown), provider.hiding(blob):
        b.write("b-note.txt", "B's own note")
        got = b.run("push")
        print("B push (removal seen, A's snapshot hidden)", got.exit_code, got.output[-400:])
        print("B holds", held())
    with provider.hiding(*([blob] if hide else [])):
        got = b.run("pull")
        print("B pull 2 (A's snapshot, blob hidden)", got.exit_code, got.output[-300:])
        print("B holds", held())
    got = b.run("pull")
    print("B pull 3 (all served)", got.exit_code, got.output[-300:])
    print("B holds", held())
    got2 = b.run("pull")
    print("B pull 4", got2.exit_code, got2.output[-300:])
    assert got2.exit_code == 0 and (b.folder / "paper.txt").read_text() == "the real paper"
