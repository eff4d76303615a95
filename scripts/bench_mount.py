#!/usr/bin/env python3
"""Benchmark the mount (issue 12) beside `rclone mount` of a crypt remote
(`--vfs-cache-mode writes`) and gocryptfs, over the same data, in one run. Targets, not tests;
the figures go to docs/benchmarks.md.

Each tool serves an encrypted store in a local folder. Measured for each:

* **write** - one ``--size`` file written in 1 MiB blocks, from open to close (no fsync);
* **read** - that file read back sequentially, after a remount and a drop of the page cache;
* **create** - ``--small`` files of 4 KiB in 20 folders, from the first open to the last
  close; for cloudguard also with the unmount (its versions are committed in batches);
* **ls -lR** - of the whole tree, after a remount;
* **RSS** - peak VmHWM of the serving process over the run (cloudguard's Python).

Then cloudguard alone: RSS of a mount serving a vault of ``--files`` small files while
``ls -lR`` and a read of every file run. gocryptfs is skipped with a note when it is not
installed (Debian: gocryptfs). Processes are started from argument lists only.

    python scripts/bench_mount.py --out /tmp/mount.md
    python scripts/bench_mount.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the rclone and tree helpers of scripts/bench.py)

ROOT = Path(__file__).resolve().parents[1]
PASSPHRASE = "mount benchmark passphrase, not a secret"
MIB = 1 << 20


def _hwm(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _drop_caches() -> None:
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


class Tool:
    """One way to serve an encrypted folder: ``start`` mounts and returns the serving
    process; ``stop`` unmounts and waits for it."""

    name = ""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work = work / self.name
        self.work.mkdir()
        self.mnt = self.work / "mnt"
        self.mnt.mkdir()
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak = 0.0

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        log = (self.work / "serve.log").open("ab")
        with log:
            self.proc = subprocess.Popen(self.argv(), env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise bench.BenchError(f"{self.name} did not mount: "
                                       f"{(self.work / 'serve.log').read_text()[-800:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        assert self.proc is not None
        self.peak = max(self.peak, _hwm(self.proc.pid))
        subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True, check=False)
        try:
            self.proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Path]:
        self.start()
        try:
            yield self.mnt
        finally:
            if self.proc is not None:
                self.stop()


class Cloudguard(Tool):
    name = "cloudguard"

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        super().__init__(work, env)
        home = self.work / "home"
        home.mkdir(mode=0o700)
        self.env = {**env, "CLOUDGUARD_HOME": str(home), "CLOUDGUARD_KEYSTORE": "file",
                    "CLOUDGUARD_PASSPHRASE": PASSPHRASE, "CLOUDGUARD_KIT_PASSPHRASE": PASSPHRASE,
                    "PYTHONPATH": str(ROOT)}
        self.folder = self.work / "bound"
        self.folder.mkdir()
        subprocess.run([sys.executable, "-m", "cloudguard", "init", str(self.folder),
                        "--remote", str(self.work / "store")], env=self.env, check=True,
                       capture_output=True)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "cloudguard", "mount", str(self.mnt), "--folder",
                str(self.folder)]


class RcloneCrypt(Tool):
    name = "rclone mount crypt"

    def __init__(self, work: Path, env: dict[str, str], rclone: str) -> None:
        super().__init__(work, env)
        self.rclone = rclone
        store = self.work / "store"
        store.mkdir()
        secret = subprocess.run([rclone, "obscure", PASSPHRASE], env=env, check=True,
                                capture_output=True, text=True).stdout.strip()
        self.env = {**env, "RCLONE_CONFIG_BENCHCRYPT_TYPE": "crypt",
                    "RCLONE_CONFIG_BENCHCRYPT_REMOTE": str(store),
                    "RCLONE_CONFIG_BENCHCRYPT_PASSWORD": secret}

    def argv(self) -> list[str]:
        return [self.rclone, "mount", "benchcrypt:", str(self.mnt), "--vfs-cache-mode",
                "writes", "--cache-dir", str(self.work / "cache")]


class Gocryptfs(Tool):
    name = "gocryptfs"

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        super().__init__(work, env)
        self.cipher = self.work / "cipher"
        self.cipher.mkdir()
        self.passfile = self.work / "pass"
        self.passfile.write_text(PASSPHRASE + "\n")
        subprocess.run(["gocryptfs", "-init", "-q", "-passfile", str(self.passfile),
                        str(self.cipher)], env=env, check=True, capture_output=True)

    def argv(self) -> list[str]:
        return ["gocryptfs", "-fg", "-q", "-passfile", str(self.passfile), str(self.cipher),
                str(self.mnt)]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def write_file(path: Path, size: int, block: bytes) -> None:
    with open(path, "wb", buffering=0) as fh:
        for _ in range(size // len(block)):
            fh.write(block)


def read_file(path: Path) -> None:
    with open(path, "rb", buffering=0) as fh:
        while fh.read(MIB):
            pass


def create_small(root: Path, count: int) -> None:
    data = os.urandom(4096)
    for i in range(count):
        folder = root / "small" / f"d{i % 20:02d}"
        if i < 20:
            folder.mkdir(parents=True)
        with open(folder / f"f{i:05d}.bin", "wb") as fh:
            fh.write(data)


def ls_lr(root: Path) -> None:
    subprocess.run(["ls", "-lR", str(root)], stdout=subprocess.DEVNULL, check=True)


def measure(tool: Tool, size: int, small: int) -> dict[str, float]:
    block = os.urandom(MIB)
    got: dict[str, float] = {}
    with tool.mounted() as mnt:
        got["write"] = size / MIB / timed(lambda: write_file(mnt / "big.bin", size, block))
    _drop_caches()
    with tool.mounted() as mnt:
        got["read"] = size / MIB / timed(lambda: read_file(mnt / "big.bin"))
    with tool.mounted() as mnt:
        start = time.perf_counter()
        create_small(mnt, small)
        got["create"] = time.perf_counter() - start
        tool.stop()
        got["create+unmount"] = time.perf_counter() - start
    _drop_caches()
    with tool.mounted() as mnt:
        ls_lr(mnt)  # the first listing fills the kernel's cache of names
        got["ls"] = timed(lambda: ls_lr(mnt))
    got["rss"] = tool.peak
    return got


def vault_rss(work: Path, env: dict[str, str], files: int) -> float:
    """Peak RSS of a mount serving ``files`` small files while everything is listed and read."""
    (work / "big-vault").mkdir()
    tool = Cloudguard(work / "big-vault", env)
    bench.write_tree(tool.folder, files, max(1, files // 100), 512)
    subprocess.run([sys.executable, "-m", "cloudguard", "push", "--folder", str(tool.folder)],
                   env=tool.env, check=True, capture_output=True)
    for child in tool.folder.iterdir():  # the mount reads the vault, not this folder
        if child.name != ".cloudguard":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    with tool.mounted() as mnt:
        ls_lr(mnt)
        for path in mnt.rglob("*"):
            if path.is_file():
                path.read_bytes()
    return tool.peak


def run(args: argparse.Namespace) -> str:
    rclone = bench.find_rclone()
    env = bench.base_env(rclone)
    lines = ["## Mount (issue 12): scripts/bench_mount.py", "",
             f"{args.size // MIB} MiB file, {args.small:,} x 4 KiB files; local stores; "
             f"{time.strftime('%Y-%m-%d %H:%M')}", ""]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        tools: list[Tool] = [Cloudguard(work, env), RcloneCrypt(work, env, rclone)]
        if shutil.which("gocryptfs"):
            tools.append(Gocryptfs(work, env))
        else:
            lines.append("gocryptfs is not installed (Debian: gocryptfs): its column is empty.")
        results = {tool.name: measure(tool, args.size, args.small) for tool in tools}
        big_rss = vault_rss(work, env, args.files)
    names = [t.name for t in tools]
    lines += ["| measure | " + " | ".join(names) + " | target (cloudguard) |",
              "|---|" + "---:|" * len(names) + "---|"]
    cg = results["cloudguard"]
    rows = [("sequential write, MiB/s", "write", "{:.0f}", cg["write"] >= 200, ">= 200"),
            ("sequential read, MiB/s", "read", "{:.0f}", cg["read"] >= 300, ">= 300"),
            (f"{args.small:,} x 4 KiB created, s", "create", "{:.2f}", cg["create"] <= 2,
             "<= 2 s"),
            ("the same with the unmount, s", "create+unmount", "{:.2f}",
             cg["create+unmount"] <= 2, "<= 2 s (info)"),
            ("`ls -lR`, s", "ls", "{:.3f}", cg["ls"] <= 0.25, "<= 0.25 s"),
            ("peak RSS of the serving process, MiB", "rss", "{:.0f}", cg["rss"] <= 250,
             "<= 250 MiB")]
    for label, key, form, ok, target in rows:
        cells = " | ".join(form.format(results[n][key]) for n in names)
        lines.append(f"| {label} | {cells} | {target}: {'PASS' if ok else 'FAIL'} |")
    lines.append(f"| peak RSS serving {args.files:,} files, all listed and read, MiB | "
                 f"{big_rss:.0f} |" + " |" * (len(names) - 1) +
                 f" <= 250 MiB: {'PASS' if big_rss <= 250 else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1024 * MIB, help="bytes of the big file")
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true", help="a smoke run of under a minute")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.small, args.files = 16 * MIB, 100, 200
    try:
        report = run(args)
    except bench.BenchError as exc:
        print(f"bench_mount: {exc}", file=sys.stderr)
        return 1
    if args.out:
        Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
