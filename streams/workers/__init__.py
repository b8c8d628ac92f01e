"""recstream's workers: ``encoder`` (items -> item-embeddings) and ``interests`` (engagements ->
user-interests)."""
