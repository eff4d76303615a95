"""scripts/cloudguard-decrypt.py: the stand-alone reader restores what cloudguard wrote.

Vaults are made with the real CLI; the script runs as a separate process (as a user would run
it, without cloudguard), and what it restores must equal the original folder: contents, modes,
mtimes, symlinks and empty folders. It must also refuse tampered or hostile vaults and then
leave nothing in its output folder.
"""

from __future__ import annotations

import ast
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
from helpers import CHEAP_KDF_LOG_N, cg, tree

from cloudguard import format as fmt
from cloudguard import keys as keymod

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "cloudguard-decrypt.py"
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
    cg("key", "export", str(kit), "--folder", str(a))
    return a, kit


@dataclass(frozen=True)
class Built:
    remote: Path  # the vault's remote folder: tests copy it before they change it
    kit: Path
    original: dict[str, tuple[Any, ...]]  # tree() of the folder that was pushed


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
        mp.setenv("CLOUDGUARD_PASSPHRASE", "test-passphrase")
        mp.setattr(keymod, "TEST_KDF_LOG_N", CHEAP_KDF_LOG_N)
        remote = base / "remote"
        remote.mkdir()
        a, kit = new_vault(base, str(remote))
        write(a / "second-push.txt", b"one more delta\n")
        cg("push", "--folder", str(a))
        yield Built(remote, kit, tree(a))


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


def test_after_rotations(local_remote: str, tmp_path: Path) -> None:
    a, kit = new_vault(tmp_path, local_remote)
    cg("key", "rotate", "--folder", str(a))
    kit2 = tmp_path / "kit2.json"  # exported after the rotation: no slot in generation 1
    cg("key", "export", str(kit2), "--folder", str(a))
    write(a / "after-rotation.txt", b"new under generation 2\n", T0 + 5)
    write(a / "small.txt", b"changed\n", T0 + 6)
    cg("push", "--folder", str(a))
    assert sorted(os.listdir(Path(local_remote) / "keys")) == ["00000001", "00000002"]
    assert restored(local_remote, kit, tmp_path / "out1") == tree(a)
    assert restored(local_remote, kit2, tmp_path / "out2") == tree(a)

    objects_before = set(os.listdir(Path(local_remote) / "data"))
    cg("key", "rotate", "--reencrypt", "--folder", str(a))
    assert os.listdir(Path(local_remote) / "keys") == ["00000003"]
    assert not objects_before & set(os.listdir(Path(local_remote) / "data"))
    assert restored(local_remote, kit, tmp_path / "out3") == tree(a)
    assert restored(local_remote, kit2, tmp_path / "out4") == tree(a)


def test_snapshots_and_deltas(local_remote: str, tmp_path: Path) -> None:
    a, kit = tmp_path / "a", tmp_path / "kit.json"
    a.mkdir()
    cg("init", str(a), "--remote", local_remote)
    cg("key", "export", str(kit), "--folder", str(a))
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
    cg("key", "export", str(kit), "--folder", str(a))
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

    def add_slot(r: Path) -> None:
        path = r / "keys" / "00000001"
        doc = json.loads(path.read_text())
        doc["slots"].append({**doc["slots"][0], "rid": "0123456789abcdef"})
        path.write_text(json.dumps(doc))

    cases = [(tamper_big, "stand-alone.bin"), (tamper_pack, "data/" + pack),
             (truncate_big, "stand-alone.bin"), (delete_big, "data/" + big),
             (tamper_segment, segment), (delete_first_delta, "is missing"),
             (alter_descriptor, "cloudguard.json"), (add_slot, "keys/00000001")]
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
    wrong = decrypt(remote, kit, out, env={**os.environ, "CLOUDGUARD_PASSPHRASE": "wrong"})
    assert wrong.returncode == 1 and "passphrase" in wrong.stderr
    assert_nothing_written(out)
    out.mkdir()  # an existing empty folder is fine; the passphrase may come from another var
    other_var = decrypt(remote, kit, out, "--passphrase-env", "MY_PASS",
                        env={**os.environ, "CLOUDGUARD_PASSPHRASE": "", "MY_PASS":
                             "test-passphrase"})
    assert other_var.returncode == 0, other_var.stderr
    assert tree(out) == built.original
    again = decrypt(remote, kit, out)  # a folder that holds anything is refused
    assert again.returncode == 1 and "empty" in again.stderr
    assert tree(out) == built.original
    shutil.rmtree(out)

    copy = copy_of(built, tmp_path / "copy")
    doc = json.loads((copy / "cloudguard.json").read_text())
    (copy / "cloudguard.json").write_text(json.dumps({**doc, "format": 2}))
    unknown = decrypt(copy, kit, out)
    assert unknown.returncode == 1 and "format 2" in unknown.stderr
    usage = subprocess.run([sys.executable, str(SCRIPT), "--kit", str(kit)],
                           capture_output=True, text=True, check=False)
    assert usage.returncode == 1
    assert_nothing_written(out)


def add_delta(remote: Path, kit: Path, ops: list[dict[str, Any]]) -> None:
    """Append a validly sealed delta from a made-up device: what a malicious member could
    write. Uses the package only to build the test input."""
    vault_id, rid, priv = keymod.read_kit(kit, "test-passphrase")
    number = max(int(n) for n in os.listdir(remote / "keys"))
    raw = (remote / "keys" / f"{number:08d}").read_bytes()
    opened = keymod.open_generation(vault_id, number, raw, rid, priv, None)
    assert opened is not None
    device = "f" * 16
    name = f"m/{device}-{1:012d}.d"
    payload = {"kind": "delta", "device": device, "seq": 1, "deps": {}, "prev": None,
               "created": "2024-01-01T00:00:00Z", "ops": ops}
    (remote / name).write_bytes(fmt.seal_segment(opened.kek, number, name, payload))


def test_hostile_manifest_is_refused(built: Built, tmp_path: Path) -> None:
    """A member can write any (authenticated) manifest: unsafe paths, and paths below a
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
        add_delta(copy, kit, ops)
        out = tmp_path / f"out-{case}"
        result = decrypt(copy, kit, out)
        assert result.returncode == code, (case, result.stderr)
        assert len(result.stderr.splitlines()) == 1
        assert_nothing_written(out)
        assert not outside.exists() and not (tmp_path / "escaped").exists()
