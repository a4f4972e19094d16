"""Standard Webhooks signatures: the published test vector, and what a receiver rejects."""

from __future__ import annotations

import pytest

from meterline.events import signing

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signature_reproduces_the_published_vector() -> None:
    # What makes a receiver's existing Standard Webhooks / Svix library accept ours.
    assert signing.sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIG


def test_headers_carry_id_timestamp_and_signature() -> None:
    h = signing.headers(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    assert h["webhook-id"] == VECTOR_ID
    assert h["webhook-timestamp"] == str(VECTOR_TS)
    assert h["webhook-signature"] == VECTOR_SIG
    signing.verify(VECTOR_SECRET, h, VECTOR_BODY, now_s=VECTOR_TS + 10)


def test_new_secrets_are_distinct_and_usable() -> None:
    a, b = signing.new_secret(), signing.new_secret()
    assert a != b and a.startswith("whsec_")
    h = signing.headers(a, "evt_1", 100, b"{}")
    signing.verify(a, h, b"{}", now_s=100)
    with pytest.raises(signing.InvalidSignature):
        signing.verify(b, h, b"{}", now_s=100)


@pytest.mark.parametrize("mutate", [
    lambda h, b: (h, b + b" "),                                         # body changed
    lambda h, b: ({**h, "webhook-id": "msg_other"}, b),                 # id changed
    lambda h, b: ({**h, "webhook-timestamp": str(VECTOR_TS + 1)}, b),   # timestamp changed
    lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
    lambda h, b: ({**h, "webhook-timestamp": "soon"}, b),
])
def test_verify_rejects_tampering(mutate) -> None:
    h = signing.headers(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    h2, body = mutate(h, VECTOR_BODY)
    with pytest.raises(signing.InvalidSignature):
        signing.verify(VECTOR_SECRET, h2, body, now_s=VECTOR_TS)


def test_verify_rejects_a_replay_outside_the_tolerance() -> None:
    h = signing.headers(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    with pytest.raises(signing.InvalidSignature, match="tolerance"):
        signing.verify(VECTOR_SECRET, h, VECTOR_BODY, now_s=VECTOR_TS + 301)


def test_verify_accepts_any_of_several_signatures() -> None:
    # During a secret rotation a sender may sign with both; receivers accept either.
    h = signing.headers(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY)
    h["webhook-signature"] = "v1,bm9wZQ== " + h["webhook-signature"]
    signing.verify(VECTOR_SECRET, h, VECTOR_BODY, now_s=VECTOR_TS)


def test_a_malformed_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="base64"):
        signing.sign("whsec_not*base64", "a", 1, b"")
