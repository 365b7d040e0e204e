"""Training: which DSPy optimizer, and one run of it per predictor.

Every make predictor and every choice predictor is optimized on its own examples
(``bae.examples``: gold traces resolved the way runs resolve inputs) by a stock DSPy
teleprompter, or, for ``knn``, given them as its pool of similar-example demos. Loading
what was trained is runtime work: ``bae.optimized_lm``.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dspy

from bae.exceptions import BaeInputError
from bae.graph import Graph
from bae.metrics import Metric, builtin_metric, metric_for, metric_name
from bae.predictors import CHOICE, CHOICE_FIELD, NodePredict, new_predictor
from bae.wording import counted

logger = logging.getLogger("bae")

Key = tuple[str, str]  # (node name, "make" | "choice")
OPTIMIZERS = ("knn", "bootstrap", "labeled", "random-search", "mipro", "gepa")


def _gepa_metric(metric: Metric) -> Callable[..., float]:
    def gepa(gold: Any, pred: Any, trace: Any = None, pred_name: Any = None, pred_trace: Any = None) -> float:
        return float(metric(gold, pred, trace))

    return gepa


@dataclass
class OptimizeSettings:
    """The optimizer and its parameters, passed through to DSPy. ``metric`` None is the built-in one
    (``bae.metrics``), typed per predictor."""

    optimizer: str = "knn"
    max_demos: int = 4
    max_labeled_demos: int = 8
    min_examples: int = 3
    seed: int = 0
    num_threads: int = 1
    candidates: int = 6
    reflection_lm: dspy.BaseLM | None = None
    metric: Metric | None = None

    def params(self) -> dict[str, Any]:
        """What the manifest records: parameters only, never an LM object or key."""
        return {
            "max_demos": self.max_demos,
            "max_labeled_demos": self.max_labeled_demos,
            "min_examples": self.min_examples,
            "seed": self.seed,
            "candidates": self.candidates if self.optimizer == "random-search" else None,
            "metric": metric_name(self.metric),
        }


def build_optimizer(settings: OptimizeSettings, lm: dspy.BaseLM | None = None, metric: Metric | None = None) -> Any:
    """The DSPy teleprompter ``settings.optimizer`` names, judging by ``metric`` (default: the user's, else
    the built-in one for choices), with clear errors for missing pieces.

    ``lm`` is the model bae compiles with. MIPROv2 gets it explicitly as both its prompt model
    (proposing instructions) and task model, so nothing depends on ``dspy.configure``. Without
    ``lm`` (compile_graph's up-front check, before any LM work) only what can be missing is
    checked, and mipro returns None: MIPROv2 cannot be built without its models.
    """
    name = settings.optimizer
    metric = metric or settings.metric or builtin_metric()
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
            outcome.reason = f"{counted(len(train), 'example')} (< {settings.min_examples}): stays naive"
        else:
            cls = graph.node(key[0])
            assert cls is not None
            metric = metric_for(cls, settings.metric)
            outcome.predictor = _optimize_one(new_predictor(cls, key[1]), train, lm, settings, metric)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(key)
    return outcomes


def _optimize_one(
    predictor: NodePredict, train: list[dspy.Example], lm: dspy.BaseLM, settings: OptimizeSettings, metric: Metric
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
        compiled = build_optimizer(settings, lm, metric).compile(_Single(predictor), **kwargs)
    optimized: NodePredict = compiled.predictor
    return optimized


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
