"""A tenant's lineage as plain functions over files under the tenant's data dir, one module per concern.

``assets/`` wraps each in a Dagster asset; tests call them without Dagster. Each returns a small
typed result (a dataclass) with the numbers the UI shows. The serving process never imports this
package: it opens published index versions through the index port alone.

    files            where a tenant's pipeline files live, and Parquet I/O
    extracts         incremental CDP extracts (with the erasure special case)
    feature_tables   item and user feature tables
    embeddings       item embeddings and their check
    collab_fit       fitting the collaborative model (skipped when its inputs did not change)
    index_build      index payloads, fingerprints, manifests, the incremental plan, the build
    publishing       the canary query and publishing a built version
    evaluation_gate  the offline evaluation and the regression gate that blocks publishing
"""
