"""Run inputs: a start node from JSON text, one input or a batch file of them, each problem named.

``bae run`` reads its inputs here (``--input``, ``--input-file``, stdin, ``--batch``), so a batch line and
a single input are refused in the same words; ``bae serve`` checks the same fields through its request
model. A bad batch line does not stop the batch: it is kept as its error, reported with the results.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from bae import jsontext
from bae.exceptions import BaeInputError
from bae.jsontext import JSONTextError
from bae.node import Node
from bae.wording import unknown_names

MAX_INPUT_BYTES = 1024 * 1024  # far beyond any prompt; a bigger input is a mistake, not a ticket


def parse_input(text: str | bytes, start: type[Node], where: str) -> Node:
    """The start node from JSON, with every bad field named in one line and the expected shape shown."""
    raw = text.encode() if isinstance(text, str) else text
    expected = f"give {start.__name__}'s fields as a JSON object, e.g. {_shape(start)}"
    if len(raw) > MAX_INPUT_BYTES:
        raise BaeInputError(
            f"{where}: input is over {MAX_INPUT_BYTES // 1024 // 1024} MB: pass large documents by reference "
            "(a path or id that a Dep service loads)"
        )
    if not raw.strip():
        raise BaeInputError(f"{where}: input is empty: {expected}")
    try:
        data = jsontext.loads(raw)
    except JSONTextError as exc:
        raise BaeInputError(f"{where}: {exc}: {expected}") from None
    if not isinstance(data, dict):
        raise BaeInputError(f"{where}: expected a JSON object, got {type(data).__name__}: {expected}")
    problems = unknown_names(data, start.model_fields)  # a typo is named, not silently dropped
    try:
        node = start.model_validate(data)
    except ValidationError as exc:
        problems += [f"{'.'.join(str(p) for p in e['loc']) or '(input)'}: {e['msg']}" for e in exc.errors()]
        raise BaeInputError(f"{where}: not a valid {start.__name__}: {'; '.join(problems)}: {expected}") from None
    if problems:
        raise BaeInputError(f"{where}: not a valid {start.__name__}: {'; '.join(problems)}: {expected}")
    return node


def _shape(start: type[Node]) -> str:
    return "{" + ", ".join(f'"{name}": ...' for name in start.model_fields) + "}"


def read_batch(path: Path, start: type[Node]) -> list[tuple[int, Node | BaeInputError]]:
    """Every non-empty line of a JSONL file as (line number, its start node or why it is not one)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BaeInputError(f"cannot read --batch {path}: {exc.strerror}: check the path") from None
    inputs: list[tuple[int, Node | BaeInputError]] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if line.strip():
            try:
                inputs.append((number, parse_input(line, start, f"{path}:{number}")))
            except BaeInputError as exc:
                inputs.append((number, exc))
    if not inputs:
        raise BaeInputError(f"--batch {path} has no inputs: put one JSON object per line")
    return inputs
