"""Per-step overhead: the example graph run through ``OptimizedLM`` against the same predictors called directly.

The LM answers instantly (canned answers, no sleep), so all that is left of a run's time
is bae's and DSPy's. The floor is the program a DSPy user would write by hand for the
same graph: the same ``Predict`` objects, the same LM, the same adapter and settings bae
uses (``JSONAdapter``, usage tracking, no trace, no history), called in the same order,
in the same process. Both sides are timed in alternating blocks of a few runs; the
figure is the median over rounds of bae's time per LM call over the floor's in the
same round (neighbouring blocks share the machine's load). Target: at most 1.10.

    python -m bench.overhead [--smoke] [--out DIR]
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import dspy

from bae.dspy_backend import DSPyBackend
from bae.loader import LoadedGraph, load_graph
from bae.node import Node
from bae.optimized_lm import OptimizedLM, load_optimized
from bench.common import COMPILED, EXAMPLE, Report, interleave, parse, parser, summary
from bench.scripted import QUEUES, instant, tickets

TARGET = 1.10


class Floor:
    """The example graph without bae: look the plan up, ask the choice predictor, ask the chosen make predictor."""

    def __init__(self, loaded: LoadedGraph, backend: DSPyBackend, lm: dspy.BaseLM) -> None:
        graph = loaded.graph
        self.crm = loaded.services[0]
        self.choice = backend.predictor_for(graph.node("Triage"), "choice")[0]
        self.make = {name: backend.predictor_for(graph.node(name), "make")[0] for name in QUEUES}
        self.overrides: dict[str, Any] = {
            "lm": lm,
            "adapter": backend.adapter,
            "track_usage": True,
            "max_trace_size": 0,
            "disable_history": True,
        }

    def run(self, ticket: Node) -> dspy.Prediction:
        plan = self.crm.plan_for(ticket.customer_email)
        with dspy.context(**self.overrides):
            chosen = self.choice(text=ticket.text, plan=plan).next_step
            return self.make[chosen](text=ticket.text, plan=plan)


def _calls_per_run(lm: Any, fn: Callable[[], Any], runs: int) -> tuple[float, list[int]]:
    """LM calls per run of ``fn``, and the few-shot demos each of those calls' prompts carried."""
    before = len(lm.calls)
    fn()
    return (len(lm.calls) - before) / runs, [call.demos for call in lm.calls[before:]]


def measure(loaded: LoadedGraph, backend: OptimizedLM, lm: Any, starts: Sequence[Node], rounds: int) -> dict[str, Any]:
    """Per-LM-call seconds of bae and of the floor over ``rounds`` alternating blocks of ``len(starts)`` runs."""
    graph, deps, floor = loaded.graph, loaded.deps, Floor(loaded, backend, lm)

    def through_bae() -> None:
        for start in starts:
            graph.run(start, lm=backend, **deps)

    def by_hand() -> None:
        for start in starts:
            floor.run(start)

    (bae_calls, bae_demos), (raw_calls, raw_demos) = (
        _calls_per_run(lm, through_bae, len(starts)),
        _calls_per_run(lm, by_hand, len(starts)),
    )
    calls = {"bae": bae_calls, "raw": raw_calls}
    stats = backend.get_stats()
    # What this row ran: the predictors' sources as OptimizedLM counted them, and the demos the LM
    # saw in each prompt (read from the messages it received), on both sides.
    ran = {
        "sources": {source: stats[source] for source in ("optimized", "naive", "stale", "errors")},
        "demos_per_call": {
            "bae": {"min": min(bae_demos), "max": max(bae_demos)},
            "raw": {"min": min(raw_demos), "max": max(raw_demos)},
        },
    }
    if calls["bae"] != calls["raw"]:
        raise RuntimeError(f"bae and the floor made different numbers of LM calls per run: {calls}")
    per_call = len(starts) * calls["bae"]
    gc.collect()
    samples = interleave({"bae": through_bae, "raw": by_hand}, rounds)
    per = {name: [s / per_call for s in values] for name, values in samples.items()}
    ratios = [b / r for b, r in zip(per["bae"], per["raw"], strict=True)]
    return {
        "ran": ran,
        "calls_per_run": calls["bae"],
        "bae_s_per_call": summary(per["bae"]),
        "raw_s_per_call": summary(per["raw"]),
        "ratio": statistics.median(ratios),
        "ratio_of_minimums": min(per["bae"]) / min(per["raw"]),
        "ratio_per_round": summary(ratios),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(parser("overhead", __doc__), argv)
    rounds, runs = (2, 3) if args.smoke else (120, 10)
    loaded = load_graph(str(EXAMPLE))
    lm = instant()
    starts = [loaded.graph.start.model_validate(t) for t in tickets(runs)]
    compiled = load_optimized(loaded.graph, COMPILED)
    report = Report(
        "overhead",
        args,
        parameters={"graph": "examples/support_triage.py", "runs_per_block": runs, "rounds": rounds,
                    "lm": "bench/scripted.py:instant", "compiled": f"compiled/{compiled.version}"},
        columns=["predictors", "LM calls/run", "bae µs/call", "raw µs/call", "bae - raw µs/run", "bae/raw"],
    )  # fmt: skip
    variants = {
        f"optimized ({compiled.version}, with demos)": OptimizedLM(compiled.predictors, lm=lm),
        "naive (zero-shot)": OptimizedLM(lm=lm),
    }
    for label, backend in variants.items():
        figures = measure(loaded, backend, lm, starts, rounds)
        bae, raw = figures["bae_s_per_call"]["median"], figures["raw_s_per_call"]["median"]
        key = label.split()[0]
        report.figure(key, figures)
        report.row(
            [
                label,
                f"{figures['calls_per_run']:g}",
                f"{bae * 1e6:.0f}",
                f"{raw * 1e6:.0f}",
                f"{(bae - raw) * figures['calls_per_run'] * 1e6:.0f}",
                f"{figures['ratio']:.3f}",
            ]
        )
        report.target(f"bae/raw time per LM call, {key}", figures["ratio"], "<=", TARGET)
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
