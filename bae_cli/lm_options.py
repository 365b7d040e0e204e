"""``--max-tokens`` and ``--lm-timeout``: the bounds on every LM call (``run``, ``serve``, ``compile``, ``eval``).

Each flag is also an environment variable, and a given flag is written back to it, so
``bae.lm_specs.resolve_lm`` reads one place wherever in the command the LM is built.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

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


def apply_lm_limits(max_tokens: int | None, lm_timeout: float | None) -> None:
    """Make the flags the values every LM this process builds gets."""
    if max_tokens is not None:
        os.environ["BAE_MAX_TOKENS"] = str(max_tokens)
    if lm_timeout is not None:
        os.environ["BAE_LM_TIMEOUT"] = str(lm_timeout)
