"""``compile_graph``, what ``bae compile`` runs: gold traces in, a new verified version directory out.

The steps are the product's promise: optimize every predictor, score the naive and
the optimized graph on the same dev traces, and write both scores next to the
artifacts, with their 95% intervals and what the dev split cannot measure, so a
version always says what it bought and how sure that is. A version that optimized
nothing is written but not activated unless asked: it would only replace the
active version with the naive graph.

(The seeds' ``bae.compiler.node_to_signature`` lives in ``bae.predictors`` and is importable here too.)
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dspy
from dspy.utils.usage_tracker import UsageTracker

from bae import artifacts
from bae.dataset import Dataset, GoldTrace, load_dataset, split_each
from bae.decisions import NodeDecisions, node_decisions
from bae.dev_coverage import dev_warnings
from bae.dspy_backend import DSPyBackend
from bae.examples import collect_examples
from bae.executor import Call, ThreadExecutor
from bae.hidden_compile import DecisionOutcome, compile_decisions
from bae.lm import LM
from bae.lm_specs import lm_name
from bae.loader import LoadedGraph
from bae.local.engine import embedded_engine
from bae.metrics import check_metric, metric_name
from bae.node import graph_fingerprint, predictor_fingerprint, schema_fingerprint
from bae.optimized_lm import OptimizedLM
from bae.optimizer import (
    OptimizeSettings,
    PredictorOutcome,
    build_optimizer,
    optimize_predictors,
    quiet,
)
from bae.predictors import CHOICE, MAKE, NodePredict, node_to_signature
from bae.scoring import GraphScore, Progress, Quiet, TraceRun, delta_of, run_trace, run_traces, summarize
from bae.usage import UsageCounter
from bae.version import __version__


@dataclass
class CompileOptions:
    """What ``bae compile`` was asked. ``trainset`` is one file of gold traces or several (each split into
    train and dev on its own, unless ``devset`` is given)."""

    trainset: Path | Sequence[Path]
    out: Path
    devset: Path | None = None
    dev_split: float = 0.25
    strict: bool = True
    activate: bool | None = None  # None: activate unless nothing was optimized
    notes: str = ""
    eval_threads: int = 4
    settings: OptimizeSettings = field(default_factory=OptimizeSettings)

    @property
    def trainsets(self) -> list[Path]:
        return [self.trainset] if isinstance(self.trainset, Path) else list(self.trainset)


@dataclass
class CompileReport:
    """The new version and what compiling it found. ``warnings`` say what the dev split cannot
    measure; ``activated`` is False for ``--no-activate`` and for a version that optimized nothing."""

    version_dir: Path
    manifest: dict[str, Any]
    outcomes: list[PredictorOutcome]
    naive: GraphScore
    optimized: GraphScore
    invalid: list[str]
    activated: bool = True
    decisions: list[DecisionOutcome] = field(default_factory=list)

    @property
    def optimized_any(self) -> bool:
        return any(o.predictor is not None for o in self.outcomes)

    def as_dict(self) -> dict[str, Any]:
        rows = []
        for o in self.outcomes:
            key = (o.node, o.kind)
            rows.append(
                {
                    "node": o.node,
                    "kind": o.kind,
                    "examples": o.examples,
                    "demos": o.demos,
                    "pool": o.pool if o.predictor is not None and o.predictor.retriever is not None else None,
                    "status": "optimized" if o.predictor is not None else "naive",
                    "reason": o.reason,
                    "naive_score": _round(self.naive.per_predictor.get(key)),
                    "optimized_score": _round(self.optimized.per_predictor.get(key)),
                    "decisions": {
                        d.field: {"method": d.method, "loo": d.scores}
                        for d in self.decisions
                        if (d.node, d.kind) == key
                    },
                }
            )
        return {
            "version": self.manifest["version"],
            "path": str(self.version_dir),
            "active": self.activated,
            "scores": self.manifest["scores"],
            "warnings": self.manifest["warnings"],
            "confusion": self.manifest["confusion"],
            "usage": self.manifest["usage"],
            "predictors": rows,
            "invalid_lines": self.invalid,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class _SharedUsage(UsageTracker):
    """DSPy's usage tracker, one for every thread: DSPy's parallel optimizers give each worker
    thread a deep copy and drop it, which would leave those threads' LM calls uncounted."""

    def __deepcopy__(self, memo: Any) -> _SharedUsage:
        return self

    def as_dict(self) -> dict[str, int]:
        entries = [entry for per_lm in self.usage_data.values() for entry in per_lm]
        return {
            "calls": len(entries),
            "prompt_tokens": sum(int(e.get("prompt_tokens") or 0) for e in entries),
            "completion_tokens": sum(int(e.get("completion_tokens") or 0) for e in entries),
        }


def _dataset_split(
    loaded: LoadedGraph, options: CompileOptions
) -> tuple[list[Dataset], list[GoldTrace], list[GoldTrace]]:
    datasets = [load_dataset(path, loaded.graph, strict=options.strict) for path in options.trainsets]
    if options.devset is not None:
        devset = load_dataset(options.devset, loaded.graph, strict=options.strict)
        return datasets, [t for d in datasets for t in d.traces], devset.traces
    train, dev = split_each(datasets, options.dev_split, options.settings.seed)
    return datasets, train, dev


def _dataset_record(datasets: list[Dataset], train: int, dev: int, devset: Path | None) -> dict[str, Any]:
    """The manifest's ``dataset``: one file's path and digest as before; several joined (``a + b``, the digest
    of their digests in order), each also listed under ``files``."""
    digest = hashlib.sha256("".join(d.sha256 for d in datasets).encode()).hexdigest()
    return {
        "path": " + ".join(str(d.path) for d in datasets),
        "sha256": datasets[0].sha256 if len(datasets) == 1 else digest,
        "traces": sum(len(d.traces) for d in datasets),
        "invalid_skipped": sum(len(d.invalid) for d in datasets),
        "train": train,
        "dev": dev,
        "devset": str(devset) if devset else None,
        "files": [{"path": str(d.path), "sha256": d.sha256, "traces": len(d.traces)} for d in datasets],
    }


def _score_dev(
    loaded: LoadedGraph, dev: list[GoldTrace], backend: LM, options: CompileOptions, progress: Progress
) -> tuple[list[TraceRun], dict[str, int]]:
    """The dev traces run through ``backend`` and scored, and what their LM calls cost (counted by an observer)."""
    cost = UsageCounter()

    def one(trace: GoldTrace) -> TraceRun:
        return run_trace(loaded.graph, trace, backend, loaded.deps, observers=[cost], metric=options.settings.metric)

    runs = run_traces(Call(one), dev, ThreadExecutor(options.eval_threads), lambda _: progress.advance())
    return runs, cost.cost()


def compile_graph(
    loaded: LoadedGraph, lm: dspy.BaseLM, options: CompileOptions, progress: Progress | None = None
) -> CompileReport:
    """Optimize, score naive vs optimized on the dev traces, and write the next version."""
    progress = progress or Quiet()
    artifacts.check_root(options.out)  # a bad --out fails now, not after the optimizing
    with quiet("checking"):
        build_optimizer(options.settings)  # a missing package or LM fails now, before any work
    graph = loaded.graph
    datasets, train, dev = _dataset_split(loaded, options)
    metric = options.settings.metric
    check_metric(metric, (node for trace in [*train, *dev] for node in trace.nodes[1:]))  # fails before any LM call
    examples = collect_examples([t.nodes for t in train])

    progress.stage("optimizing predictors", len(graph.predictor_keys()))
    spent = _SharedUsage()  # what the compile cost, recorded with the version: LM calls and tokens per stage
    with dspy.context(usage_tracker=spent):
        outcomes = optimize_predictors(graph, examples, lm, options.settings, on_done=lambda _: progress.advance())
    predictors = {(o.node, o.kind): o.predictor for o in outcomes if o.predictor is not None}
    sections: dict[tuple[str, str], dict[str, Any]] = {}
    decided: list[DecisionOutcome] = []
    if embedded_engine(lm) is not None:
        progress.stage("reading the model's hidden states", len(predictors))
        with dspy.context(usage_tracker=spent):
            sections, decided = compile_decisions(graph, examples, predictors, lm, lambda _: progress.advance())
    hidden = _hidden(graph, sections)

    progress.stage("scoring the naive graph on dev", len(dev))
    naive_runs, naive_cost = _score_dev(loaded, dev, DSPyBackend(lm), options, progress)
    progress.stage("scoring the optimized graph on dev", len(dev))
    optimized_runs, optimized_cost = _score_dev(
        loaded, dev, OptimizedLM(predictors, model=lm, hidden=hidden), options, progress
    )
    naive = summarize(graph, [run.scored for run in naive_runs])
    optimized = summarize(graph, [run.scored for run in optimized_runs])
    usage = {"optimize": spent.as_dict(), "naive_dev": naive_cost, "optimized_dev": optimized_cost}

    files, entries = node_files(graph, outcomes, sections)
    files[artifacts.PROMPTS] = _prompts(predictors)
    entries[artifacts.PROMPTS] = {"kind": "prompts"}
    scores = {
        "naive": round(naive.score, 4),
        "optimized": round(optimized.score, 4),
        "naive_path_accuracy": round(naive.path_accuracy, 4),
        "optimized_path_accuracy": round(optimized.path_accuracy, 4),
        "naive_errors": naive.errors,
        "optimized_errors": optimized.errors,
        "naive_interval": naive.interval.as_list(),
        "optimized_interval": optimized.interval.as_list(),
        "delta_interval": delta_of(naive_runs, optimized_runs).as_list(),
        "metric": metric_name(metric),
    }
    manifest = {
        "format": artifacts.FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "bae_version": __version__,
        "dspy_version": dspy.__version__,
        "python_version": platform.python_version(),
        "graph": {
            "reference": loaded.reference,
            "start": graph.start.__name__,
            "fingerprint": graph_fingerprint(graph.nodes),
            "nodes": {cls.__name__: schema_fingerprint(cls) for cls in graph.nodes},
        },
        "optimizer": {"name": options.settings.optimizer, "params": options.settings.params()},
        "dataset": _dataset_record(datasets, len(train), len(dev), options.devset),
        "seed": options.settings.seed,
        "lm": {"model": lm_name(lm)},
        "scores": scores,
        "usage": usage,
        "per_predictor": {"naive": naive.as_dict()["per_predictor"], "optimized": optimized.as_dict()["per_predictor"]},
        "confusion": {"naive": naive.confusion, "optimized": optimized.confusion},
        "naive_predictors": [{"node": o.node, "kind": o.kind, "reason": o.reason} for o in outcomes if o.reason],
        "warnings": dev_warnings(train, dev, optimized.interval),
        "notes": options.notes,
        "files": entries,
    }
    activate = options.activate if options.activate is not None else bool(predictors)
    version_dir = artifacts.write_version(options.out, files, manifest, activate=activate)
    invalid = [line for d in datasets for line in d.invalid]
    return CompileReport(version_dir, manifest, outcomes, naive, optimized, invalid, activate, decided)


def _hidden(graph: Any, sections: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], NodeDecisions]:
    """The hidden-state decisions as a run will load them from the node files just made."""
    found = {}
    for (node, kind), section in sections.items():
        decisions = node_decisions(graph.node(node), kind, section)
        if decisions is not None:
            found[(node, kind)] = decisions
    return found


def node_file_name(node: str, kind: str) -> str:
    return f"nodes/{node}.json" if kind == MAKE else f"nodes/{node}.{CHOICE}.json"


def node_files(
    graph: Any, outcomes: list[PredictorOutcome], decisions: dict[tuple[str, str], dict[str, Any]] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The node files of a version (path -> JSON document) and their manifest entries: the one save path,
    which ``bae.optimized_lm.open_version`` reverses. ``decisions``: the hidden-state decisions of a
    predictor (``bae.hidden_compile``), stored in its node file; the manifest lists each one's method."""
    files: dict[str, Any] = {}
    entries: dict[str, Any] = {}
    for outcome in outcomes:
        if outcome.predictor is None:
            continue
        cls = graph.node(outcome.node)
        fingerprint = predictor_fingerprint(cls, outcome.kind)
        state = outcome.predictor.dump_state()
        state["lm"] = None  # never persist an LM, its endpoint or its key
        rel = node_file_name(outcome.node, outcome.kind)
        header = {"format": artifacts.FORMAT, "node": outcome.node, "kind": outcome.kind, "fingerprint": fingerprint}
        entries[rel] = {
            "node": outcome.node,
            "kind": outcome.kind,
            "fingerprint": fingerprint,
            "demos": outcome.demos,
            "examples": outcome.examples,
        }
        retriever = outcome.predictor.retriever
        if retriever is not None:  # the demos are the pool: k of them are chosen per call
            header["retrieval"] = retriever.settings()
            entries[rel]["pool"] = outcome.pool
        files[rel] = {"bae": header, "predictor": state}
        section = (decisions or {}).get((outcome.node, outcome.kind))
        if section is not None:
            files[rel]["decisions"] = section
            entries[rel]["decisions"] = {
                name: {"method": d["method"], "loo": d["loo"]} for name, d in section["fields"].items()
            }
            entries[rel]["model_sha256"] = section["model_sha256"]
    return files, entries


def _prompts(predictors: dict[tuple[str, str], NodePredict]) -> dict[str, Any]:
    """Each predictor's final prompt as chat messages, with ``{field}`` placeholders for the inputs."""
    adapter = dspy.JSONAdapter()
    prompts = {}
    for (node, kind), predictor in sorted(predictors.items()):
        signature = predictor.signature
        placeholders = {name: "{" + name + "}" for name in signature.input_fields}
        retriever = predictor.retriever
        prompts[f"{node}.{kind}"] = {
            "node": node,
            "kind": kind,
            "inputs": list(signature.input_fields),
            "outputs": list(signature.output_fields),
            # with retrieval only the static part: the demos differ from call to call
            "messages": adapter.format(signature, [] if retriever else predictor.demos, placeholders),
        }
        if retriever is not None:
            prompts[f"{node}.{kind}"]["note"] = (
                f"before the last message, the {retriever.k} of {len(retriever.pool)} pool examples most similar "
                f"to the inputs (BM25{', balanced over the options' if retriever.label else ''}) go in as "
                "user/assistant demo turns"
            )
    return prompts


__all__ = ["CompileOptions", "CompileReport", "compile_graph", "node_files", "node_to_signature"]
