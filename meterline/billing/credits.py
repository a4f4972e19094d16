"""A canceled subscription's leftover credit: how much of it is money, and where that goes.

The rule, in one place. The last invoice of a canceled subscription has no next invoice,
so a credit its own charges do not use up (L, minor units) is settled on it:

    worth   = min(max(billed − cost, 0), L)
    applied = min(worth, due)        paid towards the subscription's open invoices, oldest first
    refund  = worth − applied        back to the wallet, as cash
    kept    = L − worth              not money: stays on record as the subscription's credit

- billed: the totals of the subscription's invoices that were not voided — what the
  customer paid (paid invoices) or still owes (open ones).
- cost: what the service really cost, summed from the lines rather than the totals: every
  `subscription` and `proration` line of those invoices and of the last one, except a
  credit for time in a period whose own invoice was voided. Voiding a period's invoice
  forgave that period whole; a credit for part of it has nothing under it. `balance` lines
  only move a credit from one invoice to the next, so they count for nothing (a credit
  carried from an earlier period is counted once, as the proration lines it came from).
- due: what the open invoices still ask for.

billed − cost is what the customer was charged beyond what the service cost, so `worth` is
the part of the credit that stands for money the customer paid or owes. Owed money is
settled first: the credit pays what is due (no money moves — a claim is reduced, so there
is no ledger transfer), and only the rest is cash. Since `due` is the unpaid part of
`billed`, a refund is at most what was paid minus what the service cost: no cash goes out
while anything is owed, nor for time that was never paid for. Everything is an integer
sum, so the split is exact and `applied + refund + kept == L`.

This is Stripe's "credit balance is applied to the amount due first" and Lago's "a credit
note offsets open invoices before it refunds", per subscription.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from meterline.billing.models import Invoice, InvoiceLine
from meterline.db.scoping import scoped

# Lines that say what something cost; `balance` lines only carry a credit between invoices.
COST_KINDS = ("subscription", "proration")


@dataclass(frozen=True, slots=True)
class Position:
    """What a subscription's invoices so far say about its leftover credit (see the module).
    Read by `position`; the last invoice's own lines are added by `settle`."""

    billed_minor: int
    cost_minor: int
    paid_minor: int
    forgiven: frozenset[int]  # the period ends of periods whose own invoice was voided
    open: tuple[tuple[Invoice, int], ...]  # invoices still owed and what each is due, oldest first


@dataclass(frozen=True, slots=True)
class Settlement:
    applied: tuple[tuple[Invoice, int], ...]  # (open invoice, part of the credit that pays it)
    refund_minor: int
    kept_minor: int


def counts(line: InvoiceLine, forgiven: frozenset[int]) -> bool:
    """Whether a line is part of what the service cost (see the module)."""
    return line.kind in COST_KINDS and not (line.amount_minor < 0 and line.period_end in forgiven)


def settle(credit_minor: int, pos: Position, last: Iterable[InvoiceLine]) -> Settlement:
    """Split the leftover credit of a last invoice whose lines are `last` (the rule above)."""
    cost = pos.cost_minor + sum(ln.amount_minor for ln in last if counts(ln, pos.forgiven))
    worth = min(max(pos.billed_minor - cost, 0), credit_minor)
    applied: list[tuple[Invoice, int]] = []
    left = worth
    for inv, due in pos.open:
        part = min(left, due)
        if part > 0:
            applied.append((inv, part))
            left -= part
    # `left` is at most what was paid minus what the service cost; the cap on what came in
    # never binds by that rule, and is here so that no reading of it can pay out more.
    refund = min(left, pos.paid_minor)
    return Settlement(tuple(applied), refund, credit_minor - (worth - left) - refund)


def position(session: Session, tenant_id: str, subscription_id: str, *, lock: bool) -> Position:
    """The subscription's invoices so far, for `settle`. With `lock` (the close, which holds the
    subscription's lock) every one of them is locked and read afresh: a `pay`, `void` or
    collection of an open invoice racing the close waits for it, or is seen — never both a
    payment and the credit counted against one amount due."""
    session.flush()
    stmt = scoped(select(Invoice), Invoice, tenant_id).where(Invoice.subscription_id == subscription_id)
    if lock:
        stmt = stmt.with_for_update()
    invoices = list(session.scalars(stmt.order_by(Invoice.id).execution_options(populate_existing=True)))
    live = [i for i in invoices if i.status != "void"]
    forgiven = frozenset(i.period_end for i in invoices if i.status == "void" and i.period_start < i.period_end)
    cost = scoped(select(func.coalesce(func.sum(InvoiceLine.amount_minor), 0)), InvoiceLine, tenant_id).join(
        Invoice, and_(Invoice.tenant_id == InvoiceLine.tenant_id, Invoice.id == InvoiceLine.invoice_id)).where(
        InvoiceLine.subscription_id == subscription_id, Invoice.status != "void",
        InvoiceLine.kind.in_(COST_KINDS))
    if forgiven:
        cost = cost.where(or_(InvoiceLine.amount_minor >= 0, InvoiceLine.period_end.not_in(forgiven)))
    owed = sorted((i for i in live if i.status in ("draft", "open") and i.total_minor > i.amount_paid_minor),
                  key=lambda i: (i.period_start, i.id))
    return Position(
        billed_minor=sum(i.total_minor for i in live),
        cost_minor=int(session.scalar(cost) or 0),
        paid_minor=sum(i.amount_paid_minor for i in live if i.status == "paid"),
        forgiven=forgiven,
        open=tuple((i, i.total_minor - i.amount_paid_minor) for i in owed),
    )
