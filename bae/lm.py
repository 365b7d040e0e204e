"""The ``LM`` protocol: the two things a graph ever asks of a language model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    from bae.node import Node

T = TypeVar("T", bound="Node")


@runtime_checkable
class LM(Protocol):
    """What ``Graph.run`` and custom ``__call__`` bodies use to reach a model.

    ``make`` fills the generated fields of ``target`` from ``node``'s state;
    ``decide`` chooses ``node``'s successor (or the end) and makes it.
    """

    def make(self, node: Node, target: type[T]) -> T: ...

    def decide(self, node: Node) -> Node | None: ...
