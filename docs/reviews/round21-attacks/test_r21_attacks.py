"""Review round 21: throwaway attack runs against 6a99392/6afbc0d (JJ1: unseen._seen, the
script's seen_by), 57955d6 (JJ2: PullPlan.held_open), 2e12245 (the mend's healed_over),
52baf0c (the rewrap tie-break under the verified head), 101432a (first_missing) and
903aa77 (procs.running).
test_KK<n> fails where finding KK<n> holds (the assert states the safe outcome).
Run: PYTHONPATH=. python -m pytest -q -p no:cacheprovider docs/reviews/round21-attacks/
(needs tests/trust and tests/format on sys.path; the conftest adds them)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_trust_attacks import (  # noqa: F401
    Dev,
    compact,
    provider,
    script_restores,
)
from test_trust_conflicts import LATE, _texts, x_removed

from cloudguard import manifest as mf

__all__ = ["provider"]


def _pull_all(devs):  # type: ignore[no-untyped-def]
    out = {}
    for dev in devs:
        got = dev.run("pull")
        assert got.exit_code == 0, f"{dev.name}: {got.output}"
        out[dev.name] = _texts(dev.folder)
    return out


def _push(dev):  # type: ignore[no-untyped-def]
    got = dev.run("push", "--json")
    print(dev.name, "push", got.exit_code, got.output[-600:])
    assert got.exit_code == 0, got.output
    return json.loads(got.stdout)


def _seqs(remote: str, rid: str) -> list[int]:
    return sorted(int(n.split("-")[-1].split(".")[0]) for n in os.listdir(Path(remote) / "m")
                  if n.startswith(rid + "-"))


def _fresh(monkeypatch, tmp_path, remote, approver):  # type: ignore[no-untyped-def]
    from test_trust_fresh_readers import _fresh_device
    return _fresh_device(monkeypatch, tmp_path, remote, approver)


def _settled(a, *others):  # type: ignore[no-untyped-def]
    a.write("other.txt", "A's other file")
    _push(a)
    for dev in others:
        assert dev.run("pull").exit_code == 0


def _forging(monkeypatch, path: str, extra: list[str], deps: dict[str, int]):  # type: ignore[no-untyped-def]
    """X's (removed, malicious) cloudguard: its delta's op at ``path`` also names ``extra``
    in rm, and its deps claim ``deps`` (signed by X: deps are X's word)."""
    real = mf.delta_payload

    def payload(device, seq, d, prev, ops, dh=None):  # type: ignore[no-untyped-def]
        for op in ops:
            if op["p"] == path:
                op["rm"] = [*op.get("rm", []), *extra]
        return real(device, seq, {**d, **deps}, prev, ops, dh)
    monkeypatch.setattr(mf, "delta_payload", payload)
    return real


@pytest.mark.parametrize("forged", [True, False], ids=["forged-deps", "control-honest-deps"])
def test_KK1_forged_deps_under_a_late_snapshot_hide_an_honest_edit(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch, forged):
    """JJ1's bound is X's own word: deps are signed by X. A device that applies X's delta as a
    delta waits until it dominates those deps, so forged deps alone make X's delta stick at
    lagging B. But X compacts right after: its late snapshot covers the delta, so lagging B
    merges the snapshot and never checks the delta's deps; the provider keeps the delta
    listed (X wrote it; the compaction deleted it, the provider puts it back). B edits over
    X's version; every reader that never took X's segments reads X's delta for II2, and its
    forged deps[A] cover A's concurrent edit. Safe outcome: every reader and the script hold
    A's edit live. The control (X's real deps, the same snapshot) passes: the bound holds
    only while X tells the truth."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    _settled(a, e)
    nxt = max(_seqs(local_remote, a.rid)) + 1
    future = [f"{a.rid}:{n}" for n in range(nxt, nxt + 6)]
    with provider.showing(before) as late:
        real = _forging(monkeypatch, "paper.txt", future, {a.rid: nxt + 5} if forged else {})
        x.write("paper.txt", LATE)
        x.cg("push")
        monkeypatch.setattr(mf, "delta_payload", real)
        delta = max(_seqs(local_remote, x.rid))
        name = mf.segment_name(x.rid, delta, "d")
        kept = provider.get(name)
        compact(x)  # X's late snapshot covers its delta
        print("X after compaction", sorted(n for n in os.listdir(Path(local_remote) / "m")
                                           if n.startswith(x.rid)))
    late[name] = kept  # the provider keeps X's delta listed
    provider.put(name, kept)

    assert a.run("pull").exit_code == 0
    a.write("paper.txt", "A's concurrent edit")
    _push(a)
    print("A's dots now", _seqs(local_remote, a.rid), "named", future)
    with provider.showing({**before, **late}):
        got = b.run("pull")
        assert got.exit_code == 0, got.output
        assert (b.folder / "paper.txt").read_text() == LATE
        b.write("paper.txt", "B's edit over X's")
        _push(b)
    print("segments", sorted(os.listdir(Path(local_remote) / "m")), "b", b.rid, "x", x.rid)
    restored = _texts(script_restores(a, local_remote, tmp_path))
    print("script", json.dumps(restored, sort_keys=True))
    d = _fresh(monkeypatch, tmp_path, local_remote, a)
    fresh = _pull_all([d])["d"]
    print("fresh D", json.dumps(fresh, sort_keys=True))
    got_all = _pull_all([e, a, b])
    print("devices", json.dumps(got_all, sort_keys=True))
    hist = a.json("history", "paper.txt")["versions"]
    print("A history paper.txt", [(v.get("device"), v.get("current"), v.get("late"))
                                  for v in hist])
    assert "A's concurrent edit" in fresh.values(), fresh
    assert all("A's concurrent edit" in v.values() for v in got_all.values()), got_all
    assert "A's concurrent edit" in restored.values(), restored


def test_KK2_a_late_rewrap_that_does_not_unwrap_wins_the_tie_break(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch):
    """52baf0c's tie-break under the head, and round 8's W7 before it: sync.true_key returns
    None ("cannot tell") when either copy's k fails to unwrap, even under a KEK the reader
    holds, so a copy whose k is garbage (not a wrap at all) is left to _under_head (same g:
    no answer) and then to the tie-break on canonical JSON, which X grinds. This is W7's own
    run (tests/trust/test_trust_removers.py) with garbage in k instead of a valid wrap of a
    junk DEK. Safe outcome: B keeps the real wrap; every device verifies its data; the
    script restores paper.txt."""
    from test_trust_removers import paper_everywhere

    from cloudguard import format as fmt
    from cloudguard import vault

    a, b, c, x = paper_everywhere(monkeypatch, tmp_path, local_remote, "original",
                                  "a", "b", "c", "x")
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    with provider.showing(old) as by_x:
        x.use()
        with vault.session(str(x.folder)) as s:
            ((dot, real),) = s.state.siblings("paper.txt").items()
            size = len(fmt.unb64(real["k"]))
            while True:  # not a wrap of anything: no KEK is needed to make it
                junk = {**real, "k": fmt.b64(os.urandom(size))}
                if json.dumps(junk, sort_keys=True) > json.dumps(real, sort_keys=True):
                    break
            with s.state.transaction():
                s.state.put_entry("paper.txt", dot, junk)
                s.state.ctx[x.rid] = s.state.ctx.get(x.rid, 0) + 1  # past the cutoff
            s.snapshot()
    with provider.showing({**old, **by_x}):
        assert b.run("pull").exit_code == 0
        b.use()
        with vault.session(str(b.folder)) as s:
            kept = s.state.siblings("paper.txt")[dot]["k"]
        print("B keeps the real wrap:", kept == real["k"])
        compact(b)
    ok = {}
    for dev in (a, b, c):
        got = dev.run("pull")
        print(dev.name, "pull", got.exit_code, got.output[-300:])
        ok[dev.name] = dev.run("verify", "--read-data", "--json").output[-400:]
    print(json.dumps(ok, indent=1))
    out = tmp_path / "script-out"
    from test_trust_attacks import run_script
    kit = tmp_path / "kit.json"
    a.cg("key", "export", str(kit), "--choose-passphrase")
    got = run_script(kit, local_remote, out)
    print("script", got.returncode, got.stderr[-500:])
    assert kept == real["k"]
    assert got.returncode == 0 and (out / "paper.txt").read_text() == "original"


def test_KK3_a_reused_pid_of_any_program_naming_cloudguard_is_signalled() -> None:
    """d5127cf (procs.ours, after 903aa77's procs.running): a record's pid is signalled when it
    is this user's and its cmdline holds b"cloudguard" anywhere. A daemon killed hard leaves
    its record; its pid, reused, may name an editor on a file under ~/cloudguard/, a
    'cloudguard pull' in the middle of landing files, or cloudguard's own rclone child (its
    socket path names cloudguard). 'daemon stop' (and 'lock', which SIGKILLs after 5 s)
    then signals it. Safe outcome: the program is left alone."""
    import subprocess
    import sys
    import time

    from cloudguard import lock
    from cloudguard.daemon import control

    editor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                               str(Path.home() / "cloudguard" / "notes.txt")])
    try:
        for _ in range(100):  # its argv shows once the exec is done
            if b"cloudguard" in Path(f"/proc/{editor.pid}/cmdline").read_bytes():
                break
            time.sleep(0.05)
        record = lock.run_dir() / f"daemon-{editor.pid}.json"
        record.write_text(json.dumps({"pid": editor.pid, "kind": "daemon", "mountpoint": None}))
        print("stopped", control.stop(timeout=1).stopped)
        time.sleep(0.2)
        assert editor.poll() is None, "the editor was sent SIGTERM"
    finally:
        editor.kill()
        editor.wait()
