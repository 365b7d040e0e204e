"""Every LM bae builds is bounded: ``max_tokens`` and a per-request timeout, and a call cut by either
is marked in the run log (``cut``: ``length`` or ``timeout``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bae.exceptions import BaeInputError
from bae.lm_specs import DEFAULT_LM_TIMEOUT_S, DEFAULT_MAX_TOKENS, LMSettings, resolve_lm
from bae.runlog import RunLog
from tests.cli import EXAMPLE, Completed, Ran, bae
from tests.fake_openai import Say, Stall, fake_openai
from tests.test_compile import TRAIN
from tests.test_faults import TICKET, triage_answer
from tests.workspace import assert_refused


def test_a_model_string_gets_bounded_tokens_and_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded by default, by the settings given, and by nothing else: the library reads no variable."""
    lm = resolve_lm("openai/some-model")
    assert (lm.kwargs["max_tokens"], lm.kwargs["timeout"]) == (DEFAULT_MAX_TOKENS, DEFAULT_LM_TIMEOUT_S)
    lm = resolve_lm("openai/some-model", LMSettings(max_tokens=64, timeout_s=2.5))
    assert (lm.kwargs["max_tokens"], lm.kwargs["timeout"]) == (64, 2.5)
    monkeypatch.setenv("BAE_MAX_TOKENS", "7")
    monkeypatch.setenv("BAE_LM_TIMEOUT", "9")
    lm = resolve_lm("openai/some-model", LMSettings(max_tokens=64, timeout_s=2.5))
    assert (lm.kwargs["max_tokens"], lm.kwargs["timeout"]) == (64, 2.5)
    for bad in ({"max_tokens": 0}, {"timeout_s": 0.0}, {"timeout_s": float("inf")}, {"response_format": "bogus"}):
        with pytest.raises(BaeInputError):
            LMSettings(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [("BAE_MAX_TOKENS", "many", "'many' is not a valid"), ("BAE_LM_TIMEOUT", "0", "0.0 is not in the range")],
)
def test_the_cli_reads_the_limits_variables_and_names_a_bad_one(variable: str, value: str, says: str) -> None:
    result = bae("run", EXAMPLE, "--lm", "openai/fake-model", "--input", json.dumps(TICKET), "--no-log",
                 env={variable: value})  # fmt: skip
    assert_refused(result, 2, f"(env var: '{variable}')", says)


def test_cli_marks_calls_cut_by_the_timeout_or_max_tokens(tmp_path: Path) -> None:
    """Triage's first request stalls past --lm-timeout (retried); BillingIssue's first answer stops at
    max_tokens (finish_reason length: cut JSON, self-corrected). The run succeeds; the log says both."""
    db = tmp_path / "runs.db"
    filled = triage_answer({"messages": ""})
    with fake_openai(triage_answer, [Stall(3.0), Say(triage_answer({"messages": "next_step"})),
                                     Say(filled[:12], finish_reason="length")]) as fake:  # fmt: skip
        env = {"OPENAI_API_BASE": fake.url, "OPENAI_API_KEY": "none"}
        result = bae("run", EXAMPLE, "--lm", "openai/fake-model", "--input", json.dumps(TICKET), "--max-tokens",
                     "64", "--lm-timeout", "1", "--log-db", str(db), "--json", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert {body["max_tokens"] for body in fake.bodies} == {64}
    assert "truncated" not in result.stderr  # DSPy's multi-line warning is replaced by the run-log mark
    (run,) = RunLog(db).runs()
    assert [(c.node, c.attempts, c.cut, c.error) for c in run.calls] == [
        ("Triage", 2, "timeout", None),
        ("BillingIssue", 2, "length", None),
    ]


@pytest.mark.parametrize("command", ["eval", "compile"])
def test_eval_and_compile_bound_every_call_too(command: str, tmp_path: Path) -> None:
    """--max-tokens reaches every request of eval and compile, as it does run's (above)."""
    billing = TRAIN.read_text().splitlines()[:4]  # the training file starts with billing tickets
    dev = tmp_path / "dev.jsonl"
    dev.write_text(billing[0] + "\n")
    if command == "eval":
        args: tuple[str, ...] = ("eval", EXAMPLE, "--dataset", str(dev), "--no-log")
    else:
        train = tmp_path / "train.jsonl"
        train.write_text("\n".join(billing[1:]) + "\n")
        args = ("compile", EXAMPLE, "--trainset", str(train), "--devset", str(dev), "--out", str(tmp_path / "out"))
    with fake_openai(triage_answer) as fake:
        env = {"OPENAI_API_BASE": fake.url, "OPENAI_API_KEY": "none"}
        result = bae(*args, "--lm", "openai/fake-model", "--max-tokens", "64", env=env)
    assert result.returncode == 0, result.stderr
    assert fake.bodies and {body["max_tokens"] for body in fake.bodies} == {64}


def test_the_cli_reads_bae_max_tokens_for_every_request() -> None:
    with fake_openai(triage_answer) as fake:
        env = {"OPENAI_API_BASE": fake.url, "OPENAI_API_KEY": "none", "BAE_MAX_TOKENS": "48"}
        result = bae("run", EXAMPLE, "--lm", "openai/fake-model", "--input", json.dumps(TICKET), "--no-log", env=env)
    assert result.returncode == 0, result.stderr
    assert len(fake.bodies) == 2 and {body["max_tokens"] for body in fake.bodies} == {48}


@pytest.mark.parametrize(
    ("forced", "given"),
    [("json_object_schema", "env"), ("json_schema", "flag"), ("bogus", "env"), ("bogus", "flag")],
)
def test_response_format_can_be_forced_for_a_server_litellm_does_not_know(forced: str, given: str) -> None:
    """``openai/<alias>``: LiteLLM knows nothing of the model, so DSPy sends no response_format unless
    ``--response-format`` (or ``BAE_RESPONSE_FORMAT``) says which form the server takes (llama-cpp-python's,
    or OpenAI's)."""
    flags = ("--response-format", forced) if given == "flag" else ()
    with fake_openai(triage_answer) as fake:
        env = {"OPENAI_API_BASE": fake.url, "OPENAI_API_KEY": "none", "BAE_RESPONSE_FORMAT": forced * (given == "env")}
        result = bae("run", EXAMPLE, "--lm", "openai/fake-model", "--input", json.dumps(TICKET), "--no-log", *flags,
                     env=env)  # fmt: skip
    if forced == "bogus":
        assert_refused(result, 2, "--response-format", "'bogus'", "json_schema, json_object_schema")
        assert fake.bodies == []
        return
    assert result.returncode == 0, result.stderr
    sent = fake.bodies[0]["response_format"]
    schema = sent["schema"] if forced == "json_object_schema" else sent["json_schema"]["schema"]
    assert sent["type"] == ("json_object" if forced == "json_object_schema" else "json_schema")
    assert schema["required"] == ["next_step"] and "BillingIssue" in json.dumps(schema)


def test_a_bad_response_format_names_where_it_came_from() -> None:
    """As a bad ``$BAE_MAX_TOKENS`` does (``(env var: 'BAE_MAX_TOKENS')``), and as this error did before the
    variable moved to the CLI (``BAE_RESPONSE_FORMAT='bogus'``)."""
    result = bae("run", EXAMPLE, "--lm", "openai/fake-model", "--input", json.dumps(TICKET), "--no-log",
                 env={"BAE_RESPONSE_FORMAT": "bogus"})  # fmt: skip
    line = assert_refused(result, 2, "'bogus'")
    assert "BAE_RESPONSE_FORMAT" in line or "--response-format" in line


def failure(result: Ran, code: int, *fragments: str) -> str:
    """The run's one error line (after the line saying it runs naive), with ``fragments`` in it."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code and lines[0].startswith("no --compiled"), result.stderr
    return assert_refused(Completed([], code, "", "\n".join(lines[1:])), code, *fragments)


RUNAWAY = "[" * 600  # a small model with no schema to follow, looping inside brackets until max_tokens
HINT = "pass --response-format json_object_schema (llama-cpp-python's server) or json_schema (vLLM"


@pytest.mark.parametrize("forced", ["", "json_schema"])
def test_an_answer_nested_past_the_parser_fails_at_once_saying_what_to_do(forced: str) -> None:
    """A llama.cpp server and no ``BAE_RESPONSE_FORMAT``: DSPy's parser gives up on the answer with "Input
    nesting exceeds the supported parser recursion depth". One request, exit 4, and the flag to pass
    (only when no schema was sent: with one forced the hint would be wrong)."""
    with fake_openai(lambda body: RUNAWAY) as fake:
        env = {"OPENAI_API_BASE": fake.url, "OPENAI_API_KEY": "none", "BAE_RESPONSE_FORMAT": forced}
        result = bae("run", EXAMPLE, "--lm", "openai/fake-model", "--input", json.dumps(TICKET), "--no-log",
                     "--json", env=env)  # fmt: skip
    line = failure(result, 4, "Triage (choice): the LM's answer is nested too deep to parse",
                   "Input nesting exceeds the supported parser recursion depth")  # fmt: skip
    assert (HINT in line) == (not forced), line
    assert len(fake.bodies) == 1  # not retried, not self-corrected: it would loop the same way again
    printed = json.loads(result.stdout)  # --json: the failed run's object
    assert list(printed) == ["error", "usage", "version", "duration_s"] and printed["error"] in line
    assert printed["usage"][0]["errors"] == 1 and printed["version"] is None


def test_free_text_answers_to_an_unknown_model_say_what_to_do() -> None:
    """The other way the same setup fails: answers that are not JSON at all, self-corrected twice, then exit 1
    with the flag to pass."""
    with fake_openai(lambda body: "The ticket is about billing.") as fake:
        env = {"OPENAI_API_BASE": fake.url, "OPENAI_API_KEY": "none", "BAE_RESPONSE_FORMAT": ""}
        result = bae("run", EXAMPLE, "--lm", "openai/fake-model", "--input", json.dumps(TICKET), "--no-log", env=env)
    failure(result, 1, "Triage (choice): the LM's answer did not parse after 3 attempts", HINT)
    assert len(fake.bodies) == 3 and fake.bodies[0]["response_format"] == {"type": "json_object"}  # no schema
