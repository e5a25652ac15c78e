"""Jobs: every asset of a tenant, and a tenant's CDP extracts (sensors and schedules target them)."""

from dagster import AssetSelection, define_asset_job

from assets.partitions import tenants_partitions

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
