"""Every optimizer bae lists compiles the example graph end to end, through the real ``bae compile``.

The optimizers are read from ``bae.optimizer.OPTIMIZERS`` when the tests are collected, so a
newly listed one is covered without touching this file. The LM is the scripted few-shot model
of ``tests/lms.py`` (it answers right only with demos in the prompt, so nothing scores perfectly
and reflective optimizers really reflect), extended to answer the prompts optimizers send on
their own behalf: MIPROv2 summarizing the data and proposing instructions, GEPA reflecting.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from dspy.lm15 import Message, Response, TextPart, Usage, response_to_events

from bae.exceptions import BaeInputError
from bae.optimizer import OPTIMIZERS, OptimizeSettings, build_optimizer
from bae.predictors import current_call
from bae.testing import ScriptedLM
from tests import lms
from tests.cli import EXAMPLE, bae

INSTRUCTION = "Answer exactly as the examples do: copy their labels and their style."
PROMPTS_LOG = "optimizer-prompts.log"
# Which optimizer must send which prompt to which LM: MIPROv2 proposes instructions with the LM
# it compiles, GEPA reflects with --reflection-lm. Optimizers not named here need not prompt.
MUST_PROMPT = {"mipro": "proposing proposed_instruction", "gepa": "reflecting new_instruction"}
_OUTPUT_FIELD = re.compile(r"^\d+\. `(\w+)`", re.MULTILINE)


class _OptimizerPrompts:
    """A DSPy engine that passes bae's predictor calls to a scripted engine and answers any other
    prompt (an optimizer's own) with ``INSTRUCTION`` in every output field the prompt asks for.
    Each such prompt adds a line ``<name> <fields>`` to ``PROMPTS_LOG`` in the working directory."""

    supports_response_schema = True

    def __init__(self, name: str, scripted: Any) -> None:
        self.name = name
        self.scripted = scripted

    def complete(self, request: Any) -> Response:
        if current_call() is not None:
            return self.scripted.complete(request)
        system = request.system if isinstance(request.system, str) else _text(request.system or ())
        system += "\n".join(_text(m.parts) for m in request.messages if m.role == "system")
        asked = _OUTPUT_FIELD.findall(system.partition("Your output fields are:")[2].partition("\n\n")[0])
        assert asked, f"an optimizer prompt without output fields: {system[:500]}"
        with Path(PROMPTS_LOG).open("a") as log:
            log.write(f"{self.name} {' '.join(asked)}\n")
        text = json.dumps(dict.fromkeys(asked, INSTRUCTION))
        return Response(
            id=None,
            model=f"bae/{self.name}",
            message=Message.assistant([TextPart(text)]),
            finish_reason="stop",
            usage=Usage(input_tokens=len(system.split()), output_tokens=len(text.split())),
        )

    def stream(self, request: Any) -> Any:
        return response_to_events(self.complete(request))

    def close(self) -> None:
        self.scripted.close()


def _text(parts: Any) -> str:
    return "".join(getattr(part, "text", None) or "" for part in parts)


def _answering_optimizers(name: str, scripted: ScriptedLM) -> ScriptedLM:
    return scripted.copy(engine=_OptimizerPrompts(name, scripted.engine))


def proposing() -> ScriptedLM:
    """``--lm``: ``lms.fewshot()``, also answering the prompts an optimizer sends the model it compiles with."""
    return _answering_optimizers("proposing", lms.fewshot())


def reflecting() -> ScriptedLM:
    """``--reflection-lm``: answers optimizer prompts only (no script: a bae predictor call to it fails)."""
    return _answering_optimizers("reflecting", ScriptedLM(model="bae/reflecting"))


@pytest.fixture(scope="module")
def trainset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every third trace of the example: about ten per queue, so every predictor keeps enough
    examples after the dev split to be optimized, and a third of the LM calls."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps({"trace": trace}) + "\n" for trace in lms.TRACES[::3]))
    return path


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_compiles_the_example(optimizer: str, trainset: Path, tmp_path: Path) -> None:
    out = tmp_path / "compiled"
    result = bae(
        "compile", EXAMPLE, "--trainset", str(trainset), "--out", str(out), "--optimizer", optimizer,
        "--lm", f"{__file__}:proposing", "--reflection-lm", f"{__file__}:reflecting",
        "--max-demos", "2", "--max-labeled-demos", "4", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    manifest = json.loads((Path(report["path"]) / "manifest.json").read_text())
    assert manifest["optimizer"]["name"] == optimizer
    assert {row["status"] for row in report["predictors"]} == {"optimized"}, report["predictors"]
    if optimizer in MUST_PROMPT:
        assert MUST_PROMPT[optimizer] in (tmp_path / PROMPTS_LOG).read_text().splitlines()
    inspected = bae("inspect", str(out), "--graph", EXAMPLE)
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr


def test_mipro_optimizes_a_predictor_with_one_example(tmp_path: Path) -> None:
    """MIPROv2 holds 80% of a predictor's examples out for scoring, which takes two: with one
    (allowed by --min-examples 1) it scores on that one instead of stopping the compile."""
    queue = {trace[-1]["node"]: trace for trace in reversed(lms.TRACES)}  # the first trace of each queue
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text("".join(json.dumps({"trace": t}) + "\n" for t in (*lms.TRACES[:2], queue["TechnicalIssue"])))
    dev.write_text("".join(json.dumps({"trace": t}) + "\n" for t in queue.values()))
    result = bae(
        "compile", EXAMPLE, "--trainset", str(train), "--devset", str(dev), "--out", str(tmp_path / "compiled"),
        "--optimizer", "mipro", "--min-examples", "1", "--lm", f"{__file__}:proposing", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {row["node"]: row for row in json.loads(result.stdout)["predictors"]}
    assert rows["TechnicalIssue"]["examples"] == 1 and rows["TechnicalIssue"]["status"] == "optimized"


def test_mipro_without_optuna_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    with pytest.raises(BaeInputError, match=re.escape("pip install 'bae[optimizers]'")):
        build_optimizer(OptimizeSettings(optimizer="mipro"))
