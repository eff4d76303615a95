"""Borrow tests/conftest.py's fixtures (isolated env, local_remote) for the attack runs."""
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[3]
for _p in ("tests/format", "tests/trust", "tests"):
    sys.path.insert(0, str(_ROOT / _p))
exec(compile((_ROOT / "tests/conftest.py").read_text(), str(_ROOT / "tests/conftest.py"), "exec"))
