"""Compile quality and cost: the example compiled on the embedded model with ``knn``, ``labeled`` and ``bootstrap``.

Each optimizer is one real ``bae compile --json`` process (seed 0, default parameters,
the example's 85 gold traces split 64 train / 21 dev). Reported: the naive and optimized
whole-graph dev scores (LM-made steps only) and path accuracies, the choice predictor's
confusion matrix, the compile's wall time and peak memory, and
the LM calls and tokens it spent, from the usage bae records in the manifest (optimizing,
then scoring the naive and the optimized graph on dev). The embedded model decodes
greedily with a fixed seed, so a rerun gives the same scores; the row of the default optimizer
(``knn``) also says whether its node files are byte-identical to the committed active version.

    python -m bench.compile_quality [--smoke] [--out DIR]
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import COMPILED, EXAMPLE, ROOT, Report, bae_command, parse, parser, run

OPTIMIZERS = ("knn", "labeled", "bootstrap")  # the first is bae compile's default
SEED = 0


def compile_once(out: Path, optimizer: str, lm: str) -> dict[str, Any]:
    """One ``bae compile``: its JSON report, wall time and peak RSS."""
    proc = run(
        [*bae_command(), "compile", str(EXAMPLE), "--lm", lm, "--optimizer", optimizer, "--seed", str(SEED),
         "--out", str(out), "--json"]
    ).check()  # fmt: skip
    report = json.loads(proc.stdout)
    return {"report": report, "wall_s": proc.wall_s, "max_rss_mb": proc.max_rss_mb}


def same_node_files(version: Path, committed: Path) -> bool:
    """Whether a fresh version's predictor files hash the same as a committed version's."""

    def hashes(path: Path) -> dict[str, str]:
        files = json.loads((path / "manifest.json").read_text())["files"]
        return {rel: entry["sha256"] for rel, entry in files.items() if entry.get("kind") in ("make", "choice")}

    return hashes(version) == hashes(committed)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(parser("compile_quality", __doc__), argv)
    lm = f"{ROOT / 'tests' / 'lms.py'}:fewshot" if args.smoke else "local"
    committed = json.loads((COMPILED / "versions.json").read_text())["active"]
    report = Report(
        "compile_quality",
        args,
        parameters={"graph": "examples/support_triage.py", "lm": lm if args.smoke else "local (gemma-3-270m Q4_K_M)",
                    "seed": SEED, "optimizers": list(OPTIMIZERS), "flags": "defaults (--max-demos 4 "
                    "--max-labeled-demos 8 --dev-split 0.25 --threads 4)"},
        columns=["optimizer", "naive dev", "optimized dev", "lift (points)", "path accuracy", "wall s",
                 "LM calls", "tokens", "peak RSS MB"],
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bae-bench-") as tmp:
        for optimizer in OPTIMIZERS:
            done = compile_once(Path(tmp) / optimizer, optimizer, lm)
            summary = done["report"]
            scores, usage = summary["scores"], summary["usage"]
            calls = {stage: figures["calls"] for stage, figures in usage.items()}
            tokens = sum(f["prompt_tokens"] + f["completion_tokens"] for f in usage.values())
            figures = {**{k: v for k, v in done.items() if k != "report"}, "scores": scores, "usage": usage,
                       "confusion": summary.get("confusion")}  # fmt: skip
            if optimizer == OPTIMIZERS[0]:
                same = same_node_files(Path(summary["path"]), COMPILED / committed)
                figures[f"reproduces_committed_{committed}"] = same
            report.figure(optimizer, figures)
            report.row(
                [
                    optimizer,
                    f"{scores['naive']:.3f}",
                    f"{scores['optimized']:.3f}",
                    f"{(scores['optimized'] - scores['naive']) * 100:+.1f}",
                    f"{scores['naive_path_accuracy']:.3f} -> {scores['optimized_path_accuracy']:.3f}",
                    f"{done['wall_s']:.0f}",
                    f"{calls['optimize']} + {calls['naive_dev']} + {calls['optimized_dev']}",
                    f"{tokens:,}",
                    f"{done['max_rss_mb']:.0f}",
                ]
            )
    report.note("LM calls: optimizing + scoring the naive graph on dev + scoring the optimized graph on dev")
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
