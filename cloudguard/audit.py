"""The audit log: an append-only, hash-chained record of what cloudguard did on this machine.

Each line is one JSON record carrying the SHA-256 of the previous line, so an edited, removed
or reordered record breaks the chain (`cloudguard log --verify`). The newest hash and count
are also kept in a separate head file, so cutting records off the end is caught too. Records
hold what, when, the key generation, object ids and counts: never content, names or keys.

A local attacker with the user's rights can rewrite the whole file and its head consistently;
the chain makes tampering evident, it cannot prevent it (docs/threat-model.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .errors import IntegrityError
from .keys import now_iso
from .results import AuditRecord, LogVerifyResult
from .state import home

GENESIS = "0" * 64


def log_path() -> Path:
    return home() / "audit.log"


def _head_path() -> Path:
    return home() / "audit.head"


def _digest(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
                          ).hexdigest()


def record(event: str, **fields: Any) -> None:
    """Append one record; a failure to log never hides the operation's own result."""
    path = log_path()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        prev, seq = _settle_head(path)
        entry: dict[str, Any] = {"seq": seq + 1, "time": now_iso(), "event": event}
        entry.update({k: v for k, v in fields.items() if v is not None})
        entry["prev"] = prev
        entry["hash"] = _digest(entry)
        os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
        os.fsync(fd)
        _write_head(entry["hash"], entry["seq"])
    finally:
        os.close(fd)


def _last_line(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(max(0, fh.seek(0, os.SEEK_END) - 65536))
        lines = fh.read().splitlines()
    return lines[-1] if lines else b""


def _settle_head(path: Path) -> tuple[str, int]:
    """A kill between appending a record and replacing the head leaves the log one record
    ahead; that record continues the chain from the head, so adopt it."""
    prev, seq = _read_head()
    try:
        last = json.loads(_last_line(path))
    except (OSError, ValueError):
        return prev, seq
    if (isinstance(last, dict) and last.get("seq") == seq + 1 and last.get("prev") == prev
            and last.get("hash") == _digest(last)):
        _write_head(str(last["hash"]), seq + 1)
        return str(last["hash"]), seq + 1
    return prev, seq


def _read_head() -> tuple[str, int]:
    try:
        doc = json.loads(_head_path().read_text())
        return str(doc["hash"]), int(doc["seq"])
    except (OSError, ValueError, KeyError, TypeError):
        return GENESIS, 0


def _write_head(digest: str, seq: int) -> None:
    tmp = _head_path().with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"hash": digest, "seq": seq}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, _head_path())


def read() -> list[AuditRecord]:
    path = log_path()
    if not path.exists():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise IntegrityError(f"{path}: record {number} is not valid JSON") from exc
        if not isinstance(item, dict):
            raise IntegrityError(f"{path}: record {number} is malformed")
        out.append(item)
    return out


def verify() -> int:
    """Return the number of records; raise IntegrityError naming the first broken one."""
    path = log_path()
    prev = GENESIS
    records = read()
    for number, item in enumerate(records, 1):
        if item.get("seq") != number:
            raise IntegrityError(f"{path}: record {number} is out of order or one was removed")
        if item.get("prev") != prev:
            raise IntegrityError(f"{path}: record {number} does not follow record {number - 1}"
                                 " (removed or reordered)")
        if item.get("hash") != _digest(item):
            raise IntegrityError(f"{path}: record {number} was edited")
        prev = str(item["hash"])
    head, count = _read_head()
    # One record past the head is a crash between appending and updating the head, not a cut.
    behind = bool(records) and (head, count) == (records[-1].get("prev"), len(records) - 1)
    if (head, count) != (prev, len(records)) and not behind and not (count == 0 and not records):
        raise IntegrityError(f"{path}: records after {len(records)} were cut off (the head "
                             f"says {count})")
    return len(records)


def verified() -> LogVerifyResult:
    """``cloudguard log --verify``: the chain checked (a broken one raises)."""
    return LogVerifyResult(ok=True, records=verify())
