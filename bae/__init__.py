"""bae: type-driven agent graphs, compiled with DSPy.

The light names (nodes, markers, graphs, results, errors) import eagerly; names that
need DSPy load on first use, so ``import bae`` and the CLI's fast paths stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from bae.exceptions import BaeArtifactError, BaeError, BaeGraphError, BaeInputError, BaeLMError, BaeParseError
from bae.graph import Graph, Problem
from bae.lm import LM
from bae.markers import Bind, Context, Dep
from bae.node import Node
from bae.result import CallRecord, GraphResult

__version__ = "0.1.0"

_LAZY = {
    "DSPyBackend": "bae.dspy_backend",
    "node_to_signature": "bae.compiler",
    "CompiledGraph": "bae.compiler",
    "OptimizedLM": "bae.optimized_lm",
    "create_optimized_lm": "bae.optimized_lm",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bae' has no attribute {name!r}")


__all__ = [
    "LM", "Bind", "BaeArtifactError", "BaeError", "BaeGraphError", "BaeInputError", "BaeLMError",
    "BaeParseError", "CallRecord", "Context", "Dep", "Graph", "GraphResult", "Node", "Problem",
    "__version__", *_LAZY,
]  # fmt: skip
