"""The staged-version journal (index.db's ``staged`` table, docs/format.md "Local state")
carries its version: a current one loads, one written by a newer cloudguard is refused with
one line naming the file (exit 1), never misread. Version 2 adds a local wrap of each staged
DEK (ops/localwrap.py); a version 1 journal is taken up and loses nothing."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from helpers import cg, cg_proc

from cloudguard.state import JOURNAL_KEY, JOURNAL_VERSION


def _indexes() -> list[Path]:
    return list((Path(os.environ["CLOUDGUARD_HOME"]) / "folders").rglob("index.db"))


def _set(db: Path, value: object) -> None:
    con = sqlite3.connect(db)
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (JOURNAL_KEY, json.dumps(value)))
    con.commit()
    con.close()


def test_a_journal_of_a_newer_version_is_refused_and_a_current_one_loads(
        local_remote: str, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    cg("init", str(folder), "--remote", local_remote)
    cg("push", "--folder", str(folder))
    (db,) = _indexes()
    con = sqlite3.connect(db)
    got = con.execute("SELECT value FROM meta WHERE key = ?", (JOURNAL_KEY,)).fetchone()
    con.close()
    assert got is not None and json.loads(got[0]) == JOURNAL_VERSION == 2
    assert cg_proc("status", "--folder", str(folder)).returncode == 0
    for bad in (JOURNAL_VERSION + 1, "2", 0):
        _set(db, bad)
        out = cg_proc("status", "--folder", str(folder))
        assert out.returncode == 1, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and str(db) in lines[0] and "journal" in lines[0], lines
    _set(db, JOURNAL_VERSION)
    assert cg_proc("status", "--folder", str(folder)).returncode == 0


def test_a_version_1_journal_is_taken_up_and_its_staged_version_committed(
        local_remote: str, tmp_path: Path) -> None:
    """A journal an older cloudguard left (version 1: rows with no local wrap) loads as
    version 2 from then on; its staged version gets a local wrap and is committed."""
    import io

    from cloudguard.api import Vault
    from cloudguard.ops import localwrap
    from cloudguard.state import Index

    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    with Vault(str(folder)) as v:
        v.stage_version("staged.txt", io.BytesIO(b"staged"), 6)
    (db,) = _indexes()
    con = sqlite3.connect(db)
    ((row, entry),) = con.execute("SELECT id, e FROM staged").fetchall()
    assert localwrap.FIELD in json.loads(entry)
    old = {k: v for k, v in json.loads(entry).items() if k != localwrap.FIELD}
    con.execute("UPDATE staged SET e = ? WHERE id = ?", (json.dumps(old), row))
    con.commit()
    con.close()
    _set(db, 1)
    index = Index(db)
    assert index.get_meta(JOURNAL_KEY) == 2
    assert [e for _i, _p, e in index.staged()] == [old]
    index.close()
    with Vault(str(folder)) as v:
        assert v.commit() == ["staged.txt"]
        assert localwrap.FIELD not in v.files()["staged.txt"]
    cg("pull", "--folder", str(folder))
    assert (folder / "staged.txt").read_text() == "staged"
    cg("verify", "--read-data", "--folder", str(folder))
