"""The embedded local LM: a GGUF model run in-process by llama.cpp, behind DSPy's engine contract.

It exists so bae can compile and run graphs with no server, no network and no API key (tests, CI,
demos, air-gapped machines). Design choices and their reasons:

* DSPy 3.4's non-deprecated route for a custom LM is an *engine* object passed to ``dspy.LM``
  (``BaseLM.forward`` overrides warn and disappear in 3.5). The engine declares
  ``supports_response_schema`` and lists ``response_format`` in ``supported_params``; without the
  latter ``JSONAdapter`` never sends the output schema at all.
* Open answers are decoded greedily under a JSON grammar (``bae.local.grammar``); answers whose
  fields are all closed (literals, enums, bools) are chosen by likelihood, not decoded, and a prompt
  is always evaluated as its cached static prefix plus the rest (``bae.local.decoding``), because
  compiled artifacts and their manifests must be reproducible run to run. The weights are loaded
  once per process and closed at exit (``bae.local.model``).
* A GGUF with a chat template is prompted through it; one without is a base model (the bundled
  Gemma), prompted as a plain few-shot document: on the example's dev split, with similar-example
  demos and calibration, its routing scored 0.33 path accuracy in Gemma's chat turns, 0.71 as a
  document.
* Neither llama_cpp nor dspy is imported at module import time, so ``import bae`` stays cheap and
  works without the optional ``local`` extra.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bae.exceptions import BaeLMError
from bae.local.decoding import ClosedAnswer, PrefixCache, Prompt, choose, closed_fields, content_free, render
from bae.local.grammar import FALLBACK_LIST_ITEMS, FALLBACK_STRING_CHARS, attempt, gbnf
from bae.local.model import (
    DEFAULT_LABEL,
    ENV_MODEL,
    INSTALL_HINT,
    N_CTX,
    SEED,
    LoadedModel,
    import_llama_cpp,
    load_model,
    local_label,
    resolve_model,
)

if TYPE_CHECKING:
    import dspy
    from dspy.lm15 import Request, Response, TokenLogprob

__all__ = [
    "DEFAULT_LABEL",
    "DEFAULT_MAX_TOKENS",
    "ENV_MODEL",
    "INSTALL_HINT",
    "N_CTX",
    "SEED",
    "LocalEngine",
    "embedded_engine",
    "load_weights",
    "local_label",
    "local_lm",
]

logger = logging.getLogger(__name__)

# Structured answers are a few short fields (about 4 characters a token). The cap bounds the time a
# small model wastes rambling inside a string (about 4 s at ~65 tokens/s on 2 cores); short verbatim
# loops are stopped well before it. Raise it with ``local_lm(max_tokens=...)`` for a bigger model.
DEFAULT_MAX_TOKENS = 256
# A one-field closed answer (a choice among options) is calibrated against a content-free input
# (bae.local.decoding). Leave-one-out on the example's training traces: the choice 0.83 calibrated;
# made fields worse calibrated (BillingIssue 0.45 vs 0.50, AccountIssue 0.48 vs 0.58), so never those.
CALIBRATE = True


def _json_mode(response_format: Any) -> tuple[bool, str | None]:
    """(constrain to JSON?, the schema as JSON text) from a canonical ``Config.response_format``.

    ``JSONAdapter`` sends ``{"type": "json_schema", "schema": {...}, "name": ..., "strict": True}``
    (DSPy has already flattened the OpenAI wire shape), or ``{"type": "json_object"}`` when the
    outputs have no closed schema (``dict`` fields). The text form keys the grammar cache.
    """
    if not isinstance(response_format, dict) or response_format.get("type") not in (
        "json_schema",
        "json_object",
    ):
        return False, None
    schema = response_format.get("schema")  # also llama-cpp-python's own json_object spelling
    if schema is None and isinstance(response_format.get("json_schema"), dict):
        schema = response_format["json_schema"].get("schema")  # the raw OpenAI shape, from a caller
    return True, json.dumps(schema) if isinstance(schema, dict) else None


def _chat_messages(request: Request) -> list[dict[str, str]]:
    from dspy.lm15 import TextPart, UnsupportedFeatureError

    def text_of(parts: Any, where: str) -> str:
        if isinstance(parts, str):
            return parts
        if not all(isinstance(part, TextPart) for part in parts):
            raise UnsupportedFeatureError(f"the local LM reads text only, not the other parts of {where}")
        return "".join(part.text for part in parts)

    messages: list[dict[str, str]] = []
    for message in request.messages:
        if message.role == "tool":
            raise UnsupportedFeatureError("the local LM has no tool calling", feature="tools")
        role = "assistant" if message.role == "assistant" else "user"  # a developer turn speaks as user
        messages.append({"role": role, "content": text_of(message.parts, f"a {message.role} message")})
    if request.system is not None:
        messages.insert(0, {"role": "system", "content": text_of(request.system, "the system prompt")})
    return messages


class LocalEngine:
    """DSPy engine that answers from an in-process llama.cpp model.

    The engine holds only a path, so DSPy may copy, deepcopy or pickle the LM freely; the loaded
    model lives in a process-wide cache. ``dump_state``/``load_state`` let a program saved with
    this LM set on a predictor be loaded again (DSPy requires both of a custom engine).
    """

    supports_response_schema = True
    supports_function_calling = False
    supports_reasoning = False
    # JSONAdapter sends a response_format only when it is listed here.
    supported_params = frozenset(
        {"response_format", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "logprobs"}
    )

    def __init__(
        self,
        model_file: str | os.PathLike[str],
        *,
        model_name: str,
        recorded_path: str | None = None,
        calibrate: bool = CALIBRATE,
        prefix_cache: bool = True,
    ) -> None:
        self.model_file = os.fspath(model_file)
        self.model_name = model_name
        self.recorded_path = recorded_path
        self.calibrate = calibrate
        self.prefix_cache = prefix_cache

    def _cache(self, model: LoadedModel) -> PrefixCache | None:
        """The model's prefix cache, or None: every prompt prefix evaluated afresh (same answers, slower)."""
        return model.prefixes if self.prefix_cache else None

    def complete(self, request: Request) -> Response:
        from dspy.clients.engines.base import validate_request
        from dspy.lm15 import ConfigurationError, ContextLengthError, UnsupportedFeatureError

        from bae.confidence import answer_logprobs

        validate_request(request)
        if request.tools:
            raise UnsupportedFeatureError("the local LM has no tool calling", feature="tools")
        try:
            model = load_model(Path(self.model_file))
        except BaeLMError as exc:
            # Inside a DSPy call only lm15 errors are expected ones; DSPy raises this as
            # dspy.utils.exceptions.LMConfigurationError with the same message, and does not retry.
            raise ConfigurationError(exc.message) from exc
        config = request.config
        json_mode, schema_json = _json_mode(config.response_format)
        messages = _chat_messages(request)
        prompt = render(model.llama, messages, model.formatter)
        if len(prompt.tokens) >= N_CTX:
            raise ContextLengthError(f"the prompt has {len(prompt.tokens)} tokens; the local LM's n_ctx is {N_CTX}")
        fields = closed_fields(json.loads(schema_json)) if schema_json is not None else None
        if fields is not None and not config.temperature:
            with model.lock:
                answer = self._choose(model, prompt, messages, fields)
            # each chosen value's share of its options' scores, as DSPy's logprobs carry it (bae.confidence)
            odds = answer_logprobs(answer.text, answer.probabilities) if config.logprobs is not None else None
            return _response(self.model_name, answer.text, "stop", len(prompt.tokens), answer.completion_tokens, odds)
        options: dict[str, Any] = {
            # Greedy unless a caller (an optimizer exploring) asks for sampling; seeded either way.
            "temperature": 0.0 if config.temperature is None else float(config.temperature),
            "seed": SEED if config.seed is None else config.seed,
            "max_tokens": config.max_tokens or DEFAULT_MAX_TOKENS,
            "repeat_penalty": 1.0,
        }
        if config.top_p is not None:
            options["top_p"] = config.top_p
        if config.top_k is not None:
            options["top_k"] = config.top_k
        if config.stop:
            options["stop"] = list(config.stop)
        grammar = gbnf(schema_json) if json_mode else None
        with model.lock:
            result, cut = attempt(model.llama, prompt, self._cache(model), options, grammar, stop_loops=True)
            attempts = [result]
            if cut is not None:
                # Cut off mid-JSON, the answer cannot parse. Redo it under caps that make every string
                # and list end, with the rest of the context as the budget.
                logger.warning(
                    "the embedded model %s in an answer, so it answered again with each text at most %s "
                    "characters and each list at most %s items long: a text in this answer may end abruptly",
                    cut,
                    FALLBACK_STRING_CHARS,
                    FALLBACK_LIST_ITEMS,
                )
                options["max_tokens"] = None
                bounded = gbnf(schema_json, bounded=True)
                result, cut = attempt(model.llama, prompt, self._cache(model), options, bounded, stop_loops=False)
                attempts.append(result)
        choice = result["choices"][0]
        # Usage is what the call cost, so a redone answer counts both attempts.
        return _response(
            self.model_name,
            choice.get("text") or "",
            "length" if cut is not None or choice.get("finish_reason") == "length" else "stop",
            sum(attempt["usage"]["prompt_tokens"] for attempt in attempts),
            sum(attempt["usage"]["completion_tokens"] for attempt in attempts),
        )

    def _choose(
        self, model: LoadedModel, prompt: Prompt, messages: list[dict[str, str]], fields: list[tuple[str, list[str]]]
    ) -> ClosedAnswer:
        free_messages = content_free(messages) if self.calibrate and len(fields) == 1 else None
        free = render(model.llama, free_messages, model.formatter) if free_messages is not None else None
        answer = choose(model.llama, prompt, fields, self._cache(model), free)
        logger.debug("closed answer %s by %s scores %s", answer.text, "calibrated" if free else "raw", answer.scores)
        return answer

    def stream(self, request: Request) -> Any:
        """Streams the finished answer as events: a grammar-bound answer is short and fast to make."""
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Nothing to close: the model is shared process-wide, and DSPy treats engines as borrowed."""

    def dump_state(self) -> dict[str, Any]:
        return {"model_path": self.recorded_path, "calibrate": self.calibrate, "prefix_cache": self.prefix_cache}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> LocalEngine:
        model_file, label, recorded = resolve_model(state.get("model_path"))
        return cls(
            model_file,
            model_name=label.split("/", 1)[1],
            recorded_path=recorded,
            calibrate=bool(state.get("calibrate", CALIBRATE)),
            prefix_cache=bool(state.get("prefix_cache", True)),
        )


def _response(
    model: str,
    text: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    logprobs: tuple[TokenLogprob, ...] | None = None,
) -> Response:
    from dspy.lm15 import Message, Response, TextPart, Usage

    return Response(
        id=None,  # llama-cpp-python makes up a random id; keep responses reproducible
        model=model,
        message=Message.assistant([TextPart(text)]),
        finish_reason=finish_reason,
        usage=Usage(
            input_tokens=prompt_tokens, output_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
        ),
        logprobs=logprobs,
    )


def embedded_engine(lm: Any) -> LocalEngine | None:
    """The embedded engine behind a ``dspy.LM``, or None for any other LM."""
    engine = getattr(lm, "engine", None)
    return engine if isinstance(engine, LocalEngine) else None


def load_weights(lm: Any) -> bool:
    """Load an embedded LM's weights now rather than at its first call, so a progress display can say what
    the wait is (True); any other LM has nothing to load (False)."""
    engine = embedded_engine(lm)
    if engine is None:
        return False
    load_model(Path(engine.model_file))
    return True


def local_lm(
    model_path: str | os.PathLike[str] | None = None,
    *,
    max_tokens: int | None = None,
    calibrate: bool = CALIBRATE,
    prefix_cache: bool = True,
) -> dspy.LM:
    """A ``dspy.LM`` backed by a local GGUF model, which itself loads on the first call.

    ``model_path`` defaults to ``$BAE_LOCAL_MODEL``, then to the bundled Gemma 3 270M. What can be
    checked without loading (the optional dependencies, the file, its GGUF header) is checked here,
    so a missing model is a ``BaeLMError`` at setup rather than a failure mid-run. DSPy's response
    cache is off because generation is deterministic and cheap and a disk cache would outlive engine
    changes; retries are off because a local failure does not go away by asking again.

    ``calibrate`` subtracts a one-field closed answer's (a choice's) score for a content-free input;
    ``prefix_cache=False`` evaluates every prompt prefix afresh, for checking that the cache changes
    nothing but speed (``bae.local.decoding``).
    """
    import_llama_cpp()
    model_file, label, recorded = resolve_model(model_path)
    import dspy

    engine = LocalEngine(
        model_file,
        model_name=label.split("/", 1)[1],
        recorded_path=recorded,
        calibrate=calibrate,
        prefix_cache=prefix_cache,
    )
    return dspy.LM(label, engine=engine, cache=False, num_retries=0, max_tokens=max_tokens)
