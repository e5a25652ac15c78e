"""Creating, stopping and promoting experiments: each a change of the CDP's experiment record,
audited; promoting a variant is a new configuration version, so it can be rolled back."""

from __future__ import annotations

import math
import time
from typing import Any

from lodestar.cdp import CdpStore, audit_entry, require_tenant
from lodestar.config_versions import proposed_config
from lodestar.errors import Conflict, InvalidInput, NotFound
from lodestar.experiments.definition import (
    RUNNING,
    STOPPED,
    check_layers,
    parse_experiment,
)
from lodestar.experiments.statistics import units_needed

# What a metric is assumed to look like per unit when the tenant has no history and the definition
# gives no baseline: the plan says so, and is only as good as the assumption.
ASSUMED = {"ctr": (0.05, 0.12), "conversion_rate": (0.02, 0.14), "revenue_per_user": (1.0, 5.0)}
BASELINES_REPORT = "experiment_baselines"
REPORT = "experiments"


def plan(definition: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The fixed horizon: units each variant needs to detect the definition's ``mde`` (relative)
    on its primary metric at its alpha and power, from the given baseline, else the tenant's
    history on the experiment's placements (``history``: rows of :func:`lodestar.experiments.report.baselines`),
    else an assumption; and how many days that should take at the recent traffic."""
    metric = definition["primary_metric"]
    rows = [r for r in history if r["metric"] == metric and r["placement"] in definition["placements"]]
    if definition["baseline"]:
        mean, sd, source = definition["baseline"]["mean"], definition["baseline"]["sd"], "given"
    elif rows:
        best = max(rows, key=lambda r: r["units"])
        mean, sd, source = best["mean"], best["sd"], f"history ({best['units']} units, last 28 days)"
    else:
        (mean, sd), source = ASSUMED[metric], "assumed: no history yet; give \"baseline\" to size it on your data"
    weights = [v["weight"] for v in definition["variants"]]
    needed = units_needed(mean, sd, definition["mde"], weights, definition["alpha"], definition["power"])
    per_day = sum(r["units_per_day"] for r in rows) * definition["traffic"] if rows else 0.0
    days = math.ceil(sum(needed) / per_day) if per_day else None
    return {"baseline": {"mean": mean, "sd": sd, "source": source}, "mde": definition["mde"],
            "units": {v["name"]: n for v, n in zip(definition["variants"], needed, strict=True)},
            "days_estimate": max(days, definition["min_days"]) if days else None}


def create(store: CdpStore, tenant: str, raw: Any, actor: str, now: float | None = None) -> dict[str, Any]:
    """Validate, size and start an experiment (refused when it would share a placement with a
    running experiment of its layer)."""
    tenant_record = require_tenant(store, tenant)
    definition = parse_experiment(raw, tenant_record["config"] or {}, now)
    check_layers(definition, store.list_experiments(tenant))
    history = (store.get_report(tenant, BASELINES_REPORT) or {}).get("rows", [])
    record = {**definition, "status": RUNNING, "plan": plan(definition, history), "stopped_at": None, "promoted": None}
    made = store.create_experiment(tenant, record)
    store.append_audit(tenant, audit_entry(actor, "experiment.create", made["name"], None, made))
    return made


def find(store: CdpStore, tenant: str, name: str) -> dict[str, Any]:
    record = store.get_experiment(tenant, name)
    if record is None:
        raise NotFound(f"tenant {tenant!r} has no experiment {name!r}")
    return record


def stop(store: CdpStore, tenant: str, name: str, actor: str, promoted: str | None = None) -> dict[str, Any]:
    """End the experiment now: every unit sees the live configuration from the next request."""
    record = find(store, tenant, name)
    if record["status"] != RUNNING:
        raise Conflict(f"experiment {name!r} is already stopped")
    stopped = store.update_experiment(tenant, {**record, "status": STOPPED, "stopped_at": time.time(),
                                               "promoted": promoted}, if_updated_at=record["updated_at"])
    store.append_audit(tenant, audit_entry(actor, "experiment.promote" if promoted else "experiment.stop", name,
                                           {"status": record["status"]},
                                           {"status": STOPPED, **({"promoted": promoted} if promoted else {})}))
    return stopped


def promote(store: CdpStore, tenant: str, name: str, variant: str, actor: str) -> dict[str, Any]:
    """Make ``variant``'s overlay the live configuration (a new configuration version, audited as
    ``config.set``, so it can be undone) and stop the experiment."""
    record = find(store, tenant, name)
    chosen = next((v for v in record["variants"] if v["name"] == variant), None)
    if chosen is None:
        raise InvalidInput(f"variant: experiment {name!r} has no variant {variant!r} "
                           f"(it has {', '.join(v['name'] for v in record['variants'])})", field="variant")
    if record["status"] == RUNNING:
        stop(store, tenant, name, actor, promoted=variant)
    tenant_record = require_tenant(store, tenant)
    after = proposed_config(tenant_record, chosen["overlay"])
    store.set_tenant_config(tenant, after, audit=audit_entry(actor, "config.set", f"experiment {name}: {variant}",
                                                             tenant_record["config"] or {}, after),
                            if_updated_at=tenant_record["updated_at"])
    return after
