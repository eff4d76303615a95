"""Local hardening (issue 7, item 8): what a planted file, a forged mode or an oversized or
deeply nested object on the remote can make this device do. Each case is refused or
neutralised, and names the object it refused."""

from __future__ import annotations

import json
import os
import stat
import tracemalloc
from pathlib import Path

import pytest
from helpers import CHEAP_KDF_LOG_N, cg, cg_json, cg_proc, share

from cloudguard import chain, keys, layout, limits, sync, vault
from cloudguard import format as fmt
from cloudguard import manifest as mf
from cloudguard.errors import IntegrityError, TransportError
from cloudguard.state import write_private
from cloudguard.transport import RcloneTransport


def test_write_private_ignores_a_symlink_planted_at_the_old_temp_name(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "binding.json"
    (tmp_path / "binding.json.tmp").symlink_to(victim)
    write_private(target, b"new state")
    assert victim.read_bytes() == b"precious"
    assert not target.is_symlink() and target.read_bytes() == b"new state"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binding.json", "binding.json.tmp",
                                                          "victim"]


def test_kit_export_is_not_redirected_by_a_planted_symlink(local_remote: str,
                                                           tmp_path: Path) -> None:
    a, kit, victim = tmp_path / "a", tmp_path / "kit.json", tmp_path / "victim.txt"
    a.mkdir()
    cg("init", str(a), "--remote", local_remote)
    victim.write_text("someone else's file")
    os.symlink(victim, tmp_path / "kit.json.tmp")
    cg("key", "export", str(kit), "--folder", str(a))
    assert victim.read_text() == "someone else's file"
    assert not kit.is_symlink() and b"recovery-kit" in kit.read_bytes()
    assert stat.S_IMODE(kit.stat().st_mode) == 0o600


def test_applying_a_mode_never_sets_setuid_setgid_or_sticky(tmp_path: Path) -> None:
    staged = sync.stage(tmp_path, "tool", lambda fh: fh.write(b"#!/bin/sh\n"), 0o6755, 0, [])
    sync.commit_staged(tmp_path, staged)
    assert stat.S_IMODE((tmp_path / "tool").stat().st_mode) == 0o755
    sync.make_dir(tmp_path, "shared", 0o3777)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o777


def test_forged_setuid_entry_is_pulled_without_the_bit(local_remote: str,
                                                       tmp_path: Path) -> None:
    """A member (a removed device, say) writes an entry with setuid, setgid and sticky bits;
    a pushed setuid file is stored without them too."""
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    (a / "plain.sh").write_text("#!/bin/sh\necho hi\n")
    (a / "suid.sh").write_text("#!/bin/sh\necho root\n")
    os.chmod(a / "suid.sh", 0o4755)
    share(local_remote, a, b, kit)
    assert stat.S_IMODE((b / "suid.sh").stat().st_mode) == 0o755
    with vault.session(str(a)) as s:
        entries = {p: e for p, (_d, e) in sync.view(s.state).items()}
        assert entries["suid.sh"]["x"] == 0o755
        s.commit([{"p": "evil.sh", "e": {**entries["plain.sh"], "x": 0o6755}, "rm": []},
                  {"p": "evil-dir", "e": {"t": "d", "x": 0o1777}, "rm": []}])
    cg("pull", "--folder", str(b))
    assert (b / "evil.sh").read_text() == "#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((b / "evil.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((b / "evil-dir").stat().st_mode) == 0o777


def test_no_environment_variable_lowers_the_kdf_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys, "TEST_KDF_LOG_N", None)
    monkeypatch.setenv("CLOUDGUARD_SCRYPT_LOG_N", "10")
    assert keys.scrypt_log_n(fmt.KIT_LOG_N) == fmt.KIT_LOG_N


def test_the_cli_in_a_child_process_uses_the_test_kdf_hook(local_remote: str,
                                                           tmp_path: Path) -> None:
    a, kit = tmp_path / "a", tmp_path / "kit.json"
    a.mkdir()
    assert cg_proc("init", str(a), "--remote", local_remote).returncode == 0
    assert cg_proc("key", "export", str(kit), "--folder", str(a)).returncode == 0
    assert json.loads(kit.read_text())["kdf"]["log_n"] == CHEAP_KDF_LOG_N


NESTED = b"[" * 50_000  # far past the parser's recursion limit, yet small


def one_device(remote: str, tmp_path: Path) -> Path:
    a = tmp_path / "a"
    a.mkdir()
    (a / "doc.txt").write_text("hello")
    cg("init", str(a), "--remote", remote)
    cg("push", "--folder", str(a))
    return a


def test_parse_json_refuses_nesting_duplicate_keys_and_bad_bytes() -> None:
    assert fmt.parse_json(b'{"a": [1, {"b": null}]}', "x") == {"a": [1, {"b": None}]}
    for raw, why in [(NESTED, "nested too deeply"), (b'{"a": 1, "a": 2}', "'a' appears twice"),
                     (b'{"o": {"k": 1, "k": 1}}', "'k' appears twice"),
                     ('{"a": 1}'.encode("utf-16"), "utf-8"), (b"{} {}", "Extra data")]:
        with pytest.raises(IntegrityError, match=f"^keys/00000007 is not valid JSON.*{why}"):
            fmt.parse_json(raw, "keys/00000007")


def test_nested_descriptor_is_exit_3_naming_it(local_remote: str, tmp_path: Path) -> None:
    a = one_device(local_remote, tmp_path)
    (Path(local_remote) / "cloudguard.json").write_bytes(NESTED)
    out = cg("pull", "--folder", str(a), code=3).output
    assert "cloudguard.json is not valid JSON: nested too deeply" in out


def genesis(remote: str) -> Path:
    """The genesis commit of the only vault on ``remote``."""
    return next(p for p in (Path(remote) / "keys").iterdir() if p.name.startswith("00000000-")
                and not p.name.endswith(".k"))


def signed(magic: bytes, body: bytes) -> bytes:
    """A signed-object frame around ``body``; the signature never gets checked first."""
    return magic + len(body).to_bytes(4, "big") + body + bytes(64)


def test_nested_key_object_is_exit_3_naming_it(local_remote: str, tmp_path: Path) -> None:
    a = one_device(local_remote, tmp_path)
    commit = genesis(local_remote)
    commit.write_bytes(signed(chain.COMMIT_MAGIC, NESTED))
    out = cg("pull", "--folder", str(a), code=3).output
    assert f"keys/{commit.name}" in out and "RecursionError" not in out


def test_nested_or_duplicated_enrolment_request_is_exit_3_naming_it(local_remote: str,
                                                                      tmp_path: Path) -> None:
    a = one_device(local_remote, tmp_path)
    enroll = Path(local_remote) / "enroll"
    enroll.mkdir()
    (enroll / "00000000000000aa").write_bytes(signed(chain.ENROLL_MAGIC, NESTED))
    out = cg("device", "approve", "AAAA-BBBB-CCCC-DDDD", "--folder", str(a), code=3).output
    assert "enroll/00000000000000aa" in out and "nested too deeply" in out
    # a request whose id (or name) is given twice reads differently to different parsers
    code = cg_json("device", "list", "--folder", str(a))["vault_code"]
    request = cg_json("clone", local_remote, str(tmp_path / "b"), "--vault-code", code)
    (enroll / "00000000000000aa").unlink()
    path = enroll / request["device"]
    data = path.read_bytes()
    body = data[8:-64].replace(b'"rid":', b'"rid":"0123456789abcdef","rid":')
    path.write_bytes(signed(chain.ENROLL_MAGIC, body)[:-64] + data[-64:])
    out = cg("device", "approve", request["fingerprint"], "--folder", str(a), code=3).output
    assert f"enroll/{request['device']}" in out and "the key 'rid' appears twice" in out
    assert len(cg_json("device", "list", "--folder", str(a))["members"]) == 1  # not approved


def test_nested_recovery_kit_is_exit_3_naming_it(local_remote: str, tmp_path: Path) -> None:
    one_device(local_remote, tmp_path)
    kit = tmp_path / "kit.json"
    kit.write_bytes(NESTED)
    out = cg("clone", local_remote, str(tmp_path / "b"), "--key-file", str(kit), code=3).output
    assert f"recovery kit {kit} is not valid JSON: nested too deeply" in out


def test_caps_cover_every_kind_of_object_read_whole() -> None:
    assert limits.cap(layout.DESCRIPTOR) == limits.MAX_DESCRIPTOR
    assert limits.cap(chain.commit_name(3, "ab" * 32)) == limits.MAX_KEYS
    assert limits.cap(chain.commit_name(3, "ab" * 32) + ".k") == limits.MAX_KEYS
    assert limits.cap(keys.ENROLL_PREFIX + "0123456789abcdef") == limits.MAX_ENROLMENT
    assert limits.cap(mf.segment_name("0123456789abcdef", 1, "s")) == limits.MAX_SEGMENT
    assert limits.cap("data/" + "0" * 32) == limits.MAX_OTHER


def test_oversized_object_is_refused_while_it_arrives(local_remote: str) -> None:
    """The listing is not trusted: reading stops at the cap, so memory stays bounded."""
    root = Path(local_remote)
    with (root / layout.DESCRIPTOR).open("wb") as fh:
        fh.truncate(64 * limits.MiB)
    (root / "keys").mkdir()
    (root / "keys" / "00000001").write_bytes(b"{}")
    transport = RcloneTransport(local_remote)
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError, match=f"^{layout.DESCRIPTOR} holds more than "
                                                 f"{limits.MAX_DESCRIPTOR} bytes"):
            transport.get_bytes(layout.DESCRIPTOR)
        with pytest.raises(IntegrityError, match="^cloudguard.json holds more than 1048576"):
            transport.get_bytes(layout.DESCRIPTOR, limits.MiB)
        fetched = transport.get_many([layout.DESCRIPTOR, "keys/00000001"])
        matched = transport.get_matching([f"/{layout.DESCRIPTOR}", "/keys/*"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * limits.MiB, peak
    assert fetched == matched == {"keys/00000001": b"{}"}


def test_oversized_key_object_is_exit_3_naming_it(local_remote: str, tmp_path: Path) -> None:
    """Valid JSON, padded past the cap: refused on its listed size, never parsed."""
    a = one_device(local_remote, tmp_path)
    slots = genesis(local_remote).with_name(genesis(local_remote).name + ".k")
    slots.write_bytes(slots.read_bytes() + b" " * limits.MAX_KEYS)
    out = cg("pull", "--folder", str(a), code=3).output
    assert f"keys/{slots.name} holds more than 16777216 bytes" in out


def test_oversized_enrolment_request_is_exit_3_naming_it(local_remote: str,
                                                          tmp_path: Path) -> None:
    a = one_device(local_remote, tmp_path)
    code = cg_json("device", "list", "--folder", str(a))["vault_code"]
    request = cg_json("clone", local_remote, str(tmp_path / "b"), "--vault-code", code)
    path = Path(local_remote) / "enroll" / request["device"]
    path.write_bytes(path.read_bytes() + b" " * limits.MAX_ENROLMENT)
    out = cg("device", "approve", request["fingerprint"], "--folder", str(a), code=3).output
    assert f"enroll/{request['device']} holds more than 65536 bytes" in out


def test_integrity_errors_name_the_key_object(local_remote: str, tmp_path: Path) -> None:
    a = one_device(local_remote, tmp_path)
    slots = genesis(local_remote).with_name(genesis(local_remote).name + ".k")
    doc = json.loads(slots.read_text())
    doc["history"] = doc["history"][:-4] + "AAA="  # not what the signed commit names
    slots.write_text(json.dumps(doc))
    assert f"error: keys/{slots.name} " in cg("pull", "--folder", str(a), code=3).output


def test_integrity_errors_name_the_manifest_segment(local_remote: str, tmp_path: Path) -> None:
    """A keyholder (a removed device, say) seals a segment whose entry is malformed."""
    a, b, kit = tmp_path / "a", tmp_path / "b", tmp_path / "kit.json"
    a.mkdir()
    share(local_remote, a, b, kit)
    with vault.session(str(a)) as s:
        s.commit([{"p": "odd", "e": {"t": "socket"}, "rm": []}])
        name = s.committed[-1]
    out = cg("pull", "--folder", str(b), code=3).output
    assert f"error: manifest segment {name}: manifest entry is malformed" in out


def test_integrity_errors_name_the_file_being_reencrypted(local_remote: str,
                                                          tmp_path: Path) -> None:
    a = one_device(local_remote, tmp_path)
    [blob] = (Path(local_remote) / "data").iterdir()
    data = bytearray(blob.read_bytes())
    data[-20] ^= 1
    blob.write_bytes(bytes(data))
    out = cg("key", "rotate", "--reencrypt", "--folder", str(a), code=3).output
    assert "error: doc.txt: " in out


def test_a_failing_rclone_reader_is_a_transport_error_not_tampering(tmp_path: Path) -> None:
    """rclone stopping mid-stream (here its own transfer limit) explains a short stream: the
    caller's integrity failure on it becomes a transport error (exit 1), not exit 3."""
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "obj").write_bytes(os.urandom(2_000_000))
    whole = RcloneTransport(str(remote))
    with whole.reader("obj") as stream:
        assert len(stream.read()) == 2_000_000
    cut = RcloneTransport(str(remote), ["--max-transfer", "100K", "--cutoff-mode", "hard"])
    with pytest.raises(TransportError, match="^rclone failed on downloading obj at .*max "
                                             "transfer") as caught:
        with cut.reader("obj") as stream:
            if len(stream.read()) != 2_000_000:
                raise IntegrityError("obj: truncated")
    assert caught.value.exit_code == 1
    assert isinstance(caught.value.__cause__, IntegrityError)
    # a stream that rclone delivered whole and we refused is still the caller's verdict
    with pytest.raises(IntegrityError, match="^obj: refused"), whole.reader("obj") as stream:
        stream.read(10)
        raise IntegrityError("obj: refused")


def test_pull_through_a_failing_transfer_exits_1_and_applies_nothing(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "small.txt").write_text("hello")
    share(local_remote, a, b, tmp_path / "kit.json")
    (a / "big.bin").write_bytes(os.urandom(3_000_000))
    cg("push", "--folder", str(a))
    monkeypatch.setenv("RCLONE_MAX_TRANSFER", "1M")
    monkeypatch.setenv("RCLONE_CUTOFF_MODE", "hard")
    out = cg_proc("pull", "--folder", str(b))
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert "max transfer" in out.stderr
    assert not (b / "big.bin").exists()
    monkeypatch.delenv("RCLONE_MAX_TRANSFER")
    cg("pull", "--folder", str(b))
    assert (b / "big.bin").read_bytes() == (a / "big.bin").read_bytes()


def test_a_reencryption_whose_reader_fails_exits_1_and_finishes_later(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The crash campaign's last exit-3 case: rclone dying while a re-encryption reads a blob
    is a transport failure (exit 1, resumable), not tampering."""
    a = tmp_path / "a"
    a.mkdir()
    (a / "big.bin").write_bytes(os.urandom(3_000_000))
    cg("init", str(a), "--remote", local_remote)
    cg("push", "--folder", str(a))
    monkeypatch.setenv("RCLONE_MAX_TRANSFER", "1M")
    monkeypatch.setenv("RCLONE_CUTOFF_MODE", "hard")
    out = cg_proc("key", "rotate", "--reencrypt", "--folder", str(a))
    assert out.returncode == 1, (out.returncode, out.stderr)
    monkeypatch.delenv("RCLONE_MAX_TRANSFER")
    cg("key", "rotate", "--reencrypt", "--folder", str(a))
    cg("verify", "--read-data", "--folder", str(a))
