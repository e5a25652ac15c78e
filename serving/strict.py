"""Strict typing of what clients send, before Litestar's own (lenient) conversion: a JSON body must
be sent as ``application/json`` and match its schema without coercion (``"k": "5"`` is not 5), and a
query parameter declared as an integer must be written as one (``k=1e2`` is not 100)."""

from __future__ import annotations

import re
from typing import Any, get_args, get_origin

import msgspec
from litestar import Request
from litestar.exceptions import HTTPException, ValidationException

_INTEGER = re.compile(r"^[+-]?[0-9]{1,18}$")
_DECIMAL = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$")  # no exponent, NaN or Infinity
_AT = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


def _base(annotation: Any) -> Any:
    """``int`` of ``Annotated[int, ...]`` and of ``int | None``."""
    while get_origin(annotation) is not None and get_args(annotation):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if str(get_origin(annotation)).endswith("Annotated"):
            annotation = get_args(annotation)[0]
        elif len(args) == 1:
            annotation = args[0]
        else:
            break
    return annotation


def _invalid(field: str, source: str, message: str) -> ValidationException:
    return ValidationException(detail=f"{field}: {message}", extra=[{"key": field, "source": source, "message": message}])


async def strict_request(request: Request) -> None:
    """``before_request`` hook of the whole app (after the guard, before the handler's parameters)."""
    parameters = request.route_handler.parsed_fn_signature.parameters
    for name, raw in request.query_params.items():
        field = parameters.get(name)
        if field is None:
            continue
        kind = _base(field.annotation)
        if kind is int and not _INTEGER.match(raw):
            raise _invalid(name, "query", f"must be an integer written in digits, got {raw!r}")
        if kind is float and not _DECIMAL.match(raw):
            raise _invalid(name, "query", f"must be a decimal number such as 0.5, got {raw!r}")
        if kind is bool and raw not in ("true", "false"):
            raise _invalid(name, "query", f"must be true or false, got {raw!r}")
    data = parameters.get("data")
    if data is None:
        return
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(status_code=415, detail=f"send the body as JSON with 'Content-Type: application/json' "
                                                    f"(got {media_type or 'no content type'})")
    body = await request.body()
    try:
        msgspec.json.decode(body, type=data.annotation, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _AT.search(message)
        path = match.group("path").replace("[", ".").replace("]", "") if match else "body"
        raise _invalid(path or "body", "body", _AT.sub("", message)) from None
    except msgspec.DecodeError as exc:
        raise HTTPException(status_code=400, detail=f"the body is not valid JSON ({exc})") from None
