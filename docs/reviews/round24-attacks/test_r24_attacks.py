"""Review round 24: throwaway attack runs against d85b03f (MM1: attic.fresher keeps, of two
copies at one (r, o) naming two blobs, the one whose blob decrypts to h, else the one held),
bb3b0f6 (MM3: rotate._rewrap skips a key in a suspect stretch unless sync.key_opens) and
4026998 (MM2: procs._runs_cloudguard).
test_NN<n> fails where finding NN<n> holds (the assert states the safe outcome).
Run: PYTHONPATH=. python -m pytest -q -p no:cacheprovider docs/reviews/round24-attacks/
(needs tests/trust and tests/format on sys.path; the conftest adds them)."""

from __future__ import annotations

import os

import pytest
from test_trust_attacks import (  # noqa: F401
    compact,
    make_vault,
    provider,
)

from cloudguard import vault

__all__ = ["provider"]


def _snapshots(objects: dict[str, bytes], rid: str) -> set[str]:
    return {n for n in objects if n.startswith(f"m/{rid}-") and n.endswith(".s")}


@pytest.mark.parametrize("hide", [True, False], ids=["blob-hidden", "control-blob-served"])
def test_NN1_an_honest_pre_removal_snapshot_clears_the_stretch_and_the_junk_key_is_rewrapped(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch, hide):
    """bb3b0f6 checks a key before a rewrap only while its dot lies in a suspect stretch.
    The stretch X's late snapshot raised on lagging B is cleared by the next merge of A's
    own snapshot that covers it (format.md, "Suspect stretches", rule 3) -- including A's
    snapshot written *before* the removal, which the provider held back from B's first
    pull. Merged while data/<o> is withheld, that snapshot's real copy (old KEK, like the
    junk) is "cannot tell": B keeps X's junk wrap (4f846eb), and the stretch is gone. B's
    _rewrap_stale then rewraps the junk DEK under the head with no check (MM3 again), and
    one more withheld read when A's rotation snapshot comes keeps it. Safe outcome: B ends
    with the real key and its pull restores paper.txt."""
    from cloudguard import format as fmt
    from cloudguard.manifest.raises import in_stretch

    devs = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "c", "x")
    a, b, c, x = devs
    for dev in devs:
        assert dev.run("pull").exit_code == 0
    a.write("paper.txt", "the real paper")
    assert a.run("push").exit_code == 0
    before = _snapshots(provider.objects(), a.rid)
    compact(a)  # A's ordinary maintenance snapshot, before any removal
    pre = {n: d for n, d in provider.objects().items()
           if n in _snapshots(provider.objects(), a.rid) - before}
    print("A's pre-removal snapshot", sorted(pre))
    assert pre
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
        head = s.state.siblings("paper.txt")[dot]

    def held() -> dict:  # type: ignore[type-arg]
        b.use()
        with vault.session(str(b.folder)) as s:
            e = s.state.siblings("paper.txt")[dot]
            return {"g": "old" if e["g"] == real["g"] else "head" if e["g"] == head["g"]
                    else e["g"][:8], "k": "junk" if e["k"] == junk["k"] else "real-old"
                    if e["k"] == real["k"] else "real-head" if e["k"] == head["k"] else "other",
                    "in stretch": in_stretch(dot, s.state.raises.suspect(s.state.cuts)),
                    "b's head is old": s.ring.head.kek == real["g"]}
    lagging = {n: d for n, d in {**old, **by_x}.items() if n not in pre}
    with provider.showing(lagging):  # X's snapshot, not A's, not the removal
        got = b.run("pull")
        print("B pull 1 (lagging)", got.exit_code, got.output[-300:])
        print("B holds", held())
    shown = {**{n: d for n, d in provider.objects().items() if n not in rotation}, **pre}
    with provider.showing(shown), provider.hiding(*([blob] if hide else [])):
        got = b.run("pull")  # the removal and A's pre-removal snapshot; blob withheld
        print("B pull 2 (removal, A's old snapshot)", got.exit_code, got.output[-300:])
        print("B holds", held())
    with provider.showing(shown), provider.hiding(*([blob] if hide else [])):
        b.write("b-note.txt", "B's own note")
        got = b.run("push")
        print("B push (rewrap; A's rotation snapshot hidden)", got.exit_code, got.output[-300:])
        print("B holds", held())
    with provider.hiding(*([blob] if hide else [])):
        got = b.run("pull")
        print("B pull 3 (A's rotation snapshot, blob hidden)", got.exit_code, got.output[-300:])
        print("B holds", held())
    got = b.run("pull")
    print("B pull 4 (all served)", got.exit_code, got.output[-300:])
    got2 = b.run("pull")
    print("B pull 5", got2.exit_code, got2.output[-300:], held())
    if got2.exit_code != 0:  # diagnostic only: does a later snapshot of A's heal B?
        a.write("a-note.txt", "A's later note")
        assert a.run("push").exit_code == 0
        compact(a)
        got3 = b.run("pull")
        print("B pull 6 (after A's next snapshot)", got3.exit_code, got3.output[-200:], held())
    assert got2.exit_code == 0 and (b.folder / "paper.txt").read_text() == "the real paper"


@pytest.mark.parametrize("hide", [True, False], ids=["blob-hidden", "control-blob-served"])
def test_NN2_a_late_copy_at_a_packmates_blob_outlives_the_rotation_after_one_withheld_read(  # type: ignore[no-untyped-def]
        local_remote, provider, tmp_path, monkeypatch, hide):
    """d85b03f: of two copies at one (r, o) naming two blobs, the one whose blob decrypts
    to h, else the one held. Lagging B takes X's late copy at its packmate's blob (MM1) as
    a new dot, with no check. When A's rotation snapshot brings the real copy, the provider
    withholds data/<o> for that one load: B keeps X's copy, and nothing judges it again
    when the blob is served (the segment is consumed). The threat model says a junk copy
    stays "only on a device that took it first while the blob was withheld ... until a
    rotation's copy under the new head replaces it". Safe outcome: once everything is
    served, B's pull restores paper.txt."""
    devs = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "c", "x")
    a, b, c, x = devs
    for dev in devs:
        assert dev.run("pull").exit_code == 0
    a.write("paper.txt", "the real paper")
    a.write("zz-other.txt", "a packmate, another file")
    assert a.run("push").exit_code == 0
    for dev in (c, x):
        assert dev.run("pull").exit_code == 0
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    with provider.showing(old) as by_x:
        x.use()
        with vault.session(str(x.folder)) as s:
            ((dot, real),) = s.state.siblings("paper.txt").items()
            ((_odot, mate),) = s.state.siblings("zz-other.txt").items()
            assert (real["o"], real.get("r", 0)) == (mate["o"], mate.get("r", 0))  # one pack
            junk = {**real, **{k: mate[k] for k in ("a", "n", "i", "k", "g")}}
            with s.state.transaction():
                s.state.put_entry("paper.txt", dot, junk)
                s.state.ctx[x.rid] = s.state.ctx.get(x.rid, 0) + 1  # past the cutoff
            s.snapshot()
    blob = f"data/{real['o']}"

    def held() -> str:
        b.use()
        with vault.session(str(b.folder)) as s:
            e = s.state.siblings("paper.txt")[dot]
            return "junk" if e["a"] == mate["a"] else "real" if e["a"] == real["a"] else "?"
    with provider.showing({**old, **by_x}):
        got = b.run("pull")
        print("B pull 1 (lagging)", got.exit_code, got.output[-200:], held())
    with provider.hiding(*([blob] if hide else [])):
        got = b.run("pull")
        print("B pull 2 (removal, A's rotation snapshot)", got.exit_code, got.output[-200:],
              held())
    got = b.run("pull")
    print("B pull 3 (all served)", got.exit_code, got.output[-200:], held())
    got2 = b.run("pull")
    print("B pull 4", got2.exit_code, got2.output[-200:], held())
    if got2.exit_code != 0:  # diagnostic only: does a later snapshot of A's heal B?
        a.write("a-note.txt", "A's later note")
        assert a.run("push").exit_code == 0
        compact(a)
        got3 = b.run("pull")
        print("B pull 5 (after A's next snapshot)", got3.exit_code, got3.output[-200:], held())
    assert got2.exit_code == 0 and (b.folder / "paper.txt").read_text() == "the real paper"


@pytest.mark.parametrize(("argv", "ours"), [
    ([b"/usr/bin/python3", b"-sP", b"/usr/bin/cloudguard", b"daemon", b"run"], True),
    ([b"python3", b"-I", b"/usr/bin/cloudguard", b"mount"], True),
    ([b"python3.11", b"-X", b"dev", b"-W", b"ignore", b"-m", b"cloudguard", b"daemon"], True),
    ([b"/home/u/.local/bin/cloudguard", b"daemon", b"run"], True),
    ([b"cp", b"/home/u/cloudguard", b"/media/usb"], False),
    ([b"vim", b"/home/u/cloudguard"], False),
    ([b"python3", b"backup.py", b"/home/u/cloudguard"], False),
    ([b"python3", b"-m", b"http.server", b"-d", b"/home/u/cloudguard"], False),
    ([b"python3", b"-c", b"pass", b"/home/u/cloudguard"], False),
    ([b"python3", b"-", b"/home/u/cloudguard"], False),
])
def test_NN_holds_startless_argv_rules(argv: list[bytes], ours: bool) -> None:
    """4026998: the start-less record's argv test names the entry point (direct, through an
    interpreter with flags, or -m) and nothing that merely names a cloudguard path."""
    from cloudguard import procs

    assert procs._runs_cloudguard(argv) is ours
