"""Connection strings read as rclone reads them (issue 9, items 14 and 17): an option after an
endpoint URL is seen, and no credential is ever printed or logged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import cg, cg_json, cg_proc
from servers import S3_SECRET_KEY

from cloudguard import remotes
from cloudguard.errors import UsageError


def test_parse_follows_rclone_quoting() -> None:
    spec = remotes.parse(":s3,provider=Minio,endpoint='http://127.0.0.1:9000',acl=public-read,"
                         "secret_access_key=\"a\"\"b,c\":bucket/v")
    assert spec.name == ":s3" and spec.path == "bucket/v"
    assert spec.options == {"provider": "Minio", "endpoint": "http://127.0.0.1:9000",
                            "acl": "public-read", "secret_access_key": 'a"b,c'}
    assert remotes.parse("mys3,acl=private:bucket").options == {"acl": "private"}
    assert remotes.parse("/tmp/vault") == remotes.Spec("", {}, "/tmp/vault")
    # unquoted, the URL's ':' ends the options, exactly as rclone reads it
    assert remotes.parse(":s3,endpoint=http://h:1,acl=public-read:b").options == {
        "endpoint": "http"}
    with pytest.raises(UsageError, match="no closing quote"):
        remotes.parse(":s3,endpoint='http://h:1:b")


def test_redact_hides_credentials_and_url_passwords() -> None:
    shown = remotes.redact(":webdav,url='https://bob:hunter2@dav.example:8443/x',user=bob,"
                           "pass=abc123,bearer_token=t0k:vault")
    assert "hunter2" not in shown and "abc123" not in shown and "t0k" not in shown
    assert shown == (":webdav,url='https://bob:REDACTED@dav.example:8443/x',user=bob,"
                     "pass=REDACTED,bearer_token=REDACTED:vault")
    assert remotes.redact("mydrive:vault") == "mydrive:vault"
    assert remotes.redact(":s3,key='unterminated:x") == ":s3,REDACTED"
    assert remotes.redact(":s3,env_auth=true:b") == ":s3,env_auth=true:b"


@pytest.mark.server
def test_public_acl_after_an_endpoint_is_seen_and_no_secret_is_printed(
        s3_remote: str, tmp_path: Path) -> None:
    """The remote works with rclone (so rclone read the endpoint as we do), doctor sees the
    acl that follows it, and init, status, doctor and the audit log never show the key."""
    head, _, path = s3_remote.rpartition(":")
    public = f"{head},acl=public-read:{path}"
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    made = cg_proc("init", str(folder), "--remote", public, "--json")
    assert made.returncode == 0, made.stderr
    cg("push", "--folder", str(folder))
    outputs = [made.stdout + made.stderr]
    for args in (("status",), ("doctor",)):
        proc = cg_proc(*args, "--json", "--folder", str(folder))
        outputs.append(proc.stdout + proc.stderr)
    doctor = json.loads(outputs[-1])
    sharing = [f for f in doctor["findings"] if f["check"] == "sharing"][0]
    assert sharing["level"] == "warning" and "acl=public-read" in sharing["message"]
    shown = cg_json("status", "--folder", str(folder))["remote"]
    assert shown.count("REDACTED") == 2  # the key id too
    home = Path(os.environ["CLOUDGUARD_HOME"])
    logs = "".join(p.read_text(errors="replace") for p in home.rglob("*.log*") if p.is_file())
    for text in [*outputs, logs]:
        assert S3_SECRET_KEY not in text


@pytest.mark.server
def test_verify_says_exactly_what_it_checked(remote: str, remote_dir: Path,
                                             tmp_path: Path) -> None:
    """A flipped byte on a backend without hashes passes plain verify, which must then say it
    compared sizes only; --read-data catches it everywhere (issue 9, item 12)."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("some content")
    cg("init", str(folder), "--remote", remote)
    cg("push", "--folder", str(folder))
    data = next((remote_dir / "data").iterdir())
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 1
    data.write_bytes(bytes(raw))
    expected = {"local": "data", "webdav": "sizes", "sftp": "md5", "s3": "md5"}
    kind = next(k for k in expected if remote == remote_dir.as_posix() and k == "local"
                or k in remote)
    plain = cg_proc("verify", "--folder", str(folder))
    if expected[kind] == "sizes":
        assert plain.returncode == 0 and "sizes only: this backend keeps no hashes; run " \
            "verify --read-data" in plain.stdout, plain.stdout
        assert cg_json("verify", "--folder", str(folder))["checked"] == "sizes"
    else:
        assert plain.returncode == 3, (kind, plain.stdout, plain.stderr)
    assert cg_proc("verify", "--read-data", "--folder", str(folder)).returncode == 3
