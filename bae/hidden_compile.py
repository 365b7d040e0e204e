"""Compiling hidden-state decisions: read every training example once, score each method by leave-one-out on
the training examples only, and keep the winner per closed decision (``bae.anchors``, ``bae.decisions``).

Only with the embedded model: its hidden states are what the anchors are, and only the same model file can
read an input the same way at run time. Today's method (the compiled predictor's demos, similar-example
retrieval, calibrated likelihood) is a candidate too, scored the same way: each training example answered
by the predictor with that example taken out of its demo pool, so no example is retrieved as its own demo.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from bae.anchors import TODAY, Anchors, anchors_json, candidates, choose, rounded
from bae.artifacts import MAX_NODE_FILE_BYTES
from bae.decisions import ClosedDecision, closed_decisions, decisions_section, plain, read
from bae.dspy_backend import DSPyBackend
from bae.exceptions import BaeError
from bae.graph import Graph
from bae.local.engine import embedded_engine
from bae.local.hidden import model_sha256
from bae.local.model import load_model
from bae.predictors import NodePredict

logger = logging.getLogger("bae")
Key = tuple[str, str]
# The anchors of one node file, at most: half the 1 MB a node file may take (``artifacts.MAX_NODE_FILE_BYTES``),
# the rest left to its demos. The example's largest holds 64 anchors of 640 dims: about 110 KB.
ANCHOR_BUDGET = MAX_NODE_FILE_BYTES // 2
Chosen = dict[str, tuple[ClosedDecision, str, dict[str, float], dict[str, Any] | None]]


@dataclass(frozen=True)
class DecisionOutcome:
    """What leave-one-out chose for one closed decision, and every candidate's score."""

    node: str
    kind: str
    field: str
    method: str
    scores: dict[str, float]
    examples: int


def _inputs(example: dspy.Example, decision: ClosedDecision) -> dict[str, Any]:
    return {name: example.get(name) for name in decision.inputs}


def _without(predictor: NodePredict, example: dspy.Example, names: tuple[str, ...]) -> NodePredict:
    """A copy of ``predictor`` whose demos (its retrieval pool) do not hold ``example``."""
    copy = NodePredict(predictor.signature, predictor.node_name, predictor.kind)
    copy.demos = [d for d in predictor.demos if any(d.get(n) != example.get(n) for n in names)]
    if predictor.retriever is not None:
        copy.retrieve(predictor.retriever.k)
    return copy


def _today(
    backend: DSPyBackend, predictor: NodePredict, examples: list[dspy.Example], names: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Today's answer to each training example, that example left out of the demos (an answer that fails
    after retries is an empty one: wrong on every field)."""
    answers = []
    for example in examples:
        try:
            answers.append(backend.answer(_without(predictor, example, names), {n: example.get(n) for n in names}))
        except BaeError:
            answers.append({})
    return answers


def compile_decisions(
    graph: Graph,
    examples: dict[Key, list[dspy.Example]],
    predictors: dict[Key, NodePredict],
    lm: dspy.BaseLM,
    on_done: Callable[[Key], None] = lambda _: None,
) -> tuple[dict[Key, dict[str, Any]], list[DecisionOutcome]]:
    """Per optimized predictor with closed decisions, its node file's ``decisions`` section; nothing unless
    ``lm`` is the embedded engine."""
    engine = embedded_engine(lm)
    if engine is None:
        return {}, []
    model = load_model(Path(engine.model_file))
    sha = model_sha256(engine.model_file)
    cache = model.prefixes if engine.prefix_cache else None
    backend = DSPyBackend(lm)
    sections: dict[Key, dict[str, Any]] = {}
    outcomes: list[DecisionOutcome] = []
    for key, predictor in predictors.items():
        cls = graph.node(key[0])
        closed = closed_decisions(cls, key[1]) if cls is not None else []
        pool = examples.get(key, [])
        if not closed or len(pool) < 2:
            continue
        readings: dict[str, list[Any]] = {d.field: [] for d in closed}
        for example in pool:
            with model.lock:
                for decision in closed:
                    readings[decision.field].append(read(model, decision, _inputs(example, decision), cache))
        today = _today(backend, predictor, pool, closed[0].inputs)
        chosen = {}
        for decision in closed:
            labels = [plain(example.get(decision.field)) for example in pool]
            anchors = rounded(_anchors(labels, readings[decision.field]))
            right = sum(plain(answer.get(decision.field)) == label for answer, label in zip(today, labels, strict=True))
            scores = candidates(anchors, right / len(labels))
            method = choose(scores)
            data = None if method == TODAY else anchors_json(anchors, method)
            chosen[decision.field] = (decision, method, scores, data)
            outcomes.append(DecisionOutcome(key[0], key[1], decision.field, method, scores, len(pool)))
        sections[key] = decisions_section(sha, within_budget(chosen, ANCHOR_BUDGET))
        on_done(key)
    return sections, outcomes


def within_budget(chosen: Chosen, budget: int) -> Chosen:
    """``chosen`` with its largest stored anchors given up (that decision left to the demos, said in the log)
    until what is stored fits ``budget`` bytes of JSON."""
    fitted = dict(chosen)

    def size(entry: dict[str, Any] | None) -> int:
        return len(json.dumps(entry)) if entry else 0

    while sum(size(data) for *_, data in fitted.values()) > budget:
        name = max(fitted, key=lambda field: size(fitted[field][3]))
        decision, method, scores, _ = fitted[name]
        logger.warning(
            "%s (%s): %s: %s anchors exceed the %d-byte budget: deciding it with demos",
            decision.node, decision.kind, name, method, budget,
        )  # fmt: skip
        fitted[name] = (decision, TODAY, scores, None)
    return fitted


def _anchors(labels: list[Any], readings: list[Any]) -> Anchors:
    import numpy as np

    return Anchors(
        labels,
        np.stack([r.vector for r in readings]).astype(np.float64),
        np.stack([r.top_ids for r in readings]),
        np.stack([r.top_logprobs for r in readings]),
    )
