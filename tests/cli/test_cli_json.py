"""``--json`` (issue 9 item 18): one documented schema per command (docs/cli-json.md), checked
against what the real commands print on a real local remote; the same keys with --dry-run;
``conflicts`` a list everywhere; errors as an error object on stdout."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import cg, cg_json, cg_proc, share

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli-json.md"
COUNTS = {"files": "integer", "folders": "integer", "links": "integer"}
# The daemon's commands: tests/cli/test_results.py runs them against one real daemon, and checks
# them against this page there.
DAEMON = {"daemon start", "daemon stop", "daemon status", "daemon pause", "daemon resume",
          "daemon install"}
TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,),
                                      "number": (int, float), "boolean": (bool,),
                                      "null": (type(None),)}


def schemas() -> dict[str, Any]:
    """Each ``### `name` `` heading of the doc and the first json block under it."""
    out: dict[str, Any] = {}
    for found in re.finditer(r"^### `([^`]+)`(?: \(([^)]+)\))?\n(.*?)^```json\n(.*?)^```",
                             DOC.read_text(), re.M | re.S):
        name = found.group(1) + (f" ({found.group(2)})" if found.group(2) else "")
        out[name] = json.loads(found.group(4))
    return out


def check(value: Any, spec: Any, where: str) -> None:
    """A small checker for the doc's notation (no jsonschema dependency)."""
    if spec == "Counts":
        spec = COUNTS
    if isinstance(spec, dict):
        assert isinstance(value, dict), f"{where}: {value!r} is not an object"
        extra = "..." in spec
        keys = {k for k in spec if k != "..."}
        assert keys <= set(value), f"{where}: missing {sorted(keys - set(value))}"
        assert extra or set(value) <= keys, f"{where}: undocumented {sorted(set(value) - keys)}"
        for key in keys:
            check(value[key], spec[key], f"{where}.{key}")
    elif isinstance(spec, list):
        assert isinstance(value, list), f"{where}: {value!r} is not a list"
        for i, item in enumerate(value):
            check(item, spec[0], f"{where}[{i}]")
    elif spec == "any":
        return
    else:
        allowed = tuple(t for part in spec.split("|") for t in TYPES[part])
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        assert ok, f"{where}: {value!r} is not {spec}"


def test_the_doc_parses_into_one_schema_per_command() -> None:
    found = schemas()
    for name in ("error", "init", "clone", "push", "pull", "status",
                 "verify", "doctor", "key rotate", "key list", "key export", "key passphrase",
                 "device list", "device approve", "device reject", "device remove", "history",
                 "restore", "restore --late-of", "settings", "log", "log --verify", "lock",
                 "config show", "unlock", *sorted(DAEMON)):
        assert name in found, name


def test_every_command_prints_what_its_schema_says(local_remote: str, tmp_path: Path) -> None:
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit"
    (a / "docs").mkdir(parents=True)
    (a / "docs" / "report.txt").write_text("report")
    (a / "top.txt").write_text("top")
    (a / "link").symlink_to("top.txt")
    seen: dict[str, list[Any]] = {}

    def run(name: str, *args: str, code: int = 0) -> Any:
        out = cg_json(*args, code=code)
        seen.setdefault(name, []).append(out)
        return out

    made = run("init", "init", str(a), "--remote", local_remote)
    run("push", "push", "--folder", str(a), "--dry-run")
    run("push", "push", "--folder", str(a))
    run("status", "status", "--folder", str(a))
    run("verify", "verify", "--folder", str(a))
    kit_row = run("key export", "key", "export", str(kit), "--folder", str(a),
                  "--choose-passphrase")
    run("key export", "key", "export", str(tmp_path / "kit2"), "--folder", str(a))
    run("key list", "key", "list", "--folder", str(a))
    run("key passphrase", "key", "passphrase")
    run("clone", "clone", local_remote, str(b), "--key-file", str(kit))
    (b / "top.txt").write_text("changed on b")
    cg("push", "--folder", str(b))
    run("pull", "pull", "--folder", str(a))
    first = run("clone", "clone", local_remote, str(tmp_path / "c"), "--vault-code",
                made["vault_code"], "--name", "phone")
    second = run("clone", "clone", local_remote, str(tmp_path / "d"),
                 "--vault-code", made["vault_code"], "--name", "tablet")
    run("device list", "device", "list", "--folder", str(a))
    run("device approve", "device", "approve", first["fingerprint"], "--folder", str(a),
        "--yes")
    run("device reject", "device", "reject", second["fingerprint"], "--folder", str(a),
        "--yes")
    run("history", "history", "top.txt", "--folder", str(a))
    run("restore", "restore", "top.txt", "--before", "1s", "--folder", str(a))
    run("settings", "settings", "--folder", str(a))
    run("mark", "mark", "--folder", str(a))
    run("repair", "repair", "--folder", str(a))
    run("repair --republish", "repair", "--republish", "--yes", "--folder", str(a))
    run("doctor", "doctor", "--folder", str(a))
    run("key rotate", "key", "rotate", "--folder", str(a))
    run("device remove", "device", "remove", kit_row["id"], "--folder", str(a))
    run("restore --late-of", "restore", "--late-of", kit_row["id"], "--yes", "--folder", str(a))
    run("log", "log")
    run("log --verify", "log", "--verify")
    run("unlock", "unlock", "--folder", str(a))
    run("lock", "lock")
    run("config show", "config", "show")
    run("error", "status", "--folder", str(tmp_path / "not-bound"), code=2)

    docs = schemas()
    assert set(seen) == set(docs) - DAEMON, set(docs) - DAEMON ^ set(seen)
    for name, outputs in seen.items():
        for out in outputs:
            check(out, docs[name], name)
    assert seen["pull"][0]["downloaded"] == ["top.txt"]
    assert [c["enrolled"] for c in seen["clone"]] == [True, False, False]


def test_dry_run_keeps_every_key(local_remote: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "doc.txt").write_text("doc")
    cg("init", str(a), "--remote", local_remote)
    dry = cg_json("push", "--folder", str(a), "--dry-run")
    real = cg_json("push", "--folder", str(a))
    assert set(dry) == set(real)
    assert dry["dry_run"] is True and dry["bytes_uploaded"] == 0 and dry["object_ids"] == []
    assert dry["uploaded"] == real["uploaded"] == ["doc.txt"]
    assert dry["counts"] == real["counts"]


def test_conflicts_are_a_list_in_push_pull_and_status(local_remote: str, tmp_path: Path
                                                      ) -> None:
    """Two devices edit one file; the push that finds both versions makes a conflict copy and
    names it, as pull and status name theirs."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "doc.txt").write_text("original")
    share(local_remote, a, b, tmp_path / "kit")
    (a / "doc.txt").write_text("edited on a")
    (b / "doc.txt").write_text("edited on b, longer")
    cg("push", "--folder", str(a))
    cg("push", "--folder", str(b))  # its version replaces the one it synced: two siblings
    pushed = cg_json("push", "--folder", str(b))
    assert isinstance(pushed["conflicts"], list) and len(pushed["conflicts"]) == 1
    assert "conflict" in pushed["conflicts"][0]
    status = cg_json("status", "--folder", str(a))
    pulled = cg_json("pull", "--folder", str(a))
    assert isinstance(status["conflicts"], list) and isinstance(pulled["conflicts"], list)
    assert pushed["conflicts"][0] in pulled["downloaded"]
    assert (a / pushed["conflicts"][0]).exists()


def test_errors_are_an_object_on_stdout_with_json(local_remote: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "doc.txt").write_text("doc")
    plain = cg_proc("status", "--folder", str(tmp_path / "nowhere"))
    assert plain.returncode == 2 and plain.stdout == ""
    assert plain.stderr.startswith("cloudguard: error: ")

    usage = cg_proc("status", "--folder", str(tmp_path / "nowhere"), "--json")
    assert usage.returncode == 2 and usage.stderr == plain.stderr
    err = json.loads(usage.stdout)["error"]
    assert err == {"code": 2, "kind": "usage", "message": plain.stderr[19:].strip()}

    parse = cg_proc("push", "--no-such-option", "--json")
    assert parse.returncode == 2 and "no-such-option" in parse.stderr
    assert json.loads(parse.stdout)["error"]["kind"] == "usage"
    assert cg_proc("push", "--no-such-option").stdout == ""

    cg("init", str(a), "--remote", local_remote)
    cg("push", "--folder", str(a))
    (Path(local_remote) / "cloudguard.json").write_text('{"format": 99}')  # tampered
    bad = cg_proc("status", "--folder", str(a), "--json")
    assert bad.returncode == 3, bad.stderr
    err = json.loads(bad.stdout)["error"]
    assert err["code"] == 3 and err["kind"] == "integrity" and err["message"] in bad.stderr


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["push", "--help"]])
def test_help_and_version_still_exit_0(args: list[str]) -> None:
    proc = cg_proc(*args)
    assert proc.returncode == 0 and proc.stdout and not proc.stderr
