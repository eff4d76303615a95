"""scripts/cloudguard-decrypt.py: the stand-alone reader restores what cloudguard wrote.

Vaults are made with the real CLI; the script runs as a separate process (as a user would run
it, without cloudguard), and what it restores must equal the original folder: contents, modes,
mtimes, symlinks and empty folders. It must also refuse tampered or hostile vaults and then
leave nothing in its output folder.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import CHEAP_KDF_LOG_N, PASSPHRASE, cg, cg_json, sign_entries, tree

from cloudguard import chain, held, membership
from cloudguard import format as fmt
from cloudguard import keys as keymod
from cloudguard import manifest as mf
from cloudguard.errors import IntegrityError
from cloudguard.state import find_binding

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cloudguard-decrypt.py"
MiB = 1024 * 1024
T0 = 1_600_000_000_123_456_789  # a fixed mtime in ns (with sub-second digits)

HOSTILE = [
    "$(touch INJECTED).txt",
    "`touch INJECTED2`",
    "new\nline.txt",
    "ünïcødé 文件 📄.txt",
    "-rf",
    "é" * 127 + "x",  # 255 bytes in UTF-8
]


def decrypt(remote: str | Path, kit: Path, out: Path, *extra: str,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--remote-dir", str(remote), "--kit", str(kit),
         "--out", str(out), *extra],
        capture_output=True, text=True, check=False, env=env, stdin=subprocess.DEVNULL)


def restored(remote: str | Path, kit: Path, out: Path) -> dict[str, tuple[Any, ...]]:
    result = decrypt(remote, kit, out)
    assert result.returncode == 0, result.stderr
    assert len(result.stderr.splitlines()) == 0 and len(result.stdout.splitlines()) == 1
    return tree(out)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir())


def write(path: Path, data: bytes, mtime_ns: int = T0, mode: int = 0o644) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def populate(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(HOSTILE):
        write(root / name, f"hostile {i}\n".encode() * (i + 1), T0 + i)
    write(root / "small.txt", b"hello\n")
    write(root / "empty.txt", b"")
    write(root / "exactly-one-chunk.bin", os.urandom(65536))
    write(root / "chunk-plus-one.bin", os.urandom(65537))
    write(root / "stand-alone.bin", os.urandom(4 * MiB + 1), T0 + 10**9)  # not packed
    write(root / "script.sh", b"#!/bin/sh\necho hi\n", mode=0o750)
    (root / "empty-folder" / "nested-empty").mkdir(parents=True)
    (root / "docs" / "deeper").mkdir(parents=True)
    write(root / "docs" / "deeper" / "note.md", b"# note\n" * 100)
    os.chmod(root / "docs", 0o750)
    os.symlink("small.txt", root / "rel-link")
    os.symlink("/etc/passwd", root / "abs-link")
    os.symlink("does/not/exist", root / "dangling-link")
    os.symlink("../small.txt", root / "docs" / "up-link")


def new_vault(tmp_path: Path, remote: str, *init_args: str) -> tuple[Path, Path]:
    """A pushed vault with a recovery kit: returns (folder, kit)."""
    a, kit = tmp_path / "a", tmp_path / "kit.json"
    populate(a)
    cg("init", str(a), "--remote", remote, *init_args)
    cg("push", "--folder", str(a))
    cg("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    return a, kit


@dataclass(frozen=True)
class Built:
    remote: Path  # the vault's remote folder: tests copy it before they change it
    kit: Path
    original: dict[str, tuple[Any, ...]]  # tree() of the folder that was pushed
    device: tuple[chain.Secret, str]  # the pushing device's member secret and id


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """One padded vault (two pushes, a kit) shared by the tests that only read it, to save
    rclone round trips. Module-scoped, so it sets up the same isolated environment as
    conftest's per-test fixture does."""
    base = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("CLOUDGUARD_", "RCLONE_")) and name != "CLOUDGUARD_RCLONE":
                mp.delenv(name)
        for var in ("CLOUDGUARD_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME",
                    "XDG_STATE_HOME"):
            (base / var).mkdir(mode=0o700)
            mp.setenv(var, str(base / var))
        mp.setenv("RCLONE_CONFIG", "/dev/null")
        mp.setenv("CLOUDGUARD_KEYSTORE", "file")
        mp.setenv("CLOUDGUARD_PASSPHRASE", PASSPHRASE)
        mp.setenv("CLOUDGUARD_KIT_PASSPHRASE", PASSPHRASE)
        mp.setattr(keymod, "TEST_KDF_LOG_N", CHEAP_KDF_LOG_N)
        remote = base / "remote"
        remote.mkdir()
        a, kit = new_vault(base, str(remote))
        write(a / "second-push.txt", b"one more delta\n")
        cg("push", "--folder", str(a))
        binding = find_binding(str(a))
        yield Built(remote, kit, tree(a), (held.device_key(binding).load(), binding.device))


def copy_of(built: Built, dest: Path) -> Path:
    shutil.copytree(built.remote, dest, symlinks=True)
    return dest


def test_script_depends_only_on_cryptography() -> None:
    """Self-contained: the standard library and the cryptography package, nothing else."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(SCRIPT.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module
            modules.add(node.module.split(".")[0])
    assert modules - set(sys.stdlib_module_names) == {"cryptography"}


def test_restores_everything_padded(built: Built, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert restored(built.remote, built.kit, out) == built.original
    assert os.stat(out / "docs").st_mode & 0o7777 == 0o750
    assert not list(tmp_path.rglob("INJECTED*")) and not Path("INJECTED").exists()
    sizes = sorted(p.stat().st_size for p in (built.remote / "data").iterdir())
    # the stand-alone blob: header, padded content, one tag per chunk
    padded = fmt.padme(4 * MiB + 1)
    assert sizes[-1] == 84 + padded + 16 * -(-padded // 65536)


def test_restores_everything_unpadded(local_remote: str, tmp_path: Path) -> None:
    a, kit = new_vault(tmp_path, local_remote, "--padding", "none")
    out = tmp_path / "out"
    assert restored(local_remote, kit, out) == tree(a)
    assert not list(tmp_path.rglob("INJECTED*")) and not Path("INJECTED").exists()
    sizes = sorted(p.stat().st_size for p in (Path(local_remote) / "data").iterdir())
    assert sizes[-1] == 84 + 4 * MiB + 1 + 16 * 65  # the stand-alone blob, unpadded


def keys_listing(remote: str | Path) -> tuple[list[str], list[str]]:
    """(commits, key objects) in keys/, by name."""
    names = sorted(os.listdir(Path(remote) / "keys"))
    return [n for n in names if not n.endswith(".k")], [n for n in names if n.endswith(".k")]


def test_after_rotations(local_remote: str, tmp_path: Path) -> None:
    a, kit = new_vault(tmp_path, local_remote)
    cg("key", "rotate", "--folder", str(a))
    kit2 = tmp_path / "kit2.json"  # exported after the rotation: not a member before it
    cg("key", "export", str(kit2), "--folder", str(a), "--choose-passphrase")
    write(a / "after-rotation.txt", b"new under epoch 2\n", T0 + 5)
    write(a / "small.txt", b"changed\n", T0 + 6)
    cg("push", "--folder", str(a))
    commits, keyobjs = keys_listing(local_remote)
    # genesis, add kit, rotate, add kit2: every commit keeps its key object
    assert [c[:8] for c in commits] == ["00000000", "00000001", "00000002", "00000003"]
    assert len(keyobjs) == 4
    assert restored(local_remote, kit, tmp_path / "out1") == tree(a)
    assert restored(local_remote, kit2, tmp_path / "out2") == tree(a)

    objects_before = set(os.listdir(Path(local_remote) / "data"))
    cg("key", "rotate", "--reencrypt", "--folder", str(a))
    commits, keyobjs = keys_listing(local_remote)
    assert len(commits) == 5 and keyobjs == [commits[-1] + ".k"]  # commits are never deleted
    assert not objects_before & set(os.listdir(Path(local_remote) / "data"))
    assert restored(local_remote, kit, tmp_path / "out3") == tree(a)
    assert restored(local_remote, kit2, tmp_path / "out4") == tree(a)


def test_snapshots_and_deltas(local_remote: str, tmp_path: Path) -> None:
    a, kit = tmp_path / "a", tmp_path / "kit.json"
    a.mkdir()
    cg("init", str(a), "--remote", local_remote)
    cg("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    for i in range(34):
        write(a / f"f{i:02d}.txt", f"push {i}\n".encode(), T0 + i)
        if i % 5 == 4:
            os.unlink(a / f"f{i - 2:02d}.txt")
        if i % 7 == 6:
            write(a / "f00.txt", f"rewritten at {i}\n".encode(), T0 + 100 + i)
        cg("push", "--folder", str(a))
    names = os.listdir(Path(local_remote) / "m")
    assert any(n.endswith(".s") for n in names) and any(n.endswith(".d") for n in names)
    assert restored(local_remote, kit, tmp_path / "out") == tree(a)


def test_concurrent_conflicting_pushes(local_remote: str, tmp_path: Path) -> None:
    a, b, c, kit = tmp_path / "a", tmp_path / "b", tmp_path / "c", tmp_path / "kit.json"
    a.mkdir()
    write(a / "doc.txt", b"original\n")
    write(a / "other.txt", b"untouched\n")
    cg("init", str(a), "--remote", local_remote, "--name", "laptop")
    cg("push", "--folder", str(a))
    cg("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    cg("clone", local_remote, str(b), "--key-file", str(kit), "--name", "desk")
    older, newer = 1_700_000_000 * 10**9, 1_700_000_100 * 10**9
    write(a / "doc.txt", b"edited on the laptop\n", older)
    write(b / "doc.txt", b"edited on the desk, later\n", newer)
    cg("push", "--folder", str(a))
    cg("push", "--folder", str(b))  # without pulling: two siblings at doc.txt

    got = restored(local_remote, kit, tmp_path / "out1")
    stamp = time.strftime("%Y-%m-%d %H%M%S", time.gmtime(older // 10**9))
    copy = f"doc (conflict {stamp} laptop).txt"
    assert got["doc.txt"][1] == b"edited on the desk, later\n"  # newest mtime stays
    assert got[copy][1:] == (b"edited on the laptop\n", 0o644, older)
    assert sorted(got) == sorted(["doc.txt", copy, "other.txt"])
    # a third device resolves the same way (and writes the resolution to the remote)
    cg("clone", local_remote, str(c), "--key-file", str(kit))
    assert tree(c) == got
    assert restored(local_remote, kit, tmp_path / "out2") == got


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_tampering_fails_with_exit_3_and_writes_nothing(built: Built, tmp_path: Path) -> None:
    original, kit = built.remote, built.kit
    objects = sorted((original / "data").iterdir(), key=lambda p: p.stat().st_size)
    big, pack = objects[-1].name, objects[0].name
    segment = sorted((original / "m").iterdir())[0].name

    def tamper_big(r: Path) -> None:
        flip(r / "data" / big, 84 + 3 * 65552 + 7)  # inside chunk 3

    def tamper_pack(r: Path) -> None:
        flip(r / "data" / pack, 20 + 84 + 2)  # the first blob's first chunk

    def truncate_big(r: Path) -> None:
        with open(r / "data" / big, "r+b") as fh:
            fh.truncate(fh.seek(0, os.SEEK_END) - 1)

    def delete_big(r: Path) -> None:
        os.unlink(r / "data" / big)

    def tamper_segment(r: Path) -> None:
        flip(r / "m" / segment, 30)

    def delete_first_delta(r: Path) -> None:
        os.unlink(r / "m" / segment)

    def alter_descriptor(r: Path) -> None:
        doc = json.loads((r / "cloudguard.json").read_text())
        (r / "cloudguard.json").write_text(json.dumps({**doc, "padding": "none"}))

    commits, _keyobjs = keys_listing(original)
    genesis, head = "keys/" + commits[0], "keys/" + commits[-1]

    def add_slot(r: Path) -> None:
        path = r / (head + ".k")
        doc = json.loads(path.read_text())
        doc["slots"]["0123456789abcdef"] = next(iter(doc["slots"].values()))
        path.write_text(json.dumps(doc))

    def tamper_commit(r: Path) -> None:
        flip(r / head, 40)  # inside the signed body

    def delete_genesis(r: Path) -> None:
        os.unlink(r / genesis)

    def outsider_commit(r: Path) -> None:
        forge_commit(r, kit, chain.Secret.generate(), "0123456789abcdef")

    def outsider_segment(r: Path) -> None:
        add_delta(r, kit, [], writer=(chain.Secret.generate(), "0123456789abcdef"))

    def device_segment_signed_by_another(r: Path) -> None:
        add_delta(r, kit, [], writer=(chain.Secret.generate(), built.device[1]))

    def kit_segment(r: Path) -> None:  # signed by the kit itself: kits never write
        add_delta(r, kit, [])

    def wrong_position(r: Path) -> None:  # a verified commit named at another position
        add_delta(r, kit, [], writer=built.device, pos_offset=1)

    def waits_on_a_missing_one(r: Path) -> None:  # named: the missing one, not the waiting one
        add_delta(r, kit, [], writer=built.device, deps={"0123456789abcdef": 1})

    outsider = "m/0123456789abcdef-000000000001.d"
    cases = [(tamper_big, "stand-alone.bin"), (tamper_pack, "data/" + pack),
             (truncate_big, "stand-alone.bin"), (delete_big, "data/" + big),
             (tamper_segment, segment), (delete_first_delta, f"m/{segment} is missing"),
             (alter_descriptor, "cloudguard.json"), (add_slot, head + ".k"),
             (tamper_commit, head), (delete_genesis, genesis),
             (outsider_commit, "not a member of the parent"),
             (outsider_segment, outsider + " was written by 0123456789abcdef, who is not a member"),
             (device_segment_signed_by_another, "bad signature"),
             (kit_segment, "recovery kit"), (wrong_position, "at the wrong position"),
             (waits_on_a_missing_one, "m/0123456789abcdef-000000000001.d is missing")]
    for i, (tamper, named) in enumerate(cases):
        copy = copy_of(built, tmp_path / f"copy{i}")
        tamper(copy)
        out = tmp_path / f"out{i}"
        result = decrypt(copy, kit, out)
        assert result.returncode == 3, (tamper.__name__, result.stderr)
        assert named in result.stderr, (tamper.__name__, result.stderr)
        assert len(result.stderr.splitlines()) == 1
        assert_nothing_written(out)


def test_other_errors_exit_1(built: Built, tmp_path: Path) -> None:
    remote, kit = built.remote, built.kit
    out = tmp_path / "out"
    wrong = decrypt(remote, kit, out, env={**os.environ, "CLOUDGUARD_KIT_PASSPHRASE": "wrong"})
    assert wrong.returncode == 1 and "passphrase" in wrong.stderr
    assert_nothing_written(out)
    out.mkdir()  # an existing empty folder is fine; the passphrase may come from another var
    other_var = decrypt(remote, kit, out, "--passphrase-env", "MY_PASS",
                        env={**os.environ, "CLOUDGUARD_KIT_PASSPHRASE": "", "MY_PASS":
                             PASSPHRASE})
    assert other_var.returncode == 0, other_var.stderr
    assert tree(out) == built.original
    again = decrypt(remote, kit, out)  # a folder that holds anything is refused
    assert again.returncode == 1 and "empty" in again.stderr
    assert tree(out) == built.original
    shutil.rmtree(out)

    copy = copy_of(built, tmp_path / "copy")
    doc = json.loads((copy / "cloudguard.json").read_text())
    (copy / "cloudguard.json").write_text(json.dumps({**doc, "format": 3}))
    unknown = decrypt(copy, kit, out)
    assert unknown.returncode == 1 and "format 3" in unknown.stderr
    usage = subprocess.run([sys.executable, str(SCRIPT), "--kit", str(kit)],
                           capture_output=True, text=True, check=False)
    assert usage.returncode == 1
    assert_nothing_written(out)


def open_chain(remote: Path, kit: Path) -> tuple[keymod.Kit, membership.View, bytes]:
    """The kit, the verified chain and the head's KEK, read with the package (test input only)."""
    opened = keymod.read_kit(kit, PASSPHRASE)
    names = [f"keys/{n}" for n in os.listdir(remote / "keys")]
    descriptor = hashlib.sha256((remote / "cloudguard.json").read_bytes()).hexdigest()

    def fetch(name: str) -> bytes:
        return (remote / name).read_bytes()

    view = membership.verify(opened.vault, names, fetch, set(), descriptor)
    kek = chain.open_keys(view, view.head, fetch(view.head.name + ".k"), opened.rid,
                          opened.secret.x)
    return opened, view, kek


def forge_commit(remote: Path, kit: Path, signer: chain.Secret, rid: str) -> None:
    """A rotation on the head signed by someone who is not a member."""
    _opened, view, _kek = open_chain(remote, kit)
    head = view.head
    body = json.loads(head.body)
    body.update({"pos": head.pos + 1, "parent": head.id, "action": "rotate", "signer": rid,
                 "epoch": head.epoch + 1, "kek": fmt.kek_commit(os.urandom(32)),
                 "vault": view.vault_id})
    data, raw = chain.encode_signed(chain.COMMIT_MAGIC, body, signer.s, b"cloudguard/v2/commit")
    (remote / chain.commit_name(head.pos + 1, chain.commit_id(raw))).write_bytes(data)


def add_delta(remote: Path, kit: Path, ops: list[dict[str, Any]],
              writer: tuple[chain.Secret, str | None] | None = None, pos_offset: int = 0,
              head: str | None = None, deps: dict[str, int] | None = None) -> str:
    """Append a validly sealed delta, the writer's next segment: written by the kit's member,
    or signed by ``writer`` (key, member id; None: the kit's id), under the head commit (or
    the id ``head``, at the head's position + ``pos_offset``). Returns its name. Uses the
    package only to build the test input."""
    opened, view, kek = open_chain(remote, kit)
    signer, device = opened.secret, opened.rid
    if writer is not None:
        signer, device = writer[0], writer[1] or opened.rid
    seq = 1 + max([int(n[17:29]) for n in os.listdir(remote / "m") if n.startswith(device)],
                  default=0)
    name = f"m/{device}-{seq:012d}.d"
    payload = {"kind": "delta", "device": device, "seq": seq, "deps": deps or {}, "dh": {},
               "prev": None, "created": "2024-01-01T00:00:00Z", "ops": ops}
    (remote / name).write_bytes(fmt.seal_segment(kek, view.head.pos + pos_offset,
                                                 head or view.head.id, view.vault_id, name,
                                                 sign_entries(payload, signer.s,
                                                              view.vault_id), signer.s))
    return name


def test_hostile_manifest_is_refused(built: Built, tmp_path: Path) -> None:
    """A device can write any (authenticated) manifest: unsafe paths, and paths below a
    symlink or a file, must be refused before anything is written."""
    kit = built.kit
    outside = tmp_path / "outside"
    folder = {"t": "d", "x": 0o755}
    cases: dict[str, tuple[int, list[dict[str, Any]]]] = {
        "dotdot": (3, [{"p": "../escaped", "e": folder, "rm": []}]),
        "dot": (3, [{"p": "docs/./x", "e": folder, "rm": []}]),
        "absolute": (3, [{"p": str(outside), "e": folder, "rm": []}]),
        "empty-component": (3, [{"p": "docs//x", "e": folder, "rm": []}]),
        "link-parent": (1, [{"p": "evil", "e": {"t": "l", "l": str(outside), "m": 0}, "rm": []},
                            {"p": "evil/inside", "e": folder, "rm": []}]),
        "file-parent": (1, [{"p": "small.txt/inside", "e": folder, "rm": []}]),
    }
    for case, (code, ops) in cases.items():
        copy = copy_of(built, tmp_path / f"copy-{case}")
        add_delta(copy, kit, ops, writer=built.device)
        out = tmp_path / f"out-{case}"
        result = decrypt(copy, kit, out)
        assert result.returncode == code, (case, result.stderr)
        assert len(result.stderr.splitlines()) == 1
        assert_nothing_written(out)
        assert not outside.exists() and not (tmp_path / "escaped").exists()


def test_removed_device(local_remote: str, tmp_path: Path) -> None:
    """A removed device's writes up to its cutoff stay (here in the remover's snapshot); a
    segment it signs after its removal is refused with a warning, and the rest restored."""
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    write(a / "from-a.txt", b"a\n")
    cg("init", str(a), "--remote", local_remote, "--name", "laptop")
    cg("push", "--folder", str(a))
    cg("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    cg("clone", local_remote, str(b), "--key-file", str(kit), "--name", "desk")
    write(b / "from-b.txt", b"b\n", T0 + 1)
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(a))
    desk_secret = held.device_key(find_binding(str(b))).load()
    listed = cg_json("device", "list", "--folder", str(a))
    desk = next(m["id"] for m in listed["members"] if m["name"] == "desk")
    cg("device", "remove", desk, "--folder", str(a))
    assert restored(local_remote, kit, tmp_path / "out1") == tree(a)
    assert tree(a)["from-b.txt"][1] == b"b\n"

    # a late write, signed by the removed device under a commit it was a member of
    remote = Path(local_remote)
    _opened, view, _kek = open_chain(remote, kit)
    assert view.removed[desk].seq == 1
    before = view.commits[str(view.head.parent)]
    name = f"m/{desk}-{2:012d}.d"
    payload = {"kind": "delta", "device": desk, "seq": 2, "deps": {desk: 1}, "dh": {},
               "prev": None, "created": "2024-01-01T00:00:00Z",
               "ops": [{"p": "from-a.txt", "e": None, "rm": []}]}
    (remote / name).write_bytes(fmt.seal_segment(view.keks[before.kek], before.pos, before.id,
                                                 view.vault_id, name, payload, desk_secret.s))
    out = tmp_path / "out2"
    result = decrypt(remote, kit, out)
    assert result.returncode == 0, result.stderr
    assert name in result.stderr and "after its removal" in result.stderr
    assert tree(out) == tree(a)


def test_segment_under_an_unknown_commit_is_skipped(built: Built, tmp_path: Path) -> None:
    """A segment naming a commit that is not verified (not listed yet) is skipped with a
    warning, as cloudguard defers it; everything else is restored."""
    copy = copy_of(built, tmp_path / "copy")
    name = add_delta(copy, built.kit, [{"p": "small.txt", "e": None, "rm": []}],
                     writer=built.device, head="ab" * 32)
    result = decrypt(copy, built.kit, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert name in result.stderr and "not verified" in result.stderr
    assert tree(tmp_path / "out") == built.original


# --- the script's rules against cloudguard's, on chains and manifests built in memory -----
#
# The script is loaded as a module; commits and segments are built with the package (test
# input only) and written to a folder laid out like a remote. Both readers then read it, and
# must agree.


def load_script() -> Any:
    spec = importlib.util.spec_from_file_location("cloudguard_decrypt", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


script = load_script()
DESCRIPTOR = "0" * 64


class Lab:
    """A vault's keys/ and m/ folders, built commit by commit and segment by segment."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "keys").mkdir(parents=True)
        (root / "m").mkdir()
        self.secrets: dict[str, chain.Secret] = {}
        self.kinds: dict[str, str] = {}
        self.keks: dict[str, bytes] = {}  # kek_commit -> KEK
        self.vault_id = ""

    def member(self, kind: str = "device") -> str:
        rid = os.urandom(8).hex()
        self.secrets[rid], self.kinds[rid] = chain.Secret.generate(), kind
        return rid

    def keys(self, rid: str) -> chain.MemberKeys:
        return self.secrets[rid].public(self.kinds[rid])

    def _put(self, made: tuple[chain.Commit, bytes, bytes], kek: bytes) -> chain.Commit:
        commit, data, keyobj = made
        (self.root / commit.name).write_bytes(data)
        (self.root / (commit.name + ".k")).write_bytes(keyobj)
        self.keks[commit.kek] = kek
        return commit

    def genesis(self, rid: str) -> chain.Commit:
        kek = os.urandom(32)
        made = chain.build(None, "", self.secrets[rid], rid, "genesis", {rid: self.keys(rid)},
                           {}, kek, 1, {rid: "genesis"}, {}, DESCRIPTOR, "2024-01-01T00:00:00Z")
        self.vault_id = made[0].id
        return self._put(made, kek)

    def commit(self, parent: chain.Commit, signer: str, action: str,
               members: dict[str, chain.MemberKeys], removed: dict[str, chain.Cutoff],
               merges: list[str] | None = None) -> chain.Commit:
        kek = self.keks[parent.kek] if action == "add" else os.urandom(32)
        epoch = parent.epoch + (action != "add")
        view = membership.View(self.vault_id, {}, parent, {}, {})
        made = chain.build(view, self.vault_id, self.secrets[signer], signer, action, members,
                           removed, kek, epoch, {r: "member" for r in members}, {}, DESCRIPTOR,
                           "2024-01-01T00:00:00Z", merges)
        return self._put(made, kek)

    def add(self, parent: chain.Commit, signer: str, rid: str) -> chain.Commit:
        return self.commit(parent, signer, "add", {**parent.members, rid: self.keys(rid)},
                           dict(parent.removed))

    def remove(self, parent: chain.Commit, signer: str, rid: str, seq: int = 0,
               digest: str | None = None) -> chain.Commit:
        members = {r: k for r, k in parent.members.items() if r != rid}
        removed = {**parent.removed, rid: chain.Cutoff(parent.members[rid].s, seq, digest)}
        return self.commit(parent, signer, "remove", members, removed)

    def merge(self, parent: chain.Commit, signer: str, tips: list[chain.Commit],
              drop: str | None = None) -> chain.Commit:
        """A merge of ``tips`` into ``parent`` (with member ``drop`` left out: a bad one)."""
        view = self.reference()
        members, removed = membership.merge_members(view, parent, [t.id for t in tips])
        members.pop(drop or "", None)
        return self.commit(parent, signer, "merge", members, removed, [t.id for t in tips])

    def segment(self, writer: str, seq: int, kind: str, head: chain.Commit,
                **fields: Any) -> str:
        """Seal and store a segment; returns its SHA-256."""
        name = f"m/{writer}-{seq:012d}.{kind}"
        payload = {"kind": {"d": "delta", "s": "snapshot"}[kind], "device": writer, "seq": seq,
                   "prev": None, "created": "2024-01-01T00:00:00Z", **fields}
        data = fmt.seal_segment(self.keks[head.kek], head.pos, head.id, self.vault_id, name,
                                sign_entries(payload, lambda dev: self.secrets[dev].s,
                                             self.vault_id),
                                self.secrets[writer].s)
        (self.root / name).write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    def names(self, prefix: str) -> list[str]:
        return sorted(f"{prefix}{n}" for n in os.listdir(self.root / prefix.rstrip("/")))

    def reference(self) -> membership.View:
        return membership.verify(self.vault_id, self.names("keys/"),
                            lambda n: (self.root / n).read_bytes(), set(), DESCRIPTOR)

    def scripted(self) -> Any:
        """The script's verified chain, with every KEK (the lab skips the key objects)."""
        got = script.verify_chain(self.root, self.vault_id, DESCRIPTOR)
        got.keks.update(self.keks)
        return got


def assert_same_chain(lab: Lab) -> tuple[membership.View, Any]:
    ref, got = lab.reference(), lab.scripted()
    assert set(got.commits) == set(ref.commits)
    assert got.head.id == ref.head.id
    assert set(got.members) == set(ref.members) and set(got.removed) == set(ref.removed)
    assert {(c.seq, c.hash) for c in got.removed.values()} == {
        (c.seq, c.hash) for c in ref.removed.values()}
    return ref, got


def test_void_commits_follow_cloudguard(tmp_path: Path) -> None:
    """"Void commits": A removes X in R. A branch X signs from the past (an add of a key it
    holds, and what is built on it) is void; X answering with a concurrent removal of A
    challenges A's removal: removals win, so both are void but both targets are out."""
    lab = Lab(tmp_path / "past")
    a, x, e, k = lab.member(), lab.member(), lab.member(), lab.member("kit")
    base = lab.add(lab.add(lab.genesis(a), a, x), a, k)
    removal = lab.remove(base, a, x)
    past = lab.add(base, x, e)
    built_on = lab.commit(past, e, "rotate", dict(past.members), dict(past.removed))
    ref, got = assert_same_chain(lab)
    assert removal.id in got.commits and not {past.id, built_on.id} & set(got.commits)
    assert got.head.id == removal.id and set(got.members) == {a, k}
    assert sorted(ref.void) == sorted(w.split(":")[0] for w in got.warnings
                                      if w.startswith("keys/"))

    lab = Lab(tmp_path / "mutual")
    a, x, k = lab.member(), lab.member(), lab.member("kit")
    base = lab.add(lab.add(lab.genesis(a), a, x), a, k)
    removal, answer = lab.remove(base, a, x), lab.remove(base, x, a)
    ref, got = assert_same_chain(lab)
    assert {removal.id, answer.id} <= set(got.voided)
    assert got.challenged == ref.challenged == {removal.id, answer.id}
    assert got.contested == ref.contested == {a, x}
    assert set(got.removed) == {a, x} and set(got.members) == {k}
    assert got.head.id == base.id and any("challenged" in w for w in got.warnings)


def test_removals_win_in_both(tmp_path: Path) -> None:
    """Review round 4, S2: B, kept from seeing A's removal of X, adds D on X's backdated
    rotation, and X also removes B on the old parent. Removals win in both readers: B is out,
    every commit of B that X's removal does not build on is void (D's add with them), and
    only A is left."""
    lab = Lab(tmp_path / "remote")
    a, x, b, d = lab.member(), lab.member(), lab.member(), lab.member()
    base = lab.add(lab.add(lab.genesis(a), a, x), a, b)
    removal = lab.remove(base, a, x)
    x_rot = lab.commit(base, x, "rotate", dict(base.members), dict(base.removed))
    b_add = lab.add(x_rot, b, d)
    x_rm_b = lab.remove(base, x, b)  # backdated, and not of its remover
    b_rot = lab.commit(removal, b, "rotate", dict(removal.members), dict(removal.removed))
    ref, got = assert_same_chain(lab)
    assert {b_add.id, b_rot.id, x_rot.id, x_rm_b.id} <= set(got.voided)
    assert got.challenged == ref.challenged == {x_rm_b.id}
    # D, approved only by B's void add, is out too (review round 4, S6)
    assert set(got.members) == set(ref.members) == {a} and set(got.removed) == {x, b, d}
    assert got.head.id == removal.id


def test_head_and_merges_follow_cloudguard(tmp_path: Path) -> None:
    """"Races": two devices add a kit each on one parent; the head is the child with the
    lowest id, and a merge commit must hold exactly the merged member set."""
    for case in ("race", "merged", "bad-merge"):
        lab = Lab(tmp_path / case)
        a, b, k1, k2 = lab.member(), lab.member(), lab.member("kit"), lab.member("kit")
        base = lab.add(lab.genesis(a), a, b)
        one, two = lab.add(base, a, k1), lab.add(base, b, k2)
        head, other = sorted((one, two), key=lambda c: c.id)
        if case == "race":
            _ref, got = assert_same_chain(lab)
            assert got.head.id == head.id and set(got.members) == {a, b, k1, k2}
        elif case == "merged":
            merge = lab.merge(head, a, [other])
            _ref, got = assert_same_chain(lab)
            assert got.head.id == merge.id and set(got.head.members) == {a, b, k1, k2}
        else:
            merge = lab.merge(head, a, [other], drop=k2)
            with pytest.raises(IntegrityError):
                lab.reference()
            with pytest.raises(script.IntegrityFailure, match="the merge does not equal"):
                lab.scripted()


def reference_manifest(lab: Lab, cache: Path) -> tuple[dict[str, Any], dict[str, int],
                                                       list[str]]:
    view = lab.reference()

    def opener(name: str, dev: str, seq: int, data: bytes) -> dict[str, Any]:
        return chain.accept_segment(view, name, dev, seq, data, lambda c: lab.keks[c.kek])

    skipped: list[str] = []
    listing = {n: (lab.root / n).stat().st_size for n in lab.names("m/")}
    loaded = mf.load(listing, lambda n: (lab.root / n).read_bytes(), opener, "f" * 16, {},
                     mf.SegmentCache(cache), None,
                     {r: (c.seq, c.hash) for r, c in view.removed.items()}, skipped,
                     mf.Verifier(view.vault_id, view.signer_key))
    return dict(loaded.state.items()), loaded.state.ctx, skipped


@pytest.mark.parametrize("honest", ["snapshot", "delta"])
def test_removed_member_writes_follow_cloudguard(tmp_path: Path, honest: str) -> None:
    """"Writer rules": A removes X with the cutoff (2, hash of X's segment 2). X's segments 1
    and 2 are vouched for (cutoff hash, then prev) and applied; a snapshot X signed later under
    seq 1 is skipped, and so is X's late delta 3. A applied that late delta before it saw the
    removal: its snapshot (entry and ctx) or its delta's deps are clamped to the cutoff, not
    refused."""
    lab = Lab(tmp_path / "remote")
    a, x = lab.member(), lab.member()
    joined = lab.add(lab.genesis(a), a, x)
    folder = {"t": "d", "x": 0o755}

    def put(path: str) -> list[dict[str, Any]]:
        return [{"p": path, "e": folder, "rm": []}]

    h1 = lab.segment(x, 1, "d", joined, deps={}, dh={}, ops=put("x1"))
    h2 = lab.segment(x, 2, "d", joined, deps={x: 1}, dh={}, prev=h1, ops=put("x2"))
    lab.segment(x, 1, "s", joined, ctx={a: 10**6, x: 1}, paths={})  # would delete everything
    removal = lab.remove(joined, a, x, 2, h2)
    lab.segment(x, 3, "d", joined, deps={x: 2}, dh={}, prev=h2, ops=put("x3"))
    if honest == "snapshot":
        h = lab.segment(a, 1, "s", removal, ctx={a: 1, x: 3},
                        paths={"a1": {f"{a}:1": folder}, "x1": {f"{x}:1": folder},
                               "x2": {f"{x}:2": folder}, "x3": {f"{x}:3": folder}})
        lab.segment(a, 2, "d", removal, deps={a: 1, x: 3}, dh={}, prev=h, ops=put("a2"))
    else:
        lab.segment(a, 1, "d", removal, deps={x: 3}, dh={}, ops=put("a1"))
    paths, ctx, ref_skipped = reference_manifest(lab, tmp_path / "cache")
    state, skipped = script.load_manifest(lab.root, lab.scripted())
    assert state.paths == paths and state.ctx == ctx
    assert sorted(paths) == (["a1", "a2", "x1", "x2"] if honest == "snapshot"
                             else ["a1", "x1", "x2"])
    assert ctx[x] == 2
    assert len(skipped) == len(ref_skipped)
    for name in (f"m/{x}-{1:012d}.s", f"m/{x}-{3:012d}.d"):
        assert any(name in s for s in skipped), skipped
    if honest == "snapshot":
        assert any("past its removal; they are left out" in s for s in skipped)


def test_removal_with_no_cutoff_hash_vouches_for_nothing(tmp_path: Path) -> None:
    """A removal that recorded no hash (its remover applied none of X's segments) vouches for
    none of them: X's segment at the cutoff is skipped too, and the rest restores."""
    lab = Lab(tmp_path / "remote")
    a, x = lab.member(), lab.member()
    joined = lab.add(lab.genesis(a), a, x)
    lab.segment(x, 1, "d", joined, deps={}, dh={},
                ops=[{"p": "x1", "e": {"t": "d"}, "rm": []}])
    lab.remove(joined, a, x, 1, None)
    paths, ctx, ref_skipped = reference_manifest(lab, tmp_path / "cache")
    state, skipped = script.load_manifest(lab.root, lab.scripted())
    assert state.paths == paths == {} and state.ctx == ctx
    assert len(skipped) == len(ref_skipped) == 1 and "not on the chain" in skipped[0]


def folder_op(path: str) -> list[dict[str, Any]]:
    return [{"p": path, "e": {"t": "d", "x": 0o755}, "rm": []}]


def test_challenged_removals_clamp_like_any_other(tmp_path: Path) -> None:
    """"Void commits": A removes X (cutoff 1) while X removes A (cutoff 0). Removals win: both
    are challenged (void), both members are out, and each cutoff pins and clamps like any
    other (X's segment 2 and A's segments 1 and 2 are refused; the live state holds X's first
    write only). A rotation A signs on its removal of X is void too."""
    lab = Lab(tmp_path / "remote")
    a, x, k = lab.member(), lab.member(), lab.member("kit")
    base = lab.add(lab.add(lab.genesis(a), a, x), a, k)
    hx1 = lab.segment(x, 1, "d", base, deps={}, dh={}, ops=folder_op("x1"))
    removal = lab.remove(base, a, x, 1, hx1)
    answer = lab.remove(base, x, a, 0, None)
    lab.segment(x, 2, "d", answer, deps={x: 1}, dh={}, prev=hx1, ops=folder_op("x2"))
    ha1 = lab.segment(a, 1, "d", removal, deps={}, dh={}, ops=folder_op("a1"))
    later = lab.commit(removal, a, "rotate", dict(removal.members), dict(removal.removed))
    lab.segment(a, 2, "d", later, deps={a: 1}, dh={}, prev=ha1, ops=folder_op("a2"))
    ref, got = assert_same_chain(lab)
    assert ref.challenged == got.challenged == {removal.id, answer.id}
    assert ref.contested == got.contested == {a, x}
    assert set(got.voided) == set(ref.voided) == {later.id, removal.id, answer.id}
    assert {r: c.seq for r, c in got.removed.items()} == {a: 0, x: 1}
    paths, ctx, ref_skipped = reference_manifest(lab, tmp_path / "cache")
    state, skipped = script.load_manifest(lab.root, lab.scripted())
    assert state.paths == paths and state.ctx == ctx == {x: 1}
    assert sorted(paths) == ["x1"]
    assert len(skipped) == len(ref_skipped) and any(f"{x}-000000000002" in r for r in skipped)


def test_a_merge_does_not_bring_in_a_void_add(tmp_path: Path) -> None:
    """Only a genesis or an add brings a member in: X adds E on a branch that B's removal of
    X does not build on (void), and A merged that branch in before. The merge stays valid,
    but E, listed in it, is not a member: it is out as if removed with cutoff 0 (review round
    4, S6), so its segments are refused (skipped), not an integrity failure."""
    lab = Lab(tmp_path / "remote")
    a, x, b, e = lab.member(), lab.member(), lab.member(), lab.member()
    base = lab.add(lab.add(lab.genesis(a), a, x), a, b)
    rotated = lab.commit(base, a, "rotate", dict(base.members), dict(base.removed))
    past = lab.add(base, x, e)
    merge = lab.merge(rotated, a, [past])
    assert e in merge.members
    removal = lab.remove(base, b, x)
    ref, got = assert_same_chain(lab)
    assert {merge.id, removal.id} <= set(got.commits) and past.id in got.voided
    assert e not in got.members and e not in ref.members
    assert got.removed[e].seq == ref.removed[e].seq == 0 and got.writer_key(e) is not None
    lab.segment(e, 1, "d", merge, deps={}, dh={}, ops=folder_op("e1"))
    paths, _ctx, ref_skipped = reference_manifest(lab, tmp_path / "cache")
    state, skipped = script.load_manifest(lab.root, lab.scripted())
    assert "e1" not in paths and state.paths == paths
    assert any(f"{e}-000000000001" in r for r in skipped)
    assert any(f"{e}-000000000001" in r for r in ref_skipped)


def test_segments_under_a_void_commit_are_read(tmp_path: Path) -> None:
    """"Void commits": X rotates on a branch A's removal of X does not build on; the rotation
    is void, but its KEK still opens what was written under it by writers the rules accept:
    B (a member) and X up to the segment its removal vouches for. The kit opens the void
    commit's key object for that KEK."""
    lab = Lab(tmp_path / "remote")
    a, x, b, k = lab.member(), lab.member(), lab.member(), lab.member("kit")
    base = lab.add(lab.add(lab.add(lab.genesis(a), a, x), a, b), a, k)
    past = lab.commit(base, x, "rotate", dict(base.members), dict(base.removed))
    hx1 = lab.segment(x, 1, "d", past, deps={}, dh={}, ops=folder_op("x1"))
    lab.segment(b, 1, "d", past, deps={}, dh={}, ops=folder_op("b1"))
    lab.remove(base, a, x, 1, hx1)
    ref, got = assert_same_chain(lab)
    assert set(got.voided) == set(ref.voided) == {past.id}
    paths, ctx, ref_skipped = reference_manifest(lab, tmp_path / "cache")
    kit = script.Kit(lab.vault_id, k, base.id, lab.secrets[k].x, lab.secrets[k].s)
    keyed = script.load_keys(lab.root, script.Vault(DESCRIPTOR), kit)
    assert keyed.keks[past.kek] == lab.keks[past.kek]
    state, skipped = script.load_manifest(lab.root, keyed)
    assert state.paths == paths and state.ctx == ctx == {b: 1, x: 1}
    assert sorted(paths) == ["b1", "x1"] and skipped == ref_skipped == []


def test_kit_writes_are_an_integrity_failure(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "remote")
    a, k = lab.member(), lab.member("kit")
    added = lab.add(lab.genesis(a), a, k)
    lab.segment(k, 1, "d", added, deps={}, dh={}, ops=[])
    with pytest.raises(IntegrityError, match="kit"):
        reference_manifest(lab, tmp_path / "cache")
    with pytest.raises(script.IntegrityFailure, match="recovery kit"):
        script.load_manifest(lab.root, lab.scripted())


def test_padded_sealed_json_opens(tmp_path: Path) -> None:
    """Member names and KEK history are padded with trailing spaces (valid JSON whitespace)."""
    kek, aad = os.urandom(32), b"ctx"
    payload = {"0123456789abcdef": "laptop"}
    sealed = fmt.seal_json(kek, b"cloudguard/v2/names", aad, payload, pad=True)
    assert len(fmt.unb64(sealed)) >= 12 + 256 + 16  # padded to at least 256 bytes
    assert script.open_sealed_json(kek, b"cloudguard/v2/names", aad, sealed) == payload
    with pytest.raises(script.BadData):
        script.open_sealed_json(kek, b"cloudguard/v2/history", aad, sealed)


def test_entries_may_carry_w(built: Built) -> None:
    """"w" (the KEK the DEK was first wrapped under) is accepted, and checked for form."""
    _opened, view, kek = open_chain(built.remote, built.kit)
    entries = []
    for name in sorted(os.listdir(built.remote / "m")):
        data = (built.remote / "m" / name).read_bytes()
        payload = fmt.open_segment(view.keks.get(view.commits[fmt.segment_head(data)[1]].kek,
                                                 kek), view.vault_id, f"m/{name}", data)
        entries += [op["e"] for op in payload.get("ops", []) if op.get("e")]
        entries += [e for sibs in payload.get("paths", {}).values() for e in sibs.values()]
    files = [e for e in entries if e["t"] == "f"]
    assert files and all(fmt.kek_commit(kek) == e["w"] for e in files)  # cloudguard writes w
    script.check_entry("a.txt", files[0])
    with pytest.raises(script.IntegrityFailure, match="'w'"):
        script.check_entry("a.txt", {**files[0], "w": "not hex"})


def test_the_script_signs_entries_as_the_vectors_say() -> None:
    """format.md "Entry signatures": the script's message is byte for byte the vectors' (a
    conflict copy's ``cs`` included); the label goes to the signature check apart."""
    vectors = json.loads((Path(__file__).with_name("vectors.json")).read_text())
    for vec in vectors["entry_signatures"]:
        got = script.entry_message(vec["vault_id"], vec["path"], vec["dot"], vec["entry"])
        assert (b"cloudguard/v2/entry\x00" + got).hex() == vec["message"], vec["path"]
    assert any("cs" in vec["entry"] for vec in vectors["entry_signatures"])


def test_a_source_its_writer_had_not_seen_is_refused_as_cloudguard_refuses_it(
        built: Built, tmp_path: Path) -> None:
    """format.md, the `cs` row: a delta's ``cs`` is covered by its deps or is an earlier push
    of its own writer (review round 15, DD3: the devices refused such a delta and the script
    restored it)."""
    secret, rid = built.device
    folder = {"t": "d", "x": 0o755}
    for case, cs, code in (("own-future", f"{rid}:999", 3), ("other", "0123456789abcdef:1", 3),
                           ("own-earlier", f"{rid}:1", 0)):
        copy = copy_of(built, tmp_path / f"copy-{case}")
        add_delta(copy, built.kit, [{"p": "carried", "e": {**folder, "cs": cs}, "rm": []}],
                  writer=built.device)
        out = tmp_path / f"out-{case}"
        result = decrypt(copy, built.kit, out)
        assert result.returncode == code, (case, result.stderr)
        if code:
            assert "content its writer had not seen" in result.stderr, result.stderr
            assert_nothing_written(out)
    dev = "ab" * 8
    assert script.sees({"t": "d", "cs": f"{dev}:4"}, {dev: 4})
    assert not script.sees({"t": "d", "cs": f"{dev}:5"}, {dev: 4})
    assert not script.sees({"t": "d", "cs": "nonsense"}, {dev: 4})
    assert script.sees({"t": "d"}, {})
