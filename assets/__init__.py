"""Dagster asset definitions, one module per lineage stage. Thin: the logic lives in ``lodestar.lineage``.

This package owns what the assets need (``partitions``, ``resources``); ``pipelines`` composes them
into Definitions and never the other way round.
"""


from dagster import AssetExecutionContext, AutomationCondition

from assets.resources import progress_log


def report(context: AssetExecutionContext, message: str) -> None:
    """A progress line: in the run's log (Dagster UI) and on the CLI's console."""
    line = f"[{context.partition_key}] {context.assets_def.key.to_user_string()}: {message}"
    context.log.info(line)
    progress_log.info(line)


# Downstream of the CDP extracts every asset follows its dependencies by declarative automation,
# in one run per tick (within a run, a failed blocking check skips what is downstream of it).
DOWNSTREAM = AutomationCondition.eager()
# Publishing also waits for the latest blocking checks of its dependencies and of theirs (every
# blocking check upstream: popularity, embeddings, the model, the index, the evaluation), so that a
# later tick never publishes what a check rejected, even when eager automation rebuilt on top of it.
# Gating only publishing keeps the rest of the chain at one tick (a gate on every asset would wait a
# tick per level for checks that run in the same run).
_CHECKS_PASSED = AutomationCondition.all_deps_blocking_checks_passed()
PUBLISH = AutomationCondition.eager() & _CHECKS_PASSED & AutomationCondition.all_deps_match(_CHECKS_PASSED)


def bar(value: float, top: float, width: int = 30) -> str:
    """A text bar for markdown charts in the UI's metadata (empty for zero)."""
    return "█" * max(1, round(width * value / top)) if value > 0 and top > 0 else ""
