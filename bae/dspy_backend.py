"""``DSPyBackend``: the ``LM`` protocol on DSPy predictors, with bounded retries.

Two failure families are handled differently on purpose. A parse or validation
failure is the model's mistake: bae retries with the error shown to the model
(self-correction). A transient LM failure (timeout, rate limit, 5xx) is the
service's: bae retries the same request with backoff and jitter (``bae.lm_failures``
says which is which).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import dspy
from dspy.utils.exceptions import AdapterParseError
from pydantic import ValidationError

from bae.adapter import CachingJSONAdapter, schema_hint
from bae.confidence import LOGPROBS, closed_outputs, confidence
from bae.exceptions import BaeError, BaeLMError, BaeParseError
from bae.lm_failures import (
    backoff_delay,
    describe,
    is_runaway_nesting,
    is_timeout,
    is_transient,
    refuses_logprobs,
    retry_after,
    short,
)
from bae.lm_specs import default_lm
from bae.node import Node, spec_of
from bae.predictors import (
    CHOICE,
    CHOICE_FIELD,
    FEEDBACK_FIELD,
    MAKE,
    NodePredict,
    new_predictor,
    with_feedback,
)
from bae.resolve import RunState, context_inputs, visible_state
from bae.result import CallRecord
from bae.run import active_run
from bae.usage import SOURCES, UsageCounter
from bae.wording import counted

logger = logging.getLogger("bae")

T = TypeVar("T", bound=Node)
R = TypeVar("R")  # what a call builds from the answer: a node, or the chosen name


def _usage(prediction: dspy.Prediction) -> tuple[int | None, int | None, float | None]:
    usage = prediction.get_lm_usage()
    if not usage:
        return None, None, None
    prompt = completion = 0
    cost: float | None = None
    for figures in usage.values():
        prompt += int(figures.get("prompt_tokens") or 0)
        completion += int(figures.get("completion_tokens") or 0)
        if isinstance(figures.get("cost"), int | float):
            cost = (cost or 0) + figures["cost"]
    return prompt, completion, cost


@dataclass
class _Tally:
    """One call's bookkeeping for its run-log record: requests sent (answers plus transient retries, so a
    failure that a retry recovered still shows in the run log) and each answer's token usage."""

    requests: int = 0
    tokens: list[tuple[int | None, int | None, float | None]] = field(default_factory=list)
    cut: str | None = None  # "length" or "timeout": a request was cut short by a bound bae set
    confidence: float | None = None  # of the accepted answer's closed values (bae.confidence)


_TALLY: ContextVar[_Tally | None] = ContextVar("bae_call_tally", default=None)


class _TruncationFilter(logging.Filter):
    """Marks the call in progress ``cut="length"`` when DSPy reports an answer stopped at ``max_tokens``.

    DSPy sees ``finish_reason == "length"`` and only logs it (logger ``dspy.clients.lm``); the answer then
    fails to parse and is self-corrected. Inside a bae call the multi-line warning is replaced by the
    run-log mark and a debug line; outside one it passes through untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        tally = _TALLY.get()
        if tally is None or not str(record.msg).startswith("LM response was truncated"):
            return True
        tally.cut = tally.cut or "length"
        logger.debug("answer cut at max_tokens")
        return False


logging.getLogger("dspy.clients.lm").addFilter(_TruncationFilter())


class DSPyBackend:
    """Make and decide nodes with DSPy predictors, one naive predictor per node and kind.

    ``model`` is the DSPy LM the predictors call: by default DSPy's configured LM, else the CLI's default
    (``$BAE_LM``, else the embedded model: ``bae.lm_specs.default_lm``); ``adapter`` is how they talk to it
    (bae's JSON adapter). Each call runs under ``dspy.context`` so worker threads never touch global
    settings. DSPy's trace and history are not grown by calls made here, so a long-lived backend stays
    bounded. Every call is recorded on the run in progress (``bae.run``) and counted here (``get_stats``).

    Each call asks for logprobs, so a call's record carries the model's confidence in its closed answer
    (``bae.confidence``) where the engine reports one. A model that refuses the parameter (a 400) is asked
    again without it, and never again with it from this backend: confidence is absent, nothing breaks.
    """

    def __init__(
        self,
        model: dspy.BaseLM | None = None,
        adapter: dspy.Adapter | None = None,
        max_retries: int = 2,
        max_transient_retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self.model = model
        self.adapter = adapter if adapter is not None else CachingJSONAdapter()
        # every call's dspy.context; built once, so the LM and adapter are fixed at construction
        self._overrides: dict[str, Any] = {
            "adapter": self.adapter,
            "track_usage": True,
            "max_trace_size": 0,
            "disable_history": True,
            **({"lm": model} if model is not None else {}),
        }
        self.max_retries = max_retries
        self.max_transient_retries = max_transient_retries
        self.backoff_s = backoff_s
        self.usage = UsageCounter()
        self.ask_logprobs = True  # until the model refuses them
        self._naive: dict[tuple[type[Node], str], NodePredict] = {}
        self._lock = threading.Lock()

    # -- the LM protocol ---------------------------------------------------------------
    def make(self, node: Node, target: type[T]) -> T:
        run = active_run()
        state = run.state if run is not None else RunState.of(node)
        inputs = context_inputs(target, node, state)
        if not spec_of(target).generated:
            return target(**inputs)  # nothing to generate: no LM call
        predictor, source = self.predictor_for(target, MAKE)
        return self._predict(predictor, source, inputs, lambda out: target(**inputs, **out))

    def decide(self, node: Node) -> Node | None:
        spec = spec_of(type(node))
        if len(spec.choices) == 1:
            chosen = spec.choices[0]
        else:
            predictor, source = self.predictor_for(type(node), CHOICE)
            chosen = self._predict(predictor, source, visible_state(node), lambda out: str(out[CHOICE_FIELD]))
        target = spec.successor(chosen)
        return None if target is None else self.make(node, target)

    # -- predictors --------------------------------------------------------------------
    def predictor_for(self, cls: type[Node], kind: str) -> tuple[NodePredict, str]:
        """The predictor serving ``cls`` for ``kind`` and its source; here always a naive one."""
        return self.naive_predictor(cls, kind), "naive"

    def naive_predictor(self, cls: type[Node], kind: str) -> NodePredict:
        key = (cls, kind)
        predictor = self._naive.get(key)
        if predictor is None:
            with self._lock:
                predictor = self._naive.get(key)
                if predictor is None:
                    predictor = new_predictor(cls, kind)
                    self._naive[key] = predictor
        return predictor

    def answer(self, predictor: NodePredict, inputs: dict[str, Any], source: str = "naive") -> dict[str, Any]:
        """``predictor``'s answer to ``inputs`` as its output fields, with the same retries and records as a
        run's call (leave-one-out at compile asks predictors this way)."""
        return self._predict(predictor, source, inputs, dict)

    def record_pass(
        self, predictor: NodePredict, source: str, started: float, prompt_tokens: int, error: BaseException | None
    ) -> None:
        """Record a call answered by reading the model directly (``bae.decisions``), not by a DSPy request."""
        self._record(predictor, source, started, _Tally(1, [(prompt_tokens, 0, None)]), error)

    # -- calling -----------------------------------------------------------------------
    def _predict(
        self,
        predictor: NodePredict,
        source: str,
        inputs: dict[str, Any],
        build: Callable[[dict[str, Any]], R],
    ) -> R:
        """Call ``predictor`` and ``build`` the result; every outcome, success or failure, is recorded."""
        tally = _Tally()
        started = time.perf_counter()
        token = _TALLY.set(tally)
        try:
            result = self._self_correcting(predictor, inputs, build, tally)
        except BaseException as exc:
            self._record(predictor, source, started, tally, exc)
            raise
        finally:
            _TALLY.reset(token)
        self._record(predictor, source, started, tally, None)
        return result

    def _self_correcting(
        self,
        predictor: NodePredict,
        inputs: dict[str, Any],
        build: Callable[[dict[str, Any]], R],
        tally: _Tally,
    ) -> R:
        """Up to ``max_retries + 1`` answers; a rejected one is shown to the model with the error."""
        feedback: str | None = None
        rejected: BaseException | None = None
        answers = self.max_retries + 1
        for _ in range(answers):
            try:
                prediction = self._call(predictor, inputs, feedback, tally)
                tally.tokens.append(_usage(prediction))
                built = build({name: prediction[name] for name in _output_names(predictor.signature)})
                tally.confidence = confidence(prediction.get("logprobs"), closed_outputs(predictor.signature))
                return built
            except (AdapterParseError, ValidationError) as exc:
                rejected, feedback = exc, short(exc)
                logger.debug("%s %s: rejected answer (%s); retrying", predictor.node_name, predictor.kind, feedback)
        raise BaeParseError(
            f"{predictor.node_name} ({predictor.kind}): the LM's answer did not parse after "
            f"{counted(answers, 'attempt')}: {feedback}{schema_hint()}",
            cause=rejected,
        )

    def _call(
        self, predictor: NodePredict, inputs: dict[str, Any], feedback: str | None, tally: _Tally
    ) -> dspy.Prediction:
        """One answer, its request retried with backoff and jitter while the LM fails transiently."""
        kwargs = dict(inputs)
        if feedback is not None:
            kwargs.update(signature=with_feedback(predictor.signature), **{FEEDBACK_FIELD: feedback})
        overrides = self._overrides
        if self.model is None and dspy.settings.lm is None:  # no LM given or configured: the CLI's default
            overrides = {**overrides, "lm": default_lm()}
        for attempt in range(self.max_transient_retries + 1):
            try:
                return self._request(predictor, kwargs, overrides, tally)
            except (AdapterParseError, ValidationError, BaeError):
                raise
            except Exception as exc:
                timed_out = is_timeout(exc)
                if timed_out:
                    tally.cut = "timeout"
                where = f"{predictor.node_name} ({predictor.kind})"
                if is_runaway_nesting(exc):  # the same request would loop the same way: no retry
                    raise BaeLMError(
                        f"{where}: the LM's answer is nested too deep to parse "
                        f"({short(exc)}){schema_hint() or ': a model looping inside brackets'}",
                        cause=exc,
                    ) from exc
                if not is_transient(exc):
                    failed = f"{where}: LM call failed: {describe(exc)}"
                    raise BaeLMError(failed, cause=exc, timed_out=timed_out) from exc
                if attempt == self.max_transient_retries:
                    raise BaeLMError(
                        f"{where}: LM still failing after {counted(attempt + 1, 'attempt')}: {short(exc)}",
                        cause=exc,
                        timed_out=timed_out,
                    ) from exc
                delay = backoff_delay(attempt, self.backoff_s, retry_after(exc))
                logger.debug(
                    "%s %s: transient %s; retry in %.2fs",
                    predictor.node_name,
                    predictor.kind,
                    type(exc).__name__,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _request(
        self, predictor: NodePredict, kwargs: dict[str, Any], overrides: dict[str, Any], tally: _Tally
    ) -> dspy.Prediction:
        """One request, asking for logprobs unless the model refused them; refused for them (a 400 naming
        them), it is sent once more without, and a model that then answers is not asked for them again."""
        tally.requests += 1
        if not self.ask_logprobs:
            with dspy.context(**overrides):
                return predictor(**kwargs)
        try:
            with dspy.context(**overrides):
                return predictor(**kwargs, config=dict(LOGPROBS))
        except (AdapterParseError, ValidationError, BaeError):
            raise
        except Exception as exc:
            if not refuses_logprobs(exc):
                raise
            refusal = short(exc)
        tally.requests += 1
        with dspy.context(**overrides):
            prediction = predictor(**kwargs)  # a failure here is the request's own, handled by the caller
        self.ask_logprobs = False
        logger.debug("%s %s: the LM refused logprobs (%s): no confidence from it", predictor.node_name,
                     predictor.kind, refusal)  # fmt: skip
        return prediction

    def _record(
        self,
        predictor: NodePredict,
        source: str,
        started: float,
        tally: _Tally,
        error: BaseException | None,
    ) -> None:
        tokens = tally.tokens
        if len(tokens) == 1:
            prompt, completion, cost = tokens[0]
        else:
            prompt, completion, cost = (_total([t[i] for t in tokens]) for i in range(3))
        run = active_run()
        record = CallRecord(
            node=predictor.node_name,
            kind=predictor.kind,
            source=source,
            latency_s=time.perf_counter() - started,
            attempts=tally.requests,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost=cost,
            error=None if error is None or isinstance(error, GeneratorExit) else short(error),
            cut=tally.cut,
            confidence=None if error is not None else tally.confidence,
            step=None if run is None else len(run.trace),
        )
        self.usage.add(record)
        if run is not None:
            run.record_call(record)
        logger.debug("call %s", record)

    def get_stats(self) -> dict[str, Any]:
        """Calls by source overall and per ``Node.kind``: answers "which nodes ran optimized?"."""
        rows = self.usage.rows()
        nodes = {f"{r.node}.{r.kind}": {**{s: getattr(r, s) for s in SOURCES}, "errors": r.errors} for r in rows}
        totals = {source: sum(getattr(r, source) for r in rows) for source in SOURCES}
        return {**totals, "errors": sum(r.errors for r in rows), "nodes": nodes}


def _total(values: list[Any]) -> Any:
    """The sum of one usage figure over a call's answers; None when no answer reported it."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


@functools.lru_cache(maxsize=4096)
def _output_names(signature: type[dspy.Signature]) -> tuple[str, ...]:
    """A signature's output field names: DSPy recomputes ``output_fields`` on every access."""
    return tuple(signature.output_fields)
