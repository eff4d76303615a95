"""Review round 22: throwaway attack runs against 39e09ca (KK1: the honest delta's firm deps,
segments.firm, unseen._seen), 8314909 (KK2: reading.true_key's _JUNK, the script's
State.fresher) and 58b2b90 (KK3: procs.started / procs.ours).
test_LL<n> fails where finding LL<n> holds (the assert states the safe outcome).
Run: PYTHONPATH=. python -m pytest -q -p no:cacheprovider docs/reviews/round22-attacks/
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
from cloudguard import vault

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


def _names(remote: str, rid: str) -> list[str]:
    return sorted(n for n in os.listdir(Path(remote) / "m") if n.startswith(rid + "-"))


def _seq(name: str) -> int:
    return int(name.split("-")[-1].split(".")[0])


def _fresh(monkeypatch, tmp_path, remote, approver):  # type: ignore[no-untyped-def]
    from test_trust_fresh_readers import _fresh_device
    return _fresh_device(monkeypatch, tmp_path, remote, approver)


def _forging(monkeypatch, path: str, extra: list[str], deps: dict[str, int]):  # type: ignore[no-untyped-def]
    """X's (removed, malicious) cloudguard: its delta's op at ``path`` also names ``extra``
    in rm, and its deps claim ``deps`` (signed by X)."""
    real = mf.delta_payload

    def payload(device, seq, d, prev, ops, dh=None):  # type: ignore[no-untyped-def]
        for op in ops:
            if op["p"] == path:
                op["rm"] = [*op.get("rm", []), *extra]
        return real(device, seq, {**d, **deps}, prev, ops, dh)
    monkeypatch.setattr(mf, "delta_payload", payload)
    return real


def test_LL_holds_dh_never_names_a_lifted_post_removal_seq(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch):
    """Tried against 39e09ca: its bound is the honest delta's deps where its dh names the
    device, on the ground that a snapshot's lift never gets into dh. But dh names any
    segment the writer *consumed* at deps[dev], a snapshot it dominates included (loading
    marks it after a history-only merge). So: X (removed) lifts lagging B's vector over
    A:n, A's concurrent edit, to exactly A's snapshot seq n+1, with forged rm and deps as
    in KK1; the provider then shows B A's snapshot. It holds: A's snapshot names the
    removal's commit, which lagging B cannot verify, so B defers it (and a post-removal
    segment is under a KEK B lacks); B's dh does not name A, and A's edit stays live
    everywhere. Safe outcome asserted (this run passes at main)."""
    (a, b, e, x), before = x_removed(monkeypatch, tmp_path, local_remote, provider)
    a.write("other.txt", "A's other file")
    _push(a)
    assert e.run("pull").exit_code == 0
    assert a.run("pull").exit_code == 0
    a.write("paper.txt", "A's concurrent edit")
    _push(a)
    edit = max(_seq(n) for n in _names(local_remote, a.rid) if n.endswith(".d"))
    compact(a)
    snap = [n for n in _names(local_remote, a.rid) if n.endswith(".s")][-1]
    print("A's edit", edit, "A's snapshot", snap)
    assert _seq(snap) == edit + 1
    a_snap = {f"m/{snap}": provider.get(f"m/{snap}")}
    with provider.showing(before) as late:
        real = _forging(monkeypatch, "paper.txt", [f"{a.rid}:{edit}"], {a.rid: edit})
        x.write("paper.txt", LATE)
        x.cg("push")
        monkeypatch.setattr(mf, "delta_payload", real)
        dname = [n for n in _names(local_remote, x.rid) if n.endswith(".d")][-1]
        kept = provider.get(f"m/{dname}")
        x.use()
        with vault.session(str(x.folder)) as s:  # X's late snapshot lifts A to n+1
            with s.state.transaction():
                s.state.ctx[a.rid] = _seq(snap)
            s.snapshot()
    late[f"m/{dname}"] = kept  # the provider keeps X's delta listed
    provider.put(f"m/{dname}", kept)
    with provider.showing({**before, **late}):
        got = b.run("pull")
        assert got.exit_code == 0, got.output
        assert (b.folder / "paper.txt").read_text() == LATE
    with provider.showing({**before, **late, **a_snap}):
        got = b.run("pull")  # B dominates A's snapshot: history only, but consumed
        print("B pull 2", got.output[-1500:])
        assert got.exit_code == 0, got.output
        print("B after A's snapshot", json.dumps(_texts(b.folder), sort_keys=True))
        assert (b.folder / "paper.txt").read_text() == LATE
        b.use()
        with vault.session(str(b.folder)) as s:
            cons = s.state.consumed()
            named = mf.applied_hash(cons, a.rid, s.state.ctx[a.rid])
            print("B ctx", s.state.ctx, "B dh A", named, "consumed", sorted(cons))
        assert "deferred" in got.output and named is None
        b.write("paper.txt", "B's edit over X's")
        _push(b)
    bname = [n for n in _names(local_remote, b.rid) if n.endswith(".d")][-1]
    print("B's delta", bname)
    restored = _texts(script_restores(a, local_remote, tmp_path))
    print("script", json.dumps(restored, sort_keys=True))
    d = _fresh(monkeypatch, tmp_path, local_remote, a)
    fresh = _pull_all([d])["d"]
    print("fresh D", json.dumps(fresh, sort_keys=True))
    got_all = _pull_all([e, a, b])
    print("devices", json.dumps(got_all, sort_keys=True))
    assert "A's concurrent edit" in fresh.values(), fresh
    assert all("A's concurrent edit" in v.values() for v in got_all.values()), got_all
    assert "A's concurrent edit" in restored.values(), restored


@pytest.mark.parametrize("hide", [True, False], ids=["blob-hidden", "control-blob-served"])
def test_LL2_a_hidden_blob_leaves_a_valid_junk_wrap_to_the_tie_break_and_the_script(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch, hide):
    """8314909 settles a wrap that fails under a held KEK; a *valid* wrap of a junk DEK (W7)
    is still settled on a device only by reading the blob's header, and _opens answers None
    ("cannot tell") when the provider does not serve the object at that moment. X (removed)
    wraps a random DEK under the old KEK, grinds the JSON tie-break, and the provider hides
    data/<o> while lagging B merges X's late snapshot: B keeps the junk wrap, and its
    compaction writes it into an honest snapshot. The script has no header check
    (State.fresher only asks "does it unwrap": both do), and its newer_location keeps the
    copy it merged first on an (r, o) tie: B's snapshot, by name, over the remover's
    rotation snapshot (the real key under the new head), so it restores nothing. Safe
    outcome: B keeps the real wrap (or heals), every device
    verifies, and the script restores paper.txt."""
    from test_trust_removers import paper_everywhere

    from cloudguard import format as fmt

    devs = paper_everywhere(monkeypatch, tmp_path, local_remote, "original",
                            "a", "b", "c", "x")
    x = devs.pop()
    # the script's tie on (r, o) keeps the copy it merged first (snapshots by name): the
    # lagging device is the member whose id sorts first, the remover (who rewraps under the
    # new head in a snapshot) the one whose id sorts last
    b, c, a = sorted(devs, key=lambda d: d.rid)
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    with provider.showing(old) as by_x:
        x.use()
        with vault.session(str(x.folder)) as s:
            ((dot, real),) = s.state.siblings("paper.txt").items()
            while True:  # a valid wrap, under the old KEK X held, of a DEK of X's choice
                k = fmt.wrap_dek(s.ring.kek(str(real["g"])), os.urandom(32),
                                 bytes.fromhex(real["i"]))
                junk = {**real, "k": fmt.b64(k)}
                if json.dumps(junk, sort_keys=True) > json.dumps(real, sort_keys=True):
                    break
            with s.state.transaction():
                s.state.put_entry("paper.txt", dot, junk)
                s.state.ctx[x.rid] = s.state.ctx.get(x.rid, 0) + 1  # past the cutoff
            s.snapshot()
    with provider.showing({**old, **by_x}):
        with provider.hiding(*([f"data/{real['o']}"] if hide else [])):  # cannot tell
            got = b.run("pull")
            print("B pull", got.exit_code, got.output[-600:])
            assert got.exit_code == 0, got.output
        b.use()
        with vault.session(str(b.folder)) as s:
            kept = s.state.siblings("paper.txt")[dot]["k"]
        print("B keeps the real wrap:", kept == real["k"])
        compact(b)
    ok = {}
    for dev in (a, b, c):
        got = dev.run("pull")
        print(dev.name, "pull", got.exit_code, got.output[-300:])
        ok[dev.name] = dev.run("verify", "--read-data", "--json").output[-300:]
    print(json.dumps(ok, indent=1))
    for dev in (a, b):
        dev.use()
        with vault.session(str(dev.folder)) as s:
            got_e = s.state.siblings("paper.txt")[dot]
            print(dev.name, "holds g", got_e["g"][:8], "r", got_e.get("r"), "k is real",
                  got_e["k"] == real["k"], "k is junk", got_e["k"] == junk["k"],
                  "head", str(s.state.head_g)[:8])
    print("X's g", real["g"][:8])
    out = tmp_path / "script-out"
    from test_trust_attacks import run_script
    kit = tmp_path / "kit.json"
    a.cg("key", "export", str(kit), "--choose-passphrase")
    got = run_script(kit, local_remote, out)
    print("script", got.returncode, got.stderr[-300:])
    assert got.returncode == 0 and (out / "paper.txt").read_text() == "original", got.stderr
    assert kept == real["k"]


def test_LL3_a_record_without_a_start_is_dropped_and_its_process_left_running() -> None:
    """58b2b90: procs.ours answers False for a record with no int ``start``, and lock and
    daemon stop then delete the record. A daemon or mount started before the upgrade (its
    record has no start) is therefore neither stopped nor reported by `cloudguard lock`,
    which is meant to leave no process holding keys; and the record that named it is gone,
    so no later lock finds it either. Stands in for such a daemon: a child of this user,
    recorded as the old code did. Safe outcome: lock stops it, or says it could not."""
    import subprocess
    import sys
    import time

    from cloudguard import lock

    old = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                            "-m", "cloudguard", "daemon", "run"])
    try:
        time.sleep(0.3)
        record = lock.run_dir() / f"daemon-{old.pid}.json"
        record.write_text(json.dumps({"pid": old.pid, "kind": "daemon", "mountpoint": None,
                                      "folder": None}))
        got = lock.lock()
        time.sleep(0.2)
        print("lock", got, "record left", record.exists())
        assert old.poll() is not None or got.problems, "lock left the daemon running, silently"
    finally:
        old.kill()
        old.wait()


def test_LL_holds_a_lift_over_a_device_the_editor_applied_itself_keeps_readers_agreeing(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch):
    """39e09ca's cost, as the threat model states it: where the honest editor knew the
    replaced version "only through another member's snapshot", a reader that never held the
    late version keeps it live as a conflict copy. firm() drops a device unless the honest
    editor consumed that device's segment at exactly deps[dev]; any snapshot that lifted its
    vector entry one seq higher drops the device, though the editor applied the replaced
    version from its writer's own delta. Honest run: E writes paper.txt (E:1); every device
    pulls it. E writes other.txt (E:2); X pulls it, lagging B does not. A removes X; X edits
    paper.txt late (its real deps cover E:1) and compacts; B merges X's snapshot (vector
    lifted to E:2) and edits over the late text. Safe outcome: the fresh device, A, E and
    the script show what B shows. It holds at main: every reader, B too, keeps E:1 live as a
    conflict copy (the stated cost; no reader disagrees, nothing is lost)."""
    from test_trust_attacks import make_vault

    a, b, e, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "e", "x")
    e.write("paper.txt", "original")
    _push(e)
    for dev in (a, b, x):
        assert dev.run("pull").exit_code == 0
    segs = set(provider.segments())
    e.write("other.txt", "E's other file")
    _push(e)
    assert x.run("pull").exit_code == 0
    before = provider.objects()
    # what B is shown: the remote before the removal, without E's second delta
    lagging = {n: d for n, d in before.items() if not n.startswith("m/") or n in segs}
    a.cg("device", "remove", x.rid)
    with provider.showing(before) as late:
        x.write("paper.txt", LATE)
        x.cg("push")
        dname = [n for n in _names(local_remote, x.rid) if n.endswith(".d")][-1]
        kept = provider.get(f"m/{dname}")
        compact(x)
    late[f"m/{dname}"] = kept
    provider.put(f"m/{dname}", kept)
    with provider.showing({**lagging, **late}):
        got = b.run("pull")
        assert got.exit_code == 0, got.output
        assert (b.folder / "paper.txt").read_text() == LATE
        b.write("paper.txt", "B's edit over X's")
        _push(b)
    restored = _texts(script_restores(a, local_remote, tmp_path))
    print("script", json.dumps(restored, sort_keys=True))
    d = _fresh(monkeypatch, tmp_path, local_remote, a)
    fresh = _pull_all([d])["d"]
    got_all = _pull_all([b, a, e])
    print("fresh D", json.dumps(fresh, sort_keys=True))
    print("devices", json.dumps(got_all, sort_keys=True))
    shown = sorted(got_all["b"].values())
    assert sorted(fresh.values()) == shown, fresh
    assert all(sorted(v.values()) == shown for v in got_all.values()), got_all
    assert sorted(restored.values()) == shown, restored
