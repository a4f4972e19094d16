"""A device's two questions — may this camera run, may it use this feature — asked through
the BrinkByte profile and through /v1 alike, answered and audited in one place.

Who may ask for which licensee is `principals.speaks_for`: a customer key naming another
customer's licensee gets the answer for a licensee without a license (nothing activated,
no cached answer consulted), so the answer never tells whether that license exists.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from meterline.api.v1.principals import speaks_for
from meterline.identity.service import Principal
from meterline.licensing.runtime import NOT_LICENSED, Answer, LicensingRuntime


def who(principal: Principal) -> str:
    """The audit log's actor: the key, or the dev-mode caller's kind."""
    return principal.key_id or f"{principal.kind}:dev"


async def validate(lic: LicensingRuntime, principal: Principal, licensee: str, camera: str, device: str | None,
                   now: int) -> Answer:
    tenant = principal.tenant_id
    answer = NOT_LICENSED
    if speaks_for(principal, licensee):
        cached = lic.validate_cached(tenant, licensee, camera, now)
        answer = cached if cached is not None else await run_in_threadpool(
            lic.validate, tenant, licensee, camera, device, now)
    lic.record(tenant, who(principal), "validate", licensee, answer, now, camera_id=camera, device_id=device)
    return answer


async def entitlement(lic: LicensingRuntime, principal: Principal, licensee: str, camera: str | None,
                      feature: str, now: int) -> Answer:
    tenant = principal.tenant_id
    if not speaks_for(principal, licensee):
        answer = lic.unlicensed_entitlement_cached(tenant, feature, now)
        if answer is None:
            answer = await run_in_threadpool(lic.unlicensed_entitlement, tenant, feature, now)
    else:
        answer = lic.entitlement_cached(tenant, licensee, camera, feature, now)
        if answer is None:
            answer = await run_in_threadpool(lic.entitlement, tenant, licensee, camera, feature, now)
    lic.record(tenant, who(principal), "entitlement", licensee, answer, now, camera_id=camera, feature=feature)
    return answer
