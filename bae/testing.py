"""``ScriptedLM``: a deterministic DSPy LM for bae's tests and for users' own.

It sits exactly at the LM boundary: bae formats real prompts through a real DSPy
adapter, the scripted model answers, and bae parses and validates the answer as it
would a real model's. Answers are chosen by node name, so tests read like the graph.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import dspy
from dspy.lm15 import Message, Response, TextPart, Usage, response_to_events

from bae.confidence import answer_logprobs, value_spans
from bae.predictors import CHOICE, CHOICE_FIELD, PredictorCall, current_call

Answer = Mapping[str, Any] | str | Callable[[PredictorCall], Any]
Script = Answer | Sequence[Answer]
Sureness = float | None | Callable[[PredictorCall], float | None]


@dataclass(frozen=True)
class ScriptedCall:
    """One request the scripted LM answered (or failed on purpose)."""

    node: str
    kind: str
    inputs: dict[str, Any]
    demos: int
    output: str | None
    fault: str | None = None
    at: float = field(default_factory=time.monotonic)  # when it was answered, to measure backoff between retries


class ScriptedLM(dspy.LM):
    """A DSPy LM that answers from a script keyed by node name.

    - ``make={"Billing": {"priority": "high"}}``: the generated fields for a node.
    - ``choose={"Triage": "Billing"}``: the successor a deciding node picks (``"None"`` to end).
    - A callable answer receives the ``PredictorCall`` and returns the answer. Its ``.inputs``
      and ``.demos`` are read from the messages the LM actually receives, not from bae's call
      record: ``.demos`` counts the few-shot demo turns (assistant messages before the request),
      ``.inputs`` holds the input fields rendered in the final user message (text fields as
      rendered; a field missing from the prompt is missing here). So a test fails when demos or
      inputs never reach the model.
    - A list of answers is used in order, the last one repeating.
    - ``faults={"Billing": [TimeoutError("slow"), "not json"], "Triage.choice": [...]}``:
      happen before the scripted answers, in order: an exception instance is raised,
      a string is returned verbatim as the model's text (garbage, wrong JSON...).
    - ``confidence={"Triage.choice": 0.4, "Billing": [0.9, 0.2]}``: the probability the model reports for
      every value of its answer (keyed like ``faults``; a list goes with the answers in order, a callable
      receives the ``PredictorCall``). It travels as a real engine's logprobs do (``bae.confidence``), so
      the call's record carries it where its answer has closed values; unscripted, no logprobs come back.
    - ``delay_s`` sleeps per call, to stand in for a slow model in benchmarks.

    Every request is recorded in ``calls``; ``max_in_flight`` is the most requests that were
    being answered at the same time (evidence of a concurrency limit, without timing anything).
    """

    def __init__(
        self,
        make: Mapping[str, Script] | None = None,
        choose: Mapping[str, Script] | None = None,
        faults: Mapping[str, Sequence[BaseException | str]] | None = None,
        confidence: Mapping[str, Sureness | Sequence[Sureness]] | None = None,
        delay_s: float = 0.0,
        model: str = "bae/scripted",
    ) -> None:
        self.script: dict[str, Script] = {**(make or {})}
        self.script.update({f"{name}.choice": answer for name, answer in (choose or {}).items()})
        self.faults: dict[str, list[BaseException | str]] = {k: list(v) for k, v in (faults or {}).items()}
        self.confidence: dict[str, Sureness | Sequence[Sureness]] = dict(confidence or {})
        self.delay_s = delay_s
        self.calls: list[ScriptedCall] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._used: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        super().__init__(model, engine=_ScriptedEngine(self), cache=False, num_retries=0)

    def calls_for(self, node: str, kind: str | None = None) -> list[ScriptedCall]:
        return [c for c in self.calls if c.node == node and (kind is None or c.kind == kind)]

    def answer(self, messages: Sequence[Message]) -> tuple[str, float | None]:
        """The text for a request of ``messages`` (a fault, or the scripted answer as JSON) and the
        probability scripted for its values (None: none)."""
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return self._answer(messages)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, messages: Sequence[Message]) -> tuple[str, float | None]:
        record = current_call()
        if record is None:
            raise LookupError("ScriptedLM answers bae predictors only (no bae predictor is calling)")
        call = _as_received(record, messages)
        key = f"{call.node}.choice" if call.kind == CHOICE else call.node
        with self._lock:
            pending = self.faults.get(key)
            fault = pending.pop(0) if pending else None
            index = self._used[key]  # a fault does not use up a scripted answer
            if fault is None:
                self._used[key] += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if isinstance(fault, BaseException):
            self._log(ScriptedCall(call.node, call.kind, call.inputs, call.demos, None, repr(fault)))
            raise fault
        if fault is not None:
            self._log(ScriptedCall(call.node, call.kind, call.inputs, call.demos, fault, "text"))
            return fault, None
        text = json.dumps(self._scripted(key, index, call), default=str)
        self._log(ScriptedCall(call.node, call.kind, call.inputs, call.demos, text))
        return text, self._sureness(key, index, call)

    def _scripted(self, key: str, index: int, call: PredictorCall) -> Any:
        if key not in self.script:
            raise LookupError(f"ScriptedLM has no answer for {key!r}; scripted: {sorted(self.script)}")
        script = self.script[key]
        if isinstance(script, Sequence) and not isinstance(script, str):
            script = script[min(index, len(script) - 1)]
        answer = script(call) if callable(script) else script
        return {CHOICE_FIELD: answer} if call.kind == CHOICE and isinstance(answer, str) else answer

    def _sureness(self, key: str, index: int, call: PredictorCall) -> float | None:
        given = self.confidence.get(key)
        if isinstance(given, Sequence) and not isinstance(given, str):
            given = given[min(index, len(given) - 1)] if given else None
        return given(call) if callable(given) else given

    def _log(self, call: ScriptedCall) -> None:
        with self._lock:
            self.calls.append(call)


_FIELD_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]\n")
_OUTPUT_REQUEST = "\n\nRespond with "  # what DSPy's JSON adapter appends after the last input field


def _as_received(record: PredictorCall, messages: Sequence[Message]) -> PredictorCall:
    """``record`` (which node and kind is calling) with its demos and inputs read from ``messages``."""
    demos = sum(1 for m in messages[:-1] if m.role == "assistant")
    request = next((m.text or "" for m in reversed(messages) if m.role == "user"), "")
    parts = _FIELD_HEADER.split(request)
    rendered = {name: text.removesuffix("\n\n") for name, text in zip(parts[1::2], parts[2::2], strict=True)}
    if rendered:
        last = list(rendered)[-1]
        cut = rendered[last].rfind(_OUTPUT_REQUEST)
        rendered[last] = rendered[last][:cut] if cut >= 0 else rendered[last]
    inputs = {
        name: (rendered[name] if isinstance(value, str) else value)
        for name, value in record.inputs.items()
        if name in rendered
    }
    return replace(record, inputs=inputs, demos=demos)


def _every_value(text: str, sureness: float | None) -> Any:
    """Logprobs giving each top-level value of a JSON answer the scripted probability."""
    return answer_logprobs(text, dict.fromkeys(value_spans(text), float(sureness or 0.0))) or None


class _ScriptedEngine:
    """The DSPy engine behind ``ScriptedLM`` (the non-deprecated custom-LM route)."""

    supports_response_schema = True

    def __init__(self, owner: ScriptedLM) -> None:
        self.owner = owner

    def complete(self, request: Any) -> Response:
        text, sureness = self.owner.answer(request.messages)
        prompt_words = sum(len((m.text or "").split()) for m in request.messages)
        asked = request.config.logprobs is not None and sureness is not None
        return Response(
            id=None,
            model=self.owner.model,
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            usage=Usage(input_tokens=prompt_words, output_tokens=len(text.split())),
            logprobs=_every_value(text, sureness) if asked else None,
        )

    def stream(self, request: Any) -> Any:
        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass
