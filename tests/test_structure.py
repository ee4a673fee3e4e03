"""House structure: no import circle between config.py and presets.py, and every check module is registered
explicitly in verifier/checks/__init__.py (no package scan)."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "verifier"


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included), as written."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
            out.update("." * node.level + (node.module + "." if node.module else "") + a.name for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_presets_and_choices_never_import_config():
    for name in ("presets.py", "choices.py"):
        assert not {m for m in _imported_modules(PKG / name) if m.lstrip(".").split(".")[0] == "config"}, name


def test_every_check_module_is_registered_explicitly():
    init = (PKG / "checks" / "__init__.py").read_text()
    assert "pkgutil" not in init and "import_module" not in init
    registering = {p.stem for p in (PKG / "checks").glob("*.py") if "@register(" in p.read_text()}
    imported = {m.rsplit(".", 1)[-1] for m in _imported_modules(PKG / "checks" / "__init__.py")}
    assert registering and registering <= imported, registering - imported
