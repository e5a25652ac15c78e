"""The ``lodestar`` command line: argument parsing and one thin function per command, which wire
the domain core (``lodestar``), the Dagster runs (``pipelines.run``) and the API server
(``serving.server``) together. Every subcommand has ``--help``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from lodestar.errors import LodestarError
from lodestar.settings import Settings


def _say(message: str) -> None:
    print(message, flush=True)


def _cli_actor() -> str:
    """Who changed something from the CLI, for the audit log: ``cli:<login>``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container with an unnamed uid)
        return f"cli:uid{os.getuid()}"


def _utc(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp)) if stamp else "-"


# -- tenants -------------------------------------------------------------------------------------
def cmd_tenants_create(args: argparse.Namespace, settings: Settings) -> int:
    from lodestar.cdp import ALL_SCOPES, OPERATOR_LOG, audit_entry, cdp_session
    from lodestar.keys import create_key

    with cdp_session(settings) as store:
        tenant = store.create_tenant(args.name)
        store.append_audit(OPERATOR_LOG, audit_entry(_cli_actor(), "tenant.create", args.name))
        key = create_key(store, args.name, ALL_SCOPES, "", _cli_actor())
    if args.json:
        print(json.dumps({"tenant": tenant["name"], "api_key": key}))
    else:
        _say(f"Created tenant {tenant['name']!r}.")
        _say(f"API key (shown once, store it now): {key}")
    return 0


def cmd_tenants_list(args: argparse.Namespace, settings: Settings) -> int:
    from lodestar.cdp import cdp_session
    from lodestar.index import open_index_store

    index_store = open_index_store(settings)
    with cdp_session(settings) as store:
        rows = [
            {
                "name": t["name"],
                "items": store.count(t["name"], "items"),
                "users": store.count(t["name"], "users"),
                "events": store.count(t["name"], "events"),
                "index_version": index_store.published(t["name"]),
            }
            for t in store.list_tenants()
        ]
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        _say("No tenants yet. Create one with `lodestar tenants create NAME`.")
    else:
        _say(f"{'tenant':<20} {'items':>8} {'users':>8} {'events':>9}  index version")
        for r in rows:
            _say(f"{r['name']:<20} {r['items']:>8} {r['users']:>8} {r['events']:>9}  {r['index_version'] or '-'}")
    return 0


def cmd_tenants_key(args: argparse.Namespace, settings: Settings) -> int:
    from lodestar.cdp import cdp_session, require_tenant
    from lodestar.keys import create_key, parse_scopes

    scopes = parse_scopes(args.scope)
    with cdp_session(settings) as store:
        require_tenant(store, args.name)
        key = create_key(store, args.name, scopes, args.label, _cli_actor())
    if args.json:
        print(json.dumps({"tenant": args.name, "api_key": key, "scopes": list(scopes)}))
    else:
        print(f"New API key for {args.name!r} with scopes {', '.join(scopes)} (shown once): {key}")
    return 0


def cmd_tenants_keys(args: argparse.Namespace, settings: Settings) -> int:
    from lodestar.cdp import cdp_session, require_tenant

    with cdp_session(settings) as store:
        require_tenant(store, args.name)
        keys = store.list_api_keys(args.name)
    if args.json:
        print(json.dumps(keys))
        return 0
    _say(f"{'key id':<18} {'scopes':<20} {'created (UTC)':<20} {'revoked (UTC)':<20} label")
    for k in keys:
        _say(f"{k['key_id']:<18} {','.join(k['scopes']):<20} {_utc(k['created_at']):<20} "
             f"{_utc(k['revoked_at']):<20} {k['label']}")
    return 0


def cmd_tenants_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from lodestar.cdp import cdp_session, require_tenant
    from lodestar.keys import revoke_key

    with cdp_session(settings) as store:
        require_tenant(store, args.name)
        revoke_key(store, args.name, args.key_id, _cli_actor(), f"`lodestar tenants keys {args.name}`")
    _say(f"Revoked API key {args.key_id} of {args.name!r}: every server refuses it from the next request on.")
    return 0


def cmd_tenants_config(args: argparse.Namespace, settings: Settings) -> int:
    from lodestar.cdp import cdp_session, require_tenant
    from lodestar.config_versions import CONFIG_ACTIONS, restore_version, store_config
    from lodestar.errors import InvalidInput
    from lodestar.tenant_config import deep_merge, effective_config, validate_config

    if sum([args.history, args.restore is not None, args.set is not None]) > 1:
        raise InvalidInput("give one of --set, --history and --restore")
    with cdp_session(settings) as store:
        tenant = require_tenant(store, args.name)
        if args.history:
            for entry in store.read_audit(args.name, 500, action_prefix=CONFIG_ACTIONS):
                print(json.dumps({k: entry[k] for k in ("id", "at", "actor", "action", "after")}))
            return 0
        if args.restore is not None:
            restore_version(store, tenant, args.restore, _cli_actor(), f"`lodestar tenants config {args.name} --history`")
            tenant = require_tenant(store, args.name)
        elif args.set is not None:
            text = Path(args.set).read_text() if Path(args.set).is_file() else args.set
            try:
                update = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InvalidInput(f"--set is not valid JSON ({exc.msg} at column {exc.colno})") from None
            merged = validate_config(deep_merge(tenant["config"] if args.merge else {}, update))
            if args.preview:
                return _preview_config(args, settings, store, tenant, merged)
            store_config(store, tenant, merged, _cli_actor())
            tenant = require_tenant(store, args.name)
        elif args.preview:
            raise InvalidInput("--preview shows what --set would change: give both")
    print(json.dumps({"stored": tenant["config"], "effective": effective_config(tenant["config"]).as_dict()}, indent=2))
    return 0


def _preview_config(args: argparse.Namespace, settings: Settings, store, tenant: dict, proposed: dict) -> int:
    """``tenants config NAME --set JSON --preview``: the change's effect on a sample of the tenant's
    users (lodestar.preview), printed; nothing is stored."""
    from lodestar.embed import Embedder
    from lodestar.errors import InvalidInput
    from lodestar.index import open_index_store
    from lodestar.lineage.files import TenantFiles
    from lodestar.preview import active_users, preview_change, sample_users
    from lodestar.tenant_config import effective_config

    if not 1 <= args.k <= 100 or args.sample < 1:
        raise InvalidInput("--k must be 1 to 100 and --sample at least 1")
    published = open_index_store(settings).open_published(args.name)
    files = TenantFiles(settings.tenant_dir(args.name))
    if published is None or not files.user_features.is_file():
        raise InvalidInput(f"tenant {args.name!r} has no published index to preview on; "
                           f"run `lodestar materialize --tenant {args.name}` first")
    users = sample_users(active_users(settings, args.name), args.sample)
    embedder = Embedder(settings.embed_model, settings.cache_dir, backend=settings.embed_backend,
                        models_dir=settings.models_dir)
    try:
        result = preview_change(published, store, embedder, args.name, effective_config(tenant["config"]),
                                effective_config(proposed), users, args.k, args.user)
    finally:
        published.close()
    print(json.dumps({"preview": result.as_dict(), "proposed": proposed, "stored": False}, indent=2))
    # The summary goes to stderr, so that stdout stays one JSON document for a script to read.
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    say(f"{result.lists_changed} of {result.users} sampled users' top-{args.k} lists change "
         f"({result.sets_changed} in their items); nothing was stored. Run again without --preview to store it.")
    if result.pipeline_keys:
        say(f"{', '.join(result.pipeline_keys)} also change what the next materialization builds; "
             "this preview shows their effect at request time only.")
    return 0


# -- cdp -----------------------------------------------------------------------------------------
def cmd_cdp_import(args: argparse.Namespace, settings: Settings) -> int:
    from lodestar.cdp import cdp_session
    from lodestar.errors import InvalidInput
    from lodestar.importer import import_files, import_movielens

    with cdp_session(settings) as store:
        if args.format == "movielens":
            if len(args.paths) != 1:
                raise InvalidInput("--format movielens needs the MovieLens directory: lodestar cdp import --tenant T --format movielens DIR")
            summaries = [import_movielens(store, settings, args.tenant, Path(args.paths[0]), progress=_say)]
        elif args.format != "canonical":
            from lodestar.connectors.importing import import_source

            if not args.paths or args.items or args.users or args.events:
                why = "takes files or directories as arguments, not --items/--users/--events" \
                    if args.items or args.users or args.events else "needs the files (or directories) to import"
                raise InvalidInput(f"--format {args.format} {why}: lodestar cdp import --tenant T --format {args.format} "
                                   "PATH [PATH ...]")
            summaries = [s for path in args.paths
                         for s in import_source(store, settings, args.tenant, args.format, Path(path), progress=_say)]
        else:
            files = {e: Path(p) for e, p in (("items", args.items), ("users", args.users), ("events", args.events)) if p}
            if not files or args.paths:
                raise InvalidInput("give --items, --users and/or --events (or --format NAME with files: movielens, "
                                   "ga4, xdm, segment, google-merchant)")
            summaries = [import_files(store, settings, args.tenant, files, progress=_say)]
    for summary in summaries:
        _say(f"Summary and reject files: {summary.directory}")
    accepted, rejected = sum(s.accepted for s in summaries), sum(s.rejected for s in summaries)
    # Exit 1 when rows were given and none was accepted (a wrong file or format, most likely);
    # 0 when some were accepted, since those are committed and the rejects are reported.
    if rejected and not accepted:
        _say(f"No row was accepted ({rejected} rejected). Fix the rejected rows (see the reject files) and import again.")
        return 1
    if rejected:
        _say(f"{rejected} rows were rejected; the accepted rows are committed. Fix the rejected rows and re-import them.")
    return 0


def cmd_cdp_init(args: argparse.Namespace, settings: Settings) -> int:
    """Create the CDP's collections and indexes (ArangoDB) or tables (SQLite); safe to run again."""
    if not settings.arango_url:
        from lodestar.cdp import cdp_session

        with cdp_session(settings):  # the SQLite store creates its schema when opened
            pass
        print(f"SQLite CDP store ready at {settings.cdp_path} (set LODESTAR_ARANGO_URL to initialize ArangoDB)")
        return 0
    from lodestar.cdp.arango import connect, init_schema
    from lodestar.errors import InvalidInput

    try:
        db = connect(settings.arango_url, settings.arango_database, settings.arango_user, settings.arango_password,
                     create=True)
        created = init_schema(db)
    except Exception as exc:  # python-arango's errors carry the server's message
        raise InvalidInput(f"cannot initialize ArangoDB at {settings.arango_url} "
                           f"(database {settings.arango_database!r}): {exc}") from None
    print(f"ArangoDB database {settings.arango_database!r} at {settings.arango_url}: "
          + (", ".join(created) + " created" if created else "already initialized"))
    return 0


# -- console members -----------------------------------------------------------------------------
def cmd_members_add(args: argparse.Namespace, settings: Settings) -> int:
    from lodestar.accounts import add_member, check_role, ensure_account
    from lodestar.cdp import cdp_session
    from lodestar.errors import InvalidInput

    if (args.tenant is None) == (not args.operator):
        raise InvalidInput("give --tenant NAME (with --role) or --operator")
    role = check_role(args.role) if args.tenant else None
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    with cdp_session(settings) as store:
        made = ensure_account(store, args.email, password, _cli_actor(), operator=True if args.operator else None)
        if args.tenant:
            add_member(store, args.tenant, made.email, role, _cli_actor())
    where = "an operator (every tenant)" if args.operator else f"{role} of tenant {args.tenant!r}"
    _say(f"{made.email} is {where}.")
    if made.password:
        _say(f"Password (shown once; sign in at /console and keep it safe): {made.password}")
    return 0


def cmd_members_list(args: argparse.Namespace, settings: Settings) -> int:
    from lodestar.cdp import cdp_session, require_tenant

    with cdp_session(settings) as store:
        if args.tenant:
            require_tenant(store, args.tenant)
            rows = [{**m, "tenant": args.tenant} for m in store.list_members(args.tenant)]
        else:
            rows = [{"email": a["email"], "operator": a["operator"], "roles": store.account_roles(a["email"])}
                    for a in store.list_accounts()]
    if args.json:
        print(json.dumps(rows))
    elif args.tenant:
        for r in rows:
            _say(f"{r['email']:<40} {r['role']:<8} added {_utc(r['added_at'])}")
    else:
        for r in rows:
            roles = ", ".join(f"{t}: {role}" for t, role in r["roles"].items()) or "-"
            _say(f"{r['email']:<40} {'operator' if r['operator'] else '':<9} {roles}")
    return 0


def cmd_members_remove(args: argparse.Namespace, settings: Settings) -> int:
    from lodestar.accounts import check_email, ensure_account, remove_member
    from lodestar.cdp import cdp_session, unknown_account
    from lodestar.errors import InvalidInput

    if (args.tenant is None) == (not args.operator):
        raise InvalidInput("give --tenant NAME or --operator")
    with cdp_session(settings) as store:
        if args.tenant:
            remove_member(store, args.tenant, args.email, _cli_actor())
        else:
            if store.get_account(check_email(args.email)) is None:
                raise unknown_account(args.email)
            ensure_account(store, args.email, None, _cli_actor(), operator=False)
    _say(f"{args.email} is no longer {'an operator' if args.operator else f'a member of {args.tenant!r}'}; "
         "pages and actions refuse them from their next request.")
    return 0


# -- experiments ---------------------------------------------------------------------------------
def _json_arg(text: str, what: str) -> object:
    from lodestar.errors import InvalidInput

    raw = Path(text).read_text() if Path(text).is_file() else text
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON ({exc.msg} at column {exc.colno})") from None


def cmd_experiments(args: argparse.Namespace, settings: Settings) -> int:
    from lodestar.cdp import cdp_session, require_tenant
    from lodestar.experiments import lifecycle

    with cdp_session(settings) as store:
        require_tenant(store, args.tenant)
        if args.experiments_command == "create":
            out = lifecycle.create(store, args.tenant, _json_arg(args.definition, "the definition"), _cli_actor())
            plan = out["plan"]
            _say(f"Experiment {out['name']!r} runs from now: {', '.join(f'{v} needs {n} units' for v, n in plan['units'].items())}"
                 f" (baseline {plan['baseline']['source']}); results show at that horizon, after at least "
                 f"{out['min_days']} days.")
        elif args.experiments_command == "list":
            out = store.list_experiments(args.tenant)
        elif args.experiments_command == "show":
            out = {"experiment": lifecycle.find(store, args.tenant, args.name),
                   "report": lifecycle.report_of(store, args.tenant, args.name)[0]}
        elif args.experiments_command == "stop":
            out = lifecycle.stop(store, args.tenant, args.name, _cli_actor())
        elif args.experiments_command == "traffic":
            out = lifecycle.set_traffic(store, args.tenant, args.name, args.share, _cli_actor())
        else:
            out = {"stored": lifecycle.promote(store, args.tenant, args.name, args.variant, _cli_actor())}
            _say(f"Variant {args.variant!r} is the live configuration (a new version: "
                 f"`lodestar tenants config {args.tenant} --history` lists it, --restore undoes it).")
    print(json.dumps(out, indent=2))
    return 0


# -- advertisers (retail media) ------------------------------------------------------------------
def cmd_advertisers(args: argparse.Namespace, settings: Settings) -> int:
    from lodestar.ads.campaigns import create_advertiser
    from lodestar.cdp import cdp_session, require_tenant

    with cdp_session(settings) as store:
        require_tenant(store, args.tenant)
        if args.advertisers_command == "create":
            advertiser, key = create_advertiser(store, args.tenant, args.name, _cli_actor())
            _say(f"Advertiser {advertiser['id']!r} ({advertiser['name']}) of tenant {args.tenant!r}.")
            _say(f"Its API key (shown once; it sees only this advertiser's line items and spend, under /v1/ads): {key}")
            return 0
        if args.advertisers_command == "report":
            from lodestar.ads.report import report_from_store
            from lodestar.settings import ADS_SECRET_ENV

            rows, lifts = report_from_store(store, args.tenant, settings.secret("ads", ADS_SECRET_ENV))
            chosen = lifts if args.incrementality else rows
            print(json.dumps([r for r in chosen if args.advertiser is None or r["advertiser"] == args.advertiser],
                             indent=2))
            return 0
        rows = [{**a, "line_items": len(store.list_line_items(args.tenant, a["id"]))}
                for a in store.list_advertisers(args.tenant)]
    print(json.dumps(rows, indent=2))
    return 0


# -- materialize, serve, ui, demo ----------------------------------------------------------------
def _materialize(settings: Settings, tenants: list[str], processes: int = 1) -> int:
    from pipelines.run import materialize_in_processes

    outcomes = materialize_in_processes(settings, tenants, processes, say=_say)
    failed = [outcome.tenant for outcome in outcomes if not outcome.success]
    if len(tenants) > 1:
        _say(f"{len(tenants) - len(failed)} of {len(tenants)} tenants materialized"
             + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 0 if not failed else 1


def cmd_materialize(args: argparse.Namespace, settings: Settings) -> int:
    from lodestar.cdp import cdp_session, unknown_tenant
    from lodestar.errors import InvalidInput, UnknownTenant

    with cdp_session(settings) as store:
        known = [t["name"] for t in store.list_tenants()]
    if args.all:
        tenants = known
        if not tenants:
            raise InvalidInput("there are no tenants to materialize; create one with `lodestar tenants create NAME`")
    elif args.tenant:
        if args.tenant not in known:
            raise UnknownTenant(f"{unknown_tenant(args.tenant)}; known tenants: {', '.join(known) or 'none'}")
        tenants = [args.tenant]
    else:
        raise InvalidInput("say which tenant: --tenant NAME or --all")
    return _materialize(settings, tenants, args.processes)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from serving.server import serve

    if args.workers < 1:
        from lodestar.errors import InvalidInput

        raise InvalidInput(f"--workers must be 1 or more, got {args.workers}")
    workers = f", {args.workers} worker processes" if args.workers > 1 else ""
    _say(f"Serving Lodestar on http://{args.host}:{args.port} (data dir {settings.data_dir}{workers}); OpenAPI at /schema")
    serve(settings, args.host, args.port, "info", workers=args.workers)
    return 0


def cmd_ui(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.run import REPO_ROOT, WORKSPACE, dagster_home

    home = dagster_home(settings)
    dagster = shutil.which("dagster") or str(Path(sys.executable).with_name("dagster"))
    _say(f"Dagster UI with DAGSTER_HOME={home}, LODESTAR_DATA_DIR={settings.data_dir}")
    os.environ.update(DAGSTER_HOME=str(home), LODESTAR_DATA_DIR=str(settings.data_dir))
    os.chdir(REPO_ROOT)
    os.execv(dagster, [dagster, "dev", "-w", str(WORKSPACE), "-h", args.host, "-p", str(args.port)])
    return 0  # not reached


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from lodestar import demo
    from lodestar.cdp import cdp_session

    _say(f"Lodestar demo (data dir {settings.data_dir})")
    with cdp_session(settings) as store:
        keys = demo.load_demo_tenants(store, settings, say=_say)
        accounts = demo.demo_accounts(store, list(keys))
        advertisers = demo.demo_retail_media(store)
    if _materialize(settings, list(keys)) != 0:
        return 1
    if args.no_serve:
        for tenant, key in keys.items():
            _say(f"{tenant}: API key {key}")
        for email, password, role in accounts:
            _say(f"console: {email} password {password} ({role})")
        for name, key in advertisers.items():
            _say(f"shop advertiser {name}: API key {key}")
        return 0
    from serving.server import serve

    def announce() -> None:
        for line in demo.announcement(keys, f"http://{args.host}:{args.port}", accounts, advertisers):
            _say(line)

    serve(settings, args.host, args.port, "warning", on_ready=announce)
    return 0


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lodestar", description="Lodestar personalization engine")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tenants = sub.add_parser("tenants", help="create and list tenants").add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    p = tenants.add_parser("create", help="create a tenant and print its API key once")
    p.add_argument("name", help="tenant name: lowercase letters, digits, '-' or '_'")
    p.add_argument("--json", action="store_true", help="print {tenant, api_key} as JSON")
    p.set_defaults(func=cmd_tenants_create)
    p = tenants.add_parser("list", help="list tenants with their counts and published index version")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_tenants_list)
    p = tenants.add_parser("key", help="issue an additional API key for a tenant (shown once)")
    p.add_argument("name")
    p.add_argument("--scope", metavar="SCOPES", help="comma-separated: read (recommendations, similar items, search; "
                   "safe inside a browser or app), events (events, preferences), admin (erase users, manage keys); "
                   "default: all three")
    p.add_argument("--label", default="", help="a note to tell keys apart in `tenants keys`")
    p.add_argument("--json", action="store_true", help="print {tenant, api_key, scopes} as JSON")
    p.set_defaults(func=cmd_tenants_key)
    p = tenants.add_parser("keys", help="list a tenant's API keys (ids, scopes, revoked or not; never the secret)")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_tenants_keys)
    p = tenants.add_parser("revoke", help="revoke one of a tenant's API keys at once")
    p.add_argument("name")
    p.add_argument("key_id", help="the key id from `tenants keys` (the part after lsk_ and before the next _)")
    p.set_defaults(func=cmd_tenants_revoke)

    p = tenants.add_parser(
        "config", help="show a tenant's configuration, or change it with --set",
        description="Prints the stored and the effective (defaults overlaid) configuration. --set takes JSON "
                    "(or a file of JSON), e.g. '{\"ranking\": {\"content\": 0.2}}'; it is validated before it is stored "
                    "and takes effect at the next materialization (model settings) or request (ranking weights).",
    )
    p.add_argument("name")
    p.add_argument("--set", metavar="JSON", help="configuration to store (merged into the stored one)")
    p.add_argument("--replace", dest="merge", action="store_false", help="with --set: replace instead of merging")
    p.add_argument("--preview", action="store_true",
                   help="with --set: store nothing; show how the change would move the recommendations of a sample "
                        "of the tenant's users (lists changed, items entering and leaving, mean rank shift)")
    p.add_argument("--sample", type=int, default=200, metavar="N", help="with --preview: users sampled (default 200)")
    p.add_argument("--user", metavar="ID", help="with --preview: show this user's two lists side by side")
    p.add_argument("--k", type=int, default=10, help="with --preview: list length (default 10)")
    p.add_argument("--history", action="store_true",
                   help="every stored configuration, newest first (JSON lines: id, time, who, what)")
    p.add_argument("--restore", metavar="ID", help="store again the configuration of version ID (from --history)")
    p.set_defaults(func=cmd_tenants_config)

    members = sub.add_parser("members", help="console accounts: operators and tenant members with roles") \
        .add_subparsers(dest="members_command", required=True, metavar="ACTION")
    p = members.add_parser("add", help="create a console account (password shown once) and give it a role",
                           description="Roles: viewer (read only), editor (configuration, rules, materialize), owner "
                                       "(also members, API keys, erasure). --operator: every tenant.")
    p.add_argument("email")
    p.add_argument("--tenant", help="the tenant the role is in")
    p.add_argument("--role", default="viewer", help="viewer, editor or owner (default viewer)")
    p.add_argument("--operator", action="store_true", help="make the account an operator (all tenants)")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of stdin (else a new account gets a generated one)")
    p.set_defaults(func=cmd_members_add)
    p = members.add_parser("list", help="every account with its roles, or a tenant's members")
    p.add_argument("--tenant")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_members_list)
    p = members.add_parser("remove", help="take a tenant role (or the operator role) from an account")
    p.add_argument("email")
    p.add_argument("--tenant")
    p.add_argument("--operator", action="store_true")
    p.set_defaults(func=cmd_members_remove)

    experiments = sub.add_parser("experiments", help="A/B tests of a tenant's configuration") \
        .add_subparsers(dest="experiments_command", required=True, metavar="ACTION")
    p = experiments.add_parser("create", help="start an experiment from a JSON definition (or a file of it)",
                               description="Fields: name, hypothesis, placements, layer, traffic, variants (control "
                                           "first; others with an overlay of ranking, rules, event_weights, diversity, "
                                           "collab.candidates), start, end, primary_metric, guardrails, mde, alpha, "
                                           "power, min_days, baseline. See the README's Experiments section.")
    p.add_argument("tenant")
    p.add_argument("definition", metavar="JSON")
    p.set_defaults(func=cmd_experiments)
    for action, helptext in (("list", "every experiment of a tenant"), ("show", "an experiment and its last report"),
                             ("stop", "stop an experiment now"),
                             ("traffic", "change the share of units in a running experiment (0 to 1)"),
                             ("promote", "make a variant the live configuration and stop the experiment")):
        p = experiments.add_parser(action, help=helptext)
        p.add_argument("tenant")
        if action != "list":
            p.add_argument("name")
        if action == "promote":
            p.add_argument("variant")
        if action == "traffic":
            p.add_argument("share", type=float)
        p.set_defaults(func=cmd_experiments)

    advertisers = sub.add_parser("advertisers", help="a tenant's advertisers (retail media)") \
        .add_subparsers(dest="advertisers_command", required=True, metavar="ACTION")
    p = advertisers.add_parser("create", help="create an advertiser and print its API key once")
    p.add_argument("--tenant", required=True)
    p.add_argument("name", help="the advertiser's display name (its id is made from it)")
    p.set_defaults(func=cmd_advertisers)
    p = advertisers.add_parser("list", help="a tenant's advertisers")
    p.add_argument("--tenant", required=True)
    p.set_defaults(func=cmd_advertisers)
    p = advertisers.add_parser("report", help="spend, clicks and attributed conversions per line item and day, "
                                              "read now from the CDP store (the ads_report asset keeps it for the API)")
    p.add_argument("--tenant", required=True)
    p.add_argument("--advertiser", default=None, help="one advertiser's rows only")
    p.add_argument("--incrementality", action="store_true",
                   help="per campaign: lift over its held-out users, incremental conversions and revenue, iROAS")
    p.set_defaults(func=cmd_advertisers)

    cdp = sub.add_parser("cdp", help="work with the CDP store").add_subparsers(dest="cdp_command", required=True, metavar="ACTION")
    p = cdp.add_parser("init", help="create the CDP collections and indexes (ArangoDB) or tables (SQLite)")
    p.set_defaults(func=cmd_cdp_init)
    p = cdp.add_parser(
        "import",
        help="import items, users and events (JSONL, CSV or Parquet), a MovieLens directory, or a GA4 export, "
             "XDM events, Segment messages or a Merchant feed",
        description="Rows that do not fit go to a reject file with line and reason; good rows are committed; a re-import "
                    "upserts. Exit status: 0 when rows were accepted (rejects, if any, are reported), 1 when every row "
                    "was rejected, 2 when a file or argument cannot be used (then nothing is imported).",
    )
    p.add_argument("--tenant", required=True)
    p.add_argument("--items", help="items file (.jsonl, .csv or .parquet)")
    p.add_argument("--users", help="users file")
    p.add_argument("--events", help="events file")
    p.add_argument("--format", choices=["canonical", "movielens", "ga4", "xdm", "segment", "google-merchant"],
                   default="canonical",
                   help="canonical: the files above; movielens: a MovieLens directory; ga4 (BigQuery export, Parquet "
                        "or JSON lines), xdm (Adobe ExperienceEvents, JSON lines), segment (Segment-spec messages, "
                        "JSON lines), google-merchant (product feed, TSV or XML): files or directories as PATH; "
                        "the mapping is the tenant's connectors configuration")
    p.add_argument("paths", nargs="*", metavar="PATH", help="the MovieLens directory, or the source files (a "
                                                            "directory: each of its files)")
    p.set_defaults(func=cmd_cdp_import)

    p = sub.add_parser("materialize", help="materialize every asset of a tenant through Dagster")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--tenant", help="the tenant to materialize")
    group.add_argument("--all", action="store_true", help="every tenant, one run each")
    p.add_argument("--processes", type=int, default=1,
                   help="with --all: split the tenants over this many processes (default 1)")
    p.set_defaults(func=cmd_materialize)

    for name, helptext, func, port in (
        ("serve", "serve the HTTP API", cmd_serve, 8000),
        ("demo", "load two demo tenants, materialize them and serve the API", cmd_demo, 8000),
        ("ui", "open the Dagster UI (dagster dev -w workspace.yaml)", cmd_ui, 3000),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=port)
        if name == "demo":
            p.add_argument("--no-serve", action="store_true", help="stop after materializing (print the keys)")
        if name == "serve":
            p.add_argument("--workers", type=int, default=1,
                           help="worker processes accepting on the one port (e.g. one per core); they share the "
                                "index and model files through the page cache")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
            settings = Settings.from_env()
            code = args.func(args, settings)
        except LodestarError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 2
        finally:
            # Here, not at exit, a reader that has gone away can still be handled.
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (`| head`) has gone: stop quietly, with devnull as stdout so that the flush at
        # exit fails no more (https://docs.python.org/3/library/signal.html#note-on-sigpipe), and
        # exit 141 (128 + SIGPIPE), as a shell reports a command that SIGPIPE ended.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return code


if __name__ == "__main__":
    sys.exit(main())
