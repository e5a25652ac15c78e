"""Jobs: every asset of a tenant, and a tenant's CDP extracts (sensors and schedules target them);
and an import of a file in a source format (the connectors), launched from the Dagster UI."""

from pathlib import Path

from dagster import (
    AssetSelection,
    Config,
    Failure,
    MetadataValue,
    OpExecutionContext,
    Output,
    define_asset_job,
    job,
    op,
)

from assets.partitions import tenants_partitions
from assets.resources import LodestarResource

MATERIALIZE_TENANT = "materialize_tenant"

materialize_tenant = define_asset_job(
    MATERIALIZE_TENANT,
    selection=AssetSelection.all(),
    partitions_def=tenants_partitions,
    description="Every asset of one tenant, from CDP extract to published index.",
)

extract_job = define_asset_job(
    "refresh_extracts",
    selection=AssetSelection.assets("cdp_items", "cdp_users", "cdp_events"),
    partitions_def=tenants_partitions,
    description="A tenant's CDP extracts; everything downstream follows by declarative automation.",
)


class ConnectorImportConfig(Config):
    """What ``lodestar cdp import --format FORMAT PATH`` takes, for a run launched from the Dagster UI."""

    tenant: str
    format: str  # ga4, xdm, segment or google-merchant
    path: str  # a file, or a directory of files (a sharded export), as this run's process sees it


@op(description="Import a source file or directory (GA4 export, XDM events, Segment messages, a Merchant feed) "
                "into a tenant's CDP store; the change sensor then materializes the tenant.")
def import_source_files(context: OpExecutionContext, config: ConnectorImportConfig,
                        lodestar: LodestarResource) -> Output[dict]:
    from lodestar.connectors.importing import import_source

    with lodestar.cdp() as store:
        summaries = import_source(store, lodestar.settings(), config.tenant, config.format, Path(config.path),
                                  progress=context.log.info)
    accepted, rejected = sum(s.accepted for s in summaries), sum(s.rejected for s in summaries)
    if rejected and not accepted:
        raise Failure(f"no row of {config.path} was accepted ({rejected} rejected): see the reject files in "
                      + ", ".join(s.directory for s in summaries))
    totals = {"accepted": accepted, "rejected": rejected, "files": len(summaries),
              "summaries": [s.directory for s in summaries]}
    return Output(totals, metadata={"accepted": accepted, "rejected": rejected,
                                    "reject and summary files": MetadataValue.json(totals["summaries"])})


@job(description="Import a file in a source format (the connectors) into one tenant's CDP store.")
def connector_import() -> None:
    import_source_files()
