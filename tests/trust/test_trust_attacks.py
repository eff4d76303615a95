"""The attacks of issue 7, each played against real vaults on a local remote.

Every device has its own CLOUDGUARD_HOME. The test plays the provider: between commands it
edits, hides and restores objects in the remote folder, and forges objects from
docs/format.md with keys an attacker really has (a fresh key of its own, or a removed or
compromised device's real secret read from its device key file). Each case ends in exit 3 or
a refusal, with nothing applied, nothing written and nothing encrypted under a key the
attacker holds.

Keys are cached per process by account (``<vault>/<device>``), so devices never share a cached
key; :meth:`Dev.use` drops the cache anyway, as a separate process would start without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from helpers import cg, tree

from cloudguard import chain, keys, membership, state, vault
from cloudguard import format as fmt
from cloudguard import manifest as mf
from cloudguard.chain import Commit, Secret
from cloudguard.cli import main
from cloudguard.errors import IntegrityError
from cloudguard.layout import descriptor_hash
from cloudguard.membership import View
from cloudguard.ops import maintain

# --- devices and the provider -------------------------------------------------------------


class Dev:
    """One device: its own CLOUDGUARD_HOME and folder."""

    def __init__(self, mp: pytest.MonkeyPatch, root: Path, name: str) -> None:
        self.mp, self.name = mp, name
        self.home = root / f"home-{name}"
        self.home.mkdir(mode=0o700)
        self.folder = root / name
        self.rid = ""

    def use(self) -> None:
        self.mp.setenv("CLOUDGUARD_HOME", str(self.home))
        keys.drop_cached_keys()

    def cg(self, *args: str, code: int = 0) -> Result:
        self.use()
        return cg(*args, "--folder", str(self.folder), code=code)

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self.cg(*args, "--json", code=code).stdout)

    def run(self, *args: str) -> Result:
        """Any exit code; the caller looks at it."""
        self.use()
        return CliRunner().invoke(main, [*args, "--folder", str(self.folder)],
                                  catch_exceptions=False)

    def write(self, rel: str, text: str) -> None:
        (self.folder / rel).write_text(text)

    def secret(self) -> Secret:
        """The device's real member secret, read from its device key file."""
        self.use()
        b = state.find_binding(str(self.folder))
        return keys.DeviceKey(b.keystore, b.key_account, b.dir / "device.key").load()

    def head(self) -> str:
        rows = self.json("key", "list")
        return str(rows[-1]["commit"]) if rows else ""


class Provider:
    """Reads and writes the remote folder at will."""

    def __init__(self, remote: str) -> None:
        self.root = Path(remote)

    def objects(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.root)): p.read_bytes()
                for p in self.root.rglob("*") if p.is_file()}

    def restore(self, snap: dict[str, bytes]) -> None:
        """Show exactly ``snap``: the remote as it was when it was taken."""
        for name in self.objects():
            if name not in snap:
                (self.root / name).unlink()
        for name, data in snap.items():
            self.put(name, data)

    def put(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def get(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def commit_names(self) -> list[str]:
        return sorted(n for n in self.objects() if n.startswith("keys/") and not n.endswith(".k"))

    def segments(self) -> dict[str, bytes]:
        return {n: d for n, d in self.objects().items() if n.startswith("m/")}

    @contextmanager
    def hiding(self, *names: str) -> Iterator[None]:
        """Leave ``names`` out of every listing while the block runs."""
        kept = {n: self.get(n) for n in names}
        for n in names:
            (self.root / n).unlink()
        try:
            yield
        finally:
            for n, data in kept.items():
                self.put(n, data)

    @contextmanager
    def showing(self, old: dict[str, bytes]) -> Iterator[dict[str, bytes]]:
        """Show a device an older remote; afterwards the newer one comes back, plus every
        object the device wrote meanwhile (yielded when the block ends)."""
        current = self.objects()
        self.restore(old)
        written: dict[str, bytes] = {}
        try:
            yield written
        finally:
            after = self.objects()
            written.update({n: d for n, d in after.items() if old.get(n) != d})
            self.restore(current)
            for n, d in written.items():
                self.put(n, d)

    def view(self, vault_id: str) -> View:
        names = [n for n in self.objects() if n.startswith("keys/")]
        return membership.verify(vault_id, names, self.get, set(),
                                 descriptor_hash(self.get("cloudguard.json")))

    def decode(self, name: str, vault_id: str) -> Commit:
        return chain.decode_commit(self.get(name), name, vault_id)


def forge(p: Provider, view: View, parent: Commit, signer: Secret, signer_rid: str,
          action: str, members: dict[str, chain.MemberKeys], removed: dict[str, chain.Cutoff],
          kek: bytes, epoch: int, write: bool = True) -> Commit:
    """A commit built to the spec on ``parent``, signed by ``signer``, with its key object."""
    view.head = parent
    commit, data, keyobj = chain.build(view, view.vault_id, signer, signer_rid, action, members,
                                       removed, kek, epoch, {r: "forged" for r in members}, {},
                                       parent.descriptor, keys.now_iso())
    if write:
        p.put(commit.name + ".k", keyobj)
        p.put(commit.name, data)
    return commit


def backdated_removal(p: Provider, view: View, parent: Commit, signer: Secret,
                      signer_rid: str, target: str) -> Commit:
    """``signer`` (a removed member) removes ``target`` on the old ``parent``, with cutoff 0:
    nothing of the target vouched."""
    removed = {**parent.removed, target: chain.Cutoff(parent.members[target].s, 0, None)}
    return forge(p, view, parent, signer, signer_rid, "remove",
                 {r: k for r, k in parent.members.items() if r != target}, removed,
                 os.urandom(32), parent.epoch + 1)


def kek_via(p: Provider, view: View, commit: Commit, rid: str, secret: Secret) -> bytes:
    """The KEK of ``commit`` as member ``rid`` opens it (attackers use their own slots)."""
    return chain.open_keys(view, commit, p.get(commit.name + ".k"), rid, secret.x)


def heads_of(p: Provider, rid: str) -> dict[str, str]:
    """Segment name -> id of the head commit its header names, for one writer."""
    return {n: fmt.segment_head(d)[1] for n, d in p.segments().items()
            if n.startswith(f"m/{rid}-")}


def assert_nothing_under(p: Provider, vault_id: str, kek: bytes, commit_id: str) -> None:
    """No segment names the attacker's commit, and none opens under the attacker's KEK."""
    for name, data in p.segments().items():
        assert fmt.segment_head(data)[1] != commit_id, name
        with pytest.raises(IntegrityError):
            fmt.open_segment(kek, vault_id, name, data)


def make_vault(mp: pytest.MonkeyPatch, root: Path, remote: str, *names: str) -> list[Dev]:
    """The first device creates the vault; each other one enrols by approval and pulls."""
    devs = [Dev(mp, root, n) for n in names]
    first = devs[0]
    first.folder.mkdir()
    first.write("doc.txt", "original")
    first.use()
    made = json.loads(cg("init", str(first.folder), "--remote", remote, "--name", first.name,
                         "--json").stdout)
    first.rid = made["device"]
    first.cg("push")
    for dev in devs[1:]:
        dev.use()
        req = json.loads(cg("clone", remote, str(dev.folder), "--vault-code",
                            made["vault_code"], "--name", dev.name, "--json").stdout)
        dev.rid = req["device"]
        first.cg("device", "approve", req["fingerprint"], "--yes")
        dev.cg("pull")
    return devs


def compact(dev: Dev) -> None:
    """The device writes a snapshot of its state now (as maintenance would)."""
    dev.use()
    with vault.session(str(dev.folder)) as s:
        s.snapshot()


def pulled_everywhere(devs: list[Dev], path: str, text: str, remote: str,
                      tmp_path: Path) -> None:
    """Every device pulls cleanly and holds ``text`` at ``path``; so does the recovery
    script's restore of the remote as the first device sees it."""
    for dev in devs:
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        assert (dev.folder / path).read_text() == text, dev.name
    assert (script_restores(devs[0], remote, tmp_path) / path).read_text() == text


def vault_id_of(dev: Dev) -> str:
    return str(dev.json("device", "list")["vault"])


@pytest.fixture
def provider(local_remote: str) -> Provider:
    return Provider(local_remote)


# --- provider-only commits: slip-in and generation skip -----------------------------------


@pytest.mark.parametrize("signer", ["own-id", "member-id"])
def test_provider_slip_in_commit_is_refused(local_remote: str, provider: Provider,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            signer: str) -> None:
    """The provider signs a commit with its own key (under its own id, or claiming a member's
    id) that wraps a KEK it chose to every device and adds itself."""
    a, b = make_vault(monkeypatch, tmp_path, local_remote, "a", "b")
    vid = vault_id_of(a)
    view = provider.view(vid)
    head = view.head
    evil, evil_rid = Secret.generate(), keys.new_member_id()
    kek = os.urandom(32)
    members = {**head.members, evil_rid: evil.public("device")}
    forged = forge(provider, view, head, evil, evil_rid if signer == "own-id" else a.rid,
                   "rotate", members, dict(head.removed), kek, head.epoch + 1)
    b.write("new.txt", "must never be sealed under the provider's KEK")
    before, b_tree = provider.objects(), tree(b.folder)
    for dev in (b, a):
        got = dev.run("push")
        assert got.exit_code == 3, got.output
        assert forged.name in got.output
    assert provider.objects() == before, "something was written"
    assert tree(b.folder) == b_tree
    assert_nothing_under(provider, vid, kek, forged.id)


@pytest.mark.parametrize("shown", ["both", "skip-only"])
def test_generation_skip_is_never_used(local_remote: str, provider: Provider, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch, shown: str) -> None:
    """The provider writes a commit two positions ahead, wrapping its KEK to the device. With
    the forged link listed: exit 3 naming it. Without it (only the skip is listed): the
    commit is deferred, and the device keeps writing under its own verified head."""
    a, b = make_vault(monkeypatch, tmp_path, local_remote, "a", "b")
    vid = vault_id_of(a)
    view = provider.view(vid)
    head = view.head
    evil, evil_rid = Secret.generate(), keys.new_member_id()
    kek1, kek2 = os.urandom(32), os.urandom(32)
    members = {**head.members, evil_rid: evil.public("device")}
    link = forge(provider, view, head, evil, evil_rid, "rotate", members, dict(head.removed),
                 kek1, head.epoch + 1, write=shown == "both")
    skip = forge(provider, view, link, evil, evil_rid, "rotate", members, dict(head.removed),
                 kek2, head.epoch + 2)
    b.write("new.txt", "after the skip")
    if shown == "both":
        before = provider.objects()
        got = b.run("push")
        assert got.exit_code == 3, got.output
        assert link.name in got.output
        assert provider.objects() == before
    else:
        got = b.run("push")
        assert got.exit_code == 0, got.output
        assert "deferred" in got.output and skip.name in got.output
        written = heads_of(provider, b.rid)
        assert written and set(written.values()) == {head.id}
        a.cg("pull")
        assert (a.folder / "new.txt").read_text() == "after the skip"
    for kek, cid in ((kek1, link.id), (kek2, skip.id)):
        assert_nothing_under(provider, vid, kek, cid)


# --- a removed device writing ---------------------------------------------------------------


@pytest.mark.parametrize("reencrypt", [False, True], ids=["plain", "reencrypt"])
def test_removed_device_writes_are_not_applied(local_remote: str, provider: Provider,
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               reencrypt: bool) -> None:
    """X is removed; its real client is refused. The provider then shows X the remote as it
    was before the removal (old key objects included, restored after --reencrypt deleted
    them); X's client pushes edits, a deletion and a setuid file; A and B apply none of it."""
    a, b, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "x")
    x.write("x.txt", "x wrote this while a member")
    x.cg("push")
    a.cg("pull")
    b.cg("pull")
    old = provider.objects()
    a.cg("device", "remove", x.rid, *(["--reencrypt"] if reencrypt else []))
    x.write("doc.txt", "rewritten by the removed device")
    refused = x.run("push")
    assert refused.exit_code == 1 and "removed" in refused.output, refused.output
    with provider.showing(old) as written:
        (x.folder / "x.txt").unlink()
        x.write("evil.sh", "#!/bin/sh\n")
        os.chmod(x.folder / "evil.sh", 0o4755)
        x.cg("push")
    late = sorted(n for n in written if n.startswith(f"m/{x.rid}-"))
    assert late, "X's client wrote no segment"
    cut = provider.view(vid := vault_id_of(a)).removed[x.rid]
    assert all(mf.parse_name(n)[1] > cut.seq for n in late)  # type: ignore[index]
    for dev in (a, b):
        before = tree(dev.folder)
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        assert "refused" in got.output and late[0] in got.output
        assert tree(dev.folder) == before
        assert (dev.folder / "doc.txt").read_text() == "original"
    # A's next push (and its garbage collection) keeps the real content
    a.write("later.txt", "after the attack")
    a.cg("push")
    b.cg("pull")
    assert tree(a.folder) == tree(b.folder)
    b.cg("verify", "--read-data")
    # nothing written since the removal can be opened by X
    x_keks = {c.kek for c in provider.view(vid).commits.values() if x.rid in c.members}
    view = provider.view(vid)
    for name in heads_of(provider, a.rid):
        assert view.commits[fmt.segment_head(provider.get(name))[1]].kek not in x_keks, name


def test_removed_device_snapshot_below_cutoff_is_refused(local_remote: str,
                                                         provider: Provider, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """Review finding 3: X signs a *new* snapshot under a sequence number at or below its
    cutoff (a name it never used), with an inflated version vector and no paths, under an old
    KEK it knows. An observed-remove merge of it would delete every file."""
    a, b, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "x")
    x.write("x1.txt", "one")
    x.cg("push")
    x.write("x2.txt", "two")
    x.cg("push")
    a.cg("pull")
    a.cg("device", "remove", x.rid)
    b.cg("pull")
    vid = vault_id_of(a)
    view = provider.view(vid)
    cut = view.removed[x.rid]
    assert cut.seq >= 2
    old = max((c for c in view.commits.values() if x.rid in c.members), key=lambda c: c.pos)
    kek = kek_via(provider, view, old, x.rid, x.secret())
    name = mf.segment_name(x.rid, 1, "s")
    assert name not in provider.objects()
    payload = {"kind": "snapshot", "device": x.rid, "seq": 1, "created": keys.now_iso(),
               "ctx": {a.rid: 10**9, b.rid: 10**9, x.rid: 1}, "paths": {}}
    provider.put(name, fmt.seal_segment(kek, old.pos, old.id, vid, name, payload,
                                        x.secret().s))
    for dev in (a, b):
        before = tree(dev.folder)
        got = dev.run("pull")
        assert got.exit_code in (0, 3), got.output
        assert tree(dev.folder) == before, f"{dev.name} applied X's forged snapshot"


def run_script(kit: Path, remote: str, out: Path, *more: str
               ) -> subprocess.CompletedProcess[str]:
    """scripts/cloudguard-decrypt.py on the remote, with ``kit``, into ``out``."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "cloudguard-decrypt.py"
    return subprocess.run([sys.executable, str(script), "--remote-dir", remote, "--kit",
                           str(kit), "--out", str(out), *more], capture_output=True,
                          text=True, check=False, stdin=subprocess.DEVNULL)


def script_restores(dev: Dev, remote: str, root: Path, kit: Path | None = None) -> Path:
    """The vault as scripts/cloudguard-decrypt.py restores it with ``kit``, else with a kit
    ``dev`` exports now."""
    out = root / "check-out"
    if kit is None:
        kit = root / "check-kit.json"
        dev.cg("key", "export", str(kit), "--choose-passphrase")
    got = run_script(kit, remote, out)
    assert got.returncode == 0, got.stderr
    return out


def test_a_removed_members_late_move_is_undone(local_remote: str, provider: Provider,
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    """Review round 2, N4: a move (repack) keeps its dot, so clamping dots alone missed it.
    X, removed by A, is shown the old remote and repacks A's file into its own pack; B, kept
    from seeing the removal, applies that and writes a snapshot. Every device then puts the
    blob back where it was, garbage collection keeps that pack, and X's pack (which the
    provider then damages) is never read."""
    monkeypatch.setenv("CLOUDGUARD_GC_GRACE", "0")
    a, b, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "x")
    a.write("paper.txt", "original")
    (a.folder / "bulk.bin").write_bytes(os.urandom(300_000))  # shares paper.txt's pack
    a.cg("push")
    b.cg("pull")
    x.cg("pull")
    x.cg("settings", "--keep-days", "0")  # a deleted version leaves at once: X repacks
    a.use()
    with vault.session(str(a.folder)) as s:
        home = next(iter(s.state.siblings("paper.txt").values()))["o"]
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    with provider.showing(old) as written:
        (x.folder / "bulk.bin").unlink()
        x.cg("push")
        time.sleep(1.1)  # history keeps what left in this second
        x.write("x.txt", "late")
        x.cg("push")  # its maintenance moves paper.txt out of the mostly dead pack
    moved_to = {n for n in written if n.startswith("data/")}
    assert moved_to, "X's client repacked nothing"
    frozen = {**old, **written}
    with provider.showing(frozen) as by_b:
        b.cg("pull")
        b.use()
        with vault.session(str(b.folder)) as s:
            assert next(iter(s.state.siblings("paper.txt").values()))["o"] != home  # X's move
            s.snapshot()
    assert any(n.startswith(f"m/{b.rid}-") and n.endswith(".s") for n in by_b)
    for name in moved_to:  # the provider now damages X's pack
        provider.put(name, b"\0" * len(provider.get(name)))
    for dev in (a, b):
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        dev.write(f"{dev.name}.txt", "after")
        dev.cg("push")  # garbage collection runs, grace 0
        dev.use()
        with vault.session(str(dev.folder)) as s:
            assert next(iter(s.state.siblings("paper.txt").values()))["o"] == home, dev.name
        assert f"data/{home}" in provider.objects(), "the pack the move left was collected"
        assert (dev.folder / "paper.txt").read_text() == "original"
        assert dev.json("verify", "--read-data")["ok"]
    assert (script_restores(a, local_remote, tmp_path) / "paper.txt").read_text() == "original"


def x_acts_late(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, remote: str,
                provider: Provider, act: Callable[[Dev], object]
                ) -> tuple[list[Dev], dict[str, bytes]]:
    """A writes paper.txt and removes X; X, shown the remote as it was, does ``act``. Returns
    the devices and the remote a device that has not seen the removal is shown (X's late
    writes in it)."""
    a, b, x = make_vault(monkeypatch, tmp_path, remote, "a", "b", "x")
    a.write("paper.txt", "original")
    a.cg("push")
    b.cg("pull")
    x.cg("pull")
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    with provider.showing(old) as written:
        act(x)
    return [a, b, x], {**old, **written}


def junk_mover(provider: Provider, moved: dict[str, Any]) -> Callable[[Dev], None]:
    """What X does (x_acts_late): a move of A's paper.txt to a new object of junk, its old
    dot and object put in ``moved`` (review round 7, V1; round 8, W6)."""
    from cloudguard.manifest.moves import LOCATION_FIELDS

    junk = os.urandom(16).hex()

    def move_to_junk(x: Dev) -> None:
        x.use()
        with vault.session(str(x.folder)) as s:
            (dot, entry), = s.state.siblings("paper.txt").items()
            loc = {k: entry[k] for k in LOCATION_FIELDS if k in entry}
            s.commit([{"p": "paper.txt", "reloc": {dot: {
                **loc, "o": junk, "r": int(entry.get("r", 0)) + 1}}}])
        moved.update(dot=dot, o=entry["o"], junk=junk)
        provider.put(f"data/{junk}", os.urandom(len(provider.get(f"data/{entry['o']}"))))
    return move_to_junk


def x_edits_late(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, remote: str,
                 provider: Provider) -> tuple[list[Dev], dict[str, bytes]]:
    """X, removed, rewrites A's paper.txt late (x_acts_late)."""
    def edit(x: Dev) -> None:
        x.write("paper.txt", "rewritten by the removed device")
        x.cg("push")
    return x_acts_late(monkeypatch, tmp_path, remote, provider, edit)


def test_a_removed_members_late_edit_does_not_become_a_delete(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 2, N5 (a): X, removed by A, is shown the old remote and edits paper.txt
    (its version replaces A's). B, kept from seeing the removal, applies that and writes a
    snapshot. Clamping drops X's version; A's version, which X's edit sent to the history,
    comes back instead of the file vanishing for everyone."""
    (a, b, _x), frozen = x_edits_late(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(frozen) as by_b:
        b.cg("pull")
        assert (b.folder / "paper.txt").read_text() == "rewritten by the removed device"
        compact(b)
    assert any(n.startswith(f"m/{b.rid}-") and n.endswith(".s") for n in by_b)
    for dev in (a, b):
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        dev.use()
        with vault.session(str(dev.folder)) as s:
            assert list(s.state.siblings("paper.txt")), f"{dev.name} lost paper.txt"
        assert (dev.folder / "paper.txt").read_text() == "original", dev.name
    b.cg("push")  # B's copy of X's version is not pushed back as B's own edit
    a.cg("pull")
    assert (a.folder / "paper.txt").read_text() == "original"
    assert (script_restores(a, local_remote, tmp_path) / "paper.txt").read_text() == "original"


def test_a_challenge_does_not_make_a_removed_members_late_edit_live(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 4, S3: X, removed by A, edits B's paper.txt late; C, kept from seeing the
    removal, applies that and compacts. Then X signs a removal of A on the old parent, which
    challenges A's removal. Under rounds 2-4 a disputed cutoff clamped nothing, so X's edit
    became everyone's current version. Now every cutoff clamps (into the history): B's
    version is current on every device, and X's is only in the history."""
    a, b, c, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "c", "x")
    b.write("paper.txt", "original by B")
    b.cg("push")
    for dev in (a, c, x):
        dev.cg("pull")
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    vid = vault_id_of(a)
    view = provider.view(vid)
    parent = view.commits[str(view.head.parent)]
    with provider.showing(old) as written:
        x.write("paper.txt", "rewritten by the removed device")
        x.cg("push")
    with provider.showing({**old, **written}):
        c.cg("pull")
        assert (c.folder / "paper.txt").read_text() == "rewritten by the removed device"
        compact(c)
    backdated_removal(provider, view, parent, x.secret(), x.rid, a.rid)
    for dev in (b, c):
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        assert "challenged" in got.output
        assert (dev.folder / "paper.txt").read_text() == "original by B", dev.name
        versions = dev.json("history", "paper.txt")["versions"]
        assert [v["current"] for v in versions].count(True) == 1
    b.write("other.txt", "B carries on")
    assert b.run("push").exit_code == 0
    c.cg("pull")
    assert (c.folder / "paper.txt").read_text() == "original by B"
    assert (script_restores(c, local_remote, tmp_path) / "paper.txt").read_text() == \
        "original by B"


@pytest.mark.parametrize("then", ["delete", "edit"])
def test_two_late_writes_to_one_file_do_not_become_a_delete(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, then: str) -> None:
    """Review round 5, T1: X, removed by A and shown the old remote, edits paper.txt and then
    deletes (or edits) it again. B, kept from seeing the removal, applies both and compacts.
    The chain of removers from A's version is late only, so A's version comes back on every
    device once the removal shows."""
    def twice(x: Dev) -> None:
        x.write("paper.txt", "first late edit")
        x.cg("push")
        if then == "delete":
            (x.folder / "paper.txt").unlink()
        else:
            x.write("paper.txt", "second late edit, longer")
        x.cg("push")

    (a, b, _x), frozen = x_acts_late(monkeypatch, tmp_path, local_remote, provider, twice)
    with provider.showing(frozen):
        b.cg("pull")
        compact(b)
    pulled_everywhere([a, b], "paper.txt", "original", local_remote, tmp_path)


def test_a_removed_members_reencryption_ends_no_history(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 6, U2 (round 5, T3): X, removed by A and shown the old remote, runs a
    re-encryption, whose signed commit ends the history under older keys. B, kept from seeing
    the removal, takes the commit in (its history is hidden) and compacts. A device forgets
    ended history only ``keep_days`` after it first saw the commit, so B's snapshot still
    carries it; once the removal shows, X's commit is void and every device has its history
    back. (A snapshot can no longer carry a floor at all: test_manifest.)"""
    a, b, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "x")
    a.write("paper.txt", "first draft")
    a.cg("push")
    a.write("paper.txt", "second draft, longer")
    a.cg("push")
    b.cg("pull")
    x.cg("pull")
    assert len(b.json("history", "paper.txt")["versions"]) == 2
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    time.sleep(1.1)  # the draft left B's live state a second before B first sees the commit
    with provider.showing(old) as written:
        x.cg("key", "rotate", "--reencrypt")
    with provider.showing({**old, **written}):
        b.cg("pull")
        assert len(b.json("history", "paper.txt")["versions"]) == 1  # X's commit ended it
        b.use()
        with vault.session(str(b.folder)) as s:
            maintain._maintain(s)  # forgets what ended keep_days ago: nothing yet
            carried = dict(s.state.attic_rows()).get("paper.txt", {})
            assert len(carried) == 1, "ended history was forgotten before keep_days"
            s.snapshot()  # B's snapshot carries it: a device that reads only it gets it
    for dev in (b, a):
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        versions = dev.json("history", "paper.txt")["versions"]
        assert len(versions) == 2, (dev.name, versions)
        assert dev.cg("restore", "paper.txt", "--version", versions[0]["version"]).exit_code == 0
        assert (dev.folder / "paper.txt").read_text() == "first draft"


def test_a_restore_by_time_never_brings_back_a_late_write(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 5, T2: X, removed by A, creates invoice.txt late; B, kept from seeing the
    removal, applies it. Once the removal shows, the clamp keeps X's version in B's history.
    A restore by time, the remedy the docs give, must not write it back as B's own version:
    a late version is never current at any time, is marked in the history, and comes back
    only when named."""
    from datetime import datetime

    a, b, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "x")
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    with provider.showing(old) as written:
        x.write("invoice.txt", "pay the thief")
        x.cg("push")
    with provider.showing({**old, **written}):
        b.cg("pull")
        assert (b.folder / "invoice.txt").read_text() == "pay the thief"
    applied = time.time()
    time.sleep(4)
    got = b.run("pull")
    assert got.exit_code == 0, got.output
    assert not (b.folder / "invoice.txt").exists()
    versions = b.json("history", "invoice.txt")["versions"]
    assert [v["late"] for v in versions] == [True], versions
    assert "WRITTEN AFTER ITS WRITER WAS REMOVED" in b.run("history", "invoice.txt").output
    mid = datetime.fromtimestamp(applied + 2).isoformat(timespec="seconds")
    b.run("restore", "--before", mid)
    assert not (b.folder / "invoice.txt").exists(), "a restore by time brought X's write back"
    b.run("restore", "invoice.txt", "--before", mid)
    assert not (b.folder / "invoice.txt").exists()


def test_a_removed_members_late_delete_is_undone(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """X, removed by A and shown the old remote, deletes paper.txt. B, kept from seeing the
    removal, applies the delete and compacts. No version at the path has the late delta's dot,
    so the version it removed comes back on every device once the removal shows."""
    a, b, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "x")
    a.write("paper.txt", "original")
    a.cg("push")
    b.cg("pull")
    x.cg("pull")
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    with provider.showing(old) as written:
        (x.folder / "paper.txt").unlink()
        x.cg("push")
    with provider.showing({**old, **written}):
        b.cg("pull")
        assert not (b.folder / "paper.txt").exists()
        compact(b)
    pulled_everywhere([a, b], "paper.txt", "original", local_remote, tmp_path)


def test_an_honest_delete_of_a_late_edit_brings_back_what_it_replaced(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 3, R10, as round 15 (DD1, DD2) changed it: X's late edit of paper.txt
    reaches frozen B, whose user then deletes the file. B deleted X's content, not A's: once
    the removal shows, A's version comes back on every device (R10 kept the delete, and B's
    next clean snapshot then deleted A's file on A too, a loss where a rename away or a
    link in its place let X choose it). Only an honest *edit* of a late version stands."""
    (a, b, _x), frozen = x_edits_late(monkeypatch, tmp_path, local_remote, provider)
    with provider.showing(frozen):
        b.cg("pull")
        (b.folder / "paper.txt").unlink()  # B's user deletes X's version
        b.cg("push")
        compact(b)
    for dev in (a, b, a):
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        assert (dev.folder / "paper.txt").read_text() == "original", dev.name
    assert (script_restores(a, local_remote, tmp_path) / "paper.txt").read_text() == "original"


def test_a_removed_members_late_snapshot_cannot_rewrite_anothers_version(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 3, R3: X, removed by A and shown the old remote, pushes its own file and
    then writes a snapshot in which A's version of paper.txt (A's dot) holds X's content. B,
    kept from seeing the removal, must not take it: the entry is not signed by A (format.md,
    "Entry signatures"). Exit 3 naming X's segment, B's folder untouched; once the removal
    shows, X's segment is refused and B goes on with A's content."""
    a, b, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "x")
    a.write("paper.txt", "original")
    a.cg("push")
    b.cg("pull")
    x.cg("pull")
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    with provider.showing(old) as written:
        x.write("evil.txt", "content chosen by the removed device")
        x.cg("push")
        x.use()
        with vault.session(str(x.folder)) as s:
            (a_dot, real), = s.state.siblings("paper.txt").items()
            (_x_dot, evil), = s.state.siblings("evil.txt").items()
            forged = {**evil, "sg": real["sg"]}  # X's content under A's dot and signature
            with s.state.transaction():
                s.state.put_entry("paper.txt", a_dot, forged)
            s.snapshot()
    late = [n for n in written if n.startswith(f"m/{x.rid}-") and n.endswith(".s")]
    assert late, "X wrote no snapshot"
    frozen = {**old, **written}
    with provider.showing(frozen):
        before = tree(b.folder)
        got = b.run("pull")
        assert got.exit_code == 3, got.output
        assert late[0] in got.output and "not signed by its writer" in got.output
        assert tree(b.folder) == before
        assert (b.folder / "paper.txt").read_text() == "original"
    for dev in (a, b):
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        assert (dev.folder / "paper.txt").read_text() == "original", dev.name
        assert not (dev.folder / "evil.txt").exists()
    assert (script_restores(a, local_remote, tmp_path) / "paper.txt").read_text() == "original"


def test_a_late_snapshots_drops_and_moves_are_undone_after_a_frozen_device_compacts(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 3, R3 (the unsigned part): X, removed by A and shown the old remote, writes
    a snapshot that drops A's keep.txt and moves A's moved.txt onto X's own object. B, kept
    from seeing the removal, applies it and compacts, so X's word becomes B's snapshot and A's
    deltas are gone. B recorded X's snapshot as the remover and the mover, so once the removal
    shows both files come back where they were, on every device; X's object (which the
    provider then damages) is never read."""
    a, b, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "x")
    a.write("keep.txt", "keep me")
    a.write("moved.txt", "leave me where I am")
    a.cg("push")
    b.cg("pull")
    x.cg("pull")
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    with provider.showing(old) as written:
        x.write("x.txt", "x's own object")
        x.cg("push")
        x.use()
        with vault.session(str(x.folder)) as s:
            (x_dot, mine), = s.state.siblings("x.txt").items()
            (m_dot, target), = s.state.siblings("moved.txt").items()
            (k_dot, _keep), = s.state.siblings("keep.txt").items()
            with s.state.transaction():
                s.state._drop("keep.txt", k_dot)
                s.state.put_entry("moved.txt", m_dot, {
                    **target, "o": mine["o"], "a": mine["a"], "r": 50})
            s.snapshot()
    xs = {n for n in written if n.startswith("data/")}
    frozen = {**old, **written}
    with provider.showing(frozen) as by_b:
        got = b.run("pull")
        assert got.exit_code == 0, got.output
        assert not (b.folder / "keep.txt").exists()  # X's drop, applied
        b.use()
        with vault.session(str(b.folder)) as s:
            s.snapshot()  # B compacts: A's segments go, X's word is B's now
    assert any(n.startswith(f"m/{b.rid}-") and n.endswith(".s") for n in by_b)
    for name in xs:
        provider.put(name, b"\0" * len(provider.get(name)))
    for dev in (a, b):
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        assert (dev.folder / "keep.txt").read_text() == "keep me", dev.name
        assert (dev.folder / "moved.txt").read_text() == "leave me where I am", dev.name
        assert dev.json("verify", "--read-data")["ok"], dev.name
    restored = script_restores(a, local_remote, tmp_path)
    assert (restored / "keep.txt").read_text() == "keep me"
    assert (restored / "moved.txt").read_text() == "leave me where I am"


def test_a_late_drop_carried_by_honest_snapshots_is_undone_and_honest_deletes_stay(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 6, U1: X, removed by A and shown the old remote, drops keep.txt in a
    snapshot whose history names an honest remover. B, kept from seeing the removal, applies
    it and compacts; C, also lagging, never sees X's snapshot, only B's, and compacts too. No
    late dot is left in C's record of the drop, only B's honest snapshot, whose vector covers
    X's write: once the removal shows, keep.txt comes back on every device. gone.txt, which B
    deleted honestly and which reached devices two ways (a delta and a snapshot: removers that
    disagreed, and so revived, before), stays deleted everywhere."""
    a, b, c, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "c", "x")
    a.write("keep.txt", "keep me")
    a.write("gone.txt", "delete me")
    a.cg("push")
    for dev in (b, c, x):
        dev.cg("pull")
    (b.folder / "gone.txt").unlink()
    b.cg("push")
    c.cg("pull")  # the delete reaches C as B's delta ...
    compact(b)
    a.cg("pull")  # ... and A as B's snapshot
    compact(a)
    c.cg("pull")  # C takes in A's history row: two removers of gone.txt
    old = provider.objects()
    a.cg("device", "remove", x.rid)
    with provider.showing(old) as written:
        x.use()
        with vault.session(str(x.folder)) as s:
            (k_dot, keep), = s.state.siblings("keep.txt").items()
            honest = next(d for p, sibs in s.state.items() for d in sibs if p != "keep.txt")
            with s.state.transaction():
                s.state._drop("keep.txt", k_dot)
                s.state.to_attic("keep.txt", k_dot, keep, int(time.time()), honest)
            s.snapshot()
    with provider.showing({**old, **written}) as by_b:
        assert b.run("pull").exit_code == 0
        assert not (b.folder / "keep.txt").exists()  # X's drop, applied
        compact(b)
    with provider.showing({**old, **by_b}) as by_c:
        assert c.run("pull").exit_code == 0
        assert not (c.folder / "keep.txt").exists()  # carried by B's honest snapshot
        c.use()
        with vault.session(str(c.folder)) as s:
            rb = set(mf.removers(s.state.db.execute(
                "SELECT rb FROM attic WHERE path = 'keep.txt'").fetchone()[0]))
            assert f"{b.rid}:" in " ".join(rb)
            s.snapshot()
    assert any(n.startswith(f"m/{c.rid}-") for n in by_c)
    for dev in (a, b, c):
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        assert (dev.folder / "keep.txt").read_text() == "keep me", dev.name
        assert not (dev.folder / "gone.txt").exists(), dev.name
    restored = script_restores(a, local_remote, tmp_path)
    assert (restored / "keep.txt").read_text() == "keep me"
    assert not (restored / "gone.txt").exists()


def test_a_member_cannot_resign_anothers_version_in_its_snapshot(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rewrite by a current member, which signs the changed entry itself: the entry
    is checked under the key of its dot's writer (A), not of the snapshot's (X)."""
    a, b, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "x")
    a.write("paper.txt", "original")
    a.cg("push")
    x.cg("pull")
    x.write("evil.txt", "content chosen by x")
    x.cg("push")
    x.use()
    with vault.session(str(x.folder)) as s:
        (a_dot, _real), = s.state.siblings("paper.txt").items()
        (_x_dot, evil), = s.state.siblings("evil.txt").items()
        forged = dict(evil)
        mf.sign_entry(s.me.s, s.binding.vault_id, "paper.txt", a_dot, forged)
        with s.state.transaction():
            s.state.put_entry("paper.txt", a_dot, forged)
        s.snapshot()
    for dev in (a, b):
        before = tree(dev.folder)
        got = dev.run("pull")
        assert got.exit_code == 3, got.output
        assert "not signed by its writer" in got.output
        assert tree(dev.folder) == before


def test_a_planted_version_vector_cannot_hide_or_delete_a_devices_writes(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 2, N11: member X compacts with a vector claiming 10**6 writes of B. B's
    delta that X never saw looks covered to every reader (and X's compaction deletes it), and B
    itself would take X's snapshot as X's delete of it. B knows what it wrote: it keeps its
    version, warns, numbers its next segments past the claim and writes the hidden version
    again, so it reaches A."""
    a, b, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "x")
    b.write("b.txt", "from b")
    b.cg("push")
    x.cg("pull")
    x.use()
    with vault.session(str(x.folder)) as s:  # X has listed the remote
        b.write("window.txt", "written while X lied")  # a delta X never sees
        b.cg("push")
        x.use()
        with s.state.transaction():
            s.state.ctx[b.rid] = 10**6
        s.snapshot()
    a.cg("pull")
    assert not (a.folder / "window.txt").exists()  # hidden from A, as the attack intends
    got = b.run("pull")
    assert got.exit_code == 0, got.output
    assert "claims 1000000 segments of this device" in got.output
    assert (b.folder / "window.txt").read_text() == "written while X lied"  # B kept it
    b.cg("push")  # writes it again, past the claim
    assert any(n.startswith(f"m/{b.rid}-00000100000") for n in provider.segments())
    a.cg("pull")
    assert (a.folder / "window.txt").read_text() == "written while X lied"
    assert (a.folder / "b.txt").read_text() == "from b"
    b.write("later.txt", "later")
    b.cg("push")
    for dev in (a, x):
        dev.cg("pull")
        assert (dev.folder / "later.txt").read_text() == "later"
        assert (dev.folder / "window.txt").read_text() == "written while X lied"
    assert "claims" not in b.run("pull").output  # said once


def test_a_claim_that_exhausts_segment_numbers_stops_the_device_with_advice(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted claim of 10**12 - 1 writes leaves no 12-digit segment number: the device
    says so and names the way out, instead of writing a segment no reader can name."""
    (a,) = make_vault(monkeypatch, tmp_path, local_remote, "a")
    a.use()
    with vault.session(str(a.folder)) as s:
        s.index.set_meta("seq_floor", mf.MAX_SEQ)
    a.write("new.txt", "cannot go up")
    got = a.run("push")
    assert got.exit_code == 3
    assert "no segment number left" in got.output and "remove that device" in got.output
    assert "as a new device" in got.output


# --- freeze ---------------------------------------------------------------------------------


def test_frozen_device_never_writes_under_a_key_it_saw_revoked(local_remote: str,
                                                               provider: Provider,
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """The provider hides X's removal from B: B writes under the old KEK (nobody can prevent
    that), A reports the exposure; once B has seen the removal it never writes under the old
    KEK again, and hiding the removal again is a rollback (exit 3)."""
    a, b, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "x")
    vid = vault_id_of(a)
    old = provider.objects()
    old_head = provider.view(vid).head
    a.cg("device", "remove", x.rid)
    removal = provider.view(vid).head
    assert removal.action == "remove" and x.rid not in removal.members
    with provider.showing(old):
        b.write("frozen.txt", "written while frozen")
        b.cg("push")
    frozen = heads_of(provider, b.rid)
    assert frozen and set(frozen.values()) == {old_head.id}  # the documented freeze
    a.cg("pull")
    assert (a.folder / "frozen.txt").read_text() == "written while frozen"
    exposed = a.json("status")["exposed"]
    assert [e["removed"] for e in exposed] == [x.rid] and exposed[0]["files"] >= 1
    # B sees the removal now
    b.cg("pull")
    b.write("after.txt", "written after the removal was seen")
    b.cg("push")
    view = provider.view(vid)
    later = {n: h for n, h in heads_of(provider, b.rid).items() if n not in frozen}
    assert later
    for name, head in later.items():
        assert x.rid not in view.commits[head].members, name
        assert view.commits[head].kek != old_head.kek, name
    # ... and no hiding brings it back to the old key
    count = len(provider.segments())
    with provider.hiding(removal.name, removal.name + ".k"):
        b.write("again.txt", "must not be written under the old KEK")
        got = b.run("push")
        assert got.exit_code == 3 and "rolled back" in got.output, got.output
    assert len(provider.segments()) == count


# --- two commits at one position: race and equivocation ----------------------------------


def test_race_of_two_adds_is_merged(local_remote: str, provider: Provider, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A and B each add a recovery kit on the same parent (the provider hides A's commit from
    B): a race, merged under a new KEK; both devices end on one head."""
    a, b = make_vault(monkeypatch, tmp_path, local_remote, "a", "b")
    vid = vault_id_of(a)
    a.cg("key", "export", str(tmp_path / "kit-a.json"), "--choose-passphrase")
    first = provider.view(vid).head
    with provider.hiding(first.name, first.name + ".k"):
        b.cg("key", "export", str(tmp_path / "kit-b.json"), "--choose-passphrase")
    view = provider.view(vid)
    siblings = [c for c in view.commits.values() if c.parent == first.parent]
    assert len(siblings) == 2 and {c.signer for c in siblings} == {a.rid, b.rid}
    a.write("a.txt", "after the race")
    a.cg("push")
    b.cg("pull")
    a.cg("pull")
    assert a.head() == b.head()
    view = provider.view(vid)
    merges = [c for c in view.commits.values() if c.action == "merge"]
    assert len(merges) == 1 and view.head.id == merges[0].id == a.head()
    assert set(merges[0].members) == set(view.members) and len(view.members) == 4
    assert merges[0].kek not in {c.kek for c in siblings}
    assert tree(a.folder) == tree(b.folder)


def test_partitioned_devices_rejoin_by_merge(local_remote: str, provider: Provider,
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    """A fork of the chain shown to two devices: the provider partitions A and B, each rotates
    and pushes on its own branch; once both branches are shown they merge (the design's answer
    to diverging commits), and both devices end on one head with every file."""
    a, b = make_vault(monkeypatch, tmp_path, local_remote, "a", "b")
    vid = vault_id_of(a)
    old = provider.objects()
    a.cg("key", "rotate")
    a.write("a.txt", "branch a")
    a.cg("push")
    with provider.showing(old):
        b.cg("key", "rotate")
        b.write("b.txt", "branch b")
        b.cg("push")
    view = provider.view(vid)
    tips = [c for c in view.commits.values() if c.action == "rotate"]
    assert len(tips) == 2 and tips[0].parent == tips[1].parent
    a.cg("pull")
    b.cg("pull")
    a.cg("pull")
    assert a.head() == b.head()
    assert provider.view(vid).head.action == "merge"
    assert tree(a.folder) == tree(b.folder)
    assert (a.folder / "b.txt").exists() and (b.folder / "a.txt").exists()


def test_equivocation_by_one_signer_stops(local_remote: str, provider: Provider,
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """A's real key signs two children of one parent (A's own kit export, and a forged rotation
    to a KEK the attacker chose): exit 3 naming both, nothing written."""
    a, b = make_vault(monkeypatch, tmp_path, local_remote, "a", "b")
    vid = vault_id_of(a)
    a.cg("key", "export", str(tmp_path / "kit.json"), "--choose-passphrase")
    b.cg("pull")
    view = provider.view(vid)
    honest = view.head
    parent = view.commits[str(honest.parent)]
    kek = os.urandom(32)
    other = forge(provider, view, parent, a.secret(), a.rid, "rotate", dict(parent.members),
                  dict(parent.removed), kek, parent.epoch + 1)
    before = provider.objects()
    for dev in (b, a):
        dev.write(f"{dev.name}-new.txt", "not after equivocation")
        got = dev.run("push")
        assert got.exit_code == 3 and "equivocation" in got.output, got.output
        assert honest.name in got.output and other.name in got.output
    assert provider.objects() == before
    assert_nothing_under(provider, vid, kek, other.id)
    # the way out: another device removes the equivocating member, which voids the commit
    # of it that the removal does not build on; then work goes on, never under that KEK
    b.cg("device", "remove", a.rid)
    got = b.run("push")
    assert got.exit_code == 0, got.output
    view = provider.view(vid)
    assert a.rid in view.removed and (honest.name in view.void) != (other.name in view.void)
    assert_nothing_under(provider, vid, kek, other.id)
    assert view.head.kek != kek


# --- key objects and rollback ---------------------------------------------------------------


@pytest.mark.parametrize("edit", ["rewrapped", "swapped"])
def test_slot_swapped_inside_signed_commit(local_remote: str, provider: Provider,
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           edit: str) -> None:
    """B's slot in the head's key object is replaced: by a slot wrapping the provider's KEK to
    B (with the right context), or by A's slot. The commit is signed; the key object is not
    what it names: exit 3 naming the key object."""
    a, b = make_vault(monkeypatch, tmp_path, local_remote, "a", "b")
    vid = vault_id_of(a)
    head = provider.view(vid).head
    name = head.name + ".k"
    doc = json.loads(provider.get(name))
    kek = os.urandom(32)
    if edit == "rewrapped":
        doc["slots"][b.rid] = fmt.wrap_to_recipient(head.members[b.rid].x, kek, head.ctx(vid),
                                                    b.rid)
    else:
        doc["slots"][a.rid], doc["slots"][b.rid] = doc["slots"][b.rid], doc["slots"][a.rid]
    provider.put(name, json.dumps(doc, sort_keys=True, indent=1).encode())
    before = provider.objects()
    b.write("new.txt", "not under a swapped slot")
    for dev in (b, a):
        got = dev.run("push")
        assert got.exit_code == 3 and name in got.output, got.output
    assert provider.objects() == before
    assert_nothing_under(provider, vid, kek, "0" * 64)


def test_in_generation_rollback_of_kit_export(local_remote: str, provider: Provider,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """The provider deletes the newest add commit (a kit export) after B verified it: B stops
    with exit 3. A, which wrote it and has not seen it listed yet, sends the same bytes again
    (a listing may lag behind an upload), after which B goes on."""
    a, b = make_vault(monkeypatch, tmp_path, local_remote, "a", "b")
    vid = vault_id_of(a)
    a.cg("key", "export", str(tmp_path / "kit.json"), "--choose-passphrase")
    b.cg("pull")
    added = provider.view(vid).head
    assert added.action == "add"
    data = provider.get(added.name)
    (provider.root / added.name).unlink()
    (provider.root / (added.name + ".k")).unlink()
    before = provider.objects()
    b.write("b.txt", "after the rollback")
    got = b.run("push")
    assert got.exit_code == 3 and "rolled back" in got.output, got.output
    assert added.id[:16] in got.output
    assert provider.objects() == before
    a.write("a.txt", "after the rollback")
    got = a.run("push")
    assert got.exit_code == 0, got.output
    assert provider.get(added.name) == data  # the very same bytes: no second commit
    assert b.run("push").exit_code == 0


def test_kit_clone_after_rollback_names_the_missing_anchor(local_remote: str,
                                                           provider: Provider, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    (a,) = make_vault(monkeypatch, tmp_path, local_remote, "a")
    a.cg("key", "export", str(tmp_path / "kit.json"), "--choose-passphrase")
    added = provider.view(vault_id_of(a)).head
    (provider.root / added.name).unlink()
    (provider.root / (added.name + ".k")).unlink()
    c = Dev(monkeypatch, tmp_path, "c")
    c.use()
    got = CliRunner().invoke(main, ["clone", local_remote, str(c.folder), "--key-file",
                                    str(tmp_path / "kit.json")], catch_exceptions=False)
    assert got.exit_code == 3 and "the commit that added this kit" in got.output, got.output


# --- enrolment ------------------------------------------------------------------------------


@pytest.mark.parametrize("edit", ["name", "id-and-name", "resigned", "moved"])
def test_enrolment_substitution_is_refused(local_remote: str, provider: Provider,
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           edit: str) -> None:
    """The provider edits C's enrolment request (its name, its id, or both re-signed with the
    provider's own signing key while keeping C's X25519 key), or moves it under another name.
    Approving with the fingerprint C showed must not add anything."""
    (a,) = make_vault(monkeypatch, tmp_path, local_remote, "a")
    code = a.json("device", "list")["vault_code"]
    c = Dev(monkeypatch, tmp_path, "c")
    c.use()
    req = json.loads(cg("clone", local_remote, str(c.folder), "--vault-code", code, "--name",
                        "laptop-c", "--json").stdout)
    name = f"enroll/{req['device']}"
    raw, body, sig = chain.split_signed(chain.ENROLL_MAGIC, provider.get(name))
    fake_rid = keys.new_member_id()
    if edit in ("name", "id-and-name"):
        body["name"] = "provider's device"
        if edit == "id-and-name":
            body["rid"] = fake_rid
        new = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        provider.put(name, chain.ENROLL_MAGIC + len(new).to_bytes(4, "big") + new + sig)
    elif edit == "resigned":
        evil = Secret.generate()
        body.update(rid=fake_rid, name="laptop-c", s=fmt.b64(fmt.public_bytes(evil.s)))
        data, _raw = chain.encode_signed(chain.ENROLL_MAGIC, body, evil.s,
                                         b"cloudguard/v2/enroll")
        (provider.root / name).unlink()
        provider.put(f"enroll/{fake_rid}", data)
    else:
        (provider.root / name).rename(provider.root / f"enroll/{fake_rid}")
    commits = provider.commit_names()
    got = a.run("device", "approve", req["fingerprint"], "--yes")
    assert got.exit_code in (2, 3), got.output
    # an edited request no longer verifies (refused, exit 3, naming it); a re-signed one has
    # another fingerprint (exit 2); a moved one is under another name (exit 3)
    assert ("pending enrolment request" in got.output if edit != "moved"
            else "another name" in got.output)
    assert provider.commit_names() == commits
    assert {m["id"] for m in a.json("device", "list")["members"]} == {a.rid}
    waiting = c.run("pull")
    assert waiting.exit_code == 1 and "not approved" in waiting.output


def test_clone_refuses_a_wrong_vault_code(local_remote: str, provider: Provider,
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """The other direction: the provider plants its own genesis beside the real one; a new
    device given the real code picks the real vault, and a wrong code is refused."""
    (a,) = make_vault(monkeypatch, tmp_path, local_remote, "a")
    vid = vault_id_of(a)
    evil, evil_rid = Secret.generate(), keys.new_member_id()
    genesis, data, keyobj = chain.build(None, "", evil, evil_rid, "genesis",
                                        {evil_rid: evil.public("device")}, {}, os.urandom(32),
                                        1, {evil_rid: "fake"}, {},
                                        descriptor_hash(provider.get("cloudguard.json")),
                                        keys.now_iso())
    provider.put(genesis.name, data)
    provider.put(genesis.name + ".k", keyobj)
    c = Dev(monkeypatch, tmp_path, "c")
    c.use()
    bad = CliRunner().invoke(main, ["clone", local_remote, str(c.folder), "--vault-code",
                                    fmt.vault_code(genesis.id[::-1])], catch_exceptions=False)
    assert bad.exit_code == 3, bad.output
    req = json.loads(cg("clone", local_remote, str(c.folder), "--vault-code",
                        fmt.vault_code(vid), "--json").stdout)
    assert req["vault"] == vid


# --- segment forks --------------------------------------------------------------------------


def test_segment_fork_shown_to_two_devices(local_remote: str, provider: Provider,
                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """A's key (a compromised member, with the provider) signs two different segments under
    one name; the provider shows B one and C the other. When C's next delta (whose
    dependencies name the hash of the segment C applied) reaches B: exit 3, naming the fork."""
    a, b, c = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "c")
    vid = vault_id_of(a)
    a.write("a.txt", "the real content")
    a.cg("push")
    name = max(n for n in provider.segments() if n.startswith(f"m/{a.rid}-"))
    real = provider.get(name)
    view = provider.view(vid)
    pos, head_id = fmt.segment_head(real)
    kek = kek_via(provider, view, view.commits[head_id], a.rid, a.secret())
    payload = fmt.open_segment(kek, vid, name, real)
    payload["created"] = "2000-01-01T00:00:00Z"
    forged = fmt.seal_segment(kek, pos, head_id, vid, name, payload, a.secret().s)
    assert len(forged) == len(real) and forged != real
    b.cg("pull")
    provider.put(name, forged)
    c.cg("pull")
    c.write("c.txt", "built on the other history")
    c.cg("push")
    provider.put(name, real)  # B is shown its own history, plus C's delta
    before = tree(b.folder)
    got = b.run("pull")
    assert got.exit_code == 3 and "fork" in got.output and name in got.output, got.output
    assert tree(b.folder) == before


# --- a removed member's branch from the past (review finding 1) ---------------------------


def x_removed_by_a(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, remote: str,
                   provider: Provider) -> tuple[list[Dev], str, View, Commit, Commit, Secret]:
    """Devices a, b, x; a removes x. Returns the devices, the vault id, the view, the removal,
    its parent (where x was still a member) and x's real secret."""
    a, b, x = make_vault(monkeypatch, tmp_path, remote, "a", "b", "x")
    vid = vault_id_of(a)
    a.cg("device", "remove", x.rid)
    view = provider.view(vid)
    removal = view.head
    return [a, b, x], vid, view, removal, view.commits[str(removal.parent)], x.secret()


def test_removed_device_branch_from_the_past_is_void(local_remote: str, provider: Provider,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """After its removal X signs, on the old parent where it was a member, an add of a fresh
    key E it holds (same KEK). The commit is void: devices warn, no merge takes it in, and E
    gets no slot in anything written later."""
    (a, b, x), vid, view, removal, parent, xs = x_removed_by_a(monkeypatch, tmp_path,
                                                               local_remote, provider)
    evil, evil_rid = Secret.generate(), keys.new_member_id()
    kek = kek_via(provider, view, parent, x.rid, xs)
    void = forge(provider, view, parent, xs, x.rid, "add",
                 {**parent.members, evil_rid: evil.public("device")},
                 dict(parent.removed), kek, parent.epoch)
    for dev in (a, b):
        dev.write(f"{dev.name}.txt", "after the void branch")
        got = dev.run("push")
        assert got.exit_code == 0, got.output
        assert "void" in got.output and void.name in got.output
    a.cg("pull")
    b.cg("pull")
    assert tree(a.folder) == tree(b.folder)
    view = provider.view(vid)
    assert void.name in view.void and void.id not in view.commits
    assert view.head.id == removal.id and not any(c.action == "merge"
                                                  for c in view.commits.values())
    listed = {m["id"] for m in a.json("device", "list")["members"]}
    assert listed == {a.rid, b.rid}
    for name in provider.objects():
        if name.endswith(".k") and name != void.name + ".k":
            assert evil_rid not in json.loads(provider.get(name))["slots"], name
    for name in [*heads_of(provider, a.rid), *heads_of(provider, b.rid)]:
        assert fmt.segment_head(provider.get(name))[1] != void.id


def test_an_honest_commit_on_a_void_branch_stands_and_is_merged_without_the_removed(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """X, removed by A, rotates on the old parent. B, kept by the provider from seeing the
    removal, adds D on X's rotation (B's real key). Only X's commit is void (review round 2,
    N2): B's add stands, so D is a member; the merge leaves X out and ends X's KEKs."""
    (a, b, x), vid, view, removal, parent, xs = x_removed_by_a(monkeypatch, tmp_path,
                                                               local_remote, provider)
    x_kek = os.urandom(32)
    x_rot = forge(provider, view, parent, xs, x.rid, "rotate", dict(parent.members),
                  dict(parent.removed), x_kek, parent.epoch + 1)
    d, d_rid = Secret.generate(), keys.new_member_id()
    view = provider.view(vid)
    b_add = forge(provider, view, x_rot, b.secret(), b.rid, "add",
                  {**x_rot.members, d_rid: d.public("device")}, dict(x_rot.removed), x_kek,
                  x_rot.epoch)
    a.write("a.txt", "after the void branch")
    got = a.run("push")
    assert got.exit_code == 0, got.output
    assert x_rot.name in got.output and "void" in got.output
    view = provider.view(vid)
    assert x_rot.name in view.void and b_add.id in view.commits
    assert view.head.action == "merge" and b_add.id in [view.head.parent, *view.head.merges]
    assert set(view.head.members) == {a.rid, b.rid, d_rid} and x.rid in view.head.removed
    assert x.rid not in json.loads(provider.get(view.head.name + ".k"))["slots"]
    assert view.head.kek not in {c.kek for c in view.commits.values() if x.rid in c.members}
    assert_nothing_under(provider, vid, x_kek, x_rot.id)
    b.cg("pull")
    assert (b.folder / "a.txt").read_text() == "after the void branch"


def test_removed_device_answering_with_a_removal_takes_its_remover_along(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """X, removed by A in R, signs on R's parent a removal of A (cutoff 0). Nothing tells the
    two apart (picking one would let X grind ids): removals win, both targets are out, B
    merges under a new KEK and says so, X gets no key written after its removal, and A must
    re-enrol. A's own versions are clamped into the history, never away (review round 4, S3,
    S4): B restores them, and garbage collection deletes nothing while the challenge stands."""
    (a, b, x), vid, view, _removal, parent, xs = x_removed_by_a(monkeypatch, tmp_path,
                                                                local_remote, provider)
    a.write("a-report.txt", "A's work after removing X")
    assert a.run("push").exit_code == 0
    b.cg("pull")
    assert (b.folder / "a-report.txt").read_text() == "A's work after removing X"
    backdated_removal(provider, view, parent, xs, x.rid, a.rid)
    b.write("b.txt", "after the mutual removal")
    got = b.run("push")
    assert got.exit_code == 0, got.output
    assert "challenged by other removals" in got.output and "nothing is deleted" in got.output
    view = provider.view(vid)
    assert view.head.action == "merge"
    assert set(view.head.members) == {b.rid} and {a.rid, x.rid} <= set(view.head.removed)
    x_keks = {c.kek for c in view.commits.values() if x.rid in c.members}
    assert view.head.kek not in x_keks
    assert x.rid not in json.loads(provider.get(view.head.name + ".k"))["slots"]
    refused = a.run("push")
    assert refused.exit_code == 1 and "removed" in refused.output
    # A's own pull stops before it touches the folder: its copy stays (review round 6, U6)
    refused = a.run("pull")
    assert refused.exit_code == 1 and "removed" in refused.output
    assert (a.folder / "a-report.txt").read_text() == "A's work after removing X"
    # A's version left the live state for the history: kept, and B brings it back
    b.cg("pull")
    assert not (b.folder / "a-report.txt").exists()
    versions = b.json("history", "a-report.txt")["versions"]
    assert len(versions) == 1 and not versions[0]["current"], versions
    restored = b.run("restore", "a-report.txt", "--version", versions[0]["version"])
    assert restored.exit_code == 0, restored.output
    assert (b.folder / "a-report.txt").read_text() == "A's work after removing X"
    assert b.run("push").exit_code == 0
    # garbage collection waits keep_days after the removals were first seen: a replaced blob
    # stays on the remote
    monkeypatch.setenv("CLOUDGUARD_GC_GRACE", "0")
    b.write("big.bin", "a" * (5 << 20))  # 4 MiB or more: an object of its own
    assert b.run("push").exit_code == 0
    before = {n for n in provider.objects() if n.startswith("data/")}
    b.write("big.bin", "b" * (5 << 20))
    assert b.run("push").exit_code == 0
    b.write("c.txt", "another push runs maintenance again")
    assert b.run("push").exit_code == 0
    assert before <= {n for n in provider.objects() if n.startswith("data/")}
    # the hold ends (review round 5, T5), but a version the clamp moved is never forgotten,
    # nor its object
    assert b.run("settings", "--keep-days", "0").exit_code == 0
    time.sleep(1.1)  # history times are in whole seconds: "older than 0 days" is a second on
    for text in ("b again", "b once more"):
        b.write("c.txt", text)
        assert b.run("push").exit_code == 0
    assert not before <= {n for n in provider.objects() if n.startswith("data/")}
    assert len(b.json("history", "a-report.txt")["versions"]) >= 2, "a version was forgotten"
    late = [v for v in b.json("history", "a-report.txt")["versions"] if v["late"]]
    assert late
    (b.folder / "a-report.txt").unlink()  # so the restore reads the kept blob
    again = b.run("restore", "a-report.txt", "--version", late[0]["version"], "--force")
    assert again.exit_code == 0, again.output
    assert (b.folder / "a-report.txt").read_text() == "A's work after removing X"


def test_a_frozen_device_never_deletes_what_a_backdated_removal_took_out(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 4, S4: the provider hides A's removal of X from B, and X signs a removal of
    A (cutoff 0) on the old parent. On B nothing challenges X's removal: A is out there. B
    must not destroy A's work: what B held of A moves to the history (kept whatever
    keep_days), and B's garbage collection keeps even the blob of a file A wrote that B never
    applied. Once B sees A's removal, the challenge is reported and B restores A's file."""
    a, b, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "x")
    a.write("held.txt", "A's file that B holds")
    assert a.run("push").exit_code == 0
    b.cg("pull")
    vid = vault_id_of(a)
    parent = provider.view(vid).head
    a.cg("device", "remove", x.rid)
    view = provider.view(vid)
    removal = view.head
    answer = backdated_removal(provider, view, parent, x.secret(), x.rid, a.rid)
    with provider.hiding(answer.name, answer.name + ".k"):  # A has not seen it yet
        a.write("unseen.txt", "A's file that B never applied")
        assert a.run("push").exit_code == 0
    data = {n for n in provider.objects() if n.startswith("data/")}
    monkeypatch.setenv("CLOUDGUARD_GC_GRACE", "0")
    with provider.hiding(removal.name, removal.name + ".k"):
        got = b.run("pull")
        assert got.exit_code == 0, got.output
        assert "challenged" not in got.output  # B cannot see the challenge
        assert not (b.folder / "held.txt").exists()
        assert b.json("history", "held.txt")["versions"], "A's version left B's history"
        for name in ("b1.txt", "b2.txt"):  # two pushes: maintenance runs, GC may delete
            b.write(name, "B carries on")
            got = b.run("push")
            assert got.exit_code == 0, got.output
        assert data <= {n for n in provider.objects() if n.startswith("data/")}, \
            "B deleted blobs of A's that only a backdated removal took out"
    got = b.run("pull")
    assert got.exit_code == 0 and "challenged" in got.output, got.output
    # review round 5, T6: A's push that no snapshot covered is refused, yet kept as late
    assert "kept in the history as late" in got.output, got.output
    unseen = b.json("history", "unseen.txt")["versions"]
    assert [(v["late"], v["current"]) for v in unseen] == [(True, False)], unseen
    assert not (b.folder / "unseen.txt").exists()  # never live
    restored = b.run("restore", "unseen.txt", "--version", unseen[0]["version"])
    assert restored.exit_code == 0, restored.output
    assert (b.folder / "unseen.txt").read_text() == "A's file that B never applied"
    restored = b.run("restore", "held.txt", "--version",
                     b.json("history", "held.txt")["versions"][0]["version"])
    assert restored.exit_code == 0, restored.output
    assert (b.folder / "held.txt").read_text() == "A's file that B holds"
    assert b.run("push").exit_code == 0
    # a re-encryption keeps them too: only challenged removals took A out (review round 6,
    # U4), and it says so
    got = b.run("key", "rotate", "--reencrypt")
    assert got.exit_code == 0, got.output
    assert "keeps the late versions of" in got.output and "forgets" not in got.output
    assert sorted((v["current"], v["late"]) for v in b.json("history", "held.txt")["versions"]
                  ) == [(False, True), (True, False)]


def test_a_reencryption_its_writer_is_taken_out_of_keeps_every_file_readable(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 7, V1: A answers the theft of X with `device remove X --reencrypt`, which
    moves every blob to a new object and deletes the old ones at once. X then takes A out with
    a removal signed on the old head (S1): A's moves are late, and undoing them would send
    every file back to a deleted object. A move is never undone to a place that is gone, so
    every device still reads every file."""
    a, b, x = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "x")
    a.write("paper.txt", "A's paper")
    a.cg("push")
    b.cg("pull")
    vid = vault_id_of(a)
    parent = provider.view(vid).head
    before = {n for n in provider.objects() if n.startswith("data/")}
    got = a.run("device", "remove", x.rid, "--reencrypt")
    assert got.exit_code == 0, got.output
    assert not before & {n for n in provider.objects() if n.startswith("data/")}
    b.cg("pull")
    view = provider.view(vid)
    backdated_removal(provider, view, parent, x.secret(), x.rid, a.rid)
    got = b.run("pull")  # the head's key object is gone too: B merges under a new KEK
    assert got.exit_code == 0 and "challenged" in got.output, got.output
    # A is out with cutoff 0 (S1): its versions are in the history, late, and readable
    for path, text in (("paper.txt", "A's paper"), ("doc.txt", "original")):
        (version,) = b.json("history", path)["versions"]
        assert version["late"], version
        got = b.run("restore", path, "--version", version["version"])
        assert got.exit_code == 0, got.output
        assert (b.folder / path).read_text() == text
    assert b.run("push").exit_code == 0
    assert b.json("verify", "--read-data")["ok"]
    restored = script_restores(b, local_remote, tmp_path)
    assert (restored / "paper.txt").read_text() == "A's paper"


def raced_reencryption(mp: pytest.MonkeyPatch, root: Path, remote: str, provider: Provider,
                       kit: Path | None = None) -> list[Dev]:
    """Review round 7, V1, the honest race: A re-encrypts (every blob moves to a new object,
    the old ones are deleted at once) while B, shown the remote as it was, retires A. B's
    removal counts, and its cutoff comes before A's moves, so they are late. C applied them.
    ``kit``: B exports a recovery kit there first (a member when A re-encrypts)."""
    a, b, c = make_vault(mp, root, remote, "a", "b", "c")
    a.write("paper.txt", "A's paper")
    a.cg("push")
    b.cg("pull")
    if kit is not None:
        b.cg("key", "export", str(kit), "--choose-passphrase")
        a.cg("pull")
    c.cg("pull")
    old = provider.objects()
    got = a.run("key", "rotate", "--reencrypt")
    assert got.exit_code == 0, got.output
    c.cg("pull")
    c.use()
    with vault.session(str(c.folder)) as s:  # C keeps where each blob was: deleted objects
        gone = {f"data/{e['pl']['o']}" for _p, sibs in s.state.items() for e in sibs.values()
                if e.get("pl")}
    assert gone and not gone & set(provider.objects()), gone
    with provider.showing(old):
        b.cg("device", "remove", a.rid)
    return [a, b, c]


def test_a_late_move_is_never_undone_to_a_deleted_object(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 7, V1: undoing A's late moves would send every file of C back to an
    object A's re-encryption deleted. A move is never undone to a place that is gone."""
    _a, _b, c = raced_reencryption(monkeypatch, tmp_path, local_remote, provider)
    got = c.run("pull")
    assert got.exit_code == 0, got.output
    listed = {n for n in provider.objects() if n.startswith("data/")}
    c.use()
    with vault.session(str(c.folder)) as s:
        places = {f"data/{e['o']}" for _p, sibs in s.state.items() for e in sibs.values()}
    assert places and places <= listed, places - listed


def test_a_reencryption_raced_by_its_writers_retirement_reads_fresh(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 7, V1: A's moves are only in its refused segments (and in C's state), so a
    fresh read of the remote, and B, which never applied them, would name deleted objects. A
    version whose object is gone takes the place a refused segment moved it to (its content
    is still checked by its signed hash), and the blobs open under the void commit's KEK."""
    _a, b, c = raced_reencryption(monkeypatch, tmp_path, local_remote, provider)
    for dev in (c, b):
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        assert dev.json("verify", "--read-data")["ok"], dev.name
    assert (b.folder / "paper.txt").read_text() == "A's paper"
    # a device added later reads them too, once a member's next key carries the void one
    assert c.run("key", "rotate").exit_code == 0
    code = c.json("device", "list")["vault_code"]
    d = Dev(monkeypatch, tmp_path, "d")
    d.use()
    req = json.loads(cg("clone", local_remote, str(d.folder), "--vault-code", code, "--name",
                        "d", "--json").stdout)
    c.cg("device", "approve", req["fingerprint"], "--yes")
    got = d.run("pull")
    assert got.exit_code == 0, got.output
    assert (d.folder / "paper.txt").read_text() == "A's paper"
    assert d.json("verify", "--read-data")["ok"]


def test_the_script_restores_a_reencryption_raced_by_its_writers_retirement(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 7, V1, the recovery script: a fresh restore, before any device read the
    race, takes the places from A's refused segments as cloudguard does. The kit was a member
    when A re-encrypted, so it opens the void commit's KEK through its own slot."""
    kit = tmp_path / "early-kit.json"
    _a, b, _c = raced_reencryption(monkeypatch, tmp_path, local_remote, provider, kit)
    restored = script_restores(b, local_remote, tmp_path, kit)
    assert sorted(p.name for p in restored.iterdir()) == ["doc.txt", "paper.txt"]
    assert (restored / "paper.txt").read_text() == "A's paper"
    assert (restored / "doc.txt").read_text() == "original"


def test_a_removed_members_move_to_junk_is_never_adopted_for_a_hidden_object(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 7, V1, the other side: a version whose object is gone takes the place a
    removed member's refused segment moved it to. X, removed, writes a late move of A's
    paper.txt to an object of junk, and the provider hides the real object from B. The junk
    does not decrypt to the signed hash, so B never takes that place: once the provider shows
    the real object again, B reads it (had B taken the place, garbage collection would have
    deleted the real object)."""
    moved: dict[str, Any] = {}
    move_to_junk = junk_mover(provider, moved)
    (_a, b, x), late = x_acts_late(monkeypatch, tmp_path, local_remote, provider, move_to_junk)
    assert any(n.startswith(f"m/{x.rid}-") for n in late)
    dot, real = moved["dot"], f"data/{moved['o']}"
    kit = tmp_path / "kit.json"
    b.cg("key", "export", str(kit), "--choose-passphrase")
    with provider.hiding(real):
        b.run("pull")
        b.use()
        with vault.session(str(b.folder)) as s:
            assert s.state.siblings("paper.txt")[dot]["o"] == moved["o"]
        # nor does the recovery script: it stops on the missing object, never reads junk
        got = run_script(kit, local_remote, tmp_path / "hidden-out")
        assert got.returncode == 3 and f"{real} is missing" in got.stderr, got.stderr
        assert "not taken" in got.stderr, got.stderr
    assert b.json("verify", "--read-data")["ok"]
    assert (b.folder / "paper.txt").read_text() == "original"
    restored = script_restores(b, local_remote, tmp_path, kit)
    assert (restored / "paper.txt").read_text() == "original"


def test_a_device_whose_approval_a_removal_voids_bricks_no_one(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 4, S6: an honest race. A approves D while B, not seeing that, retires A;
    D pushes a file and C, also not seeing the retirement, pulls it and compacts. B's removal
    voids A's add of D, so D was never a member. D's dots in C's snapshot still verify (under
    the keys the void add gave D): nobody stops at exit 3. D's version moves to the history on
    every device, D's segments are refused, and D itself is told to enrol again."""
    a, b, c = make_vault(monkeypatch, tmp_path, local_remote, "a", "b", "c")
    vid = vault_id_of(a)
    code = a.json("device", "list")["vault_code"]
    before = provider.objects()
    b.cg("device", "remove", a.rid)
    assert provider.view(vid).head.action == "remove"
    with provider.showing(before):  # A, C and D are kept from seeing the retirement
        d = Dev(monkeypatch, tmp_path, "d")
        d.use()
        req = json.loads(cg("clone", local_remote, str(d.folder), "--vault-code", code,
                            "--name", "d", "--json").stdout)
        d.rid = req["device"]
        a.cg("device", "approve", req["fingerprint"], "--yes")
        d.cg("pull")
        d.write("d-notes.txt", "D's work")
        assert d.run("push").exit_code == 0
        c.cg("pull")
        assert (c.folder / "d-notes.txt").read_text() == "D's work"
        compact(c)
    for dev in (b, c):
        got = dev.run("pull")
        assert got.exit_code == 0, got.output
        assert "approved only by commits a removal voided" in got.output
        assert not (dev.folder / "d-notes.txt").exists()
        assert dev.json("history", "d-notes.txt")["versions"], dev.name
    refused = d.run("push")
    assert refused.exit_code == 1 and "enrol again" in refused.output, refused.output
    # only a void add vouched for D: a member-wide restore asks first (review round 6, U4)
    asked = c.run("restore", "--late-of", d.rid)
    assert asked.exit_code == 2 and "--yes" in asked.output, asked.output
    assert "brought in only by an add that a removal voided" in asked.output
    assert not (c.folder / "d-notes.txt").exists()
    restored = c.run("restore", "d-notes.txt", "--version",
                     c.json("history", "d-notes.txt")["versions"][0]["version"])
    assert restored.exit_code == 0, restored.output
    assert c.run("push").exit_code == 0
    b.cg("pull")
    assert (b.folder / "d-notes.txt").read_text() == "D's work"
    assert d.rid not in {m["id"] for m in b.json("device", "list")["members"]}
    # D enrols again, as told (a fresh request, a fresh id), and B approves it
    d2 = Dev(monkeypatch, tmp_path, "d2")
    d2.use()
    req = json.loads(cg("clone", local_remote, str(d2.folder), "--vault-code", code, "--name",
                        "d2", "--json").stdout)
    assert req["device"] != d.rid
    b.cg("device", "approve", req["fingerprint"], "--yes")
    d2.cg("pull")
    assert (d2.folder / "d-notes.txt").read_text() == "D's work"


def test_void_adds_that_write_nothing_do_not_hold_garbage_collection(
        local_remote: str, provider: Provider, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review round 6, U5: X, removed, signs a void add of a fresh id on the old parent now
    and then. The member it brings in writes nothing, so it holds nothing: once the hold for
    X's removal has run out, garbage collection is not held. A void add whose member wrote
    segments holds it (their blobs may be nowhere else)."""
    from cloudguard.ops.maintain import _holding

    (a, b, x), _vid, view, _removal, parent, xs = x_removed_by_a(monkeypatch, tmp_path,
                                                                local_remote, provider)
    assert b.run("settings", "--keep-days", "1").exit_code == 0
    b.cg("pull")
    b.use()
    with vault.session(str(b.folder)) as s:
        assert _holding(s, time.time())  # X's removal was seen just now
        seen = s.index.get_meta("removal_seen", {})
        with s.index.transaction():  # ... and now two days ago
            s.index.set_meta("removal_seen", {k: t - 2 * 86400 for k, t in seen.items()})
        assert not _holding(s, time.time())
    kek = kek_via(provider, view, parent, x.rid, xs)
    ghost = keys.new_member_id()
    forge(provider, view, parent, xs, x.rid, "add",
          {**parent.members, ghost: Secret.generate().public("device")},
          dict(parent.removed), kek, parent.epoch)
    with vault.session(str(b.folder)) as s:
        assert ghost in s.ring.view.ghosts
        assert not _holding(s, time.time()), "a void add that wrote nothing held GC"
    provider.put(f"m/{ghost}-{1:012d}.d", os.urandom(5000))  # it wrote (refused, held)
    with vault.session(str(b.folder)) as s:
        assert _holding(s, time.time())


# --- local hardening and parser limits ------------------------------------------------------


def test_planted_tmp_symlink_does_not_redirect_a_kit(local_remote: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (a,) = make_vault(monkeypatch, tmp_path, local_remote, "a")
    target = tmp_path / "attacker-readable"
    target.write_text("")
    kit = tmp_path / "kit.json"
    (tmp_path / "kit.json.tmp").symlink_to(target)
    a.run("key", "export", str(kit), "--choose-passphrase")
    assert target.read_text() == "", "the kit was written through the planted symlink"
    assert not kit.is_symlink()


def test_deeply_nested_json_is_an_integrity_error(local_remote: str, provider: Provider,
                                                  tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit, an enrolment request and a recovery kit nested 20000 deep: exit 3 naming the
    commit (no RecursionError), the request ignored, the kit refused."""
    (a,) = make_vault(monkeypatch, tmp_path, local_remote, "a")
    deep = b"[" * 20000 + b"]" * 20000  # within every size cap, far beyond the recursion limit
    provider.put("enroll/0123456789abcdef",
                 chain.ENROLL_MAGIC + len(deep).to_bytes(4, "big") + deep + bytes(64))
    got = a.run("device", "approve", "AAAA-AAAA-AAAA-AAAA-AAAA-AAAA", "--yes")
    assert got.exit_code == 3 and "enroll/0123456789abcdef" in got.output, got.output
    kit = tmp_path / "deep-kit.json"
    kit.write_bytes(deep)
    c = Dev(monkeypatch, tmp_path, "c")
    c.use()
    got = CliRunner().invoke(main, ["clone", local_remote, str(c.folder), "--key-file",
                                    str(kit)], catch_exceptions=False)
    assert got.exit_code == 3 and "not valid JSON" in got.output, got.output
    name = f"keys/00000005-{hashlib.sha256(deep).hexdigest()}"
    provider.put(name, chain.COMMIT_MAGIC + len(deep).to_bytes(4, "big") + deep + bytes(64))
    before = provider.objects()
    got = a.run("pull")
    assert got.exit_code == 3 and name in got.output, got.output
    assert provider.objects() == before
