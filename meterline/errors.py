"""Domain errors with stable codes.

Every error a user can cause is a `MeterlineError` subclass named for the *state*
it reports (``AccountNotFound``, ``IdempotencyConflict``). Each carries the HTTP
status and the stable machine code that the one problem+json handler in
``meterline.api.problems`` renders (RFC 9457). Services raise these; they never
raise ``HTTPException``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MeterlineError(Exception):
    """Base of every expected failure. `code` is stable API; `detail` is for humans."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        self.detail = detail or self.title
        self.extra = extra
        super().__init__(self.detail)


class ValidationFailed(MeterlineError):
    status = 422
    code = "validation_error"
    title = "The request is not valid"

    def __init__(self, detail: str | None = None, *, errors: list[dict[str, Any]] | None = None):
        super().__init__(detail, errors=errors or [])


class InvalidAmount(MeterlineError):
    status = 422
    code = "invalid_amount"
    title = "The amount is not a valid decimal amount"


class AmountPrecision(MeterlineError):
    status = 422
    code = "amount_precision"
    title = "The amount has more decimal places than the asset allows"


class AmountNotPositive(MeterlineError):
    status = 422
    code = "amount_not_positive"
    title = "The amount must be greater than zero"


class AmountOverflow(MeterlineError):
    status = 422
    code = "amount_overflow"
    title = "The amount does not fit in a 64-bit minor-unit integer"


class NotFound(MeterlineError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(MeterlineError):
    status = 409
    code = "conflict"
    title = "Conflict"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"
    title = "This Idempotency-Key was used with a different request"


class IdempotencyInProgress(Conflict):
    code = "idempotency_in_progress"
    title = "A request with this Idempotency-Key is still being processed"


class Unauthenticated(MeterlineError):
    status = 401
    code = "unauthenticated"
    title = "A valid API key is required"


class Forbidden(MeterlineError):
    status = 403
    code = "forbidden"
    title = "The API key lacks the scope for this action"


class PayloadTooLarge(MeterlineError):
    status = 413
    code = "payload_too_large"
    title = "The request is too large"


class ServiceUnavailable(MeterlineError):
    status = 503
    code = "service_unavailable"
    title = "The service is not ready"
