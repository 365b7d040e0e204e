"""DSPy's JSONAdapter, rendering a predictor's system message and demos once instead of on every call.

DSPy formats the system message and every few-shot demo again on each call, building a
Pydantic ``TypeAdapter`` for every value it serializes. For a compiled predictor with demos
that is about 60% of a call's CPU, and since it holds the GIL it caps how many runs one
process keeps in flight (``bench/batch.py``). Both depend only on the signature and the demo
objects, which a loaded predictor never changes, so they are rendered once and reused; the
messages are exactly the ones JSONAdapter renders. A demo mutated in place after it was
rendered is not re-rendered: DSPy's optimizers replace demos, they do not edit them.

A ``FormattedLM`` (``LMSettings.response_format``, the CLI's ``--response-format``) forces how each
answer's JSON schema is sent, for a server LiteLLM does not know (``openai/<alias>``), where DSPy
sends no ``response_format`` and a small model answers in free text that does not parse:
``json_schema`` (OpenAI's form: vLLM, llama.cpp's ``llama-server``) or ``json_object_schema``
(``{"type": "json_object", "schema": ...}``: llama-cpp-python's server, which refuses OpenAI's form
with a 400). The setting travels with the LM it describes; for any other LM, DSPy decides from
LiteLLM's model information.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextvars import ContextVar
from typing import Any

import dspy
from dspy.adapters.json_adapter import _get_structured_outputs_response_format

Messages = list[dict[str, Any]]


class FormattedLM(dspy.LM):
    """A LiteLLM model whose server takes each answer's JSON schema in one given form (see the module doc)."""

    def __init__(self, model: str, *, response_format: str, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.response_format = response_format


# Whether the request of the answer being parsed in this context carried no JSON schema (see schema_hint).
_SCHEMALESS: ContextVar[bool] = ContextVar("bae_schemaless_request", default=False)


def _has_schema(response_format: Any) -> bool:
    """Whether a ``response_format`` constrains the answer to a schema (a Pydantic model, OpenAI's
    ``json_schema`` form, or ``json_object`` with a ``schema``), not just to some JSON."""
    if isinstance(response_format, dict):
        return response_format.get("type") == "json_schema" or "schema" in response_format
    return isinstance(response_format, type)


def schema_hint() -> str:
    """What to do about an answer that did not parse, when its request went to a model LiteLLM does not
    know and so carried no JSON schema (empty otherwise): the variable that sends one."""
    if not _SCHEMALESS.get():
        return ""
    return (
        ": the LM was sent no JSON schema for its answer (LiteLLM does not know the model); for a llama.cpp "
        "or vLLM server pass --response-format json_object_schema (llama-cpp-python's server) or "
        "json_schema (vLLM, llama.cpp's llama-server), or set BAE_RESPONSE_FORMAT"
    )


class _LRU:
    """A small thread-safe LRU map: signatures made for self-correction come and go."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[object, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: object) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: object, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class CachingJSONAdapter(dspy.JSONAdapter):
    """A ``dspy.JSONAdapter`` that reuses rendered system messages and demos (see the module doc)."""

    def __init__(self, cache_size: int = 1024, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._systems = _LRU(cache_size)
        self._demos = _LRU(cache_size)

    def _prepare_response_format(self, lm: Any, lm_kwargs: dict[str, Any], signature: type[dspy.Signature]) -> None:
        forced = lm.response_format if isinstance(lm, FormattedLM) else None
        if forced is None:
            super()._prepare_response_format(lm, lm_kwargs, signature)
            model_string = isinstance(getattr(lm, "engine", None), str)  # not a custom engine (embedded, scripted)
            _SCHEMALESS.set(model_string and not _has_schema(lm_kwargs.get("response_format")))
            return
        _SCHEMALESS.set(False)
        model = _get_structured_outputs_response_format(signature, self.use_native_function_calling)
        if forced == "json_schema":
            lm_kwargs["response_format"] = model  # LiteLLM sends a Pydantic model in OpenAI's form
        else:
            lm_kwargs["response_format"] = {"type": "json_object", "schema": model.model_json_schema()}

    def format_system_message(self, signature: type[dspy.Signature]) -> str:
        rendered: str | None = self._systems.get(signature)
        if rendered is None:
            rendered = str(super().format_system_message(signature))
            self._systems.put(signature, rendered)
        return rendered

    def format_demos(self, signature: type[dspy.Signature], demos: list[dict[str, Any]]) -> Messages:
        # Keyed by the demo objects' identities; the entry holds the demos, so no id is reused while it lives.
        key = (signature, *map(id, demos))
        entry: tuple[tuple[Any, ...], Messages] | None = self._demos.get(key)
        if entry is None:
            entry = (tuple(demos), super().format_demos(signature, demos))
            self._demos.put(key, entry)
        return [dict(message) for message in entry[1]]
