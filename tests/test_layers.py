"""The package layout is the architecture (docs/design.md, "Modules"): no module imports from a
layer above its own, the keyring is touched only by keys.py, and rclone is started only by the
transports."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cloudguard"

# lower number = lower layer; a module may import its own layer and those below
LAYERS: dict[str, int] = {
    "errors": 0, "limits": 0, "format": 0, "remotes": 0, "passphrase": 0, "settings": 0,
    "names": 0, "keycache": 0, "results": 0, "procs": 0,
    "state": 1, "rclone_run": 1, "chain": 1, "membership": 1, "keys": 1, "transport": 1,
    "rcd": 1, "memtransport": 1,
    "manifest": 2, "sync": 2, "trust": 2, "folding": 2, "ignore": 2, "doctor": 2, "layout": 2,
    "audit": 2,
    "session": 3, "held": 3, "reader": 3, "lock": 3,
    "ops": 4,
    "api": 5, "vault": 5,
    "cli": 6, "daemon": 6, "mount": 6, "__main__": 6, "__init__": 6,
}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    assert top in LAYERS, f"cloudguard.{module} has no layer in tests/test_layers.py"
    return LAYERS[top]


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def _is_module(parts: list[str]) -> bool:
    path = PACKAGE.joinpath(*parts)
    return path.is_dir() or path.with_suffix(".py").exists()


def _imports(name: str, tree: ast.Module) -> set[str]:
    """cloudguard modules ``name`` imports (relative or absolute), at any depth."""
    package = name.split(".")[:-1] if not (PACKAGE / name.replace(".", "/")).is_dir() \
        else name.split(".")
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
                if not node.module:  # "from . import x": x may be a module
                    out |= {".".join([*base, a.name]) for a in node.names
                            if _is_module([*base, a.name])}
                    continue
                out.add(mod)
            elif node.module and node.module.startswith("cloudguard."):
                out.add(node.module[len("cloudguard."):])
        elif isinstance(node, ast.Import):
            out |= {a.name[len("cloudguard."):] for a in node.names
                    if a.name.startswith("cloudguard.")}
    return {m for m in out if m}


def test_no_module_imports_from_a_higher_layer() -> None:
    wrong = []
    for name, tree in _modules().items():
        for target in _imports(name, tree):
            if _layer(target) > _layer(name):
                wrong.append(f"cloudguard.{name} imports cloudguard.{target}")
    assert not wrong, wrong


def test_keyring_only_in_keys_and_rclone_only_in_the_transports() -> None:
    for name, tree in _modules().items():
        text = ast.unparse(tree)
        if name != "keys":
            assert "import keyring" not in text and "import secretstorage" not in text, name
        if name not in ("transport", "rcd"):
            assert "rclone_binary" not in text and "self.binary" not in text, name


def test_no_module_is_much_over_500_lines() -> None:
    """Every module is about 500 lines at most (issue 10)."""
    for path in PACKAGE.rglob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= 510, f"{path.relative_to(PACKAGE)}: {lines}"
