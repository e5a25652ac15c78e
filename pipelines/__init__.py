"""The Dagster composition root: Definitions, resources, partitions, sensors, schedules, jobs."""
