"""The typed results (cloudguard/results/) and what ``--json`` prints agree: every command's
real output decodes strictly into its Struct, with exactly its fields, and encodes back to the
same bytes; docs/cli-json.md names the same fields with the same types. A field renamed, left
out, added or retyped on one side fails here. Only ``log`` is not typed: each audit record
carries its event's own fields (results.AuditRecord is a dict)."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers import cg, cg_proc
from test_cli_json import DAEMON, check, schemas

from cloudguard import results as r

# Command (a heading of docs/cli-json.md) -> its Struct; a list result is a list of them.
TYPED: dict[str, type[r.Result]] = {
    "init": r.InitResult, "clone": r.CloneResult, "push": r.PushResult, "pull": r.PullResult,
    "status": r.StatusResult, "verify": r.VerifyResult, "doctor": r.DoctorResult,
    "key rotate": r.RotateResult, "device remove": r.RotateResult, "key list": r.KeyEpoch,
    "mark": r.MarkResult, "settings": r.SettingsResult, "unlock": r.UnlockResult,
    "repair": r.RepairResult, "repair --republish": r.RepublishResult,
    "history": r.HistoryResult, "restore": r.RestoreResult,
    "restore --late-of": r.LateRestoreResult, "device list": r.DeviceListResult,
    "device approve": r.ApproveResult, "device reject": r.RejectResult,
    "key export": r.KitResult, "key passphrase": r.PassphraseResult, "lock": r.LockResult,
    "log --verify": r.LogVerifyResult, "config show": r.ConfigResult,
    "daemon start": r.DaemonStarted, "daemon stop": r.DaemonStopped,
    "daemon status": r.DaemonStatus, "daemon pause": r.DaemonDone,
    "daemon resume": r.DaemonDone, "daemon install": r.UnitResult,
}


def _check(name: str, stdout: str) -> Any:
    """Strict decode, the same keys as the Struct (defaulted ones too), the same bytes back."""
    kind = TYPED[name]
    doc = json.loads(stdout)
    rows = doc if isinstance(doc, list) else [doc]
    for row in rows:
        assert set(row) == set(kind.__struct_fields__), (name, set(row) ^ set(
            kind.__struct_fields__))
    target: Any = list[kind] if isinstance(doc, list) else kind  # type: ignore[valid-type]
    got = r.decode(stdout, target)
    assert r.to_json(got) + "\n" == stdout, name  # what json.dumps always wrote
    return got


def test_every_typed_commands_output_decodes_into_its_struct(local_remote: str, tmp_path: Path
                                                             ) -> None:
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit"
    (a / "docs").mkdir(parents=True)
    (a / "docs" / "r\u00e9sum\u00e9 \u241b.txt").write_text("not ASCII: escaped as before")
    (a / "top.txt").write_text("top")
    (a / "link").symlink_to("top.txt")
    seen: set[str] = set()

    def run(name: str, *args: str, code: int = 0) -> Any:
        seen.add(name)
        return _check(name, cg(*args, "--json", code=code).stdout)

    made = run("init", "init", str(a), "--remote", local_remote)
    assert isinstance(made, r.InitResult)
    dry = run("push", "push", "--folder", str(a), "--dry-run")
    pushed = run("push", "push", "--folder", str(a))
    assert dry.dry_run and not pushed.dry_run and pushed.counts.uploaded.files == 2
    assert "docs/r\u00e9sum\u00e9 \u241b\u241b.txt" in pushed.uploaded  # a literal escape
    status = run("status", "status", "--folder", str(a))
    assert status.in_sync and status.daemon is None and status.reencryption is None
    assert run("verify", "verify", "--folder", str(a)).checked == "data"
    assert run("key export", "key", "export", str(kit), "--folder", str(a),
               "--choose-passphrase").passphrase is None
    spare = run("key export", "key", "export", str(tmp_path / "spare"), "--folder", str(a))
    assert spare.passphrase and run("key passphrase", "key", "passphrase").bits > 100
    cloned = run("clone", "clone", local_remote, str(b), "--key-file", str(kit))
    assert cloned.enrolled and cloned.fingerprint is None
    (b / "top.txt").write_text("changed on b")
    cg("push", "--folder", str(b))
    assert run("pull", "pull", "--folder", str(a)).downloaded == ["top.txt"]
    asked = run("clone", "clone", local_remote, str(tmp_path / "c"), "--vault-code",
                made.vault_code, "--name", "phone")
    assert not asked.enrolled and asked.fingerprint and asked.counts.made == r.Counts()
    other = run("clone", "clone", local_remote, str(tmp_path / "d"), "--vault-code",
                made.vault_code, "--name", "tablet")
    listed = run("device list", "device", "list", "--folder", str(a))
    assert {p.name for p in listed.pending} == {"phone", "tablet"}
    assert run("device approve", "device", "approve", asked.fingerprint, "--folder", str(a),
               "--yes").name == "phone"
    assert run("device reject", "device", "reject", other.fingerprint, "--folder", str(a),
               "--yes").name == "tablet"
    versions = run("history", "history", "top.txt", "--folder", str(a)).versions
    assert [v.current for v in versions] == [False, True]
    assert run("restore", "restore", "top.txt", "--before", "1s", "--folder", str(a)
               ).unchanged == ["top.txt"]
    run("settings", "settings", "--folder", str(a))
    run("mark", "mark", "--folder", str(a))
    run("doctor", "doctor", "--folder", str(a))
    assert run("repair", "repair", "--folder", str(a)).ok
    assert not run("repair --republish", "repair", "--republish", "--yes", "--folder",
                   str(a)).republished
    assert run("key rotate", "key", "rotate", "--folder", str(a)).epoch == 2
    epochs = run("key list", "key", "list", "--folder", str(a))
    assert [e.current for e in epochs] == [False, True]
    assert run("device remove", "device", "remove", spare.id, "--folder", str(a)).removed \
        == spare.id
    late = run("restore --late-of", "restore", "--late-of", spare.id, "--yes", "--folder",
               str(a))
    assert late.late_of.id == spare.id and late.counting and late.removals[0].by_id
    assert run("log --verify", "log", "--verify").records > 10
    home = Path(os.environ["CLOUDGUARD_HOME"])
    (home / "config.toml").write_text(f'[folder."{a}"]\npoll_seconds = 7\nignore = ["*.iso"]\n')
    shown = run("config show", "config", "show")
    assert shown.folders[str(a.resolve())].poll == 7 and shown.daemon.poll == 15
    run("unlock", "unlock", "--folder", str(a))
    assert run("lock", "lock").problems == []
    assert seen == set(TYPED) - DAEMON


def test_the_daemon_commands_output_decodes_into_their_structs(local_remote: str,
                                                                tmp_path: Path) -> None:
    """The daemon's commands, against a real daemon started in the background: checked here
    against docs/cli-json.md too (test_cli_json leaves them to this test: one daemon)."""
    from cloudguard.daemon import control

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    cg("init", str(folder), "--remote", local_remote)
    docs = schemas()
    seen: set[str] = set()

    def run(name: str, stdout: str) -> Any:
        seen.add(name)
        check(json.loads(stdout), docs[name], name)
        return _check(name, stdout)

    down = cg("daemon", "status", "--json").stdout
    assert down == '{\n  "running": false\n}\n'  # the one result that leaves keys out
    assert r.to_json(r.decode(down, r.DaemonStatus)) + "\n" == down
    assert run("daemon stop", cg("daemon", "stop", "--json").stdout).stopped == []
    unit = run("daemon install", cg("daemon", "install", "--print", "--json").stdout)
    assert unit.path is None and "Type=notify" in unit.unit
    try:
        started = cg_proc("daemon", "start", "--json")  # a child: it leaves the daemon running
        assert started.returncode == 0, started.stderr
        pid = run("daemon start", started.stdout).pid
        status = run("daemon status", cg("daemon", "status", "--json").stdout)
        assert status.running and status.pid == pid and status.folders[0].folder == str(folder)
        assert run("daemon pause", cg("daemon", "pause", str(folder), "--json").stdout
                   ).done == "pause"
        assert run("daemon resume", cg("daemon", "resume", str(folder), "--json").stdout
                   ).done == "resume"
        assert run("daemon stop", cg("daemon", "stop", "--json").stdout).stopped == [pid]
    finally:
        control.stop()
    assert seen == DAEMON


@pytest.mark.parametrize("bad", [
    {"files": "3"},  # a type changed: strings are never numbers
    {"file_count": 3},  # a field renamed: unknown and missing
])
def test_a_renamed_or_retyped_field_fails_to_decode(bad: dict[str, Any]) -> None:
    good = {"files": 3, "objects": 1, "read_data": True, "hash_checked": 0, "authenticated": 3,
            "unreferenced": [], "checked": "data", "ok": True}
    r.decode(json.dumps(good), r.VerifyResult)
    broken = {k: v for k, v in good.items() if k not in ("files",)} | bad
    with pytest.raises(msgspec.ValidationError):
        r.decode(json.dumps(broken), r.VerifyResult)


def _agrees(spec: Any, info: msgspec.inspect.Type, where: str) -> None:
    """docs/cli-json.md's notation (see test_cli_json) against a Struct's type."""
    if spec == "Counts":
        spec = {"files": "integer", "folders": "integer", "links": "integer"}
    if isinstance(info, msgspec.inspect.UnionType):
        kinds = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if isinstance(spec, str) and spec != "any":
            assert ("null" in spec.split("|")) == (len(kinds) < len(info.types)), where
            spec = "|".join(p for p in spec.split("|") if p != "null")
        if len(kinds) == 1:
            info = kinds[0]
    if spec == "any":
        return
    if isinstance(spec, dict) and "..." in spec:
        assert isinstance(info, msgspec.inspect.DictType | msgspec.inspect.StructType), where
        return
    if isinstance(spec, dict):
        assert isinstance(info, msgspec.inspect.StructType), where
        got = {f.encode_name: _present(info, f) for f in info.fields}
        assert set(spec) == set(got), (where, set(spec) ^ set(got))
        for key, sub in spec.items():
            _agrees(sub, got[key], f"{where}.{key}")
    elif isinstance(spec, list):
        assert isinstance(info, msgspec.inspect.ListType), where
        _agrees(spec[0], info.item_type, f"{where}[]")
    else:
        want = {"string": msgspec.inspect.StrType, "integer": msgspec.inspect.IntType,
                "number": msgspec.inspect.FloatType, "boolean": msgspec.inspect.BoolType,
                "null": msgspec.inspect.NoneType}[spec]
        allowed = (want, msgspec.inspect.LiteralType) if spec == "string" else (want,)
        assert isinstance(info, allowed), (where, spec, info)


def _present(struct: msgspec.inspect.StructType, field: msgspec.inspect.Field
             ) -> msgspec.inspect.Type:
    """A field left out when None (``omit_defaults``, default None): its type when printed."""
    kind = field.type
    if (struct.cls.__struct_config__.omit_defaults and field.default is None
            and isinstance(kind, msgspec.inspect.UnionType)):
        rest = tuple(t for t in kind.types if not isinstance(t, msgspec.inspect.NoneType))
        return rest[0] if len(rest) == 1 else msgspec.inspect.UnionType(rest)
    return kind


@pytest.mark.parametrize("name", sorted(TYPED))
def test_the_doc_and_the_structs_name_the_same_fields_and_types(name: str) -> None:
    spec = schemas()[name]
    if isinstance(spec, list):
        spec = spec[0]
    _agrees(spec, msgspec.inspect.type_info(TYPED[name]), name)


def test_the_daemon_view_holds_what_the_daemon_reports() -> None:
    """status's ``daemon`` is the daemon's FolderState (``extra`` flattened to two keys), its
    queue and whether the worker lives: a field the daemon adds must be added here too, or
    status would drop it."""
    from cloudguard.daemon.worker import FolderState

    reported = {f.name for f in fields(FolderState)} - {"extra"} | {"queue", "alive"}
    assert set(r.DaemonView.__struct_fields__) == reported | {"key_age_days",
                                                               "next_rotation_in_days"}


def test_every_result_is_exported_and_the_config_matches_the_settings() -> None:
    """Each area module's Structs are all in ``cloudguard.results``; ``config show`` has every
    field of the daemon's settings and of the environment's, and no other."""
    import importlib

    from cloudguard.daemon.schedule import Timing
    from cloudguard.daemon.worker import Intervals, Limits
    from cloudguard.settings import Settings

    for area in ("base", "folder", "checks", "keys", "history", "machine"):
        module = importlib.import_module(f"cloudguard.results.{area}")
        structs = {n for n, v in vars(module).items() if isinstance(v, type)
                   and issubclass(v, r.Result) and v.__module__ == module.__name__}
        assert structs <= set(module.__all__) <= set(r.__all__), area
    daemon = {f.name for c in (Timing, Intervals, Limits) for f in fields(c)} | {"ignore"}
    assert set(r.FolderSettings.__struct_fields__) == daemon
    assert set(r.EnvironmentSettings.__struct_fields__) == {f.name for f in fields(Settings)}
