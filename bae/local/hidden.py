"""Reading the embedded model: the last token's hidden state and its next-token log-probs for a prompt.

This is what ``bae.anchors`` decides from. A prompt comes in parts: a static header (a decision's task,
the same for every call), the inputs, and the answer key. Each part but the last is a prefix whose KV
state is kept (``PrefixCache``, least recently used out) and *always* restored, whether it was just
evaluated or taken from the cache: the same prompt is the same computation, so a reading does not depend
on call order, on threads or on whether the cache is on (``bae.local.decoding`` does the same for
answers). The inputs are a prefix too, so a node's second closed field pays only for its key.

Only the last token is evaluated with embeddings on: with embeddings on, llama.cpp outputs every token of
the batch, and Gemma's 262k-row output layer per token would cost more than the rest of the prompt.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bae.local.decoding import PrefixCache, _clear, _key, restore_state, save_state
from bae.local.model import LoadedModel

TOP_K = 32  # bae.anchors.TOP_K: next-token log-probs kept per reading for kNN prompting


@dataclass(frozen=True)
class Reading:
    """What the model showed at the prompt's last token."""

    vector: Any  # (n_embd,) float32: the final hidden state
    top_ids: Any  # (TOP_K,) int32, most likely first
    top_logprobs: Any  # (TOP_K,) float32
    tokens: int  # the prompt's length


def tokenize(model: LoadedModel, text: str, bos: bool = False) -> list[int]:
    return list(model.llama.tokenize(text.encode("utf-8"), add_bos=bos, special=False))


def read(model: LoadedModel, parts: list[list[int]], cache: PrefixCache | None) -> Reading:
    """Evaluate ``parts`` (prefixes, then the last part on top) and read the last token. The caller holds
    ``model.lock``: a llama.cpp context serves one call at a time."""
    import llama_cpp
    import numpy as np

    llama = model.llama
    ctx = llama._ctx.ctx
    head: list[int] = []
    restored = 0  # how many tokens the context holds, restored from a saved state
    for part in parts[:-1]:
        head = head + part
        state = cache.get(_key(head)) if cache is not None else None
        if state is None:
            if restored == 0:
                _clear(llama)
            llama.eval(head[restored:])
            state = save_state(llama)
            if cache is not None:
                cache.put(_key(head), state)
        restore_state(llama, state, head)
        restored = len(head)
    last = parts[-1]
    if not parts[:-1]:
        _clear(llama)
    if len(last) > 1:
        llama.eval(last[:-1])
    llama_cpp.llama_set_embeddings(ctx, True)
    try:
        llama.eval(last[-1:])
        vector = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_ith(ctx, -1), shape=(llama.n_embd(),)).copy()
        logits = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(llama.n_vocab(),)).astype(np.float64)
    finally:
        llama_cpp.llama_set_embeddings(ctx, False)
    logits -= logits.max()
    logprobs = logits - np.log(np.exp(logits).sum())
    top = np.argsort(-logprobs, kind="stable")[:TOP_K]
    return Reading(vector, top.astype(np.int32), logprobs[top].astype(np.float32), len(head) + len(last))


_identities: dict[tuple[str, int, int], str] = {}
_identities_lock = threading.Lock()


def model_sha256(path: str | os.PathLike[str]) -> str:
    """The GGUF file's sha256: what a compiled decision's anchors are tied to. Hashed once per process per
    (path, size, mtime): a few hundred MB take about a second."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    with _identities_lock:
        known = _identities.get(key)
        if known is None:
            digest = hashlib.sha256()
            with resolved.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            known = _identities[key] = digest.hexdigest()
        return known
