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
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.instance.ref import InstanceRef

    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    config, _ = dagster_instance_config(str(DEPLOY))  # validates against Dagster's instance schema
    assert config["concurrency"]["runs"]["tag_concurrency_limits"][0]["key"] == "dagster/partition"
    ref = InstanceRef.from_dir(str(DEPLOY))
    assert ref.storage_data.module_name == "dagster_postgres" and ref.storage_data.class_name == "DagsterPostgresStorage"
    __import__("dagster_postgres")  # the storage class the instance names is installed


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


@pytest.mark.skipif(not (shutil.which("docker-compose") or shutil.which("docker")), reason="no docker compose here")
def test_docker_compose_parses_the_file():
    command = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
    result = subprocess.run([*command, "-f", str(DEPLOY / "compose.yaml"), "--env-file", str(DEPLOY / ".env.example"),
                             "config", "--quiet"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0 and "is not a docker command" in result.stderr:
        pytest.skip("docker is installed without the compose plugin")
    assert result.returncode == 0, result.stderr
