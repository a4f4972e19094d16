"""The pricing engine: price books, quotes and costs as pure functions of exact numbers.

No database, no clock, no floats. A `PriceBook` is one immutable version of a
tenant's prices; a `Quote` is the deterministic breakdown a rental locks in and
stores as JSON (`Quote.to_dict`), so its cost can be recomputed later exactly
as it was promised, whatever the price book says by then.

Exactness. Rates are `Decimal`s with at most 18 fractional digits (DESIGN §3).
Everything in between — a VRAM fraction (8/24), a demand-curve interpolation,
a per-second share of an hourly rate (x/3600) — is a `Fraction`, so nothing is
rounded on the way. Exactly two things round, each once, by the book's named
rule: a quoted hourly rate, to 18 places (so it can be stored and shown as a
finite decimal), and a cost, to the asset's minor unit (`cost_minor`).

The GPU formula (DESIGN §5, seeds/004 "Dynamic Pricing Engine"):

    hourly_rate            = max(provider_min, base[model] × vram_requested/vram_total × demand(u))
    estimated_hourly_total = hourly_rate + power_multiplier × watts

Time and power are kept apart because they are billed apart: time by the
clock (with a minimum and a granularity), power by the metered energy
integral. `estimated_hourly_total` is what a customer is shown up front.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal, InvalidOperation, localcontext
from fractions import Fraction
from itertools import pairwise
from typing import Any

from meterline.errors import InvalidAmount, MeterlineError, ValidationFailed
from meterline.money import MAX_SCALE, Rounding, allocate, to_decimal

# Errors live here rather than in service.py because the engine raises them and must not
# import the service (which needs a database); service.py re-exports them.


class PricingError(MeterlineError):
    code = "pricing_error"


class InvalidPriceBook(PricingError, ValidationFailed):
    code = "invalid_price_book"
    title = "The price book is not valid"


class InvalidQuote(PricingError):
    status = 422
    code = "invalid_quote"
    title = "The stored quote is not valid"


class GpuModelNotPriced(PricingError):
    status = 422
    code = "gpu_model_not_priced"
    title = "The price book has no base rate for this GPU model"


class TierNotPriced(PricingError):
    status = 422
    code = "tier_not_priced"
    title = "The price book has no rate for this tier"


class InvalidVram(PricingError):
    status = 422
    code = "invalid_vram"
    title = "The requested VRAM must be more than 0 GB and at most the device's"


class InvalidPower(PricingError):
    status = 422
    code = "invalid_power"
    title = "Power must be a whole, non-negative number of watts"


class InvalidUtilisation(PricingError):
    status = 422
    code = "invalid_utilisation"
    title = "Utilisation must be a decimal from 0 to 1"


class InvalidRate(PricingError):
    status = 422
    code = "invalid_rate"
    title = "A rate must be a non-negative decimal with at most 18 decimal places"


class InvalidDuration(PricingError):
    status = 422
    code = "invalid_duration"
    title = "A duration must be a non-negative number of seconds"


class InvalidEnergy(PricingError):
    status = 422
    code = "invalid_energy"
    title = "Energy must be a non-negative number of watt-hours"


# -- constants ------------------------------------------------------------------------

RATE_PLACES = 18
GRANULARITY_SECONDS = {"second": 1, "minute": 60}
MAX_MINIMUM_MINUTES = 525_600  # a year; anything longer is a typo
# A rate above 10^18 major units per hour can't be charged for a single second within 64 bits.
_MAX_RATE_DIGITS = 18
# Wide enough that no Decimal operation here rounds: operands have ≤ 19 integer and ≤ 18
# fractional digits, and quotients are only ever formed from exact Fractions.
_CTX = Context(prec=120, traps=[InvalidOperation])
_ASSET_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


# -- values ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TierRate:
    """A flat hourly rate for a tier, in its own asset (SI64's M2 is priced in SOL)."""

    asset: str
    hourly: Decimal


@dataclass(frozen=True, slots=True)
class PriceBook:
    """One version of a tenant's prices. Never edited: a change is a new version."""

    version: int
    asset: str  # the asset GPU (base-rate) quotes are priced in
    base_rates: Mapping[str, Decimal]  # per hour, whole card, by GPU model id
    tier_rates: Mapping[str, TierRate] = field(default_factory=dict)
    power_multiplier: Decimal = Decimal(0)  # per watt-hour, in `asset`
    platform_fee_percent: Decimal = Decimal(0)
    minimum_session_minutes: int = 0
    granularity: str = "second"
    rounding: Rounding = Rounding.HALF_UP
    # (utilisation 0..1, multiplier) points, x strictly increasing; empty = always ×1.
    demand_curve: tuple[tuple[Decimal, Decimal], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "asset": self.asset,
            "base_rates": {k: _text(v) for k, v in sorted(self.base_rates.items())},
            "tier_rates": {k: {"asset": v.asset, "hourly": _text(v.hourly)}
                           for k, v in sorted(self.tier_rates.items())},
            "power_multiplier": _text(self.power_multiplier),
            "platform_fee_percent": _text(self.platform_fee_percent),
            "minimum_session_minutes": self.minimum_session_minutes,
            "granularity": self.granularity,
            "rounding": self.rounding.value,
            "demand_curve": [[_text(x), _text(m)] for x, m in self.demand_curve],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriceBook:
        """Parse and validate; every problem is reported at once as a field error."""
        return parse_book(data)


@dataclass(frozen=True, slots=True)
class LineItem:
    name: str
    amount_per_hour: Decimal
    detail: str


@dataclass(frozen=True, slots=True)
class Quote:
    """What a rental is charged, locked at its start. `line_items` sum to `estimated_hourly_total`."""

    asset: str
    price_book_version: int
    hourly_rate: Decimal  # the time component, per hour
    power_rate_per_wh: Decimal
    estimated_power_w: int
    estimated_hourly_total: Decimal
    platform_fee_percent: Decimal
    minimum_session_minutes: int
    granularity: str
    rounding: Rounding
    line_items: tuple[LineItem, ...]
    gpu_model: str | None = None
    tier: str | None = None
    vram_gb: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe and lossless: Decimals as plain decimal strings, never JSON numbers."""
        return {
            "asset": self.asset,
            "price_book_version": self.price_book_version,
            "hourly_rate": _text(self.hourly_rate),
            "power_rate_per_wh": _text(self.power_rate_per_wh),
            "estimated_power_w": self.estimated_power_w,
            "estimated_hourly_total": _text(self.estimated_hourly_total),
            "platform_fee_percent": _text(self.platform_fee_percent),
            "minimum_session_minutes": self.minimum_session_minutes,
            "granularity": self.granularity,
            "rounding": self.rounding.value,
            "line_items": [{"name": i.name, "amount_per_hour": _text(i.amount_per_hour), "detail": i.detail}
                           for i in self.line_items],
            "gpu_model": self.gpu_model,
            "tier": self.tier,
            "vram_gb": self.vram_gb,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Quote:
        try:
            granularity = str(data["granularity"])
            if granularity not in GRANULARITY_SECONDS:
                raise ValueError(granularity)
            return cls(
                asset=str(data["asset"]),
                price_book_version=_strict_int(data["price_book_version"]),
                hourly_rate=_stored_decimal(data["hourly_rate"]),
                power_rate_per_wh=_stored_decimal(data["power_rate_per_wh"]),
                estimated_power_w=_strict_int(data["estimated_power_w"]),
                estimated_hourly_total=_stored_decimal(data["estimated_hourly_total"]),
                platform_fee_percent=_stored_decimal(data["platform_fee_percent"]),
                minimum_session_minutes=_strict_int(data["minimum_session_minutes"]),
                granularity=granularity,
                rounding=Rounding(data["rounding"]),
                line_items=tuple(
                    LineItem(str(i["name"]), _stored_decimal(i["amount_per_hour"]), str(i["detail"]))
                    for i in data["line_items"]
                ),
                gpu_model=_optional_str(data.get("gpu_model")),
                tier=_optional_str(data.get("tier")),
                vram_gb=None if data.get("vram_gb") is None else _strict_int(data["vram_gb"]),
            )
        except (KeyError, TypeError, ValueError, MeterlineError) as exc:
            raise InvalidQuote(f"stored quote is malformed: {exc!r}") from None


# -- quoting --------------------------------------------------------------------------


def demand_multiplier(curve: Sequence[tuple[Decimal, Decimal]], utilisation: Decimal) -> Decimal:
    """The curve's multiplier at `utilisation`: piecewise-linear between points, flat
    beyond the first and last (a curve starting at 0.5 charges ×m0 for any lower load).
    Rounded half-up to 18 places only when the interpolation does not terminate."""
    return _to_decimal_places(_demand(curve, _utilisation(utilisation)), Rounding.HALF_UP)


def quote_gpu(
    book: PriceBook,
    *,
    gpu_model: str,
    vram_gb_total: int,
    vram_gb_requested: int,
    watts: int,
    utilisation: Decimal,
    provider_min_hourly: Decimal | None = None,
) -> Quote:
    """Quote a (fraction of a) GPU. The provider's minimum replaces the dynamic time
    rate when higher — it is a floor on what the provider is paid per hour, so it
    applies to time, not to metered power."""
    base = book.base_rates.get(gpu_model)
    if base is None:
        raise GpuModelNotPriced(f"price book v{book.version} has no base rate for {gpu_model}")
    if _not_int(vram_gb_total) or vram_gb_total <= 0:
        raise InvalidVram("the device's VRAM must be a whole number of GB above 0")
    if _not_int(vram_gb_requested) or not 0 < vram_gb_requested <= vram_gb_total:
        raise InvalidVram(f"vram_gb_requested must be from 1 to {vram_gb_total} GB")
    if _not_int(watts) or watts < 0:
        raise InvalidPower(f"{watts!r} is not a whole, non-negative number of watts")
    u = _utilisation(utilisation)
    floor = None if provider_min_hourly is None else check_rate(provider_min_hourly, "provider_min_hourly")

    share = Fraction(base) * vram_gb_requested / vram_gb_total
    multiplier = _demand(book.demand_curve, u)
    share_rate = _to_decimal_places(share, book.rounding)
    dynamic_rate = _to_decimal_places(share * multiplier, book.rounding)
    hourly = dynamic_rate if floor is None or floor <= dynamic_rate else floor
    with localcontext(_CTX):
        power_hourly = book.power_multiplier * watts
        # Each item is a difference of the figures above, so they sum to the total exactly.
        items = [
            LineItem("gpu_time", share_rate,
                     f"{gpu_model} {_text(base)}/h × {vram_gb_requested}/{vram_gb_total} GB VRAM"),
            LineItem("demand", dynamic_rate - share_rate,
                     f"utilisation {_text(utilisation)} → ×{_text(_to_decimal_places(multiplier, Rounding.HALF_UP))}"),
        ]
        if hourly != dynamic_rate:
            items.append(LineItem("provider_minimum", hourly - dynamic_rate,
                                  f"provider minimum {_text(hourly)}/h"))
        items.append(LineItem("power", power_hourly,
                              f"{watts} W × {_text(book.power_multiplier)}/Wh (estimate; billed as metered)"))
        total = hourly + power_hourly
    return Quote(
        asset=book.asset, price_book_version=book.version, hourly_rate=hourly,
        power_rate_per_wh=book.power_multiplier, estimated_power_w=watts, estimated_hourly_total=total,
        platform_fee_percent=book.platform_fee_percent, minimum_session_minutes=book.minimum_session_minutes,
        granularity=book.granularity, rounding=book.rounding, line_items=tuple(items),
        gpu_model=gpu_model, tier=None, vram_gb=vram_gb_requested,
    )


def quote_tier(book: PriceBook, tier: str) -> Quote:
    """Quote a flat-rate tier (SI64). Tiers carry no power component: their rate is
    all-in, and in their own asset, to which the book's per-Wh multiplier doesn't apply."""
    rate = book.tier_rates.get(tier)
    if rate is None:
        raise TierNotPriced(f"price book v{book.version} has no rate for tier {tier}")
    return Quote(
        asset=rate.asset, price_book_version=book.version, hourly_rate=rate.hourly,
        power_rate_per_wh=Decimal(0), estimated_power_w=0, estimated_hourly_total=rate.hourly,
        platform_fee_percent=book.platform_fee_percent, minimum_session_minutes=book.minimum_session_minutes,
        granularity=book.granularity, rounding=book.rounding,
        line_items=(LineItem("tier_time", rate.hourly, f"tier {tier}: {_text(rate.hourly)} {rate.asset}/h"),),
        gpu_model=None, tier=tier, vram_gb=None,
    )


# -- costs ----------------------------------------------------------------------------


def billable_seconds(quote: Quote, elapsed_s: int | Decimal) -> int:
    """Seconds charged for a session that ran `elapsed_s`: its whole elapsed seconds, at
    least the minimum session, then rounded UP to the granularity (a started minute is a
    billed minute).

    One rule with the running cost and the settlement (rentals/accrual.py `elapsed_seconds`,
    "rate × whole seconds elapsed"): a fraction of a second is not counted. A started second
    counted here but not at settlement, so an estimate for 61.2 s said 62 where a session of
    61.2 s was charged 61."""
    elapsed = _seconds(elapsed_s)
    step = GRANULARITY_SECONDS[quote.granularity]
    charged = max(Fraction(elapsed.numerator // elapsed.denominator),
                  Fraction(quote.minimum_session_minutes * 60))
    return -(-charged // step) * step


def time_cost_exact(quote: Quote, scale: int, seconds: int | Decimal) -> Decimal:
    """hourly_rate × seconds / 3600, in minor units, unrounded.

    Exact whenever the quotient terminates (it does for whole seconds at any rate
    whose denominator divides 3600·10^k); otherwise correct to 120 significant
    digits — far below anything the final rounding to a minor unit could see.
    `cost_minor` does not go through this Decimal: it rounds the exact Fraction.
    """
    return _fraction_to_decimal(_time_fraction(quote, _scale(scale), _seconds(seconds)))


def power_cost_exact(quote: Quote, scale: int, energy_wh: Decimal) -> Decimal:
    """power_rate_per_wh × energy, in minor units, unrounded (a product of decimals: exact)."""
    return _fraction_to_decimal(_power_fraction(quote, _scale(scale), _energy(energy_wh)))


def cost_minor(
    quote: Quote, scale: int, *, seconds: int | Decimal, energy_wh: Decimal = Decimal(0), billable: bool = True,
) -> int:
    """The cost in minor units: exact time part + exact power part, rounded ONCE by
    the quote's rule. `billable=True` applies the minimum session and granularity
    (what a finished session is charged); `billable=False` prices the raw elapsed
    time (a running cost shown to the user, which then never drifts from the exact
    accrual)."""
    scale = _scale(scale)
    charged = Fraction(billable_seconds(quote, seconds)) if billable else _seconds(seconds)
    exact = _time_fraction(quote, scale, charged) + _power_fraction(quote, scale, _energy(energy_wh))
    return round_fraction(exact, quote.rounding)


def split_fee(quote: Quote, amount_minor: int) -> tuple[int, int]:
    """(provider_share, platform_fee) of a charged amount, summing to it exactly.

    Largest-remainder allocation over weights (100 − fee%, fee%). When the two
    fractional remainders tie (e.g. 10 units at 5%: 9.5 / 0.5), the leftover unit
    goes to the PROVIDER — `money.allocate` breaks ties by position and the
    provider is listed first — so rounding never takes from the provider more
    than the stated percentage.
    """
    if _not_int(amount_minor) or amount_minor < 0:
        raise InvalidAmount("amount_minor must be a non-negative whole number of minor units")
    if amount_minor == 0:
        return 0, 0
    fee = quote.platform_fee_percent
    provider, platform = allocate(amount_minor, [Decimal(100) - fee, fee])
    return provider, platform


def round_fraction(value: Fraction, rounding: Rounding) -> int:
    """An exact rational rounded to an integer by a named rule (same rules as `money.round_minor`)."""
    q, r = divmod(value.numerator, value.denominator)  # floor division; 0 ≤ r < denominator
    if r == 0 or rounding is Rounding.FLOOR:
        return q
    if rounding is Rounding.UP:  # ceiling
        return q + 1
    if rounding is Rounding.DOWN:  # toward zero
        return q if value >= 0 else q + 1
    twice = 2 * r
    if twice != value.denominator:
        return q + 1 if twice > value.denominator else q
    if rounding is Rounding.HALF_EVEN:
        return q if q % 2 == 0 else q + 1
    return q + 1 if value >= 0 else q  # HALF_UP: ties away from zero


# -- price-book parsing -----------------------------------------------------------------


def parse_book(data: Mapping[str, Any]) -> PriceBook:
    """A validated `PriceBook` from its dict form, or `InvalidPriceBook` listing every bad field."""
    errors: list[dict[str, Any]] = []

    def fail(field_name: str, code: str, detail: str) -> None:
        errors.append({"field": field_name, "code": code, "detail": detail})

    def rate(value: Any, field_name: str) -> Decimal:
        try:
            return check_rate(value, field_name)
        except MeterlineError as exc:
            fail(field_name, "invalid_rate", exc.detail)
            return Decimal(0)

    def asset(value: Any, field_name: str) -> str:
        if not isinstance(value, str) or not 1 <= len(value) <= 16 or not set(value) <= _ASSET_CHARS:
            fail(field_name, "invalid_asset", "an asset code is 1-16 upper-case letters or digits")
            return ""
        return value

    def key(value: Any, field_name: str) -> bool:
        if not isinstance(value, str) or not 1 <= len(value) <= 64:
            fail(field_name, "invalid_key", "must be 1-64 characters")
            return False
        return True

    def mapping(value: Any, field_name: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            fail(field_name, "invalid_type", "must be an object")
            return {}
        return value

    unknown = set(data) - set(PriceBook.__dataclass_fields__)
    for name in sorted(unknown):
        fail(name, "unknown_field", "not a price book field")

    version: Any = data.get("version")
    if _not_int(version) or version < 1:
        fail("version", "invalid_version", "must be a whole number from 1")
        version = 0

    book_asset = asset(data.get("asset"), "asset")

    base_rates: dict[str, Decimal] = {}
    for model, value in mapping(data.get("base_rates", {}), "base_rates").items():
        if key(model, f"base_rates.{model}"):
            base_rates[model] = rate(value, f"base_rates.{model}")

    tier_rates: dict[str, TierRate] = {}
    for tier, value in mapping(data.get("tier_rates", {}), "tier_rates").items():
        if key(tier, f"tier_rates.{tier}"):
            spec = mapping(value, f"tier_rates.{tier}")
            if spec:
                tier_rates[tier] = TierRate(asset(spec.get("asset"), f"tier_rates.{tier}.asset"),
                                            rate(spec.get("hourly"), f"tier_rates.{tier}.hourly"))

    power = rate(data.get("power_multiplier", "0"), "power_multiplier")
    fee = rate(data.get("platform_fee_percent", "0"), "platform_fee_percent")
    if fee > 100:
        fail("platform_fee_percent", "invalid_fee", "must be from 0 to 100")

    minimum: Any = data.get("minimum_session_minutes", 0)
    if _not_int(minimum) or not 0 <= minimum <= MAX_MINIMUM_MINUTES:
        fail("minimum_session_minutes", "invalid_minimum", f"must be a whole number from 0 to {MAX_MINIMUM_MINUTES}")
        minimum = 0

    granularity: Any = data.get("granularity", "second")
    if granularity not in GRANULARITY_SECONDS:
        fail("granularity", "invalid_granularity", "must be 'second' or 'minute'")
        granularity = "second"

    rounding = Rounding.HALF_UP
    try:
        rounding = Rounding(data.get("rounding", Rounding.HALF_UP.value))
    except ValueError:
        fail("rounding", "invalid_rounding", f"must be one of {', '.join(r.value for r in Rounding)}")

    curve: list[tuple[Decimal, Decimal]] = []
    raw_curve = data.get("demand_curve", [])
    if isinstance(raw_curve, str | bytes) or not isinstance(raw_curve, Sequence):
        fail("demand_curve", "invalid_curve", "must be a list of [utilisation, multiplier] points")
        raw_curve = []
    for i, point in enumerate(raw_curve):
        where = f"demand_curve.{i}"
        if isinstance(point, str | bytes) or not isinstance(point, Sequence) or len(point) != 2:
            fail(where, "invalid_curve", "a point is [utilisation, multiplier]")
            continue
        x, m = rate(point[0], f"{where}.0"), rate(point[1], f"{where}.1")
        if x > 1:
            fail(f"{where}.0", "invalid_curve", "utilisation must be from 0 to 1")
        elif curve and x <= curve[-1][0]:
            fail(f"{where}.0", "invalid_curve", "utilisation points must strictly increase")
        curve.append((x, m))

    if errors:
        raise InvalidPriceBook("the price book is not valid", errors=errors)
    assert isinstance(version, int) and isinstance(minimum, int) and isinstance(granularity, str)
    return PriceBook(
        version=version, asset=book_asset, base_rates=base_rates, tier_rates=tier_rates,
        power_multiplier=power, platform_fee_percent=fee, minimum_session_minutes=minimum,
        granularity=granularity, rounding=rounding, demand_curve=tuple(curve),
    )


# -- helpers ----------------------------------------------------------------------------


def _not_int(value: Any) -> bool:
    return isinstance(value, bool) or not isinstance(value, int)


def _strict_int(value: Any) -> int:
    if _not_int(value):
        raise TypeError(f"{value!r} is not an integer")
    return int(value)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _stored_decimal(value: Any) -> Decimal:
    """Stored decimals are strings; a JSON number here means a float got in somewhere."""
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a decimal string")
    return to_decimal(value)


def _text(value: Decimal) -> str:
    """Plain positional notation ("0.0000001", not "1E-7"): same value, readable JSON."""
    return format(value, "f")


def _exact(value: Any, error: type[PricingError], what: str) -> Fraction:
    """A non-negative exact number from int/Decimal/decimal text; floats refused (they aren't exact)."""
    if isinstance(value, bool) or isinstance(value, float) or not isinstance(value, int | Decimal | str):
        raise error(f"{what} must be a decimal, not {type(value).__name__}")
    try:
        d = to_decimal(value)
    except MeterlineError:
        raise error(f"{what}: {value!r} is not a decimal") from None
    if d < 0:
        raise error(f"{what} must not be negative")
    return Fraction(d)


def check_rate(value: Any, what: str) -> Decimal:
    """A rate: a non-negative decimal with ≤ 18 fractional and ≤ 18 integer digits."""
    f = _exact(value, InvalidRate, what)
    d = to_decimal(value) if not isinstance(value, Decimal) else value
    if d.is_zero():
        return Decimal(0)
    if (f * 10**RATE_PLACES).denominator != 1:
        raise InvalidRate(f"{what} has more than {RATE_PLACES} decimal places")
    if d.adjusted() >= _MAX_RATE_DIGITS:
        raise InvalidRate(f"{what} is too large")
    exponent = d.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -RATE_PLACES:
        # Zeros written past the last place a rate keeps (a JSON number 1.5000…0 of any
        # length): dropped, exactly — kept, the stored text outgrew its column and the book.
        with localcontext() as ctx:
            ctx.prec = _MAX_RATE_DIGITS + RATE_PLACES + 1
            d = d.quantize(Decimal(1).scaleb(-RATE_PLACES))
    return d


def _utilisation(value: Any) -> Fraction:
    u = _exact(value, InvalidUtilisation, "utilisation")
    if u > 1:
        raise InvalidUtilisation("utilisation must be from 0 to 1")
    return u


def _seconds(value: Any) -> Fraction:
    return _exact(value, InvalidDuration, "seconds")


def _energy(value: Any) -> Fraction:
    return _exact(value, InvalidEnergy, "energy_wh")


def _scale(scale: int) -> int:
    # A bad scale is a caller's bug (it comes from the asset table), not user input.
    if _not_int(scale) or not 0 <= scale <= MAX_SCALE:
        raise ValueError(f"scale must be from 0 to {MAX_SCALE}")
    return scale


def _demand(curve: Sequence[tuple[Decimal, Decimal]], u: Fraction) -> Fraction:
    if not curve:
        return Fraction(1)
    points = [(Fraction(x), Fraction(m)) for x, m in curve]
    if u <= points[0][0]:
        return points[0][1]
    for (x0, m0), (x1, m1) in pairwise(points):
        if u <= x1:
            return m0 + (m1 - m0) * (u - x0) / (x1 - x0)
    return points[-1][1]


def _time_fraction(quote: Quote, scale: int, seconds: Fraction) -> Fraction:
    return Fraction(quote.hourly_rate) * 10**scale * seconds / 3600


def _power_fraction(quote: Quote, scale: int, energy_wh: Fraction) -> Fraction:
    return Fraction(quote.power_rate_per_wh) * 10**scale * energy_wh


def _to_decimal_places(value: Fraction, rounding: Rounding, places: int = RATE_PLACES) -> Decimal:
    """A rate as a finite Decimal: rounded to `places` (only if it doesn't terminate
    sooner), trailing zeros dropped so "0.25" stays "0.25"."""
    n = round_fraction(value * 10**places, rounding)
    while places > 0 and n % 10 == 0:
        n //= 10
        places -= 1
    return Decimal(n).scaleb(-places, _CTX)


def _fraction_to_decimal(value: Fraction) -> Decimal:
    with localcontext(_CTX):
        return Decimal(value.numerator) / Decimal(value.denominator)
