"""One Settings object (issue 10): every variable is read in one place, and every bad value is
refused with one line naming it (exit 2), never silently replaced by a default."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import cg, cg_proc

from cloudguard.errors import UsageError
from cloudguard.settings import VARIABLES, Settings, settings

BAD = {
    "CLOUDGUARD_KEYSTORE": "vault",
    "CLOUDGUARD_RCLONE": "/nonexistent/rclone",
    "CLOUDGUARD_STALL_SECONDS": "0",
    "CLOUDGUARD_GC_GRACE": "soon",
    "CLOUDGUARD_MASS_DELETE_PERCENT": "150",
    "CLOUDGUARD_MASS_DELETE_FILES": "-3",
    "CLOUDGUARD_ROTATE_DAYS": "monthly",  # was silently taken as 30
    "CLOUDGUARD_LOCK_WAIT": "nan",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_value_is_one_line_naming_the_variable(name: str, local_remote: str,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    cg("init", str(folder), "--remote", local_remote)
    monkeypatch.setenv(name, BAD[name])
    result = cg_proc("doctor", "--folder", str(folder))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1 and name in lines[0], lines


def test_every_variable_has_a_default_and_is_read_once() -> None:
    assert Settings.from_env({}) == Settings()
    got = Settings.from_env({
        "CLOUDGUARD_STALL_SECONDS": "5", "CLOUDGUARD_MASS_DELETE_PERCENT": "20",
        "CLOUDGUARD_MASS_DELETE_FILES": "7", "CLOUDGUARD_LOCK_WAIT": "0",
        "CLOUDGUARD_KEYSTORE": " File ", "CLOUDGUARD_HOME": "~/x"})
    assert (got.stall_seconds, got.mass_delete_share, got.mass_delete_files, got.lock_wait,
            got.keystore) == (5.0, 0.2, 7, 0.0, "file")
    assert got.home == Path("~/x").expanduser()
    assert settings() is settings()  # cached while the environment stays the same
    with pytest.raises(UsageError, match="CLOUDGUARD_GC_GRACE"):
        Settings.from_env({"CLOUDGUARD_GC_GRACE": "-1"})
    assert len(VARIABLES) == len(set(VARIABLES))


def test_no_module_but_settings_and_keys_reads_the_environment() -> None:
    """The passphrases are secrets, read only by keys.py when needed; everything else goes
    through settings.py (rclone's RCLONE_* and the daemon's systemd variables excepted)."""
    import ast

    package = Path(__file__).resolve().parents[1] / "cloudguard"
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.startswith("CLOUDGUARD_") and node.value in VARIABLES:
                assert path.name == "settings.py", f"{path.relative_to(package)} names " \
                                                   f"{node.value}"
