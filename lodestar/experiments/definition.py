"""What an experiment is, validated like the tenant configuration (every error names its field).

An experiment tests variants of a tenant's configuration on some placements: the first variant is
the control (the live configuration, no overlay), each other an overlay of configuration keys
(ranking weights, rules, event weights, the diversity default, candidate counts). Units (users, or
sessions) are assigned by :mod:`lodestar.experiments.assignment`. Two running experiments may share
a placement only in different layers; a unit may be in one experiment per layer.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

from lodestar.errors import Conflict, InvalidInput
from lodestar.jsonvalues import check_depth
from lodestar.records import check_text, parse_schedule_time
from lodestar.tenant_config import TenantConfig, deep_merge, validate_config

PLACEMENTS = ("recommendations", "session", "similar", "search")
METRICS = ("ctr", "conversion_rate", "revenue_per_user")
# What a variant may change: configuration read at request time (the pipeline's settings would
# need a model per variant).
OVERLAY_KEYS = ("ranking", "rules", "event_weights", "diversity", "collab")
OVERLAY_COLLAB_KEYS = ("candidates",)
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
FIELDS = ("name", "hypothesis", "placements", "layer", "traffic", "variants", "start", "end", "primary_metric",
          "guardrails", "mde", "alpha", "power", "min_days", "baseline", "audience")
RUNNING, STOPPED = "running", "stopped"
MIN_WEIGHT = 0.01


def _name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise InvalidInput(f"{field}: use 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit",
                           field=field)
    return value


def _text(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 2000:
        raise InvalidInput(f"{field}: text of at most 2,000 characters", field=field)
    return value


def _fraction(value: Any, field: str, low: float, high: float, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low < value <= high:
        raise InvalidInput(f"{field}: must be a number above {low:g} and at most {high:g}", field=field)
    return float(value)


def _overlay(raw: Any, field: str, live: dict[str, Any]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{field}: must be an object of configuration keys", field=field)
    unknown = sorted(set(raw) - set(OVERLAY_KEYS))
    if unknown:
        raise InvalidInput(f"{field}.{unknown[0]}: a variant may change {', '.join(OVERLAY_KEYS)} only",
                           field=f"{field}.{unknown[0]}")
    collab = raw.get("collab", {})
    if not isinstance(collab, dict) or set(collab) - set(OVERLAY_COLLAB_KEYS):
        raise InvalidInput(f"{field}.collab: a variant may change collab.candidates only", field=f"{field}.collab")
    try:
        validate_config(deep_merge({k: v for k, v in live.items() if k != "quotas"}, raw))
    except InvalidInput as exc:
        where = f"{field}.{exc.field}" if exc.field else field
        raise InvalidInput(f"{field}: {exc}", field=where) from None
    return raw


def parse_experiment(raw: Any, live: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """A definition as stored (defaults filled in, weights normalized), from what a tenant admin
    sent; ``live`` is the tenant's stored configuration, which every variant overlays."""
    now = time.time() if now is None else now
    if not isinstance(raw, dict):
        raise InvalidInput("an experiment must be a JSON object")
    check_depth(raw, "experiment")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise InvalidInput(f"{unknown[0]}: unknown field; known: {', '.join(FIELDS)}", field=unknown[0])
    placements = raw.get("placements", ["recommendations"])
    if not isinstance(placements, list) or not placements or any(p not in PLACEMENTS for p in placements):
        raise InvalidInput(f"placements: a list of {', '.join(PLACEMENTS)}", field="placements")
    variants = raw.get("variants")
    if not isinstance(variants, list) or not 2 <= len(variants) <= 10:
        raise InvalidInput("variants: 2 to 10 variants, the control first", field="variants")
    parsed, names = [], set()
    for n, variant in enumerate(variants):
        where = f"variants[{n}]"
        if not isinstance(variant, dict) or set(variant) - {"name", "weight", "overlay"}:
            raise InvalidInput(f"{where}: an object with name, weight and overlay", field=where)
        name = _name(variant.get("name"), f"{where}.name")
        if name in names:
            raise InvalidInput(f"{where}.name: {name!r} is used twice", field=f"{where}.name")
        names.add(name)
        weight = _fraction(variant.get("weight", 1.0), f"{where}.weight", 0.0, 1e6, 1.0)
        overlay = _overlay(variant.get("overlay"), f"{where}.overlay", live)
        if n == 0 and overlay:
            raise InvalidInput("variants[0].overlay: the first variant is the control (the live configuration); "
                               "leave its overlay out", field="variants[0].overlay")
        parsed.append({"name": name, "weight": weight, "overlay": overlay})
    total = sum(v["weight"] for v in parsed)
    for n, v in enumerate(parsed):
        v["weight"] = round(v["weight"] / total, 6)
        if v["weight"] < MIN_WEIGHT:
            raise InvalidInput(f"variants[{n}].weight: at least {MIN_WEIGHT:.0%} of the traffic per variant",
                               field=f"variants[{n}].weight")
    metric = raw.get("primary_metric", "ctr")
    if metric not in METRICS:
        raise InvalidInput(f"primary_metric: one of {', '.join(METRICS)}", field="primary_metric")
    guardrails = raw.get("guardrails", [m for m in METRICS if m != metric])
    if not isinstance(guardrails, list) or any(g not in METRICS or g == metric for g in guardrails):
        raise InvalidInput(f"guardrails: a list of {', '.join(METRICS)} other than the primary metric",
                           field="guardrails")
    start = parse_schedule_time(raw.get("start"), "start") or now
    end = parse_schedule_time(raw.get("end"), "end")
    if end is not None and end <= start:
        raise InvalidInput("end: must be after start", field="end")
    min_days = raw.get("min_days", 7)
    if isinstance(min_days, bool) or not isinstance(min_days, int) or not 0 <= min_days <= 365:
        raise InvalidInput("min_days: a whole number of days from 0 to 365 (a week covers weekday effects)",
                           field="min_days")
    baseline = raw.get("baseline")
    if baseline is not None and (not isinstance(baseline, dict) or set(baseline) != {"mean", "sd"} or not all(
            not isinstance(baseline[k], bool) and isinstance(baseline[k], (int, float)) and math.isfinite(baseline[k])
            and baseline[k] > 0 for k in baseline)):
        raise InvalidInput("baseline: {\"mean\": m, \"sd\": s}, both positive: the primary metric's mean and standard "
                           "deviation per unit today (leave it out to use the tenant's history)", field="baseline")
    audience = raw.get("audience")
    if audience is not None:
        defined = {d.get("name") for d in (live or {}).get("segments") or [] if isinstance(d, dict)}
        if not isinstance(audience, str) or audience not in defined:
            raise InvalidInput("audience: the name of one of the tenant's audience segments (its configuration's "
                               "segments); only its users take part", field="audience")
    return {
        "audience": audience,
        "name": _name(raw.get("name"), "name"),
        "hypothesis": check_text(_text(raw.get("hypothesis"), "hypothesis").strip(), "hypothesis"),
        "placements": list(dict.fromkeys(placements)),
        "layer": _name(raw.get("layer", "default"), "layer"),
        "traffic": _fraction(raw.get("traffic"), "traffic", 0.0, 1.0, 1.0),
        "variants": parsed,
        "start": start, "end": end,
        "primary_metric": metric, "guardrails": guardrails,
        "mde": _fraction(raw.get("mde"), "mde", 0.0, 10.0, 0.1),
        "alpha": _fraction(raw.get("alpha"), "alpha", 0.0, 0.2, 0.05),
        "power": _fraction(raw.get("power"), "power", 0.5, 0.99, 0.8),
        "min_days": min_days,
        "baseline": baseline,
    }


def check_layers(new: dict[str, Any], others: list[dict[str, Any]]) -> None:
    """Refuse ``new`` when a running experiment of the same layer shares a placement with it and
    their times overlap: a unit would be in both, and neither's result would mean anything."""
    for other in others:
        if other["name"] == new["name"] or other.get("status") != RUNNING or other["layer"] != new["layer"]:
            continue
        shared = set(other["placements"]) & set(new["placements"])
        overlap = (other["end"] is None or new["start"] < other["end"]) and (new["end"] is None or other["start"] < new["end"])
        if shared and overlap:
            raise Conflict(f"experiment {other['name']!r} already runs on {', '.join(sorted(shared))} in layer "
                           f"{new['layer']!r}: stop it, or put this one in another layer (\"layer\": \"...\")")


@dataclass(frozen=True)
class Running:
    """A running experiment as the request path uses it."""

    name: str
    layer: str
    placements: frozenset[str]
    traffic: float
    weights: tuple[float, ...]
    variants: tuple[str, ...]
    overlays: tuple[dict[str, Any], ...]
    start: float
    end: float | None
    version: float  # the record's updated_at: a change makes new variant configurations
    audience: str | None = None  # only users of this segment take part

    @classmethod
    def of(cls, record: dict[str, Any]) -> Running:
        return cls(record["name"], record["layer"], frozenset(record["placements"]), record["traffic"],
                   tuple(v["weight"] for v in record["variants"]), tuple(v["name"] for v in record["variants"]),
                   tuple(v["overlay"] for v in record["variants"]), record["start"], record["end"],
                   record.get("updated_at", 0.0), record.get("audience"))

    def live(self, placement: str, now: float) -> bool:
        return placement in self.placements and self.start <= now and (self.end is None or now < self.end)


def variant_config(base: TenantConfig, overlays: list[dict[str, Any]]) -> TenantConfig:
    """The tenant's effective configuration with variant overlays applied in order."""
    merged = base.as_dict()
    for overlay in overlays:
        merged = deep_merge(merged, overlay)
    config = TenantConfig.from_dict(merged)
    config.parsed_rules  # noqa: B018 - validated and parsed once per variant, not per request
    return config
