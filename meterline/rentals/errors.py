"""Rentals' failures, each a state with its stable code (rendered by the one problem handler)."""

from __future__ import annotations

from meterline.errors import Conflict, MeterlineError, NotFound


class RentalError(MeterlineError):
    code = "rental_error"


class RentalNotFound(RentalError, NotFound):
    code = "contract_not_found"
    title = "No such contract"


class RentalNotActive(RentalError, Conflict):
    code = "contract_not_active"
    title = "The contract is not active"


class RentalAlreadySettled(RentalError, Conflict):
    code = "contract_already_settled"
    title = "The contract is already settled"


class RentalExpired(RentalError, Conflict):
    code = "contract_expired"
    title = "The contract has expired and can no longer be extended"


class InsufficientPayment(RentalError):
    status = 402
    code = "insufficient_payment"
    title = "The payment does not cover the price"


class InsufficientFunds(RentalError):
    status = 402
    code = "insufficient_funds"
    title = "The wallet cannot fund this"


class InvalidRentalRequest(RentalError):
    status = 422
    code = "invalid_rental_request"
    title = "The rental request is not valid"


class NoDeviceAvailable(RentalError, Conflict):
    code = "no_device_available"
    title = "No device of this kind is available"


class LedgerRefused(RentalError, Conflict):
    """The ledger refused a settlement batch — an invariant the service should have kept."""

    code = "ledger_refused"
    title = "The ledger refused the operation"
