"""Shared helpers for the integration tests: run the CLI, compare trees, find stored objects."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from cloudguard.cli import main

MARKER = ".cloudguard"

# What every test chooses for device key files and kits (conftest puts it in
# CLOUDGUARD_PASSPHRASE and CLOUDGUARD_KIT_PASSPHRASE); strong enough for
# cloudguard.passphrase.require_strong.
PASSPHRASE = "quarry lantern vivid cobalt harbor"


def cg(*args: str, code: int = 0) -> Result:
    """Run the CLI in-process and insist on an exit code."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, (args, result.exit_code, result.output)
    return result


def cg_json(*args: str, code: int = 0) -> Any:
    return json.loads(cg(*args, "--json", code=code).stdout)


def share(remote: str, a: Path, b: Path, kit: Path, names: tuple[str, str] | None = None
          ) -> None:
    """Device A makes the vault and pushes; device B joins with A's recovery kit and pulls."""
    cg("init", str(a), "--remote", remote, *(["--name", names[0]] if names else []))
    cg("push", "--folder", str(a))
    cg("key", "export", str(kit), "--folder", str(a), "--choose-passphrase")
    cg("clone", remote, str(b), "--key-file", str(kit), *(["--name", names[1]] if names else []))


def setup_two(remote: str, tmp_path: Path) -> tuple[Path, Path, Path]:
    """Devices A and B (laptop-a, desk-b) share a vault holding doc.txt; returns A, B, the kit."""
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "doc.txt").write_text("first")
    share(remote, a, b, kit, ("laptop-a", "desk-b"))
    return a, b, kit


CHEAP_KDF_LOG_N = 10  # the cheapest scrypt cost, for every key file and kit a test makes

# The real CLI in a child process, with the test suite's KDF hook set first (the hook is a
# module attribute, so no environment variable can carry it). ``python -c`` puts the working
# directory first on sys.path, as ``python -m cloudguard`` does.
CLOUDGUARD = [sys.executable, "-c",
              f"import sys; from cloudguard import keys; keys.TEST_KDF_LOG_N = {CHEAP_KDF_LOG_N}; "
              "from cloudguard.cli import main; sys.argv[0] = 'cloudguard'; main()"]


def cg_proc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point, for exit codes and stdout as users see them."""
    return subprocess.run([*CLOUDGUARD, *args], capture_output=True, text=True, cwd=cwd,
                          check=False)


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a sync must keep: kind, content, mode, mtime, link target (the folder's
    own .cloudguard marker and staging folder aside)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and MARKER in dirnames:  # cloudguard's own, never synced
            dirnames.remove(MARKER)
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d",)
            else:
                out[rel] = ("f", full.read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def stored(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def data_objects(root: Path) -> list[Path]:
    return sorted((root / "data").iterdir(), key=lambda p: p.stat().st_size)


def sign_entries(payload: dict[str, Any], key: Any, vault_id: str) -> dict[str, Any]:
    """Sign every entry of a hand-made segment payload as its dot's writer would: ``key`` is
    one signing key for every dot, or a function from a device id to its key. Entries are
    copied, so one dict used in several payloads gets each its own signature."""
    from cloudguard import manifest as mf

    def signed(path: str, dot: str, entry: dict[str, Any]) -> dict[str, Any]:
        entry = dict(entry)
        mf.sign_entry(key(dot.partition(":")[0]) if callable(key) else key, vault_id, path,
                      dot, entry)
        return entry

    if payload.get("kind") == "delta":
        dot = mf.dot_of(payload["device"], payload["seq"])
        payload["ops"] = [{**op, "e": signed(op["p"], dot, op["e"])}
                          if op.get("e") is not None else op for op in payload.get("ops", [])]
    if payload.get("paths"):
        payload["paths"] = {path: {dot: signed(path, dot, e) for dot, e in sibs.items()}
                            for path, sibs in payload["paths"].items()}
    if payload.get("attic"):
        payload["attic"] = {path: {dot: {**row, "e": signed(path, dot, row["e"])}
                                   for dot, row in rows.items()}
                            for path, rows in payload["attic"].items()}
    return payload
