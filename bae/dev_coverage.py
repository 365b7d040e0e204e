"""What a compile's dev split cannot tell: too few traces, or predictors and answers it never exercises.

The recorded scores are only as good as the dev traces behind them. Two dev traces of one class
can report "0.000 -> 0.500" as if it meant something; a choice option the optimizer trained on
but dev never asks for is an improvement (or a regression) nobody measured. These checks read
the gold traces only, so they cost nothing, and they warn rather than refuse: small data is
sometimes all there is, and saying so is what matters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import pairwise

from bae.dataset import GoldTrace
from bae.intervals import Interval
from bae.node import Node, spec_of
from bae.scoring import ENDED
from bae.wording import score_text

MIN_DEV_TRACES = 20  # below this one trace moves a score by 5 points or more, and intervals span most of 0..1


def _taught(traces: Sequence[GoldTrace]) -> tuple[Counter[str], dict[str, Counter[str]]]:
    """Per make predictor its gold steps (nodes the LM made), and per deciding node its gold answers."""
    makes: Counter[str] = Counter()
    answers: dict[str, Counter[str]] = {}
    for trace in traces:
        nodes: Sequence[Node] = trace.nodes
        for before, after in pairwise(nodes):
            if spec_of(type(before)).routed and spec_of(type(after)).generated:
                makes[type(after).__name__] += 1
            if spec_of(type(before)).decides:
                answers.setdefault(type(before).__name__, Counter())[type(after).__name__] += 1
        if spec_of(type(nodes[-1])).decides:
            answers.setdefault(type(nodes[-1]).__name__, Counter())[ENDED] += 1
    return makes, answers


def dev_warnings(train: Sequence[GoldTrace], dev: Sequence[GoldTrace], interval: Interval) -> list[str]:
    """One line per thing the dev split cannot measure; ``interval`` is the optimized score's."""
    warnings = []
    if len(dev) < MIN_DEV_TRACES:
        low, high = interval.as_list()
        warnings.append(
            f"dev has {len(dev)} trace{'s' if len(dev) != 1 else ''} (fewer than {MIN_DEV_TRACES}): one trace moves "
            f"a score by {score_text(1 / max(1, len(dev)))}, and resampling this few cannot show how much scores "
            f"vary (the optimized score's 95% interval: [{score_text(low)}, {score_text(high)}]); add gold traces "
            "or give a larger --devset"
        )
    train_makes, train_answers = _taught(train)
    dev_makes, dev_answers = _taught(dev)
    for node, count in sorted(train_makes.items()):
        if not dev_makes[node]:
            warnings.append(
                f"{node}.make learned from {count} training examples but dev has none: the dev score does not "
                "measure it"
            )
    for node in sorted(set(train_answers) | set(dev_answers)):
        taught, asked = train_answers.get(node, Counter()), dev_answers.get(node, Counter())
        for answer in sorted(set(taught) - set(asked)):
            warnings.append(
                f"{node}.choice: {taught[answer]} training traces choose {answer} but no dev trace does: the dev "
                "score does not measure that choice"
            )
        for answer in sorted(set(asked) - set(taught)):
            warnings.append(
                f"{node}.choice: {asked[answer]} dev traces choose {answer} but no training trace does: the "
                "optimizer never saw that answer"
            )
    return warnings
