"""``ScriptedLM``: a deterministic DSPy LM for bae's tests and for users' own.

It sits exactly at the LM boundary: bae formats real prompts through a real DSPy
adapter, the scripted model answers, and bae parses and validates the answer as it
would a real model's. Answers are chosen by node name, so tests read like the graph.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.lm15 import Message, Response, TextPart, Usage, response_to_events

from bae.compiler import CHOICE, CHOICE_FIELD, PredictorCall, current_call

Answer = Mapping[str, Any] | str | Callable[[PredictorCall], Any]
Script = Answer | Sequence[Answer]


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
    - A callable answer receives the ``PredictorCall`` (``.inputs``, ``.demos``: how many
      few-shot demos the prompt carries) and returns the answer.
    - A list of answers is used in order, the last one repeating.
    - ``faults={"Billing": [TimeoutError("slow"), "not json"], "Triage.choice": [...]}``:
      happen before the scripted answers, in order: an exception instance is raised,
      a string is returned verbatim as the model's text (garbage, wrong JSON...).
    - ``delay_s`` sleeps per call, to stand in for a slow model in benchmarks.

    Every request is recorded in ``calls``.
    """

    def __init__(
        self,
        make: Mapping[str, Script] | None = None,
        choose: Mapping[str, Script] | None = None,
        faults: Mapping[str, Sequence[BaseException | str]] | None = None,
        delay_s: float = 0.0,
        model: str = "bae/scripted",
    ) -> None:
        self.script: dict[str, Script] = {**(make or {})}
        self.script.update({f"{name}.choice": answer for name, answer in (choose or {}).items()})
        self.faults: dict[str, list[BaseException | str]] = {k: list(v) for k, v in (faults or {}).items()}
        self.delay_s = delay_s
        self.calls: list[ScriptedCall] = []
        self._used: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        super().__init__(model, engine=_ScriptedEngine(self), cache=False, num_retries=0)

    def calls_for(self, node: str, kind: str | None = None) -> list[ScriptedCall]:
        return [c for c in self.calls if c.node == node and (kind is None or c.kind == kind)]

    def answer(self) -> str:
        """The text for the current request: a fault, or the scripted answer as JSON."""
        call = current_call()
        if call is None:
            raise LookupError("ScriptedLM answers bae predictors only (no bae predictor is calling)")
        key = f"{call.node}.choice" if call.kind == CHOICE else call.node
        with self._lock:
            pending = self.faults.get(key)
            fault = pending.pop(0) if pending else None
            if fault is None:
                index = self._used[key]
                self._used[key] += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if isinstance(fault, BaseException):
            self._log(ScriptedCall(call.node, call.kind, call.inputs, call.demos, None, repr(fault)))
            raise fault
        if fault is not None:
            self._log(ScriptedCall(call.node, call.kind, call.inputs, call.demos, fault, "text"))
            return fault
        text = json.dumps(self._scripted(key, index, call), default=str)
        self._log(ScriptedCall(call.node, call.kind, call.inputs, call.demos, text))
        return text

    def _scripted(self, key: str, index: int, call: PredictorCall) -> Any:
        if key not in self.script:
            raise LookupError(f"ScriptedLM has no answer for {key!r}; scripted: {sorted(self.script)}")
        script = self.script[key]
        if isinstance(script, Sequence) and not isinstance(script, str):
            script = script[min(index, len(script) - 1)]
        answer = script(call) if callable(script) else script
        return {CHOICE_FIELD: answer} if call.kind == CHOICE and isinstance(answer, str) else answer

    def _log(self, call: ScriptedCall) -> None:
        with self._lock:
            self.calls.append(call)


class _ScriptedEngine:
    """The DSPy engine behind ``ScriptedLM`` (the non-deprecated custom-LM route)."""

    supports_response_schema = True

    def __init__(self, owner: ScriptedLM) -> None:
        self.owner = owner

    def complete(self, request: Any) -> Response:
        text = self.owner.answer()
        prompt_words = sum(len((m.text or "").split()) for m in request.messages)
        return Response(
            id=None,
            model=self.owner.model,
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            usage=Usage(input_tokens=prompt_words, output_tokens=len(text.split())),
        )

    def stream(self, request: Any) -> Any:
        return response_to_events(self.complete(request))

    def close(self) -> None:
        pass
