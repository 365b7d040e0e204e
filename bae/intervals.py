"""95% intervals for whole-graph scores and for the difference between two: a bootstrap over traces.

A score is a mean over a few dozen traces; on another few dozen it would come out differently
(on 21 traces by about +-0.2), and a version's gain is only as real as that. The traces are
resampled with replacement and the score recomputed each time; the interval holds the middle 95%
of those scores (a percentile bootstrap). A difference resamples the *same* traces for both
sides (paired), so what the two have in common, the hard and the easy traces, cancels out.
Seeded, and blind to the order of the traces: the same scores give the same interval on every run,
on every machine, in a dev file or in compile's split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
SEED = 0
_BLOCK = 200  # resamples drawn at a time, so a large dataset does not need a RESAMPLES x traces matrix at once


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    @property
    def includes_zero(self) -> bool:
        return self.low <= 0 <= self.high

    def as_list(self) -> list[float]:
        return [round(self.low, 4), round(self.high, 4)]


def _bootstrap(columns: Sequence[Sequence[float | None]], sign: Sequence[int]) -> Interval:
    """The interval of ``sum(sign[c] * mean(column c))`` over resampled traces. A trace's ``None``
    (nothing to score) is left out of its column's mean; a resample that leaves a column nothing to
    average has no score and is left out."""
    values = np.array([[np.nan if s is None else s for s in column] for column in columns], dtype=float)
    values = values[:, np.lexsort(np.nan_to_num(values, nan=-1.0)[::-1])]  # the order of the traces does not matter
    traces = values.shape[1]
    if traces == 0:
        return Interval(0.0, 0.0)
    rng = np.random.default_rng(SEED)
    totals = []
    for start in range(0, RESAMPLES, _BLOCK):
        picks = rng.integers(0, traces, size=(min(_BLOCK, RESAMPLES - start), traces))
        sampled = values[:, picks]  # columns x resamples x traces
        counted = ~np.isnan(sampled)
        sums = np.where(counted, sampled, 0.0).sum(axis=2)
        n = counted.sum(axis=2)
        scored = (n > 0).all(axis=0)
        means = sums[:, scored] / n[:, scored]
        totals.append(np.tensordot(np.array(sign, dtype=float), means, axes=1))
    resampled = np.concatenate(totals)
    if not resampled.size:
        return Interval(0.0, 0.0)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return Interval(float(low), float(high))


def score_interval(scores: Sequence[float | None]) -> Interval:
    """The 95% interval of the mean of ``scores``, one per trace (None: the trace has no score)."""
    return _bootstrap([scores], [1])


def delta_interval(first: Sequence[float | None], second: Sequence[float | None]) -> Interval:
    """The 95% interval of ``mean(second) - mean(first)``, where ``first[i]`` and ``second[i]`` score the
    same trace: each resample draws the same traces for both."""
    if len(first) != len(second):
        raise ValueError(f"paired scores must cover the same traces: {len(first)} against {len(second)}")
    return _bootstrap([first, second], [-1, 1])
