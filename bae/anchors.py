"""Deciding a closed answer from every training example at once: nearest centroid, nearest neighbours and
kNN prompting over *anchors* (one reading of the model per training example), and leave-one-out to choose.

An anchor is what the embedded model showed for one training example under a decision's fixed prompt: the
last token's hidden state (a vector) and its next-token top-k log-probabilities. A new input is read the
same way and decided by its anchors:

- ``centroid``: cosine to each label's centroid (the mean of its unit vectors); ``centroid-c`` first
  subtracts the mean of all anchors, so what every input shares (the prompt itself) does not decide.
- ``knn-c:k``: the majority label of the ``k`` most similar centred anchors (cosine).
- ``kl:k``: kNN prompting (Xu et al. 2023): the ``k`` anchors whose next-token distributions are closest
  to the input's by KL divergence vote.

Every method is a pure function of the anchors; nothing here loads a model. numpy only, imported by the
functions (``bae inspect`` reads decisions as JSON and never pays for it).

Ties are broken the same way everywhere, so a decision is a function of its inputs: in a vote, the tied
label whose best anchor is nearest wins, then the label listed first; between methods, see ``choose``.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float64]

TODAY = "demos"  # today's method: similar demos + (calibrated) likelihood, through the DSPy predictor
K = 5
# The candidates each closed decision chooses from by leave-one-out, cheapest first (see ``choose``).
METHODS = ("centroid", "centroid-c", f"knn-c:{K}", f"kl:{K}")
HIDDEN = frozenset(m.partition(":")[0] for m in METHODS) - {"kl"}
TOP_K = 32  # next-token log-probs kept per anchor for kNN prompting


@dataclass(frozen=True)
class Anchors:
    """One decision's anchors: per training example its label, hidden-state vector and top-k next tokens."""

    labels: list[Any]
    vectors: Vectors  # (n, dim), float64 in memory, float16 on disk
    top_ids: Any  # (n, TOP_K) int32
    top_logprobs: Any  # (n, TOP_K) float32

    def without(self, index: int) -> Anchors:
        import numpy as np

        keep = np.arange(len(self.labels)) != index
        return Anchors(
            [label for i, label in enumerate(self.labels) if i != index],
            self.vectors[keep],
            self.top_ids[keep],
            self.top_logprobs[keep],
        )


@dataclass(frozen=True)
class Query:
    """An input as the model read it: its hidden state and its top-k next tokens."""

    vector: Any
    top_ids: Any
    top_logprobs: Any


def _unit(x: Any) -> Any:
    import numpy as np

    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-12)


def _labels_in_order(labels: Sequence[Any]) -> list[Any]:
    """Distinct labels in first-seen order: the order ties fall back on."""
    seen: list[Any] = []
    for label in labels:
        if label not in seen:
            seen.append(label)
    return seen


def _vote(labels: Sequence[Any], similarity: Any, k: int) -> Any:
    """Majority of the ``k`` most similar; a tie goes to the tied label whose best member is most similar
    (then to the anchor listed first: the sort is stable)."""
    import numpy as np

    order = np.argsort(-similarity, kind="stable")[:k]
    counts = Counter(labels[j] for j in order)
    top = max(counts.values())
    return next(labels[j] for j in order if counts[labels[j]] == top)


def _centred(anchors: Anchors, query: Query, centre: bool) -> tuple[Any, Any]:
    vectors, vector = anchors.vectors, query.vector
    if centre:
        mean = vectors.mean(axis=0)
        vectors, vector = vectors - mean, vector - mean
    return _unit(vectors), _unit(vector)


def _centroid(anchors: Anchors, query: Query, centre: bool) -> Any:
    import numpy as np

    vectors, vector = _centred(anchors, query, centre)
    classes = _labels_in_order(anchors.labels)
    labels = np.array([classes.index(label) for label in anchors.labels])
    centroids = _unit(np.stack([vectors[labels == c].mean(axis=0) for c in range(len(classes))]))
    return classes[int(np.argmax(centroids @ vector))]  # argmax: the first listed on a tie


def _kl(anchors: Anchors, query: Query) -> Any:
    """KL(anchor || query) over each anchor's top tokens (renormalized); a token outside the query's top-k
    counts at the query's smallest kept log-prob, an upper bound of its true one."""
    import numpy as np

    distances = np.empty(len(anchors.labels))
    floor = float(query.top_logprobs.min())
    known = dict(zip(query.top_ids.tolist(), query.top_logprobs.tolist(), strict=True))
    for i, (ids, logprobs) in enumerate(zip(anchors.top_ids, anchors.top_logprobs, strict=True)):
        p = np.exp(logprobs.astype(np.float64))
        p /= p.sum()
        q = np.array([known.get(t, floor) for t in ids.tolist()])
        distances[i] = float((p * (np.log(p + 1e-30) - q)).sum())
    return distances


def decide(method: str, anchors: Anchors, query: Query) -> Any:
    """The label ``method`` gives ``query`` by ``anchors``."""
    kind, _, arg = method.partition(":")
    if kind in ("centroid", "centroid-c"):
        return _centroid(anchors, query, centre=kind == "centroid-c")
    if kind in ("knn", "knn-c"):
        vectors, vector = _centred(anchors, query, centre=kind == "knn-c")
        return _vote(anchors.labels, vectors @ vector, int(arg))
    if kind == "kl":
        return _vote(anchors.labels, -_kl(anchors, query), int(arg))
    raise ValueError(f"unknown decision method {method!r}")


def query_of(anchors: Anchors, index: int) -> Query:
    return Query(anchors.vectors[index], anchors.top_ids[index], anchors.top_logprobs[index])


def leave_one_out(method: str, anchors: Anchors) -> float:
    """Accuracy of ``method`` on each anchor decided by all the others."""
    labels = anchors.labels
    right = sum(decide(method, anchors.without(i), query_of(anchors, i)) == labels[i] for i in range(len(labels)))
    return right / len(labels) if labels else 0.0


def choose(scores: dict[str, float]) -> str:
    """The method with the best leave-one-out score; on a tie the cheaper one: a hidden-state method (one
    short pass, no demos, no calibration pass) before today's demos, and among those the simpler first, in
    ``METHODS`` order. Equal scores on the training examples are no evidence for the dearer method, and the
    simpler rule (a centroid per label) has less to overfit with."""
    order = [*METHODS, TODAY]
    best = max(scores.values())
    return next(m for m in order if m in scores and scores[m] == best)


def candidates(anchors: Anchors, today: float | None) -> dict[str, float]:
    """Every method's leave-one-out score (today's as measured by the caller, None: not measurable)."""
    scores = {method: round(leave_one_out(method, anchors), 4) for method in METHODS}
    if today is not None:
        scores[TODAY] = round(today, 4)
    return scores


# -- on disk: compact, plain JSON ---------------------------------------------------------------------------


def encode(array: Any, dtype: str) -> str:
    import numpy as np

    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def decode(text: str, dtype: str, shape: tuple[int, ...]) -> Any:
    import numpy as np

    return np.frombuffer(base64.b64decode(text, validate=True), dtype=dtype).reshape(shape)


def anchors_json(anchors: Anchors, method: str) -> dict[str, Any]:
    """What a decision stores for ``method``: the labels and only the readings the method uses."""
    n = len(anchors.labels)
    data: dict[str, Any] = {"labels": list(anchors.labels), "count": n}
    if method.startswith("kl"):
        data["top_ids"] = encode(anchors.top_ids, "<i4")
        data["top_logprobs"] = encode(anchors.top_logprobs, "<f2")
        data["top_k"] = int(anchors.top_ids.shape[1])
    else:
        data["vectors"] = encode(anchors.vectors, "<f2")
        data["dim"] = int(anchors.vectors.shape[1])
    return data


def anchors_from_json(data: dict[str, Any]) -> Anchors:
    """Anchors back from a decision's JSON (already checked to be well formed: ``bae.artifacts``)."""
    import numpy as np

    n = int(data["count"])
    vectors: Any = np.zeros((n, 0))
    top_ids: Any = np.zeros((n, 0), dtype=np.int32)
    top_logprobs: Any = np.zeros((n, 0), dtype=np.float32)
    if "vectors" in data:
        vectors = decode(data["vectors"], "<f2", (n, int(data["dim"]))).astype(np.float64)
    if "top_ids" in data:
        top_ids = decode(data["top_ids"], "<i4", (n, int(data["top_k"]))).astype(np.int32)
        top_logprobs = decode(data["top_logprobs"], "<f2", (n, int(data["top_k"]))).astype(np.float32)
    return Anchors(list(data["labels"]), vectors, top_ids, top_logprobs)


def rounded(anchors: Anchors) -> Anchors:
    """The anchors as they will be read back from disk (float16): leave-one-out scores what runs will use."""
    import numpy as np

    return Anchors(
        anchors.labels,
        anchors.vectors.astype(np.float16).astype(np.float64),
        anchors.top_ids,
        anchors.top_logprobs.astype(np.float16).astype(np.float32),
    )


Reader = Callable[[dict[str, Any]], Query]
