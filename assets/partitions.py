"""One dynamic partition per tenant; the CLI and the tenant sensor add them."""

from dagster import DynamicPartitionsDefinition

TENANTS = "tenants"
tenants_partitions = DynamicPartitionsDefinition(name=TENANTS)

# A run carrying this tag re-reads every CDP row instead of the changes past the watermark.
FULL_REBUILD_TAG = "lodestar/full_rebuild"
