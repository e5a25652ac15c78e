"""Domain errors to HTTP, in one place, as problem details (RFC 9457); never a stack trace."""

from __future__ import annotations

import logging

from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    ValidationException,
)

from lodestar.errors import (
    Conflict,
    Forbidden,
    IndexEngineError,
    IndexNotReady,
    InvalidInput,
    NotFound,
    QuotaExceeded,
)

log = logging.getLogger("lodestar.serving")

PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: object) -> Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return Response(body, status_code=status, media_type=PROBLEM, headers=headers)


def _validation(_: Request, exc: ValidationException) -> Response:
    extra = exc.extra if isinstance(exc.extra, list) else []
    errors = [{"field": e.get("key"), "source": e.get("source"), "message": e.get("message")}
              for e in extra if isinstance(e, dict)]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or exc.detail
    return problem(422, "Invalid request", detail, errors=errors)


def _http(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 422:  # raised by a handler with its own detail and per-field errors
        extra = exc.extra if isinstance(exc.extra, list) else []
        errors = [{"field": e.get("key"), "source": e.get("source"), "message": e.get("message")} for e in extra]
        return problem(422, "Invalid request", exc.detail, errors=errors)
    titles = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
              413: "Request too large", 415: "Unsupported media type", 503: "Not ready"}
    # The exception's headers stay: Allow on a 405, WWW-Authenticate on a 401, Retry-After on a 503.
    headers = dict(exc.headers or {})
    if exc.status_code == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="lodestar"')
    return problem(exc.status_code, titles.get(exc.status_code, "Error"), exc.detail, headers=headers or None)


def _engine(request: Request, exc: IndexEngineError) -> Response:
    log.error("index engine error on %s %s: %s", request.method, request.url.path, exc)
    return problem(500, "Internal error", "the index engine failed to answer this query; the error was logged")


def _too_deep(request: Request, exc: RecursionError) -> Response:
    # msgspec raises RecursionError for a body nested thousands of levels deep.
    return problem(400, "Bad request", "the request body nests too deeply to be read; send ordinary JSON")


def _not_utf8(request: Request, exc: UnicodeDecodeError) -> Response:
    # Litestar decodes JSON bodies (and form fields) as UTF-8 while reading the request.
    return problem(400, "Bad request", f"the request is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                                        "send UTF-8 encoded JSON")


def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "Internal error", "the server failed to answer; the error was logged")


def _quota(_: Request, exc: QuotaExceeded) -> Response:
    return problem(429, "Too many requests", str(exc), headers={"Retry-After": str(exc.retry_after_s)}, quota=exc.quota)


EXCEPTION_HANDLERS = {
    ValidationException: _validation,
    NotAuthorizedException: _http,
    HTTPException: _http,
    NotFound: lambda _, exc: problem(404, "Not found", str(exc)),
    InvalidInput: lambda _, exc: problem(422, "Invalid request", str(exc),
                                         errors=[{"field": exc.field, "message": str(exc)}]),
    Conflict: lambda _, exc: problem(409, "Conflict", str(exc)),
    Forbidden: lambda _, exc: problem(403, "Forbidden", str(exc)),
    IndexNotReady: lambda _, exc: problem(503, "Index not ready", str(exc)),
    QuotaExceeded: _quota,
    IndexEngineError: _engine,
    RecursionError: _too_deep,
    UnicodeDecodeError: _not_utf8,
    Exception: _unexpected,
}
