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


# Handler arguments Litestar fills from the request itself, never from a query parameter.
_RESERVED = frozenset({"data", "request", "state", "headers", "cookies", "query", "scope", "socket", "body"})


def _query_names(request: Request) -> frozenset[str]:
    """The query parameters the route documents: its handler's arguments that are not path
    parameters, dependencies or Litestar's own."""
    handler = request.route_handler
    known = handler.opt.get("_query_names")
    if known is None:
        dependencies = handler.resolve_dependencies()
        known = frozenset(name for name in handler.parsed_fn_signature.parameters
                          if name not in _RESERVED and name not in dependencies and name not in request.path_params)
        handler.opt["_query_names"] = known
    return known


async def strict_request(request: Request) -> None:
    """``before_request`` hook of the whole app (after the guard, before the handler's parameters)."""
    parameters = request.route_handler.parsed_fn_signature.parameters
    if request.scope["path"].startswith("/v1/"):  # the API: an unknown parameter is a mistake worth saying (a typo)
        known = _query_names(request)
        for name in request.query_params:
            if name not in known:
                takes = ", ".join(sorted(known)) or "none"
                raise _invalid(name, "query", f"is not a parameter of this route (it takes: {takes})")
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
