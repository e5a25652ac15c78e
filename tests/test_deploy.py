"""deploy/: the compose file and the Postgres-backed Dagster instance config are valid."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ENV = {"DAGSTER_PG_HOST": "postgres", "DAGSTER_PG_DB": "dagster", "DAGSTER_PG_USERNAME": "dagster",
       "DAGSTER_PG_PASSWORD": "secret"}


def test_dagster_instance_config_is_valid_and_uses_postgres(monkeypatch):
    from dagster import (
        QueuedRunCoordinator,
        instance_for_test,
        job,
        op,
        validate_run_config,
    )
    from dagster_postgres import (
        DagsterPostgresStorage,  # the storage class the instance names is installed
    )

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


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
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


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
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


# -- the load balancer (deploy/nginx.conf) ---------------------------------------------------------

NGINX_TOKEN = re.compile(r"""#[^\n]*|'[^']*'|"[^"]*"|[{};]|[^\s{};]+""")


def parse_nginx(text: str) -> list[tuple[str, list[str], list | None]]:
    """nginx's configuration as ``(directive, arguments, block or None)`` trees; comments dropped,
    quotes removed from arguments."""
    tokens = [t for t in NGINX_TOKEN.findall(text) if not t.startswith("#")]

    def block(start: int) -> tuple[list, int]:
        out, args, i = [], [], start
        while i < len(tokens):
            token, i = tokens[i], i + 1
            if token == ";":
                out.append((args[0], args[1:], None))
                args = []
            elif token == "{":
                children, i = block(i)
                out.append((args[0], args[1:], children))
                args = []
            elif token == "}":
                return out, i
            else:
                args.append(token[1:-1] if token[0] in "'\"" else token)
        assert not args, f"unterminated directive {args}"
        return out, i

    return block(0)[0]


def _all(tree: list, name: str, *args: str) -> list[tuple[str, list[str], list | None]]:
    return [d for d in tree if d[0] == name and d[1][:len(args)] == list(args)]


def _one(tree: list, name: str, *args: str) -> tuple[str, list[str], list | None]:
    found = _all(tree, name, *args)
    assert len(found) == 1, f"expected one `{name} {' '.join(args)}`, found {len(found)}"
    return found[0]


def _bytes(size: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    return int(size[:-1]) * units[size[-1].lower()] if size[-1].lower() in units else int(size)


def _seconds(duration: str) -> float:
    return float(duration[:-1]) if duration.endswith("s") else float(duration)


def _api_limits(compose: dict):
    """The request limits the compose file gives the API replicas."""
    from serving.limits import RequestLimits

    return RequestLimits.from_env({k: str(v) for k, v in compose["services"]["api"]["environment"].items()})


def test_nginx_fronts_the_api_replicas_with_their_own_limits():
    text = (DEPLOY / "nginx.conf").read_text()
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    limits = _api_limits(compose)
    http = _one(parse_nginx(text), "http")[2]

    # The upstream is the api service, with passive health checks; its idle connections are dropped
    # before the API's own keep-alive closes them.
    upstream = _one(http, "upstream", "lodestar_api")[2]
    (_, (address, *params), _), = _all(upstream, "server")
    api = compose["services"]["api"]
    assert address == f"api:{api['command'][api['command'].index('--port') + 1]}"
    params = dict(p.split("=") for p in params)
    assert int(params["max_fails"]) >= 1 and _seconds(params["fail_timeout"]) > 0
    assert _seconds(_one(upstream, "keepalive_timeout")[1][0]) < limits.keep_alive_s

    # Header and body limits and client timeouts are the API's.
    assert _bytes(_one(http, "client_max_body_size")[1][0]) == limits.max_body_bytes
    number, size = _one(http, "large_client_header_buffers")[1]
    assert _bytes(size) == limits.max_header_bytes and int(number) == 1  # one buffer: a total, not per line
    assert _seconds(_one(http, "client_header_timeout")[1][0]) == limits.header_timeout_s
    assert _seconds(_one(http, "client_body_timeout")[1][0]) == limits.body_timeout_s
    assert _seconds(_one(http, "keepalive_timeout")[1][0]) == limits.keep_alive_s

    server = _one(http, "server")[2]
    assert _one(server, "listen")[1] == ["8000"]
    for timeout in ("proxy_connect_timeout", "proxy_send_timeout", "proxy_read_timeout"):
        assert _seconds(_one(server, timeout)[1][0]) > 0
    retried_on = _one(server, "proxy_next_upstream")[1]
    assert "non_idempotent" not in retried_on and "http_503" not in retried_on  # never re-send a POST
    assert _one(server, "proxy_set_header", "X-Request-ID")
    for path in (["/"], ["=", "/health"]):
        assert _one(_one(server, "location", *path)[2], "proxy_pass")[1] == ["http://lodestar_api"]
    assert re.search(r"^\s*#\s*location /console/ \{", text, re.MULTILINE)  # the console's place, for later
    # nginx's own refusals say the same limits, as problem details.
    too_large = _one(server, "location", "@body_too_large")[2]
    assert str(limits.max_body_bytes) in _one(too_large, "return")[1][1]
    assert str(limits.max_header_bytes) in _one(_one(server, "location", "@headers_too_large")[2], "return")[1][1]


def test_compose_publishes_one_address_through_nginx():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    nginx, api = services["nginx"], services["api"]
    assert "ports" not in api and api["deploy"]["replicas"] == 2  # replicas reached through nginx only
    assert [p.rsplit(":", 2)[-2:] for p in nginx["ports"]] == [["8000", "8000"]]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert nginx["depends_on"]["api"]["condition"] == "service_healthy"  # nginx resolves `api` as it starts
    assert nginx["image"].startswith("nginx:")
    assert "/health" in " ".join(nginx["healthcheck"]["test"])


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def nginx_binary() -> str:
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if binary is None:
        pytest.skip("no nginx binary here (Debian: apt-get install nginx-light)")
    return binary


def _local_nginx_conf(tmp_path: Path, upstream_ports: list[int], port: int) -> Path:
    """deploy/nginx.conf with its upstream replaced by loopback ports and its own files under
    ``tmp_path``; nothing else changes."""
    text = (DEPLOY / "nginx.conf").read_text()
    line = re.search(r"server api:8000([^;]*);", text)
    servers = "\n        ".join(f"server 127.0.0.1:{p}{line.group(1)};" for p in upstream_ports)
    text = text.replace(line.group(0), servers).replace("listen 8000;", f"listen 127.0.0.1:{port};")
    for temp in ("client_body", "proxy"):
        text = text.replace("http {", f"http {{\n    {temp}_temp_path {tmp_path / temp};", 1)
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path / 'nginx.pid'};\n{text}")
    return conf


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
def test_nginx_accepts_the_config(nginx_binary, tmp_path):
    conf = _local_nginx_conf(tmp_path, [_free_port()], _free_port())
    result = subprocess.run([nginx_binary, "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(conf)],
                            capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0 and "Permission denied" in result.stderr:
        pytest.skip(f"nginx cannot open its compiled-in paths as this user: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr


class _Replica:
    """A stand-in API replica on a loopback port: answers every request with its name, the request's
    body size and the X-Request-ID it was given."""

    def __init__(self, name: str) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        replica = self
        self.stopped = False

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                if replica.stopped:  # a kept-alive connection of a stopped replica: dropped unanswered
                    self.close_connection = True
                    return
                size = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(size)
                body = json.dumps({"replica": name, "body": size,
                                   "request_id": self.headers.get("X-Request-ID")}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.stopped = True
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow  # starts real processes (servers, runs, databases): CI runs it, the fast tier skips it
def test_nginx_spreads_requests_over_live_replicas_and_refuses_what_the_api_would(nginx_binary, tmp_path):
    """The real nginx with deploy/nginx.conf in front of two stand-in replicas and one dead one."""
    import json
    import time

    import httpx

    replicas = [_Replica("a"), _Replica("b")]
    port = _free_port()
    conf = _local_nginx_conf(tmp_path, [replicas[0].port, replicas[1].port, _free_port()], port)
    process = subprocess.Popen([nginx_binary, "-e", "stderr", "-p", str(tmp_path), "-c", str(conf),
                                "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                error = process.stderr.read().decode()
                if "Permission denied" in error:
                    pytest.skip(f"nginx cannot open its compiled-in paths as this user: {error.strip()}")
                raise AssertionError(f"nginx exited: {error}")
            try:
                httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)

        # Passive health checks: the dead replica costs no failed request, and both live ones serve.
        answers = [httpx.get(f"{base}/health", timeout=5) for _ in range(12)]
        assert [a.status_code for a in answers] == [200] * 12
        assert {a.json()["replica"] for a in answers} == {"a", "b"}
        assert all(a.json()["request_id"] for a in answers)  # one is made when the client sent none
        given = httpx.get(f"{base}/v1/anything", headers={"X-Request-ID": "req-123"}, timeout=5)
        assert given.json()["request_id"] == "req-123"

        # Bodies: up to 1 MiB through; past it 413 from nginx, as problem details.
        assert httpx.post(f"{base}/v1/events", content=b"x" * 1024 * 1024, timeout=10).json()["body"] == 1024 * 1024
        refused = httpx.post(f"{base}/v1/events", content=b"x" * (1024 * 1024 + 1), timeout=10)
        assert refused.status_code == 413 and refused.headers["content-type"] == "application/problem+json"
        assert json.loads(refused.text)["status"] == 413

        # Headers: 32 KiB in all, not per line.
        assert httpx.get(f"{base}/health", headers={"X-Big": "x" * 20_000}, timeout=5).status_code == 200
        for headers in ({"X-Big": "x" * 40_000}, {"X-Big": "x" * 20_000, "X-Also-Big": "y" * 20_000}):
            too_large = httpx.get(f"{base}/health", headers=headers, timeout=5)
            assert too_large.status_code == 431 and too_large.json()["status"] == 431

        # No replica left: a problem answer, not nginx's HTML page.
        for replica in replicas:
            replica.stop()
        replicas = []
        gone = httpx.get(f"{base}/health", timeout=10)
        assert gone.status_code == 502 and gone.json()["title"] == "Bad gateway" and gone.headers["retry-after"]
    finally:
        process.terminate()
        process.wait(timeout=10)
        for replica in replicas:
            replica.stop()
