"""The batch executor on Ray (``--engine ray``): the same ``map`` as ``ThreadExecutor``, over worker processes.

The items become a Ray Data dataset; ``map_batches`` runs them through a pool of stateful workers (Ray
actors, ``ActorPoolStrategy``), each of which opens the ``Work`` once (it is a ``Recipe``: the version is
verified and the LM built in each worker) and runs its share of a batch on a few threads, as one process
does. Results stream back in input order and ``done`` runs in this, the driving, process: it alone writes
outputs and the run log. Ray Data is the established engine for batch LM inference across machines (vLLM's
documented route to multi-node batch inference); bae hands it the batch rather than scheduling its own.

The same semantics as threads:

- **Errors are data.** An item's exception comes back pickled and is raised here; the batch's own rules
  (a failed run is a result, an unavailable LM stops an evaluation) are the ``Work``'s, unchanged.
- **A worker that cannot open the work** (the graph does not load there, another bae version) answers every
  item with that error, and every other worker checks for it before running anything: no input runs, and
  the error is raised here as the worker raised it (one line, its exit code).
- **Exactly once.** A worker process that dies (killed, out of memory) is restarted by Ray and its batch
  retried (at most ``RETRIES`` times: an input that kills its worker every time fails the batch instead of
  looping forever); a retried batch's results replace the lost ones, and an index seen twice is dropped.
  A batch killed half-way is re-run whole: the runs that had finished in it made their LM calls twice.
- **Ctrl-C.** For a caller that keeps partial results (``stopping`` given: a batch), the first starts no
  new item: a small control actor tells the workers, which answer their unstarted items as not run and
  finish the ones under way; their results are kept. The second abandons what still runs, and so does the
  first for a caller without ``stopping`` (an evaluation). Either way the Ray job ends with the session
  (``bae.ray_session``).
"""

from __future__ import annotations

import functools
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from bae.exceptions import BaeError, BaeInputError
from bae.executor import Recipe, Results, Work
from bae.ray_session import RaySession

T = TypeVar("T")
R = TypeVar("R")

RETRIES = 3  # re-runs of a batch whose worker died, before the batch fails
MAX_BATCH = 128  # inputs per Ray Data batch at most: ~8 ms of Ray's CPU per batch is spread thin enough
POLL_S = 0.2  # how often a worker asks whether to stop
DONE, RAISED, NOT_RUN = "done", "raised", "not_run"


class RayExecutor:
    """``workers`` worker processes (default: this machine's cores, or the cluster's CPUs), ``concurrency``
    items in flight across them (``ceil(concurrency / workers)`` threads each). ``address`` joins a cluster
    (``RAY_ADDRESS``); without it a local Ray is started on first use. ``quiet`` keeps Ray's own output off
    the terminal."""

    def __init__(
        self,
        workers: int | None = None,
        concurrency: int = 8,
        *,
        address: str | None = None,
        quiet: bool = True,
        batch_size: int | None = None,
    ) -> None:
        self.requested = workers
        self.workers = workers or os.cpu_count() or 1
        self.concurrency = max(1, concurrency)
        self.batch_size = batch_size
        self.session = RaySession(address, None if address else self.workers, quiet)
        self.started = False
        self.starting = "joining the Ray cluster" if address else "starting Ray"

    def start(self) -> None:
        """Start or join Ray now (it also happens at the first ``map``): it takes seconds."""
        if self.started:
            return
        self.session.open()
        self.started = True
        if self.session.cluster:
            self.workers = self.requested or max(1, self.session.cpus)
        elif self.workers > self.session.cpus:
            self.close()
            raise BaeInputError(f"--workers {self.workers}: this machine's Ray has {self.session.cpus} CPUs")

    def close(self) -> None:
        if self.started:
            self.session.close()
            self.started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def shape(self, items: int) -> tuple[int, int, int]:
        """(workers, threads per worker, batch size) for ``items`` items: every worker gets work, each batch
        keeps a worker's threads busy, and batches stay small enough that results stream back steadily."""
        workers = max(1, min(self.workers, items))
        threads = math.ceil(self.concurrency / workers)
        per_worker = math.ceil(items / (2 * workers))  # two batches a worker at least: one runs, one waits
        size = self.batch_size or min(MAX_BATCH, per_worker)
        return workers, threads, max(threads, math.ceil(size / threads) * threads)

    def map(
        self,
        work: Work[T, R],
        items: Sequence[T],
        done: Callable[[int, R], None] | None = None,
        stopping: Callable[[int], None] | None = None,
    ) -> Results[R]:
        results: Results[R] = Results([None] * len(items))
        if not items:
            return results
        if not isinstance(work, Recipe):
            raise TypeError(f"{type(work).__name__} cannot run in other processes: it is not a bae.executor.Recipe")
        self._check_shipped(work)
        import ray
        import ray.data
        from ray import cloudpickle

        blob = cloudpickle.dumps(work)  # a recipe that cannot travel says why here (BaeInputError)
        self.start()
        workers, threads, batch_size = self.shape(len(items))
        control = _control_class().remote()
        context = ray.data.DataContext.get_current()  # set before the dataset is made: it keeps a copy
        context.execution_options.preserve_order = True  # results in input order, as they stream
        context.wait_for_min_actors_s = 600  # every worker opened the work before the first batch runs
        rows = [{"index": index, "item": cloudpickle.dumps(item)} for index, item in enumerate(items)]
        dataset = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / batch_size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_task_retries goes through **ray_remote_args, deprecated in 2.60
            mapped = dataset.map_batches(
                Worker,
                fn_constructor_args=(blob, threads, control),
                batch_size=batch_size,
                compute=ray.data.ActorPoolStrategy(
                    size=workers, max_concurrent_calls_per_actor=2, enable_true_multi_threading=True
                ),
                num_cpus=1,
                max_task_retries=RETRIES,
            )
        delivered = 0
        interrupts: list[float] = []

        def stop(in_flight: int) -> None:
            if stopping is not None:
                stopping(in_flight)
            ray.get(control.stop.remote())

        def on_sigint(signum: int, frame: Any) -> None:
            interrupts.append(time.monotonic())
            if len(interrupts) > 1 or stopping is None:  # no caller for partial results: abandon at once
                raise KeyboardInterrupt
            in_flight = min(workers * threads, len(items) - delivered)
            threading.Thread(target=stop, args=(in_flight,), daemon=True).start()  # never call Ray in a handler

        rows_in = iter(mapped.iter_rows())
        previous = _handle_sigint(on_sigint)
        try:
            for row in rows_in:
                if delivered == 0:
                    _raise_open_failure(control)
                index, kind, value = int(row["index"]), row["kind"], row["value"]
                if kind == NOT_RUN or results.values[index] is not None:
                    continue  # stopped before it ran; or delivered already (a retried batch)
                if kind == RAISED:
                    raise cloudpickle.loads(value)
                results.values[index] = result = cloudpickle.loads(value)
                delivered += 1
                if done is not None:
                    done(index, result)
        except KeyboardInterrupt:
            results.abandoned = True
        except ray.exceptions.RayError as exc:
            raise BaeError(f"the Ray job failed: {_short(exc)}") from exc
        finally:
            _handle_sigint(previous)
            results.interrupted = bool(interrupts) or results.abandoned
            _end(rows_in, control)
        return results

    def _check_shipped(self, work: Recipe) -> None:
        """On a cluster the working directory is what the workers get: the files a recipe names must be in it."""
        if self.session.cluster:
            outside = [f"{flag} {path}" for flag, path in work.files() if os.path.isabs(path)]
            if outside:
                raise BaeInputError(
                    f"with RAY_ADDRESS the current directory is shipped to the Ray workers, and {', '.join(outside)}"
                    " is outside it: run from the directory that holds them"
                )


class Worker:
    """One Ray Data worker (an actor): opens the work once, runs each batch's items on its threads."""

    def __init__(self, blob: bytes, threads: int, control: Any) -> None:
        import ray
        from ray import cloudpickle

        self.control, self.stopped, self.failure, self.checked = control, threading.Event(), None, False
        self.function: Callable[[Any], Any] | None = None
        try:
            self.function = cloudpickle.loads(blob).open()
        except Exception as exc:
            self.failure = _dumps_exception(exc)
            ray.get(control.fail.remote(self.failure))  # before this worker counts as started
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="bae-ray")
        threading.Thread(target=self._watch, name="bae-ray-stop", daemon=True).start()

    def _watch(self) -> None:
        import ray

        while not self.stopped.is_set():
            if ray.get(self.control.stopped.remote()):
                self.stopped.set()
            time.sleep(POLL_S)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        if not self.checked:  # another worker may have failed to open: run nothing then
            import ray

            self.checked = True
            if ray.get(self.control.stopped.remote()):
                self.stopped.set()
        indices = [int(index) for index in batch["index"]]
        answers = list(self.pool.map(self._one, batch["item"]))
        return {"index": indices, "kind": [kind for kind, _ in answers], "value": [value for _, value in answers]}

    def _one(self, item: bytes) -> tuple[str, bytes]:
        from ray import cloudpickle

        if self.failure is not None:
            return RAISED, self.failure
        if self.stopped.is_set() or self.function is None:
            return NOT_RUN, b""
        try:
            return DONE, cloudpickle.dumps(self.function(cloudpickle.loads(item)))
        except Exception as exc:
            return RAISED, _dumps_exception(exc)


@functools.cache
def _control_class() -> Any:
    """The control actor's class, made on first use so that importing this module does not import Ray."""
    import ray

    @ray.remote(num_cpus=0)
    class Control:
        """Shared by a batch's workers: whether to stop (Ctrl-C, or a worker could not open the work), and why."""

        def __init__(self) -> None:
            self.is_stopped = False
            self.failure: bytes | None = None

        def stop(self) -> None:
            self.is_stopped = True

        def fail(self, failure: bytes) -> None:
            self.is_stopped = True
            self.failure = self.failure or failure

        def stopped(self) -> bool:
            return self.is_stopped

        def failed(self) -> bytes | None:
            return self.failure

    return Control


def _raise_open_failure(control: Any) -> None:
    """Before the first result is taken: if a worker could not open the work, raise its error here."""
    import ray
    from ray import cloudpickle

    failure = ray.get(control.failed.remote())
    if failure is not None:
        raise cloudpickle.loads(failure)


def _dumps_exception(exc: Exception) -> bytes:
    """An exception to send back; one that does not pickle is sent as a ``BaeError`` with its text."""
    from ray import cloudpickle

    if isinstance(exc, BaeError):
        exc.message = f"on a Ray worker: {exc.message}"
    try:
        blob: bytes = cloudpickle.dumps(exc)
        cloudpickle.loads(blob)
        return blob
    except Exception:
        return bytes(cloudpickle.dumps(BaeError(f"on a Ray worker: unexpected {type(exc).__name__}: {exc}")))


def _handle_sigint(handler: Any) -> Any:
    """Install ``handler`` for SIGINT where Python allows it (the main thread); the one it replaced."""
    if threading.current_thread() is not threading.main_thread() or handler is None:
        return None
    return signal.signal(signal.SIGINT, handler)


def _end(rows: Any, control: Any) -> None:
    """Stop the workers and the dataset's execution (a finished one stops at once)."""
    import ray

    try:
        control.stop.remote()
        close = getattr(rows, "close", None)
        if close is not None:
            close()
        ray.kill(control)
    except Exception:  # the session's shutdown ends whatever is left
        return


def _short(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
