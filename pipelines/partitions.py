"""One dynamic partition per tenant; the CLI and the tenant sensor add them."""

from dagster import DynamicPartitionsDefinition

TENANTS = "tenants"
tenants_partitions = DynamicPartitionsDefinition(name=TENANTS)
