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
    # The test runs at alpha / (variants - 1) (Bonferroni): the plan is sized at the same level.
    alpha = definition["alpha"] / (len(weights) - 1)
    try:
        needed = units_needed(mean, sd, definition["mde"], weights, alpha, definition["power"])
    except (ValueError, ArithmeticError):
        needed = []
    if len(needed) != len(weights) or not all(0 < n < 10**9 for n in needed):
        raise InvalidInput(f"the power analysis found no sample size for a {definition['mde']:.0%} change from a "
                           f"baseline of {mean:g} (sd {sd:g}); check mde and baseline", field="mde")
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


def report_of(store: CdpStore, tenant: str, name: str) -> tuple[dict[str, Any] | None, float | None]:
    """The experiment's report as ``experiment_report`` last computed it, and when (``None`` before)."""
    report = store.get_report(tenant, REPORT) or {"rows": [], "updated_at": None}
    return next((r for r in report["rows"] if r["experiment"] == name), None), report["updated_at"]


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


def set_traffic(store: CdpStore, tenant: str, name: str, traffic: Any, actor: str) -> dict[str, Any]:
    """Change the share of units in a running experiment (a ramp-up, say): raising it keeps every
    unit that was in, in its variant, and adds the next ones; lowering it takes out only the last."""
    if isinstance(traffic, bool) or not isinstance(traffic, (int, float)) or not 0 < traffic <= 1:
        raise InvalidInput("traffic: a share above 0 and at most 1", field="traffic")
    record = find(store, tenant, name)
    if record["status"] != RUNNING:
        raise Conflict(f"experiment {name!r} is stopped; start a new one")
    changed = store.update_experiment(tenant, {**record, "traffic": float(traffic)}, if_updated_at=record["updated_at"])
    store.append_audit(tenant, audit_entry(actor, "experiment.traffic", name, {"traffic": record["traffic"]},
                                           {"traffic": float(traffic)}))
    return changed


def promote(store: CdpStore, tenant: str, name: str, variant: str, actor: str) -> dict[str, Any]:
    """Make ``variant``'s overlay the live configuration (a new configuration version, audited as
    ``config.set``, so it can be undone), then stop the experiment (recording the promotion). The
    configuration is written first: when it cannot be (invalid now, or changed meanwhile), the
    experiment is left as it was. An overlay's keys replace the live ones (``rules`` as a whole)."""
    record = find(store, tenant, name)
    chosen = next((v for v in record["variants"] if v["name"] == variant), None)
    if chosen is None:
        raise InvalidInput(f"variant: experiment {name!r} has no variant {variant!r} "
                           f"(it has {', '.join(v['name'] for v in record['variants'])})", field="variant")
    tenant_record = require_tenant(store, tenant)
    after = proposed_config(tenant_record, chosen["overlay"])
    store.set_tenant_config(tenant, after, audit=audit_entry(actor, "config.set", f"experiment {name}: {variant}",
                                                             tenant_record["config"] or {}, after),
                            if_updated_at=tenant_record["updated_at"])
    if record["status"] == RUNNING:
        stop(store, tenant, name, actor, promoted=variant)
    else:
        store.update_experiment(tenant, {**record, "promoted": variant}, if_updated_at=record["updated_at"])
        store.append_audit(tenant, audit_entry(actor, "experiment.promote", name, {"promoted": record.get("promoted")},
                                               {"promoted": variant}))
    return after
