"""Schemathesis over ``/schema``: generated requests to every documented operation, with a tenant's
admin key, a read-only key, the operator key and no key, against a published tiny tenant (hashing
embedder). Every answer must be documented (status code, content type, headers, body schema) and
none may be a server error. Bounded: a fixed number of examples per operation, no deadline."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest
import schemathesis
from dagster import DagsterInstance, materialize
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from litestar.testing import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from assets.partitions import TENANTS
from assets.resources import LodestarResource
from lodestar import demo
from lodestar.cdp import cdp_session
from lodestar.importer import import_files
from lodestar.keys import issue_key
from lodestar.settings import Settings
from pipelines.definitions import all_assets
from serving.app import create_app

MODEL = "hashing-64"
OPERATOR_KEY = "op-" + "s" * 40
CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection)
KEYS: dict[str, str] = {}
EXAMPLES = 12


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root: Path = tmp_path_factory.mktemp("fuzz")
    settings = Settings(data_dir=root / "var", embed_model=MODEL, admin_key=OPERATOR_KEY)
    with cdp_session(settings) as store:
        store.create_tenant("acme")
        KEYS["admin"] = issue_key(store, "acme")
        KEYS["read"] = issue_key(store, "acme", ("read",))
        import_files(store, settings, "acme", demo.write_demo(root / "in", "shop", n_items=40, n_users=10))
    KEYS["operator"] = OPERATOR_KEY
    KEYS["none"] = ""
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(TENANTS, ["acme"])
        assert materialize(all_assets(), partition_key="acme", instance=instance,
                           resources={"lodestar": LodestarResource(data_dir=str(settings.data_dir), embed_model=MODEL)},
                           ).success
    application = create_app(settings)
    with TestClient(application):  # runs the lifespan: stores opened, model loaded
        application.state.embedder_loaded.wait(10)
        logging.getLogger("lodestar.access").setLevel(logging.WARNING)
        yield application


def test_every_answer_is_documented_and_none_is_a_server_error(app):
    """Each operation in turn (schemathesis' lazy pytest fixture does not run on pytest 9), with
    valid (positive) and invalid (negative) generated requests, each sent with every kind of
    credential: ``EXAMPLES`` per operation and mode, derandomized, so the run is bounded and repeatable."""
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation, mode in itertools.product(operations, GenerationMode):
        @given(case=operation.as_strategy(mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def call(case) -> None:
            for who in ("admin", "read", "operator", "none"):
                headers = {"Authorization": f"Bearer {KEYS[who]}"} if KEYS[who] else {}
                case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            call()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to get wrong in a route without input
