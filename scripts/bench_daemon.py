#!/usr/bin/env python3
"""Benchmark the workstation daemon (issue 11): save latency, cross-device delay, first sync,
idle CPU and memory. Targets, not tests; the figures go to docs/benchmarks.md.

What it measures, on a vault of ``--files`` small files in ``--folders`` folders:

* **save latency** - ``--saves`` saves paced one every ``--pace`` seconds (so queueing is not
  measured): from the file's close to the moment its manifest segment (the commit point,
  written after the object) appears on the remote; p50, p95 and max, for a local remote and
  for ``rclone serve webdav`` on 127.0.0.1 (``--remotes``). Default settings otherwise
  (quiet period, compactions);
* **cross-device** - a second device runs the daemon too; a save on A is on B's disk after at
  most the poll interval plus 2 s (``--cross`` saves);
* **first sync** - the daemon's first sync of a fresh ``--first-files`` tree against
  ``cloudguard push`` of the same tree, each to the commit of the tree (the daemon's start-up
  pull and key-age check, which a push does not do, shown beside); on a shared machine run
  it under ``unshare -U -r``: another user session's ``cloudguard lock`` empties this user's
  kernel keyring, and the scrypt that follows (0.7 s) lands in whichever side comes next;
* **idle CPU** - the daemon and its rclone over ``--idle`` seconds of nothing to do (polls
  and rescans included), in % of one core; ``--poll`` and ``--rescan`` set their intervals
  (default: the daemon's, 15 s and 600 s);
* **memory** - the daemon's RSS while it watches the vault's folder: steady (median of the
  samples after start-up) and peak (VmHWM).

Full targets: 100,000 files in 1,000 folders, 200 saves, 30 min idle (about 1.5 hours).
``--quick`` is a smoke run of a few minutes; ``--only first-sync`` measures the first sync
alone (run it a few times: the machine is shared). Processes are started from argument lists
only.

    python scripts/bench_daemon.py --out /tmp/daemon.md
    python scripts/bench_daemon.py --files 10000 --folders 100 --saves 60 --idle 300
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the rclone, server and tree helpers of scripts/bench.py)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
PASSPHRASE = "daemon benchmark passphrase, not a secret"


class Device:
    """One device: its own CLOUDGUARD_HOME and folder, cloudguard from this checkout."""

    def __init__(self, work: Path, name: str, env: dict[str, str]) -> None:
        self.home = work / f"home-{name}"
        self.home.mkdir(mode=0o700)
        self.folder = work / name
        self.env = {**env, "CLOUDGUARD_HOME": str(self.home),
                    "CLOUDGUARD_PASSPHRASE": PASSPHRASE, "CLOUDGUARD_KEYSTORE": "file",
                    "CLOUDGUARD_KIT_PASSPHRASE": PASSPHRASE,
                    "PYTHONPATH": str(ROOT)}
        self.daemon: subprocess.Popen[bytes] | None = None

    def cg(self, *args: str) -> dict[str, Any]:
        proc = subprocess.run([sys.executable, "-m", "cloudguard", *args, "--json"],
                              env=self.env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise bench.BenchError(f"cloudguard {' '.join(args)}: {proc.stderr.strip()[-500:]}")
        out = proc.stdout.strip()
        return json.loads(out) if out else {}

    def config(self, poll: float | None, rescan: float | None) -> None:
        lines = ["[daemon]"]
        if poll is not None:
            lines.append(f"poll_seconds = {poll}")
        if rescan is not None:
            lines.append(f"rescan_seconds = {rescan}")
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")

    @contextlib.contextmanager
    def running(self) -> Iterator[subprocess.Popen[bytes]]:
        log = (self.home / "daemon.out").open("wb")
        self.daemon = subprocess.Popen([sys.executable, "-m", "cloudguard", "daemon", "run"],
                                       env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield self.daemon
        finally:
            if self.daemon.poll() is None:
                self.daemon.send_signal(signal.SIGTERM)
                try:
                    self.daemon.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(self.daemon.pid, signal.SIGKILL)
                    self.daemon.wait()
            log.close()

    def status(self) -> dict[str, Any]:
        return self.cg("daemon", "status")

    def query(self) -> dict[str, Any]:
        """The daemon's state over its socket, in this process: a status subprocess per look
        would cost more CPU than the daemon under test."""
        from cloudguard.daemon import control  # this checkout's, as the daemon runs it

        old = os.environ.get("CLOUDGUARD_HOME")
        os.environ["CLOUDGUARD_HOME"] = str(self.home)
        try:
            return control.query() or {}
        finally:
            if old is None:
                del os.environ["CLOUDGUARD_HOME"]
            else:
                os.environ["CLOUDGUARD_HOME"] = old


def wait_until(what: str, check: Any, timeout: float, step: float = 0.02) -> float:
    """Seconds until ``check()`` holds (raises after ``timeout``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise bench.BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - start


def segments(remote_dir: Path) -> set[str]:
    try:
        return {n for n in os.listdir(remote_dir / "m") if n.endswith((".d", ".s"))}
    except FileNotFoundError:
        return set()


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants (its rclone rcd), from /proc."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        todo += [int(c) for c in children]
    return total


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of the daemon's Python, MiB."""
    got = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            got[key] = int(value.split()[0]) / 1024
    return got.get("VmRSS", 0.0), got.get("VmHWM", 0.0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def make_pair(work: Path, env: dict[str, str], remote: str, remote_dir: Path, files: int,
              folders: int) -> tuple[Device, Device]:
    a, b = Device(work, "a", env), Device(work, "b", env)
    a.folder.mkdir()
    bench.write_tree(a.folder, files, folders, 512)
    a.cg("init", str(a.folder), "--remote", remote, "--name", "a")
    a.cg("push", "--folder", str(a.folder))
    kit = work / "kit.json"
    a.cg("key", "export", str(kit), "--folder", str(a.folder), "--choose-passphrase")
    b.cg("clone", remote, str(b.folder), "--key-file", str(kit), "--name", "b")
    return a, b


def latency(a: Device, remote_dir: Path, saves: int, pace: float,
            samples: list[tuple[float, float]]) -> list[float]:
    assert a.daemon is not None
    out: list[float] = []
    (a.folder / "bench").mkdir(exist_ok=True)
    for i in range(saves):
        before = segments(remote_dir)
        start = time.monotonic()
        with open(a.folder / "bench" / f"save-{i % 20}.txt", "w") as fh:
            fh.write(f"save {i} at {time.time()}\n")
        out.append(wait_until(f"save {i} on the remote",  # from the close on
                              lambda seen=before: bool(segments(remote_dir) - seen), 120))
        samples.append(rss_mib(a.daemon.pid))
        time.sleep(max(0.0, start + pace - time.monotonic()))
    return out


def run(args: argparse.Namespace) -> str:
    rclone = bench.find_rclone()
    env = bench.base_env(rclone)
    lines = ["## Daemon (issue 11): scripts/bench_daemon.py", "",
             f"{args.files:,} files in {args.folders:,} folders; {args.saves} saves paced "
             f"{args.pace:g} s apart; idle {args.idle:g} s; {time.strftime('%Y-%m-%d %H:%M')}",
             "", "| measure | figure | target |", "|---|---:|---|"]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        for kind in ([] if args.only == "first-sync" else args.remotes.split(",")):
            where = work / kind
            where.mkdir()
            with contextlib.ExitStack() as stack:
                if kind == "local":
                    remote_dir = where / "remote"
                    remote = str(remote_dir)
                else:
                    served = where / "served"
                    remote = stack.enter_context(bench.webdav_server(
                        rclone, env, served, where / "scratch", kind=kind))
                    remote_dir = served / "data"
                a, b = make_pair(where, env, remote, remote_dir, args.files, args.folders)
                a.config(args.poll, args.rescan)
                b.config(args.poll, args.rescan)
                samples: list[tuple[float, float]] = []
                with a.running() as proc:
                    wait_until("the daemon to be idle", lambda dev=a: any(
                        f["state"] == "idle" for f in dev.status().get("folders", [])), 600, 0.5)
                    got = latency(a, remote_dir, args.saves, args.pace, samples)
                    p50, p95 = percentile(got, 0.5), percentile(got, 0.95)
                    target = ("p50 <= 1.0 s, p95 <= 2.0 s, max <= 5 s" if kind == "local"
                              else "p50 <= 1.5 s, p95 <= 3 s")
                    lines.append(f"| save to segment, {kind} | p50 {p50:.2f} s, p95 {p95:.2f} s, "
                                 f"max {max(got):.2f} s | {target} |")
                    if kind == args.remotes.split(",")[0]:
                        if args.cross:
                            lines.append(cross_device(a, b, args))
                        cpu0, t0 = tree_cpu(proc.pid), time.monotonic()
                        time.sleep(args.idle)
                        idle = (tree_cpu(proc.pid) - cpu0) / (time.monotonic() - t0) * 100
                        lines.append(f"| idle CPU (daemon + rclone) over {args.idle:g} s | "
                                     f"{idle:.2f} % of one core | < 0.5 % |")
                        steady = statistics.median(r for r, _h in samples[len(samples) // 4:])
                        peak = rss_mib(proc.pid)[1]
                        lines.append(f"| daemon RSS watching {args.files:,} files | steady "
                                     f"{steady:.0f} MiB, peak {peak:.0f} MiB | steady <= 150 "
                                     "MiB, peak <= 250 MiB |")
        lines.append(first_sync(work, env, args))
    return "\n".join(lines) + "\n"


def cross_device(a: Device, b: Device, args: argparse.Namespace) -> str:
    poll = args.poll if args.poll is not None else 15.0
    delays: list[float] = []
    with b.running():
        wait_until("B's daemon to be idle", lambda: any(
            f["state"] == "idle" for f in b.status().get("folders", [])), 600, 0.5)
        for i in range(args.cross):
            path = f"cross-{i}.txt"
            (a.folder / path).write_text(f"cross {i}")
            delays.append(wait_until(f"{path} on B", lambda p=path: (b.folder / p).exists(),
                                     poll + 120, 0.05))
    return (f"| a save on A on B's disk (poll {poll:g} s) | max {max(delays):.2f} s, p50 "
            f"{percentile(delays, 0.5):.2f} s | <= poll + 2 s = {poll + 2:g} s |")


def first_sync(work: Path, env: dict[str, str], args: argparse.Namespace) -> str:
    """The daemon's first sync of a fresh tree against `cloudguard push` of the same.

    The push's figure ends when the command returns: the tree is committed. The daemon's
    ends at the same point, the commit of its last push before it goes idle (its own
    ``last_push`` stamp, so the 50 ms between looks adds nothing); what it does after that
    and before it says idle (the key-age check, and the start-up pull that fetches what
    other devices pushed while it was stopped: work a push does not do) is shown beside."""
    times: dict[str, float] = {}
    for how in ("push", "daemon"):
        where = work / f"first-{how}"
        where.mkdir()
        dev = Device(where, "a", env)
        dev.folder.mkdir()
        dev.cg("init", str(dev.folder), "--remote", str(where / "remote"), "--name", "a")
        bench.write_tree(dev.folder, args.first_files, max(1, args.first_files // 100), 512)
        start, wall = time.monotonic(), time.time()
        if how == "push":
            dev.cg("push", "--folder", str(dev.folder))
            times[how] = time.monotonic() - start
        else:
            done: list[dict[str, Any]] = []

            def synced(d: Device = dev, done: list[dict[str, Any]] = done) -> bool:
                done[:] = [f for f in d.query().get("folders", [])
                           if f.get("last_push") and f["state"] == "idle" and not f.get("queue")]
                return bool(done)

            with dev.running():  # the daemon's own state, over its socket: cheap to ask
                wait_until("the first sync", synced, 3600, 0.05)
                times["idle"] = time.monotonic() - start  # not the daemon's stop
                times[how] = done[0]["last_push"] - wall
        if dev.cg("status", "--folder", str(dev.folder)).get("to_push"):  # not timed
            raise bench.BenchError(f"first sync ({how}) left files to push")
    return (f"| first sync of {args.first_files:,} files, to the commit | daemon "
            f"{times['daemon']:.2f} s (idle at {times['idle']:.2f} s), push "
            f"{times['push']:.2f} s | daemon <= push |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--folders", type=int, default=1_000)
    parser.add_argument("--saves", type=int, default=200)
    parser.add_argument("--pace", type=float, default=2.0)
    parser.add_argument("--cross", type=int, default=10, help="cross-device saves (0: none)")
    parser.add_argument("--idle", type=float, default=1800.0, help="seconds of idle CPU")
    parser.add_argument("--poll", type=float, default=None, help="poll_seconds (default 15)")
    parser.add_argument("--rescan", type=float, default=None, help="rescan_seconds (600)")
    parser.add_argument("--first-files", type=int, default=10_000)
    parser.add_argument("--remotes", default="local,webdav")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None, help="write the table here (default: stdout)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few minutes")
    parser.add_argument("--only", choices=("first-sync",), default=None,
                        help="measure only this (first-sync: --first-files, under a minute)")
    args = parser.parse_args(argv)
    if args.quick:
        args.files, args.folders, args.saves, args.pace = 300, 10, 5, 1.0
        args.cross, args.idle, args.first_files, args.poll = 2, 5.0, 200, 2.0
    try:
        report = run(args)
    except bench.BenchError as exc:
        print(f"bench_daemon: {exc}", file=sys.stderr)
        return 1
    if args.out:
        Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
