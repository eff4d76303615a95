"""Review round 7, V3, V4 and V5: who removed a kept version is what this device saw itself,
never what a snapshot claims for a version it already holds; a carrier that names the
version's removers is not judged by its vector; and the remover records are bounded.

Played like tests/trust/test_trust_attacks.py: every device has its own CLOUDGUARD_HOME, and the
test is the provider, showing a device an older remote and handing on what it wrote.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_trust_attacks import (
    Dev,
    Provider,
    compact,
    make_vault,
    provider,  # noqa: F401 (a fixture)
    pulled_everywhere,
    script_restores,
)

from cloudguard import vault

__all__ = ["provider"]


def lagging_compaction(provider: Provider, dev: Dev, shown: dict[str, bytes], gone: str
                       ) -> None:
    """``dev``, shown ``shown`` (a lag), pulls (``gone`` leaves its folder) and compacts;
    its snapshot is on the remote afterwards."""
    with provider.showing(shown) as wrote:
        assert dev.run("pull").exit_code == 0
        assert not (dev.folder / gone).exists()
        compact(dev)
    assert any(n.startswith(f"m/{dev.rid}-") and n.endswith(".s") for n in wrote)


def paper_everywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, remote: str, text: str,
                     *names: str) -> list[Dev]:
    """A vault of ``names`` (X last); the first writes paper.txt and every other pulls it."""
    devs = make_vault(monkeypatch, tmp_path, remote, *names)
    devs[0].write("paper.txt", text)
    devs[0].cg("push")
    for dev in devs[1:]:
        dev.cg("pull")
    return devs


def test_a_late_snapshot_naming_itself_a_remover_does_not_bring_back_an_honest_delete(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """V4: C deletes gone.txt. X, removed by A and shown the old remote, pushes a harmless
    late write and then a snapshot whose history adds that write to gone.txt's removers. B,
    kept from seeing the removal, merges it and compacts. A union of removers would make the
    delete late once the removal shows, and bring gone.txt back in every folder. B already
    held gone.txt's removal, so it keeps the remover it saw: the delete stays."""
    a, b, c, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "c", "x")
    a.write("gone.txt", "delete me")
    a.write("keep.txt", "keep me")
    a.cg("push")
    for dev in (b, c, x):
        dev.cg("pull")
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    with provider.showing(old) as by_c:  # C, lagging, deletes: only its delta says so
        (c.folder / "gone.txt").unlink()
        c.cg("push")
    with provider.showing({**old, **by_c}):
        assert b.run("pull").exit_code == 0  # B, lagging, holds C's delete
        assert not (b.folder / "gone.txt").exists()
    with provider.showing({**old, **by_c}) as by_x:
        assert x.run("pull").exit_code == 0
        x.write("other.txt", "harmless")
        x.cg("push")
        x.use()
        with vault.session(str(x.folder)) as s:
            mine = f"{x.rid}:{s.state.ctx[x.rid]}"
            with s.state.transaction():
                (rb,) = s.state.db.execute(
                    "SELECT rb FROM attic WHERE path = 'gone.txt'").fetchone()
                s.state.db.execute("UPDATE attic SET rb = ? WHERE path = 'gone.txt'",
                                   (f"{rb} {mine}",))
            s.snapshot()
    lagging_compaction(provider, b, {**old, **by_c, **by_x}, "gone.txt")
    for dev in (b, a, c):
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        assert not (dev.folder / "gone.txt").exists(), dev.name
        assert (dev.folder / "keep.txt").read_text() == "keep me", dev.name
        assert not (dev.folder / "other.txt").exists(), dev.name
    assert not (script_restores(a, local_remote, tmp_path) / "gone.txt").exists()


def test_an_honest_compaction_covering_a_late_write_does_not_revive_its_deletes(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """V5 (a): C, lagging, applies a harmless late write of X, then deletes paper.txt and
    compacts. D, also lagging, learns of the delete only through C's snapshot, whose history
    names C's delete. Its vector covers X's late write, but a carrier that names the
    version's removers is judged by them, not by its vector: once the removal shows,
    paper.txt stays deleted on D, as on every other device (it used to come back on D only,
    and flicker)."""
    a, c, d, x = paper_everywhere(monkeypatch, tmp_path, local_remote, "delete me",
                                  "a", "c", "d", "x")
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    with provider.showing(old) as by_x:
        x.write("other.txt", "harmless")
        x.cg("push")
    with provider.showing({**old, **by_x}) as by_c:
        assert c.run("pull").exit_code == 0
        assert (c.folder / "other.txt").exists()
        (c.folder / "paper.txt").unlink()
        c.cg("push")
        compact(c)
    # compacting deleted C's delta: D learns of the delete only through C's snapshot
    assert [n for n in by_c if n.startswith(f"m/{c.rid}-")] == [
        n for n in by_c if n.startswith(f"m/{c.rid}-") and n.endswith(".s")] != []
    with provider.showing({**old, **by_x, **by_c}):
        assert d.run("pull").exit_code == 0
        assert not (d.folder / "paper.txt").exists()
    time.sleep(0.01)
    for dev in (d, c, a):
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        assert not (dev.folder / "paper.txt").exists(), dev.name
        assert not (dev.folder / "other.txt").exists(), dev.name
    assert not (script_restores(a, local_remote, tmp_path) / "paper.txt").exists()



def test_a_late_snapshot_cannot_hand_a_lagging_device_an_honest_delete(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 8, W2: A writes new.txt. X, removed by A and shown the old remote, writes
    a snapshot that drops it and names an honest dot of C as its remover. B, lagging, never
    applied A's write: it takes the row in as X's snapshot wrote it, and compacts. The row
    records X's snapshot as its carrier too, so once the removal shows new.txt comes back on
    B, and A's copy is never dropped by B's snapshot."""
    def drop_naming_c(s: Any, c: Dev, dot: str, entry: dict[str, object]) -> None:
        honest = f"{c.rid}:{s.state.ctx[c.rid]}"
        s.state._drop("new.txt", dot)
        s.state.to_attic("new.txt", dot, entry, int(time.time()), honest)

    (a, b, c, _x), lagging, _delta = x_drops_a_new_file(
        monkeypatch, tmp_path, local_remote, provider, drop_naming_c)
    lagging_compaction(provider, b, lagging, "new.txt")
    pulled_everywhere([b, a, c, b], "new.txt", "A's new file", local_remote, tmp_path)


def test_a_late_move_to_junk_is_undone_though_the_place_before_is_hidden(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 8, W6: X, removed, moves A's paper.txt to an object of junk late; B,
    lagging, applies the move. When the removal shows, the provider hides the real object
    from B. A late move is not undone to a place that is gone, but the junk place is kept only
    if it decrypts to the signed hash: it does not, so B goes back to the real place, reads
    it once it is shown again, and its snapshots never spread the junk place."""
    from test_trust_attacks import junk_mover, x_acts_late

    moved: dict[str, str] = {}
    (a, b, _x), late = x_acts_late(monkeypatch, tmp_path, local_remote, provider,
                                   junk_mover(provider, moved))
    junk = moved["junk"]
    with provider.showing(late):
        assert b.run("pull").exit_code == 0  # B, lagging, applies the move
        b.use()
        with vault.session(str(b.folder)) as s:
            assert s.state.siblings("paper.txt")[moved["dot"]]["o"] == junk
    with provider.hiding(f"data/{moved['o']}"):
        b.run("pull")  # the removal shows; the real object does not
        compact(b)
        b.use()
        with vault.session(str(b.folder)) as s:
            assert s.state.siblings("paper.txt")[moved["dot"]]["o"] == moved["o"]
    for dev in (b, a):
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        assert (dev.folder / "paper.txt").read_text() == "original", dev.name
        assert dev.json("verify", "--read-data")["ok"], dev.name


def test_a_late_delete_survives_the_reencryption_that_answers_the_theft(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 8, W1: A answers the theft with `device remove X --reencrypt`, which moves
    paper.txt to a new object, deletes the old one and ends the old key. X, shown the old
    remote, deletes paper.txt; B, lagging, applies that and compacts. The row B's snapshot
    holds names the deleted object and the ended key: deciding the revival by that stale row
    dropped the real, re-encrypted paper.txt on every device. It comes back by its dot, and
    the re-encrypted copy wins."""
    a, b, c, x = paper_everywhere(monkeypatch, tmp_path, local_remote, "original",
                                  "a", "b", "c", "x")
    old = provider.objects()
    got = a.run("device", "remove", x.rid, "--reencrypt")
    assert got.exit_code == 0, got.output
    with provider.showing(old) as by_x:
        (x.folder / "paper.txt").unlink()
        x.cg("push")
    lagging_compaction(provider, b, {**old, **by_x}, "paper.txt")
    pulled_everywhere([c, b, a, c], "paper.txt", "original", local_remote, tmp_path)
    for dev in (a, c):
        assert dev.json("verify", "--read-data")["ok"], dev.name


@pytest.mark.parametrize("junk_kind", ["junk-dek", "no-wrap", "no-wrap-b-spreads-it"])
def test_a_late_rewrap_to_a_junk_key_never_wins(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, junk_kind: str) -> None:
    """Review round 8, W7: X, removed, writes a late snapshot whose copy of A's paper.txt sits
    at the same place but wraps a junk DEK (a valid wrap under the old key, ground until it
    wins the location tie-break). B, lagging, merges it. Two copies at one place whose DEKs
    differ are judged by the blob's key commitment: the real one stays, on B and on everyone
    who merges B's snapshot. Round 21, KK2: the same with bytes that are no wrap at all,
    which once left it to the tie-break (and the recovery script then restored nothing); and
    where B (an older client) keeps the junk and its compaction spreads it, devices and the
    script keep the copy that unwraps."""
    a, b, c, x = paper_everywhere(monkeypatch, tmp_path, local_remote, "original",
                                  "a", "b", "c", "x")
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    dot, real, junk, by_x = late_copy(provider, x, old, "paper.txt",
                                      junk_key(junk_kind.partition("-b-")[0]))
    with provider.showing({**old, **by_x}) as by_b:
        assert b.run("pull").exit_code == 0
        b.use()
        with vault.session(str(b.folder)) as s:
            assert s.state.siblings("paper.txt")[dot]["k"] == real["k"]
        if junk_kind == "no-wrap-b-spreads-it":
            keeps_as_an_older_client(b, "paper.txt", dot, junk)
        else:
            compact(b)
    assert any(n.startswith(f"m/{b.rid}-") and n.endswith(".s") for n in by_b)
    for dev in (a, b, c):
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        assert dev.json("verify", "--read-data")["ok"], dev.name
    assert (script_restores(a, local_remote, tmp_path) / "paper.txt").read_text() == "original"


def test_a_junk_wrap_taken_while_the_blob_was_withheld_never_wins(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 22, LL2: W7's junk (a valid wrap of a DEK of X's choice), with the blob
    withheld while lagging B merges X's late snapshot, so B cannot read the header: B kept
    the tie-break's winner (ground by X) and its compaction spread it; the script, which
    judged copies only by their unwrap, kept the one it merged first (B's snapshot sorts
    before the remover's) and restored nothing. Now a device that cannot tell keeps the copy
    it holds, and the script reads the blob's header too."""
    from test_trust_attacks import run_script

    devs = paper_everywhere(monkeypatch, tmp_path, local_remote, "original",
                            "a", "b", "c", "x")
    x = devs.pop()
    b, c, a = sorted(devs, key=lambda d: d.rid)  # B's snapshot sorts first, the remover last
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    dot, real, junk, by_x = late_copy(provider, x, old, "paper.txt", junk_key())
    with provider.showing({**old, **by_x}):
        with provider.hiding(f"data/{real['o']}"):  # B cannot read the header now
            got = b.run("pull")
            assert got.exit_code == 0, got.output
        b.use()
        with vault.session(str(b.folder)) as s:
            assert s.state.siblings("paper.txt")[dot]["k"] == real["k"]
        keeps_as_an_older_client(b, "paper.txt", dot, junk)
    for dev in (a, b, c):
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        assert dev.json("verify", "--read-data")["ok"], dev.name
    kit = tmp_path / "kit.json"
    a.cg("key", "export", str(kit), "--choose-passphrase")
    out = tmp_path / "script-out"
    got = run_script(kit, local_remote, out)
    assert got.returncode == 0 and (out / "paper.txt").read_text() == "original", got.stderr


def test_a_late_copy_at_a_packmates_blob_stops_no_one(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 23, MM1: small files share a pack, so X (removed) gives paper.txt's
    version, in its late snapshot, the packmate's a, n, i, k and g (none is signed). Lagging
    B never held paper.txt: it takes X's copy as a new version and compacts. Two copies at
    one place naming two blobs were refused: every device's load, and the script, stopped for
    good. Now the copy whose blob decrypts to the version's content wins."""
    from test_trust_attacks import run_script

    devs = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "c", "x")
    b, x, c, a = sorted(devs, key=lambda d: d.rid)  # B's snapshot merges first in the script
    for dev in devs:
        assert dev.run("pull").exit_code == 0
    a.write("paper.txt", "the real paper")
    a.write("zz-other.txt", "a packmate, another file")
    assert a.run("push").exit_code == 0
    for dev in (c, x):
        assert dev.run("pull").exit_code == 0
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    kit = tmp_path / "kit.json"
    a.cg("key", "export", str(kit), "--choose-passphrase")

    def at_the_packmate(s: Any, real: dict[str, Any]) -> dict[str, Any]:
        ((_odot, mate),) = s.state.siblings("zz-other.txt").items()
        assert (real["o"], real.get("r", 0)) == (mate["o"], mate.get("r", 0))  # one pack
        return {**real, **{k: mate[k] for k in ("a", "n", "i", "k", "g")}}
    dot, _real, junk, by_x = late_copy(provider, x, old, "paper.txt", at_the_packmate)
    with provider.showing({**old, **by_x}):  # B: the data and X's snapshot, not the removal
        b.run("pull")  # paper.txt fails its check there: X's copy is all B has
        b.use()
        with vault.session(str(b.folder)) as s:
            assert s.state.siblings("paper.txt")[dot]["a"] == junk["a"]
        compact(b)
    for dev in (a, c, b):
        got = dev.run("pull")
        assert got.exit_code == 0, (dev.name, got.output)
        assert (dev.folder / "paper.txt").read_text() == "the real paper", dev.name
    out = tmp_path / "script-out"
    got = run_script(kit, local_remote, out)
    assert got.returncode == 0, got.stderr[-600:]
    assert (out / "paper.txt").read_text() == "the real paper"


def test_a_junk_key_taken_during_a_lag_is_never_rewrapped_under_the_head(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 23, MM3: lagging B takes paper.txt, a version it never held, from X's
    late snapshot with W7's junk wrap. B then sees the removal while the provider hides A's
    rotation snapshot and the blob: B rewrapped the junk DEK under the head, so the head
    tie-break could no longer tell, and one more withheld read kept it for good. A key taken
    on a removed member's word is now rewrapped only once its blob's header is checked."""
    a, b, c, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "c", "x")
    for dev in (a, b, c, x):
        assert dev.run("pull").exit_code == 0
    a.write("paper.txt", "the real paper")
    assert a.run("push").exit_code == 0
    for dev in (c, x):
        assert dev.run("pull").exit_code == 0
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    rotation = [n for n, d in provider.objects().items()
                if n.startswith(f"m/{a.rid}-") and n.endswith(".s") and old.get(n) != d]
    _dot, real, _junk, by_x = late_copy(provider, x, old, "paper.txt", junk_key())
    blob = f"data/{real['o']}"
    with provider.showing({**old, **by_x}):
        b.run("pull")  # paper.txt fails its check there: X's copy is all B has
    shown = {n: d for n, d in provider.objects().items() if n not in rotation}
    with provider.showing(shown), provider.hiding(blob):
        b.write("b-note.txt", "B's own note")
        assert b.run("push").exit_code == 0
    with provider.hiding(blob):
        b.run("pull")
    b.run("pull")
    got = b.run("pull")
    assert got.exit_code == 0, got.output
    assert (b.folder / "paper.txt").read_text() == "the real paper"


def c_wrote_and_all_pulled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, remote: str
                           ) -> list[Dev]:
    """Devices A, B, C and X; C wrote c.txt and every other device pulled it."""
    a, b, c, x = make_vault(monkeypatch, tmp_path, remote, "a", "b", "c", "x")
    c.write("c.txt", "from C")
    c.cg("push")
    for dev in (a, b, x):
        dev.cg("pull")
    return [a, b, c, x]


def late_snapshot(provider: Provider, x: Dev, shown: dict[str, bytes], path: str,
                  drop: Callable[[Any, str, dict[str, Any]], None]) -> dict[str, bytes]:
    """X, shown ``shown`` (no removal), writes a snapshot after ``drop`` (given its session,
    the dot and the entry) took ``path`` out of its state; returns what it wrote."""
    with provider.showing(shown) as by_x:
        x.use()
        with vault.session(str(x.folder)) as s:
            with s.state.transaction():
                ((dot, entry),) = s.state.siblings(path).items()
                drop(s, dot, entry)
            s.snapshot()
    return by_x


def late_copy(provider: Provider, x: Dev, shown: dict[str, bytes], path: str,
              change: Callable[[Any, dict[str, Any]], dict[str, Any]]
              ) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, bytes]]:
    """X, shown ``shown``, writes a late snapshot whose copy of ``path``'s one version is
    ``change(session, entry)``; returns the dot, the real entry, X's copy and what X wrote."""
    got: dict[str, Any] = {}

    def put(s: Any, dot: str, entry: dict[str, Any]) -> None:
        got.update(dot=dot, real=dict(entry), junk=change(s, entry))
        s.state.put_entry(path, dot, got["junk"])
        s.state.ctx[x.rid] = s.state.ctx.get(x.rid, 0) + 1  # past the cutoff
    by_x = late_snapshot(provider, x, shown, path, put)
    return got["dot"], got["real"], got["junk"], by_x


def junk_key(kind: str = "junk-dek") -> Callable[[Any, dict[str, Any]], dict[str, Any]]:
    """X's copy with another ``k``: a valid wrap of a DEK of its choice under the KEK it held
    (W7) or bytes that are no wrap (KK2), ground until it wins the JSON tie-break."""
    import json
    import os

    from cloudguard import format as fmt

    def change(s: Any, real: dict[str, Any]) -> dict[str, Any]:
        while True:
            k = fmt.wrap_dek(s.ring.kek(str(real["g"])), os.urandom(32),
                             bytes.fromhex(real["i"])) if kind == "junk-dek" \
                else os.urandom(len(fmt.unb64(real["k"])))
            junk = {**real, "k": fmt.b64(k)}
            if json.dumps(junk, sort_keys=True) > json.dumps(real, sort_keys=True):
                return junk
    return change


def keeps_as_an_older_client(dev: Dev, path: str, dot: str, junk: dict[str, Any]) -> None:
    """``dev`` holds X's copy, as a client from before the fix did, and compacts."""
    dev.use()
    with vault.session(str(dev.folder)) as s:
        with s.state.transaction():
            s.state.put_entry(path, dot, junk)
    compact(dev)


def x_drops_a_new_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, remote: str,
                       provider: Provider,
                       drop: Callable[[Any, Dev, str, dict[str, Any]], None]
                       ) -> tuple[list[Dev], dict[str, bytes], list[str]]:
    """C writes c.txt, then A writes new.txt; X, removed by A and shown the old remote, writes
    a late snapshot after ``drop`` (given X's session, C, the dot and the entry) took new.txt
    out of its state. Returns the devices, the remote a lagging device is shown (X's
    snapshot, not A's delta) and the name of A's delta."""
    a, b, c, x = c_wrote_and_all_pulled(monkeypatch, tmp_path, remote)
    before_new = provider.objects()
    a.write("new.txt", "A's new file")
    a.cg("push")
    x.cg("pull")
    a_delta = [n for n in provider.objects() if n not in before_new and n.startswith("m/")]
    assert a_delta
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    by_x = late_snapshot(provider, x, old, "new.txt", lambda s, dot, e: drop(s, c, dot, e))
    lagging = {n: v for n, v in {**old, **by_x}.items() if n not in a_delta}
    return [a, b, c, x], lagging, a_delta


def _no_row(s: Any, _c: Dev, dot: str, _entry: dict[str, Any]) -> None:
    """Only X's vector says new.txt is gone: no row, live or kept (review round 8, W2 (c))."""
    s.state._drop("new.txt", dot)


def test_a_late_vector_covering_a_write_never_held_is_no_delete(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 8, W2 (c): X's late snapshot covers A's new.txt in its vector and names it
    nowhere. B, lagging, never applied A's write: the vector made B count it as seen and
    deleted, so A's delta could not add it, and B's snapshot (clean once the removal showed)
    dropped new.txt on every device. A raise of the vector by a late snapshot is undone once
    the removal shows, and a snapshot that covered a late write drops nothing it does not
    name as removed."""
    (a, b, c, _x), lagging, _delta = x_drops_a_new_file(
        monkeypatch, tmp_path, local_remote, provider, _no_row)
    lagging_compaction(provider, b, lagging, "new.txt")
    compact(b)  # the removal shows first: B's snapshot is clean, and must not drop it
    pulled_everywhere([c, a, b, c, a], "new.txt", "A's new file", local_remote, tmp_path)


def test_a_late_vector_does_not_keep_out_a_write_that_comes_after_it(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """W2 (c), the order the review asked for: B, lagging, merges X's late snapshot first and
    A's own snapshot (which holds new.txt) after it; A's delta is gone by then. The late
    vector kept A's version out of B. Once the removal shows, B takes it, and B's snapshots
    never drop it anywhere."""
    (a, b, c, _x), lagging, a_delta = x_drops_a_new_file(
        monkeypatch, tmp_path, local_remote, provider, _no_row)
    with provider.showing(lagging):
        assert b.run("pull").exit_code == 0
        assert not (b.folder / "new.txt").exists()
    with provider.showing({n: v for n, v in provider.objects().items() if n not in a_delta}):
        compact(a)  # A's snapshot holds new.txt; its delta is gone
        with provider.showing({**lagging, **{n: v for n, v in provider.objects().items()
                                              if n.startswith(f"m/{a.rid}-")}}):
            assert b.run("pull").exit_code == 0  # still lagging: X's word still counts
        assert b.run("pull").exit_code == 0  # the removal shows
        assert (b.folder / "new.txt").read_text() == "A's new file"
        compact(b)
    pulled_everywhere([c, a, b], "new.txt", "A's new file", local_remote, tmp_path)


def _row_dated_1970(s: Any, _c: Dev, dot: str, entry: dict[str, Any]) -> None:
    """X drops new.txt and states a history row for it dated 1970, its own late dot as the
    remover (review round 10, Y2)."""
    s.state._drop("new.txt", dot)
    own = s.binding.device
    s.state.to_attic("new.txt", dot, entry, 0, f"{own}:{s.state.ctx.get(own, 0) + 1}")


def test_a_late_history_row_forgotten_at_once_raises_no_floor(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 10, Y2: B, lagging, takes in X's row for new.txt, dated 1970, and its
    next push forgets it at once (older than keep_days). Had that raised B's forget floor over
    A's write, A's own snapshot holding new.txt would not bring it to B but would clear B's
    suspect stretch, and B's next snapshot would drop new.txt on every device."""
    (a, b, c, _x), lagging, a_delta = x_drops_a_new_file(
        monkeypatch, tmp_path, local_remote, provider, _row_dated_1970)
    with provider.showing(lagging):
        assert b.run("pull").exit_code == 0
        assert not (b.folder / "new.txt").exists()
        b.write("b.txt", "B's file")
        assert b.run("push").exit_code == 0  # maintenance forgets the 1970 row
    b.use()
    with vault.session(str(b.folder)) as s:
        assert s.state.raises.floor() == {}
        assert not any(p == "new.txt" for p, *_ in s.state.attic())
    with provider.showing({n: v for n, v in provider.objects().items() if n not in a_delta}):
        compact(a)  # A's snapshot holds new.txt; its delta is gone
        assert b.run("pull").exit_code == 0  # the removal shows
        assert (b.folder / "new.txt").read_text() == "A's new file"
        compact(b)
    pulled_everywhere([c, a, b], "new.txt", "A's new file", local_remote, tmp_path)


def test_a_suspect_stretch_does_not_hide_a_rollback_of_the_writers_own_segments(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 10, Y3: X, removed by A, covers C's c2.txt in its late snapshot and omits
    it; B, lagging, merges that snapshot. Once the removal shows, B's stretch over C's write
    is suspect (A's snapshot does not cover it, and C has written no snapshot since), so B's
    snapshots claim C only below it. B then reads C's next push, made while C was kept from
    the removal, from C's own delta. The provider hiding that delta from B's rebuild is a
    rollback (exit 3): the vector B stores as seen keeps what it read from C itself."""
    a, b, c, x = c_wrote_and_all_pulled(monkeypatch, tmp_path, local_remote)
    before = provider.objects()
    c.write("c2.txt", "C's second file")
    c.cg("push")
    x.cg("pull")
    pre = provider.objects()  # C's view until the end: no removal
    with provider.showing(before):
        a.cg("device", "remove", x.rid)  # A never saw c2.txt
    by_x = late_snapshot(provider, x, pre, "c2.txt", lambda s, dot, _e: s.state._drop(
        "c2.txt", dot))
    with provider.showing({**before, **by_x}):
        assert b.run("pull").exit_code == 0
        assert not (b.folder / "c2.txt").exists()
    assert b.run("pull").exit_code == 0  # the removal shows
    assert (b.folder / "c2.txt").read_text() == "C's second file"
    with provider.showing(pre) as by_c:
        c.write("c3.txt", "C's next file")
        c.cg("push")
    later = [n for n in by_c if n.startswith("m/")]
    assert later and not any(n.endswith(".s") for n in later)
    assert b.run("pull").exit_code == 0
    assert (b.folder / "c3.txt").read_text() == "C's next file"
    b.use()
    with vault.session(str(b.folder)) as s:
        assert s.state.honest()[c.rid] < s.state.ctx[c.rid]  # still suspect
    with provider.showing({n: v for n, v in provider.objects().items() if n not in later}):
        got = b.run("verify")
        assert got.exit_code == 3, got.output
        assert "rollback" in got.output


def test_a_claim_taken_in_during_a_lag_stops_counting_once_the_removal_shows(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 10, Y1 (c) and N11: X, removed by A, writes a late snapshot claiming
    10^12 - 1 writes of B. B, kept from the removal, takes the claim in: it has no segment
    number left and stops with advice. Once the removal shows, the claim is a removed
    member's word, which every reader treats as suspect, so B numbers its segments as before
    and its new file reaches A."""
    from cloudguard import manifest as mf

    a, b, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "x")
    b.write("b.txt", "from b")
    b.cg("push")
    for dev in (a, x):
        dev.cg("pull")
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    with provider.showing(old) as by_x:
        x.use()
        with vault.session(str(x.folder)) as s:
            with s.state.transaction():
                s.state.ctx[b.rid] = mf.MAX_SEQ
            s.snapshot()
    b.write("new.txt", "B's new file")
    with provider.showing({**old, **by_x}):
        got = b.run("pull")
        assert got.exit_code == 0, got.output
        assert f"claims {mf.MAX_SEQ} segments of this device" in got.output
        got = b.run("push")
        assert got.exit_code == 3 and "no segment number left" in got.output, got.output
    got = b.run("push")  # the removal shows
    assert got.exit_code == 0, got.output
    assert not any(n.startswith(f"m/{b.rid}-00000") and int(n[19:31]) > 1000
                   for n in provider.segments())
    a.cg("pull")
    assert (a.folder / "new.txt").read_text() == "B's new file"
    assert (a.folder / "b.txt").read_text() == "from b"


def test_a_kept_hearsay_claim_does_not_silently_cover_a_rollback(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 11, Z2 (a): X's late snapshot claims 10^6 writes of D; B, lagging, takes
    the claim in and compacts, and its snapshot stays listed. Every later rebuild merges it,
    so its vector reaches any seq of D: the provider hiding D's newer segments from A's
    `verify` passed silently. A rebuild now checks what it read from D itself, and reports
    the shortfall."""
    a, b, d, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "d", "x")
    d.write("d1.txt", "D's first file")
    d.cg("push")
    for dev in (a, b, x):
        dev.cg("pull")
    old = provider.objects()
    a.cg("device", "remove", x.rid)

    def claim(s: Any, _dot: str, _entry: dict[str, Any]) -> None:
        s.state.ctx[d.rid] = 10**6

    by_x = late_snapshot(provider, x, old, "d1.txt", claim)
    with provider.showing({**old, **by_x}) as by_b:
        assert b.run("pull").exit_code == 0
        compact(b)
    assert any(n.startswith(f"m/{b.rid}-") and n.endswith(".s") for n in by_b)
    before = provider.objects()
    d.write("d2.txt", "D's second file")
    d.cg("push")
    later = [n for n in provider.objects() if n not in before and n.startswith("m/")
             and n.endswith(".d")]  # the delta with d2.txt (not D's snapshot before it)
    got = a.run("pull")
    assert got.exit_code == 0, got.output
    assert (a.folder / "d2.txt").read_text() == "D's second file"
    shown = {n: v for n, v in provider.objects().items() if n not in later}
    # the provider keeps B's snapshot in view, whether or not a compaction deleted it
    shown |= {n: v for n, v in by_b.items() if n.startswith(f"m/{b.rid}-")}
    with provider.showing(shown):
        got = a.run("verify")
        assert got.exit_code == 0, got.output
        assert "is read from its own segments up to" in got.output, got.output
