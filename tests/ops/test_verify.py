"""verify against every kind of remote: backend hashes first, --read-data for the rest
(moved from test_vault.py)."""

from __future__ import annotations

import os
from pathlib import Path

from helpers import cg, cg_json, cg_proc


def test_verify_uses_backend_hashes_without_download(remote: str, remote_dir: Path,
                                                     tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    cg("init", str(a), "--remote", remote)
    cg("push", "--folder", str(a))
    clean = cg_json("verify", "--folder", str(a))
    local = remote.startswith("/")
    has_md5 = "webdav" not in remote and not local
    assert clean["hash_checked"] == (1 if has_md5 else 0)
    # a local remote records no MD5 (hashing there means reading): verify authenticates
    assert clean["authenticated"] == (1 if local else 0) and clean["read_data"] == local
    (obj,) = (remote_dir / "data").iterdir()
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 1
    obj.write_bytes(bytes(data))
    proc = cg_proc("verify", "--folder", str(a))
    if has_md5:
        assert proc.returncode == 3 and "big.bin" in proc.stderr and "MD5" in proc.stderr
    elif local:
        assert proc.returncode == 3 and "big.bin" in proc.stderr
    else:
        assert proc.returncode == 0  # no backend hash: only --read-data can tell
    assert cg_proc("verify", "--read-data", "--folder", str(a)).returncode == 3
