"""An invoice as a printable HTML page: one self-contained document, no scripts, no assets.

Every value that came from a user (names, ids, descriptions) goes through
`html.escape` before it reaches the template, so a description such as
``<script>`` prints as text. Print styles (A4 margins, no screen chrome) make the
browser's own "Print to PDF" the PDF export.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from string import Template

from meterline.billing.invoices import InvoiceDocument
from meterline.billing.models import InvoiceLine
from meterline.money import format_amount

NS = 1_000_000_000

_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
  @page { size: A4; margin: 18mm 16mm; }
  * { box-sizing: border-box; }
  body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d2330;
         max-width: 820px; margin: 32px auto; padding: 0 24px; }
  header { display: flex; justify-content: space-between; align-items: flex-start; }
  h1 { font-size: 28px; margin: 0 0 4px; letter-spacing: .02em; }
  .muted { color: #667085; }
  .status { display: inline-block; padding: 2px 10px; border: 2px solid; border-radius: 4px;
            font-weight: 700; text-transform: uppercase; letter-spacing: .08em; }
  .status-paid { color: #067647; } .status-open { color: #b54708; }
  .status-void, .status-draft { color: #667085; }
  .parties { display: flex; gap: 48px; margin: 28px 0; }
  .parties h2 { font-size: 11px; text-transform: uppercase; letter-spacing: .08em; margin: 0 0 4px; color: #667085; }
  table { width: 100%; border-collapse: collapse; }
  th { text-align: left; font-size: 11px; text-transform: uppercase; letter-spacing: .06em; color: #667085;
       border-bottom: 2px solid #1d2330; padding: 6px 8px; }
  td { border-bottom: 1px solid #e4e7ec; padding: 8px; vertical-align: top; }
  .num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
  .period { font-size: 12px; color: #667085; }
  tfoot td { border: 0; padding: 4px 8px; }
  tfoot tr.grand td { font-weight: 700; font-size: 16px; border-top: 2px solid #1d2330; padding-top: 8px; }
  .note { margin-top: 28px; font-size: 12px; color: #667085; }
  @media print { body { margin: 0; max-width: none; padding: 0; } }
</style>
</head>
<body>
<header>
  <div>
    <h1>Invoice</h1>
    <div class="muted">$number_label</div>
  </div>
  <div><span class="status status-$status">$status</span></div>
</header>
<section class="parties">
  <div><h2>From</h2>$seller</div>
  <div><h2>Bill to</h2>$customer</div>
  <div><h2>Details</h2>Issued $issued<br>Period $period<br>Currency $currency</div>
</section>
<table>
  <thead><tr><th>Description</th><th class="num">Qty</th><th class="num">Unit price</th>
  <th class="num">Amount</th></tr></thead>
  <tbody>
$rows
  </tbody>
  <tfoot>
    <tr class="grand"><td colspan="3" class="num">Total</td><td class="num">$total</td></tr>
    <tr><td colspan="3" class="num">Amount paid</td><td class="num">$paid</td></tr>
    <tr><td colspan="3" class="num">Amount due</td><td class="num">$due</td></tr>
  </tfoot>
</table>
<p class="note">$note</p>
</body>
</html>
""")

_ROW = Template("""    <tr><td>$description<div class="period">$period</div></td><td class="num">$quantity</td>
    <td class="num">$unit_price</td><td class="num">$amount</td></tr>""")


def money(minor: int, scale: int) -> str:
    """Minor units as grouped major units: 1234567 → "12,345.67" (a minus sign for credits)."""
    text = format_amount(abs(minor), scale)
    whole, _, frac = text.partition(".")
    grouped = f"{int(whole):,}"
    return ("−" if minor < 0 else "") + (f"{grouped}.{frac}" if frac else grouped)


def day(ns: int) -> str:
    return datetime.fromtimestamp(ns // NS, tz=UTC).strftime("%d %b %Y")


def _span(start: int, end: int) -> str:
    return day(start) if start == end else f"{day(start)} – {day(end)}"


def _row(line: InvoiceLine, scale: int) -> str:
    return _ROW.substitute(
        description=escape(line.description), period=escape(_span(line.period_start, line.period_end)),
        quantity=line.quantity, unit_price=money(line.unit_price_minor, scale), amount=money(line.amount_minor, scale),
    )


def _note(doc: InvoiceDocument, scale: int) -> str:
    inv = doc.invoice
    if inv.status == "paid":
        paid_at = f" on {day(inv.paid_at)}" if inv.paid_at else ""
        via = f" (ledger transfer {inv.payment_transfer_id})" if inv.payment_transfer_id else ""
        return f"Paid{paid_at} from the customer's {inv.currency} wallet{via}."
    if inv.status == "void":
        return "This invoice was voided: nothing is owed."
    if inv.status == "draft":
        return "Draft: not yet finalized; its lines and total may still change before it is issued."
    due = money(inv.total_minor - inv.amount_paid_minor, scale)
    reason = f" Last attempt: {inv.last_payment_error}." if inv.last_payment_error else ""
    return f"Due on receipt: {due} {inv.currency}, collected from the customer's wallet.{reason}"


def render_invoice(doc: InvoiceDocument, *, scale: int, seller: str) -> str:
    """The invoice page. `scale` is the currency's minor-unit scale; `seller` the issuer's name."""
    inv = doc.invoice
    issued = inv.finalized_at or inv.created_at
    number = inv.number or "draft"
    return _PAGE.substitute(
        title=escape(f"Invoice {number}"),
        number_label=escape(f"No. {inv.number}" if inv.number else f"Draft {inv.id}"),
        status=escape(inv.status),
        seller=escape(seller),
        customer=f"{escape(inv.customer_id)}<br><span class=\"muted\">{escape(inv.customer_type)}</span>",
        issued=escape(day(issued)),
        period=escape(_span(inv.period_start, inv.period_end)),
        currency=escape(inv.currency),
        rows="\n".join(_row(line, scale) for line in doc.lines),
        total=escape(f"{money(inv.total_minor, scale)} {inv.currency}"),
        paid=escape(f"{money(inv.amount_paid_minor, scale)} {inv.currency}"),
        due=escape(f"{money(inv.total_minor - inv.amount_paid_minor, scale)} {inv.currency}"),
        note=escape(_note(doc, scale)),
    )
