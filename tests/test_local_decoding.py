"""The embedded engine's decoding: compact prompts, closed answers by likelihood, and the prefix cache.

The unit tests need no model. Those marked ``local`` check the real model against scoring done by
hand: each allowed answer's tokens fed one at a time from an empty cache.
"""

from __future__ import annotations

from typing import Literal

import dspy
import pytest
from pydantic import BaseModel

from bae.dataset import load_dataset, split
from bae.examples import collect_examples
from bae.loader import load_graph
from bae.local.decoding import closed_fields, compact_formatter, content_free
from bae.optimizer import fresh_predictor
from tests.cli import EXAMPLE, TRAIN
from tests.test_local_lm import needs_model

QUESTION = "[[ ## text ## ]]\nMy card was charged twice.\n\n[[ ## plan ## ]]\npro"


def _chat(question: str = QUESTION) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Your input fields are: ...\nIn adhering to this structure, your objective is: \n"
         "        Route the ticket.\n        Choose the step that follows."},
        {"role": "user", "content": "[[ ## text ## ]]\nThe app crashes.\n\n[[ ## plan ## ]]\nfree"},
        {"role": "assistant", "content": '{\n  "next_step": "TechnicalIssue"\n}'},
        {"role": "user", "content": question + "\n\nRespond with a JSON object in the following order of fields: ..."},
    ]  # fmt: skip


def test_compact_prompt_is_the_task_then_demos_then_the_question() -> None:
    rendered = compact_formatter(_chat())
    assert rendered.text == (
        "Route the ticket.\nChoose the step that follows.\n\n"
        'text: The app crashes.\nplan: free\nAnswer:\n{\n  "next_step": "TechnicalIssue"\n}\n\n'
        "text: My card was charged twice.\nplan: pro\nAnswer:\n"
    )
    assert rendered.text[rendered.dynamic_from :] == "text: My card was charged twice.\nplan: pro\nAnswer:\n"


def test_content_free_blanks_only_the_questions_values() -> None:
    free = content_free(_chat())
    assert free is not None and free[:-1] == _chat()[:-1]
    assert free[-1]["content"].startswith("[[ ## text ## ]]\nN/A\n\n[[ ## plan ## ]]\nN/A\n\nRespond with")
    assert content_free([{"role": "user", "content": "no fields here"}]) is None


class _Closed(BaseModel):
    priority: Literal["low", "medium", "high"]
    refund: bool


class _Open(BaseModel):
    priority: Literal["low", "high"]
    reply: str


def test_closed_fields_are_literals_enums_and_bools_only() -> None:
    assert closed_fields(_Closed.model_json_schema()) == [
        ("priority", ['"low"', '"medium"', '"high"']),
        ("refund", ["true", "false"]),
    ]
    assert closed_fields(_Open.model_json_schema()) is None  # open text: decoded under the grammar
    assert closed_fields({"type": "object"}) is None


# -- the real model ---------------------------------------------------------------------------------


def _choice_examples() -> tuple[list[dspy.Example], list[dspy.Example]]:
    loaded = load_graph(EXAMPLE)
    traces = load_dataset(TRAIN, loaded.graph).traces
    train, dev = split(traces, 0.25, 0)
    key = ("Triage", "choice")
    return collect_examples([t.nodes for t in train])[key], collect_examples([t.nodes for t in dev])[key]


def _predictor(demos: list[dspy.Example], k: int | None = None) -> dspy.Predict:
    predictor = fresh_predictor(load_graph(EXAMPLE).graph, ("Triage", "choice"))
    predictor.demos = demos
    if k is not None:
        predictor.retrieve(k)
    return predictor


@needs_model
@pytest.mark.parametrize(("demos", "calibrate"), [("fixed", False), ("fixed", True), ("similar", False)])
def test_likelihood_choice_matches_scoring_each_answer_by_hand(demos: str, calibrate: bool) -> None:
    """The engine's pick is the option with the best full-answer log-likelihood (minus the content-free
    one when calibrated), as computed here token by token from an empty cache (calibrated: the best or
    within 0.3 nat of it, two differences of slightly different numerics).

    Every option's answer line starts with the same tokens, so an engine scoring only an answer's first
    tokens ties them all and picks the first option listed: with 6 fixed demos the raw best is
    BillingIssue, the first, for these tickets. With their 8 most similar training tickets as demos
    ("similar"), two dev tickets have a raw best that is not, by over 1.5 nat."""
    import numpy as np

    from bae.local.decoding import render
    from bae.local.engine import local_lm
    from bae.local.model import load_model, resolve_model

    train, dev = _choice_examples()
    if demos == "fixed":
        predictor, examples = _predictor(train[:6]), dev[:4]
    else:
        clear = ("is there a way to get timestamps from the api", "Someone changed the email on one of our admin")
        predictor, examples = _predictor(train, k=8), [e for e in dev if e.text.startswith(clear)]
        assert len(examples) == 2
    model = load_model(resolve_model(None)[0])
    llama = model.llama
    options = ["BillingIssue", "TechnicalIssue", "AccountIssue"]

    def by_hand(messages: list[dict[str, str]]) -> list[float]:
        prompt = render(llama, messages, model.formatter).tokens
        scores = []
        for option in options:
            answer = llama.tokenize(b"{\n", add_bos=False) + llama.tokenize(
                f'  "next_step": "{option}"\n'.encode(), add_bos=False
            )
            llama.reset()
            llama.eval(prompt + answer[:2])
            total = 0.0
            for token in answer[2:]:
                row = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(llama.n_vocab(),)).astype(float)
                total += row[token] - row.max() - np.log(np.exp(row - row.max()).sum())
                llama.eval([token])
            scores.append(total)
        return scores

    adapter = dspy.JSONAdapter()
    best = []
    for example in examples:
        inputs = dict(example.inputs())
        with dspy.context(lm=local_lm(calibrate=calibrate), adapter=adapter):
            picked = predictor(**inputs).next_step
        assert picked in options
        shown = predictor.retriever.select(inputs) if predictor.retriever is not None else predictor.demos
        messages = adapter.format(predictor.signature, shown, inputs)
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        scores = by_hand(messages)
        if calibrate:
            free = content_free(messages)
            assert free is not None
            scores = [s - f for s, f in zip(scores, by_hand(free), strict=True)]
        # By hand the prompt is evaluated in one piece and each answer a token at a time; the engine
        # evaluates prefix, rest and each answer in batches. Logits then differ in the low bits (up to
        # ~0.1 nat per answer seen here), which only matters between near-tied options.
        assert scores[options.index(picked)] >= max(scores) - (0.3 if calibrate else 0.0), (example.text, scores)
        best.append(options[int(np.argmax(scores))])
    if demos == "similar":
        assert options[0] not in best, best  # the case this parametrization is for


@needs_model
def test_prefix_cache_changes_nothing_but_speed() -> None:
    """Every dev ticket of the example, fixed demos and similar-example demos: the same answers with the
    cache on (in dev order) and off (in reverse order)."""
    from bae.local.engine import local_lm

    train, dev = _choice_examples()
    adapter = dspy.JSONAdapter()

    def answers(predictor: dspy.Predict, lm: dspy.LM, order: list[dspy.Example]) -> dict[str, str]:
        with dspy.context(lm=lm, adapter=adapter):
            return {e.text: predictor(**e.inputs()).next_step for e in order}

    for predictor in (_predictor(train[:8]), _predictor(train, k=8)):
        cached = answers(predictor, local_lm(), dev)
        fresh = answers(predictor, local_lm(prefix_cache=False), dev[::-1])
        assert cached == fresh
