"""Many independent items at once (a batch's inputs, an evaluation's traces), and stopping well.

Every batch in bae goes through an ``Executor``, so they all behave alike: results come back to the
caller's thread as they finish (a progress display and writers follow along) and are returned in
input order; an item that raises stops the batch (callers that want a batch to carry on past a
failed input turn the failure into a result inside the item). The first Ctrl-C starts nothing new; a
caller that keeps partial results (a batch writing each run) passes ``stopping`` and the items under way
finish, their results kept, until a second Ctrl-C abandons them; a caller that cannot use a partial
batch (compile's dev score) passes none and the items under way are abandoned at once, so a hung
model never makes Ctrl-C wait.

Two engines implement it (``--engine``): ``ThreadExecutor`` here, and ``bae.ray_executor.RayExecutor``,
which spreads the items over worker processes on one machine or a Ray cluster. The work is handed over
as a ``Work`` that each worker *opens* once, building what every item needs (a loaded version, an LM).
A thread pool opens it once and shares it between its threads; worker processes open it each, so work
that leaves the process is a ``Recipe``: picklable names, paths and settings, never live objects (a
recipe may carry this process's opened objects along for a thread pool to reuse; they are not pickled).
Its items and results must pickle too, and ``done`` always runs in the caller's process: whatever is
written (outputs, the run log) is written by one process, whichever engine ran the items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")
T_contra = TypeVar("T_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


class Work(Protocol[T_contra, R_co]):
    """What a batch does to each item: ``open()`` (once per worker) gives the function applied to items."""

    def open(self) -> Callable[[T_contra], R_co]: ...


class Recipe:
    """Marks a ``Work`` that can leave the process: it pickles to names, paths and settings, and its ``open``
    builds everything else in the worker process (``bae.runner.BatchWork``, ``bae.evaluator.TraceWork``)."""

    def files(self) -> list[tuple[str, str]]:
        """The files it names (each with the flag that named it), relative to the working directory when inside
        it: an engine that ships that directory to other machines checks the others are not needed."""
        return []


@dataclass(frozen=True)
class Call(Generic[T, R]):
    """A ``Work`` that is already open: a plain function, for work that never leaves this process."""

    function: Callable[[T], R]

    def open(self) -> Callable[[T], R]:
        return self.function


@dataclass
class Results(Generic[R]):
    """A batch's results by input position (None where an item never finished); whether Ctrl-C stopped it,
    and whether a second Ctrl-C abandoned items under way."""

    values: list[R | None] = field(default_factory=list)
    interrupted: bool = False
    abandoned: bool = False

    @property
    def finished(self) -> list[R]:
        return [value for value in self.values if value is not None]


class Executor(Protocol):
    """Runs ``work`` over ``items``; ``done(index, result)`` is called in the caller's thread as each finishes,
    ``stopping(in_flight)`` on the first Ctrl-C (without it, Ctrl-C abandons the items under way at once).
    Raises what an item raised (or ``done`` raised), after cancelling the rest. ``start`` readies the engine
    (``starting`` says what that is, None: nothing to wait for; ``map`` starts it too), ``close`` ends what it
    started (worker processes)."""

    workers: int
    starting: str | None

    def start(self) -> None: ...

    def close(self) -> None: ...

    def map(
        self,
        work: Work[T, R],
        items: Sequence[T],
        done: Callable[[int, R], None] | None = None,
        stopping: Callable[[int], None] | None = None,
    ) -> Results[R]: ...


class ThreadExecutor:
    """The default engine: ``workers`` threads in this process sharing one opened ``Work``.

    LM calls are blocking I/O that release the GIL, so threads keep an LM busy until bae's own CPU
    (about a few ms a run, mostly DSPy) saturates one core (``bench/batch.py``).
    """

    starting: str | None = None

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)

    def start(self) -> None:
        """Nothing to start: the threads come with each ``map``."""

    def close(self) -> None:
        """Nothing outlives ``map`` here."""

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
        function = work.open()
        pool = ThreadPoolExecutor(max_workers=min(self.workers, len(items)), thread_name_prefix="bae-batch")
        futures: dict[Future[R], int] = {}
        try:
            futures = {pool.submit(function, item): index for index, item in enumerate(items)}
            for future in as_completed(futures):
                self._keep(results, futures[future], future.result(), done)
        except KeyboardInterrupt:
            results.interrupted = True
            if stopping is None:
                pool.shutdown(wait=False, cancel_futures=True)
                results.abandoned = True
            else:
                results.abandoned = not self._finish_in_flight(pool, futures, stopping)
            for future, index in futures.items():  # what finished, also while waiting
                finished = future.done() and not future.cancelled() and future.exception() is None
                if results.values[index] is None and finished:
                    self._keep(results, index, future.result(), done)
            return results
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # an item failed: the rest is not wanted
            raise
        pool.shutdown()
        return results

    @staticmethod
    def _keep(results: Results[R], index: int, value: R, done: Callable[[int, R], None] | None) -> None:
        results.values[index] = value
        if done is not None:
            done(index, value)

    @staticmethod
    def _finish_in_flight(
        pool: ThreadPoolExecutor, futures: dict[Future[R], int], stopping: Callable[[int], None]
    ) -> bool:
        """Start nothing new and wait for the items under way (True once they finished); a second Ctrl-C stops
        waiting (False: their threads are left behind, and the process exits without them: ``bae_cli.app``)."""
        stopping(sum(1 for future in futures if future.running()))
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            return False
        return True


class InOrder(Generic[R]):
    """Hands results on in input order, each as soon as every one before it was handed on, consecutive ones
    together (``take`` gets a list: one run-log transaction for them). Fed in completion order (threads)
    or in input order (Ray), it hands on the same sequence, so both engines write the same log."""

    def __init__(self, take: Callable[[list[R]], None]) -> None:
        self.take = take
        self.next = 0
        self.waiting: dict[int, R] = {}

    def add(self, index: int, value: R) -> None:
        self.waiting[index] = value
        ready = []
        while self.next in self.waiting:
            ready.append(self.waiting.pop(self.next))
            self.next += 1
        if ready:
            self.take(ready)

    def finish(self) -> None:
        """What is still waiting behind an item that never finished (Ctrl-C, a failure), in input order."""
        if self.waiting:
            ready = [self.waiting[index] for index in sorted(self.waiting)]
            self.waiting.clear()
            self.take(ready)
