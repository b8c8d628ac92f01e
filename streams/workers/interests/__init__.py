"""The interests worker: ``engagements`` -> per-user ``InterestClusters`` -> ``user-interests``."""
