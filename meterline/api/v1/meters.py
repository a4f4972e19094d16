"""Meters and usage.

`POST /v1/usage/events` is a hot path: `async`, the body parsed exactly (quantities as
Decimal, never float), and the batch handed to the per-database group-commit
`UsageIngestor`, so concurrent batches share a transaction. Each event is accepted,
a duplicate, or rejected with its own code; one bad event never fails the others.
Usage reads come from the hourly rollups, never from raw events.

Whose usage (`principals.speaks_for`, as for licensing): staff and device keys (the edge
fleet) report and read usage for any licensee of their tenant; a `customer` key only for
itself — a batch naming another licensee has every event rejected with
`licensee_forbidden` (a batch naming none is its own), and a usage query for another
licensee answers exactly as for a licensee without usage (no query without `licensee`
reads anyone else's either); any other key (a provider's) none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from meterline.api.body import Parsed, json_body, openapi_body, read_json
from meterline.api.deps import (
    ReadSession,
    RuntimeDep,
    WriteSession,
    get_runtime,
    require,
    require_async,
)
from meterline.api.v1.common import Admin, errors
from meterline.api.v1.principals import licensee_filter, reported_licensee, speaks_for
from meterline.clock import in_range, to_rfc3339
from meterline.errors import ServiceUnavailable, ValidationFailed
from meterline.identity.service import Principal
from meterline.metering.ingest import LICENSEE_FORBIDDEN, UsageEventIn, Window
from meterline.metering.ingestor import IngestorStopped, ingestor_for
from meterline.metering.models import Meter
from meterline.metering.service import MAX_BATCH, UsageBatchTooLarge, metering_service
from meterline.metering.values import BadValue, format_micro, timestamp_ns

router = APIRouter(tags=["metering"])

UsageRead = Annotated[Principal, Depends(require("usage:read"))]
UsageWriteAsync = Annotated[Principal, Depends(require_async("usage:write"))]
MeterIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
_TEXT = r"^[^\x00-\x1f]*$"


# -- schemas ---------------------------------------------------------------------------
class MeterCreate(BaseModel):
    id: str = Field(min_length=1, max_length=64)
    aggregation: Literal["sum", "count", "max", "unique_count", "latest"]
    unit: str = Field(default="", max_length=32)
    description: str = Field(default="", max_length=500)
    field: str | None = Field(default=None, max_length=64,
                              description="unique_count only: the event property whose distinct values count")


class MeterOut(BaseModel):
    id: str
    aggregation: str
    unit: str
    description: str
    field: str | None
    created_at: str

    @classmethod
    def of(cls, m: Meter) -> MeterOut:
        return cls(id=m.id, aggregation=m.aggregation, unit=m.unit, description=m.description, field=m.field,
                   created_at=to_rfc3339(m.created_at))


class MeterList(BaseModel):
    data: list[MeterOut]


class UsageRowOut(BaseModel):
    value: str | None = Field(description="Decimal string; null for a `latest` meter without events")
    events: int
    subject: str | None = None
    period_start: str | None = None
    period_end: str | None = None


class UsageOut(BaseModel):
    meter: str
    aggregation: str
    unit: str
    from_: str = Field(alias="from")
    to: str
    group_by: str
    data: list[UsageRowOut]

    model_config = {"populate_by_name": True}


class UsageEventBody(BaseModel):
    event_id: str = Field(max_length=128)
    subject: str = Field(max_length=128)
    meter: str = Field(max_length=64)
    quantity: Decimal | str = Field(description="JSON number or decimal string, up to 6 decimal places")
    timestamp: str | Decimal = Field(description="RFC 3339, or Unix seconds as a number")
    properties: dict[str, Any] | None = None


class UsageBatchBody(BaseModel):
    licensee: str = Field(default="", max_length=128)
    device: str = Field(default="", max_length=128)
    events: list[UsageEventBody] = Field(max_length=MAX_BATCH)


class RejectedOut(BaseModel):
    index: int
    event_id: str | None = None
    code: str
    detail: str


class UsageBatchOut(BaseModel):
    accepted: int
    duplicates: int
    rejected: list[RejectedOut]


# -- meters ----------------------------------------------------------------------------
@router.get("/meters", response_model=MeterList, summary="List meters", responses=errors())
def list_meters(principal: UsageRead, session: ReadSession) -> MeterList:
    return MeterList(data=[MeterOut.of(m) for m in metering_service.list_meters(session, principal.tenant_id)])


@router.post("/meters", response_model=MeterOut, status_code=201, summary="Define a meter",
             openapi_extra=openapi_body(MeterCreate),
             responses=errors({409: "`meter_exists`", 422: "`validation_error`, `invalid_meter`"}))
def create_meter(principal: Admin, parsed: Annotated[Parsed[MeterCreate], Depends(json_body(MeterCreate))],
                 session: WriteSession, runtime: RuntimeDep) -> MeterOut:
    """A meter aggregates usage events by `sum`, `count`, `max`, `unique_count` (distinct
    values of `properties[field]`) or `latest` (the value of the newest event)."""
    body = parsed.value
    row = metering_service.create_meter(
        session, principal.tenant_id, id=body.id, aggregation=body.aggregation, unit=body.unit,
        description=body.description, field=body.field, now_ns=runtime.clock.now_ns(),
    )
    return MeterOut.of(row)


def _time_param(value: str, name: str) -> int:
    try:
        ns = timestamp_ns(value)
    except BadValue as exc:
        detail = exc.detail
    else:
        if in_range(ns):
            return ns
        detail = "timestamp must fall between 1970-01-01 and 2200-01-01"
    raise ValidationFailed(f"{name}: {detail}",
                           errors=[{"field": name, "code": "invalid_timestamp", "detail": detail}])


@router.get("/meters/{meter_id}/usage", response_model=UsageOut, response_model_by_alias=True,
            summary="Aggregate a meter's usage over a period",
            responses=errors({404: "`meter_not_found`", 422: "`validation_error`, `invalid_period`"}))
def meter_usage(
    meter_id: MeterIdPath,
    principal: UsageRead,
    session: ReadSession,
    from_: Annotated[str, Query(alias="from", max_length=40, description="RFC 3339, on a whole hour")],
    to: Annotated[str, Query(max_length=40, description="RFC 3339, on a whole hour (exclusive)")],
    subject: Annotated[str | None, Query(max_length=128, pattern=_TEXT)] = None,
    licensee: Annotated[str | None, Query(max_length=128, pattern=_TEXT)] = None,
    group_by: Annotated[Literal["none", "subject", "hour", "day", "month"], Query()] = "none",
) -> UsageOut:
    """The meter's aggregate over [from, to), optionally for one subject (camera, device)
    or licensee, as one figure or grouped by subject, hour, day or month (UTC). Answered
    from hourly rollups, so `from` and `to` must be whole hours. A customer key reads only
    its own licensee's usage (`licensee` left out means its own); another licensee's
    answers exactly like one without usage."""
    licensee, visible = licensee_filter(principal, licensee)
    report = metering_service.usage(
        session, principal.tenant_id, meter_id, from_ns=_time_param(from_, "from"), to_ns=_time_param(to, "to"),
        subject=subject, licensee=licensee, group_by=group_by, visible=visible,
    )
    m = report.meter
    return UsageOut(
        meter=m.id, aggregation=m.aggregation, unit=m.unit, **{"from": to_rfc3339(report.from_ns)},
        to=to_rfc3339(report.to_ns), group_by=report.group_by,
        data=[UsageRowOut(
            value=None if r.value_micro is None else format_micro(r.value_micro), events=r.events,
            subject=r.subject,
            period_start=None if r.period_start is None else to_rfc3339(r.period_start),
            period_end=None if r.period_end is None else to_rfc3339(r.period_end),
        ) for r in report.rows],
    )


# -- ingestion (shared with the BrinkByte profile) ---------------------------------------
def _timestamp(value: Any) -> Any:
    """JSON numbers are Unix seconds (the engine reads a bare int as nanoseconds)."""
    if type(value) is int:
        return Decimal(value)
    return value


def events_from_json(items: list[Any], subject_key: str) -> list[UsageEventIn]:
    """Wire events → engine events. Shapes are checked by the engine, per event, so a bad
    event gets its own code instead of failing the batch."""
    out: list[UsageEventIn] = []
    append = out.append
    for item in items:
        if type(item) is dict:
            get = item.get
            append(UsageEventIn(get("event_id"), get(subject_key), get("meter"), get("quantity"),
                                _timestamp(get("timestamp")), get("properties")))
        else:
            append(UsageEventIn(None, None, None, None, None))
    return out


def _text_field(data: dict[str, Any], key: str, *, required: bool) -> str:
    value = data.get(key, None if required else "")
    if not isinstance(value, str) or len(value) > 128 or (required and not value):
        raise ValidationFailed(f"{key} must be {'1' if required else '0'}-128 characters",
                               errors=[{"field": key, "code": "string_type", "detail": "1-128 characters"}])
    return value


# A batch-wide refusal of its licensee, e.g. one without a license: (code, detail) for every
# event, or None to ingest the batch. Called once per batch, after the envelope is checked.
LicenseeCheck = Callable[[Request, Principal, str], Awaitable[tuple[str, str] | None]]


def _refused(events: list[UsageEventIn], code: str, detail: str) -> UsageBatchOut:
    """Every event rejected with the same code (its id echoed when it is a usable one)."""
    return UsageBatchOut(accepted=0, duplicates=0, rejected=[
        RejectedOut(index=i, event_id=ev.event_id if type(ev.event_id) is str and 0 < len(ev.event_id) <= 128
                    else None, code=code, detail=detail)
        for i, ev in enumerate(events)])


async def ingest_request(request: Request, principal: Principal, *, licensee_key: str | None,
                         device_key: str, subject_key: str,
                         check_licensee: LicenseeCheck | None = None) -> UsageBatchOut:
    """Read a usage batch, hand it to the group-commit ingestor, count the outcomes.
    With `check_licensee`, a refused licensee rejects every event and nothing is ingested."""
    runtime = get_runtime(request)
    data, _ = await read_json(request, max_bytes=runtime.settings.max_body_bytes)
    if not isinstance(data, dict):
        raise ValidationFailed("the body must be a JSON object")
    licensee = _text_field(data, licensee_key, required=True) if licensee_key else _text_field(
        data, "licensee", required=False)
    licensee = reported_licensee(principal, licensee)  # a customer's unnamed licensee is itself
    device = _text_field(data, device_key, required=device_key != "device")
    items = data.get("events")
    if not isinstance(items, list):
        raise ValidationFailed("events must be a list",
                               errors=[{"field": "events", "code": "list_type", "detail": "a list of events"}])
    if len(items) > MAX_BATCH:
        raise UsageBatchTooLarge(f"a batch holds at most {MAX_BATCH} events")
    events = events_from_json(items, subject_key)
    if check_licensee is not None:
        refusal = await check_licensee(request, principal, licensee)
        if refusal is not None:
            return _refused(events, *refusal)
    s = runtime.settings
    window = Window(runtime.clock.now_ns(), s.usage_lateness_s, s.usage_future_skew_s)
    try:
        result = await ingestor_for(runtime.db).ingest_async(principal.tenant_id, licensee, device, events, window)
    except IngestorStopped:
        raise ServiceUnavailable("usage ingestion is not accepting events right now") from None
    return UsageBatchOut(
        accepted=result.accepted, duplicates=result.duplicates,
        rejected=[RejectedOut(index=r.index, event_id=r.event_id, code=r.code, detail=r.detail)
                  for r in result.rejected],
    )


_NOT_YOURS = (LICENSEE_FORBIDDEN, "this key may not report usage for this licensee "
                                  "(a customer key reports only its own)")


async def _may_report(request: Request, principal: Principal, licensee: str) -> tuple[str, str] | None:
    """Every event refused when the caller may not speak for the licensee (no I/O: the same
    answer whether or not that licensee exists, so it leaks nothing)."""
    return None if speaks_for(principal, licensee) else _NOT_YOURS


@router.post(
    "/usage/events", response_model=UsageBatchOut, summary="Ingest a batch of usage events",
    openapi_extra=openapi_body(UsageBatchBody),
    responses=errors({413: "`payload_too_large`, `batch_too_large` (more than 1000 events)",
                      422: "`validation_error`: the envelope (not an event) is malformed"}),
)
async def ingest_events(request: Request, principal: UsageWriteAsync) -> Response:
    """Up to 1000 events. Each is `accepted`, a `duplicate` (its `event_id` was accepted
    before — ids are deduplicated forever, per tenant) or rejected with a code:
    `unknown_meter`, `invalid_quantity` (negative, non-numeric, over 6 places),
    `invalid_timestamp`, `too_late` (older than the lateness window), `in_future`,
    `invalid_event` (missing id or subject), `invalid_properties`, `missing_property`
    (a unique_count meter's field), `licensee_forbidden` (every event of a batch whose
    `licensee` the key may not report for: a customer key reports only for itself, and a
    batch from it that names no licensee is its own). Retrying a whole batch is always safe."""
    out = await ingest_request(request, principal, licensee_key=None, device_key="device", subject_key="subject",
                               check_licensee=_may_report)
    return JSONResponse(out.model_dump())
