"""The Dagster composition root: Definitions, sensors, schedules and jobs over the assets of ``assets``
(which owns the partitions and resources the assets need; nothing in ``assets`` imports this package)."""
