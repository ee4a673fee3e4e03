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


# -- the import map ------------------------------------------------------------------------------------------
# The layers of docs/ARCHITECTURE.md, lowest first: a module may import from its own layer and the layers below,
# never from a layer above (lazy imports inside functions count as imports). A package (checks/, report/, ...)
# is one unit; the package root verifier/__init__.py is the floor (Python runs it before any verifier module).
LAYERS = (
    ("ground", {"verifier", "verifier.errors", "verifier.seeds", "verifier.paths", "verifier.choices",
                "verifier.results", "verifier.figures", "verifier.pool"}),
    ("models and data", {"verifier.models", "verifier.data"}),
    ("problems", {"verifier.model_file", "verifier.presets", "verifier.config"}),
    ("dynamics", {"verifier.dynamics", "verifier.limit"}),
    ("run state", {"verifier.context", "verifier.memory"}),
    ("checks", {"verifier.checks"}),
    ("results readers", {"verifier.report", "verifier.gate"}),
    ("running", {"verifier.runner", "verifier.outputs", "verifier.testing"}),
    ("surveys and tracking", {"verifier.survey", "verifier.tracking"}),
    ("entry points", {"verifier.cli", "verifier.pytest_plugin", "verifier.__main__"}),
)
ROOT_LAZY_EXPORTS = "__getattr__"  # verifier/__init__.py's lazy from_module/from_loss: the public facade


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_map() -> dict[str, set[str]]:
    """module -> the verifier modules it imports (static, from the AST; relative imports resolved; ``from pkg
    import sub`` is an arrow to the submodule, ``from pkg import name`` one to the package)."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = set()
        if name == "verifier":  # the facade's lazy re-exports are not the floor's dependencies
            skip = {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == ROOT_LAZY_EXPORTS
                    for n in ast.walk(f)}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                prefix = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
                for alias in node.names:
                    full = f"{prefix}.{alias.name}"
                    deps.add(full if full in modules else prefix)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        edges[name] = {d for d in deps if d in modules and d != name}
    return edges


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    units = {_unit(m) for m in _import_map()}
    placed = set().union(*(units_ for _, units_ in LAYERS))
    assert units == placed, (units - placed, placed - units)


def test_no_import_circles_and_no_arrow_up_a_layer():
    edges = _import_map()
    layer = {unit: k for k, (_, units) in enumerate(LAYERS) for unit in units}
    up = sorted({(m, d) for m, ds in edges.items() for d in ds if layer[_unit(d)] > layer[_unit(m)]})
    assert not up, "imports from a lower layer up to a higher one: " + ", ".join(f"{a} -> {b}" for a, b in up)
    units: dict[str, set[str]] = {}
    for m, ds in edges.items():
        units.setdefault(_unit(m), set()).update(_unit(d) for d in ds if _unit(d) != _unit(m))
    assert not _cycles(units), _cycles(units)
    assert not _cycles(edges), _cycles(edges)


# -- one judgement type --------------------------------------------------------------------------------------

def test_every_judge_returns_a_judgement():
    """A function named judge or judge_* (and the hunts' measurements) returns a Judgement (or a list of them),
    never a positional (verdict, reason, message) tuple; and no tuple-combining helper (the old decide/combine)
    comes back."""
    wrong, callers = [], []
    for path in sorted(PKG.rglob("*.py")):
        judging = path.parent.name in ("checks", "survey", "tracking")  # dynamics' step-size judge is no verdict
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if judging and isinstance(node, ast.FunctionDef) and (node.name == "judge" or node.name.startswith("judge_")):
                returns = ast.unparse(node.returns) if node.returns else ""
                if "Judgement" not in returns:
                    wrong.append(f"{path.relative_to(PKG)}:{node.name} -> {returns or '?'}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("decide", "combine")
                    ):
                callers.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert not wrong and not callers, (wrong, callers)


def test_registered_functions_are_named_after_their_claim():
    from verifier.checks import REGISTRY

    for spec in REGISTRY.values():
        assert spec.func.__name__ == "check_" + spec.id.replace("-", "_").replace(".", ""), spec.func.__name__


# -- the device ----------------------------------------------------------------------------------------------
# Where a device name may become a torch.device: the three configs (RunConfig, SurveyConfig, TrackConfig: once
# each, `torch_device`), presets.py (the library boundary, `build_model`/`place` given a name) and the pytest
# plugin's --verifier-device (checked when the session starts).
RESOLVES_DEVICES = {"config.py", "survey/config.py", "tracking/demo/track_config.py", "presets.py", "pytest_plugin.py"}


def test_the_device_is_resolved_once_on_the_config():
    calls = set()
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "resolve_device":
                calls.add(str(path.relative_to(PKG)))
    assert calls <= RESOLVES_DEVICES, calls - RESOLVES_DEVICES
    from dataclasses import replace

    from verifier.config import RunConfig

    config = RunConfig(device="auto")
    assert config.torch_device.type in ("cpu", "cuda") and "torch_device" not in config.as_dict()
    assert replace(config, device="cpu").torch_device.type == "cpu"
