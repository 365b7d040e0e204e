"""Artifact loading: a compiled version of a generated 200-node graph, bae against bare ``Predict.load``.

The graph is generated (a start node routing to groups, each routing to leaves) and
compiled by bae itself (``labeled``, a scripted LM), so the version has the real layout,
manifest, checksums and fingerprints. bae's side is ``open_version``: resolve the
active version, read the manifest, check every file's path and sha256 and each predictor's
fingerprint, then load each predictor file into a fresh predictor. The bare
side is what a DSPy user would do with the same predictor states saved by DSPy itself:
build each ``Predict`` and call ``Predict.load(file)``. Both build the same predictors
(their signatures come from the node classes), so building is measured on its own too.
Target: bae under 1.5x bare.

    python -m bench.load [--smoke] [--out DIR]
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bae.compiler import CompileOptions, compile_graph
from bae.graph import Graph
from bae.loader import load_graph
from bae.optimized_lm import open_version
from bae.optimizer import OptimizeSettings, fresh_predictor
from bae.testing import ScriptedLM
from bench.common import Report, interleave, parse, parser, summary

TARGET = 1.5
LEVELS = ("low", "medium", "high")


def layout(nodes: int, groups: int) -> dict[str, list[str]]:
    """Group name -> its leaf names: one start, ``groups`` groups, the rest leaves dealt round-robin."""
    leaves = nodes - 1 - groups
    names = {f"Group{g:02d}": [] for g in range(groups)}
    keys = list(names)
    for leaf in range(leaves):
        group = keys[leaf % groups]
        names[group].append(f"Leaf{group[-2:]}x{len(names[group]):03d}")
    return names


def graph_source(tree: dict[str, list[str]]) -> str:
    """The module text of the generated graph: routing nodes, Context inputs, typed generated fields."""
    lines = [
        '"""A generated graph for bench.load: a request routed to a group, then to one of its leaves."""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Annotated, Literal",
        "",
        "from pydantic import Field",
        "",
        "from bae import LM, Context, Graph, Node",
        "",
        "",
        "class Request(Node):",
        '    """A request as it arrives."""',
        "",
        "    text: str",
        "",
        f"    def __call__(self, lm: LM) -> {' | '.join(tree)}: ...",
    ]
    for group, leaves in tree.items():
        lines += [
            "",
            "",
            f"class {group}(Node):",
            f'    """Requests of area {group[-2:]}: decide which of its {len(leaves)} specialists handles it."""',
            "",
            '    text: Annotated[str, Context("the request")]',
            '    topic: str = Field(description="the topic of the request, in a few words")',
            "",
            f"    def __call__(self, lm: LM) -> {' | '.join(leaves)}: ...",
        ]
        for leaf in leaves:
            lines += [
                "",
                "",
                f"class {leaf}(Node):",
                f'    """Specialist {leaf}: answer the request in its own field."""',
                "",
                '    text: Annotated[str, Context("the request")]',
                '    topic: Annotated[str, Context("the topic")]',
                '    answer: str = Field(description="the answer to send")',
                f'    urgency: Literal{list(LEVELS)} = Field(description="how fast to answer")',
            ]
    lines += ["", "", "graph = Graph(start=Request)", ""]
    return "\n".join(lines)


def traces(tree: dict[str, list[str]], per_leaf: int) -> list[dict[str, Any]]:
    """Gold traces Request -> group -> leaf, ``per_leaf`` for every leaf."""
    out = []
    for group, leaves in tree.items():
        for leaf in leaves:
            for i in range(per_leaf):
                text = f"request {i} for {leaf}: please help with item {i * 7 + len(leaf)}"
                topic = f"{group.lower()} item {i}"
                out.append(
                    {
                        "trace": [
                            {"node": "Request", "fields": {"text": text}},
                            {"node": group, "fields": {"text": text, "topic": topic}},
                            {"node": leaf, "fields": {"text": text, "topic": topic, "answer": f"done {i}",
                                                      "urgency": LEVELS[i % 3]}},
                        ]
                    }
                )  # fmt: skip
    return out


def scripted(graph: Graph) -> ScriptedLM:
    """Any well-formed answer will do: the dev runs only have to complete."""
    make: dict[str, Any] = {}
    choose: dict[str, Any] = {}
    for cls, spec in graph.specs.items():
        if spec.decides:
            choose[cls.__name__] = spec.successors[0].__name__
        if spec.generated and cls is not graph.start:
            make[cls.__name__] = {f.name: "low" if f.name == "urgency" else "x" for f in spec.generated}
    return ScriptedLM(make=make, choose=choose)


def build(folder: Path, nodes: int, groups: int, per_leaf: int, demos: int) -> tuple[Any, Path, dict[str, Any]]:
    """Write and compile the generated graph; return it, its compiled root, and what was built."""
    tree = layout(nodes, groups)
    module = folder / "generated_graph.py"
    module.write_text(graph_source(tree))
    dataset = folder / "generated_graph.train.jsonl"
    dev = folder / "generated_graph.dev.jsonl"
    records = traces(tree, per_leaf)
    dataset.write_text("".join(json.dumps(r) + "\n" for r in records))
    dev.write_text("".join(json.dumps(r) + "\n" for r in records[:: max(1, len(records) // 8)]))
    loaded = load_graph(str(module))
    settings = OptimizeSettings(optimizer="labeled", max_labeled_demos=demos, min_examples=1)
    options = CompileOptions(trainset=dataset, out=folder / "compiled", devset=dev, eval_threads=1, settings=settings)
    report = compile_graph(loaded, scripted(loaded.graph), options)
    files = [rel for rel, e in report.manifest["files"].items() if e.get("kind") in ("make", "choice")]
    return loaded, folder / "compiled", {"nodes": len(loaded.graph.nodes), "predictor_files": len(files)}


def bare_files(loaded: Any, compiled: Path, folder: Path) -> list[tuple[tuple[str, str], Path]]:
    """The same predictor states, saved by DSPy itself (``Predict.save``) for the bare side."""
    version = open_version(compiled, loaded)
    (folder / "bare").mkdir()
    files = []
    for (node, kind), predictor in sorted(version.predictors.items()):
        path = folder / "bare" / f"{node}.{kind}.json"
        predictor.save(str(path))
        files.append(((node, kind), path))
    return files


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(parser("load", __doc__), argv)
    nodes, groups, per_leaf, demos, rounds = (12, 2, 2, 2, 2) if args.smoke else (200, 10, 4, 4, 15)
    with tempfile.TemporaryDirectory(prefix="bae-bench-") as tmp:
        folder = Path(tmp)
        loaded, compiled, built = build(folder, nodes, groups, per_leaf, demos)
        graph = loaded.graph
        files = bare_files(loaded, compiled, folder)
        keys = [key for key, _ in files]
        on_disk = sum(p.stat().st_size for p in (compiled / "v1").rglob("*.json"))

        def bae() -> None:
            open_version(compiled, loaded)

        def bare() -> None:
            for key, path in files:
                fresh_predictor(graph, key).load(str(path))

        def construct() -> None:
            for key in keys:
                fresh_predictor(graph, key)

        bae()
        bare()
        samples = interleave({"bae": bae, "bare": bare, "construct": construct}, rounds)
    ratios = [b / r for b, r in zip(samples["bae"], samples["bare"], strict=True)]
    ratio = statistics.median(ratios)
    med = {name: statistics.median(values) for name, values in samples.items()}
    report = Report(
        "load",
        args,
        parameters={**built, "groups": groups, "demos_per_predictor": demos, "rounds": rounds,
                    "version_bytes": on_disk, "optimizer": "labeled"},
        columns=["loader", "files", "median ms", "min ms", "ms per file", "/ bare"],
    )  # fmt: skip
    count = len(files)
    for name, label in (
        ("bae", "bae open_version (checksums, fingerprints)"),
        ("bare", "bare: build Predict + Predict.load"),
        ("construct", "(build the Predict objects only)"),
    ):
        share = statistics.median(s / b for s, b in zip(samples[name], samples["bare"], strict=True))
        report.figure(name, {"seconds": summary(samples[name]), "per_file_s": med[name] / count, "over_bare": share})
        row = [label, count, f"{med[name] * 1e3:.0f}", f"{min(samples[name]) * 1e3:.0f}"]
        report.row([*row, f"{med[name] / count * 1e3:.2f}", f"{share:.2f}"])
    report.figure("bae_extra_per_file_s", (med["bae"] - med["bare"]) / count)
    report.target("bae / bare load time", ratio, "<=", TARGET)
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
