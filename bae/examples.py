"""Training examples from gold traces: what each predictor should have answered at each step.

A gold trace is the route a run should have taken, with the fields the LM should have made. Each step
S -> T is one example for T's make predictor and, where S decides, one for S's choice predictor,
with inputs resolved exactly as a run resolves them (``bae.resolve``), so a predictor learns from the
inputs it will be given.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import dspy

from bae.node import Node, spec_of
from bae.predictors import CHOICE, CHOICE_FIELD, MAKE
from bae.resolve import RunState, context_inputs, visible_state

Key = tuple[str, str]  # (node name, "make" | "choice")


def trace_to_examples(trace: Sequence[Node]) -> dict[Key, list[dspy.Example]]:
    """One make example per step S -> T (T's resolved inputs -> T's generated fields), and one
    choice example per step out of a deciding node (gold: T's name, or "None" where the trace ends)."""
    examples: dict[Key, list[dspy.Example]] = defaultdict(list)
    state = RunState()
    for i, node in enumerate(trace):
        if i > 0:
            previous = trace[i - 1]
            target = type(node)
            generated = {f.name: getattr(node, f.name) for f in spec_of(target).generated}
            if generated:
                resolved = context_inputs(target, previous, state, strict=False)
                inputs = {f.name: resolved.get(f.name, getattr(node, f.name)) for f in spec_of(target).context}
                examples[(target.__name__, MAKE)].append(dspy.Example(**inputs, **generated).with_inputs(*inputs))
            if spec_of(type(previous)).decides:
                examples[(type(previous).__name__, CHOICE)].append(_choice_example(previous, target.__name__))
        state.append(node)
    last = trace[-1]
    if spec_of(type(last)).decides:
        examples[(type(last).__name__, CHOICE)].append(_choice_example(last, "None"))
    return dict(examples)


def _choice_example(node: Node, answer: str) -> dspy.Example:
    inputs = visible_state(node)
    return dspy.Example(**inputs, **{CHOICE_FIELD: answer}).with_inputs(*inputs)


def collect_examples(traces: Sequence[Sequence[Node]]) -> dict[Key, list[dspy.Example]]:
    merged: dict[Key, list[dspy.Example]] = defaultdict(list)
    for trace in traces:
        for key, examples in trace_to_examples(trace).items():
            merged[key].extend(examples)
    return dict(merged)
