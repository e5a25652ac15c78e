"""The OpenAPI document's configuration (served at ``/schema``)."""

from __future__ import annotations

from litestar.openapi import OpenAPIConfig

from lodestar import __version__


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(title="Lodestar", version=__version__, path="/schema")
