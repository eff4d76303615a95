#!/usr/bin/env python3
"""Crash-consistency campaign: SIGKILL cloudguard operations at random moments, then check.

Each round mutates the plaintext folder of device A (edits, appends, new and deleted small
files, files over 4 MiB, symlinks, whole sub-folders), then runs one operation as a subprocess
and kills it with SIGKILL after a random delay between 0 and that operation's typical duration
(measured at start, then tracked):

* ``push``      - ``cloudguard push`` on A;
* ``pull``      - ``cloudguard pull`` on device B (A pushed the mutation first);
* ``rotate``    - ``cloudguard key rotate`` on A;
* ``reencrypt`` - ``cloudguard key rotate --reencrypt`` on A;
* ``restore``   - ``cloudguard restore --before T --force`` on A, where T is the moment before
  the round mutated and pushed A's folder: every path A had then gets its content back, paths
  made later stay; A then pushes, and device B must get the restored tree;
* ``daemon``    - ``cloudguard daemon run`` on A, which pushes the mutation by itself; it is
  always killed (python or group: its rclone rcd lives as long as it does), then started
  again until ``status`` shows nothing left to push, and stopped with SIGTERM (exit 0).

How it kills (chosen at random per round):

* ``python`` - SIGKILL the cloudguard process only; its rclone children see EOF on their pipes
  and finish (as after an OOM kill). The campaign waits for them before going on;
* ``group``  - SIGKILL the whole process group at once (like a power cut for the remote side);
* ``rclone`` - SIGKILL one rclone child at random; cloudguard must fail cleanly.

Every ``--mass-delete-every`` push rounds (the first one included), the round deletes just
over half of the files first: a plain ``push`` must then refuse (exit 1, a JSON refusal) and
leave the remote as it was (device B pulls and must still have every file); the killed push
and its completion then run with ``--allow-mass-delete``.

After each kill the operation is re-run to completion: it must exit 0, possibly after one retry
(a second failure is a bug). Then the invariants:

1. ``verify --read-data`` on A passes;
2. device B pulls and its tree equals the expected tree (A's tree before the operation: every
   file's latest content, compared byte for byte); every ``--clone-every`` rounds a fresh
   device clones the vault with the recovery kit and must get the same tree;
3. A's own tree is unchanged by the operation;
4. no temp file remains in any plaintext folder (``.cloudguard/staging`` is empty, and no
   ``.cg-*.tmp`` of older versions appears);
5. no plaintext (every test file carries a marker string) appears in any file under the
   devices' ``CLOUDGUARD_HOME``, the remote folder or the spool (``TMPDIR`` of every
   cloudguard process); at the end, files created in the system temp folder are checked too;
6. where cloudguard has an audit log, ``cloudguard log --verify`` passes on A and B.

Non-fatal observations are reported as well: first completion attempts that failed, exit codes
of runs whose rclone child was killed, objects left unreferenced on the remote, and (with
``--probe-window``) whether device B can pull between a kill and A's re-run.

cloudguard runs from a copy of the package taken at start (``--live-code`` runs the working
tree as it changes); ``--lanes N`` plays N independent vaults side by side.

Usage::

    python scripts/crash_campaign.py                      # 200 kills, all operations
    python scripts/crash_campaign.py --kills 40 --ops push,pull --seed 7 --workdir /var/tmp/c
    python scripts/crash_campaign.py --lanes 2 --ops rotate --small-files 900 --probe-window

Each round runs the operation with the fewest kills so far, so kills spread evenly. On a
failure it prints the seed and round (``--seed S --kills R`` replays the same folder mutations
and random choices; kill timing is real time, so the exact kill point may differ), keeps the
work folder, and carries on with a fresh vault (``--stop-on-failure`` stops).
Processes are started from argument lists only, never through a shell.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib.util
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

OPS = ("push", "pull", "rotate", "reencrypt", "restore", "daemon")
DAEMON_MODES = ("python", "group")  # its rclone rcd is long-lived: "rclone" has no end state
# the daemon's settings in a campaign: short quiet periods, so a round is seconds long
DAEMON_CONFIG = ("[daemon]\npoll_seconds = 0.5\nquiet_closed = 0.2\nquiet_open = 1.0\n"
                 "min_interval = 0.3\n")
KILL_MODES = ("python", "group", "rclone")
MIB = 1024 * 1024
PACK_THRESHOLD = 4 * MIB  # cloudguard.sync.PACK_THRESHOLD: files below it share packs
MARKER = b"CGCRASH-PLAINTEXT-MARKER:"  # each campaign appends its own random token
TEMP_GLOB = ".cg-*.tmp"  # temp files of cloudguard before the staging folder
OWN = ".cloudguard"  # the folder's marker and staging folder: cloudguard's, never synced
STAGING = Path(OWN) / "staging"
MASS_DELETE_FLOOR = 10  # cloudguard.sync.MASS_DELETE_FLOOR: fewer deletions never ask
PASSPHRASE = "crash campaign passphrase, not a secret"  # must pass the strength check
EXIT_NAMES = {0: "ok", 1: "error", 2: "usage", 3: "integrity", -9: "SIGKILL"}


# --- configuration and results ------------------------------------------------------------


@dataclass
class Config:
    kills: int = 200
    seed: int = 1
    ops: tuple[str, ...] = OPS
    workdir: Path | None = None
    small_files: int = 120  # how many small files the folder holds, roughly
    large_files: int = 3  # files over 4 MiB
    clone_every: int = 5  # a fresh device clones every N rounds (and in the last round)
    mutate_before: tuple[str, ...] = OPS  # rounds of these operations mutate the folder first
    lean_calibration: bool = False  # measure only the rotations; see Campaign.calibrate
    final_gc_check: bool = True  # a last push and verify: no unreferenced objects remain
    snapshot_code: bool = False  # run a copy of cloudguard taken at start (others edit it)
    check_audit_log: bool = True  # ``cloudguard log --verify`` on both devices, if it exists
    audit_every: int = 1  # ... every N rounds (and in the last round)
    modes: tuple[str, ...] = KILL_MODES
    timeout: float = 600.0  # per cloudguard command
    keep: bool = False  # keep the work folder even when everything passed
    stop_on_failure: bool = False
    quiet: bool = False
    lanes: int = 1  # independent vaults played side by side (one thread each)
    probe_window: bool = False  # B pulls right after each kill, before A's re-run (reported)
    mass_delete_every: int = 10  # every N push rounds (the first included) delete over half
    backend: str = "local"  # "local" (a folder) or "sftp" (rclone serve sftp on 127.0.0.1)
    stream_files: int = 0  # files over the streaming threshold (32 MiB): early streams


@dataclass
class Failure:
    round: int
    op: str
    mode: str
    delay: float
    what: str
    detail: str
    vault: Path

    def reproduction(self, seed: int, ops: Sequence[str], lanes: int = 1) -> str:
        extra = f" --lanes {lanes}" if lanes > 1 else ""
        return (f"seed {seed}, round {self.round} (op {self.op}, kill mode {self.mode}, delay "
                f"{self.delay:.3f} s): python scripts/crash_campaign.py --seed {seed} --ops "
                f"{','.join(ops)} --kills {self.round}{extra}; state kept in {self.vault}")


@dataclass
class Report:
    seed: int
    ops: tuple[str, ...]
    lanes: int = 1
    rounds: int = 0
    kills: dict[str, Counter[str]] = field(default_factory=dict)  # op -> mode -> count
    missed: Counter[str] = field(default_factory=Counter)  # op finished before the kill
    killed_exit: dict[str, Counter[int]] = field(default_factory=dict)  # op -> exit codes
    retried: list[str] = field(default_factory=list)  # first completion attempt failed
    observations: list[str] = field(default_factory=list)
    garbage: dict[str, list[int]] = field(default_factory=dict)  # op -> unreferenced objects
    probes: dict[str, Counter[int]] = field(default_factory=dict)  # op -> exit codes
    mass_refused: int = 0  # mass deletes the guard refused, as it must
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    workdir: Path | None = None

    @property
    def total_kills(self) -> int:
        return sum(sum(c.values()) for c in self.kills.values())

    def render(self) -> str:
        lanes = f", {self.lanes} lanes" if self.lanes > 1 else ""
        lines = [f"crash campaign: seed {self.seed}{lanes}, {self.rounds} rounds, "
                 f"{self.total_kills} kills in {self.seconds:.0f} s (work folder {self.workdir})"]
        for op in self.ops:
            by_mode = self.kills.get(op, Counter())
            modes = ", ".join(f"{m} {by_mode[m]}" for m in KILL_MODES if by_mode[m])
            codes = self.killed_exit.get(op, Counter())
            exits = ", ".join(f"{EXIT_NAMES.get(c, c)} {n}" for c, n in sorted(codes.items()))
            lines.append(f"  {op:<9} kills {sum(by_mode.values()):>4} ({modes or '-'}); "
                         f"finished before the kill {self.missed[op]}; killed runs exited: "
                         f"{exits or '-'}")
        if self.mass_refused:
            lines.append(f"  mass deletes refused without --allow-mass-delete: "
                         f"{self.mass_refused}")
        if self.retried:
            lines.append(f"  completion needed a retry {len(self.retried)} times:")
            lines += [f"    {r}" for r in self.retried[:20]]
        for op, codes in self.probes.items():
            exits = ", ".join(f"{EXIT_NAMES.get(c, c)} {n}" for c, n in sorted(codes.items()))
            lines.append(f"  device b pulling in the window after a killed {op}: {exits}")
        for op, counts in self.garbage.items():
            lines.append(f"  after a completed {op}, verify listed unreferenced data objects in "
                         f"{len(counts)} rounds (at most {max(counts)})")
        if self.observations:
            lines.append(f"  observations ({len(self.observations)}):")
            lines += [f"    {o}" for o in self.observations[:40]]
        lines.append(f"  failures: {len(self.failures)}")
        for f in self.failures:
            lines.append(f"    round {f.round} {f.op}/{f.mode}: {f.what}: {f.detail}")
            lines.append(f"      reproduce: {f.reproduction(self.seed, self.ops, self.lanes)}")
        return "\n".join(lines)


@dataclass
class RunResult:
    args: list[str]
    code: int
    stdout: str
    stderr: str
    seconds: float

    def brief(self) -> str:
        err = self.stderr.strip().splitlines()
        tail = err[-1] if err else ""
        return f"exit {self.code} after {self.seconds:.2f} s: {tail[:400]}"


@dataclass
class Device:
    name: str
    home: Path
    folder: Path
    spool: Path
    code: Path | None = None  # a private copy of the cloudguard package to run, if any

    @property
    def cwd(self) -> Path:
        """Not the repository: ``python -c`` would import the cloudguard found there first."""
        return self.spool.parent

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not (k.startswith("CLOUDGUARD_") or k.startswith("RCLONE_"))}
        if "CLOUDGUARD_RCLONE" in os.environ:
            env["CLOUDGUARD_RCLONE"] = os.environ["CLOUDGUARD_RCLONE"]
        env.update({"CLOUDGUARD_HOME": str(self.home), "CLOUDGUARD_KEYSTORE": "file",
                    "CLOUDGUARD_PASSPHRASE": PASSPHRASE,
                    "CLOUDGUARD_KIT_PASSPHRASE": PASSPHRASE,
                    "CLOUDGUARD_GC_GRACE": "0", "RCLONE_CONFIG": "/dev/null",
                    "TMPDIR": str(self.spool)})
        if self.code is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                [str(self.code), *filter(None, [os.environ.get("PYTHONPATH")])])
        return env


# The CLI with the cheapest scrypt cost, set through the test-only module hook (no environment
# variable reaches it); ``python -c`` keeps ``python -m``'s sys.path, the working directory first.
_CHEAP_KDF_MAIN = ("import sys; from cloudguard import keys; keys.TEST_KDF_LOG_N = 10; "
                   "from cloudguard.cli import main; sys.argv[0] = 'cloudguard'; main()")


def cg_args(*args: str) -> list[str]:
    return [sys.executable, "-c", _CHEAP_KDF_MAIN, *args]


def op_args(op: str, folder: Path, *extra: str) -> list[str]:
    return cg_args(*{"push": ["push"], "pull": ["pull"], "rotate": ["key", "rotate"],
                     "reencrypt": ["key", "rotate", "--reencrypt"]}[op],
                   "--folder", str(folder), "--json", *extra)


# --- running and killing ------------------------------------------------------------------


def _read(fh: IO[bytes]) -> str:
    fh.seek(0)
    return fh.read().decode(errors="replace")


def run_many(jobs: Sequence[tuple[Device, list[str]]], timeout: float) -> list[RunResult]:
    """Run commands side by side (each on its own device); outputs go through temp files."""
    results: list[RunResult] = []
    with contextlib.ExitStack() as stack:
        started: list[tuple[list[str], subprocess.Popen[bytes], IO[bytes], IO[bytes], float]] = []
        for device, args in jobs:
            out: IO[bytes] = stack.enter_context(tempfile.TemporaryFile(dir=device.spool.parent))
            err: IO[bytes] = stack.enter_context(tempfile.TemporaryFile(dir=device.spool.parent))
            proc = stack.enter_context(subprocess.Popen(
                args, env=device.env(), cwd=device.cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=err))
            started.append((args, proc, out, err, time.monotonic()))
        for args, proc, out, err, t0 in started:
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            results.append(RunResult(args, code, _read(out), _read(err), time.monotonic() - t0))
    return results


def run(device: Device, args: list[str], timeout: float) -> RunResult:
    return run_many([(device, args)], timeout)[0]


def _proc_stat(pid: int) -> tuple[int, int, str, str] | None:
    """(ppid, process group, command name, state) from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    lpar, rpar = raw.find("("), raw.rfind(")")
    fields = raw[rpar + 2:].split()
    if lpar < 0 or len(fields) < 3:
        return None
    return int(fields[1]), int(fields[2]), raw[lpar + 1:rpar], fields[0]


def _processes() -> Iterator[tuple[int, int, int, str, str]]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            got = _proc_stat(int(entry))
            if got is not None:
                yield (int(entry), *got)


def rclone_children(pid: int) -> list[int]:
    return [p for p, ppid, _g, comm, state in _processes()
            if ppid == pid and comm.startswith("rclone") and state not in ("Z", "X")]


def group_members(pgid: int) -> list[int]:
    return [p for p, _pp, g, _c, state in _processes() if g == pgid and state not in ("Z", "X")]


def _signal(pid: int, group: bool = False) -> bool:
    try:
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


@dataclass
class KillOutcome:
    killed: str  # "python", "group", "rclone" or "" when the run finished first
    code: int
    seconds: float
    stderr: str
    orphans_waited: float


def run_killed(device: Device, args: list[str], delay: float, mode: str, rng: random.Random,
               timeout: float) -> KillOutcome:
    """Start ``args`` in its own process group and SIGKILL it (or an rclone child) at ``delay``.

    After a kill of the cloudguard process alone, its rclone children may still be finishing
    an upload from what was left in their pipe; we wait until the group is empty.
    """
    killed = ""
    with tempfile.TemporaryFile(dir=device.spool.parent) as out, \
            tempfile.TemporaryFile(dir=device.spool.parent) as err:
        t0 = time.monotonic()
        with subprocess.Popen(args, env=device.env(), cwd=device.cwd, stdin=subprocess.DEVNULL,
                              stdout=out, stderr=err, start_new_session=True) as proc:
            try:
                while proc.poll() is None and time.monotonic() - t0 < delay:
                    time.sleep(0.002)
                if proc.poll() is None:
                    if mode == "rclone":
                        while proc.poll() is None:
                            kids = rclone_children(proc.pid)
                            if kids and _signal(rng.choice(kids)):
                                killed = "rclone"
                                break
                            time.sleep(0.002)
                    elif _signal(proc.pid, group=(mode == "group")):
                        killed = mode
                code = proc.wait(timeout)
            except BaseException:
                _signal(proc.pid, group=True)
                proc.wait()
                raise
            seconds = time.monotonic() - t0
            stderr = _read(err)
        if killed in ("python", "group") and code != -signal.SIGKILL:
            killed = ""  # it exited on its own just before the signal landed
        t1 = time.monotonic()
        while group_members(proc.pid) and time.monotonic() - t1 < 60:
            time.sleep(0.01)
        left = group_members(proc.pid)
        for pid in left:
            _signal(pid)
        return KillOutcome(killed, code, seconds, stderr, time.monotonic() - t1)


# --- the test tree ------------------------------------------------------------------------


def make_content(rng: random.Random, path: str, size: int, marker: bytes = MARKER) -> bytes:
    """Random bytes with a marker (and the path) at the start of every MiB."""
    parts: list[bytes] = []
    done = 0
    while done < size:
        head = marker + f"{path}#{rng.getrandbits(32):08x}\n".encode()
        step = min(MIB, size - done)
        chunk = (head + rng.randbytes(max(0, step - len(head))))[:step]
        parts.append(chunk)
        done += step
    return b"".join(parts)


def small_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.03:
        return 0
    if roll < 0.75:
        return rng.randint(1, 8 * 1024)
    if roll < 0.95:
        return rng.randint(8 * 1024, 256 * 1024)
    return rng.randint(256 * 1024, PACK_THRESHOLD - 1)


def large_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.1:
        return PACK_THRESHOLD  # exactly at the threshold: a stand-alone object
    if roll < 0.2:
        return PACK_THRESHOLD - 1  # just below it: a pack holding one file
    return PACK_THRESHOLD + rng.randint(1, 2 * MIB)


def _write(folder: Path, rel: str, data: bytes) -> None:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _walk(folder: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk without the folder's own ``.cloudguard`` (never synced, never a test file)."""
    for dirpath, dirs, names in os.walk(folder):
        if dirpath == str(folder) and OWN in dirs:
            dirs.remove(OWN)
        yield dirpath, dirs, names


def _files(folder: Path) -> list[str]:
    out = []
    for dirpath, _dirs, names in _walk(folder):
        for name in names:
            full = Path(dirpath) / name
            if not full.is_symlink() and not fnmatch.fnmatch(name, TEMP_GLOB):
                out.append(str(full.relative_to(folder)))
    return sorted(out)


def _new_name(rng: random.Random, folder: Path, dirs: list[str], ext: str) -> str:
    while True:
        rel = f"{rng.choice(dirs)}/f{rng.getrandbits(36):09x}{ext}"
        if not os.path.lexists(folder / rel):
            return rel


def _subdirs(folder: Path) -> list[str]:
    out = []
    for dirpath, dirs, _names in _walk(folder):
        for d in dirs:
            rel = str((Path(dirpath) / d).relative_to(folder))
            if not rel.startswith(("big", "links")):
                out.append(rel)
    return sorted(out)


def stream_size(rng: random.Random) -> int:
    """Over the 32 MiB streaming threshold: such a file streams, and early (sync/early.py)."""
    return 32 * MIB + rng.randint(1, 12 * MIB)


def populate(folder: Path, rng: random.Random, small: int, large: int,
             marker: bytes = MARKER, stream: int = 0) -> None:
    dirs = ["docs", "docs/old", "photos", "src/a", "src/b"]
    for _ in range(small):
        rel = _new_name(rng, folder, dirs, rng.choice([".txt", ".bin", ""]))
        _write(folder, rel, make_content(rng, rel, small_size(rng), marker))
    for i in range(large):
        rel = f"big/large-{i}.bin"
        _write(folder, rel, make_content(rng, rel, large_size(rng), marker))
    for i in range(stream):
        rel = f"big/stream-{i}.bin"
        _write(folder, rel, make_content(rng, rel, stream_size(rng), marker))
    (folder / "links").mkdir(exist_ok=True)
    os.symlink("../docs", folder / "links" / "to-docs")


def mutate(folder: Path, rng: random.Random, small: int, large: int,
           marker: bytes = MARKER, stream: int = 0) -> dict[str, int]:
    """Edit, append, add and delete files; sometimes large files, links, whole folders."""
    files = _files(folder)
    smalls = [f for f in files if not f.startswith("big/")]
    bigs = [f for f in files if f.startswith("big/")]
    if stream and rng.random() < 0.5:  # a big file rewritten, or a new one: streams early
        streams = [f for f in bigs if f.startswith("big/stream-")]
        rel = (rng.choice(streams) if streams and rng.random() < 0.7
               else f"big/stream-{rng.getrandbits(24):06x}.bin")
        _write(folder, rel, make_content(rng, rel, stream_size(rng), marker))
        stats0 = "stream written"
    else:
        stats0 = ""
    bigs = [f for f in bigs if not f.startswith("big/stream-")]
    rng.shuffle(smalls)
    stats: Counter[str] = Counter()
    if stats0:
        stats[stats0] += 1
    scale = max(1, small // 12)
    n_edit, n_append = rng.randint(1, scale), rng.randint(0, scale)
    n_del = rng.randint(0, scale) if len(smalls) > small // 2 else 0
    n_add = rng.randint(0, scale) + (scale if len(smalls) < small else 0)
    picked = smalls[:n_edit + n_append + n_del]
    for rel in picked[:n_edit]:
        if rng.random() < 0.25:  # same size, new bytes
            size = (folder / rel).stat().st_size
        else:
            size = small_size(rng)
        _write(folder, rel, make_content(rng, rel, size, marker))
        stats["edited"] += 1
    for rel in picked[n_edit:n_edit + n_append]:
        with open(folder / rel, "ab") as fh:
            fh.write(make_content(rng, rel, rng.randint(1, 4096), marker))
        stats["appended"] += 1
    for rel in picked[n_edit + n_append:]:
        (folder / rel).unlink()
        stats["deleted"] += 1
    dirs = _subdirs(folder) or ["docs"]
    if rng.random() < 0.15:
        fresh = f"{rng.choice(dirs)}/new-{rng.getrandbits(24):06x}"
        dirs.append(fresh)
        stats["new folders"] += 1
    for _ in range(n_add):
        rel = _new_name(rng, folder, dirs, rng.choice([".txt", ".bin", ""]))
        _write(folder, rel, make_content(rng, rel, small_size(rng), marker))
        stats["added"] += 1
    roll = rng.random()
    if bigs and roll < 0.35:
        rel = rng.choice(bigs)
        _write(folder, rel, make_content(rng, rel, large_size(rng), marker))
        stats["large edited"] += 1
    elif roll < 0.5 and len(bigs) <= large:
        rel = f"big/large-{rng.getrandbits(24):06x}.bin"
        _write(folder, rel, make_content(rng, rel, large_size(rng), marker))
        stats["large added"] += 1
    elif roll < 0.6 and len(bigs) > 1:
        (folder / rng.choice(bigs)).unlink()
        stats["large deleted"] += 1
    if rng.random() < 0.08:
        victims = [d for d in _subdirs(folder) if d.count("/") >= 1]
        if victims:
            shutil.rmtree(folder / rng.choice(victims))
            stats["folders deleted"] += 1
    if rng.random() < 0.1:
        link = folder / "links" / f"l{rng.randint(0, 3)}"
        if os.path.lexists(link):
            link.unlink()
        else:
            os.symlink(f"../{rng.choice(_files(folder) or ['gone'])}", link)
        stats["links changed"] += 1
    return dict(stats)


Tree = dict[str, tuple[str, bytes]]


def snapshot_tree(root: Path) -> Tree:
    """path -> (kind, content): file bytes, link target, or nothing for a folder."""
    out: Tree = {}
    for dirpath, dirs, names in _walk(root):
        for name in dirs + names:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            if fnmatch.fnmatch(name, TEMP_GLOB):
                continue  # reported by find_temp_files
            if full.is_symlink():
                out[rel] = ("l", os.readlink(full).encode())
            elif full.is_dir():
                out[rel] = ("d", b"")
            else:
                out[rel] = ("f", full.read_bytes())
    return out


def diff_trees(expected: Tree, actual: Tree) -> list[str]:
    out = []
    for rel in sorted(set(expected) | set(actual)):
        exp, act = expected.get(rel), actual.get(rel)
        if exp == act:
            continue
        if act is None:
            out.append(f"{rel}: missing")
        elif exp is None:
            out.append(f"{rel}: unexpected {act[0]} ({len(act[1])} bytes)")
        elif exp[0] != act[0]:
            out.append(f"{rel}: is {act[0]}, expected {exp[0]}")
        else:
            out.append(f"{rel}: content differs ({len(act[1])} bytes, expected {len(exp[1])})")
    return out


def find_temp_files(roots: Sequence[Path]) -> list[str]:
    found = []
    for root in roots:
        for dirpath, _dirs, names in _walk(root):
            found += [str(Path(dirpath) / n) for n in names if fnmatch.fnmatch(n, TEMP_GLOB)]
        with contextlib.suppress(FileNotFoundError):
            found += [str(p) for p in (root / STAGING).iterdir()]
    return found


def mass_delete(folder: Path, rng: random.Random, synced: set[str] | None = None) -> int:
    """Delete just over half of the synced files and links (at least the guard's floor), small
    files only; 0 (nothing deleted) if there are too few small files for that. ``synced`` (the
    paths the last push left on the remote) is what the guard counts: files the round added
    and did not push yet are neither counted nor deleted (deleting one is no deletion)."""
    if synced is None:
        total = sum(len(names) + sum(1 for d in dirs if (Path(p) / d).is_symlink())
                    for p, dirs, names in _walk(folder))
    else:
        total = len(synced)
    smalls = [f for f in _files(folder) if not f.startswith("big/")
              and (synced is None or f in synced)]
    count = max(MASS_DELETE_FLOOR, total // 2 + 1)
    if count > len(smalls):
        return 0
    for rel in rng.sample(smalls, count):
        (folder / rel).unlink()
    return count


def file_has_marker(path: Path, marker: bytes = MARKER) -> bool:
    overlap = len(marker) - 1
    try:
        with open(path, "rb") as fh:
            tail = b""
            while block := fh.read(8 * MIB):
                if marker in tail + block:
                    return True
                tail = block[-overlap:]
    except OSError:
        return False
    return False


def find_markers(roots: Sequence[Path], marker: bytes = MARKER, exclude: Sequence[Path] = (),
                 newer_than: float | None = None, max_size: int | None = None) -> list[str]:
    """Every regular file under ``roots`` whose bytes contain the plaintext marker."""
    skip = [p.resolve() for p in exclude]
    found: list[str] = []
    for root in roots:
        for dirpath, dirs, names in os.walk(root):
            here = Path(dirpath).resolve()
            dirs[:] = [d for d in dirs if (here / d) not in skip]
            for name in names:
                path = here / name
                try:
                    st = path.lstat()
                except OSError:
                    continue
                if not path.is_file() or path.is_symlink():
                    continue
                if newer_than is not None and max(st.st_mtime, st.st_ctime) < newer_than:
                    continue
                if max_size is not None and st.st_size > max_size:
                    continue
                if file_has_marker(path, marker):
                    found.append(str(path))
    return found


# --- the campaign -------------------------------------------------------------------------


class CampaignFailure(Exception):
    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what}: {detail}")
        self.what = what
        self.detail = detail


@dataclass
class Vault:
    root: Path
    remote: Path  # the folder that holds the remote's objects (served, for sftp)
    kit: Path
    a: Device
    b: Device
    spec: str = ""  # what cloudguard is given as the remote (the folder, or an sftp spec)

    @property
    def target(self) -> str:
        return self.spec or str(self.remote)


@dataclass
class Lane:
    """One vault (with devices A and B) played round after round; lanes run side by side."""

    index: int
    vaults: int = 0  # how many vaults this lane has set up
    vault: Vault | None = None
    current: tuple[str, float] = ("", 0.0)  # kill mode and delay of the round being played
    broken: bool = False  # its setup failed: no more rounds

    def label(self, lanes: int) -> str:
        return f"lane {self.index} " if lanes > 1 else ""


class Campaign:
    def __init__(self, config: Config) -> None:
        self.cfg = config
        self.report = Report(config.seed, config.ops, max(1, config.lanes))
        self.durations: dict[str, float] = {}
        self.workdir = Path(".")
        # Unique per campaign, so plaintext folders of other runs never look like a leak.
        self.marker = MARKER + secrets.token_hex(6).encode() + b":"
        self.code: Path | None = None
        self.audit_log = False  # does this cloudguard have ``log --verify``? (see take_code)
        self.lock = threading.Lock()  # guards the report, the durations and the round counter
        self.calibrated = threading.Event()
        self.stop = threading.Event()
        self.servers = contextlib.ExitStack()  # rclone serve sftp of each vault (--backend)
        self.push_rounds = 0

    # -- plumbing

    def log(self, text: str) -> None:
        if not self.cfg.quiet:
            print(text, flush=True)

    def device(self, root: Path, name: str) -> Device:
        dev = Device(name, root / f"home-{name}", root / f"folder-{name}", root / "spool",
                     self.code)
        dev.spool.mkdir(parents=True, exist_ok=True)
        return dev

    def must(self, device: Device, args: list[str], what: str) -> RunResult:
        res = run(device, args, self.cfg.timeout)
        if res.code != 0:
            raise CampaignFailure(what, res.brief())
        return res

    def note_duration(self, op: str, seconds: float) -> None:
        with self.lock:
            old = self.durations.get(op)
            self.durations[op] = seconds if old is None else 0.7 * old + 0.3 * seconds

    def observe(self, text: str) -> None:
        with self.lock:
            self.report.observations.append(text)

    # -- setup

    def serve(self, root: Path) -> str:
        """A real SFTP server (rclone serve sftp on 127.0.0.1) over ``root``, until the end."""
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from servers import sftp_server  # the test suite's server helper

        with self.lock:
            return self.servers.enter_context(sftp_server(root))

    def new_vault(self, lane: Lane) -> Vault:
        lane.vaults += 1
        tag = f"{lane.index}-{lane.vaults}" if self.cfg.lanes > 1 else f"{lane.vaults}"
        root = self.workdir / f"vault-{tag}"
        root.mkdir(parents=True)
        a, b = self.device(root, "a"), self.device(root, "b")
        remote, kit = root / "remote", root / "kit.json"
        rng = random.Random(f"{self.cfg.seed}:setup:{tag}")
        a.folder.mkdir()
        populate(a.folder, rng, self.cfg.small_files, self.cfg.large_files, self.marker,
                 self.cfg.stream_files)
        spec = self.serve(remote) if self.cfg.backend == "sftp" else ""
        self.must(a, cg_args("init", str(a.folder), "--remote", spec or str(remote),
                             "--name", "a"), "init")
        res = self.must(a, op_args("push", a.folder), "first push")
        self.note_duration("push", res.seconds)
        self.must(a, cg_args("key", "export", str(kit), "--folder", str(a.folder),
                             "--choose-passphrase"), "key export")
        res = self.must(b, cg_args("clone", spec or str(remote), str(b.folder), "--key-file",
                                   str(kit), "--name", "b"), "clone b")
        with self.lock:
            self.durations.setdefault("pull", res.seconds)
        vault = Vault(root, remote, kit, a, b, spec)
        self.check_tree(b, snapshot_tree(a.folder), "device b after clone")
        return vault

    def daemon_until_synced(self, device: Device) -> None:
        """The daemon's completion run: start it again, wait until the folder has nothing to
        push, then stop it with SIGTERM (it must exit 0)."""
        args = cg_args("daemon", "run", "--folder", str(device.folder))
        with tempfile.TemporaryFile(dir=device.spool.parent) as err, \
                subprocess.Popen(args, env=device.env(), cwd=device.cwd, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=err,
                                 start_new_session=True) as proc:
            try:
                deadline = time.monotonic() + self.cfg.timeout
                while True:
                    res = run(device, cg_args("status", "--folder", str(device.folder),
                                              "--json"), self.cfg.timeout)
                    doc = json.loads(res.stdout) if res.code == 0 else {}
                    daemon = doc.get("daemon") or {}
                    if (doc.get("to_push") == [] and daemon.get("last_push")
                            and daemon.get("queue") == 0):
                        break
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise CampaignFailure("the restarted daemon did not bring the folder "
                                              "in sync", f"{res.brief()} | {_read(err)[-400:]}")
                    time.sleep(0.3)
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(30)
            except BaseException:
                _signal(proc.pid, group=True)
                proc.wait()
                raise
            if code != 0:
                raise CampaignFailure("the daemon did not stop cleanly", _read(err)[-400:])

    def calibrate(self, vault: Vault) -> None:
        """Measure each operation once, uncrashed, on a typical change.

        The lean variant (for the test suite) keeps the first push and the first clone as the
        push and pull durations and measures only the two rotations, without a mutation.
        """
        rng = random.Random(f"{self.cfg.seed}:calibrate")
        pushed = False
        for op in self.cfg.ops:
            lean = self.cfg.lean_calibration
            if lean and op in ("push", "pull") or op in ("restore", "daemon"):
                continue  # a restore is about as long as a pull; the daemon as a push
            if not lean:
                mutate(vault.a.folder, rng, self.cfg.small_files, self.cfg.large_files,
                       self.marker, self.cfg.stream_files)
                if op != "push":
                    self.must(vault.a, op_args("push", vault.a.folder), "calibration push")
                pushed = True
            dev = vault.b if op == "pull" else vault.a
            res = self.must(dev, op_args(op, dev.folder), f"calibration {op}")
            with self.lock:
                self.durations[op] = res.seconds
        if pushed:
            self.must(vault.b, op_args("pull", vault.b.folder), "calibration pull on b")
        with self.lock:
            self.durations.setdefault("restore", self.durations.get("pull", 1.0))
            # the daemon starts (imports, unlock, watches), then pushes after a quiet period
            self.durations.setdefault("daemon", self.durations.get("push", 1.0) + 1.5)
        self.log("typical durations: " + ", ".join(f"{op} {self.durations[op]:.2f} s"
                                                   for op in self.cfg.ops))

    # -- checks

    def check_tree(self, device: Device, expected: Tree, what: str) -> None:
        diff = diff_trees(expected, snapshot_tree(device.folder))
        if diff:
            raise CampaignFailure(f"{what}: tree differs from the expected tree",
                                  f"{len(diff)} differences: " + "; ".join(diff[:8]))

    def check_round(self, vault: Vault, op: str, expected: Tree, clone: bool, audit: bool,
                    rnd: int) -> None:
        a, b = vault.a, vault.b
        self.check_tree(a, expected, "device a (the operation must not touch it)")
        jobs: list[tuple[Device, list[str]]] = [
            (a, cg_args("verify", "--read-data", "--folder", str(a.folder), "--json"))]
        if op != "pull":
            jobs.append((b, op_args("pull", b.folder)))
        results = run_many(jobs, self.cfg.timeout)
        ver = results[0]
        if ver.code != 0:
            raise CampaignFailure("verify --read-data failed", ver.brief())
        doc = json.loads(ver.stdout)
        if doc.get("unreferenced"):
            with self.lock:
                self.report.garbage.setdefault(op, []).append(len(doc["unreferenced"]))
        if op != "pull":
            if results[1].code != 0:
                raise CampaignFailure("device b pull failed", results[1].brief())
        self.check_tree(b, expected, "device b")
        if audit:
            for dev, res in zip((a, b), run_many(
                    [(d, cg_args("log", "--verify", "--json")) for d in (a, b)],
                    self.cfg.timeout), strict=True):
                if res.code != 0:
                    raise CampaignFailure(f"the audit log of device {dev.name} is broken",
                                          res.brief())
        folders = [a.folder, b.folder]
        homes = [a.home, b.home]
        if clone:
            c = self.device(vault.root, f"c{rnd}")
            try:
                res = run(c, cg_args("clone", vault.target, str(c.folder), "--key-file",
                                     str(vault.kit), "--name", f"c{rnd}"), self.cfg.timeout)
                if res.code != 0:
                    raise CampaignFailure("a fresh clone failed", res.brief())
                self.check_tree(c, expected, "fresh clone")
                temps = find_temp_files([c.folder])
                leaks = find_markers([c.home], self.marker)
                if temps or leaks:
                    raise CampaignFailure("fresh clone left temp files or plaintext",
                                          f"{temps[:5]} {leaks[:5]}")
            finally:
                shutil.rmtree(c.folder, ignore_errors=True)
                shutil.rmtree(c.home, ignore_errors=True)
        temps = find_temp_files(folders)
        if temps:
            raise CampaignFailure("temp files left in a plaintext folder", ", ".join(temps[:10]))
        leaks = find_markers([*homes, vault.remote, a.spool], self.marker)
        if leaks:
            raise CampaignFailure("plaintext marker found outside the plaintext folders",
                                  ", ".join(leaks[:10]))

    # -- one round

    def next_round(self) -> tuple[int, str] | None:
        """A round number and the operation with the fewest kills so far, or None when done.

        A run that finished before its kill does not count, so its operation comes again.
        """
        with self.lock:
            if (self.stop.is_set() or self.report.total_kills >= self.cfg.kills
                    or self.report.rounds >= 3 * self.cfg.kills + 10):
                return None
            self.report.rounds += 1
            rnd = self.report.rounds
            counts = {op: sum(self.report.kills.get(op, Counter()).values())
                      for op in self.cfg.ops}
        fewest = min(counts.values())
        return rnd, random.Random(f"{self.cfg.seed}:op:{rnd}").choice(
            [op for op in self.cfg.ops if counts[op] == fewest])

    def play(self, lane: Lane, vault: Vault, rnd: int, op: str) -> None:
        rng = random.Random(f"{self.cfg.seed}:{rnd}")
        mode = rng.choice(self.cfg.modes)
        if op == "daemon":
            mode = rng.choice([m for m in self.cfg.modes if m in DAEMON_MODES] or ["python"])
            (vault.a.home / "config.toml").write_text(DAEMON_CONFIG)
        with self.lock:
            delay = rng.uniform(0, self.durations.get(op, 1.0))
        lane.current = (mode, delay)
        t0 = time.monotonic()
        stats: dict[str, int] = {}
        if op == "restore":
            point, then = int(time.time()), snapshot_tree(vault.a.folder)
            time.sleep(1.1)  # versions are timed in whole seconds
        if op in self.cfg.mutate_before or op == "restore":
            stats = mutate(vault.a.folder, rng, self.cfg.small_files, self.cfg.large_files,
                           self.marker, self.cfg.stream_files)
        if op not in ("push", "daemon") and stats:
            res = self.must(vault.a, op_args("push", vault.a.folder, "--allow-mass-delete"),
                            "push before the round")
            self.note_duration("push", res.seconds)
        extra = self.mass_delete_round(vault, rng, stats) if op == "push" else []
        expected = snapshot_tree(vault.a.folder)
        dev = vault.b if op == "pull" else vault.a
        if op == "restore":
            # every path A had at the point comes back as it was; later ones stay
            expected = {**{p: v for p, v in expected.items() if p not in then}, **then}
            args = cg_args("restore", "--before", time.strftime(
                "%Y-%m-%dT%H:%M:%S", time.localtime(point)), "--force", "--folder",
                str(dev.folder), "--json")
        elif op == "daemon":  # runs until killed: the kill always lands
            args = cg_args("daemon", "run", "--folder", str(dev.folder))
        else:
            args = op_args(op, dev.folder, *extra)
        outcome = run_killed(dev, args, delay, mode, rng, self.cfg.timeout)
        with self.lock:
            if outcome.killed:
                self.report.kills.setdefault(op, Counter())[outcome.killed] += 1
                self.report.killed_exit.setdefault(op, Counter())[outcome.code] += 1
            else:
                self.report.missed[op] += 1
        if outcome.killed == "rclone" and outcome.code == 0:
            self.observe(f"round {rnd} {op}: an rclone child was killed and the run still "
                         "succeeded (a fallback, or the child had already finished its work)")
        if outcome.killed == "rclone" and outcome.code == 3:
            self.observe(f"round {rnd} {op}: killing an rclone child was reported as an "
                         f"integrity failure (exit 3): "
                         f"{outcome.stderr.strip().splitlines()[-1:]}")
        if not outcome.killed:
            self.note_duration(op, outcome.seconds)  # a full run: the estimate was too long
            if outcome.code != 0:
                raise CampaignFailure("the operation failed without being killed",
                                      f"exit {outcome.code}: {outcome.stderr.strip()[-400:]}")
        if outcome.orphans_waited > 5:
            self.observe(f"round {rnd} {op}: rclone children outlived the killed cloudguard "
                         f"by {outcome.orphans_waited:.1f} s")
        if self.cfg.probe_window and outcome.killed and op != "pull":
            self.probe(vault, op, rnd)
        t1 = time.monotonic()
        if op == "daemon":
            self.daemon_until_synced(dev)
            first = RunResult(args, 0, "", "", time.monotonic() - t1)
        else:
            first = run(dev, args, self.cfg.timeout)
        if first.code != 0:
            with self.lock:
                self.report.retried.append(f"round {rnd} {op}/{outcome.killed or 'none'}: "
                                           f"{first.brief()}")
            second = run(dev, args, self.cfg.timeout)
            if second.code != 0:
                raise CampaignFailure("the operation failed twice after the kill",
                                      f"first: {first.brief()} | second: {second.brief()}")
        elif op in ("rotate", "reencrypt"):
            self.note_duration(op, first.seconds)  # a rotation always does its full work
        if op == "restore":
            self.check_tree(vault.a, expected, "device a after the restore")
            self.must(vault.a, op_args("push", vault.a.folder, "--allow-mass-delete"),
                      "push of the restored versions")
        with self.lock:
            last = self.report.total_kills >= self.cfg.kills
        clone = self.cfg.clone_every > 0 and (rnd % self.cfg.clone_every == 0 or last)
        audit = self.audit_log and (rnd % self.cfg.audit_every == 0 or last)
        t2 = time.monotonic()
        self.check_round(vault, op, expected, clone, audit, rnd)
        t3 = time.monotonic()
        changes = ", ".join(f"{k} {v}" for k, v in sorted(stats.items()))
        what = (f"killed ({outcome.killed}) after {outcome.seconds:.2f} s, exit {outcome.code}"
                if outcome.killed else f"finished first after {outcome.seconds:.2f} s")
        self.log(f"[{rnd:>4}] {lane.label(self.cfg.lanes)}{op:<9} {mode:<6} delay "
                 f"{delay:5.2f} s: {what}; checks ok; round {t3 - t0:.1f} s (completion "
                 f"{t2 - t1:.1f}, checks {t3 - t2:.1f}){'; ' if changes else ''}{changes}")

    def mass_delete_round(self, vault: Vault, rng: random.Random, stats: dict[str, int]
                          ) -> list[str]:
        """Every ``mass_delete_every`` push rounds: delete over half of A's files, check that a
        plain push refuses and changes nothing, and return the flag the round's push needs."""
        with self.lock:
            self.push_rounds += 1
            every = self.cfg.mass_delete_every
            due = every > 0 and (self.push_rounds - 1) % every == 0
        if not due:
            return []
        before = snapshot_tree(vault.b.folder)  # b pulled the last push: the synced tree
        count = mass_delete(vault.a.folder, rng,
                            {p for p, (kind, _c) in before.items() if kind != "d"})
        if not count:
            return []
        stats["mass deleted"] = count
        res = run(vault.a, op_args("push", vault.a.folder), self.cfg.timeout)
        try:
            refusal = json.loads(res.stdout)["error"] if res.code == 1 else {}
        except (ValueError, KeyError, TypeError):
            refusal = {}
        if refusal.get("kind") != "mass-delete":
            raise CampaignFailure("the mass-delete guard did not refuse a push deleting "
                                  f"{count} files", res.brief())
        self.must(vault.b, op_args("pull", vault.b.folder), "device b pull after a refusal")
        self.check_tree(vault.b, before, "device b after a refused mass delete")
        with self.lock:
            self.report.mass_refused += 1
        return ["--allow-mass-delete"]

    def probe(self, vault: Vault, op: str, rnd: int) -> None:
        """Device B pulls in the crash window, before A re-runs: can others still read?"""
        res = run(vault.b, op_args("pull", vault.b.folder), self.cfg.timeout)
        with self.lock:
            self.report.probes.setdefault(op, Counter())[res.code] += 1
        if res.code != 0:
            self.observe(f"round {rnd} {op}: device b could not pull before a re-run on a: "
                         f"{res.brief()}")

    def play_lane(self, lane: Lane) -> None:
        """Rounds until the campaign has its kills; a failed vault is replaced by a new one."""
        while not self.stop.is_set():
            if lane.vault is None:
                try:
                    lane.vault = self.new_vault(lane)
                    if lane.index == 0 and not self.calibrated.is_set():
                        self.calibrate(lane.vault)
                except CampaignFailure as exc:  # nothing to play on: this lane stops
                    with self.lock:
                        self.report.failures.append(Failure(
                            self.report.rounds, "setup", "", 0.0, exc.what, exc.detail,
                            self.workdir / f"vault-{lane.index}-{lane.vaults}"))
                    self.log(f"{lane.label(self.cfg.lanes)}setup FAILED: {exc}")
                    lane.broken = True
                    lane.vault = None
                    return
                finally:
                    if lane.index == 0:
                        self.calibrated.set()
            self.calibrated.wait()
            got = self.next_round()
            if got is None:
                return
            rnd, op = got
            vault = lane.vault
            lane.current = ("", 0.0)
            try:
                self.play(lane, vault, rnd, op)
            except CampaignFailure as exc:
                mode, delay = lane.current
                failure = Failure(rnd, op, mode, delay, exc.what, exc.detail, vault.root)
                with self.lock:
                    self.report.failures.append(failure)
                how = failure.reproduction(self.cfg.seed, self.cfg.ops, self.cfg.lanes)
                self.log(f"[{rnd:>4}] {lane.label(self.cfg.lanes)}{op} FAILED: {exc.what}: "
                         f"{exc.detail}\n       reproduce: {how}")
                if self.cfg.stop_on_failure:
                    self.stop.set()
                lane.vault = None  # keep the broken state for inspection; go on with a new one

    # -- the whole campaign

    def take_code(self) -> str:
        """Which cloudguard runs; with ``snapshot_code``, freeze a copy of the package."""
        spec = importlib.util.find_spec("cloudguard")
        if spec is None or spec.origin is None:
            raise SystemExit("cloudguard is not importable; pip install -e . first")
        package = Path(spec.origin).parent
        try:
            head = subprocess.run(["git", "-C", str(package), "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(package), "status", "--porcelain", "."],
                                   capture_output=True, text=True, check=True).stdout.strip()
            version = f"{head}{' + uncommitted changes' if dirty else ''}"
        except (OSError, subprocess.CalledProcessError):
            version = "unknown revision"
        where = f"{package} ({version})"
        if self.cfg.snapshot_code:
            self.code = self.workdir / "code"
            shutil.rmtree(self.code, ignore_errors=True)
            shutil.copytree(package, self.code / "cloudguard",
                            ignore=shutil.ignore_patterns("__pycache__"))
            where = f"a copy of {where} in {self.code}"
        probe = self.device(self.workdir, "probe")
        self.audit_log = (self.cfg.check_audit_log and
                          run(probe, cg_args("log", "--help"), self.cfg.timeout).code == 0)
        shutil.rmtree(probe.home, ignore_errors=True)
        return where + ("; checking its audit log" if self.audit_log else "")

    def final_checks(self, vaults: Sequence[Vault], started: float) -> None:
        """A last push must leave no garbage (grace 0); no plaintext in new system temp files."""
        for vault in vaults if self.cfg.final_gc_check else ():
            self.must(vault.a, op_args("push", vault.a.folder), "final push")
            ver = self.must(vault.a, cg_args("verify", "--read-data", "--folder",
                                             str(vault.a.folder), "--json"), "final verify")
            left = json.loads(ver.stdout).get("unreferenced", [])
            if left:
                self.observe(f"after the final push (CLOUDGUARD_GC_GRACE=0), {len(left)} "
                             f"unreferenced data objects remain in {vault.remote}: {left[:3]}")
        # Our processes spool into TMPDIR (checked every round); this catches anything that
        # ignores TMPDIR. Files of other programs bigger than ours cannot be our spool files.
        tmp = Path(tempfile.gettempdir())
        leaks = find_markers([tmp], self.marker, exclude=[self.workdir], newer_than=started - 1,
                             max_size=64 * MIB)
        if leaks:
            raise CampaignFailure("plaintext marker in files created in the temp folder",
                                  ", ".join(leaks[:10]))

    def run(self) -> Report:
        started = time.time()
        t0 = time.monotonic()
        made_workdir = self.cfg.workdir is None
        self.workdir = (Path(tempfile.mkdtemp(prefix="cg-crash-")) if self.cfg.workdir is None
                        else self.cfg.workdir.resolve())
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.report.workdir = self.workdir
        self.log(f"cloudguard under test: {self.take_code()}")
        lanes = [Lane(i) for i in range(max(1, self.cfg.lanes))]
        errors: list[BaseException] = []

        def guarded(lane: Lane) -> None:
            try:
                self.play_lane(lane)
            except BaseException as exc:  # a bug in this script: stop every lane, re-raise
                errors.append(exc)
                self.stop.set()
                self.calibrated.set()

        try:
            threads = [threading.Thread(target=guarded, args=(lane,), name=f"lane-{lane.index}")
                       for lane in lanes[1:]]
            for thread in threads:
                thread.start()
            try:
                guarded(lanes[0])
            finally:
                while any(t.is_alive() for t in threads):
                    try:
                        for thread in threads:
                            thread.join()
                    except KeyboardInterrupt:
                        self.stop.set()
            if errors:
                raise errors[0]
            live = [lane.vault for lane in lanes if lane.vault is not None]
            if not (self.cfg.stop_on_failure and self.report.failures):
                try:
                    self.final_checks(live, started)
                except CampaignFailure as exc:
                    self.report.failures.append(Failure(
                        self.report.rounds, "final", "", 0.0, exc.what, exc.detail,
                        self.workdir))
        finally:
            self.servers.close()
            self.report.seconds = time.monotonic() - t0
            if not self.report.failures and not self.cfg.keep and made_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            elif not self.report.failures and not self.cfg.keep:
                for child in [*self.workdir.glob("vault-*"), self.workdir / "code"]:
                    shutil.rmtree(child, ignore_errors=True)
        return self.report


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--kills", type=int, default=200, help="how many kills (default 200)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--ops", default=",".join(OPS),
                        help="comma-separated operations (default: all of "
                             f"{','.join(OPS)})")
    parser.add_argument("--modes", default=",".join(KILL_MODES),
                        help="kill modes: python (cloudguard only), group (with its rclone "
                             "children), rclone (one rclone child); default all")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where vaults, remotes and devices live (default: a temp folder)")
    parser.add_argument("--small-files", type=int, default=120)
    parser.add_argument("--large-files", type=int, default=3)
    parser.add_argument("--clone-every", type=int, default=5,
                        help="a fresh device clones every N rounds (0: never)")
    parser.add_argument("--live-code", action="store_true",
                        help="run the cloudguard package as it changes on disk (default: a "
                             "copy taken at start, so concurrent edits cannot mix versions)")
    parser.add_argument("--lanes", type=int, default=1,
                        help="play N independent vaults side by side (default 1)")
    parser.add_argument("--mass-delete-every", type=int, default=10,
                        help="every N push rounds (the first included) delete over half of "
                             "the files and check the guard first (0: never; default 10)")
    parser.add_argument("--probe-window", action="store_true",
                        help="after each kill, device B pulls before the re-run (its exit "
                             "codes are reported, not counted as failures)")
    parser.add_argument("--backend", choices=("local", "sftp"), default="local",
                        help="the remote: a local folder, or a real SFTP server on 127.0.0.1")
    parser.add_argument("--stream-files", type=int, default=0,
                        help="files over the 32 MiB streaming threshold (early streams)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--stop-on-failure", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    ns = parser.parse_args(argv)
    ops = tuple(o.strip() for o in ns.ops.split(",") if o.strip())
    modes = tuple(m.strip() for m in ns.modes.split(",") if m.strip())
    bad = [o for o in ops if o not in OPS] + [m for m in modes if m not in KILL_MODES]
    if bad or not ops or not modes:
        parser.error(f"unknown or missing operations/modes: {bad}")
    seed = ns.seed if ns.seed is not None else random.SystemRandom().randrange(1, 10**6)
    return Config(kills=ns.kills, seed=seed, ops=ops, workdir=ns.workdir,
                  small_files=ns.small_files, large_files=ns.large_files,
                  clone_every=ns.clone_every, modes=modes, keep=ns.keep,
                  stop_on_failure=ns.stop_on_failure, quiet=ns.quiet,
                  snapshot_code=not ns.live_code, lanes=ns.lanes,
                  probe_window=ns.probe_window, mass_delete_every=ns.mass_delete_every,
                  backend=ns.backend, stream_files=ns.stream_files)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    print(f"crash campaign: seed {config.seed}, {config.kills} kills, ops "
          f"{','.join(config.ops)}", flush=True)
    report = Campaign(config).run()
    print(report.render(), flush=True)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
