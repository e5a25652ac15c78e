"""Connectors: the formats real CDPs and analytics tools produce, turned into Lodestar's import rows.

One module per source format (ARCHITECTURE.md, "Connectors"): ``ga4`` (the GA4 BigQuery export),
``xdm`` (Adobe XDM ExperienceEvents), ``segment`` (Segment-spec messages) and ``google_merchant``
(product feeds); ``mapping`` holds their per-tenant configuration and ``importing`` feeds what they
convert to the shared import path. This package's own module stays empty so that the tenant
configuration can import ``mapping`` without the importer.
"""
