"""scripts/test.sh and scripts/quickstart.sh on a stock Debian (issue 9 item 1): both work in
the virtual environment .venv (scripts/venv.sh), check for Python >= 3.11 with a clear
message, and reuse a good .venv without running pip.

Running the scripts themselves takes a fresh pip install; these tests drive the functions of
scripts/venv.sh with fake interpreters instead, and never touch the repo's own .venv.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
BASH = shutil.which("bash") or "/bin/bash"
SHELL_SCRIPTS = ["test.sh", "quickstart.sh", "venv.sh", "bench-keyring.sh"]


def fake(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def fake_python(path: Path, version: str, log: Path, venv_works: bool = True,
                pip_works: bool = False) -> Path:
    """A python3 that says it is ``version`` and logs its arguments. '-m venv DIR' makes DIR
    with a copy of this fake as its python (or fails, as on Debian without python3-venv);
    '-m pip install' installs nothing (and fails unless pip_works); anything else runs the
    real interpreter."""
    major, minor = version.split(".")
    venv = ('mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; exit 0' if venv_works
            else "echo 'ensurepip is not available' >&2; exit 1")
    return fake(path, f'''echo "$*" >> "{log}"
case "$*" in
  *sys.version_info\\ \\<*) [ {major} -gt 3 ] || [ {minor} -ge 11 ]; exit $? ;;
  *version_info*) echo {version}; exit 0 ;;
  "-m pip install"*) exit {0 if pip_works else 1} ;;
  "-m venv "*) {venv} ;;
esac
exec "{sys.executable}" "$@"
''')


def venv_sh(script: str, cwd: Path, path: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Source scripts/venv.sh in bash and run ``script``, with PATH = ``path``."""
    return subprocess.run([BASH, "-c", f'set -euo pipefail; . "{SCRIPTS}/venv.sh"; {script}'],
                          cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": path, "HOME": os.environ.get("HOME", "/"), **env})


@pytest.mark.parametrize("name", SHELL_SCRIPTS)
def test_scripts_parse(name: str) -> None:
    proc = subprocess.run([BASH, "-n", str(SCRIPTS / name)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr


def test_scripts_install_only_into_the_venv() -> None:
    """PEP 668: no 'pip install' with whatever python3 is on PATH, only with the venv's."""
    for name in ("test.sh", "quickstart.sh"):
        text = (SCRIPTS / name).read_text()
        code = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
        assert "pip install" not in code and "python3 -m" not in code, name
        assert ". scripts/venv.sh" in text and "ensure_venv .venv" in text, name
    assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()


def test_python_check_names_the_version_it_found(tmp_path: Path) -> None:
    log = tmp_path / "log"
    old = fake_python(tmp_path / "bin" / "python3", "3.9", log)
    proc = venv_sh("check_python python3", tmp_path, f"{old.parent}:/usr/bin:/bin")
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("cloudguard needs Python >= 3.11, but python3 is Python "
                                   "3.9; install a newer python3 or set "
                                   "PYTHON=/path/to/python3.11")
    proc = venv_sh("check_python python3", tmp_path, "/nonexistent")
    assert proc.returncode == 1
    assert 'but "python3" does not run' in proc.stderr and "PYTHON=" in proc.stderr
    proc = venv_sh(f'check_python "{sys.executable}"', tmp_path, "/usr/bin:/bin")
    assert proc.returncode == 0 and proc.stderr == ""


def test_too_old_python_stops_before_a_venv_is_made(tmp_path: Path) -> None:
    log = tmp_path / "log"
    old = fake_python(tmp_path / "bin" / "python3", "3.10", log)
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    proc = venv_sh("ensure_venv .venv test", tmp_path, f"{old.parent}:/usr/bin:/bin")
    assert proc.returncode == 1 and "needs Python >= 3.11" in proc.stderr
    assert "Python 3.10" in proc.stderr
    assert not (tmp_path / ".venv").exists()
    assert "-m venv" not in log.read_text()


def test_a_good_venv_is_reused_without_pip(tmp_path: Path) -> None:
    """CI and re-runs: the stamp matches pyproject.toml, so nothing is installed."""
    log = tmp_path / "log"
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    venv_python = fake_python(tmp_path / ".venv" / "bin" / "python", "3.11", log)
    stamp = subprocess.run(["cksum"], input=(tmp_path / "pyproject.toml").read_text(),
                           capture_output=True, text=True, check=True).stdout
    (tmp_path / ".venv" / ".cloudguard-stamp-test").write_text(stamp)
    (tmp_path / ".venv" / ".cloudguard-stamp").write_text(stamp)
    for extra in ("test", ""):
        proc = venv_sh(f'ensure_venv .venv {extra}; echo "$VENV_PYTHON"; echo "$PATH"',
                       tmp_path, "/usr/bin:/bin", PYTHON="/nonexistent/python3")
        assert proc.returncode == 0, proc.stderr
        assert "reusing .venv" in proc.stderr
        venv, path = proc.stdout.splitlines()
        assert venv == ".venv/bin/python"
        assert path.split(":")[0] == str(venv_python.parent)  # rclone, cloudguard: the venv's
    assert "pip" not in log.read_text()

    # pyproject.toml changed: the stamp no longer matches, so pip runs (here: fails loudly)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'y'\n")
    proc = venv_sh("ensure_venv .venv test", tmp_path, "/usr/bin:/bin",
                   PYTHON=str(venv_python))
    assert "pip install -e '.[test]'" in proc.stderr
    assert "-m pip install" in log.read_text()


def test_a_venv_of_a_too_old_python_is_made_again(tmp_path: Path) -> None:
    log = tmp_path / "log"
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    fake_python(tmp_path / ".venv" / "bin" / "python", "3.9", log)
    stamp = subprocess.run(["cksum"], input="[project]\n", capture_output=True, text=True,
                           check=True).stdout
    (tmp_path / ".venv" / ".cloudguard-stamp-test").write_text(stamp)
    python = fake_python(tmp_path / "bin" / "python3", "3.12", log, pip_works=True)
    proc = venv_sh("ensure_venv .venv test", tmp_path, f"{python.parent}:/usr/bin:/bin")
    assert proc.returncode == 0, proc.stderr
    assert "creating .venv with python3" in proc.stderr
    assert "echo 3.12" in (tmp_path / ".venv" / "bin" / "python").read_text()
    assert "-m pip install -q --disable-pip-version-check -e .[test]" in log.read_text()
    assert (tmp_path / ".venv" / ".cloudguard-stamp-test").read_text() == stamp


def test_missing_venv_module_installs_python3_venv_with_apt(tmp_path: Path) -> None:
    """Debian's python3 lacks ensurepip until python3-venv is installed; apt-get is asked
    for it, and if that fails too the message says what to install."""
    log = tmp_path / "log"
    bin_dir = tmp_path / "bin"
    fake_python(bin_dir / "python3", "3.11", log, venv_works=False)
    fake(bin_dir / "apt-get", f'echo "apt-get $*" >> "{log}"; exit 100\n')
    fake(bin_dir / "sudo", 'exec "$@"\n')
    fake(bin_dir / "id", "echo 0\n")
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    path = f"{bin_dir}:/usr/bin:/bin"
    proc = venv_sh("ensure_venv .venv test", tmp_path, path)
    assert proc.returncode == 1
    calls = log.read_text()
    assert "-m venv .venv" in calls
    assert "apt-get install -y -qq --no-install-recommends python3-venv python3.11-venv" in calls
    assert "python3 -m venv failed: installing python3-venv" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        'cannot create a virtual environment with "python3 -m venv"; install python3-venv '
        "(Debian, Ubuntu) or the venv package of your distribution")
    assert not (tmp_path / ".venv").exists()  # no half-made venv left to be reused


def test_quickstart_refuses_unknown_arguments() -> None:
    proc = subprocess.run([BASH, str(SCRIPTS / "quickstart.sh"), "--bogus"],
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 2 and "usage: scripts/quickstart.sh [--keep]" in proc.stderr
