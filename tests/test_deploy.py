"""deploy/: the compose file and the Postgres-backed Dagster instance config are valid."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ENV = {"DAGSTER_PG_HOST": "postgres", "DAGSTER_PG_DB": "dagster", "DAGSTER_PG_USERNAME": "dagster",
       "DAGSTER_PG_PASSWORD": "secret"}


def test_dagster_instance_config_is_valid_and_uses_postgres(monkeypatch):
    from dagster import QueuedRunCoordinator, instance_for_test, job, op, validate_run_config
    from dagster_postgres import DagsterPostgresStorage  # the storage class the instance names is installed

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    # Opening Postgres storage needs a database, so the storage block is validated against the
    # storage class's own schema, and the rest of the file against Dagster's instance schema.
    storage = config.pop("storage")
    assert list(storage) == ["postgres"]  # the instance schema's name for dagster_postgres.DagsterPostgresStorage

    @op(config_schema=DagsterPostgresStorage.config_type())
    def postgres_storage() -> None:
        """Never runs: only its config schema, the storage's, is used."""

    @job
    def storage_config() -> None:
        postgres_storage()

    validate_run_config(storage_config, {"ops": {"postgres_storage": {"config": storage["postgres"]}}})
    with instance_for_test(overrides=config) as instance:  # validates against Dagster's instance schema
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    assert config["concurrency"]["runs"]["tag_concurrency_limits"][0]["key"] == "dagster/partition"


def test_compose_file_has_every_part_and_chooses_adapters_by_environment():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"arangodb", "qdrant", "postgres", "dagster-webserver", "dagster-daemon", "api", "cdp-init"} <= set(services)
    assert services["api"]["deploy"]["replicas"] == 2
    lodestar = ["api", "dagster-webserver", "dagster-daemon", "cdp-init"]
    assert len({services[s]["image"] for s in lodestar}) == 1  # one image; only the environment differs
    for name in lodestar:
        env = services[name]["environment"]
        assert env["LODESTAR_ARANGO_URL"].startswith("http://arangodb") and env["LODESTAR_QDRANT_URL"].startswith("http://qdrant")
        assert env["DAGSTER_HOME"] == "/opt/dagster/home"


def _compose_command() -> list[str] | None:
    """``docker compose`` (the plugin) or ``docker-compose`` (standalone), whichever answers
    ``version``: a ``docker`` CLI may be installed without the compose plugin."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        try:
            if subprocess.run([*command, "version"], capture_output=True, timeout=30).returncode == 0:
                return command
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def test_docker_compose_parses_the_file():
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` (docker's compose plugin) nor `docker-compose` works here")
    result = subprocess.run([*command, "-f", str(DEPLOY / "compose.yaml"), "--env-file", str(DEPLOY / ".env.example"),
                             "config", "--quiet"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
