"""``--lm`` specs to DSPy LMs: the embedded model, any LiteLLM model string, or a factory.

| spec | LM |
|---|---|
| (none) | ``$BAE_LM``, else ``local`` |
| ``local`` / ``local:path.gguf`` | the embedded llama.cpp model (extra ``local``) |
| ``file.py:fn`` / ``pkg.module:fn`` | whatever DSPy LM ``fn()`` returns |
| anything else | ``dspy.LM(spec)``: a LiteLLM model string such as ``openai/gpt-4o-mini`` |
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from bae.exceptions import BaeInputError, BaeLMError
from bae.loader import load_function, split_reference

if TYPE_CHECKING:
    import dspy

DEFAULT_LM = "local"


def lm_spec(spec: str | None) -> str:
    """The spec in force: the flag, else ``$BAE_LM``, else the embedded model."""
    return spec or os.environ.get("BAE_LM") or DEFAULT_LM


def _is_factory(spec: str) -> bool:
    target, attribute = split_reference(spec)
    if attribute is None:
        return False
    return target.endswith(".py") or all(part.isidentifier() for part in target.split("."))


def resolve_lm(spec: str | None) -> dspy.BaseLM:
    """Build the LM a spec names; failures are one line (exit 4 unavailable, 2 malformed spec)."""
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
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network: skip the cost-map download
    import dspy

    try:
        # bae owns retries, so each failure is seen and logged; and no disk cache, so each call really
        # reaches the model (an answer replayed from ~/.dspy_cache would hide an outage, log zero tokens
        # and keep every customer's text on disk).
        return dspy.LM(spec, num_retries=0, cache=False)
    except Exception as exc:
        raise BaeLMError(f"--lm {spec}: {type(exc).__name__}: {exc}") from exc


def lm_name(lm: Any) -> str:
    """The model name recorded in manifests and logs: never a key, never an endpoint."""
    return str(getattr(lm, "model", type(lm).__name__))
