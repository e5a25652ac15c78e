"""What a configuration change would do to a tenant's recommendations, before it is stored.

The live and the proposed configuration rank the same sample of the tenant's users (those with
events, a seeded sample of the user feature table) against the same published index and model,
the way the API ranks them. The comparison says how many lists change, which items enter and leave
them most often, how far the items kept in a list move, and one user's two lists side by side.

Request-time settings (ranking weights, rules, event weights as the fold-in uses them, candidate
counts, the taste window) show their whole effect here. Settings the pipeline also uses (the
collaborative model's settings and event weights, the index and evaluation settings, the recency
half-life of popularity) change what the next materialization builds as well: the preview names
those, since it can only show their request-time part.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lodestar.recommend import recommend_for_user, user_history

if TYPE_CHECKING:
    from lodestar.cdp import CdpStore
    from lodestar.embed import Embedder
    from lodestar.index import PublishedVersion
    from lodestar.settings import Settings
    from lodestar.tenant_config import TenantConfig

# Top-level configuration keys whose change also changes what materialization builds.
PIPELINE_KEYS = ("collab", "event_weights", "index", "evaluation", "recency_half_life_days")
SHOWN = 5  # entering and leaving items listed


@dataclass
class Preview:
    users: int
    k: int
    lists_changed: int  # users whose list differs in items or order
    sets_changed: int  # users whose list holds different items
    mean_overlap: float  # items both lists hold, as a share of the longer list, mean over users
    mean_rank_shift: float  # |rank now - rank proposed| of the items both lists hold, mean over them
    entering: list[tuple[str, str, int]]  # (item id, title, in how many lists it enters), most first
    leaving: list[tuple[str, str, int]]
    pipeline_keys: list[str]  # changed keys that the next materialization also uses
    side_by_side: dict[str, Any] = field(default_factory=dict)  # the chosen user's two lists

    def as_dict(self) -> dict[str, Any]:
        return {
            "users": self.users, "k": self.k, "lists_changed": self.lists_changed,
            "sets_changed": self.sets_changed, "mean_overlap": round(self.mean_overlap, 4),
            "mean_rank_shift": round(self.mean_rank_shift, 4),
            "entering": [{"id": i, "title": t, "lists": n} for i, t, n in self.entering],
            "leaving": [{"id": i, "title": t, "lists": n} for i, t, n in self.leaving],
            "pipeline_keys": self.pipeline_keys, "side_by_side": self.side_by_side,
        }


def changed_pipeline_keys(current: TenantConfig, proposed: TenantConfig) -> list[str]:
    now, then = current.as_dict(), proposed.as_dict()
    return [key for key in PIPELINE_KEYS if now.get(key) != then.get(key)]


def active_users(settings: Settings, tenant: str) -> list[str]:
    """The tenant's users with events, from its user feature table (empty before a materialization)."""
    import pyarrow.parquet as pq

    from lodestar.lineage.files import TenantFiles

    path = TenantFiles(settings.tenant_dir(tenant)).user_features
    if not path.is_file():
        return []
    table = pq.read_table(path, columns=["id", "events"]).to_pandas()
    return table.loc[table["events"] > 0, "id"].tolist()


def sample_users(user_ids: list[str], size: int, seed: int = 0) -> list[str]:
    """A seeded sample (the same users for the same table), in id order."""
    if len(user_ids) <= size:
        return sorted(user_ids)
    return sorted(np.random.default_rng(seed).choice(sorted(user_ids), size=size, replace=False).tolist())


def preview_change(
    published: PublishedVersion, cdp: CdpStore, embedder: Embedder, tenant: str, current: TenantConfig,
    proposed: TenantConfig, users: list[str], k: int = 10, focus: str | None = None,
) -> Preview:
    """Rank ``users`` (and ``focus``) under both configurations and compare the lists."""
    titles: dict[str, str] = {}
    entering: Counter[str] = Counter()
    leaving: Counter[str] = Counter()
    lists_changed = sets_changed = 0
    overlaps: list[float] = []
    shifts: list[int] = []
    side_by_side: dict[str, Any] = {}
    for user in dict.fromkeys([*users, *([focus] if focus else [])]):
        lists = []
        history = user_history(cdp, tenant, user)  # read once, ranked twice
        for config in (current, proposed):
            items = recommend_for_user(published, cdp, embedder, tenant, user, k, config, history=history).items
            titles.update((h.item_id, str(h.payload.get("title", ""))) for h in items)
            lists.append([h.item_id for h in items])
        now, then = lists
        if user == focus:
            side_by_side = {"user_id": user, "now": [{"id": i, "title": titles[i]} for i in now],
                            "proposed": [{"id": i, "title": titles[i]} for i in then]}
        if user not in users:
            continue  # the chosen user is shown, not counted (the sample is what the numbers describe)
        lists_changed += now != then
        sets_changed += set(now) != set(then)
        entering.update(set(then) - set(now))
        leaving.update(set(now) - set(then))
        kept = set(now) & set(then)
        overlaps.append(len(kept) / max(len(now), len(then), 1))
        shifts.extend(abs(now.index(i) - then.index(i)) for i in kept)

    def top(counts: Counter[str]) -> list[tuple[str, str, int]]:
        return [(i, titles.get(i, ""), n) for i, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:SHOWN]]

    return Preview(
        users=len(users), k=k, lists_changed=lists_changed, sets_changed=sets_changed,
        mean_overlap=float(np.mean(overlaps)) if overlaps else 1.0,
        mean_rank_shift=float(np.mean(shifts)) if shifts else 0.0,
        entering=top(entering), leaving=top(leaving),
        pipeline_keys=changed_pipeline_keys(current, proposed), side_by_side=side_by_side,
    )
