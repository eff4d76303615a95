"""The daemon (issue 11): the scheduler's rules on a fake clock, the ignore rules, and the real
thing: `cloudguard daemon run` as a subprocess with real inotify, saving files the ways editors
do, a second device pulling what arrives."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import CLOUDGUARD, PASSPHRASE, cg, cg_json, cg_proc, share

from cloudguard.api import Vault
from cloudguard.daemon.schedule import Recent, Scheduler, Timing
from cloudguard.errors import GuardError, UsageError
from cloudguard.ignore import Ignore


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_closed_file_goes_after_the_short_quiet_an_open_one_after_the_long() -> None:
    clock = Clock()
    s = Scheduler(Timing(quiet_closed=0.3, quiet_open=2.0, max_wait=30, min_interval=10), clock)
    s.touched("saved.txt", closed=True)
    s.touched("writing.log", closed=False)
    clock.t += 0.31
    assert s.due() == (False, ["saved.txt"])
    clock.t += 1.0
    assert s.due() == (False, [])
    s.touched("writing.log", closed=False)  # still being written
    clock.t += 1.9
    assert s.due() == (False, [])
    clock.t += 0.2
    assert s.due() == (False, ["writing.log"])


def test_a_file_that_never_settles_goes_after_max_wait_and_a_busy_one_at_most_every_interval(
        ) -> None:
    clock = Clock()
    s = Scheduler(Timing(quiet_closed=0.3, quiet_open=2.0, max_wait=30, min_interval=10), clock)
    for _ in range(31):  # a write every second, never quiet
        s.touched("busy.db")
        clock.t += 1.0
        rescan, paths = s.due()
        if paths:
            break
    assert paths == ["busy.db"] and 29 <= clock.t - 1000 <= 31
    s.touched("busy.db", closed=True)  # saved again right after its push
    clock.t += 0.5
    assert s.due() == (False, [])
    clock.t += 9.6
    assert s.due() == (False, ["busy.db"])


def test_a_full_queue_becomes_one_rescan() -> None:
    clock = Clock()
    s = Scheduler(Timing(max_paths=3), clock)
    for i in range(4):
        s.touched(f"f{i}", closed=True)
    assert s.rescan_pending and len(s) == 0
    s.touched("later", closed=True)  # covered by the rescan
    assert s.due() == (True, []) and s.due() == (False, [])


def test_recent_deletes_count_for_five_minutes() -> None:
    clock = Clock()
    recent = Recent(300.0, clock)
    recent.add(3)
    recent.add(0)
    clock.t += 200
    recent.add(4)
    assert recent.total() == 7
    clock.t += 101  # the first batch is older than the window now
    assert recent.total() == 4
    recent.clear()
    assert recent.total() == 0


def test_deletes_spread_over_small_pushes_meet_the_mass_delete_guard(
        local_remote: str, tmp_path: Path) -> None:
    """The daemon hands each push what it deleted lately: 6 now after 6 is 12 of 20."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(20):
        (folder / f"f{i:02}.txt").write_text(str(i))
    cg("init", str(folder), "--remote", local_remote)
    vault = Vault(str(folder))
    try:
        vault.push()
        for i in range(6):
            (folder / f"f{i:02}.txt").unlink()
        assert vault.push().counts.deleted.files == 6  # under the floor of 10
        for i in range(6, 12):
            (folder / f"f{i:02}.txt").unlink()
        assert vault.push(dry_run=True, deleted_before=6).mass_delete
        assert not vault.push(dry_run=True).mass_delete  # alone, 6 would pass
        with pytest.raises(GuardError, match="after 6 deleted in the last minutes") as got:
            vault.push(deleted_before=6)
        assert got.value.code == "mass-delete"
        assert len(vault.files()) == 14  # nothing of the refused push went up
    finally:
        vault.close()


def test_ignore_rules() -> None:
    ignore = Ignore(["build/", "*.bak"])
    for path in ("~$report.docx", ".~lock.report.odt#", "notes.txt.swp", "draft~", "x.tmp",
                 ".DS_Store", "sub/Thumbs.db", ".#emacs", "build/out.o", "old.bak"):
        assert ignore(path), path
    for path in ("report.docx", "notes.txt", "sub/tmp.txt", "buildings/a", ""):
        assert not ignore(path), path
    assert ignore.lock_for("dir/report.odt", ["dir/.~lock.report.odt#"]) == \
        "dir/.~lock.report.odt#"
    with pytest.raises(UsageError):
        Ignore(["ok", 3])  # type: ignore[list-item]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60,
             log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (
            f"; the daemon's log:\n{log.read_text(errors='replace')[-3000:]}"
            if log is not None and log.exists() else "")
        time.sleep(0.2)


@contextmanager
def daemon(home: Path, log: Path, *folders: Path, extra: tuple[str, ...] = (),
           config: str = "", prefix: tuple[str, ...] = ()
           ) -> Iterator[subprocess.Popen[bytes]]:
    """``prefix``: a command the daemon runs under (e.g. unshare into a user namespace)."""
    (home / "config.toml").write_text("[daemon]\npoll_seconds = 0.5\nquiet_closed = 0.2\n"
                                      "min_interval = 0.5\n" + config)
    env = {**os.environ, "CLOUDGUARD_HOME": str(home)}
    with log.open("wb") as out:
        proc = subprocess.Popen([*prefix, *CLOUDGUARD, "daemon", "run", *extra,
                                 *(arg for f in folders for arg in ("--folder", str(f)))],
                                env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_for("the daemon to start", lambda: b"serving" in log.read_bytes(), 30)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError("the daemon did not stop within 10 s of SIGTERM") from None


def wait_for_tree(device: Path, want: dict[str, str], what: str, timeout: float = 120) -> None:
    """Pull on ``device`` until its files are ``want``."""
    def arrived() -> bool:
        cg("pull", "--folder", str(device))
        return _tree(device) == want

    wait_for(what, arrived, timeout)


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file() and ".cloudguard" not in p.relative_to(root).parts}


def test_saves_arrive_on_the_other_device(local_remote: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "report.txt").write_text("v1")
    (a / "gone.txt").write_text("to be deleted")
    (a / "old-name.txt").write_text("renamed content")
    share(local_remote, a, b, tmp_path / "kit.json")
    home = Path(os.environ["CLOUDGUARD_HOME"])  # b is a second binding: the CLI serves it
    with daemon(home, tmp_path / "daemon.log", a) as proc:
        (a / "report.txt").write_text("v2 plain write")
        tmp = a / ".report.txt.XYZ.tmp"  # an atomic save: temp file, then rename over
        tmp.write_text("v3 atomic save")
        os.replace(tmp, a / "report.txt")
        (a / "vim.txt").write_text("vim v1")
        os.rename(a / "vim.txt", a / "vim.txt~")  # vim: backup by rename, new file, drop backup
        (a / "vim.txt").write_text("vim v2")
        (a / "vim.txt~").unlink()
        (a / ".~lock.report.txt#").write_text("locked by me")  # never uploaded
        (a / "gone.txt").unlink()
        os.rename(a / "old-name.txt", a / "new-name.txt")
        outside = tmp_path / "incoming"
        (outside / "deep").mkdir(parents=True)
        (outside / "deep" / "x.txt").write_text("moved in")
        os.rename(outside, a / "incoming")
        subprocess.run([sys.executable, "-c", "import pathlib; p = pathlib.Path('sed.txt'); "
                        "p.write_text('sed v1')"], cwd=a, check=True)
        subprocess.run(["sed", "-i", "s/v1/v2/", "sed.txt"], cwd=a, check=True)
        expected = {"report.txt": "v3 atomic save", "vim.txt": "vim v2",
                    "new-name.txt": "renamed content", "incoming/deep/x.txt": "moved in",
                    "sed.txt": "sed v2"}

        def arrived() -> bool:
            cg("pull", "--folder", str(b))
            return _tree(b) == expected

        wait_for("every save on device b", arrived)
        assert proc.poll() is None
        # the other way: b pushes, a's daemon pulls within its poll interval
        (b / "from-b.txt").write_text("hello a")
        cg("push", "--folder", str(b))
        wait_for("b's file on a", lambda: (a / "from-b.txt").exists())
        assert (a / "from-b.txt").read_text() == "hello a"
        wait_for("a in sync", lambda: cg_json("status", "--folder", str(b))["to_pull"] == [])
    assert proc.returncode == 0, (tmp_path / "daemon.log").read_text()[-3000:]


def test_real_programs_save_and_the_other_device_gets_it(local_remote: str,
                                                        tmp_path: Path) -> None:
    """The save patterns of issue 11 with the real programs: vim in ex mode (backup by
    rename), sed -i, cp -a of a tree, a git checkout of many files, Python's atomic-save
    recipe, and appends to a file held open."""
    if shutil.which("vim") is None or shutil.which("git") is None:
        pytest.skip("vim and git are not installed")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "vimmed.txt").write_text("line one\n")
    share(local_remote, a, b, tmp_path / "kit.json")
    source = tmp_path / "src"  # a repository with two branches that differ in 40 files
    source.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c",
           "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=source, check=True)
    for i in range(40):
        (source / f"f{i:02}.txt").write_text(f"main {i}\n")
    subprocess.run([*git, "add", "."], cwd=source, check=True)
    subprocess.run([*git, "commit", "-qm", "main"], cwd=source, check=True)
    subprocess.run([*git, "checkout", "-qb", "other"], cwd=source, check=True)
    for i in range(40):
        (source / f"f{i:02}.txt").write_text(f"other {i}\n")
    subprocess.run([*git, "commit", "-qam", "other"], cwd=source, check=True)
    subprocess.run([*git, "checkout", "-q", "main"], cwd=source, check=True)
    tree_src = tmp_path / "tree"
    (tree_src / "deep" / "deeper").mkdir(parents=True)
    for i in range(25):
        (tree_src / "deep" / "deeper" / f"c{i}.bin").write_bytes(os.urandom(1000 + i))
    home = Path(os.environ["CLOUDGUARD_HOME"])
    with daemon(home, tmp_path / "daemon.log", a):
        subprocess.run(["vim", "-E", "-s", "-u", "NONE", "-N", "-c",
                        "set backup writebackup backupcopy=no", "-c", "%s/one/two/", "-c",
                        "wq", "vimmed.txt"], cwd=a, check=True, stdin=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-c", "import pathlib; "
                        "pathlib.Path('sedded.txt').write_text('sed v1')"], cwd=a, check=True)
        subprocess.run(["sed", "-i", "s/v1/v2/", "sedded.txt"], cwd=a, check=True)
        subprocess.run(["cp", "-a", str(tree_src), str(a / "copied")], check=True)
        subprocess.run([*git, "clone", "-q", str(source), str(a / "repo")], check=True)
        subprocess.run([*git, "checkout", "-q", "other"], cwd=a / "repo", check=True)
        subprocess.run([sys.executable, "-c", (  # the atomic-save recipe: temp, fsync, replace
            "import os, tempfile\n"
            "fd, tmp = tempfile.mkstemp(dir='.', prefix='.atomic-')\n"
            "os.write(fd, b'atomic v2'); os.fsync(fd); os.close(fd)\n"
            "os.replace(tmp, 'atomic.txt')\n")], cwd=a, check=True)
        with (a / "appended.log").open("w") as log:  # appends while the file stays open
            for i in range(5):
                log.write(f"entry {i}\n")
                log.flush()
                time.sleep(0.1)
        want = {os.path.relpath(p, a): p.read_bytes() for p in a.rglob("*")
                if p.is_file() and ".cloudguard" not in p.parts}
        assert (a / "vimmed.txt").read_text() == "line two\n"
        assert (a / "repo" / "f07.txt").read_text() == "other 7\n"

        def arrived() -> bool:
            cg("pull", "--folder", str(b))
            got = {os.path.relpath(p, b): p.read_bytes() for p in b.rglob("*")
                   if p.is_file() and ".cloudguard" not in p.parts}
            return got == want

        wait_for("every program's save on device b", arrived, timeout=120)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_a_killed_daemon_loses_no_save_of_a_burst(local_remote: str, tmp_path: Path,
                                                  how: signal.Signals) -> None:
    """kill -9 during a burst of 200 saves, then a restart: every file arrives with its last
    content (the start-up rescan compares the folder with the index). SIGTERM in the middle
    of the burst: the daemon finishes or abandons what was in flight, within 3 s, and the
    next start finishes it."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "seed.txt").write_text("seed")
    share(local_remote, a, b, tmp_path / "kit.json")
    home = Path(os.environ["CLOUDGUARD_HOME"])
    with daemon(home, tmp_path / "daemon.log", a) as proc:
        for i in range(200):
            (a / f"burst-{i % 40:02}.txt").write_text(f"save {i}")
            if i == 120:
                proc.send_signal(how)  # SIGKILL: no clean-up at all
                sent = time.monotonic()
        proc.wait(timeout=10)
        assert time.monotonic() - sent < 3.0
    with daemon(home, tmp_path / "daemon2.log", a):
        want = {f"burst-{n:02}.txt": f"save {160 + n}" for n in range(40)}
        wait_for_tree(b, {**want, "seed.txt": "seed"}, "every last save after the restart")


@contextmanager
def server_on(kind: str, root: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """rclone serve webdav|sftp on a fixed port, so that it can be stopped and started
    again (an sftp server makes a new host key each start; the client does not pin it)."""
    from servers import _port_open, rclone_binary, rclone_env

    extra = ["--no-auth", "--authorized-keys", os.devnull] if kind == "sftp" else []
    proc = subprocess.Popen([rclone_binary(), "serve", kind, str(root), "--addr",
                             f"127.0.0.1:{port}", "--cache-dir", str(root.parent / "cache"),
                             *extra], env=rclone_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("the server to listen", lambda: _port_open(port), 30)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["webdav", "sftp"])
def test_an_outage_loses_no_save_and_retries_are_bounded(tmp_path: Path, kind: str) -> None:
    """The server stops; 50 files are saved; it comes back: all 50 arrive, and the log shows
    a few spaced retries, not a storm."""
    from servers import _obscure, free_port

    port = free_port()
    remote = (f":webdav,url='http://127.0.0.1:{port}',vendor=rclone:data" if kind == "webdav"
              else f":sftp,host=127.0.0.1,port={port},user=x,pass={_obscure('x')},"
              "known_hosts_file=none,shell_type=unix,md5sum_command=md5sum,"
              "sha1sum_command=sha1sum:data")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "seed.txt").write_text("seed")
    home = Path(os.environ["CLOUDGUARD_HOME"])
    log = tmp_path / "daemon.log"
    with server_on(kind, tmp_path / "root", port):
        share(remote, a, b, tmp_path / "kit.json")
    with daemon(home, log, a):
        for i in range(50):
            (a / f"offline-{i:02}.txt").write_text(f"saved while offline {i}")
        wait_for("a failed push", lambda: bool(cg_json("daemon", "status")["folders"][0][
            "last_error"]))
        time.sleep(3)  # a few more attempts while the server is down
        with server_on(kind, tmp_path / "root", port):
            want = {f"offline-{i:02}.txt": f"saved while offline {i}" for i in range(50)}
            wait_for_tree(b, {**want, "seed.txt": "seed"}, "all 50 files after the outage")
    retries = log.read_text().count("retrying in")
    assert 1 <= retries <= 10, log.read_text()[-3000:]


def test_two_devices_with_daemons_converge_with_one_conflict_copy(local_remote: str,
                                                                   tmp_path: Path) -> None:
    """Both devices run under the daemon. Edits to different files converge; both editing one
    file leaves exactly one conflict copy on both; a rotation on one device reaches the other
    without a restart."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "shared.txt").write_text("base")
    share(local_remote, a, b, tmp_path / "kit.json")
    home = Path(os.environ["CLOUDGUARD_HOME"])
    with daemon(home, tmp_path / "daemon.log", a, b):
        (a / "from-a.txt").write_text("a wrote this")
        (b / "from-b.txt").write_text("b wrote this")
        wait_for("different files to converge", lambda: _tree(a) == _tree(b)
                 and {"from-a.txt", "from-b.txt"} <= set(_tree(a)))
        cg("daemon", "pause")  # both edit one file before either hears of the other
        wait_for("both paused", lambda: all(f["state"] == "paused" for f in cg_json(
            "daemon", "status")["folders"]))
        (a / "shared.txt").write_text("a's edit")
        (b / "shared.txt").write_text("b's edit")
        cg("daemon", "resume")

        def one_copy_each() -> bool:
            ta, tb = _tree(a), _tree(b)
            copies = [p for p in ta if p.startswith("shared (conflict")]
            return ta == tb and len(copies) == 1

        wait_for("one conflict copy on both", one_copy_each, timeout=90)
        got = _tree(a)
        copy = next(p for p in got if p.startswith("shared (conflict"))
        assert {got["shared.txt"], got[copy]} == {"a's edit", "b's edit"}
        epoch = cg_json("status", "--folder", str(b))["epoch"]
        cg("key", "rotate", "--folder", str(a))
        (a / "after-rotation.txt").write_text("under the new key")
        wait_for("the new key and file on b", lambda: (b / "after-rotation.txt").exists())
        assert cg_json("status", "--folder", str(b))["epoch"] > epoch


@contextmanager
def running(folder: Path, rescan: float = 3600.0, limits: Any = None,
            log_paths: bool = False) -> Iterator[Any]:
    """A folder worker in this process (the caller starts it), stopped at the end."""
    from cloudguard.daemon.worker import FolderWorker, Intervals
    from cloudguard.state import find_binding

    stop = threading.Event()
    worker = FolderWorker(find_binding(str(folder)), stop,
                          Timing(quiet_closed=0.1, quiet_open=0.2, min_interval=0.2),
                          Intervals(poll=0.5, rescan=rescan), limits=limits,
                          log_paths=log_paths)
    try:
        yield worker
    finally:
        stop.set()
        worker._wake.set()
        if worker.is_alive():
            worker.join(timeout=10)


def test_files_written_during_start_up_are_synced(local_remote: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """rclone starts while the watches are set up, and the first push waits for it: a file
    written before the watches, one written just after them, and one written while the
    first push waits for rclone (its scan may or may not have seen it: an event then says
    so) all go up, with no rescan after the first to help."""
    from cloudguard import rcd
    from cloudguard.daemon import worker as worker_module

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "sub").mkdir()
    cg("init", str(folder), "--remote", local_remote)
    observer, started = worker_module.Observer, rcd.RcdTransport._started

    class Writing(observer):  # type: ignore[misc, valid-type]
        def start(self) -> None:
            (folder / "before-watches.txt").write_text("seen by the first scan")
            super().start()
            (folder / "sub" / "after-watches.txt").write_text("seen by the scan or an event")

    def writing(transport: Any) -> None:
        if not transport._up:
            (folder / "sub" / "while-rclone-starts.txt").write_text("scan or event")
            (folder / "before-watches.txt").write_text("changed again")
        started(transport)

    monkeypatch.setattr(worker_module, "Observer", Writing)
    monkeypatch.setattr(rcd.RcdTransport, "_started", writing)
    with running(folder) as worker:  # rescans every hour: only the first one counts
        worker.start()
        wait_for("the start-up push", lambda: worker.status.last_push is not None)
        wait_for("every start-up file", lambda: cg_json("status", "--folder", str(folder))[
            "to_push"] == [], timeout=30)
    monkeypatch.setattr(rcd.RcdTransport, "_started", started)  # this Vault writes nothing
    with Vault(str(folder)) as vault:
        assert {"before-watches.txt", "sub/after-watches.txt",
                "sub/while-rclone-starts.txt"} <= set(vault.files())


def test_an_inotify_overflow_misses_nothing(local_remote: str, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Injected at the watcher boundary: the kernel drops the events of a save (every hint is
    lost), then watchdog reports the overflow; the worker rescans and the save goes up."""
    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    with running(folder) as worker:
        monkeypatch.setattr(worker, "hint", lambda rel, closed: None)  # events lost
        worker.start()
        wait_for("the start-up push", lambda: worker.status.last_push is not None)
        (folder / "lost.txt").write_text("its events never arrived")
        time.sleep(1.0)
        assert cg_json("status", "--folder", str(folder))["to_push"] == ["lost.txt"]
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost")
        wait_for("the rescan's push", lambda: cg_json("status", "--folder", str(folder))[
            "to_push"] == [])


def test_a_folder_that_cannot_be_watched_is_rescanned(local_remote: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from inotify (max_user_watches): the worker says so and falls back to rescans."""
    import errno

    from cloudguard.daemon import worker as worker_module

    class Full:
        def schedule(self, *_args: Any, **_kw: Any) -> None:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(worker_module, "Observer", Full)
    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    with running(folder, rescan=1.0) as worker:
        worker.start()
        wait_for("the start-up push", lambda: worker.status.last_push is not None)
        assert worker.status.extra["watching"] is False
        (folder / "unwatched.txt").write_text("found by a rescan")
        wait_for("the rescan's push", lambda: cg_json("status", "--folder", str(folder))[
            "to_push"] == [])


def test_the_unit_is_type_notify_and_holds_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudguard.daemon import control

    monkeypatch.setenv("CLOUDGUARD_PASSPHRASE", "hunter2 hunter2 hunter2")
    unit = cg("daemon", "install", "--print").output
    assert "Type=notify" in unit and "Restart=on-failure" in unit
    assert "daemon run" in unit and sys.executable in unit
    assert "hunter2" not in unit and "PASSPHRASE=" not in unit.replace("PASSPHRASE_FILE", "")
    assert unit.rstrip() == control.unit_text(Path(os.environ["CLOUDGUARD_HOME"])).rstrip()


def test_ready_status_and_a_prompt_stop(local_remote: str, tmp_path: Path) -> None:
    import socket as sockets

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    cg("init", str(folder), "--remote", local_remote)
    home = Path(os.environ["CLOUDGUARD_HOME"])
    listener = sockets.socket(sockets.AF_UNIX, sockets.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify.sock"))
    listener.settimeout(30)
    os.environ["NOTIFY_SOCKET"] = str(tmp_path / "notify.sock")
    try:
        with daemon(home, tmp_path / "daemon.log") as proc:
            assert listener.recv(100) == b"READY=1"
            sock = home / "run" / "daemon.sock"
            assert stat.S_IMODE(sock.stat().st_mode) == 0o600
            wait_for("the first push", lambda: cg_json("daemon", "status")["folders"][0][
                "last_push"] is not None)
            got = cg_json("daemon", "status")
            assert got["running"] and got["pid"] == proc.pid
            assert got["folders"][0]["folder"] == str(folder)
            got = cg_json("status", "--folder", str(folder))
            assert got["to_push"] == [] and got["daemon"]["state"] in ("idle", "syncing")
            assert got["daemon"]["last_push"] is not None
            assert got["daemon"]["key_age_days"] is not None
            assert "daemon: " in cg("status", "--folder", str(folder)).stdout
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
            assert time.monotonic() - started < 3.5
            assert listener.recv(100) == b"STOPPING=1"
        assert cg_json("daemon", "status") == {"running": False}
        assert cg_json("status", "--folder", str(folder))["daemon"] is None
        kept = Path(os.environ["CLOUDGUARD_HOME"]) / "log" / "daemon.log"  # the log file
        assert b"serving 1 folder" in kept.read_bytes()
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    finally:
        del os.environ["NOTIFY_SOCKET"]
        listener.close()


def test_sigterm_is_noticed_at_once(local_remote: str, tmp_path: Path) -> None:
    """The signal wakes the daemon's wait: it used to be noticed at the next one-second tick
    of the main loop, and the status socket's half-second one; an idle daemon now says
    "stopping" within a fraction of a second and exits soon after."""
    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    home = Path(os.environ["CLOUDGUARD_HOME"])
    log = tmp_path / "daemon.log"
    with daemon(home, log, folder) as proc:
        wait_for("the daemon to be idle", lambda: cg_json("daemon", "status")["folders"][0][
            "state"] == "idle")
        sent, started = time.time(), time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        took = time.monotonic() - started
    stamp = re.search(rb"^(\S+ [0-9:]+),(\d{3}) INFO cloudguard.daemon: stopping$",
                      log.read_bytes(), re.MULTILINE)
    assert stamp, log.read_text()
    said = time.mktime(time.strptime(stamp[1].decode(), "%Y-%m-%d %H:%M:%S")) + int(
        stamp[2]) / 1000
    assert said - sent < 0.3 and took < 2.0, (said - sent, took)


def test_a_stop_abandons_work_past_the_grace_and_stops_its_rclone(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A worker still in a transfer when the grace is over is abandoned, as a kill would
    abandon it (nothing is committed without its segment; the next start rescans): its
    rclone processes are killed rather than left uploading after the daemon is gone."""
    from types import SimpleNamespace

    from cloudguard import rclone_run
    from cloudguard.daemon import run as runner

    transfer = rclone_run._Watched(["sleep", "60"], stall=600)  # a long upload's rclone

    class Busy(threading.Thread):
        binding = SimpleNamespace(id="busy")

    worker = Busy(target=transfer.finish, daemon=True)
    worker.start()
    monkeypatch.setattr(runner, "STOP_WITHIN", 0.2)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "cloudguard.daemon"):
        runner._finish([worker])  # type: ignore[list-item]
    assert time.monotonic() - started < 2
    worker.join(timeout=5)
    assert not worker.is_alive() and transfer.proc.returncode == -signal.SIGKILL
    assert "stopping in the middle of a push or pull of busy" in caplog.text


def test_without_a_passphrase_the_daemon_starts_locked_until_unlock(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """File keystore, no terminal, no variable, no credential: the daemon starts (READY, so
    systemd does not restart it), serves nothing and says so, until `cloudguard unlock` hands
    it the key through the kernel keyring (here with the cache off: a one-time handover)."""
    from cloudguard import keycache, keys

    if keycache._ring(create=True) is None:
        pytest.skip("no kernel keyring here")
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    cg("init", str(folder), "--remote", local_remote)
    home = Path(os.environ["CLOUDGUARD_HOME"])
    monkeypatch.delenv("CLOUDGUARD_PASSPHRASE")
    keys.drop_cached_keys()
    segments = lambda: sorted((Path(local_remote) / "m").glob("*"))  # noqa: E731
    before = segments()
    with daemon(home, tmp_path / "daemon.log") as proc:
        got = cg_json("daemon", "status")["folders"][0]
        assert got["state"] == "locked" and "cloudguard unlock" in got["why"], got
        (folder / "b.txt").write_text("b")
        refused = cg_proc("daemon", "resume")
        assert refused.returncode == 2 and "locked" in refused.stderr, refused.stderr
        time.sleep(2)
        assert segments() == before and proc.poll() is None  # nothing pushed while locked
        assert b"waiting for `cloudguard unlock`" in (tmp_path / "daemon.log").read_bytes()
        monkeypatch.setenv("CLOUDGUARD_PASSPHRASE", PASSPHRASE)  # what the prompt would read
        got_unlock = cg_proc("unlock")
        assert got_unlock.returncode == 0 and "the daemon has them" in got_unlock.stdout
        wait_for("the push after unlock", lambda: len(segments()) > len(before))
        wait_for("the folder to be served", lambda: cg_json("daemon", "status")["folders"][0][
            "state"] in ("idle", "syncing"))
        assert cg_json("status", "--folder", str(folder))["to_push"] == []
    assert proc.returncode == 0


def test_pause_resume_and_a_guard_that_stops_only_its_folder(local_remote: str,
                                                               tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    for i in range(12):
        (a / f"f{i:02}.txt").write_text(f"file {i}")
    share(local_remote, a, b, tmp_path / "kit.json")
    home = Path(os.environ["CLOUDGUARD_HOME"])

    def state() -> str:
        return str(cg_json("daemon", "status")["folders"][0]["state"])

    with daemon(home, tmp_path / "daemon.log", a):
        wait_for("the first push", lambda: cg_json("daemon", "status")["folders"][0][
            "last_push"] is not None)
        assert cg_json("daemon", "pause", str(a))["done"] == "pause"
        wait_for("paused", lambda: state() == "paused")
        (a / "while-paused.txt").write_text("held back")
        time.sleep(1.5)  # several quiet periods: nothing may go up while paused
        cg("pull", "--folder", str(b))
        assert not (b / "while-paused.txt").exists()
        cg("daemon", "resume", str(a))
        wait_for("the held-back file", lambda: cg("pull", "--folder", str(b)) is not None
                 and (b / "while-paused.txt").exists())
        # a mass delete: the guard stops this folder, and only a confirmed resume goes on.
        # The watcher hands the deletes over in batches (here often 3, then 7): the guard
        # counts the daemon's own deletes of the last minutes, so the split does not slip by.
        # An early batch under the floor may already be gone (history keeps it); the last
        # one is held back.
        for i in range(10):
            (a / f"f{i:02}.txt").unlink()
        wait_for("the guard to stop the folder", lambda: state() == "stopped")
        got = cg_json("daemon", "status")["folders"][0]
        assert "delete" in got["why"] and "daemon resume" in got["why"], got
        cg("pull", "--folder", str(b))
        assert (b / "f09.txt").exists()  # the batch that crossed the line went nowhere
        cg("daemon", "resume", str(a), "--accept-deletes")
        wait_for("the confirmed deletes", lambda: cg("pull", "--folder", str(b)) is not None
                 and not any((b / f"f{i:02}.txt").exists() for i in range(10)))
        assert (b / "f10.txt").read_text() == "file 10"


def test_a_mass_rewrite_stops_only_its_folder_until_confirmed(local_remote: str,
                                                              tmp_path: Path) -> None:
    """The ransomware pattern: most files rewritten within minutes. The daemon stops the folder
    before the rewrites that cross the line go up; `resume --accept-changes` lets them go."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    for i in range(12):
        (a / f"f{i:02}.txt").write_text(f"file {i}")
    share(local_remote, a, b, tmp_path / "kit.json")
    home = Path(os.environ["CLOUDGUARD_HOME"])

    def folder() -> dict[str, object]:
        return dict(cg_json("daemon", "status")["folders"][0])

    with daemon(home, tmp_path / "daemon.log", a):
        wait_for("the first push", lambda: folder()["last_push"] is not None)
        (a / "new.txt").write_text("a new file is no rewrite")
        wait_for("the new file", lambda: cg("pull", "--folder", str(b)) is not None
                 and (b / "new.txt").exists())
        for i in range(10):
            (a / f"f{i:02}.txt").write_text(f"encrypted by ransomware {i}")
        wait_for("the guard to stop the folder", lambda: folder()["state"] == "stopped")
        why = str(folder()["why"])
        assert "rewrite" in why and "--accept-changes" in why, why
        cg("pull", "--folder", str(b))
        assert (b / "f09.txt").read_text() == "file 9"  # the batch that crossed the line
        cg("daemon", "resume", str(a), "--accept-changes")
        wait_for("the confirmed rewrites", lambda: cg("pull", "--folder", str(b)) is not None
                 and (b / "f09.txt").read_text() == "encrypted by ransomware 9")
        assert folder()["state"] != "stopped"


def test_a_folder_inside_another_sync_client_is_not_served(local_remote: str,
                                                           tmp_path: Path) -> None:
    """The advisories' rule, enforced unattended: a bound folder that another client's folder
    holds (here a fake Dropbox) is stopped with the client and the fix named; --allow-exposed
    serves it, with a warning in the log."""
    dropbox = tmp_path / "Dropbox"
    dropbox.mkdir()
    (dropbox / ".dropbox").write_text("")  # what Dropbox puts in the folder it syncs
    folder = dropbox / "secret"
    folder.mkdir()
    (folder / "plan.txt").write_text("plaintext that Dropbox would upload")
    cg("init", str(folder), "--remote", local_remote, "--allow-exposed")
    home = Path(os.environ["CLOUDGUARD_HOME"])
    with daemon(home, tmp_path / "daemon.log", folder):
        wait_for("the folder to stop", lambda: cg_json("daemon", "status")["folders"][0][
            "state"] == "stopped")
        why = cg_json("daemon", "status")["folders"][0]["why"]
        assert "Dropbox" in why and "--allow-exposed" in why, why
        assert cg_json("status", "--folder", str(folder))["to_push"] == ["plan.txt"]
    with daemon(home, tmp_path / "daemon2.log", folder, extra=("--allow-exposed",)):
        wait_for("the push", lambda: cg_json("status", "--folder", str(folder))[
            "to_push"] == [])
        assert b"--allow-exposed" in (tmp_path / "daemon2.log").read_bytes()


@contextmanager
def notification_server() -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """A private session bus (the real dbus-daemon) with a notification server on it that
    records every Notify call, as a desktop's would show it."""
    from jeepney import HeaderFields, MessageType, new_method_return
    from jeepney.bus_messages import message_bus
    from jeepney.io.blocking import open_dbus_connection

    bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1"],
                           stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert bus.stdout is not None
    address = bus.stdout.readline().decode().strip()
    got: list[tuple[Any, ...]] = []
    stop, ready = threading.Event(), threading.Event()

    def serve() -> None:
        with open_dbus_connection(bus=address) as conn:
            conn.send_and_get_reply(message_bus.RequestName("org.freedesktop.Notifications"))
            ready.set()
            while not stop.is_set():
                try:
                    msg = conn.receive(timeout=0.2)
                except TimeoutError:
                    continue
                if (msg.header.message_type == MessageType.method_call
                        and msg.header.fields.get(HeaderFields.member) == "Notify"):
                    got.append(msg.body)
                    conn.send(new_method_return(msg, "u", (len(got),)))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ready.wait(10), "the notification server did not start"
        yield address, got
    finally:
        stop.set()
        thread.join(timeout=5)
        bus.terminate()
        bus.wait(timeout=10)
        bus.stdout.close()


def test_a_stopped_folder_is_a_desktop_notification(local_remote: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder the daemon stops reaches the desktop over D-Bus, not only the log; without a
    session bus nothing is sent and nothing fails."""
    from cloudguard.daemon import desktop

    dropbox = tmp_path / "Dropbox"
    dropbox.mkdir()
    (dropbox / ".dropbox").write_text("")
    folder = dropbox / "secret"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote, "--allow-exposed")
    home = Path(os.environ["CLOUDGUARD_HOME"])
    with notification_server() as (address, got):
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", address)
        with daemon(home, tmp_path / "daemon.log", folder):
            wait_for("the notification", lambda: bool(got))
        app, _replaces, _icon, summary, body, _actions, hints, _timeout = got[0]
        assert app == "cloudguard" and str(folder) in summary and "Dropbox" in body
        assert hints["urgency"] == ("y", 2)
        assert desktop.notify("cloudguard: 2 conflict copies", "both kept")
        assert got[-1][3] == "cloudguard: 2 conflict copies"
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS")
    assert desktop.notify("nobody listens", "") is False


def test_the_key_is_rotated_on_schedule(local_remote: str, tmp_path: Path) -> None:
    """Past rotation_days the lowest-id device rotates through the engine, and logs it; the
    other device keeps working under the new key."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "doc.txt").write_text("v1")
    share(local_remote, a, b, tmp_path / "kit.json")
    home = Path(os.environ["CLOUDGUARD_HOME"])
    first = cg_json("status", "--folder", str(a))["epoch"]
    devices = sorted(m["id"] for m in cg_json("device", "list", "--folder", str(a))["members"]
                     if m.get("kind", "device") == "device")
    lowest = a if cg_json("status", "--folder", str(a))["device"] == devices[0] else b
    with daemon(home, tmp_path / "daemon.log", lowest, config="rotation_days = 0.00003\n"):
        wait_for("a rotation", lambda: cg_json("status", "--folder", str(lowest))["epoch"]
                 > first)
        assert b"rotated the key" in (tmp_path / "daemon.log").read_bytes()
    other = b if lowest is a else a
    (other / "after.txt").write_text("under the new key")
    cg("push", "--folder", str(other))
    cg("pull", "--folder", str(lowest))
    assert (lowest / "after.txt").read_text() == "under the new key"


def test_only_the_lowest_id_device_rotates_on_schedule(local_remote: str,
                                                       tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    share(local_remote, a, b, tmp_path / "kit.json")
    with Vault(str(a)) as va, Vault(str(b)) as vb:
        (age_a, mine_a), (age_b, mine_b) = va.key_schedule(), vb.key_schedule()
    assert mine_a != mine_b and 0 <= age_a < 1 and 0 <= age_b < 1


def test_the_rotation_check_opens_a_session_only_when_the_keys_changed(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon asks for the key's age every few minutes: one listing of keys/, and a
    session (a listing of the whole remote, the chain verified) only after the chain changed.
    The age still grows with the clock, and a rotation on another device resets it."""
    from cloudguard import api

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    share(local_remote, a, b, tmp_path / "kit.json")
    opened = []
    real = api.session

    def counted(*args: Any, **kwargs: Any) -> Any:
        opened.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "session", counted)
    with Vault(str(a)) as vault:
        age, mine = vault.key_schedule()
        assert len(opened) == 1 and 0 <= age < 1
        clock, later = time.time, time.time() + 86400
        monkeypatch.setattr(time, "time", lambda: later)  # a day later
        aged, still = vault.key_schedule()
        monkeypatch.setattr(time, "time", clock)
        assert len(opened) == 1 and still == mine and 0.99 < aged - age < 1.01
        cg("key", "rotate", "--folder", str(b))  # another device's rotation: keys/ changed
        fresh, _mine = vault.key_schedule()
        assert len(opened) == 2 and fresh < 0.01
        vault.key_schedule()
        assert len(opened) == 2


def test_a_bad_rotation_days_names_the_setting(tmp_path: Path) -> None:
    from cloudguard.daemon.config import load
    path = tmp_path / "config.toml"
    path.write_text("[daemon]\nrotation_days = 0\n")
    with pytest.raises(UsageError, match="daemon.rotation_days = 0 is not"):
        load(path)


def test_lock_stops_a_service_daemon_through_systemd(local_remote: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Under systemd (Restart=on-failure) a killed daemon would come back: lock asks systemd."""
    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    home = Path(os.environ["CLOUDGUARD_HOME"])
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "systemctl.calls"
    (fake / "systemctl").write_text(  # stands in for systemd: records, then stops the service
        f"#!/bin/sh\necho \"$@\" >> {calls}\n"
        f"for f in {home}/run/daemon-*.json; do\n"
        "  pid=$(sed 's/.*\"pid\": \\([0-9]*\\).*/\\1/' \"$f\"); kill -TERM \"$pid\"\ndone\n")
    (fake / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")  # what systemd sets for a service
    with daemon(home, tmp_path / "daemon.log", folder) as proc:
        monkeypatch.delenv("INVOCATION_ID")
        result = cg_json("lock")
        proc.wait(timeout=10)
        assert calls.read_text().split() == ["--user", "stop", "cloudguard.service"]
        assert result["stopped"] == [proc.pid] and result["problems"] == []


def test_config_show_prints_the_effective_settings_and_names_a_bad_one() -> None:
    home = Path(os.environ["CLOUDGUARD_HOME"])
    (home / "config.toml").write_text("[daemon]\npoll_seconds = 7\nrotation_days = 14\n")
    got = cg_json("config", "show")
    assert got["daemon"]["poll"] == 7.0 and got["daemon"]["rotation_days"] == 14.0
    assert got["daemon"]["quiet_closed"] == 0.3  # a default
    assert got["config_file"] == str(home / "config.toml")
    (home / "config.toml").write_text("[daemon]\npoll_seconds = \"often\"\n")
    bad = cg("config", "show", code=2)
    assert "daemon.poll_seconds = 'often'" in bad.output


def test_a_folder_section_overrides_the_daemon_section_for_that_folder(tmp_path: Path) -> None:
    """Issue 11: [folder."PATH"] holds any [daemon] setting for one folder; its ignore
    patterns add to [daemon]'s; every bad value names its section."""
    from cloudguard.daemon.config import load

    home = Path(os.environ["CLOUDGUARD_HOME"])
    work, other = tmp_path / "work", tmp_path / "other"
    path = home / "config.toml"
    path.write_text(f'[daemon]\npoll_seconds = 7\nignore = ["*.bak"]\n\n'
                    f'[folder."{work}"]\npoll_seconds = 60\nquiet_closed = 1.5\n'
                    f'ignore = ["*.iso"]\nrotation_days = 7\n')
    config = load()
    mine, rest = config.for_folder(str(work)), config.for_folder(str(other))
    assert (mine.intervals.poll, mine.timing.quiet_closed, mine.intervals.rotation_days) == (
        60.0, 1.5, 7.0)
    assert mine.ignore == ("*.bak", "*.iso") and mine.timing.max_wait == 30.0
    assert (rest.intervals.poll, rest.ignore) == (7.0, ("*.bak",))
    got = cg_json("config", "show")
    assert got["folders"][str(work.resolve())]["poll"] == 60.0
    for text, named in ((f'[folder."{work}"]\nquiet_open = -1\n', f'folder."{work}".quiet_open'),
                        ('[folder."relative/path"]\npoll_seconds = 1\n', "absolute path"),
                        ("[folders]\n", "unknown section [folders]"),
                        (f'[folder."{work}"]\ncolour = "blue"\n', "colour")):
        path.write_text(text)
        bad = cg("config", "show", code=2)
        assert named in bad.output, bad.output


def test_bandwidth_min_free_disk_and_log_level_per_folder(local_remote: str,
                                                          tmp_path: Path) -> None:
    """Issue 11's per-folder limits: the folder's rclone runs with its --bwlimit; below
    min_free_mb a remote change is not pulled (status says why) until there is room; the
    folder's logger has its own level. Bad values name their setting."""
    from cloudguard.daemon.config import load
    from cloudguard.daemon.worker import Limits

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "doc.txt").write_text("v1")
    share(local_remote, a, b, tmp_path / "kit.json")
    free = shutil.disk_usage(b).free // (1024 * 1024)
    with running(b, limits=Limits(bandwidth="4M", min_free_mb=free * 1000,
                                  log_level="warning")) as worker:
        worker.start()
        wait_for("the worker's vault", lambda: worker.vault is not None)
        rcd = worker.vault._transport._proc.pid
        argv = Path(f"/proc/{rcd}/cmdline").read_bytes().split(b"\0")
        assert argv[argv.index(b"--bwlimit") + 1] == b"4M"  # the real rclone, as started
        assert worker.log.getEffectiveLevel() == logging.WARNING
        (a / "doc.txt").write_text("v2")
        cg("push", "--folder", str(a))
        wait_for("the refusal", lambda: "min_free_mb" in worker.status.last_error)
        time.sleep(1.5)  # three polls
        assert (b / "doc.txt").read_text() == "v1"
        worker.limits = Limits()
        wait_for("the pull once there is room", lambda: (b / "doc.txt").read_text() == "v2")
        wait_for("the error cleared", lambda: not worker.status.last_error)
    home = Path(os.environ["CLOUDGUARD_HOME"])
    path = home / "config.toml"
    path.write_text(f'[daemon]\nbandwidth = "1M:off"\nmin_free_mb = 100\n\n'
                    f'[folder."{a}"]\nbandwidth = "off"\nlog_level = "DEBUG"\n')
    config = load()
    mine, rest = config.for_folder(str(a)).limits, config.for_folder(str(b)).limits
    assert (mine.bandwidth, mine.min_free_mb, mine.log_level) == (None, 100.0, "debug")
    assert (rest.bandwidth, rest.log_level) == ("1M:off", "info")
    assert cg_json("config", "show")["daemon"]["bandwidth"] == "1M:off"
    for text, named in (('[daemon]\nbandwidth = "fast"\n', "daemon.bandwidth = 'fast'"),
                        ('[daemon]\nbandwidth = "1M --dump"\n', "daemon.bandwidth"),
                        ("[daemon]\nmin_free_mb = -1\n", "daemon.min_free_mb = -1"),
                        (f'[folder."{a}"]\nlog_level = "loud"\n', "log_level = 'loud'")):
        path.write_text(text)
        bad = cg("config", "show", code=2)
        assert named in bad.output, bad.output


@pytest.mark.parametrize("log_paths", [False, True])
def test_the_log_names_files_only_with_log_paths(local_remote: str, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture,
                                                 log_paths: bool) -> None:
    """Issue 11: "paths are logged only with --log-paths". The remote's descriptor goes away
    under a folder the daemon serves: the folder stops, the log says so by kind only (the
    reason names the remote's path), `cloudguard status` has it in full; with --log-paths
    the log has it too."""
    folder = tmp_path / "secret-project"
    folder.mkdir()
    (folder / "doc.txt").write_text("v1")
    share(local_remote, folder, tmp_path / "other", tmp_path / "kit.json")
    caplog.set_level(logging.INFO, logger="cloudguard.daemon")
    descriptor = Path(local_remote) / "cloudguard.json"
    with running(folder, log_paths=log_paths) as worker:
        worker.start()
        wait_for("the worker's vault", lambda: worker.vault is not None)
        kept = descriptor.read_bytes()
        descriptor.unlink()
        try:
            (folder / "secret-name.txt").write_text("new")
            wait_for("the stop", lambda: worker.status.state == "stopped")
        finally:
            descriptor.write_bytes(kept)
        assert local_remote in worker.status.why  # status has it in full
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "stopped" in logged
        assert (local_remote in logged) == log_paths, logged
        assert "secret-project" not in logged or log_paths


def test_a_document_open_in_an_office_program_gets_a_remote_change_as_a_conflict_copy(
        local_remote: str, tmp_path: Path) -> None:
    """Issue 11: while LibreOffice's ``.~lock.NAME#`` (or Office's ``~$NAME``) is beside a
    document, a remote change to it lands as a conflict copy: the program's next save would
    overwrite it otherwise. Without the lock it lands in place."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "report.odt").write_text("v1")
    (a / "budget.xlsx").write_text("v1")
    share(local_remote, a, b, tmp_path / "kit.json")
    (b / "report.odt").write_text("v2 from b")
    (b / "budget.xlsx").write_text("v2 from b")
    cg("push", "--folder", str(b))
    (a / ".~lock.report.odt#").write_text(",me,host,01.01.2026 10:00,me;")
    (a / "~$budget.xlsx").write_text("owner")
    got = cg_json("pull", "--folder", str(a))
    assert (a / "report.odt").read_text() == "v1" and (a / "budget.xlsx").read_text() == "v1"
    copies = sorted(p.name for p in a.iterdir() if "(conflict" in p.name)
    assert len(copies) == 2 and len(got["conflicts"]) == 2, copies
    assert {(a / c).read_text() for c in copies} == {"v2 from b"}
    (b / "notes.txt").write_text("unlocked")  # a document without a lock lands in place
    cg("push", "--folder", str(b))
    cg("pull", "--folder", str(a))
    assert (a / "notes.txt").read_text() == "unlocked"


def test_rsync_and_an_office_save_pattern_under_the_daemon(local_remote: str,
                                                           tmp_path: Path) -> None:
    """The save patterns issue 11 names that the other test does not play: rsync of a tree
    (temp names, then renames) and LibreOffice's save (lock file, temp file, rename over the
    document, lock removed). The other device gets the documents, never a lock or temp."""
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "report.odt").write_text("draft 1")
    share(local_remote, a, b, tmp_path / "kit.json")
    tree_src = tmp_path / "tree"
    (tree_src / "sub").mkdir(parents=True)
    for i in range(30):
        (tree_src / "sub" / f"r{i}.bin").write_bytes(os.urandom(2000 + i))
    home = Path(os.environ["CLOUDGUARD_HOME"])
    with daemon(home, tmp_path / "daemon.log", a):
        subprocess.run(["rsync", "-a", f"{tree_src}/", str(a / "synced")], check=True)
        lock = a / ".~lock.report.odt#"
        lock.write_text(",me,host,01.01.2026 10:00,me;")
        temp = a / "lu98765abcd.tmp"
        temp.write_text("draft 2, saved by the office program")
        os.replace(temp, a / "report.odt")
        time.sleep(0.5)
        lock.unlink()
        want = {os.path.relpath(p, a): p.read_bytes() for p in a.rglob("*")
                if p.is_file() and ".cloudguard" not in p.parts}

        def arrived() -> bool:
            cg("pull", "--folder", str(b))
            got = {os.path.relpath(p, b): p.read_bytes() for p in b.rglob("*")
                   if p.is_file() and ".cloudguard" not in p.parts}
            return got == want

        wait_for("rsync's tree and the office save on device b", arrived, timeout=120)
        assert (b / "report.odt").read_text() == "draft 2, saved by the office program"


def test_the_file_system_type_comes_from_mountinfo() -> None:
    """The longest mount point above the folder wins; mountinfo escapes spaces as \\040."""
    from cloudguard.daemon.watching import fs_type, polled

    info = ("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
            "40 22 0:50 / /home/u/My\\040Share rw - cifs //nas/share rw\n"
            "41 22 0:51 / /home/u/My rw - nfs4 nas:/x rw\n"
            "42 22 0:52 / /mnt/fat rw,nosuid - fuse.fusefat /dev/fuse rw\n")
    assert fs_type(Path("/home/u/My Share/docs"), info) == "cifs"
    assert fs_type(Path("/home/u/My/docs"), info) == "nfs4"
    assert fs_type(Path("/home/u/Mydocs"), info) == "ext4"  # a prefix of a name is not above
    assert fs_type(Path("/mnt/fat"), info) == "fuse.fusefat"
    assert [polled(k) for k in ("cifs", "nfs4", "fuse.fusefat", "ext4", "tmpfs")] == [
        True, True, True, False, False]
    assert fs_type(Path("/anything"), "garbage line\n") == ""


@pytest.mark.skipif(not shutil.which("fusefat") or not os.path.exists("/dev/fuse"),
                    reason="needs /dev/fuse and fusefat (Debian fusefat, dosfstools)")
def test_a_folder_on_fuse_is_polled_and_its_saves_go_up(local_remote: str,
                                                       tmp_path: Path) -> None:
    """inotify sees no change another machine (or a FUSE server) makes: on NFS, SMB and FUSE
    folders the worker polls instead, and a save still arrives."""
    from test_casefold_vfat import vfat_folder

    with vfat_folder(tmp_path / "fat") as folder:
        cg("init", str(folder), "--remote", local_remote)
        with running(folder) as worker:
            worker.start()
            wait_for("the start-up push", lambda: worker.status.last_push is not None)
            assert worker.status.extra["watch"] == "polling"
            (folder / "polled.txt").write_text("seen by a poll")
            wait_for("the polled save's push", lambda: cg_json(
                "status", "--folder", str(folder))["to_push"] == [], 60)


def test_a_folder_on_a_local_disk_is_watched_by_inotify(local_remote: str,
                                                       tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    with running(folder) as worker:
        worker.start()
        wait_for("the start-up push", lambda: worker.status.last_push is not None)
        assert worker.status.extra["watch"] == "inotify"


def test_a_suspend_or_a_clock_step_is_noticed_once() -> None:
    from cloudguard.daemon.schedule import Jumps

    clocks = {"boot": 100.0, "mono": 50.0, "wall": 1_000_000.0}
    jumps = Jumps(boot=lambda: clocks["boot"], mono=lambda: clocks["mono"],
                  wall=lambda: clocks["wall"])
    assert jumps.check() is None  # the first look sets the base

    def advance(mono: float, boot: float, wall: float) -> str | None:
        clocks["mono"] += mono
        clocks["boot"] += boot
        clocks["wall"] += wall
        return jumps.check()

    assert advance(10, 10, 10) is None  # time passing
    assert advance(1, 3601, 3601) == "resume"  # an hour asleep: boot ran, monotonic did not
    assert advance(1, 1, 1) is None  # said once
    assert advance(1, 1, -7200) == "clock step"  # the wall clock set back two hours
    assert advance(1, 1, 30) is None  # an NTP slew within the limit is no step
    assert advance(1, 1, 1) is None


def test_after_a_resume_the_worker_rescans_what_it_missed(local_remote: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """While the machine slept no event was read (injected: every hint is lost); the resume
    (injected at the clock boundary) makes the worker rescan, and the save goes up."""
    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    with running(folder) as worker:
        monkeypatch.setattr(worker, "hint", lambda rel, closed: None)  # events lost
        woke = threading.Event()

        def check() -> str | None:  # "resume" once, after woke is set
            if not woke.is_set():
                return None
            woke.clear()
            return "resume"

        monkeypatch.setattr(worker.jumps, "check", check)
        worker.start()
        wait_for("the start-up push", lambda: worker.status.last_push is not None)
        (folder / "slept.txt").write_text("written while the events were lost")
        time.sleep(1.0)
        assert cg_json("status", "--folder", str(folder))["to_push"] == ["slept.txt"]
        woke.set()
        worker._wake.set()
        wait_for("the resume's push", lambda: cg_json("status", "--folder", str(folder))[
            "to_push"] == [])



def _userns_watch_limit() -> bool:
    """Whether this machine lets a user namespace set its own inotify watch limit."""
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-Ur", "sh", "-c",
                            "echo 5 > /proc/sys/user/max_inotify_watches"],
                           capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _userns_watch_limit(),
                    reason="needs unshare and a user namespace with its own inotify limit")
def test_a_watch_limit_keeps_the_watches_held_and_rescans_the_rest(local_remote: str,
                                                                  tmp_path: Path) -> None:
    """ENOSPC for real: the daemon runs in a user namespace allowed 6 inotify watches, over a
    folder of 16 folders. watchdog 7.1.0 drops the refused watches without a word, and the
    worker counts what the kernel holds and says "watching N of 17 folders" (N <= 6); 7.1.1
    raises, and the worker says it cannot watch and rescans. Either way a save deep in an
    unwatched folder still goes up, by a rescan."""
    folder = tmp_path / "docs"
    for i in range(16):
        (folder / f"sub{i:02d}").mkdir(parents=True)
    cg("init", str(folder), "--remote", local_remote)
    log = tmp_path / "daemon.log"
    limited = ("unshare", "-Ur", "sh", "-c",
               'echo 6 > /proc/sys/user/max_inotify_watches && exec "$@"', "sh")
    with daemon(Path(os.environ["CLOUDGUARD_HOME"]), log, folder, prefix=limited,
                config="rescan_seconds = 2\n"):
        # watchdog 7.1.0 drops refused watches silently (the worker counts what is held);
        # 7.1.1 raises ENOSPC for the whole recursive watch (the worker rescans instead)
        wait_for("the coverage warning", lambda: re.search(
            rb"watching ([0-6]) of 17 folders|cannot watch it \(inotify watch limit reached\)",
            log.read_bytes()) is not None, 60, log)
        deep = sorted(folder.glob("sub*"))[-1] / "deep.txt"
        deep.write_text("found by a rescan")
        wait_for("the rescan's push", lambda: cg_json("status", "--folder", str(folder))[
            "to_push"] == [], 60)
    assert "fs.inotify.max_user_watches" in log.read_text()


def test_a_poll_tells_this_vaults_own_segments_from_another_devices(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll after this Vault's own push (its delta, and a compaction's snapshot and
    deletes) finds nothing new; after another device's push it does, also when a push of
    ours took that device's segment in and compacted it away before the poll."""
    from cloudguard.ops import maintain

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    share(local_remote, a, b, tmp_path / "kit.json")
    every = maintain.COMPACT_AFTER
    with Vault(str(a)) as vault:
        assert vault.poll()  # the first: everything is news
        monkeypatch.setattr(maintain, "COMPACT_AFTER", 1)  # a's pushes compact (and delete)
        for i in range(2):
            (a / f"mine-{i}.txt").write_text("ours")
            vault.push([f"mine-{i}.txt"])
            assert not vault.poll()
        monkeypatch.setattr(maintain, "COMPACT_AFTER", every)  # b's (in-process) do not
        (b / "theirs.txt").write_text("b's")
        cg("push", "--folder", str(b))
        assert vault.poll()
        assert not vault.poll()
        (b / "again.txt").write_text("b's, compacted away by a's push")
        cg("push", "--folder", str(b))
        theirs = set(vault._listing()) - set(vault._seen or {})
        monkeypatch.setattr(maintain, "COMPACT_AFTER", 1)
        (a / "mine-2.txt").write_text("ours")
        vault.push(["mine-2.txt"])
        assert theirs and not theirs & set(vault._listing())  # the snapshot covered b's
        assert vault.poll()
        vault.pull()
    assert (a / "again.txt").read_text() == "b's, compacted away by a's push"


def test_a_push_is_not_pulled_back_and_another_devices_push_arrives(
        local_remote: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each push of the daemon's used to bring one needless pull, when the next poll saw the
    push's own segment; now none does. A push from another device still arrives at the next
    poll, by one pull."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    share(local_remote, a, b, tmp_path / "kit.json")
    calls = {"poll": 0, "pull": 0}
    poll, pull = Vault.poll, Vault.pull

    def counted_poll(vault: Vault) -> bool:
        calls["poll"] += 1
        return poll(vault)

    def counted_pull(vault: Vault, paths: list[str] | None = None) -> Any:
        calls["pull"] += 1
        return pull(vault, paths)

    monkeypatch.setattr(Vault, "poll", counted_poll)
    monkeypatch.setattr(Vault, "pull", counted_pull)
    with running(a) as worker:  # polls every 0.5 s
        worker.start()
        wait_for("the start-up pull", lambda: worker.status.last_pull is not None)
        pulls = calls["pull"]
        for i in range(3):
            saved = time.time()
            (a / f"save-{i}.txt").write_text(f"save {i}")
            wait_for(f"save {i}'s push", lambda t=saved: (worker.status.last_push or 0) > t)
            polled = calls["poll"]
            wait_for("two polls after it", lambda n=polled: calls["poll"] >= n + 2)
        assert calls["pull"] == pulls
        (b / "theirs.txt").write_text("from b")
        cg("push", "--folder", str(b))
        wait_for("b's push on a", lambda: (a / "theirs.txt").exists(), timeout=10)
        assert calls["pull"] == pulls + 1
    assert cg_json("status", "--folder", str(a))["to_push"] == []
