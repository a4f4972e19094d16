"""`meterline watch [SECONDS]`: a live terminal dashboard of a running server's billing.

It reads the SI64 profile over HTTP — `GET /api/billing/ledger` (active
contracts with their real-time cost and refund, recent settlements, totals)
and `GET /api/stats` (revenue, fees, devices) — and redraws every SECONDS.
Amounts are parsed as Decimal and shown exactly (9 decimals for SOL); nothing
here touches a float. `--once` prints a single frame and exits (scripts, tests);
it exits 1 when the server cannot be read.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text


class DashboardError(Exception):
    """The server could not be read (unreachable, an error status, or not JSON)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    ledger: dict[str, Any]
    stats: dict[str, Any]


def _json(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        detail = response.text[:300]
        try:
            detail = str(json.loads(response.content).get("detail", detail))
        except (ValueError, AttributeError):
            pass
        raise DashboardError(f"{response.request.method} {response.request.url.path}: "
                             f"{response.status_code} {detail}")
    try:
        data = json.loads(response.content, parse_float=Decimal)
    except ValueError as exc:
        raise DashboardError(f"{response.request.url.path} did not answer JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DashboardError(f"{response.request.url.path} did not answer a JSON object")
    return data


def fetch(client: httpx.Client, *, limit: int = 20, settlements: int = 10) -> Snapshot:
    try:
        ledger = _json(client.get("/api/billing/ledger", params={"limit": limit, "settlements_limit": settlements}))
        stats = _json(client.get("/api/stats"))
    except httpx.HTTPError as exc:
        raise DashboardError(f"cannot reach {client.base_url}: {exc}") from None
    return Snapshot(ledger, stats)


def _amount(value: Any, places: int = 9) -> str:
    """An exact amount with a fixed number of places (the JSON carried it as a Decimal)."""
    if value is None:
        return "-"
    return f"{Decimal(value):.{places}f}"


def _short(text: Any, width: int = 12) -> str:
    s = str(text or "")
    return s if len(s) <= width else f"{s[: width - 4]}…{s[-3:]}"


def _duration(seconds: int) -> str:
    if seconds <= 0:
        return "expired"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def render(snapshot: Snapshot, *, source: str = "") -> RenderableType:
    ledger, stats = snapshot.ledger, snapshot.stats
    asset = str(ledger.get("asset") or stats.get("asset") or "SOL")
    now = int(ledger.get("timestamp") or stats.get("timestamp") or time.time())

    summary = Table.grid(padding=(0, 3))
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    summary.add_row("Active contracts", str(stats.get("active_contracts", ledger.get("active_count", 0))),
                    "Platform revenue (fees)", f"{_amount(stats.get('platform_fees'))} {asset}")
    summary.add_row("In escrow", f"{_amount(ledger.get('total_active_value'))} {asset}",
                    "Usage revenue (settled)", f"{_amount(stats.get('total_revenue'))} {asset}")
    summary.add_row("Used so far (active)", f"{_amount(ledger.get('active_used'))} {asset}",
                    "Provider earnings", f"{_amount(stats.get('provider_earnings'))} {asset}")
    summary.add_row("Pending refunds", f"{_amount(ledger.get('total_pending_refunds'))} {asset}",
                    "Refunded", f"{_amount(stats.get('total_refunded'))} {asset}")
    summary.add_row("Settled contracts", str(stats.get("settled_contracts", ledger.get("settled_count", 0))),
                    "Devices (leased / total)", f"{stats.get('devices_leased', 0)} / {stats.get('devices', 0)}")

    active = Table(title="Active contracts — real-time cost", expand=True, title_justify="left")
    for name, justify in (("Contract", "left"), ("Wallet", "left"), ("Tier", "left"), ("Prepaid", "right"),
                          ("Used", "right"), ("Refund", "right"), ("Left", "right"), ("Status", "left")):
        active.add_column(name, justify=justify)  # type: ignore[arg-type]
    for c in ledger.get("active_contracts", []):
        expires = c.get("expires_at")
        left = _duration(int(expires) - now) if expires is not None else "-"
        active.add_row(str(c.get("contract_id")), _short(c.get("wallet")), str(c.get("tier") or "-"),
                       _amount(c.get("prepaid")), _amount(c.get("used")), _amount(c.get("refund")), left,
                       str(c.get("status")))
    shown, total = len(ledger.get("active_contracts", [])), int(ledger.get("active_count", 0) or 0)
    if total > shown:
        active.caption = f"newest {shown} of {total}"

    settled = Table(title="Recent settlements", expand=True, title_justify="left")
    for name, justify in (("Contract", "left"), ("Wallet", "left"), ("Prepaid", "right"), ("Used", "right"),
                          ("Refund", "right"), ("Fee", "right"), ("TX", "left")):
        settled.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in ledger.get("completed_settlements", []):
        settled.add_row(str(s.get("contract_id")), _short(s.get("wallet")), _amount(s.get("prepaid")),
                        _amount(s.get("used")), _amount(s.get("refund")), _amount(s.get("platform_fee")),
                        _short(s.get("tx_signature"), 16))

    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    header = Text.assemble(("Meterline — live billing", "bold"), f"   {source}   {stamp}")
    return Group(Panel(summary, title=header, title_align="left"), active, settled)


def _error_frame(message: str) -> RenderableType:
    return Panel(Text(message, style="red"), title="Meterline — live billing", title_align="left")


def make_client(url: str, api_key: str | None, timeout: float = 10.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)


def run(client: httpx.Client, *, seconds: float, once: bool, console: Console, limit: int = 20,
        source: str = "") -> int:
    """Draw the dashboard; with `once`, a single frame. Returns the exit code."""
    if once:
        try:
            console.print(render(fetch(client, limit=limit), source=source))
        except DashboardError as exc:
            console.print(_error_frame(str(exc)))
            return 1
        return 0
    with Live(console=console, auto_refresh=False, screen=False) as live:
        while True:
            try:
                frame = render(fetch(client, limit=limit), source=source)
            except DashboardError as exc:  # keep watching: the server may come back
                frame = _error_frame(f"{exc}\nretrying every {seconds:g} s")
            live.update(frame, refresh=True)
            time.sleep(seconds)


def watch(
    seconds: float = typer.Argument(2.0, min=0.1, help="Refresh interval in seconds."),
    url: str = typer.Option("http://127.0.0.1:8000", "--url", envvar="METERLINE_URL", help="The server to watch."),
    api_key: str | None = typer.Option(None, "--api-key", envvar="METERLINE_API_KEY",
                                       help="Sent as 'Authorization: Bearer'; needs ledger:read."),
    once: bool = typer.Option(False, "--once", help="Print one frame and exit (1 if the server can't be read)."),
    limit: int = typer.Option(20, "--limit", min=1, max=1000, help="Active contracts shown (newest first)."),
) -> None:
    """Live dashboard: active contracts with real-time cost and refund, pending refunds,
    recent settlements and platform revenue, read from a running server."""
    console = Console()
    with make_client(url, api_key) as client:
        try:
            code = run(client, seconds=seconds, once=once, console=console, limit=limit, source=url)
        except KeyboardInterrupt:
            code = 0
    raise typer.Exit(code)
