"""Lodestar: a multi-tenant personalization engine (domain core, free of Dagster and HTTP)."""

__version__ = "0.1.0"
