"""The semantic cache: Qdrant-backed, partitioned per tenant, model, context and parameters."""
