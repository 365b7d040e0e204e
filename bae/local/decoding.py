"""How the embedded engine turns a chat into tokens and a closed answer into a choice.

Two ideas, both about a small base model on two CPU cores:

* **Prefix caching.** Everything before a request's last user turn (system text, few-shot demos)
  is the same from call to call of one predictor. Its KV state is evaluated once, kept, and
  restored; a call pays only for its own inputs. The prefix is *always* evaluated on its own,
  from an empty cache, and the rest on top of it, whether the state was cached or not: the same
  prompt is the same computation, so answers do not depend on call order, concurrency or whether
  the cache is on (greedy choices can flip on the tiny logit shifts a different batch split gives).
* **Closed answers by likelihood.** When every output field has a fixed set of values (a
  ``Literal``, an enum, a bool), greedy decoding commits to the first token of the first value it
  likes, which for a 270M base model is mostly the first option it saw. Instead every allowed
  value's whole line, exactly as the demos render it, is scored by its log-likelihood, field by
  field, and the best is taken. Optionally each score is *calibrated* by subtracting the same
  value's score for a content-free input ("N/A"): that removes the model's prior for an option,
  which is what makes a small model answer one class for everything.

Neither numpy nor llama_cpp is imported at module import time.
"""

from __future__ import annotations

import ctypes
import json
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llama_cpp import Llama

# Each cached prefix state of Gemma 3 270M is about 18 KB a token: 8 states of ~1000 tokens is ~150 MB.
PREFIX_CACHE_SIZE = 8
# A field with more values than this is not "closed" in practice: it is decoded under the grammar.
MAX_OPTIONS = 64
CONTENT_FREE = "N/A"
_FIELD_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]\n")
_OUTPUT_REQUIREMENTS = "\n\nRespond with"  # how DSPy's chat and JSON adapters start the trailer of the last turn


@dataclass(frozen=True)
class Rendered:
    """A chat as one text: where its last turn's own content begins, and how generation stops."""

    text: str
    dynamic_from: int
    stop: list[str]
    add_bos: bool = True


def template_formatter(llama: Llama) -> Any:
    """The GGUF's own chat template, as llama-cpp-python applies it."""
    from llama_cpp import llama_chat_format

    eos, bos = llama.token_eos(), llama.token_bos()
    jinja = llama_chat_format.Jinja2ChatFormatter(
        template=llama.metadata["tokenizer.chat_template"],
        eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
        bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
        stop_token_ids=[eos],
    )

    def render(messages: list[dict[str, str]]) -> Rendered:
        result = jinja(messages=messages)
        stop = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        at = result.prompt.rfind(messages[-1]["content"]) if messages else -1
        return Rendered(result.prompt, max(at, 0), stop, add_bos=not result.added_special)

    return render


def compact_formatter(messages: list[dict[str, str]]) -> Rendered:
    """DSPy's chat as a plain few-shot document, for a *base* model (a GGUF without a chat template).

    A base model has never seen chat turns or DSPy's page of format rules; it continues documents.
    So the task's own instructions come first, then each demo as its input fields and its answer,
    and the question in the same shape. The answers stay JSON exactly as the adapter renders them
    (the answer contract does not change), and the prompt is about half as many tokens.
    """
    head = [_objective(m["content"]) for m in messages if m["role"] == "system"]
    blocks = []
    for message in messages:
        if message["role"] == "user":
            blocks.append(_fields_block(message["content"]) + "\nAnswer:\n")
        elif message["role"] == "assistant":
            blocks[-1:] = [(blocks[-1] if blocks else "") + message["content"].strip() + "\n\n"]
    text = "\n\n".join(head) + ("\n\n" if head else "") + "".join(blocks)
    last = blocks[-1] if blocks and messages[-1]["role"] == "user" else ""
    return Rendered(text, len(text) - len(last), ["\n\n"])


def _objective(system: str) -> str:
    """The task itself out of DSPy's system message (its field list and format rules go)."""
    marker = "your objective is:"
    at = system.find(marker)
    if at < 0:
        return system.strip()
    return "\n".join(line.strip() for line in system[at + len(marker) :].strip().splitlines())


def _fields_block(content: str) -> str:
    """``[[ ## name ## ]]`` sections as ``name: value`` lines; the output-format reminder goes."""
    trailer_at = content.rfind(_OUTPUT_REQUIREMENTS)
    body = content[:trailer_at] if trailer_at >= 0 else content
    parts = _FIELD_HEADER.split(body)
    if len(parts) < 3:
        return body.strip()
    return "\n".join(f"{name}: {value.strip()}" for name, value in zip(parts[1::2], parts[2::2], strict=True))


@dataclass(frozen=True)
class Prompt:
    """A rendered chat: its tokens, where the static prefix ends, and the format's stop strings."""

    tokens: list[int]
    split: int
    stop: list[str]


def render(llama: Llama, messages: list[dict[str, str]], formatter: Any) -> Prompt:
    """Tokens of ``messages`` as ``formatter`` lays them out, split before the last turn's content.

    The split is mapped from text to tokens as the longest common token prefix of the full prompt
    and the prefix alone, so it never cuts a token in two.
    """
    rendered: Rendered = formatter(messages)
    tokens = llama.tokenize(rendered.text.encode("utf-8"), add_bos=rendered.add_bos, special=True)
    split = 0
    if rendered.dynamic_from > 0:
        prefix = rendered.text[: rendered.dynamic_from].encode("utf-8")
        head = llama.tokenize(prefix, add_bos=rendered.add_bos, special=True)
        while split < min(len(head), len(tokens) - 1) and head[split] == tokens[split]:
            split += 1
    return Prompt(tokens, split, rendered.stop)


class PrefixCache:
    """KV states of prompt prefixes, least recently used first out. One per loaded model."""

    def __init__(self, size: int = PREFIX_CACHE_SIZE) -> None:
        self.size = size
        self._states: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            state = self._states.get(key)
            if state is None:
                self.misses += 1
            else:
                self.hits += 1
                self._states.move_to_end(key)
            return state

    def put(self, key: bytes, state: bytes) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._states[key] = state
            self._states.move_to_end(key)
            while len(self._states) > self.size:
                self._states.popitem(last=False)


def _key(tokens: list[int]) -> bytes:
    import numpy as np

    return np.asarray(tokens, dtype=np.int32).tobytes()


def save_state(llama: Llama) -> bytes:
    import llama_cpp

    ctx = llama._ctx.ctx
    size = llama_cpp.llama_state_seq_get_size(ctx, 0)
    buffer = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0)
    return ctypes.string_at(buffer, written)


def _clear(llama: Llama) -> None:
    """Empty the KV cache *and* rewind its allocation head.

    Removing a sequence frees its cells but can leave the head where it was, so the next tokens would
    land in other cells; attention then sums over cells in another order and the logits move in the
    last bits, enough to flip a close choice. From a cleared cache every call lays out the same.
    """
    import llama_cpp

    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llama._ctx.ctx), True)
    llama.n_tokens = 0


def restore_state(llama: Llama, state: bytes, tokens: list[int]) -> None:
    import llama_cpp

    _clear(llama)
    buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
    if llama_cpp.llama_state_seq_set_data(llama._ctx.ctx, buffer, len(state), 0) != len(state):
        raise RuntimeError("llama.cpp refused a cached prompt state")
    llama.input_ids[: len(tokens)] = tokens
    llama.n_tokens = len(tokens)


def evaluate(llama: Llama, prompt: Prompt, cache: PrefixCache | None) -> None:
    """Leave ``prompt`` evaluated in ``llama``'s KV cache, its last logits ready.

    The prefix comes from ``cache`` or is evaluated from empty (and then cached), and is restored
    from its saved state either way; the rest is always evaluated on top, at least one token, so the
    logits belong to this prompt.
    """
    head = prompt.tokens[: prompt.split]
    _clear(llama)
    if head:
        state = cache.get(_key(head)) if cache is not None else None
        if state is None:
            llama.eval(head)
            state = save_state(llama)
            if cache is not None:
                cache.put(_key(head), state)
        # Restored even right after evaluating it: a restored prefix lays out its cells differently
        # from a freshly evaluated one, and a hit and a miss must compute the same thing.
        restore_state(llama, state, head)
    llama.eval(prompt.tokens[prompt.split :])


# -- closed answers -----------------------------------------------------------------------------------


def closed_fields(schema: dict[str, Any] | None) -> list[tuple[str, list[str]]] | None:
    """(field name, allowed values as JSON text) for each property, in order, when all are closed.

    None when any field is open text or numbers, or the schema is not a plain object: those are
    decoded under the grammar.
    """
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return None
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        return None
    required = schema.get("required", list(properties))
    if set(required) != set(properties):
        return None
    fields = []
    for name, sub in properties.items():
        options = _options(sub, schema.get("$defs", {}))
        if not options or len(options) > MAX_OPTIONS:
            return None
        fields.append((name, [json.dumps(value, ensure_ascii=False) for value in options]))
    return fields


def _options(node: Any, defs: dict[str, Any]) -> list[Any] | None:
    if not isinstance(node, dict):
        return None
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _options(defs.get(ref.removeprefix("#/$defs/")), defs)
    if "enum" in node and isinstance(node["enum"], list):
        return list(node["enum"])
    if "const" in node:
        return [node["const"]]
    if node.get("type") == "boolean":
        return [True, False]
    if node.get("type") == "null":
        return [None]
    branches = node.get("anyOf") or node.get("oneOf")
    if isinstance(branches, list):
        merged: list[Any] = []
        for branch in branches:
            values = _options(branch, defs)
            if values is None:
                return None
            merged.extend(v for v in values if v not in merged)
        return merged
    return None


def content_free(messages: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """The same chat with every input value of the last turn replaced by "N/A" (None if the last turn
    has no DSPy field headers): the prompt whose answer scores are the model's bias per option."""
    if not messages:
        return None
    content = messages[-1]["content"]
    if not _FIELD_HEADER.search(content):
        return None
    trailer_at = content.rfind(_OUTPUT_REQUIREMENTS)
    body, trailer = (content[:trailer_at], content[trailer_at:]) if trailer_at >= 0 else (content, "")
    parts = _FIELD_HEADER.split(body)  # [before, name, value, name, value, ...]
    rebuilt = parts[0] + "".join(
        f"[[ ## {name} ## ]]\n{CONTENT_FREE}" + ("\n\n" if i + 2 < len(parts) - 1 else "")
        for i, name in zip(range(1, len(parts), 2), parts[1::2], strict=True)
    )
    return [*messages[:-1], {**messages[-1], "content": rebuilt + trailer}]


def _logprob(row: Any, token: int) -> float:
    """log softmax(row)[token], in float32: 262k-entry rows, a few per scored answer."""
    import numpy as np

    top = float(row.max())
    return float(row[token]) - top - float(np.log(np.exp(row - top, dtype=np.float32).sum(dtype=np.float64)))


def _last_logits(llama: Llama) -> Any:
    import numpy as np

    return np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(llama.n_vocab(),)).copy()


def _score(llama: Llama, candidates: list[list[int]]) -> list[float]:
    """Log-likelihood of each token sequence after what ``llama`` holds, which it holds again after."""
    import numpy as np

    first = _last_logits(llama)
    first_logprobs: dict[int, float] = {}
    n_past, n_vocab = llama.n_tokens, llama.n_vocab()
    scores = []
    for tokens in candidates:
        if tokens[0] not in first_logprobs:
            first_logprobs[tokens[0]] = _logprob(first, tokens[0])
        total = first_logprobs[tokens[0]]
        if len(tokens) > 1:
            llama._ctx.kv_cache_seq_rm(-1, n_past, -1)
            llama._batch.set_batch(batch=tokens[:-1], n_past=n_past, logits_all=True)
            llama._ctx.decode(llama._batch)
            rows = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(len(tokens) - 1, n_vocab))
            total += sum(_logprob(row, token) for row, token in zip(rows, tokens[1:], strict=True))
        scores.append(total)
    llama._ctx.kv_cache_seq_rm(-1, n_past, -1)
    return scores


@dataclass
class ClosedAnswer:
    text: str
    completion_tokens: int
    scores: dict[str, dict[str, float]]  # field -> value -> the (calibrated) score it was chosen by
    # field -> value -> its softmax share of the scores: how sure the choice was (bae.confidence)
    probabilities: dict[str, dict[str, float]]


def softmax(scores: dict[str, float]) -> dict[str, float]:
    """Scores (log-likelihoods, or calibrated ones: differences of log-likelihoods) as probabilities over
    the allowed values: a calibrated choice's is the contextual-calibration probability, p(value | input)
    over p(value | content-free input), normalized."""
    top = max(scores.values())
    weights = {value: math.exp(score - top) for value, score in scores.items()}
    total = sum(weights.values())
    return {value: weight / total for value, weight in weights.items()}


def choose(
    llama: Llama,
    prompt: Prompt,
    fields: list[tuple[str, list[str]]],
    cache: PrefixCache | None,
    free: Prompt | None = None,
) -> ClosedAnswer:
    """The JSON answer whose every field is its most likely allowed value, field by field.

    Each value is scored as its whole line, ``  "field": value,`` as JSON with indent 2 renders it
    (the form the demos show), after the prompt and the lines already chosen. With ``free`` (the
    content-free prompt) each score is calibrated: minus the same line's score there.
    """

    def tokenize(text: str) -> list[int]:
        return list(llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    chosen = "{\n"
    states: dict[int, bytes] = {}
    contexts = [prompt] if free is None else [prompt, free]
    for i, context in enumerate(contexts):
        evaluate(llama, context, cache)
        states[i] = save_state(llama) if len(contexts) > 1 else b""
    scores: dict[str, dict[str, float]] = {}
    for index, (name, options) in enumerate(fields):
        end = "\n" if index == len(fields) - 1 else ",\n"
        lines = [f"  {json.dumps(name)}: {value}{end}" for value in options]
        candidates = [tokenize(line) for line in lines]
        totals = [0.0] * len(options)
        for i, context in enumerate(contexts):
            if len(contexts) > 1:
                restore_state(llama, states[i], context.tokens)
            llama.eval(tokenize(chosen))
            sign = 1.0 if i == 0 else -1.0
            totals = [t + sign * s for t, s in zip(totals, _score(llama, candidates), strict=True)]
        best = max(range(len(options)), key=lambda k: (totals[k], -k))  # ties: the first listed
        scores[name] = dict(zip(options, totals, strict=True))
        chosen += lines[best]
        if len(contexts) == 1:
            llama.n_tokens = len(prompt.tokens)  # the next field re-evaluates the answer so far
    chosen += "}"
    return ClosedAnswer(chosen, len(tokenize(chosen)), scores, {name: softmax(s) for name, s in scores.items()})
