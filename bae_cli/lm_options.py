"""The options that say how to reach the LM, shared by ``run``, ``serve``, ``compile`` and ``eval``.

``--lm`` names it; ``--max-tokens`` and ``--lm-timeout`` bound every call to a model string;
``--response-format`` says how its server takes an answer's JSON schema. Each is also an environment
variable, read here, at the edge, once: the library gets them as an ``LMSettings``, never from the
environment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from bae.lm_specs import LMSettings

LmOption = Annotated[
    str | None,
    typer.Option(
        "--lm",
        envvar="BAE_LM",
        help="LM to call: 'local' (embedded model, default), 'local:path.gguf', a LiteLLM model string "
        "such as 'openai/gpt-4o-mini', or 'module:factory' returning a DSPy LM. Also $BAE_LM.",
        show_default=False,
    ),
]
MaxTokensOption = Annotated[
    int | None,
    typer.Option(
        "--max-tokens",
        envvar="BAE_MAX_TOKENS",
        min=1,
        help="Most tokens one LM answer may generate (default 1024; the embedded model keeps its own). "
        "Also $BAE_MAX_TOKENS.",
        show_default=False,
    ),
]
LmTimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--lm-timeout",
        envvar="BAE_LM_TIMEOUT",
        min=0.001,
        help="Seconds one LM request may take (default 180); a timeout is retried, then exit 4. Also $BAE_LM_TIMEOUT.",
        show_default=False,
    ),
]


def _known_response_format(value: str | None) -> str | None:
    """Refused while the command line is parsed, so the error names the flag or its variable."""
    from bae.lm_specs import RESPONSE_FORMATS

    if value and value not in RESPONSE_FORMATS:
        raise typer.BadParameter(f"{value!r}: use one of {', '.join(RESPONSE_FORMATS)}")
    return value


ResponseFormatOption = Annotated[
    str | None,
    typer.Option(
        "--response-format",
        envvar="BAE_RESPONSE_FORMAT",
        help="How the LM's server takes an answer's JSON schema, for a model LiteLLM does not know: "
        "json_object_schema (llama-cpp-python's server) or json_schema (vLLM, llama.cpp's llama-server). "
        "Also $BAE_RESPONSE_FORMAT.",
        show_default=False,
        callback=_known_response_format,
    ),
]


def lm_settings(max_tokens: int | None, lm_timeout: float | None, response_format: str | None) -> LMSettings:
    """The flags (or their variables) as the library's settings; what is not given keeps its default."""
    from bae.lm_specs import LMSettings

    given = {"max_tokens": max_tokens, "timeout_s": lm_timeout, "response_format": response_format or None}
    return LMSettings(**{name: value for name, value in given.items() if value is not None})
