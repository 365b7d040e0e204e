"""Load user code by reference: graphs (``file.py``, ``file.py:Name``, ``pkg.module:Name``) and
functions (metrics, LM factories) the same way, with one-line errors for every way it can fail.

Importing a graph file runs the user's own code, exactly as ``python file.py`` would;
artifacts, by contrast, are only ever read as data.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, cast

from bae.exceptions import BaeInputError
from bae.graph import Graph
from bae.node import Node

TRACEBACK_HINT = "rerun with --debug for the traceback"
REFERENCE_FORMS = "file.py, file.py:Name or package.module:Name"


@dataclass
class LoadedGraph:
    """A graph, the services its ``Dep`` parameters need, and the reference it was loaded from."""

    graph: Graph
    reference: str
    services: list[Any] = field(default_factory=list)

    @property
    def deps(self) -> dict[str, Any]:
        """The services as ``Graph.run`` keyword arguments (matched by type, so names are arbitrary)."""
        return {f"service_{i}": svc for i, svc in enumerate(self.services)}


def split_reference(reference: str) -> tuple[str, str | None]:
    """``a/b.py:Name`` -> (``a/b.py``, ``Name``); ``pkg.mod:Name`` -> (``pkg.mod``, ``Name``)."""
    target, sep, attribute = reference.rpartition(":")
    if not sep or "/" in attribute or "\\" in attribute or not attribute:
        return reference, None
    return target, attribute


def import_target(target: str) -> ModuleType:
    """Import a ``.py`` file by path or a module by dotted name, reporting failures in one line."""
    if target.endswith(".py") or "/" in target or "\\" in target:
        return _import_file(Path(target))
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        raise BaeInputError(
            f"cannot import module {target!r}: {exc}: check the name, and that it is installed or on PYTHONPATH"
        ) from exc
    except Exception as exc:
        raise BaeInputError(f"importing {target} failed: {_describe(exc)} ({TRACEBACK_HINT})") from exc


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise BaeInputError(f"graph file not found: {path}: check the path (a graph is {REFERENCE_FORMS})")
    resolved = path.resolve()
    name = resolved.stem if resolved.stem.isidentifier() else "bae_user_module"
    existing = sys.modules.get(name)
    if existing is not None and getattr(existing, "__file__", None) == str(resolved):
        return existing
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise BaeInputError(f"cannot import {path}: not a Python file (a graph is {REFERENCE_FORMS})")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # forward references resolve against the module's namespace
    sys.path.insert(0, str(resolved.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise BaeInputError(f"importing {path} failed: {_describe(exc)} ({TRACEBACK_HINT})") from exc
    finally:
        sys.path.remove(str(resolved.parent))
    return module


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError at line {exc.lineno}: {exc.msg}"
    return f"{type(exc).__name__}: {exc}"


def load_graph(reference: str) -> LoadedGraph:
    """The graph a reference names: a ``Graph``, a factory returning one, or a start ``Node`` class.

    A bare file or module uses its module-level ``graph``; its ``deps()`` function,
    when present, supplies the services for ``Dep`` parameters.
    """
    target, attribute = split_reference(reference)
    module = import_target(target)
    name = attribute or "graph"
    if not hasattr(module, name):
        raise BaeInputError(f"{target} has no {name!r}: {_name_one(module, target)}")
    graph = _as_graph(getattr(module, name), f"{target}:{name}", module)
    services = getattr(module, "deps", None)
    try:
        provided = list(services()) if callable(services) else []
    except Exception as exc:
        raise BaeInputError(f"{target}: deps() failed: {_describe(exc)} ({TRACEBACK_HINT})") from exc
    return LoadedGraph(graph=graph, reference=reference, services=provided)


def _defined_here(module: ModuleType, value: Any) -> bool:
    return getattr(value, "__module__", None) == module.__name__


def _name_one(module: ModuleType, target: str) -> str:
    """What to pass instead: the graphs and node classes the module defines."""
    graphs = [name for name, value in vars(module).items() if isinstance(value, Graph)]
    nodes = [
        name
        for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, Node) and _defined_here(module, value)
    ]
    found = [name for name in graphs + nodes if not name.startswith("_")]
    listing = f" (it defines: {', '.join(found)})" if found else ""
    return f"name a Graph, a Graph factory or a start Node class as {target}:Name{listing}"


def _as_graph(obj: Any, where: str, module: ModuleType) -> Graph:
    if isinstance(obj, Graph):
        return obj
    if isinstance(obj, type) and issubclass(obj, Node):
        return Graph(start=obj)
    if callable(obj) and not isinstance(obj, type):
        try:
            made = obj()
        except Exception as exc:
            raise BaeInputError(f"{where}() failed: {_describe(exc)} ({TRACEBACK_HINT})") from exc
        if isinstance(made, Graph):
            return made
        raise BaeInputError(f"{where}() returned {type(made).__name__}, not a Graph: return a bae Graph from it")
    target = where.rpartition(":")[0]
    raise BaeInputError(f"{where} is {type(obj).__name__}, not a Graph: {_name_one(module, target)}")


def load_function(reference: str, what: str) -> Callable[..., Any]:
    """A function named ``file.py:name`` or ``pkg.module:name`` (metrics, LM factories)."""
    target, attribute = split_reference(reference)
    if attribute is None:
        raise BaeInputError(f"{what} must be given as module:function or file.py:function, got {reference!r}")
    module = import_target(target)
    fn = getattr(module, attribute, None)
    if not callable(fn):
        functions = [
            name
            for name, value in vars(module).items()
            if callable(value) and not isinstance(value, type) and _defined_here(module, value) and name[0] != "_"
        ]
        raise BaeInputError(
            f"{what} {reference!r}: {target} has no function {attribute!r}"
            + (f" (it defines: {', '.join(functions[:12])})" if functions else "")
        )
    return cast(Callable[..., Any], fn)
