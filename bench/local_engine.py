"""The embedded engine's own costs: weight repacking, the prompt-prefix cache, and demo retrieval.

Three questions, each answered side by side in one run on this machine:

* **Extra buffer types** (the AMX guard): prompt and decode speed of the bundled model loaded with
  llama.cpp's extra buffer types on (CPU_REPACK here; AMX on Intel CPUs that have it, where it
  crashes) and off, each in its own child process, interleaved.
* **Prefix cache**: one call of the example's choice predictor with 8 fixed demos (its compiled pool,
  stratified, first 8), its static prefix evaluated from scratch (cold: a fresh cache each call) vs
  restored from the cache (warm).
* **Retrieval**: picking 8 similar demos from the example's training pool (BM25) vs a warm call.

    python -m bench.local_engine [--smoke] [--out DIR]
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from statistics import median
from typing import Any

from bench.common import EXAMPLE, ROOT, Report, interleave, parse, parser

_PROMPT_SPEED = """
import json, sys, time
import llama_cpp
import bae.local.model as weights
extra = sys.argv[1] == "on"
if extra:  # the guard bypassed: llama.cpp's own defaults
    import contextlib
    weights.no_extra_buffer_types = lambda _: contextlib.nullcontext()
model = weights.load_model(weights.resolve_model(None)[0])
llama = model.llama
tokens = llama.tokenize(("The quick brown fox jumps over the lazy dog. " * 80).encode())[: int(sys.argv[2])]
prompt, decode = [], []
for _ in range(int(sys.argv[3])):
    llama.reset()
    t = time.perf_counter(); llama.eval(tokens); prompt.append(time.perf_counter() - t)
    t = time.perf_counter()
    for token in tokens[:16]:
        llama.eval([token])
    decode.append((time.perf_counter() - t) / 16)
print(json.dumps({"prompt_tps": len(tokens) / min(prompt), "decode_tps": 1 / min(decode)}))
"""


def prompt_speed(extra: bool, tokens: int, rounds: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _PROMPT_SPEED, "on" if extra else "off", str(tokens), str(rounds)],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(parser("local_engine", __doc__), argv)
    rounds = 2 if args.smoke else 5
    import dspy

    from bae.loader import load_graph
    from bae.local.decoding import PrefixCache
    from bae.local.engine import local_lm
    from bae.local.model import load_model, resolve_model
    from bae.optimized_lm import CompiledGraph
    from bae.optimizer import stratified

    report = Report(
        "local_engine", args, parameters={"rounds": rounds}, columns=["case", "median", "best", "unit"]
    )
    speeds: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for _ in range(1 if args.smoke else 3):
        for mode in ("on", "off"):
            speeds[mode].append(prompt_speed(mode == "on", 128 if args.smoke else 900, rounds))
    for mode in ("on", "off"):
        for figure in ("prompt_tps", "decode_tps"):
            values = [s[figure] for s in speeds[mode]]
            report.row([f"extra buffer types {mode}: {figure}", f"{median(values):.0f}", f"{max(values):.0f}", "tok/s"])
            report.figure(f"extra_{mode}_{figure}", median(values))
    ratio = median(s["prompt_tps"] for s in speeds["off"]) / median(s["prompt_tps"] for s in speeds["on"])
    report.figure("prompt_speed_off_over_on", ratio)

    loaded = load_graph(str(EXAMPLE))
    compiled = CompiledGraph.load(loaded.graph, ROOT / "compiled")
    lm = local_lm()
    choice = compiled.optimized[("Triage", "choice")]
    choice.demos, choice.retriever = stratified(choice.demos)[:8], None  # 8 fixed demos, every queue shown
    model = load_model(resolve_model(None)[0])
    inputs = {"text": "I was charged twice for invoice INV-2231, please refund the duplicate.", "plan": "pro"}

    def call() -> Any:
        with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
            return choice(**inputs)

    def cold() -> Any:
        model.prefixes = PrefixCache()
        return call()

    call()  # load the model
    samples = interleave({"cold": cold, "warm": call}, rounds=rounds)
    for case in ("cold", "warm"):
        report.row([f"choice call, 8 fixed demos, prefix {case}", f"{median(samples[case]):.3f}",
                    f"{min(samples[case]):.3f}", "s"])  # fmt: skip
        report.figure(f"call_{case}_s", median(samples[case]))
    report.figure("cold_over_warm", median(samples["cold"]) / median(samples["warm"]))

    from bae.dataset import load_dataset
    from bae.examples import collect_examples
    from bae.retrieval import DemoRetriever

    pool = collect_examples([t.nodes for t in load_dataset(EXAMPLE.with_name("support_triage.train.jsonl"),
                                                            loaded.graph).traces])[("Triage", "choice")]  # fmt: skip
    retriever = DemoRetriever(pool, ("text", "plan"), 8, "next_step")
    retriever.select(inputs)  # build the index
    picks = interleave({"select": lambda: retriever.select(inputs)}, rounds=rounds * 20)["select"]
    report.row([f"retrieve 8 of {len(pool)} (BM25, balanced)", f"{median(picks) * 1000:.3f}",
                f"{min(picks) * 1000:.3f}", "ms"])  # fmt: skip
    report.figure("retrieve_ms", median(picks) * 1000)
    report.target("retrieval / warm call", median(picks) / median(samples["warm"]), "<=", 0.01)
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
