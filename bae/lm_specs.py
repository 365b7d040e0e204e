"""``--lm`` specs to DSPy LMs: the embedded model, any LiteLLM model string, or a factory.

| spec | LM |
|---|---|
| (none) | ``$BAE_LM``, else ``local``; also a program's LM when it names none (``default_lm``) |
| ``local`` / ``local:path.gguf`` | the embedded llama.cpp model (extra ``local``) |
| ``file.py:fn`` / ``pkg.module:fn`` | whatever DSPy LM ``fn()`` returns |
| anything else | ``dspy.LM(spec)``: a LiteLLM model string such as ``openai/gpt-4o-mini`` |

Every LM call is bounded: a model string gets ``max_tokens`` (default ``DEFAULT_MAX_TOKENS``) and a
per-request ``timeout`` in seconds (default ``DEFAULT_LM_TIMEOUT_S``) from the ``LMSettings`` it is
built with (the CLI's ``--max-tokens`` and ``--lm-timeout``). Without them a small model that loops
inside a string generates up to the server's context length, and nothing bounds the wait. A timeout is
a transient failure to bae (retried with backoff, then exit 4). The embedded model has its own
``max_tokens``; a factory's LM is taken as built.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bae.exceptions import BaeInputError, BaeLMError
from bae.loader import load_function, split_reference

if TYPE_CHECKING:
    import dspy

DEFAULT_LM = "local"
DEFAULT_MAX_TOKENS = 1024  # generous for a structured answer; a looping model stops here
DEFAULT_LM_TIMEOUT_S = 180.0  # one request, on a slow CPU server; retried, so a stuck call ends in minutes


RESPONSE_FORMATS = ("json_schema", "json_object_schema")  # how a server takes an answer's schema (bae.adapter)


@dataclass(frozen=True)
class LMSettings:
    """How bae talks to a model string's LM: the bounds on every call, and the form its server takes an
    answer's JSON schema in (None: DSPy decides). Passed explicitly; the CLI builds one from its flags."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    timeout_s: float = DEFAULT_LM_TIMEOUT_S
    response_format: str | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or not 0 < self.timeout_s < float("inf"):
            raise BaeInputError(f"max tokens ({self.max_tokens}) and LM timeout ({self.timeout_s}) must be positive")
        if self.response_format is not None and self.response_format not in RESPONSE_FORMATS:
            raise BaeInputError(
                f"response format {self.response_format!r}: use one of {', '.join(RESPONSE_FORMATS)}"
            )


def lm_spec(spec: str | None) -> str:
    """The spec in force: the flag, else ``$BAE_LM``, else the embedded model."""
    return spec or os.environ.get("BAE_LM") or DEFAULT_LM


_DEFAULTS: dict[str, dspy.BaseLM] = {}
_DEFAULTS_LOCK = threading.Lock()


def default_lm() -> dspy.BaseLM:
    """The LM a program gets when it names none, as the CLI does: ``$BAE_LM``, else the embedded model.

    Built once per spec and process, so every ``Graph.run`` without an LM shares one embedded model
    (loaded on its first call) instead of loading it again."""
    spec = lm_spec(None)
    with _DEFAULTS_LOCK:
        lm = _DEFAULTS.get(spec)
        if lm is None:
            lm = _DEFAULTS[spec] = resolve_lm(spec)
        return lm


def _is_factory(spec: str) -> bool:
    target, attribute = split_reference(spec)
    if attribute is None:
        return False
    return target.endswith(".py") or all(part.isidentifier() for part in target.split("."))


def resolve_lm(spec: str | None, settings: LMSettings = LMSettings()) -> dspy.BaseLM:
    """Build the LM a spec names, a model string bounded by ``settings``; failures are one line (exit 4
    unavailable, 2 malformed spec)."""
    spec = lm_spec(spec)
    if spec == "local" or spec.startswith("local:"):
        from bae.local.engine import local_lm

        return local_lm(spec.partition(":")[2] or None)
    if _is_factory(spec):
        factory = load_function(spec, "--lm factory")
        try:
            lm = factory()
        except Exception as exc:
            raise BaeLMError(f"--lm {spec}: the factory failed: {type(exc).__name__}: {exc}") from exc
        import dspy

        if not isinstance(lm, dspy.BaseLM):
            raise BaeInputError(f"--lm {spec}: the factory returned {type(lm).__name__}, not a dspy LM")
        return lm
    if "/" not in spec:
        raise BaeInputError(
            f"--lm {spec!r} is not a model spec: use local, provider/model (e.g. openai/gpt-4o-mini) or module:factory"
        )
    import dspy

    from bae.adapter import FormattedLM

    # bae owns retries, so each failure is seen and logged; and no disk cache, so each call really
    # reaches the model (an answer replayed from ~/.dspy_cache would hide an outage, log zero tokens
    # and keep every customer's text on disk). Bounded: see the module docstring.
    options: dict[str, Any] = {
        "num_retries": 0, "cache": False, "max_tokens": settings.max_tokens, "timeout": settings.timeout_s
    }  # fmt: skip
    try:
        if settings.response_format is not None:
            return FormattedLM(spec, response_format=settings.response_format, **options)
        return dspy.LM(spec, **options)
    except Exception as exc:
        raise BaeLMError(f"--lm {spec}: {type(exc).__name__}: {exc}") from exc


def lm_name(lm: Any) -> str:
    """The model name recorded in manifests and logs: never a key, never an endpoint."""
    return str(getattr(lm, "model", type(lm).__name__))
