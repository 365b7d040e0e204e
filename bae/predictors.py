"""From node classes to DSPy: signatures, node-aware predictors, and compiled graphs.

The class name and docstring are the prompt.

Two kinds of predictor serve a graph: a *make* predictor per node (inputs: its
``Context`` fields; outputs: its generated fields, with their real types) and a
*choice* predictor per deciding node (inputs: its LM-visible state; output: the
successor's name as a ``Literal``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

import dspy

from bae.node import FieldSpec, Node, spec_of
from bae.retrieval import DemoRetriever

MAKE = "make"
CHOICE = "choice"
CHOICE_FIELD = "next_step"
FEEDBACK_FIELD = "feedback_on_previous_answer"


def title(cls: type) -> str:
    """``BillingIssue`` -> ``Billing Issue``: class names read as the task's name."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", cls.__name__)


def _fields(specs: tuple[FieldSpec, ...], kind: Any) -> dict[str, tuple[Any, Any]]:
    return {f.name: (f.annotation, kind(desc=f.description) if f.description else kind()) for f in specs}


def node_to_signature(cls: type[Node]) -> type[dspy.Signature]:
    """The make signature of ``cls``: its ``Context`` fields in, its generated fields out."""
    spec = spec_of(cls)
    instructions = f"{title(cls)}. {spec.doc}".strip()
    fields = {**_fields(spec.context, dspy.InputField), **_fields(spec.generated, dspy.OutputField)}
    signature: type[dspy.Signature] = dspy.make_signature(fields, instructions, signature_name=f"Make{cls.__name__}")
    return signature


def choice_signature(cls: type[Node]) -> type[dspy.Signature]:
    """The choice signature of a deciding node: its visible state in, the next step's name out."""
    spec = spec_of(cls)
    options = "\n".join(f"- {s.__name__}: {title(s)}. {spec_of(s).doc}".rstrip() for s in spec.successors) + (
        "\n- None: nothing follows; the work ends here." if spec.may_end else ""
    )
    instructions = f"{title(cls)}. {spec.doc}\nChoose the step that follows:\n{options}".strip()
    answer = Literal.__getitem__(spec.choices)  # the options are data, known only at run time
    fields = {
        **_fields(spec.visible, dspy.InputField),
        CHOICE_FIELD: (answer, dspy.OutputField(desc="the name of the step that follows")),
    }
    signature: type[dspy.Signature] = dspy.make_signature(fields, instructions, signature_name=f"Choose{cls.__name__}")
    return signature


def with_feedback(signature: type[dspy.Signature]) -> type[dspy.Signature]:
    """The same signature plus an input that tells the LM why its last answer was rejected."""
    extended: type[dspy.Signature] = signature.append(
        FEEDBACK_FIELD,
        dspy.InputField(desc="why the previous answer was rejected; answer again and fix it"),
        type_=str,
    )
    return extended


@dataclass(frozen=True)
class PredictorCall:
    """Which predictor is calling the LM right now, for test doubles and observability."""

    node: str
    kind: str
    inputs: dict[str, Any] = field(default_factory=dict)
    demos: int = 0


_CALL: ContextVar[PredictorCall | None] = ContextVar("bae_predictor_call", default=None)


def current_call() -> PredictorCall | None:
    """The bae predictor whose LM request is being served in this context, if any."""
    return _CALL.get()


@contextmanager
def _calling(call: PredictorCall) -> Iterator[None]:
    token = _CALL.set(call)
    try:
        yield
    finally:
        _CALL.reset(token)


class NodePredict(dspy.Predict):
    """A ``dspy.Predict`` that knows which node and kind it serves.

    Optimizers copy and save it like any ``Predict``; the extra identity lets a
    scripted LM answer by node name and keeps call records attributable.
    """

    def __init__(self, signature: type[dspy.Signature], node: str, kind: str, **config: Any) -> None:
        super().__init__(signature, **config)
        self.node_name = node
        self.kind = kind
        self.retriever: DemoRetriever | None = None

    def retrieve(self, k: int) -> None:
        """From now on each call gets the ``k`` demos most similar to its inputs (``bae.retrieval``),
        out of the current demos as the pool; a choice predictor's are balanced over its options."""
        label = CHOICE_FIELD if self.kind == CHOICE else None
        self.retriever = DemoRetriever(self.demos, tuple(self.signature.input_fields), k, label)

    def forward(self, **kwargs: Any) -> dspy.Prediction:
        inputs = {k: v for k, v in kwargs.items() if k not in ("signature", "demos", "config", "lm")}
        if self.retriever is not None and "demos" not in kwargs:
            kwargs["demos"] = self.retriever.select(inputs)
        demos = len(kwargs.get("demos", self.demos) or ())
        with _calling(PredictorCall(self.node_name, self.kind, inputs, demos)):
            return super().forward(**kwargs)


def new_predictor(cls: type[Node], kind: str) -> NodePredict:
    """A fresh, naive predictor making ``cls`` (``make``) or choosing its successor (``choice``)."""
    signature = node_to_signature(cls) if kind == MAKE else choice_signature(cls)
    return NodePredict(signature, cls.__name__, kind)
