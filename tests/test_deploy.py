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


@pytest.fixture()
def postgres():
    """A throwaway PostgreSQL server on a free loopback port (skipped where none is installed)."""
    import os
    import pwd
    import socket
    import tempfile

    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL server installed here (initdb, pg_ctl)")
    # Not under pytest's tmp_path: the postgres user could not traverse root's private folders.
    tmp_path = Path(tempfile.mkdtemp(prefix="lodestar-pg-"))
    data, sockets = tmp_path / "pgdata", tmp_path / "pgsock"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user to run PostgreSQL as")
        shutil.chown(tmp_path, "postgres")
        shutil.chown(sockets, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run([*as_user, initdb, "-D", str(data), "-U", "dagster", "--auth=trust"], check=True,
                   capture_output=True, timeout=120)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-w", "-l", str(tmp_path / "pg.log"), "-o",
                    f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1", "start"], check=True,
                   capture_output=True, timeout=120)
    createdb = shutil.which("createdb") or str(Path(initdb).with_name("createdb"))
    subprocess.run([*as_user, createdb, "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "dagster"], check=True,
                   capture_output=True, timeout=60)
    try:
        yield port
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_deployed_instance_keeps_runs_in_postgres(postgres, tmp_path, monkeypatch):
    """deploy/dagster.yaml against a real PostgreSQL: a materialization's run and its tenant
    partition are stored there (the port is the only change to the file)."""
    from dagster import DagsterInstance, DagsterRunStatus

    from lodestar import demo
    from lodestar.cdp import cdp_session
    from lodestar.importer import import_files
    from lodestar.settings import Settings
    from pipelines.run import materialize_in_process

    for key, value in {**ENV, "DAGSTER_PG_HOST": "127.0.0.1", "LODESTAR_EMBED_MODEL": "hashing-64"}.items():
        monkeypatch.setenv(key, value)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text().replace("port: 5432", f"port: {postgres}"))
    settings = Settings(data_dir=tmp_path / "var", embed_model="hashing-64")
    with cdp_session(settings) as store:
        store.create_tenant("acme")
        import_files(store, settings, "acme", demo.write_demo(tmp_path / "in", "shop", n_items=24, n_users=6))
    with DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert materialize_in_process(str(settings.data_dir), "acme", instance).success
    with DagsterInstance.from_config(str(home)) as reopened:  # read back from the database
        runs = reopened.get_runs()
        assert [r.status for r in runs] == [DagsterRunStatus.SUCCESS]
        assert reopened.get_dynamic_partitions("tenants") == ["acme"]
