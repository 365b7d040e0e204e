"""Training examples from gold traces, DSPy optimizers per predictor, and loading compiled ones.

Every make predictor and every choice predictor is optimized on its own examples by
a stock DSPy teleprompter; bae adds only what DSPy lacks: examples resolved the way
runs resolve inputs, and verified, fingerprint-checked loading.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from bae import artifacts
from bae.compiler import CHOICE, CHOICE_FIELD, MAKE, NodePredict, new_predictor
from bae.exceptions import BaeArtifactError, BaeInputError
from bae.graph import Graph
from bae.metrics import fields_score
from bae.node import Node, schema_fingerprint, spec_of
from bae.resolve import RunState, context_inputs, visible_state

logger = logging.getLogger("bae")

Key = tuple[str, str]  # (node name, "make" | "choice")
Metric = Callable[..., float | bool]
OPTIMIZERS = ("knn", "bootstrap", "labeled", "random-search", "mipro", "gepa")


def trace_to_examples(trace: Sequence[Node]) -> dict[Key, list[dspy.Example]]:
    """One make example per step S -> T (T's resolved inputs -> T's generated fields), and one
    choice example per step out of a deciding node (gold: T's name, or "None" where the trace ends)."""
    examples: dict[Key, list[dspy.Example]] = defaultdict(list)
    state = RunState()
    for i, node in enumerate(trace):
        if i > 0:
            previous = trace[i - 1]
            target = type(node)
            generated = {f.name: getattr(node, f.name) for f in spec_of(target).generated}
            if generated:
                resolved = context_inputs(target, previous, state, strict=False)
                inputs = {f.name: resolved.get(f.name, getattr(node, f.name)) for f in spec_of(target).context}
                examples[(target.__name__, MAKE)].append(dspy.Example(**inputs, **generated).with_inputs(*inputs))
            if spec_of(type(previous)).decides:
                examples[(type(previous).__name__, CHOICE)].append(_choice_example(previous, target.__name__))
        state.append(node)
    last = trace[-1]
    if spec_of(type(last)).decides:
        examples[(type(last).__name__, CHOICE)].append(_choice_example(last, "None"))
    return dict(examples)


def _choice_example(node: Node, answer: str) -> dspy.Example:
    inputs = visible_state(node)
    return dspy.Example(**inputs, **{CHOICE_FIELD: answer}).with_inputs(*inputs)


def collect_examples(traces: Sequence[Sequence[Node]]) -> dict[Key, list[dspy.Example]]:
    merged: dict[Key, list[dspy.Example]] = defaultdict(list)
    for trace in traces:
        for key, examples in trace_to_examples(trace).items():
            merged[key].extend(examples)
    return dict(merged)


def default_metric(example: dspy.Example, prediction: Any, trace: Any = None, *_: Any) -> float | bool:
    """Exact match for choices, mean per-field match for made nodes; all-or-nothing while bootstrapping."""
    gold = {name: example[name] for name in example.labels()}
    predicted = {name: getattr(prediction, name, None) for name in gold}
    score = fields_score(gold, predicted)
    return score >= 1.0 if trace is not None else score


def _gepa_metric(metric: Metric) -> Callable[..., float]:
    def gepa(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> float:
        return float(metric(gold, pred, trace))

    return gepa


@dataclass
class OptimizeSettings:
    """The optimizer and its parameters, passed through to DSPy."""

    optimizer: str = "knn"
    max_demos: int = 4
    max_labeled_demos: int = 8
    min_examples: int = 3
    seed: int = 0
    num_threads: int = 1
    candidates: int = 6
    reflection_lm: dspy.BaseLM | None = None
    metric: Metric = default_metric

    def params(self) -> dict[str, Any]:
        """What the manifest records: parameters only, never an LM object or key."""
        return {
            "max_demos": self.max_demos,
            "max_labeled_demos": self.max_labeled_demos,
            "min_examples": self.min_examples,
            "seed": self.seed,
            "candidates": self.candidates if self.optimizer == "random-search" else None,
            "metric": getattr(self.metric, "__qualname__", "custom"),
        }


def build_optimizer(settings: OptimizeSettings, lm: dspy.BaseLM | None = None) -> Any:
    """The DSPy teleprompter ``settings.optimizer`` names, with clear errors for missing pieces.

    ``lm`` is the model bae compiles with. MIPROv2 gets it explicitly as both its prompt model
    (proposing instructions) and task model, so nothing depends on ``dspy.configure``. Without
    ``lm`` (compile_graph's up-front check, before any LM work) only what can be missing is
    checked, and mipro returns None: MIPROv2 cannot be built without its models.
    """
    name, metric = settings.optimizer, settings.metric
    if name == "knn":
        return None  # no teleprompter: the pool is the training examples, chosen per call (bae.retrieval)
    if name == "bootstrap":
        return dspy.BootstrapFewShot(
            metric=metric,
            max_bootstrapped_demos=settings.max_demos,
            max_labeled_demos=settings.max_labeled_demos,
            max_rounds=1,
        )
    if name == "labeled":
        return dspy.LabeledFewShot(k=settings.max_labeled_demos)
    if name == "random-search":
        return dspy.BootstrapFewShotWithRandomSearch(
            metric=metric,
            max_bootstrapped_demos=settings.max_demos,
            max_labeled_demos=settings.max_labeled_demos,
            num_candidate_programs=settings.candidates,
            num_threads=settings.num_threads,
        )
    if name == "mipro":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise BaeInputError("--optimizer mipro needs optuna: pip install 'bae[optimizers]'") from None
        if lm is None:
            return None
        return dspy.MIPROv2(
            metric=metric,
            prompt_model=lm,
            task_model=lm,
            auto="light",
            seed=settings.seed,
            num_threads=settings.num_threads,
            max_bootstrapped_demos=settings.max_demos,
            max_labeled_demos=settings.max_labeled_demos,
        )
    if name == "gepa":
        if settings.reflection_lm is None:
            raise BaeInputError("--optimizer gepa needs --reflection-lm MODEL (a strong LM that reflects on failures)")
        return dspy.GEPA(
            metric=_gepa_metric(metric), auto="light", reflection_lm=settings.reflection_lm, seed=settings.seed
        )
    raise BaeInputError(f"unknown --optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


class _Single(dspy.Module):
    """A one-predictor program: DSPy optimizers work on programs, bae optimizes predictor by predictor."""

    def __init__(self, predictor: NodePredict) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, **kwargs: Any) -> dspy.Prediction:
        return self.predictor(**kwargs)


@dataclass
class PredictorOutcome:
    """What optimizing one predictor produced, or why it stayed naive."""

    node: str
    kind: str
    examples: int
    predictor: NodePredict | None = None
    reason: str | None = None

    @property
    def pool(self) -> int:
        """The demos the predictor holds (with retrieval: the pool it draws from)."""
        return len(self.predictor.demos) if self.predictor is not None else 0

    @property
    def demos(self) -> int:
        """The demos each call shows the LM."""
        retriever = self.predictor.retriever if self.predictor is not None else None
        return min(retriever.k, self.pool) if retriever is not None else self.pool


def fresh_predictor(graph: Graph, key: Key) -> NodePredict:
    cls = graph.node(key[0])
    assert cls is not None
    return new_predictor(cls, key[1])


def optimize_predictors(
    graph: Graph,
    examples: dict[Key, list[dspy.Example]],
    lm: dspy.BaseLM,
    settings: OptimizeSettings,
    on_done: Callable[[Key], None] | None = None,
) -> list[PredictorOutcome]:
    """Optimize each predictor with its own examples; too few examples leaves it naive, and says so."""
    outcomes = []
    for key in graph.predictor_keys():
        train = examples.get(key, [])
        outcome = PredictorOutcome(key[0], key[1], len(train))
        if len(train) < settings.min_examples:
            outcome.reason = f"{len(train)} examples (< {settings.min_examples}): stays naive"
        else:
            outcome.predictor = _optimize_one(fresh_predictor(graph, key), train, lm, settings)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(key)
    return outcomes


def _optimize_one(
    predictor: NodePredict, train: list[dspy.Example], lm: dspy.BaseLM, settings: OptimizeSettings
) -> NodePredict:
    if settings.optimizer == "knn":
        predictor.demos = list(train)
        predictor.retrieve(settings.max_labeled_demos)
        return predictor
    if predictor.kind == CHOICE:
        train = stratified(train)
    kwargs: dict[str, Any] = {"trainset": train}
    if settings.optimizer == "labeled":
        kwargs["sample"] = False  # the first k of the (stratified) order, not a random k
    # GEPA tracks its Pareto front on the examples themselves. MIPROv2 holds 80% of them out to
    # score its trials, which takes at least two (--min-examples may allow one): then the one
    # example is both what it bootstraps from and what it scores on.
    if settings.optimizer == "gepa" or (settings.optimizer == "mipro" and len(train) < 2):
        kwargs["valset"] = train
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()), quiet(f"{predictor.node_name} {predictor.kind}"):
        compiled = build_optimizer(settings, lm).compile(_Single(predictor), **kwargs)
    return compiled.predictor


def stratified(train: list[dspy.Example]) -> list[dspy.Example]:
    """A choice predictor's examples with its options taken in turn (each option's own order kept).

    Bootstrapping walks the trainset in order and labeled demos take its head, so in this order
    every option the node can choose gets its demos, instead of whichever option is most common.
    """
    by_answer: dict[str, list[dspy.Example]] = defaultdict(list)
    for example in train:
        by_answer[str(example[CHOICE_FIELD])].append(example)
    queues = list(by_answer.values())
    ordered: list[dspy.Example] = []
    for i in range(max(map(len, queues), default=0)):
        ordered.extend(queue[i] for queue in queues if i < len(queue))
    return ordered


@contextlib.contextmanager
def quiet(what: str) -> Iterator[None]:
    """Capture what DSPy optimizers print and draw (stdout, tqdm): bae draws its own progress,
    and ``--json`` output must stay one clean object. The chatter goes to the debug log."""
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            yield
    finally:
        logger.debug("%s optimizer output:\n%s", what, chatter.getvalue())


# -- loading compiled predictors -------------------------------------------------------
@dataclass
class LoadedVersion:
    """A verified compiled version: predictors keyed by (node, kind), and what could not be used."""

    version_dir: Path
    manifest: dict[str, Any]
    predictors: dict[Key, NodePredict] = field(default_factory=dict)
    stale: set[Key] = field(default_factory=set)
    missing: set[Key] = field(default_factory=set)

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", self.version_dir.name))


def load_optimized(graph: Graph, path: Path) -> LoadedVersion:
    """Load a compiled root or version dir for ``graph``: JSON only, checksums and fingerprints checked.

    A node whose schema changed since compile is *stale* (its predictor is not used);
    a node no longer in the graph is *missing*. Each predictor loads into a fresh
    ``Predict``, so a failed load never leaves a half-updated one behind.
    """
    version_dir = artifacts.resolve_version_dir(path)
    manifest = artifacts.read_manifest(version_dir)
    loaded = LoadedVersion(version_dir=version_dir, manifest=manifest)
    for rel, entry in manifest["files"].items():
        if entry.get("kind") not in (MAKE, CHOICE):
            continue
        document = artifacts.read_verified(version_dir, rel, manifest)
        state = artifacts.predictor_state(document, str(version_dir / rel))
        key = (str(entry.get("node")), str(entry["kind"]))
        cls = graph.node(key[0])
        if cls is None or (key[1] == CHOICE and not spec_of(cls).decides):
            loaded.missing.add(key)
            continue
        if entry.get("fingerprint") != schema_fingerprint(cls):
            loaded.stale.add(key)
            continue
        predictor = fresh_predictor(graph, key)
        try:
            predictor.load_state(state)
        except Exception as exc:
            raise BaeArtifactError(f"{version_dir / rel}: predictor state does not load: {exc}") from exc
        k = artifacts.retrieval_k(document, str(version_dir / rel))
        if k is not None:
            predictor.retrieve(k)
        loaded.predictors[key] = predictor
    return loaded
