"""What an LM failure means: whether asking again can help, how long to wait, and what to tell the user.

``DSPyBackend`` retries a *transient* failure (timeout, rate limit, 5xx, dropped connection) with
backoff and jitter, honouring a ``Retry-After`` hint; every other failure ends the call at once. The
exceptions DSPy and LiteLLM raise wrap each other, so each question is asked of the whole cause chain
(``bae.exceptions.cause_chain``), by one rule each: a timeout found here is the timeout the run log
marks and the server answers with 504.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from dspy.utils.exceptions import LMNotConfiguredError, is_retryable_lm_error

from bae.exceptions import cause_chain

MAX_DELAY_S = 30.0  # no single wait is longer, whatever the backoff or the service asks

_TRANSIENT_NAMES = {
    "TimeoutError", "Timeout", "APITimeoutError", "RateLimitError", "ServerError", "ServiceUnavailableError",
    "InternalServerError", "APIConnectionError", "TransportError", "ConnectionError",
}  # fmt: skip


def is_transient(exc: BaseException) -> bool:
    """Whether the same request may succeed later: timeouts, rate limits, 5xx, dropped connections."""
    for link in cause_chain(exc):
        if isinstance(link, Exception) and is_retryable_lm_error(link):
            return True
        if {c.__name__ for c in type(link).__mro__} & _TRANSIENT_NAMES:
            return True
        status = getattr(link, "status_code", None) or getattr(link, "status", None)
        if isinstance(status, int) and (status in (408, 429) or status >= 500):
            return True
    return False


def retry_after(exc: BaseException) -> float | None:
    """The wait the service asked for: a ``retry_after`` attribute (DSPy's LM errors) or a
    ``Retry-After`` header (seconds or an HTTP date) on the exception or its response.

    LiteLLM keeps the real response headers of some errors (503s among them) only in
    ``litellm_response_headers``, where DSPy's own mapping does not look.
    """
    for link in cause_chain(exc):
        value = getattr(link, "retry_after", None)
        if value is None:
            value = _retry_after_header(link)
        seconds = _seconds(value)
        if seconds is not None:
            return seconds
    return None


def _retry_after_header(exc: BaseException) -> Any:
    response = getattr(exc, "response", None)
    for headers in (getattr(exc, "headers", None), getattr(response, "headers", None),
                    getattr(exc, "litellm_response_headers", None)):  # fmt: skip
        try:
            items = headers.items() if headers is not None and hasattr(headers, "items") else ()
            value = next((v for k, v in items if str(k).lower() == "retry-after"), None)
        except Exception:  # a header object of an unknown shape is no hint
            value = None
        if value is not None:
            return value
    return None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(str(value))
        except (TypeError, ValueError, IndexError):
            return None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        seconds = max(0.0, (when - datetime.now(UTC)).total_seconds())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def backoff_delay(attempt: int, backoff_s: float, hint: float | None = None, cap_s: float = MAX_DELAY_S) -> float:
    """Seconds to wait before retry ``attempt + 1``: exponential backoff with +-20% jitter, or the
    service's ``Retry-After`` hint plus up to 20% (never sooner than asked), capped at ``cap_s``."""
    if hint is not None:
        return min(hint, cap_s) * random.uniform(1.0, 1.2)
    return float(min(backoff_s * 2**attempt, cap_s)) * random.uniform(0.8, 1.2)


_REFUSAL_NAMES = {"BadRequestError", "UnsupportedParamsError", "LMInvalidRequestError", "LMUnsupportedFeatureError"}


def refuses_logprobs(exc: BaseException) -> bool:
    """Whether the service refused the request because it asked for logprobs: a 400 or 422 (or LiteLLM's
    unsupported parameter) whose message names them. Only that refusal is worth one more request without
    them; any other refusal is a permanent fault, sent once (it would be refused again)."""
    if is_transient(exc):
        return False
    refused = named = False
    for link in cause_chain(exc):
        status = getattr(link, "status_code", None) or getattr(link, "status", None)
        refused = refused or bool({c.__name__ for c in type(link).__mro__} & _REFUSAL_NAMES) or status in (400, 422)
        named = named or "logprob" in str(link).lower()
    return refused and named


def is_runaway_nesting(exc: BaseException) -> bool:
    """Whether parsing an answer failed because it nests deeper than the JSON parser recurses: DSPy's
    ``json_repair`` says "Input nesting exceeds the supported parser recursion depth", ``json`` raises
    ``RecursionError``. A small model with no schema to follow does this (``[[[[``... until
    ``max_tokens``), which is no mistake a self-correction fixes: asking again costs as long again."""
    return any(isinstance(link, RecursionError) or "recursion depth" in str(link) for link in cause_chain(exc))


def is_timeout(exc: BaseException) -> bool:
    """Whether an LM failure is a request that ran out of time (the per-call ``timeout``)."""
    return any(
        isinstance(link, TimeoutError) or any("Timeout" in c.__name__ and "Lock" not in c.__name__
                                               for c in type(link).__mro__)
        for link in cause_chain(exc)
    )  # fmt: skip


def describe(exc: BaseException) -> str:
    """A failed LM call in one line. A missing API key is worded by bae: DSPy spells its remedy
    ``api_key="..."``, which the redaction of every error line rightly takes for a key and hides."""
    keys = getattr(exc, "env_keys", None)
    if isinstance(exc, LMNotConfiguredError) and keys:
        return (
            f"no API key for {exc.model}: set {' or '.join(keys)} in the environment "
            "(in Python, dspy.LM also takes the key as its api_key argument)"
        )
    return short(exc)


def short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
