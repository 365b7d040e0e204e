"""Keep keys and endpoints out of everything bae writes or answers: run log, HTTP errors, bundles.

Error text comes from LM clients and may quote a key, a bearer token or a private endpoint
back. Known shapes are matched; a key with no telltale shape (Azure's are bare hex) is
recognisable only as a value this process was given in a secret-named environment variable.
"""

from __future__ import annotations

import os
import re

MAX_ERROR_CHARS = 2000

_SECRETS = re.compile(
    r"[a-z][a-z0-9+.-]*://\S+"  # any URL: endpoints, and userinfo credentials inside them
    r"|\bBearer\s+\S+"
    r"|\b(?:sk-|pk-|rk-|gsk_|xai-|hf_|ghp_|github_pat_|AKIA)[A-Za-z0-9_-]{12,}"
    r"|\b(?:api[-_]?key|token|secret|password|authorization)\b\s*[=:]\s*(?:Bearer\s+)?\S+",
    re.IGNORECASE,
)

_SECRET_NAMES = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
MIN_SECRET_CHARS = 8  # shorter values ("1", "true") are settings, and replacing them would garble messages


def _environment_secrets() -> list[str]:
    """Values of secret-named environment variables, longest first: a key without a telltale prefix
    (Azure's are bare hex) is recognisable only by being the value the process was given."""
    values = {v for k, v in os.environ.items() if _SECRET_NAMES.search(k) and len(v) >= MIN_SECRET_CHARS}
    return sorted(values, key=len, reverse=True)


def redact(text: str | None) -> str | None:
    """``text`` with keys, tokens and URLs replaced by ``[redacted]``, and cut to ``MAX_ERROR_CHARS``."""
    if text is None:
        return None
    for secret in _environment_secrets():
        text = text.replace(secret, "[redacted]")
    scrubbed = _SECRETS.sub("[redacted]", text)
    return scrubbed if len(scrubbed) <= MAX_ERROR_CHARS else scrubbed[: MAX_ERROR_CHARS - 1] + "…"
