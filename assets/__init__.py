"""Dagster asset definitions, one module per lineage stage. Thin: the logic lives in ``lodestar``."""


from dagster import AssetExecutionContext

from pipelines.resources import progress_log


def report(context: AssetExecutionContext, message: str) -> None:
    """A progress line: in the run's log (Dagster UI) and on the CLI's console."""
    line = f"[{context.partition_key}] {context.assets_def.key.to_user_string()}: {message}"
    context.log.info(line)
    progress_log.info(line)
