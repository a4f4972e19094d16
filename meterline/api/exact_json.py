"""JSON responses that carry Decimals as exact JSON numbers.

The seed profiles answer with JSON numbers (`"cost_so_far": 0.0000042`). The
standard encoder can only emit a number from a float, which would round
money; this encoder writes a Decimal's own digits instead, so a client parsing
with Decimal (or any arbitrary-precision parser) reads back exactly what the
ledger holds. Trailing zeros are dropped (0.000004200 → 0.0000042).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from fastapi.responses import JSONResponse

_encode_str = json.JSONEncoder(ensure_ascii=False).encode


def number(d: Decimal) -> str:
    if not d.is_finite():
        raise ValueError("non-finite numbers are not JSON")
    text = format(d.normalize(), "f")
    return "0" if text in ("-0", "") else text


def dumps(obj: Any) -> str:
    parts: list[str] = []
    _write(obj, parts)
    return "".join(parts)


def _write(obj: Any, out: list[str]) -> None:
    if isinstance(obj, Decimal):
        out.append(number(obj))
    elif isinstance(obj, dict):
        out.append("{")
        first = True
        for k, v in obj.items():
            if not first:
                out.append(",")
            first = False
            out.append(_encode_str(str(k)))
            out.append(":")
            _write(v, out)
        out.append("}")
    elif isinstance(obj, list | tuple):
        out.append("[")
        for i, v in enumerate(obj):
            if i:
                out.append(",")
            _write(v, out)
        out.append("]")
    elif isinstance(obj, float):
        raise TypeError("a float reached a money response; use Decimal")
    else:
        out.append(_encode_str(obj))


class ExactJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")
