"""``--engine`` and ``--workers``: which batch executor runs ``bae run --batch`` and ``bae eval``.

``threads`` (the default) runs a batch on threads in this process and needs nothing more. ``ray`` runs it
on worker processes through Ray (extra ``ray``): a new Ray on this machine, or the cluster ``RAY_ADDRESS``
names (read here, at the edge). Ray is imported only when it is chosen, so no other path pays for it, and
without the extra the choice is refused before anything else happens.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from bae.exceptions import BaeInputError

if TYPE_CHECKING:
    from bae.executor import Executor

ENGINES = ("threads", "ray")

EngineOption = Annotated[
    str,
    typer.Option(
        "--engine",
        help="threads: one process (default). ray: worker processes on this machine, or on the Ray cluster "
        "$RAY_ADDRESS names, the working directory shipped to them (pip install 'bae[ray]'; see README: Scale out).",
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        help="With --engine ray: worker processes, each running its share of the runs in flight "
        "(default: this machine's cores, or the cluster's CPUs).",
        show_default=False,
    ),
]


def check_engine(engine: str, workers: int | None) -> None:
    """Refuse an unknown engine, ``--workers`` without Ray, and Ray without its extra (exit 2), before any work."""
    from bae.ray_session import EXTRA, installed

    if engine not in ENGINES:
        raise BaeInputError(f"unknown --engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if workers is not None and engine != "ray":
        raise BaeInputError("--workers goes with --engine ray (on threads, --concurrency sets the runs in flight)")
    if engine == "ray" and not installed():
        raise BaeInputError(EXTRA)


def executor_for(engine: str, workers: int | None, concurrency: int) -> Executor:
    """The executor ``engine`` names, ``concurrency`` runs in flight in all."""
    from bae.executor import ThreadExecutor

    if engine == "threads":
        return ThreadExecutor(concurrency)
    from bae.ray_executor import RayExecutor
    from bae_cli.debug import debugging

    return RayExecutor(workers, concurrency, address=os.environ.get("RAY_ADDRESS") or None, quiet=not debugging())
