"""The layers of bae, enforced: a module imports only from its own layer or the layers below.

Bottom to top: core (the graph model, errors, artifacts as data) -> DSPy (signatures, predictors,
backends, the embedded engine) -> runtime (loading a version, ``OptimizedLM``) -> compile (datasets,
metrics, scoring, optimizers; it scores with the runtime, which never imports training) ->
application (runner, serving, bundles, ``bae.evaluate``) -> ``bae_cli``. Every import counts,
also one inside a function: a lazy import is still a dependency, and a cycle through one is still
a cycle, and so does a relative one. ``bae/__init__.py`` is the public facade over every layer, so
only the CLI may take names from it (bae's version lives in the leaf module ``bae.version``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import bae

ROOT = Path(__file__).resolve().parent.parent
LAYERS: dict[str, tuple[str, ...]] = {
    "core": (
        "version", "markers", "exceptions", "wording", "jsontext", "redaction", "result", "node", "lm", "resolve",
        "observe", "run", "graph", "usage", "executor", "ray_session", "ray_executor", "inputs", "artifacts",
        "freshness", "loader", "compiled_version", "runlog", "telemetry", "recording", "anchors",
    ),
    "dspy": (
        "adapter", "predictors", "lm_failures", "confidence", "dspy_backend", "retrieval", "local", "lm_specs",
        "testing", "decisions",
    ),
    "runtime": ("optimized_lm",),
    "compile": (
        "dataset", "examples", "metrics", "intervals", "scoring", "dev_coverage", "optimizer", "hidden_compile",
        "compiler",
    ),
    "application": ("runner", "serving", "bundle", "evaluation", "gates", "evaluator", "review"),
}  # fmt: skip
RANK = {name: rank for rank, modules in enumerate(LAYERS.values()) for name in modules}
FACADE_RANK = len(LAYERS)  # ``bae`` itself: it re-exports every layer, so only the CLI is above it
CLI_RANK = len(LAYERS) + 1
# The one upward import: ``Graph.run`` without an LM builds the default ``DSPyBackend``, inside the call.
ALLOWED_UPWARD = {("graph", "dspy_backend")}


def unit(module: str) -> str | None:
    """``bae.local.engine`` -> ``local``; ``bae_cli.app`` -> ``bae_cli``; ``bae`` -> ``bae`` (the facade)."""
    parts = module.split(".")
    if parts[0] == "bae_cli":
        return "bae_cli"
    if parts[0] != "bae":
        return None
    return parts[1] if len(parts) > 1 else "bae"


def rank_of(name: str) -> int:
    return {"bae_cli": CLI_RANK, "bae": FACADE_RANK}.get(name, RANK.get(name, -1))


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def package_of(path: Path) -> str:
    """The package a source file's relative imports start from: ``bae/local/engine.py`` -> ``bae.local``."""
    return ".".join(path.resolve().relative_to(ROOT).parent.parts)


def bae_imports(path: Path, package: str | None = None) -> set[str]:
    """Every bae module ``path`` imports, at the top or inside a function, relative imports resolved
    against ``package`` (default: the file's own). A name taken from a package that is not a module
    of it counts as the package: ``from bae import __version__`` imports the facade ``bae``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = (package if package is not None else package_of(path)).split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            found.update(f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names)
    return {name for name in found if name.split(".")[0] in ("bae", "bae_cli")}


def sources() -> list[tuple[str, Path]]:
    """(unit, file) for every source file of the library and the CLI but the facade."""
    files = [p for p in (ROOT / "bae").rglob("*.py") if p != ROOT / "bae" / "__init__.py"]
    named = [(unit("bae." + ".".join(p.relative_to(ROOT / "bae").with_suffix("").parts)), p) for p in files]
    return [(name, p) for name, p in named if name] + [("bae_cli", p) for p in (ROOT / "bae_cli").rglob("*.py")]


def is_upward(name: str, imported: str) -> bool:
    """Whether unit ``name`` importing module ``imported`` reaches above its own layer."""
    target = unit(imported)
    if target is None or target == name or (name, target) in ALLOWED_UPWARD:
        return False
    return rank_of(target) > rank_of(name)


def violations() -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {imported} (a higher layer)"
        for name, path in sources()
        for imported in sorted(bae_imports(path))
        if is_upward(name, imported)
    ]


def test_every_module_has_a_layer() -> None:
    unplaced = sorted({name for name, _ in sources() if name != "bae_cli" and name not in RANK})
    assert not unplaced, f"place these modules in a layer of tests/test_architecture.py: {unplaced}"


def test_no_module_imports_a_higher_layer() -> None:
    assert violations() == []


def test_the_check_sees_lazy_imports(tmp_path: Path) -> None:
    """The walk must find an import inside a function, the kind that hid the old cycle."""
    source = tmp_path / "mod.py"
    source.write_text("def load():\n    from bae.optimizer import collect_examples\n    import bae.runner\n")
    assert bae_imports(source) == {"bae.optimizer", "bae.runner"}


def test_the_check_resolves_relative_imports(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("from .engine import local_lm\nfrom . import decoding\nfrom ..runner import Runner\n")
    assert bae_imports(source, package="bae.local") == {"bae.local.engine", "bae.local.decoding", "bae.runner"}
    source.write_text("from .runner import Runner\nfrom . import artifacts\n")
    assert bae_imports(source, package="bae") == {"bae.runner", "bae.artifacts"}
    assert is_upward("node", "bae.runner")  # what `from .runner import ...` in bae/node.py is


def test_a_name_from_the_facade_is_an_import_of_the_facade(tmp_path: Path) -> None:
    """``bae`` re-exports every layer: taking ``__version__`` (or anything else) from it is an upward import
    for every library module; a module taken from it is that module."""
    source = tmp_path / "mod.py"
    source.write_text("from bae import __version__, artifacts\n")
    assert bae_imports(source, package="bae") == {"bae", "bae.artifacts"}
    assert all(is_upward(name, "bae") for name in RANK)
    assert not is_upward("bae_cli", "bae") and not is_upward("telemetry", "bae.version")


@pytest.mark.parametrize("module", ["bae.compiler", "bae.optimizer", "bae.optimized_lm", "bae.graph"])
def test_seed_module_names_stay_importable(module: str) -> None:
    __import__(module)


def test_the_seeds_node_to_signature_is_still_in_bae_compiler() -> None:
    from bae.compiler import node_to_signature
    from bae.predictors import node_to_signature as where_it_lives

    assert node_to_signature is where_it_lives


def _trees() -> list[tuple[Path, ast.AST]]:
    return [(path, ast.parse(path.read_text(), str(path))) for _, path in sources()]


def _is_environ(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" and ast.unparse(node.value) == "os"


def environment_writes(tree: ast.AST) -> list[int]:
    """Lines that write the process environment: ``os.environ[...] = / del``, its mutating methods, ``putenv``."""
    lines = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else []
        targets += [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else []
        if any(isinstance(t, ast.Subscript) and _is_environ(t.value) for t in targets):
            lines.append(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, owner = node.func.attr, node.func.value
            if (_is_environ(owner) and method in ("setdefault", "update", "pop", "popitem", "clear")) or (
                ast.unparse(owner) == "os" and method in ("putenv", "unsetenv")
            ):
                lines.append(node.lineno)
    return lines


# Ray takes its own settings from the environment only (its processes inherit it): the Ray session sets
# its RAY_* variables in this one function, which refuses any other name, and restores them when it ends.
RAY_VARIABLES = ("bae/ray_session.py", "_set_ray_variables")


def test_bae_never_writes_the_environment() -> None:
    """Settings travel as arguments (``LMSettings``, ``--debug``'s flag, ``record_content``): the CLI reads the
    environment once, at the edge, and no part of bae writes it, but for Ray's own variables (``RAY_VARIABLES``)."""
    written = []
    for path, tree in _trees():
        allowed: set[int] = set()
        if str(path.relative_to(ROOT)) == RAY_VARIABLES[0]:
            function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == RAY_VARIABLES[1])
            allowed = set(environment_writes(function))
        written += [f"{path.relative_to(ROOT)}:{line}" for line in environment_writes(tree) if line not in allowed]
    assert written == []


def test_only_ray_variables_are_set_for_ray() -> None:
    from bae.ray_session import _set_ray_variables

    with pytest.raises(ValueError, match="PATH"):
        _set_ray_variables({"PATH": "/nowhere"})


def test_the_environment_check_sees_each_kind_of_write() -> None:
    code = "import os\nos.environ['A'] = '1'\nos.environ.setdefault('B', '2')\nos.putenv('C', '3')\n"
    code += "x = os.environ.get('D')\n"
    assert environment_writes(ast.parse(code)) == [2, 3, 4]


def test_telemetry_uses_no_private_part_of_another_object() -> None:
    """Tracing is a run observer: it sees runs through their events, never through ``Graph``'s (or any other
    object's) private methods."""
    tree = ast.parse((ROOT / "bae" / "telemetry.py").read_text())
    private = [
        f"{ast.unparse(node)} (line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and ast.unparse(node.value) != "self"
    ]
    assert private == []
    assert "bae.graph" not in bae_imports(ROOT / "bae" / "telemetry.py")


def test_one_module_resolves_a_version_directory() -> None:
    """Which directory a compiled root or a ``--version`` names is decided in one place: ``artifacts.locate``,
    called only by ``bae.compiled_version``; the file that marks a version (``MANIFEST``) is known only to
    ``bae.artifacts``."""
    callers, marks = [], []
    for path, tree in _trees():
        for node in ast.walk(tree):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            if name in ("locate", "read_manifest", "resolve_version_dir") and path.name != "artifacts.py":
                callers.append(path.name)
            if name == "MANIFEST" and path.name != "artifacts.py":
                marks.append(path.name)
    assert set(callers) <= {"compiled_version.py"} and marks == []


def documented_api() -> set[str]:
    """The names the README's "Public API" bullet lists."""
    readme = (ROOT / "README.md").read_text()
    bullet = readme[readme.index("- **Public API**") :].split("\n- ")[0]
    return set(re.findall(r"`([A-Za-z_]+)`", bullet)) - {"py"}


def test_public_names_are_exactly_the_documented_ones() -> None:
    assert set(bae.__all__) == documented_api()
    for name in bae.__all__:
        assert getattr(bae, name) is not None


def test_type_checkers_see_every_lazy_name() -> None:
    """Each name ``bae`` loads on first use is also imported under TYPE_CHECKING, from the same
    module, so type checkers see the real class instead of ``Any`` from ``__getattr__``."""
    tree = ast.parse((ROOT / "bae" / "__init__.py").read_text())
    guarded = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    typed = {a.name: i.module for i in guarded.body if isinstance(i, ast.ImportFrom) for a in i.names}
    assert typed == bae._LAZY
    assert (ROOT / "bae" / "py.typed").exists()
