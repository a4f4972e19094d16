"""`meterline.api.body.loads`, the parser of every JSON request body: numbers exact, and a
key given twice in any object refused (never resolved silently to its last value)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterline.api.body import loads
from meterline.errors import ValidationFailed


def duplicate_fields(raw: bytes) -> list[str]:
    with pytest.raises(ValidationFailed) as caught:
        loads(raw)
    problem = caught.value
    assert problem.code == "validation_error" and problem.status == 422
    errors: list[dict[str, Any]] = problem.extra["errors"]
    assert {e["code"] for e in errors} == {"duplicate_key"}, errors
    return [e["field"] for e in errors]


@pytest.mark.parametrize(("raw", "fields"), [
    # the audit's body
    (b'{"id":"d1","debit_account_id":"bank","credit_account_id":"alice","amount":"1.00","amount":"2.00",'
     b'"asset":"USD"}', ["amount"]),
    (b'{"a" : 1 , "a" : 2}', ["a"]),                           # whitespace around the colons
    (b'{"amount":"1.00","\\u0061mount":"2.00"}', ["amount"]),  # the same key, escaped
    (b'{"a":"x:y","b":1,"a":2}', ["a"]),
    (b'{"a":1,"a":2,"b":3,"b":4,"a":5}', ["a", "b"]),          # each repeated key named once
    (b'{"":1,"":2}', [""]),
    (b'{"id":"t","metadata":{"k":1,"k":2}}', ["metadata.k"]),
    (b'{"metadata":{"k":{"deep":1,"deep":2}}}', ["metadata.k.deep"]),
    (b'{"transfers":[{"id":"a"},{"id":"b","amount":"1","amount":"2"}]}', ["transfers.1.amount"]),
    (b'[{"a":1,"a":2}]', ["0.a"]),                              # one object, inside an array
    (b'{"transfers":[],"transfers":[{"id":"x"}]}', ["transfers"]),
    (b'{"m":{"k":1,"k":2},"t":[{"x":1,"y":2,"x":3}]}', ["m.k", "t.0.x"]),
])
def test_a_repeated_key_is_refused_naming_where(raw: bytes, fields: list[str]) -> None:
    assert duplicate_fields(raw) == fields


def test_a_body_that_breaks_off_after_a_repeated_key_is_invalid_json() -> None:
    with pytest.raises(ValidationFailed, match="not valid JSON"):
        loads(b'{"m":{"k":1,"k":2},"t":')


@pytest.mark.parametrize("raw", [
    b'{"a":"1:2","b":"{"}', b'{"a":{"b":1},"b":{"a":1}}', b'[{"a":1},{"a":1}]', b'{"a":[{"k":1},{"k":2}]}',
    b'{"k":1,"K":2}', b'{"a":"\\u0061","\\u0062":1}', b"[]", b'"{:}"', b"{}",
])
def test_distinct_keys_are_accepted(raw: bytes) -> None:
    assert loads(raw) == json.loads(raw)


def test_numbers_stay_exact_decimals() -> None:
    data = loads(b'{"amount":0.1,"items":[{"q":1e-7,"n":3}],"meta":{"x":12.50}}')
    assert data == {"amount": Decimal("0.1"), "items": [{"q": Decimal("1e-7"), "n": 3}],
                    "meta": {"x": Decimal("12.50")}}
    assert isinstance(data["amount"], Decimal) and isinstance(data["items"][0]["q"], Decimal)
    assert str(loads(b'{"a":0.0000042}')["a"]) == "0.0000042"


_keys = st.text(alphabet='ab:{}" \\', max_size=3)
_values = st.one_of(st.text(alphabet='ab:{}[]" ', max_size=4), st.integers(), st.none(),
                    st.lists(st.text(alphabet="a:{", max_size=2), max_size=2))


@given(st.lists(st.tuples(_keys, _values), min_size=1, max_size=6), st.data())
def test_any_object_with_a_key_written_twice_is_refused(pairs: list[tuple[str, Any]], data: st.DataObject) -> None:
    """Whatever colons, braces, quotes or spaces the keys and strings hold, a repeated key is
    never lost, alone or nested; and without one the body parses as it always did."""
    members = [f"{json.dumps(k)} : {json.dumps(v)}" for k, v in pairs]
    distinct = len({k for k, _ in pairs}) == len(pairs)
    nested = data.draw(st.booleans())
    text = "{" + ", ".join(members) + "}"
    if nested:
        text = '{"outer": [1, ' + text + "]}"
    if distinct:
        assert loads(text.encode()) == json.loads(text)
    else:
        # each repeated key once, in the order of its second appearance
        repeats = dict.fromkeys(k for i, (k, _) in enumerate(pairs) if k in {p[0] for p in pairs[:i]})
        assert duplicate_fields(text.encode()) == [("outer.1." if nested else "") + k for k in repeats]
