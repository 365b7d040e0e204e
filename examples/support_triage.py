"""Support-ticket triage: the example graph bae ships with.

A ticket arrives with the customer's email and message. Custom logic looks the
customer up in the CRM (an injected ``Dep`` service) to learn their plan, the LM
decides which queue owns the ticket, and the queue node extracts the few typed
fields that team needs. Class names and docstrings are the prompts.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from bae import LM, Context, Dep, Graph, Node

Plan = Literal["free", "pro", "enterprise"]
Priority = Literal["low", "medium", "high"]


class CustomerDirectory:
    """A stand-in CRM: maps a customer's email to their subscription plan."""

    def __init__(self, plans: dict[str, str] | None = None) -> None:
        self.plans = plans if plans is not None else dict(KNOWN_CUSTOMERS)

    def plan_for(self, email: str) -> str:
        return self.plans.get(email.strip().lower(), "free")


KNOWN_CUSTOMERS: dict[str, str] = {
    "ana@northwind.io": "enterprise",
    "ben.ortiz@gmail.com": "free",
    "chen.wei@contoso.com": "pro",
    "dana@fabrikam.org": "enterprise",
    "eli.m@outlook.com": "free",
    "farah@tailspin.dev": "pro",
    "gus@wingtip.co": "enterprise",
    "hana.k@yahoo.com": "free",
    "ivan@adventure-works.com": "pro",
    "jo.park@proton.me": "free",
    "kim@litware.net": "enterprise",
    "luis.r@gmail.com": "pro",
}


class Ticket(Node):
    """A support ticket as it arrives in the inbox."""

    customer_email: str
    text: str

    def __call__(self, lm: LM, crm: Annotated[CustomerDirectory, Dep()]) -> Triage:
        return Triage(text=self.text, plan=crm.plan_for(self.customer_email))


class Triage(Node):
    """Route the ticket to the support queue whose team can resolve it."""

    text: Annotated[str, Context("the customer's message")]
    plan: Annotated[Plan, Context("the customer's subscription plan")]

    def __call__(self, lm: LM) -> BillingIssue | TechnicalIssue | AccountIssue: ...


class BillingIssue(Node):
    """A problem with charges, invoices, payment methods or refunds."""

    text: Annotated[str, Context("the customer's message")]
    plan: Annotated[Plan, Context("the customer's subscription plan")]
    priority: Priority = Field(description="how fast the billing team must answer")
    refund_requested: bool = Field(description="whether the customer asks for money back")


class TechnicalIssue(Node):
    """A product defect: something crashes, errors, is slow or does not work."""

    text: Annotated[str, Context("the customer's message")]
    plan: Annotated[Plan, Context("the customer's subscription plan")]
    priority: Priority = Field(description="how fast engineering support must answer")
    product_area: Literal["mobile app", "web app", "api", "integrations"] = Field(
        description="the part of the product that misbehaves"
    )


class AccountIssue(Node):
    """A request about signing in or managing the customer's account."""

    text: Annotated[str, Context("the customer's message")]
    plan: Annotated[Plan, Context("the customer's subscription plan")]
    priority: Priority = Field(description="how fast the accounts team must answer")
    action: Literal["reset password", "two-factor help", "change email", "close account"] = Field(
        description="what the customer needs done to their account"
    )


graph = Graph(start=Ticket)


def deps() -> list[object]:
    """Services injected into ``Dep`` parameters when bae runs this graph."""
    return [CustomerDirectory()]
