"""The OpenAPI document (served at ``/schema``): bearer security, the error answers every route may
give as problem documents, and the filter language's schema."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme

from lodestar import __version__

BEARER = "bearerAuth"
SECURED: list[dict[str, list[str]]] = [{BEARER: []}]


class FieldError(msgspec.Struct):
    field: str | None
    message: str
    source: str | None = None


class Problem(msgspec.Struct, omit_defaults=True):
    """An error, as RFC 9457 problem details (``application/problem+json``)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] = []
    quota: str | None = None  # with 429: tenant_rate, key_rate, tenant_concurrency or events_per_day


_MEANINGS = {
    400: "The request could not be read (not UTF-8, nested too deeply, malformed JSON)",
    401: "No API key, or one that is unknown, revoked or mistyped",
    403: "The key lacks the scope this route needs (or is the operator key on a tenant route)",
    404: "The item, user, key or tenant does not exist",
    409: "The request clashes with existing state",
    413: "The request body is larger than the server accepts",
    415: "The body is not sent as application/json",
    422: "A parameter or body field is invalid; `errors` names each field",
    429: "Past a quota of the tenant or the key (`quota` says which); retry after the Retry-After header's seconds",
    503: "Not ready (no published index for the tenant yet, or the model is loading) or overloaded; see Retry-After",
}


def problem_responses(*codes: int) -> dict[int, ResponseSpec]:
    """The problem-document answers a route documents, by status code."""
    return {code: ResponseSpec(data_container=Problem, media_type="application/problem+json",
                               description=_MEANINGS[code], generate_examples=False) for code in codes}


# What a route without a body (READS) and one with a JSON body (WRITES) may answer besides success.
READS = problem_responses(401, 403, 422, 429, 503)
WRITES = problem_responses(400, 401, 403, 413, 415, 422, 429, 503)
NOT_FOUND = problem_responses(404)


_NUMBER_OR_TEXT: dict[str, Any] = {"oneOf": [{"type": "string"}, {"type": "number"}]}
FILTER_OBJECT: dict[str, Any] = {
    "type": "object",
    "description": "Fields combine with AND; a list matches any of its values. Only available items are indexed.",
    "additionalProperties": False,
    "properties": {
        "categories": {"type": "array", "items": {"type": "string"}, "maxItems": 1000},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 1000},
        "available": {"type": "boolean"},
        "attributes": {
            "type": "object",
            "description": "Per attribute: a range (gte, gt, lte, lt), `in`, `eq`, or a bare value (same as eq).",
            "additionalProperties": {"oneOf": [
                _NUMBER_OR_TEXT,
                {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
                    "gte": {"type": "number"}, "gt": {"type": "number"}, "lte": {"type": "number"},
                    "lt": {"type": "number"}, "eq": _NUMBER_OR_TEXT,
                    "in": {"type": "array", "items": _NUMBER_OR_TEXT, "minItems": 1, "maxItems": 1000},
                }},
            ]},
        },
    },
}
# For a body field ``filter: ... | None``: the filter object, or null.
FILTER_SCHEMA: dict[str, Any] = {"oneOf": [FILTER_OBJECT, {"type": "null"}]}


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Lodestar", version=__version__, path="/schema",
        components=Components(security_schemes={
            BEARER: SecurityScheme(type="http", scheme="bearer",
                                   description="A tenant's API key (`lsk_...`), or the operator key on /v1/operator"),
        }),
    )
