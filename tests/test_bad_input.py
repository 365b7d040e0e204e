"""Bad input, every command: one clear line, the documented exit code, no traceback, nothing written.

Each case builds a workspace in ``tmp_path`` (the example graph, its dataset and a copy of the
committed ``compiled/v1``), damages it, and runs the real CLI (in this process, as a fresh process
would run it: ``tests/cli.py``) with the run log pointed into the workspace. The error must be a
single ``bae: error:`` line on stderr that names the problem and what to do (each case lists
fragments of both), and the workspace must be byte-for-byte and mtime-for-mtime unchanged.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli import LMS, bae, bae_process
from tests.lms import TRACES
from tests.workspace import GOOD_INPUT, GRAPH, ORACLE, assert_refused, reseal, snapshot, workspace

Setup = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    """One bad input: the command line, how to set it up, and what the user must be told."""

    id: str
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]  # fragments the one error line must contain: the problem, and what to do
    setup: Setup | None = None
    stdin: str = ""


# -- building bad inputs -------------------------------------------------------------------
def write(rel: str, content: str | bytes) -> Setup:
    def setup(ws: Path) -> None:
        path = ws / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def edit_json(rel: str, change: Callable[[dict], object]) -> Setup:
    """Change a JSON file under ``compiled/`` in place (its checksum no longer matches)."""

    def setup(ws: Path) -> None:
        path = ws / "compiled" / rel
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return setup


def truncate(rel: str, keep: int = 40, forged: bool = False) -> Setup:
    """Cut a file under ``compiled/`` short; ``forged`` also updates its checksum in the manifest."""

    def setup(ws: Path) -> None:
        path = ws / "compiled" / rel
        path.write_bytes(path.read_bytes()[:keep])
        if forged:
            reseal(ws, rel.partition("/")[2])

    return setup


def empty_dir(rel: str) -> Setup:
    return lambda ws: (ws / rel).mkdir(parents=True)


def trainset(*lines: str | bytes) -> Setup:
    return write("bad.jsonl", b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")


def gold() -> dict:
    """The first gold record of the example dataset, a copy to damage."""
    return {"trace": copy.deepcopy(TRACES[0])}


def trace_with(change: Callable[[list], object]) -> str:
    record = gold()
    change(record["trace"])
    return json.dumps(record)


def _set(path: list, value: object) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


INVALID_GRAPH = '''
from __future__ import annotations

from typing import Annotated
from bae import Context, Graph, Node

class Start(Node):
    """A request."""
    text: str
    def __call__(self, lm) -> Answer: ...

class Answer(Node):
    """An answer that needs a field nothing upstream supplies."""
    ticket_id: Annotated[str, Context("the ticket id")]
    reply: str

graph = Graph(start=Start)
'''
RUN = ("run", GRAPH, "--compiled", "compiled", "--lm", ORACLE)
COMPILE = ("compile", GRAPH, "--lm", ORACLE, "--out", "out")
DATASET = ("compile", GRAPH, "--lm", ORACLE, "--out", "out", "--trainset", "bad.jsonl")
EVAL = ("eval", GRAPH, "--compiled", "compiled", "--lm", ORACLE)
MB = 1024 * 1024

DEBUG_HINT = "rerun with --debug"
SHAPE = 'give Ticket\'s fields as a JSON object, e.g. {"customer_email": ..., "text": ...}'
RESTORE = "restore it from version control or recompile"
SKIP = "use --skip-invalid to skip bad lines"

# fmt: off
CASES = [
    # -- graph references (every command that takes one) -----------------------------------------
    Case("graph-file-missing", ("graph", "nope.py"), 2, ("graph file not found: nope.py", "check the path")),
    Case("graph-syntax-error", ("graph", "broken.py"), 2, ("broken.py", "SyntaxError at line 1", DEBUG_HINT),
         write("broken.py", "def broken(:\n")),
    Case("graph-import-error", ("compile", "imports.py", "--lm", ORACLE), 2,
         ("imports.py", "No module named 'bae_no_such_module'", DEBUG_HINT),
         write("imports.py", "import bae_no_such_module\n")),
    Case("graph-raises-on-import", ("run", "raises.py", "--input", "{}"), 2,
         ("raises.py", "RuntimeError: settings missing", DEBUG_HINT),
         write("raises.py", "raise RuntimeError('settings missing')\n")),
    Case("graph-missing-attribute", ("graph", f"{GRAPH}:Nope"), 2,
         ("has no 'Nope'", "as examples/support_triage.py:Name (it defines: graph, Ticket, Triage")),
    Case("graph-no-module-graph", ("graph", "plain.py"), 2, ("plain.py has no 'graph'", "as plain.py:Name"),
         write("plain.py", "x = 1\n")),
    Case("graph-not-a-node", ("graph", f"{GRAPH}:KNOWN_CUSTOMERS"), 2, ("is dict, not a Graph", "(it defines: graph")),
    Case("graph-plain-class", ("inspect", "compiled", "--graph", f"{GRAPH}:CustomerDirectory"), 2,
         ("is type, not a Graph", "(it defines: graph")),
    Case("graph-factory-fails", ("graph", "factory.py"), 2, ("graph() failed", "ValueError: no config", DEBUG_HINT),
         write("factory.py", "def graph():\n    raise ValueError('no config')\n")),
    Case("graph-module-missing", ("graph", "bae_no_such_pkg.flows:graph"), 2,
         ("cannot import module 'bae_no_such_pkg.flows'", "installed or on PYTHONPATH")),
    Case("graph-invalid", ("compile", "invalid.py", "--lm", ORACLE), 2,
         ("graph invalid.py is invalid", "ticket_id", "`bae graph invalid.py`"), write("invalid.py", INVALID_GRAPH)),
    Case("graph-deps-fail", ("graph", "deps.py"), 2, ("deps() failed", "KeyError", DEBUG_HINT),
         write("deps.py", "from examples.support_triage import graph\ndef deps():\n    raise KeyError('CRM_URL')\n")),
    # -- run inputs ---------------------------------------------------------------------------------
    Case("input-invalid-json", (*RUN, "--input", "{customer_email:"), 2, ("--input: invalid JSON", SHAPE)),
    Case("input-not-an-object", (*RUN, "--input", "[1, 2]"), 2, ("expected a JSON object, got list", SHAPE)),
    Case("input-missing-field", (*RUN, "--input", '{"text": "hi"}'), 2, ("customer_email: Field required", SHAPE)),
    Case("input-wrong-type", (*RUN, "--input", '{"customer_email": 7, "text": "hi"}'), 2,
         ("customer_email: Input should be a valid string", SHAPE)),
    Case("input-field-typo", (*RUN, "--input", '{"customer_email": "a@b.c", "txt": "hi"}'), 2,
         ("not a valid Ticket: unknown field 'txt' (did you mean 'text'?); text: Field required", SHAPE)),
    Case("input-unknown-field", (*RUN, "--input", '{"customer_email": "a@b.c", "text": "hi", "priority": "high"}'), 2,
         ("not a valid Ticket: unknown field 'priority'", SHAPE)),
    Case("input-file-not-utf8", (*RUN, "--input-file", "in.json"), 2, ("in.json: not UTF-8", "save it as"),
         write("in.json", b'{"customer_email": "\xff\xfe", "text": "x"}')),
    Case("input-lone-surrogate", (*RUN, "--input", '{"customer_email": "a@b.c", "text": "\\ud800"}'), 2,
         ("--input: a string holds a lone UTF-16 surrogate", "fix or remove it")),
    Case("input-file-empty", (*RUN, "--input-file", "in.json"), 2, ("in.json: input is empty", SHAPE),
         write("in.json", b" \n")),
    Case("input-file-missing", (*RUN, "--input-file", "nope.json"), 2,
         ("cannot read --input-file nope.json", "check the path")),
    Case("input-huge", (*RUN, "--input-file", "in.json"), 2, ("in.json: input is over 1 MB", "by reference"),
         write("in.json", json.dumps({"customer_email": "a@b.c", "text": "x" * (3 * MB)}))),
    Case("input-deeply-nested", (*RUN, "--input-file", "in.json"), 2, ("in.json: JSON nested too deeply", SHAPE),
         write("in.json", "[" * 200_000 + "]" * 200_000)),
    Case("input-stdin-invalid", ("run", GRAPH, "-", "--lm", ORACLE), 2, ("stdin: invalid JSON", SHAPE), stdin="{oops"),
    Case("input-stdin-empty", ("run", "-", "--compiled", "compiled", "--lm", ORACLE), 2,
         ("stdin: input is empty", SHAPE)),
    Case("input-none-given", RUN, 2, ("give exactly one input: --input JSON, --input-file F, or - (stdin)",)),
    Case("input-two-given", (*RUN, "--input", GOOD_INPUT, "--input-file", "x.json"), 2, ("give exactly one input",)),
    Case("run-extra-argument", ("run", GRAPH, "extra", "--input", GOOD_INPUT), 2,
         ("unexpected argument 'extra'", "only - (read stdin)")),
    Case("run-no-graph-no-compiled", ("run", "--input", GOOD_INPUT, "--lm", ORACLE), 2,
         ("no graph given: pass GRAPH (file.py[:Name]), or --compiled DIR to use the graph it was compiled from",)),
    Case("batch-missing", (*RUN, "--batch", "nope.jsonl"), 2, ("cannot read --batch nope.jsonl", "check the path")),
    Case("batch-empty", (*RUN, "--batch", "in.jsonl"), 2, ("in.jsonl has no inputs", "one JSON object per line"),
         write("in.jsonl", "\n\n")),
    Case("output-without-batch", (*RUN, "--input", GOOD_INPUT, "--output", "o.jsonl"), 2,
         ("--output goes with --batch", "drop --output")),
    Case("batch-and-input", (*RUN, "--batch", "in.jsonl", "--input", GOOD_INPUT), 2,
         ("--batch in.jsonl holds the inputs: drop --input, or drop --batch",), write("in.jsonl", GOOD_INPUT + "\n")),
    Case("batch-and-stdin", ("run", GRAPH, "-", "--batch", "in.jsonl", "--lm", ORACLE), 2,
         ("--batch in.jsonl holds the inputs: drop -, or drop --batch",), write("in.jsonl", GOOD_INPUT + "\n"),
         stdin=GOOD_INPUT),
    Case("concurrency-zero", (*RUN, "--batch", "in.jsonl", "--concurrency", "0"), 2,
         ("Invalid value for '--concurrency'", "0", "`bae run --help`"), write("in.jsonl", GOOD_INPUT + "\n")),
    Case("max-steps-zero", (*RUN, "--input", GOOD_INPUT, "--max-steps", "0"), 2, ("'--max-steps'", "`bae run --help`")),
    Case("lm-not-a-spec", ("run", GRAPH, "--input", GOOD_INPUT, "--lm", "gpt4"), 2,
         ("--lm 'gpt4' is not a model spec", "provider/model")),
    Case("lm-factory-missing", ("run", GRAPH, "--input", GOOD_INPUT, "--lm", f"{LMS}:nope"), 2,
         ("has no function 'nope'", "(it defines: ", "oracle")),
    # -- datasets and compile flags -------------------------------------------------------------------
    Case("trainset-missing", (*COMPILE, "--trainset", "nope.jsonl"), 2,
         ("dataset not found: nope.jsonl", "check the path")),
    Case("trainset-default-missing", ("compile", "other.py", "--lm", ORACLE, "--out", "out"), 2,
         ("no --trainset given and no other.train.jsonl (the default: <graph stem>.train.jsonl beside the graph)",
          "pass --trainset F.jsonl"), write("other.py", "from examples.support_triage import graph\n")),
    Case("trainset-empty", DATASET, 2, ("bad.jsonl has no valid traces", "add gold traces"), write("bad.jsonl", "")),
    Case("trainset-invalid-json", DATASET, 2, ("bad.jsonl:1: invalid JSON", SKIP), trainset("{nope")),
    Case("trainset-deeply-nested", DATASET, 2, ("bad.jsonl:2: JSON nested too deeply", SKIP),
         trainset(json.dumps(gold()), "[" * 100_000)),
    Case("trainset-not-utf8", DATASET, 2, ("bad.jsonl:1: not UTF-8", SKIP), trainset(b'{"trace": "\xff"}')),
    Case("trainset-lone-surrogate", DATASET, 2, ("bad.jsonl:1: a string holds a lone UTF-16 surrogate", SKIP),
         trainset(json.dumps(gold()).replace("refund", "\\udc00", 1))),
    Case("trace-unknown-node", DATASET, 2, ("bad.jsonl:1: step 3: unknown node 'RefundIssue'", "graph has: Ticket"),
         trainset(trace_with(lambda t: t[2].update(node="RefundIssue")))),
    Case("trace-non-edge", DATASET, 2, ("step 2: Ticket -> BillingIssue is not an edge", SKIP),
         trainset(trace_with(lambda t: t.pop(1)))),
    Case("trace-invalid-field", DATASET, 2, ("step 3 (BillingIssue): field priority", "'low', 'medium' or 'high'"),
         trainset(trace_with(lambda t: t[2]["fields"].update(priority="urgent")))),
    Case("trace-missing-field", DATASET, 2, ("step 1 (Ticket): field customer_email: Field required", SKIP),
         trainset(trace_with(lambda t: t[0]["fields"].pop("customer_email")))),
    Case("trace-field-typo", DATASET, 2,
         ("bad.jsonl:1: step 1 (Ticket): unknown field 'txt' (did you mean 'text'?); field text: Field required", SKIP),
         trainset(trace_with(lambda t: t[0]["fields"].update(txt=t[0]["fields"].pop("text"))))),
    Case("trace-unknown-field", DATASET, 2, ("bad.jsonl:1: step 3 (BillingIssue): unknown field 'notes'", SKIP),
         trainset(trace_with(lambda t: t[2]["fields"].update(notes="call back")))),
    Case("trace-wrong-start", DATASET, 2, ("step 1 is Triage, but the graph starts at Ticket", SKIP),
         trainset(trace_with(lambda t: t.pop(0)))),
    Case("trace-cannot-end", DATASET, 2, ("ends at Triage, which cannot end a run", SKIP),
         trainset(trace_with(lambda t: t.pop(2)))),
    Case("trainset-one-trace", DATASET, 2, ("need at least 2 traces", "pass --devset"), trainset(json.dumps(gold()))),
    Case("optimizer-unknown", (*COMPILE, "--optimizer", "adam"), 2,
         ("unknown --optimizer 'adam'", "choose one of knn, bootstrap, labeled")),
    Case("dev-split-out-of-range", (*COMPILE, "--dev-split", "1.5"), 2,
         ("--dev-split must be between 0 and 1", "e.g. 0.25")),
    Case("dev-split-not-a-number", (*COMPILE, "--dev-split", "half"), 2,
         ("Invalid value for '--dev-split'", "'half'", "`bae compile --help`")),
    Case("devset-missing", (*COMPILE, "--devset", "nope.jsonl"), 2,
         ("dataset not found: nope.jsonl", "check the path")),
    Case("metric-not-a-function", (*COMPILE, "--metric", f"{LMS}:GOLD"), 2, ("has no function 'GOLD'", "exact_metric")),
    Case("threads-zero", (*COMPILE, "--threads", "0"), 2, ("'--threads'", "`bae compile --help`")),
    Case("out-is-a-file", (*COMPILE[:-1], "notes.txt"), 2, ("notes.txt is a file", "pass a directory to --out"),
         write("notes.txt", "keep me")),
    Case("out-versions-corrupt", (*COMPILE[:-1], "compiled"), 3, ("versions.json unreadable", "version control"),
         write("compiled/versions.json", "{")),
    # -- eval: the same dataset checks as compile, versions and gates --------------------------------------
    Case("eval-dataset-missing", (*EVAL, "--dataset", "nope.jsonl"), 2,
         ("dataset not found: nope.jsonl", "check the path")),
    Case("eval-dataset-invalid-json", (*EVAL, "--dataset", "bad.jsonl"), 2, ("bad.jsonl:2: invalid JSON", SKIP),
         trainset(json.dumps(gold()), "{nope")),
    Case("eval-trace-unknown-node", (*EVAL, "--dataset", "bad.jsonl"), 2,
         ("bad.jsonl:1: step 3: unknown node 'RefundIssue'", SKIP),
         trainset(trace_with(lambda t: t[2].update(node="RefundIssue")))),
    Case("eval-trace-missing-start-field", (*EVAL, "--dataset", "bad.jsonl"), 2,
         ("bad.jsonl:1: step 1 (Ticket): field text: Field required", SKIP),
         trainset(trace_with(lambda t: t[0]["fields"].pop("text")))),
    Case("eval-no-dataset", EVAL, 2, ("Missing option '--dataset'", "`bae eval --help`")),
    Case("eval-version-unknown", (*EVAL, "--dataset", "examples/support_triage.train.jsonl", "--version", "v9"), 3,
         ("no version 'v9' in compiled", "use one of v1")),
    Case("eval-version-without-compiled", ("eval", GRAPH, "--dataset", "bad.jsonl", "--version", "v1"), 2,
         ("--version needs --compiled DIR",), trainset(json.dumps(gold()))),
    Case("eval-max-drop-alone", (*EVAL, "--dataset", "bad.jsonl", "--max-drop", "0.1"), 2,
         ("--max-drop goes with --baseline", "add the version"), trainset(json.dumps(gold()))),
    Case("eval-output-folder-missing", (*EVAL, "--dataset", "bad.jsonl", "--output", "nowhere/runs.jsonl"), 2,
         ("--output nowhere/runs.jsonl is in a folder that does not exist", "give a file path"),
         trainset(json.dumps(gold()))),
    Case("eval-max-drop-negative", (*EVAL, "--dataset", "bad.jsonl", "--baseline", "v1", "--max-drop", "-1"), 2,
         ("'--max-drop'", "`bae eval --help`"), trainset(json.dumps(gold()))),
    # -- compiled directories ---------------------------------------------------------------------------
    Case("compiled-missing", ("run", GRAPH, "--compiled", "nowhere", "--input", GOOD_INPUT, "--lm", ORACLE), 3,
         ("compiled directory not found: nowhere", "check the path")),
    Case("compiled-empty", ("inspect", "empty"), 3, ("empty is not a compiled directory", "pass the --out of"),
         empty_dir("empty")),
    Case("manifest-truncated", ("inspect", "compiled/v1"), 3, ("manifest unreadable", RESTORE),
         truncate("v1/manifest.json")),
    Case("manifest-not-an-object", ("graph", GRAPH, "--compiled", "compiled"), 3, ("manifest malformed", RESTORE),
         write("compiled/v1/manifest.json", "[]")),
    Case("manifest-files-malformed", (*RUN, "--input", GOOD_INPUT), 3, ("'files' must map paths", RESTORE),
         edit_json("v1/manifest.json", _set(["files"], ["nodes/BillingIssue.json"]))),
    Case("node-file-truncated", (*RUN, "--input", GOOD_INPUT), 3, ("checksum mismatch", "BillingIssue.json", RESTORE),
         truncate("v1/nodes/BillingIssue.json")),
    Case("node-file-truncated-resealed", (*RUN, "--input", GOOD_INPUT), 3,
         ("BillingIssue.json is not valid JSON", RESTORE), truncate("v1/nodes/BillingIssue.json", forged=True)),
    Case("checksum-mismatch", ("inspect", "compiled"), 3, ("checksum mismatch", "Triage.choice.json", RESTORE),
         edit_json("v1/nodes/Triage.choice.json", _set(["predictor", "demos"], []))),
    Case("format-unknown", (*RUN, "--input", GOOD_INPUT), 3,
         ("unknown format version 99", "the bae version that wrote it"),
         edit_json("v1/manifest.json", _set(["format"], 99))),
    Case("versions-json-corrupt", ("versions", "compiled"), 3, ("versions.json unreadable", "version control"),
         write("compiled/versions.json", '{"format": 1, "act')),
    Case("versions-json-format-unknown", ("versions", "compiled"), 3, ("unknown format 2", "the bae version"),
         edit_json("versions.json", _set(["format"], 2))),
    Case("versions-json-names-missing", ("inspect", "compiled"), 3,
         ("active version 'v9'", "set 'active' to one of v1"), edit_json("versions.json", _set(["active"], "v9"))),
    Case("versions-json-dir-missing", ("run", "--compiled", "compiled", "--input", GOOD_INPUT, "--lm", ORACLE), 3,
         ("active version v2 of compiled is missing its manifest", "`bae promote compiled vN`"),
         edit_json("versions.json", lambda d: d.update(active="v2", versions=[*d["versions"], {"version": "v2"}]))),
    Case("versions-missing", ("versions", "nowhere"), 3, ("no versions.json in nowhere", "--out directory")),
    Case("promote-unknown-version", ("promote", "compiled", "v9"), 3, ("no version 'v9'", "promote one of v1")),
    Case("promote-listed-not-on-disk", ("promote", "compiled", "v2"), 3,
         ("v2 is listed but", "promote another version"),
         edit_json("versions.json", lambda d: d["versions"].append({"version": "v2"}))),
    Case("promote-dir-missing", ("promote", "nowhere", "v1"), 3, ("compiled directory not found: nowhere",)),
    # -- serve and bundle ----------------------------------------------------------------------------------
    Case("serve-compiled-missing", ("serve", GRAPH, "--compiled", "nowhere", "--lm", ORACLE), 3,
         ("compiled directory not found: nowhere", "check the path")),
    Case("serve-port-out-of-range", ("serve", GRAPH, "--compiled", "compiled", "--port", "70000"), 2,
         ("'--port'", "65535", "`bae serve --help`")),
    Case("bundle-out-exists", ("bundle", GRAPH, "--compiled", "compiled", "--out", "examples", "--lm", ORACLE), 2,
         ("--out examples already exists", "give a new folder")),
    Case("bundle-compiled-missing", ("bundle", GRAPH, "--compiled", "nowhere", "--out", "b", "--lm", ORACLE), 3,
         ("compiled directory not found: nowhere",)),
    # -- review ---------------------------------------------------------------------------------------------
    Case("review-no-terminal", ("review", GRAPH, "--input", "examples/support_triage.dev.jsonl", "--out", "g.jsonl"),
         2, ("bae review is a full-screen app", "run it in a terminal")),
    Case("review-out-folder-missing", ("review", GRAPH, "--input", "bad.jsonl", "--out", "no/g.jsonl",
                                       "--auto-accept-agreeing"), 2,
         ("--out no/g.jsonl is in a folder that does not exist", "create it")),
    Case("review-input-not-json", ("review", GRAPH, "--input", "bad.jsonl", "--out", "g.jsonl", "--suggest", ORACLE,
                                   "--auto-accept-agreeing"), 2,
         ("bad.jsonl:2: invalid JSON", "expected a recorded run"), trainset(json.dumps({"trace": TRACES[0]}), "{")),
    Case("review-input-foreign-trace", ("review", GRAPH, "--input", "bad.jsonl", "--out", "g.jsonl",
                                        "--auto-accept-agreeing"), 2,
         ("bad.jsonl:1: step 2: Ticket -> BillingIssue is not an edge", "is this file from this graph?"),
         trainset(json.dumps({"trace": [TRACES[0][0], TRACES[0][2]]}))),
    Case("review-input-missing", ("review", GRAPH, "--input", "nope.jsonl", "--out", "g.jsonl",
                                  "--auto-accept-agreeing"), 2, ("--input nope.jsonl: no such file",)),
    Case("review-input-a-folder", ("review", GRAPH, "--input", "examples", "--out", "g.jsonl",
                                   "--auto-accept-agreeing"), 2, ("--input examples is a directory", "JSONL file")),
    Case("review-input-not-utf8", ("review", GRAPH, "--input", "bad.jsonl", "--out", "g.jsonl",
                                   "--auto-accept-agreeing"), 2,
         ("bad.jsonl:1: not UTF-8 text", "expected a recorded run"), trainset(b"\xff\xfe{}")),
    Case("review-out-foreign", ("review", GRAPH, "--input", "bad.jsonl", "--out", "g.jsonl", "--auto-accept-agreeing"),
         2, ("g.jsonl:1: expected {\"trace\"", "from this graph?"),
         lambda ws: (trainset(json.dumps({"trace": TRACES[0]}))(ws), write("g.jsonl", '{"rows": 1}\n')(ws))),
    Case("review-order-unknown", ("review", GRAPH, "--input", "bad.jsonl", "--out", "g.jsonl", "--order", "best"), 2,
         ("--order 'best'", "use one of file, uncertain, disagree")),
    # -- stats and flags ----------------------------------------------------------------------------------
    Case("stats-since-garbage", ("stats", "--since", "yesterday-ish"), 2, ("--since 'yesterday-ish'", "30m, 12h")),
    Case("stats-log-not-sqlite", ("stats", "--log-db", "runs.db"), 2, ("runs.db: file is not a database", "--log-db"),
         write("runs.db", "not a db" * 100)),
    Case("stats-versions-corrupt", ("stats",), 3, ("versions.json unreadable", "version control"),
         write("compiled/versions.json", "{")),
    Case("stats-compiled-missing", ("stats", "--compiled", "nodir"), 3,
         ("no versions.json in nodir: not a compiled root", "pass the --out directory of `bae compile`")),
    Case("inspect-min-score-nan", ("inspect", "compiled", "--min-score", "high"), 2,
         ("'--min-score'", "`bae inspect --help`")),
    Case("unknown-command", ("frobnicate",), 2, ("No such command 'frobnicate'", "`bae --help`")),
    Case("unknown-option", ("versions", "compiled", "--colour"), 2,
         ("No such option: --colour", "`bae versions --help`")),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(case: Case, tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    if case.setup:
        case.setup(ws)
    before = snapshot(ws)
    result = bae(*case.args, cwd=ws, env={"BAE_LOG_DB": str(ws / ".bae" / "runs.db")}, input=case.stdin)
    assert_refused(result, case.code, *case.says)
    assert snapshot(ws) == before


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    result = bae("--debug", "graph", "nope.py", cwd=ws)
    assert result.returncode == 2  # the documented code, traceback or not
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("bae: error: graph file not found")


# one failing invocation per command, in an empty directory: each is a bae error (not a usage error)
FAILING = {
    "compile": (("compile", "nope.py"), 2),
    "eval": (("eval", "nope.py", "--compiled", "compiled", "--dataset", "gold.jsonl"), 2),
    "run": (("run", "nope.py", "--input", "{}"), 2),
    "inspect": (("inspect", "compiled"), 3),
    "stats": (("stats", "--since", "yesterday-ish"), 2),
    "versions": (("versions", "compiled"), 3),
    "promote": (("promote", "compiled", "v1"), 3),
    "graph": (("graph", "nope.py"), 2),
    "serve": (("serve", "--compiled", "compiled"), 3),
    "bundle": (("bundle", "--compiled", "compiled", "--out", "deploy"), 3),
    "review": (("review", "nope.py", "--input", "r.jsonl", "--out", "no/g.jsonl"), 2),
}


@pytest.mark.parametrize("command", sorted(FAILING))
def test_debug_is_accepted_after_every_command(command: str, tmp_path: Path) -> None:
    """``bae CMD ... --debug``, as the error messages say ("rerun with --debug"), not only ``bae --debug CMD``.
    The rerun is a real process, as a user's is (a second ``run`` of a command in one process loses the option:
    ``test_cli_basics``)."""
    args, code = FAILING[command]
    plain, debug = bae(*args, cwd=tmp_path), bae_process(*args, "--debug", cwd=tmp_path)
    assert_refused(plain, code)
    assert debug.returncode == code, debug.stderr
    assert "Traceback" in debug.stderr and debug.stderr.splitlines()[-1] == plain.stderr.strip()


def test_debug_failures_cover_every_command() -> None:
    from bae_cli.commands import COMMANDS

    assert set(FAILING) == set(COMMANDS)


def test_the_table_covers_every_command() -> None:
    commands = {c.args[0] for c in CASES}
    assert commands >= {"compile", "eval", "run", "inspect", "stats", "versions", "promote", "graph", "serve", "bundle"}
    assert len(CASES) >= 40
