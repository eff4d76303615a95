"""rclone remote specs as rclone itself reads them: options inside connection strings, and
the same spec with its secrets redacted for anything we print or log.

Why not split on ":" and ",": an endpoint URL holds a ":", so ``acl=public-read`` after it
went unseen, and a secret key after it was printed. rclone's rule (docs "Connection
strings"): ``[:]backend-or-remote[,key=value]*:path``; a value holding ``,`` or ``:`` is
quoted with ``'`` or ``"``, and a quote inside is doubled.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .errors import UsageError

# Option names whose value is a credential (rclone's own "sensitive" options and the usual
# spellings of the rest): never shown.
_SECRET = re.compile(r"(pass|secret|token|key|credential|auth|session|sas_url|sse_c)",
                     re.I)
_NOT_SECRET = {"env_auth", "key_file", "service_account_file", "use_server_modtime",
               "no_check_bucket"}
REDACTED = "REDACTED"
_URL_PASSWORD = re.compile(r"(://[^/:@]*:)[^/@]*@")  # https://user:password@host


@dataclass
class Spec:
    """``name`` is a configured remote, or ``:backend`` for an on-the-fly one."""

    name: str
    options: dict[str, str] = field(default_factory=dict)
    path: str = ""
    raw_options: list[tuple[str, str]] = field(default_factory=list)  # key, as written


def is_remote(spec: str) -> bool:
    """Local paths are everything rclone would not read as ``remote:``."""
    return ":" in spec and not spec.startswith(("/", "./", "../"))


def parse(spec: str) -> Spec:
    """Split ``spec`` by rclone's quoting rules; a local path is ``Spec("", {}, path)``."""
    if not is_remote(spec):
        return Spec("", {}, spec)
    i = 1 if spec.startswith(":") else 0
    start = i
    while i < len(spec) and spec[i] not in ",:":
        i += 1
    name = spec[:i]
    if i == start:
        raise UsageError(f"remote {_head(spec)!r}: no backend or remote name before ':'")
    out = Spec(name)
    while i < len(spec) and spec[i] == ",":
        i += 1
        key_start = i
        while i < len(spec) and spec[i] not in "=,:":
            i += 1
        key = spec[key_start:i].strip()
        value = "true"  # rclone: a bare key is a boolean flag
        if i < len(spec) and spec[i] == "=":
            i += 1
            value, i = _value(spec, i)
        if not key:
            raise UsageError(f"remote {_head(spec)!r}: an option has no name")
        out.raw_options.append((key, value))
        out.options[key.lower().replace("-", "_")] = value
    if i >= len(spec) or spec[i] != ":":
        raise UsageError(f"remote {_head(spec)!r}: an unquoted ',' or ':' in an option value "
                         "(quote the value with ' or \")")
    out.path = spec[i + 1:]
    return out


def _value(spec: str, i: int) -> tuple[str, int]:
    if i < len(spec) and spec[i] in "'\"":
        quote = spec[i]
        i += 1
        chars: list[str] = []
        while i < len(spec):
            if spec[i] == quote:
                if i + 1 < len(spec) and spec[i + 1] == quote:
                    chars.append(quote)
                    i += 2
                    continue
                return "".join(chars), i + 1
            chars.append(spec[i])
            i += 1
        raise UsageError("remote: an option value has no closing quote")
    start = i
    while i < len(spec) and spec[i] not in ",:":
        i += 1
    return spec[start:i], i


def is_secret(key: str) -> bool:
    key = key.lower().replace("-", "_")
    return key not in _NOT_SECRET and bool(_SECRET.search(key))


def redact(spec: str) -> str:
    """``spec`` with every credential option's value replaced, for output, logs and errors.
    Anything that does not parse is redacted after its first ','."""
    if not is_remote(spec):
        return spec
    try:
        parsed = parse(spec)
    except UsageError:
        return _head(spec)
    if not parsed.raw_options:
        return spec
    parts = [parsed.name]
    for key, value in parsed.raw_options:
        shown = REDACTED if is_secret(key) else _URL_PASSWORD.sub(r"\1" + REDACTED + "@", value)
        if any(c in shown for c in ",:'\""):
            shown = "'" + shown.replace("'", "''") + "'"
        parts.append(f"{key}={shown}")
    return ",".join(parts) + ":" + parsed.path


def _head(spec: str) -> str:
    """What is safe to show of a spec that does not parse: nothing after its first ','."""
    head, comma, _rest = spec.partition(",")
    return head + ("," + REDACTED if comma else "")


def rclone_glob(pattern: str) -> re.Pattern[str]:
    """An rclone filter glob: ``*`` within a name, ``**`` across folders, ``?`` one character;
    a leading ``/`` anchors it at the root, else it matches at any depth."""
    anchored = pattern.startswith("/")
    body = pattern.lstrip("/")
    out = ""
    i = 0
    while i < len(body):
        if body.startswith("**", i):
            out += ".*"
            i += 2
        elif body[i] == "*":
            out += "[^/]*"
            i += 1
        elif body[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(body[i])
            i += 1
    return re.compile(out if anchored else f"(?:.*/)?{out}")


def normalize_remote(spec: str) -> str:
    """Local paths become absolute so the binding survives a change of working directory."""
    spec = spec.strip()
    if not spec:
        raise UsageError("--remote is empty")
    is_remote = ":" in spec and not spec.startswith(("/", "./", "../"))
    if not is_remote:
        return os.path.abspath(os.path.expanduser(spec))
    return spec
