"""A compiled version opened once: located, read and verified, and matched to the graph it serves.

Every command and ``bae.evaluate`` open a version through ``open_compiled`` (and the runtime's
``bae.optimized_lm.open_version``, which adds the loaded predictors): the directory is resolved once
(``artifacts.locate``), every file the manifest lists is read and checked against it once, the graph is
the one given or the one recorded at compile, and which predictors that graph can use is decided once
(``bae.freshness``). Nothing here imports DSPy, so ``bae inspect`` opens a version at the speed of
reading JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bae import artifacts
from bae.exceptions import BaeInputError
from bae.freshness import MISSING, STALE, PredictorStatus, predictor_statuses
from bae.graph import Graph
from bae.loader import LoadedGraph, load_graph, split_reference

Key = tuple[str, str]
GraphSource = Graph | LoadedGraph | str | None


@dataclass(frozen=True)
class CompiledVersion:
    """A verified version and the graph it is for: which of its predictors that graph can use."""

    root: Path | None  # the compiled root it belongs to (None: a version dir outside any root)
    path: Path
    manifest: dict[str, Any]
    files: list[artifacts.FileCheck]  # every file the manifest lists, read and verified (JSON kept)
    unexpected: list[str]  # files the manifest does not list: reported, never loaded
    graph: LoadedGraph
    predictors: list[PredictorStatus]

    @property
    def name(self) -> str:
        """The version's name as its manifest records it (a copied or renamed dir keeps its name)."""
        return str(self.manifest.get("version", self.path.name))

    @property
    def invalid(self) -> list[artifacts.FileCheck]:
        return [check for check in self.files if not check.ok]

    def file(self, rel: str) -> artifacts.FileCheck:
        """One of the version's files, as it was read and verified."""
        return next(check for check in self.files if check.path == rel)

    def document(self, rel: str) -> Any:
        """The verified JSON of one of the version's files."""
        return self.file(rel).document

    def prompts(self) -> Any:
        """Each predictor's prompt (``prompts.json``), if the version has it."""
        return self.document(artifacts.PROMPTS) if artifacts.PROMPTS in self.manifest["files"] else None

    def keys(self, status: str) -> set[Key]:
        return {p.key for p in self.predictors if p.status == status}

    @property
    def stale(self) -> set[Key]:
        return self.keys(STALE)

    @property
    def missing(self) -> set[Key]:
        return self.keys(MISSING)

    @property
    def recorded_score(self) -> float | None:
        """The optimized dev score measured at compile."""
        value = (self.manifest.get("scores") or {}).get("optimized")
        return value if isinstance(value, int | float) else None

    def stale_warnings(self) -> list[str]:
        """One line per predictor the version holds but the graph cannot use as compiled: the warning every
        command gives before it runs a version."""
        return [
            f"{self.name}: {node} ({kind}): its prompt changed since compile: using a naive predictor (stale)"
            for node, kind in sorted(self.stale)
        ]


def recorded_graph(manifest: dict[str, Any], version_dir: Path) -> LoadedGraph:
    """The graph a version was compiled from. A recorded file path is tried from the current directory,
    then from the project the compiled root sits in (``<project>/compiled/vN``), so artifacts work from either."""
    recorded = (manifest.get("graph") or {}).get("reference")
    if not recorded:
        raise BaeInputError("no graph given, and the compiled version records none: pass GRAPH (file.py[:Name])")
    target, attribute = split_reference(recorded)
    if target.endswith(".py") and not Path(target).exists():
        beside = version_dir.resolve().parent.parent / target
        if beside.exists():
            return load_graph(f"{beside}:{attribute}" if attribute else str(beside))
    return load_graph(recorded)


def as_loaded(graph: Graph | LoadedGraph | str) -> LoadedGraph:
    """A graph as the commands use it: with its reference and its module's ``deps()`` services."""
    if isinstance(graph, LoadedGraph):
        return graph
    if isinstance(graph, str):
        return load_graph(graph)
    if isinstance(graph, Graph):
        return LoadedGraph(graph=graph, reference=f"{graph.start.__module__}:{graph.start.__name__}")
    raise BaeInputError(f"expected a Graph, a LoadedGraph or a graph reference, got {type(graph).__name__}")


def open_compiled(
    path: str | Path, *, graph: GraphSource = None, version: str | None = None, strict: bool = True
) -> CompiledVersion:
    """Open the version ``path`` names (a compiled root's active one, or its ``version``, or a version dir),
    verify every file once, and match it to ``graph`` (default: the graph recorded at compile).

    ``strict`` refuses a version with any invalid file (``BaeArtifactError``, exit 3); ``bae inspect`` opens
    leniently to report every problem first.
    """
    root, version_dir = artifacts.locate(Path(path), version)
    manifest = artifacts.read_manifest(version_dir)
    files, unexpected = artifacts.verify_files(version_dir, manifest)
    if strict:
        artifacts.refuse_invalid(files)
    loaded = recorded_graph(manifest, version_dir) if graph is None else as_loaded(graph)
    statuses = predictor_statuses(loaded.graph, manifest)
    return CompiledVersion(root, version_dir, manifest, files, unexpected, loaded, statuses)
