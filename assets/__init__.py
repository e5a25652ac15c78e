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
# Publishing also waits for the latest blocking checks of its dependencies, so that a later tick
# never publishes a version that a check rejected.
PUBLISH = AutomationCondition.eager() & AutomationCondition.all_deps_blocking_checks_passed()


def bar(value: float, top: float, width: int = 30) -> str:
    """A text bar for markdown charts in the UI's metadata (empty for zero)."""
    return "█" * max(1, round(width * value / top)) if value > 0 and top > 0 else ""
