"""A ticket through the example graph on the embedded model, as a multiple of a 100-token prompt from scratch.

Issue 24's speed claim as a ratio, so it holds on any machine: in one run, interleaved round by round,

* **prompt**: evaluating a 100-token prompt on the bundled model from an empty KV cache;
* **hidden**: one ticket through the example graph with the committed ``compiled/`` as it loads (each closed
  decision read from the model's hidden state under its cached task header);
* **demos**: the same ticket, the same version, with its hidden-state decisions set aside (what every
  other LM gets: similar demos per call, calibrated likelihood): the engine before issue 24.

Each round takes the next dev ticket, so a ticket's own prompt states are never reused across rounds.

    python -m bench.ticket_speed [--smoke] [--out DIR]
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import median
from typing import Any

from bench.common import COMPILED, EXAMPLE, Report, interleave, parse, parser

GOAL = 2.0  # issue 24: a ticket at most twice a 100-token prompt from scratch (it was about 20)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(parser("ticket_speed", __doc__), argv)
    rounds = 2 if args.smoke else 5
    from bae.dataset import load_dataset
    from bae.loader import load_graph
    from bae.local.decoding import _clear
    from bae.local.engine import local_lm
    from bae.local.model import load_model, resolve_model
    from bae.optimized_lm import open_version

    loaded = load_graph(str(EXAMPLE))
    graph = loaded.graph
    version = open_version(COMPILED, loaded)
    lm = local_lm()
    hidden = version.backend(model=lm)
    demos = version.backend(model=lm)
    demos.hidden = {}
    model = load_model(resolve_model(None)[0])
    llama = model.llama
    tokens = llama.tokenize(("The quick brown fox jumps over the lazy dog. " * 20).encode())[:100]
    dev = load_dataset(EXAMPLE.with_name("support_triage.dev.jsonl"), graph).traces
    tickets = iter([trace.nodes[0] for trace in dev] * (rounds + 2))

    def prompt() -> None:
        with model.lock:
            _clear(llama)
            llama.eval(tokens)

    def ticket(backend: Any) -> Any:
        start = next(tickets)
        return lambda: graph.run(start.model_copy(), lm=backend, **loaded.deps)

    warm = next(tickets)
    for backend in (hidden, demos):  # load the model, evaluate and cache each predictor's static header
        graph.run(warm.model_copy(), lm=backend, **loaded.deps)
    samples = interleave(
        {"prompt": prompt, "hidden": lambda: ticket(hidden)(), "demos": lambda: ticket(demos)()}, rounds=rounds
    )
    report = Report(
        "ticket_speed",
        args,
        parameters={"rounds": rounds, "prompt_tokens": len(tokens), "tickets": "dev split, one per round"},
        columns=["case", "median s", "best s", "x prompt"],
    )
    base = median(samples["prompt"])
    labels = {
        "prompt": "100-token prompt from scratch",
        "hidden": "ticket, hidden-state decisions (new default)",
        "demos": "ticket, similar demos + likelihood (before)",
    }
    for case, label in labels.items():
        report.row([label, f"{median(samples[case]):.3f}", f"{min(samples[case]):.3f}",
                    f"{median(samples[case]) / base:.1f}"])  # fmt: skip
        report.figure(f"{case}_s", median(samples[case]))
    report.figure("hidden_over_prompt", median(samples["hidden"]) / base)
    report.figure("demos_over_prompt", median(samples["demos"]) / base)
    report.target("ticket (hidden) / 100-token prompt", median(samples["hidden"]) / base, "<=", GOAL)
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
