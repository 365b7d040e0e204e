"""Similar-example demos: each call gets the k training examples most like its own inputs.

A small base model copies its demos far more than it follows instructions, so demos that look like
the question teach it more than any fixed set can. The pool is the predictor's training examples,
stored as the predictor's demos in its node file (verified and fingerprinted like any demo); at
run time ``DemoRetriever.select`` ranks them with BM25 (``bm25s``) over the input fields' text.

For a choice predictor the selection is *balanced*: the most similar examples of each option, in
turn, so every option the node can choose is shown and none wins by sheer number. The chosen demos
are ordered least similar first, so the closest one sits right before the question.

Ranking is deterministic (ties by pool order) and costs well under a millisecond for a pool of a
few hundred (``bench/local_engine.py``), next to an LM call of a tenth of a second or more.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

METHOD = "bm25"


def _text(example: Any, names: Sequence[str]) -> str:
    return "\n".join(str(example.get(name, "")) for name in names)


@dataclass
class DemoRetriever:
    """Picks ``k`` demos from ``pool`` for each call (balanced over ``label`` values when given)."""

    pool: list[Any]
    input_names: tuple[str, ...]
    k: int
    label: str | None = None
    _index: Any = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def settings(self) -> dict[str, Any]:
        """What the node file records; the pool itself is the predictor's demos."""
        return {"method": METHOD, "k": self.k, "balanced_on": self.label}

    def _bm25(self) -> Any:
        with self._lock:
            if self._index is None:
                import bm25s

                index = bm25s.BM25()
                corpus = [_text(demo, self.input_names) for demo in self.pool]
                index.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)
                self._index = index
            return self._index

    def scores(self, inputs: dict[str, Any]) -> list[float]:
        """BM25 similarity of every pool example to ``inputs``, in pool order."""
        import bm25s

        query = bm25s.tokenize(_text(inputs, self.input_names), stopwords="en", return_ids=False, show_progress=False)
        if not query or not query[0]:
            return [0.0] * len(self.pool)
        return [float(s) for s in self._bm25().get_scores(query[0])]

    def select(self, inputs: dict[str, Any]) -> list[Any]:
        """The demos for one call: the ``k`` most similar (per label, in turn, when balanced)."""
        if len(self.pool) <= self.k and self.label is None:
            return list(self.pool)
        scores = self.scores(inputs)
        ranked = sorted(range(len(self.pool)), key=lambda i: (-scores[i], i))
        if self.label is None:
            chosen = ranked[: self.k]
        else:
            by_label: dict[Any, list[int]] = defaultdict(list)
            for i in ranked:
                by_label[self.pool[i].get(self.label)].append(i)
            queues = sorted(by_label.values(), key=lambda q: q[0])  # the label of the best match first
            chosen = []
            while len(chosen) < min(self.k, len(self.pool)):
                for queue in queues:
                    if queue and len(chosen) < self.k:
                        chosen.append(queue.pop(0))
        chosen.sort(key=lambda i: (scores[i], -i))  # least similar first: the closest sits by the question
        return [self.pool[i] for i in chosen]
