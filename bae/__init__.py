"""bae: type-driven agent graphs, compiled with DSPy.

Errors, markers and results import eagerly; graphs and nodes (Pydantic) and the names
that need DSPy load on first use, so ``import bae`` and the CLI's fast paths stay fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from bae import telemetry as _telemetry  # noqa: F401  (registers OpenTelemetry tracing as an observer of every run)
from bae.exceptions import BaeArtifactError, BaeError, BaeGraphError, BaeInputError, BaeLMError, BaeParseError
from bae.lm import LM
from bae.markers import Bind, Context, Dep
from bae.observe import Observer
from bae.result import CallRecord, GraphResult
from bae.version import __version__

if TYPE_CHECKING:  # for type checkers: at run time these load on first use (_LAZY, below); keep the two in step
    from bae.dspy_backend import DSPyBackend as DSPyBackend
    from bae.evaluator import Evaluation as Evaluation
    from bae.evaluator import evaluate as evaluate
    from bae.graph import Graph as Graph
    from bae.graph import Problem as Problem
    from bae.node import Node as Node
    from bae.optimized_lm import CompiledGraph as CompiledGraph
    from bae.optimized_lm import OptimizedLM as OptimizedLM
    from bae.optimized_lm import create_optimized_lm as create_optimized_lm
    from bae.predictors import node_to_signature as node_to_signature

_LAZY = {
    "Graph": "bae.graph",
    "Problem": "bae.graph",
    "Node": "bae.node",
    "DSPyBackend": "bae.dspy_backend",
    "node_to_signature": "bae.predictors",
    "CompiledGraph": "bae.optimized_lm",
    "OptimizedLM": "bae.optimized_lm",
    "create_optimized_lm": "bae.optimized_lm",
    "evaluate": "bae.evaluator",
    "Evaluation": "bae.evaluator",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bae' has no attribute {name!r}")


__all__ = [
    "LM", "Bind", "BaeArtifactError", "BaeError", "BaeGraphError", "BaeInputError", "BaeLMError",
    "BaeParseError", "CallRecord", "Context", "Dep", "GraphResult", "Observer", "__version__", *_LAZY,
]  # fmt: skip
