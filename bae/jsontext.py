"""JSON that is also text: how bae reads what users hand it (run inputs, datasets, HTTP bodies).

``json.loads`` accepts ``"\\ud800"``: valid JSON, but a lone UTF-16 surrogate that no UTF-8
file, prompt or LM request can carry. Let through, it fails much later as an LM error (exit
4); refused here, it is the input error it is. One reader also keeps the reasons a user sees
the same wherever the JSON came from.
"""

from __future__ import annotations

import json
from typing import Any


class JSONTextError(ValueError):
    """Why some bytes are not a JSON document bae can use; the message says what to fix."""


def loads(raw: bytes) -> Any:
    """Parse UTF-8 JSON (a leading byte-order mark is fine) made of real text."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise JSONTextError("not UTF-8 text: save it as UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JSONTextError(f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise JSONTextError("JSON nested too deeply") from None
    check_text(data)
    return data


def check_text(data: Any) -> None:
    """Refuse strings holding lone surrogates, wherever they sit in ``data``."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise JSONTextError(
            "a string holds a lone UTF-16 surrogate escape (like \\ud800), which is not text: fix or remove it"
        ) from None
