"""The review loop on the example, end to end: record production traffic, review it, recompile, evaluate.

Every step but the person is the real ``bae`` command a team runs (the README's loop):

1. ``bae run --compiled compiled --batch traffic --record recorded.jsonl``: the 40 new tickets of
   ``examples/support_triage.traffic.jsonl`` answered by the committed version, recorded with confidence;
2. ``bae review ... --suggest <teacher> --auto-accept-agreeing``: the traces the teacher agrees with are
   written without asking; the teacher here is a person's careful labels
   (``examples/support_triage.traffic.gold.jsonl``, written blind, before any model ran), served as an LM
   (``gold_teacher``), so it is the simulated reviewer;
3. the rest in the real review app (Textual's pilot, headless): on each screen the person takes the
   teacher's answer (``a``) and accepts it (Enter);
4. ``bae compile --trainset examples/support_triage.train.jsonl --trainset reviewed.jsonl`` into a copy of
   ``compiled/`` (each file split on its own: the 21 dev traces stay dev, 10 reviewed traces join them);
5. ``bae eval --version v1 --version v2`` on the 21 dev traces and on the 45 held-out traces of
   ``examples/support_triage.holdout.jsonl`` (nobody tuned to them), with paired 95% intervals.

Also reported: how often the recorded answers were wrong, and how many of the wrong ones the
``--order uncertain`` queue puts in its first half (what reviewing least confident first buys).

    python -m bench.review_loop [--smoke] [--out DIR] [--lm local] [--keep DIR]
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from bae.predictors import PredictorCall
from bae.testing import ScriptedLM
from bench.common import COMPILED, EXAMPLE, ROOT, Report, bae_command, parse, parser, run

EXAMPLES = ROOT / "examples"
TRAFFIC = EXAMPLES / "support_triage.traffic.jsonl"
TRAFFIC_GOLD = EXAMPLES / "support_triage.traffic.gold.jsonl"
TRAIN = EXAMPLES / "support_triage.train.jsonl"
DEV = EXAMPLES / "support_triage.dev.jsonl"
HOLDOUT = EXAMPLES / "support_triage.holdout.jsonl"
TEACHER = "bench.review_loop:gold_teacher"
SMOKE_LM = f"{ROOT / 'tests' / 'lms.py'}:fewshot"


@cache
def _gold() -> dict[str, list[dict[str, Any]]]:
    """Ticket text -> its gold trace, from the careful labels of the traffic."""
    traces = [json.loads(line)["trace"] for line in TRAFFIC_GOLD.read_text().splitlines() if line.strip()]
    return {trace[0]["fields"]["text"]: trace for trace in traces}


def gold_teacher() -> ScriptedLM:
    """The simulated reviewer as an LM (``--suggest bench.review_loop:gold_teacher``): it answers each ticket
    with its careful label, looked up by the ticket's text."""

    def step(call: PredictorCall) -> dict[str, Any]:
        return _gold()[call.inputs["text"]][-1]

    def make(call: PredictorCall) -> dict[str, Any]:
        made = step(call)["fields"]
        return {k: v for k, v in made.items() if k not in ("text", "plan")}

    def choose(call: PredictorCall) -> str:
        return str(step(call)["node"])

    queues = ("BillingIssue", "TechnicalIssue", "AccountIssue")
    return ScriptedLM(make=dict.fromkeys(queues, make), choose={"Triage": choose}, model="bae/gold-teacher")


def bae(*args: str) -> Any:
    return run([*bae_command(), *args], timeout=7200)


def limited(source: Path, target: Path, lines: int | None) -> Path:
    """``source``, or its first ``lines`` lines (smoke), copied to ``target``."""
    text = source.read_text().splitlines(keepends=True)
    target.write_text("".join(text if lines is None else text[:lines]))
    return target


async def _person(recorded: Path, reviewed: Path) -> dict[str, Any]:
    """The person at the review app: takes the teacher's answer and accepts it on every screen left."""
    from bae.executor import ThreadExecutor
    from bae.lm_specs import LMSettings
    from bae.loader import load_graph
    from bae.review import GoldFile, ReviewSession, open_teacher, read_inputs
    from bae_cli.review_app import ReviewApp

    loaded = load_graph(str(EXAMPLE))
    session = ReviewSession.start(loaded.graph, read_inputs([recorded], loaded.graph), GoldFile(reviewed), "disagree")
    teacher = open_teacher(TEACHER, loaded, None, None, LMSettings())
    teacher.suggest(session.queue, ThreadExecutor(4))
    session.reorder("disagree")
    app = ReviewApp(session)
    screens = 0
    async with app.run_test(size=(140, 45)) as pilot:
        while not session.done:
            await pilot.press("a", "enter")
            screens += 1
        await pilot.press("q")
    return {**session.summary(), "screens": screens}


def wrong_found_first(recorded: Path) -> dict[str, Any]:
    """How many recorded answers differ from the careful labels, and how many of those the uncertain-first
    queue puts in its first half."""
    from bae.dataset import parse_trace
    from bae.loader import load_graph
    from bae.review import Answer, ordered, read_inputs

    graph = load_graph(str(EXAMPLE)).graph
    items = read_inputs([recorded], graph)
    for item in items:
        gold = parse_trace(graph, {"trace": _gold()[item.start.text]})  # type: ignore[attr-defined]
        item.alternatives = [Answer("gold", gold)]
    wrong = {item.key for item in items if item.disagreeing()}
    queue = ordered(items, "uncertain")
    first_half = queue[: len(queue) // 2]
    return {
        "inputs": len(items),
        "wrong": len(wrong),
        "wrong_in_first_half_uncertain": sum(item.key in wrong for item in first_half),
        "first_half": len(first_half),
        "with_confidence": sum(item.confidence is not None for item in items),
    }


def _scored(column: dict[str, Any]) -> str:
    low, high = column["score_interval"]
    return f"{column['score']:.3f} [{low:.2f}, {high:.2f}]"


def main(argv: Sequence[str] | None = None) -> int:
    ap = parser("review_loop", __doc__)
    ap.add_argument("--lm", default="local", help="The LM of record, compile and eval (default: the embedded one).")
    ap.add_argument("--keep", type=Path, help="Work in this folder and keep it (default: a temporary one).")
    args = parse(ap, argv)
    lm = SMOKE_LM if args.smoke else args.lm
    work = args.keep or Path(tempfile.mkdtemp(prefix="bae-review-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    small = 8 if args.smoke else None
    traffic = limited(TRAFFIC, work / "traffic.jsonl", small)
    holdout = limited(HOLDOUT, work / "holdout.jsonl", small)
    recorded, reviewed, compiled = work / "recorded.jsonl", work / "reviewed.jsonl", work / "compiled"
    for stale in (recorded, reviewed):
        stale.unlink(missing_ok=True)
    shutil.rmtree(compiled, ignore_errors=True)
    shutil.copytree(COMPILED, compiled)
    report = Report(
        "review_loop",
        args,
        parameters={"lm": lm, "traffic": str(TRAFFIC.relative_to(ROOT)), "reviewer": "the careful labels of "
                    f"{TRAFFIC_GOLD.relative_to(ROOT)}, as --suggest {TEACHER}", "before": "compiled/v1",
                    "after": "v1's trainset + the reviewed traces, each split on its own (seed 0)"},
        columns=["dataset", "traces", "naive", "v1 (before)", "v2 (after review)", "v2 - v1 [95% interval]",
                 "per reviewed trace", "routing v1 -> v2"],
    )  # fmt: skip

    steps: dict[str, float] = {}
    ran = bae("run", "--compiled", str(compiled), "--lm", lm, "--batch", str(traffic), "--record", str(recorded),
              "--no-log", "--json").check()  # fmt: skip
    steps["record"] = ran.wall_s
    auto = bae("review", str(EXAMPLE), "--input", str(recorded), "--out", str(reviewed), "--suggest", TEACHER,
               "--auto-accept-agreeing", "--json")  # fmt: skip
    if auto.returncode not in (0, 2):
        auto.check()
    unattended = json.loads(auto.stdout)
    person = asyncio.run(_person(recorded, reviewed))
    found = wrong_found_first(recorded)
    compiled_v2 = bae("compile", str(EXAMPLE), "--trainset", str(TRAIN), "--trainset", str(reviewed), "--out",
                      str(compiled), "--lm", lm, "--json").check()  # fmt: skip
    steps["compile"] = compiled_v2.wall_s
    version = json.loads(compiled_v2.stdout)["version"]
    report.figure("record", {"summary": json.loads(ran.stdout)["usage"], "wall_s": ran.wall_s})
    report.figure("review", {"auto_accepted": unattended, "person": person, "recorded_answers": found})
    report.figure("compile", json.loads(compiled_v2.stdout)["scores"])
    reviewed_traces = sum(1 for line in reviewed.read_text().splitlines() if line.strip())
    for name, dataset in (("dev", DEV), ("hold-out", holdout)):
        ev = bae("eval", str(EXAMPLE), "--compiled", str(compiled), "--version", "v1", "--version", version,
                 "--naive", "--dataset", str(dataset), "--lm", lm, "--no-log", "--json").check()  # fmt: skip
        steps[f"eval {name}"] = ev.wall_s
        result = json.loads(ev.stdout)
        before, after, naive = result["columns"]  # in the order asked for; every delta is against v1
        delta = after["delta"]
        low, high = delta["score_interval"]
        report.figure(name, {"naive": naive, "v1": before, "v2": after})
        report.row([name, result["dataset"]["traces"], _scored(naive), _scored(before), _scored(after),
                    f"{delta['score']:+.3f} [{low:+.3f}, {high:+.3f}]", f"{delta['score'] / reviewed_traces:+.4f}",
                    f"{before['path_accuracy']:.3f} -> {after['path_accuracy']:.3f}"])  # fmt: skip
    report.figure("reviewed_traces", reviewed_traces)
    report.figure("wall_s", steps)
    report.note(
        f"{found['wrong']} of {found['inputs']} recorded answers differed from the careful labels; the uncertain-first "
        f"queue put {found['wrong_in_first_half_uncertain']} of them in its first {found['first_half']}"
    )
    report.note(
        f"review: {unattended['auto_accepted']} auto-accepted (teacher agreed), {person['screens']} screens for the "
        f"person ({person['accepted']} accepted as shown, {person['changed']} changed)"
    )
    report.finish()
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
