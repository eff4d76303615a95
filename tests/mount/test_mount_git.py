"""A few of git's own t/ scripts with --root on the mount (issue 12, "Real programs").

git's test suite is in no binary package: scripts/git_t.sh fetches Debian's source package
of the installed git and builds the helpers t/test-lib.sh needs beside it, then prints the
folder to put in CLOUDGUARD_GIT_T; scripts/test.sh does that (and installs make, gcc and
zlib's headers for it), so CI runs these: marked ``fuse``, a skip there is a failure. The
whole addition measured about 1.5 minutes of CI on 2 cores (docs/benchmarks.md). Each
script runs against the installed git (GIT_TEST_INSTALLED), with its trash folder on the
mount (--root); --debug keeps the trash. t3600-rm and t7001-mv, with their thousands of
unlinks and renames, took over 10 minutes while each name operation was a commit of its own;
staged as journal rows and committed in batches they take 19-27 s and 9-12 s here."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import fuse_available
from helpers import cg

GIT_T = os.environ.get("CLOUDGUARD_GIT_T", "")
SCRIPTS = ["t0010-racy-git.sh", "t2200-add-update.sh", "t3000-ls-files-others.sh",
           "t3600-rm.sh", "t7001-mv.sh"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.fuse,  # under CI=true a skip is a failure (conftest.py)
    pytest.mark.skipif(not fuse_available(), reason="needs /dev/fuse"),
    pytest.mark.skipif(not (GIT_T and (Path(GIT_T) / "t" / "helper" / "test-tool").exists()),
                       reason="set CLOUDGUARD_GIT_T to the folder scripts/git_t.sh prints"),
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_gits_own_test_scripts_pass_on_the_mount(script: str, local_remote: str,
                                                 tmp_path: Path) -> None:
    from test_mount import mounted

    git = shutil.which("git")
    assert git is not None
    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    mnt = tmp_path / "mnt"
    with mounted(folder, mnt, tmp_path / "mount.log"):
        run = subprocess.run(
            [f"./{script}", f"--root={mnt / 'trash'}", "--debug"],
            cwd=Path(GIT_T) / "t", capture_output=True, text=True, timeout=600,
            env={**os.environ, "GIT_TEST_INSTALLED": str(Path(git).parent)})
        tail = (run.stdout + run.stderr)[-3000:]
        assert run.returncode == 0, tail
        assert "# passed all" in run.stdout, tail
