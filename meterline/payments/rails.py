"""Payment rails: one interface for every way money enters or leaves the platform.

A rail verifies an incoming payment proof (`verify_incoming`), sends money out
(`send`) and reports what it holds (`balance`). Domain services never talk to a
processor or a chain directly; they ask `get_rail(name)`.

Only the `simulation` rail exists today. It is an explicit, labelled mode
(DESIGN §1.3): it accepts every claimed payment — the amount the caller claims
is taken as paid — and every ledger transfer it causes carries
``metadata["mode"] == "SIMULATION_MODE"``. Because it lets any caller with a
wallet key mint balance, it is on only where the settings say so
(`Settings.simulation_enabled`: dev mode, or `METERLINE_SIMULATION=true`);
elsewhere starting a payment on it is 422 `rail_disabled`. Solana and Stripe
arrive as rails of their own; until then their names are unknown (422
`unknown_rail`).

Two lookups, on purpose: `get_rail` starts something new on a rail (a deposit,
a payout, a rental's payment) and refuses a turned-off one; `known_rail`
finishes what was started while it was on (a rental's refund to the rail it was
paid on), so switching simulation off never strands money in escrow.

`send(..., reference=...)` must treat `reference` as an idempotency key: a
payout retried after a crash passes the same reference, and a real rail must
not pay twice for it (Stripe idempotency keys, a Solana memo checked first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from meterline.config import Settings
from meterline.errors import MeterlineError

SIMULATION_MODE = "SIMULATION_MODE"


class UnknownRail(MeterlineError):
    status = 422
    code = "unknown_rail"
    title = "No such payment rail"


class RailDisabled(MeterlineError):
    status = 422
    code = "rail_disabled"
    title = "This payment rail is turned off on this server"


class RailSendFailed(MeterlineError):
    """A rail could not send. Retryable: payouts back off and try again."""

    status = 502
    code = "rail_send_failed"
    title = "The payment rail could not send the funds"


@dataclass(frozen=True, slots=True)
class VerifiedPayment:
    """What a rail vouches for. `external_id` is the rail's unique id for the payment
    (a transaction signature, a Stripe event id); `amount_minor` is None when the rail
    cannot tell the amount and the claimed one applies."""

    external_id: str
    amount_minor: int | None
    asset: str
    simulated: bool


@dataclass(frozen=True, slots=True)
class SendResult:
    tx_signature: str
    simulated: bool


class Rail(Protocol):
    name: str
    simulated: bool

    def verify_incoming(
        self, tenant_id: str, proof: str, *, expected_amount_minor: int | None, asset: str
    ) -> VerifiedPayment:
        """Check `proof` names a real, final payment to us, or raise a MeterlineError."""
        ...

    def send(
        self, tenant_id: str, *, destination: str, amount_minor: int, asset: str, reference: str
    ) -> SendResult:
        """Pay `amount_minor` to `destination`; raise `RailSendFailed` (retryable) on failure."""
        ...

    def balance(self, asset: str) -> int | None:
        """The rail's own holding of `asset` in minor units, or None when it has none to report."""
        ...


class SimulatedPaymentTooLarge(MeterlineError):
    status = 422
    code = "simulated_payment_too_large"
    title = "A simulated payment is at most 10^12 minor units"


class SimulationRail:
    """Accepts every claimed payment and pretends every send succeeds — labelled as such."""

    name = "simulation"
    simulated = True
    # Every simulated payment is debited to the tenant's one external:simulation account of
    # its asset: one claiming 2^63-1 minor units filled it, and every later deposit of that
    # asset, anyone's, overflowed it (409) for good. Capped, filling it takes millions.
    max_amount_minor = 10**12

    def verify_incoming(
        self, tenant_id: str, proof: str, *, expected_amount_minor: int | None, asset: str
    ) -> VerifiedPayment:
        if expected_amount_minor is not None and expected_amount_minor > self.max_amount_minor:
            raise SimulatedPaymentTooLarge(
                f"a simulated payment is at most {self.max_amount_minor} minor units of {asset}")
        # A simulated proof is just a caller's string: it proves nothing outside its tenant,
        # so it is namespaced by tenant. Two tenants choosing the same test proof ("tx-1")
        # must not block each other; within a tenant a proof still credits only once.
        return VerifiedPayment(
            external_id=f"{tenant_id}:{proof}",
            amount_minor=expected_amount_minor,
            asset=asset,
            simulated=True,
        )

    def send(
        self, tenant_id: str, *, destination: str, amount_minor: int, asset: str, reference: str
    ) -> SendResult:
        return SendResult(tx_signature=SIMULATION_MODE, simulated=True)

    def balance(self, asset: str) -> int | None:
        return None


_RAILS: dict[str, Rail] = {"simulation": SimulationRail()}
DEFAULT_RAIL = "simulation"
# Off until a process adopts settings that turn it on (`configure_rails`): a process that
# never read its settings takes no simulated money.
_disabled: set[str] = {"simulation"}


def configure_rails(settings: Settings) -> None:
    """Adopt `settings`' rail switches; called where a process takes up its settings
    (the CLI's `load_settings`, `create_app`)."""
    if settings.simulation_enabled:
        _disabled.discard("simulation")
    else:
        _disabled.add("simulation")


def get_rail(name: str | None = None) -> Rail:
    """The rail to start a payment on: unknown and turned-off rails are refused."""
    return check_enabled(known_rail(name))


def check_enabled(rail: Rail) -> Rail:
    """`rail`, or RailDisabled when this server has it turned off."""
    if rail.name in _disabled:
        raise RailDisabled(
            f"the {rail.name} rail is turned off on this server; it takes claimed payments as paid, "
            "so it runs only in dev mode or with METERLINE_SIMULATION=true")
    return rail


def known_rail(name: str | None = None) -> Rail:
    """The rail something was started on, to finish it (a refund) whether or not it is still on."""
    rail = _RAILS.get(name or DEFAULT_RAIL)
    if rail is None:
        raise UnknownRail(f"unknown payment rail {name!r}; available: {', '.join(sorted(_RAILS))}")
    return rail


def register_rail(rail: Rail) -> None:
    """Install a rail under its name (the app wires configured rails in at startup)."""
    _RAILS[rail.name] = rail


def rail_names() -> list[str]:
    """The rails a payment can start on now."""
    return sorted(set(_RAILS) - _disabled)
