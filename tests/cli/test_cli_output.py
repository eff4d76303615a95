"""What the commands say and refuse (issue 9 items 16 and 21): an exposed folder at init and
clone, counts instead of 1,500 paths, files apart from folders and links, enrolment requests
listed, rejected and confirmed, conflict copies of a clone counted, doctor and a removed kit,
and the bandwidth limit through rclone's environment."""

from __future__ import annotations

import ast
import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import cg, cg_json, cg_proc, share

import cloudguard
from cloudguard import cli

# --- item 16: an exposed folder -----------------------------------------------------------


def syncthing(root: Path) -> Path:
    """A folder that Syncthing syncs (its marker at the top)."""
    (root / ".stfolder").mkdir(parents=True)
    return root


def test_init_refuses_a_folder_inside_another_sync_client(local_remote: str, tmp_path: Path
                                                          ) -> None:
    folder = syncthing(tmp_path / "Sync") / "documents"
    refused = cg_proc("init", str(folder), "--remote", local_remote)
    assert refused.returncode == 2, refused.stderr
    line = refused.stderr.strip()
    assert "\n" not in line and "Syncthing" in line and "--allow-exposed" in line
    assert f"move {folder} out of" in line  # the fix
    assert not folder.exists() and not any(Path(local_remote).iterdir())  # nothing made

    made = cg_proc("init", str(folder), "--remote", local_remote, "--allow-exposed", "--json")
    assert made.returncode == 0, made.stderr
    assert "Syncthing" in json.loads(made.stdout)["exposed"][0]
    assert "warning" in made.stderr and "Syncthing" in made.stderr
    (folder / "doc.txt").write_text("doc")
    pushed = cg_proc("push", "--folder", str(folder))
    assert pushed.returncode == 0 and "Syncthing" in pushed.stderr  # push warns


def test_clone_refuses_a_folder_inside_another_sync_client(local_remote: str, tmp_path: Path
                                                           ) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "doc.txt").write_text("doc")
    cg("init", str(a), "--remote", local_remote)
    cg("push", "--folder", str(a))
    cg("key", "export", str(tmp_path / "kit"), "--folder", str(a), "--choose-passphrase")
    b = syncthing(tmp_path / "Sync") / "b"
    refused = cg_proc("clone", local_remote, str(b), "--key-file", str(tmp_path / "kit"))
    assert refused.returncode == 2 and "--allow-exposed" in refused.stderr
    assert not b.exists()
    cg("clone", local_remote, str(b), "--key-file", str(tmp_path / "kit"), "--allow-exposed")
    assert (b / "doc.txt").read_text() == "doc"


def test_a_folder_apart_from_sync_clients_is_not_refused(local_remote: str, tmp_path: Path
                                                         ) -> None:
    (tmp_path / "Sync" / ".stfolder").mkdir(parents=True)  # a sibling, not a parent
    made = cg_json("init", str(tmp_path / "documents"), "--remote", local_remote)
    assert made["exposed"] == []


# --- item 21: status, push and pull output -----------------------------------------------


def test_status_gives_counts_and_lists_paths_only_with_verbose(local_remote: str,
                                                               tmp_path: Path) -> None:
    """A folder rename: hundreds of paths to push, a few lines of summary."""
    a = tmp_path / "a"
    for i in range(3):
        (a / "photos" / f"album{i}").mkdir(parents=True)
        for j in range(40):
            (a / "photos" / f"album{i}" / f"{j}.jpg").write_text(f"{i}-{j}")
    (a / "photos" / "cover").symlink_to("album0/0.jpg")
    (a / "notes.txt").write_text("notes")
    cg("init", str(a), "--remote", local_remote)
    cg("push", "--folder", str(a))
    (a / "photos").rename(a / "pictures")

    out = cg("status", "--folder", str(a)).stdout
    assert len(out.splitlines()) <= 5, out
    assert ("to push: 240 files, 8 folders and 2 links (125 of them deletions), under "
            "photos/ 125, pictures/ 125") in out
    assert "--verbose" in out
    verbose = cg("status", "--folder", str(a), "--verbose").stdout
    assert len([ln for ln in verbose.splitlines() if "to push: " in ln]) == 250
    counts = cg_json("status", "--folder", str(a))["counts"]["to_push"]
    assert counts == {"files": 240, "folders": 8, "links": 2}


def test_push_and_pull_count_folders_and_links_apart(local_remote: str, tmp_path: Path
                                                     ) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "doc.txt").write_text("doc")
    share(local_remote, a, b, tmp_path / "kit")
    for i in range(40):
        (a / f"dir{i}").mkdir()
    (a / "l1").symlink_to("doc.txt")
    (a / "l2").symlink_to("doc.txt")
    (a / "new.txt").write_text("new")
    dry = cg("push", "--folder", str(a), "--dry-run").stdout
    assert dry.strip() == ("Would upload 1 file; updated 40 folders and 2 links; deleted "
                           "nothing.")
    pushed = cg_json("push", "--folder", str(a))
    assert len(pushed["updated"]) == 42
    assert pushed["counts"]["updated"] == {"files": 0, "folders": 40, "links": 2}
    pulled = cg_json("pull", "--folder", str(b))
    assert pulled["counts"]["downloaded"] == {"files": 1, "folders": 0, "links": 0}
    assert pulled["counts"]["made"] == {"files": 0, "folders": 40, "links": 2}
    (a / "dir0").rmdir()
    (a / "l1").unlink()
    cg("push", "--folder", str(a))
    pulled = cg_json("pull", "--folder", str(b))
    assert pulled["counts"]["deleted"] == {"files": 0, "folders": 1, "links": 1}


def test_clone_into_a_non_empty_folder_counts_its_conflict_copies(local_remote: str,
                                                                  tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for name in ("one.txt", "two.txt", "same.txt"):
        (a / name).write_text(f"vault's {name}")
    (b / "one.txt").write_text("already here")
    (b / "two.txt").write_text("also already here")
    (b / "same.txt").write_text("vault's same.txt")
    cg("init", str(a), "--remote", local_remote)
    cg("push", "--folder", str(a))
    cg("key", "export", str(tmp_path / "kit"), "--folder", str(a), "--choose-passphrase")
    out = cg("clone", local_remote, str(b), "--key-file", str(tmp_path / "kit")).stdout
    assert "2 conflict copies" in out, out
    assert (b / "one.txt").read_text() == "vault's one.txt"  # the vault's keeps the name
    copies = sorted(p.name for p in b.iterdir() if "conflict" in p.name)
    assert len(copies) == 2 and copies[0] in out
    assert sorted((b / c).read_text() for c in copies) == ["already here", "also already here"]


# --- item 21: enrolment -------------------------------------------------------------------


def request(local_remote: str, tmp_path: Path, name: str) -> tuple[Path, dict[str, str]]:
    """A vault on device a, and an enrolment request from a device called ``name``."""
    a = tmp_path / "a"
    if not a.exists():
        a.mkdir()
        (a / "doc.txt").write_text("doc")
        cg("init", str(a), "--remote", local_remote)
        cg("push", "--folder", str(a))
    code = cg_json("device", "list", "--folder", str(a))["vault_code"]
    req = cg_json("clone", local_remote, str(tmp_path / name), "--vault-code", code, "--name",
                  name)
    return a, req


def test_device_list_shows_pending_requests_and_reject_deletes_one(local_remote: str,
                                                                   tmp_path: Path) -> None:
    a, req = request(local_remote, tmp_path, "stranger")
    listed = cg_json("device", "list", "--folder", str(a))
    assert [(p["id"], p["name"], p["fingerprint"], p["problem"]) for p in listed["pending"]] == [
        (req["device"], "stranger", req["fingerprint"], None)]
    human = cg("device", "list", "--folder", str(a)).stdout
    assert "pending" in human and "stranger" in human and req["fingerprint"] in human

    obj = Path(local_remote) / "enroll" / req["device"]
    asked = cg_proc("device", "reject", req["fingerprint"], "--folder", str(a))
    assert asked.returncode == 1 and "--yes" in asked.stderr
    assert len(asked.stderr.strip().splitlines()) == 1 and obj.exists()
    done = cg_json("device", "reject", req["fingerprint"], "--folder", str(a), "--yes")
    assert done == {"rejected": req["device"], "name": "stranger",
                    "fingerprint": req["fingerprint"]}
    assert not obj.exists()
    assert cg_json("device", "list", "--folder", str(a))["pending"] == []
    assert cg_proc("device", "reject", req["fingerprint"], "--folder", str(a),
                   "--yes").returncode == 2
    waiting = cg_proc("pull", "--folder", str(tmp_path / "stranger"))
    assert waiting.returncode == 1

    junk = Path(local_remote) / "enroll" / "0123456789abcdef"
    junk.write_bytes(b"not a request")  # has no fingerprint: listed, rejected by its id
    [row] = cg_json("device", "list", "--folder", str(a))["pending"]
    assert row["id"] == junk.name and row["fingerprint"] is None and row["problem"]
    assert "invalid" in cg("device", "list", "--folder", str(a)).stdout
    cg("device", "reject", junk.name, "--folder", str(a), "--yes")
    assert not junk.exists()


def test_device_approve_shows_name_and_fingerprint_and_asks(local_remote: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    a, req = request(local_remote, tmp_path, "laptop-b")
    members = lambda: len(cg_json("device", "list", "--folder", str(a))["members"])  # noqa: E731
    no_tty = cg_proc("device", "approve", req["fingerprint"], "--folder", str(a))
    assert no_tty.returncode == 1 and no_tty.stdout == ""
    line = no_tty.stderr.strip()
    assert "\n" not in line and "laptop-b" in line and req["fingerprint"] in line
    assert "--yes" in line and members() == 1

    monkeypatch.setattr(cli.members, "_interactive", lambda: True)
    said_no = CliRunner().invoke(cli.main, ["device", "approve", req["fingerprint"],
                                            "--folder", str(a)], input="n\n")
    assert said_no.exit_code == 1
    assert "laptop-b" in said_no.output and req["fingerprint"] in said_no.output
    assert "not approved" in said_no.output and members() == 1
    said_yes = CliRunner().invoke(cli.main, ["device", "approve", req["fingerprint"],
                                             "--folder", str(a)], input="y\n")
    assert said_yes.exit_code == 0, said_yes.output
    assert "laptop-b" in said_yes.output and members() == 2
    cg("pull", "--folder", str(tmp_path / "laptop-b"))
    assert (tmp_path / "laptop-b" / "doc.txt").read_text() == "doc"


# --- item 21: recovery kits ---------------------------------------------------------------


def test_doctor_and_clone_after_the_kit_was_removed(local_remote: str, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "doc.txt").write_text("doc")
    cg("init", str(a), "--remote", local_remote)
    cg("push", "--folder", str(a))
    never = cg("doctor", "--folder", str(a)).stdout
    assert "no recovery kit was ever exported" in never
    kit = cg_json("key", "export", str(tmp_path / "kit"), "--folder", str(a),
                  "--choose-passphrase")
    cg("device", "remove", kit["id"], "--folder", str(a))
    found = [f for f in cg_json("doctor", "--folder", str(a))["findings"]
             if f["check"] == "recovery-kit"]
    assert len(found) == 1 and found[0]["level"] == "warning"
    assert "removed" in found[0]["message"] and "ever exported" not in found[0]["message"]
    assert "export a new one" in found[0]["fix"]

    revoked = cg_proc("clone", local_remote, str(tmp_path / "b"), "--key-file",
                      str(tmp_path / "kit"))
    assert revoked.returncode == 1
    assert "device approve" not in revoked.stderr and "recovery kit" in revoked.stderr
    assert "removed" in revoked.stderr and "--vault-code" in revoked.stderr
    assert not (tmp_path / "b").exists()


# --- item 21: bandwidth limit -------------------------------------------------------------


def test_rclone_bwlimit_reaches_every_rclone_call(local_remote: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """README: RCLONE_BWLIMIT limits every transfer. A malformed value makes rclone itself
    refuse, which proves the variable reaches it; a good one works end to end."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "doc.txt").write_text("doc")
    monkeypatch.setenv("RCLONE_BWLIMIT", "not-a-rate")
    bad = cg_proc("init", str(a), "--remote", local_remote)
    assert bad.returncode == 1 and "bwlimit" in bad.stderr.lower(), bad.stderr
    monkeypatch.setenv("RCLONE_BWLIMIT", "08:00,512k 23:00,off")  # a timetable works too
    share(local_remote, a, b, tmp_path / "kit")
    assert (b / "doc.txt").read_text() == "doc"


@pytest.mark.slow
@pytest.mark.server
def test_rclone_bwlimit_slows_uploads_and_downloads(sftp_remote: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """On a real server the limit holds both ways: 1 MB at 200 KiB/s takes seconds (a few
    tenths without it). A local remote receives objects by rename, moving no bytes."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "big.bin").write_bytes(os.urandom(1_000_000))
    cg("init", str(a), "--remote", sftp_remote)
    cg("key", "export", str(tmp_path / "kit"), "--folder", str(a), "--choose-passphrase")
    monkeypatch.setenv("RCLONE_BWLIMIT", "200k")
    start = time.monotonic()
    cg("push", "--folder", str(a))
    assert time.monotonic() - start >= 3
    start = time.monotonic()
    cg("clone", sftp_remote, str(b), "--key-file", str(tmp_path / "kit"))
    assert time.monotonic() - start >= 3
    assert (b / "big.bin").read_bytes() == (a / "big.bin").read_bytes()


def test_no_subprocess_call_replaces_the_environment() -> None:
    """Every rclone call inherits the environment (so RCLONE_* settings apply): an ``env=``
    argument must extend os.environ, never replace it."""
    package = Path(cloudguard.__file__).parent
    for source in sorted(package.rglob("*.py")):
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "env":
                        text = ast.unparse(kw.value)
                        assert "os.environ" in text, f"{source.name}:{node.lineno}: env={text}"


def test_help_everywhere() -> None:
    for args in (["--help"], ["init", "--help"], ["clone", "--help"], ["push", "--help"],
                 ["pull", "--help"], ["status", "--help"], ["verify", "--help"],
                 ["key", "rotate", "--help"], ["key", "list", "--help"],
                 ["key", "export", "--help"], ["device", "list", "--help"],
                 ["device", "approve", "--help"], ["device", "reject", "--help"],
                 ["device", "remove", "--help"]):
        assert "Usage:" in cg(*args).stdout
    assert cg_proc("push", "--bogus").returncode == 2
