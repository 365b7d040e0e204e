"""Greedy decoding of open answers under a JSON grammar: the embedded model's free text, always parseable.

The answer's JSON schema is compiled into a llama.cpp grammar (GBNF), so every answer is JSON of the
declared shape: a 270M *base* model cannot be trusted to follow format instructions on its own.
Decoding is greedy with a fixed seed. An answer that runs out of tokens, or falls into a verbatim
loop (a small model repeating itself inside a string), is redone under length caps that make every
string and list end.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
from typing import TYPE_CHECKING, Any

from bae.local.decoding import PrefixCache, Prompt, evaluate
from bae.local.model import llama_errors, one_line

if TYPE_CHECKING:
    from llama_cpp import Llama

logger = logging.getLogger(__name__)

# Used only to redo an answer that ran out of tokens: caps under which every string and list ends.
FALLBACK_STRING_CHARS = 256
FALLBACK_LIST_ITEMS = 8
# A verbatim loop: a block of up to 32 tokens repeated at least 4 times and over at least 48 tokens.
# Legitimate JSON almost never does that, and an answer that does is redone, not lost.
_LOOP_MAX_PERIOD = 32
_LOOP_MIN_REPEATS = 4
_LOOP_MIN_TOKENS = 48
# Candidates tried through the grammar before the whole vocabulary, when the first choice is refused.
_SHORTLIST = 64


# Plain JSON mode under the same caps, three levels deep, for redoing an open-ended answer
# (``dict`` outputs, for which JSONAdapter sends no schema).
_BOUNDED_JSON_GBNF = rf"""
root ::= object1
object1 ::= "{{" space ( member1 ( "," space member1 ){{0,15}} )? "}}" space
member1 ::= string ":" space ( object2 | array2 | scalar )
array2 ::= "[" space ( value2 ( "," space value2 ){{0,{FALLBACK_LIST_ITEMS - 1}}} )? "]" space
value2 ::= object2 | array3 | scalar
object2 ::= "{{" space ( member2 ( "," space member2 ){{0,15}} )? "}}" space
member2 ::= string ":" space ( object3 | array3 | scalar )
object3 ::= "{{" space ( member3 ( "," space member3 ){{0,15}} )? "}}" space
member3 ::= string ":" space scalar
array3 ::= "[" space ( scalar ( "," space scalar ){{0,{FALLBACK_LIST_ITEMS - 1}}} )? "]" space
scalar ::= string | number | ( "true" | "false" | "null" ) space
string ::= "\"" char{{0,{FALLBACK_STRING_CHARS}}} "\"" space
char ::= [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{{4}} )
number ::= "-"? ( [0-9] | [1-9] [0-9]{{0,15}} ) ( "." [0-9]{{1,16}} )? ( [eE] [-+]? [0-9]{{1,16}} )? space
space ::= " "?
"""


@functools.lru_cache(maxsize=64)
def gbnf(schema_json: str | None, bounded: bool = False) -> str:
    """The llama.cpp grammar for a schema, cached: a program calls the same few signatures again and again.

    ``None`` is plain JSON mode. A schema the converter cannot handle degrades to plain JSON, as
    llama-cpp-python itself would, but says so instead of doing it silently.
    """
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if schema_json is not None:
        try:
            return str(json_schema_to_gbnf(json.dumps(_bounded(json.loads(schema_json))) if bounded else schema_json))
        except Exception as exc:  # the converter raises bare Exceptions and assertion errors
            logger.warning(
                "output schema not expressible as a llama.cpp grammar (%s); constraining to any JSON object",
                one_line(exc),
            )
    return _BOUNDED_JSON_GBNF if bounded else JSON_GBNF


def _bounded(node: Any) -> Any:
    """The schema with a length cap on every unbounded string and list.

    A greedy small model can repeat itself inside a free-text string until max_tokens, leaving
    JSON that cannot parse. Under these caps the grammar itself makes every value end.
    """
    if isinstance(node, list):
        return [_bounded(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _bounded(value) for key, value in node.items()}
    kinds = node.get("type")
    kinds = {kinds} if isinstance(kinds, str) else set(kinds) if isinstance(kinds, list) else set()
    if "string" in kinds and not {"maxLength", "enum", "const", "pattern", "format"} & node.keys():
        out["maxLength"] = max(FALLBACK_STRING_CHARS, node.get("minLength", 0))
    if "array" in kinds and "maxItems" not in node:
        out["maxItems"] = max(FALLBACK_LIST_ITEMS, node.get("minItems", 0))
    return out


def looping(tokens: list[int]) -> bool:
    """Whether the answer ends in a verbatim loop: a block of up to 32 tokens repeated over 48+ tokens."""
    n = len(tokens)
    for period in range(1, _LOOP_MAX_PERIOD + 1):
        span = max(_LOOP_MIN_TOKENS, period * _LOOP_MIN_REPEATS)
        if span > n:
            break
        if tokens[n - span : n - period] == tokens[n - span + period : n]:
            return True
    return False


class GreedyGrammar:
    """A logits processor for greedy decoding under a grammar that checks the first choice first.

    llama-cpp-python applies a grammar to every candidate at every step, which for Gemma's 262k-token
    vocabulary costs 25-70 ms a token, most of the generation time. The model's first choice is
    usually allowed (inside free text, nearly always); when it is, greedy decoding takes it anyway,
    so checking it alone first yields the same tokens about three times faster on free-text fields.
    When it is refused, the best allowed token among the top 64 is still the greedy answer; only
    when none of those is allowed does the whole vocabulary go through the grammar.

    It also ends an answer that has fallen into a verbatim loop, instead of letting it run on to
    max_tokens: the answer is then redone under length caps.
    """

    def __init__(self, llama: Llama, gbnf: str, *, stop_loops: bool) -> None:
        import llama_cpp
        import numpy as np

        self._np = np
        self._c = llama_cpp
        llama_errors.clear()
        self._sampler = llama_cpp.llama_sampler_init_grammar(
            llama_cpp.llama_model_get_vocab(llama.model), gbnf.encode("utf-8"), b"root"
        )
        if not self._sampler:
            raise RuntimeError(f"llama.cpp rejected the output grammar: {llama_errors[0] if llama_errors else '?'}")
        n_vocab = llama.n_vocab()
        self._buffer = (llama_cpp.llama_token_data * n_vocab)()
        self._array = llama_cpp.llama_token_data_array(data=self._buffer, size=n_vocab, selected=-1, sorted=False)
        self._view = np.frombuffer(
            self._buffer,
            dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True),
        )
        self._every = np.arange(n_vocab, dtype=np.intc)
        self._eos = llama.token_eos()
        self._stop_loops = stop_loops
        self.tokens: list[int] = []
        self.looped = False
        self.error: BaseException | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        # llama.cpp calls this through ctypes, which would print and swallow an exception, and
        # decoding would go on unconstrained: keep it, end the answer, and let the engine raise it.
        try:
            return self._step(scores)
        except Exception as exc:
            self.error = exc
            return self._only(scores, self._eos)

    def _step(self, scores: Any) -> Any:
        np = self._np
        if self.tokens:
            self._c.llama_sampler_accept(self._sampler, self.tokens[-1])
            if self._stop_loops and looping(self.tokens):
                self.looped = True
                return self._only(scores, self._eos)
        # Greedy takes the best allowed token; if any of the best k is allowed, the best of those is it.
        best = self._best_allowed(np.array([np.argmax(scores)]), scores)
        if best is None:
            top = np.sort(np.argpartition(scores, -_SHORTLIST)[-_SHORTLIST:])
            best = self._best_allowed(top, scores)
        if best is None:
            best = self._best_allowed(self._every, scores)
        if best is None:  # the grammar allows nothing more
            best = self._eos
        self.tokens.append(best)
        return self._only(scores, best)

    def _best_allowed(self, ids: Any, scores: Any) -> int | None:
        np = self._np
        view = self._view[: len(ids)]
        view["id"], view["logit"], view["p"] = ids, scores[ids], 0.0
        self._array.size, self._array.selected, self._array.sorted = len(ids), -1, False
        self._c.llama_sampler_apply(self._sampler, ctypes.byref(self._array))
        index = int(np.argmax(view["logit"]))
        return None if view["logit"][index] == -np.inf else int(view["id"][index])

    def _only(self, scores: Any, token: int) -> Any:
        out = self._np.full_like(scores, -self._np.inf)
        out[token] = 0.0
        return out

    def close(self) -> None:
        if self._sampler:
            self._c.llama_sampler_free(self._sampler)
            self._sampler = None


def attempt(
    llama: Llama,
    prompt: Prompt,
    cache: PrefixCache | None,
    options: dict[str, Any],
    gbnf: str | None,
    *,
    stop_loops: bool,
) -> tuple[dict[str, Any], str | None]:
    """One completion of ``prompt``, and why its JSON is incomplete (None if it is not).

    The caller holds the model's lock.
    """
    from llama_cpp import LlamaGrammar, LogitsProcessorList

    options = dict(options)
    processor = None
    if gbnf is not None:
        if options["temperature"] == 0.0:
            processor = GreedyGrammar(llama, gbnf, stop_loops=stop_loops)
            options["logits_processor"] = LogitsProcessorList([processor])
        else:  # sampling: the first choice is not the answer, so the plain grammar it is
            options["grammar"] = LlamaGrammar.from_string(gbnf, verbose=False)
    try:
        evaluate(llama, prompt, cache)  # the prompt is fully evaluated: generation samples at once
        stop = [*prompt.stop, *options.pop("stop", [])]
        result = llama.create_completion(prompt=prompt.tokens, stop=stop, **options)
    finally:
        if processor is not None:
            processor.close()
    if processor is not None and processor.error is not None:
        raise RuntimeError(f"local LM grammar step failed: {processor.error}") from processor.error
    if gbnf is None:
        return result, None
    if processor is not None and processor.looped:
        return result, "kept repeating itself"
    if result["choices"][0].get("finish_reason") == "length":
        return result, f"ran past its {options['max_tokens']}-token limit"
    return result, None


