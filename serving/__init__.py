"""The Litestar service (``serving.app:create_app``). Never imports Dagster."""
