"""A seeds-style graph for the core tests: a make step, a three-way decision, custom logic
with ``Dep`` services and a ``Bind`` export, and terminal nodes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from bae import LM, Bind, Context, Dep, Node


class Account:
    def __init__(self, email: str, tier: str) -> None:
        self.email = email
        self.tier = tier


class Directory:
    """Looks up customer accounts (a Dep service)."""

    def lookup(self, email: str) -> Account:
        return Account(email, "gold" if email.endswith("@vip.com") else "basic")


class Outbox:
    """Records sent messages (a Dep service)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, to: str, body: str) -> int:
        self.sent.append((to, body))
        return len(self.sent)


class Request(Node):
    """A customer request as it arrives."""

    email: str
    question: str

    def __call__(self, lm: LM) -> Classify: ...


class Classify(Node):
    """Classify the request so the right desk answers it."""

    question: Annotated[str, Context("the customer's question")]
    topic: Literal["math", "history", "other"] = Field(description="what the question is about")

    def __call__(self, lm: LM) -> MathAnswer | HistoryAnswer | Escalate: ...


class MathAnswer(Node):
    """Answer an arithmetic question with a number."""

    question: Annotated[str, Context("the customer's question")]
    answer: int


class HistoryAnswer(Node):
    """Answer a history question in one sentence."""

    question: Annotated[str, Context("the customer's question")]
    answer: str

    def __call__(self, lm: LM) -> Escalate | None:
        """Escalate when unsure, else end."""
        ...


class Escalate(Node):
    """Hand the request to a human agent."""

    question: Annotated[str, Context("the customer's question")]
    reason: str

    def __call__(
        self,
        lm: LM,
        directory: Annotated[Directory, Dep()],
        outbox: Annotated[Outbox, Dep()],
    ) -> Filed:
        email = next(n.email for n in _trace_of(self) if isinstance(n, Request))
        account = directory.lookup(email)
        ticket = outbox.send(email, self.reason)
        return Filed(ticket=ticket, account=account)


class Filed(Node):
    """A ticket filed for a human."""

    ticket: int
    account: Annotated[Account, Bind()]

    def __call__(self, lm: LM, account: Annotated[Account, Dep()]) -> Done:
        return Done(summary=f"ticket {self.ticket} for {account.tier} customer")


class Done(Node):
    """The request is handled."""

    summary: str


def _trace_of(node: Node) -> list[Node]:
    from bae.run import active_run

    run = active_run()
    return run.trace if run else [node]
